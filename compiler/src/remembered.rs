//! Facts the checker reads from data files, tokenizers and headers, kept for the life of
//! the process while the file is unchanged (same length and modification time): `kdc lsp`
//! checks on every keystroke without reading a data file again. For a folder (text data
//! laid out one folder per label) the checker reads only names, so the folder and its
//! sub-folders' modification times stamp it: adding, removing or renaming a file changes
//! them, and a few `stat`s cost far less than listing thousands of files.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// A file's length and modification time; for a folder, every folder's in it.
type Stamp = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Folders holding more folders than this are read every time.
const MOST_FOLDERS: usize = 10_000;

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return Some(vec![(path.to_path_buf(), meta.len(), meta.modified().ok())]);
    }
    let mut found = Vec::new();
    let mut linked = std::collections::HashSet::new();
    let mut folders = vec![(path.to_path_buf(), meta)];
    while let Some((dir, meta)) = folders.pop() {
        found.push((dir.clone(), 0, meta.modified().ok()));
        if found.len() > MOST_FOLDERS {
            return None;
        }
        for entry in std::fs::read_dir(&dir).ok()? {
            let entry = entry.ok()?;
            // The entry's own type: no `stat` for the files. A link is followed, as image
            // folders follow them (a loop ends at MOST_FOLDERS: read every time).
            let kind = entry.file_type().ok()?;
            if kind.is_dir() {
                folders.push((entry.path(), entry.metadata().ok()?));
            } else if kind.is_symlink() {
                if let Ok(meta) = std::fs::metadata(entry.path()) {
                    if meta.is_dir() {
                        // A link back to a folder already walked: a loop, which image
                        // folders refuse; read every time rather than walk it.
                        let real = std::fs::canonicalize(entry.path()).ok()?;
                        if !linked.insert(real) {
                            return None;
                        }
                        folders.push((entry.path(), meta));
                    }
                }
            }
        }
    }
    found.sort();
    Some(found)
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
