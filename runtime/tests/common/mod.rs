//! Helpers shared by the integration tests: temporary folders, data files, specs.
#![allow(dead_code)]

pub mod schema;

use std::io::Write;
use std::path::{Path, PathBuf};

use kd_plan::{DataSource, DataSpec, Normalize, SplitSize, SplitSpec};

/// A fresh, empty folder under the system's temp dir, unique per test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kd-runtime-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// An IDX file: type code, dimensions, and the element bytes already big-endian.
pub fn idx_bytes(type_code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, type_code, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

pub fn split(name: &str, size: SplitSize) -> SplitSpec {
    SplitSpec {
        name: name.into(),
        size,
        labeled: true,
    }
}

pub fn csv_spec(
    name: &str,
    path: &str,
    features: usize,
    classes: usize,
    splits: Vec<SplitSpec>,
) -> DataSpec {
    DataSpec {
        name: name.into(),
        source: DataSource::Csv {
            path: path.into(),
            header: false,
            label_column: features,
            delimiter: ',',
        },
        sample_shape: vec![features],
        classes,
        class_names: (0..classes).map(|c| format!("class{c}")).collect(),
        relabel: None,
        limit: None,
        scale: 1.0,
        normalize: Normalize::None,
        splits,
        text: None,
        samples: None,
    }
}

/// Three Gaussian blobs in 2-D, `per_class` rows each, as CSV text `x,y,label`.
pub fn blobs_csv(per_class: usize, seed: u64) -> String {
    let mut rng = kd_runtime::rng::Rng::new(seed, "test/blobs");
    let centres = [(-2.0, 0.0), (2.0, 0.0), (0.0, 3.0)];
    let mut text = String::new();
    for i in 0..per_class * 3 {
        let class = i % 3;
        let (cx, cy) = centres[class];
        let x = cx + 0.7 * rng.normal();
        let y = cy + 0.7 * rng.normal();
        text.push_str(&format!("{x:.5},{y:.5},{class}\n"));
    }
    text
}
