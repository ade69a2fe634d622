//! Reading literal values and settings blocks, with a diagnostic for each misfit.

use std::collections::BTreeMap;

use kd_grammar::ast::{Argument, Call, Setting, SettingValue, Span, Value, ValueKind};

use super::Cx;
use crate::diagnostics::{did_you_mean, list, one_of, span, CheckError};

/// The settings of one block, by key, after unknown and repeated keys were reported.
pub(crate) struct Fields<'p> {
    pub map: BTreeMap<&'p str, &'p Setting>,
}

impl<'p> Fields<'p> {
    pub fn get(&self, key: &str) -> Option<&'p Setting> {
        self.map.get(key).copied()
    }

    pub fn value(&self, key: &str) -> Option<&'p Value> {
        match &self.get(key)?.value {
            SettingValue::Value(v) => Some(v),
            SettingValue::Block(_) => None,
        }
    }
}

/// The arguments of a call, by name or position.
pub(crate) struct Args<'p> {
    named: BTreeMap<&'p str, &'p Argument>,
    positional: Vec<&'p Argument>,
}

impl<'p> Args<'p> {
    /// The argument named `name`, or else the positional one at `position`.
    pub fn get(&self, name: &str, position: Option<usize>) -> Option<&'p Value> {
        self.named.get(name).map(|a| &a.value).or_else(|| {
            position
                .and_then(|p| self.positional.get(p))
                .map(|a| &a.value)
        })
    }
}

