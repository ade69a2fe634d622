//! The ops a model is built from, each one node of candle's graph with kdc's own forward
//! and backward (over `kd_kernels`), where candle's composed ops cost several passes: dense
//! layers with their bias and ReLU, batch norm, pooling, the LSTM recurrence, attention and
//! layer norm, and the elementwise activations. `grad_sink` is where they hand parameter
//! gradients over. The runtime's device seam: every op here runs on candle's CPU storage.

pub(crate) mod attention;
pub mod batch_norm;
pub mod dense;
pub mod elementwise;
pub mod grad_sink;
pub mod pooling;
pub mod recurrent;
pub mod sequence;
