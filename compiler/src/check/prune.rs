//! `student p = prune(s) { sparsity: 50% }`: a model made from another's weights by
//! magnitude pruning, at once or gradually over the first stage that trains it.

use kd_grammar::ast::{
    Declaration, Ident, Program, PruneSource, RoleDecl, RoleKind, RoleSource, Value,
};
use kd_grammar::ast::{Span, ValueKind};
use kd_plan::{Layer, LayerSpec, ModelSpec, NeuronGroup, Pruning, Role, ValueSchedule};

use super::models::to_plan;
use super::values::format_number;
use super::{CheckedStage, Cx};
use crate::diagnostics::{list, one_of, span, CheckError};
use crate::vocabulary::{PRUNE_SETTINGS, VALUE_SCHEDULES};

impl Cx<'_> {
    /// The pruned models, checked after every other role so that any model may be pruned
    /// (a pruned one too, when declared before).
    pub(super) fn pruned_roles(&mut self, program: &Program, models: &mut Vec<ModelSpec>) {
        for decl in &program.declarations {
            let Declaration::Role(r) = decl else { continue };
            let RoleSource::Prune(source) = &r.source else {
                continue;
            };
            match self.pruned_role(program, r, source, models) {
                Some(model) => models.push(model),
                None => {
                    self.failed.insert(format!("model {}", r.name.name));
                }
            }
        }
    }

    fn pruned_role(
        &mut self,
        program: &Program,
        r: &RoleDecl,
        p: &PruneSource,
        models: &[ModelSpec],
    ) -> Option<ModelSpec> {
        let context = format!("`prune({})`", p.source.name);
        let fields = self.fields(&p.settings, PRUNE_SETTINGS, &context);
        let name = &p.source.name;
        let Some(source) = models.iter().find(|m| &m.name == name) else {
            if self.failed.contains(&format!("model {name}")) {
                return None;
            }
            let pruned_later = program.declarations.iter().any(|d| {
                matches!(d, Declaration::Role(o)
                    if &o.name.name == name && matches!(o.source, RoleSource::Prune(_)))
            });
            let baseline = program
                .declarations
                .iter()
                .any(|d| matches!(d, Declaration::Baseline(b) if &b.name.name == name));
            let int8 = program.declarations.iter().any(|d| {
                matches!(d, Declaration::Role(o)
                    if &o.name.name == name && matches!(o.source, RoleSource::Quantize(_)))
            });
            if int8 {
                self.invalid(
                    p.source.span,
                    format!("`{name}` is an int8 model, which is not pruned"),
                    "int8",
                    Some("prune the model it is made from, then quantise the pruned one".into()),
                );
            } else if name == &r.name.name {
                self.invalid(
                    p.source.span,
                    format!("`{name}` cannot be pruned from itself"),
                    "itself",
                    Some("prune the model it should start from".into()),
                );
            } else if baseline {
                self.invalid(
                    p.source.span,
                    format!("`{name}` is a baseline, which is not pruned"),
                    "a baseline",
                    Some(
                        "prune the student, and give the pruned model a baseline of its own".into(),
                    ),
                );
            } else if pruned_later {
                self.invalid(
                    p.source.span,
                    format!(
                        "`{name}` is itself pruned, and declared after `{}`",
                        r.name.name
                    ),
                    "declared later",
                    Some(format!("declare `{}` after `{name}`", r.name.name)),
                );
            } else {
                self.unknown_model(&p.source, models);
            }
            return None;
        };
        if let Some(from) = foreign(source) {
            self.invalid(
                p.source.span,
                format!("`{name}` runs from {from}, whose weights kdc does not prune"),
                "cannot be pruned",
                Some(
                    "prune a model of a declared architecture (`student s = mlp`), for example \
                     the student distilled from it"
                        .into(),
                ),
            );
            return None;
        }
        let neurons = match fields.value("granularity") {
            None => false,
            Some(v) => match &v.kind {
                ValueKind::Name(n) if n == "weights" => false,
                ValueKind::Name(n) if n == "neurons" => true,
                _ => {
                    self.invalid(
                        v.span,
                        "`granularity` is `weights` or `neurons`".into(),
                        "unknown granularity",
                        Some(
                            "`weights` zeroes single weights; `neurons` removes whole neurons \
                             (a convolution's output channels) and shrinks the model"
                                .into(),
                        ),
                    );
                    return None;
                }
            },
        };
        let every = |cx: &mut Self, sparsity: &ValueSchedule| -> Option<usize> {
            let gradual = !matches!(sparsity, ValueSchedule::Constant { .. });
            match fields.value("every") {
                Some(v) if !gradual => {
                    cx.invalid(
                        v.span,
                        "`every` paces a gradual sparsity, and this one is constant".into(),
                        "nothing to pace",
                        Some("a constant sparsity prunes once, when the model is made".into()),
                    );
                    None
                }
                Some(v) => cx.count(v, "`every`", 1),
                None => Some(1),
            }
        };
        if neurons {
            let mut model = self.neuron_pruned(r, p, source, fields.value("sparsity"))?;
            if let Some(pruning) = model.pruned.as_mut() {
                pruning.every = every(self, &pruning.sparsity)?;
            }
            return Some(model);
        }
        let tensors = kd_plan::prunable(&source.layers);
        if tensors.is_empty() {
            self.invalid(
                p.source.span,
                format!("`{name}` has no weights that pruning applies to"),
                "nothing to prune",
                Some(
                    "pruning applies to the weights of linear, conv2d, conv1d, lstm and \
                     transformer layers"
                        .into(),
                ),
            );
            return None;
        }
        let Some(sparsity_value) = fields.value("sparsity") else {
            self.error(CheckError::Missing {
                message: format!("{context} needs a `sparsity`"),
                span: span(p.span),
                label: "how much to prune?".into(),
                help: Some(
                    "`sparsity: 50%` prunes half of each weight tensor at once; \
                     `sparsity: cubic(from: 0, to: 90%)` prunes gradually over a stage"
                        .into(),
                ),
            });
            return None;
        };
        let sparsity = self.sparsity(sparsity_value)?;
        let every = every(self, &sparsity)?;
        let mut model = derived(r, source);
        model.pruned = Some(Pruning {
            from: name.clone(),
            sparsity,
            every,
            tensors,
            neurons: Vec::new(),
        });
        Some(model)
    }

    /// `granularity: neurons`: the source's architecture with fewer neurons in every layer
    /// whose outputs can shrink with their readers ([`narrowed`]): at once, or gradually
    /// over a stage that trains the source's widths with the neurons masked, narrowed when
    /// it ends.
    fn neuron_pruned(
        &mut self,
        r: &RoleDecl,
        p: &PruneSource,
        source: &ModelSpec,
        sparsity: Option<&Value>,
    ) -> Option<ModelSpec> {
        let Some(value) = sparsity else {
            self.error(CheckError::Missing {
                message: format!("`prune({})` needs a `sparsity`", source.name),
                span: span(p.span),
                label: "how much to prune?".into(),
                help: Some("`sparsity: 50%` removes half of each layer's neurons".into()),
            });
            return None;
        };
        // A schedule removes neurons gradually; the model's widths are its last value's.
        let sparsity = self.sparsity(value)?;
        let (_, fraction) = sparsity.ends();
        let tapped: Vec<usize> = source.taps.iter().map(|t| t.layer).collect();
        let (layers, groups) = narrowed(&source.layers, &tapped, fraction, "");
        if groups.is_empty() {
            self.invalid(
                p.source.span,
                format!("`{}` has no neurons that can be removed", source.name),
                "nothing to prune",
                Some(
                    "a linear or conv2d layer's neurons can go when another linear or conv2d \
                     layer of the same block (or a residual block with a projection shortcut) \
                     reads them, through activations, dropout, batch norms, pools or flatten, \
                     and no tap reads them in between"
                        .into(),
                ),
            );
            return None;
        }
        let mut model = derived(r, source);
        model.params = layers.iter().map(|l| l.params).sum();
        model.flops = layers.iter().map(|l| l.flops).sum();
        model.layers = layers;
        model.pruned = Some(Pruning {
            from: source.name.clone(),
            sparsity,
            every: 1,
            tensors: Vec::new(),
            neurons: groups,
        });
        Some(model)
    }

    /// A sparsity: a fraction (`0.5` or `50%`) in [0, 1), or a schedule of such fractions
    /// that never decreases (pruned values stay zero).
    fn sparsity(&mut self, value: &Value) -> Option<ValueSchedule> {
        let ValueKind::Call(call) = &value.kind else {
            let v = self.fraction(value)?;
            return Some(ValueSchedule::Constant { value: v });
        };
        let form = call.name.name.as_str();
        let Some((_, params)) = VALUE_SCHEDULES.iter().find(|(f, _)| *f == form) else {
            self.error(CheckError::UnknownName {
                what: "schedule",
                name: form.to_string(),
                span: span(call.name.span),
                help: Some(format!(
                    "a sparsity is a fraction (`50%`) or {}",
                    one_of(VALUE_SCHEDULES.iter().map(|(f, _)| *f))
                )),
            });
            return None;
        };
        let args = self.args(call, params, params.len());
        let mut values = Vec::with_capacity(params.len());
        let mut missing = Vec::new();
        for (position, param) in params.iter().enumerate() {
            match args.get(param, Some(position)) {
                Some(v) if *param == "at" => values.push(self.number_in(
                    v,
                    "`at` of a step schedule",
                    |x| (0.0..=1.0).contains(&x),
                    "between 0 and 1",
                )?),
                Some(v) => values.push(self.fraction(v)?),
                None => missing.push(*param),
            }
        }
        if !missing.is_empty() {
            self.error(CheckError::Missing {
                message: format!(
                    "the schedule `{form}` needs {}",
                    list(missing.iter().copied())
                ),
                span: span(value.span),
                label: "incomplete schedule".into(),
                help: Some(format!("its arguments: {}", list(params.iter().copied()))),
            });
            return None;
        }
        let schedule = ValueSchedule::from_form(form, &values)?;
        let (from, to) = schedule.ends();
        if to < from {
            self.invalid(
                value.span,
                format!(
                    "a sparsity cannot fall (from {} to {}): pruned values stay zero",
                    format_number(from),
                    format_number(to)
                ),
                "falls",
                Some("write the schedule from the lower sparsity to the higher".into()),
            );
            return None;
        }
        Some(schedule)
    }

    /// A fraction of a tensor's values in [0, 1): a number or a percentage.
    fn fraction(&mut self, value: &Value) -> Option<f64> {
        let v = match &value.kind {
            ValueKind::Number {
                value: v,
                unit: Some(u),
            } if u == "%" => v / 100.0,
            _ => self.number(value, "a sparsity")?,
        };
        if !(0.0..1.0).contains(&v) {
            self.error(CheckError::OutOfRange {
                what: "a sparsity (the fraction of a tensor's values pruned)".into(),
                range: "at least 0 and below 1 (100%)",
                value: format_number(v),
                span: span(value.span),
                help: Some("`sparsity: 90%` keeps one value in ten".into()),
            });
            return None;
        }
        Some(v)
    }

    /// When each pruned model is made, it must have something to be made from: its source
    /// trained by an earlier stage (or started from a file, or pruned itself). A gradual
    /// sparsity needs a stage that trains the model first, and runs it to its last step.
    pub(super) fn pruning_order(&mut self, models: &[ModelSpec], stages: &[CheckedStage]) {
        for model in models.iter().filter(|m| m.role != Role::Baseline) {
            let Some(pruning) = &model.pruned else {
                continue;
            };
            self.gradual_baselines(model, models, stages);
            let at = Span::new(model.span.start, model.span.end);
            // Made when it, or a model pruned from it, is first used.
            let first = making_stage(&model.name, models, stages);
            let before = &stages[..first.unwrap_or(stages.len())];
            let Some(source) = models.iter().find(|m| m.name == pruning.from) else {
                continue;
            };
            let ready = source.init_from.is_some()
                || source.pruned.is_some()
                || before.iter().any(|s| s.trains == source.name);
            // A stage that sets out to train the source but failed to check was reported.
            let echo = self.trained.contains(&source.name)
                && !stages.iter().any(|s| s.trains == source.name);
            if !ready && !echo {
                let message = match first {
                    Some(i) => format!(
                        "`{}` is pruned from `{}` when stage `{}` starts, and no stage before \
                         it trains `{}`",
                        model.name, source.name, stages[i].name, source.name
                    ),
                    None => format!(
                        "`{}` is pruned from `{}`, which no stage trains",
                        model.name, source.name
                    ),
                };
                self.error(CheckError::Stage {
                    message,
                    span: span(at),
                    label: "pruned from untrained weights".into(),
                    help: Some(format!(
                        "train `{}` in an earlier stage, or start it `from` a weights file",
                        source.name
                    )),
                });
                continue;
            }
            if !pruning.gradual() {
                continue;
            }
            let first_use = stages
                .iter()
                .position(|s| s.trains == model.name || s.frozen.contains(&model.name));
            let Some(stage) = first_use.map(|i| &stages[i]) else {
                if self.trained.contains(&model.name) {
                    continue;
                }
                self.error(CheckError::Stage {
                    message: format!(
                        "a gradual sparsity prunes `{}` over a stage that trains it, and none does",
                        model.name
                    ),
                    span: span(at),
                    label: "no stage to prune over".into(),
                    help: Some("add a stage that trains it, or give a constant sparsity".into()),
                });
                continue;
            };
            if first != first_use {
                self.error(CheckError::Stage {
                    message: format!(
                        "`{}` prunes gradually over its first stage, and is made earlier, for \
                         a model pruned from it",
                        model.name
                    ),
                    span: span(at),
                    label: "made before its stage".into(),
                    help: Some(format!(
                        "train `{}` before the model pruned from it is used",
                        model.name
                    )),
                });
                continue;
            }
            if stage.trains != model.name {
                self.error(CheckError::Stage {
                    message: format!(
                        "a gradual sparsity prunes `{}` over the first stage that uses it, and \
                         stage `{}` uses it frozen",
                        model.name, stage.name
                    ),
                    span: span(stage.span),
                    label: "does not train it".into(),
                    help: Some(format!("train `{}` in an earlier stage", model.name)),
                });
                continue;
            }
            if let Some(validate) = &stage.validate {
                let best = matches!(validate.keep, kd_plan::Keep::Best(_));
                if best || validate.early_stop.is_some() {
                    self.error(CheckError::Stage {
                        message: format!(
                            "stage `{}` prunes `{}` gradually, so it runs every step and keeps \
                             its last weights",
                            stage.name, model.name
                        ),
                        span: span(stage.span),
                        label: if best {
                            "keeps its best epoch".into()
                        } else {
                            "may stop early".into()
                        },
                        help: Some(
                            "an earlier epoch is less sparse; keep the best epoch in a later \
                             stage that fine-tunes the pruned model"
                                .into(),
                        ),
                    });
                }
            }
        }
    }
}

