//! The ops a model is built from, each one node of candle's graph with kdc's own forward
//! and backward (over `kd_kernels`), where candle's composed ops cost several passes: dense
//! layers with their bias and ReLU, batch norm, pooling, the LSTM recurrence, attention and
//! layer norm, and the elementwise activations. `grad_sink` is where they hand parameter
//! gradients over.
//!
//! The runtime's device seam ([`kernels_apply`]): kdc's kernels run on f32 CPU tensors;
//! on any other device (CUDA) a layer is composed from candle's ops, whose kernels candle
//! has for every device, and differentiates through candle's graph. A layer composed so
//! never uses candle's max-pool or conv1d backwards, which are wrong in candle 0.11 (the
//! max pool gathers its windows; the conv1d unfolds them into a matmul).

pub(crate) mod attention;
pub mod batch_norm;
pub mod dense;
pub mod elementwise;
pub mod grad_sink;
pub mod pooling;
pub mod recurrent;
pub mod sequence;

use std::cell::Cell;

use candle_core::{DType, Tensor};

thread_local! {
    static CPU_KERNELS: Cell<bool> = const { Cell::new(true) };
}

/// Whether kdc's own CPU kernels compute an op on `x`: an f32 tensor on the CPU, while
/// they are on. Everything else (a tensor on a GPU, the f64 references of the tests) goes
/// through the op composed from candle's ops, which run on every device candle has and
/// differentiate through candle's graph. The two compute the same values within float
/// rounding (tests/reverse_pass.rs, tests/ops.rs).
pub fn kernels_apply(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu() && cpu_kernels()
}

/// Turns kdc's CPU kernels off (or back on) for this thread: its models then run as on a
/// GPU, composed from candle's ops, which lets the CPU test the GPU's path. `run_plan`
/// takes its caller's setting to the thread it runs on.
pub fn set_cpu_kernels(on: bool) {
    CPU_KERNELS.with(|k| k.set(on));
}

/// Whether kdc's CPU kernels are on for this thread (see [`set_cpu_kernels`]).
pub fn cpu_kernels() -> bool {
    CPU_KERNELS.with(Cell::get)
}
