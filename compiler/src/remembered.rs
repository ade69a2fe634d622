//! Facts the checker reads from data files, tokenizers and headers, kept for the life of
//! the process while the file is unchanged (same length and modification time): `kdc lsp`
//! checks on every keystroke without reading a data file again. A folder (text data laid
//! out one folder per label, an IDX folder) is listed again each time: stamping every file
//! in it costs more than the listing the checker does.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// A file's length and modification time.
type Stamp = (u64, Option<SystemTime>);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| (meta.len(), meta.modified().ok()))
}

type Entries = HashMap<(String, PathBuf, String), (Stamp, Box<dyn Any + Send>)>;

fn entries() -> &'static Mutex<Entries> {
    static ENTRIES: OnceLock<Mutex<Entries>> = OnceLock::new();
    ENTRIES.get_or_init(Mutex::default)
}

/// Forgets everything remembered: the next check reads every file again.
pub fn forget_files() {
    if let Ok(mut entries) = entries().lock() {
        entries.clear();
    }
}

/// `read()`, or what it gave before for the same `path` and `args` while `path` has not
/// changed.
pub(crate) fn remembered<T: Clone + Send + 'static>(
    path: &Path,
    args: &str,
    read: impl FnOnce() -> T,
) -> T {
    let Some(now) = stamp(path) else {
        return read();
    };
    let key = (
        std::any::type_name::<T>().to_string(),
        path.to_path_buf(),
        args.to_string(),
    );
    let entries = entries();
    if let Ok(entries) = entries.lock() {
        if let Some((stamp, value)) = entries.get(&key) {
            if *stamp == now {
                if let Some(value) = value.downcast_ref::<T>() {
                    return value.clone();
                }
            }
        }
    }
    let value = read();
    if let Ok(mut entries) = entries.lock() {
        entries.insert(key, (now, Box::new(value.clone())));
    }
    value
}
