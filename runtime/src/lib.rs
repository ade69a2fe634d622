//! kdc's runtime: runs a compiled [`kd_plan::Plan`] on CPU with candle and writes a run
//! folder (`metrics.jsonl`, `summary.json`, exported safetensors weights).
//!
//! Every random draw comes from [`rng`], keyed by the run's seed, so the same seed gives
//! bitwise the same weights and metrics.

pub(crate) mod attention;
pub mod augment;
pub mod batch_norm;
pub mod bert;
pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod dense;
pub mod elementwise;
pub mod error;
pub mod evaluate;
pub mod exec;
pub mod files;
pub mod grad_sink;
pub mod graph;
pub mod limits;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod onnx_export;
pub mod optim;
pub mod pooling;
pub mod progress;
pub mod recurrent;
pub mod rng;
pub mod sequence;
pub mod summary;
pub(crate) mod tape;

pub use error::RuntimeError;
pub use exec::{configure_threads, on_worker, run_plan, RunOptions, StepTime};
pub use progress::Progress;
pub use summary::{report, Summary};
pub use tape::LayerTime;
