//! int8 models (`quantize(s) on data.split`): made after every stage, from their source's
//! weights, calibrated in eval mode on a sample of the split drawn from the seed.

use std::collections::HashMap;

use super::Run;
use crate::error::{plan_error, Result, TensorContext};
use crate::model::Model;

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
            let made = self.model_ref(models, &q.from).and_then(|source| {
                model.take_weights(source)?;
                let samples = self.dataset(&q.data)?.split(&q.split)?.len();
                if samples == 0 {
                    return Err(plan_error(format!(
                        "`{}` calibrates on {}.{}, which is empty",
                        spec.name, q.data, q.split
                    )));
                }
                // A seeded sample of the split, not its first rows: a file sorted by
                // label would calibrate on a few classes.
                let take = q.samples.unwrap_or(DEFAULT_SAMPLES).min(samples);
                let mut positions =
                    crate::data::epoch_order(seed, &format!("calibrate/{}", spec.name), samples);
                positions.truncate(take);
                let mut batches = positions.chunks(BATCH).map(|chunk| {
                    let batch = self.build_batch(&q.data, &q.split, chunk)?;
                    batch.x.to_device(&self.device).ctx("a calibration batch")
                });
                model.calibrate(&mut batches)
            });
            models.insert(spec.name.clone(), model);
            made?;
        }
        Ok(())
    }
}
