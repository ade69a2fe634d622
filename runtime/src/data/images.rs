//! Image sources: the files listed by `kd-datafiles` (the reader the checker reads their
//! headers with), each read once, hashed, and decoded in parallel into bytes of the
//! sample's `[C, H, W]`; they stay bytes until a batch is built. Under `cache: disk` the
//! decoded bytes are kept in the cache folder, named by the files' hashes and the decoding,
//! and a later run reads and hashes the files but decodes nothing (a miss decodes the bytes
//! it read for the hashes when they fit in [`KEEP_READ_BYTES`]).

use std::path::{Path, PathBuf};

use kd_datafiles::images::{self, Color, Decoding};
use kd_plan::{DataSource, DataSpec, ImageColor};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{resolve, Part, Samples};
use crate::error::{Result, RuntimeError};

/// No image file is read past this size (256 MiB).
const MAX_IMAGE_BYTES: u64 = 1 << 28;

/// Under `cache: disk`, the files' bytes read for their hashes are kept for decoding when
/// they come to at most this much together (512 MiB); more are read again on a miss.
const KEEP_READ_BYTES: u64 = 1 << 29;

/// Reads and decodes an image source: its training part, and its test part when it has
/// one. Each folder's (or list's) sha256 goes into `files`: the hash of its files' paths
/// and hashes, in order (the list file's own hash first, for a list).
pub fn load(
    spec: &DataSpec,
    base_dir: &Path,
    files: &mut Vec<(PathBuf, String)>,
    cache: Option<&Path>,
) -> Result<(Part, Option<Part>)> {
    let DataSource::Images { path, test, .. } = &spec.source else {
        return Err(RuntimeError::Plan(format!(
            "`{}` is not an image source",
            spec.name
        )));
    };
    let train = load_part(spec, base_dir, path, files, cache)?;
    let test = match test {
        Some(test) => Some(load_part(spec, base_dir, test, files, cache)?),
        None => None,
    };
    Ok((train, test))
}

fn load_part(
    spec: &DataSpec,
    base_dir: &Path,
    path: &Path,
    files: &mut Vec<(PathBuf, String)>,
    cache: Option<&Path>,
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
    let (decoding, sample_len) = decoding(spec, *color, *resize)?;
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
    // Under `cache: disk`: the files are read and hashed first, and decoded only when the
    // cache has no copy of their pixels. When they are small enough together, the bytes
    // read are kept, so that a cache miss decodes them without reading every file again.
    let mut kept: Option<Vec<(Vec<u8>, String)>> = None;
    let cached = match cache {
        Some(dir) => {
            let total: u64 = entries
                .par_iter()
                .map(|e| std::fs::metadata(&e.path).map_or(0, |m| m.len()))
                .sum();
            let keep = total <= KEEP_READ_BYTES;
            let read: Vec<Result<(Vec<u8>, String)>> = entries
                .par_iter()
                .map(|e| {
                    let (bytes, hash) = super::read_file(&e.path, MAX_IMAGE_BYTES)?;
                    Ok((if keep { bytes } else { Vec::new() }, hash))
                })
                .collect();
            let read: Vec<(Vec<u8>, String)> = read.into_iter().collect::<Result<_>>()?;
            let hashes = read.iter().map(|(_, h)| Ok(h.clone())).collect();
            let digest = part_digest(&full, &entries, hashes)?;
            let key = cache_key("images", &digest, &decoding, spec);
            let file = dir.join(format!("images-{key}.u8"));
            if let Some(values) = read_cached(&file, entries.len() * sample_len) {
                files.push((path.to_path_buf(), digest));
                return Ok(Part {
                    samples: Samples::U8(values),
                    labels,
                    sample_len,
                });
            }
            kept = keep.then_some(read);
            Some(file)
        }
        None => None,
    };
    // Each image decodes straight into its sample's place: the peak is the pixels kept
    // plus one image per thread (and, on a cache miss, the files' bytes kept above).
    let mut values = vec![0u8; entries.len() * sample_len];
    let hashes: Vec<Result<String>> = values
        .par_chunks_mut(sample_len.max(1))
        .zip(entries.par_iter())
        .enumerate()
        .map(|(i, (out, e))| {
            let (bytes, hash) = match kept.as_ref().and_then(|k| k.get(i)) {
                Some((bytes, hash)) => (std::borrow::Cow::Borrowed(bytes), hash.clone()),
                None => {
                    let (bytes, hash) = super::read_file(&e.path, MAX_IMAGE_BYTES)?;
                    (std::borrow::Cow::Owned(bytes), hash)
                }
            };
            let pixels =
                images::decode(&bytes, &decoding).map_err(|reason| RuntimeError::DataFile {
                    path: e.path.clone(),
                    reason,
                })?;
            out.copy_from_slice(&pixels);
            Ok(hash)
        })
        .collect();
    drop(kept);
    files.push((path.to_path_buf(), part_digest(&full, &entries, hashes)?));
    if let Some(file) = cached {
        write_cached(&file, &values);
    }
    Ok(Part {
        samples: Samples::U8(values),
        labels,
        sample_len,
    })
}