/// The layers with `fraction` of the neurons of each prunable layer removed (at least one
/// kept), and what was removed; `prefix` names the list's parameters (`residual1.` inside
/// a block). A layer is prunable when it is a `linear` on flat features or a `conv2d`, is
/// not tapped, and its outputs reach their readers (see [`reach`]). Inside a residual
/// body the same holds, so any linear or conv2d of a body but its last can be pruned; the
/// body's last one and the block's output keep their widths, as the shortcut adds to them.
fn narrowed(
    layers: &[LayerSpec],
    tapped: &[usize],
    fraction: f64,
    prefix: &str,
) -> (Vec<LayerSpec>, Vec<NeuronGroup>) {
    let mut groups = Vec::new();
    let mut keep = vec![None; layers.len()];
    let mut bodies = vec![None; layers.len()];
    for (i, layer) in layers.iter().enumerate() {
        let out = match &layer.layer {
            Layer::Linear { out, .. } if layer.output.len() == 1 => *out,
            Layer::Conv2d { out, .. } => *out,
            Layer::Residual { body, .. } => {
                let inner = format!("{prefix}{}.", layer.name);
                let (body, inside) = narrowed(body, &[], fraction, &inner);
                bodies[i] = Some(body);
                groups.extend(inside);
                continue;
            }
            _ => continue,
        };
        if tapped.contains(&i) {
            continue;
        }
        let Some(path) = reach(layers, i + 1, tapped, prefix) else {
            continue;
        };
        let kept = (out - (fraction * out as f64).round() as usize).max(1);
        if kept == out {
            continue;
        }
        keep[i] = Some(kept);
        groups.push(NeuronGroup {
            layer: format!("{prefix}{}", layer.name),
            norms: path.norms,
            readers: path.readers,
            block: path.block,
            from: out,
            keep: kept,
        });
    }
    let input = layers.first().map(|l| l.input.clone()).unwrap_or_default();
    (rethreaded(layers, &keep, bodies, input), groups)
}

