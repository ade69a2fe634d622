//! Max pooling as one parallel pass with a backward that routes each gradient to its
//! window's first maximum (PyTorch's rule). candle's own CPU max pool is single-threaded,
//! and its backward rebuilds the gradient from several full-size tensor ops. Checked
//! against candle's max pool in tests/ops.rs.

use crate::ops::elementwise::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use kd_kernels::pool::{max_pool2d_backward, Pool2d};

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

/// The input gradient of [`max_pool2d`] from its output's, for kdc's own reverse pass.
pub(crate) fn max_pool2d_grad(
    x: &Tensor,
    y: &Tensor,
    grad: &Tensor,
    kernel: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    match (MaxPool { kernel, stride }).bwd(x, y, grad)? {
        Some(dx) => Ok(dx),
        None => candle_core::bail!("max pool: no input gradient"),
    }
}

/// Masked max over time: `x` `[B, L, C]`, `mask` `[B, L]` (1 at real tokens) to `[B, C]`;
/// the gradient goes to each maximum's position.
struct MaxOverTime;

/// The pooled values, each one's position, and `(B, L, C)`.
struct Pooled {
    values: Vec<f32>,
    from: Vec<u32>,
    dims: (usize, usize, usize),
}

fn max_over_time_parts(
    x: &CpuStorage,
    xl: &Layout,
    mask: &CpuStorage,
    ml: &Layout,
) -> candle_core::Result<Pooled> {
    let [b, l, c] = xl.dims() else {
        candle_core::bail!("max over time takes [B, L, C], got {:?}", xl.dims());
    };
    let mask = contiguous_f32(mask, ml)?;
    if mask.len() != b * l {
        candle_core::bail!("a padding mask that does not match [B, L]");
    }
    let x = contiguous_f32(x, xl)?;
    let (values, from) = kd_kernels::pool::max_over_time(x, Some(mask), *b, *l, *c);
    Ok(Pooled {
        values,
        from,
        dims: (*b, *l, *c),
    })
}

