//! NumPy's `.npy` format (versions 1.0, 2.0 and 3.0): a magic string, a header that is a
//! Python dict literal (`{'descr': '<f4', 'fortran_order': False, 'shape': (60000, 28, 28)}`),
//! then the values. Samples may be `uint8` (kept as bytes), `float32` or `float64` (kept as
//! f32); labels any integer type. Fortran-ordered arrays are reordered to C order.
//!
//! Every size comes from the header, so nothing is allocated before the header's claims
//! are checked against the file's length.

use std::io::Read;
use std::path::Path;

use crate::Reason;

const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy itself refuses headers longer than 10,000 bytes unless told otherwise.
const MAX_HEADER: usize = 1 << 16;

/// The element type of an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An unsigned integer of this many bytes.
    Unsigned(usize),
    /// A signed integer of this many bytes.
    Signed(usize),
    /// A float of this many bytes.
    Float(usize),
    Bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dtype {
    pub kind: Kind,
    pub big_endian: bool,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self.kind {
            Kind::Unsigned(n) | Kind::Signed(n) | Kind::Float(n) => n,
            Kind::Bool => 1,
        }
    }

    /// numpy's name for the type (`uint8`, `float32`, ...).
    pub fn name(self) -> String {
        match self.kind {
            Kind::Unsigned(n) => format!("uint{}", n * 8),
            Kind::Signed(n) => format!("int{}", n * 8),
            Kind::Float(n) => format!("float{}", n * 8),
            Kind::Bool => "bool".into(),
        }
    }

    /// Whether samples of this type can be read: `uint8`, `float32`, `float64`.
    pub fn is_sample_type(self) -> bool {
        matches!(
            self.kind,
            Kind::Unsigned(1) | Kind::Float(4) | Kind::Float(8)
        )
    }

    /// Whether labels of this type can be read: any integer.
    pub fn is_label_type(self) -> bool {
        matches!(self.kind, Kind::Unsigned(_) | Kind::Signed(_))
    }
}

/// What an `.npy` header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub dtype: Dtype,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Where the values start, in bytes from the start of the file.
    pub data_start: usize,
}

impl Header {
    /// The number of values, `None` when the shape's product overflows.
    pub fn count(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }

    /// The bytes the values take, `None` on overflow.
    pub fn data_len(&self) -> Option<usize> {
        self.count()?.checked_mul(self.dtype.size())
    }

    /// Refuses a header whose values do not fill exactly the `len` bytes the file holds.
    pub fn check_len(&self, len: u64) -> Result<(), Reason> {
        let data = self.data_len().ok_or_else(|| {
            format!(
                "its header claims a shape of {:?}, more values than a machine can address",
                self.shape
            )
        })?;
        let held = len.saturating_sub(self.data_start as u64);
        if held != data as u64 {
            return Err(format!(
                "its header claims {:?} {} values ({data} bytes) but the file holds {held} bytes of values",
                self.shape,
                self.dtype.name()
            ));
        }
        Ok(())
    }
}

