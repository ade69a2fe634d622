//! Checks a safetensors file against a model's layers by reading its JSON header only.

use std::io::Read;
use std::path::Path;

use kd_plan::LayerSpec;

/// Headers larger than this are refused: real ones are kilobytes.
const MAX_HEADER: u64 = 64 << 20;

pub fn check(path: &Path, layers: &[LayerSpec]) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "it is too short for a safetensors file".to_string())?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || header_len + 8 > file_len {
        return Err(format!(
            "its safetensors header claims {header_len} bytes, more than the file holds"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|_| "its safetensors header is not valid JSON".to_string())?;
    for (name, shape) in kd_plan::parameter_shapes(layers) {
        let Some(entry) = json.get(&name) else {
            return Err(format!("it has no tensor `{name}`"));
        };
        let found: Vec<usize> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .map(|dims| {
                dims.iter()
                    .filter_map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .unwrap_or_default();
        if found != shape {
            return Err(format!(
                "tensor `{name}` has shape {found:?}, the model needs {shape:?}"
            ));
        }
    }
    Ok(())
}