impl CustomOp2 for MaxOverTime {
    fn name(&self) -> &'static str {
        "max-over-time"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let pooled = max_over_time_parts(x, xl, m, ml)?;
        let (b, _, c) = pooled.dims;
        Ok((CpuStorage::F32(pooled.values), Shape::from((b, c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        mask: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(mask, &grad.contiguous()?, &MaxOverTimeBackward)?;
        Ok((Some(dx), None))
    }
}

struct MaxOverTimeBackward;

impl candle_core::CustomOp3 for MaxOverTimeBackward {
    fn name(&self) -> &'static str {
        "max-over-time-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let pooled = max_over_time_parts(x, xl, m, ml)?;
        let (b, l, c) = pooled.dims;
        let grad = contiguous_f32(g, gl)?;
        let dx = kd_kernels::pool::max_over_time_backward(grad, &pooled.from, b, l, c);
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// `x` `[B, L, C]` max-pooled over the positions where `mask` `[B, L]` is 1 (all
/// positions without a mask); a sample with no real position pools to zeros.
pub fn max_over_time(x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (b, l, _) = x.dims3()?;
    let mask = match mask {
        Some(m) => m.to_dtype(candle_core::DType::F32)?.contiguous()?,
        None => Tensor::ones((b, l), candle_core::DType::F32, x.device())?,
    };
    x.contiguous()?.apply_op2(&mask, MaxOverTime)
}

/// The input gradient of [`max_over_time`] from its output's, for kdc's own reverse pass.
pub(crate) fn max_over_time_backward(
    x: &Tensor,
    mask: Option<&Tensor>,
    y: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<Tensor> {
    let (b, l, _) = x.dims3()?;
    let mask = match mask {
        Some(m) => m.to_dtype(candle_core::DType::F32)?.contiguous()?,
        None => Tensor::ones((b, l), candle_core::DType::F32, x.device())?,
    };
    match candle_core::CustomOp2::bwd(&MaxOverTime, &x.contiguous()?, &mask, y, grad)? {
        (Some(dx), _) => Ok(dx),
        _ => candle_core::bail!("max over time: no input gradient"),
    }
}

/// Whether pooling windows of `kernel` every `stride` tile `x`'s planes (`x` `[B, C, H,
/// W]`, stride = kernel, dividing H and W): what [`avg_pool2d_tiled`] takes.
pub(crate) fn tiles_planes(x: &Tensor, kernel: usize, stride: usize) -> bool {
    x.rank() == 4
        && kernel == stride
        && kernel > 0
        && x.dim(2).is_ok_and(|h| h % kernel == 0)
        && x.dim(3).is_ok_and(|w| w % kernel == 0)
}

/// Average pooling of `x` `[B, C, H, W]` whose `kernel` x `kernel` windows tile each plane
/// (see [`tiles_planes`]), outside the graph.
pub(crate) fn avg_pool2d_tiled(x: &Tensor, kernel: usize) -> candle_core::Result<Tensor> {
    let (batch, channels, height, width) = x.dims4()?;
    if kernel == 0 || height % kernel != 0 || width % kernel != 0 {
        candle_core::bail!("avg pool: {kernel} x {kernel} windows do not tile {height}x{width}");
    }
    let y = crate::ops::elementwise::read_f32(x, |x| {
        Ok(kd_kernels::pool::avg_pool2d_tiled(
            x,
            batch * channels,
            height,
            width,
            kernel,
        ))
    })?;
    Tensor::from_vec(
        y,
        (batch, channels, height / kernel, width / kernel),
        x.device(),
    )
}

/// The mean of `x` `[B, L, C]` over the positions where `mask` `[B, L]` is 1 (all without
/// a mask), `[B, C]`, outside the graph; a row with no real position pools to zeros.
pub(crate) fn mean_over_time(x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (b, l, c) = x.dims3()?;
    let y = crate::ops::elementwise::read_f32(x, |x| match mask {
        Some(m) => crate::ops::elementwise::read_f32(m, |m| {
            Ok(kd_kernels::pool::mean_over_time(x, Some(m), b, l, c))
        }),
        None => Ok(kd_kernels::pool::mean_over_time(x, None, b, l, c)),
    })?;
    Tensor::from_vec(y, (b, c), x.device())
}

/// The first position of `x` `[B, L, C]`, `[B, C]`, outside the graph.
pub(crate) fn first_of_sequence(x: &Tensor) -> candle_core::Result<Tensor> {
    x.narrow(1, 0, 1)?.squeeze(1)?.contiguous()
}

/// The gradient of [`avg_pool2d_tiled`] for an input of `height` x `width` planes: each
/// output gradient spread evenly over its window.
pub(crate) fn avg_pool2d_tiled_backward(
    grad: &Tensor,
    kernel: usize,
    (height, width): (usize, usize),
) -> candle_core::Result<Tensor> {
    let (batch, channels, _, _) = grad.dims4()?;
    let dx = crate::ops::elementwise::read_f32(grad, |g| {
        Ok(kd_kernels::pool::avg_pool2d_tiled_backward(
            g,
            batch * channels,
            height,
            width,
            kernel,
        ))
    })?;
    Tensor::from_vec(dx, (batch, channels, height, width), grad.device())
}

/// The gradient of [`mean_over_time`] for an input of `dims` `[B, L, C]`.
pub(crate) fn mean_over_time_backward(
    grad: &Tensor,
    mask: Option<&Tensor>,
    (b, l, c): (usize, usize, usize),
) -> candle_core::Result<Tensor> {
    use crate::ops::elementwise::read_f32;
    use kd_kernels::pool::mean_over_time_backward as kernel;
    let dx = read_f32(grad, |g| match mask {
        Some(m) => read_f32(m, |m| Ok(kernel(g, Some(m), b, l, c))),
        None => Ok(kernel(g, None, b, l, c)),
    })?;
    Tensor::from_vec(dx, (b, l, c), grad.device())
}

/// The gradient of [`first_of_sequence`] for an input of `dims` `[B, L, C]`: each row's
/// gradient at its first position, zeros elsewhere.
pub(crate) fn first_of_sequence_backward(
    grad: &Tensor,
    (b, l, c): (usize, usize, usize),
) -> candle_core::Result<Tensor> {
    let dx = crate::ops::elementwise::read_f32(grad, |g| {
        let mut dx = vec![0f32; b * l * c];
        for (frame, g) in dx.chunks_exact_mut(l * c).zip(g.chunks_exact(c)) {
            frame[..c].copy_from_slice(g);
        }
        Ok(dx)
    })?;
    Tensor::from_vec(dx, (b, l, c), grad.device())
}
