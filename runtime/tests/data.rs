//! Loaders (IDX raw and gzip, CSV), stratified splits, normalisation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use kd_plan::{DataSource, DataSpec, Normalize, SplitSize};
use kd_runtime::data::{split::largest_remainder, Dataset, PartKind, Samples};
use kd_runtime::RuntimeError;

fn idx_spec(dir_files: [&str; 4], classes: usize, splits: Vec<kd_plan::SplitSpec>) -> DataSpec {
    DataSpec {
        name: "digits".into(),
        source: DataSource::Idx {
            train_images: dir_files[0].into(),
            train_labels: dir_files[1].into(),
            test_images: Some(dir_files[2].into()),
            test_labels: Some(dir_files[3].into()),
        },
        sample_shape: vec![1, 2, 2],
        classes,
        class_names: vec![],
        relabel: None,
        limit: None,
        scale: 255.0,
        normalize: Normalize::None,
        splits,
        text: None,
        samples: None,
    }
}

/// Writes a tiny IDX data set: `n` train and 4 test images of 2x2 bytes, labels i % 2.
fn write_idx_set(dir: &std::path::Path, n: u32, compress: bool) {
    let images: Vec<u8> = (0..n * 4).map(|i| (i % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    let test_images: Vec<u8> = (0..16).map(|i| 255 - i as u8).collect();
    let test_labels: Vec<u8> = vec![1, 0, 1, 0];
    let maybe = |b: Vec<u8>| if compress { gzip(&b) } else { b };
    write(
        &dir.join("train-images"),
        &maybe(idx_bytes(0x08, &[n, 2, 2], &images)),
    );
    write(
        &dir.join("train-labels"),
        &maybe(idx_bytes(0x08, &[n], &labels)),
    );
    write(
        &dir.join("test-images"),
        &maybe(idx_bytes(0x08, &[4, 2, 2], &test_images)),
    );
    write(
        &dir.join("test-labels"),
        &maybe(idx_bytes(0x08, &[4], &test_labels)),
    );
}

const FILES: [&str; 4] = ["train-images", "train-labels", "test-images", "test-labels"];

#[test]
fn idx_raw_and_gzip_load_the_same() {
    for compress in [false, true] {
        let dir = temp_dir(&format!("idx-{compress}"));
        write_idx_set(&dir, 10, compress);
        let spec = idx_spec(
            FILES,
            2,
            vec![
                split("train", SplitSize::Count(8)),
                split("test", SplitSize::SourceTest),
            ],
        );
        let data = Dataset::load(&spec, &dir, 1).unwrap();
        assert!(
            matches!(data.train.samples, Samples::U8(_)),
            "bytes stay bytes"
        );
        assert_eq!(data.train.len(), 10);
        assert_eq!(data.files.len(), 4);
        assert!(data.files.iter().all(|(_, hash)| hash.len() == 64));
        let test = data.split("test").unwrap();
        assert_eq!(test.part, PartKind::Test);
        assert_eq!(test.len(), 4);
        let mut x = Vec::new();
        let mut y = Vec::new();
        data.fill_batch(test, &[0, 1], &mut x, &mut y).unwrap();
        assert_eq!(y, vec![1, 0]);
        assert_eq!(x.len(), 8);
        assert!((x[0] - 1.0).abs() < 1e-6 && (x[4] - 251.0 / 255.0).abs() < 1e-6);
    }
}

#[test]
fn idx_f32_elements_are_read_big_endian() {
    let dir = temp_dir("idx-f32");
    let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    write(
        &dir.join("train-images"),
        &idx_bytes(0x0D, &[3, 2, 2], &data),
    );
    write(
        &dir.join("train-labels"),
        &idx_bytes(0x08, &[3], &[0, 1, 0]),
    );
    let spec = DataSpec {
        source: DataSource::Idx {
            train_images: "train-images".into(),
            train_labels: "train-labels".into(),
            test_images: None,
            test_labels: None,
        },
        scale: 1.0,
        ..idx_spec(FILES, 2, vec![split("all", SplitSize::Fraction(1.0))])
    };
    let data = Dataset::load(&spec, &dir, 1).unwrap();
    let Samples::F32(stored) = &data.train.samples else {
        panic!("f32 stays f32")
    };
    assert_eq!(stored, &values);
    // i16 labels work as well.
    let labels: Vec<u8> = [0i16, 1, 1].iter().flat_map(|v| v.to_be_bytes()).collect();
    write(&dir.join("train-labels"), &idx_bytes(0x0B, &[3], &labels));
    let data = Dataset::load(&spec, &dir, 1).unwrap();
    assert_eq!(data.train.labels, vec![0, 1, 1]);
}

#[test]
fn truncated_or_lying_idx_is_refused_without_panicking() {
    let dir = temp_dir("idx-bad");
    write_idx_set(&dir, 10, false);
    let spec = idx_spec(FILES, 2, vec![split("train", SplitSize::Count(8))]);
    let full = std::fs::read(dir.join("train-images")).unwrap();
    for cut in [0, 3, 7, 20, full.len() - 1] {
        write(&dir.join("train-images"), &full[..cut]);
        let err = Dataset::load(&spec, &dir, 1).unwrap_err();
        assert!(
            matches!(err, RuntimeError::DataFile { .. }),
            "cut {cut}: {err:?}"
        );
        assert!(err.to_string().contains("train-images"), "{err}");
    }
    // A header announcing billions of samples is refused before allocating.
    write(
        &dir.join("train-images"),
        &idx_bytes(0x08, &[u32::MAX, 28, 28], &[0; 16]),
    );
    assert!(Dataset::load(&spec, &dir, 1).is_err());
    // Truncated gzip.
    let gz = gzip(&full);
    write(&dir.join("train-images"), &gz[..gz.len() / 2]);
    assert!(Dataset::load(&spec, &dir, 1).is_err());
    // A missing file names itself.
    std::fs::remove_file(dir.join("train-images")).unwrap();
    let err = Dataset::load(&spec, &dir, 1).unwrap_err();
    assert!(matches!(err, RuntimeError::Io { .. }) && err.to_string().contains("train-images"));
}

#[test]
fn csv_with_and_without_header_and_gzip() {
    let dir = temp_dir("csv");
    let body = "1,2,0\n3,4,1\n5,6,1\n7,8,0\n";
    write(&dir.join("plain.csv"), body.as_bytes());
    write(
        &dir.join("header.csv"),
        format!("a,b,label\n{body}").as_bytes(),
    );
    write(
        &dir.join("semi.csv.gz"),
        &gzip(body.replace(',', ";").as_bytes()),
    );
    let splits = || vec![split("all", SplitSize::Count(4))];
    let plain = Dataset::load(&csv_spec("d", "plain.csv", 2, 2, splits()), &dir, 0).unwrap();
    let mut header_spec = csv_spec("d", "header.csv", 2, 2, splits());
    if let DataSource::Csv { header, .. } = &mut header_spec.source {
        *header = true;
    }
    let with_header = Dataset::load(&header_spec, &dir, 0).unwrap();
    let mut gz_spec = csv_spec("d", "semi.csv.gz", 2, 2, splits());
    if let DataSource::Csv { delimiter, .. } = &mut gz_spec.source {
        *delimiter = ';';
    }
    let gz = Dataset::load(&gz_spec, &dir, 0).unwrap();
    for data in [&plain, &with_header, &gz] {
        assert_eq!(data.train.labels, vec![0, 1, 1, 0]);
        let Samples::F32(values) = &data.train.samples else {
            panic!()
        };
        assert_eq!(values, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    }
    // Label in the first column.
    write(&dir.join("first.csv"), b"1,10,20\n0,30,40\n");
    let mut first = csv_spec(
        "d",
        "first.csv",
        2,
        2,
        vec![split("all", SplitSize::Count(2))],
    );
    if let DataSource::Csv { label_column, .. } = &mut first.source {
        *label_column = 0;
    }
    let data = Dataset::load(&first, &dir, 0).unwrap();
    assert_eq!(data.train.labels, vec![1, 0]);
}

#[test]
fn csv_errors_are_clear() {
    let dir = temp_dir("csv-bad");
    write(&dir.join("float-label.csv"), b"1,2,0.5\n");
    let err = Dataset::load(&csv_spec("d", "float-label.csv", 2, 2, vec![]), &dir, 0).unwrap_err();
    assert!(err.to_string().contains("float-label.csv"), "{err}");
    assert!(format!("{err:?}").contains("not a class id"), "{err:?}");
    write(&dir.join("ragged.csv"), b"1,2,0\n1,0\n");
    assert!(Dataset::load(&csv_spec("d", "ragged.csv", 2, 2, vec![]), &dir, 0).is_err());
    write(&dir.join("text.csv"), b"1,x,0\n");
    assert!(Dataset::load(&csv_spec("d", "text.csv", 2, 2, vec![]), &dir, 0).is_err());
    write(&dir.join("class.csv"), b"1,2,7\n");
    let err = Dataset::load(&csv_spec("d", "class.csv", 2, 2, vec![]), &dir, 0).unwrap_err();
    assert!(matches!(err, RuntimeError::Data { .. }), "{err:?}");
}

#[test]
fn largest_remainder_is_exact_and_bounded() {
    assert_eq!(largest_remainder(&[50, 30, 20], 10), vec![5, 3, 2]);
    assert_eq!(largest_remainder(&[1, 1, 1], 2), vec![1, 1, 0]);
    assert_eq!(largest_remainder(&[7, 3], 10), vec![7, 3]);
    let q = largest_remainder(&[33, 33, 34], 50);
    assert_eq!(q.iter().sum::<usize>(), 50);
    assert!(q.iter().zip([33, 33, 34]).all(|(q, a)| *q <= a));
}

#[test]
fn stratified_splits_have_exact_sizes_and_proportions() {
    let dir = temp_dir("splits");
    // 200 rows: class 0 has 100, class 1 has 60, class 2 has 40.
    let mut text = String::new();
    for i in 0..200 {
        let class = if i < 100 {
            0
        } else if i < 160 {
            1
        } else {
            2
        };
        text.push_str(&format!("{i},{class}\n"));
    }
    write(&dir.join("d.csv"), text.as_bytes());
    let spec = csv_spec(
        "d",
        "d.csv",
        1,
        3,
        vec![
            split("train", SplitSize::Fraction(0.7)),
            split("val", SplitSize::Count(30)),
            split("test", SplitSize::Count(30)),
        ],
    );
    let data = Dataset::load(&spec, &dir, 42).unwrap();
    let sizes: Vec<usize> = data.splits.iter().map(|s| s.len()).collect();
    assert_eq!(sizes, vec![140, 30, 30]);
    let count = |name: &str, class: u32| {
        let split = data.split(name).unwrap();
        split
            .indices
            .iter()
            .filter(|&&i| data.train.labels[i] == class)
            .count()
    };
    assert_eq!(
        (count("train", 0), count("train", 1), count("train", 2)),
        (70, 42, 28)
    );
    assert_eq!(
        (count("val", 0), count("val", 1), count("val", 2)),
        (15, 9, 6)
    );
    assert_eq!(
        (count("test", 0), count("test", 1), count("test", 2)),
        (15, 9, 6)
    );
    // Disjoint, and fixed by the seed.
    let mut all: Vec<usize> = data.splits.iter().flat_map(|s| s.indices.clone()).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 200);
    let again = Dataset::load(&spec, &dir, 42).unwrap();
    assert_eq!(
        again.split("val").unwrap().indices,
        data.split("val").unwrap().indices
    );
    let other = Dataset::load(&spec, &dir, 43).unwrap();
    assert_ne!(
        other.split("val").unwrap().indices,
        data.split("val").unwrap().indices
    );
    // Asking for more than is left is an error, not a panic.
    let too_big = csv_spec(
        "d",
        "d.csv",
        1,
        3,
        vec![
            split("a", SplitSize::Count(150)),
            split("b", SplitSize::Count(60)),
        ],
    );
    assert!(Dataset::load(&too_big, &dir, 1).is_err());
}

#[test]
fn normalisation_uses_the_train_split_only() {
    let dir = temp_dir("norm");
    // Feature 0 is 0 or 2 on the first 100 rows; 1000 on the last 100 rows.
    let mut text = String::new();
    for i in 0..200 {
        let value = if i < 100 { (i % 2) * 2 } else { 1000 };
        let class = usize::from(i >= 100);
        text.push_str(&format!("{value},{class}\n"));
    }
    write(&dir.join("d.csv"), text.as_bytes());
    let mut spec = csv_spec(
        "d",
        "d.csv",
        1,
        2,
        vec![
            split("train", SplitSize::Count(100)),
            split("rest", SplitSize::Count(100)),
        ],
    );
    spec.normalize = Normalize::TrainStats;
    let data = Dataset::load(&spec, &dir, 3).unwrap();
    let train = data.split("train").unwrap();
    let mut x = Vec::new();
    let mut y = Vec::new();
    let positions: Vec<usize> = (0..train.len()).collect();
    data.fill_batch(train, &positions, &mut x, &mut y).unwrap();
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / x.len() as f64;
    assert!(mean.abs() < 1e-5, "train mean {mean}");
    assert!((var - 1.0).abs() < 1e-4, "train var {var}");
    // Stats came from the stratified train split: half of it is class 1 (value 1000).
    let expected_mean = {
        let raw: Vec<f64> = train
            .indices
            .iter()
            .map(|&i| {
                if i < 100 {
                    ((i % 2) * 2) as f64
                } else {
                    1000.0
                }
            })
            .collect();
        raw.iter().sum::<f64>() / raw.len() as f64
    };
    assert!(
        (-f64::from(data.norm.add[0]) / f64::from(data.norm.mul[0]) - expected_mean).abs() < 1e-2
    );
    // Given values, one for all channels.
    spec.normalize = Normalize::Given {
        mean: vec![1.0],
        std: vec![2.0],
    };
    let data = Dataset::load(&spec, &dir, 3).unwrap();
    assert_eq!((data.norm.mul[0], data.norm.add[0]), (0.5, -0.5));
    spec.normalize = Normalize::Given {
        mean: vec![1.0, 2.0],
        std: vec![2.0, 1.0],
    };
    assert!(Dataset::load(&spec, &dir, 3).is_err());
}

#[test]
fn relabel_and_limit() {
    let dir = temp_dir("relabel");
    write_idx_set(&dir, 20, true);
    let mut spec = idx_spec(
        FILES,
        1,
        vec![
            split("train", SplitSize::Count(5)),
            split("test", SplitSize::SourceTest),
        ],
    );
    spec.relabel = Some(vec![0, 0]);
    spec.limit = Some(6);
    let data = Dataset::load(&spec, &dir, 1).unwrap();
    assert_eq!(data.train.len(), 6);
    assert_eq!(data.test.as_ref().unwrap().len(), 4);
    assert!(data.train.labels.iter().all(|&l| l == 0));
}

#[test]
fn the_digits_example_file() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data");
    let mut spec = csv_spec(
        "digits",
        "digits.csv.gz",
        64,
        10,
        vec![
            split("train", SplitSize::Fraction(0.6)),
            split("val", SplitSize::Count(359)),
            split("test", SplitSize::Fraction(0.2)),
        ],
    );
    spec.sample_shape = vec![1, 8, 8];
    spec.scale = 16.0;
    let data = Dataset::load(&spec, &path, 2015).unwrap();
    assert_eq!(data.train.len(), 1797);
    let mut classes = data.train.labels.clone();
    classes.sort_unstable();
    classes.dedup();
    assert_eq!(classes, (0..10).collect::<Vec<u32>>());
    let sizes: Vec<usize> = data.splits.iter().map(|s| s.len()).collect();
    // round(0.6 * 1797) = 1078, round(0.2 * 1797) = 359.
    assert_eq!(sizes, vec![1078, 359, 359]);
    assert_eq!(
        data.files[0].1,
        "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
    );
    // Every class keeps its share of the train split (within one sample).
    let train = data.split("train").unwrap();
    for class in 0..10u32 {
        let total = data.train.labels.iter().filter(|&&l| l == class).count() as f64;
        let taken = train
            .indices
            .iter()
            .filter(|&&i| data.train.labels[i] == class)
            .count() as f64;
        assert!(
            (taken - total * 1078.0 / 1797.0).abs() <= 1.0,
            "class {class}"
        );
    }
}
