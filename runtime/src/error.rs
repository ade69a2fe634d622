//! The runtime's one error type: everything that can stop a run, with a code per kind.

use std::path::PathBuf;

/// Why a run stopped. Messages are lowercase; file names are in backticks.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RuntimeError {
    #[error("cannot read `{}`", path.display())]
    #[diagnostic(code(kd::run::io), help("check that the file exists and is readable"))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write `{}`", path.display())]
    #[diagnostic(code(kd::run::write))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("bad data file `{}`: {reason}", path.display())]
    #[diagnostic(code(kd::run::data_file))]
    DataFile { path: PathBuf, reason: String },

    #[error("data `{data}`: {reason}")]
    #[diagnostic(code(kd::run::data))]
    Data {
        data: String,
        reason: String,
        #[help]
        help: Option<String>,
    },

    #[error("weights `{}`: {reason}", path.display())]
    #[diagnostic(
        code(kd::run::weights),
        help("the file must hold every parameter of the model with the shapes the model declares")
    )]
    Weights { path: PathBuf, reason: String },

    #[error("this kdc was built without CUDA, and the run asks for `cuda:{index}`")]
    #[diagnostic(
        code(kd::run::device),
        help("on a machine with an NVIDIA GPU run `kdc-cuda` instead (scripts/build-cuda.sh builds it; `cargo build --features cuda` is the same build), or run on the CPU: `--device cpu`, or `device: cpu` / `auto` in the pipeline")
    )]
    NoCuda { index: usize },

    #[error("`cuda:{index}` is not available: {reason}")]
    #[diagnostic(
        code(kd::run::device),
        help("`nvidia-smi` lists the GPUs this machine has; `--device cpu` runs on the CPU")
    )]
    NoGpu { index: usize, reason: String },

    #[error("stage `{stage}` ran out of memory on `{device}` at batch size {batch}")]
    #[diagnostic(
        code(kd::run::out_of_memory),
        help("free the GPU (`nvidia-smi` shows what holds it) and continue with `kdc run --resume` (the run folder keeps the last checkpoint), or start again with a smaller batch (`--set stage.{stage}.batch=N`)")
    )]
    OutOfMemory {
        device: String,
        stage: String,
        batch: usize,
    },

    #[error(
        "the NVIDIA driver ({driver}) is older than this kdc's CUDA {}",
        crate::device::CUDA_VERSION
    )]
    #[diagnostic(
        code(kd::run::device),
        help("CUDA 13.0 needs driver 580 or newer: update the driver, or run on the CPU with `--device cpu`")
    )]
    OldDriver { driver: String },

    /// Boxed: its span and texts would make every `Result` of the runtime large.
    #[error(transparent)]
    #[diagnostic(transparent)]
    NonFinite(Box<NonFiniteError>),

    #[error("the checkpoint `{}` cannot be used: {reason}", path.display())]
    #[diagnostic(code(kd::run::checkpoint))]
    Checkpoint {
        path: PathBuf,
        reason: String,
        #[help]
        help: Option<String>,
    },

    #[error("interrupted; the run stopped at {position}")]
    #[diagnostic(
        code(kd::run::interrupted),
        help("continue it with `kdc run --resume {}`", dir.display())
    )]
    Interrupted { dir: PathBuf, position: String },

    #[error("distributed run: {reason}")]
    #[diagnostic(code(kd::run::distributed))]
    Distributed {
        reason: String,
        #[help]
        help: Option<String>,
    },

    /// The Plan contradicts itself; the compiler should have refused it.
    #[error("invalid plan: {0}")]
    #[diagnostic(code(kd::run::plan))]
    Plan(String),

    #[error("tensor operation failed in {context}")]
    #[diagnostic(code(kd::run::tensor))]
    Tensor {
        context: String,
        #[source]
        source: candle_core::Error,
    },

    #[error("cannot write the summary")]
    #[diagnostic(code(kd::run::summary))]
    Json(#[from] serde_json::Error),
}

/// A NaN or an infinity in a training step, with the `.kd` term to blame.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{what} of stage `{stage}` is not finite at epoch {epoch}, step {step}")]
#[diagnostic(code(kd::run::non_finite), help("{help}"))]
pub struct NonFiniteError {
    /// `the loss`, or ``the gradient of `s.fc1.weight` ``.
    pub what: String,
    pub stage: String,
    pub epoch: usize,
    pub step: usize,
    /// Where in the `.kd` file: the loss term first, then what made it non-finite.
    #[label(collection)]
    pub labels: Vec<miette::LabeledSpan>,
    pub help: String,
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Attaches a context to candle errors: `tensor_op.ctx("forward of `t`")?`.
pub trait TensorContext<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T>;
    fn ctx_with(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> TensorContext<T> for candle_core::Result<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| RuntimeError::Tensor {
            context: context.into(),
            source,
        })
    }
    fn ctx_with(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| RuntimeError::Tensor {
            context: context(),
            source,
        })
    }
}

pub(crate) fn plan_error(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Plan(reason.into())
}
