"""The core: what a rule is, what it sees, how rules are found and run, errors, configuration and batches."""
