//! Durable writes: every file a run produces appears whole or not at all.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};

/// Writes `bytes` to `path` through `path.partial`: written, synced to disk, then renamed
/// over `path`, and the folder synced so the rename itself survives a crash. Whatever was
/// at `path` stays whole until the new file is.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Write { path, source }
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(write_error(parent))?;
    let temp = partial_path(path);
    let mut file = File::create(&temp).map_err(write_error(&temp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(write_error(&temp))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(write_error(path))?;
    // Syncing a folder is how POSIX makes a rename durable; elsewhere it may be refused.
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// `name.ext.partial`, beside `path`.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds a whole file to `hasher`, streaming it.
pub fn hash_file(hasher: &mut sha2::Sha256, path: &Path) -> Result<()> {
    let mut file = File::open(path).map_err(|source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    std::io::copy(&mut file, hasher).map_err(|source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Writes named tensors as a safetensors file, atomically, making its folder if needed.
pub fn write_safetensors(
    path: &Path,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let bytes = safetensors::serialize(tensors, None).map_err(|e| RuntimeError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_atomically(path, &bytes)
}
