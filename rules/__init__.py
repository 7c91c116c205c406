"""graphfix's built-in rules, one module per rule (installed as `graphfix.rules`).

Each module holds one `Rule` subclass whose docstring is its documentation. A rule is registered in setup.cfg's
`graphfix.rules` entry-point group, under its code, the same way third-party rules are.
"""
