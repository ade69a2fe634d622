//! Data sources: loading IDX, CSV, text, NumPy and image files, stratified splits, normalisation, and batches.
//!
//! Samples stay in their compact source form (bytes for IDX bytes) and are scaled and
//! normalised only when a batch is built, straight into the `Vec<f32>` a tensor is made of.

pub mod arrays;
pub mod augment;
pub mod csv;
pub mod idx;
pub mod images;
pub mod split;
pub mod table;
pub mod text;

use std::io::Read;
use std::path::{Path, PathBuf};

use kd_plan::{DataSource, DataSpec, Normalize, SplitSize};
use sha2::{Digest, Sha256};

use crate::error::{Result, RuntimeError};
use crate::rng::Rng;

/// Sample values as the source stores them.
#[derive(Debug, Clone)]
pub enum Samples {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

impl Samples {
    pub fn len(&self) -> usize {
        match self {
            Samples::U8(v) => v.len(),
            Samples::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Samples::U8(v) => v.truncate(len),
            Samples::F32(v) => v.truncate(len),
        }
    }

    /// The raw values of the sample at `index`.
    fn sample_values(&self, index: usize, sample_len: usize) -> SampleValues<'_> {
        let range = index * sample_len..(index + 1) * sample_len;
        match self {
            Samples::U8(v) => SampleValues::U8(&v[range]),
            Samples::F32(v) => SampleValues::F32(&v[range]),
        }
    }
}

enum SampleValues<'a> {
    U8(&'a [u8]),
    F32(&'a [f32]),
}

/// The training part or the test part of a source.
#[derive(Debug, Clone)]
pub struct Part {
    pub samples: Samples,
    pub labels: Vec<u32>,
    pub sample_len: usize,
}

impl Part {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn truncate(&mut self, samples: usize) {
        if samples < self.len() {
            self.labels.truncate(samples);
            self.samples.truncate(samples * self.sample_len);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    Train,
    Test,
}

/// A named subset of one part of the source.
#[derive(Debug, Clone)]
pub struct Split {
    pub name: String,
    pub part: PartKind,
    /// Indices into the part, ascending.
    pub indices: Vec<usize>,
    pub labeled: bool,
}

impl Split {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// `normalised = raw * mul[c] + add[c]` for the channel `c` of each value.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelNorm {
    pub mul: Vec<f32>,
    pub add: Vec<f32>,
    /// Consecutive values per channel in a sample (H * W for images, 1 for features).
    pub inner: usize,
}

impl ChannelNorm {
    /// Per channel: the normalised value of a raw zero (what "zero fill" pads with).
    pub fn zero_values(&self) -> &[f32] {
        &self.add
    }
}

/// A loaded data source with its splits.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub sample_shape: Vec<usize>,
    pub classes: usize,
    pub train: Part,
    pub test: Option<Part>,
    pub splits: Vec<Split>,
    pub norm: ChannelNorm,
    /// Each file read, as the plan names it, with its sha256.
    pub files: Vec<(PathBuf, String)>,
}

/// The most bytes a CSV/TSV file may hold once decompressed: far above any table this CPU
/// trainer is meant for (MNIST as CSV is about 110 MB), far below what exhausts memory, so a
/// gzip bomb is refused instead of swallowing the machine.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// Deflate cannot expand data more than 1032 to 1, so a gzip file claiming more than this
/// many times its own size is corrupt and is refused before anything is decompressed.
pub const MAX_GZIP_RATIO: u64 = 1032;

fn bad_file(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::DataFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Whether `bytes` start with gzip's magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Decompresses `raw` (gzip, possibly several members), refusing more than `limit` bytes:
/// at most `limit + 1` bytes are ever produced, whatever the stream holds.
pub fn gunzip_bounded(raw: &[u8], path: &Path, limit: u64) -> Result<Vec<u8>> {
    let mut decoded = Vec::new();
    flate2::read::MultiGzDecoder::new(raw)
        .take(limit.saturating_add(1))
        .read_to_end(&mut decoded)
        .map_err(|e| bad_file(path, format!("cannot decompress gzip data: {e}")))?;
    if decoded.len() as u64 > limit {
        return Err(bad_file(
            path,
            format!("its gzip data decompresses to more than {limit} bytes"),
        ));
    }
    Ok(decoded)
}

/// Reads a whole file (refusing directories and files over `max_len` bytes before reading)
/// and returns its bytes with their sha256.
fn read_file(path: &Path, max_len: u64) -> Result<(Vec<u8>, String)> {
    let io = |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        return Err(bad_file(path, "it is a folder, not a file"));
    }
    if meta.len() > max_len {
        return Err(bad_file(
            path,
            format!(
                "it holds {} bytes, more than the {max_len} kdc reads",
                meta.len()
            ),
        ));
    }
    let raw = std::fs::read(path).map_err(io)?;
    let digest = Sha256::digest(&raw);
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((raw, hash))
}

/// CSV/TSV text from a file's bytes (gzip or not): decompressed within [`MAX_TEXT_BYTES`]
/// and checked to be UTF-8, naming the line of the first bad byte.
pub fn decode_text(raw: Vec<u8>, path: &Path) -> Result<String> {
    let bytes = if is_gzip(&raw) {
        gunzip_bounded(&raw, path, MAX_TEXT_BYTES)?
    } else {
        raw
    };
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..valid]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        bad_file(
            path,
            format!("it is not UTF-8 text (line {line}, byte {valid} of the text)"),
        )
    })
}

