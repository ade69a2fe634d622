//! Image data (`images(...)`) against Pillow: Pillow (from PyPI, scripts/python-env.sh)
//! writes PNG, BMP, lossless WebP and JPEG files (RGB, gray, 16-bit gray, palette, RGBA,
//! CMYK) in the ImageFolder layout and as a CSV list, and dumps what it decodes from each.
//! kdc's samples must equal Pillow's pixels (JPEG within 2 levels, 16-bit within one level
//! of v / 257), class names must be the folders', resizing must land near Pillow's bilinear
//! resize, and a pipeline on the images must run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::python;
use kd_runtime::data::{Dataset, Samples};

const WRITE: &str = r#"
import os, sys, numpy as np
from PIL import Image
out = sys.argv[1]
rng = np.random.default_rng(5)
def folder(*parts):
    p = os.path.join(out, *parts); os.makedirs(p, exist_ok=True); return p
def rgb(h, w):
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")
def chw(img):
    return np.transpose(np.asarray(img.convert("RGB")), (2, 0, 1))

# RGB, ImageFolder: sorted classes, images at any depth in a class folder; other files,
# hidden files and hidden folders skipped.
written = [("cat", "a.png"), ("cat", "b.bmp"), ("cat", "c.webp"), ("cat", "sub/deeper/e.png"),
           ("cat", "sub-b/f.png"), ("cat", "sub/d.png"), ("dog", "z.png"), ("dog", "a.png")]
for cls, name in written:
    path = os.path.join(folder("rgb", cls, os.path.dirname(name)), os.path.basename(name))
    img = rgb(6, 8)
    if name.endswith(".webp"):
        img.save(path, lossless=True)
    else:
        img.save(path)
open(os.path.join(out, "rgb", "cat", "README.txt"), "w").write("not an image")
open(os.path.join(out, "rgb", "dog", ".hidden.png"), "w").write("hidden")
rgb(6, 8).save(os.path.join(folder("rgb", "dog", ".thumbnails"), "t.png"))
# torchvision's ImageFolder order (datasets.folder.make_dataset): sorted(os.walk(class)),
# then sorted file names, here leaving hidden names out as kdc does.
expected = []
for cls in ["cat", "dog"]:
    for root, dirs, names in sorted(os.walk(os.path.join(out, "rgb", cls))):
        if "/." in root:
            continue
        for name in sorted(names):
            if name.endswith((".png", ".bmp", ".webp")) and not name.startswith("."):
                expected.append(chw(Image.open(os.path.join(root, name))))
assert len(expected) == 8
np.concatenate([e.ravel() for e in expected]).tofile(os.path.join(out, "rgb.u8"))

