//! Loss expressions: names resolved against the stage's models, named losses inlined with
//! their parameters, and every built-in's argument kinds and order enforced.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use kd_grammar::ast::{
    BinaryOp, Declaration, Expr, ExprArg, ExprKind, Ident, LossDecl, Program, Span,
};
use kd_plan::{Kind, ModelSpec, Op, TensorType, ValueSchedule};

use super::values::format_number;
use super::{describe_type, kind_name, Cx, TypedExpr, TypedNode};
use crate::diagnostics::{did_you_mean, labeled, list, one_of, span, CheckError};
use crate::vocabulary::{BUILTINS, VALUE_SCHEDULES};

/// The program's named losses, and which of them some stage uses.
pub(crate) struct Losses {
    decls: HashMap<String, LossDecl>,
    used: RefCell<HashSet<String>>,
}

impl Losses {
    pub fn used(&self, name: &str) -> bool {
        self.used.borrow().contains(name)
    }
    fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.decls.keys().map(String::as_str)
    }
}

/// What a loss expression may refer to in one stage.
pub(crate) struct Scope<'a> {
    pub stage: &'a str,
    /// The models the stage runs: the trained one first.
    pub models: Vec<&'a ModelSpec>,
    /// All models of the program, to tell "not in this stage" from "unknown".
    pub all_models: &'a [ModelSpec],
    pub trained: &'a str,
    /// `Err(why)` when the stage's split has no labels.
    pub labels: Result<usize, (String, String)>,
    pub data_ref: Span,
}

struct Env {
    params: HashMap<String, TypedExpr>,
    /// Named losses being inlined, to refuse recursion.
    inlining: Vec<String>,
}

