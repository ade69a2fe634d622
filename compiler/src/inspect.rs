//! Reads just enough of a data file to check a pipeline against it before anything runs:
//! sample counts, sample shapes and the number of classes.

use std::fs::File;
use std::io::{BufReader, Read};
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

/// Opens a file, decompressing it when it starts with the gzip magic.
fn open(path: &Path) -> Result<Box<dyn Read>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 2];
    let is_gzip = {
        use std::io::BufRead;
        let buf = reader.fill_buf().map_err(|e| e.to_string())?;
        if buf.len() >= 2 {
            magic.copy_from_slice(&buf[..2]);
        }
        magic == [0x1f, 0x8b]
    };
    Ok(if is_gzip {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

fn read_all(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    open(path)?
        .read_to_end(&mut bytes)
        .map_err(|e| format!("it is not readable ({e})"))?;
    Ok(bytes)
}

/// An IDX header: element size in bytes and the dimensions.
fn idx_header(reader: &mut dyn Read) -> Result<(u8, Vec<usize>), String> {
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(|_| "it is too short for an IDX header".to_string())?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(
            "it is not an IDX file (the magic number does not start with two zero bytes)".into(),
        );
    }
    let elem = magic[2];
    if !matches!(elem, 0x08 | 0x09 | 0x0B | 0x0C | 0x0D | 0x0E) {
        return Err(format!("it has an unknown IDX element type 0x{elem:02X}"));
    }
    let ndim = magic[3] as usize;
    if ndim == 0 {
        return Err("its IDX header declares no dimensions".into());
    }
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        let mut d = [0u8; 4];
        reader
            .read_exact(&mut d)
            .map_err(|_| "its IDX header is truncated".to_string())?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    Ok((elem, dims))
}

fn element_size(elem: u8) -> usize {
    match elem {
        0x0B => 2,
        0x0C | 0x0D => 4,
        0x0E => 8,
        _ => 1,
    }
}

/// Images: the header only (and the length, for raw files).
pub fn idx_images(path: &Path) -> Result<(usize, Vec<usize>), String> {
    let mut reader = open(path)?;
    let (elem, dims) = idx_header(reader.as_mut())?;
    let count = dims[0];
    let sample: Vec<usize> = dims[1..].to_vec();
    let expected = dims
        .iter()
        .try_fold(element_size(elem), |acc, d| acc.checked_mul(*d))
        .ok_or("its IDX header claims an impossible size")?;
    // For an uncompressed file, the header's claim is checked against the file's length.
    if let Ok(meta) = std::fs::metadata(path) {
        let header = 4 + 4 * dims.len();
        let is_gzip = read_prefix(path)
            .map(|p| p == [0x1f, 0x8b])
            .unwrap_or(false);
        if !is_gzip && meta.len() as usize != header + expected {
            return Err(format!(
                "its header claims {} bytes of data but the file holds {}",
                expected,
                (meta.len() as usize).saturating_sub(header)
            ));
        }
    }
    Ok((count, sample))
}

fn read_prefix(path: &Path) -> Result<[u8; 2], String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let mut p = [0u8; 2];
    f.read_exact(&mut p).map_err(|e| e.to_string())?;
    Ok(p)
}

/// Labels: the count and one more than the largest label.
pub fn idx_labels(path: &Path) -> Result<(usize, usize), String> {
    let bytes = read_all(path)?;
    let mut cursor = bytes.as_slice();
    let (elem, dims) = idx_header(&mut cursor)?;
    if dims.len() != 1 {
        return Err(format!(
            "a label file has one dimension, this one has {}",
            dims.len()
        ));
    }
    let size = element_size(elem);
    if cursor.len() != dims[0] * size {
        return Err(format!(
            "its header claims {} labels but the file holds {} bytes of data",
            dims[0],
            cursor.len()
        ));
    }
    let mut max = 0i64;
    for chunk in cursor.chunks_exact(size) {
        let label = match elem {
            0x08 => chunk[0] as i64,
            0x09 => chunk[0] as i8 as i64,
            0x0B => i16::from_be_bytes([chunk[0], chunk[1]]) as i64,
            0x0C => i32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as i64,
            _ => return Err("labels must be integers (IDX types 0x08, 0x09, 0x0B or 0x0C)".into()),
        };
        if label < 0 {
            return Err(format!("it holds a negative label {label}"));
        }
        max = max.max(label);
    }
    Ok((dims[0], max as usize + 1))
}

/// A CSV file: `(rows, features, classes, header names)`; `label` is the label column.
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
    let bytes = read_all(path)?;
    let text = String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())?;
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
    let mut max_label = 0usize;
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
                let value: usize = field.parse().map_err(|_| {
                    format!(
                        "line {}: the label `{field}` is not a non-negative integer",
                        number + 1
                    )
                })?;
                max_label = max_label.max(value);
            } else if field.parse::<f64>().is_err() {
                return Err(format!(
                    "line {}, field {}: `{field}` is not a number",
                    number + 1,
                    i + 1
                ));
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
            classes: max_label + 1,
        },
        index,
    ))
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
