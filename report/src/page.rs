//! The report page: a table of the models, then the charts, in one HTML file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kd_runtime::output::summary::{mean, percent, role_name, sample_std, thousands, ModelSummary};

use crate::charts::{self, Line, PALETTE};
use crate::{ReportError, Run};

/// Text as HTML.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A chart in its figure: `kind` names what it shows (the browser test counts them).
pub(crate) fn figure(id: &str, kind: &str, caption: &str, svg: &str) -> String {
    format!(
        "<figure class=\"chart\" id=\"{}\" data-chart=\"{}\">{svg}<figcaption>{}</figcaption></figure>\n",
        escape(id),
        escape(kind),
        escape(caption)
    )
}

/// The split a model's numbers are read on: `test` when it was evaluated there, else the
/// first it was evaluated on.
fn main_split(model: &ModelSummary) -> Option<&str> {
    match model.metrics.contains_key("test") {
        true => Some("test"),
        false => model.metrics.keys().next().map(String::as_str),
    }
}

/// A student against the baseline that copies it, on `split`: the mean of the seed-by-seed
/// accuracy differences in points, their sample std (several seeds), and the seeds.
pub(crate) fn paired_difference(
    student: &ModelSummary,
    baseline: &ModelSummary,
    split: &str,
) -> Option<(f64, Option<f64>, usize)> {
    let diffs: Vec<f64> = match (&student.per_seed, &baseline.per_seed) {
        (Some(s), Some(b)) => {
            let (s, b) = (s.get(split)?, b.get(split)?);
            s.iter()
                .filter_map(|x| {
                    let y = b.iter().find(|y| y.seed == x.seed)?;
                    Some((x.accuracy - y.accuracy) * 100.0)
                })
                .collect()
        }
        _ => vec![
            (student.metrics.get(split)?.accuracy - baseline.metrics.get(split)?.accuracy) * 100.0,
        ],
    };
    if diffs.is_empty() {
        return None;
    }
    let std = (diffs.len() > 1).then(|| sample_std(&diffs));
    Some((mean(&diffs), std, diffs.len()))
}

