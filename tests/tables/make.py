"""Writes the small Parquet and Arrow tables the checker's cases and the hostile corpus
read, with Hugging Face `datasets` and pyarrow as people's own scripts would. Deterministic;
the files are committed, this script says how they were made:

    $(scripts/python-env.sh) tests/tables/make.py      # from the repository root
"""

import io
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(11)


def png(h, w):
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8), "L").save(out, "PNG")
    return out.getvalue()


def shapes(n, odd=None):
    images = [{"bytes": png(6, 6), "path": None} for _ in range(n)]
    if odd is not None:
        images[odd] = {"bytes": png(5, 7), "path": None}
    return images


features = datasets.Features({
    "image": datasets.Image(),
    "label": datasets.ClassLabel(names=["even", "odd"]),
})
labels = [i % 2 for i in range(12)]

# `datasets`' own files: Parquet (to_parquet), and save_to_disk's Arrow stream shards.
shapes_ok = datasets.Dataset.from_dict({"image": shapes(12), "label": labels}, features=features)
shapes_ok.to_parquet(os.path.join(HERE, "shapes.parquet"))
shapes_ok.save_to_disk(os.path.join(HERE, "shapes-arrow"), num_shards=2)
for name in ("dataset_info.json", "state.json"):  # metadata kdc does not read
    os.remove(os.path.join(HERE, "shapes-arrow", name))

odd = datasets.Dataset.from_dict({"image": shapes(12, odd=7), "label": labels}, features=features)
odd.to_parquet(os.path.join(HERE, "odd_size.parquet"))

broken = shapes(12)
broken[4] = {"bytes": broken[4]["bytes"][:30], "path": None}
datasets.Dataset.from_dict({"image": broken, "label": labels}, features=features).to_parquet(
    os.path.join(HERE, "broken_image.parquet"))

# pyarrow alone: an IPC file of texts with string labels.
texts = pa.table({
    "sentence": pa.array(["win money now", "meeting at noon", "free prize inside", "lunch?"] * 3),
    "kind": pa.array(["spam", "ham", "spam", "ham"] * 3),
})
with pa.OSFile(os.path.join(HERE, "texts.arrow"), "wb") as sink:
    with pa.ipc.new_file(sink, texts.schema) as writer:
        writer.write_table(texts)
