//! Syntax errors as miette diagnostics.

use miette::{Diagnostic, SourceSpan};
use thiserror::Error;

use crate::ast::Span;
use crate::parser::Rule;

#[derive(Debug, Error, Diagnostic, Clone, PartialEq)]
pub enum ParseError {
    #[error("syntax error: {message}")]
    #[diagnostic(code(kd::parse::syntax), help("{help}"))]
    Syntax {
        message: String,
        help: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
    },

    #[error("`{text}` is not a number kdc can represent")]
    #[diagnostic(code(kd::parse::number))]
    Number {
        text: String,
        #[label("this number")]
        span: SourceSpan,
    },

    /// A mismatch between the grammar and the AST builder: a bug in kdc, not the input.
    #[error("internal parser error: {0}")]
    #[diagnostic(
        code(kd::parse::internal),
        help("this is a bug in kdc; please report it with the input")
    )]
    Internal(String),
}

impl ParseError {
    pub(crate) fn internal(what: &str) -> Self {
        ParseError::Internal(what.to_string())
    }

    pub(crate) fn bad_number(text: &str, span: Span) -> Self {
        ParseError::Number {
            text: text.to_string(),
            span: span.into(),
        }
    }

    /// The span the error points at, as byte offsets.
    pub fn span(&self) -> Option<SourceSpan> {
        match self {
            ParseError::Syntax { span, .. } | ParseError::Number { span, .. } => Some(*span),
            ParseError::Internal(_) => None,
        }
    }

    pub(crate) fn from_pest(error: pest::error::Error<Rule>) -> Self {
        use pest::error::{ErrorVariant, InputLocation};
        // pest's own miette conversion points at the failing line only; we want byte
        // offsets into the whole file.
        let (start, end) = match error.location {
            InputLocation::Pos(p) => (p, p),
            InputLocation::Span((s, e)) => (s, e),
        };
        let (expected, unexpected) = match &error.variant {
            ErrorVariant::ParsingError {
                positives,
                negatives,
            } => (describe(positives), describe(negatives)),
            ErrorVariant::CustomError { message } => (message.clone(), String::new()),
        };
        let found = error
            .line()
            .get(error.line_col_pos()..)
            .and_then(|rest| rest.split_whitespace().next())
            .map(|w| w.chars().take(24).collect::<String>())
            .filter(|w| !w.is_empty());
        let message = match (&found, expected.is_empty()) {
            (Some(found), false) => format!("expected {expected}, found `{found}`"),
            (None, false) => format!("expected {expected}, found the end of the file"),
            (_, true) if !unexpected.is_empty() => format!("unexpected {unexpected}"),
            _ => "unexpected input".to_string(),
        };
        let width = found.as_ref().map(|f| f.len()).unwrap_or(0).max(1);
        let end = if end > start { end } else { start + width };
        ParseError::Syntax {
            label: format!("expected {expected} here"),
            help: help_for(&expected),
            message,
            span: (start, end.saturating_sub(start)).into(),
        }
    }
}

trait LineColPos {
    fn line_col_pos(&self) -> usize;
}

impl LineColPos for pest::error::Error<Rule> {
    fn line_col_pos(&self) -> usize {
        match self.line_col {
            pest::error::LineColLocation::Pos((_, col))
            | pest::error::LineColLocation::Span((_, col), _) => {
                // Columns are 1-based characters; the line is text.
                self.line()
                    .char_indices()
                    .nth(col.saturating_sub(1))
                    .map(|(i, _)| i)
                    .unwrap_or(self.line().len())
            }
        }
    }
}

fn help_for(expected: &str) -> String {
    if expected.contains("a declaration") {
        "a .kd file is a list of declarations: pipeline, data, augment, model, teacher, student, loss, stage, baseline, evaluate, export".to_string()
    } else if expected.contains("a stage statement") {
        "a stage holds: train/distill ... on data.split, loss, optimizer, schedule, epochs, batch, clip, validate on, keep best|last, early_stop".to_string()
    } else if expected.contains("a layer") {
        "layers are written one after another: `linear(10) relu dropout(0.5)`; name a tap with `as name`".to_string()
    } else {
        "see docs/language.md for the grammar".to_string()
    }
}

