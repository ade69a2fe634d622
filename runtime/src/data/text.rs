//! Text sources: records read by `kd-textdata` (the same reader the checker counts with),
//! labels mapped to classes, texts tokenised with the Hugging Face `tokenizers` crate from
//! a local tokenizer.json, truncated and padded to `max_len`.

use std::path::{Path, PathBuf};

use kd_plan::{DataSource, DataSpec, TextFormat, TextSpec};
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::{resolve, Part, Samples};
use crate::error::{Result, RuntimeError};

/// Reads, labels and tokenises a text source. Each file's sha256 goes into `files` (a
/// folder counts as one entry: the hash of its files' names and hashes, in order).
pub fn load(spec: &DataSpec, base_dir: &Path, files: &mut Vec<(PathBuf, String)>) -> Result<Part> {
    let DataSource::Text {
        path,
        format,
        text_field,
        label_field,
        extension,
        classes,
        skip_headers,
    } = &spec.source
    else {
        return Err(RuntimeError::Plan(format!(
            "`{}` is not a text source",
            spec.name
        )));
    };
    let text = spec
        .text
        .as_ref()
        .ok_or_else(|| RuntimeError::Plan(format!("text data `{}` has no tokenizer", spec.name)))?;
    let full = resolve(base_dir, path);
    let layout = kd_textdata::Layout {
        format: match format {
            TextFormat::Jsonl => kd_textdata::Format::Jsonl,
            TextFormat::Json => kd_textdata::Format::Json,
            TextFormat::Csv => kd_textdata::Format::Csv,
            TextFormat::Tsv => kd_textdata::Format::Tsv,
            TextFormat::Folders => kd_textdata::Format::Folders,
        },
        text_field: text_field.clone(),
        label_field: label_field.clone(),
        extension: extension.clone(),
        skip_headers: *skip_headers,
    };
    let records = kd_textdata::read(&full, &layout, true).map_err(|e| RuntimeError::DataFile {
        path: e.path,
        reason: e.reason,
    })?;
    files.push((path.clone(), source_hash(&full, &layout)?));

    let mut labels = Vec::with_capacity(records.len());
    for (n, record) in records.iter().enumerate() {
        let class = classes
            .iter()
            .find(|(raw, _)| *raw == record.label)
            .map(|(_, class)| *class as u32)
            .ok_or_else(|| RuntimeError::DataFile {
                path: full.clone(),
                reason: format!(
                    "sample {} has label `{}`, which no class lists (the data changed since it was checked?)",
                    n + 1,
                    record.label
                ),
            })?;
        labels.push(class);
    }

    tokenized_part(
        text,
        base_dir,
        records.iter().map(|r| r.text.as_str()),
        labels,
        files,
    )
}

/// A part of `texts` tokenised as `text` says, with their classes; the tokenizer's hash
/// joins `files` (once, whatever the number of parts).
pub(super) fn tokenized_part<'a>(
    text: &TextSpec,
    base_dir: &Path,
    texts: impl Iterator<Item = &'a str>,
    labels: Vec<u32>,
    files: &mut Vec<(PathBuf, String)>,
) -> Result<Part> {
    let tokenizer_path = resolve(base_dir, &text.tokenizer);
    let (_, tokenizer_hash) = super::read_file(&tokenizer_path, super::MAX_TEXT_BYTES)?;
    if !files.iter().any(|(p, _)| *p == text.tokenizer) {
        files.push((text.tokenizer.clone(), tokenizer_hash));
    }
    let ids = tokenize(&tokenizer_path, texts, text.max_len, text.pad_id)?;
    Ok(Part {
        samples: Samples::F32(ids.into_iter().map(|id| id as f32).collect()),
        labels,
        sample_len: text.max_len,
    })
}

/// Token ids of `texts`, each truncated or padded (at the end, with `pad_id`) to `max_len`,
/// concatenated.
pub fn tokenize<'a>(
    tokenizer_path: &Path,
    texts: impl Iterator<Item = &'a str>,
    max_len: usize,
    pad_id: u32,
) -> Result<Vec<u32>> {
    let tokenizer_error = |reason: String| RuntimeError::DataFile {
        path: tokenizer_path.to_path_buf(),
        reason,
    };
    let mut tokenizer = Tokenizer::from_file(tokenizer_path)
        .map_err(|e| tokenizer_error(format!("not a usable tokenizer.json ({e})")))?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| tokenizer_error(format!("cannot truncate to {max_len} ({e})")))?;
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(max_len),
        pad_id,
        ..Default::default()
    }));
    let texts: Vec<&str> = texts.collect();
    let mut ids = Vec::with_capacity(texts.len() * max_len);
    // Batches of a few hundred keep memory flat; the order of the output is the input's.
    for chunk in texts.chunks(512) {
        let encodings = tokenizer
            .encode_batch(chunk.to_vec(), true)
            .map_err(|e| tokenizer_error(format!("cannot tokenise the data ({e})")))?;
        for encoding in encodings {
            let row = encoding.get_ids();
            if row.len() != max_len {
                return Err(tokenizer_error(format!(
                    "gave {} ids for a sample, not {max_len}",
                    row.len()
                )));
            }
            ids.extend_from_slice(row);
        }
    }
    Ok(ids)
}

/// sha256 of a file, or for a folder of the list (in reading order) of the sample files'
/// hashes and paths relative to it, one `sha256  path` line each (`sha256sum`'s format).
fn source_hash(path: &Path, layout: &kd_textdata::Layout) -> Result<String> {
    if path.is_file() {
        return Ok(super::read_file(path, kd_textdata::MAX_FILE_BYTES)?.1);
    }
    let files = kd_textdata::folder_files(path, layout).map_err(|e| RuntimeError::DataFile {
        path: e.path,
        reason: e.reason,
    })?;
    let mut hasher = Sha256::new();
    for (_, file) in files {
        let mut one = Sha256::new();
        crate::output::files::hash_file(&mut one, &file)?;
        let relative = file
            .strip_prefix(path)
            .unwrap_or(&file)
            .to_string_lossy()
            .to_string();
        hasher.update(
            format!(
                "{}  {relative}\n",
                crate::output::files::hex(&one.finalize())
            )
            .as_bytes(),
        );
    }
    Ok(crate::output::files::hex(&hasher.finalize()))
}
