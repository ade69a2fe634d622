//! pest pairs to the spanned AST.

use std::sync::LazyLock;

use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser;

use crate::ast::*;
use crate::error::ParseError;

#[derive(pest_derive::Parser)]
#[grammar = "kd.pest"]
pub(crate) struct KdParser;

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
        .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left))
        .op(Op::prefix(Rule::neg))
        .op(Op::infix(Rule::pow, Assoc::Right))
});

/// Parses a whole `.kd` program.
pub fn parse(source: &str) -> Result<Program, ParseError> {
    let mut pairs = KdParser::parse(Rule::program, source).map_err(ParseError::from_pest)?;
    let program = pairs
        .next()
        .ok_or_else(|| ParseError::internal("empty parse"))?;
    let mut declarations = Vec::new();
    for pair in program.into_inner() {
        if pair.as_rule() == Rule::EOI {
            break;
        }
        declarations.push(declaration(pair)?);
    }
    Ok(Program { declarations })
}

/// Parses one value, as written after `--set key=`.
pub fn parse_value(text: &str) -> Result<Value, ParseError> {
    let mut pairs = KdParser::parse(Rule::value_only, text).map_err(ParseError::from_pest)?;
    let outer = pairs
        .next()
        .ok_or_else(|| ParseError::internal("empty value"))?;
    let inner = first(outer, "value")?;
    value(inner)
}

type Result<T, E = ParseError> = std::result::Result<T, E>;

fn span_of(pair: &Pair<Rule>) -> Span {
    let s = pair.as_span();
    Span::new(s.start(), s.end())
}

fn first<'a>(pair: Pair<'a, Rule>, what: &str) -> Result<Pair<'a, Rule>> {
    pair.into_inner()
        .next()
        .ok_or_else(|| ParseError::internal(&format!("missing {what}")))
}

fn is_keyword(rule: Rule) -> bool {
    format!("{rule:?}").starts_with("kw_")
}

/// The children of `pair` less the keyword tokens.
fn parts(pair: Pair<Rule>) -> impl Iterator<Item = Pair<Rule>> {
    pair.into_inner().filter(|p| !is_keyword(p.as_rule()))
}

fn next_part<'a>(
    it: &mut impl Iterator<Item = Pair<'a, Rule>>,
    what: &str,
) -> Result<Pair<'a, Rule>> {
    it.next()
        .ok_or_else(|| ParseError::internal(&format!("missing {what}")))
}

fn ident(pair: Pair<Rule>) -> Ident {
    Ident {
        name: pair.as_str().to_string(),
        span: span_of(&pair),
    }
}

