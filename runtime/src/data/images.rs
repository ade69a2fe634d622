//! Image sources: the files listed by `kd-datafiles` (the reader the checker reads their
//! headers with), each read once, hashed, and decoded in parallel into bytes of the
//! sample's `[C, H, W]`; they stay bytes until a batch is built.

use std::path::{Path, PathBuf};

use kd_datafiles::images::{self, Color, Decoding};
use kd_plan::{DataSource, DataSpec, ImageColor};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{resolve, Part, Samples};
use crate::error::{Result, RuntimeError};

/// No image file is read past this size (256 MiB).
const MAX_IMAGE_BYTES: u64 = 1 << 28;

/// Reads and decodes an image source: its training part, and its test part when it has
/// one. Each folder's (or list's) sha256 goes into `files`: the hash of its files' paths
/// and hashes, in order (the list file's own hash first, for a list).
pub fn load(
    spec: &DataSpec,
    base_dir: &Path,
    files: &mut Vec<(PathBuf, String)>,
) -> Result<(Part, Option<Part>)> {
    let DataSource::Images { path, test, .. } = &spec.source else {
        return Err(RuntimeError::Plan(format!(
            "`{}` is not an image source",
            spec.name
        )));
    };
    let train = load_part(spec, base_dir, path, files)?;
    let test = match test {
        Some(test) => Some(load_part(spec, base_dir, test, files)?),
        None => None,
    };
    Ok((train, test))
}

fn load_part(
    spec: &DataSpec,
    base_dir: &Path,
    path: &Path,
    files: &mut Vec<(PathBuf, String)>,
) -> Result<Part> {
    let DataSource::Images {
        classes,
        color,
        resize,
        ..
    } = &spec.source
    else {
        return Err(RuntimeError::Plan(format!(
            "`{}` is not an image source",
            spec.name
        )));
    };
    let [channels, height, width] = spec.sample_shape[..] else {
        return Err(RuntimeError::Plan(format!(
            "images of `{}` have the shape {:?}, not [C, H, W]",
            spec.name, spec.sample_shape
        )));
    };
    let color = match color {
        ImageColor::Rgb => Color::Rgb,
        ImageColor::Gray => Color::Gray,
    };
    let side = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let decoding = Decoding {
        color,
        height: side(height),
        width: side(width),
        resize: *resize,
    };
    if color.channels() != channels {
        return Err(RuntimeError::Plan(format!(
            "images of `{}` have {channels} channels in their shape but are {color:?}",
            spec.name
        )));
    }
    let full = resolve(base_dir, path);
    let mut entries =
        images::entries(&full, "path", "label").map_err(|e| RuntimeError::DataFile {
            path: e.path,
            reason: e.reason,
        })?;
    // `limit` keeps the first N samples: only those are decoded.
    if let Some(limit) = spec.limit {
        entries.truncate(limit);
    }
    let labels = entries
        .iter()
        .map(|e| {
            classes
                .iter()
                .find(|(raw, _)| *raw == e.label)
                .map(|&(_, class)| class as u32)
                .ok_or_else(|| RuntimeError::DataFile {
                    path: e.path.clone(),
                    reason: format!(
                        "its label `{}` is in no class of `{}` (the data changed after the check?)",
                        e.label, spec.name
                    ),
                })
        })
        .collect::<Result<Vec<u32>>>()?;
    // Each image decodes straight into its sample's place: the peak is the pixels kept
    // plus one image per thread.
    let sample_len = channels * height * width;
    let mut values = vec![0u8; entries.len() * sample_len];
    let hashes: Vec<Result<String>> = values
        .par_chunks_mut(sample_len.max(1))
        .zip(entries.par_iter())
        .map(|(out, e)| {
            let (bytes, hash) = super::read_file(&e.path, MAX_IMAGE_BYTES)?;
            let pixels =
                images::decode(&bytes, &decoding).map_err(|reason| RuntimeError::DataFile {
                    path: e.path.clone(),
                    reason,
                })?;
            out.copy_from_slice(&pixels);
            Ok(hash)
        })
        .collect();
    let mut digest = Sha256::new();
    if full.is_file() {
        digest.update(super::read_file(&full, u64::MAX)?.1.as_bytes());
    }
    for (entry, hash) in entries.iter().zip(hashes) {
        // Paths relative to the folder (or the list's folder): the hash does not depend on
        // where the project lies.
        let base = if full.is_file() {
            full.parent().unwrap_or(&full)
        } else {
            &full
        };
        let name = entry.path.strip_prefix(base).unwrap_or(&entry.path);
        digest.update(format!("{} {}\n", name.display(), hash?).as_bytes());
    }
    files.push((path.to_path_buf(), format!("{:x}", digest.finalize())));
    Ok(Part {
        samples: Samples::U8(values),
        labels,
        sample_len,
    })
}
