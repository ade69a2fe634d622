//! 2-d max pooling over NCHW planes, in parallel over planes, and its backward: each output
//! gradient goes to the first maximum of its window (as PyTorch does).

use rayon::prelude::*;

use crate::optim::CHUNK;

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

    /// The index in the plane of the first maximum of output `(oy, ox)`'s window (the first
    /// NaN when there is one, as the forward lets a NaN win). The maximum is found first
    /// with plain comparisons and then looked up: one data-dependent branch per window,
    /// where comparing and jumping at every value mispredicted about half the time.
    #[inline]
    fn argmax(&self, plane: &[f32], oy: usize, ox: usize) -> usize {
        let (y0, x0, k) = (oy * self.stride, ox * self.stride, self.kernel);
        let window_rows = || (y0..y0 + k).map(move |y| y * self.width + x0);
        let (mut best, mut nan) = (f32::NEG_INFINITY, false);
        for start in window_rows() {
            for &v in &plane[start..start + k] {
                best = if v > best { v } else { best };
                nan |= v.is_nan();
            }
        }
        for start in window_rows() {
            let row = &plane[start..start + k];
            let found = match nan {
                true => row.iter().position(|v| v.is_nan()),
                false => row.iter().position(|&v| v == best),
            };
            if let Some(dx) = found {
                return start + dx;
            }
        }
        y0 * self.width + x0
    }

    /// Output row `oy`'s maxima into `out`.
    #[inline]
    fn max_row(&self, plane: &[f32], oy: usize, out: &mut [f32], line: &mut [f32]) {
        if self.kernel == self.stride && self.max_row_tiled(plane, oy, out, line) {
            return;
        }
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

impl Pool2d {
    /// [`Pool2d::max_row`] for windows that tile the plane (kernel = stride, the usual
    /// `maxpool(2)`): the window's rows are first reduced element by element into `line`
    /// (contiguous, so it vectorises), then `line` in runs of `kernel`. No branches to
    /// mispredict: the general path's made pooling a sixth of cnn_distill's step. The
    /// comparisons drop NaNs, so rows holding one return false for the general path.
    #[inline]
    fn max_row_tiled(&self, plane: &[f32], oy: usize, out: &mut [f32], line: &mut [f32]) -> bool {
        let k = self.kernel;
        let rows = &plane[oy * k * self.width..(oy + 1) * k * self.width];
        let mut lines = rows.chunks_exact(self.width);
        let Some(first) = lines.next() else {
            return true;
        };
        line.copy_from_slice(first);
        for next in lines {
            for (m, &v) in line.iter_mut().zip(next) {
                *m = if v > *m { v } else { *m };
            }
        }
        if k == 2 {
            for (value, pair) in out.iter_mut().zip(line.chunks_exact(2)) {
                *value = if pair[1] > pair[0] { pair[1] } else { pair[0] };
            }
        } else {
            for (value, window) in out.iter_mut().zip(line.chunks_exact(k)) {
                *value = window
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            }
        }
        !rows.iter().any(|v| v.is_nan())
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
        .for_each_init(
            || vec![0f32; p.width],
            |line, (out, plane)| {
                for (oy, row) in out.chunks_mut(out_w).enumerate() {
                    p.max_row(plane, oy, row, line);
                }
            },
        );
    y
}

/// [`max_pool2d`] on this thread, into `y` (`planes` pooled planes): for kernels that
/// pool inside their own parallel loop. `line` is scratch of `p.width` values.
pub(crate) fn max_pool2d_into(x: &[f32], p: &Pool2d, y: &mut [f32], line: &mut [f32]) {
    let (plane_len, out_len) = (p.height * p.width, p.out_height() * p.out_width());
    if plane_len == 0 || out_len == 0 || p.kernel == 0 || p.kernel > p.height.min(p.width) {
        return;
    }
    let out_w = p.out_width();
    for (out, plane) in y.chunks_mut(out_len).zip(x.chunks(plane_len)) {
        for (oy, row) in out.chunks_mut(out_w).enumerate() {
            p.max_row(plane, oy, row, line);
        }
    }
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
        .for_each_init(Vec::new, |lanes, (dx, (plane, grad))| {
            // A NaN takes its window's gradient: planes holding one take the general path.
            let nan = plane.iter().fold(false, |nan, v| nan | v.is_nan());
            match (p.kernel, p.stride, nan) {
                (2, 2, false) => crate::vectorised(
                    #[inline(always)]
                    || p.backward_2x2(plane, grad, dx, lanes),
                ),
                _ => {
                    for (o, &g) in grad.iter().enumerate() {
                        dx[p.argmax(plane, o / out_w, o % out_w)] += g;
                    }
                }
            }
        });
    dx
}

impl Pool2d {
    /// The backward of one NaN-free plane for `maxpool(2)`: windows tile the plane, so
    /// every input position is written once, with the gradient where its window's first
    /// maximum is and zero elsewhere. A pair of rows is split into its four window corners
    /// (`lanes`, a row each) so that the selection runs along whole rows and vectorises;
    /// the search in [`Pool2d::argmax`] cost 7 ms on cnn_distill's first pool.
    #[inline(always)]
    fn backward_2x2(&self, plane: &[f32], grad: &[f32], dx: &mut [f32], lanes: &mut Vec<f32>) {
        let (width, out_w) = (self.width, self.out_width());
        lanes.resize(8 * out_w, 0.0);
        let (corners, picked) = lanes.split_at_mut(4 * out_w);
        let rows = plane.chunks_exact(2 * width);
        let dx_rows = dx.chunks_exact_mut(2 * width);
        for ((grad, rows), dx_rows) in grad.chunks_exact(out_w).zip(rows).zip(dx_rows) {
            // Corners in window order: top left, top right, bottom left, bottom right.
            for (row, lane) in rows
                .chunks_exact(width)
                .zip(corners.chunks_exact_mut(2 * out_w))
            {
                let (left, right) = lane.split_at_mut(out_w);
                for ((pair, l), r) in row.chunks_exact(2).zip(left.iter_mut()).zip(right) {
                    (*l, *r) = (pair[0], pair[1]);
                }
            }
            let [a, b, c, d] = split4(corners, out_w);
            let [pa, pb, pc, pd] = split4_mut(picked, out_w);
            for o in 0..out_w.min(grad.len()) {
                let (a, b, c, d, g) = (a[o], b[o], c[o], d[o], grad[o]);
                let best = a.max(b).max(c.max(d));
                let (ha, hb, hc) = (a == best, b == best, c == best);
                pa[o] = if ha { g } else { 0.0 };
                pb[o] = if hb & !ha { g } else { 0.0 };
                pc[o] = if hc & !(ha | hb) { g } else { 0.0 };
                pd[o] = if !(ha | hb | hc) { g } else { 0.0 };
            }
            for (row, lane) in dx_rows
                .chunks_exact_mut(width)
                .zip(picked.chunks_exact(2 * out_w))
            {
                let (left, right) = lane.split_at(out_w);
                for ((pair, &l), &r) in row.chunks_exact_mut(2).zip(left).zip(right) {
                    (pair[0], pair[1]) = (l, r);
                }
            }
        }
    }
}

fn split4(values: &[f32], n: usize) -> [&[f32]; 4] {
    let (ab, cd) = values.split_at(2 * n);
    let ((a, b), (c, d)) = (ab.split_at(n), cd.split_at(n));
    [a, b, c, d]
}

fn split4_mut(values: &mut [f32], n: usize) -> [&mut [f32]; 4] {
    let (ab, cd) = values.split_at_mut(2 * n);
    let ((a, b), (c, d)) = (ab.split_at_mut(n), cd.split_at_mut(n));
    [a, b, c, d]
}

/// Max over time of `x` `[batch, length, channels]` at the positions where `mask`
/// `[batch, length]` is nonzero (every position without a mask); a sample without a real
/// position pools to zeros. Returns `[batch, channels]` and, per output, the position its
/// maximum came from (`u32::MAX` for none), for the backward pass.
pub fn max_over_time(
    x: &[f32],
    mask: Option<&[f32]>,
    batch: usize,
    length: usize,
    channels: usize,
) -> (Vec<f32>, Vec<u32>) {
    let mut y = vec![0f32; batch * channels];
    let mut from = vec![u32::MAX; batch * channels];
    if batch * length * channels == 0 {
        return (y, from);
    }
    y.par_chunks_mut(channels)
        .zip(from.par_chunks_mut(channels))
        .zip(x.par_chunks(length * channels))
        .enumerate()
        .for_each(|(b, ((y, from), x))| {
            let mut seen = false;
            for (t, frame) in x.chunks(channels).enumerate() {
                if mask.is_some_and(|m| m[b * length + t] == 0.0) {
                    continue;
                }
                if !seen {
                    y.copy_from_slice(frame);
                    from.fill(t as u32);
                    seen = true;
                    continue;
                }
                for ((best, at), &v) in y.iter_mut().zip(from.iter_mut()).zip(frame) {
                    // The first maximum wins; a NaN wins and stays. Selects, not branches
                    // (which mispredicted on every other value).
                    let take = (v > *best) | (v.is_nan() & !best.is_nan());
                    *best = if take { v } else { *best };
                    *at = if take { t as u32 } else { *at };
                }
            }
        });
    (y, from)
}

/// The gradient of [`max_over_time`] for `x`: each output gradient at its maximum's place.
pub fn max_over_time_backward(
    grad: &[f32],
    from: &[u32],
    batch: usize,
    length: usize,
    channels: usize,
) -> Vec<f32> {
    let mut dx = vec![0f32; batch * length * channels];
    if batch * length * channels == 0 {
        return dx;
    }
    dx.par_chunks_mut(length * channels)
        .zip(grad.par_chunks(channels).zip(from.par_chunks(channels)))
        .for_each(|(dx, (grad, from))| {
            for (c, (&g, &t)) in grad.iter().zip(from).enumerate() {
                if let Some(slot) = dx.get_mut(t as usize * channels + c) {
                    *slot += g;
                }
            }
        });
    dx
}

/// The mean over time of `x` `[batch, length, channels]` at the positions where `mask`
/// `[batch, length]` is nonzero (every position without a mask): `[batch, channels]`; a
/// sample without a real position pools to zeros.
pub fn mean_over_time(
    x: &[f32],
    mask: Option<&[f32]>,
    batch: usize,
    length: usize,
    channels: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; batch * channels];
    if batch * length * channels == 0 {
        return y;
    }
    y.par_chunks_mut(channels)
        .zip(x.par_chunks(length * channels))
        .enumerate()
        .for_each(|(b, (y, x))| {
            let mut count = 0usize;
            for (t, frame) in x.chunks_exact(channels).enumerate() {
                if mask.is_some_and(|m| m[b * length + t] == 0.0) {
                    continue;
                }
                count += 1;
                for (s, &v) in y.iter_mut().zip(frame) {
                    *s += v;
                }
            }
            let scale = 1.0 / count.max(1) as f32;
            y.iter_mut().for_each(|v| *v *= scale);
        });
    y
}

/// The gradient of [`mean_over_time`] for `x`: each output gradient spread evenly over the
/// sample's real positions.
pub fn mean_over_time_backward(
    grad: &[f32],
    mask: Option<&[f32]>,
    batch: usize,
    length: usize,
    channels: usize,
) -> Vec<f32> {
    let mut dx = vec![0f32; batch * length * channels];
    if batch * length * channels == 0 {
        return dx;
    }
    dx.par_chunks_mut(length * channels)
        .zip(grad.par_chunks(channels))
        .enumerate()
        .for_each(|(b, (dx, grad))| {
            let real = |t: usize| mask.is_none_or(|m| m[b * length + t] != 0.0);
            let count = (0..length).filter(|&t| real(t)).count();
            let scale = 1.0 / count.max(1) as f32;
            for (t, frame) in dx.chunks_exact_mut(channels).enumerate() {
                if real(t) {
                    for (d, &g) in frame.iter_mut().zip(grad) {
                        *d = g * scale;
                    }
                }
            }
        });
    dx
}

/// Average pooling with windows that tile each plane (`kernel` = stride, dividing its
/// `height` and `width`): `planes` planes in, pooled planes out.
pub fn avg_pool2d_tiled(
    x: &[f32],
    planes: usize,
    height: usize,
    width: usize,
    kernel: usize,
) -> Vec<f32> {
    let k = kernel.max(1);
    let (out_h, out_w) = (height / k, width / k);
    let mut y = vec![0f32; planes * out_h * out_w];
    if y.is_empty() {
        return y;
    }
    let scale = 1.0 / (k * k) as f32;
    let per_task = (CHUNK / (height * width).max(1)).max(1);
    y.par_chunks_mut(per_task * out_h * out_w)
        .zip(x.par_chunks(per_task * height * width))
        .for_each(|(y, x)| {
            for (out, plane) in y
                .chunks_exact_mut(out_h * out_w)
                .zip(x.chunks_exact(height * width))
            {
                for (oy, row) in out.chunks_exact_mut(out_w).enumerate() {
                    for line in plane[oy * k * width..(oy + 1) * k * width].chunks_exact(width) {
                        for (o, window) in row.iter_mut().zip(line.chunks_exact(k)) {
                            *o += window.iter().sum::<f32>();
                        }
                    }
                    row.iter_mut().for_each(|v| *v *= scale);
                }
            }
        });
    y
}

/// The gradient of [`avg_pool2d_tiled`]: each output gradient spread evenly over its
/// window.
pub fn avg_pool2d_tiled_backward(
    grad: &[f32],
    planes: usize,
    height: usize,
    width: usize,
    kernel: usize,
) -> Vec<f32> {
    let k = kernel.max(1);
    let (out_h, out_w) = (height / k, width / k);
    let mut dx = vec![0f32; planes * height * width];
    if dx.is_empty() || out_h * out_w == 0 {
        return dx;
    }
    let scale = 1.0 / (k * k) as f32;
    let per_task = (CHUNK / (height * width).max(1)).max(1);
    dx.par_chunks_mut(per_task * height * width)
        .zip(grad.par_chunks(per_task * out_h * out_w))
        .for_each(|(dx, grad)| {
            for (plane, out) in dx
                .chunks_exact_mut(height * width)
                .zip(grad.chunks_exact(out_h * out_w))
            {
                for (y, line) in plane.chunks_exact_mut(width).enumerate() {
                    let row = &out[(y / k) * out_w..(y / k + 1) * out_w];
                    for (window, &g) in line.chunks_exact_mut(k).zip(row) {
                        window.fill(g * scale);
                    }
                }
            }
        });
    dx
}
