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
