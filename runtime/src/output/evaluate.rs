//! Predictions of a model over a whole split, in eval mode.

use candle_core::Tensor;

use crate::data::{Dataset, Split};
use crate::error::{Result, TensorContext};
use crate::model::Model;

/// Samples per forward when only predicting (batch norm is in eval mode, so the batch size
/// does not change results).
pub const EVAL_BATCH: usize = 512;

/// Predicted classes and their confidences (the largest probability).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Predictions {
    pub classes: Vec<u32>,
    pub confidences: Vec<f64>,
}

impl Predictions {
    /// Appends the argmax and confidence of each row of `output` (`[B, ...]`, flattened
    /// per sample); `probabilities` says whether rows already sum to one.
    pub fn extend_from(&mut self, output: &Tensor, probabilities: bool) -> Result<()> {
        let batch = output.dims().first().copied().unwrap_or(0);
        if batch == 0 {
            return Ok(());
        }
        let values = output
            .flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .ctx("reading model outputs")?;
        let width = values.len() / batch;
        for row in values.chunks_exact(width.max(1)) {
            let (best, max) =
                row.iter()
                    .enumerate()
                    .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                        if v > bv {
                            (i, v)
                        } else {
                            (bi, bv)
                        }
                    });
            let confidence = if probabilities {
                f64::from(max)
            } else {
                let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
                1.0 / sum
            };
            self.classes.push(best as u32);
            self.confidences.push(confidence);
        }
        Ok(())
    }
}

/// Runs `model` in eval mode over every sample of `split`, in order.
pub fn predict(model: &mut Model, dataset: &Dataset, split: &Split) -> Result<Predictions> {
    let mut predictions = Predictions::default();
    let positions: Vec<usize> = (0..split.len()).collect();
    let mut shape = vec![0usize];
    shape.extend(&dataset.sample_shape);
    for chunk in positions.chunks(EVAL_BATCH) {
        let mut x = Vec::new();
        let mut labels = Vec::new();
        dataset.fill_batch(split, chunk, &mut x, &mut labels)?;
        shape[0] = chunk.len();
        let x = Tensor::from_vec(x, shape.as_slice(), &model.device())
            .ctx("building an evaluation batch")?;
        let outputs = model.forward_with(&x, false, true, false)?;
        if let Some((_, output)) = outputs.iter().find(|(port, _)| port == "output") {
            predictions.extend_from(output, model.outputs_probabilities())?;
        }
    }
    Ok(predictions)
}
