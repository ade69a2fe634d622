//! Labelled text on disk, read the same way by the checker (which counts samples and
//! learns the labels) and the runtime (which also keeps the text): JSON Lines, a JSON
//! array, CSV or TSV with a header row, or one file per sample in one folder per label.
//! Also what the checker needs to know of a Hugging Face `tokenizer.json`.

use std::path::{Path, PathBuf};

/// Files larger than this are refused before reading: text data sets are far smaller.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// How the samples are laid out (mirrors the Plan's `TextFormat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Json,
    Csv,
    Tsv,
    Folders,
}

impl Format {
    /// The format a path's extension (or being a folder) implies.
    pub fn infer(path: &Path) -> Option<Format> {
        if path.is_dir() {
            return Some(Format::Folders);
        }
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name).to_string();
        match name.rsplit('.').next()? {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "tsv" => Some(Format::Tsv),
            _ => None,
        }
    }
}

/// Where the text and the label are.
#[derive(Clone, Debug)]
pub struct Layout {
    pub format: Format,
    pub text_field: String,
    pub label_field: String,
    /// `Folders`: only files whose name ends with this.
    pub extension: Option<String>,
    /// Keep only what follows the first blank line (e-mail and HTTP style headers).
    pub skip_headers: bool,
}

/// One sample: its text (empty when only labels were asked for) and its raw label.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub text: String,
    pub label: String,
}

/// A reason a data set cannot be read, naming the file (and line or record) at fault.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadError {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

fn fail(path: &Path, reason: impl Into<String>) -> ReadError {
    ReadError {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads every record in a deterministic order (folders and files sorted by name).
/// With `with_text` false the texts are left empty: the checker needs only the labels.
pub fn read(path: &Path, layout: &Layout, with_text: bool) -> Result<Vec<Record>, ReadError> {
    match layout.format {
        Format::Folders => read_folders(path, layout, with_text),
        _ => parse(&read_text(path)?, layout, with_text).map_err(|reason| fail(path, reason)),
    }
}

/// The records of a file's text in one of the file formats (not `Folders`).
pub fn parse(text: &str, layout: &Layout, with_text: bool) -> Result<Vec<Record>, String> {
    match layout.format {
        Format::Folders => Err("a folder is read with `read`".into()),
        Format::Jsonl => {
            let mut records = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| format!("line {} is not JSON ({e})", n + 1))?;
                records.push(
                    json_record(&value, layout, with_text)
                        .map_err(|reason| format!("line {}: {reason}", n + 1))?,
                );
            }
            Ok(records)
        }
        Format::Json => {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
            let serde_json::Value::Array(items) = value else {
                return Err("a JSON data file is an array of objects".into());
            };
            items
                .iter()
                .enumerate()
                .map(|(n, item)| {
                    json_record(item, layout, with_text)
                        .map_err(|reason| format!("record {}: {reason}", n + 1))
                })
                .collect()
        }
        Format::Csv | Format::Tsv => {
            let delimiter = if layout.format == Format::Csv {
                ','
            } else {
                '\t'
            };
            let rows = parse_delimited(text, delimiter)?;
            let mut rows = rows.into_iter();
            let header = rows.next().ok_or("it is empty")?;
            let column = |field: &str| {
                header.1.iter().position(|h| h == field).ok_or_else(|| {
                    format!(
                        "its header has no field `{field}` (it has {})",
                        header.1.join(", ")
                    )
                })
            };
            let text_col = column(&layout.text_field)?;
            let label_col = column(&layout.label_field)?;
            rows.map(|(line, row)| {
                if row.len() != header.1.len() {
                    return Err(format!(
                        "line {line} has {} field{}, the header {}",
                        row.len(),
                        if row.len() == 1 { "" } else { "s" },
                        header.1.len()
                    ));
                }
                Ok(Record {
                    text: if with_text {
                        body(&row[text_col], layout.skip_headers)
                    } else {
                        String::new()
                    },
                    label: row[label_col].clone(),
                })
            })
            .collect()
        }
    }
}