fn declaration(pair: Pair<Rule>) -> Result<Declaration> {
    let mut span = span_of(&pair);
    let rule = pair.as_rule();
    let mut it = parts(pair);
    Ok(match rule {
        Rule::pipeline_decl => {
            let name = ident(next_part(&mut it, "pipeline name")?);
            let settings = match it.next() {
                Some(block) => settings(block)?,
                None => Vec::new(),
            };
            Declaration::Pipeline(PipelineDecl {
                name,
                settings,
                span,
            })
        }
        Rule::data_decl => {
            let name = ident(next_part(&mut it, "data name")?);
            let source = call(next_part(&mut it, "data source")?)?;
            let settings = match it.next() {
                Some(block) => settings(block)?,
                None => Vec::new(),
            };
            Declaration::Data(DataDecl {
                name,
                source,
                settings,
                span,
            })
        }
        Rule::augment_decl => {
            let name = ident(next_part(&mut it, "augment name")?);
            let ops = it
                .map(|op| call_or_name(first(op, "augment op")?))
                .collect::<Result<_>>()?;
            Declaration::Augment(AugmentDecl { name, ops, span })
        }
        Rule::model_decl => {
            let name = ident(next_part(&mut it, "model name")?);
            let input_stmt = next_part(&mut it, "input")?;
            let tokens = input_stmt
                .clone()
                .into_inner()
                .any(|p| p.as_rule() == Rule::kw_tokens);
            let input = value(first_part(input_stmt, "input shape")?)?;
            let layers = it.map(layer_node).collect::<Result<_>>()?;
            Declaration::Model(ModelDecl {
                name,
                tokens,
                input,
                layers,
                span,
            })
        }
        Rule::role_decl => {
            let role_pair = next_part(&mut it, "role")?;
            let role = match role_pair.as_str() {
                "teacher" => RoleKind::Teacher,
                _ => RoleKind::Student,
            };
            let name = ident(next_part(&mut it, "model name")?);
            let what = next_part(&mut it, "architecture")?;
            let source = if what.as_rule() == Rule::onnx_source {
                RoleSource::Onnx(onnx_source(what)?)
            } else if what.as_rule() == Rule::bert_source {
                let span = span_of(&what);
                let mut b = parts(what);
                let path = string_value(next_part(&mut b, "checkpoint folder")?)?;
                let settings = match b.next() {
                    Some(block) => settings(block)?,
                    None => Vec::new(),
                };
                RoleSource::Bert(BertSource {
                    path,
                    settings,
                    span,
                })
            } else if what.as_rule() == Rule::prune_source {
                // Without the whitespace pest skipped looking for the optional settings.
                let own = span_of(&what);
                let own = Span::new(own.start, own.start + what.as_str().trim_end().len());
                span = Span::new(span.start, own.end);
                let span = own;
                let mut b = parts(what);
                let source = ident(next_part(&mut b, "pruned model")?);
                let settings = match b.next() {
                    Some(block) => settings(block)?,
                    None => Vec::new(),
                };
                RoleSource::Prune(PruneSource {
                    source,
                    settings,
                    span,
                })
            } else if what.as_rule() == Rule::quantize_source {
                let own = span_of(&what);
                let own = Span::new(own.start, own.start + what.as_str().trim_end().len());
                span = Span::new(span.start, own.end);
                let span = own;
                let mut b = parts(what);
                let source = ident(next_part(&mut b, "quantized model")?);
                let data = data_ref(next_part(&mut b, "calibration data")?)?;
                let settings = match b.next() {
                    Some(block) => settings(block)?,
                    None => Vec::new(),
                };
                RoleSource::Quantize(QuantizeSource {
                    source,
                    data,
                    settings,
                    span,
                })
            } else {
                let architecture = ident(what);
                let mut init_from = None;
                let mut block = Vec::new();
                let mut end = architecture.span.end;
                for part in it {
                    end = part.as_span().end();
                    match part.as_rule() {
                        Rule::settings => block = settings(part)?,
                        _ => init_from = Some(string_value(part)?),
                    }
                }
                // The declaration ends with its last part, not with the whitespace pest
                // skipped looking for an optional part after it.
                span = Span::new(span.start, end);
                RoleSource::Architecture {
                    architecture,
                    init_from,
                    settings: block,
                }
            };
            Declaration::Role(RoleDecl {
                role,
                name,
                source,
                span,
            })
        }
        Rule::loss_decl => {
            let name = ident(next_part(&mut it, "loss name")?);
            let mut params = Vec::new();
            let mut next = next_part(&mut it, "loss body")?;
            if next.as_rule() == Rule::loss_params {
                for param in next.into_inner() {
                    let mut p = param.into_inner();
                    let name = ident(next_part(&mut p, "parameter name")?);
                    let default = expr(next_part(&mut p, "parameter default")?)?;
                    params.push(LossParam { name, default });
                }
                next = next_part(&mut it, "loss body")?;
            }
            Declaration::Loss(LossDecl {
                name,
                params,
                body: expr(next)?,
                span,
            })
        }
        Rule::stage_decl => {
            let name = ident(next_part(&mut it, "stage name")?);
            let statements = it.map(stage_stmt).collect::<Result<_>>()?;
            Declaration::Stage(StageDecl {
                name,
                statements,
                span,
            })
        }
        Rule::baseline_decl => {
            let name = ident(next_part(&mut it, "baseline name")?);
            let student = ident(next_part(&mut it, "student")?);
            let mut stages = Vec::new();
            let mut without: Vec<Ident> = Vec::new();
            for part in it {
                match part.as_rule() {
                    Rule::without_clause => without = part.into_inner().map(ident).collect(),
                    _ => stages.push(ident(part)),
                }
            }
            // The declaration ends at its last name (pest's span of a rule ending in a
            // repetition takes the whitespace after it).
            let end = without
                .last()
                .or(stages.last())
                .map_or(span.end, |last| last.span.end);
            Declaration::Baseline(BaselineDecl {
                name,
                student,
                stages,
                without,
                span: Span::new(span.start, end),
            })
        }
        Rule::sweep_decl => {
            let name = ident(next_part(&mut it, "sweep name")?);
            let (mut search, mut axes, mut select) = (None, Vec::new(), None);
            for part in it {
                let at = span_of(&part);
                match part.as_rule() {
                    Rule::search_stmt => {
                        search = Some(call_or_name(next_part(&mut parts(part), "search")?)?)
                    }
                    Rule::select_stmt => {
                        let mut inner = parts(part);
                        select = Some(SweepSelect {
                            metric: ident(next_part(&mut inner, "metric")?),
                            model: ident(next_part(&mut inner, "model")?),
                            data: data_ref(next_part(&mut inner, "split")?)?,
                            span: at,
                        });
                    }
                    _ => {
                        let mut inner = parts(part);
                        let key = ident(next_part(&mut inner, "key")?);
                        let body = next_part(&mut inner, "values")?;
                        let values = match body.as_rule() {
                            Rule::list => match value(body)?.kind {
                                ValueKind::List(items) => SweepValues::List(items),
                                _ => return Err(ParseError::internal("a list that is not")),
                            },
                            _ => SweepValues::Sample(call(body)?),
                        };
                        axes.push(SweepAxis {
                            key,
                            values,
                            span: at,
                        });
                    }
                }
            }
            Declaration::Sweep(SweepDecl {
                name,
                search,
                axes,
                select,
                span,
            })
        }
        Rule::evaluate_decl => {
            let mut models = Vec::new();
            let mut data = None;
            let mut metrics = Vec::new();
            for part in it {
                match part.as_rule() {
                    Rule::ident => models.push(ident(part)),
                    Rule::data_ref => data = Some(data_ref(part)?),
                    Rule::metric_list => metrics = part.into_inner().map(ident).collect(),
                    _ => {}
                }
            }
            Declaration::Evaluate(EvaluateDecl {
                models,
                data: data.ok_or_else(|| ParseError::internal("missing data"))?,
                metrics,
                span,
            })
        }
        Rule::export_decl => {
            let model = ident(next_part(&mut it, "model")?);
            let paths = it.map(string_value).collect::<Result<_>>()?;
            Declaration::Export(ExportDecl { model, paths, span })
        }
        other => return Err(ParseError::internal(&format!("unexpected {other:?}"))),
    })
}

