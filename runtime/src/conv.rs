//! Convolutions as one large matrix product each way: the input unfolded into kernel
//! windows (a custom op whose backward folds the gradient back), times the flattened
//! kernel. candle's own CPU convolution runs its backward through direct loops
//! (`conv_transpose2d`) far slower than a matmul; this path keeps forward and backward on
//! gemm. Checked against candle's `conv2d` / `conv1d` (values and gradients) in
//! tests/ops.rs.

use crate::elementwise::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use kd_kernels::unfold::{fold1d, fold2d, unfold1d, unfold2d, Window1d, Window2d};

struct Unfold2d(Window2d);
struct Fold2d(Window2d);
struct Unfold1d(Window1d);
struct Fold1d(Window1d);

impl CustomOp1 for Unfold2d {
    fn name(&self) -> &'static str {
        "unfold2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let batch = l.dims()[0];
        let cols = unfold2d(contiguous_f32(s, l)?, batch, &self.0);
        Ok((
            CpuStorage::F32(cols),
            Shape::from((batch, self.0.row_len(), self.0.rows())),
        ))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        grad.contiguous()?.apply_op1(Fold2d(self.0)).map(Some)
    }
}

impl CustomOp1 for Fold2d {
    fn name(&self) -> &'static str {
        "fold2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let batch = l.dims()[0];
        let g = &self.0;
        let x = fold2d(contiguous_f32(s, l)?, batch, g);
        Ok((
            CpuStorage::F32(x),
            Shape::from((batch, g.channels, g.height, g.width)),
        ))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        grad.contiguous()?.apply_op1(Unfold2d(self.0)).map(Some)
    }
}

impl CustomOp1 for Unfold1d {
    fn name(&self) -> &'static str {
        "unfold1d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let batch = l.dims()[0];
        let cols = unfold1d(contiguous_f32(s, l)?, batch, &self.0);
        Ok((
            CpuStorage::F32(cols),
            Shape::from((batch, self.0.rows(), self.0.row_len())),
        ))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        grad.contiguous()?.apply_op1(Fold1d(self.0)).map(Some)
    }
}

impl CustomOp1 for Fold1d {
    fn name(&self) -> &'static str {
        "fold1d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let batch = l.dims()[0];
        let g = &self.0;
        let x = fold1d(contiguous_f32(s, l)?, batch, g);
        Ok((
            CpuStorage::F32(x),
            Shape::from((batch, g.length, g.channels)),
        ))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        grad.contiguous()?.apply_op1(Unfold1d(self.0)).map(Some)
    }
}

/// The most bytes of unfolded windows made at once. glibc serves allocations above 32 MiB
/// with fresh pages every time, and faulting them in cost more than the convolution's
/// matmul (a 115 MB unfold per step for the bench's teacher); larger batches go in chunks.
const UNFOLD_BYTES: usize = 8 << 20;

/// `x` `[B, C, H, W]` convolved with `weight` `[O, C, k, k]` (no bias): `[B, O, H', W']`,
/// as `weight @ unfold(x)` per sample, which is already in NCHW order.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (batch, channels, height, width) = x.dims4()?;
    let (out, _, kernel, _) = weight.dims4()?;
    let window = Window2d {
        channels,
        height,
        width,
        kernel,
        stride,
        padding,
    };
    let x = x.contiguous()?;
    let kernel = weight.reshape((out, window.row_len()))?;
    let per_sample = (window.row_len() * window.rows() * 4).max(1);
    let chunk = (UNFOLD_BYTES / per_sample).clamp(1, batch.max(1));
    let mut parts = Vec::with_capacity(batch.div_ceil(chunk));
    for start in (0..batch).step_by(chunk) {
        let samples = x.narrow(0, start, chunk.min(batch - start))?;
        parts.push(kernel.broadcast_matmul(&samples.apply_op1(Unfold2d(window))?)?);
    }
    let y = match parts.len() {
        1 => parts.swap_remove(0),
        _ => Tensor::cat(&parts, 0)?,
    };
    y.reshape((batch, out, window.out_height(), window.out_width()))
}

/// `x` `[B, L, C]` (channels last) convolved with `weight` `[O, C, k]` (stride 1, no bias):
/// `[B, L', O]`, channels last too, as one matmul of the unfolded windows with the kernel.
pub fn conv1d(x: &Tensor, weight: &Tensor, padding: usize) -> candle_core::Result<Tensor> {
    let (batch, length, channels) = x.dims3()?;
    let (out, _, kernel) = weight.dims3()?;
    let window = Window1d {
        length,
        channels,
        kernel,
        padding,
    };
    let (rows, row_len) = (window.rows(), window.row_len());
    let cols = x
        .contiguous()?
        .apply_op1(Unfold1d(window))?
        .reshape((batch * rows, row_len))?;
    // Rows hold a window frame by frame: the kernel as [O, k, C].
    let kernel = weight
        .permute((0, 2, 1))?
        .contiguous()?
        .reshape((out, row_len))?;
    cols.matmul(&kernel.t()?)?.reshape((batch, rows, out))
}
