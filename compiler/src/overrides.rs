//! `--set kind.name.field=value`: edits the AST before checking, so an override is checked
//! exactly like the text it replaces.

use kd_grammar::ast::{
    Argument, Call, Declaration, Expr, ExprKind, Ident, LayerKind, LayerNode, Program, Setting,
    SettingValue, Span, StageStmt, Value, ValueKind,
};
use kd_plan::Override;

use crate::diagnostics::{did_you_mean, one_of, OverrideError};

/// Splits `key=value` texts from the command line.
pub fn parse_overrides(texts: &[String]) -> Result<Vec<Override>, Vec<OverrideError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for text in texts {
        match text.split_once('=') {
            Some((key, value)) if key.split('.').count() >= 3 && !value.is_empty() => {
                out.push(Override {
                    key: key.trim().to_string(),
                    value: value.trim().to_string(),
                })
            }
            _ => errors.push(OverrideError::Syntax { text: text.clone() }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Applies overrides in order. Unknown keys are errors, all reported together.
pub fn apply_overrides(
    mut program: Program,
    overrides: &[Override],
) -> Result<Program, Vec<OverrideError>> {
    let mut errors = Vec::new();
    for o in overrides {
        if let Err(e) = apply(&mut program, o) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(program)
    } else {
        Err(errors)
    }
}

const STAGE_FIELDS: &[&str] = &[
    "epochs",
    "batch",
    "clip",
    "early_stop",
    "lr",
    "optimizer",
    "schedule",
];

fn apply(program: &mut Program, o: &Override) -> Result<(), OverrideError> {
    let value = kd_grammar::parse_value(&o.value).map_err(|_| OverrideError::Value {
        key: o.key.clone(),
        value: o.value.clone(),
    })?;
    set(program, o, value, false)
}

/// Sets `o.key` to `value` (parsed from `o.value`). A value from the command line takes the
/// span of what it replaces; one from the file itself (a sweep's, `own_spans`) keeps its
/// own, so a diagnostic about it points at the sweep.
pub(crate) fn set(
    program: &mut Program,
    o: &Override,
    value: Value,
    own_spans: bool,
) -> Result<(), OverrideError> {
    let respan = |value: Value, at: Span| match own_spans {
        true => value,
        false => respan(value, at),
    };
    let parts: Vec<&str> = o.key.split('.').collect();
    if parts.len() < 3 {
        return Err(OverrideError::UnknownKey {
            key: o.key.clone(),
            reason: "a key is `kind.name.field`".into(),
            help: Some("for example `stage.distill.epochs` or `model.mlp.linear1.out`".into()),
        });
    }
    let (kind, name, field) = (parts[0], parts[1], &parts[2..]);
    let unknown = |reason: String, help: Option<String>| OverrideError::UnknownKey {
        key: o.key.clone(),
        reason,
        help,
    };
    let names = |pick: fn(&Declaration) -> Option<&Ident>| -> Vec<String> {
        program
            .declarations
            .iter()
            .filter_map(pick)
            .map(|i| i.name.clone())
            .collect()
    };
    match kind {
        "pipeline" | "data" => {
            let pick: fn(&Declaration) -> Option<&Ident> = if kind == "pipeline" {
                |d| match d {
                    Declaration::Pipeline(p) => Some(&p.name),
                    _ => None,
                }
            } else {
                |d| match d {
                    Declaration::Data(p) => Some(&p.name),
                    _ => None,
                }
            };
            let known = names(pick);
            let settings = program.declarations.iter_mut().find_map(|d| match d {
                Declaration::Pipeline(p) if kind == "pipeline" && p.name.name == name => {
                    Some((&mut p.settings, p.name.span))
                }
                Declaration::Data(p) if kind == "data" && p.name.name == name => {
                    Some((&mut p.settings, p.name.span))
                }
                _ => None,
            });
            let Some((settings, at)) = settings else {
                return Err(unknown(
                    format!("there is no {kind} `{name}`"),
                    suggest(name, &known),
                ));
            };
            set_path(settings, field, value, at, own_spans);
            Ok(())
        }
        "stage" => {
            let known = names(|d| match d {
                Declaration::Stage(s) => Some(&s.name),
                _ => None,
            });
            let Some(stage) = program.declarations.iter_mut().find_map(|d| match d {
                Declaration::Stage(s) if s.name.name == name => Some(s),
                _ => None,
            }) else {
                return Err(unknown(
                    format!("there is no stage `{name}`"),
                    suggest(name, &known),
                ));
            };
            let field_name = field.join(".");
            let at = stage.name.span;
            match field_name.as_str() {
                "epochs" | "batch" | "clip" | "early_stop" => {
                    let value = respan(value, at);
                    let existing = stage.statements.iter_mut().find_map(|s| match s {
                        StageStmt::Setting(s) if s.key.name == field_name => Some(s),
                        _ => None,
                    });
                    match existing {
                        Some(s) => {
                            let at = s.span;
                            s.value = SettingValue::Value(respan(value, at));
                        }
                        None => stage.statements.push(StageStmt::Setting(Setting {
                            key: Ident {
                                name: field_name,
                                span: at,
                            },
                            value: SettingValue::Value(value),
                            span: at,
                        })),
                    }
                    Ok(())
                }
                "lr" => {
                    let Some(call) = stage.statements.iter_mut().find_map(|s| match s {
                        StageStmt::Optimizer(c) => Some(c),
                        _ => None,
                    }) else {
                        return Err(unknown(
                            format!("stage `{name}` has no optimizer to set `lr` on"),
                            None,
                        ));
                    };
                    let value = respan(value, call.span);
                    match call.args.iter_mut().find(|a| {
                        a.name.as_ref().is_some_and(|n| n.name == "lr") || a.name.is_none()
                    }) {
                        Some(arg) => arg.value = value,
                        None => call.args.push(Argument {
                            name: Some(Ident {
                                name: "lr".into(),
                                span: call.span,
                            }),
                            value,
                        }),
                    }
                    Ok(())
                }
                "optimizer" | "schedule" => {
                    let value = respan(value, at);
                    let at = value.span;
                    let call = match value.kind {
                        ValueKind::Call(c) => c,
                        ValueKind::Name(n) => Call {
                            name: Ident { name: n, span: at },
                            args: Vec::new(),
                            span: at,
                        },
                        _ => {
                            return Err(OverrideError::Value {
                                key: o.key.clone(),
                                value: o.value.clone(),
                            })
                        }
                    };
                    stage.statements.retain(|s| {
                        !matches!(
                            (s, field_name.as_str()),
                            (StageStmt::Optimizer(_), "optimizer")
                                | (StageStmt::Schedule(_), "schedule")
                        )
                    });
                    stage.statements.push(if field_name == "optimizer" {
                        StageStmt::Optimizer(call)
                    } else {
                        StageStmt::Schedule(call)
                    });
                    Ok(())
                }
                other => Err(unknown(
                    format!("stages have no field `{other}`"),
                    did_you_mean(other, STAGE_FIELDS.iter().copied())
                        .or_else(|| Some(one_of(STAGE_FIELDS.iter().copied()))),
                )),
            }
        }
        "loss" => {
            let Some(decl) = program.declarations.iter_mut().find_map(|d| match d {
                Declaration::Loss(l) if l.name.name == name => Some(l),
                _ => None,
            }) else {
                return Err(unknown(format!("there is no loss `{name}`"), None));
            };
            let field_name = field.join(".");
            let Some(param) = decl.params.iter_mut().find(|p| p.name.name == field_name) else {
                let params: Vec<String> = decl.params.iter().map(|p| p.name.name.clone()).collect();
                return Err(unknown(
                    format!("loss `{name}` has no parameter `{field_name}`"),
                    suggest(&field_name, &params),
                ));
            };
            if let ExprKind::Call { name: form, args } = &param.default.kind {
                if crate::check::is_schedule(&form.name, args) {
                    return Err(OverrideError::Scheduled {
                        key: o.key.clone(),
                        reason: format!(
                            "`{field_name}` of loss `{name}` follows the schedule `{}(...)`, which --set cannot replace by one number",
                            form.name
                        ),
                    });
                }
            }
            let ValueKind::Number {
                value: v,
                unit: None,
            } = value.kind
            else {
                return Err(OverrideError::Value {
                    key: o.key.clone(),
                    value: o.value.clone(),
                });
            };
            let at = param.default.span;
            param.default = Expr {
                kind: ExprKind::Number(v),
                span: at,
            };
            Ok(())
        }
        "model" => {
            let known = names(|d| match d {
                Declaration::Model(m) => Some(&m.name),
                _ => None,
            });
            let Some(model) = program.declarations.iter_mut().find_map(|d| match d {
                Declaration::Model(m) if m.name.name == name => Some(m),
                _ => None,
            }) else {
                return Err(unknown(
                    format!("there is no model `{name}`"),
                    suggest(name, &known),
                ));
            };
            let Some((arg, path)) = field.split_last() else {
                return Err(unknown(
                    "a model key is `model.NAME.LAYER.ARG`".into(),
                    None,
                ));
            };
            if path.is_empty() {
                return Err(unknown(
                    "a model key names a layer and its argument: `model.NAME.LAYER.ARG`".into(),
                    Some(
                        "for example `model.mlp.linear1.out` (layer names as in `kdc explain`)"
                            .into(),
                    ),
                ));
            }
            let layer = find_layer(&mut model.layers, path)
                .map_err(|(reason, help)| unknown(format!("model `{name}`: {reason}"), help))?;
            let call = match &mut layer.kind {
                LayerKind::Call(call) => call,
                LayerKind::Residual(_) => {
                    return Err(unknown(
                        format!(
                            "`{}` is a residual block, which has no arguments",
                            path.join(".")
                        ),
                        Some("name a layer inside it: `residual1.conv1.out`".into()),
                    ))
                }
            };
            let position = positional(&call.name.name).iter().position(|p| p == arg);
            let at = call.span;
            let existing = call
                .args
                .iter()
                .enumerate()
                .position(|(i, a)| match &a.name {
                    Some(n) => n.name == *arg,
                    None => Some(i) == position,
                });
            let value = respan(value, at);
            match existing {
                Some(i) => call.args[i].value = value,
                None => call.args.push(Argument {
                    name: Some(Ident {
                        name: arg.to_string(),
                        span: at,
                    }),
                    value,
                }),
            }
            Ok(())
        }
        other => Err(unknown(
            format!("`{other}` is not a kind of declaration that --set can change"),
            did_you_mean(other, KINDS.iter().copied())
                .or_else(|| Some(one_of(KINDS.iter().copied()))),
        )),
    }
}

const KINDS: [&str; 5] = ["pipeline", "data", "stage", "loss", "model"];

/// The arguments a layer takes by position, in order (the others by name only).
fn positional(layer: &str) -> &'static [&'static str] {
    match layer {
        "linear" | "conv2d" | "conv1d" => &["out"],
        "dropout" => &["p"],
        "maxpool" | "avgpool" => &["kernel"],
        "embedding" => &["vocab", "dim"],
        "lstm" | "bilstm" => &["hidden"],
        "pool" => &["kind"],
        _ => &[],
    }
}

/// A layer's name prefix, as in exported parameter names (`linear1`, `conv2`, `bn1`).
fn layer_prefix(layer: &LayerNode) -> &str {
    match &layer.kind {
        LayerKind::Residual(_) => "residual",
        LayerKind::Call(call) => match call.name.name.as_str() {
            "conv2d" => "conv",
            "batchnorm" => "bn",
            "bilstm" => "lstm",
            "max_over_time" => "pool",
            other => other,
        },
    }
}

/// The layer `path` names (`linear2`, `residual1.conv1`), counted per prefix from 1 as
/// parameter names are, each block's body afresh.
fn find_layer<'a>(
    layers: &'a mut [LayerNode],
    path: &[&str],
) -> Result<&'a mut LayerNode, (String, Option<String>)> {
    let Some((first, rest)) = path.split_first() else {
        return Err(("no layer named".into(), None));
    };
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut names = Vec::new();
    for layer in layers.iter() {
        let prefix = layer_prefix(layer).to_string();
        let n = counts.entry(prefix.clone()).or_default();
        *n += 1;
        names.push(format!("{prefix}{n}"));
    }
    let Some(index) = names.iter().position(|n| n == first) else {
        return Err((format!("it has no layer `{first}`"), suggest(first, &names)));
    };
    let layer = &mut layers[index];
    if rest.is_empty() {
        return Ok(layer);
    }
    match &mut layer.kind {
        LayerKind::Residual(body) => find_layer(body, rest),
        LayerKind::Call(_) => Err((format!("`{first}` is not a residual block"), None)),
    }
}