fn first_part<'a>(pair: Pair<'a, Rule>, what: &str) -> Result<Pair<'a, Rule>> {
    let mut it = parts(pair);
    next_part(&mut it, what)
}

fn layer_node(pair: Pair<Rule>) -> Result<LayerNode> {
    let span = span_of(&pair);
    match pair.as_rule() {
        Rule::residual => {
            let mut body = Vec::new();
            let mut alias = None;
            for part in parts(pair) {
                match part.as_rule() {
                    Rule::alias => alias = Some(ident(first(part, "alias")?)),
                    _ => body.push(layer_node(part)?),
                }
            }
            Ok(LayerNode {
                kind: LayerKind::Residual(body),
                alias,
                span,
            })
        }
        Rule::layer => {
            let mut it = pair.into_inner();
            let call = call_or_name(next_part(&mut it, "layer")?)?;
            let alias = match it.next() {
                Some(a) => Some(ident(first(a, "alias")?)),
                None => None,
            };
            Ok(LayerNode {
                kind: LayerKind::Call(call),
                alias,
                span,
            })
        }
        other => Err(ParseError::internal(&format!(
            "unexpected {other:?} in model"
        ))),
    }
}

fn stage_stmt(pair: Pair<Rule>) -> Result<StageStmt> {
    let span = span_of(&pair);
    let rule = pair.as_rule();
    let mut it = parts(pair);
    Ok(match rule {
        Rule::train_stmt => {
            let model = ident(next_part(&mut it, "model")?);
            let data = data_ref(next_part(&mut it, "data")?)?;
            let augment = it.next().map(ident);
            StageStmt::Train {
                model,
                data,
                augment,
                span,
            }
        }
        Rule::distill_stmt => {
            let teachers = next_part(&mut it, "teacher")?
                .into_inner()
                .map(ident)
                .collect();
            let student = ident(next_part(&mut it, "student")?);
            let data = data_ref(next_part(&mut it, "data")?)?;
            let augment = it.next().map(ident);
            StageStmt::Distill {
                teachers,
                student,
                data,
                augment,
                span,
            }
        }
        Rule::loss_stmt => StageStmt::Loss(expr(next_part(&mut it, "loss")?)?),
        Rule::optimizer_stmt => {
            StageStmt::Optimizer(call_or_name(next_part(&mut it, "optimizer")?)?)
        }
        Rule::schedule_stmt => StageStmt::Schedule(call_or_name(next_part(&mut it, "schedule")?)?),
        Rule::validate_stmt => StageStmt::Validate(data_ref(next_part(&mut it, "data")?)?),
        Rule::keep_stmt => {
            // `keep last` has no part left once keywords are dropped.
            let best = match it.next() {
                Some(part) => Some(ident(first_part(part, "metric")?)),
                None => None,
            };
            StageStmt::Keep { best, span }
        }
        Rule::stage_setting => {
            let mut inner = pair_children(it);
            let key = ident(next_part(&mut inner, "setting")?);
            let value = value(next_part(&mut inner, "value")?)?;
            StageStmt::Setting(Setting {
                key,
                value: SettingValue::Value(value),
                span,
            })
        }
        other => {
            return Err(ParseError::internal(&format!(
                "unexpected {other:?} in stage"
            )))
        }
    })
}

