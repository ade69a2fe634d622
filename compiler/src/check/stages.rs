//! Stages, baselines, evaluations and exports.

use kd_grammar::ast::{Call, DataRef, Declaration, Program, Span, StageDecl, StageStmt};
use kd_plan::{
    AugmentSpec, DataSpec, Evaluation, Export, Keep, Kind, Metric, ModelSpec, Op, Optimizer, Role,
    Schedule, ScheduleKind, StageKind, TensorType, Validate,
};

use super::data::{needs_image, needs_text};
use super::expr::{Losses, Scope};
use super::models::to_plan;
use super::{CheckedStage, Cx, TypedExpr, TypedNode};
use crate::diagnostics::{did_you_mean, labeled, list, one_of, span, CheckError};
use crate::vocabulary::{KEEP_METRICS, METRICS, OPTIMIZERS, SCHEDULES, STAGE_SETTINGS};

pub(crate) fn metric(name: &str) -> Option<Metric> {
    Some(match name {
        "accuracy" => Metric::Accuracy,
        "precision" => Metric::Precision,
        "recall" => Metric::Recall,
        "f1" => Metric::F1,
        "loss" => Metric::Loss,
        "confusion" => Metric::Confusion,
        "per_class" => Metric::PerClass,
        "agreement" => Metric::Agreement,
        "ece" => Metric::Ece,
        _ => return None,
    })
}

