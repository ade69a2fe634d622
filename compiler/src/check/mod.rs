//! The checker: resolves names, infers shapes and tensor kinds, and reports every problem
//! it finds at once. Its output, [`Checked`], is the program with all of that settled.

mod arrays;
mod bert;
mod data;
mod expr;
pub(crate) use expr::is_schedule;
pub(crate) use stages::metric;
mod images;
mod models;
mod onnx;
mod prune;
mod quantize;
mod stages;
mod tables;
mod text;
mod values;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kd_grammar::ast::{Declaration, Program, Span};
use kd_plan::{
    AugmentSpec, DataSpec, Evaluation, Export, Kind, ModelSpec, Op, Optimizer, Override, Schedule,
    Settings, SourceInfo, StageKind, TensorType, Validate,
};

use crate::diagnostics::{did_you_mean, span, CheckError, KdError};

/// A program whose names, shapes and kinds are all known to fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub source: SourceInfo,
    pub settings: Settings,
    pub data: Vec<DataSpec>,
    pub augments: Vec<AugmentSpec>,
    pub models: Vec<ModelSpec>,
    pub stages: Vec<CheckedStage>,
    pub evaluations: Vec<Evaluation>,
    pub exports: Vec<Export>,
    pub overrides: Vec<Override>,
    /// Diagnostics of warning severity: the program is still valid.
    pub warnings: Vec<KdError>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckedStage {
    pub name: String,
    pub kind: StageKind,
    pub trains: String,
    pub frozen: Vec<String>,
    pub data: String,
    pub split: String,
    pub augment: Option<String>,
    pub loss: TypedExpr,
    pub epochs: usize,
    pub batch: usize,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub clip: Option<f64>,
    pub validate: Option<Validate>,
    pub baseline_of: Option<String>,
    /// Whether the training split has labels.
    pub split_labeled: bool,
    pub span: Span,
}

/// A loss expression with every name resolved and every sub-expression typed.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedExpr {
    pub node: TypedNode,
    pub ty: TensorType,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TypedNode {
    /// Output `port` of model `model`'s forward pass.
    Tap {
        model: String,
        port: String,
    },
    /// The batch's labels.
    Label,
    Const(f64),
    Apply {
        op: Op,
        args: Vec<TypedExpr>,
    },
}

impl TypedExpr {
    /// The models whose outputs this expression reads.
    pub fn models(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_models(&mut out);
        out
    }

    fn collect_models(&self, out: &mut Vec<String>) {
        match &self.node {
            TypedNode::Tap { model, .. } if !out.contains(model) => out.push(model.clone()),
            TypedNode::Apply { args, .. } => args.iter().for_each(|a| a.collect_models(out)),
            _ => {}
        }
    }

    pub fn uses_label(&self) -> bool {
        match &self.node {
            TypedNode::Label => true,
            TypedNode::Apply { args, .. } => args.iter().any(TypedExpr::uses_label),
            _ => false,
        }
    }

    /// The first and last values of a constant or a schedule: what a range check checks.
    pub fn ends(&self) -> Option<(f64, f64)> {
        match &self.node {
            TypedNode::Apply {
                op: Op::Scheduled { schedule, .. },
                ..
            } => Some(schedule.ends()),
            _ => self.constant().map(|v| (v, v)),
        }
    }

    /// The value of a constant expression.
    pub fn constant(&self) -> Option<f64> {
        match &self.node {
            TypedNode::Const(v) => Some(*v),
            TypedNode::Apply { op, args } => {
                let a = args.first()?.constant()?;
                let b = args.get(1).and_then(TypedExpr::constant);
                Some(match (op, b) {
                    (Op::Neg, _) => -a,
                    (Op::Add, Some(b)) => a + b,
                    (Op::Sub, Some(b)) => a - b,
                    (Op::Mul, Some(b)) => a * b,
                    (Op::Div, Some(b)) => a / b,
                    (Op::Pow, Some(b)) => a.powf(b),
                    _ => return None,
                })
            }
            _ => None,
        }
    }
}

/// Where the program came from: relative paths in it resolve against `base_dir`.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub base_dir: PathBuf,
}