impl Cx<'_> {
    /// Collects a settings block, reporting keys not in `allowed` and repeated keys.
    pub(crate) fn fields<'p>(
        &mut self,
        settings: &'p [Setting],
        allowed: &[&str],
        context: &str,
    ) -> Fields<'p> {
        let mut map = BTreeMap::new();
        for setting in settings {
            let key = setting.key.name.as_str();
            if !allowed.contains(&key) {
                self.error(CheckError::UnknownSetting {
                    key: key.to_string(),
                    context: context.to_string(),
                    span: span(setting.key.span),
                    help: did_you_mean(key, allowed.iter().copied()).or_else(|| {
                        Some(format!("settings here: {}", list(allowed.iter().copied())))
                    }),
                });
                continue;
            }
            if let Some(first) = map.insert(key, setting) {
                self.error(CheckError::Duplicate {
                    what: "setting",
                    name: key.to_string(),
                    span: span(setting.key.span),
                    first: span(first.key.span),
                });
            }
        }
        Fields { map }
    }

    /// Collects a call's arguments: positional ones first, then named ones from `allowed`.
    pub(crate) fn args<'p>(
        &mut self,
        call: &'p Call,
        allowed: &[&str],
        max_positional: usize,
    ) -> Args<'p> {
        let mut named = BTreeMap::new();
        let mut positional = Vec::new();
        for arg in &call.args {
            match &arg.name {
                Some(name) => {
                    if !allowed.contains(&name.name.as_str()) {
                        self.error(CheckError::UnknownSetting {
                            key: name.name.clone(),
                            context: format!("`{}`", call.name.name),
                            span: span(name.span),
                            help: did_you_mean(&name.name, allowed.iter().copied()).or_else(|| {
                                Some(format!(
                                    "`{}` takes {}",
                                    call.name.name,
                                    list(allowed.iter().copied())
                                ))
                            }),
                        });
                    } else if named.insert(name.name.as_str(), arg).is_some() {
                        self.invalid(
                            arg.value.span,
                            format!("argument `{}` is given twice", name.name),
                            "again here",
                            None,
                        );
                    }
                }
                None => {
                    if positional.len() >= max_positional {
                        self.invalid(
                            arg.value.span,
                            format!(
                                "`{}` takes at most {max_positional} unnamed argument(s)",
                                call.name.name
                            ),
                            "one too many",
                            Some(format!("name it: {}", one_of(allowed.iter().copied()))),
                        );
                    } else {
                        positional.push(arg);
                    }
                }
            }
        }
        Args { named, positional }
    }

    pub(crate) fn invalid(&mut self, at: Span, message: String, label: &str, help: Option<String>) {
        self.error(CheckError::InvalidValue {
            message,
            span: span(at),
            label: label.to_string(),
            help,
        });
    }

    fn wrong_type(&mut self, value: &Value, what: &str, expected: &str) {
        self.invalid(
            value.span,
            format!("{what} must be {expected}, found {}", value.kind.describe()),
            &format!("expected {expected}"),
            None,
        );
    }

    pub(crate) fn number(&mut self, value: &Value, what: &str) -> Option<f64> {
        match &value.kind {
            ValueKind::Number {
                value: v,
                unit: None,
            } => Some(*v),
            ValueKind::Number { unit: Some(u), .. } => {
                self.invalid(
                    value.span,
                    format!("{what} takes a plain number, not `{u}`"),
                    "remove the unit",
                    None,
                );
                None
            }
            _ => {
                self.wrong_type(value, what, "a number");
                None
            }
        }
    }

    /// A number in `range` (inclusive bounds given as text for the message).
    pub(crate) fn number_in(
        &mut self,
        value: &Value,
        what: &str,
        ok: impl Fn(f64) -> bool,
        range: &'static str,
    ) -> Option<f64> {
        let v = self.number(value, what)?;
        if !ok(v) {
            self.error(CheckError::OutOfRange {
                what: what.to_string(),
                range,
                value: format_number(v),
                span: span(value.span),
                help: None,
            });
            return None;
        }
        Some(v)
    }

    /// A whole number at least `min`.
    pub(crate) fn count(&mut self, value: &Value, what: &str, min: usize) -> Option<usize> {
        let v = self.number(value, what)?;
        if v.fract() != 0.0 || v < 0.0 {
            self.invalid(
                value.span,
                format!("{what} must be a whole number, found {}", format_number(v)),
                "expected a whole number",
                None,
            );
            return None;
        }
        if (v as usize) < min || v > 1e15 {
            self.error(CheckError::OutOfRange {
                what: what.to_string(),
                range: match min {
                    0 => "at least 0",
                    1 => "at least 1",
                    _ => "at least 2",
                },
                value: format_number(v),
                span: span(value.span),
                help: None,
            });
            return None;
        }
        Some(v as usize)
    }

    pub(crate) fn string(&mut self, value: &Value, what: &str) -> Option<String> {
        match &value.kind {
            ValueKind::Str(s) => Some(s.clone()),
            _ => {
                self.wrong_type(value, what, "a string");
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, value: &Value, what: &str) -> Option<bool> {
        match &value.kind {
            ValueKind::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(value, what, "`true` or `false`");
                None
            }
        }
    }

    /// A bare name from `choices`.
    pub(crate) fn choice(&mut self, value: &Value, what: &str, choices: &[&str]) -> Option<String> {
        match &value.kind {
            ValueKind::Name(n) if choices.contains(&n.as_str()) => Some(n.clone()),
            ValueKind::Name(n) => {
                self.invalid(
                    value.span,
                    format!("`{n}` is not a valid {what}"),
                    "unknown",
                    did_you_mean(n, choices.iter().copied())
                        .or_else(|| Some(one_of(choices.iter().copied()))),
                );
                None
            }
            _ => {
                self.wrong_type(value, what, "a name");
                None
            }
        }
    }

    /// A list of whole numbers, each at least `min`.
    pub(crate) fn shape(&mut self, value: &Value, what: &str, min: usize) -> Option<Vec<usize>> {
        match &value.kind {
            ValueKind::List(items) if !items.is_empty() => {
                let dims: Vec<Option<usize>> =
                    items.iter().map(|i| self.count(i, what, min)).collect();
                dims.into_iter().collect()
            }
            _ => {
                self.wrong_type(value, what, "a non-empty list of whole numbers");
                None
            }
        }
    }
}

pub(crate) fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}
