//! What can stop a benchmark.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum BenchError {
    #[error("cannot write `{path}`: {source}")]
    #[diagnostic(code(kd::bench::io))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bench pipeline `{case}` does not compile:\n{messages}")]
    #[diagnostic(
        code(kd::bench::compile),
        help("the pipelines in bench/cases/ are part of kdc: this is a bug")
    )]
    Compile { case: String, messages: String },
    #[error("the bench pipeline `{case}` failed: {source}")]
    #[diagnostic(code(kd::bench::run))]
    Run {
        case: String,
        source: Box<kd_runtime::RuntimeError>,
    },
    #[error("the bench case `{case}` needs the MiniLM checkpoint, which is not in `{looked}`")]
    #[diagnostic(
        code(kd::bench::data),
        help("run `scripts/fetch-data.sh minilm` from the repository's root, and run the bench from there")
    )]
    MissingCheckpoint { case: String, looked: PathBuf },
    #[error("`{case}` recorded {got} timed steps, fewer than the {wanted} asked for")]
    #[diagnostic(code(kd::bench::steps))]
    Steps {
        case: String,
        got: usize,
        wanted: usize,
    },
    #[error("the layer bench's row `{row}` failed: {reason}")]
    #[diagnostic(
        code(kd::bench::layer),
        help("the rows of bench/src/layers.rs are part of kdc: this is a bug")
    )]
    Layer { row: String, reason: String },
    #[error("no row `{row}` in the layer table; the rows are {rows}")]
    #[diagnostic(code(kd::bench::row))]
    UnknownRow { row: String, rows: String },
    #[error("the matmul benchmark failed: {0}")]
    #[diagnostic(code(kd::bench::matmul))]
    Matmul(#[from] candle_core::Error),
    #[error("no .kd files in `{0}`")]
    #[diagnostic(code(kd::bench::examples), help("name the folder with --examples"))]
    NoExamples(PathBuf),
}

pub type Result<T> = std::result::Result<T, BenchError>;

pub fn io(path: &Path, source: std::io::Error) -> BenchError {
    BenchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| io(path, e))
}
