//! kdc's runtime: runs a compiled [`kd_plan::Plan`] on CPU with candle and writes a run
//! folder (`metrics.jsonl`, `summary.json`, exported safetensors weights).
//!
//! Every random draw comes from [`rng`], keyed by the run's seed, so the same seed gives
//! bitwise the same weights and metrics.

pub mod data;
pub mod device;
pub mod distributed;
pub mod error;
pub mod limits;
pub mod model;
pub mod ops;
pub mod output;
pub mod rng;
pub mod train;

pub use distributed::World;
pub use error::RuntimeError;
pub use model::tape::LayerTime;
pub use output::progress::Progress;
pub use output::summary::{report, Summary};
pub use train::sweep::{run_sweep, SweepSummary};
pub use train::{configure_threads, on_worker, run_plan, RunOptions, StepTime};
