//! Tables: Parquet files and Arrow IPC files (the file format, and the stream format that
//! Hugging Face `datasets`' `save_to_disk` writes), one file or a folder of them read in
//! name order as one data set. One column holds the samples (encoded images: binary, or
//! the `{bytes, path}` struct `datasets` stores; or texts), one the labels (integers of any
//! width, strings, dictionary-encoded strings, or a `datasets` ClassLabel, whose names come
//! from the schema's `huggingface` metadata).
//!
//! Read through arrow-rs with a projection, so the checker reads the label column alone and
//! the runtime streams the sample column a record batch at a time. Lengths a file claims
//! are checked against its size before arrow-rs reserves anything for them.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch, RecordBatchReader};
use arrow_schema::{DataType, Fields, SchemaRef};
use bytes::Bytes;
use kd_textdata::ReadError;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::file::reader::ChunkReader;

use crate::Reason;

/// Rows per record batch read from a Parquet file.
const BATCH_ROWS: usize = 1024;

/// A table file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Parquet,
    /// Arrow IPC, as a file (`ARROW1` magic, Feather v2) or a stream; told apart by the
    /// first bytes.
    Arrow,
}

impl Format {
    /// The file name endings a folder's tables have.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Format::Parquet => &["parquet"],
            Format::Arrow => &["arrow", "arrows", "feather", "ipc"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Parquet => "Parquet",
            Format::Arrow => "Arrow",
        }
    }
}

/// What the sample column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Image,
    Text,
}

/// One sample column cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell<'a> {
    /// An encoded image.
    Bytes(&'a [u8]),
    /// An image stored by path only (`{bytes: null, path}`): relative paths are relative to
    /// the table file's folder.
    Path(&'a str),
    Text(&'a str),
}

/// The label column of a whole table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    /// Each row's raw label: a string as stored, an integer in decimal, or for a ClassLabel
    /// its class name.
    pub labels: Vec<String>,
    /// Class names in their order, where the table has them: a ClassLabel's names, or the
    /// integers met in numeric order.
    pub order: Option<Vec<String>>,
    /// Rows read from each file, in order, and whether that was the whole file (`limit`
    /// may stop inside one): the sample column must hold as many.
    pub per_file: Vec<(usize, bool)>,
}

fn fail(path: &Path, reason: impl Into<String>) -> ReadError {
    ReadError {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Where a table's bytes come from: a file, or memory (the fuzz target).
pub enum Input {
    File(File),
    Bytes(Bytes),
}

impl Input {
    /// A table held in memory (a copy of `data`).
    pub fn from_slice(data: &[u8]) -> Input {
        Input::Bytes(Bytes::copy_from_slice(data))
    }

    fn len(&self) -> Result<u64, Reason> {
        match self {
            Input::File(f) => Ok(f.metadata().map_err(|e| e.to_string())?.len()),
            Input::Bytes(b) => Ok(b.len() as u64),
        }
    }
}

/// The tables of `path`: the file itself, or a folder's files ending in one of the
/// format's extensions, in name order (`train-00000-of-00002.parquet`, ...).
pub fn files(path: &Path, format: Format) -> Result<Vec<PathBuf>, ReadError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    if let Some(pattern) = name.filter(|n| n.contains('*')) {
        return matching(path.parent().unwrap_or(Path::new("")), &pattern);
    }
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| fail(path, e.to_string()))? {
        let entry = entry.map_err(|e| fail(path, e.to_string()))?;
        let file = entry.path();
        let ours = file.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            format
                .extensions()
                .contains(&e.to_ascii_lowercase().as_str())
        });
        if ours && !entry.file_name().to_string_lossy().starts_with('.') && file.is_file() {
            found.push(file);
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(fail(
            path,
            format!(
                "the folder holds no {} files (.{})",
                format.name(),
                format.extensions().join(", .")
            ),
        ));
    }
    Ok(found)
}

