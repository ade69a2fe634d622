//! Reads just enough of a data file to check a pipeline against it before anything runs:
//! sample counts, sample shapes and the number of classes.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// What the checker learns from a data source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFacts {
    /// Samples in the training part.
    pub train_count: usize,
    /// Samples in the source's own test part, where it has one.
    pub test_count: Option<usize>,
    /// Shape of one sample as stored (IDX dims after the first; `[features]` for CSV).
    pub sample_shape: Vec<usize>,
    /// One more than the largest label seen.
    pub classes: usize,
}

/// The most bytes a CSV/TSV file may hold once decompressed (the runtime's cap too): far
/// above any table a CPU trainer reads, far below what exhausts memory.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// Deflate cannot expand data more than 1032 to 1: a gzip file whose IDX header claims more
/// than this many times the file's size is corrupt.
const MAX_GZIP_RATIO: u64 = 1032;

/// A data file's bytes, decompressed when they start with the gzip magic, with the length of
/// the file as stored.
struct Input<'a> {
    reader: Box<dyn Read + 'a>,
    stored_len: u64,
    gzip: bool,
}

impl<'a> Input<'a> {
    fn new(source: impl Read + 'a, stored_len: u64) -> Result<Input<'a>, String> {
        let mut buffered = BufReader::new(source);
        let gzip = buffered
            .fill_buf()
            .map_err(|e| format!("it is not readable ({e})"))?
            .starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn Read + 'a> = if gzip {
            // Multi-member, as the runtime reads it: a concatenation is one stream.
            Box::new(flate2::read::MultiGzDecoder::new(buffered))
        } else {
            Box::new(buffered)
        };
        Ok(Input {
            reader,
            stored_len,
            gzip,
        })
    }

    /// Reads everything left, refusing more than `limit` bytes (at most `limit + 1` are read).
    fn read_bounded(&mut self, limit: u64) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::new();
        (&mut self.reader)
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| self.read_error(&e))?;
        if bytes.len() as u64 > limit {
            return Err(format!(
                "it holds more than {limit} bytes once decompressed"
            ));
        }
        Ok(bytes)
    }

    fn read_error(&self, e: &std::io::Error) -> String {
        if self.gzip {
            format!("its gzip data cannot be decompressed ({e})")
        } else {
            format!("it is not readable ({e})")
        }
    }
}

/// Opens a file for inspection; a folder is refused by name.
fn open(path: &Path) -> Result<Input<'static>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("it is a folder, not a file".into());
    }
    Input::new(file, meta.len())
}

/// An IDX header: the element type, the dimensions and the bytes of data they announce.
struct IdxHeader {
    elem: u8,
    dims: Vec<usize>,
    header_len: u64,
    data_len: u64,
}

fn idx_header(input: &mut Input<'_>) -> Result<IdxHeader, String> {
    let gzip = input.gzip;
    let short = |e: std::io::Error, what: &str| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("{what} (it ends inside its IDX header)")
        } else if gzip {
            format!("its gzip data cannot be decompressed ({e})")
        } else {
            format!("it is not readable ({e})")
        }
    };
    let mut magic = [0u8; 4];
    input
        .reader
        .read_exact(&mut magic)
        .map_err(|e| short(e, "it is too short for an IDX header"))?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(
            "it is not an IDX file (the magic number does not start with two zero bytes)".into(),
        );
    }
    let elem = magic[2];
    let Some(size) = element_size(elem) else {
        return Err(format!("it has an unknown IDX element type 0x{elem:02X}"));
    };
    let ndim = usize::from(magic[3]);
    if ndim == 0 {
        return Err("its IDX header declares no dimensions".into());
    }
    let mut sizes = vec![0u8; 4 * ndim];
    input
        .reader
        .read_exact(&mut sizes)
        .map_err(|e| short(e, "its IDX header is truncated"))?;
    let dims: Vec<usize> = sizes
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let data_len = dims
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format!("its IDX header claims an impossible size {dims:?}"))?;
    let header = IdxHeader {
        elem,
        dims,
        header_len: 4 + 4 * ndim as u64,
        data_len,
    };
    // The claim is checked against the file before anything is read or allocated for it.
    if input.gzip {
        let most = input.stored_len.saturating_mul(MAX_GZIP_RATIO);
        if header.data_len > most {
            return Err(format!(
                "its IDX header claims {:?} ({} bytes of data) but {} bytes of gzip cannot hold more than {most}",
                header.dims, header.data_len, input.stored_len
            ));
        }
    } else {
        let held = input.stored_len.saturating_sub(header.header_len);
        if held != header.data_len {
            return Err(format!(
                "its IDX header claims {:?} ({} bytes of data) but the file holds {held}",
                header.dims, header.data_len
            ));
        }
    }
    Ok(header)
}