# Converted to RGB: palette, RGBA (alpha dropped), 16-bit gray scaled.
d = folder("mixed", "x")
rgb(6, 8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(os.path.join(d, "1_palette.png"))
Image.fromarray(rng.integers(0, 256, size=(6, 8, 4), dtype=np.uint8), "RGBA").save(os.path.join(d, "2_rgba.png"))
deep = rng.integers(0, 65536, size=(6, 8), dtype=np.uint16)
Image.fromarray(deep).save(os.path.join(folder("mixed", "y"), "3_gray16.png"))
mixed = [chw(Image.open(os.path.join(d, n))) for n in ["1_palette.png", "2_rgba.png"]]
mixed.append(np.repeat((deep / 257.0)[None], 3, axis=0))
np.concatenate([m.ravel().astype(np.float32) for m in mixed]).tofile(os.path.join(out, "mixed.f32"))

# Gray, as MNIST's digits would be written.
gray = []
for cls in ["0", "1"]:
    d = folder("gray", cls)
    for i in range(3):
        img = Image.fromarray(rng.integers(0, 256, size=(7, 5), dtype=np.uint8), "L")
        img.save(os.path.join(d, f"{i}.png"))
        gray.append(np.asarray(Image.open(os.path.join(d, f"{i}.png"))))
np.concatenate([g.ravel() for g in gray]).tofile(os.path.join(out, "gray.u8"))

# JPEG (RGB and CMYK), smooth so that quality 95 keeps them close.
d = folder("jpeg", "x")
y, x = np.mgrid[0:16, 0:16]
smooth = np.stack([x * 15, y * 15, (x + y) * 7], axis=2).astype(np.uint8)
Image.fromarray(smooth, "RGB").save(os.path.join(d, "1_444.jpg"), quality=95, subsampling=0)
Image.fromarray(smooth, "RGB").save(os.path.join(d, "2_420.jpg"), quality=95, subsampling=2)
Image.fromarray(smooth, "RGB").convert("CMYK").save(os.path.join(folder("jpeg", "y"), "3_cmyk.jpg"), quality=95)
jpeg = [chw(Image.open(os.path.join(out, "jpeg", n))) for n in ["x/1_444.jpg", "x/2_420.jpg", "y/3_cmyk.jpg"]]
np.concatenate([j.ravel() for j in jpeg]).tofile(os.path.join(out, "jpeg.u8"))
# Noise, 4:2:0, a width and height that are not whole 16-pixel blocks: chroma upsampling
# at the edges is where decoders part.
edge = []
for cls in ["x", "y"]:
    noisy = np.clip(rng.normal(128, 60, (20, 26, 3)), 0, 255).astype(np.uint8)
    path = os.path.join(folder("jpeg-edge", cls), "noise.jpg")
    Image.fromarray(noisy, "RGB").save(path, quality=90, subsampling=2)
    edge.append(chw(Image.open(path)).ravel())
np.concatenate(edge).tofile(os.path.join(out, "jpeg-edge.u8"))

# A CSV list, and a large image resized (shorter side to 24) and centre-cropped to 20 x 20.
d = folder("listed")
big = rgb(30, 40).resize((40, 30))
big.save(os.path.join(d, "big.png"))
rgb(6, 8).save(os.path.join(d, "small.png"))
open(os.path.join(d, "list.csv"), "w").write("path,label\nbig.png,b\nsmall.png,s\n")
r = Image.open(os.path.join(d, "big.png")).resize((32, 24), Image.Resampling.BILINEAR)
np.asarray(r.crop((6, 2, 26, 22))).transpose(2, 0, 1).tofile(os.path.join(out, "resized.u8"))
"#;

const MODEL: &str = r#"
model m { input [INPUT] flatten linear(CLASSES) as logits }
student s = m
stage fit { train s on d.train, loss cross_entropy(s.logits, label), optimizer adam(lr: 1e-3), epochs 1, batch 2 }
"#;

/// Pillow's images in a folder of their own (`tag` keeps this process's tests apart).
fn write_images(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-images-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new(python())
        .args(["-c", WRITE])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "Pillow could not write the images");
    dir
}

fn bytes(samples: &Samples) -> Vec<u8> {
    match samples {
        Samples::U8(v) => v.clone(),
        Samples::F32(_) => panic!("image samples are bytes"),
    }
}

fn compile(dir: &Path, source: &str, settings: &str, input: &str) -> kd_plan::Plan {
    compile_with(dir, source, settings, input, 2)
}

fn compile_with(
    dir: &Path,
    source: &str,
    settings: &str,
    input: &str,
    classes: usize,
) -> kd_plan::Plan {
    let text = format!(
        "pipeline images {{ seed: 3, output: \"runs\" }}\ndata d = {source} {{ {settings} }}\n{}",
        MODEL
            .replace("INPUT", input)
            .replace("CLASSES", &classes.to_string())
    );
    let path = dir.join("images.kd");
    std::fs::write(&path, &text).unwrap();
    match kd_compiler::compile(&text, &path, &[]) {
        Ok(compiled) => compiled.plan,
        Err(errors) => panic!("{source}: {errors:?}"),
    }
}

fn load(dir: &Path, source: &str, settings: &str, input: &str) -> (kd_plan::DataSpec, Dataset) {
    let plan = compile(dir, source, settings, input);
    let spec = plan.data[0].clone();
    let data = Dataset::load(&spec, dir, 3).unwrap();
    (spec, data)
}

