//! One direction of an LSTM as one node of candle's graph. Built from candle's ops, each
//! step was about twenty nodes (slices, a matmul, three sigmoids, two tanhs, products,
//! the mask's blends), each with its own allocation and, in the backward, a zeroed
//! gradient tensor: a BiLSTM over 48 tokens made two thousand of them. Here the steps run
//! as one loop that keeps the gate activations, and the backward runs through time by hand:
//! one `[B, H] @ [H, 4H]` product per step each way, the gate arithmetic fused around it,
//! and the recurrent weight's gradient as one product at the end. tests/recurrent.rs checks
//! values and gradients against the composition.

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Shape, Tensor};
use kd_kernels::recurrent::{step_backward, step_forward, swap_leading, StepBackward, StepForward};

use crate::ops::dense::sink;
use crate::ops::elementwise::{read_f32, Computed};
use crate::ops::grad_sink::GradSink;

/// The hidden states of one LSTM direction, `[B, L, H]`, from the input's part of every
/// gate `projected` (`x W_ih^T + b`, `[B, L, 4H]`, PyTorch's gate order: input, forget,
/// cell, output) and the recurrent weight `w_hh` (`[4H, H]`). `mask` (`[B, L]`, 1 at real
/// tokens) makes padded steps carry the state over and output zeros; `reverse` runs from
/// the last step to the first. The weight's gradient goes to `w_sink` when there is one.
pub fn lstm_direction(
    projected: &Tensor,
    w_hh: &Tensor,
    mask: Option<&Tensor>,
    reverse: bool,
    w_sink: Option<&GradSink>,
) -> candle_core::Result<Tensor> {
    if !crate::ops::kernels_apply(projected) {
        return lstm_direction_composed(projected, w_hh, mask, reverse);
    }
    let projected = projected.contiguous()?;
    let op = LstmOp::new(&projected, w_hh, mask, reverse, w_sink)?;
    projected.apply_op2(&w_hh.contiguous()?, op)
}

/// [`lstm_direction`] from candle's ops, step by step (every device, every float type):
/// `projected` `[B, L, 4H]` (gates i, f, g, o), `w_hh` `[4H, H]`; at a padded step the
/// state carries over and the output is zero.
pub fn lstm_direction_composed(
    projected: &Tensor,
    w_hh: &Tensor,
    mask: Option<&Tensor>,
    reverse: bool,
) -> candle_core::Result<Tensor> {
    let (batch, len, gates) = projected.dims3()?;
    let hidden = gates / 4;
    let w_t = w_hh.t()?;
    let sigmoid = |x: &Tensor| -> candle_core::Result<Tensor> { (x.neg()?.exp()? + 1.0)?.recip() };
    let mask = mask.map(|m| m.to_dtype(projected.dtype())).transpose()?;
    let mut h = Tensor::zeros((batch, hidden), projected.dtype(), projected.device())?;
    let mut c = h.clone();
    let mut steps: Vec<Option<Tensor>> = vec![None; len];
    let order: Vec<usize> = match reverse {
        false => (0..len).collect(),
        true => (0..len).rev().collect(),
    };
    for t in order {
        let a = (projected.narrow(1, t, 1)?.squeeze(1)? + h.matmul(&w_t)?)?;
        let part = |k: usize| a.narrow(1, k * hidden, hidden);
        let (i, f, g, o) = (
            sigmoid(&part(0)?)?,
            sigmoid(&part(1)?)?,
            part(2)?.tanh()?,
            sigmoid(&part(3)?)?,
        );
        let c_next = ((&f * &c)? + (&i * &g)?)?;
        let h_next = (&o * c_next.tanh()?)?;
        match &mask {
            Some(m) => {
                let m = m.narrow(1, t, 1)?;
                let keep = (1.0 - &m)?;
                c = (c_next.broadcast_mul(&m)? + c.broadcast_mul(&keep)?)?;
                h = (h_next.broadcast_mul(&m)? + h.broadcast_mul(&keep)?)?;
                steps[t] = Some(h_next.broadcast_mul(&m)?);
            }
            None => {
                c = c_next;
                h = h_next.clone();
                steps[t] = Some(h_next);
            }
        }
    }
    let steps: Vec<Tensor> = steps.into_iter().flatten().collect();
    Tensor::stack(&steps, 1)
}