/// The header's length in bytes (magic and length fields included), from the file's first
/// 12 bytes.
pub fn header_end(prefix: &[u8]) -> Result<usize, Reason> {
    if prefix.starts_with(b"PK\x03\x04") {
        return Err("it is a zip archive, not a .npy file: read an .npz with `npz(\"file\", x: \"key\", y: \"key\")`".into());
    }
    if prefix.len() < 10 || &prefix[..6] != MAGIC {
        return Err("it is not a NumPy .npy file (no \\x93NUMPY magic)".into());
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let (len, start) = match major {
        1 => (usize::from(u16::from_le_bytes([prefix[8], prefix[9]])), 10),
        2 | 3 => {
            let bytes = prefix
                .get(8..12)
                .ok_or("its header is cut short (the file ends inside it)")?;
            let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            (usize::try_from(len).unwrap_or(usize::MAX), 12)
        }
        _ => {
            return Err(format!(
                "it is .npy format version {major}.{minor}, which kdc does not know (1.0 to 3.0)"
            ))
        }
    };
    if len > MAX_HEADER {
        return Err(format!(
            "its header claims {len} bytes, more than the {MAX_HEADER} kdc reads"
        ));
    }
    Ok(start + len)
}

/// Parses the header at the start of `bytes` (which must hold all of it).
pub fn header(bytes: &[u8]) -> Result<Header, Reason> {
    let end = header_end(bytes)?;
    let start = if bytes[6] == 1 { 10 } else { 12 };
    let text = bytes
        .get(start..end)
        .ok_or("its header is cut short (the file ends inside it)")?;
    let text = std::str::from_utf8(text).map_err(|_| "its header is not text".to_string())?;
    let dict = match Literal::parse(text)? {
        Literal::Dict(entries) => entries,
        _ => return Err("its header is not a Python dict".into()),
    };
    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("its header has no '{key}'"))
    };
    let dtype = match get("descr")? {
        Literal::Str(descr) => parse_descr(descr)?,
        _ => return Err("it holds a structured array (fields of several types); kdc reads arrays of one numeric type".into()),
    };
    let fortran_order = match get("fortran_order")? {
        Literal::Bool(b) => *b,
        _ => return Err("its header's 'fortran_order' is not True or False".into()),
    };
    let shape = match get("shape")? {
        Literal::Tuple(items) => items
            .iter()
            .map(|item| match item {
                Literal::Int(n) => Ok(*n),
                _ => {
                    Err("its header's 'shape' holds something other than whole numbers".to_string())
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err("its header's 'shape' is not a tuple".into()),
    };
    Ok(Header {
        dtype,
        fortran_order,
        shape,
        data_start: end,
    })
}

/// Reads only the header of the file at `path`, and checks its claims against the file's
/// length.
pub fn read_header(path: &Path) -> Result<Header, Reason> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let header = read_header_from(&mut file)?;
    header.check_len(len)?;
    Ok(header)
}

/// Reads a header from the start of `reader`, no further than the header's end.
pub fn read_header_from(reader: &mut impl Read) -> Result<Header, Reason> {
    let mut prefix = Vec::with_capacity(12);
    reader
        .take(12)
        .read_to_end(&mut prefix)
        .map_err(|e| e.to_string())?;
    let end = header_end(&prefix)?;
    if end > prefix.len() {
        reader
            .take((end - prefix.len()) as u64)
            .read_to_end(&mut prefix)
            .map_err(|e| e.to_string())?;
    }
    header(&prefix)
}

/// A whole `.npy` file from `reader`, which says it holds `len` bytes: the header, checked
/// against `len` before anything more is read or allocated, then exactly the values it
/// claims (more or fewer is an error).
pub fn read_whole(reader: &mut impl Read, len: u64) -> Result<Vec<u8>, Reason> {
    let mut bytes = Vec::with_capacity(128);
    let io = |e: std::io::Error| format!("it cannot be read: {e}");
    (&mut *reader)
        .take(12)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let end = header_end(&bytes)?;
    if end > bytes.len() {
        (&mut *reader)
            .take((end - bytes.len()) as u64)
            .read_to_end(&mut bytes)
            .map_err(io)?;
    }
    let header = header(&bytes)?;
    header.check_len(len)?;
    let data = header.data_len().unwrap_or(0);
    bytes
        .try_reserve_exact(data)
        .map_err(|_| format!("its {data} bytes of values are more than this machine has free"))?;
    let read = (&mut *reader)
        .take(data as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if read != data {
        return Err(format!(
            "its header claims {data} bytes of values but {read} follow it"
        ));
    }
    Ok(bytes)
}

/// Sample values as kdc keeps them.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// The header and the values of a whole `.npy` file of samples (`uint8`, `float32` or
/// `float64`), in C order.
pub fn samples(bytes: &[u8]) -> Result<(Header, Values), Reason> {
    let header = header(bytes)?;
    header.check_len(bytes.len() as u64)?;
    if !header.dtype.is_sample_type() {
        return Err(format!(
            "it holds {} values; samples must be uint8, float32 or float64",
            header.dtype.name()
        ));
    }
    let data = &bytes[header.data_start..];
    let big = header.dtype.big_endian;
    let values = match header.dtype.kind {
        Kind::Float(4) => Values::F32(
            data.chunks_exact(4)
                .map(|b| {
                    let b = [b[0], b[1], b[2], b[3]];
                    if big {
                        f32::from_be_bytes(b)
                    } else {
                        f32::from_le_bytes(b)
                    }
                })
                .collect(),
        ),
        Kind::Float(_) => Values::F32(
            data.chunks_exact(8)
                .map(|b| {
                    let b = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
                    (if big {
                        f64::from_be_bytes(b)
                    } else {
                        f64::from_le_bytes(b)
                    }) as f32
                })
                .collect(),
        ),
        _ => Values::U8(data.to_vec()),
    };
    if let Values::F32(v) = &values {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!(
                "value {i} is {} (as f32); samples must be finite numbers",
                v[i]
            ));
        }
    }
    let values = match (header.fortran_order, values) {
        (false, values) => values,
        (true, Values::U8(v)) => Values::U8(fortran_to_c(&v, &header.shape)),
        (true, Values::F32(v)) => Values::F32(fortran_to_c(&v, &header.shape)),
    };
    Ok((header, values))
}