/// The files of `dir` whose names match `pattern` (`*` stands for any characters), in name
/// order: `train-*.parquet` picks one split's shards from a folder holding several.
fn matching(dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, ReadError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| fail(dir, e.to_string()))? {
        let entry = entry.map_err(|e| fail(dir, e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if wildcard(pattern, &name) && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(fail(
            dir,
            format!("no file of its folder matches `{pattern}`"),
        ));
    }
    Ok(found)
}

/// Whether `name` matches `pattern`, whose `*`s stand for any characters.
fn wildcard(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

type Batches = Box<dyn RecordBatchReader + Send>;

impl Input {
    /// The same bytes from their start, for a second reader.
    fn reopen(&self) -> Result<Input, Reason> {
        match self {
            Input::File(f) => {
                let mut f = f.try_clone().map_err(|e| e.to_string())?;
                f.rewind().map_err(|e| e.to_string())?;
                Ok(Input::File(f))
            }
            Input::Bytes(b) => Ok(Input::Bytes(b.clone())),
        }
    }
}

/// arrow-rs panics on some malformed files (a dictionary-encoded page without its
/// dictionary, ...): the file's fault, reported as such (as candle-onnx's are).
fn guarded<T>(read: impl FnOnce() -> Result<T, Reason>) -> Result<T, Reason> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("it is malformed: the reader gave up ({message})"))
    })
}

fn batches(input: Input, format: Format, columns: &[&str]) -> Result<(SchemaRef, Batches), Reason> {
    guarded(|| open_batches(input, format, columns))
}

/// The whole schema of one table (with its metadata), and its record batches holding only
/// the named columns (in the table's order), after the file's claims are checked against
/// its size.
fn open_batches(
    input: Input,
    format: Format,
    columns: &[&str],
) -> Result<(SchemaRef, Batches), Reason> {
    let len = input.len()?;
    let mut head = [0u8; 6];
    let read = match input.reopen()? {
        Input::File(mut f) => f.read(&mut head).map_err(|e| e.to_string())?,
        Input::Bytes(b) => (&b[..]).read(&mut head).map_err(|e| e.to_string())?,
    };
    let head = &head[..read];
    match format {
        Format::Arrow if head.starts_with(b"PAR1") => {
            return Err("it is a Parquet file: read it with `parquet(...)`".into())
        }
        Format::Parquet if head.starts_with(b"ARROW1") || head.starts_with(&[0xFF; 4]) => {
            return Err("it is an Arrow IPC file: read it with `arrow(...)`".into())
        }
        _ => {}
    }
    match format {
        Format::Parquet => match input {
            Input::File(f) => parquet_batches(f, len, columns),
            Input::Bytes(b) => parquet_batches(b, len, columns),
        },
        Format::Arrow => {
            let file_format = head == b"ARROW1";
            if file_format {
                match input.reopen()? {
                    Input::File(f) => check_ipc_footer(&mut BufReader::new(f), len)?,
                    Input::Bytes(b) => check_ipc_footer(&mut Cursor::new(b), len)?,
                }
            }
            // IPC readers take their projection with the file: the schema comes first.
            let schema = ipc_batches(input.reopen()?, file_format, None)?.schema();
            let wanted = indices(&schema, columns)?;
            // A cloned file shares its position: every reader starts from a rewound one.
            Ok((
                schema,
                ipc_batches(input.reopen()?, file_format, Some(wanted))?,
            ))
        }
    }
}

fn parquet_batches<R: ChunkReader + 'static>(
    input: R,
    len: u64,
    columns: &[&str],
) -> Result<(SchemaRef, Batches), Reason> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(input)
        .map_err(|e| format!("it is not a readable Parquet file: {e}"))?;
    // A column chunk is read in one piece: one that claims bytes past the file's end is
    // refused before anything is reserved for it.
    for group in builder.metadata().row_groups() {
        for column in group.columns() {
            // Read from the footer's fields: arrow-rs' `byte_range` panics on negative ones.
            let start = column
                .dictionary_page_offset()
                .unwrap_or(column.data_page_offset());
            let size = column.compressed_size();
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(size).ok())
                .and_then(|(start, size)| start.checked_add(size));
            if inside.is_none_or(|end| end > len) {
                return Err(format!(
                    "its footer places column `{}` at bytes {start}..{} of a {len}-byte file",
                    column.column_path().string(),
                    start.saturating_add(size)
                ));
            }
        }
    }
    let schema = builder.schema().clone();
    let indices = indices(&schema, columns)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| format!("it cannot be read: {e}"))?;
    Ok((schema, Box::new(reader)))
}

