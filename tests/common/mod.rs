//! Helpers the CLI-level test binaries share: where the repository is, fetching data sets
//! with the project's pinned script, the Python of scripts/python-env.sh, reading a run's
//! summary.json checked against its schema, and fixed pseudo-random tensors. Each test
//! binary uses some of them.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

#[path = "../../runtime/tests/common/schema.rs"]
pub mod schema;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/fetch-data.sh NAMES` once per test process and names (it is idempotent):
/// missing data fails the test, never skips it.
pub fn fetch(names: &[&str]) {
    static FETCHED: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let key = names.join(" ");
    let mut done = FETCHED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let result = done.entry(key.clone()).or_insert_with(|| {
        let o = Command::new("bash")
            .arg(root().join("scripts/fetch-data.sh"))
            .args(names)
            .output()
            .map_err(|e| format!("cannot run the fetch script: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "fetch-data.sh {key} failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The Python with onnx, onnxruntime, numpy and tokenizers (made from PyPI on first use by
/// scripts/python-env.sh, once per test process; the script also locks against others).
pub fn python() -> String {
    static PYTHON: OnceLock<Result<String, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let output = Command::new("bash")
            .arg(root().join("scripts/python-env.sh"))
            .output()
            .map_err(|e| format!("cannot run scripts/python-env.sh: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).to_string())
        }
    });
    match found {
        Ok(python) => python.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A run folder's summary.json, which must follow docs/summary.schema.json.
pub fn valid_summary(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("summary.json")).expect("summary.json");
    let summary: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/summary.schema.json")).expect("schema"),
    )
    .expect("JSON schema");
    let errors = schema::validate(&schema, &summary);
    assert!(
        errors.is_empty(),
        "{}: summary.json does not follow its schema: {errors:#?}",
        run.display()
    );
    summary
}

/// Values in [-1, 1) from a fixed generator (xorshift64), as a CPU tensor of `shape`.
pub fn random(shape: &[usize], seed: u64) -> candle_core::Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect();
    candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu).expect("a tensor")
}

/// A tensor's values as f64, flattened.
pub fn values(t: &candle_core::Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("values")
}

/// Writes into the cache file `file` the decoded `pixels` with their first byte changed,
/// followed by their sha256 (as kdc writes a cache file): what a run reading the cache
/// must give back. Returns the edited pixels and the file's new bytes.
pub fn edit_cached_pixels(file: &Path, pixels: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut edited = pixels.to_vec();
    edited[0] = edited[0].wrapping_add(1);
    let mut with_sum = edited.clone();
    with_sum.extend_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(&edited));
    std::fs::write(file, &with_sum).unwrap();
    (edited, with_sum)
}