/// Where a layer's outputs go, from position `start` of `layers` on: the batch norms on
/// the way, the layers that read them, and each reader's input columns per neuron (1, or
/// a flattened channel's `H * W`).
struct Reach {
    norms: Vec<String>,
    readers: Vec<String>,
    block: usize,
}

/// The readers of outputs that enter `layers` at `start`: one `linear` or `conv2d` layer
/// reached through layers that keep each neuron's values apart (activations, dropout,
/// batch norm, pools, flatten), none of them tapped; or a residual block with a
/// projection shortcut, read by the shortcut and by the first such layer of its body.
/// `None` when the outputs reach anything else (a block that adds them back unchanged, a
/// sequence layer, the model's output).
fn reach(layers: &[LayerSpec], start: usize, tapped: &[usize], prefix: &str) -> Option<Reach> {
    let mut norms = Vec::new();
    let mut block = 1;
    for (j, next) in layers.iter().enumerate().skip(start) {
        let reads = matches!(
            next.layer,
            Layer::Linear { .. } | Layer::Conv2d { .. } | Layer::Residual { .. }
        );
        if tapped.contains(&j) && !reads {
            return None;
        }
        match &next.layer {
            Layer::Relu | Layer::Gelu | Layer::Tanh | Layer::Sigmoid | Layer::Dropout { .. } => {}
            Layer::MaxPool { .. } | Layer::AvgPool { .. } => {}
            // A batch norm after `flatten` normalises each position apart: not a channel's,
            // so the neuron's block of features would have to go whole.
            Layer::BatchNorm { .. } if block > 1 => return None,
            Layer::BatchNorm { .. } => norms.push(format!("{prefix}{}", next.name)),
            Layer::Flatten => block = next.input.iter().skip(1).product::<usize>().max(1),
            Layer::Linear { .. } | Layer::Conv2d { .. } => {
                return Some(Reach {
                    norms,
                    readers: vec![format!("{prefix}{}", next.name)],
                    block,
                });
            }
            Layer::Residual {
                body,
                shortcut: Some(_),
            } if block == 1 => {
                let inner = format!("{prefix}{}.", next.name);
                let mut through = reach(body, 0, &[], &inner)?;
                // The shortcut reads the block's input as it is, without a flatten.
                if through.block != 1 {
                    return None;
                }
                norms.append(&mut through.norms);
                let mut readers = through.readers;
                readers.push(format!("{inner}shortcut"));
                return Some(Reach {
                    norms,
                    readers,
                    block,
                });
            }
            _ => return None,
        }
    }
    None
}

