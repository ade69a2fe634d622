//! The checker's diagnostics, and how every stage's errors are reported together.

use kd_grammar::ast::Span;
use kd_grammar::ParseError;
use miette::{Diagnostic, LabeledSpan, NamedSource, Severity, SourceSpan};
use serde::Serialize;
use thiserror::Error;

/// One problem the checker found. Messages are lowercase with user text in backticks; the
/// detail goes into labels and help.
#[derive(Debug, Error, Diagnostic, Clone, PartialEq)]
pub enum CheckError {
    #[error("unknown {what} `{name}`")]
    #[diagnostic(code(kd::check::unknown_name))]
    UnknownName {
        what: &'static str,
        name: String,
        #[label("not declared")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{what} `{name}` is declared twice")]
    #[diagnostic(code(kd::check::duplicate), help("give each {what} its own name"))]
    Duplicate {
        what: &'static str,
        name: String,
        #[label("declared again here")]
        span: SourceSpan,
        #[label("first declared here")]
        first: SourceSpan,
    },

    #[error("unknown setting `{key}` in {context}")]
    #[diagnostic(code(kd::check::unknown_setting))]
    UnknownSetting {
        key: String,
        context: String,
        #[label("not a setting of {context}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{message}")]
    #[diagnostic(code(kd::check::invalid_value))]
    InvalidValue {
        message: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("{what} must be {range}, found {value}")]
    #[diagnostic(code(kd::check::out_of_range))]
    OutOfRange {
        what: String,
        range: &'static str,
        value: String,
        #[label("out of range")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{message}")]
    #[diagnostic(code(kd::check::missing))]
    Missing {
        message: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("{message}")]
    #[diagnostic(code(kd::check::shape_mismatch))]
    ShapeMismatch {
        message: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[label(collection)]
        related: Vec<LabeledSpan>,
        #[help]
        help: Option<String>,
    },

    #[error("`{function}` expects {expected} as its {position} argument, found {found}")]
    #[diagnostic(code(kd::check::argument_kind))]
    ArgumentKind {
        function: String,
        position: &'static str,
        expected: String,
        found: String,
        #[label("this is {found}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`{function}` takes the {first} first and the {second} second")]
    #[diagnostic(code(kd::check::argument_order))]
    ArgumentOrder {
        function: String,
        first: &'static str,
        second: &'static str,
        #[label("this comes from `{found_first}`")]
        span: SourceSpan,
        found_first: String,
        #[help]
        help: Option<String>,
    },

    #[error("the loss of stage `{stage}` is not a scalar: it is {found}")]
    #[diagnostic(
        code(kd::check::loss_not_scalar),
        help("reduce it with a loss built-in such as `kl`, `cross_entropy` or `mse`")
    )]
    NotScalar {
        stage: String,
        found: String,
        #[label("this is {found}")]
        span: SourceSpan,
    },

    #[error("model `{model}` is {used} but no stage trains it")]
    #[diagnostic(
        code(kd::check::never_trained),
        help("train it in a stage, or start it from saved weights: `{role} {model} = ARCH from \"weights.safetensors\"`")
    )]
    NeverTrained {
        model: String,
        used: &'static str,
        role: &'static str,
        #[label("used here")]
        span: SourceSpan,
    },

    #[error("split `{data}.{split}` has no labels")]
    #[diagnostic(code(kd::check::no_labels))]
    NoLabels {
        data: String,
        split: String,
        #[label("{why}")]
        span: SourceSpan,
        why: String,
        #[help]
        help: Option<String>,
    },

    #[error("cannot read `{path}`: {reason}")]
    #[diagnostic(code(kd::check::file))]
    File {
        path: String,
        reason: String,
        #[label("this path")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{message}")]
    #[diagnostic(code(kd::check::data))]
    Data {
        message: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("{message}")]
    #[diagnostic(code(kd::check::stage))]
    Stage {
        message: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("{what} `{name}` is never used")]
    #[diagnostic(code(kd::check::unused), severity(Warning))]
    Unused {
        what: &'static str,
        name: String,
        #[label("declared here")]
        span: SourceSpan,
    },
}

/// A `--set key=value` that cannot be applied. It has no span in the `.kd` file: it points
/// at the command line.
#[derive(Debug, Error, Diagnostic, Clone, PartialEq)]
pub enum OverrideError {
    #[error("`--set {text}` is not of the form `kind.name.field=value`")]
    #[diagnostic(
        code(kd::set::syntax),
        help("for example `--set stage.pretrain.epochs=1` or `--set data.mnist.limit=2000`")
    )]
    Syntax { text: String },

    #[error("`--set {key}`: {reason}")]
    #[diagnostic(code(kd::set::unknown_key))]
    UnknownKey {
        key: String,
        reason: String,
        #[help]
        help: Option<String>,
    },

    #[error("`--set {key}`: {reason}")]
    #[diagnostic(
        code(kd::set::schedule),
        help("edit the schedule in the file (its `from` and `to`), or replace it there by a number that --set can then change")
    )]
    Scheduled { key: String, reason: String },

    #[error("`--set {key}={value}`: the value is not a .kd literal")]
    #[diagnostic(
        code(kd::set::value),
        help("values are written as in a .kd file: 3, 0.5, 1e-3, true, cosine, \"text\", [1, 2]")
    )]
    Value { key: String, value: String },
}

