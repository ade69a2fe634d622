#!/usr/bin/env python3
"""Writes the hostile-input corpus: one folder per case, each a tiny pipeline and the
broken file it uses. Deterministic (gzip without timestamps), so rerunning it changes
nothing; the folders are committed, this script says how they were made.

    python3 tests/hostile/make.py        # from the repository root

Each case folder holds `case.txt`:
    command: check | run | fmt | report | resume
                             check: `kdc check pipeline.kd`; report: `kdc report .` on the
                             case folder as a run folder (summary.json, metrics.jsonl); run: compile pipeline.kd (it must
                             compile), replace files with those in `run/`, apply `edit:` lines
                             to plan.yaml, then `kdc run plan.yaml`; fmt: `kdc fmt pipeline.kd`,
                             which must leave the file as it was; resume: `kdc run --resume .`
                             on the case folder as a stopped sweep's run folder (sweep.yaml)
    names: FILE              the file the error message must name
    edit: OLD => NEW         (run only) a textual edit of the compiled plan.yaml (`\\n` is a
                             newline)
and `expected.stderr`, what kdc prints (tests/hostile.rs compares; UPDATE_EXPECT=1 rewrites).
Run cases show the runtime's loaders defending on their own: the file changed after the check.
"""

import gzip
import io
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------- good files

def idx(type_code, dims, data):
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + data

GOOD_IMAGES = idx(0x08, [4, 2, 2], bytes(range(16)))
GOOD_LABELS = idx(0x08, [4], bytes([0, 1, 0, 1]))
GOOD_CSV = b"1,2,0\n3,4,1\n5,6,0\n7,8,1\n"


def gz(data):
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as f:
        f.write(data)
    return out.getvalue()


def safetensors(entries, data_len=None, header=None):
    """entries: name -> (dtype, shape, (begin, end)); the data is zeros."""
    if header is None:
        header = json.dumps(
            {n: {"dtype": d, "shape": s, "data_offsets": list(o)} for n, (d, s, o) in entries.items()},
            sort_keys=True,
        ).encode()
    if data_len is None:
        data_len = max([o[1] for (_, _, o) in entries.values()] or [0])
    return struct.pack("<Q", len(header)) + header + bytes(data_len)


GOOD_WEIGHTS = {
    "linear1.bias": ("F32", [2], (0, 8)),
    "linear1.weight": ("F32", [2, 2], (8, 24)),
}

# ---------------------------------------------------------------- pipelines

TAIL = """student s = m
stage fit { train s on d.train, loss cross_entropy(s.logits, label), optimizer sgd(lr: 0.1), epochs 1, batch 2 }
evaluate s on d.test
"""


def idx_pipeline(images="images.idx", labels="labels.idx"):
    return (
        "pipeline hostile { seed: 1 }\n"
        f'data d = idx(images: "{images}", labels: "{labels}") {{ split {{ train: 2, test: 2 }} }}\n'
        "model m { input [1, 2, 2] flatten linear(2) as logits }\n" + TAIL
    )


def csv_pipeline(path="data.csv"):
    return (
        "pipeline hostile { seed: 1 }\n"
        f'data d = csv("{path}") {{ split {{ train: 2, test: 2 }} }}\n'
        "model m { input [2] linear(2) as logits }\n" + TAIL
    )


def weights_pipeline(path="weights.safetensors"):
    return (
        "pipeline hostile { seed: 1 }\n"
        'data d = csv("data.csv") { split { train: 2, test: 2 } }\n'
        "model m { input [2] linear(2) as logits }\n"
        f'teacher t = m from "{path}"\n'
        "evaluate t on d.test\n"
    )


# ---------------------------------------------------------------- writing

def case(name, about, command, names, pipeline, files, run=None, edits=()):
    folder = os.path.join(HERE, name)
    if os.path.isdir(folder):
        keep = os.path.join(folder, "expected.stderr")
        kept = open(keep, "rb").read() if os.path.exists(keep) else None
        shutil.rmtree(folder)
    else:
        kept = None
    os.makedirs(folder)
    if kept is not None:
        open(os.path.join(folder, "expected.stderr"), "wb").write(kept)
    lines = [f"# {about}", f"command: {command}", f"names: {names}"]
    esc = lambda t: t.replace("\n", "\\n")  # one line each; the test unescapes
    lines += [f"edit: {esc(old)} => {esc(new)}" for old, new in edits]
    open(os.path.join(folder, "case.txt"), "w").write("\n".join(lines) + "\n")
    open(os.path.join(folder, "pipeline.kd"), "w").write(pipeline)
    for sub, group in (("", files), ("run", run or {})):
        for path, content in group.items():
            full = os.path.join(folder, sub, path)
            if content is None:  # a folder where a file is expected
                os.makedirs(full, exist_ok=True)
                open(os.path.join(full, ".keep"), "w").close()
            else:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                open(full, "wb").write(content)


def idx_check(name, about, images=None, labels=None, bad="images.idx"):
    files = {"images.idx": images if images is not None else GOOD_IMAGES,
             "labels.idx": labels if labels is not None else GOOD_LABELS}
    if images is None and labels is None:
        raise ValueError(name)
    case(name, about, "check", bad, idx_pipeline(), files)


def idx_run(name, about, images=None, labels=None, bad="images.idx"):
    run = {}
    if images is not None:
        run["images.idx"] = images
    if labels is not None:
        run["labels.idx"] = labels
    case(name, about, "run", bad, idx_pipeline(),
         {"images.idx": GOOD_IMAGES, "labels.idx": GOOD_LABELS}, run=run)


def csv_check(name, about, content):
    case(name, about, "check", "data.csv", csv_pipeline(), {"data.csv": content})