pub(crate) fn render(run: &Run) -> Result<String, ReportError> {
    let summary = &run.summary;
    let models = &summary.models;
    let teacher = models
        .iter()
        .find(|(_, m)| m.role == kd_plan::Role::Teacher);
    let mut html = String::new();
    let title = format!("kdc report: {}", summary.pipeline);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let seeds: Vec<String> = summary.seeds.iter().map(u64::to_string).collect();
    let _ = writeln!(
        html,
        "<p class=\"meta\">seeds {} · {} · {} threads · kdc {} · plan {}</p>",
        escape(&seeds.join(", ")),
        escape(&summary.device),
        summary.threads,
        escape(&summary.provenance.kdc_version),
        escape(summary.provenance.plan_hash.get(..12).unwrap_or("")),
    );

    // The verdicts: each baseline against the model it copies.
    let mut verdicts = String::new();
    for (name, model) in models {
        let Some(of) = &model.baseline_of else {
            continue;
        };
        let (Some(student), Some(split)) = (models.get(of), main_split(model)) else {
            continue;
        };
        if let Some((mean, std, n)) = paired_difference(student, model, split) {
            let wins = match std {
                Some(s) => mean > 2.0 * s,
                None => mean > 0.0,
            };
            let spread = std.map_or(String::new(), |s| format!(" ± {s:.2}"));
            let seeds = match n {
                1 => "one seed".to_string(),
                n => format!("{n} seeds, paired"),
            };
            let word = match (wins, std.is_some()) {
                (true, true) => "wins: the mean exceeds twice its std",
                (true, false) => "ahead (one seed: no spread to judge by)",
                (false, _) => "does not win",
            };
            let _ = writeln!(
                verdicts,
                "<li class=\"{}\"><b>{}</b> against its baseline <b>{}</b> on <code>{}</code>: {mean:+.2}{spread} accuracy points ({seeds}); {word}</li>",
                if wins { "win" } else { "loss" },
                escape(of),
                escape(name),
                escape(split),
            );
        }
    }
    if !verdicts.is_empty() {
        let _ = writeln!(html, "<ul class=\"verdicts\">\n{verdicts}</ul>");
    }

    // The table.
    html.push_str("<h2>Models</h2>\n<table>\n<tr><th>model</th><th>role</th><th>accuracy %</th><th>F1 %</th><th>vs baseline (points)</th><th>parameters</th><th>smaller than the teacher</th><th>bytes</th><th>latency ms</th></tr>\n");
    for (name, model) in models {
        let split = main_split(model);
        let metrics = split.and_then(|s| model.metrics.get(s));
        let std = split.and_then(|s| model.metrics_std.as_ref()?.get(s));
        let accuracy = metrics.map_or("–".into(), |m| {
            percent(m.accuracy, std.map(|s| s.accuracy))
        });
        let f1 = metrics.map_or("–".into(), |m| percent(m.f1, std.map(|s| s.f1)));
        let versus = models
            .iter()
            .find(|(_, b)| b.baseline_of.as_deref() == Some(name.as_str()))
            .and_then(|(_, b)| paired_difference(model, b, split?))
            .map_or("–".into(), |(mean, std, _)| match std {
                Some(s) => format!("{mean:+.2} ± {s:.2}"),
                None => format!("{mean:+.2}"),
            });
        let ratio = teacher
            .filter(|(t, _)| *t != name)
            .map_or("–".into(), |(_, t)| {
                format!("{:.1}x", t.params as f64 / model.params.max(1) as f64)
            });
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{accuracy}</td><td>{f1}</td><td>{versus}</td><td>{}</td><td>{ratio}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            role_name(model.role),
            thousands(model.params),
            model.bytes.map_or("–".into(), |b| thousands(b as usize)),
            model.latency_ms.map_or("–".into(), |l| format!("{l:.3}")),
        );
    }
    html.push_str("</table>\n");
    if let Some(sweep) = &summary.sweep {
        html.push_str(&crate::sweep::section(sweep)?);
    }

    // Curves, one pair of charts per stage.
    let mut stages: Vec<&str> = Vec::new();
    for e in &run.epochs {
        if !stages.contains(&e.stage.as_str()) {
            stages.push(&e.stage);
        }
    }
    if !stages.is_empty() {
        html.push_str("<h2>Training</h2>\n<div class=\"charts\">\n");
    }
    for (index, stage) in stages.iter().enumerate() {
        let epochs: Vec<_> = run.epochs.iter().filter(|e| e.stage == *stage).collect();
        let mut seeds: Vec<u64> = epochs.iter().map(|e| e.seed).collect();
        seeds.dedup();
        seeds.sort_unstable();
        seeds.dedup();
        let several = seeds.len() > 1;
        let named = |what: &str, seed: u64| match several {
            true => format!("{what}, seed {seed}"),
            false => what.to_string(),
        };
        let mut loss = Vec::new();
        let mut accuracy = Vec::new();
        for (i, &seed) in seeds.iter().enumerate() {
            let of_seed: Vec<_> = epochs.iter().filter(|e| e.seed == seed).collect();
            let color = |k: usize| PALETTE[(2 * i + k) % PALETTE.len()];
            loss.push(Line {
                name: named("train", seed),
                color: color(0),
                points: of_seed
                    .iter()
                    .map(|e| (e.epoch as f64, e.train_loss))
                    .collect(),
            });
            if of_seed.iter().any(|e| e.val_loss.is_some()) {
                loss.push(Line {
                    name: named("validation", seed),
                    color: color(1),
                    points: of_seed
                        .iter()
                        .filter_map(|e| Some((e.epoch as f64, e.val_loss?)))
                        .collect(),
                });
            }
            if of_seed.iter().any(|e| e.val_accuracy.is_some()) {
                accuracy.push(Line {
                    name: named("validation", seed),
                    color: color(1),
                    points: of_seed
                        .iter()
                        .filter_map(|e| Some((e.epoch as f64, e.val_accuracy? * 100.0)))
                        .collect(),
                });
            }
        }
        let id = format!("loss-{index}");
        let svg = charts::lines(&id, &format!("{stage}: loss"), "loss", &loss)?;
        html.push_str(&figure(
            &id,
            "loss",
            &format!("stage {stage}: loss per epoch"),
            &svg,
        ));
        if !accuracy.is_empty() {
            let id = format!("accuracy-{index}");
            let svg = charts::lines(
                &id,
                &format!("{stage}: validation accuracy"),
                "accuracy %",
                &accuracy,
            )?;
            html.push_str(&figure(
                &id,
                "validation",
                &format!("stage {stage}: validation accuracy per epoch"),
                &svg,
            ));
        }
    }
    if !stages.is_empty() {
        html.push_str("</div>\n");
    }

    // Confusion matrices and accuracy against size.
    let evaluated: BTreeMap<&String, (&str, &kd_runtime::output::metrics::SplitMetrics)> = models
        .iter()
        .filter_map(|(name, m)| {
            let split = main_split(m)?;
            Some((name, (split, m.metrics.get(split)?)))
        })
        .collect();
    if !evaluated.is_empty() {
        html.push_str("<h2>Evaluation</h2>\n<div class=\"charts\">\n");
        let points: Vec<(String, usize, f64)> = evaluated
            .iter()
            .map(|(name, (_, m))| ((*name).clone(), models[*name].params, m.accuracy))
            .collect();
        let svg = charts::size_accuracy("size", "accuracy against parameters", &points)?;
        html.push_str(&figure(
            "size",
            "size",
            "every evaluated model: accuracy against its parameters (log scale)",
            &svg,
        ));
        for (index, (name, (split, metrics))) in evaluated.iter().enumerate() {
            if metrics.confusion.is_empty() {
                continue;
            }
            let classes: Vec<String> = metrics.per_class.iter().map(|c| c.class.clone()).collect();
            let id = format!("confusion-{index}");
            let svg = charts::confusion(
                &id,
                &format!("{name} on {split}"),
                &classes,
                &metrics.confusion,
            )?;
            html.push_str(&figure(
                &id,
                "confusion",
                &format!("confusion matrix of {name} on {split} (rows: true class)"),
                &svg,
            ));
        }
        html.push_str("</div>\n");
    }
    html.push_str(CHECK);
    html.push_str("</body>\n</html>\n");
    Ok(html)
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:1em 0}td,th{border-bottom:1px solid #ddd;padding:.35em .8em;text-align:right}\
td:first-child,th:first-child,td:nth-child(2){text-align:left}th{background:#f4f4f4}\
.meta{color:#666}.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}\
figcaption{color:#555;font-size:.9em;max-width:560px}.verdicts li.win{color:#1a7f37}.verdicts li.loss{color:#b35900}\
tr.best td{font-weight:bold}";

/// Marks on the page how many charts the browser drew, and says on the console when one
/// is missing (the headless browser test reads both).
const CHECK: &str = "<script>\n(() => {\n  const figures = [...document.querySelectorAll('figure.chart')];\n  const drawn = figures.filter(f => {\n    const svg = f.querySelector('svg');\n    return svg && svg.getBBox().width > 0 && svg.querySelectorAll('text').length > 0;\n  });\n  document.body.dataset.charts = figures.length;\n  document.body.dataset.drawn = drawn.length;\n  if (drawn.length !== figures.length) console.error(`${figures.length - drawn.length} charts were not drawn`);\n})();\n</script>\n";