fn max_diff(a: &[u8], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&a, &b)| (f32::from(a) - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn images_read_as_pillow_decodes_them() {
    let dir = write_images("pillow");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();

    // PNG, BMP and lossless WebP: exactly Pillow's pixels, in ImageFolder's order.
    let (spec, data) = load(&dir, "images(\"rgb\")", "", "3, 6, 8");
    assert_eq!(spec.sample_shape, vec![3, 6, 8]);
    assert_eq!(spec.class_names, vec!["cat", "dog"]);
    assert_eq!(spec.scale, 255.0);
    assert_eq!(data.train.labels, vec![0, 0, 0, 0, 0, 0, 1, 1]);
    assert_eq!(bytes(&data.train.samples), read("rgb.u8"));

    // Palette and RGBA converted to RGB as Pillow converts them; 16-bit gray scaled.
    let (_, data) = load(&dir, "images(\"mixed\")", "color: rgb", "3, 6, 8");
    let mixed: Vec<f32> = read("mixed.f32")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let got = bytes(&data.train.samples);
    let plane = 3 * 6 * 8;
    assert_eq!(max_diff(&got[..2 * plane], &mixed[..2 * plane]), 0.0);
    assert!(max_diff(&got[2 * plane..], &mixed[2 * plane..]) <= 1.0);

    // Gray, the shape and colour from `shape`.
    let (spec, data) = load(&dir, "images(\"gray\")", "shape: [1, 7, 5]", "1, 7, 5");
    assert_eq!(spec.class_names, vec!["0", "1"]);
    assert_eq!(bytes(&data.train.samples), read("gray.u8"));

    // JPEG: RGB without chroma subsampling and CMYK within 2 levels of Pillow's decoding;
    // with 4:2:0 chroma, within 3 (jpeg-decoder's integer IDCT is not libjpeg-turbo's).
    let (_, data) = load(&dir, "images(\"jpeg\")", "", "3, 16, 16");
    let jpeg: Vec<f32> = read("jpeg.u8").iter().map(|&b| f32::from(b)).collect();
    let got = bytes(&data.train.samples);
    let plane = 3 * 16 * 16;
    let diff = |i: usize| {
        max_diff(
            &got[i * plane..(i + 1) * plane],
            &jpeg[i * plane..(i + 1) * plane],
        )
    };
    let (full, subsampled, cmyk) = (diff(0), diff(1), diff(2));
    assert!(full <= 2.0, "4:4:4 JPEG: {full} levels");
    assert!(subsampled <= 3.0, "4:2:0 JPEG: {subsampled} levels");
    assert!(cmyk <= 2.0, "CMYK JPEG: {cmyk} levels");
    // zune-jpeg, the image crate's decoder, was 9 levels off here.
    let (_, data) = load(&dir, "images(\"jpeg-edge\")", "", "3, 20, 26");
    let noisy: Vec<f32> = read("jpeg-edge.u8").iter().map(|&b| f32::from(b)).collect();
    let edge = max_diff(&bytes(&data.train.samples), &noisy);
    assert!(edge <= 3.0, "4:2:0 JPEG of noise, 26 x 20: {edge} levels");

    // A CSV list; the big image resized (shorter side 24) and centre-cropped to 20 x 20,
    // near Pillow's bilinear resize of the same crop.
    let (spec, data) = load(
        &dir,
        "images(\"listed/list.csv\")",
        "shape: [3, 20, 20], resize: 24",
        "3, 20, 20",
    );
    assert_eq!(spec.class_names, vec!["b", "s"]);
    let got = bytes(&data.train.samples);
    let pillow: Vec<f32> = read("resized.u8").iter().map(|&b| f32::from(b)).collect();
    let mean: f32 = got[..1200]
        .iter()
        .zip(&pillow)
        .map(|(&a, &b)| (f32::from(a) - b).abs())
        .sum::<f32>()
        / 1200.0;
    assert!(mean < 12.0, "mean difference from Pillow's resize: {mean}");

    // A whole run on the RGB folder, through the command line.
    compile(
        &dir,
        "images(\"rgb\")",
        "split { train: 3, val: rest }",
        "3, 6, 8",
    );
    let run = Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(["run", "images.kd"])
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

/// scripts/fetch-data.sh mnist-png wrote MNIST out as PNG files (`<label>/<index>.png`):
/// decoded by kdc, every file equals its IDX image, and the labels its folder.
#[test]
fn mnist_png_folder_equals_the_idx_files() {
    common::fetch(&["mnist-png"]);
    let root = common::root();
    let idx = |name: &str| {
        let bytes = std::fs::read(root.join("data/mnist").join(name)).unwrap();
        kd_runtime::data::idx::decode_idx(&bytes, Path::new(name)).unwrap()
    };
    let dir = std::env::temp_dir().join(format!("kdc-mnist-png-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plan = compile_with(
        &dir,
        &format!(
            "images(\"{0}/train\", test: \"{0}/test\")",
            root.join("data/mnist-png").display()
        ),
        "shape: [1, 28, 28]",
        "1, 28, 28",
        10,
    );
    let spec = &plan.data[0];
    assert_eq!(
        spec.samples.map(|s| (s.train, s.test)),
        Some((60000, Some(10000)))
    );
    let data = Dataset::load(spec, &dir, 3).unwrap();
    for (part, images, labels, folder) in [
        (
            &data.train,
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "train",
        ),
        (
            data.test.as_ref().unwrap(),
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
            "test",
        ),
    ] {
        let (images, labels) = (idx(images), idx(labels));
        let Samples::U8(pixels) = &images.values else {
            panic!("MNIST images are bytes")
        };
        let labels = kd_runtime::data::idx::idx_labels(&labels, Path::new("labels")).unwrap();
        let entries = kd_datafiles::images::entries(
            &root.join("data/mnist-png").join(folder),
            "path",
            "label",
        )
        .unwrap();
        let got = bytes(&part.samples);
        assert_eq!(entries.len(), labels.len());
        for (k, entry) in entries.iter().enumerate() {
            let i: usize = entry
                .path
                .file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(part.labels[k], labels[i], "{}", entry.path.display());
            assert_eq!(
                &got[k * 784..(k + 1) * 784],
                &pixels[i * 784..(i + 1) * 784],
                "{}",
                entry.path.display()
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `cache: disk`: the first load writes the decoded pixels to the cache, a later one reads
/// them from there (an edited cache file with a matching checksum shows it), a damaged cache
/// file is decoded again, and a changed image changes the file's name.
#[test]
fn decoded_images_are_cached_on_disk() {
    let dir = write_images("cache");
    let cache = dir.join("cache");
    let plan = compile(&dir, "images(\"rgb\")", "", "3, 6, 8");
    let spec = plan.data[0].clone();
    let load = || Dataset::load_cached(&spec, &dir, 3, Some(&cache)).unwrap();
    let first = load();
    let cached: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let file = &cached[0];
    let pixels = bytes(&first.train.samples);
    assert_eq!(std::fs::read(file).unwrap().len(), pixels.len() + 32);
    assert_eq!(first.files, Dataset::load(&spec, &dir, 3).unwrap().files);

    // Read from the cache: pixels edited there, with their checksum, come back as edited.
    let (edited, with_sum) = common::edit_cached_pixels(file, &pixels);
    let again = load();
    assert_eq!(bytes(&again.train.samples), edited);
    assert_eq!(again.files, first.files);

    // A damaged cache file is decoded again, and rewritten.
    std::fs::write(file, &with_sum[..100]).unwrap();
    assert_eq!(bytes(&load().train.samples), pixels);
    assert_eq!(std::fs::read(file).unwrap().len(), pixels.len() + 32);

    // Another image: another cache file.
    let one = dir.join("rgb/cat/a.png");
    let other = dir.join("rgb/dog/a.png");
    std::fs::copy(&other, &one).unwrap();
    load();
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_check_reads_only_the_images_a_limit_keeps() {
    let dir = write_images("limit");
    // A corrupt image last in the folder: found by the check, unless `limit` stops before it.
    std::fs::write(dir.join("gray/1/9.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let text = |settings: &str| {
        format!(
            "pipeline images {{ seed: 3, output: \"runs\" }}\ndata d = images(\"gray\") {{ shape: [1, 7, 5] {settings} }}\n{}",
            MODEL.replace("INPUT", "1, 7, 5").replace("CLASSES", "2")
        )
    };
    let path = dir.join("images.kd");
    let Err(errors) = kd_compiler::compile(&text(""), &path, &[]) else {
        panic!("the corrupt image went unnoticed");
    };
    let shown = format!("{errors:?}");
    assert!(shown.contains("gray/1/9.png"), "{shown}");
    let plan = match kd_compiler::compile(&text("limit: 6"), &path, &[]) {
        Ok(compiled) => compiled.plan,
        Err(errors) => panic!("{errors:?}"),
    };
    let data = Dataset::load(&plan.data[0], &dir, 3).unwrap();
    assert_eq!(data.train.labels, vec![0, 0, 0, 1, 1, 1]);
    std::fs::remove_dir_all(&dir).ok();
}
