//! Parquet and Arrow tables (`parquet(...)`, `arrow(...)`) against their producers: Hugging
//! Face `datasets` and pyarrow (from PyPI, scripts/python-env.sh) write tables of images
//! and of texts, as people's scripts do: `datasets`' `{bytes, path}` images with a
//! ClassLabel, in Parquet shards and in `save_to_disk`'s Arrow stream shards; pyarrow's own
//! IPC files, zstd Parquet with dictionary labels and several row groups, images stored by
//! path. kdc's samples must equal what Pillow decodes (JPEG within 2 levels), labels and
//! class names what the producers wrote, texts what the same rows give as JSON Lines, and a
//! pipeline on a table must run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::python;
use kd_runtime::data::{Dataset, Samples};

const WRITE: &str = r#"
import io, json, os, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, datasets
from PIL import Image
out = sys.argv[1]
rng = np.random.default_rng(7)
def encoded(img, fmt, **kw):
    b = io.BytesIO(); img.save(b, fmt, **kw); return b.getvalue()
def chw(data):
    return np.transpose(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), (2, 0, 1))
def rgb():
    return Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8), "RGB")

# datasets: RGB PNG, BMP, lossless WebP and JPEG in the Image feature; a ClassLabel whose
# names are not sorted; two Parquet shards, and save_to_disk's two Arrow stream shards.
y, x = np.mgrid[0:6, 0:8]
smooth = Image.fromarray(np.stack([x * 30, y * 40, (x + y) * 15], axis=2).astype(np.uint8))
cells = [encoded(rgb(), "PNG"), encoded(rgb(), "BMP"), encoded(rgb(), "WEBP", lossless=True),
         encoded(smooth, "JPEG", quality=95, subsampling=0), encoded(rgb(), "PNG"),
         encoded(rgb(), "PNG")]
labels = [2, 0, 1, 1, 0, 2]
features = datasets.Features({"image": datasets.Image(),
                              "label": datasets.ClassLabel(names=["zebra", "ant", "cat"])})
ds = datasets.Dataset.from_dict(
    {"image": [{"bytes": c, "path": None} for c in cells], "label": labels}, features=features)
os.makedirs(os.path.join(out, "hub"))
for i in range(2):
    ds.shard(2, i, contiguous=True).to_parquet(os.path.join(out, "hub", f"train-0000{i}-of-00002.parquet"))
ds.save_to_disk(os.path.join(out, "saved"), num_shards=2)
np.concatenate([chw(c).ravel() for c in cells]).tofile(os.path.join(out, "rgb.u8"))

# pyarrow: an IPC file of gray PNGs (large_binary) with uint16 labels 10 and 3.
gray = [rng.integers(0, 256, size=(5, 7), dtype=np.uint8) for _ in range(4)]
table = pa.table({"png": pa.array([encoded(Image.fromarray(g, "L"), "PNG") for g in gray], pa.large_binary()),
                  "digit": pa.array([10, 3, 3, 10], pa.uint16())})
with pa.OSFile(os.path.join(out, "gray.arrow"), "wb") as sink:
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
np.concatenate([g.ravel() for g in gray]).tofile(os.path.join(out, "gray.u8"))

# zstd Parquet, three row groups of two, dictionary-encoded string labels; and a table
# whose images are files named by path, relative to it.
names = ["b", "a", "c", "a", "b", "c"]
pq.write_table(pa.table({"image": pa.array(cells, pa.binary()),
                         "kind": pa.array(names).dictionary_encode()}),
               os.path.join(out, "dict.parquet"), compression="zstd", row_group_size=2)
os.makedirs(os.path.join(out, "linked", "imgs"))
for i, c in enumerate(cells[:2]):
    open(os.path.join(out, "linked", "imgs", f"{i}.png"), "wb").write(c)
