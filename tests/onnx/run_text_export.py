"""Runs text models that kdc exported to ONNX in onnxruntime.

    python tests/onnx/run_text_export.py IDS.json OUT.json MODEL.onnx...

IDS.json holds {"ids": [[...], ...]} (token ids, padded); each model passes onnx's full
checker and runs `input_ids` (int64) to `output`; OUT.json gets {"MODEL.onnx": outputs}.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime


def main():
    ids = np.array(json.load(open(sys.argv[1]))["ids"], dtype=np.int64)
    results = {}
    for path in sys.argv[3:]:
        onnx.checker.check_model(onnx.load(path), full_check=True)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        (y,) = session.run(["output"], {"input_ids": ids})
        results[path] = y.tolist()
    json.dump(results, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