fn data_error(spec: &DataSpec, reason: impl Into<String>, help: Option<&str>) -> RuntimeError {
    RuntimeError::Data {
        data: spec.name.clone(),
        reason: reason.into(),
        help: help.map(str::to_string),
    }
}

fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

impl Dataset {
    /// Loads `spec`, resolving relative paths against `base_dir`; splits use `seed`.
    pub fn load(spec: &DataSpec, base_dir: &Path, seed: u64) -> Result<Dataset> {
        Self::load_cached(spec, base_dir, seed, None)
    }

    /// [`Dataset::load`], keeping decoded images in the folder `cache` (`cache: disk`) and
    /// reading them from there when the files are unchanged.
    pub fn load_cached(
        spec: &DataSpec,
        base_dir: &Path,
        seed: u64,
        cache: Option<&Path>,
    ) -> Result<Dataset> {
        // A plan is user input too: its shape may not overflow.
        let sample_len = spec
            .sample_shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                data_error(
                    spec,
                    format!("the sample shape {:?} is too large", spec.sample_shape),
                    None,
                )
            })?;
        let mut files = Vec::new();
        let (mut train, mut test) = match &spec.source {
            DataSource::Idx {
                train_images,
                train_labels,
                test_images,
                test_labels,
            } => {
                let train =
                    load_idx_part(base_dir, train_images, train_labels, sample_len, &mut files)?;
                let test = match (test_images, test_labels) {
                    (Some(images), Some(labels)) => Some(load_idx_part(
                        base_dir, images, labels, sample_len, &mut files,
                    )?),
                    _ => None,
                };
                (train, test)
            }
            DataSource::Csv {
                path,
                header,
                label_column,
                delimiter,
            } => {
                let full = resolve(base_dir, path);
                let (bytes, hash) = read_file(&full, MAX_TEXT_BYTES)?;
                files.push((path.clone(), hash));
                let text = decode_text(bytes, &full)?;
                let table = csv::parse_csv(&text, &full, *header, *delimiter, *label_column)?;
                if table.columns != sample_len && !table.labels.is_empty() {
                    return Err(RuntimeError::DataFile {
                        path: full,
                        reason: format!(
                            "rows have {} feature columns but samples of shape {:?} need {sample_len}",
                            table.columns, spec.sample_shape
                        ),
                    });
                }
                let part = Part {
                    samples: Samples::F32(table.features),
                    labels: table.labels,
                    sample_len,
                };
                (part, None)
            }
            DataSource::Text { .. } => (text::load(spec, base_dir, &mut files)?, None),
            DataSource::Images { .. } => images::load(spec, base_dir, &mut files, cache)?,
            DataSource::Table { .. } => table::load(spec, base_dir, &mut files, cache)?,
            DataSource::Npy { .. } | DataSource::Npz { .. } => {
                arrays::load(spec, base_dir, sample_len, &mut files)?
            }
        };
        if let Some(limit) = spec.limit {
            train.truncate(limit);
            if let Some(test) = test.as_mut() {
                test.truncate(limit);
            }
        }
        for part in std::iter::once(&mut train).chain(test.as_mut()) {
            relabel(spec, part)?;
        }
        let splits = split::make_splits(spec, &train, test.as_ref(), seed)?;
        let mut dataset = Dataset {
            name: spec.name.clone(),
            sample_shape: spec.sample_shape.clone(),
            classes: spec.classes,
            train,
            test,
            splits,
            norm: ChannelNorm {
                mul: vec![],
                add: vec![],
                inner: 1,
            },
            files,
        };
        dataset.norm = dataset.channel_norm(spec)?;
        Ok(dataset)
    }

    pub fn sample_len(&self) -> usize {
        self.train.sample_len
    }

    /// Channels for normalisation: axis 0 of an image, each feature of a 1-D sample.
    fn channels(&self) -> usize {
        if self.sample_shape.len() >= 2 {
            self.sample_shape[0].max(1)
        } else {
            self.sample_len().max(1)
        }
    }

    fn channel_norm(&self, spec: &DataSpec) -> Result<ChannelNorm> {
        let channels = self.channels();
        let inner = (self.sample_len() / channels).max(1);
        let scale = if spec.scale == 0.0 { 1.0 } else { spec.scale };
        let per_channel = |values: &[f64], what: &str| -> Result<Vec<f64>> {
            match values.len() {
                1 => Ok(vec![values[0]; channels]),
                n if n == channels => Ok(values.to_vec()),
                n => Err(data_error(
                    spec,
                    format!("normalize gives {n} {what} values for {channels} channels"),
                    Some("give one value per channel, or one value for all"),
                )),
            }
        };
        let (mean, std) = match &spec.normalize {
            Normalize::None => (vec![0.0; channels], vec![1.0; channels]),
            Normalize::Given { mean, std } => {
                (per_channel(mean, "mean")?, per_channel(std, "std")?)
            }
            Normalize::TrainStats => self.train_stats(spec, scale, channels, inner)?,
        };
        let mut mul = Vec::with_capacity(channels);
        let mut add = Vec::with_capacity(channels);
        for c in 0..channels {
            let std = if std[c].abs() < 1e-12 { 1.0 } else { std[c] };
            mul.push((1.0 / (scale * std)) as f32);
            add.push((-mean[c] / std) as f32);
        }
        Ok(ChannelNorm { mul, add, inner })
    }

    /// Mean and (population) standard deviation per channel of the scaled values of the
    /// `train` split only, so nothing about the other splits leaks into the inputs.
    fn train_stats(
        &self,
        spec: &DataSpec,
        scale: f64,
        channels: usize,
        inner: usize,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let split = self.split("train").map_err(|_| {
            data_error(
                spec,
                "normalize from train statistics needs a split named `train`",
                None,
            )
        })?;
        let part = self.part(split.part)?;
        let mut sum = vec![0.0f64; channels];
        let mut sum_sq = vec![0.0f64; channels];
        let mut accumulate = |offset: usize, value: f64| {
            let c = (offset / inner).min(channels - 1);
            let v = value / scale;
            sum[c] += v;
            sum_sq[c] += v * v;
        };
        for &index in &split.indices {
            match part.samples.sample_values(index, part.sample_len) {
                SampleValues::U8(values) => {
                    for (offset, &v) in values.iter().enumerate() {
                        accumulate(offset, f64::from(v));
                    }
                }
                SampleValues::F32(values) => {
                    for (offset, &v) in values.iter().enumerate() {
                        accumulate(offset, f64::from(v));
                    }
                }
            }
        }
        let count = (split.len() * inner).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = sum_sq
            .iter()
            .zip(&mean)
            .map(|(sq, m)| (sq / count - m * m).max(0.0).sqrt())
            .collect();
        Ok((mean, std))
    }

    pub fn split(&self, name: &str) -> Result<&Split> {
        self.splits.iter().find(|s| s.name == name).ok_or_else(|| {
            RuntimeError::Plan(format!("data `{}` has no split `{name}`", self.name))
        })
    }

    pub fn part(&self, kind: PartKind) -> Result<&Part> {
        match kind {
            PartKind::Train => Ok(&self.train),
            PartKind::Test => self.test.as_ref().ok_or_else(|| {
                RuntimeError::Plan(format!("data `{}` has no test part", self.name))
            }),
        }
    }

    /// Appends the normalised samples at `positions` (indices into `split.indices`) to `x`
    /// and their labels to `labels`.
    pub fn fill_batch(
        &self,
        split: &Split,
        positions: &[usize],
        x: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) -> Result<()> {
        let part = self.part(split.part)?;
        let sample_len = part.sample_len;
        let inner = self.norm.inner;
        x.reserve(positions.len() * sample_len);
        labels.reserve(positions.len());
        for &position in positions {
            let index = *split.indices.get(position).ok_or_else(|| {
                RuntimeError::Plan(format!(
                    "batch position {position} outside split `{}`",
                    split.name
                ))
            })?;
            labels.push(part.labels[index]);
            match part.samples.sample_values(index, sample_len) {
                SampleValues::U8(values) => {
                    for (chunk, (&mul, &add)) in values
                        .chunks(inner)
                        .zip(self.norm.mul.iter().zip(&self.norm.add))
                    {
                        x.extend(chunk.iter().map(|&v| f32::from(v) * mul + add));
                    }
                }
                SampleValues::F32(values) => {
                    for (chunk, (&mul, &add)) in values
                        .chunks(inner)
                        .zip(self.norm.mul.iter().zip(&self.norm.add))
                    {
                        x.extend(chunk.iter().map(|&v| v * mul + add));
                    }
                }
            }
        }
        Ok(())
    }

    /// Labels of a split, in split order.
    pub fn split_labels(&self, split: &Split) -> Result<Vec<u32>> {
        let part = self.part(split.part)?;
        Ok(split.indices.iter().map(|&i| part.labels[i]).collect())
    }
}

