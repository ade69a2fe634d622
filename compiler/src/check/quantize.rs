//! `student q = quantize(s) on digits.train { samples: 512 }`: a model in int8, made from
//! another's weights after every stage and calibrated on a split. With `aware: true` it is
//! made when a stage first uses it, and stages train it quantisation-aware.

use kd_grammar::ast::{Declaration, Program, QuantizeSource, RoleDecl, RoleSource};
use kd_plan::{DataSpec, Layer, LayerSpec, ModelSpec, Precision, Quantization, Role};

use super::{CheckedStage, Cx};
use crate::diagnostics::{span, CheckError};
use crate::vocabulary::QUANTIZE_SETTINGS;

impl Cx<'_> {
    /// The quantised models, checked after every other role (a pruned one may be
    /// quantised).
    pub(super) fn quantized_roles(
        &mut self,
        program: &Program,
        models: &mut Vec<ModelSpec>,
        data: &[DataSpec],
    ) {
        for decl in &program.declarations {
            let Declaration::Role(r) = decl else { continue };
            let RoleSource::Quantize(source) = &r.source else {
                continue;
            };
            match self.quantized_role(program, r, source, models, data) {
                Some(model) => models.push(model),
                None => {
                    self.failed.insert(format!("model {}", r.name.name));
                }
            }
        }
    }

    fn quantized_role(
        &mut self,
        program: &Program,
        r: &RoleDecl,
        q: &QuantizeSource,
        models: &[ModelSpec],
        data: &[DataSpec],
    ) -> Option<ModelSpec> {
        let context = format!("`quantize({})`", q.source.name);
        let fields = self.fields(&q.settings, QUANTIZE_SETTINGS, &context);
        let samples = match fields.value("samples") {
            Some(v) => Some(self.count(v, "`samples`", 1)?),
            None => None,
        };
        let aware = match fields.value("aware") {
            Some(v) => self.boolean(v, "`aware`")?,
            None => false,
        };
        let name = &q.source.name;
        let Some(source) = models.iter().find(|m| &m.name == name) else {
            if self.failed.contains(&format!("model {name}")) {
                return None;
            }
            let declared = |pick: fn(&Declaration) -> bool| {
                program.declarations.iter().any(|d| {
                    pick(d)
                        && match d {
                            Declaration::Role(o) => &o.name.name == name,
                            Declaration::Baseline(b) => &b.name.name == name,
                            _ => false,
                        }
                })
            };
            let (message, label) = if declared(|d| matches!(d, Declaration::Baseline(_))) {
                (
                    format!("`{name}` is a baseline, which is not quantised"),
                    "a baseline",
                )
            } else if declared(
                |d| matches!(d, Declaration::Role(o) if matches!(o.source, RoleSource::Quantize(_))),
            ) {
                (format!("`{name}` is already int8"), "quantised already")
            } else {
                self.unknown_model(&q.source, models);
                return None;
            };
            self.invalid(q.source.span, message, label, None);
            return None;
        };
        if source.quantized.is_some() {
            self.invalid(
                q.source.span,
                format!("`{name}` is already int8"),
                "quantised already",
                Some(format!("quantise the model `{name}` was made from")),
            );
            return None;
        }
        if let Some(from) = super::prune::foreign(source) {
            self.invalid(
                q.source.span,
                format!("`{name}` runs from {from}, which kdc does not quantise"),
                "cannot be quantised",
                Some(
                    "quantise a model of a declared architecture, for example the student \
                     distilled from it"
                        .into(),
                ),
            );
            return None;
        }
        let weights = kd_plan::quantizable(&source.layers);
        if weights.is_empty() {
            self.invalid(
                q.source.span,
                format!("`{name}` has no linear or conv2d layer to compute in int8"),
                "nothing to quantise",
                None,
            );
            return None;
        }
        if let Some((layer, depth)) = widest(&source.layers).filter(|(_, d)| *d > MAX_DEPTH) {
            self.invalid(
                q.source.span,
                format!(
                    "`{layer}` of `{name}` sums {depth} products, more than the {MAX_DEPTH} an \
                     exact int8 sum holds"
                ),
                "too wide for int8",
                Some("narrow the layer's input (a pool before `flatten`, fewer channels)".into()),
            );
            return None;
        }
        let (spec, _) = self.split(&q.data, data)?;
        self.fits(source, spec, &q.data)?;
        let mut model = super::prune::derived(r, source);
        model.precision = Precision::F32;
        model.pruned = None;
        model.quantized = Some(Quantization {
            from: name.clone(),
            data: q.data.data.name.clone(),
            split: q.data.split.name.clone(),
            samples,
            weights,
            aware,
        });
        Some(model)
    }

    /// A post-training int8 model is made after every stage: no stage may use it, and its
    /// source must be trained by one (or start from a file, or be made from another
    /// model). A quantisation-aware one is made when the first stage that uses it starts:
    /// its source must be ready by then, and some stage must train it.
    pub(super) fn quantized_order(&mut self, models: &[ModelSpec], stages: &[CheckedStage]) {
        for model in models.iter().filter(|m| m.role != Role::Baseline) {
            let Some(q) = &model.quantized else { continue };
            let at = span(kd_grammar::ast::Span::new(model.span.start, model.span.end));
            let first = stages
                .iter()
                .position(|s| s.trains == model.name || s.frozen.contains(&model.name));
            if let (Some(i), false) = (first, q.aware) {
                let stage = &stages[i];
                self.error(CheckError::Stage {
                    message: format!(
                        "stage `{}` uses `{}`, an int8 model, which is made after every stage",
                        stage.name, model.name
                    ),
                    span: span(stage.span),
                    label: "uses an int8 model".into(),
                    help: Some(match stage.trains == model.name {
                        true => format!(
                            "train `{}` quantisation-aware with `{{ aware: true }}`, or train \
                             `{}` instead",
                            model.name, q.from
                        ),
                        false => format!("use `{}` instead", q.from),
                    }),
                });
                continue;
            }
            if q.aware
                && !stages.iter().any(|s| s.trains == model.name)
                && !self.trained.contains(&model.name)
            {
                self.error(CheckError::Stage {
                    message: format!(
                        "`{}` is trained quantisation-aware, and no stage trains it",
                        model.name
                    ),
                    span: at,
                    label: "never trained".into(),
                    help: Some(format!(
                        "add a stage that trains or distils `{}`, or drop `aware: true` to \
                         quantise after training",
                        model.name
                    )),
                });
                continue;
            }
            let Some(source) = models.iter().find(|m| m.name == q.from) else {
                continue;
            };
            // An aware model is made before its first stage; a post-training one after all.
            let before = match q.aware {
                true => &stages[..first.unwrap_or(stages.len())],
                false => stages,
            };
            let trained = before.iter().any(|s| s.trains == source.name)
                // A stage that sets out to train the source but failed to check was reported.
                || (self.trained.contains(&source.name)
                    && !stages.iter().any(|s| s.trains == source.name));
            if trained || source.init_from.is_some() || source.pruned.is_some() {
                continue;
            }
            match first.filter(|_| stages.iter().any(|s| s.trains == source.name)) {
                Some(i) => self.error(CheckError::Stage {
                    message: format!(
                        "`{}` is made from `{}` when stage `{}` starts, and no stage before it \
                         trains `{}`",
                        model.name, source.name, stages[i].name, source.name
                    ),
                    span: at,
                    label: "made from untrained weights".into(),
                    help: Some(format!(
                        "train `{}` in an earlier stage, or start it `from` a weights file",
                        source.name
                    )),
                }),
                None => self.error(CheckError::NeverTrained {
                    model: source.name.clone(),
                    used: "quantised",
                    role: match source.role {
                        Role::Teacher => "teacher",
                        _ => "student",
                    },
                    span: at,
                }),
            }
        }
    }
}