pq.write_table(pa.table({"image": pa.array([{"bytes": None, "path": f"imgs/{i}.png"} for i in range(2)],
                                           pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                         "label": pa.array(["x", "y"])}),
               os.path.join(out, "linked", "table.parquet"))

# Texts: a ClassLabel in Parquet, a test part, and the same rows as JSON Lines.
texts = ["free money now", "see you at lunch", "win a prize today", "notes from the meeting",
         "cheap pills online", "the report is attached"]
kinds = [1, 0, 1, 0, 1, 0]
tf = datasets.Features({"sentence": datasets.Value("string"),
                        "label": datasets.ClassLabel(names=["ham", "spam"])})
tds = datasets.Dataset.from_dict({"sentence": texts, "label": kinds}, features=tf)
tds.to_parquet(os.path.join(out, "texts.parquet"))
tds.select(range(2)).to_parquet(os.path.join(out, "texts-test.parquet"))
with open(os.path.join(out, "texts.jsonl"), "w") as f:
    for t, k in zip(texts, kinds):
        f.write(json.dumps({"text": t, "label": ["ham", "spam"][k]}) + "\n")
"#;

fn write_tables() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-tables-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new(python())
        .args(["-c", WRITE])
        .arg(&dir)
        // datasets keeps a cache and may look for the hub: neither is wanted here.
        .env("HF_HOME", dir.join("hf-home"))
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "datasets and pyarrow could not write the tables"
    );
    dir
}

fn bytes(samples: &Samples) -> Vec<u8> {
    match samples {
        Samples::U8(v) => v.clone(),
        Samples::F32(_) => panic!("image samples are bytes"),
    }
}

const MODEL: &str = r#"
model m { input INPUT flatten linear(CLASSES) as logits }
student s = m
stage fit { train s on d.train, loss cross_entropy(s.logits, label), optimizer adam(lr: 1e-3), epochs 1, batch 2 }
"#;

/// A model's input for the texts: ids of the test tokenizer's vocabulary, pooled.
const TOKENS: &str = "tokens[8] embedding(30522, 4) pool(mean)";

fn compile(dir: &Path, source: &str, settings: &str, input: &str, classes: usize) -> kd_plan::Plan {
    let text = format!(
        "pipeline tables {{ seed: 3, output: \"runs\" }}\ndata d = {source} {{ {settings} }}\n{}",
        MODEL
            .replace("INPUT", input)
            .replace("CLASSES", &classes.to_string())
    );
    let path = dir.join("tables.kd");
    std::fs::write(&path, &text).unwrap();
    match kd_compiler::compile(&text, &path, &[]) {
        Ok(compiled) => compiled.plan,
        Err(errors) => panic!("{source}: {errors:?}"),
    }
}

fn load(
    dir: &Path,
    source: &str,
    settings: &str,
    input: &str,
    classes: usize,
) -> (kd_plan::DataSpec, Dataset) {
    let plan = compile(dir, source, settings, input, classes);
    let spec = plan.data[0].clone();
    let data = Dataset::load(&spec, dir, 3).unwrap();
    (spec, data)
}

