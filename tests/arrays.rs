//! NumPy data (`npy`, `npz`) against numpy itself: numpy (from PyPI, scripts/python-env.sh)
//! writes arrays in every layout kdc reads (uint8, float32 and float64, C and Fortran
//! order, both byte orders, channels last, labels of several integer types, `savez` and
//! `savez_compressed`), and each one's values as plain little-endian f32 in C order (and
//! channels first). The checker's facts and the runtime's values must equal numpy's, and a
//! pipeline on the arrays must run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::python;
use kd_runtime::data::{Dataset, Samples};

const WRITE: &str = r#"
import sys, numpy as np
out = sys.argv[1]
rng = np.random.default_rng(7)
def save(name, a):
    np.save(f"{out}/{name}.npy", a)
def expect(name, a):
    np.ascontiguousarray(a, dtype="<f4").tofile(f"{out}/{name}.f32")
def labels(n, dtype):
    y = (np.arange(n) % 4).astype(dtype)
    rng.shuffle(y)
    return y

x = rng.integers(0, 256, size=(24, 6, 5), dtype=np.uint8)
save("bytes_x", x); save("bytes_y", labels(24, "<i8")); expect("bytes", x)

x = np.asfortranarray(rng.normal(size=(24, 6, 5)))
assert x.flags.f_contiguous and not x.flags.c_contiguous
save("fortran_x", x); save("fortran_y", labels(24, np.uint8).reshape(24, 1)); expect("fortran", x)

x = rng.normal(size=(24, 4, 5, 3)).astype(">f4")
save("hwc_x", x); save("hwc_y", labels(24, ">i2")); expect("hwc", np.transpose(x, (0, 3, 1, 2)))

train, test = rng.integers(0, 256, size=(24, 2, 3, 3), dtype=np.uint8), rng.integers(0, 256, size=(8, 2, 3, 3), dtype=np.uint8)
arrays = dict(x_train=train, y_train=labels(24, np.int32), x_test=test, y_test=labels(8, np.uint16))
np.savez(f"{out}/stored.npz", **arrays)
np.savez_compressed(f"{out}/compressed.npz", **arrays)
expect("archive_train", train); expect("archive_test", test)
"#;

const MODEL: &str = r#"
model m { input [INPUT] flatten linear(4) as logits }
student s = m
stage fit { train s on d.train, loss cross_entropy(s.logits, label), optimizer adam(lr: 1e-3), epochs 1, batch 8 }
"#;

fn write_arrays() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-arrays-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new(python())
        .args(["-c", WRITE])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "numpy could not write the arrays");
    dir
}

fn floats(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn values(samples: &Samples) -> Vec<f32> {
    match samples {
        Samples::U8(v) => v.iter().map(|&b| f32::from(b)).collect(),
        Samples::F32(v) => v.clone(),
    }
}

/// Compiles `data d = SOURCE { SETTINGS }` with a one-layer model over `input`.
fn plan(dir: &Path, source: &str, settings: &str, input: &str) -> kd_plan::Plan {
    let text = format!(
        "pipeline arrays {{ seed: 3, output: \"runs\" }}\ndata d = {source} {{ {settings} }}\n{}",
        MODEL.replace("INPUT", input)
    );
    let path = dir.join("arrays.kd");
    std::fs::write(&path, &text).unwrap();
    match kd_compiler::compile(&text, &path, &[]) {
        Ok(compiled) => compiled.plan,
        Err(errors) => panic!("{source}: {errors:?}"),
    }
}

#[test]
fn numpy_arrays_read_as_numpy_wrote_them() {
    let dir = write_arrays();
    let cases = [
        ("npy(x: \"bytes_x.npy\", y: \"bytes_y.npy\")", "", "1, 6, 5", "bytes", true),
        ("npy(x: \"fortran_x.npy\", y: \"fortran_y.npy\")", "", "1, 6, 5", "fortran", false),
        ("npy(x: \"hwc_x.npy\", y: \"hwc_y.npy\")", "channels: last", "3, 4, 5", "hwc", false),
        ("npz(\"stored.npz\", x: \"x_train\", y: \"y_train\", test_x: \"x_test\", test_y: \"y_test\")", "", "2, 3, 3", "archive_train", true),
        ("npz(\"compressed.npz\", x: \"x_train\", y: \"y_train\", test_x: \"x_test\", test_y: \"y_test\")", "", "2, 3, 3", "archive_train", true),
    ];
    for (source, settings, input, expected, bytes) in cases {
        let plan = plan(&dir, source, settings, input);
        let spec = &plan.data[0];
        let shape: Vec<usize> = input.split(", ").map(|d| d.parse().unwrap()).collect();
        assert_eq!(spec.sample_shape, shape, "{source}");
        assert_eq!(spec.classes, 4, "{source}");
        // Bytes are scaled by 255 by default, as IDX images are; floats by 1.
        assert_eq!(spec.scale, if bytes { 255.0 } else { 1.0 }, "{source}");
        let data = Dataset::load(spec, &dir, 3).unwrap();
        assert_eq!(
            values(&data.train.samples),
            floats(&dir.join(format!("{expected}.f32"))),
            "{source}"
        );
        assert_eq!(
            data.train.labels.iter().filter(|&&l| l == 3).count(),
            6,
            "{source}"
        );
        if source.contains("x_test") {
            let test = data.test.as_ref().unwrap();
            assert_eq!(
                values(&test.samples),
                floats(&dir.join("archive_test.f32")),
                "{source}"
            );
            assert_eq!(spec.samples.map(|s| s.test), Some(Some(8)));
        }
    }

    // A whole run on the compressed archive, through the command line.
    plan(
        &dir,
        cases[4].0,
        "split { train: 16, val: rest }",
        "2, 3, 3",
    );
    let run = Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(["run", "arrays.kd"])
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
