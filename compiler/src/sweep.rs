//! `sweep NAME { ... }`: one program per configuration, each the file with the swept keys
//! set as `--set` would set them, so every configuration is checked like any file.

use kd_grammar::ast::{
    Call, DataRef, Declaration, EvaluateDecl, Ident, Program, SweepDecl, SweepValues, Value,
    ValueKind,
};
use kd_plan::{Override, Selection};

use crate::diagnostics::{did_you_mean, one_of, span, OverrideError, SweepError};

/// The most configurations one sweep may make.
pub const MAX_CONFIGS: usize = 10_000;

/// A sweep expanded: its configurations, each a program to check.
#[derive(Debug, Clone)]
pub struct Expanded {
    pub name: String,
    pub search: String,
    pub select: Selection,
    pub points: Vec<Point>,
}

/// One configuration: its name, the values it sets, and the file with them set.
#[derive(Debug, Clone)]
pub struct Point {
    pub name: String,
    pub values: Vec<Override>,
    pub program: Program,
}

/// The program's sweep `name` as one program per configuration (AST to ASTs). Every
/// problem of the declaration comes back together.
pub fn expand_sweep(program: &Program, name: &str) -> Result<Expanded, Vec<SweepError>> {
    let sweeps: Vec<&SweepDecl> = program
        .declarations
        .iter()
        .filter_map(|d| match d {
            Declaration::Sweep(s) => Some(s),
            _ => None,
        })
        .collect();
    let Some(decl) = sweeps.iter().find(|s| s.name.name == name) else {
        let names: Vec<&str> = sweeps.iter().map(|s| s.name.name.as_str()).collect();
        return Err(vec![SweepError::Unknown {
            reason: format!("the file declares no sweep `{name}`"),
            help: did_you_mean(name, names.iter().copied()).or_else(|| {
                Some(match names.is_empty() {
                    true => "declare one: `sweep tune { stage.distill.epochs in [30, 60], select accuracy of s on data.val }`".into(),
                    false => one_of(names.iter().copied()),
                })
            }),
        }]);
    };
    expand(program, decl, true)
}

