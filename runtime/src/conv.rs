//! Convolutions as one large matrix product each way (`crate::dense`): the input unfolded
//! into kernel windows times the flattened kernel, and the windows' gradient folded back.
//! candle's own CPU convolution runs its backward through direct loops
//! (`conv_transpose2d`) far slower than a matmul; this path keeps forward and backward on
//! gemm.

use crate::elementwise::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use kd_kernels::unfold::{fold1d, fold2d, unfold1d, unfold2d, Window1d, Window2d};

/// A convolution's windows: unfolds an input into them and folds their gradients back.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unfold {
    /// `[B, L, C]` (channels last) into `[B, L', k * C]`, a window frame by frame per row.
    Conv1d(Window1d),
    /// `[B, C, H, W]` into `[C * k * k, B * H' * W']`: the batch side by side in each row.
    Conv2d(Window2d),
}

impl Unfold {
    /// The unfolded windows of `x` (contiguous), outside the graph.
    pub(crate) fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op1_no_bwd(&UnfoldOp(self))
    }

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

struct UnfoldOp(Unfold);

impl CustomOp1 for UnfoldOp {
    fn name(&self) -> &'static str {
        "unfold"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let batch = l.dims()[0];
        let x = contiguous_f32(s, l)?;
        Ok(match self.0 {
            Unfold::Conv1d(g) => (
                CpuStorage::F32(unfold1d(x, batch, &g)),
                Shape::from((batch, g.rows(), g.row_len())),
            ),
            Unfold::Conv2d(g) => (
                CpuStorage::F32(unfold2d(x, batch, &g)),
                Shape::from((g.row_len(), batch * g.rows())),
            ),
        })
    }
}

/// The most bytes of unfolded windows made at once. glibc serves allocations above 32 MiB
/// with fresh pages every time, and faulting them in cost more than the convolution's
/// matmul (a 115 MB unfold per step for the bench's teacher); larger batches go in chunks.
pub(crate) const UNFOLD_BYTES: usize = 8 << 20;