/// [`lstm_direction`] outside candle's graph, for kdc's own reverse pass: the hidden
/// states and what computes the gates' gradient from theirs (the recurrent weight's going
/// to `w_sink`).
pub(crate) fn lstm_direction_taped(
    projected: &Tensor,
    w_hh: &Tensor,
    mask: Option<&Tensor>,
    reverse: bool,
    w_sink: &GradSink,
) -> candle_core::Result<(Tensor, LstmBackward)> {
    let projected = projected.contiguous()?.detach();
    let w = w_hh.detach().contiguous()?;
    let op = LstmOp::new(&projected, &w, mask, reverse, Some(w_sink))?;
    let (values, shape) = op.take_output()?;
    let y = Tensor::from_vec(values, shape, projected.device())?;
    Ok((y, LstmBackward { op, w, projected }))
}

/// What [`lstm_direction_taped`]'s backward needs.
pub(crate) struct LstmBackward {
    op: LstmOp,
    w: Tensor,
    projected: Tensor,
}

impl LstmBackward {
    /// The gates' gradient from the hidden states'; the weight's goes to its sink.
    pub(crate) fn backward(&self, grad: &Tensor) -> candle_core::Result<Tensor> {
        let grad = grad.contiguous()?;
        let (dp, dw) = read_f32(&grad, |g| self.op.backward(&self.w, g))?;
        sink(Some(dw), &self.op.w_sink)?;
        Tensor::from_vec(dp, self.projected.shape(), self.projected.device())
    }
}

impl LstmOp {
    fn new(
        projected: &Tensor,
        w_hh: &Tensor,
        mask: Option<&Tensor>,
        reverse: bool,
        w_sink: Option<&GradSink>,
    ) -> candle_core::Result<LstmOp> {
        let (batch, len, gates) = projected.dims3()?;
        let (rows, hidden) = w_hh.dims2()?;
        if gates != 4 * hidden || rows != gates {
            candle_core::bail!(
                "lstm: gates {:?} do not fit a recurrent weight {:?}",
                projected.dims(),
                w_hh.dims()
            );
        }
        let mask = match mask {
            Some(m) => {
                let m = m.to_dtype(candle_core::DType::F32)?.flatten_all()?;
                if m.elem_count() != batch * len {
                    candle_core::bail!(
                        "lstm: a mask of {} values for {batch}x{len}",
                        m.elem_count()
                    );
                }
                m.to_vec1::<f32>()?
            }
            None => vec![1.0; batch * len],
        };
        let shape = Steps {
            batch,
            len,
            hidden,
            reverse,
        };
        let w = w_hh.detach().contiguous()?;
        let (output, saved) = read_f32(projected, |p| forward(p, &w, &mask, shape))?;
        Ok(LstmOp {
            output: Computed::new(output.0, output.1),
            saved,
            shape,
            w_sink: w_sink.cloned(),
        })
    }

    fn take_output(&self) -> candle_core::Result<(Vec<f32>, Shape)> {
        self.output.take("lstm")
    }
}

#[derive(Clone, Copy, Debug)]
struct Steps {
    batch: usize,
    len: usize,
    hidden: usize,
    reverse: bool,
}

impl Steps {
    /// Time indices in the order the recurrence visits them.
    fn order(self) -> Box<dyn Iterator<Item = usize>> {
        match self.reverse {
            false => Box::new(0..self.len),
            true => Box::new((0..self.len).rev()),
        }
    }
}

/// What the backward needs of each step, step-major (`[L, B, *]`, by time index).
struct Saved {
    /// `i, f, g, o` after their activations, `[L, B, 4H]`.
    gates: Vec<f32>,
    /// `tanh(c_new)`, `[L, B, H]`.
    cell_tanh: Vec<f32>,
    /// The cell and hidden states the step started from, `[L, B, H]`.
    c_prev: Vec<f32>,
    h_prev: Vec<f32>,
    /// The mask, `[L, B]`.
    mask: Vec<f32>,
}

/// `[rows, k] @ b` for a small row-major `a`, through candle's matmul (gemm).
fn product(a: &[f32], rows: usize, b: &Tensor) -> candle_core::Result<Vec<f32>> {
    let k = a.len() / rows.max(1);
    Tensor::from_slice(a, (rows, k), &Device::Cpu)?
        .matmul(b)?
        .flatten_all()?
        .to_vec1()
}

