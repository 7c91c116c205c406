"""Run an ONNX model with onnxruntime on random inputs of the given shapes; print output shapes or the error.

    python samples/run_ort.py model.onnx --shape x=1x50x16 [--shape mask=1x50]

Exit 0 when it runs, 1 when onnxruntime fails (its error is printed, first line). Used by the samples' READMEs
to show the failure before a repair and the run after it.
"""

import argparse
import sys

import numpy as np
import onnxruntime as ort

TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
         "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS")
    args = parser.parse_args()
    shapes = {name: [int(d) for d in dims.split("x")] for name, dims in (s.split("=", 1) for s in args.shape)}
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in session.get_inputs():
        shape = shapes.get(inp.name) or [d if isinstance(d, int) else 1 for d in inp.shape]
        dtype = TYPES[inp.type]
        if dtype == np.bool_:
            feeds[inp.name] = rng.random(shape) < 0.3
        elif np.issubdtype(dtype, np.integer):
            feeds[inp.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    try:
        outputs = session.run(None, feeds)
    except Exception as exc:  # show the runtime's own message, as a user would see it
        print(f"onnxruntime error: {str(exc).splitlines()[0]}")
        return 1
    for meta, value in zip(session.get_outputs(), outputs, strict=True):
        print(f"{meta.name}: shape {list(value.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