impl Cx<'_> {
    pub(super) fn loss_decls(&mut self, program: &Program) -> Losses {
        let mut decls = HashMap::new();
        for decl in &program.declarations {
            if let Declaration::Loss(l) = decl {
                if BUILTINS.contains(&l.name.name.as_str()) {
                    self.invalid(
                        l.name.span,
                        format!(
                            "`{}` is a built-in function of loss expressions and cannot be redefined",
                            l.name.name
                        ),
                        "choose another name",
                        None,
                    );
                }
                decls
                    .entry(l.name.name.clone())
                    .or_insert_with(|| l.clone());
            }
        }
        Losses {
            decls,
            used: RefCell::new(HashSet::new()),
        }
    }

    /// Types a stage's loss; `None` after reporting what is wrong.
    pub(crate) fn loss_expr(
        &mut self,
        expr: &Expr,
        scope: &Scope,
        losses: &Losses,
    ) -> Option<TypedExpr> {
        let env = Env {
            params: HashMap::new(),
            inlining: Vec::new(),
        };
        let typed = self.expr(expr, scope, losses, &env)?;
        if let Some(at) = unsettled_projection(&typed) {
            self.invalid(
                at,
                "this projection's width is not known".into(),
                "project to what width?",
                Some("compare it in `mse` or `cosine` with a tensor of the target width, or write the width: `project(s.hidden, 384)`".into()),
            );
            return None;
        }
        if typed.ty.kind != Kind::Scalar {
            self.error(CheckError::NotScalar {
                stage: scope.stage.to_string(),
                found: describe_type(&typed.ty),
                span: span(expr.span),
            });
            return None;
        }
        if !typed.models().iter().any(|m| m == scope.trained) {
            self.error(CheckError::Stage {
                message: format!(
                    "the loss of stage `{}` does not depend on `{}`, the model it trains",
                    scope.stage, scope.trained
                ),
                span: span(expr.span),
                label: format!("no `{}.…` here", scope.trained),
                help: Some(format!(
                    "use an output of `{}`, e.g. `cross_entropy({}.logits, label)`",
                    scope.trained, scope.trained
                )),
            });
            return None;
        }
        Some(typed)
    }

    fn expr(
        &mut self,
        expr: &Expr,
        scope: &Scope,
        losses: &Losses,
        env: &Env,
    ) -> Option<TypedExpr> {
        let at = expr.span;
        match &expr.kind {
            ExprKind::Number(v) => Some(constant(*v, at)),
            ExprKind::Neg(inner) => {
                let inner = self.expr(inner, scope, losses, env)?;
                if inner.ty.kind == Kind::Labels {
                    return self.arith_labels(inner.span);
                }
                let ty = TensorType {
                    kind: if inner.ty.kind == Kind::Scalar {
                        Kind::Scalar
                    } else {
                        Kind::Features
                    },
                    shape: inner.ty.shape.clone(),
                };
                Some(apply(Op::Neg, vec![inner], ty, at))
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.expr(lhs, scope, losses, env);
                let r = self.expr(rhs, scope, losses, env);
                self.binary(*op, l?, r?, at)
            }
            ExprKind::Name(ident) => self.name(ident, scope, losses, env),
            ExprKind::Member { object, field } => self.member(object, field, scope, at),
            ExprKind::Call { name, args } => self.call(name, args, scope, losses, env, at),
        }
    }

    fn arith_labels(&mut self, at: Span) -> Option<TypedExpr> {
        self.invalid(
            at,
            "labels cannot take part in arithmetic".into(),
            "these are labels",
            Some("labels go into `cross_entropy(logits, label)`".into()),
        );
        None
    }

    fn binary(&mut self, op: BinaryOp, l: TypedExpr, r: TypedExpr, at: Span) -> Option<TypedExpr> {
        if l.ty.kind == Kind::Labels {
            return self.arith_labels(l.span);
        }
        if r.ty.kind == Kind::Labels {
            return self.arith_labels(r.span);
        }
        let plan_op = match op {
            BinaryOp::Add => Op::Add,
            BinaryOp::Sub => Op::Sub,
            BinaryOp::Mul => Op::Mul,
            BinaryOp::Div => Op::Div,
            BinaryOp::Pow => Op::Pow,
        };
        let (ls, rs) = (l.ty.kind == Kind::Scalar, r.ty.kind == Kind::Scalar);
        if op == BinaryOp::Pow && !rs {
            self.invalid(
                r.span,
                "an exponent must be a number, not a tensor".into(),
                "a tensor",
                None,
            );
            return None;
        }
        let ty = match (ls, rs) {
            (true, true) => TensorType::scalar(),
            // Scaling logits by a number keeps them logits (`s.logits / T`).
            (false, true) => TensorType {
                kind: if l.ty.kind == Kind::Logits && matches!(op, BinaryOp::Mul | BinaryOp::Div) {
                    Kind::Logits
                } else {
                    Kind::Features
                },
                shape: l.ty.shape.clone(),
            },
            (true, false) => TensorType {
                kind: if r.ty.kind == Kind::Logits && op == BinaryOp::Mul {
                    Kind::Logits
                } else {
                    Kind::Features
                },
                shape: r.ty.shape.clone(),
            },
            (false, false) => {
                if l.ty.shape != r.ty.shape {
                    self.error(CheckError::ShapeMismatch {
                        message: format!(
                            "`{}` on tensors of shapes {:?} and {:?}",
                            op.symbol(),
                            l.ty.shape,
                            r.ty.shape
                        ),
                        span: span(l.span),
                        label: format!("{:?}", l.ty.shape),
                        related: vec![labeled(r.span, format!("{:?}", r.ty.shape))],
                        help: None,
                    });
                    return None;
                }
                TensorType {
                    kind: Kind::Features,
                    shape: l.ty.shape.clone(),
                }
            }
        };
        Some(apply(plan_op, vec![l, r], ty, at))
    }

    fn name(
        &mut self,
        ident: &Ident,
        scope: &Scope,
        losses: &Losses,
        env: &Env,
    ) -> Option<TypedExpr> {
        if let Some(bound) = env.params.get(&ident.name) {
            return Some(bound.clone());
        }
        if ident.name == "label" || ident.name == "labels" {
            return match &scope.labels {
                Ok(_) => Some(TypedExpr {
                    node: TypedNode::Label,
                    ty: TensorType {
                        kind: Kind::Labels,
                        shape: vec![],
                    },
                    span: ident.span,
                }),
                Err((data, split)) => {
                    self.error(CheckError::NoLabels {
                        data: data.clone(),
                        split: split.clone(),
                        span: span(ident.span),
                        why: "labels are used here".into(),
                        help: Some("an unlabeled split is a transfer set: distil on it with a loss that uses only the teacher's outputs".into()),
                    });
                    None
                }
            };
        }
        if losses.decls.contains_key(&ident.name) {
            return self.inline(ident, &[], scope, losses, env, ident.span);
        }
        let mut candidates: Vec<&str> = env.params.keys().map(String::as_str).collect();
        candidates.push("label");
        candidates.extend(losses.names());
        let models: Vec<&str> = scope.models.iter().map(|m| m.name.as_str()).collect();
        let help = if models.contains(&ident.name.as_str()) {
            Some(format!("name one of its outputs: `{}.logits`", ident.name))
        } else {
            did_you_mean(&ident.name, candidates.iter().copied())
                .or_else(|| Some(format!("names here: {}", list(candidates.iter().copied()))))
        };
        self.error(CheckError::UnknownName {
            what: "name",
            name: ident.name.clone(),
            span: span(ident.span),
            help,
        });
        None
    }

    fn member(
        &mut self,
        object: &Ident,
        field: &Ident,
        scope: &Scope,
        at: Span,
    ) -> Option<TypedExpr> {
        let Some(model) = scope.models.iter().find(|m| m.name == object.name) else {
            if scope.all_models.iter().any(|m| m.name == object.name) {
                self.error(CheckError::Stage {
                    message: format!(
                        "model `{}` does not take part in stage `{}`",
                        object.name, scope.stage
                    ),
                    span: span(object.span),
                    label: "not in this stage".into(),
                    help: Some(format!(
                        "this stage runs {}",
                        list(scope.models.iter().map(|m| m.name.as_str()))
                    )),
                });
            } else {
                self.error(CheckError::UnknownName {
                    what: "model",
                    name: object.name.clone(),
                    span: span(object.span),
                    help: did_you_mean(&object.name, scope.models.iter().map(|m| m.name.as_str()))
                        .or_else(|| {
                            Some(format!(
                                "this stage runs {}",
                                list(scope.models.iter().map(|m| m.name.as_str()))
                            ))
                        }),
                });
            }
            return None;
        };
        let Some(tap) = model.taps.iter().find(|t| t.name == field.name) else {
            let names = model.taps.iter().map(|t| t.name.as_str());
            self.error(CheckError::UnknownName {
                what: "tap",
                name: format!("{}.{}", object.name, field.name),
                span: span(field.span),
                help: did_you_mean(&field.name, names.clone())
                    .map(|h| format!("{h} (`{}` has taps {})", model.name, list(names.clone())))
                    .or_else(|| {
                        Some(format!(
                            "`{}` ({}) has taps {}; name a layer's output with `as NAME`",
                            model.name,
                            model.architecture,
                            list(names)
                        ))
                    }),
            });
            return None;
        };
        Some(TypedExpr {
            node: TypedNode::Tap {
                model: model.name.clone(),
                port: tap.name.clone(),
            },
            ty: tap.ty.clone(),
            span: at,
        })
    }

    fn call(
        &mut self,
        name: &Ident,
        args: &[ExprArg],
        scope: &Scope,
        losses: &Losses,
        env: &Env,
        at: Span,
    ) -> Option<TypedExpr> {
        if losses.decls.contains_key(&name.name) {
            return self.inline(name, args, scope, losses, env, at);
        }
        if is_schedule(&name.name, args) {
            self.invalid(
                name.span,
                format!("`{}(...)` here: a schedule gives a named loss's parameter its value", name.name),
                "not a parameter's value",
                Some(format!(
                    "declare the parameter and bind it: `loss ramp(w = 1) = w * ...`, then `ramp(w = {}(...))` in the stage",
                    name.name
                )),
            );
            return None;
        }
        if !BUILTINS.contains(&name.name.as_str()) {
            let mut candidates: Vec<&str> = BUILTINS.to_vec();
            candidates.extend(losses.names());
            self.error(CheckError::UnknownName {
                what: "function",
                name: name.name.clone(),
                span: span(name.span),
                help: did_you_mean(&name.name, candidates.iter().copied())
                    .or_else(|| Some(one_of(candidates.iter().copied()))),
            });
            return None;
        }
        if name.name == "ensemble" {
            return self.ensemble(name, args, scope, losses, env, at);
        }
        let (params, required): (&[&str], usize) = match name.name.as_str() {
            "softmax" | "log_softmax" => (&["x", "T"], 1),
            "kl" => (&["p", "q"], 2),
            "cross_entropy" => (&["logits", "labels"], 2),
            "soft_cross_entropy" => (&["q", "p"], 2),
            "project" => (&["x", "width"], 1),
            _ => (&["a", "b"], 2),
        };
        let mut slots: Vec<Option<&Expr>> = vec![None; params.len()];
        let mut next = 0;
        for arg in args {
            let index = match &arg.name {
                Some(n) => match params.iter().position(|p| *p == n.name) {
                    Some(i) => i,
                    None => {
                        self.invalid(
                            n.span,
                            format!("`{}` has no argument `{}`", name.name, n.name),
                            "unknown argument",
                            Some(format!("its arguments: {}", list(params.iter().copied()))),
                        );
                        return None;
                    }
                },
                None => {
                    let i = next;
                    next += 1;
                    i
                }
            };
            if index >= params.len() {
                self.invalid(
                    arg.value.span,
                    format!("`{}` takes {} arguments", name.name, params.len()),
                    "one too many",
                    None,
                );
                return None;
            }
            slots[index] = Some(&arg.value);
        }
        if slots.iter().take(required).any(Option::is_none) {
            self.error(CheckError::Missing {
                message: format!(
                    "`{}` needs {} argument(s): {}",
                    name.name,
                    required,
                    params[..required].join(", ")
                ),
                span: span(at),
                label: "too few arguments".into(),
                help: None,
            });
            return None;
        }
        let typed: Vec<Option<TypedExpr>> = slots
            .iter()
            .map(|s| s.and_then(|e| self.expr(e, scope, losses, env)))
            .collect();
        if typed
            .iter()
            .zip(&slots)
            .any(|(t, s)| s.is_some() && t.is_none())
        {
            return None;
        }
        let mut typed: Vec<TypedExpr> = typed.into_iter().flatten().collect();
        if name.name != "project" {
            // A `project(x)` without a width takes the width of what it is compared with.
            if let [a, b] = typed.as_mut_slice() {
                let (a_width, b_width) = (a.ty.shape.last().copied(), b.ty.shape.last().copied());
                if let Some(w) = b_width {
                    settle_projection(a, w);
                }
                if let Some(w) = a_width {
                    settle_projection(b, w);
                }
            }
        }
        match name.name.as_str() {
            "project" => {
                let x = &typed[0];
                self.expect_kind("project", "first", &[Kind::Features, Kind::Logits], x)?;
                let input = x.ty.shape.last().copied().unwrap_or(0);
                let out = match typed.get(1) {
                    Some(w) => match w.constant() {
                        Some(v) if v >= 1.0 && v.fract() == 0.0 && v <= 1e6 => v as usize,
                        _ => {
                            self.invalid(
                                w.span,
                                "a projection's width is a whole number".into(),
                                "not a width",
                                Some("or leave it out: `project(s.hidden)` takes the width of what it is compared with".into()),
                            );
                            return None;
                        }
                    },
                    None => 0,
                };
                let mut shape = x.ty.shape.clone();
                if let Some(last) = shape.last_mut() {
                    *last = out;
                }
                let x = typed.swap_remove(0);
                Some(apply(
                    Op::Project {
                        name: String::new(),
                        input,
                        out,
                    },
                    vec![x],
                    TensorType {
                        kind: Kind::Features,
                        shape,
                    },
                    at,
                ))
            }
            "attention_transfer" => {
                for (position, arg) in [("first", &typed[0]), ("second", &typed[1])] {
                    self.expect_kind(&name.name, position, &[Kind::Features], arg)?;
                }
                let positions = |t: &TypedExpr| match t.ty.shape.as_slice() {
                    [_, h, w] => Some(vec![*h, *w]),
                    [len, _] => Some(vec![*len]),
                    _ => None,
                };
                match (positions(&typed[0]), positions(&typed[1])) {
                    (Some(a), Some(b))
                        if a == b && typed[0].ty.shape.len() == typed[1].ty.shape.len() => {}
                    (Some(_), Some(_)) => {
                        self.error(CheckError::ShapeMismatch {
                            message: format!(
                                "`attention_transfer` compares maps over different positions: {:?} and {:?}",
                                typed[0].ty.shape, typed[1].ty.shape
                            ),
                            span: span(typed[0].span),
                            label: format!("{:?}", typed[0].ty.shape),
                            related: vec![labeled(typed[1].span, format!("{:?}", typed[1].ty.shape))],
                            help: Some("channels may differ, but height and width (or sequence length) must agree: tap layers at the same resolution".into()),
                        });
                        return None;
                    }
                    _ => {
                        let bad = if positions(&typed[0]).is_none() {
                            &typed[0]
                        } else {
                            &typed[1]
                        };
                        self.error(CheckError::ShapeMismatch {
                            message: format!(
                                "`attention_transfer` needs feature maps [channels, height, width] or sequences [length, channels], found {:?}",
                                bad.ty.shape
                            ),
                            span: span(bad.span),
                            label: format!("{:?}", bad.ty.shape),
                            related: vec![],
                            help: Some("tap a convolution's or a sequence layer's output, before flatten or pooling".into()),
                        });
                        return None;
                    }
                }
                Some(apply(
                    Op::AttentionTransfer,
                    typed,
                    TensorType::scalar(),
                    at,
                ))
            }
            "softmax" | "log_softmax" => {
                let x = &typed[0];
                self.expect_kind(&name.name, "first", &[Kind::Logits], x)?;
                if typed.len() < 2 {
                    typed.push(constant(1.0, at));
                }
                let t = &typed[1];
                if t.ty.kind != Kind::Scalar {
                    self.expect_kind(&name.name, "second", &[Kind::Scalar], t)?;
                }
                let ends = t.ends().map(|(a, b)| [a, b]).unwrap_or_default();
                let scheduled = t.constant().is_none();
                // A constant, or both ends of a schedule.
                if let Some(&v) = ends.iter().find(|v| **v <= 0.0 || !v.is_finite()) {
                    self.error(CheckError::OutOfRange {
                        what: if scheduled {
                            "the temperature T (an end of its schedule)".into()
                        } else {
                            "the temperature T".into()
                        },
                        range: "greater than 0",
                        value: format_number(v),
                        span: span(t.span),
                        help: Some(
                            "T = 1 is the plain softmax; distillation uses T between 2 and 20"
                                .into(),
                        ),
                    });
                    return None;
                }
                let (op, kind) = if name.name == "softmax" {
                    (Op::Softmax, Kind::Probabilities)
                } else {
                    (Op::LogSoftmax, Kind::LogProbabilities)
                };
                let shape = typed[0].ty.shape.clone();
                Some(apply(op, typed, TensorType { kind, shape }, at))
            }
            "kl" => {
                self.order(
                    &name.name,
                    &typed[0],
                    &typed[1],
                    scope,
                    "target (teacher) distribution",
                    "prediction (student)",
                )?;
                self.expect_kind(&name.name, "first", &[Kind::Probabilities], &typed[0])?;
                self.expect_kind(
                    &name.name,
                    "second",
                    &[Kind::Probabilities, Kind::LogProbabilities],
                    &typed[1],
                )?;
                self.same_width(&name.name, &typed[0], &typed[1], scope)?;
                Some(apply(Op::Kl, typed, TensorType::scalar(), at))
            }
            "cross_entropy" => {
                if typed[0].ty.kind == Kind::Labels && typed[1].ty.kind == Kind::Logits {
                    self.error(CheckError::ArgumentOrder {
                        function: name.name.clone(),
                        first: "logits",
                        second: "labels",
                        span: span(typed[0].span),
                        found_first: "label".into(),
                        help: Some("write `cross_entropy(s.logits, label)`".into()),
                    });
                    return None;
                }
                self.expect_kind(&name.name, "first", &[Kind::Logits], &typed[0])?;
                self.expect_kind(&name.name, "second", &[Kind::Labels], &typed[1])?;
                if let Ok(classes) = scope.labels {
                    let width = typed[0].ty.shape.last().copied().unwrap_or(0);
                    if typed[0].ty.shape.len() != 1 || width != classes {
                        self.error(CheckError::ShapeMismatch {
                            message: format!("`cross_entropy` gets logits of shape {:?} for data with {classes} classes", typed[0].ty.shape),
                            span: span(typed[0].span),
                            label: format!("{:?}", typed[0].ty.shape),
                            related: vec![labeled(scope.data_ref, format!("{classes} classes"))],
                            help: Some(format!("the model's last layer should be `linear({classes})`")),
                        });
                        return None;
                    }
                }
                Some(apply(Op::CrossEntropy, typed, TensorType::scalar(), at))
            }
            "soft_cross_entropy" => {
                self.order(
                    &name.name,
                    &typed[1],
                    &typed[0],
                    scope,
                    "prediction (student)",
                    "target (teacher) distribution",
                )?;
                self.expect_kind(
                    &name.name,
                    "first",
                    &[Kind::Logits, Kind::LogProbabilities, Kind::Probabilities],
                    &typed[0],
                )?;
                self.expect_kind(&name.name, "second", &[Kind::Probabilities], &typed[1])?;
                self.same_width(&name.name, &typed[0], &typed[1], scope)?;
                Some(apply(Op::SoftCrossEntropy, typed, TensorType::scalar(), at))
            }
            other => {
                let allowed = [
                    Kind::Logits,
                    Kind::Probabilities,
                    Kind::LogProbabilities,
                    Kind::Features,
                ];
                self.expect_kind(other, "first", &allowed, &typed[0])?;
                self.expect_kind(other, "second", &allowed, &typed[1])?;
                self.same_width(other, &typed[0], &typed[1], scope)?;
                let op = if other == "mse" { Op::Mse } else { Op::Cosine };
                Some(apply(op, typed, TensorType::scalar(), at))
            }
        }
    }

    fn expect_kind(
        &mut self,
        function: &str,
        position: &'static str,
        allowed: &[Kind],
        arg: &TypedExpr,
    ) -> Option<()> {
        if allowed.contains(&arg.ty.kind) {
            return Some(());
        }
        let expected = allowed
            .iter()
            .map(|k| kind_name(*k))
            .collect::<Vec<_>>()
            .join(" or ");
        let help = match (arg.ty.kind, allowed.first()) {
            (Kind::Probabilities, Some(Kind::Logits)) => Some(
                "these are already probabilities: pass the logits (the tap before softmax)".into(),
            ),
            (Kind::Logits, Some(Kind::Probabilities)) => {
                Some("turn logits into probabilities with `softmax(x, T)`".into())
            }
            (Kind::Features, Some(Kind::Logits)) => {
                Some("this tap is an intermediate layer; pass the model's logits".into())
            }
            _ => None,
        };
        self.error(CheckError::ArgumentKind {
            function: function.to_string(),
            position,
            expected,
            found: describe_type(&arg.ty),
            span: span(arg.span),
            help,
        });
        None
    }

    /// Teacher and student outputs compared in one loss must have the same width.
    fn same_width(
        &mut self,
        function: &str,
        a: &TypedExpr,
        b: &TypedExpr,
        scope: &Scope,
    ) -> Option<()> {
        if a.ty.shape == b.ty.shape {
            return Some(());
        }
        let who = |e: &TypedExpr| {
            let models = e.models();
            match models.as_slice() {
                [m] if m == scope.trained => format!("{m} (trained) gives {:?}", e.ty.shape),
                [m] => format!("{m} gives {:?}", e.ty.shape),
                _ => format!("{:?}", e.ty.shape),
            }
        };
        self.error(CheckError::ShapeMismatch {
            message: format!(
                "`{function}` compares tensors of different widths: {:?} and {:?}",
                a.ty.shape, b.ty.shape
            ),
            span: span(a.span),
            label: who(a),
            related: vec![labeled(b.span, who(b))],
            help: Some(
                if a.ty.kind == Kind::Features || b.ty.kind == Kind::Features {
                    "to compare features of different widths, learn a map: wrap the student's side in `project(...)`"
                } else {
                    "teacher and student must predict the same classes; check both models' last layers"
                }
                .into(),
            ),
        });
        None
    }

    /// `target` must not come from the trained model while `prediction` comes only from a
    /// frozen one: that is the arguments swapped.
    fn order(
        &mut self,
        function: &str,
        target: &TypedExpr,
        prediction: &TypedExpr,
        scope: &Scope,
        first: &'static str,
        second: &'static str,
    ) -> Option<()> {
        let t = target.models();
        let p = prediction.models();
        let trained = |ms: &[String]| ms.iter().any(|m| m == scope.trained);
        if trained(&t) && !p.is_empty() && !trained(&p) {
            let (span_at, found) = if function == "kl" {
                (target.span, scope.trained.to_string())
            } else {
                (prediction.span, p.join(", "))
            };
            self.error(CheckError::ArgumentOrder {
                function: function.to_string(),
                first,
                second,
                span: span(span_at),
                found_first: found,
                help: Some(if function == "kl" {
                    "write `kl(softmax(t.logits, T), softmax(s.logits, T))`: the teacher's distribution first".to_string()
                } else {
                    "write `soft_cross_entropy(s.logits, softmax(t.logits, T))`: the student's prediction first".to_string()
                }),
            });
            return None;
        }
        Some(())
    }

    /// Inlines a named loss: its parameters bound to the call's arguments or defaults.
    fn inline(
        &mut self,
        name: &Ident,
        args: &[ExprArg],
        scope: &Scope,
        losses: &Losses,
        env: &Env,
        at: Span,
    ) -> Option<TypedExpr> {
        let decl = losses.decls.get(&name.name)?;
        losses.used.borrow_mut().insert(name.name.clone());
        if env.inlining.contains(&name.name) {
            self.invalid(
                name.span,
                format!("loss `{}` refers to itself", name.name),
                "recursive",
                None,
            );
            return None;
        }
        let mut bound: HashMap<String, TypedExpr> = HashMap::new();
        let mut positional = 0;
        for arg in args {
            let param = match &arg.name {
                Some(n) => match decl.params.iter().find(|p| p.name.name == n.name) {
                    Some(p) => p,
                    None => {
                        self.invalid(
                            n.span,
                            format!("loss `{}` has no parameter `{}`", name.name, n.name),
                            "unknown parameter",
                            did_you_mean(&n.name, decl.params.iter().map(|p| p.name.name.as_str()))
                                .or_else(|| {
                                    Some(format!(
                                        "its parameters: {}",
                                        list(decl.params.iter().map(|p| p.name.name.as_str()))
                                    ))
                                }),
                        );
                        return None;
                    }
                },
                None => match decl.params.get(positional) {
                    Some(p) => {
                        positional += 1;
                        p
                    }
                    None => {
                        self.invalid(
                            arg.value.span,
                            format!(
                                "loss `{}` takes {} parameter(s)",
                                name.name,
                                decl.params.len()
                            ),
                            "one too many",
                            None,
                        );
                        return None;
                    }
                },
            };
            let value = self.bound_value(
                &arg.value,
                (&name.name, &param.name.name),
                scope,
                losses,
                env,
            )?;
            bound.insert(param.name.name.clone(), value);
        }
        let empty = Env {
            params: HashMap::new(),
            inlining: Vec::new(),
        };
        for param in &decl.params {
            if !bound.contains_key(&param.name.name) {
                let value = self.bound_value(
                    &param.default,
                    (&name.name, &param.name.name),
                    scope,
                    losses,
                    &empty,
                )?;
                bound.insert(param.name.name.clone(), value);
            }
        }
        let mut inlining = env.inlining.clone();
        inlining.push(name.name.clone());
        let inner = Env {
            params: bound,
            inlining,
        };
        let mut body = self.expr(&decl.body, scope, losses, &inner)?;
        body.span = at;
        Some(body)
    }
}

