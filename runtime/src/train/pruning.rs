//! When pruned models are made (`prune(s) { ... }`): each from its source's weights when a
//! stage first uses it, or before the evaluations when none does; gradual pruning's steps.
//! A model pruned gradually by neurons trains its ramp stage at its source's widths, the
//! neurons it loses masked, and takes its own narrower architecture when that stage ends.

use std::collections::HashMap;

use kd_plan::{ModelSpec, Plan, Pruning, Role, Stage, ValueSchedule};

use super::checkpoint::RunState;
use super::Run;
use crate::error::{plan_error, Result};
use crate::model::Model;

impl Run<'_> {
    /// Makes every pruned model that `stage` uses (every one left, when `stage` is `None`)
    /// and has not been made in this seed.
    pub(super) fn make_pruned(
        &mut self,
        stage: Option<&Stage>,
        models: &mut HashMap<String, Model>,
    ) -> Result<()> {
        let plan = self.plan;
        for spec in &plan.models {
            let used = stage.is_none_or(|s| s.trains == spec.name || s.frozen.contains(&spec.name));
            // A baseline is made with the model it copies (see `make_one`).
            if used && spec.role != Role::Baseline && spec.pruned.is_some() {
                self.make_one(spec, models)?;
            }
        }
        Ok(())
    }

    /// Makes the pruned model `spec` (and its source first, when pruned too), unless made.
    pub(super) fn make_one(
        &mut self,
        spec: &ModelSpec,
        models: &mut HashMap<String, Model>,
    ) -> Result<()> {
        let Some(pruning) = &spec.pruned else {
            return Ok(());
        };
        if self.state.pruned.contains(&spec.name) {
            return Ok(());
        }
        // A pruned model's source may be pruned too: made first.
        if let Some(source) = self.plan.model(&pruning.from) {
            if source.pruned.is_some() {
                self.make_one(source, models)?;
            }
        }
        let mut model = models
            .remove(&spec.name)
            .ok_or_else(|| plan_error(format!("no model `{}`", spec.name)))?;
        let ramp = ramps_neurons(pruning);
        if ramp {
            match self.wide_model(spec, model.seed()) {
                Ok(wide) => model = wide,
                Err(e) => {
                    models.insert(spec.name.clone(), model);
                    return Err(e);
                }
            }
        }
        let made = self.model_ref(models, &pruning.from).and_then(|source| {
            if ramp {
                model.take_weights(source)?;
                model.mask_neurons(&pruning.neurons, first_sparsity(pruning))
            } else if pruning.neurons.is_empty() {
                model.take_weights(source)?;
                model.prune_to(&pruning.tensors, first_sparsity(pruning))
            } else {
                model.take_neurons(source, &pruning.neurons)
            }
        });
        // Its baselines start from exactly these weights and masks.
        let copies = self.plan.models.iter().filter(|b| {
            b.role == Role::Baseline && b.init_key == spec.init_key && b.pruned.is_some()
        });
        let mut done = vec![spec.name.clone()];
        if made.is_ok() {
            for baseline in copies {
                if let Some(mut copy) = models.remove(&baseline.name) {
                    if ramp {
                        copy = self.wide_model(baseline, copy.seed())?;
                    }
                    copy.take_weights(&model)?;
                    copy.take_masks(&model)?;
                    models.insert(baseline.name.clone(), copy);
                    done.push(baseline.name.clone());
                }
            }
        }
        models.insert(spec.name.clone(), model);
        made?;
        self.state.pruned.extend(done);
        Ok(())
    }
}