/// How `spec`'s images become samples of its `[C, H, W]` shape, and the bytes of one
/// sample.
pub(super) fn decoding(
    spec: &DataSpec,
    color: ImageColor,
    resize: Option<u32>,
) -> Result<(Decoding, usize)> {
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
        resize,
    };
    if color.channels() != channels {
        return Err(RuntimeError::Plan(format!(
            "images of `{}` have {channels} channels in their shape but are {color:?}",
            spec.name
        )));
    }
    Ok((decoding, channels * height * width))
}

/// A part's hash: its list file's (for a list), then each file's path (relative to the
/// folder, or the list's folder: the hash does not depend on where the project lies) and
/// hash, in order.
fn part_digest(
    full: &Path,
    entries: &[images::Entry],
    hashes: Vec<Result<String>>,
) -> Result<String> {
    let mut digest = Sha256::new();
    digest.update(format!("{}\n", images::DECODER).as_bytes());
    if full.is_file() {
        digest.update(super::read_file(full, u64::MAX)?.1.as_bytes());
    }
    let base = if full.is_file() {
        full.parent().unwrap_or(full)
    } else {
        full
    };
    for (entry, hash) in entries.iter().zip(hashes) {
        let name = entry.path.strip_prefix(base).unwrap_or(&entry.path);
        digest.update(format!("{} {}\n", name.display(), hash?).as_bytes());
    }
    Ok(format!("{:x}", digest.finalize()))
}

/// The cache file's name: kdc's version, what kind of source it is, the part's hash, how
/// images become samples and how many are kept.
pub(super) fn cache_key(kind: &str, digest: &str, decoding: &Decoding, spec: &DataSpec) -> String {
    let mut key = Sha256::new();
    key.update(
        format!(
            "kdc {} {kind} v1\n{digest}\n{decoding:?}\nlimit {:?}\n",
            env!("CARGO_PKG_VERSION"),
            spec.limit
        )
        .as_bytes(),
    );
    format!("{:x}", key.finalize())
}

/// The cached pixels, when the file holds `len` bytes followed by their sha256; anything
/// else (missing, cut short, altered) is decoded again.
pub(super) fn read_cached(file: &Path, len: usize) -> Option<Vec<u8>> {
    let mut bytes = std::fs::read(file).ok()?;
    if bytes.len() != len + 32 {
        return None;
    }
    let sum = bytes.split_off(len);
    (Sha256::digest(&bytes)[..] == sum[..]).then_some(bytes)
}

/// Keeps the pixels in the cache; a cache that cannot be written costs the next run a
/// decode, not this run its result.
pub(super) fn write_cached(file: &Path, values: &[u8]) {
    let mut bytes = Vec::with_capacity(values.len() + 32);
    bytes.extend_from_slice(values);
    bytes.extend_from_slice(&Sha256::digest(values));
    let _ = crate::output::files::write_atomically(file, &bytes);
}
