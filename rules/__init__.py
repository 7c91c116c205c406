"""graphfix's built-in rules, one module per rule (installed as `graphfix.rules`).

Each module `gf0NN_kebab_name.py` holds one `Rule` subclass whose docstring is its documentation. Adding the file
is all it takes: the registry scans this package (see graphfix.core.registry). Its test goes to tests/rules/.
"""
