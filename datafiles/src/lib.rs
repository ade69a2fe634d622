//! Data files other than IDX, CSV and text (NumPy arrays, image folders, Parquet and Arrow
//! tables), read the same way by the checker (headers only: shapes, types and counts
//! before anything runs) and by the runtime (the values), so that the two cannot disagree
//! about a file.

pub mod images;
pub mod npy;
pub mod npz;
pub mod table;

/// Why a file could not be read: a sentence naming what is wrong, for a diagnostic that
/// names the file itself.
pub type Reason = String;