fn read_folders(path: &Path, layout: &Layout, with_text: bool) -> Result<Vec<Record>, ReadError> {
    folder_files(path, layout)?
        .into_iter()
        .map(|(label, file)| {
            let text = if with_text {
                body(&read_text(&file)?, layout.skip_headers)
            } else {
                String::new()
            };
            Ok(Record { text, label })
        })
        .collect()
}

/// The sample files of a `folders` layout with their labels, in reading order: each
/// sub-folder of `path` (sorted) is a label, each visible file in it (sorted, ending with
/// `layout.extension` when set) a sample. Two levels only: nothing deeper is read.
pub fn folder_files(path: &Path, layout: &Layout) -> Result<Vec<(String, PathBuf)>, ReadError> {
    let mut files = Vec::new();
    for label_dir in sorted_entries(path)? {
        if !label_dir.is_dir() {
            continue;
        }
        let label = label_dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| fail(&label_dir, "its name is not UTF-8"))?
            .to_string();
        for file in sorted_entries(&label_dir)? {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let wanted = file.is_file()
                && !name.starts_with('.')
                && layout
                    .extension
                    .as_deref()
                    .is_none_or(|ext| name.ends_with(ext));
            if wanted {
                files.push((label.clone(), file));
            }
        }
    }
    if files.is_empty() {
        return Err(fail(
            path,
            "it holds no sub-folder with files (one sub-folder per label, one file per sample)",
        ));
    }
    Ok(files)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| fail(dir, format!("cannot list it ({e})")))?;
    let mut paths = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(dir, format!("cannot list it ({e})")))?;
    paths.sort();
    Ok(paths)
}

/// Text as kdc reads it: UTF-8 where it is, Latin-1 otherwise (old e-mail is both). Files
/// may be gzip-compressed (recognised by their first bytes, whatever their name).
pub fn decode(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
    }
}

/// A file's text (see [`decode`]), refusing files over [`MAX_FILE_BYTES`].
fn read_text(path: &Path) -> Result<String, ReadError> {
    let len = std::fs::metadata(path)
        .map_err(|e| fail(path, format!("cannot read it ({e})")))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(fail(
            path,
            format!("it is {len} bytes, over the 1 GiB limit"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(path, format!("cannot read it ({e})")))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(decode(gunzip(&bytes).map_err(|reason| fail(path, reason))?));
    }
    Ok(decode(bytes))
}

/// Decompresses gzip, refusing more than [`MAX_FILE_BYTES`] of output (reading one byte
/// past the limit, never the whole bomb).
fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("it is not readable gzip ({e})"))?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err("it decompresses to more than 1 GiB".into());
    }
    Ok(out)
}

fn body(text: &str, skip_headers: bool) -> String {
    if !skip_headers {
        return text.to_string();
    }
    let text = text.replace("\r\n", "\n");
    match text.find("\n\n") {
        Some(at) => text[at + 2..].to_string(),
        None => String::new(),
    }
}

fn json_record(
    value: &serde_json::Value,
    layout: &Layout,
    with_text: bool,
) -> Result<Record, String> {
    let field = |name: &str| -> Result<String, String> {
        match value.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
            Some(_) => Err(format!("field `{name}` is not a string, number or boolean")),
            None => Err(format!("no field `{name}`")),
        }
    };
    Ok(Record {
        text: if with_text {
            body(&field(&layout.text_field)?, layout.skip_headers)
        } else {
            field(&layout.text_field)?;
            String::new()
        },
        label: field(&layout.label_field)?,
    })
}

/// RFC 4180 rows: quoted fields may hold delimiters, newlines and doubled quotes. Each row
/// comes with the line it starts on.
fn parse_delimited(text: &str, delimiter: char) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1;
    let mut row_line = 1;
    let mut chars = text.chars().peekable();
    let mut field_started = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if !field_started => {
                quoted = true;
                field_started = true;
            }
            c if c == delimiter => {
                row.push(std::mem::take(&mut field));
                field_started = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                field_started = false;
                if !(row.len() == 1 && row[0].is_empty()) {
                    rows.push((row_line, std::mem::take(&mut row)));
                } else {
                    row.clear();
                }
                line += 1;
                row_line = line;
            }
            _ => {
                field.push(c);
                field_started = true;
            }
        }
    }
    if quoted {
        return Err(format!(
            "a quoted field opened on line {row_line} never closes"
        ));
    }
    if field_started || !row.is_empty() {
        row.push(field);
        rows.push((row_line, row));
    }
    Ok(rows)
}

