"""Writes tests/bert/tiny: a 4-layer BERT checkpoint with random weights, small enough to
commit, shaped like a Hugging Face checkpoint folder (config.json, model.safetensors) and
sharing MiniLM's WordPiece vocabulary (tests/text/tokenizer.json, 30,522 tokens).

It tests kdc's plumbing (loading through candle-transformers, layer subsets, trainable
layers, exports), not accuracy; the real MiniLM is tested where it is fetched. The
safetensors file is written by hand from the format's specification (8-byte header
length, JSON header, raw little-endian data), with numpy's seeded generator, so the
script needs numpy only and always writes the same bytes.
"""

import json
import pathlib
import struct

import numpy as np

HIDDEN, LAYERS, HEADS, FF, VOCAB, POSITIONS = 8, 4, 2, 16, 30522, 64

def main():
    out = pathlib.Path(__file__).parent / "tiny"
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(20261128)
    tensors = {}

    def add(name, *shape, value=None):
        if value is None:
            data = rng.normal(0.0, 0.2, size=shape)
        else:
            data = np.full(shape, value)
        tensors[name] = data.astype("<f4")

    add("embeddings.word_embeddings.weight", VOCAB, HIDDEN)
    add("embeddings.position_embeddings.weight", POSITIONS, HIDDEN)
    add("embeddings.token_type_embeddings.weight", 2, HIDDEN)
    add("embeddings.LayerNorm.weight", HIDDEN, value=1.0)
    add("embeddings.LayerNorm.bias", HIDDEN, value=0.0)
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            add(p + f"attention.self.{part}.weight", HIDDEN, HIDDEN)
            add(p + f"attention.self.{part}.bias", HIDDEN)
        add(p + "attention.output.dense.weight", HIDDEN, HIDDEN)
        add(p + "attention.output.dense.bias", HIDDEN)
        add(p + "attention.output.LayerNorm.weight", HIDDEN, value=1.0)
        add(p + "attention.output.LayerNorm.bias", HIDDEN, value=0.0)
        add(p + "intermediate.dense.weight", FF, HIDDEN)
        add(p + "intermediate.dense.bias", FF)
        add(p + "output.dense.weight", HIDDEN, FF)
        add(p + "output.dense.bias", HIDDEN)
        add(p + "output.LayerNorm.weight", HIDDEN, value=1.0)
        add(p + "output.LayerNorm.bias", HIDDEN, value=0.0)

    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        raw = tensors[name].tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)

    config = {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "intermediate_size": FF, "vocab_size": VOCAB, "max_position_embeddings": POSITIONS,
        "type_vocab_size": 2, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

if __name__ == "__main__":
    main()
