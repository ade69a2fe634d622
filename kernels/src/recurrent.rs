//! The elementwise part of an LSTM step, forward and backward, for every row of a batch at
//! once: the gate activations, the cell and hidden updates with the padding mask, and the
//! gradients back through them. The products with the recurrent weight stay with the
//! caller (a matmul per step). Gates are in PyTorch's order: input, forget, cell, output.
//! Buffers are step-major (`[L, B, ...]`), so each step's rows are contiguous.

use crate::activation::{sigmoid, tanh};

/// `[a, b, inner]` to `[b, a, inner]`: batch-major to step-major and back.
pub fn swap_leading(x: &[f32], a: usize, b: usize, inner: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for i in 0..a {
        for j in 0..b {
            let from = (i * b + j) * inner;
            let to = (j * a + i) * inner;
            out[to..to + inner].copy_from_slice(&x[from..from + inner]);
        }
    }
    out
}

/// One step's buffers, each `[B, ...]`.
pub struct StepForward<'a> {
    /// The gates' input parts, `[B, 4H]`.
    pub input: &'a [f32],
    /// `h_prev @ W_hh^T`, `[B, 4H]`; `None` at the first step (the state is zero).
    pub recurrent: Option<&'a [f32]>,
    /// 1 at real tokens, 0 at padding, `[B]`.
    pub mask: &'a [f32],
    /// Out: the activated gates, `[B, 4H]`.
    pub gates: &'a mut [f32],
    /// Out: `tanh(c_new)`, `[B, H]`.
    pub cell_tanh: &'a mut [f32],
    /// Out: the step's output, `m * h_new`, `[B, H]`.
    pub output: &'a mut [f32],
}

/// One step forward; `c` and `h` (`[B, H]`) go from the previous state to this step's (a
/// padded row keeps its state).
pub fn step_forward(step: StepForward, c: &mut [f32], h: &mut [f32]) {
    let hidden = c.len() / step.mask.len().max(1);
    crate::vectorised(
        #[inline(always)]
        || {
            for (r, &m) in step.mask.iter().enumerate() {
                let at = r * 4 * hidden..(r + 1) * 4 * hidden;
                let gates = &mut step.gates[at.clone()];
                let input = &step.input[at.clone()];
                match step.recurrent {
                    Some(rec) => {
                        for ((g, &a), &b) in gates.iter_mut().zip(input).zip(&rec[at]) {
                            *g = a + b;
                        }
                    }
                    None => gates.copy_from_slice(input),
                }
                let (i, rest) = gates.split_at_mut(hidden);
                let (f, rest) = rest.split_at_mut(hidden);
                let (g, o) = rest.split_at_mut(hidden);
                for v in i.iter_mut().chain(f.iter_mut()).chain(o.iter_mut()) {
                    *v = sigmoid(*v);
                }
                for v in g.iter_mut() {
                    *v = tanh(*v);
                }
                let row = r * hidden..(r + 1) * hidden;
                let (c, h) = (&mut c[row.clone()], &mut h[row.clone()]);
                let (tc, out) = (&mut step.cell_tanh[row.clone()], &mut step.output[row]);
                for j in 0..hidden {
                    let c_new = f[j] * c[j] + i[j] * g[j];
                    let t = tanh(c_new);
                    let h_new = o[j] * t;
                    tc[j] = t;
                    out[j] = m * h_new;
                    c[j] = m * c_new + (1.0 - m) * c[j];
                    h[j] = m * h_new + (1.0 - m) * h[j];
                }
            }
        },
    )
}

/// What one step backward reads, each `[B, ...]`.
pub struct StepBackward<'a> {
    /// The activated gates, `[B, 4H]`.
    pub gates: &'a [f32],
    pub cell_tanh: &'a [f32],
    /// The cell state the step started from, `[B, H]`.
    pub c_prev: &'a [f32],
    /// The gradient of the step's output, `[B, H]`.
    pub output_grad: &'a [f32],
    pub mask: &'a [f32],
    /// Out: the gradient of the gates' pre-activations, `[B, 4H]`.
    pub gates_grad: &'a mut [f32],
}

/// One step backward: `dh` and `dc` (`[B, H]`) arrive as the gradients of this step's
/// state and leave as those of the previous state, except for the path through the
/// recurrent product (`gates_grad @ W_hh`), which the caller adds to `dh`.
pub fn step_backward(step: StepBackward, dh: &mut [f32], dc: &mut [f32]) {
    let hidden = dh.len() / step.mask.len().max(1);
    crate::vectorised(
        #[inline(always)]
        || {
            for (r, &m) in step.mask.iter().enumerate() {
                let gates = &step.gates[r * 4 * hidden..(r + 1) * 4 * hidden];
                let (i, rest) = gates.split_at(hidden);
                let (f, rest) = rest.split_at(hidden);
                let (g, o) = rest.split_at(hidden);
                let row = r * hidden..(r + 1) * hidden;
                let (tc, c_prev) = (&step.cell_tanh[row.clone()], &step.c_prev[row.clone()]);
                let g_out = &step.output_grad[row.clone()];
                let (dh, dc) = (&mut dh[row.clone()], &mut dc[row]);
                let da = &mut step.gates_grad[r * 4 * hidden..(r + 1) * 4 * hidden];
                let (da_i, rest) = da.split_at_mut(hidden);
                let (da_f, rest) = rest.split_at_mut(hidden);
                let (da_g, da_o) = rest.split_at_mut(hidden);
                for j in 0..hidden {
                    let dh_new = m * (g_out[j] + dh[j]);
                    let dc_new = m * dc[j] + dh_new * o[j] * (1.0 - tc[j] * tc[j]);
                    da_i[j] = dc_new * g[j] * i[j] * (1.0 - i[j]);
                    da_f[j] = dc_new * c_prev[j] * f[j] * (1.0 - f[j]);
                    da_g[j] = dc_new * i[j] * (1.0 - g[j] * g[j]);
                    da_o[j] = dh_new * tc[j] * o[j] * (1.0 - o[j]);
                    // Directly to the previous state where this step was padding.
                    dc[j] = dc_new * f[j] + (1.0 - m) * dc[j];
                    dh[j] *= 1.0 - m;
                }
            }
        },
    )
}
