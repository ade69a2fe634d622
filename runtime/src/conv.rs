//! Convolutions as one large matrix product each way (`crate::dense`): the input unfolded
//! into kernel windows times the flattened kernel, and the windows' gradient folded back.
//! candle's own CPU convolution runs its backward through direct loops
//! (`conv_transpose2d`) far slower than a matmul; this path keeps forward and backward on
//! gemm.

use crate::elementwise::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, InplaceOp2, Layout, Shape, Tensor};
use kd_kernels::unfold::{fold1d, fold2d, unfold1d, unfold2d, Window1d, Window2d};

/// A convolution's windows, in the layout of their gradients that [`Unfold::fold`] sums
/// back onto the input (the layout [`windows1d`] and [`Windows2d`] unfold into).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unfold {
    /// `[B, L, C]` (channels last) into `[B, L', k * C]`, a window frame by frame per row.
    Conv1d(Window1d),
    /// `[B, C, H, W]` into `[B * H' * W', k * k * C]`: a row per output position, each
    /// kernel row of its window a contiguous run.
    Conv2d(Window2d),
}

/// A conv1d's windows of `x` (contiguous, `[B, L, C]`) as `[B, L', k * C]`, outside the
/// graph. (A conv2d's go through [`Windows2d`].)
pub(crate) fn windows1d(x: &Tensor, window: Window1d) -> candle_core::Result<Tensor> {
    x.apply_op1_no_bwd(&UnfoldOp(window))
}

impl Unfold {
    /// Window gradients (the unfolded shape) summed back onto the input's shape.
    pub(crate) fn fold(
        self,
        s: &CpuStorage,
        l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(s, l)?;
        Ok(match self {
            Unfold::Conv1d(g) => {
                let batch = l.dims()[0];
                (
                    CpuStorage::F32(fold1d(cols, batch, &g)),
                    Shape::from((batch, g.length, g.channels)),
                )
            }
            Unfold::Conv2d(g) => {
                let batch = cols.len() / (g.rows() * g.row_len()).max(1);
                (
                    CpuStorage::F32(fold2d(cols, batch, &g)),
                    Shape::from((batch, g.channels, g.height, g.width)),
                )
            }
        })
    }
}

/// A conv2d's windows of a batch, chunk after chunk, in one buffer: each chunk's unfold
/// writes over the last one's (allocating 8 MiB per chunk, zeroed and faulted in, cost
/// a third of the unfold).
pub(crate) struct Windows2d {
    window: Window2d,
    cols: Tensor,
    chunk: usize,
}

impl Windows2d {
    /// A buffer for up to `chunk` samples of `x`'s windows.
    pub(crate) fn new(window: Window2d, x: &Tensor, chunk: usize) -> candle_core::Result<Self> {
        let cols = Tensor::zeros(
            (chunk * window.rows(), window.row_len()),
            candle_core::DType::F32,
            x.device(),
        )?;
        Ok(Windows2d {
            window,
            cols,
            chunk,
        })
    }

    /// The windows of `x`'s samples `start..start + len` (at most `chunk` of them), as
    /// `[len * H' * W', k * k * C]`. Valid until the next call.
    pub(crate) fn unfold(
        &self,
        x: &Tensor,
        start: usize,
        len: usize,
    ) -> candle_core::Result<Tensor> {
        if len > self.chunk {
            candle_core::bail!("unfold: {len} samples in a buffer for {}", self.chunk);
        }
        let cols = self.cols.narrow(0, 0, len * self.window.rows())?;
        cols.inplace_op2(
            &x.narrow(0, start, len)?.contiguous()?,
            &UnfoldInto(self.window),
        )?;
        Ok(cols)
    }
}

struct UnfoldInto(Window2d);

impl InplaceOp2 for UnfoldInto {
    fn name(&self) -> &'static str {
        "unfold-into"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let x = contiguous_f32(src, src_l)?;
        match (dst, dst_l.contiguous_offsets()) {
            (CpuStorage::F32(cols), Some((start, end))) => {
                unfold2d(x, &self.0, &mut cols[start..end]);
                Ok(())
            }
            _ => candle_core::bail!("unfold: expected a contiguous f32 buffer"),
        }
    }
}

struct UnfoldOp(Window1d);

impl CustomOp1 for UnfoldOp {
    fn name(&self) -> &'static str {
        "unfold"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, g) = (l.dims()[0], self.0);
        Ok((
            CpuStorage::F32(unfold1d(contiguous_f32(s, l)?, batch, &g)),
            Shape::from((batch, g.rows(), g.row_len())),
        ))
    }
}

/// The most bytes of unfolded windows made at once. glibc serves allocations above 32 MiB
/// with fresh pages every time, and faulting them in cost more than the convolution's
/// matmul (a 115 MB unfold per step for the bench's teacher); larger batches go in chunks.
pub(crate) const UNFOLD_BYTES: usize = 8 << 20;

/// The most bytes of a convolution's product made at once: a chunk's product is moved
/// into the output (transposed, biased) while it is still in L2 (2 MiB a core here); the
/// first layer of the bench's CNN, one 12.8 MB product before, went from 8.6-9.6 to 7.4 ms.
pub(crate) const PRODUCT_BYTES: usize = 2 << 20;
