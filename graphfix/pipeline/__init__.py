"""The pipelines: the rule engine (detect, fix, detect again), diagnosing one model and many (batches in forked
children), repair (fix, simplify, validate, write) and bounded onnxsim."""
