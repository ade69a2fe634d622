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
        let mut kept = Vec::with_capacity(groups.len());
        for group in groups {
            let norms = source.row_norms(&group.layer, group.from)?;
            let mut order: Vec<usize> = (0..norms.len()).collect();
            order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]).then(a.cmp(&b)));
            let mut chosen: Vec<u32> = order[..group.keep.min(order.len())]
                .iter()
                .map(|&k| k as u32)
                .collect();
            chosen.sort_unstable();
            kept.push(chosen);
        }
        self.slice_neurons(source, groups, &kept)
    }

    /// Takes the weights of `source`, the same layers at full width with neurons masked
    /// (gradual structured pruning, [`Model::mask_neurons`]), keeping the neurons that are
    /// not: the model it was pruning towards.
    pub fn take_unmasked_neurons(&mut self, source: &Model, groups: &[NeuronGroup]) -> Result<()> {
        let mut kept = Vec::with_capacity(groups.len());
        for group in groups {
            let cut = source.cut_neurons(&group.layer, group.from)?;
            let alive: Vec<u32> = (0..group.from)
                .filter(|k| !cut[*k])
                .map(|k| k as u32)
                .collect();
            if alive.len() != group.keep {
                return Err(plan_error(format!(
                    "`{}` of `{}` has {} neurons left, not the {} its pruned model keeps",
                    group.layer,
                    source.name,
                    alive.len(),
                    group.keep
                )));
            }
            kept.push(alive);
        }
        self.slice_neurons(source, groups, &kept)
    }

    /// Masks the neurons of each group that `sparsity` removes (`round(sparsity * n)`, at
    /// most down to the group's `keep`): those cut before first, then those whose incoming
    /// weights have the least L2 norm (ties to the later). A cut neuron's weight row and
    /// bias and its readers' columns are masked, so it adds nothing to what reads it.
    pub fn mask_neurons(&mut self, groups: &[NeuronGroup], sparsity: f64) -> Result<()> {
        let mut masks: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let mut cuts = Vec::with_capacity(groups.len());
        for group in groups {
            let norms = self.row_norms(&group.layer, group.from)?;
            let before = self.cut_neurons(&group.layer, group.from)?;
            let count = ((sparsity * group.from as f64).round() as usize)
                .min(group.from.saturating_sub(group.keep));
            let mut order: Vec<usize> = (0..group.from).collect();
            order.sort_by(|&a, &b| {
                before[b]
                    .cmp(&before[a])
                    .then(norms[a].total_cmp(&norms[b]))
                    .then(b.cmp(&a))
            });
            cuts.push(order[..count].to_vec());
        }
        for (group, cut) in groups.iter().zip(&cuts) {
            let mut zero = |name: String, per_neuron: &dyn Fn(&[usize]) -> (usize, usize)| {
                let Some((_, var)) = self.params.iter().find(|(n, _)| *n == name) else {
                    return;
                };
                let dims = var.dims().to_vec();
                let at = match masks.iter().position(|(n, _, _)| *n == name) {
                    Some(i) => i,
                    None => {
                        let len = dims.iter().product();
                        masks.push((name.clone(), dims.clone(), vec![1.0; len]));
                        masks.len() - 1
                    }
                };
                let values = &mut masks[at].2;
                // Each neuron's values: `span` in a row of `row`, from `span * k`.
                let (row, span) = per_neuron(&dims);
                for k in cut {
                    for r in values.chunks_mut(row.max(1)) {
                        r[k * span..(k + 1) * span].fill(0.0);
                    }
                }
            };
            // The layer's rows (a row per neuron) and bias entries.
            let rows = |dims: &[usize]| {
                let row = dims.iter().product::<usize>();
                (row, row / dims[0].max(1))
            };
            zero(format!("{}.weight", group.layer), &rows);
            zero(format!("{}.bias", group.layer), &rows);
            // Each reader's columns: `block` input channels per neuron, in every row.
            let block = group.block.max(1);
            for reader in &group.readers {
                let columns = move |dims: &[usize]| {
                    let row = dims[1..].iter().product::<usize>();
                    (row, block * dims[2..].iter().product::<usize>())
                };
                zero(format!("{reader}.weight"), &columns);
            }
        }
        let device = self.device();
        for (name, dims, values) in masks {
            let mask = Tensor::from_vec(values, dims.as_slice(), &device)
                .ctx_with(|| format!("masking the neurons of `{name}`"))?;
            self.set_mask(&name, mask);
        }
        self.apply_masks()
    }

    /// The L2 norm of each of `from` rows of `LAYER.weight` (a neuron's incoming weights).
    fn row_norms(&self, layer: &str, from: usize) -> Result<Vec<f64>> {
        let name = format!("{layer}.weight");
        let values = self
            .state()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| plan_error(format!("model `{}` has no `{name}`", self.name)))?
            .1
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .ctx_with(|| format!("reading `{name}`"))?;
        let row = values.len() / from.max(1);
        Ok(values
            .chunks(row.max(1))
            .map(|r| r.iter().map(|v| f64::from(*v) * f64::from(*v)).sum())
            .collect())
    }

    /// Which of the `from` neurons of `layer` its weight's mask cuts (all false unmasked).
    fn cut_neurons(&self, layer: &str, from: usize) -> Result<Vec<bool>> {
        let name = format!("{layer}.weight");
        let Some((_, mask)) = self.masks.iter().find(|(n, _)| *n == name) else {
            return Ok(vec![false; from]);
        };
        let values = mask
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .ctx_with(|| format!("reading the mask of `{name}`"))?;
        let row = values.len() / from.max(1);
        Ok(values
            .chunks(row.max(1))
            .map(|r| r.iter().all(|v| *v == 0.0))
            .collect())
    }

    /// Takes `source`'s tensors, keeping in each group the neurons `kept` lists (sorted).
    fn slice_neurons(
        &mut self,
        source: &Model,
        groups: &[NeuronGroup],
        kept: &[Vec<u32>],
    ) -> Result<()> {
        let find = |name: &str| {
            source
                .state()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_tensor().clone())
                .ok_or_else(|| plan_error(format!("model `{}` has no `{name}`", source.name)))
        };
        let mut slices: Vec<(String, usize, Vec<u32>)> = Vec::new();
        for (group, kept) in groups.iter().zip(kept) {
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
