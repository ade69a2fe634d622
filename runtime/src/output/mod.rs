//! What a run shows and leaves behind: progress while it trains, predictions and metrics,
//! `summary.json` and the report, exported weights (ONNX), and the durable writes behind
//! every file of the run folder.

pub mod evaluate;
pub mod files;
pub mod metrics;
pub(crate) mod metrics_log;
pub mod onnx_export;
pub mod progress;
pub mod summary;
pub(crate) mod tensorboard;