/// What the checker needs of a `tokenizer.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerFacts {
    /// One more than the largest id.
    pub vocab: usize,
    pub pad_id: u32,
    pub mask_id: Option<u32>,
    /// Added tokens marked special (`[CLS]`, `[SEP]`, `[PAD]`, ...).
    pub special_ids: Vec<u32>,
}

/// Reads a Hugging Face `tokenizer.json`'s vocabulary size and special tokens.
pub fn tokenizer_facts(path: &Path) -> Result<TokenizerFacts, String> {
    tokenizer_facts_of(&read_text(path).map_err(|e| e.reason)?)
}

/// [`tokenizer_facts`] of a tokenizer.json's text.
pub fn tokenizer_facts_of(text: &str) -> Result<TokenizerFacts, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("it is not JSON ({e})"))?;
    let model = json
        .get("model")
        .ok_or("it has no `model`: not a Hugging Face tokenizer.json")?;
    let mut max_id: Option<u64> = None;
    let mut bump = |id: u64| max_id = Some(max_id.map_or(id, |m| m.max(id)));
    match model.get("vocab") {
        Some(serde_json::Value::Object(map)) => {
            map.values().filter_map(|v| v.as_u64()).for_each(&mut bump)
        }
        // Unigram: a list of [piece, score] whose ids are positions.
        Some(serde_json::Value::Array(list)) if !list.is_empty() => bump(list.len() as u64 - 1),
        _ => return Err("its `model` has no vocabulary".into()),
    }
    let mut special_ids = Vec::new();
    let mut by_content = Vec::new();
    for token in json
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(content)) = (
            token.get("id").and_then(|i| i.as_u64()),
            token.get("content").and_then(|c| c.as_str()),
        ) else {
            continue;
        };
        bump(id);
        if token
            .get("special")
            .and_then(|s| s.as_bool())
            .unwrap_or(false)
        {
            special_ids.push(id as u32);
        }
        by_content.push((content.to_string(), id as u32));
    }
    let find = |names: &[&str]| {
        by_content
            .iter()
            .find(|(c, _)| names.contains(&c.as_str()))
            .map(|(_, id)| *id)
    };
    let pad_id = json
        .get("padding")
        .and_then(|p| p.get("pad_id"))
        .and_then(|i| i.as_u64())
        .map(|i| i as u32)
        .or_else(|| find(&["[PAD]", "<pad>", "<|padding|>"]))
        .ok_or("it names no padding token ([PAD] or <pad>)")?;
    special_ids.sort_unstable();
    special_ids.dedup();
    let vocab = max_id.map_or(0, |m| m as usize + 1);
    if vocab > 1 << 22 {
        return Err(format!("it claims {vocab} tokens"));
    }
    Ok(TokenizerFacts {
        vocab,
        pad_id,
        mask_id: find(&["[MASK]", "<mask>"]),
        special_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_keep_delimiters_newlines_and_quotes() {
        let rows = parse_delimited("text,label\n\"a, \"\"b\"\"\nc\",spam\nplain,ham\n", ',')
            .unwrap_or_default();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[1],
            (2, vec!["a, \"b\"\nc".to_string(), "spam".to_string()])
        );
        assert_eq!(rows[2], (4, vec!["plain".to_string(), "ham".to_string()]));
        assert!(parse_delimited("a,\"b\n", ',').is_err());
    }

    #[test]
    fn headers_end_at_the_first_blank_line() {
        assert_eq!(
            body("From: x\r\nTo: y\r\n\r\nHello\n\nthere", true),
            "Hello\n\nthere"
        );
        assert_eq!(body("no body", true), "");
        assert_eq!(body("kept", false), "kept");
    }
}
