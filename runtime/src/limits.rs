//! Sizes a Plan may ask for. The compiler never writes absurd ones, but `kdc run plan.yaml`
//! runs whatever the file says: a hand-edited `classes: 1000000000000` or a layer of 10^11
//! outputs must be refused before anything is allocated for it, not abort the process.

use kd_plan::{parameter_shapes, LayerSpec, Plan};

use crate::error::{plan_error, Result};

/// More classes than any label set kdc reads (labels are u32, and metrics keep a
/// confusion matrix of classes x classes).
const MAX_CLASSES: usize = 1 << 16;
/// Values in one sample, and in one model's parameters: 2^31 f32 values is 8 GiB.
const MAX_VALUES: usize = 1 << 31;

/// Refuses a plan whose sizes cannot be allocated, naming what is too large.
pub fn check(plan: &Plan) -> Result<()> {
    for data in &plan.data {
        if data.classes == 0 || data.classes > MAX_CLASSES {
            return Err(plan_error(format!(
                "data `{}` declares {} classes; kdc handles 1 to {MAX_CLASSES}",
                data.name, data.classes
            )));
        }
        values(&data.sample_shape, || {
            format!("a sample of data `{}`", data.name)
        })?;
    }
    // A hand-edited plan may name any path: exports stay inside the run folder, clear of
    // the files kdc writes there.
    for export in &plan.exports {
        let text = export.path.to_string_lossy();
        let escapes = export.path.is_absolute()
            || export
                .path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
        if escapes || text.is_empty() {
            return Err(plan_error(format!(
                "export `{text}` of model `{}` would be written outside the run folder",
                export.model
            )));
        }
        if let Some(what) = kd_plan::reserved_in_run_folder(&text) {
            return Err(plan_error(format!(
                "export `{text}` of model `{}` would replace kdc's {what}",
                export.model
            )));
        }
    }
    for model in &plan.models {
        values(&model.input, || {
            format!("the input of model `{}`", model.name)
        })?;
        let mut total = 0usize;
        for (name, shape) in parameter_shapes(&model.layers) {
            total = total.saturating_add(values(&shape, || {
                format!("parameter `{name}` of model `{}`", model.name)
            })?);
        }
        if total > MAX_VALUES {
            return Err(plan_error(format!(
                "model `{}` has {total} parameters, more than kdc allocates ({MAX_VALUES})",
                model.name
            )));
        }
        layers(&model.layers, &model.name)?;
    }
    Ok(())
}

/// Every layer's output has a size between 1 and the cap.
fn layers(layers: &[LayerSpec], model: &str) -> Result<()> {
    for layer in layers {
        let size = values(&layer.output, || {
            format!("the output of layer `{}` of model `{model}`", layer.name)
        })?;
        if size == 0 {
            return Err(plan_error(format!(
                "layer `{}` of model `{model}` outputs nothing (shape {:?})",
                layer.name, layer.output
            )));
        }
        if let kd_plan::Layer::Residual { body, .. } = &layer.layer {
            self::layers(body, model)?;
        }
    }
    Ok(())
}

/// The number of values in `shape`, refusing one past [`MAX_VALUES`].
fn values(shape: &[usize], what: impl Fn() -> String) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES)
        .ok_or_else(|| {
            plan_error(format!(
                "{} has shape {shape:?}, more values than kdc allocates ({MAX_VALUES})",
                what()
            ))
        })
}
