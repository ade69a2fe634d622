//! Checks a safetensors file against a model's layers by reading its JSON header only.
//!
//! The header is validated as the runtime's loader (the safetensors crate) will: its length
//! against the file's before it is read, the JSON, every tensor's dtype, and every tensor's
//! byte range against its shape and the data the file holds. So a file `kdc check` accepts
//! also loads.

use std::io::Read;
use std::path::Path;

use kd_plan::LayerSpec;

/// Headers larger than this are refused: real ones are kilobytes (safetensors allows 100 MB).
const MAX_HEADER: u64 = 64 << 20;

pub fn check(path: &Path, layers: &[LayerSpec]) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("it is a folder, not a file".into());
    }
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "it is too short for a safetensors file".to_string())?;
    let header_len = header_len(u64::from_le_bytes(len), meta.len())?;
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    check_header(&header, meta.len() - 8 - header_len, layers)
}

/// [`check`] on a file's bytes.
pub fn check_bytes(raw: &[u8], layers: &[LayerSpec]) -> Result<(), String> {
    let Some((len, rest)) = raw.split_first_chunk::<8>() else {
        return Err("it is too short for a safetensors file".into());
    };
    let header_len = header_len(u64::from_le_bytes(*len), raw.len() as u64)? as usize;
    check_header(
        &rest[..header_len],
        (rest.len() - header_len) as u64,
        layers,
    )
}

/// The header's length, refused when absurd or longer than the file.
fn header_len(claimed: u64, file_len: u64) -> Result<u64, String> {
    if claimed > MAX_HEADER {
        return Err(format!(
            "its safetensors header claims {claimed} bytes; kdc reads headers of at most {MAX_HEADER}"
        ));
    }
    if claimed > file_len.saturating_sub(8) {
        return Err(format!(
            "its safetensors header claims {claimed} bytes, more than the file holds"
        ));
    }
    Ok(claimed)
}

/// Bytes per element of the dtypes the runtime loads (as candle converts them to f32).
fn dtype_size(dtype: &str) -> Option<u64> {
    match dtype {
        "U8" => Some(1),
        "U16" | "I16" | "F16" | "BF16" => Some(2),
        "U32" | "I32" | "F32" => Some(4),
        "I64" | "F64" => Some(8),
        _ => None,
    }
}

fn check_header(header: &[u8], data_len: u64, layers: &[LayerSpec]) -> Result<(), String> {
    let json: serde_json::Value = serde_json::from_slice(header)
        .map_err(|_| "its safetensors header is not valid JSON".to_string())?;
    let Some(entries) = json.as_object() else {
        return Err("its safetensors header is not a JSON object".into());
    };
    let mut shapes = std::collections::HashMap::new();
    let mut ranges = Vec::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let (shape, range) = tensor_entry(name, entry, data_len)?;
        shapes.insert(name.as_str(), shape);
        ranges.push(range);
    }
    // safetensors requires the byte ranges to tile the data exactly, as its loader checks.
    ranges.sort_unstable();
    let mut end = 0;
    for (begin, stop) in ranges {
        if begin != end {
            return Err(format!(
                "its tensors' byte ranges leave a gap or overlap at byte {} of the data",
                begin.min(end)
            ));
        }
        end = stop;
    }
    if end != data_len {
        return Err(format!(
            "its tensors hold {end} bytes but the file holds {data_len} bytes of data"
        ));
    }
    for (name, shape) in kd_plan::parameter_shapes(layers) {
        let Some(found) = shapes.get(name.as_str()) else {
            return Err(format!("it has no tensor `{name}`"));
        };
        if found != &shape {
            return Err(format!(
                "tensor `{name}` has shape {found:?}, the model needs {shape:?}"
            ));
        }
    }
    Ok(())
}

/// One tensor's shape and byte range, checked against its dtype and the data's length.
fn tensor_entry(
    name: &str,
    entry: &serde_json::Value,
    data_len: u64,
) -> Result<(Vec<usize>, (u64, u64)), String> {
    let dtype = entry.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
    let size = dtype_size(dtype).ok_or_else(|| {
        format!("tensor `{name}` has dtype `{dtype}`, which kdc cannot load as f32")
    })?;
    let shape: Option<Vec<u64>> = entry
        .get("shape")
        .and_then(|s| s.as_array())
        .and_then(|dims| dims.iter().map(serde_json::Value::as_u64).collect());
    let shape = shape.ok_or_else(|| format!("tensor `{name}` has no valid shape"))?;
    let offsets: Option<Vec<u64>> = entry
        .get("data_offsets")
        .and_then(|s| s.as_array())
        .and_then(|o| o.iter().map(serde_json::Value::as_u64).collect());
    let (begin, end) = match offsets.as_deref() {
        Some(&[begin, end]) if begin <= end => (begin, end),
        _ => return Err(format!("tensor `{name}` has no valid data_offsets")),
    };
    if end > data_len {
        return Err(format!(
            "tensor `{name}` claims bytes {begin}..{end} of data but the file holds {data_len}"
        ));
    }
    let bytes = shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("tensor `{name}` has an impossible shape {shape:?}"))?;
    if bytes != end - begin {
        return Err(format!(
            "tensor `{name}` of shape {shape:?} and dtype {dtype} needs {bytes} bytes but has {}",
            end - begin
        ));
    }
    // Every dimension fits in usize here: their product, in bytes, fits in the file.
    Ok((shape.iter().map(|&d| d as usize).collect(), (begin, end)))
}