/// A `sweep` declaration that cannot be expanded into configurations, or a `--sweep` that
/// names none.
#[derive(Debug, Error, Diagnostic, Clone, PartialEq)]
pub enum SweepError {
    #[error("{reason}")]
    #[diagnostic(code(kd::sweep::unknown))]
    Unknown {
        reason: String,
        #[help]
        help: Option<String>,
    },

    #[error("sweep key `{key}`: {reason}")]
    #[diagnostic(code(kd::sweep::key))]
    Key {
        key: String,
        reason: String,
        #[label("not a key of this file")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{reason}")]
    #[diagnostic(code(kd::sweep::values))]
    Values {
        reason: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("{reason}")]
    #[diagnostic(code(kd::sweep::search))]
    Search {
        reason: String,
        #[label("here")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{reason}")]
    #[diagnostic(code(kd::sweep::select))]
    Select {
        reason: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },
}

/// Any diagnostic kdc reports about the user's input.
#[derive(Debug, Error, Diagnostic, Clone, PartialEq)]
pub enum KdError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Check(#[from] CheckError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Override(#[from] OverrideError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Sweep(#[from] SweepError),
}

impl KdError {
    pub fn is_error(&self) -> bool {
        !matches!(
            self.severity(),
            Some(Severity::Warning) | Some(Severity::Advice)
        )
    }
}

pub(crate) fn span(s: Span) -> SourceSpan {
    s.into()
}

pub(crate) fn labeled(s: Span, label: impl Into<String>) -> LabeledSpan {
    LabeledSpan::new_with_span(Some(label.into()), span(s))
}

/// The best "did you mean" among `candidates` for a misspelt `name`.
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let best = candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= (name.len().max(c.len()) / 3).max(1) && *d > 0)
        .min_by_key(|(d, _)| *d)?;
    Some(format!("did you mean `{}`?", best.1))
}

/// `a`, `b`, `c`: names for a sentence of help.
pub(crate) fn list<'a>(candidates: impl IntoIterator<Item = &'a str>) -> String {
    let list: Vec<String> = candidates.into_iter().map(|c| format!("`{c}`")).collect();
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

/// The names a user may choose from, for help texts.
pub(crate) fn one_of<'a>(candidates: impl IntoIterator<Item = &'a str>) -> String {
    let list: Vec<String> = candidates.into_iter().map(|c| format!("`{c}`")).collect();
    match list.len() {
        0 => "nothing is declared yet".to_string(),
        _ => format!("expected one of {}", list.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------
// Rendering

/// A diagnostic as one JSON object (`--error-format json`).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct JsonDiagnostic {
    pub code: Option<String>,
    pub severity: &'static str,
    pub message: String,
    pub help: Option<String>,
    pub file: String,
    pub labels: Vec<JsonLabel>,
    /// The primary label's position (the first label), when there is one.
    pub start: Option<usize>,
    pub end: Option<usize>,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct JsonLabel {
    pub label: Option<String>,
    pub start: usize,
    pub end: usize,
    pub line: usize,
    pub column: usize,
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before
        .get(line_start..)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

pub fn to_json(error: &dyn Diagnostic, file: &str, source: &str) -> JsonDiagnostic {
    let labels: Vec<JsonLabel> = error
        .labels()
        .map(|it| {
            it.map(|l| {
                let (line, column) = line_column(source, l.offset());
                JsonLabel {
                    label: l.label().map(str::to_string),
                    start: l.offset(),
                    end: l.offset() + l.len(),
                    line,
                    column,
                }
            })
            .collect()
        })
        .unwrap_or_default();
    let first = labels.first().cloned();
    JsonDiagnostic {
        code: error.code().map(|c| c.to_string()),
        severity: match error.severity() {
            Some(Severity::Warning) => "warning",
            Some(Severity::Advice) => "advice",
            _ => "error",
        },
        message: error.to_string(),
        help: error.help().map(|h| h.to_string()),
        file: file.to_string(),
        start: first.as_ref().map(|l| l.start),
        end: first.as_ref().map(|l| l.end),
        line: first.as_ref().map(|l| l.line),
        column: first.as_ref().map(|l| l.column),
        labels,
    }
}

/// Renders diagnostics as the user reads them on a terminal without colour.
pub fn render_plain(errors: &[KdError], file: &str, source: &str) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100);
    let mut out = String::new();
    for error in errors {
        let report = miette::Report::new(error.clone())
            .with_source_code(NamedSource::new(file, source.to_string()));
        let _ = handler.render_report(&mut out, report.as_ref());
        out.push('\n');
    }
    out
}