#[test]
fn tables_read_as_their_producers_wrote_them() {
    let dir = write_tables();
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let rgb = read("rgb.u8");
    let plane = 3 * 6 * 8;
    let near_pillow = |got: &[u8]| {
        // PNG, BMP and lossless WebP exactly; the JPEG (the fourth) within 2 levels.
        assert_eq!(got.len(), rgb.len());
        for (i, (a, b)) in got.chunks(plane).zip(rgb.chunks(plane)).enumerate() {
            let worst = a.iter().zip(b).map(|(&a, &b)| a.abs_diff(b)).max().unwrap();
            assert!(
                worst <= if i == 3 { 2 } else { 0 },
                "image {i}: {worst} levels"
            );
        }
    };

    // datasets' Parquet shards, in name order, and its save_to_disk folder: the ClassLabel's
    // names in their own order, each row's class its label.
    for source in ["parquet(\"hub\")", "arrow(\"saved\")"] {
        let (spec, data) = load(&dir, source, "", "[3, 6, 8]", 3);
        assert_eq!(spec.class_names, vec!["zebra", "ant", "cat"], "{source}");
        assert_eq!(spec.sample_shape, vec![3, 6, 8]);
        assert_eq!(data.train.labels, vec![2, 0, 1, 1, 0, 2], "{source}");
        near_pillow(&bytes(&data.train.samples));
    }

    // pyarrow's IPC file: large_binary gray images, uint16 labels in numeric order.
    let (spec, data) = load(
        &dir,
        "arrow(\"gray.arrow\")",
        "image: \"png\", label: \"digit\", shape: [1, 5, 7]",
        "[1, 5, 7]",
        2,
    );
    assert_eq!(spec.class_names, vec!["3", "10"]);
    assert_eq!(data.train.labels, vec![1, 0, 0, 1]);
    assert_eq!(bytes(&data.train.samples), read("gray.u8"));

    // zstd, row groups of two, dictionary labels sorted; `classes` merging two of them.
    let (spec, data) = load(
        &dir,
        "parquet(\"dict.parquet\")",
        "label: \"kind\"",
        "[3, 6, 8]",
        3,
    );
    assert_eq!(spec.class_names, vec!["a", "b", "c"]);
    assert_eq!(data.train.labels, vec![1, 0, 2, 0, 1, 2]);
    near_pillow(&bytes(&data.train.samples));
    let (_, data) = load(
        &dir,
        "parquet(\"dict.parquet\")",
        "label: \"kind\", classes { ab: [\"a\", \"b\"], c: [\"c\"] }",
        "[3, 6, 8]",
        2,
    );
    assert_eq!(data.train.labels, vec![0, 0, 1, 0, 0, 1]);

    // Images named by path, relative to the table.
    let (_, data) = load(
        &dir,
        "parquet(\"linked/table.parquet\")",
        "",
        "[3, 6, 8]",
        2,
    );
    assert_eq!(bytes(&data.train.samples), rgb[..2 * plane]);

    // Texts: the same ids as the same rows read as JSON Lines; a test part; ClassLabel
    // names as raw labels.
    let tokenizer = common::root().join("tests/text/tokenizer.json");
    let text_settings = format!(
        "text: \"sentence\", tokenizer: \"{}\", max_len: 8",
        tokenizer.display()
    );
    let (spec, table) = load(
        &dir,
        "parquet(\"texts.parquet\", test: \"texts-test.parquet\")",
        &text_settings,
        TOKENS,
        2,
    );
    assert_eq!(spec.class_names, vec!["ham", "spam"]);
    assert_eq!(spec.samples.unwrap().test, Some(2));
    let jsonl_settings = format!(
        "tokenizer: \"{}\", max_len: 8, classes: [\"ham\", \"spam\"]",
        tokenizer.display()
    );
    let (_, lines) = load(&dir, "text(\"texts.jsonl\")", &jsonl_settings, TOKENS, 2);
    assert_eq!(table.train.labels, lines.train.labels);
    let ids = |s: &Samples| match s {
        Samples::F32(v) => v.clone(),
        Samples::U8(_) => panic!("token ids are f32"),
    };
    assert_eq!(ids(&table.train.samples), ids(&lines.train.samples));
    let test = table.test.as_ref().unwrap();
    assert_eq!(test.labels, lines.train.labels[..2]);
    assert_eq!(ids(&test.samples), ids(&lines.train.samples)[..16]);

    // A wildcard picks one shard of the folder.
    let (_, data) = load(
        &dir,
        "parquet(\"hub/*-00001-*.parquet\")",
        "",
        "[3, 6, 8]",
        3,
    );
    assert_eq!(data.train.labels, vec![1, 0, 2]);

    // `limit` reads only the first rows, across shards.
    let (_, data) = load(&dir, "parquet(\"hub\")", "limit: 4", "[3, 6, 8]", 3);
    assert_eq!(data.train.labels, vec![2, 0, 1, 1]);

    // A whole run on the Parquet shards, through the command line.
    compile(
        &dir,
        "parquet(\"hub\")",
        "split { train: 4, val: rest }",
        "[3, 6, 8]",
        3,
    );
    let run = Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(["run", "tables.kd"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn table_images_are_cached_on_disk() {
    // The committed fixture (12 gray PNGs, tests/tables/PROVENANCE.md), copied so that it
    // can be changed.
    let dir = std::env::temp_dir().join(format!("kdc-tables-cache-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tables/shapes.parquet");
    std::fs::copy(&fixture, dir.join("shapes.parquet")).unwrap();
    let cache = dir.join("cache");
    let plan = compile(
        &dir,
        "parquet(\"shapes.parquet\")",
        "shape: [1, 6, 6]",
        "[1, 6, 6]",
        2,
    );
    let spec = plan.data[0].clone();
    let load = || Dataset::load_cached(&spec, &dir, 3, Some(&cache)).unwrap();
    let first = load();
    let cached: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let file = &cached[0];
    assert!(file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("table-"));
    let pixels = bytes(&first.train.samples);
    assert_eq!(pixels.len(), 12 * 36);
    assert_eq!(std::fs::read(file).unwrap().len(), pixels.len() + 32);
    let uncached = Dataset::load(&spec, &dir, 3).unwrap();
    assert_eq!(bytes(&uncached.train.samples), pixels);
    assert_eq!(first.files, uncached.files);

    // Read from the cache: pixels edited there, with their checksum, come back as edited.
    let (edited, with_sum) = common::edit_cached_pixels(file, &pixels);
    let again = load();
    assert_eq!(bytes(&again.train.samples), edited);
    assert_eq!(again.files, first.files);

    // A cut-short cache file is decoded again and rewritten; `limit` is another file.
    std::fs::write(file, &with_sum[..10]).unwrap();
    assert_eq!(bytes(&load().train.samples), pixels);
    assert_eq!(std::fs::read(file).unwrap().len(), pixels.len() + 32);
    let plan = compile(
        &dir,
        "parquet(\"shapes.parquet\")",
        "shape: [1, 6, 6], limit: 5",
        "[1, 6, 6]",
        2,
    );
    let limited = Dataset::load_cached(&plan.data[0], &dir, 3, Some(&cache)).unwrap();
    assert_eq!(bytes(&limited.train.samples), pixels[..5 * 36]);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_check_reads_only_the_rows_a_limit_keeps() {
    // Row 8 of the committed fixture is 7 x 5 among 6 x 6 images (tests/tables/make.py).
    let dir = std::env::temp_dir().join(format!("kdc-tables-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tables/odd_size.parquet");
    std::fs::copy(&fixture, dir.join("odd.parquet")).unwrap();
    let text = |settings: &str| {
        format!(
            "pipeline tables {{ seed: 3, output: \"runs\" }}\ndata d = parquet(\"odd.parquet\") {{ shape: [1, 6, 6] {settings} }}\n{}",
            MODEL.replace("INPUT", "[1, 6, 6]").replace("CLASSES", "2")
        )
    };
    let path = dir.join("tables.kd");
    let Err(errors) = kd_compiler::compile(&text(""), &path, &[]) else {
        panic!("the odd image went unnoticed");
    };
    assert!(format!("{errors:?}").contains("row 8"), "{errors:?}");
    let plan = match kd_compiler::compile(&text(", limit: 7"), &path, &[]) {
        Ok(compiled) => compiled.plan,
        Err(errors) => panic!("{errors:?}"),
    };
    let data = Dataset::load(&plan.data[0], &dir, 3).unwrap();
    assert_eq!(data.train.labels.len(), 7);
    std::fs::remove_dir_all(&dir).ok();
}
