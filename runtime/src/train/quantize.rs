//! int8 models (`quantize(s) on data.split`): made after every stage, from their source's
//! weights, calibrated in eval mode on a sample of the split drawn from the seed. A
//! quantisation-aware one (`aware: true`) is made (weights, masks and input ranges) when
//! the first stage that uses it starts, trains fake-quantised, and is put in int8 with
//! its ranges after the last stage.

use std::collections::HashMap;

use candle_core::Tensor;
use kd_plan::{ModelSpec, Quantization, Role, Stage};

use super::Run;
use crate::error::{plan_error, Result, TensorContext};
use crate::model::Model;

/// Calibration batches, made one at a time.
type Batches<'a> = dyn Iterator<Item = Result<Tensor>> + 'a;

/// Calibration batches: as many samples at once as evaluation takes.
const BATCH: usize = 256;
/// Calibration samples without `samples:`.
pub const DEFAULT_SAMPLES: usize = 1024;

impl Run<'_> {
    /// Makes every int8 model of the plan (each seed, after its stages).
    pub(super) fn make_quantized(
        &mut self,
        seed: u64,
        models: &mut HashMap<String, Model>,
    ) -> Result<()> {
        let plan = self.plan;
        for spec in &plan.models {
            let Some(q) = &spec.quantized else { continue };
            let mut model = models
                .remove(&spec.name)
                .ok_or_else(|| plan_error(format!("no model `{}`", spec.name)))?;
            let made = match q.aware {
                true => model.finish_aware(),
                false => self.model_ref(models, &q.from).and_then(|source| {
                    model.take_weights(source)?;
                    self.calibrate_on(seed, &spec.name, q, &mut |batches| model.calibrate(batches))
                }),
            };
            models.insert(spec.name.clone(), model);
            made?;
        }
        Ok(())
    }

    /// Makes every quantisation-aware model that `stage` uses and that is not made yet
    /// (restored from a checkpoint, it is), with its baselines.
    pub(super) fn make_aware(
        &mut self,
        seed: u64,
        stage: &Stage,
        models: &mut HashMap<String, Model>,
    ) -> Result<()> {
        let plan = self.plan;
        for spec in &plan.models {
            let Some(q) = spec.quantized.as_ref().filter(|q| q.aware) else {
                continue;
            };
            let used = stage.trains == spec.name || stage.frozen.contains(&spec.name);
            // A baseline is made with the model it copies.
            if !used || spec.role == Role::Baseline {
                continue;
            }
            if models.get(&spec.name).is_some_and(Model::is_aware) {
                continue;
            }
            self.make_one_aware(seed, spec, q, models)?;
        }
        Ok(())
    }

    fn make_one_aware(
        &mut self,
        seed: u64,
        spec: &ModelSpec,
        q: &Quantization,
        models: &mut HashMap<String, Model>,
    ) -> Result<()> {
        // A pruned source may not be made yet (no stage has used it).
        if let Some(source) = self.plan.model(&q.from).filter(|m| m.pruned.is_some()) {
            self.make_one(source, models)?;
        }
        let mut model = models
            .remove(&spec.name)
            .ok_or_else(|| plan_error(format!("no model `{}`", spec.name)))?;
        let made = self.model_ref(models, &q.from).and_then(|source| {
            model.take_weights(source)?;
            // A pruned source's zeros stay zero while the model trains.
            model.take_masks(source)?;
            self.calibrate_on(seed, &spec.name, q, &mut |batches| {
                model.make_aware(batches)
            })
        });
        // Its baselines start from exactly these weights, masks and ranges.
        let copied = made.and_then(|()| {
            let copies = self.plan.models.iter().filter(|b| {
                b.role == Role::Baseline && b.init_key == spec.init_key && b.quantized.is_some()
            });
            for baseline in copies {
                if let Some(copy) = models.get_mut(&baseline.name) {
                    copy.take_weights(&model)?;
                    copy.take_masks(&model)?;
                    copy.set_input_ranges(&model.input_ranges())?;
                }
            }
            Ok(())
        });
        models.insert(spec.name.clone(), model);
        copied
    }

    /// Runs `calibrate` on the calibration batches of model `name`: `q.samples` samples
    /// (1,024 by default) of the split, drawn from the seed, a batch at a time.
    fn calibrate_on(
        &self,
        seed: u64,
        name: &str,
        q: &Quantization,
        calibrate: &mut dyn FnMut(&mut Batches) -> Result<()>,
    ) -> Result<()> {
        let samples = self.dataset(&q.data)?.split(&q.split)?.len();
        if samples == 0 {
            return Err(plan_error(format!(
                "`{name}` calibrates on {}.{}, which is empty",
                q.data, q.split
            )));
        }
        // A seeded sample of the split, not its first rows: a file sorted by label would
        // calibrate on a few classes.
        let take = q.samples.unwrap_or(DEFAULT_SAMPLES).min(samples);
        let mut positions = crate::data::epoch_order(seed, &format!("calibrate/{name}"), samples);
        positions.truncate(take);
        let mut batches = positions.chunks(BATCH).map(|chunk| {
            let batch = self.build_batch(&q.data, &q.split, chunk)?;
            batch.x.to_device(&self.device).ctx("a calibration batch")
        });
        calibrate(&mut batches)
    }
}