/// Checks a sweep and, when `build`, makes its configurations.
fn expand(program: &Program, decl: &SweepDecl, build: bool) -> Result<Expanded, Vec<SweepError>> {
    let mut errors = Vec::new();
    // The configurations' common ground: the file without its sweeps.
    let mut base = program.clone();
    base.declarations
        .retain(|d| !matches!(d, Declaration::Sweep(_)));
    let search = match search(decl.search.as_ref()) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let select = match &decl.select {
        Some(select) => selection(&base, select).map_err(|e| errors.push(e)).ok(),
        None => {
            errors.push(SweepError::Select {
                reason: format!("sweep `{}` does not say how to choose its best configuration", decl.name.name),
                span: span(decl.name.span),
                label: "no `select`".into(),
                help: Some("add `select accuracy of STUDENT on DATA.SPLIT` (a validation split, never the test split)".into()),
            });
            None
        }
    };
    // Each axis: its key, and the alternatives (or the distribution) it takes.
    let mut axes: Vec<(&Ident, &SweepValues)> = Vec::new();
    for axis in &decl.axes {
        if axes.iter().any(|(k, _)| k.name == axis.key.name) {
            errors.push(SweepError::Values {
                reason: format!("sweep key `{}` is swept twice", axis.key.name),
                span: span(axis.key.span),
                label: "again here".into(),
                help: Some(format!(
                    "put every value of `{}` in one list",
                    axis.key.name
                )),
            });
            continue;
        }
        match &axis.values {
            SweepValues::List(values) if values.is_empty() => errors.push(SweepError::Values {
                reason: format!("sweep key `{}` has no values", axis.key.name),
                span: span(axis.span),
                label: "an empty list".into(),
                help: Some("list the values to try: `[2, 4, 8]`".into()),
            }),
            SweepValues::List(values) => {
                // Each value once on a copy, so an unknown key or a value that cannot
                // stand there is reported on the sweep's line.
                for value in values {
                    let mut copy = base.clone();
                    if let Err(e) = set(&mut copy, &axis.key, value) {
                        errors.push(e);
                        break;
                    }
                }
            }
            SweepValues::Sample(call) => match (distribution(call), &search) {
                (Err(e), _) => errors.push(e),
                (Ok(_), Some(Search::Grid)) => errors.push(SweepError::Values {
                    reason: format!(
                        "a grid tries listed values; `{}(...)` is sampled by a random search",
                        call.name.name
                    ),
                    span: span(call.span),
                    label: "a distribution".into(),
                    help: Some(
                        "add `search random(trials: 8)`, or list the values: `[1e-3, 3e-3]`".into(),
                    ),
                }),
                (Ok(d), _) => {
                    let mut copy = base.clone();
                    let value = d.value(0.5, call.span);
                    if let Err(e) = set(&mut copy, &axis.key, &value) {
                        errors.push(e);
                    }
                }
            },
        }
        axes.push((&axis.key, &axis.values));
    }
    if axes.is_empty() && decl.select.is_some() {
        errors.push(SweepError::Values {
            reason: format!("sweep `{}` sweeps no key", decl.name.name),
            span: span(decl.name.span),
            label: "nothing to try".into(),
            help: Some("add an axis: `stage.distill.epochs in [30, 60]`".into()),
        });
    }
    let (Some(search), Some(select)) = (search, select) else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    if !build {
        return Ok(Expanded {
            name: decl.name.name.clone(),
            search: search.to_string(),
            select,
            points: Vec::new(),
        });
    }
    // The values of every configuration, in order.
    let choices: Vec<Vec<Value>> = match &search {
        Search::Grid => {
            let mut count: usize = 1;
            for (_, values) in &axes {
                let SweepValues::List(values) = values else {
                    unreachable!("a grid's distributions were refused above")
                };
                count = count.saturating_mul(values.len());
            }
            if count > MAX_CONFIGS {
                return Err(vec![SweepError::Search {
                    reason: format!(
                        "this grid has {count} configurations, more than {MAX_CONFIGS}"
                    ),
                    span: span(decl.name.span),
                    help: Some(
                        "sweep fewer values, or sample some with `search random(trials: N)`".into(),
                    ),
                }]);
            }
            let mut points: Vec<Vec<Value>> = vec![Vec::new()];
            for (_, values) in &axes {
                let SweepValues::List(values) = values else {
                    continue;
                };
                points = points
                    .into_iter()
                    .flat_map(|p| {
                        values.iter().map(move |v| {
                            let mut p = p.clone();
                            p.push(v.clone());
                            p
                        })
                    })
                    .collect();
            }
            points
        }
        Search::Random { trials, seed } => {
            let mut rng = SplitMix(*seed);
            let mut points: Vec<Vec<Value>> = Vec::new();
            for _ in 0..*trials {
                let point: Vec<Value> = axes
                    .iter()
                    .map(|(_, values)| match values {
                        SweepValues::List(values) => {
                            values[(rng.next() % values.len() as u64) as usize].clone()
                        }
                        SweepValues::Sample(call) => match distribution(call) {
                            Ok(d) => d.value(rng.unit(), call.span),
                            Err(_) => unreachable!("distributions were checked above"),
                        },
                    })
                    .collect();
                // A trial that repeats an earlier one would only cost time.
                if !points.iter().any(|p| same(p, &point)) {
                    points.push(point);
                }
            }
            points
        }
    };
    let width = choices.len().to_string().len().max(2);
    let mut points = Vec::new();
    for (i, values) in choices.into_iter().enumerate() {
        let mut program = base.clone();
        let mut overrides = Vec::new();
        for ((key, _), value) in axes.iter().zip(&values) {
            set(&mut program, key, value).map_err(|e| vec![e])?;
            overrides.push(Override {
                key: key.name.clone(),
                value: value_text(value),
            });
        }
        add_selection(&mut program, decl, &select);
        points.push(Point {
            name: format!("c{:0width$}", i + 1),
            values: overrides,
            program,
        });
    }
    Ok(Expanded {
        name: decl.name.name.clone(),
        search: search.to_string(),
        select,
        points,
    })
}

/// Sets one swept key on a program; problems point at the key or the value.
fn set(program: &mut Program, key: &Ident, value: &Value) -> Result<(), SweepError> {
    let o = Override {
        key: key.name.clone(),
        value: value_text(value),
    };
    crate::overrides::set(program, &o, value.clone(), true).map_err(|e| match e {
        OverrideError::UnknownKey { reason, help, .. } => SweepError::Key {
            key: key.name.clone(),
            reason,
            span: span(key.span),
            help,
        },
        OverrideError::Scheduled { reason, .. } => SweepError::Key {
            key: key.name.clone(),
            reason,
            span: span(key.span),
            help: Some("sweep the schedule's stage instead, or make the parameter a number".into()),
        },
        OverrideError::Value { .. } | OverrideError::Syntax { .. } => SweepError::Values {
            reason: format!("`{}` cannot be set to {}", key.name, value.kind.describe()),
            span: span(value.span),
            label: "this value".into(),
            help: Some("a loss parameter's default is a number".into()),
        },
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Search {
    Grid,
    Random { trials: usize, seed: u64 },
}

impl std::fmt::Display for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Search::Grid => write!(f, "grid"),
            Search::Random { trials, seed } => write!(f, "random(trials: {trials}, seed: {seed})"),
        }
    }
}

