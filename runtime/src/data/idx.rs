//! IDX files (the MNIST format): a magic number giving the element type and the number of
//! dimensions, then the big-endian dimension sizes, then big-endian elements.
//!
//! The sizes a header claims are checked against what the file can hold before anything is
//! allocated for them: exactly for raw files, against gzip's largest expansion for
//! compressed ones, whose data is then read up to one byte past the claim.

use std::io::Read;
use std::path::Path;

use super::{is_gzip, Samples, MAX_GZIP_RATIO};
use crate::error::{Result, RuntimeError};

/// An IDX array: its dimensions and its elements (bytes kept as bytes).
#[derive(Debug)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub values: Samples,
}

/// What an IDX header says: the element type, the dimensions, and the bytes of data.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxHeader {
    pub type_code: u8,
    pub dims: Vec<usize>,
    /// Bytes of the header itself: 4 + 4 per dimension.
    pub header_len: usize,
    /// Bytes of data the dimensions and the element type announce.
    pub data_len: u64,
}

fn bad(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::DataFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn element_size(type_code: u8) -> Option<u64> {
    match type_code {
        0x08 | 0x09 => Some(1),
        0x0B => Some(2),
        0x0C | 0x0D => Some(4),
        0x0E => Some(8),
        _ => None,
    }
}

/// Reads the header (magic and dimensions) from the start of `reader`.
fn read_header(reader: &mut dyn Read, path: &Path) -> Result<IdxHeader> {
    let read_error = |e: std::io::Error, what: &str| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            bad(path, format!("it is too short for an IDX header ({what})"))
        } else {
            bad(path, format!("cannot read its IDX header: {e}"))
        }
    };
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(|e| read_error(e, "no magic number"))?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(bad(
            path,
            "not an IDX file (the magic number must start with two zero bytes)",
        ));
    }
    let type_code = magic[2];
    let size = element_size(type_code)
        .ok_or_else(|| bad(path, format!("unknown IDX element type 0x{type_code:02x}")))?;
    let ndims = usize::from(magic[3]);
    if ndims == 0 {
        return Err(bad(path, "its IDX header declares no dimensions"));
    }
    let mut sizes = vec![0u8; 4 * ndims];
    reader
        .read_exact(&mut sizes)
        .map_err(|e| read_error(e, &format!("{ndims} dimensions announced")))?;
    let dims: Vec<usize> = sizes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let data_len = dims
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| bad(path, format!("its IDX dimensions {dims:?} overflow")))?;
    Ok(IdxHeader {
        type_code,
        dims,
        header_len: 4 + 4 * ndims,
        data_len,
    })
}

fn announce(header: &IdxHeader) -> String {
    format!(
        "the header announces {:?} ({} bytes of data)",
        header.dims, header.data_len
    )
}

/// Reads and checks the header of a raw (uncompressed) IDX file of `file_len` bytes; for a
/// loader that wants to refuse a lying header before reading the rest of the file.
pub fn check_raw_header(prefix: &[u8], file_len: u64, path: &Path) -> Result<IdxHeader> {
    let header = read_header(&mut &prefix[..], path)?;
    let held = file_len.saturating_sub(header.header_len as u64);
    if held != header.data_len {
        return Err(bad(
            path,
            format!(
                "{} but the file holds {held} bytes of data",
                announce(&header)
            ),
        ));
    }
    Ok(header)
}

/// Parses an IDX file's bytes, raw or gzip-compressed; `path` only names errors.
pub fn decode_idx(raw: &[u8], path: &Path) -> Result<IdxArray> {
    if !is_gzip(raw) {
        return parse_idx(raw, path);
    }
    let mut decoder = flate2::read::MultiGzDecoder::new(raw);
    let header = read_header(&mut decoder, path)?;
    let most = (raw.len() as u64).saturating_mul(MAX_GZIP_RATIO);
    if header.data_len > most {
        return Err(bad(
            path,
            format!(
                "{} but {} bytes of gzip cannot hold more than {most}",
                announce(&header),
                raw.len()
            ),
        ));
    }
    let mut data = Vec::new();
    decoder
        .take(header.data_len.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| bad(path, format!("cannot decompress gzip data: {e}")))?;
    if data.len() as u64 > header.data_len {
        return Err(bad(
            path,
            format!("{} but its gzip data holds more", announce(&header)),
        ));
    }
    if (data.len() as u64) < header.data_len {
        return Err(bad(
            path,
            format!(
                "{} but its gzip data holds only {} bytes of data",
                announce(&header),
                data.len()
            ),
        ));
    }
    Ok(IdxArray {
        values: values(header.type_code, &data, path)?,
        dims: header.dims,
    })
}

/// Parses the bytes of an (already decompressed) IDX file; `path` only names errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let header = check_raw_header(bytes, bytes.len() as u64, path)?;
    let data = &bytes[header.header_len..];
    Ok(IdxArray {
        values: values(header.type_code, data, path)?,
        dims: header.dims,
    })
}

/// The elements of `data` (whose length the header has been checked against); NaN and
/// infinities are refused here, where the file can still be named.
fn values(type_code: u8, data: &[u8], path: &Path) -> Result<Samples> {
    let floats: Vec<f32> = match type_code {
        0x08 => return Ok(Samples::U8(data.to_vec())),
        0x09 => data.iter().map(|&b| f32::from(b as i8)).collect(),
        0x0B => data
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_be_bytes([c[0], c[1]])))
            .collect(),
        0x0C => data
            .chunks_exact(4)
            .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        0x0D => data
            .chunks_exact(4)
            .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => data
            .chunks_exact(8)
            .map(|c| f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
    };
    if let Some(i) = floats.iter().position(|v| !v.is_finite()) {
        return Err(bad(
            path,
            format!("element {i} is `{}`, not a finite 32-bit number", floats[i]),
        ));
    }
    Ok(Samples::F32(floats))
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