fn describe(rules: &[Rule]) -> String {
    let mut names: Vec<&str> = rules.iter().map(rule_name).collect();
    names.sort_unstable();
    names.dedup();
    // At the top level, `loss`, `teacher` and `student` are declarations like the rest.
    if names.contains(&"a declaration") {
        names.retain(|n| *n != "`loss`" && *n != "`teacher` or `student`");
    }
    match names.len() {
        0 => String::new(),
        1 => names[0].to_string(),
        n => format!("{} or {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

/// What the user reads instead of a grammar rule's name.
fn rule_name(rule: &Rule) -> &'static str {
    match rule {
        Rule::EOI => "the end of the file",
        Rule::ident => "a name",
        Rule::number | Rule::quantity => "a number",
        Rule::string | Rule::string_body => "a string",
        Rule::boolean => "`true` or `false`",
        Rule::value => "a value",
        Rule::list => "a list `[...]`",
        Rule::call => "a call `name(...)`",
        Rule::argument => "an argument",
        Rule::settings => "a block `{ ... }`",
        Rule::setting => "a setting `key: value`",
        Rule::pipeline_decl
        | Rule::data_decl
        | Rule::augment_decl
        | Rule::model_decl
        | Rule::role_decl
        | Rule::loss_decl
        | Rule::stage_decl
        | Rule::baseline_decl
        | Rule::evaluate_decl
        | Rule::export_decl
        | Rule::sweep_decl
        | Rule::kw_sweep
        | Rule::kw_pipeline
        | Rule::kw_data
        | Rule::kw_augment
        | Rule::kw_model
        | Rule::kw_teacher
        | Rule::kw_student
        | Rule::kw_stage
        | Rule::kw_baseline
        | Rule::kw_evaluate
        | Rule::kw_export => "a declaration",
        Rule::op => "an augmentation `name(...)`",
        Rule::input_stmt | Rule::kw_input => "`input [shape]`",
        Rule::residual | Rule::layer | Rule::kw_residual => "a layer",
        Rule::alias => "`as name`",
        Rule::role => "`teacher` or `student`",
        Rule::onnx_source | Rule::kw_onnx => "`onnx(\"file.onnx\") { ... }`",
        Rule::onnx_port | Rule::onnx_role | Rule::kw_output | Rule::kw_tap => {
            "`input`, `output` or `tap \"name\"`"
        }
        Rule::loss_params | Rule::loss_param => "loss parameters `(name = value)`",
        Rule::train_stmt
        | Rule::distill_stmt
        | Rule::loss_stmt
        | Rule::optimizer_stmt
        | Rule::schedule_stmt
        | Rule::validate_stmt
        | Rule::keep_stmt
        | Rule::stage_setting
        | Rule::stage_key
        | Rule::kw_train
        | Rule::kw_distill
        | Rule::kw_optimizer
        | Rule::kw_schedule
        | Rule::kw_validate
        | Rule::kw_keep => "a stage statement",
        Rule::kw_loss => "`loss`",
        Rule::keep_best | Rule::kw_best | Rule::kw_last => "`best METRIC` or `last`",
        Rule::data_ref => "`data.split`",
        Rule::without_clause => "`without TEACHER`",
        Rule::kw_trained => "`trained like`",
        Rule::metric_list => "a metric list `{ accuracy, f1 }`",
        Rule::search_stmt
        | Rule::select_stmt
        | Rule::sweep_axis
        | Rule::sweep_key
        | Rule::kw_search
        | Rule::kw_select => "a sweep statement (`KEY in [...]`, `search`, `select`)",
        Rule::kw_of => "`of MODEL`",
        Rule::kw_in => "`in [values]` or `in distribution(...)`",
        Rule::expr | Rule::expr_call | Rule::expr_arg | Rule::member | Rule::neg => "an expression",
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::pow => "an operator",
        _ => "more input",
    }
}
