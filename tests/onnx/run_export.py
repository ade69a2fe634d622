"""Runs an ONNX file that kdc exported in onnxruntime on real inputs.

    python tests/onnx/run_export.py MODEL.onnx COUNT OUT.json

Reads the first COUNT 8x8 digits (examples/data/digits.csv.gz) as the pipeline that made
the model reads them (pixels / 16, shape [N, 1, 8, 8]), runs the model's `input` to its
`output` with onnxruntime, and writes {"inputs": [[...64 values]...], "outputs": [...]}.
"""

import gzip
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    path, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    onnx.checker.check_model(onnx.load(path), full_check=True)
    with gzip.open(os.path.join(ROOT, "examples/data/digits.csv.gz"), "rt") as f:
        rows = [[float(v) for v in line.split(",")] for _, line in zip(range(count), f)]
    x = (np.array(rows)[:, :64] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = session.run(["output"], {"input": x})
    with open(out, "w") as f:
        json.dump({"inputs": x.reshape(len(x), -1).tolist(), "outputs": y.tolist()}, f)


if __name__ == "__main__":
    main()
