"""The core: what a rule is and the options it reads, how rules are found, errors, configuration, values, budgets
and forked children. It imports nothing of graphfix above it."""
