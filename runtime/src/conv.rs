//! A conv1d's windows outside candle's graph (`crate::dense`): the input unfolded into
//! kernel windows (times the flattened kernel, the convolution), and the windows' gradient
//! folded back. candle's own CPU convolution runs its backward through direct loops
//! (`conv_transpose2d`) far slower than a matmul. (A conv2d runs image by image in
//! `kd_kernels::conv2d`.)

use crate::elementwise::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use kd_kernels::unfold::{fold1d, unfold1d, Window1d};

/// A conv1d's windows of `x` (contiguous, `[B, L, C]`) as `[B, L', k * C]`, a window
/// frame by frame per row.
pub(crate) fn windows1d(x: &Tensor, window: Window1d) -> candle_core::Result<Tensor> {
    x.apply_op1_no_bwd(&UnfoldOp(window))
}

/// The transpose of [`windows1d`]: window gradients `[B, L', k * C]` summed back onto the
/// input's shape `[B, L, C]`.
pub(crate) fn fold_windows1d(cols: &Tensor, window: Window1d) -> candle_core::Result<Tensor> {
    cols.apply_op1_no_bwd(&FoldOp(window))
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

struct FoldOp(Window1d);

impl CustomOp1 for FoldOp {
    fn name(&self) -> &'static str {
        "fold"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, g) = (l.dims()[0], self.0);
        Ok((
            CpuStorage::F32(fold1d(contiguous_f32(s, l)?, batch, &g)),
            Shape::from((batch, g.length, g.channels)),
        ))
    }
}
