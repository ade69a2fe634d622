//! Optimizers with PyTorch's exact update rules, fused into one pass over each parameter
//! (candle's own AdamW, built from many element-wise ops, costs more than the model).

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Storage, Tensor, Var};
use kd_kernels::optim as kernels;
use kd_plan::Optimizer;

use crate::error::{Result, TensorContext};

/// Per-parameter state; a checkpoint saves and restores it whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slot {
    /// SGD momentum buffer, or Adam's first moment.
    pub first: Vec<f32>,
    /// Adam's second moment.
    pub second: Vec<f32>,
    /// Updates applied to this parameter (PyTorch keeps one count per parameter).
    pub steps: u64,
}

/// What [`Optim::step`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Every parameter with a gradient was updated; the global gradient norm before clipping.
    Applied { norm: f64 },
    /// Nothing was updated: the gradient of this parameter holds a NaN or an infinity.
    NonFinite { parameter: String },
}

/// An optimizer over a fixed list of parameters.
#[derive(Debug, Clone)]
pub struct Optim {
    config: Optimizer,
    slots: Vec<Slot>,
    /// For parameters that kdc's CPU kernels do not update (on a GPU): the moments as
    /// tensors beside the parameter; their slot's vectors stay empty until read back.
    moments: Vec<Moments>,
}

/// A slot's moments on the parameter's device.
#[derive(Debug, Clone, Default)]
struct Moments {
    first: Option<Tensor>,
    second: Option<Tensor>,
}

impl Optim {
    pub fn new(config: &Optimizer, params: usize) -> Self {
        Optim {
            config: config.clone(),
            slots: vec![Slot::default(); params],
            moments: vec![Moments::default(); params],
        }
    }

    /// The state of every parameter, in the order of the parameter list (moments kept on a
    /// device are copied back).
    pub fn slots(&self) -> Result<Vec<Slot>> {
        let mut slots = self.slots.clone();
        for (slot, moments) in slots.iter_mut().zip(&self.moments) {
            let host = |t: &Option<Tensor>| -> Result<Option<Vec<f32>>> {
                t.as_ref()
                    .map(|t| t.flatten_all().and_then(|t| t.to_vec1::<f32>()))
                    .transpose()
                    .ctx("reading the optimizer's state")
            };
            if let Some(first) = host(&moments.first)? {
                slot.first = first;
            }
            if let Some(second) = host(&moments.second)? {
                slot.second = second;
            }
        }
        Ok(slots)
    }

    /// Continues from saved state (see [`Optim::slots`]).
    pub fn restore(&mut self, slots: Vec<Slot>) {
        self.moments = vec![Moments::default(); slots.len()];
        self.slots = slots;
    }

    /// One update of parameter `index` with gradient `grad` at learning rate `lr`, as
    /// `torch.optim.SGD` (dampening 0), `Adam` (L2 decay in the gradient) or `AdamW`
    /// (decoupled decay) would do it.
    pub fn update(&mut self, index: usize, param: &mut [f32], grad: &[f32], lr: f64) {
        if index >= self.slots.len() {
            self.slots.resize(index + 1, Slot::default());
        }
        apply(&self.config, &mut self.slots[index], param, grad, lr, None);
    }