fn ipc_batches(
    input: Input,
    file_format: bool,
    projection: Option<Vec<usize>>,
) -> Result<Batches, Reason> {
    let unreadable = |e: arrow_schema::ArrowError| format!("it is not a readable Arrow file: {e}");
    use arrow_ipc::reader::{FileReader, StreamReader};
    Ok(match (input, file_format) {
        (Input::File(f), true) => {
            Box::new(FileReader::try_new(BufReader::new(f), projection).map_err(unreadable)?)
        }
        (Input::Bytes(b), true) => {
            Box::new(FileReader::try_new(Cursor::new(b), projection).map_err(unreadable)?)
        }
        (Input::File(f), false) => {
            Box::new(StreamReader::try_new(BufReader::new(f), projection).map_err(unreadable)?)
        }
        (Input::Bytes(b), false) => {
            Box::new(StreamReader::try_new(Cursor::new(b), projection).map_err(unreadable)?)
        }
    })
}

/// The IPC file footer's blocks lie inside the file, so that no block read reserves more
/// than the file holds.
fn check_ipc_footer<R: Read + Seek>(input: &mut R, len: u64) -> Result<(), Reason> {
    use std::io::SeekFrom;
    let bad = |why: &str| format!("its Arrow footer is corrupt: {why}");
    if len < 18 {
        return Err(bad("the file is too short"));
    }
    let mut tail = [0u8; 10];
    input
        .seek(SeekFrom::End(-10))
        .and_then(|_| input.read_exact(&mut tail))
        .map_err(|e| e.to_string())?;
    if &tail[4..] != b"ARROW1" {
        return Err(bad("it does not end in ARROW1"));
    }
    let footer_len = i32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let footer_len = u64::try_from(footer_len).map_err(|_| bad("a negative footer length"))?;
    if footer_len + 18 > len {
        return Err(bad("its length runs past the file's start"));
    }
    let mut footer = vec![0u8; footer_len as usize];
    input
        .seek(SeekFrom::End(-10 - footer_len as i64))
        .and_then(|_| input.read_exact(&mut footer))
        .map_err(|e| e.to_string())?;
    input.rewind().map_err(|e| e.to_string())?;
    let footer = arrow_ipc::root_as_footer(&footer).map_err(|e| bad(&e.to_string()))?;
    let end = len - 10 - footer_len;
    let blocks = footer
        .recordBatches()
        .into_iter()
        .flatten()
        .chain(footer.dictionaries().into_iter().flatten());
    for block in blocks {
        let (offset, meta, body) = (block.offset(), block.metaDataLength(), block.bodyLength());
        let inside = u64::try_from(offset).ok().and_then(|o| {
            let meta = u64::try_from(meta).ok()?;
            let body = u64::try_from(body).ok()?;
            o.checked_add(meta)?.checked_add(body)
        });
        if inside.is_none_or(|e| e > end) {
            return Err(bad(&format!(
                "a block at byte {offset} of {meta} + {body} bytes lies outside the file"
            )));
        }
    }
    Ok(())
}