fn pair_children<'a>(
    it: impl Iterator<Item = Pair<'a, Rule>>,
) -> std::vec::IntoIter<Pair<'a, Rule>> {
    it.collect::<Vec<_>>().into_iter()
}

fn data_ref(pair: Pair<Rule>) -> Result<DataRef> {
    let span = span_of(&pair);
    let mut it = pair.into_inner();
    Ok(DataRef {
        data: ident(next_part(&mut it, "data name")?),
        split: ident(next_part(&mut it, "split name")?),
        span,
    })
}

fn settings(pair: Pair<Rule>) -> Result<Vec<Setting>> {
    pair.into_inner().map(setting).collect()
}

fn setting(pair: Pair<Rule>) -> Result<Setting> {
    let span = span_of(&pair);
    let mut it = pair.into_inner();
    let key = ident(next_part(&mut it, "setting name")?);
    let body = next_part(&mut it, "setting value")?;
    let value = match body.as_rule() {
        Rule::settings => SettingValue::Block(settings(body)?),
        _ => SettingValue::Value(value(body)?),
    };
    Ok(Setting { key, value, span })
}

fn call_or_name(pair: Pair<Rule>) -> Result<Call> {
    match pair.as_rule() {
        Rule::call => call(pair),
        _ => {
            let span = span_of(&pair);
            Ok(Call {
                name: ident(pair),
                args: Vec::new(),
                span,
            })
        }
    }
}

fn call(pair: Pair<Rule>) -> Result<Call> {
    let span = span_of(&pair);
    let mut it = pair.into_inner();
    let name = ident(next_part(&mut it, "name")?);
    let mut args = Vec::new();
    for arg in it {
        let mut inner = arg.into_inner();
        let a = next_part(&mut inner, "argument")?;
        let argument = if a.as_rule() == Rule::arg_name {
            let name = ident(a);
            Argument {
                name: Some(name),
                value: value(next_part(&mut inner, "argument value")?)?,
            }
        } else {
            Argument {
                name: None,
                value: value(a)?,
            }
        };
        args.push(argument);
    }
    Ok(Call { name, args, span })
}