fn forward(
    p: &[f32],
    w: &Tensor,
    mask: &[f32],
    s: Steps,
) -> candle_core::Result<((Vec<f32>, Shape), Saved)> {
    let (b, l, h) = (s.batch, s.len, s.hidden);
    let w_t = w.t()?.contiguous()?;
    let input = swap_leading(p, b, l, 4 * h);
    let mut out = vec![0f32; l * b * h];
    let mut saved = Saved {
        gates: vec![0f32; l * b * 4 * h],
        cell_tanh: vec![0f32; l * b * h],
        c_prev: vec![0f32; l * b * h],
        h_prev: vec![0f32; l * b * h],
        mask: swap_leading(mask, b, l, 1),
    };
    let mut hs = vec![0f32; b * h];
    let mut cs = vec![0f32; b * h];
    for (visited, t) in s.order().enumerate() {
        // The first step starts from zeros: no product.
        let recurrent = match visited {
            0 => None,
            _ => Some(product(&hs, b, &w_t)?),
        };
        let (rows, gates) = (
            t * b * h..(t + 1) * b * h,
            t * b * 4 * h..(t + 1) * b * 4 * h,
        );
        saved.c_prev[rows.clone()].copy_from_slice(&cs);
        saved.h_prev[rows.clone()].copy_from_slice(&hs);
        let step = StepForward {
            input: &input[gates.clone()],
            recurrent: recurrent.as_deref(),
            mask: &saved.mask[t * b..(t + 1) * b],
            gates: &mut saved.gates[gates],
            cell_tanh: &mut saved.cell_tanh[rows.clone()],
            output: &mut out[rows],
        };
        step_forward(step, &mut cs, &mut hs);
    }
    let out = swap_leading(&out, l, b, h);
    Ok(((out, Shape::from((b, l, h))), saved))
}

struct LstmOp {
    /// The output, computed before the op joins the graph; candle's forward takes it.
    output: Computed,
    saved: Saved,
    shape: Steps,
    w_sink: Option<GradSink>,
}

impl LstmOp {
    /// Back through time: the gradients of the gates' input parts (`[B, L, 4H]`) and of the
    /// recurrent weight (`[4H, H]`) from the output's gradient `[B, L, H]`.
    fn backward(&self, w: &Tensor, grad: &[f32]) -> candle_core::Result<(Vec<f32>, Tensor)> {
        let s = self.shape;
        let (b, l, h) = (s.batch, s.len, s.hidden);
        let saved = &self.saved;
        let grad = swap_leading(grad, b, l, h);
        // Gate gradients step-major, `[L, B, 4H]`, as the weight's product reads them.
        let mut d_gates = vec![0f32; l * b * 4 * h];
        let mut dh = vec![0f32; b * h];
        let mut dc = vec![0f32; b * h];
        let order: Vec<usize> = s.order().collect();
        for (back, &t) in order.iter().rev().enumerate() {
            let (rows, gates) = (
                t * b * h..(t + 1) * b * h,
                t * b * 4 * h..(t + 1) * b * 4 * h,
            );
            let step = StepBackward {
                gates: &saved.gates[gates.clone()],
                cell_tanh: &saved.cell_tanh[rows.clone()],
                c_prev: &saved.c_prev[rows.clone()],
                output_grad: &grad[rows],
                mask: &saved.mask[t * b..(t + 1) * b],
                gates_grad: &mut d_gates[gates.clone()],
            };
            step_backward(step, &mut dh, &mut dc);
            // The first step visited started from zeros: nothing flows further back.
            if back + 1 < order.len() {
                for (d, v) in dh.iter_mut().zip(product(&d_gates[gates], b, w)?) {
                    *d += v;
                }
            }
        }
        // dW = sum over steps of da^T @ h_prev: one product over all of them.
        let device = &Device::Cpu;
        let da_all = Tensor::from_slice(&d_gates, (l * b, 4 * h), device)?;
        let h_prev = Tensor::from_slice(&saved.h_prev, (l * b, h), device)?;
        let dw = da_all.t()?.matmul(&h_prev)?;
        Ok((swap_leading(&d_gates, l, b, 4 * h), dw))
    }
}

impl CustomOp2 for LstmOp {
    fn name(&self) -> &'static str {
        "lstm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, shape) = self.take_output()?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        projected: &Tensor,
        w: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dp, dw) = read_f32(&grad, |g| self.backward(&w.detach(), g))?;
        let dp = match projected.track_op() {
            true => Some(Tensor::from_vec(dp, projected.shape(), projected.device())?),
            false => None,
        };
        let dw = match w.track_op() {
            true => Some(dw),
            false => None,
        };
        Ok((dp, sink(dw, &self.w_sink)?))
    }
}