/// The positions of `columns` among the schema's fields, in the schema's order (as
/// projected batches hold them).
fn indices(schema: &SchemaRef, columns: &[&str]) -> Result<Vec<usize>, Reason> {
    let mut found = Vec::new();
    for name in columns {
        match schema.index_of(name) {
            Ok(i) => found.push(i),
            Err(_) => {
                let have: Vec<String> = schema
                    .fields()
                    .iter()
                    .map(|f| format!("`{}`", f.name()))
                    .collect();
                return Err(format!(
                    "it has no column `{name}` (its columns: {})",
                    have.join(", ")
                ));
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

/// Class names a `datasets` ClassLabel stores for `column` in the schema's metadata.
fn class_label(schema: &SchemaRef, column: &str) -> Option<Vec<String>> {
    let meta = schema.metadata().get("huggingface")?;
    let json: serde_json::Value = serde_json::from_str(meta).ok()?;
    let feature = json.get("info")?.get("features")?.get(column)?;
    if feature.get("_type")?.as_str()? != "ClassLabel" {
        return None;
    }
    feature
        .get("names")?
        .as_array()?
        .iter()
        .map(|n| n.as_str().map(str::to_string))
        .collect()
}

fn type_refused(column: &str, kind: &str, found: &DataType, want: &str) -> Reason {
    format!("its {kind} column `{column}` holds {found}, not {want}")
}

/// Checks the sample column's type for `kind`.
fn check_sample_type(schema: &SchemaRef, column: &str, kind: Kind) -> Result<(), Reason> {
    let field = schema
        .field_with_name(column)
        .map_err(|_| format!("it has no column `{column}`"))?;
    let ok = match (kind, field.data_type()) {
        (
            Kind::Image,
            DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_),
        ) => true,
        (Kind::Image, DataType::Struct(fields)) => image_struct(fields),
        (Kind::Text, t) => is_string(t),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(match kind {
        Kind::Image => type_refused(
            column,
            "image",
            field.data_type(),
            "encoded images (binary, or a `{bytes, path}` struct)",
        ),
        Kind::Text => type_refused(column, "text", field.data_type(), "strings"),
    })
}

fn image_struct(fields: &Fields) -> bool {
    let bytes = fields.find("bytes").map(|(_, f)| f.data_type().clone());
    let path = fields.find("path").map(|(_, f)| f.data_type().clone());
    matches!(
        bytes,
        None | Some(DataType::Binary | DataType::LargeBinary | DataType::BinaryView)
    ) && path.as_ref().is_none_or(is_string)
        && (bytes.is_some() || path.is_some())
}

fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => matches!(
            **v,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ),
        _ => false,
    }
}

/// Row `i` of a string column (dictionary-encoded or not); `None` when null.
fn string_at(array: &dyn Array, i: usize) -> Option<&str> {
    if array.is_null(i) {
        return None;
    }
    match array.data_type() {
        DataType::Utf8 => Some(array.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Some(array.as_string::<i64>().value(i)),
        DataType::Utf8View => Some(array.as_string_view().value(i)),
        DataType::Dictionary(_, _) => {
            // The key alone: `normalized_keys` would build every row's key for each row.
            let dict = array.as_any_dictionary();
            let key = usize::try_from(integer_at(dict.keys(), i)?).ok()?;
            (key < dict.values().len())
                .then(|| string_at(dict.values().as_ref(), key))
                .flatten()
        }
        _ => None,
    }
}

/// Row `i` of a binary column; `None` when null.
fn bytes_at(array: &dyn Array, i: usize) -> Option<&[u8]> {
    if array.is_null(i) {
        return None;
    }
    match array.data_type() {
        DataType::Binary => Some(array.as_binary::<i32>().value(i)),
        DataType::LargeBinary => Some(array.as_binary::<i64>().value(i)),
        DataType::BinaryView => Some(array.as_binary_view().value(i)),
        DataType::FixedSizeBinary(_) => Some(array.as_fixed_size_binary().value(i)),
        _ => None,
    }
}

/// Row `i` of an integer column, widened; `None` when null or not an integer column.
fn integer_at(array: &dyn Array, i: usize) -> Option<i128> {
    if array.is_null(i) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i).into(),
        _ => return None,
    })
}

fn column<'b>(batch: &'b RecordBatch, name: &str) -> Result<&'b dyn Array, Reason> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| format!("a record batch lacks column `{name}`"))
}

fn next_batch(reader: &mut Batches) -> Option<Result<RecordBatch, Reason>> {
    let next = guarded(|| Ok(reader.next()));
    match next {
        Ok(batch) => batch.map(|b| b.map_err(|e| format!("it cannot be read: {e}"))),
        Err(reason) => Some(Err(reason)),
    }
}

