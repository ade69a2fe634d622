//! The end of a seed: every `evaluate` declaration's metrics, and each evaluated model's
//! single-sample latency.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use kd_plan::Role;

use super::Run;
use crate::error::{plan_error, Result, TensorContext};
use crate::model::Model;
use crate::output::evaluate::predict;
use crate::output::metrics::{split_metrics, SplitMetrics};

impl Run<'_> {
    /// Per-sample CPU latency of each evaluated model: the median of single-sample
    /// forwards (batch of one, eval mode, no cache) over the first samples of its first
    /// evaluation split, after one warm-up forward.
    pub(super) fn latencies(
        &self,
        models: &mut HashMap<String, Model>,
    ) -> Result<BTreeMap<String, f64>> {
        const SAMPLES: usize = 20;
        let mut out = BTreeMap::new();
        for evaluation in &self.plan.evaluations {
            let dataset = self.dataset(&evaluation.data)?;
            let n = dataset.split(&evaluation.split)?.len().min(SAMPLES);
            if n == 0 {
                continue;
            }
            for name in &evaluation.models {
                if out.contains_key(name) {
                    continue;
                }
                let model = models
                    .get_mut(name)
                    .ok_or_else(|| plan_error(format!("no model `{name}`")))?;
                let mut times = Vec::with_capacity(n);
                for position in 0..=n {
                    let batch =
                        self.build_batch(&evaluation.data, &evaluation.split, &[position % n])?;
                    let started = Instant::now();
                    let outputs = model.forward_with(&batch.x, false, false, false)?;
                    // candle is eager, but make sure the result exists before the clock stops.
                    if let Some((_, t)) = outputs.last() {
                        t.sum_all().ctx("timing a forward")?;
                    }
                    if position > 0 {
                        times.push(started.elapsed().as_secs_f64() * 1e3);
                    }
                }
                times.sort_by(f64::total_cmp);
                out.insert(name.clone(), times[times.len() / 2]);
            }
        }
        Ok(out)
    }

    /// Every evaluation: each model on each split, keyed by split name (`data/split` when
    /// two data sources share a split name).
    pub(super) fn evaluate(
        &self,
        models: &mut HashMap<String, Model>,
    ) -> Result<BTreeMap<String, BTreeMap<String, SplitMetrics>>> {
        let mut results: BTreeMap<String, BTreeMap<String, SplitMetrics>> = BTreeMap::new();
        let mut split_keys: HashMap<String, String> = HashMap::new();
        // Each teacher's predictions on each split, computed once.
        let mut teacher_cache: HashMap<(String, String, String), Vec<u32>> = HashMap::new();
        let teachers: Vec<String> = self
            .plan
            .models
            .iter()
            .filter(|m| m.role == Role::Teacher)
            .map(|m| m.name.clone())
            .collect();
        for evaluation in &self.plan.evaluations {
            let dataset = self.dataset(&evaluation.data)?;
            let split = dataset.split(&evaluation.split)?;
            let labels = dataset.split_labels(split)?;
            let key = match split_keys.get(&evaluation.split) {
                Some(owner) if *owner != evaluation.data => {
                    format!("{}/{}", evaluation.data, evaluation.split)
                }
                _ => {
                    split_keys.insert(evaluation.split.clone(), evaluation.data.clone());
                    evaluation.split.clone()
                }
            };
            let class_names = self.class_names(&evaluation.data);
            for name in &evaluation.models {
                let role =
                    self.plan.model(name).map(|m| m.role).ok_or_else(|| {
                        plan_error(format!("evaluation of unknown model `{name}`"))
                    })?;
                // Students and baselines are compared with the teachers: the first declared
                // for `agreement`, and every one when there are several (`agreement_with`),
                // each that reads the same samples and predicts as many classes.
                let compared: Vec<String> = match role {
                    Role::Student | Role::Baseline if teachers.len() > 1 => {
                        let this = self.plan.model(name);
                        teachers
                            .iter()
                            .filter(|t| {
                                let teacher = self.plan.model(t);
                                teacher.zip(this).is_some_and(|(t, m)| comparable(t, m))
                            })
                            .cloned()
                            .collect()
                    }
                    Role::Student | Role::Baseline => teachers.iter().take(1).cloned().collect(),
                    _ => Vec::new(),
                };
                for teacher in &compared {
                    let key = (
                        teacher.clone(),
                        evaluation.data.clone(),
                        evaluation.split.clone(),
                    );
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        teacher_cache.entry(key)
                    {
                        let model = models
                            .get_mut(teacher)
                            .ok_or_else(|| plan_error(format!("no model `{teacher}`")))?;
                        slot.insert(predict(model, dataset, split)?.classes);
                    }
                }
                let of = |teacher: &String| {
                    teacher_cache.get(&(
                        teacher.clone(),
                        evaluation.data.clone(),
                        evaluation.split.clone(),
                    ))
                };
                // `agreement` stays the first declared teacher's, as with one teacher.
                let teacher_predictions = match teachers.first() {
                    Some(first) if compared.contains(first) => of(first),
                    _ => None,
                };
                let model = models
                    .get_mut(name)
                    .ok_or_else(|| plan_error(format!("no model `{name}`")))?;
                let predictions = predict(model, dataset, split)?;
                let metrics = split_metrics(
                    &dataset.name,
                    &labels,
                    &predictions.classes,
                    &predictions.confidences,
                    &class_names,
                    teacher_predictions.map(Vec::as_slice),
                );
                let mut metrics = metrics;
                if teachers.len() > 1 {
                    for teacher in &compared {
                        if let Some(t) = of(teacher) {
                            let agreed = crate::output::metrics::agreement(&predictions.classes, t);
                            metrics.agreement_with.insert(teacher.clone(), agreed);
                        }
                    }
                }
                results
                    .entry(name.clone())
                    .or_default()
                    .insert(key.clone(), metrics);
            }
        }
        Ok(results)
    }
}

/// Whether `teacher`'s predictions can be compared with `model`'s: the same input and the
/// same number of classes out.
fn comparable(teacher: &kd_plan::ModelSpec, model: &kd_plan::ModelSpec) -> bool {
    let classes = |m: &kd_plan::ModelSpec| {
        m.taps
            .iter()
            .find(|t| t.name == "output")
            .map(|t| t.ty.shape.clone())
    };
    teacher.input == model.input && classes(teacher) == classes(model)
}