/// The labels of a whole `.npy` file of integers, one per sample: a vector, or an array
/// whose other axes are all 1 (`[N, 1]`).
pub fn labels(bytes: &[u8]) -> Result<Vec<u32>, Reason> {
    let header = header(bytes)?;
    header.check_len(bytes.len() as u64)?;
    check_label_header(&header)?;
    let size = header.dtype.size();
    let signed = matches!(header.dtype.kind, Kind::Signed(_));
    bytes[header.data_start..]
        .chunks_exact(size)
        .enumerate()
        .map(|(i, b)| {
            let value = integer(b, signed, header.dtype.big_endian);
            u32::try_from(value).map_err(|_| {
                format!("label {i} is {value}; labels must be whole numbers from 0 to 4294967295")
            })
        })
        .collect()
}

/// Refuses labels that are not integers or not one per sample.
pub fn check_label_header(header: &Header) -> Result<(), Reason> {
    if !header.dtype.is_label_type() {
        return Err(format!(
            "it holds {} values; labels must be integers",
            header.dtype.name()
        ));
    }
    if header.shape.is_empty() || header.shape.iter().filter(|&&d| d != 1).count() > 1 {
        return Err(format!(
            "its shape is {:?}; labels are one integer per sample, shape [N] or [N, 1]",
            header.shape
        ));
    }
    Ok(())
}

/// The number of labels a label header describes.
pub fn label_count(header: &Header) -> usize {
    header.count().unwrap_or(0)
}

fn integer(b: &[u8], signed: bool, big: bool) -> i128 {
    let mut raw = [0u8; 16];
    let n = b.len().min(16);
    if big {
        raw[16 - n..].copy_from_slice(&b[..n]);
        raw.reverse();
    } else {
        raw[..n].copy_from_slice(&b[..n]);
    }
    // Sign-extend from the value's own width.
    if signed && n > 0 && raw[n - 1] & 0x80 != 0 {
        for byte in &mut raw[n..] {
            *byte = 0xff;
        }
    }
    i128::from_le_bytes(raw)
}

/// Values of an array of `shape` stored column-major, in row-major order.
pub fn fortran_to_c<T: Copy>(values: &[T], shape: &[usize]) -> Vec<T> {
    if shape.len() < 2 {
        return values.to_vec();
    }
    // Column-major strides: the first axis moves fastest.
    let mut strides = vec![1usize; shape.len()];
    for axis in 1..shape.len() {
        strides[axis] = strides[axis - 1] * shape[axis - 1];
    }
    let mut out = Vec::with_capacity(values.len());
    let mut index = vec![0usize; shape.len()];
    let mut at = 0usize;
    for _ in 0..values.len() {
        out.push(values[at]);
        // The next row-major index: the last axis moves fastest.
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            at += strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            at -= strides[axis] * shape[axis];
            index[axis] = 0;
        }
    }
    out
}