fn suggest(name: &str, known: &[String]) -> Option<String> {
    did_you_mean(name, known.iter().map(String::as_str))
        .or_else(|| Some(one_of(known.iter().map(String::as_str))))
}

/// Sets `path` (possibly nested, `split.train`) in a settings list, adding it if absent.
fn set_path(settings: &mut Vec<Setting>, path: &[&str], value: Value, at: Span, own_spans: bool) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let index = match settings.iter().position(|s| s.key.name == *first) {
        Some(i) => i,
        None => {
            settings.push(Setting {
                key: Ident {
                    name: first.to_string(),
                    span: at,
                },
                value: SettingValue::Block(Vec::new()),
                span: at,
            });
            settings.len() - 1
        }
    };
    let setting = &mut settings[index];
    let at = setting.span;
    if rest.is_empty() {
        setting.value = SettingValue::Value(match own_spans {
            true => value,
            false => respan(value, at),
        });
        return;
    }
    if !matches!(setting.value, SettingValue::Block(_)) {
        setting.value = SettingValue::Block(Vec::new());
    }
    if let SettingValue::Block(inner) = &mut setting.value {
        set_path(inner, rest, value, at, own_spans);
    }
}

/// A value parsed from the command line has offsets into that text; diagnostics about it
/// point at the setting it replaced instead.
fn respan(value: Value, at: Span) -> Value {
    let kind = match value.kind {
        ValueKind::List(items) => {
            ValueKind::List(items.into_iter().map(|v| respan(v, at)).collect())
        }
        ValueKind::Call(c) => ValueKind::Call(Call {
            name: Ident {
                name: c.name.name,
                span: at,
            },
            args: c
                .args
                .into_iter()
                .map(|a| Argument {
                    name: a.name.map(|n| Ident {
                        name: n.name,
                        span: at,
                    }),
                    value: respan(a.value, at),
                })
                .collect(),
            span: at,
        }),
        other => other,
    };
    Value { kind, span: at }
}