fn search(call: Option<&Call>) -> Result<Search, SweepError> {
    let Some(call) = call else {
        return Ok(Search::Grid);
    };
    let fail = |reason: String, help: &str| SweepError::Search {
        reason,
        span: span(call.span),
        help: Some(help.into()),
    };
    match call.name.name.as_str() {
        "grid" if call.args.is_empty() => Ok(Search::Grid),
        "grid" => Err(fail(
            "`grid` takes no arguments".into(),
            "write `search grid`",
        )),
        "random" => {
            let (mut trials, mut seed) = (None, 1u64);
            for (i, arg) in call.args.iter().enumerate() {
                let name = arg.name.as_ref().map(|n| n.name.as_str());
                let whole = match arg.value.kind {
                    ValueKind::Number { value, unit: None }
                        if value >= 0.0 && value.fract() == 0.0 && value < 1e15 =>
                    {
                        value as u64
                    }
                    _ => {
                        return Err(fail(
                            "`random`'s arguments are whole numbers".into(),
                            "for example `search random(trials: 8, seed: 1)`",
                        ))
                    }
                };
                match (name, i) {
                    (Some("trials"), _) | (None, 0) => trials = Some(whole as usize),
                    (Some("seed"), _) | (None, 1) => seed = whole,
                    (Some(other), _) => {
                        return Err(fail(
                            format!("`random` has no argument `{other}`"),
                            "it takes `trials` and `seed`",
                        ))
                    }
                    (None, _) => {
                        return Err(fail(
                            "`random` takes two arguments".into(),
                            "`search random(trials: 8, seed: 1)`",
                        ))
                    }
                }
            }
            match trials {
                Some(trials) if (1..=MAX_CONFIGS).contains(&trials) => {
                    Ok(Search::Random { trials, seed })
                }
                Some(_) => Err(fail(
                    format!("a random search makes 1 to {MAX_CONFIGS} trials"),
                    "for example `search random(trials: 8)`",
                )),
                None => Err(fail(
                    "a random search needs its number of trials".into(),
                    "`search random(trials: 8, seed: 1)`",
                )),
            }
        }
        other => Err(fail(
            format!("unknown search `{other}`"),
            "a search is `grid` (every combination, the default) or `random(trials: N, seed: S)`",
        )),
    }
}

/// A distribution a random search samples a number from.
#[derive(Debug, Clone, Copy)]
enum Distribution {
    Uniform(f64, f64),
    LogUniform(f64, f64),
    IntUniform(i64, i64),
}

impl Distribution {
    /// The value at `u` in [0, 1), written as a number of 4 significant digits.
    fn value(self, u: f64, at: kd_grammar::ast::Span) -> Value {
        let v = match self {
            Distribution::Uniform(a, b) => round(a + u * (b - a)),
            Distribution::LogUniform(a, b) => round((a.ln() + u * (b.ln() - a.ln())).exp()),
            Distribution::IntUniform(a, b) => {
                (a + ((u * (b - a + 1) as f64).floor() as i64).min(b - a)) as f64
            }
        };
        Value {
            kind: ValueKind::Number {
                value: v,
                unit: None,
            },
            span: at,
        }
    }
}

fn round(v: f64) -> f64 {
    format!("{v:.3e}").parse().unwrap_or(v)
}

fn distribution(call: &Call) -> Result<Distribution, SweepError> {
    let fail = |reason: String| {
        SweepError::Values {
        reason,
        span: span(call.span),
        label: "this distribution".into(),
        help: Some(
            "a random search samples `uniform(LOW, HIGH)`, `log_uniform(LOW, HIGH)` (LOW > 0) or `int_uniform(LOW, HIGH)`, or picks from a list".into(),
        ),
    }
    };
    let numbers: Vec<f64> = call
        .args
        .iter()
        .filter_map(|a| match (a.name.as_ref(), &a.value.kind) {
            (None, ValueKind::Number { value, unit: None }) => Some(*value),
            _ => None,
        })
        .collect();
    let [low, high] = numbers[..] else {
        return Err(fail(format!(
            "`{}` takes two numbers, LOW and HIGH, by position",
            call.name.name
        )));
    };
    if numbers.len() != call.args.len() || low >= high || !low.is_finite() || !high.is_finite() {
        return Err(fail(format!(
            "`{}` needs two finite numbers, LOW below HIGH",
            call.name.name
        )));
    }
    match call.name.name.as_str() {
        "uniform" => Ok(Distribution::Uniform(low, high)),
        "log_uniform" if low > 0.0 => Ok(Distribution::LogUniform(low, high)),
        "log_uniform" => Err(fail("`log_uniform` needs LOW above 0".into())),
        "int_uniform"
            if low.fract() == 0.0
                && high.fract() == 0.0
                && high.abs() < 1e15
                && low.abs() < 1e15 =>
        {
            Ok(Distribution::IntUniform(low as i64, high as i64))
        }
        "int_uniform" => Err(fail("`int_uniform` takes whole numbers".into())),
        other => Err(fail(format!("unknown distribution `{other}`"))),
    }
}

