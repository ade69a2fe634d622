//! Table sources (Parquet, Arrow IPC): read by `kd_datafiles::table`, the reader the
//! checker counts them with. Image columns decode in parallel, a record batch at a time,
//! into bytes of the sample's `[C, H, W]` (kept in the cache folder under `cache: disk`,
//! as an image folder's are); text columns are tokenised as text files are.

use std::path::{Path, PathBuf};

use kd_datafiles::images;
use kd_datafiles::table::{self, Cell, Format, Kind};
use kd_plan::{DataSource, DataSpec, TableFormat, TableImages};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{resolve, Part, Samples};
use crate::error::{Result, RuntimeError};

/// No image a table refers to by path is read past this size (256 MiB).
const MAX_IMAGE_BYTES: u64 = 1 << 28;

/// Reads a table source: its training part, and its test part when it has one. Each
/// part's sha256 (of its files' hashes and names, in order) goes into `files`.
pub fn load(
    spec: &DataSpec,
    base_dir: &Path,
    files: &mut Vec<(PathBuf, String)>,
    cache: Option<&Path>,
) -> Result<(Part, Option<Part>)> {
    let DataSource::Table { path, test, .. } = &spec.source else {
        return Err(RuntimeError::Plan(format!(
            "`{}` is not a table source",
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

fn read_error(e: kd_textdata::ReadError) -> RuntimeError {
    RuntimeError::DataFile {
        path: e.path,
        reason: e.reason,
    }
}

fn load_part(
    spec: &DataSpec,
    base_dir: &Path,
    path: &Path,
    files: &mut Vec<(PathBuf, String)>,
    cache: Option<&Path>,
) -> Result<Part> {
    let DataSource::Table {
        format,
        column,
        label,
        classes,
        images,
        ..
    } = &spec.source
    else {
        return Err(RuntimeError::Plan(format!(
            "`{}` is not a table source",
            spec.name
        )));
    };
    let format = match format {
        TableFormat::Parquet => Format::Parquet,
        TableFormat::Arrow => Format::Arrow,
    };
    let kind = if images.is_some() {
        Kind::Image
    } else {
        Kind::Text
    };
    let full = resolve(base_dir, path);
    let tables = table::files(&full, format).map_err(read_error)?;
    let found =
        table::labels(&tables, format, column, kind, label, spec.limit).map_err(read_error)?;
    // Each row's file and row there, for the diagnostics (rows count from 1 in each file).
    let rows = tables
        .iter()
        .zip(&found.per_file)
        .flat_map(|(file, &(n, _))| (1..=n).map(move |row| (file, row)));
    let labels = found
        .labels
        .iter()
        .zip(rows)
        .map(|(raw, (file, row))| {
            classes
                .iter()
                .find(|(r, _)| r == raw)
                .map(|&(_, class)| class as u32)
                .ok_or_else(|| RuntimeError::DataFile {
                    path: file.clone(),
                    reason: format!(
                        "row {row} has label `{raw}`, in no class of `{}` (the data changed after the check?)",
                        spec.name
                    ),
                })
        })
        .collect::<Result<Vec<u32>>>()?;

    let mut digest = Sha256::new();
    for file in &tables {
        let mut one = Sha256::new();
        crate::output::files::hash_file(&mut one, file)?;
        let hash = crate::output::files::hex(&one.finalize());
        let name = file.strip_prefix(&full).unwrap_or(file);
        digest.update(format!("{hash}  {}\n", name.display()).as_bytes());
    }
    let source = Source {
        format,
        column,
        tables: &tables,
        per_file: &found.per_file,
    };
    let part = match images {
        Some(decoding) => image_part(spec, decoding, &source, labels, &mut digest, cache)?,
        None => text_part(spec, base_dir, &source, labels, files)?,
    };
    files.push((path.to_path_buf(), format!("{:x}", digest.finalize())));
    Ok(part)
}

/// A part's tables and how many rows of each its labels took.
struct Source<'a> {
    format: Format,
    column: &'a str,
    tables: &'a [PathBuf],
    per_file: &'a [(usize, bool)],
}

fn image_part(
    spec: &DataSpec,
    decoding: &TableImages,
    source: &Source,
    labels: Vec<u32>,
    digest: &mut Sha256,
    cache: Option<&Path>,
) -> Result<Part> {
    let (decoding, sample_len) = super::images::decoding(spec, decoding.color, decoding.resize)?;
    digest.update(format!("{}\n", images::DECODER).as_bytes());
    // Under `cache: disk`, the pixels are named by the tables' hashes. Only tables that hold
    // their images are cached: a table that links image files would need those read and
    // hashed too, and its pixels are decoded every run.
    let cached = cache.map(|dir| {
        let tables = format!("{:x}", digest.clone().finalize());
        let kind = format!("table {:?} {}", source.format, source.column);
        let key = super::images::cache_key(&kind, &tables, &decoding, spec);
        dir.join(format!("table-{key}.u8"))
    });
    if let Some(file) = &cached {
        if let Some(values) = super::images::read_cached(file, labels.len() * sample_len) {
            return Ok(Part {
                samples: Samples::U8(values),
                labels,
                sample_len,
            });
        }
    }
    let mut values = vec![0u8; labels.len() * sample_len];
    // Images stored by path: their hashes join the part's, in row order.
    let mut linked: Vec<(usize, String)> = Vec::new();
    table::cells(
        source.tables,
        source.per_file,
        source.format,
        source.column,
        Kind::Image,
        |file, file_row, row, cells| {
            let start = row * sample_len;
            let out = values
                .get_mut(start..start + cells.len() * sample_len)
                .ok_or_else(|| "it has more rows than labels".to_string())?;
            let decoded: Vec<std::result::Result<Option<(usize, String)>, String>> = out
                .par_chunks_mut(sample_len.max(1))
                .zip(cells.par_iter())
                .enumerate()
                .map(|(i, (out, cell))| {
                    let at = file_row + i + 1;
                    let (pixels, link) = match cell {
                        Cell::Bytes(bytes) => (images::decode(bytes, &decoding), None),
                        Cell::Path(p) => {
                            let linked = file.parent().unwrap_or(Path::new("")).join(p);
                            let (bytes, hash) = super::read_file(&linked, MAX_IMAGE_BYTES)
                                .map_err(|e| format!("row {at}: {e}"))?;
                            (images::decode(&bytes, &decoding), Some((row + i, hash)))
                        }
                        Cell::Text(_) => (Err("it holds text, not an image".into()), None),
                    };
                    out.copy_from_slice(&pixels.map_err(|r| format!("row {at}: {r}"))?);
                    Ok(link)
                })
                .collect();
            for one in decoded {
                linked.extend(one?);
            }
            Ok(())
        },
    )
    .map_err(read_error)?;
    if let (Some(file), true) = (&cached, linked.is_empty()) {
        super::images::write_cached(file, &values);
    }
    for (row, hash) in linked {
        digest.update(format!("row {row} {hash}\n").as_bytes());
    }
    Ok(Part {
        samples: Samples::U8(values),
        labels,
        sample_len,
    })
}

fn text_part(
    spec: &DataSpec,
    base_dir: &Path,
    source: &Source,
    labels: Vec<u32>,
    files: &mut Vec<(PathBuf, String)>,
) -> Result<Part> {
    let text = spec
        .text
        .as_ref()
        .ok_or_else(|| RuntimeError::Plan(format!("text data `{}` has no tokenizer", spec.name)))?;
    let mut texts: Vec<String> = Vec::with_capacity(labels.len());
    table::cells(
        source.tables,
        source.per_file,
        source.format,
        source.column,
        Kind::Text,
        |_, _, _, cells| {
            texts.extend(cells.iter().map(|c| match c {
                Cell::Text(t) => t.to_string(),
                _ => String::new(),
            }));
            Ok(())
        },
    )
    .map_err(read_error)?;
    super::text::tokenized_part(
        text,
        base_dir,
        texts.iter().map(String::as_str),
        labels,
        files,
    )
}