/// Checks a parsed program. Errors come back all together; warnings ride on success.
pub fn check(
    program: &Program,
    source: &SourceFile,
    overrides: &[Override],
) -> Result<Checked, Vec<KdError>> {
    let mut cx = Cx::new(&source.base_dir);
    cx.check_duplicates(program);
    let settings = cx.pipeline(program, &source.path);
    let data = cx.data_decls(program);
    let augments = cx.augments(program, &data);
    let architectures = cx.architectures(program);
    let mut models = cx.roles(program, &architectures, &data, settings.precision);
    cx.pruned_roles(program, &mut models);
    cx.quantized_roles(program, &mut models, &data);
    let losses = cx.loss_decls(program);
    let mut stages = cx.stages(program, &models, &data, &augments, &losses);
    cx.baselines(program, &mut models, &mut stages);
    cx.pruning_order(&models, &stages);
    cx.quantized_order(&models, &stages);
    let evaluations = cx.evaluations(program, &models, &data, &stages);
    let exports = cx.exports(program, &models, &stages);
    cx.diagnostics.extend(
        crate::sweep::check_sweeps(program)
            .into_iter()
            .map(KdError::from),
    );
    // An unused-declaration warning after an error is usually that error's echo.
    if cx.diagnostics.iter().all(|d| !d.is_error()) {
        cx.unused(program, &stages, &losses);
    }

    let mut unique: Vec<KdError> = Vec::new();
    for d in cx.diagnostics {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    // In source order, as the user reads the file.
    unique.sort_by_key(|d| {
        use miette::Diagnostic;
        d.labels()
            .and_then(|mut l| l.next())
            .map_or(usize::MAX, |l| l.offset())
    });
    let (errors, warnings): (Vec<_>, Vec<_>) = unique.into_iter().partition(KdError::is_error);
    if !errors.is_empty() {
        let mut all = errors;
        all.extend(warnings);
        return Err(all);
    }
    Ok(Checked {
        source: SourceInfo {
            path: source.path.clone(),
            base_dir: source.base_dir.clone(),
        },
        settings,
        data,
        augments,
        models,
        stages,
        evaluations,
        exports,
        overrides: overrides.to_vec(),
        warnings,
    })
}

/// The checker's working state.
pub(crate) struct Cx<'a> {
    diagnostics: Vec<KdError>,
    base_dir: &'a Path,
    /// Declarations that failed to check: later references to them stay quiet, so one
    /// mistake gives one diagnostic.
    failed: std::collections::HashSet<String>,
    /// Models some stage sets out to train, whether or not that stage checked.
    trained: std::collections::HashSet<String>,
    /// Token models: the tokenizer of the first text data each one reads, and that data's
    /// name (a token model reads one vocabulary, whose padding id its mask uses).
    tokenizers: std::collections::HashMap<String, (PathBuf, String)>,
}

impl<'a> Cx<'a> {
    fn new(base_dir: &'a Path) -> Self {
        Cx {
            diagnostics: Vec::new(),
            base_dir,
            failed: Default::default(),
            trained: Default::default(),
            tokenizers: Default::default(),
        }
    }

    pub(crate) fn error(&mut self, error: CheckError) {
        self.diagnostics.push(error.into())
    }

    pub(crate) fn resolve_path(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Names share one namespace per kind of declaration; a second declaration is an error.
    fn check_duplicates(&mut self, program: &Program) {
        let mut seen: HashMap<(&'static str, String), Span> = HashMap::new();
        for decl in &program.declarations {
            let (what, name) = match decl {
                Declaration::Pipeline(d) => ("pipeline", &d.name),
                Declaration::Data(d) => ("data source", &d.name),
                Declaration::Augment(d) => ("augmentation", &d.name),
                Declaration::Model(d) => ("architecture", &d.name),
                Declaration::Role(d) => ("model", &d.name),
                Declaration::Baseline(d) => ("model", &d.name),
                Declaration::Loss(d) => ("loss", &d.name),
                Declaration::Stage(d) => ("stage", &d.name),
                Declaration::Sweep(d) => ("sweep", &d.name),
                Declaration::Evaluate(_) | Declaration::Export(_) => continue,
            };
            let key = if what == "pipeline" {
                String::new()
            } else {
                name.name.clone()
            };
            match seen.get(&(what, key.clone())) {
                Some(first) => self.error(CheckError::Duplicate {
                    what,
                    name: name.name.clone(),
                    span: span(name.span),
                    first: span(*first),
                }),
                None => {
                    seen.insert((what, key), name.span);
                }
            }
        }
    }

    fn unused(&mut self, program: &Program, stages: &[CheckedStage], losses: &expr::Losses) {
        for decl in &program.declarations {
            match decl {
                Declaration::Augment(a)
                    if !stages
                        .iter()
                        .any(|s| s.augment.as_deref() == Some(a.name.name.as_str())) =>
                {
                    self.diagnostics.push(
                        CheckError::Unused {
                            what: "augmentation",
                            name: a.name.name.clone(),
                            span: span(a.name.span),
                        }
                        .into(),
                    );
                }
                Declaration::Loss(l) if !losses.used(&l.name.name) => {
                    self.diagnostics.push(
                        CheckError::Unused {
                            what: "loss",
                            name: l.name.name.clone(),
                            span: span(l.name.span),
                        }
                        .into(),
                    );
                }
                _ => {}
            }
        }
    }
}

/// `Some(help)` naming the closest of `candidates`.
pub(crate) fn closest<'b>(
    name: &str,
    candidates: impl IntoIterator<Item = &'b str>,
) -> Option<String> {
    did_you_mean(name, candidates)
}

pub(crate) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Input => "model inputs",
        Kind::Labels => "labels",
        Kind::Logits => "logits",
        Kind::Probabilities => "probabilities",
        Kind::LogProbabilities => "log-probabilities",
        Kind::Features => "features",
        Kind::Scalar => "a scalar",
    }
}

pub(crate) fn describe_type(ty: &TensorType) -> String {
    match ty.kind {
        Kind::Scalar | Kind::Labels => kind_name(ty.kind).to_string(),
        kind => format!("{} {:?}", kind_name(kind), ty.shape),
    }
}