    /// Clips the gradients of `params` to a global norm (if asked), then updates each
    /// parameter that received a gradient; updates nothing when a gradient is not finite.
    /// Parameters are updated in place, in chunks spread over the worker threads: no copy
    /// of a parameter or gradient is made.
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &GradStore,
        lr: f64,
        clip: Option<f64>,
    ) -> Result<Update> {
        kd_kernels::warm::keep_warm();
        let mut gradients: Vec<Option<Tensor>> = Vec::with_capacity(params.len());
        for (name, var) in params {
            let grad = match grads.get(var.as_tensor()) {
                Some(g) => Some(
                    g.contiguous()
                        .ctx_with(|| format!("reading the gradient of `{name}`"))?,
                ),
                None => None,
            };
            gradients.push(grad);
        }
        let mut squares = Vec::with_capacity(params.len());
        // Off kdc's kernels (on a GPU), each sum stays on the device until one read of all.
        let mut on_device = Vec::new();
        for ((name, _), grad) in params.iter().zip(&gradients) {
            squares.push(match grad {
                Some(g) if crate::ops::kernels_apply(g) => with_values(g, kernels::sum_of_squares)
                    .ctx_with(|| format!("reading the gradient of `{name}`"))?,
                Some(g) => {
                    let sum = g
                        .to_dtype(candle_core::DType::F64)
                        .and_then(|g| g.sqr()?.sum_all())
                        .ctx_with(|| format!("reading the gradient of `{name}`"))?;
                    on_device.push((squares.len(), sum));
                    0.0
                }
                None => 0.0,
            });
        }
        if !on_device.is_empty() {
            let sums: Vec<Tensor> = on_device.iter().map(|(_, t)| t.clone()).collect();
            let values = Tensor::stack(&sums, 0)
                .and_then(|t| t.to_vec1::<f64>())
                .ctx("reading the gradients' norms")?;
            for ((index, _), value) in on_device.iter().zip(values) {
                squares[*index] = value;
            }
        }
        let norm = squares.iter().sum::<f64>().sqrt();
        // A finite sum of squares means every value is finite: the check costs nothing.
        if !norm.is_finite() {
            let parameter = params
                .iter()
                .zip(&squares)
                .find(|(_, s)| !s.is_finite())
                .map(|((name, _), _)| name.clone())
                .unwrap_or_default();
            return Ok(Update::NonFinite { parameter });
        }
        // As torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6), at most 1.
        let scale = clip
            .map(|max_norm| (max_norm / (norm + 1e-6)).min(1.0))
            .filter(|&scale| scale < 1.0);
        if self.slots.len() < params.len() {
            self.slots.resize(params.len(), Slot::default());
        }
        if self.moments.len() < params.len() {
            self.moments.resize(params.len(), Moments::default());
        }
        let state = self.slots.iter_mut().zip(&mut self.moments);
        for (((name, var), grad), (slot, moments)) in params.iter().zip(&gradients).zip(state) {
            let Some(grad) = grad else { continue };
            if !crate::ops::kernels_apply(var.as_tensor()) {
                let update = Composed {
                    config: &self.config,
                    lr,
                    scale,
                };
                update
                    .apply(slot, moments, var, grad)
                    .ctx_with(|| format!("updating `{name}`"))?;
                continue;
            }
            let op = InPlaceUpdate {
                config: &self.config,
                slot: std::sync::Mutex::new(slot),
                lr,
                scale,
            };
            var.as_tensor()
                .inplace_op2(grad, &op)
                .ctx_with(|| format!("updating `{name}`"))?;
        }
        Ok(Update::Applied { norm })
    }
}

/// Runs `f` on the values of a contiguous f32 CPU tensor, without copying them.
fn with_values<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> candle_core::Result<T> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) => Ok(f(&values[start..end])),
        _ => Err(candle_core::Error::Msg(
            "expected a contiguous f32 tensor on the CPU".into(),
        )),
    }
}

/// One parameter's update, applied by candle to the parameter's own storage.
struct InPlaceUpdate<'a> {
    config: &'a Optimizer,
    /// Locked once per update: candle's in-place ops see `&self`.
    slot: std::sync::Mutex<&'a mut Slot>,
    lr: f64,
    /// The clipping factor, when clipping shrinks the gradients.
    scale: Option<f64>,
}

impl InplaceOp2 for InPlaceUpdate<'_> {
    fn name(&self) -> &'static str {
        "optimizer-update"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        param_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(param), CpuStorage::F32(grad)) = (param, grad) else {
            candle_core::bail!("the optimizer updates f32 parameters only");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (
            param_layout.contiguous_offsets(),
            grad_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("the optimizer needs contiguous parameters and gradients");
        };
        let (param, grad) = (&mut param[p0..p1], &grad[g0..g1]);
        if param.len() != grad.len() {
            candle_core::bail!("a gradient's size differs from its parameter's");
        }
        let mut slot = self
            .slot
            .lock()
            .map_err(|_| candle_core::Error::Msg("optimizer state poisoned".into()))?;
        apply(self.config, &mut slot, param, grad, self.lr, self.scale);
        Ok(())
    }
}

/// The update of a parameter kdc's CPU kernels do not handle (on a GPU), from candle's
/// ops: the same rules as `kd_kernels::optim`, in f32 (SGD's kernel works in f64, so the
/// two agree closely, not bitwise).
struct Composed<'a> {
    config: &'a Optimizer,
    lr: f64,
    scale: Option<f64>,
}

