//! NumPy sources: `.npy` files, or arrays of one `.npz` archive, read by `kd-datafiles`
//! (the reader the checker reads their headers with). `uint8` samples stay bytes until a
//! batch is built; `float32` and `float64` become f32. Samples stored channels last are
//! reordered to channels first here, once.

use std::path::{Path, PathBuf};

use kd_datafiles::npy::{self, Values};
use kd_datafiles::npz;
use kd_plan::{DataSource, DataSpec};

use super::{read_file, resolve, Part, Samples};
use crate::error::{Result, RuntimeError};

/// No array file is read past this size (16 GiB): far above what a CPU trainer holds.
const MAX_ARRAY_BYTES: u64 = 1 << 34;

/// The training part and the source's own test part (when it has one) of an `npy` or
/// `npz` source. Each file's sha256 goes into `files`.
pub fn load(
    spec: &DataSpec,
    base_dir: &Path,
    sample_len: usize,
    files: &mut Vec<(PathBuf, String)>,
) -> Result<(Part, Option<Part>)> {
    match &spec.source {
        DataSource::Npy {
            x,
            y,
            test_x,
            test_y,
            channels_last,
        } => {
            let mut part = |x: &Path, y: &Path| -> Result<Part> {
                let (x_full, y_full) = (resolve(base_dir, x), resolve(base_dir, y));
                let (x_bytes, hash) = read_file(&x_full, MAX_ARRAY_BYTES)?;
                files.push((x.to_path_buf(), hash));
                let (y_bytes, hash) = read_file(&y_full, MAX_ARRAY_BYTES)?;
                files.push((y.to_path_buf(), hash));
                let samples = npy::samples(&x_bytes).map_err(|r| bad(&x_full, r))?;
                drop(x_bytes);
                let labels = npy::labels(&y_bytes).map_err(|r| bad(&y_full, r))?;
                make_part(samples, labels, sample_len, *channels_last, &x_full)
            };
            let train = part(x, y)?;
            let test = match (test_x, test_y) {
                (Some(a), Some(b)) => Some(part(a, b)?),
                _ => None,
            };
            Ok((train, test))
        }
        DataSource::Npz {
            path,
            x,
            y,
            test_x,
            test_y,
            channels_last,
        } => {
            let full = resolve(base_dir, path);
            let (bytes, hash) = read_file(&full, MAX_ARRAY_BYTES)?;
            files.push((path.clone(), hash));
            let mut archive = npz::open_bytes(&bytes).map_err(|r| bad(&full, r))?;
            let mut part = |x: &str, y: &str| -> Result<Part> {
                let x_bytes = npz::member(&mut archive, x).map_err(|r| bad(&full, r))?;
                let samples =
                    npy::samples(&x_bytes).map_err(|r| bad(&full, format!("array `{x}`: {r}")))?;
                drop(x_bytes);
                let y_bytes = npz::member(&mut archive, y).map_err(|r| bad(&full, r))?;
                let labels =
                    npy::labels(&y_bytes).map_err(|r| bad(&full, format!("array `{y}`: {r}")))?;
                make_part(samples, labels, sample_len, *channels_last, &full)
            };
            let train = part(x, y)?;
            let test = match (test_x, test_y) {
                (Some(a), Some(b)) => Some(part(a, b)?),
                _ => None,
            };
            Ok((train, test))
        }
        _ => Err(RuntimeError::Plan(format!(
            "`{}` is not a NumPy source",
            spec.name
        ))),
    }
}

fn bad(path: &Path, reason: String) -> RuntimeError {
    RuntimeError::DataFile {
        path: path.to_path_buf(),
        reason,
    }
}

fn make_part(
    (header, values): (npy::Header, Values),
    labels: Vec<u32>,
    sample_len: usize,
    channels_last: bool,
    path: &Path,
) -> Result<Part> {
    let count = header.shape.first().copied().unwrap_or(0);
    let sample_dims = &header.shape[1.min(header.shape.len())..];
    let stored: usize = sample_dims.iter().product();
    if header.shape.len() < 2 || stored != sample_len || stored == 0 {
        return Err(bad(
            path,
            format!(
                "samples have {stored} values ({sample_dims:?}) but the data declares {sample_len}"
            ),
        ));
    }
    if labels.len() != count {
        return Err(bad(
            path,
            format!("{} labels for {count} samples", labels.len()),
        ));
    }
    let samples = match (values, channels_last) {
        (Values::U8(v), false) => Samples::U8(v),
        (Values::F32(v), false) => Samples::F32(v),
        (values, true) => {
            let [h, w, c] = sample_dims else {
                return Err(bad(
                    path,
                    format!("`channels: last` needs samples of [H, W, C], not {sample_dims:?}"),
                ));
            };
            let shape = (*h, *w, *c);
            match values {
                Values::U8(v) => Samples::U8(channels_first(&v, shape)),
                Values::F32(v) => Samples::F32(channels_first(&v, shape)),
            }
        }
    };
    Ok(Part {
        samples,
        labels,
        sample_len,
    })
}

/// Samples of `[H, W, C]` reordered to `[C, H, W]`, sample by sample.
fn channels_first<T: Copy>(values: &[T], (h, w, c): (usize, usize, usize)) -> Vec<T> {
    let plane = h * w;
    let mut out = Vec::with_capacity(values.len());
    for sample in values.chunks_exact(plane * c) {
        for channel in 0..c {
            out.extend((0..plane).map(|p| sample[p * c + channel]));
        }
    }
    out
}
