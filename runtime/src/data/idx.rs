//! IDX files (the MNIST format): a magic number giving the element type and the number of
//! dimensions, then the big-endian dimension sizes, then big-endian elements.

use std::path::Path;

use super::Samples;
use crate::error::{Result, RuntimeError};

/// An IDX array: its dimensions and its elements (bytes kept as bytes).
#[derive(Debug)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub values: Samples,
}

fn bad(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::DataFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Parses the bytes of an (already decompressed) IDX file; `path` only names errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(bad(path, "too short for an IDX header"));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(
            path,
            "not an IDX file (the magic number must start with two zero bytes)",
        ));
    }
    let type_code = bytes[2];
    let element_size: usize = match type_code {
        0x08 | 0x09 => 1,
        0x0B => 2,
        0x0C | 0x0D => 4,
        0x0E => 8,
        other => return Err(bad(path, format!("unknown IDX element type 0x{other:02x}"))),
    };
    let ndims = bytes[3] as usize;
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(bad(
            path,
            format!("truncated header: {ndims} dimensions announced"),
        ));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(path, "dimension sizes overflow"))?;
    let expected = count
        .checked_mul(element_size)
        .ok_or_else(|| bad(path, "dimension sizes overflow"))?;
    let data = &bytes[header_len..];
    // Checked before any allocation, so a corrupt header cannot ask for gigabytes.
    if data.len() != expected {
        return Err(bad(
            path,
            format!(
                "the header announces {dims:?} ({expected} bytes of data) but the file holds {} bytes of data",
                data.len()
            ),
        ));
    }
    let values = match type_code {
        0x08 => Samples::U8(data.to_vec()),
        0x09 => Samples::F32(data.iter().map(|&b| f32::from(b as i8)).collect()),
        0x0B => Samples::F32(
            data.chunks_exact(2)
                .map(|c| f32::from(i16::from_be_bytes([c[0], c[1]])))
                .collect(),
        ),
        0x0C => Samples::F32(
            data.chunks_exact(4)
                .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
        ),
        0x0D => Samples::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        _ => Samples::F32(
            data.chunks_exact(8)
                .map(|c| {
                    f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
        ),
    };
    Ok(IdxArray { dims, values })
}

/// Reads integer labels from an IDX array; negative or fractional values are refused.
pub fn idx_labels(array: &IdxArray, path: &Path) -> Result<Vec<u32>> {
    if array.dims.len() != 1 {
        return Err(bad(
            path,
            format!(
                "a label file must have one dimension, this one has {:?}",
                array.dims
            ),
        ));
    }
    match &array.values {
        Samples::U8(values) => Ok(values.iter().map(|&v| u32::from(v)).collect()),
        Samples::F32(values) => values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if v >= 0.0 && v.fract() == 0.0 && v < u32::MAX as f32 {
                    Ok(v as u32)
                } else {
                    Err(bad(path, format!("label {i} is `{v}`, not a class id")))
                }
            })
            .collect(),
    }
}