/// `layers` with the widths in `keep` and the residual bodies in `bodies`, their shapes
/// threaded again from `input`: a pruned layer's outputs are fewer, and what follows it
/// carries the narrower channel axis until its readers.
fn rethreaded(
    layers: &[LayerSpec],
    keep: &[Option<usize>],
    bodies: Vec<Option<Vec<LayerSpec>>>,
    mut input: Vec<usize>,
) -> Vec<LayerSpec> {
    let mut out: Vec<LayerSpec> = Vec::with_capacity(layers.len());
    for ((original, kept), body) in layers.iter().zip(keep).zip(bodies) {
        let mut layer = original.clone();
        layer.input = input.clone();
        layer.output = match (&mut layer.layer, kept) {
            (Layer::Linear { out, .. }, Some(kept)) => {
                *out = *kept;
                let mut shape = original.output.clone();
                if let Some(last) = shape.last_mut() {
                    *last = *kept;
                }
                shape
            }
            (Layer::Conv2d { out, .. }, Some(kept)) => {
                *out = *kept;
                let mut shape = original.output.clone();
                shape[0] = *kept;
                shape
            }
            (Layer::Linear { .. } | Layer::Conv2d { .. }, None) => original.output.clone(),
            (Layer::Flatten, _) => vec![input.iter().product()],
            (Layer::MaxPool { .. } | Layer::AvgPool { .. }, _) => {
                let mut shape = original.output.clone();
                shape[0] = input[0];
                shape
            }
            // Its body and shortcut read the block's input; its output keeps its width.
            (
                Layer::Residual {
                    body: old,
                    shortcut,
                },
                _,
            ) => {
                let narrow = body.unwrap_or_else(|| old.clone());
                let none = vec![None; narrow.len()];
                let empty = vec![None; narrow.len()];
                *old = rethreaded(&narrow, &none, empty, input.clone());
                if let Some(short) = shortcut {
                    short.input = input.clone();
                    (short.params, short.flops) =
                        super::models::cost(&short.layer, &short.input, &short.output);
                }
                let (params, flops) = (
                    old.iter().map(|l| l.params).sum::<usize>()
                        + shortcut.as_ref().map_or(0, |s| s.params),
                    old.iter().map(|l| l.flops).sum::<u64>()
                        + shortcut.as_ref().map_or(0, |s| s.flops)
                        + original.output.iter().product::<usize>() as u64,
                );
                layer.params = params;
                layer.flops = flops;
                original.output.clone()
            }
            _ if original.input == original.output => input.clone(),
            _ => original.output.clone(),
        };
        // Only the layers whose shapes changed (a residual block's cost is its body's).
        let residual = matches!(layer.layer, Layer::Residual { .. });
        if !residual && (layer.input != original.input || layer.output != original.output) {
            let (params, flops) = super::models::cost(&layer.layer, &layer.input, &layer.output);
            layer.params = params;
            layer.flops = flops;
        }
        input = layer.output.clone();
        out.push(layer);
    }
    out
}

