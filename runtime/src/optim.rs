//! Optimizers with PyTorch's exact update rules, fused into one pass over each parameter
//! (candle's own AdamW, built from many element-wise ops, costs more than the model).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
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
}

impl Optim {
    pub fn new(config: &Optimizer, params: usize) -> Self {
        Optim {
            config: config.clone(),
            slots: vec![Slot::default(); params],
        }
    }

    /// The state of every parameter, in the order of the parameter list.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Continues from saved state (see [`Optim::slots`]).
    pub fn restore(&mut self, slots: Vec<Slot>) {
        self.slots = slots;
    }

    /// One update of parameter `index` with gradient `grad` at learning rate `lr`, as
    /// `torch.optim.SGD` (dampening 0), `Adam` (L2 decay in the gradient) or `AdamW`
    /// (decoupled decay) would do it.
    pub fn update(&mut self, index: usize, param: &mut [f32], grad: &[f32], lr: f64) {
        if index >= self.slots.len() {
            self.slots.resize(index + 1, Slot::default());
        }
        let slot = &mut self.slots[index];
        slot.steps += 1;
        let first_step = slot.steps == 1;
        match self.config {
            Optimizer::Sgd {
                momentum,
                nesterov,
                weight_decay,
                ..
            } => {
                if momentum != 0.0 && first_step {
                    slot.first = vec![0.0; param.len()];
                }
                for i in 0..param.len() {
                    let p = f64::from(param[i]);
                    let mut g = f64::from(grad[i]) + weight_decay * p;
                    if momentum != 0.0 {
                        // The first step's buffer is the gradient itself.
                        let buf = if first_step {
                            g
                        } else {
                            momentum * f64::from(slot.first[i]) + g
                        };
                        slot.first[i] = buf as f32;
                        g = if nesterov { g + momentum * buf } else { buf };
                    }
                    param[i] = (p - lr * g) as f32;
                }
            }
            Optimizer::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => adam(
                slot,
                param,
                grad,
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                false,
            ),
            Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => adam(slot, param, grad, lr, beta1, beta2, eps, weight_decay, true),
        }
    }

    /// Clips the gradients of `params` to a global norm (if asked), then updates each
    /// parameter that received a gradient; updates nothing when a gradient is not finite.
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &GradStore,
        lr: f64,
        clip: Option<f64>,
    ) -> Result<Update> {
        let mut gradients: Vec<Option<Vec<f32>>> = Vec::with_capacity(params.len());
        for (name, var) in params {
            let grad = match grads.get(var.as_tensor()) {
                Some(g) => Some(
                    g.flatten_all()
                        .and_then(|g| g.to_vec1::<f32>())
                        .ctx_with(|| format!("reading the gradient of `{name}`"))?,
                ),
                None => None,
            };
            gradients.push(grad);
        }
        let norm = gradients
            .iter()
            .flatten()
            .flat_map(|g| g.iter())
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        // A finite sum of squares means every value is finite: the check costs nothing.
        if !norm.is_finite() {
            let parameter = params
                .iter()
                .zip(&gradients)
                .find(|(_, g)| g.as_ref().is_some_and(|g| g.iter().any(|v| !v.is_finite())))
                .map(|((name, _), _)| name.clone())
                .unwrap_or_default();
            return Ok(Update::NonFinite { parameter });
        }
        if let Some(max_norm) = clip {
            // As torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6), at most 1.
            let scale = (max_norm / (norm + 1e-6)).min(1.0);
            if scale < 1.0 {
                for g in gradients.iter_mut().flatten() {
                    for v in g.iter_mut() {
                        *v = (f64::from(*v) * scale) as f32;
                    }
                }
            }
        }
        for (index, ((name, var), grad)) in params.iter().zip(gradients).enumerate() {
            let Some(grad) = grad else { continue };
            let mut values = var
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .ctx_with(|| format!("reading `{name}`"))?;
            self.update(index, &mut values, &grad, lr);
            let updated = Tensor::from_vec(values, var.shape(), var.device())
                .ctx_with(|| format!("updating `{name}`"))?;
            var.set(&updated)
                .ctx_with(|| format!("updating `{name}`"))?;
        }
        Ok(Update::Applied { norm })
    }
}

#[allow(clippy::too_many_arguments)]
fn adam(
    slot: &mut Slot,
    param: &mut [f32],
    grad: &[f32],
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
) {
    if slot.steps == 1 {
        slot.first = vec![0.0; param.len()];
        slot.second = vec![0.0; param.len()];
    }
    let t = slot.steps as i32;
    let bias_correction1 = 1.0 - beta1.powi(t);
    let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
    let step_size = lr / bias_correction1;
    for i in 0..param.len() {
        let mut p = f64::from(param[i]);
        let mut g = f64::from(grad[i]);
        if decoupled {
            p *= 1.0 - lr * weight_decay;
        } else {
            g += weight_decay * p;
        }
        let m = beta1 * f64::from(slot.first[i]) + (1.0 - beta1) * g;
        let v = beta2 * f64::from(slot.second[i]) + (1.0 - beta2) * g * g;
        slot.first[i] = m as f32;
        slot.second[i] = v as f32;
        let denom = v.sqrt() / bias_correction2_sqrt + eps;
        param[i] = (p - step_size * m / denom) as f32;
    }
}
