//! A stage's validation at the end of each epoch: the trained model's metrics and the
//! stage's loss on the validation split, and the teacher's predictions there (for
//! `keep: best(agreement)`).

use std::collections::HashMap;

use kd_plan::{Keep, Metric, Stage};

use super::cache::OutputCache;
use super::graph::{run_step, StepInput};
use super::{Projections, Run};
use crate::error::{plan_error, Result, TensorContext};
use crate::model::Model;
use crate::output::evaluate::{predict, Predictions, EVAL_BATCH};
use crate::output::metrics::{split_metrics, SplitMetrics};

/// One epoch's validation.
pub(super) struct Validation {
    pub(super) metrics: SplitMetrics,
    pub(super) loss: f64,
}

impl Validation {
    pub(super) fn value(&self, metric: Metric) -> Result<f64> {
        match (metric, self.metrics.scalar(metric)) {
            (Metric::Loss, _) => Ok(self.loss),
            (_, Some(value)) => Ok(value),
            (Metric::Agreement, None) => Err(plan_error(
                "`agreement` needs a teacher other than the trained model",
            )),
            (_, None) => Err(plan_error(format!(
                "cannot keep the best epoch by `{metric:?}`"
            ))),
        }
    }
}

impl Run<'_> {
    /// The teacher's predictions on the stage's validation split, when the stage keeps the
    /// epoch of best agreement (the teacher does not change during the stage).
    pub(super) fn teacher_on_validation(
        &self,
        stage: &Stage,
        models: &mut HashMap<String, Model>,
    ) -> Result<Option<Vec<u32>>> {
        let Some(validate) = &stage.validate else {
            return Ok(None);
        };
        if validate.keep != Keep::Best(Metric::Agreement) {
            return Ok(None);
        }
        // The file's first teacher, as the summary's `agreement` compares with.
        let Some(teacher) = self.teacher().filter(|t| *t != stage.trains) else {
            return Ok(None);
        };
        let dataset = self.dataset(&validate.data)?;
        let split = dataset.split(&validate.split)?;
        let model = models
            .get_mut(teacher)
            .ok_or_else(|| plan_error(format!("no model `{teacher}`")))?;
        Ok(Some(predict(model, dataset, split)?.classes))
    }

    /// Runs the stage's nodes over the validation split in eval mode: the trained model's
    /// metrics and the stage loss (sample-weighted mean over batches).
    pub(super) fn validate(
        &self,
        stage: &Stage,
        seed: u64,
        epoch: usize,
        models: &mut HashMap<String, Model>,
        cache: &mut OutputCache,
        (teacher_predictions, projections, progress): (
            Option<&Vec<u32>>,
            &Projections,
            (usize, usize),
        ),
    ) -> Result<Validation> {
        let validate = stage
            .validate
            .as_ref()
            .ok_or_else(|| plan_error("validation without `validate`"))?;
        let dataset = self.dataset(&validate.data)?;
        let split = dataset.split(&validate.split)?;
        let outputs_probabilities = self
            .model_ref(models, &stage.trains)?
            .outputs_probabilities();
        let mut predictions = Predictions::default();
        let mut loss_sum = 0.0;
        let positions: Vec<usize> = (0..split.len()).collect();
        let empty = HashMap::new();
        for (step, chunk) in positions.chunks(EVAL_BATCH).enumerate() {
            let batch = self.build_batch(&validate.data, &validate.split, chunk)?;
            let input = StepInput {
                plan: self.plan,
                stage,
                seed,
                epoch,
                step,
                validating: true,
                batches: &empty,
                validation: Some(&batch),
                fills: &self.fills,
                projections,
                progress,
                // Every rank validates on the whole split: the same model, the same result.
                shard: None,
                frozen: None,
            };
            let output = run_step(&input, models, cache)?;
            if let Some(loss) = output.loss {
                let value = loss
                    .to_dtype(candle_core::DType::F64)
                    .and_then(|l| l.to_scalar::<f64>())
                    .ctx("reading the validation loss")?;
                loss_sum += value * chunk.len() as f64;
            }
            let trained_output = match output.trained_output {
                Some(t) => t,
                // The graph never runs the trained model on its own: run it.
                None => {
                    let model = models
                        .get_mut(&stage.trains)
                        .ok_or_else(|| plan_error(format!("no model `{}`", stage.trains)))?;
                    let outputs = model.forward_with(&batch.x, false, true, false)?;
                    outputs
                        .into_iter()
                        .find(|(p, _)| p == "output")
                        .map(|(_, t)| t)
                        .ok_or_else(|| plan_error("a model without output"))?
                }
            };
            predictions.extend_from(&trained_output, outputs_probabilities)?;
        }
        let labels = dataset.split_labels(split)?;
        let metrics = split_metrics(
            &dataset.name,
            &labels,
            &predictions.classes,
            &predictions.confidences,
            &self.class_names(&validate.data),
            teacher_predictions.map(Vec::as_slice),
        );
        Ok(Validation {
            metrics,
            loss: loss_sum / split.len().max(1) as f64,
        })
    }
}
