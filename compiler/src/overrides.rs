//! `--set kind.name.field=value`: edits the AST before checking, so an override is checked
//! exactly like the text it replaces.

use kd_grammar::ast::{
    Argument, Call, Declaration, Expr, ExprKind, Ident, Program, Setting, SettingValue, Span,
    StageStmt, Value, ValueKind,
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
    let parts: Vec<&str> = o.key.split('.').collect();
    let (kind, name, field) = (parts[0], parts[1], &parts[2..]);
    let value = kd_grammar::parse_value(&o.value).map_err(|_| OverrideError::Value {
        key: o.key.clone(),
        value: o.value.clone(),
    })?;
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
            set_path(settings, field, value, at);
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
                    let call = match respan(value, at).kind {
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
        other => Err(unknown(
            format!("`{other}` is not a kind of declaration that --set can change"),
            did_you_mean(other, ["pipeline", "data", "stage", "loss"])
                .or_else(|| Some(one_of(["pipeline", "data", "stage", "loss"]))),
        )),
    }
}

fn suggest(name: &str, known: &[String]) -> Option<String> {
    did_you_mean(name, known.iter().map(String::as_str))
        .or_else(|| Some(one_of(known.iter().map(String::as_str))))
}

/// Sets `path` (possibly nested, `split.train`) in a settings list, adding it if absent.
fn set_path(settings: &mut Vec<Setting>, path: &[&str], value: Value, at: Span) {
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
        setting.value = SettingValue::Value(respan(value, at));
        return;
    }
    if !matches!(setting.value, SettingValue::Block(_)) {
        setting.value = SettingValue::Block(Vec::new());
    }
    if let SettingValue::Block(inner) = &mut setting.value {
        set_path(inner, rest, value, at);
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