impl Composed<'_> {
    fn apply(
        &self,
        slot: &mut Slot,
        moments: &mut Moments,
        param: &Var,
        grad: &Tensor,
    ) -> candle_core::Result<()> {
        slot.steps += 1;
        let first_step = slot.steps == 1;
        let p = param.as_tensor().detach();
        let n = p.elem_count();
        // A moment continues from the device, else from a restored checkpoint's vector.
        let previous = |on_device: &mut Option<Tensor>, host: &mut Vec<f32>| {
            let restored = match host.len() == n {
                true => Some(Tensor::from_slice(host, p.shape(), p.device())?),
                false => None,
            };
            host.clear();
            candle_core::Result::Ok(on_device.take().or(restored))
        };
        let g = match self.scale {
            Some(scale) => (grad.detach() * scale)?,
            None => grad.detach(),
        };
        let lr = self.lr;
        match *self.config {
            Optimizer::Sgd {
                momentum,
                nesterov,
                weight_decay,
                ..
            } => {
                let g = match weight_decay {
                    0.0 => g,
                    wd => (g + (&p * wd)?)?,
                };
                if momentum == 0.0 {
                    return param.set(&(&p - (g * lr)?)?);
                }
                let buffer = match (first_step, previous(&mut moments.first, &mut slot.first)?) {
                    (false, Some(b)) => ((b * momentum)? + &g)?,
                    _ => g.clone(),
                };
                let step = match nesterov {
                    true => (&g + (&buffer * momentum)?)?,
                    false => buffer.clone(),
                };
                moments.first = Some(buffer);
                param.set(&(&p - (step * lr)?)?)
            }
            Optimizer::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            }
            | Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                // The kernel's f32 constants, so that both round alike.
                let decoupled = matches!(self.config, Optimizer::AdamW { .. });
                let f = |v: f32| f64::from(v);
                let (b1, b2) = (beta1 as f32, beta2 as f32);
                let t = i32::try_from(slot.steps).unwrap_or(i32::MAX);
                let step_size = (lr / (1.0 - beta1.powi(t))) as f32;
                let correction = (1.0 - beta2.powi(t)).sqrt() as f32;
                let value = match decoupled {
                    true => (&p * f(1.0 - (lr * weight_decay) as f32))?,
                    false => p.clone(),
                };
                let g = match (decoupled, weight_decay) {
                    (false, wd) if wd != 0.0 => (g + (&value * f(wd as f32))?)?,
                    _ => g,
                };
                let first = previous(&mut moments.first, &mut slot.first)?;
                let second = previous(&mut moments.second, &mut slot.second)?;
                let fresh = |shape: &Tensor| shape.zeros_like();
                let (m0, v0) = match (first_step, first, second) {
                    (false, Some(m), Some(v)) => (m, v),
                    _ => (fresh(&p)?, fresh(&p)?),
                };
                let m = ((m0 * f(b1))? + (&g * f(1.0 - b1))?)?;
                let v = ((v0 * f(b2))? + ((&g * f(1.0 - b2))? * &g)?)?;
                let denominator = ((v.sqrt()? / f(correction))? + f(eps as f32))?;
                let updated = (value - ((&m * f(step_size))? / denominator)?)?;
                moments.first = Some(m);
                moments.second = Some(v);
                param.set(&updated)
            }
        }
    }
}

/// The rule of `config` on one parameter (the loops live in `kd-kernels`).
fn apply(
    config: &Optimizer,
    slot: &mut Slot,
    param: &mut [f32],
    grad: &[f32],
    lr: f64,
    scale: Option<f64>,
) {
    slot.steps += 1;
    let first_step = slot.steps == 1;
    let n = param.len();
    match *config {
        Optimizer::Sgd {
            momentum,
            nesterov,
            weight_decay,
            ..
        } => {
            if momentum != 0.0 && (first_step || slot.first.len() != n) {
                slot.first = vec![0.0; n];
            }
            let rule = kernels::Sgd {
                lr,
                momentum,
                nesterov,
                weight_decay,
                first_step,
                scale,
            };
            kernels::sgd(&rule, param, grad, &mut slot.first);
        }
        Optimizer::Adam {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        }
        | Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } => {
            if first_step || slot.first.len() != n || slot.second.len() != n {
                slot.first = vec![0.0; n];
                slot.second = vec![0.0; n];
            }
            let rule = kernels::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled: matches!(config, Optimizer::AdamW { .. }),
                step: slot.steps,
                scale,
            };
            kernels::adam(&rule, param, grad, &mut slot.first, &mut slot.second);
        }
    }
}