/// The selection: a metric, a model the file declares, and a split (which the check of
/// each configuration resolves, as it evaluates the model there).
fn selection(
    program: &Program,
    select: &kd_grammar::ast::SweepSelect,
) -> Result<Selection, SweepError> {
    // The metrics that are one number of a split's predictions.
    const SELECTABLE: [&str; 5] = ["accuracy", "precision", "recall", "f1", "ece"];
    let name = select.metric.name.as_str();
    let Some(metric) = crate::check::metric(name).filter(|_| SELECTABLE.contains(&name)) else {
        return Err(SweepError::Select {
            reason: format!("a sweep cannot select on `{name}`"),
            span: span(select.metric.span),
            label: "not a metric of one number".into(),
            help: did_you_mean(name, SELECTABLE).or_else(|| Some(one_of(SELECTABLE))),
        });
    };
    let models: Vec<&str> = program
        .declarations
        .iter()
        .filter_map(|d| match d {
            Declaration::Role(r) => Some(r.name.name.as_str()),
            Declaration::Baseline(b) => Some(b.name.name.as_str()),
            _ => None,
        })
        .collect();
    let model = &select.model.name;
    if !models.contains(&model.as_str()) {
        return Err(SweepError::Select {
            reason: format!("unknown model `{model}`"),
            span: span(select.model.span),
            label: "not declared".into(),
            help: did_you_mean(model, models.iter().copied())
                .or_else(|| Some(one_of(models.iter().copied()))),
        });
    }
    let baselines = program
        .declarations
        .iter()
        .filter_map(|d| match d {
            Declaration::Baseline(b) if b.student.name == *model => Some(b.name.name.clone()),
            _ => None,
        })
        .collect();
    Ok(Selection {
        metric,
        model: model.clone(),
        baselines,
        data: select.data.data.name.clone(),
        split: select.data.split.name.clone(),
    })
}

/// Evaluates the selected model and its baselines on the selection's split, adding them
/// (and the metric) to an evaluation of that split the file already has.
fn add_selection(program: &mut Program, decl: &SweepDecl, select: &Selection) {
    let Some(written) = &decl.select else {
        return;
    };
    let metric = Ident {
        name: written.metric.name.clone(),
        span: written.metric.span,
    };
    let mut wanted = vec![written.model.clone()];
    wanted.extend(select.baselines.iter().map(|b| Ident {
        name: b.clone(),
        span: written.model.span,
    }));
    let existing = program.declarations.iter_mut().find_map(|d| match d {
        Declaration::Evaluate(e)
            if e.data.data.name == select.data && e.data.split.name == select.split =>
        {
            Some(e)
        }
        _ => None,
    });
    match existing {
        Some(e) => {
            for model in wanted {
                if !e.models.iter().any(|m| m.name == model.name) {
                    e.models.push(model);
                }
            }
            // An evaluation without a list measures the defaults, the metric among them.
            if !e.metrics.is_empty() && !e.metrics.iter().any(|m| m.name == metric.name) {
                e.metrics.push(metric);
            }
        }
        None => program
            .declarations
            .push(Declaration::Evaluate(EvaluateDecl {
                models: wanted,
                data: DataRef {
                    data: written.data.data.clone(),
                    split: written.data.split.clone(),
                    span: written.data.span,
                },
                metrics: vec![metric],
                span: written.span,
            })),
    }
}

/// A value as `--set` would take it (recorded in the Plan and the summary).
pub fn value_text(value: &Value) -> String {
    match &value.kind {
        ValueKind::Number { value, unit } => {
            format!("{value}{}", unit.as_deref().unwrap_or(""))
        }
        ValueKind::Str(s) => format!("{s:?}"),
        ValueKind::Bool(b) => b.to_string(),
        ValueKind::List(items) => format!(
            "[{}]",
            items.iter().map(value_text).collect::<Vec<_>>().join(", ")
        ),
        ValueKind::Name(n) => n.clone(),
        ValueKind::Call(c) => format!(
            "{}({})",
            c.name.name,
            c.args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{}: {}", n.name, value_text(&a.value)),
                    None => value_text(&a.value),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn same(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| value_text(x) == value_text(y))
}

/// A small seeded generator for random searches (SplitMix64): the same seed makes the
/// same trials on every machine.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Checks every sweep the program declares (its keys, values, search and selection),
/// without checking each configuration: `check` reports these with the file's problems.
pub(crate) fn check_sweeps(program: &Program) -> Vec<SweepError> {
    let mut errors = Vec::new();
    for decl in &program.declarations {
        if let Declaration::Sweep(s) = decl {
            if let Err(es) = expand(program, s, false) {
                errors.extend(es);
            }
        }
    }
    errors
}