/// Reads an IDX file: a raw file's header is checked against the file's length before the
/// data is read, so a lying header costs a few bytes of reading, not gigabytes.
fn read_idx(full: &Path) -> Result<(idx::IdxArray, String)> {
    let mut prefix = Vec::new();
    // Errors here (a missing file, a folder) are left for `read_file` to report.
    let len = std::fs::File::open(full)
        .and_then(|f| {
            let len = f.metadata()?.len();
            // The longest header: magic and 255 dimensions.
            f.take(4 + 4 * 255).read_to_end(&mut prefix)?;
            Ok(len)
        })
        .ok();
    if let Some(len) = len {
        if !is_gzip(&prefix) {
            idx::check_raw_header(&prefix, len, full)?;
        }
    }
    let (bytes, hash) = read_file(full, u64::MAX)?;
    Ok((idx::decode_idx(&bytes, full)?, hash))
}

fn load_idx_part(
    base_dir: &Path,
    images_path: &Path,
    labels_path: &Path,
    sample_len: usize,
    files: &mut Vec<(PathBuf, String)>,
) -> Result<Part> {
    let images_full = resolve(base_dir, images_path);
    let labels_full = resolve(base_dir, labels_path);
    let (images, image_hash) = read_idx(&images_full)?;
    files.push((images_path.to_path_buf(), image_hash));
    let (label_array, label_hash) = read_idx(&labels_full)?;
    files.push((labels_path.to_path_buf(), label_hash));
    let labels = idx::idx_labels(&label_array, &labels_full)?;
    drop(label_array);
    let count = images.dims.first().copied().unwrap_or(0);
    let sample_dims = &images.dims[1.min(images.dims.len())..];
    // The header's product was checked, so this one cannot overflow.
    let image_len: usize = sample_dims.iter().product();
    if image_len != sample_len || image_len == 0 || sample_dims.is_empty() {
        return Err(RuntimeError::DataFile {
            path: images_full,
            reason: format!(
                "samples have {image_len} values ({sample_dims:?}) but the data declares {sample_len}"
            ),
        });
    }
    if labels.len() != count {
        return Err(RuntimeError::DataFile {
            path: labels_full,
            reason: format!("{} labels for {count} images", labels.len()),
        });
    }
    Ok(Part {
        samples: images.values,
        labels,
        sample_len,
    })
}

