"""Reading and writing models: loading with every check, external data, weights kept apart, atomic saving."""
