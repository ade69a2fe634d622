"""Writes the ONNX teachers kdc's tests load, as an independent producer would: trained
with numpy and written with the `onnx` package's helper API (no kdc code involved).

    python3 -m venv venv && venv/bin/pip install "onnx==1.23.*" "onnxruntime==1.32.*" numpy
    venv/bin/python tests/onnx/make_teachers.py

Both read the 8x8 digits (examples/data/digits.csv.gz) as kdc's pipelines do with
`shape: [1, 8, 8], scale: 16, normalize: none`: pixels / 16, as [N, 1, 8, 8].

- digits_mlp.onnx: Flatten -> Gemm(64 -> 32) -> Relu -> Gemm(32 -> 10), trained with
  full-batch gradient descent on the first 1,200 images.
- digits_cnn.onnx: Conv(1 -> 8, 3x3, pad 1) -> Relu -> MaxPool(2) -> Flatten ->
  Gemm(128 -> 10); the convolution keeps its seeded random weights, the head is trained.

And unsupported_op.onnx, a graph with an operator candle-onnx cannot run (Hardmax).

Also writes expected.json: onnxruntime's outputs (logits and the tapped hidden values) on
the 20 images after the first 1,200, which kdc's ONNX runtime must match within 1e-4.
Deterministic: the same files on every run with the same numpy.
"""

import gzip
import json
import os

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TRAIN = 1200


def load_digits():
    with gzip.open(os.path.join(ROOT, "examples/data/digits.csv.gz"), "rt") as f:
        rows = np.array([[float(v) for v in line.split(",")] for line in f if line.strip()])
    x = (rows[:, :64] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = rows[:, 64].astype(np.int64)
    return x, y


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train_mlp(x, y, rng):
    x = x.reshape(len(x), -1)
    w1 = (rng.standard_normal((32, 64)) * 0.2).astype(np.float32)
    b1 = np.zeros(32, np.float32)
    w2 = (rng.standard_normal((10, 32)) * 0.2).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    onehot = np.eye(10, dtype=np.float32)[y]
    for _ in range(1500):
        h = np.maximum(x @ w1.T + b1, 0)
        g = (softmax(h @ w2.T + b2) - onehot) / len(x)
        gw2, gb2 = g.T @ h, g.sum(0)
        gh = (g @ w2) * (h > 0)
        gw1, gb1 = gh.T @ x, gh.sum(0)
        for p, d in ((w1, gw1), (b1, gb1), (w2, gw2), (b2, gb2)):
            p -= 0.5 * d
    return w1, b1, w2, b2


def conv_features(x, k, kb):
    # 3x3 convolution with padding 1, ReLU, 2x2 max pooling, flattened (C, H, W order).
    n = len(x)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, k.shape[0], 8, 8), np.float32)
    for i in range(8):
        for j in range(8):
            patch = padded[:, :, i : i + 3, j : j + 3].reshape(n, -1)
            out[:, :, i, j] = patch @ k.reshape(k.shape[0], -1).T + kb
    out = np.maximum(out, 0)
    pooled = out.reshape(n, k.shape[0], 4, 2, 4, 2).max(axis=(3, 5))
    return pooled.reshape(n, -1)


def train_head(f, y, rng):
    w = (rng.standard_normal((10, f.shape[1])) * 0.01).astype(np.float32)
    b = np.zeros(10, np.float32)
    onehot = np.eye(10, dtype=np.float32)[y]
    for _ in range(1500):
        g = (softmax(f @ w.T + b) - onehot) / len(f)
        w -= 0.5 * (g.T @ f)
        b -= 0.5 * g.sum(0)
    return w, b


def save(nodes, inits, outputs, name, path):
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        outputs,
        [numpy_helper.from_array(a, n) for n, a in inits],
    )
    model = helper.make_model(
        graph,
        producer_name="kdc tests/onnx/make_teachers.py",
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def logits_info():
    return [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])]


def main():
    x, y = load_digits()
    rng = np.random.default_rng(7)
    w1, b1, w2, b2 = train_mlp(x[:TRAIN], y[:TRAIN], rng)
    mlp = os.path.join(HERE, "digits_mlp.onnx")
    save(
        [
            helper.make_node("Flatten", ["pixels"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1", transB=1),
            helper.make_node("Relu", ["fc1"], ["hidden"], name="relu"),
            helper.make_node("Gemm", ["hidden", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
        ],
        [("fc1.weight", w1), ("fc1.bias", b1), ("fc2.weight", w2), ("fc2.bias", b2)],
        logits_info(),
        "digits_mlp",
        mlp,
    )

    k = (rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32)
    kb = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w, b = train_head(conv_features(x[:TRAIN], k, kb), y[:TRAIN], rng)
    cnn = os.path.join(HERE, "digits_cnn.onnx")
    save(
        [
            helper.make_node("Conv", ["pixels", "conv.weight", "conv.bias"], ["conv"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            helper.make_node("Relu", ["conv"], ["conv_relu"], name="relu"),
            helper.make_node("MaxPool", ["conv_relu"], ["pooled"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Flatten", ["pooled"], ["features"], name="flatten"),
            helper.make_node("Gemm", ["features", "head.weight", "head.bias"], ["logits"], name="head", transB=1),
        ],
        [("conv.weight", k), ("conv.bias", kb), ("head.weight", w), ("head.bias", b)],
        logits_info(),
        "digits_cnn",
        cnn,
    )

    # An operator candle-onnx cannot run (Hardmax), for the checker's diagnostic.
    save(
        [
            helper.make_node("Flatten", ["pixels"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "w", "b"], ["scores"], name="fc", transB=1),
            helper.make_node("Hardmax", ["scores"], ["logits"], name="hardmax"),
        ],
        [("w", w1[:10]), ("b", b1[:10])],
        logits_info(),
        "unsupported",
        os.path.join(HERE, "unsupported_op.onnx"),
    )

    probe = x[TRAIN : TRAIN + 20]
    expected = {"inputs": probe.reshape(20, -1).tolist(), "labels": y[TRAIN : TRAIN + 20].tolist()}
    for name, path, tap in (("mlp", mlp, "hidden"), ("cnn", cnn, "features")):
        model = onnx.load(path)
        model.graph.output.append(helper.make_tensor_value_info(tap, TensorProto.FLOAT, None))
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        logits, hidden = session.run(["logits", tap], {"pixels": probe})
        test = x[TRAIN:]
        accuracy = float((session.run(["logits"], {"pixels": test})[0].argmax(1) == y[TRAIN:]).mean())
        expected[name] = {"logits": logits.tolist(), tap: hidden.tolist(), "accuracy_after_1200": accuracy}
        print(f"{name}: accuracy on the {len(test)} images after the first {TRAIN}: {accuracy:.4f}")
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()