impl Run<'_> {
    /// A model of `spec`'s name at its source's widths (a gradual neuron ramp's).
    fn wide_model(&self, spec: &ModelSpec, seed: u64) -> Result<Model> {
        let mut model = Model::new_on(&wide_spec(self.plan, spec)?, seed, &self.device)?;
        self.configure(&mut model);
        Ok(model)
    }

    /// When `stage` ramps its model's neurons: the model takes its narrower architecture,
    /// keeping the neurons left unmasked.
    pub(super) fn narrow_after(
        &mut self,
        stage: &Stage,
        models: &mut HashMap<String, Model>,
    ) -> Result<()> {
        let Some(pruning) = gradual(self.plan, stage).filter(|p| ramps_neurons(p)) else {
            return Ok(());
        };
        let spec = self
            .plan
            .model(&stage.trains)
            .ok_or_else(|| plan_error(format!("no model `{}`", stage.trains)))?;
        let wide = models
            .remove(&spec.name)
            .ok_or_else(|| plan_error(format!("no model `{}`", spec.name)))?;
        let made = Model::new_on(spec, wide.seed(), &self.device).and_then(|mut narrow| {
            self.configure(&mut narrow);
            narrow.set_dropout_calls(wide.dropout_calls());
            narrow.take_unmasked_neurons(&wide, &pruning.neurons)?;
            Ok(narrow)
        });
        match made {
            Ok(narrow) => {
                models.insert(spec.name.clone(), narrow);
                Ok(())
            }
            Err(e) => {
                models.insert(spec.name.clone(), wide);
                Err(e)
            }
        }
    }
}

/// Whether `pruning` removes neurons gradually: over its ramp stage the model keeps its
/// source's widths, with neurons masked.
fn ramps_neurons(pruning: &Pruning) -> bool {
    pruning.gradual() && !pruning.neurons.is_empty()
}

/// `spec` at its source's widths: the architecture a gradual neuron ramp trains.
pub(super) fn wide_spec(plan: &Plan, spec: &ModelSpec) -> Result<ModelSpec> {
    let pruning = spec
        .pruned
        .as_ref()
        .ok_or_else(|| plan_error(format!("`{}` is not pruned", spec.name)))?;
    let source = plan
        .model(&pruning.from)
        .ok_or_else(|| plan_error(format!("no model `{}`", pruning.from)))?;
    let mut wide = source.clone();
    wide.name = spec.name.clone();
    wide.role = spec.role;
    wide.init_key = spec.init_key.clone();
    wide.init_from = None;
    wide.pruned = None;
    wide.quantized = None;
    Ok(wide)
}

/// Whether a run resumed at `state` holds `spec` at its source's widths: made, pruned
/// gradually by neurons, and its ramp stage not finished.
pub(super) fn wide_at(plan: &Plan, spec: &ModelSpec, state: &RunState) -> bool {
    if !spec.pruned.as_ref().is_some_and(ramps_neurons) || !state.pruned.contains(&spec.name) {
        return false;
    }
    plan.stages
        .iter()
        .position(|s| s.trains == spec.name && gradual(plan, s).is_some())
        .is_some_and(|ramp| ramp >= state.stage_index)
}

/// The sparsity a pruned model is made with: its constant, or its schedule's value before
/// the first step (`step(at: 0)` is already at its end).
fn first_sparsity(pruning: &Pruning) -> f64 {
    match pruning.sparsity {
        ValueSchedule::Constant { value } => value,
        ref schedule => schedule.at(0, 2),
    }
}

/// The stage's gradual pruning, when it is the first stage of a gradually pruned model, or
/// a baseline's copy of that stage.
pub(super) fn gradual<'p>(plan: &'p kd_plan::Plan, stage: &Stage) -> Option<&'p Pruning> {
    let spec = plan.model(&stage.trains)?;
    let pruning = spec.pruned.as_ref().filter(|p| p.gradual())?;
    // A baseline follows the model it copies.
    let model = match spec.role {
        Role::Baseline => plan.models.iter().find(|m| {
            m.role != Role::Baseline && m.init_key == spec.init_key && m.pruned == spec.pruned
        })?,
        _ => spec,
    };
    let first = plan
        .stages
        .iter()
        .find(|s| s.trains == model.name || s.frozen.contains(&model.name))?;
    let copies = match spec.role {
        Role::Baseline => stage.baseline_of.as_deref() == Some(first.name.as_str()),
        _ => first.name == stage.name,
    };
    copies.then_some(pruning)
}

/// The sparsity after `done` of a stage's `total` steps: the schedule runs from its first
/// value before any step to its last after the last step.
pub(super) fn sparsity_after(pruning: &Pruning, done: usize, total: usize) -> f64 {
    pruning.sparsity.at(done, total + 1)
}
