"""An independent reference for kdc's text path: Hugging Face's own Python `tokenizers`
for token ids, and a BERT encoder written here in numpy (from the architecture of Devlin
et al. and the checkpoint's tensor names) for pooled embeddings.

Reads a JSON request on stdin:
  {"tokenizer": path, "max_len": n, "texts": [...],
   "checkpoint": folder or null, "layers": [i, ...] or null, "pooling": "mean" | "cls"}
and writes {"ids": [[...], ...], "pooled": [[...], ...] or null} on stdout.
"""

import json
import math
import struct
import sys

import numpy as np
from tokenizers import Tokenizer


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"]).astype(np.float64)
    return out


ERF = np.frompyfunc(math.erf, 1, 1)


def gelu(x):
    return 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def encode(weights, config, layers, ids, mask):
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
    w = lambda name: weights[prefix + name]
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    length = ids.shape[0]
    x = w("embeddings.word_embeddings.weight")[ids]
    x = x + w("embeddings.position_embeddings.weight")[:length]
    x = x + w("embeddings.token_type_embeddings.weight")[0]
    x = layer_norm(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), eps)
    hidden = x.shape[1]
    dh = hidden // heads
    bias = (1.0 - mask) * -1e30
    for i in layers:
        p = f"encoder.layer.{i}."
        lin = lambda v, n: v @ w(p + n + ".weight").T + w(p + n + ".bias")
        q = lin(x, "attention.self.query").reshape(length, heads, dh).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(length, heads, dh).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(length, heads, dh).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(dh) + bias
        scores = scores - scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(length, hidden)
        x = layer_norm(lin(context, "attention.output.dense") + x,
                       w(p + "attention.output.LayerNorm.weight"), w(p + "attention.output.LayerNorm.bias"), eps)
        inner = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(inner, "output.dense") + x,
                       w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias"), eps)
    return x


def main():
    request = json.load(sys.stdin)
    tokenizer = Tokenizer.from_file(request["tokenizer"])
    n = request["max_len"]
    tokenizer.enable_truncation(max_length=n)
    tokenizer.enable_padding(length=n, pad_id=0, pad_token="[PAD]")
    ids = [e.ids for e in tokenizer.encode_batch(request["texts"])]
    pooled = None
    if request.get("checkpoint"):
        folder = request["checkpoint"]
        config = json.load(open(folder + "/config.json"))
        weights = load_safetensors(folder + "/model.safetensors")
        layers = request.get("layers") or list(range(config["num_hidden_layers"]))
        pooled = []
        for row in ids:
            row = np.array(row)
            mask = (row != 0).astype(np.float64)
            real = int(mask.sum())
            out = encode(weights, config, layers, row[:real], mask[:real])
            if request.get("pooling", "mean") == "cls":
                pooled.append(out[0].tolist())
            else:
                pooled.append(out.mean(0).tolist())
    json.dump({"ids": ids, "pooled": pooled}, sys.stdout)


if __name__ == "__main__":
    main()