/// The most products one output of an int8 layer may sum: each is at most 128 * 128 in
/// magnitude, and the sum is an i32.
const MAX_DEPTH: usize = i32::MAX as usize / (128 * 128);

/// The linear or conv2d layer (shortcuts included) whose outputs sum the most products,
/// and how many.
fn widest(layers: &[LayerSpec]) -> Option<(String, usize)> {
    let depth = |l: &LayerSpec| match l.layer {
        Layer::Linear { .. } => l.input.last().copied(),
        Layer::Conv2d { kernel, .. } => l.input.first().map(|c| c * kernel * kernel),
        _ => None,
    };
    let mut best: Option<(String, usize)> = None;
    for layer in layers {
        let mut found: Vec<(String, usize)> = Vec::new();
        if let Some(d) = depth(layer) {
            found.push((layer.name.clone(), d));
        }
        if let Layer::Residual { body, shortcut } = &layer.layer {
            found.extend(widest(body));
            if let Some(s) = shortcut {
                let mut s = (**s).clone();
                s.input = layer.input.clone();
                found.extend(depth(&s).map(|d| (format!("{}.shortcut", layer.name), d)));
            }
        }
        for f in found {
            if best.as_ref().is_none_or(|b| f.1 > b.1) {
                best = Some(f);
            }
        }
    }
    best
}