fn element_size(elem: u8) -> Option<u64> {
    match elem {
        0x08 | 0x09 => Some(1),
        0x0B => Some(2),
        0x0C | 0x0D => Some(4),
        0x0E => Some(8),
        _ => None,
    }
}

/// Reads the data of a gzip IDX file through to check the header's claim: the stream is
/// counted, not kept, and never read past one byte more than the claim.
fn check_gzip_data(input: &mut Input<'_>, header: &IdxHeader) -> Result<(), String> {
    let held = std::io::copy(
        &mut (&mut input.reader).take(header.data_len.saturating_add(1)),
        &mut std::io::sink(),
    )
    .map_err(|e| input.read_error(&e))?;
    if held != header.data_len {
        return Err(format!(
            "its IDX header claims {:?} ({} bytes of data) but its gzip data holds {}",
            header.dims,
            header.data_len,
            if held > header.data_len {
                "more".to_string()
            } else {
                held.to_string()
            }
        ));
    }
    Ok(())
}

/// Images: the count and the shape of one sample, from the header (checked against the file).
pub fn idx_images(path: &Path) -> Result<(usize, Vec<usize>), String> {
    idx_images_from(open(path)?)
}

/// [`idx_images`] on a file's bytes.
pub fn idx_images_bytes(raw: &[u8]) -> Result<(usize, Vec<usize>), String> {
    idx_images_from(Input::new(raw, raw.len() as u64)?)
}

fn idx_images_from(mut input: Input<'_>) -> Result<(usize, Vec<usize>), String> {
    let header = idx_header(&mut input)?;
    if input.gzip {
        check_gzip_data(&mut input, &header)?;
    }
    let sample = header.dims[1..].to_vec();
    if sample.is_empty() {
        return Err(
            "an image file needs more than one dimension (samples, then their shape)".into(),
        );
    }
    if sample.contains(&0) {
        return Err(format!("its samples have an empty shape {sample:?}"));
    }
    Ok((header.dims[0], sample))
}

/// Labels: the count and one more than the largest label.
pub fn idx_labels(path: &Path) -> Result<(usize, usize), String> {
    idx_labels_from(open(path)?)
}

/// [`idx_labels`] on a file's bytes.
pub fn idx_labels_bytes(raw: &[u8]) -> Result<(usize, usize), String> {
    idx_labels_from(Input::new(raw, raw.len() as u64)?)
}

fn idx_labels_from(mut input: Input<'_>) -> Result<(usize, usize), String> {
    let header = idx_header(&mut input)?;
    if header.dims.len() != 1 {
        return Err(format!(
            "a label file has one dimension, this one has {}",
            header.dims.len()
        ));
    }
    if !matches!(header.elem, 0x08 | 0x09 | 0x0B | 0x0C) {
        return Err("labels must be integers (IDX types 0x08, 0x09, 0x0B or 0x0C)".into());
    }
    // Bounded by the checked claim: the file's length, or gzip's largest expansion of it.
    let data = input.read_bounded(header.data_len)?;
    if data.len() as u64 != header.data_len {
        return Err(format!(
            "its header claims {} labels but the file holds {} bytes of data",
            header.dims[0],
            data.len()
        ));
    }
    let size = element_size(header.elem).unwrap_or(1) as usize;
    let mut max = 0i64;
    for chunk in data.chunks_exact(size) {
        let label = match header.elem {
            0x08 => i64::from(chunk[0]),
            0x09 => i64::from(chunk[0] as i8),
            0x0B => i64::from(i16::from_be_bytes([chunk[0], chunk[1]])),
            _ => i64::from(i32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])),
        };
        if label < 0 {
            return Err(format!("it holds a negative label {label}"));
        }
        max = max.max(label);
    }
    Ok((header.dims[0], max as usize + 1))
}

/// A CSV file: `(rows, features, classes, header names)`; `label` is the label column.
#[derive(Debug, Clone)]
pub struct CsvFacts {
    pub rows: usize,
    pub columns: usize,
    pub classes: usize,
}

