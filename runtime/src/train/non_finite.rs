//! A non-finite loss or gradient in a training step: skipped under `non_finite: skip`,
//! otherwise the end of the run with a diagnostic that points at the term to blame.

use kd_plan::{NonFinite, Op, Stage};

use super::checkpoint::StageState;
use super::Run;
use crate::error::{NonFiniteError, Result, RuntimeError};

/// What was found not finite in a training step.
pub(super) enum NonFiniteValue {
    /// The loss, and the nodes of the step whose values were not finite, in order.
    Loss(Vec<kd_plan::NodeId>),
    /// The gradient of this parameter of the trained model.
    Gradient(String),
}

impl Run<'_> {
    /// A non-finite loss or gradient: skipped when the pipeline says so, else the end of
    /// the run with the term to blame (the checkpoint on disk is the last good state).
    pub(super) fn non_finite(
        &self,
        stage: &Stage,
        st: &StageState,
        value: NonFiniteValue,
    ) -> Result<()> {
        if self.plan.settings.non_finite == NonFinite::Skip {
            return Ok(());
        }
        let graph = &self.plan.graph;
        let label_at = |node: kd_plan::NodeId, text: String| {
            graph.node_weight(node).map(|n| {
                let length = n.span.end.saturating_sub(n.span.start);
                miette::LabeledSpan::new(Some(text), n.span.start, length)
            })
        };
        let mut labels = Vec::new();
        let what = match value {
            NonFiniteValue::Loss(nodes) => {
                let op = |node: &kd_plan::NodeId| graph.node_weight(*node).map(|n| &n.op);
                // The term: the first non-finite value the loss expression computed.
                let term = nodes
                    .iter()
                    .find(|n| {
                        !matches!(
                            op(n),
                            Some(
                                Op::Batch { .. }
                                    | Op::Augment { .. }
                                    | Op::Forward { .. }
                                    | Op::CachedForward { .. }
                            )
                        )
                    })
                    .copied()
                    .unwrap_or(stage.loss);
                labels.extend(label_at(term, "this term is NaN or infinite".into()));
                // Its cause, when a batch or a model already gave a non-finite value.
                let cause = nodes.first().and_then(|node| {
                    let text = match op(node)? {
                        Op::Batch { data, split } => {
                            format!("the batch of `{data}.{split}` holds a NaN or an infinity")
                        }
                        Op::Augment { pipeline } => {
                            format!("augmentation `{pipeline}` gives a NaN or an infinity")
                        }
                        Op::Forward { model, .. } | Op::CachedForward { model } => {
                            format!("model `{model}` gives a NaN or an infinity")
                        }
                        _ => return None,
                    };
                    label_at(*node, text)
                });
                labels.extend(cause);
                "the loss".to_string()
            }
            NonFiniteValue::Gradient(parameter) => {
                labels.extend(label_at(stage.loss, "the loss whose gradient it is".into()));
                format!("the gradient of `{}.{parameter}`", stage.trains)
            }
        };
        let kept = if crate::train::checkpoint::path(&self.opts.out_dir).exists() {
            "the run folder keeps the last good checkpoint; "
        } else {
            ""
        };
        Err(RuntimeError::NonFinite(Box::new(NonFiniteError {
            what,
            stage: stage.name.clone(),
            epoch: st.epoch + 1,
            step: st.step + 1,
            labels,
            help: format!(
                "{kept}lower the learning rate, clip gradients (`clip`), check the data and the loss, \
                 or set `non_finite: skip` in `pipeline` to skip such batches (in a new run: a resume keeps its plan)"
            ),
        })))
    }
}