fn parse_descr(descr: &str) -> Result<Dtype, Reason> {
    let unknown = || {
        format!("it holds values of type '{descr}'; kdc reads uint8, float32 and float64 samples and integer labels")
    };
    let mut chars = descr.chars();
    let order = chars.next().ok_or_else(unknown)?;
    let big_endian = match order {
        '<' | '|' => false,
        '>' => true,
        '=' => cfg!(target_endian = "big"),
        _ => return Err(unknown()),
    };
    let kind = chars.next().ok_or_else(unknown)?;
    let size: usize = chars.as_str().parse().map_err(|_| unknown())?;
    let kind = match (kind, size) {
        ('u', 1 | 2 | 4 | 8) => Kind::Unsigned(size),
        ('i', 1 | 2 | 4 | 8) => Kind::Signed(size),
        ('f', 4 | 8) => Kind::Float(size),
        ('b', 1) => Kind::Bool,
        _ => return Err(unknown()),
    };
    Ok(Dtype { kind, big_endian })
}

/// The part of Python's literal syntax an `.npy` header uses.
#[derive(Debug, PartialEq)]
enum Literal {
    Str(String),
    Int(usize),
    Bool(bool),
    None,
    Tuple(Vec<Literal>),
    List(Vec<Literal>),
    Dict(Vec<(String, Literal)>),
}

impl Literal {
    fn parse(text: &str) -> Result<Literal, Reason> {
        let mut parser = Parser {
            chars: text.as_bytes(),
            at: 0,
            depth: 0,
        };
        let value = parser.value()?;
        parser.space();
        if parser.at != parser.chars.len() {
            return Err(parser.error());
        }
        Ok(value)
    }
}

struct Parser<'a> {
    chars: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self) -> Reason {
        format!(
            "its header is not a Python literal kdc can read (at byte {})",
            self.at
        )
    }

    fn space(&mut self) {
        while self
            .chars
            .get(self.at)
            .is_some_and(|c| c.is_ascii_whitespace())
        {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.space();
        if self.chars.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Literal, Reason> {
        self.space();
        self.depth += 1;
        if self.depth > 16 {
            return Err("its header nests too deeply".into());
        }
        let value = match self.chars.get(self.at).copied() {
            Some(b'{') => {
                self.at += 1;
                let mut entries = Vec::new();
                while !self.eat(b'}') {
                    let key = match self.value()? {
                        Literal::Str(key) => key,
                        _ => return Err(self.error()),
                    };
                    if !self.eat(b':') {
                        return Err(self.error());
                    }
                    entries.push((key, self.value()?));
                    if !self.eat(b',') {
                        if !self.eat(b'}') {
                            return Err(self.error());
                        }
                        break;
                    }
                }
                Literal::Dict(entries)
            }
            Some(open @ (b'(' | b'[')) => {
                self.at += 1;
                let close = if open == b'(' { b')' } else { b']' };
                let mut items = Vec::new();
                while !self.eat(close) {
                    items.push(self.value()?);
                    if !self.eat(b',') {
                        if !self.eat(close) {
                            return Err(self.error());
                        }
                        break;
                    }
                }
                if open == b'(' {
                    Literal::Tuple(items)
                } else {
                    Literal::List(items)
                }
            }
            Some(quote @ (b'\'' | b'"')) => {
                self.at += 1;
                let start = self.at;
                while self.chars.get(self.at).is_some_and(|&c| c != quote) {
                    self.at += 1;
                }
                if self.at >= self.chars.len() {
                    return Err(self.error());
                }
                let text = String::from_utf8_lossy(&self.chars[start..self.at]).into_owned();
                self.at += 1;
                Literal::Str(text)
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.at;
                while self.chars.get(self.at).is_some_and(u8::is_ascii_digit) {
                    self.at += 1;
                }
                // Python 2 wrote long integers with an `L`.
                if self.chars.get(self.at) == Some(&b'L') {
                    self.at += 1;
                }
                let digits = std::str::from_utf8(&self.chars[start..self.at])
                    .unwrap_or("")
                    .trim_end_matches('L');
                Literal::Int(digits.parse().map_err(|_| {
                    format!("its header's number {digits} is larger than a machine can address")
                })?)
            }
            _ => {
                let rest = &self.chars[self.at..];
                let word = |w: &str| rest.starts_with(w.as_bytes());
                let (literal, len) = if word("True") {
                    (Literal::Bool(true), 4)
                } else if word("False") {
                    (Literal::Bool(false), 5)
                } else if word("None") {
                    (Literal::None, 4)
                } else {
                    return Err(self.error());
                };
                self.at += len;
                literal
            }
        };
        self.depth -= 1;
        Ok(value)
    }
}
