//! int8 models (`quantize(s) on data.split`): made after every stage, from their source's
//! weights, calibrated on the split's first samples in eval mode.

use std::collections::HashMap;

use super::Run;
use crate::error::{plan_error, Result, TensorContext};
use crate::model::Model;

/// Calibration batches: as many samples at once as evaluation takes.
const BATCH: usize = 256;

impl Run<'_> {
    /// Makes every int8 model of the plan (each seed, after its stages).
    pub(super) fn make_quantized(&mut self, models: &mut HashMap<String, Model>) -> Result<()> {
        let plan = self.plan;
        for spec in &plan.models {
            let Some(q) = &spec.quantized else { continue };
            let mut model = models
                .remove(&spec.name)
                .ok_or_else(|| plan_error(format!("no model `{}`", spec.name)))?;
            let made = self.model_ref(models, &q.from).and_then(|source| {
                model.take_weights(source)?;
                let samples = self.dataset(&q.data)?.split(&q.split)?.len();
                let take = q.samples.map_or(samples, |n| n.min(samples));
                let positions: Vec<usize> = (0..take).collect();
                let batches = positions
                    .chunks(BATCH)
                    .map(|chunk| {
                        let batch = self.build_batch(&q.data, &q.split, chunk)?;
                        batch.x.to_device(&self.device).ctx("a calibration batch")
                    })
                    .collect::<Result<Vec<_>>>()?;
                if batches.is_empty() {
                    return Err(plan_error(format!(
                        "`{}` calibrates on {}.{}, which is empty",
                        spec.name, q.data, q.split
                    )));
                }
                model.quantize(&batches)
            });
            models.insert(spec.name.clone(), model);
            made?;
        }
        Ok(())
    }
}