impl Cx<'_> {
    /// `ensemble(p1, p2, ...)`: the mean of two or more distributions of one width (each
    /// teacher's softened outputs), itself probabilities.
    fn ensemble(
        &mut self,
        name: &Ident,
        args: &[ExprArg],
        scope: &Scope,
        losses: &Losses,
        env: &Env,
        at: Span,
    ) -> Option<TypedExpr> {
        if let Some(n) = args.iter().find_map(|a| a.name.as_ref()) {
            self.invalid(
                n.span,
                "`ensemble` takes its distributions in order, without names".into(),
                "a named argument",
                Some("`ensemble(softmax(t1.logits, T), softmax(t2.logits, T))`".into()),
            );
            return None;
        }
        if args.len() < 2 {
            self.error(CheckError::Missing {
                message: "`ensemble` averages two or more distributions".into(),
                span: span(at),
                label: "too few arguments".into(),
                help: Some("`ensemble(softmax(t1.logits, T), softmax(t2.logits, T))`".into()),
            });
            return None;
        }
        let mut typed = Vec::with_capacity(args.len());
        for arg in args {
            typed.push(self.expr(&arg.value, scope, losses, env));
        }
        let typed: Vec<TypedExpr> = typed.into_iter().collect::<Option<_>>()?;
        for (i, t) in typed.iter().enumerate() {
            if t.ty.kind == Kind::Logits {
                self.invalid(
                    t.span,
                    format!(
                        "`ensemble` averages distributions; argument {} is logits",
                        i + 1
                    ),
                    "logits",
                    Some("soften them first: `softmax(t1.logits, T)`".into()),
                );
                return None;
            }
            const POSITIONS: [&str; 8] = [
                "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            ];
            self.expect_kind(
                &name.name,
                POSITIONS.get(i).copied().unwrap_or("next"),
                &[Kind::Probabilities, Kind::LogProbabilities],
                t,
            )?;
            self.same_width(&name.name, &typed[0], t, scope)?;
        }
        let shape = typed[0].ty.shape.clone();
        Some(apply(
            Op::Ensemble,
            typed,
            TensorType {
                kind: Kind::Probabilities,
                shape,
            },
            at,
        ))
    }

    /// The value a named loss's parameter is bound to (`loss.0`'s `loss.1`): an expression,
    /// or a schedule of its value over the stage.
    fn bound_value(
        &mut self,
        value: &Expr,
        (loss, param): (&str, &str),
        scope: &Scope,
        losses: &Losses,
        env: &Env,
    ) -> Option<TypedExpr> {
        let ExprKind::Call { name, args } = &value.kind else {
            return self.expr(value, scope, losses, env);
        };
        if losses.decls.contains_key(&name.name) || !is_schedule(&name.name, args) {
            return self.expr(value, scope, losses, env);
        }
        let Some(&(form, params)) = VALUE_SCHEDULES.iter().find(|(f, _)| *f == name.name) else {
            return self.expr(value, scope, losses, env);
        };
        let mut given: Vec<Option<(f64, Span)>> = vec![None; params.len()];
        let mut next = 0;
        for arg in args {
            let index = match &arg.name {
                Some(n) => match params.iter().position(|p| *p == n.name) {
                    Some(i) if given[i].is_some() => {
                        self.invalid(
                            n.span,
                            format!("`{}` is given twice to the schedule `{form}`", n.name),
                            "given before",
                            None,
                        );
                        return None;
                    }
                    Some(i) => i,
                    None => {
                        self.invalid(
                            n.span,
                            format!("the schedule `{form}` has no argument `{}`", n.name),
                            "unknown argument",
                            Some(format!("its arguments: {}", list(params.iter().copied()))),
                        );
                        return None;
                    }
                },
                // A positional argument takes the next slot no name has filled.
                None => {
                    while given.get(next).is_some_and(Option::is_some) {
                        next += 1;
                    }
                    next += 1;
                    next - 1
                }
            };
            if index >= params.len() {
                self.invalid(
                    arg.value.span,
                    format!("the schedule `{form}` takes {} argument(s)", params.len()),
                    "one too many",
                    Some(format!("its arguments: {}", list(params.iter().copied()))),
                );
                return None;
            }
            let typed = self.expr(&arg.value, scope, losses, env)?;
            match typed.constant() {
                Some(v) if v.is_finite() => given[index] = Some((v, arg.value.span)),
                _ => {
                    self.invalid(
                        arg.value.span,
                        format!(
                            "`{}` of a schedule is a number, not {}",
                            params[index],
                            describe_type(&typed.ty)
                        ),
                        "not a number",
                        Some(format!(
                            "a schedule moves a number over the stage: `{form}({})`",
                            example_args(form)
                        )),
                    );
                    return None;
                }
            }
        }
        let missing: Vec<&str> = params
            .iter()
            .zip(&given)
            .filter(|(_, g)| g.is_none())
            .map(|(p, _)| *p)
            .collect();
        if !missing.is_empty() {
            self.error(CheckError::Missing {
                message: format!(
                    "the schedule `{form}` needs {}",
                    list(missing.iter().copied())
                ),
                span: span(value.span),
                label: "incomplete schedule".into(),
                help: Some(format!("e.g. `{form}({})`", example_args(form))),
            });
            return None;
        }
        let v: Vec<f64> = given.iter().flatten().map(|(v, _)| *v).collect();
        if let ("step", [_, _, at]) = (form, v.as_slice()) {
            if !(0.0..=1.0).contains(at) {
                let at_span = given[2].map_or(value.span, |(_, s)| s);
                self.error(CheckError::OutOfRange {
                    what: "`at` of a step schedule (a fraction of the stage's steps)".into(),
                    range: "between 0 and 1",
                    value: format_number(*at),
                    span: span(at_span),
                    help: Some("`step(from: 0, to: 1, at: 0.5)` switches halfway".into()),
                });
                return None;
            }
        }
        let schedule = ValueSchedule::from_form(form, &v)?;
        Some(apply(
            Op::Scheduled {
                name: format!("{loss}.{param}"),
                schedule,
            },
            Vec::new(),
            TensorType::scalar(),
            value.span,
        ))
    }
}

