//! `metrics.jsonl`, written line by line as a run trains.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};

/// `metrics.jsonl`: one JSON object per epoch of each stage, flushed as written so the
/// file can be followed while a run trains.
pub(crate) struct MetricsLog {
    path: PathBuf,
    file: BufWriter<File>,
    /// Bytes written so far: a checkpoint records it, a resume cuts the file back to it.
    pub(crate) bytes: u64,
}

impl MetricsLog {
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|source| RuntimeError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            bytes: 0,
        })
    }

    /// Opens the log of a resumed run, dropping the lines written after the checkpoint
    /// (they will be written again).
    pub(crate) fn reopen(path: &Path, bytes: u64) -> Result<Self> {
        let write_error = |source| RuntimeError::Write {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(write_error)?;
        let len = file.metadata().map_err(write_error)?.len();
        if len < bytes {
            return Err(RuntimeError::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("it holds {len} bytes, the checkpoint counts {bytes}"),
                help: Some("metrics.jsonl was cut short by hand; start a new run".into()),
            });
        }
        file.set_len(bytes).map_err(write_error)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            bytes,
        })
    }

    pub(crate) fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string(line)?;
        writeln!(self.file, "{text}")
            .and_then(|()| self.file.flush())
            .map_err(|source| RuntimeError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.bytes += text.len() as u64 + 1;
        Ok(())
    }
}
