//! NumPy's `.npz` archives (`numpy.savez`, stored, and `numpy.savez_compressed`, deflated):
//! a zip file of `.npy` members, one per key. A key is named as numpy names it (`"x_train"`
//! for the member `x_train.npy`).
//!
//! A member's size in the zip directory, its `.npy` header and the bytes that come out of
//! it must all agree; nothing larger than the header's claim is ever read.

use std::io::{Cursor, Read, Seek};
use std::path::Path;

use zip::ZipArchive;

use crate::npy::{self, Header};
use crate::Reason;

/// The archive's member names (those that are text), in the archive's order.
fn names<R: Read + Seek>(archive: &ZipArchive<R>) -> Vec<String> {
    archive
        .file_names()
        .filter_map(|name| name.ok().map(|n| n.into_owned()))
        .collect()
}

/// The archive's keys, in the archive's order.
pub fn keys<R: Read + Seek>(archive: &ZipArchive<R>) -> Vec<String> {
    names(archive)
        .into_iter()
        .map(|name| name.strip_suffix(".npy").unwrap_or(&name).to_string())
        .collect()
}

/// Opens the archive at `path`.
pub fn open(path: &Path) -> Result<ZipArchive<std::fs::File>, Reason> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    ZipArchive::new(file).map_err(|e| zip_reason(&e))
}

/// Opens an archive held in memory.
pub fn open_bytes(bytes: &[u8]) -> Result<ZipArchive<Cursor<&[u8]>>, Reason> {
    ZipArchive::new(Cursor::new(bytes)).map_err(|e| zip_reason(&e))
}

fn zip_reason(e: &zip::result::ZipError) -> Reason {
    format!("it is not a readable .npz (zip) archive: {e}")
}

fn member_name<R: Read + Seek>(archive: &ZipArchive<R>, key: &str) -> Result<String, Reason> {
    let names = names(archive);
    for name in [format!("{key}.npy"), key.to_string()] {
        if names.contains(&name) {
            return Ok(name);
        }
    }
    let mut known = keys(archive);
    known.sort();
    Err(format!(
        "it holds no array `{key}`; its arrays: {}",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    ))
}

/// The header of the array `key`, checked against the member's size in the directory.
pub fn header<R: Read + Seek>(archive: &mut ZipArchive<R>, key: &str) -> Result<Header, Reason> {
    let name = member_name(archive, key)?;
    let mut member = archive.by_name(&name).map_err(|e| zip_reason(&e))?;
    let size = member.size();
    let header = npy::read_header_from(&mut member).map_err(|r| format!("array `{key}`: {r}"))?;
    header
        .check_len(size)
        .map_err(|r| format!("array `{key}`: {r}"))?;
    Ok(header)
}

/// The whole `.npy` bytes of the array `key`: its header first, then exactly the values
/// it claims, refused when the member holds more or fewer.
pub fn member<R: Read + Seek>(archive: &mut ZipArchive<R>, key: &str) -> Result<Vec<u8>, Reason> {
    let name = member_name(archive, key)?;
    let mut member = archive.by_name(&name).map_err(|e| zip_reason(&e))?;
    let declared = member.size();
    npy::read_whole(&mut member, declared).map_err(|r| format!("array `{key}`: {r}"))
}