/// What a model that does not run on kdc's own layers runs from: `an ONNX file` or `a
/// BERT checkpoint` (their weights are neither pruned nor quantised).
pub(super) fn foreign(source: &ModelSpec) -> Option<&'static str> {
    match (&source.onnx, &source.bert) {
        (Some(_), _) => Some("an ONNX file"),
        (None, Some(_)) => Some("a BERT checkpoint"),
        (None, None) => None,
    }
}

/// A model declared as `r` that starts as a copy of `source` (its layers, taps and
/// precision), made from it at run time: a pruned or int8 model.
pub(super) fn derived(r: &RoleDecl, source: &ModelSpec) -> ModelSpec {
    let mut model = source.clone();
    model.name = r.name.name.clone();
    model.role = match r.role {
        RoleKind::Teacher => Role::Teacher,
        RoleKind::Student => Role::Student,
    };
    model.init_from = None;
    model.init_key = r.name.name.clone();
    model.span = to_plan(r.span);
    model
}

impl Cx<'_> {
    /// `name` names no model: with the closest names as help.
    pub(super) fn unknown_model(&mut self, name: &Ident, models: &[ModelSpec]) {
        let names = || models.iter().map(|m| m.name.as_str());
        self.error(CheckError::UnknownName {
            what: "model",
            name: name.name.clone(),
            span: span(name.span),
            help: super::closest(&name.name, names()).or_else(|| Some(one_of(names()))),
        });
    }

    /// A baseline of a gradually pruned model prunes as it does, over its copy of the
    /// model's first stage, which must be the baseline's first.
    fn gradual_baselines(
        &mut self,
        model: &ModelSpec,
        models: &[ModelSpec],
        stages: &[CheckedStage],
    ) {
        if !model.pruned.as_ref().is_some_and(Pruning::gradual) {
            return;
        }
        let Some(first) = stages
            .iter()
            .find(|s| s.trains == model.name || s.frozen.contains(&model.name))
        else {
            return;
        };
        let baselines = models.iter().filter(|b| {
            b.role == Role::Baseline && b.init_key == model.init_key && b.pruned == model.pruned
        });
        for baseline in baselines {
            let own = stages.iter().find(|s| s.trains == baseline.name);
            if own.is_some_and(|s| s.baseline_of.as_deref() != Some(first.name.as_str())) {
                self.error(CheckError::Stage {
                    message: format!(
                        "`{}` is pruned gradually over stage `{}`, and its baseline `{}` must \
                         be pruned alike: first trained like `{}`",
                        model.name, first.name, baseline.name, first.name
                    ),
                    span: span(Span::new(baseline.span.start, baseline.span.end)),
                    label: "does not start with that stage".into(),
                    help: Some(format!("write `trained like {} + ...`", first.name)),
                });
            }
        }
    }
}

/// The index of the stage before which `name` is made: the first that uses it or any
/// model pruned or quantisation-aware from it (such a model's source is made first).
fn making_stage(name: &str, models: &[ModelSpec], stages: &[CheckedStage]) -> Option<usize> {
    let own = stages
        .iter()
        .position(|s| s.trains == name || s.frozen.iter().any(|f| f == name));
    let made_from = |m: &ModelSpec| {
        m.pruned.as_ref().is_some_and(|p| p.from == name)
            || m.quantized
                .as_ref()
                .is_some_and(|q| q.aware && q.from == name)
    };
    models
        .iter()
        .filter(|m| m.role != Role::Baseline && m.name != name)
        .filter(|m| made_from(m))
        .filter_map(|m| making_stage(&m.name, models, stages))
        .chain(own)
        .min()
}