def csv_run(name, about, content):
    case(name, about, "run", "data.csv", csv_pipeline(), {"data.csv": GOOD_CSV}, run={"data.csv": content})


def weights_check(name, about, content):
    case(name, about, "check", "weights.safetensors", weights_pipeline(),
         {"data.csv": GOOD_CSV, "weights.safetensors": content})


def weights_run(name, about, content):
    case(name, about, "run", "weights.safetensors", weights_pipeline(),
         {"data.csv": GOOD_CSV, "weights.safetensors": safetensors(GOOD_WEIGHTS)},
         run={"weights.safetensors": content})


# ---------------------------------------------------------------- text

def small_tokenizer():
    """MiniLM's tokenizer.json (tests/text) with its vocabulary cut to a few words: the real
    format, read by the real library, small enough to copy into each case."""
    full = json.load(open(os.path.join(HERE, "..", "text", "tokenizer.json")))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "free", "money", "meeting",
             "today", "win", "see", "you", "at", "the", "now"]
    vocab = {w: i for i, w in enumerate(words)}
    full["model"]["vocab"] = vocab
    full["truncation"] = None
    full["padding"] = None
    for token in full["added_tokens"]:
        token["id"] = vocab[token["content"]]
    for special in full["post_processor"]["special_tokens"].values():
        special["ids"] = [vocab[t] for t in special["tokens"]]
    return json.dumps(full, sort_keys=True).encode()


TOKENIZER = small_tokenizer()
GOOD_JSONL = b"".join(json.dumps(r).encode() + b"\n" for r in [
    {"text": "win free money now", "label": "spam"},
    {"text": "see you at the meeting", "label": "ham"},
    {"text": "free money today", "label": "spam"},
    {"text": "the meeting is today", "label": "ham"},
])


def text_pipeline(path="data.jsonl", extra=""):
    return (
        "pipeline hostile { seed: 1 }\n"
        f"data d = text(\"{path}\") {{ tokenizer: \"tokenizer.json\", max_len: 8{extra}, split {{ train: 2, test: 2 }} }}\n"
        "model m { input tokens[8] embedding(15, 4) max_over_time linear(2) as logits }\n"
        "student s = m\n"
        "stage fit { train s on d.train, loss cross_entropy(s.logits, label), optimizer sgd(lr: 0.1), epochs 1, batch 2 }\n"
        "evaluate s on d.test\n"
    )


def text_check(name, about, content, path="data.jsonl", extra="", names=None):
    case(name, about, "check", names or path, text_pipeline(path, extra),
         {path: content, "tokenizer.json": TOKENIZER})


def tokenizer_check(name, about, content):
    case(name, about, "check", "tokenizer.json", text_pipeline(),
         {"data.jsonl": GOOD_JSONL, "tokenizer.json": content})


def text_run(name, about, bad, content):
    case(name, about, "run", bad, text_pipeline(),
         {"data.jsonl": GOOD_JSONL, "tokenizer.json": TOKENIZER}, run={bad: content})


