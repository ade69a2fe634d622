//! 2-d max pooling over NCHW planes, in parallel over planes, and its backward: each output
//! gradient goes to the first maximum of its window (as PyTorch does).

use rayon::prelude::*;

/// A max pool's geometry: windows of `kernel` x `kernel`, `stride` apart, no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2d {
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl Pool2d {
    pub fn out_height(&self) -> usize {
        self.height.saturating_sub(self.kernel) / self.stride.max(1) + 1
    }

    pub fn out_width(&self) -> usize {
        self.width.saturating_sub(self.kernel) / self.stride.max(1) + 1
    }

    /// The index in the plane of the first maximum of output `(oy, ox)`'s window.
    #[inline]
    fn argmax(&self, plane: &[f32], oy: usize, ox: usize) -> usize {
        let (y0, x0) = (oy * self.stride, ox * self.stride);
        let mut best = y0 * self.width + x0;
        let mut best_value = plane[best];
        for y in y0..y0 + self.kernel {
            let start = y * self.width + x0;
            for (dx, &v) in plane[start..start + self.kernel].iter().enumerate() {
                // `>` keeps the first maximum; a NaN wins (and stays) so that it propagates.
                if v > best_value || (v.is_nan() && !best_value.is_nan()) {
                    best = start + dx;
                    best_value = v;
                }
            }
        }
        best
    }

    /// Output row `oy`'s maxima into `out`.
    #[inline]
    fn max_row(&self, plane: &[f32], oy: usize, out: &mut [f32]) {
        let y0 = oy * self.stride;
        let first = &plane[y0 * self.width..(y0 + 1) * self.width];
        for (ox, value) in out.iter_mut().enumerate() {
            let x0 = ox * self.stride;
            *value = first[x0..x0 + self.kernel]
                .iter()
                .fold(
                    f32::NEG_INFINITY,
                    |m, &v| if v > m || v.is_nan() { v } else { m },
                );
        }
        for y in y0 + 1..y0 + self.kernel {
            let line = &plane[y * self.width..(y + 1) * self.width];
            for (ox, value) in out.iter_mut().enumerate() {
                let x0 = ox * self.stride;
                for &v in &line[x0..x0 + self.kernel] {
                    if (v > *value || v.is_nan()) && !value.is_nan() {
                        *value = v;
                    }
                }
            }
        }
    }
}

/// `x` holds `planes` planes of `height * width`; returns the pooled planes.
pub fn max_pool2d(x: &[f32], planes: usize, p: &Pool2d) -> Vec<f32> {
    let (plane_len, out_len) = (p.height * p.width, p.out_height() * p.out_width());
    let mut y = vec![0f32; planes * out_len];
    if plane_len == 0 || out_len == 0 || p.kernel == 0 || p.kernel > p.height.min(p.width) {
        return y;
    }
    let out_w = p.out_width();
    y.par_chunks_mut(out_len)
        .zip(x.par_chunks(plane_len))
        .for_each(|(out, plane)| {
            for (oy, row) in out.chunks_mut(out_w).enumerate() {
                p.max_row(plane, oy, row);
            }
        });
    y
}

/// The gradient of [`max_pool2d`] for `x`, given the output gradient `grad`.
pub fn max_pool2d_backward(x: &[f32], grad: &[f32], planes: usize, p: &Pool2d) -> Vec<f32> {
    let (plane_len, out_len) = (p.height * p.width, p.out_height() * p.out_width());
    let mut dx = vec![0f32; planes * plane_len];
    if plane_len == 0 || out_len == 0 || p.kernel == 0 || p.kernel > p.height.min(p.width) {
        return dx;
    }
    let out_w = p.out_width();
    dx.par_chunks_mut(plane_len)
        .zip(x.par_chunks(plane_len).zip(grad.par_chunks(out_len)))
        .for_each(|(dx, (plane, grad))| {
            for (o, &g) in grad.iter().enumerate() {
                dx[p.argmax(plane, o / out_w, o % out_w)] += g;
            }
        });
    dx
}
