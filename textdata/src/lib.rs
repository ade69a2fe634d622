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
        if !label_dir.is(|kind| kind.is_dir(), Path::is_dir) {
            continue;
        }
        let label_dir = label_dir.path;
        let label = label_dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| fail(&label_dir, "its name is not UTF-8"))?
            .to_string();
        for file in sorted_entries(&label_dir)? {
            let name = file
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let wanted = !name.starts_with('.')
                && layout
                    .extension
                    .as_deref()
                    .is_none_or(|ext| name.ends_with(ext))
                && file.is(|kind| kind.is_file(), Path::is_file);
            if wanted {
                files.push((label.clone(), file.path));
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

/// A folder entry and its type as the listing gave it (no `stat` per file: listing the
/// spam corpus's 6,046 files that way was most of `kdc check`'s time).
struct Entry {
    name: std::ffi::OsString,
    path: PathBuf,
    kind: Option<std::fs::FileType>,
}

impl Entry {
    /// Whether the entry is of a kind, following a symbolic link (or an unknown type) to
    /// what it points at.
    fn is(
        &self,
        kind: impl Fn(&std::fs::FileType) -> bool,
        follow: impl Fn(&Path) -> bool,
    ) -> bool {
        match &self.kind {
            Some(k) if !k.is_symlink() => kind(k),
            _ => follow(&self.path),
        }
    }
}

/// A folder's entries sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<Entry>, ReadError> {
    let listing = std::fs::read_dir(dir).map_err(|e| fail(dir, format!("cannot list it ({e})")))?;
    let mut entries = listing
        .map(|e| {
            e.map(|e| Entry {
                name: e.file_name(),
                kind: e.file_type().ok(),
                path: e.path(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(dir, format!("cannot list it ({e})")))?;
    // One folder: the names decide the order (comparing them as bytes is faster than
    // comparing whole paths component by component).
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
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
    let file: TokenizerFile =
        serde_json::from_str(text).map_err(|e| format!("it is not JSON ({e})"))?;
    let model = file
        .model
        .ok_or("it has no `model`: not a Hugging Face tokenizer.json")?;
    let mut max_id: Option<u64> = None;
    let mut bump = |id: u64| max_id = Some(max_id.map_or(id, |m| m.max(id)));
    match model.vocab {
        Some(Vocab::Ids(largest)) => largest.into_iter().for_each(&mut bump),
        // Unigram: a list of [piece, score] whose ids are positions.
        Some(Vocab::Pieces(count)) if count > 0 => bump(count as u64 - 1),
        _ => return Err("its `model` has no vocabulary".into()),
    }
    let json = serde_json::Value::Object(file.rest);
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

/// The parts of a tokenizer.json that kdc reads. The vocabulary (30,522 entries for
/// MiniLM) is streamed for its largest id instead of being built as a JSON map: that map
/// was most of `kdc check`'s time on a text pipeline. Everything else at the top level is
/// kept as JSON (small: added tokens, padding). A value of an unexpected type reads as
/// absent, so the caller says what is missing.
struct TokenizerFile {
    model: Option<ModelPart>,
    rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Default)]
struct ModelPart {
    vocab: Option<Vocab>,
}

enum Vocab {
    /// `{piece: id}`: the largest id (values that are not ids are skipped).
    Ids(Option<u64>),
    /// `[[piece, score], ...]` (Unigram): how many pieces.
    Pieces(usize),
    /// Anything else.
    Other,
}

/// Visitor methods for the JSON values a visitor does not expect: each gives `$value`.
macro_rules! otherwise {
    ($value:expr) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// Skips the rest of a JSON array.
fn skip_seq<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<usize, A::Error> {
    let mut count = 0;
    while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
        count += 1;
    }
    Ok(count)
}

impl<'de> serde::Deserialize<'de> for TokenizerFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> serde::de::Visitor<'de> for Top {
            type Value = TokenizerFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TokenizerFile, A::Error> {
                let mut file = TokenizerFile {
                    model: None,
                    rest: serde_json::Map::new(),
                };
                while let Some(key) = map.next_key::<String>()? {
                    if key == "model" {
                        file.model = Some(map.next_value::<ModelPart>()?);
                    } else {
                        file.rest.insert(key, map.next_value()?);
                    }
                }
                Ok(file)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<TokenizerFile, A::Error> {
                skip_seq(seq)?;
                Ok(TokenizerFile {
                    model: None,
                    rest: serde_json::Map::new(),
                })
            }
            otherwise!(TokenizerFile {
                model: None,
                rest: serde_json::Map::new(),
            });
        }
        d.deserialize_any(Top)
    }
}

impl<'de> serde::Deserialize<'de> for ModelPart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Model;
        impl<'de> serde::de::Visitor<'de> for Model {
            type Value = ModelPart;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ModelPart, A::Error> {
                let mut model = ModelPart::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "vocab" {
                        model.vocab = Some(map.next_value::<Vocab>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(model)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<ModelPart, A::Error> {
                skip_seq(seq)?;
                Ok(ModelPart::default())
            }
            otherwise!(ModelPart::default());
        }
        d.deserialize_any(Model)
    }
}

/// A JSON value that is an id (a non-negative integer), or anything else (skipped).
struct MaybeId(Option<u64>);

impl<'de> serde::Deserialize<'de> for MaybeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Id;
        impl<'de> serde::de::Visitor<'de> for Id {
            type Value = MaybeId;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MaybeId, E> {
                Ok(MaybeId(Some(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MaybeId, E> {
                Ok(MaybeId(u64::try_from(v).ok()))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<MaybeId, E> {
                Ok(MaybeId(None))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<MaybeId, E> {
                Ok(MaybeId(None))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<MaybeId, E> {
                Ok(MaybeId(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<MaybeId, E> {
                Ok(MaybeId(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<MaybeId, A::Error> {
                skip_seq(seq)?;
                Ok(MaybeId(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<MaybeId, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MaybeId(None))
            }
        }
        d.deserialize_any(Id)
    }
}

impl<'de> serde::Deserialize<'de> for Vocab {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vocab;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Vocab, A::Error> {
                let mut max: Option<u64> = None;
                while let Some((_, MaybeId(id))) =
                    map.next_entry::<serde::de::IgnoredAny, MaybeId>()?
                {
                    if let Some(id) = id {
                        max = Some(max.map_or(id, |m| m.max(id)));
                    }
                }
                Ok(Vocab::Ids(max))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Vocab, A::Error> {
                Ok(Vocab::Pieces(skip_seq(seq)?))
            }
            otherwise!(Vocab::Other);
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vocabulary is streamed, not built: the facts must be the same as reading the
    /// whole file would give, for each shape of file the readers meet.
    #[test]
    fn tokenizer_facts_from_each_shape_of_file() {
        let facts = |json: &str| tokenizer_facts_of(json).map(|f| (f.vocab, f.pad_id, f.mask_id));
        let word_piece = r#"{"added_tokens": [{"id": 0, "content": "[PAD]", "special": true},
            {"id": 4, "content": "[MASK]", "special": true}],
            "model": {"type": "WordPiece", "vocab": {"[PAD]": 0, "a": 1, "b": 7, "odd": "x"}}}"#;
        assert_eq!(facts(word_piece), Ok((8, 0, Some(4))));
        // Unigram: ids are positions; padding named in `padding`.
        let unigram = r#"{"padding": {"pad_id": 1}, "model": {"vocab": [["<s>", 0.0],
            ["<pad>", 0.0], ["a", -1.5]], "unk_id": 0}, "added_tokens": []}"#;
        assert_eq!(facts(unigram), Ok((3, 1, None)));
        // Added tokens past the vocabulary count.
        let added = r#"{"padding": {"pad_id": 0}, "model": {"vocab": {"[PAD]": 0}}, "added_tokens": [
            {"id": 9, "content": "<new>", "special": false}]}"#;
        assert_eq!(facts(added), Ok((10, 0, None)));
        for (json, message) in [
            ("[1, 2]", "it has no `model`"),
            (r#"{"model": "bpe"}"#, "its `model` has no vocabulary"),
            (
                r#"{"model": {"vocab": []}}"#,
                "its `model` has no vocabulary",
            ),
            (r#"{"model": {"vocab": {"a": 0}}"#, "it is not JSON"),
        ] {
            let error = tokenizer_facts_of(json).err().unwrap_or_default();
            assert!(error.starts_with(message), "{json}: {error}");
        }
    }

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
