//! TensorBoard's event files beside `metrics.jsonl`: `tensorboard/seed-N/` per seed (a
//! TensorBoard "run" each), one scalar per number of an epoch record, tagged
//! `STAGE/FIELD` (`teach/train_loss`, `distill/val_accuracy`, `distill/schedules.hinton.T`)
//! at step EPOCH. The format is TFRecord framing around `Event` protocol buffers; the few
//! fields a scalar needs are encoded here (no crate writes them and is kept up).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::metrics_log::fields;
use crate::error::{Result, RuntimeError};

/// The folder in the run folder.
pub(crate) const FOLDER: &str = "tensorboard";
/// One file per seed: TensorBoard reads any file whose name holds `tfevents`; a fixed name
/// keeps a rerun's folder the same.
const FILE: &str = "events.out.tfevents.kdc";

/// Fields of a record that are its coordinates, not scalars.
const NOT_SCALARS: [&str; 3] = ["seed", "epoch", "steps"];

/// Every seed's open event file, appended to as records come: TensorBoard's loaders keep
/// a file open and read what is appended, so the file is never replaced while a run
/// trains.
pub(crate) struct EventFiles {
    dir: PathBuf,
    /// Per seed: the file, and the seed's training seconds so far (the events' time).
    open: HashMap<u64, (File, f64)>,
}

impl EventFiles {
    /// Starts from `records` (none for a new run; those a resumed run kept): removes what
    /// an earlier attempt left in `dir/tensorboard` and writes each seed's records afresh.
    pub(crate) fn start(dir: &Path, records: &[serde_json::Value]) -> Result<Self> {
        let folder = dir.join(FOLDER);
        if folder.exists() {
            std::fs::remove_dir_all(&folder).map_err(|source| RuntimeError::Write {
                path: folder.clone(),
                source,
            })?;
        }
        let mut files = EventFiles {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
        };
        for r in records {
            files.append(r)?;
        }
        Ok(files)
    }

    /// Appends the scalars of an epoch record to its seed's file (made, with the version
    /// event every event file starts with, on the seed's first record).
    pub(crate) fn append(&mut self, r: &serde_json::Value) -> Result<()> {
        let (Some(seed), Some(stage), Some(epoch)) =
            (r["seed"].as_u64(), r["stage"].as_str(), r["epoch"].as_i64())
        else {
            return Ok(());
        };
        let folder = self.dir.join(FOLDER).join(format!("seed-{seed}"));
        let path = folder.join(FILE);
        let write_error = |source| RuntimeError::Write {
            path: path.clone(),
            source,
        };
        let (file, clock) = match self.open.entry(seed) {
            Entry::Occupied(open) => open.into_mut(),
            Entry::Vacant(slot) => {
                std::fs::create_dir_all(&folder).map_err(write_error)?;
                let mut file = File::create(&path).map_err(write_error)?;
                let mut head = Vec::new();
                record(&mut head, &event(0.0, 0, Payload::Version("brain.Event:2")));
                file.write_all(&head).map_err(write_error)?;
                slot.insert((file, 0.0))
            }
        };
        *clock += r["seconds"].as_f64().unwrap_or(0.0);
        let values: Vec<(String, f32)> = fields(r, "")
            .into_iter()
            .filter(|(name, _)| !NOT_SCALARS.contains(&name.as_str()))
            .filter_map(|(name, v)| {
                let v = v.as_f64().filter(|v| v.is_finite())?;
                Some((format!("{stage}/{name}"), v as f32))
            })
            .collect();
        if values.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        record(&mut out, &event(*clock, epoch, Payload::Scalars(&values)));
        // One write per record, so a reader sees whole records but for the last.
        file.write_all(&out)
            .and_then(|()| file.flush())
            .map_err(write_error)
    }
}

enum Payload<'a> {
    Version(&'a str),
    Scalars(&'a [(String, f32)]),
}

/// An `Event` (tensorflow/core/util/event.proto): wall_time = 1 (double), step = 2
/// (int64), file_version = 3 (string), summary = 5 (`Summary`, whose repeated `value` = 1
/// holds `tag` = 1 and `simple_value` = 2, a float).
fn event(wall_time: f64, step: i64, payload: Payload) -> Vec<u8> {
    let mut out = vec![0x09];
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(0x10);
    varint(&mut out, step as u64);
    match payload {
        Payload::Version(version) => bytes_field(&mut out, 3, version.as_bytes()),
        Payload::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, value) in values {
                let mut v = Vec::new();
                bytes_field(&mut v, 1, tag.as_bytes());
                v.push(0x15);
                v.extend_from_slice(&value.to_le_bytes());
                bytes_field(&mut summary, 1, &v);
            }
            bytes_field(&mut out, 5, &summary);
        }
    }
    out
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A TFRecord: the length (u64), its masked CRC-32C, the data, the data's masked CRC-32C,
/// all little-endian.
fn record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: event files are
/// small and written once an epoch.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = match crc & 1 {
                1 => (crc >> 1) ^ 0x82f6_3b78,
                _ => crc >> 1,
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_varints_match_their_specifications() {
        // RFC 3720, B.4: the check value of "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