impl Cx<'_> {
    pub(super) fn stages(
        &mut self,
        program: &Program,
        models: &[ModelSpec],
        data: &[DataSpec],
        augments: &[AugmentSpec],
        losses: &Losses,
    ) -> Vec<CheckedStage> {
        program
            .declarations
            .iter()
            .filter_map(|d| match d {
                Declaration::Stage(s) => {
                    let stage = self.stage(s, models, data, augments, losses);
                    if stage.is_none() {
                        self.failed.insert(format!("stage {}", s.name.name));
                    }
                    stage
                }
                _ => None,
            })
            .collect()
    }

    /// A `data.split` reference: the data source, and whether the split has labels.
    pub(crate) fn split<'d>(
        &mut self,
        r: &DataRef,
        data: &'d [DataSpec],
    ) -> Option<(&'d DataSpec, bool)> {
        let Some(spec) = data.iter().find(|d| d.name == r.data.name) else {
            if self.failed.contains(&format!("data {}", r.data.name)) {
                return None;
            }
            self.error(CheckError::UnknownName {
                what: "data source",
                name: r.data.name.clone(),
                span: span(r.data.span),
                help: did_you_mean(&r.data.name, data.iter().map(|d| d.name.as_str()))
                    .or_else(|| Some(one_of(data.iter().map(|d| d.name.as_str())))),
            });
            return None;
        };
        let Some(split) = spec.splits.iter().find(|s| s.name == r.split.name) else {
            self.error(CheckError::UnknownName {
                what: "split",
                name: format!("{}.{}", r.data.name, r.split.name),
                span: span(r.split.span),
                help: did_you_mean(&r.split.name, spec.splits.iter().map(|s| s.name.as_str()))
                    .or_else(|| {
                        Some(format!(
                            "`{}` has splits {}",
                            spec.name,
                            list(spec.splits.iter().map(|s| s.name.as_str()))
                        ))
                    }),
            });
            return None;
        };
        Some((spec, split.labeled))
    }

    fn model<'m>(
        &mut self,
        name: &kd_grammar::ast::Ident,
        models: &'m [ModelSpec],
    ) -> Option<&'m ModelSpec> {
        let found = models.iter().find(|m| m.name == name.name);
        if found.is_none() && !self.failed.contains(&format!("model {}", name.name)) {
            self.error(CheckError::UnknownName {
                what: "model",
                name: name.name.clone(),
                span: span(name.span),
                help: did_you_mean(&name.name, models.iter().map(|m| m.name.as_str()))
                    .or_else(|| Some(format!("models are declared with `teacher NAME = ARCH` or `student NAME = ARCH`; declared: {}", list(models.iter().map(|m| m.name.as_str()))))),
            });
        }
        found
    }

    /// A model whose predictions are compared with the data's labels must predict one
    /// score per class.
    fn predicts_classes(&mut self, model: &ModelSpec, data: &DataSpec, r: &DataRef) {
        let Some(output) = model.taps.iter().find(|t| t.name == "output") else {
            return;
        };
        if output.ty.shape == [data.classes]
            && matches!(output.ty.kind, Kind::Logits | Kind::Probabilities)
        {
            return;
        }
        self.error(CheckError::ShapeMismatch {
            message: format!(
                "model `{}` outputs {} {:?} but `{}` has {} classes",
                model.name,
                super::kind_name(output.ty.kind),
                output.ty.shape,
                data.name,
                data.classes
            ),
            span: span(r.span),
            label: format!("{} classes", data.classes),
            related: vec![labeled(
                from_plan(model.span),
                format!("outputs {:?}", output.ty.shape),
            )],
            help: Some(format!("end the model with `linear({})`", data.classes)),
        });
    }

    /// A model's input must fit the data's samples.
    pub(super) fn fits(&mut self, model: &ModelSpec, data: &DataSpec, r: &DataRef) -> Option<()> {
        if model.tokens || data.text.is_some() {
            return self.fits_text(model, data, r);
        }
        if model.input == data.sample_shape {
            return Some(());
        }
        self.error(CheckError::ShapeMismatch {
            message: format!(
                "model `{}` takes input {:?} but `{}` has samples of shape {:?}",
                model.name, model.input, data.name, data.sample_shape
            ),
            span: span(r.span),
            label: format!("samples {:?}", data.sample_shape),
            related: vec![labeled(
                from_plan(model.span),
                format!("input {:?}", model.input),
            )],
            help: Some(format!(
                "declare `input {:?}` in the model, or `shape: {:?}` in the data",
                data.sample_shape, model.input
            )),
        });
        None
    }

    /// A model reading token ids needs text data of its length, from a tokenizer whose ids
    /// its embedding table covers.
    fn fits_text(&mut self, model: &ModelSpec, data: &DataSpec, r: &DataRef) -> Option<()> {
        let fail = |cx: &mut Self, message: String, label: String, help: String| {
            cx.error(CheckError::ShapeMismatch {
                message,
                span: span(r.span),
                label,
                related: vec![labeled(
                    from_plan(model.span),
                    format!("`{}` is declared here", model.name),
                )],
                help: Some(help),
            });
            None
        };
        let Some(text) = &data.text else {
            return fail(
                self,
                format!(
                    "model `{}` reads token ids but `{}` is not text",
                    model.name, data.name
                ),
                "not text".into(),
                "token models train on `text(...)` data".into(),
            );
        };
        if !model.tokens {
            return fail(
                self,
                format!(
                    "`{}` is text but model `{}` reads numbers",
                    data.name, model.name
                ),
                "text".into(),
                format!(
                    "declare `input tokens[{}]` and start with `embedding(...)`",
                    text.max_len
                ),
            );
        }
        let vocab = match (&model.bert, model.layers.first().map(|l| &l.layer)) {
            (Some(bert), _) => {
                if text.max_len > bert.max_positions {
                    return fail(
                        self,
                        format!(
                            "`{}` has {} tokens per sample but `{}` has {} positions",
                            data.name, text.max_len, model.name, bert.max_positions
                        ),
                        format!("max_len {}", text.max_len),
                        format!("set `max_len: {}` or less", bert.max_positions),
                    );
                }
                bert.vocab
            }
            (None, Some(kd_plan::Layer::Embedding { vocab, .. })) => {
                if model.input != data.sample_shape {
                    return fail(
                        self,
                        format!(
                            "model `{}` takes {} tokens but `{}` has {} per sample",
                            model.name, model.input[0], data.name, text.max_len
                        ),
                        format!("max_len {}", text.max_len),
                        format!("declare `input tokens[{}]` in the model", text.max_len),
                    );
                }
                *vocab
            }
            _ => return Some(()),
        };
        let first = self
            .tokenizers
            .entry(model.name.clone())
            .or_insert_with(|| (text.tokenizer.clone(), data.name.clone()))
            .clone();
        if first.0 != text.tokenizer {
            return fail(
                self,
                format!(
                    "model `{}` reads `{}`, tokenised with `{}`, and `{}`, tokenised with `{}`",
                    model.name,
                    first.1,
                    first.0.display(),
                    data.name,
                    text.tokenizer.display()
                ),
                "another vocabulary".into(),
                "a token model reads one vocabulary: give every text data it reads the same tokenizer".into(),
            );
        }
        if text.vocab > vocab {
            return fail(
                self,
                format!(
                    "`{}`'s tokenizer has {} tokens but `{}` embeds only {vocab}",
                    data.name, text.vocab, model.name
                ),
                format!("ids up to {}", text.vocab - 1),
                format!("give the embedding `{}` rows", text.vocab),
            );
        }
        Some(())
    }

    fn stage(
        &mut self,
        decl: &StageDecl,
        models: &[ModelSpec],
        data: &[DataSpec],
        augments: &[AugmentSpec],
        losses: &Losses,
    ) -> Option<CheckedStage> {
        let name = decl.name.name.clone();
        let mut what: Option<(&StageStmt, Span)> = None;
        let mut loss = None;
        let mut optimizer = None;
        let mut schedule = None;
        let mut validate = None;
        let mut keep = None;
        let mut settings = Vec::new();
        let mut seen: Vec<(&'static str, Span)> = Vec::new();
        for stmt in &decl.statements {
            let single = match stmt {
                StageStmt::Loss(e) => Some(("loss", e.span)),
                StageStmt::Optimizer(c) => Some(("optimizer", c.span)),
                StageStmt::Schedule(c) => Some(("schedule", c.span)),
                StageStmt::Validate(r) => Some(("validate", r.span)),
                StageStmt::Keep { span: at, .. } => Some(("keep", *at)),
                _ => None,
            };
            if let Some((what, at)) = single {
                if seen.iter().any(|(w, _)| *w == what) {
                    self.error(CheckError::Stage {
                        message: format!("stage `{name}` has two `{what}` statements"),
                        span: span(at),
                        label: "a second one".into(),
                        help: Some(format!(
                            "keep one `{what}`: a second would silently replace the first"
                        )),
                    });
                    continue;
                }
                seen.push((what, at));
            }
            match stmt {
                StageStmt::Train { span: at, .. } | StageStmt::Distill { span: at, .. } => {
                    if let Some((_, first)) = what {
                        self.error(CheckError::Duplicate {
                            what: "training statement",
                            name: name.clone(),
                            span: span(*at),
                            first: span(first),
                        });
                    } else {
                        what = Some((stmt, *at));
                    }
                }
                StageStmt::Loss(e) => loss = Some(e),
                StageStmt::Optimizer(c) => optimizer = Some(c),
                StageStmt::Schedule(c) => schedule = Some(c),
                StageStmt::Validate(r) => validate = Some(r),
                StageStmt::Keep { best, span: at } => keep = Some((best.clone(), *at)),
                StageStmt::Setting(s) => settings.push(s.clone()),
            }
        }
        let Some((what, _)) = what else {
            self.error(CheckError::Missing {
                message: format!("stage `{name}` does not say what it trains"),
                span: span(decl.name.span),
                label: "no `train` or `distill`".into(),
                help: Some(
                    "add `train MODEL on DATA.SPLIT` or `distill TEACHER -> STUDENT on DATA.SPLIT`"
                        .into(),
                ),
            });
            return None;
        };
        if let StageStmt::Train { model, .. } | StageStmt::Distill { student: model, .. } = what {
            self.trained.insert(model.name.clone());
        }
        let (kind, trained, frozen, data_ref, augment) = match what {
            StageStmt::Train {
                model,
                data,
                augment,
                ..
            } => {
                let m = self.model(model, models);
                if let Some(m) = m.filter(|m| m.onnx.is_some()) {
                    self.invalid(
                        model.span,
                        format!(
                            "`{}` comes from an ONNX file, which kdc runs frozen",
                            m.name
                        ),
                        "cannot be trained",
                        Some(
                            "train a `model` declared in the pipeline, or distil from this one"
                                .into(),
                        ),
                    );
                    return None;
                }
                (StageKind::Train, m, Vec::new(), data, augment)
            }
            StageStmt::Distill {
                teachers,
                student,
                data,
                augment,
                ..
            } => {
                let s = self.model(student, models);
                let mut frozen: Vec<&ModelSpec> = Vec::new();
                let mut all_found = true;
                for (i, teacher) in teachers.iter().enumerate() {
                    if teachers[..i].iter().any(|t| t.name == teacher.name) {
                        self.invalid(
                            teacher.span,
                            format!("`{}` is named twice as a teacher of `{name}`", teacher.name),
                            "named before",
                            Some("name each teacher once; weigh its terms in the loss".into()),
                        );
                        return None;
                    }
                    let Some(t) = self.model(teacher, models) else {
                        all_found = false;
                        continue;
                    };
                    if t.role != Role::Teacher {
                        self.invalid(
                            teacher.span,
                            format!(
                                "`{}` distils from `{}`, which is not declared a teacher",
                                name, t.name
                            ),
                            "not a teacher",
                            Some(format!(
                                "declare it with `teacher {} = {}`",
                                t.name, t.architecture
                            )),
                        );
                    }
                    if s.is_some_and(|s| s.name == t.name) {
                        self.invalid(
                            student.span,
                            "a model cannot distil into itself".into(),
                            "same as the teacher",
                            None,
                        );
                        return None;
                    }
                    frozen.push(t);
                }
                let kind = match s {
                    Some(s) if all_found => StageKind::Distill {
                        teachers: frozen.iter().map(|t| t.name.clone()).collect(),
                        student: s.name.clone(),
                    },
                    _ => StageKind::Train,
                };
                (kind, s, frozen, data, augment)
            }
            _ => return None,
        };
        let split = self.split(data_ref, data);
        let augment_spec = match augment {
            Some(a) => match augments.iter().find(|x| x.name == a.name) {
                Some(spec) => Some((spec, a.span)),
                None => {
                    self.error(CheckError::UnknownName {
                        what: "augmentation",
                        name: a.name.clone(),
                        span: span(a.span),
                        help: did_you_mean(&a.name, augments.iter().map(|x| x.name.as_str()))
                            .or_else(|| Some(one_of(augments.iter().map(|x| x.name.as_str())))),
                    });
                    None
                }
            },
            None => None,
        };
        let optimizer = match optimizer {
            Some(c) => self.optimizer(c),
            None => {
                self.error(CheckError::Missing {
                    message: format!("stage `{name}` has no optimizer"),
                    span: span(decl.name.span),
                    label: "no `optimizer`".into(),
                    help: Some("add e.g. `optimizer adam(lr: 1e-3)` or `optimizer sgd(lr: 0.1, momentum: 0.9)`".into()),
                });
                None
            }
        };
        let schedule = match schedule {
            Some(c) => self.schedule(c),
            None => Some(Schedule {
                kind: ScheduleKind::Constant,
                warmup_epochs: 0,
            }),
        };
        let fields = self.fields(&settings, STAGE_SETTINGS, &format!("stage `{name}`"));
        let epochs = match fields.value("epochs") {
            Some(v) => self.count(v, "epochs", 1),
            None => {
                self.error(CheckError::Missing {
                    message: format!("stage `{name}` does not say how many epochs it runs"),
                    span: span(decl.name.span),
                    label: "no `epochs`".into(),
                    help: Some("add e.g. `epochs 10`".into()),
                });
                None
            }
        };
        let batch = fields
            .value("batch")
            .map_or(Some(32), |v| self.count(v, "batch", 1));
        let clip = match fields.value("clip") {
            Some(v) => Some(self.number_in(v, "clip", |c| c > 0.0, "greater than 0")?),
            None => None,
        };
        let early_stop = match fields.value("early_stop") {
            Some(v) => Some(self.count(v, "early_stop", 1)?),
            None => None,
        };
        let validate = match validate {
            Some(r) => {
                let (spec, labeled) = self.split(r, data)?;
                if !labeled {
                    self.error(CheckError::NoLabels {
                        data: r.data.name.clone(),
                        split: r.split.name.clone(),
                        span: span(r.span),
                        why: "validation needs labels".into(),
                        help: Some("validate on a labelled split".into()),
                    });
                }
                if let Some(t) = trained {
                    if self.fits(t, spec, r).is_some() {
                        self.predicts_classes(t, spec, r);
                    }
                }
                let keep = match &keep {
                    Some((Some(m), _)) => {
                        match metric(&m.name).filter(|_| KEEP_METRICS.contains(&m.name.as_str())) {
                            Some(metric) => Keep::Best(metric),
                            None => {
                                self.error(CheckError::UnknownName {
                                    what: "metric",
                                    name: m.name.clone(),
                                    span: span(m.span),
                                    help: did_you_mean(&m.name, KEEP_METRICS.iter().copied())
                                        .or_else(|| Some(one_of(KEEP_METRICS.iter().copied()))),
                                });
                                Keep::Last
                            }
                        }
                    }
                    _ => Keep::Last,
                };
                Some(Validate {
                    data: r.data.name.clone(),
                    split: r.split.name.clone(),
                    keep,
                    early_stop,
                })
            }
            None => {
                if let Some((_, at)) = keep.filter(|(b, _)| b.is_some()) {
                    self.error(CheckError::Stage {
                        message: "`keep best` needs a validation split".into(),
                        span: span(at),
                        label: "nothing to compare".into(),
                        help: Some("add `validate on DATA.SPLIT`".into()),
                    });
                }
                if let Some(v) = fields.value("early_stop") {
                    self.error(CheckError::Stage {
                        message: "`early_stop` needs a validation split".into(),
                        span: span(v.span),
                        label: "nothing to watch".into(),
                        help: Some("add `validate on DATA.SPLIT`".into()),
                    });
                }
                None
            }
        };

        let trained = trained?;
        let (data_spec, labeled) = split?;
        self.fits(trained, data_spec, data_ref)?;
        for f in &frozen {
            self.fits(f, data_spec, data_ref)?;
        }
        if let Some((spec, at)) = augment_spec {
            let text = data_spec.text.is_some();
            let misfit = spec.ops.iter().find(|op| {
                needs_text(op) != text
                    || (text
                        && matches!(
                            op,
                            kd_plan::AugmentOp::Noise { .. } | kd_plan::AugmentOp::Mixup { .. }
                        ))
            });
            if let Some(op) = misfit.filter(|_| text || spec.ops.iter().any(needs_text)) {
                let (kind, help) = if text {
                    (
                        "holds text",
                        "text takes token_dropout, mask_tokens, span_delete and swap_tokens",
                    )
                } else {
                    (
                        "holds numbers, not text",
                        "token operations need `text(...)` data",
                    )
                };
                self.error(CheckError::Stage {
                    message: format!(
                        "augmentation `{}` has `{}`, but `{}` {kind}",
                        spec.name,
                        super::data::op_name(op),
                        data_spec.name,
                    ),
                    span: span(at),
                    label: "does not fit the data".into(),
                    help: Some(help.into()),
                });
                return None;
            }
            let no_mask = data_spec.text.as_ref().is_some_and(|t| t.mask_id.is_none());
            if no_mask
                && spec
                    .ops
                    .iter()
                    .any(|op| matches!(op, kd_plan::AugmentOp::MaskTokens { .. }))
            {
                self.error(CheckError::Stage {
                    message: format!(
                        "augmentation `{}` has `mask_tokens`, but the tokenizer of `{}` has no mask token",
                        spec.name, data_spec.name
                    ),
                    span: span(at),
                    label: "nothing to mask with".into(),
                    help: Some("use a tokenizer with [MASK] or <mask>, or token_dropout instead".into()),
                });
                return None;
            }
            if data_spec.sample_shape.len() != 3 && !text {
                if let Some(op) = spec.ops.iter().find(|op| needs_image(op)) {
                    self.error(CheckError::Stage {
                        message: format!(
                            "augmentation `{}` has an image operation (`{}`) but `{}` holds samples of shape {:?}",
                            spec.name,
                            super::data::op_name(op),
                            data_spec.name,
                            data_spec.sample_shape
                        ),
                        span: span(at),
                        label: "not images".into(),
                        help: Some("give the data an image shape: `shape: [1, 8, 8]`".into()),
                    });
                    return None;
                }
            }
        }
        let mut stage_models = vec![trained];
        stage_models.extend(frozen.iter().copied());
        let scope = Scope {
            stage: &name,
            models: stage_models,
            all_models: models,
            trained: &trained.name,
            labels: if labeled {
                Ok(data_spec.classes)
            } else {
                Err((data_ref.data.name.clone(), data_ref.split.name.clone()))
            },
            data_ref: data_ref.span,
        };
        let loss = match loss {
            Some(e) => self.loss_expr(e, &scope, losses),
            None => {
                self.error(CheckError::Missing {
                    message: format!("stage `{name}` has no loss"),
                    span: span(decl.name.span),
                    label: "no `loss`".into(),
                    help: Some(format!(
                        "add e.g. `loss cross_entropy({}.logits, label)`",
                        trained.name
                    )),
                });
                None
            }
        };
        if let (StageKind::Distill { teachers, .. }, Some(l)) = (&kind, &loss) {
            let read = l.models();
            for teacher in teachers.iter().filter(|t| !read.contains(t)) {
                self.error(CheckError::Stage {
                    message: format!("stage `{name}` distils from `{teacher}` but its loss never reads `{teacher}`"),
                    span: span(l.span),
                    label: format!("no `{teacher}.…` here"),
                    help: Some(if teachers.len() > 1 {
                        format!("give each teacher a term, e.g. `kl(softmax({teacher}.logits, T), softmax({}.logits, T))`, or an `ensemble(...)` of their softened outputs", trained.name)
                    } else {
                        format!("use the teacher's outputs, e.g. `kl(softmax({teacher}.logits, T), softmax({}.logits, T))`, or make this a `train` stage", trained.name)
                    }),
                });
            }
        }
        Some(CheckedStage {
            name,
            kind,
            trains: trained.name.clone(),
            frozen: frozen.iter().map(|f| f.name.clone()).collect(),
            data: data_spec.name.clone(),
            split: data_ref.split.name.clone(),
            augment: augment_spec.map(|(s, _)| s.name.clone()),
            loss: loss?,
            epochs: epochs?,
            batch: batch?,
            optimizer: optimizer?,
            schedule: schedule?,
            clip,
            validate,
            baseline_of: None,
            split_labeled: labeled,
            span: decl.span,
        })
    }

    fn optimizer(&mut self, call: &Call) -> Option<Optimizer> {
        let name = call.name.name.as_str();
        let lr_of =
            |cx: &mut Self, args: &super::values::Args, default: Option<f64>| -> Option<f64> {
                match args.get("lr", Some(0)) {
                    Some(v) => cx.number_in(
                        v,
                        "the learning rate",
                        |lr| lr > 0.0 && lr.is_finite(),
                        "greater than 0",
                    ),
                    None => default.or_else(|| {
                        cx.error(CheckError::Missing {
                            message: format!("`{name}` needs a learning rate"),
                            span: span(call.span),
                            label: "no `lr`".into(),
                            help: Some(format!("`{name}(lr: 0.1)`")),
                        });
                        None
                    }),
                }
            };
        let unit =
            |cx: &mut Self, args: &super::values::Args, key: &str, default: f64| -> Option<f64> {
                match args.get(key, None) {
                    Some(v) => cx.number_in(v, key, |x| (0.0..1.0).contains(&x), "in [0, 1)"),
                    None => Some(default),
                }
            };
        let decay = |cx: &mut Self, args: &super::values::Args, default: f64| -> Option<f64> {
            match args.get("weight_decay", None) {
                Some(v) => cx.number_in(v, "weight_decay", |x| x >= 0.0, "at least 0"),
                None => Some(default),
            }
        };
        match name {
            "sgd" => {
                let args = self.args(call, &["lr", "momentum", "nesterov", "weight_decay"], 1);
                let lr = lr_of(self, &args, None);
                let momentum = unit(self, &args, "momentum", 0.0);
                let nesterov = args
                    .get("nesterov", None)
                    .map_or(Some(false), |v| self.boolean(v, "nesterov"));
                let weight_decay = decay(self, &args, 0.0);
                if nesterov == Some(true) && momentum == Some(0.0) {
                    self.invalid(
                        call.span,
                        "nesterov momentum needs `momentum` greater than 0".into(),
                        "no momentum",
                        Some("e.g. `sgd(lr: 0.1, momentum: 0.9, nesterov: true)`".into()),
                    );
                    return None;
                }
                Some(Optimizer::Sgd {
                    lr: lr?,
                    momentum: momentum?,
                    nesterov: nesterov?,
                    weight_decay: weight_decay?,
                })
            }
            "adam" | "adamw" => {
                let args = self.args(call, &["lr", "beta1", "beta2", "eps", "weight_decay"], 1);
                let lr = lr_of(self, &args, Some(1e-3));
                let beta1 = unit(self, &args, "beta1", 0.9);
                let beta2 = unit(self, &args, "beta2", 0.999);
                let eps = match args.get("eps", None) {
                    Some(v) => self.number_in(v, "eps", |e| e > 0.0, "greater than 0"),
                    None => Some(1e-8),
                };
                let weight_decay = decay(self, &args, if name == "adamw" { 0.01 } else { 0.0 });
                let (lr, beta1, beta2, eps, weight_decay) =
                    (lr?, beta1?, beta2?, eps?, weight_decay?);
                Some(if name == "adam" {
                    Optimizer::Adam {
                        lr,
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                    }
                } else {
                    Optimizer::AdamW {
                        lr,
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                    }
                })
            }
            other => {
                self.error(CheckError::UnknownName {
                    what: "optimizer",
                    name: other.to_string(),
                    span: span(call.name.span),
                    help: did_you_mean(other, OPTIMIZERS.iter().copied())
                        .or_else(|| Some(one_of(OPTIMIZERS.iter().copied()))),
                });
                None
            }
        }
    }

    fn schedule(&mut self, call: &Call) -> Option<Schedule> {
        let name = call.name.name.as_str();
        let known = SCHEDULES.iter().copied();
        if !SCHEDULES.contains(&name) {
            self.error(CheckError::UnknownName {
                what: "schedule",
                name: name.to_string(),
                span: span(call.name.span),
                help: did_you_mean(name, known.clone()).or_else(|| Some(one_of(known))),
            });
            return None;
        }
        let allowed: &[&str] = match name {
            "step" => &["every", "gamma", "warmup"],
            "cosine" => &["min_lr", "warmup"],
            "warmup" => &["epochs"],
            _ => &["warmup"],
        };
        let args = self.args(call, allowed, if name == "warmup" { 1 } else { 0 });
        let warmup_value = if name == "warmup" {
            args.get("epochs", Some(0))
        } else {
            args.get("warmup", None)
        };
        let warmup_epochs = match warmup_value {
            Some(v) => self.count(v, "warmup epochs", 0)?,
            None => 0,
        };
        let kind = match name {
            "step" => {
                let every = match args.get("every", None) {
                    Some(v) => self.count(v, "every", 1)?,
                    None => {
                        self.error(CheckError::Missing {
                            message: "`step` needs `every`: how many epochs between decays".into(),
                            span: span(call.span),
                            label: "no `every`".into(),
                            help: Some("`schedule step(every: 10, gamma: 0.1)`".into()),
                        });
                        return None;
                    }
                };
                let gamma = match args.get("gamma", None) {
                    Some(v) => self.number_in(v, "gamma", |g| g > 0.0 && g <= 1.0, "in (0, 1]")?,
                    None => 0.1,
                };
                ScheduleKind::Step { every, gamma }
            }
            "cosine" => ScheduleKind::Cosine {
                min_lr: match args.get("min_lr", None) {
                    Some(v) => self.number_in(v, "min_lr", |m| m >= 0.0, "at least 0")?,
                    None => 0.0,
                },
            },
            "linear" => ScheduleKind::Linear,
            _ => ScheduleKind::Constant,
        };
        Some(Schedule {
            kind,
            warmup_epochs,
        })
    }

    /// `baseline scratch = s trained like a + b without t`: a copy of the student, from the
    /// same initial weights, trained by the same stages' steps on hard labels alone.
    pub(super) fn baselines(
        &mut self,
        program: &Program,
        models: &mut Vec<ModelSpec>,
        stages: &mut Vec<CheckedStage>,
    ) {
        for decl in &program.declarations {
            let Declaration::Baseline(b) = decl else {
                continue;
            };
            let Some(student) = self.model(&b.student, models).cloned() else {
                continue;
            };
            // Whatever goes wrong below is reported once; later uses of the baseline's name
            // stay quiet (it is found among the models when it checks).
            self.failed.insert(format!("model {}", b.name.name));
            // A stage that failed to check was reported already; say nothing more about it.
            if b.stages
                .iter()
                .any(|n| self.failed.contains(&format!("stage {}", n.name)))
            {
                continue;
            }
            // `without` names what the baseline leaves out: each a teacher of the stages,
            // and, when written, all of them.
            if let Some(last) = b.without.last() {
                let named = |s: &&CheckedStage| b.stages.iter().any(|n| n.name == s.name);
                let mut teachers: Vec<&String> = stages
                    .iter()
                    .filter(named)
                    .flat_map(|s| &s.frozen)
                    .collect();
                teachers.dedup();
                for w in &b.without {
                    if !teachers.contains(&&w.name) {
                        self.invalid(
                            w.span,
                            format!("none of the stages named distils from `{}`", w.name),
                            "not used by these stages",
                            None,
                        );
                    }
                }
                let left: Vec<&str> = teachers
                    .iter()
                    .filter(|t| !b.without.iter().any(|w| w.name == ***t))
                    .map(|t| t.as_str())
                    .collect();
                if !left.is_empty() {
                    let mut all: Vec<&str> = b.without.iter().map(|w| w.name.as_str()).collect();
                    all.extend(&left);
                    self.invalid(
                        last.span,
                        format!(
                            "the baseline also leaves out {}, which these stages distil from",
                            list(left.iter().copied())
                        ),
                        "not every teacher",
                        Some(format!("write `without {}`", all.join(", "))),
                    );
                }
            }
            let Some(logits) = student
                .taps
                .iter()
                .find(|t| t.name == "output")
                .filter(|t| t.ty.kind == Kind::Logits)
            else {
                self.invalid(
                    b.student.span,
                    format!(
                        "a baseline trains on hard labels and needs `{}` to end in logits",
                        student.name
                    ),
                    "ends in probabilities",
                    Some("drop the final softmax; the losses apply it".into()),
                );
                continue;
            };
            let mut copies = Vec::new();
            for stage_name in &b.stages {
                let Some(stage) = stages.iter().find(|s| s.name == stage_name.name) else {
                    self.error(CheckError::UnknownName {
                        what: "stage",
                        name: stage_name.name.clone(),
                        span: span(stage_name.span),
                        help: did_you_mean(
                            &stage_name.name,
                            stages.iter().map(|s| s.name.as_str()),
                        ),
                    });
                    continue;
                };
                if stage.trains != student.name {
                    self.invalid(
                        stage_name.span,
                        format!(
                            "stage `{}` trains `{}`, not `{}`",
                            stage.name, stage.trains, student.name
                        ),
                        "another model",
                        None,
                    );
                    continue;
                }
                let labeled = stage.split_labeled;
                if !labeled {
                    self.error(CheckError::NoLabels {
                        data: stage.data.clone(),
                        split: stage.split.clone(),
                        span: span(stage_name.span),
                        why: "a baseline learns from labels".into(),
                        help: Some("a baseline copies stages that train on labelled splits".into()),
                    });
                    continue;
                }
                let at = b.span;
                let tap = TypedExpr {
                    node: TypedNode::Tap {
                        model: b.name.name.clone(),
                        port: "output".into(),
                    },
                    ty: logits.ty.clone(),
                    span: at,
                };
                let label = TypedExpr {
                    node: TypedNode::Label,
                    ty: TensorType {
                        kind: Kind::Labels,
                        shape: vec![],
                    },
                    span: at,
                };
                let mut copy = stage.clone();
                copy.name = format!("{}/{}", b.name.name, stage.name);
                copy.kind = StageKind::Train;
                copy.trains = b.name.name.clone();
                copy.frozen = Vec::new();
                copy.loss = TypedExpr {
                    node: TypedNode::Apply {
                        op: Op::CrossEntropy,
                        args: vec![tap, label],
                    },
                    ty: TensorType::scalar(),
                    span: at,
                };
                copy.baseline_of = Some(stage.name.clone());
                copies.push(copy);
            }
            let mut model = student.clone();
            model.name = b.name.name.clone();
            model.role = Role::Baseline;
            model.init_key = student.init_key.clone();
            model.span = to_plan(b.span);
            models.push(model);
            stages.extend(copies);
        }
    }

    pub(super) fn evaluations(
        &mut self,
        program: &Program,
        models: &[ModelSpec],
        data: &[DataSpec],
        stages: &[CheckedStage],
    ) -> Vec<Evaluation> {
        let mut out = Vec::new();
        for decl in &program.declarations {
            let Declaration::Evaluate(e) = decl else {
                continue;
            };
            let split = self.split(&e.data, data);
            let mut names = Vec::new();
            for m in &e.models {
                let Some(model) = self.model(m, models) else {
                    continue;
                };
                if let Some((spec, labeled)) = split {
                    if !labeled {
                        self.error(CheckError::NoLabels {
                            data: spec.name.clone(),
                            split: e.data.split.name.clone(),
                            span: span(e.data.span),
                            why: "evaluation compares predictions with labels".into(),
                            help: None,
                        });
                    }
                    if self.fits(model, spec, &e.data).is_some() {
                        self.predicts_classes(model, spec, &e.data);
                    }
                }
                self.trained_somewhere(model, stages, "evaluated", m.span);
                names.push(model.name.clone());
            }
            let mut metrics = Vec::new();
            for m in &e.metrics {
                match metric(&m.name) {
                    Some(x) => metrics.push(x),
                    None => self.error(CheckError::UnknownName {
                        what: "metric",
                        name: m.name.clone(),
                        span: span(m.span),
                        help: did_you_mean(&m.name, METRICS.iter().copied())
                            .or_else(|| Some(one_of(METRICS.iter().copied()))),
                    }),
                }
            }
            if metrics.is_empty() {
                metrics = vec![Metric::Accuracy, Metric::F1];
            }
            if split.is_some() {
                out.push(Evaluation {
                    models: names,
                    data: e.data.data.name.clone(),
                    split: e.data.split.name.clone(),
                    metrics,
                    span: to_plan(e.span),
                });
            }
        }
        out
    }

    fn trained_somewhere(
        &mut self,
        model: &ModelSpec,
        stages: &[CheckedStage],
        used: &'static str,
        at: Span,
    ) {
        let trained =
            stages.iter().any(|s| s.trains == model.name) || self.trained.contains(&model.name);
        // Weights from a file (safetensors or ONNX) count as trained; a pruned model's
        // source is checked by `Cx::pruning_order`.
        let made = model.pruned.is_some() || model.quantized.is_some();
        if model.init_from.is_none() && model.onnx.is_none() && !made && !trained {
            self.error(CheckError::NeverTrained {
                model: model.name.clone(),
                used,
                role: match model.role {
                    Role::Teacher => "teacher",
                    _ => "student",
                },
                span: span(at),
            });
        }
    }

    pub(super) fn exports(
        &mut self,
        program: &Program,
        models: &[ModelSpec],
        stages: &[CheckedStage],
    ) -> Vec<Export> {
        let mut out: Vec<Export> = Vec::new();
        for decl in &program.declarations {
            let Declaration::Export(e) = decl else {
                continue;
            };
            let Some(model) = self.model(&e.model, models) else {
                continue;
            };
            self.trained_somewhere(model, stages, "exported", e.model.span);
            if model.onnx.is_some() {
                self.invalid(
                    e.model.span,
                    format!(
                        "`{}` comes from an ONNX file: it has no weights of kdc's to export",
                        model.name
                    ),
                    "an ONNX model",
                    None,
                );
                continue;
            }
            let paths: Vec<(String, Span)> = if e.paths.is_empty() {
                vec![(format!("{}.safetensors", model.name), e.span)]
            } else {
                e.paths
                    .iter()
                    .filter_map(|p| self.string(p, "an export path").map(|s| (s, p.span)))
                    .collect()
            };
            for (path, at) in paths {
                if !path.ends_with(".safetensors") && !path.ends_with(".onnx") {
                    self.invalid(
                        at,
                        format!("kdc exports .safetensors and .onnx files; `{path}` is neither"),
                        "unknown format",
                        Some(
                            "write `export s to \"student.safetensors\", \"student.onnx\"`".into(),
                        ),
                    );
                    continue;
                }
                if path.ends_with(".onnx") {
                    let blocker = model
                        .layers
                        .iter()
                        .find_map(|l| kd_plan::onnx_unsupported(&l.layer))
                        .map(|kind| format!("`{kind}` layer inside a residual block"));
                    if let Some(blocker) = blocker {
                        self.invalid(
                            at,
                            format!("kdc cannot write `{}`'s {blocker} to ONNX", model.name),
                            "not exportable to ONNX",
                            Some("export it to .safetensors".into()),
                        );
                        continue;
                    }
                }
                if let Some(reserved) = kd_plan::reserved_in_run_folder(&path) {
                    self.invalid(
                        at,
                        format!("`{path}` is kdc's own {reserved} in the run folder"),
                        "reserved name",
                        Some("give the export another name, such as `student.safetensors`".into()),
                    );
                    continue;
                }
                if std::path::Path::new(&path).is_absolute() || path.split('/').any(|c| c == "..") {
                    self.invalid(
                        at,
                        format!("`{path}` leaves the run folder"),
                        "exports are written inside the run folder",
                        Some("give a relative path such as `student.safetensors`".into()),
                    );
                    continue;
                }
                if let Some(first) = out.iter().find(|x| x.path.to_string_lossy() == path) {
                    self.error(CheckError::Duplicate {
                        what: "export path",
                        name: path.clone(),
                        span: span(at),
                        first: span(from_plan(first.span)),
                    });
                    continue;
                }
                out.push(Export {
                    model: model.name.clone(),
                    path: path.into(),
                    span: to_plan(at),
                });
            }
        }
        out
    }
}

pub(super) fn from_plan(s: kd_plan::Span) -> Span {
    Span::new(s.start, s.end)
}
