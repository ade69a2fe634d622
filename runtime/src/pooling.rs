//! Max pooling as one parallel pass with a backward that routes each gradient to its
//! window's first maximum (PyTorch's rule). candle's own CPU max pool is single-threaded,
//! and its backward rebuilds the gradient from several full-size tensor ops. Checked
//! against candle's max pool in tests/conv.rs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use kd_kernels::pool::{max_pool2d_backward, Pool2d};

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("max pooling takes contiguous f32 tensors"),
    }
}

struct MaxPool {
    kernel: usize,
    stride: usize,
}

impl MaxPool {
    fn geometry(&self, dims: &[usize]) -> candle_core::Result<(usize, Pool2d)> {
        let [b, c, height, width] = dims else {
            candle_core::bail!("max pooling takes [B, C, H, W], got {dims:?}");
        };
        if self.kernel == 0 || self.kernel > (*height).min(*width) {
            candle_core::bail!(
                "pooling window {} larger than the input {height}x{width}",
                self.kernel
            );
        }
        let pool = Pool2d {
            height: *height,
            width: *width,
            kernel: self.kernel,
            stride: self.stride.max(1),
        };
        Ok((b * c, pool))
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (planes, pool) = self.geometry(l.dims())?;
        let y = kd_kernels::pool::max_pool2d(contiguous_f32(s, l)?, planes, &pool);
        let dims = l.dims();
        Ok((
            CpuStorage::F32(y),
            Shape::from((dims[0], dims[1], pool.out_height(), pool.out_width())),
        ))
    }

    fn bwd(&self, arg: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let backward = MaxPoolBackward {
            kernel: self.kernel,
            stride: self.stride,
        };
        arg.apply_op2_no_bwd(&grad.contiguous()?, &backward)
            .map(Some)
    }
}

struct MaxPoolBackward {
    kernel: usize,
    stride: usize,
}

impl CustomOp2 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let pooling = MaxPool {
            kernel: self.kernel,
            stride: self.stride,
        };
        let (planes, pool) = pooling.geometry(x_layout.dims())?;
        let dx = max_pool2d_backward(
            contiguous_f32(x, x_layout)?,
            contiguous_f32(grad, grad_layout)?,
            planes,
            &pool,
        );
        Ok((CpuStorage::F32(dx), x_layout.shape().clone()))
    }
}

/// `x` `[B, C, H, W]` max-pooled with `kernel` x `kernel` windows `stride` apart.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool { kernel, stride })
}
