//! Magnitude pruning (`prune(s) { sparsity: ... }`): a model takes another's weights, and a
//! mask per pruned tensor sets its smallest-magnitude values to zero and keeps them there
//! through training (gradients masked before the optimizer, weights masked after it).

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use kd_plan::NeuronGroup;

use super::Model;
use crate::error::{plan_error, Result, TensorContext};

impl Model {
    /// Takes every tensor (parameters and running statistics) of `source`, a model of the
    /// same architecture, and drops any masks.
    pub fn take_weights(&mut self, source: &Model) -> Result<()> {
        let names: Vec<&str> = self.state().map(|(n, _)| n).collect();
        let theirs: Vec<&str> = source.state().map(|(n, _)| n).collect();
        if names != theirs {
            return Err(plan_error(format!(
                "`{}` cannot take the weights of `{}`: their tensors differ",
                self.name, source.name
            )));
        }
        self.restore(&source.snapshot()?)?;
        self.masks.clear();
        Ok(())
    }

    /// Takes the weights of `source`, a wider model of the same layers, keeping in each
    /// group the `keep` neurons whose incoming weights have the largest L2 norm (ties to the
    /// first), in their order: the layer's weight rows and bias, its batch norms'
    /// channels, and its readers' weight columns.
    pub fn take_neurons(&mut self, source: &Model, groups: &[NeuronGroup]) -> Result<()> {
        let find = |name: &str| {
            source
                .state()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_tensor().clone())
                .ok_or_else(|| plan_error(format!("model `{}` has no `{name}`", source.name)))
        };
        let mut slices: Vec<(String, usize, Vec<u32>)> = Vec::new();
        for group in groups {
            let weight = find(&format!("{}.weight", group.layer))?;
            let values = weight
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .ctx_with(|| format!("reading `{}.weight`", group.layer))?;
            let row = values.len() / group.from.max(1);
            let norms: Vec<f64> = values
                .chunks(row.max(1))
                .map(|r| r.iter().map(|v| f64::from(*v) * f64::from(*v)).sum())
                .collect();
            let mut order: Vec<usize> = (0..norms.len()).collect();
            order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]).then(a.cmp(&b)));
            let mut kept: Vec<u32> = order[..group.keep.min(order.len())]
                .iter()
                .map(|&k| k as u32)
                .collect();
            kept.sort_unstable();
            slices.push((format!("{}.weight", group.layer), 0, kept.clone()));
            slices.push((format!("{}.bias", group.layer), 0, kept.clone()));
            for norm in &group.norms {
                for field in ["weight", "bias", "running_mean", "running_var"] {
                    slices.push((format!("{norm}.{field}"), 0, kept.clone()));
                }
            }
            let block = group.block.max(1) as u32;
            let columns: Vec<u32> = kept
                .iter()
                .flat_map(|&k| k * block..(k + 1) * block)
                .collect();
            for reader in &group.readers {
                slices.push((format!("{reader}.weight"), 1, columns.clone()));
            }
        }
        for (name, var) in self.state() {
            let mut tensor = find(name)?;
            for (_, axis, indices) in slices.iter().filter(|(n, _, _)| n == name) {
                let indices = Tensor::new(indices.as_slice(), tensor.device())
                    .and_then(|i| tensor.index_select(&i, *axis))
                    .ctx_with(|| format!("selecting the kept neurons of `{name}`"))?;
                tensor = indices;
            }
            if tensor.dims() != var.dims() {
                return Err(plan_error(format!(
                    "`{name}` of `{}` is {:?} after pruning, `{}` has {:?}",
                    source.name,
                    tensor.dims(),
                    self.name,
                    var.dims()
                )));
            }
            var.set(&tensor.contiguous().ctx("copying a pruned tensor")?)
                .ctx_with(|| format!("setting `{name}` of `{}`", self.name))?;
        }
        self.masks.clear();
        Ok(())
    }

    /// Prunes each tensor of `tensors` to `sparsity`: the `round(sparsity * n)` values of
    /// least magnitude are zero and masked. Values pruned before stay pruned (they go
    /// first); ties are broken by position, so the result is the same on every run.
    pub fn prune_to(&mut self, tensors: &[String], sparsity: f64) -> Result<()> {
        for name in tensors {
            let var = self
                .params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| {
                    plan_error(format!("model `{}` has no tensor `{name}`", self.name))
                })?;
            let context = || format!("pruning `{name}` of `{}`", self.name);
            let values = var
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .ctx_with(context)?;
            let previous = match self.masks.iter().find(|(n, _)| n == name) {
                Some((_, mask)) => Some(
                    mask.flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .ctx_with(context)?,
                ),
                None => None,
            };
            let was_pruned = |i: usize| previous.as_ref().is_some_and(|m| m[i] == 0.0);
            let already = (0..values.len()).filter(|&i| was_pruned(i)).count();
            let n = values.len();
            let count = ((sparsity * n as f64).round() as usize).max(already).min(n);
            let mut mask = vec![1.0f32; n];
            if count > 0 {
                let mut order: Vec<usize> = (0..n).collect();
                // A total order: pruned before, then magnitude, then position.
                let key = |&i: &usize| (!was_pruned(i), values[i].abs(), i);
                let cmp = |a: &usize, b: &usize| {
                    let (ka, kb) = (key(a), key(b));
                    ka.0.cmp(&kb.0)
                        .then(ka.1.total_cmp(&kb.1))
                        .then(ka.2.cmp(&kb.2))
                };
                if count < n {
                    order.select_nth_unstable_by(count, cmp);
                }
                for &i in &order[..count] {
                    mask[i] = 0.0;
                }
            }
            let mask = Tensor::from_vec(mask, var.dims(), var.device()).ctx_with(context)?;
            match self.masks.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = mask,
                None => self.masks.push((name.clone(), mask)),
            }
        }
        // In parameter order, so that checkpoints list them the same way every time.
        let order: Vec<&String> = self.params.iter().map(|(n, _)| n).collect();
        self.masks
            .sort_by_key(|(n, _)| order.iter().position(|o| *o == n));
        self.apply_masks()
    }

    /// Sets every masked value to zero.
    pub fn apply_masks(&self) -> Result<()> {
        for (name, mask) in &self.masks {
            let Some((_, var)) = self.params.iter().find(|(n, _)| n == name) else {
                continue;
            };
            var.as_tensor()
                .mul(mask)
                .and_then(|masked| var.set(&masked))
                .ctx_with(|| format!("masking `{name}` of `{}`", self.name))?;
        }
        Ok(())
    }

    /// Zeroes the gradients of masked values, so that the optimizer's moments and the
    /// gradient norm see only the weights that remain.
    pub fn mask_gradients(&self, grads: &mut GradStore) -> Result<()> {
        for (name, mask) in &self.masks {
            let Some((_, var)) = self.params.iter().find(|(n, _)| n == name) else {
                continue;
            };
            if let Some(grad) = grads.get(var.as_tensor()) {
                let masked = grad
                    .mul(mask)
                    .ctx_with(|| format!("masking the gradient of `{name}`"))?;
                grads.insert(var.as_tensor(), masked);
            }
        }
        Ok(())
    }

    /// The masks, by parameter name (empty unless the model is pruned).
    pub fn masks(&self) -> &[(String, Tensor)] {
        &self.masks
    }

    /// Copies of `source`'s masks (a model of the same architecture): its zeros stay zero
    /// here too.
    pub fn take_masks(&mut self, source: &Model) -> Result<()> {
        for (name, mask) in source.masks() {
            self.set_mask(name, mask.copy().ctx("copying a mask")?);
        }
        Ok(())
    }

    /// Puts back a saved mask.
    pub fn set_mask(&mut self, name: &str, mask: Tensor) {
        match self.masks.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = mask,
            None => self.masks.push((name.to_string(), mask)),
        }
    }

    /// Parameters that are not zero, and the fraction of the masked tensors' values that
    /// are pruned (`None` without masks: a model whose neurons were removed).
    pub fn sparsity(&self) -> Result<(usize, Option<f64>)> {
        let mut nonzero = 0;
        for (name, var) in &self.params {
            let values = var
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .ctx_with(|| format!("counting the weights of `{name}`"))?;
            nonzero += values.iter().filter(|v| **v != 0.0).count();
        }
        let (mut pruned, mut total) = (0usize, 0usize);
        for (name, mask) in &self.masks {
            let values = mask
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .ctx_with(|| format!("reading the mask of `{name}`"))?;
            pruned += values.iter().filter(|v| **v == 0.0).count();
            total += values.len();
        }
        let fraction = (total > 0).then(|| pruned as f64 / total as f64);
        Ok((nonzero, fraction))
    }
}