TEXT_CASES = {
    "text_jsonl_not_json": lambda: text_check(
        "text_jsonl_not_json", "a JSON Lines file with a line that is not JSON",
        GOOD_JSONL + b"{\"text\": \"cut off\n"),
    "text_jsonl_binary_junk": lambda: text_check(
        "text_jsonl_binary_junk", "random-looking bytes as JSON Lines",
        bytes((i * 97 + 13) % 256 for i in range(300))),
    "text_jsonl_missing_label": lambda: text_check(
        "text_jsonl_missing_label", "a record without the label field",
        GOOD_JSONL + b"{\"text\": \"no label here\"}\n"),
    "text_jsonl_label_is_object": lambda: text_check(
        "text_jsonl_label_is_object", "a label that is an object",
        GOOD_JSONL + b"{\"text\": \"x\", \"label\": {\"a\": 1}}\n"),
    "text_csv_unclosed_quote": lambda: text_check(
        "text_csv_unclosed_quote", "a CSV quoted field that never closes",
        b"text,label\n\"win free money,spam\nsee you,ham\n", path="data.csv"),
    "text_csv_short_row": lambda: text_check(
        "text_csv_short_row", "a CSV row with fewer fields than the header",
        b"text,label\nwin free money,spam\nsee you\n", path="data.csv"),
    "text_csv_no_text_column": lambda: text_check(
        "text_csv_no_text_column", "a CSV header without the text column",
        b"body,label\nwin,spam\nsee,ham\n", path="data.csv"),
    "text_json_not_an_array": lambda: text_check(
        "text_json_not_an_array", "a JSON file holding one object, not an array",
        b"{\"text\": \"x\", \"label\": \"ham\"}", path="data.json"),
    "text_json_empty_file": lambda: text_check(
        "text_json_empty_file", "an empty JSON file", b"", path="data.json"),
    "text_folder_of_loose_files": lambda: case(
        "text_folder_of_loose_files", "a folder of files with no sub-folder per label", "check",
        "mail", text_pipeline("mail"),
        {"mail/a.txt": b"win free money", "mail/b.txt": b"see you", "tokenizer.json": TOKENIZER}),
    "text_one_class": lambda: text_check(
        "text_one_class", "every sample with the same label",
        b"".join(json.dumps({"text": t, "label": "ham"}).encode() + b"\n" for t in ["a", "b", "c", "d"]),
        names="`d` has 1 class"),
    "text_tokenizer_not_json": lambda: tokenizer_check(
        "text_tokenizer_not_json", "a tokenizer.json that is not JSON", b"\x00\x01 not json"),
    "text_tokenizer_no_model": lambda: tokenizer_check(
        "text_tokenizer_no_model", "JSON without a tokenizer model", b"{\"added_tokens\": []}"),
    "text_tokenizer_no_padding_token": lambda: tokenizer_check(
        "text_tokenizer_no_padding_token", "a tokenizer with no padding token",
        json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0, "b": 1}}}).encode()),
    "text_tokenizer_huge_vocab": lambda: tokenizer_check(
        "text_tokenizer_huge_vocab", "a vocabulary claiming an id past 2^22",
        json.dumps({"model": {"vocab": {"[PAD]": 0, "x": 99999999}},
                    "added_tokens": [{"id": 0, "content": "[PAD]", "special": True}]}).encode()),
    # text, changed after the check
    "run_text_label_changed": lambda: text_run(
        "run_text_label_changed", "a label no class lists, at run time", "data.jsonl",
        GOOD_JSONL.replace(b"\"ham\"", b"\"eggs\"", 1)),
    "run_text_not_json": lambda: text_run(
        "run_text_not_json", "a data file that is no longer JSON at run time", "data.jsonl",
        b"\xff\xfe garbage\n"),
    "run_text_tokenizer_truncated": lambda: text_run(
        "run_text_tokenizer_truncated", "a tokenizer.json cut in half at run time",
        "tokenizer.json", TOKENIZER[: len(TOKENIZER) // 2]),
    "run_text_tokenizer_wrong_shape": lambda: text_run(
        "run_text_tokenizer_wrong_shape", "valid JSON that is not a tokenizer, at run time",
        "tokenizer.json", b"[1, 2, 3]"),
    "plan_text_max_len_absurd": lambda: case(
        "plan_text_max_len_absurd", "a hand-edited max_len of 10^12", "run", "data `d`",
        text_pipeline(), {"data.jsonl": GOOD_JSONL, "tokenizer.json": TOKENIZER},
        edits=[("sample_shape:\n  - 8", "sample_shape:\n  - 1000000000000")]),
}


def main():
    CASES.update(TEXT_CASES)
    CASES.update(NUMPY_CASES)
    CASES.update(IMAGE_CASES)
    CASES.update(TABLE_CASES)
    CASES.update(REPORT_CASES)
    CASES.update(SWEEP_CASES)
    for entry in os.listdir(HERE):
        if os.path.isdir(os.path.join(HERE, entry)) and entry not in CASES:
            shutil.rmtree(os.path.join(HERE, entry))
    for make in CASES.values():
        make()



# ---------------------------------------------------------------- NumPy

def npy(descr, shape, data, fortran=False, header=None):
    """An .npy file (format 1.0) as numpy.save writes it; `header` replaces the dict."""
    if header is None:
        dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
        header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': ({dims}), }}"
    text = header.encode()
    text += b" " * ((64 - (10 + len(text) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def npz(members, compressed=False):
    """A zip of .npy members as numpy.savez(_compressed) writes it, with fixed times."""
    import zipfile
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", method) as z:
        for name, content in members.items():
            z.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), content,
                       compress_type=method)
    return out.getvalue()


GOOD_X = npy("|u1", (4, 2, 2), bytes(range(16)))
GOOD_Y = npy("<i8", (4,), struct.pack("<4q", 0, 1, 0, 1))
GOOD_NPZ = npz({"x": GOOD_X, "y": GOOD_Y}, compressed=True)


def npy_pipeline():
    return (
        "pipeline hostile { seed: 1 }\n"
        'data d = npy(x: "x.npy", y: "y.npy") { split { train: 2, test: 2 } }\n'
        "model m { input [1, 2, 2] flatten linear(2) as logits }\n" + TAIL
    )


def npz_pipeline():
    return (
        "pipeline hostile { seed: 1 }\n"
        'data d = npz("data.npz", x: "x", y: "y") { split { train: 2, test: 2 } }\n'
        "model m { input [1, 2, 2] flatten linear(2) as logits }\n" + TAIL
    )


def npy_check(name, about, x=None, y=None):
    bad = "x.npy" if x is not None else "y.npy"
    files = {"x.npy": x if x is not None else GOOD_X, "y.npy": y if y is not None else GOOD_Y}
    case(name, about, "check", bad, npy_pipeline(), files)


def npy_run(name, about, x):
    case(name, about, "run", "x.npy", npy_pipeline(), {"x.npy": GOOD_X, "y.npy": GOOD_Y},
         run={"x.npy": x})


def npz_check(name, about, content):
    case(name, about, "check", "data.npz", npz_pipeline(), {"data.npz": content})


def npz_run(name, about, content):
    case(name, about, "run", "data.npz", npz_pipeline(), {"data.npz": GOOD_NPZ},
         run={"data.npz": content})


def corrupt_deflate(archive):
    """The archive with bytes in the middle of its first member's deflate stream flipped."""
    data = bytearray(archive)
    start = 30 + len("x.npy") + 8
    for i in range(start, start + 12):
        data[i] ^= 0x5A
    return bytes(data)


NUMPY_CASES = {
    "npy_bad_magic": lambda: npy_check(
        "npy_bad_magic", "a text file where an .npy file is expected", x=b"not an array\n" * 4),
    "npy_claims_1e12_values": lambda: npy_check(
        "npy_claims_1e12_values", "a header claiming 10^12 values, with 16 bytes of them",
        x=npy("|u1", (1_000_000, 1000, 1000), bytes(16))),
    "npy_shape_overflow": lambda: npy_check(
        "npy_shape_overflow", "a shape whose product overflows 64 bits",
        x=npy("<f4", (2**62, 2**62), bytes(16))),
    "npy_truncated_values": lambda: npy_check(
        "npy_truncated_values", "values cut short of the header's shape",
        x=npy("|u1", (4, 2, 2), bytes(10))),
    "npy_header_garbage": lambda: npy_check(
        "npy_header_garbage", "a header that is not a Python dict literal",
        x=npy("|u1", (4, 2, 2), bytes(16), header="{'descr': '|u1', 'fortran_order': Fal")),
    "npy_header_length_past_file": lambda: npy_check(
        "npy_header_length_past_file", "a header length of 65535 in a 20-byte file",
        x=b"\x93NUMPY\x01\x00\xff\xff{'descr'"),
    "npy_int16_samples": lambda: npy_check(
        "npy_int16_samples", "int16 samples", x=npy("<i2", (4, 2, 2), bytes(32))),
    "npy_structured": lambda: npy_check(
        "npy_structured", "a structured array", x=npy("|u1", (4, 2, 2), bytes(16),
        header="{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (4,), }")),
    "npy_labels_negative": lambda: npy_check(
        "npy_labels_negative", "a label of -1", y=npy("|i1", (4,), bytes([0, 1, 255, 1]))),
    "npy_labels_float": lambda: npy_check(
        "npy_labels_float", "float labels", y=npy("<f4", (4,), struct.pack("<4f", 0, 1, 0, 1))),
    "npy_labels_count_mismatch": lambda: npy_check(
        "npy_labels_count_mismatch", "three labels for four samples",
        y=npy("<i8", (3,), struct.pack("<3q", 0, 1, 0))),
    "npy_run_truncated": lambda: npy_run(
        "npy_run_truncated", "samples cut short at run time", GOOD_X[:-5]),
    "npz_not_zip": lambda: npz_check(
        "npz_not_zip", "a text file where an .npz archive is expected", b"not an archive\n" * 8),
    "npz_truncated": lambda: npz_check(
        "npz_truncated", "an archive cut in half", GOOD_NPZ[: len(GOOD_NPZ) // 2]),
    "npz_member_lies": lambda: npz_check(
        "npz_member_lies", "an array whose header claims more values than its member holds",
        npz({"x": npy("|u1", (4, 2, 2), bytes(8)), "y": GOOD_Y})),
    "npz_missing_key": lambda: npz_check(
        "npz_missing_key", "an archive without the array `x`", npz({"images": GOOD_X, "y": GOOD_Y})),
    "npz_run_deflate_corrupt": lambda: npz_run(
        "npz_run_deflate_corrupt", "a compressed array corrupted at run time",
        corrupt_deflate(GOOD_NPZ)),
}


# ---------------------------------------------------------------- images

def png(width, height, pixels=None, color_type=0):
    """A gray (or RGB, color_type 2) 8-bit PNG, written here so the corpus needs no Pillow."""
    import zlib
    channels = 3 if color_type == 2 else 1
    if pixels is None:
        pixels = bytes(width * height * channels)
    rows = b"".join(b"\x00" + pixels[r * width * channels:(r + 1) * width * channels]
                    for r in range(height))
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


GOOD_PNG = png(2, 2, bytes([0, 64, 128, 255]))
# A 2 x 2 RGB JPEG with 4:2:0 chroma, quality 90, as Pillow 12.3 writes it.
GOOD_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb00430003020203020203030303040303040508050504"
    "04050a070706080c0a0c0c0b0a0b0b0d0e12100d0e110e0b0b1016101113141515150c0f1718161418121415"
    "14ffdb00430103040405040509050509140d0b0d141414141414141414141414141414141414141414141414"
    "1414141414141414141414141414141414141414141414141414ffc000110800020002030122000211010311"
    "01ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303"
    "020403050504040000017d01020300041105122131410613516107227114328191a1082342b1c11552d1f024"
    "33627282090a161718191a25262728292a3435363738393a434445464748494a535455565758595a63646566"
    "6768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7"
    "b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffc400"
    "1f0100030101010101010101010000000000000102030405060708090a0bffc400b511000201020404030407"
    "05040400010277000102031104052131061241510761711322328108144291a1b1c109233352f0156272d10a"
    "162434e125f11718191a262728292a35363738393a434445464748494a535455565758595a63646566676869"
    "6a737475767778797a82838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9"
    "bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9faffda000c030100"
    "02110311003f00e7fc003cdf02786ddfe776d36d8b337249f29793451457e6d8bff78a9fe27f99f9163bfdea"
    "aff8a5f9b3ffd9"
)


def images_pipeline():
    return (
        "pipeline hostile { seed: 1 }\n"
        'data d = images("images") { shape: [1, 2, 2], split { train: 2, test: 2 } }\n'
        "model m { input [1, 2, 2] flatten linear(2) as logits }\n" + TAIL
    )


def image_files(bad_name, bad):
    files = {f"images/{c}/{i}.png": GOOD_PNG for c in ("a", "b") for i in range(2)}
    files[bad_name] = bad
    return files


def images_check(name, about, bad_name, bad):
    case(name, about, "check", bad_name.split("/")[-1], images_pipeline(), image_files(bad_name, bad))


def images_run(name, about, bad_name, bad):
    case(name, about, "run", bad_name.split("/")[-1], images_pipeline(),
         image_files(bad_name, GOOD_PNG), run={bad_name: bad})


IMAGE_CASES = {
    "images_bad_magic": lambda: images_check(
        "images_bad_magic", "a text file named .png among images", "images/b/0.png",
        b"this is not an image\n" * 4),
    "images_truncated_header": lambda: images_check(
        "images_truncated_header", "a PNG cut inside its header", "images/a/1.png", GOOD_PNG[:20]),
    "images_claims_100000_square": lambda: images_check(
        "images_claims_100000_square", "a PNG header claiming 100000 x 100000 pixels",
        "images/b/1.png", png(100000, 100000)[:33] + GOOD_PNG[33:]),
    "images_odd_size": lambda: images_check(
        "images_odd_size", "one image of another size, without resize", "images/b/0.png",
        png(3, 2, bytes(6))),
    "images_run_corrupt_pixels": lambda: images_run(
        "images_run_corrupt_pixels", "a PNG whose pixel data is corrupt, found when decoding",
        "images/a/0.png", GOOD_PNG[:41] + bytes(4) + GOOD_PNG[45:]),
    "images_run_jpeg_truncated": lambda: case(
        "images_run_jpeg_truncated", "a JPEG cut short inside its scan, found when decoding",
        "run", "1.jpg", images_pipeline(),
        {**{k: v for k, v in image_files("images/b/1.png", GOOD_PNG).items() if k != "images/b/1.png"},
         "images/b/1.jpg": GOOD_JPEG},
        run={"images/b/1.jpg": GOOD_JPEG[:630]}),
    "images_run_truncated": lambda: images_run(
        "images_run_truncated", "a PNG cut short after its header, found when decoding",
        "images/b/1.png", GOOD_PNG[:40]),
}

BOMB = gz(idx(0x08, [4, 2, 2], bytes(16)) + bytes(20 << 20))  # 16 bytes claimed, 20 MiB held
CLAIM_1E12 = idx(0x08, [1_000_000, 1000, 1000], bytes(16))  # 10^12 elements claimed
TRUNCATED_GZ = gz(GOOD_IMAGES)[:20]
F8 = dict(GOOD_WEIGHTS, **{"linear1.bias": ("F8_E4M3", [2], (0, 2)),
                           "linear1.weight": ("F32", [2, 2], (2, 18))})

CASES = {
    # IDX, refused by the checker
    "idx_truncated_header": lambda: idx_check(
        "idx_truncated_header", "an IDX header cut off after one of its three dimensions",
        images=GOOD_IMAGES[:8]),
    "idx_claims_1e12_elements": lambda: idx_check(
        "idx_claims_1e12_elements", "a header claiming 10^12 elements in a 32-byte file",
        images=CLAIM_1E12),
    "idx_data_length_mismatch": lambda: idx_check(
        "idx_data_length_mismatch", "16 bytes of data announced, 10 held",
        images=GOOD_IMAGES[:-6]),
    "idx_zero_dimensions": lambda: idx_check(
        "idx_zero_dimensions", "a header declaring no dimensions",
        images=idx(0x08, [], b"\x07")),
    "idx_zero_sized_sample": lambda: idx_check(
        "idx_zero_sized_sample", "images of shape [0, 2]",
        images=idx(0x08, [4, 0, 2], b"")),
    "idx_dimensions_overflow": lambda: idx_check(
        "idx_dimensions_overflow", "three dimensions of 2^32 - 1: their product overflows 64 bits",
        images=idx(0x0E, [0xFFFFFFFF] * 3, b"")),
    "idx_bad_magic": lambda: idx_check(
        "idx_bad_magic", "a text file where an IDX file is expected", images=b"hello, world\n"),
    "idx_unknown_type": lambda: idx_check(
        "idx_unknown_type", "element type 0x0A does not exist",
        images=idx(0x0A, [4, 2, 2], bytes(16))),
    "idx_empty_file": lambda: idx_check("idx_empty_file", "an empty images file", images=b""),
    "idx_gzip_bomb": lambda: idx_check(
        "idx_gzip_bomb", "gzip holding 20 MiB where the header claims 16 bytes", images=BOMB),
    "idx_gzip_truncated": lambda: idx_check(
        "idx_gzip_truncated", "a gzip stream cut off", images=TRUNCATED_GZ),
    "idx_gzip_claim_past_ratio": lambda: idx_check(
        "idx_gzip_claim_past_ratio", "gzip whose header claims more than deflate can expand to",
        images=gz(CLAIM_1E12)),
    "idx_labels_negative": lambda: idx_check(
        "idx_labels_negative", "signed byte labels holding -1",
        labels=idx(0x09, [4], bytes([0, 1, 0xFF, 1])), bad="labels.idx"),
    "idx_labels_float": lambda: idx_check(
        "idx_labels_float", "float labels",
        labels=idx(0x0D, [4], bytes(16)), bad="labels.idx"),
    "idx_labels_count_mismatch": lambda: idx_check(
        "idx_labels_count_mismatch", "4 images and 3 labels",
        labels=idx(0x08, [3], bytes([0, 1, 0])), bad="labels.idx"),
    "idx_folder_as_file": lambda: case(
        "idx_folder_as_file", "a folder where the images file is expected", "check", "images.idx",
        idx_pipeline(), {"images.idx": None, "labels.idx": GOOD_LABELS}),
    # CSV, refused by the checker
    "csv_ragged_rows": lambda: csv_check(
        "csv_ragged_rows", "a row with one field too many", b"1,2,0\n3,4,1\n5,6,7,0\n7,8,1\n"),
    "csv_not_utf8": lambda: csv_check(
        "csv_not_utf8", "a Latin-1 byte on line 2", b"1,2,0\n3,\xe94,1\n5,6,0\n7,8,1\n"),
    "csv_label_negative": lambda: csv_check(
        "csv_label_negative", "a label of -1", b"1,2,0\n3,4,-1\n5,6,0\n7,8,1\n"),
    "csv_label_past_u32": lambda: csv_check(
        "csv_label_past_u32", "a label of 2^64, past any class id",
        b"1,2,0\n3,4,18446744073709551616\n5,6,0\n7,8,1\n"),
    "csv_label_usize_max": lambda: csv_check(
        "csv_label_usize_max", "a label of 2^64 - 1 (the checker once added one to it and overflowed)",
        b"1,2,0\n3,4,18446744073709551615\n5,6,0\n7,8,1\n"),
    "csv_label_fraction": lambda: csv_check(
        "csv_label_fraction", "a label of 0.5", b"1,2,0\n3,4,0.5\n5,6,0\n7,8,1\n"),
    "csv_nan_feature": lambda: csv_check(
        "csv_nan_feature", "a NaN feature", b"1,2,0\n3,NaN,1\n5,6,0\n7,8,1\n"),
    "csv_huge_feature": lambda: csv_check(
        "csv_huge_feature", "1e39, past f32's range", b"1,2,0\n3,1e39,1\n5,6,0\n7,8,1\n"),
    "csv_not_a_number": lambda: csv_check(
        "csv_not_a_number", "a word among numbers", b"1,2,0\n3,four,1\n5,6,0\n7,8,1\n"),
    "csv_empty_file": lambda: csv_check("csv_empty_file", "an empty file", b""),
    "csv_blank_lines_only": lambda: csv_check(
        "csv_blank_lines_only", "only blank lines", b"\n  \n\n"),
    "csv_gzip_truncated": lambda: csv_check(
        "csv_gzip_truncated", "a gzip stream cut off", gz(GOOD_CSV * 50)[:30]),
    "csv_gzip_trailing_garbage": lambda: csv_check(
        "csv_gzip_trailing_garbage", "a gzip member followed by junk", gz(GOOD_CSV) + b"junk"),
    "csv_binary_junk": lambda: csv_check(
        "csv_binary_junk", "random-looking bytes", bytes((i * 97 + 13) % 256 for i in range(300))),
    "csv_folder_as_file": lambda: case(
        "csv_folder_as_file", "a folder where the CSV file is expected", "check", "data.csv",
        csv_pipeline(), {"data.csv": None}),
    # safetensors, refused by the checker
    "safetensors_header_2_63": lambda: weights_check(
        "safetensors_header_2_63", "a header length of 2^63",
        struct.pack("<Q", 1 << 63) + b"{}"),
    "safetensors_header_past_file": lambda: weights_check(
        "safetensors_header_past_file", "a header length of 1000 in a 30-byte file",
        struct.pack("<Q", 1000) + b"{}" + bytes(20)),
    "safetensors_not_json": lambda: weights_check(
        "safetensors_not_json", "a header that is not JSON",
        safetensors({}, data_len=24, header=b"not json at all")),
    "safetensors_offsets_past_file": lambda: weights_check(
        "safetensors_offsets_past_file", "a tensor whose bytes lie past the end of the file",
        safetensors(dict(GOOD_WEIGHTS, **{"linear1.weight": ("F32", [2, 2], (8, 4008))}), data_len=24)),
    "safetensors_wrong_dtype": lambda: weights_check(
        "safetensors_wrong_dtype", "an 8-bit float tensor", safetensors(F8)),
    "safetensors_unknown_dtype": lambda: weights_check(
        "safetensors_unknown_dtype", "a dtype safetensors does not have",
        safetensors(dict(GOOD_WEIGHTS, **{"linear1.bias": ("Q7", [2], (0, 8))}))),
    "safetensors_shape_mismatch": lambda: weights_check(
        "safetensors_shape_mismatch", "weights of shape [4] where the model needs [2, 2]",
        safetensors(dict(GOOD_WEIGHTS, **{"linear1.weight": ("F32", [4], (8, 24))}))),
    "safetensors_bytes_mismatch": lambda: weights_check(
        "safetensors_bytes_mismatch", "a [2, 2] F32 tensor given 8 bytes",
        safetensors({"linear1.bias": ("F32", [2], (0, 8)), "linear1.weight": ("F32", [2, 2], (8, 16))})),
    "safetensors_too_short": lambda: weights_check(
        "safetensors_too_short", "four bytes", b"\x01\x02\x03\x04"),
    # the runtime's loaders on their own: the files changed after the check
    "run_idx_truncated": lambda: idx_run(
        "run_idx_truncated", "images truncated after the check", images=GOOD_IMAGES[:-3]),
    "run_idx_claims_1e12_elements": lambda: idx_run(
        "run_idx_claims_1e12_elements", "a header claiming 10^12 elements at run time",
        images=CLAIM_1E12),
    "run_idx_gzip_bomb": lambda: idx_run(
        "run_idx_gzip_bomb", "a gzip bomb at run time", images=BOMB),
    "run_idx_gzip_truncated": lambda: idx_run(
        "run_idx_gzip_truncated", "a gzip stream cut off at run time", images=TRUNCATED_GZ),
    "run_idx_float_nan": lambda: idx_run(
        "run_idx_float_nan", "float images holding NaN",
        images=idx(0x0D, [4, 2, 2], struct.pack(">16f", *([1.0] * 15 + [float("nan")])))),
    "run_idx_labels_folder": lambda: case(
        "run_idx_labels_folder", "the labels file replaced by a folder", "run", "labels.idx",
        idx_pipeline(), {"images.idx": GOOD_IMAGES, "labels.idx": GOOD_LABELS},
        run={"labels.idx/": None}),
    "run_csv_not_utf8": lambda: csv_run(
        "run_csv_not_utf8", "non-UTF-8 text at run time", b"1,2,0\n3,4,1\n5,\xff6,0\n7,8,1\n"),
    "run_csv_nan_feature": lambda: csv_run(
        "run_csv_nan_feature", "a NaN feature at run time", b"1,2,0\n3,4,1\n5,nan,0\n7,8,1\n"),
    "run_csv_ragged_rows": lambda: csv_run(
        "run_csv_ragged_rows", "a short row at run time", b"1,2,0\n3,4,1\n5,0\n7,8,1\n"),
    "run_csv_gzip_truncated": lambda: csv_run(
        "run_csv_gzip_truncated", "a gzip stream cut off at run time", gz(GOOD_CSV * 50)[:30]),
    "run_safetensors_header_2_63": lambda: weights_run(
        "run_safetensors_header_2_63", "a header length of 2^63 at run time",
        struct.pack("<Q", 1 << 63) + b"{}"),
    "run_safetensors_not_json": lambda: weights_run(
        "run_safetensors_not_json", "a header that is not JSON at run time",
        safetensors({}, data_len=24, header=b"{\"linear1.bias\": ")),
    "run_safetensors_offsets_past_file": lambda: weights_run(
        "run_safetensors_offsets_past_file", "tensor bytes past the end of the file at run time",
        safetensors(dict(GOOD_WEIGHTS, **{"linear1.weight": ("F32", [2, 2], (8, 4008))}), data_len=24)),
    "run_safetensors_wrong_dtype": lambda: weights_run(
        "run_safetensors_wrong_dtype", "an 8-bit float tensor at run time", safetensors(F8)),
    "run_safetensors_shape_mismatch": lambda: weights_run(
        "run_safetensors_shape_mismatch", "weights of the wrong shape at run time",
        safetensors(dict(GOOD_WEIGHTS, **{"linear1.weight": ("F32", [4], (8, 24))}))),
    "run_safetensors_empty": lambda: weights_run(
        "run_safetensors_empty", "an empty weights file at run time", b""),
    # .kd files kdc fmt refuses (and must not touch)
    "fmt_syntax_error": lambda: case(
        "fmt_syntax_error", "a pipeline with a syntax error, formatted", "fmt", "pipeline.kd",
        "pipeline p { seed: 1 }\nmodel m { input [2] linear(2 as logits }\n", {}),
    "fmt_not_utf8": lambda: case(
        "fmt_not_utf8", "a pipeline file that is not UTF-8, formatted", "fmt", "pipeline.kd",
        "", {"pipeline.kd": b"pipeline p { seed: 1 }\n// \xff\xfe caf\xe9\n"}),
    # plans edited by hand
    "plan_garbage": lambda: case(
        "plan_garbage", "a plan.yaml that is not YAML", "run", "plan.yaml", csv_pipeline(),
        {"data.csv": GOOD_CSV}, edits=[("version: 4", "\x01\x02 ]: [ {{")]),
    "plan_wrong_version": lambda: case(
        "plan_wrong_version", "a plan of a version this kdc does not read", "run", "plan.yaml",
        csv_pipeline(), {"data.csv": GOOD_CSV}, edits=[("version: 4", "version: 99")]),
    "plan_number_past_u64": lambda: case(
        "plan_number_past_u64", "a seed past 2^64", "run", "plan.yaml", csv_pipeline(),
        {"data.csv": GOOD_CSV}, edits=[("seed: 1", "seed: 123456789012345678901234567890")]),
    "plan_sample_shape_overflow": lambda: case(
        "plan_sample_shape_overflow", "a sample shape whose product overflows", "run", "data `d`",
        csv_pipeline(), {"data.csv": GOOD_CSV},
        edits=[("sample_shape:\n  - 2", "sample_shape:\n  - 4294967296\n  - 4294967296")]),
}

# ---------------------------------------------------------------- Parquet and Arrow

def table_file(name):
    """A table tests/tables/make.py wrote with datasets and pyarrow (this script needs
    neither: it cuts and edits their bytes)."""
    return open(os.path.join(HERE, "..", "tables", name), "rb").read()


GOOD_PARQUET = table_file("shapes.parquet")
GOOD_SHARD = table_file("shapes-arrow/data-00000-of-00002.arrow")
GOOD_IPC_FILE = table_file("texts.arrow")


def parquet_footer_length(data, length):
    """The file with its footer's length field (the 4 bytes before the closing PAR1) set."""
    return data[:-8] + struct.pack("<I", length) + b"PAR1"


def table_pipeline(source):
    return (
        "pipeline hostile { seed: 1 }\n"
        f"data d = {source} {{ shape: [1, 6, 6], split {{ train: 8, test: 4 }} }}\n"
        "model m { input [1, 6, 6] flatten linear(2) as logits }\n" + TAIL
    )


def parquet_check(name, about, content):
    case(name, about, "check", "shapes.parquet", table_pipeline('parquet("shapes.parquet")'),
         {"shapes.parquet": content})


def shards_check(name, about, content):
    case(name, about, "check", "data-00001-of-00002.arrow", table_pipeline('arrow("shapes")'),
         {"shapes/data-00000-of-00002.arrow": GOOD_SHARD,
          "shapes/data-00001-of-00002.arrow": content})


def ipc_file_check(name, about, content):
    pipeline = (
        "pipeline hostile { seed: 1 }\n"
        'data d = arrow("texts.arrow") { text: "sentence", label: "kind", tokenizer: "tokenizer.json", max_len: 8, split { train: 2, test: 2 } }\n'
        "model m { input tokens[8] embedding(15, 4) max_over_time linear(2) as logits }\n" + TAIL
    )
    case(name, about, "check", "texts.arrow", pipeline,
         {"texts.arrow": content, "tokenizer.json": TOKENIZER})


TABLE_CASES = {
    "tables_parquet_truncated": lambda: parquet_check(
        "tables_parquet_truncated", "a Parquet file cut in half: no footer",
        GOOD_PARQUET[:len(GOOD_PARQUET) // 2]),
    "tables_parquet_footer_claims_2gib": lambda: parquet_check(
        "tables_parquet_footer_claims_2gib", "a Parquet footer length of 2 GiB in a 3 KiB file",
        parquet_footer_length(GOOD_PARQUET, 0x7FFFFFF0)),
    "tables_parquet_footer_lies": lambda: parquet_check(
        "tables_parquet_footer_lies", "a Parquet footer length 40 bytes short: the footer misparsed",
        parquet_footer_length(GOOD_PARQUET, struct.unpack("<I", GOOD_PARQUET[-8:-4])[0] - 40)),
    "tables_parquet_chunk_moved": lambda: parquet_check(
        "tables_parquet_chunk_moved",
        "500 bytes of column data cut out: the footer's offsets point at other bytes",
        GOOD_PARQUET[:4] + GOOD_PARQUET[504:]),
    "tables_parquet_chunk_past_end": lambda: parquet_check(
        "tables_parquet_chunk_past_end",
        "every column's data cut out, the footer kept: its chunks lie past the file's end",
        GOOD_PARQUET[:4] + GOOD_PARQUET[-(struct.unpack("<I", GOOD_PARQUET[-8:-4])[0] + 8):]),
    "tables_parquet_not_parquet": lambda: parquet_check(
        "tables_parquet_not_parquet", "a text file named .parquet", b"name,label\nx,1\n" * 4),
    "tables_arrow_shard_truncated": lambda: shards_check(
        "tables_arrow_shard_truncated", "an Arrow stream shard cut inside its record batch",
        GOOD_SHARD[:len(GOOD_SHARD) - 300]),
    "tables_arrow_shard_junk": lambda: shards_check(
        "tables_arrow_shard_junk", "random-looking bytes as an Arrow stream shard",
        bytes((i * 89 + 7) % 256 for i in range(600))),
    "tables_arrow_file_blocks_outside": lambda: ipc_file_check(
        "tables_arrow_file_blocks_outside",
        "200 bytes cut from an Arrow IPC file's body: its footer's blocks lie past the end",
        GOOD_IPC_FILE[:8] + GOOD_IPC_FILE[208:]),
    "tables_arrow_file_footer_negative": lambda: ipc_file_check(
        "tables_arrow_file_footer_negative", "an Arrow IPC file whose footer length is negative",
        GOOD_IPC_FILE[:-10] + struct.pack("<i", -5) + b"ARROW1"),
    "tables_run_corrupt_image": lambda: case(
        "tables_run_corrupt_image", "a table whose image turns corrupt after the check",
        "run", "shapes.parquet", table_pipeline('parquet("shapes.parquet")'),
        {"shapes.parquet": GOOD_PARQUET}, run={"shapes.parquet": table_file("broken_image.parquet")}),
}


# ---------------------------------------------------------------- kdc report

GOOD_SUMMARY = {
    "schema_version": 1, "pipeline": "p", "seed": 7, "seeds": [7], "device": "cpu",
    "threads": 1,
    "provenance": {"kdc_version": "0.1.0", "plan_hash": "ab" * 32, "overrides": {},
                   "data_files": {}},
    "models": {"s": {"role": "student", "architecture": "a", "params": 10, "bytes": None,
                     "metrics": {}}},
    "stages": [],
}
GOOD_EPOCH = {"seed": 7, "stage": "train", "model": "s", "epoch": 1, "steps": 2, "lr": 0.1,
              "train_loss": 0.5, "seconds": 0.1}


def report_case(name, about, names, summary, metrics=None):
    files = {"summary.json": summary}
    if metrics is not None:
        files["metrics.jsonl"] = metrics
    case(name, about, "report", names, "// a run folder: kdc report reads the files beside this\n",
         files)


def summary_bytes(change):
    summary = json.loads(json.dumps(GOOD_SUMMARY))
    change(summary)
    return json.dumps(summary).encode()


REPORT_CASES = {
    "report_summary_truncated": lambda: report_case(
        "report_summary_truncated", "summary.json cut in the middle", "summary.json",
        json.dumps(GOOD_SUMMARY).encode()[:120]),
    "report_summary_wrong_types": lambda: report_case(
        "report_summary_wrong_types", "a summary whose parameter count is a string", "summary.json",
        summary_bytes(lambda s: s["models"]["s"].update(params="ten"))),
    "report_summary_huge_count": lambda: report_case(
        "report_summary_huge_count", "a parameter count past 2^64", "summary.json",
        summary_bytes(lambda s: s["models"]["s"].update(params=10 ** 30))),
    "report_metrics_not_json": lambda: report_case(
        "report_metrics_not_json", "a metrics.jsonl line of binary junk", "metrics.jsonl",
        json.dumps(GOOD_SUMMARY).encode(),
        (json.dumps(GOOD_EPOCH) + "\n").encode() + bytes(range(1, 40)) + b"\n"),
    "report_metrics_missing_fields": lambda: report_case(
        "report_metrics_missing_fields", "an epoch record without its loss", "metrics.jsonl",
        json.dumps(GOOD_SUMMARY).encode(),
        (json.dumps({"seed": 7, "stage": "train", "epoch": 1}) + "\n").encode()),
}


def sweep_case(name, about, sweep_yaml):
    case(name, about, "resume", "sweep.yaml",
         "// a stopped sweep's run folder: kdc run --resume reads the sweep.yaml beside this\n",
         {"sweep.yaml": sweep_yaml, ".kdc-run": b"a kdc run folder\n"})


SWEEP_CASES = {
    "resume_sweep_truncated": lambda: sweep_case(
        "resume_sweep_truncated", "a sweep.yaml cut in the middle of its first plan",
        b"name: tune\nsearch: grid\nselect:\n  metric: accuracy\n  model: s\n  baselines: []\n"
        b"  data: digits\n  split: val\nconfigs:\n- name: c01\n  values: []\n  plan:\n    version: 4\n    sour"),
    "resume_sweep_junk": lambda: sweep_case(
        "resume_sweep_junk", "a sweep.yaml of binary junk", bytes(range(1, 200))),
}


if __name__ == "__main__":
    main()