/// The label column of one table (the checker reads only this and the schema); rows past
/// `limit` are not read.
pub fn labels_of(
    input: Input,
    format: Format,
    label: &str,
    limit: Option<usize>,
) -> Result<Labels, Reason> {
    let (schema, mut reader) = batches(input, format, &[label])?;
    let names = class_label(&schema, label);
    let field = schema
        .field_with_name(label)
        .map_err(|_| format!("it has no column `{label}`"))?;
    let integers = field.data_type().is_integer();
    if !integers && !is_string(field.data_type()) {
        return Err(type_refused(
            label,
            "label",
            field.data_type(),
            "integers or strings",
        ));
    }
    let mut labels = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(batch) = next_batch(&mut reader) {
        let batch = batch?;
        let array = column(&batch, label)?;
        for i in 0..batch.num_rows() {
            if limit.is_some_and(|l| labels.len() >= l) {
                break;
            }
            let row = labels.len() + 1;
            let raw = if integers {
                let Some(n) = integer_at(array, i) else {
                    return Err(format!("row {row} has no label (null)"));
                };
                match &names {
                    Some(names) => {
                        let Some(name) = usize::try_from(n).ok().and_then(|n| names.get(n)) else {
                            return Err(if n == -1 {
                                format!("row {row} is unlabelled (label -1)")
                            } else {
                                format!(
                                    "row {row} has label {n}, but the ClassLabel of `{label}` names {} classes",
                                    names.len()
                                )
                            });
                        };
                        name.clone()
                    }
                    None => {
                        seen.insert(n);
                        n.to_string()
                    }
                }
            } else {
                string_at(array, i)
                    .ok_or_else(|| format!("row {row} has no label (null)"))?
                    .to_string()
            };
            labels.push(raw);
        }
        if limit.is_some_and(|l| labels.len() >= l) {
            break;
        }
    }
    let order = match names {
        Some(names) => Some(names),
        None if integers => Some(seen.iter().map(|n| n.to_string()).collect()),
        None => None,
    };
    let rows = labels.len();
    Ok(Labels {
        labels,
        order,
        per_file: vec![(rows, true)],
    })
}

/// The schema's check of the sample column, without reading any row.
pub fn check_sample_column(
    input: Input,
    format: Format,
    sample: &str,
    kind: Kind,
) -> Result<(), Reason> {
    let (schema, _) = batches(input, format, &[sample])?;
    check_sample_type(&schema, sample, kind)
}