pub fn csv(
    path: &Path,
    header: bool,
    delimiter: char,
    label: &LabelColumn,
) -> Result<(CsvFacts, usize), String> {
    csv_from(open(path)?, header, delimiter, label)
}

/// [`csv`] on a file's bytes.
pub fn csv_bytes(
    raw: &[u8],
    header: bool,
    delimiter: char,
    label: &LabelColumn,
) -> Result<(CsvFacts, usize), String> {
    csv_from(Input::new(raw, raw.len() as u64)?, header, delimiter, label)
}

fn csv_from(
    mut input: Input<'_>,
    header: bool,
    delimiter: char,
    label: &LabelColumn,
) -> Result<(CsvFacts, usize), String> {
    if !input.gzip && input.stored_len > MAX_TEXT_BYTES {
        return Err(format!(
            "it holds {} bytes, more than the {MAX_TEXT_BYTES} kdc reads as text",
            input.stored_len
        ));
    }
    let bytes = input.read_bounded(MAX_TEXT_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..valid]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        format!("it is not UTF-8 text (line {line}, byte {valid} of the text)")
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let names = if header {
        let (_, first) = lines.next().ok_or("it is empty")?;
        Some(
            first
                .split(delimiter)
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    let mut columns = names.as_ref().map(|n| n.len());
    let mut label_index = None;
    let mut rows = 0usize;
    let mut max_label = 0u32;
    for (number, line) in lines {
        let fields: Vec<&str> = line.split(delimiter).map(str::trim).collect();
        let width = *columns.get_or_insert(fields.len());
        if fields.len() != width {
            return Err(format!(
                "line {} has {} fields where the first row has {}",
                number + 1,
                fields.len(),
                width
            ));
        }
        let index = match label_index {
            Some(i) => i,
            None => {
                let i = label.resolve(names.as_deref(), width)?;
                label_index = Some(i);
                i
            }
        };
        for (i, field) in fields.iter().enumerate() {
            if i == index {
                let value = parse_label(field).ok_or_else(|| {
                    format!(
                        "line {}: the label `{field}` is not a class id (a non-negative integer below 2^32)",
                        number + 1
                    )
                })?;
                max_label = max_label.max(value);
            } else {
                // As the runtime reads it: a finite 32-bit float.
                match field.parse::<f32>() {
                    Ok(v) if v.is_finite() => {}
                    Ok(_) => {
                        return Err(format!(
                            "line {}, field {}: `{field}` is not a finite 32-bit number",
                            number + 1,
                            i + 1
                        ))
                    }
                    Err(_) => {
                        return Err(format!(
                            "line {}, field {}: `{field}` is not a number",
                            number + 1,
                            i + 1
                        ))
                    }
                }
            }
        }
        rows += 1;
    }
    if rows == 0 {
        return Err("it holds no rows".into());
    }
    let columns = columns.unwrap_or(0);
    let index = label_index.unwrap_or(0);
    Ok((
        CsvFacts {
            rows,
            columns,
            classes: max_label as usize + 1,
        },
        index,
    ))
}

/// A class id as the runtime reads it: a non-negative integer, also written as `3.0`.
fn parse_label(field: &str) -> Option<u32> {
    if let Ok(value) = field.parse::<u32>() {
        return Some(value);
    }
    let value: f64 = field.parse().ok()?;
    (value >= 0.0 && value.fract() == 0.0 && value <= f64::from(u32::MAX)).then_some(value as u32)
}

/// How a `.kd` file names the label column.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelColumn {
    /// Zero-based; negative counts from the end (`-1` is the last column).
    Index(i64),
    Name(String),
}

impl LabelColumn {
    fn resolve(&self, names: Option<&[String]>, width: usize) -> Result<usize, String> {
        match self {
            LabelColumn::Index(i) => {
                let index = if *i < 0 { width as i64 + i } else { *i };
                if index < 0 || index as usize >= width {
                    return Err(format!("there is no column {i}: rows have {width} fields"));
                }
                Ok(index as usize)
            }
            LabelColumn::Name(name) => names
                .and_then(|n| n.iter().position(|c| c == name))
                .ok_or_else(|| format!("its header has no column `{name}`")),
        }
    }
}

/// Finds an IDX file by its conventional name in `dir`, raw or gzip.
pub fn find_idx(dir: &Path, stem: &str) -> Option<std::path::PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}