/// Whether a call is one of the value schedules: `constant`, `linear` and `step` always
/// are; `cosine` is also the cosine loss, and is a schedule when it names `from` or `to`
/// or starts with a number.
pub(crate) fn is_schedule(name: &str, args: &[ExprArg]) -> bool {
    match name {
        "constant" | "linear" | "cubic" | "step" => true,
        "cosine" => args.iter().enumerate().any(|(i, a)| match &a.name {
            Some(n) => matches!(n.name.as_str(), "from" | "to"),
            None => i == 0 && is_number(&a.value),
        }),
        _ => false,
    }
}

fn is_number(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Number(_) => true,
        ExprKind::Neg(inner) => is_number(inner),
        _ => false,
    }
}

/// A schedule's arguments as an example.
fn example_args(form: &str) -> &'static str {
    match form {
        "constant" => "value: 4",
        "step" => "from: 0, to: 1, at: 0.5",
        _ => "from: 8, to: 1",
    }
}

/// Gives a `project(x)` written without a width the width `out`.
fn settle_projection(expr: &mut TypedExpr, out: usize) {
    if let TypedNode::Apply {
        op: Op::Project { out: pending, .. },
        ..
    } = &mut expr.node
    {
        if *pending == 0 {
            *pending = out;
            if let Some(last) = expr.ty.shape.last_mut() {
                *last = out;
            }
        }
    }
}

/// The first `project(x)` whose width nothing settled.
pub(crate) fn unsettled_projection(expr: &TypedExpr) -> Option<Span> {
    match &expr.node {
        TypedNode::Apply {
            op: Op::Project { out: 0, .. },
            ..
        } => Some(expr.span),
        TypedNode::Apply { args, .. } => args.iter().find_map(unsettled_projection),
        _ => None,
    }
}

fn constant(v: f64, at: Span) -> TypedExpr {
    TypedExpr {
        node: TypedNode::Const(v),
        ty: TensorType::scalar(),
        span: at,
    }
}

fn apply(op: Op, args: Vec<TypedExpr>, ty: TensorType, at: Span) -> TypedExpr {
    TypedExpr {
        node: TypedNode::Apply { op, args },
        ty,
        span: at,
    }
}