/// The sample column of one table, a record batch at a time: `each` gets the index of the
/// batch's first row and its cells. Rows past `limit` are not handed over.
pub fn cells_of(
    input: Input,
    format: Format,
    sample: &str,
    kind: Kind,
    limit: Option<usize>,
    mut each: impl FnMut(usize, &[Cell<'_>]) -> Result<(), Reason>,
) -> Result<usize, Reason> {
    let (schema, mut reader) = batches(input, format, &[sample])?;
    check_sample_type(&schema, sample, kind)?;
    let mut rows = 0usize;
    while let Some(batch) = next_batch(&mut reader) {
        let batch = batch?;
        let array = column(&batch, sample)?;
        let take = limit.map_or(batch.num_rows(), |l| (l - rows).min(batch.num_rows()));
        let mut cells = Vec::with_capacity(take);
        for i in 0..take {
            let row = rows + i + 1;
            let cell = match (kind, array.data_type()) {
                (Kind::Text, _) => Cell::Text(
                    string_at(array, i).ok_or_else(|| format!("row {row} has no text (null)"))?,
                ),
                (Kind::Image, DataType::Struct(_)) => {
                    let parts = array.as_struct();
                    let bytes = parts
                        .column_by_name("bytes")
                        .and_then(|b| bytes_at(b.as_ref(), i));
                    let path = parts
                        .column_by_name("path")
                        .and_then(|p| string_at(p.as_ref(), i));
                    match (bytes, path) {
                        _ if array.is_null(i) => {
                            return Err(format!("row {row} has no image (null)"))
                        }
                        (Some(b), _) => Cell::Bytes(b),
                        (None, Some(p)) => Cell::Path(p),
                        (None, None) => {
                            return Err(format!("row {row} has no image (null bytes and path)"))
                        }
                    }
                }
                (Kind::Image, _) => Cell::Bytes(
                    bytes_at(array, i).ok_or_else(|| format!("row {row} has no image (null)"))?,
                ),
            };
            cells.push(cell);
        }
        each(rows, &cells)?;
        rows += take;
        if limit.is_some_and(|l| rows >= l) {
            break;
        }
    }
    Ok(rows)
}

fn open(path: &Path) -> Result<Input, ReadError> {
    File::open(path)
        .map(Input::File)
        .map_err(|e| fail(path, e.to_string()))
}

/// The labels of a table source (its files in order, as one), its sample column checked
/// in every file. Rows past `limit` are not read.
pub fn labels(
    files: &[PathBuf],
    format: Format,
    sample: &str,
    kind: Kind,
    label: &str,
    limit: Option<usize>,
) -> Result<Labels, ReadError> {
    let mut all = Labels {
        labels: Vec::new(),
        order: None,
        per_file: Vec::new(),
    };
    for file in files {
        check_sample_column(open(file)?, format, sample, kind).map_err(|r| fail(file, r))?;
        let left = limit.map(|l| l.saturating_sub(all.labels.len()));
        if left == Some(0) {
            break;
        }
        let found = labels_of(open(file)?, format, label, left).map_err(|r| fail(file, r))?;
        all.order = match (all.order.take(), found.order) {
            (None, order) => order,
            (Some(a), Some(b)) if found.labels.is_empty() || a == b => Some(a),
            // Integer orders merge; ClassLabels must agree between files.
            (Some(a), Some(b)) => {
                let numeric = |o: &[String]| o.iter().all(|n| n.parse::<i128>().is_ok());
                if numeric(&a) && numeric(&b) {
                    let mut merged: Vec<i128> =
                        a.iter().chain(&b).filter_map(|n| n.parse().ok()).collect();
                    merged.sort_unstable();
                    merged.dedup();
                    Some(merged.iter().map(|n| n.to_string()).collect())
                } else {
                    return Err(fail(
                        file,
                        format!(
                            "its classes of `{label}` ({}) differ from the first file's ({})",
                            b.join(", "),
                            a.join(", ")
                        ),
                    ));
                }
            }
            (Some(a), None) => Some(a),
        };
        let whole = left.is_none_or(|l| found.labels.len() < l);
        all.per_file.push((found.labels.len(), whole));
        all.labels.extend(found.labels);
    }
    Ok(all)
}

/// The sample column of a table source, file by file, as many rows of each file as
/// [`labels`] read there (`per_file`): `each` gets the file, the index of the batch's first
/// row in that file and in the whole source, and the batch's cells. A file whose sample
/// column holds another number of rows than its labels is refused: the two columns of a
/// corrupt file could otherwise pair labels with other rows' samples.
pub fn cells(
    files: &[PathBuf],
    per_file: &[(usize, bool)],
    format: Format,
    sample: &str,
    kind: Kind,
    mut each: impl FnMut(&Path, usize, usize, &[Cell<'_>]) -> Result<(), Reason>,
) -> Result<usize, ReadError> {
    let mut rows = 0;
    for (file, &(want, whole)) in files.iter().zip(per_file) {
        let first = rows;
        let limit = (!whole).then_some(want);
        let got = cells_of(open(file)?, format, sample, kind, limit, |start, batch| {
            each(file, start, first + start, batch)
        })
        .map_err(|r| fail(file, r))?;
        if got != want {
            return Err(fail(
                file,
                format!("its column `{sample}` holds {got} rows but its labels {want}"),
            ));
        }
        rows += got;
    }
    Ok(rows)
}

/// The rows of `per_file` (as [`labels`] read them) that the first `limit` rows of the
/// source take, for [`cells`]: files past the limit are left out.
pub fn first_rows(per_file: &[(usize, bool)], limit: Option<usize>) -> Vec<(usize, bool)> {
    let Some(mut left) = limit else {
        return per_file.to_vec();
    };
    let mut kept = Vec::new();
    for &(rows, whole) in per_file {
        if left == 0 {
            break;
        }
        kept.push(if rows <= left {
            (rows, whole)
        } else {
            (left, false)
        });
        left = left.saturating_sub(rows);
    }
    kept
}

/// Each image's table file, row there (from 1), width and height, from its header alone
/// (headers read in parallel, a batch at a time); the first failure names its row.
pub type Sizes = Vec<(PathBuf, usize, u32, u32)>;

/// [`Sizes`] of a table source's image column: what the checker reads of the images.
pub fn image_sizes(
    files: &[PathBuf],
    per_file: &[(usize, bool)],
    format: Format,
    column: &str,
) -> Result<Sizes, ReadError> {
    use rayon::prelude::*;
    let mut sizes = Vec::new();
    cells(
        files,
        per_file,
        format,
        column,
        Kind::Image,
        |file, first, _, cells| {
            let found: Vec<Result<(u32, u32), Reason>> = cells
                .par_iter()
                .map(|cell| match cell {
                    Cell::Bytes(bytes) => crate::images::header_bytes(bytes),
                    Cell::Path(p) => {
                        crate::images::header(&file.parent().unwrap_or(Path::new("")).join(p))
                    }
                    Cell::Text(_) => Err("it holds text, not an image".into()),
                })
                .collect();
            for (i, size) in found.into_iter().enumerate() {
                let row = first + i + 1;
                let (w, h) = size.map_err(|reason| format!("row {row}: {reason}"))?;
                sizes.push((file.to_path_buf(), row, w, h));
            }
            Ok(())
        },
    )?;
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/tables")
            .join(name)
    }

    #[test]
    fn class_labels_come_from_the_schema() {
        for (name, format) in [
            ("shapes.parquet", Format::Parquet),
            ("shapes-arrow", Format::Arrow),
        ] {
            let files = files(&fixture(name), format).unwrap();
            let found = labels(&files, format, "image", Kind::Image, "label", None).unwrap();
            assert_eq!(
                found.order.as_deref(),
                Some(&["even".to_string(), "odd".into()][..])
            );
            assert_eq!(found.labels.len(), 12);
            assert_eq!(found.labels[..3], ["even", "odd", "even"]);
        }
    }

    #[test]
    fn wildcards_pick_files() {
        assert!(wildcard("train-*.parquet", "train-00000-of-00002.parquet"));
        assert!(!wildcard("train-*.parquet", "test-00000-of-00001.parquet"));
        assert!(wildcard("*", "x"));
        assert!(wildcard("a*b*c", "aXbYc"));
        assert!(!wildcard("a*b*c", "aXbY"));
        assert!(!wildcard("ab*ba", "aba"));
        assert!(wildcard("exact.parquet", "exact.parquet"));
        let picked = files(&fixture("shapes-arrow/*-00001-*.arrow"), Format::Arrow).unwrap();
        assert_eq!(
            picked,
            vec![fixture("shapes-arrow/data-00001-of-00002.arrow")]
        );
    }

    /// Inputs the fuzz target found (scripts/fuzz.sh loaders): refused, no panic.
    #[test]
    fn fuzzed_tables_are_refused() {
        let data = std::fs::read(fixture("fuzz/negative_column_offset.parquet")).unwrap();
        let reason = labels_of(Input::from_slice(&data), Format::Parquet, "label", None);
        assert!(reason.unwrap_err().contains("its footer places column"));
        // arrow-rs panics on this one: caught, and reported as the file's fault.
        let data = std::fs::read(fixture("fuzz/dictionary_page_missing.parquet")).unwrap();
        let cells = cells_of(
            Input::from_slice(&data),
            Format::Parquet,
            "image",
            Kind::Image,
            None,
            |_, _| Ok(()),
        );
        let labels = labels_of(Input::from_slice(&data), Format::Parquet, "label", None);
        let reasons = [cells.err(), labels.err()];
        assert!(
            reasons
                .iter()
                .flatten()
                .any(|r| r.contains("it is malformed")),
            "{reasons:?}"
        );
    }
}