fn relabel(spec: &DataSpec, part: &mut Part) -> Result<()> {
    for (i, label) in part.labels.iter_mut().enumerate() {
        if let Some(map) = &spec.relabel {
            *label = *map.get(*label as usize).ok_or_else(|| {
                data_error(
                    spec,
                    format!("sample {i} has label {label}, which `relabel` does not map"),
                    Some("give `relabel` one entry per source label"),
                )
            })? as u32;
        }
        if *label as usize >= spec.classes {
            return Err(data_error(
                spec,
                format!(
                    "sample {i} has label {label} but the data declares {} classes",
                    spec.classes
                ),
                Some("check `classes` (or `relabel`)"),
            ));
        }
    }
    Ok(())
}

/// The split sizes asked for in `spec`, as sample counts of a training part of `n`.
pub(crate) fn requested_size(size: &SplitSize, n: usize) -> Option<usize> {
    match size {
        SplitSize::Count(count) => Some(*count),
        SplitSize::Fraction(f) => Some((f * n as f64).round() as usize),
        SplitSize::SourceTest => None,
    }
}

/// An epoch's visiting order of `n` samples, shuffled with the stream `stream`.
pub fn epoch_order(seed: u64, stream: &str, n: usize) -> Vec<usize> {
    Rng::new(seed, stream).permutation(n)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// The CSV cap works the same at any size; a small one keeps the test fast.
    #[test]
    fn gzip_past_its_cap_is_refused_after_reading_one_byte_more() {
        let path = Path::new("bomb.csv.gz");
        let raw = gzip(&vec![b'1'; 5000]);
        assert_eq!(gunzip_bounded(&raw, path, 5000).unwrap().len(), 5000);
        let error = gunzip_bounded(&raw, path, 4999).unwrap_err().to_string();
        assert!(error.contains("bomb.csv.gz"), "{error}");
        let RuntimeError::DataFile { reason, .. } = gunzip_bounded(&raw, path, 4999).unwrap_err()
        else {
            panic!("a data file error")
        };
        assert_eq!(reason, "its gzip data decompresses to more than 4999 bytes");
    }

    #[test]
    fn gzip_idx_claims_are_checked_before_decompressing() {
        let path = Path::new("x.idx.gz");
        // 10^12 bytes announced in a few dozen bytes of gzip: refused without reading on.
        let mut header = vec![0, 0, 8, 3];
        for d in [1_000_000u32, 1000, 1000] {
            header.extend_from_slice(&d.to_be_bytes());
        }
        let error = idx::decode_idx(&gzip(&header), path).unwrap_err();
        assert!(error.to_string().contains("x.idx.gz"));
        let RuntimeError::DataFile { reason, .. } = error else {
            panic!("a data file error")
        };
        assert!(reason.contains("cannot hold more than"), "{reason}");
        // The same array raw and gzip-compressed reads the same.
        let mut file = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        file.extend_from_slice(&[1, 2, 3, 4]);
        let raw = idx::decode_idx(&file, path).unwrap();
        let zipped = idx::decode_idx(&gzip(&file), path).unwrap();
        assert_eq!(raw.dims, zipped.dims);
        assert!(matches!((raw.values, zipped.values), (Samples::U8(a), Samples::U8(b)) if a == b));
    }

    #[test]
    fn text_that_is_not_utf8_names_its_line() {
        let error = decode_text(b"1,2\n3,\xff\n".to_vec(), Path::new("t.csv")).unwrap_err();
        let RuntimeError::DataFile { reason, .. } = error else {
            panic!("a data file error")
        };
        assert_eq!(reason, "it is not UTF-8 text (line 2, byte 6 of the text)");
    }
}
