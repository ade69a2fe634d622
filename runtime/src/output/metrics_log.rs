//! `metrics.jsonl`, written line by line as a run trains, and beside it the same records
//! as `metrics.csv`, for spreadsheets and dashboards that read CSV, and as TensorBoard
//! event files (`tensorboard/seed-N/`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::tensorboard::EventFiles;
use crate::error::{Result, RuntimeError};

/// The run folder a log is in.
fn folder(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// `metrics.jsonl`: one JSON object per epoch of each stage, flushed as written so the
/// file can be followed while a run trains.
pub(crate) struct MetricsLog {
    path: PathBuf,
    /// `None` on the ranks of a data-parallel run that do not write the run folder.
    file: Option<BufWriter<File>>,
    /// Bytes written so far: a checkpoint records it, a resume cuts the file back to it.
    pub(crate) bytes: u64,
    /// Every record so far, for `metrics.csv`.
    records: Vec<serde_json::Value>,
    /// TensorBoard's files (`None` where the log writes nothing).
    events: Option<EventFiles>,
}

impl MetricsLog {
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|source| RuntimeError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        let log = MetricsLog {
            path: path.to_path_buf(),
            file: Some(BufWriter::new(file)),
            bytes: 0,
            records: Vec::new(),
            events: Some(EventFiles::start(folder(path), &[])?),
        };
        log.write_csv()?;
        Ok(log)
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
        let text = std::fs::read_to_string(path).map_err(write_error)?;
        let records = text
            .lines()
            .map(serde_json::from_str)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| RuntimeError::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("a line is not JSON: {e}"),
                help: Some("metrics.jsonl was changed by hand; start a new run".into()),
            })?;
        let log = MetricsLog {
            path: path.to_path_buf(),
            file: Some(BufWriter::new(file)),
            bytes,
            events: Some(EventFiles::start(folder(path), &records)?),
            records,
        };
        log.write_csv()?;
        Ok(log)
    }

    /// A log that writes nothing and counts what it would have written from `bytes` on:
    /// another rank writes the run folder.
    pub(crate) fn silent(path: &Path, bytes: u64) -> Self {
        MetricsLog {
            path: path.to_path_buf(),
            file: None,
            bytes,
            records: Vec::new(),
            events: None,
        }
    }

    /// How many lines the log holds.
    pub(crate) fn record_count(&self) -> usize {
        self.records.len()
    }

    /// The lines written since the log held `count`.
    pub(crate) fn records_since(&self, count: usize) -> &[serde_json::Value] {
        self.records.get(count..).unwrap_or(&[])
    }

    pub(crate) fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string(line)?;
        self.bytes += text.len() as u64 + 1;
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        writeln!(file, "{text}")
            .and_then(|()| file.flush())
            .map_err(|source| RuntimeError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.records.push(line.clone());
        self.write_csv()?;
        match self.events.as_mut() {
            Some(events) => events.append(line),
            None => Ok(()),
        }
    }

    /// Rewrites `metrics.csv` from every record so far (written whole, then renamed, so a
    /// reader never sees half a table). Its columns: `seed`, `stage`, `model`, `epoch`,
    /// `steps`, then every other field in the order it first appears; nested objects
    /// flattened to dotted names (`schedules.hinton.T`); a field a record lacks is empty.
    fn write_csv(&self) -> Result<()> {
        let path = self.path.with_extension("csv");
        let rows: Vec<Vec<(String, String)>> = self
            .records
            .iter()
            .map(|r| {
                fields(r, "")
                    .into_iter()
                    .map(|(n, v)| (n, text(v)))
                    .collect()
            })
            .collect();
        let mut columns: Vec<String> = ["seed", "stage", "model", "epoch", "steps"]
            .iter()
            .map(|c| c.to_string())
            .collect();
        for (name, _) in rows.iter().flatten() {
            if !columns.contains(name) {
                columns.push(name.clone());
            }
        }
        let mut text = columns
            .iter()
            .map(|c| cell(c))
            .collect::<Vec<_>>()
            .join(",");
        text.push('\n');
        for row in &rows {
            let cells: Vec<String> = columns
                .iter()
                .map(|c| {
                    row.iter()
                        .find(|(n, _)| n == c)
                        .map_or(String::new(), |(_, v)| cell(v))
                })
                .collect();
            text.push_str(&cells.join(","));
            text.push('\n');
        }
        let partial = path.with_extension("csv.partial");
        let write_error = |source| RuntimeError::Write {
            path: path.clone(),
            source,
        };
        std::fs::write(&partial, text).map_err(write_error)?;
        std::fs::rename(&partial, &path).map_err(write_error)
    }
}

/// A record's fields as (dotted name, value), nested objects flattened
/// (`schedules.hinton.T`): the columns of `metrics.csv` and the tags of TensorBoard's files.
pub(super) fn fields<'v>(
    value: &'v serde_json::Value,
    prefix: &str,
) -> Vec<(String, &'v serde_json::Value)> {
    let serde_json::Value::Object(map) = value else {
        return vec![(prefix.trim_end_matches('.').to_string(), value)];
    };
    map.iter()
        .flat_map(|(name, v)| match v {
            serde_json::Value::Object(_) => fields(v, &format!("{prefix}{name}.")),
            _ => vec![(format!("{prefix}{name}"), v)],
        })
        .collect()
}

/// A field as a cell: numbers as JSON writes them, strings as they are, arrays as JSON.
fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A CSV cell (RFC 4180): quoted when it holds a comma, a quote or a line break.
fn cell(value: &str) -> String {
    match value.contains([',', '"', '\n', '\r']) {
        true => format!("\"{}\"", value.replace('"', "\"\"")),
        false => value.to_string(),
    }
}
