"""The repair pipeline (fix, simplify, validate, write) and bounded onnxsim."""