fn onnx_source(pair: Pair<Rule>) -> Result<OnnxSource> {
    let span = span_of(&pair);
    let mut it = parts(pair);
    let path = string_value(next_part(&mut it, "ONNX file")?)?;
    let mut ports = Vec::new();
    for port in it {
        let port_span = span_of(&port);
        let mut p = parts(port);
        let role = match next_part(&mut p, "port")?.as_str() {
            "input" => OnnxPortRole::Input,
            "output" => OnnxPortRole::Output,
            _ => OnnxPortRole::Tap,
        };
        let value = string_value(next_part(&mut p, "ONNX value name")?)?;
        let mut shape = None;
        let mut alias = None;
        for part in p {
            match part.as_rule() {
                Rule::alias => alias = Some(ident(first(part, "alias")?)),
                _ => shape = Some(self::value(part)?),
            }
        }
        ports.push(OnnxPort {
            role,
            value,
            shape,
            alias,
            span: port_span,
        });
    }
    Ok(OnnxSource { path, ports, span })
}

fn string_value(pair: Pair<Rule>) -> Result<Value> {
    let span = span_of(&pair);
    let body = first(pair, "string")?;
    Ok(Value {
        kind: ValueKind::Str(unescape(body.as_str())),
        span,
    })
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn value(pair: Pair<Rule>) -> Result<Value> {
    let pair = if pair.as_rule() == Rule::value {
        first(pair, "value")?
    } else {
        pair
    };
    let span = span_of(&pair);
    let kind = match pair.as_rule() {
        Rule::quantity => {
            let mut it = pair.into_inner();
            let number = next_part(&mut it, "number")?;
            let unit = it.next().map(|u| u.as_str().to_string());
            ValueKind::Number {
                value: parse_number(&number)?,
                unit,
            }
        }
        Rule::string => return string_value(pair),
        Rule::boolean => ValueKind::Bool(pair.as_str() == "true"),
        Rule::list => ValueKind::List(pair.into_inner().map(value).collect::<Result<_>>()?),
        Rule::call => ValueKind::Call(call(pair)?),
        Rule::ident => ValueKind::Name(pair.as_str().to_string()),
        other => {
            return Err(ParseError::internal(&format!(
                "unexpected {other:?} as value"
            )))
        }
    };
    Ok(Value { kind, span })
}

fn parse_number(pair: &Pair<Rule>) -> Result<f64> {
    match pair.as_str().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(ParseError::bad_number(pair.as_str(), span_of(pair))),
    }
}

fn expr(pair: Pair<Rule>) -> Result<Expr> {
    PRATT
        .map_primary(primary)
        .map_prefix(|op, rhs| {
            let rhs = rhs?;
            Ok(Expr {
                span: span_of(&op).to(rhs.span),
                kind: ExprKind::Neg(Box::new(rhs)),
            })
        })
        .map_infix(|lhs, op, rhs| {
            let (lhs, rhs) = (lhs?, rhs?);
            let op = match op.as_rule() {
                Rule::add => BinaryOp::Add,
                Rule::sub => BinaryOp::Sub,
                Rule::mul => BinaryOp::Mul,
                Rule::div => BinaryOp::Div,
                _ => BinaryOp::Pow,
            };
            Ok(Expr {
                span: lhs.span.to(rhs.span),
                kind: ExprKind::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
            })
        })
        .parse(pair.into_inner())
}

fn primary(pair: Pair<Rule>) -> Result<Expr> {
    let span = span_of(&pair);
    let kind = match pair.as_rule() {
        Rule::number => ExprKind::Number(parse_number(&pair)?),
        Rule::ident => ExprKind::Name(ident(pair)),
        Rule::member => {
            let mut it = pair.into_inner();
            ExprKind::Member {
                object: ident(next_part(&mut it, "model")?),
                field: ident(next_part(&mut it, "tap")?),
            }
        }
        Rule::expr_call => {
            let mut it = pair.into_inner();
            let name = ident(next_part(&mut it, "function")?);
            let mut args = Vec::new();
            for arg in it {
                let mut inner = arg.into_inner();
                let a = next_part(&mut inner, "argument")?;
                args.push(if a.as_rule() == Rule::arg_name {
                    ExprArg {
                        name: Some(ident(a)),
                        value: expr(next_part(&mut inner, "argument value")?)?,
                    }
                } else {
                    ExprArg {
                        name: None,
                        value: expr(a)?,
                    }
                });
            }
            ExprKind::Call { name, args }
        }
        Rule::expr => return expr(pair),
        other => {
            return Err(ParseError::internal(&format!(
                "unexpected {other:?} in expression"
            )))
        }
    };
    Ok(Expr { kind, span })
}
