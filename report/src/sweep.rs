//! A sweep's part of the page: its configurations in a table, and the selected metric as
//! a heat map over two swept keys.

use std::fmt::Write as _;

use kd_runtime::output::summary::{percent, thousands};
use kd_runtime::SweepSummary;

use crate::charts;
use crate::page::{escape, figure};
use crate::ReportError;

pub(crate) fn section(sweep: &SweepSummary) -> Result<String, ReportError> {
    let mut html = String::from("<h2>Sweep</h2>\n");
    let _ = writeln!(
        html,
        "<p>sweep <code>{}</code>: {}, {} configurations, selected on {}. The best is <b>{}</b>; the rest of this page is its run. Teacher forwards over the sweep: {}.</p>",
        escape(&sweep.name),
        escape(&sweep.search),
        sweep.configs.len(),
        escape(&sweep.select),
        escape(&sweep.best),
        thousands(sweep.teacher_forwards as usize),
    );
    let keys = keys(sweep);
    let baselines = sweep.baselines();
    html.push_str("<table class=\"sweep\">\n<tr><th>config</th>");
    for key in &keys {
        let _ = write!(html, "<th>{}</th>", escape(key));
    }
    let _ = write!(
        html,
        "<th>{} {} %</th>",
        escape(&sweep.model),
        escape(&sweep.metric)
    );
    for b in &baselines {
        let _ = write!(html, "<th>{} %</th>", escape(b));
    }
    html.push_str("<th>teacher forwards</th><th>stages shared</th></tr>\n");
    for c in &sweep.configs {
        let best = c.name == sweep.best;
        let _ = write!(
            html,
            "<tr{}><td>{}</td>",
            if best { " class=\"best\"" } else { "" },
            escape(&c.name)
        );
        for key in &keys {
            let value = c.values.get(*key).map_or("", String::as_str);
            let _ = write!(html, "<td>{}</td>", escape(value));
        }
        let _ = write!(html, "<td>{}</td>", percent(c.score, c.score_std));
        for b in &baselines {
            let score = c
                .baselines
                .get(*b)
                .map_or("–".into(), |v| percent(*v, None));
            let _ = write!(html, "<td>{score}</td>");
        }
        let _ = writeln!(
            html,
            "<td>{}</td><td>{}</td></tr>",
            thousands(c.teacher_forwards as usize),
            c.shared_stages
        );
    }
    html.push_str("</table>\n");

    if let Some(map) = heat_map(sweep, &keys)? {
        html.push_str("<div class=\"charts\">\n");
        html.push_str(&map);
        html.push_str("</div>\n");
    }
    Ok(html)
}

/// The swept keys, those with the most distinct values first (they make the map's axes).
fn keys(sweep: &SweepSummary) -> Vec<&String> {
    let mut keys = sweep.keys();
    // A stable sort: among keys with as many values, the summary's order stays.
    keys.sort_by_key(|k| std::cmp::Reverse(distinct(sweep, k).len()));
    keys
}

/// The values `key` takes over the configurations, in order: by number when every one is
/// a number, else as they first appear.
fn distinct(sweep: &SweepSummary, key: &str) -> Vec<String> {
    let mut values: Vec<String> = Vec::new();
    for c in &sweep.configs {
        if let Some(v) = c.values.get(key) {
            if !values.contains(v) {
                values.push(v.clone());
            }
        }
    }
    let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse::<f64>().ok()).collect();
    if let Some(numbers) = numbers {
        let mut pairs: Vec<(f64, String)> = numbers.into_iter().zip(values).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        values = pairs.into_iter().map(|(_, v)| v).collect();
    }
    values
}

/// A value as an axis shows it: long numbers (a random search's draws) shortened.
fn short(value: &str) -> String {
    match value.parse::<f64>() {
        Ok(x) if value.len() > 8 => match x.abs() {
            a if (0.01..1e5).contains(&a) => format!("{x:.4}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string(),
            _ => format!("{x:.2e}"),
        },
        _ => value.chars().take(12).collect(),
    }
}

/// The heat map of the selected metric over the first two keys (one row for a sweep of
/// one key); with more keys, each cell holds the best over the others.
fn heat_map(sweep: &SweepSummary, keys: &[&String]) -> Result<Option<String>, ReportError> {
    let Some(x_key) = keys.first() else {
        return Ok(None);
    };
    let y_key = keys.get(1);
    let xs = distinct(sweep, x_key);
    let ys = y_key.map_or_else(|| vec![String::new()], |k| distinct(sweep, k));
    let higher = sweep.higher_is_better();
    let better = |a: f64, b: f64| if higher { a > b } else { a < b };
    let mut cells: Vec<Vec<Option<f64>>> = vec![vec![None; xs.len()]; ys.len()];
    let mut best = None;
    for c in &sweep.configs {
        let x = c
            .values
            .get(*x_key)
            .and_then(|v| xs.iter().position(|x| x == v));
        let y = match y_key {
            Some(k) => c
                .values
                .get(*k)
                .and_then(|v| ys.iter().position(|y| y == v)),
            None => Some(0),
        };
        let (Some(x), Some(y)) = (x, y) else { continue };
        let cell = &mut cells[y][x];
        if cell.is_none_or(|s| better(c.score, s)) {
            *cell = Some(c.score);
        }
        if c.name == sweep.best {
            best = Some((x, y));
        }
    }
    let x_labels: Vec<String> = xs.iter().map(|v| short(v)).collect();
    let y_labels: Vec<String> = ys.iter().map(|v| short(v)).collect();
    let title = format!("{} {} on {}", sweep.model, sweep.metric, sweep.split);
    let svg = charts::heat_map(
        "sweep",
        &title,
        (x_key, &x_labels),
        (y_key.map_or("", |k| k.as_str()), &y_labels),
        &cells,
        higher,
        best,
        &|v| format!("{:.2}", 100.0 * v),
    )?;
    let rest: Vec<&str> = keys.iter().skip(2).map(|k| k.as_str()).collect();
    let mut caption = format!(
        "{} % of {} on {} for each configuration ({} is better; framed: {}, the one chosen)",
        sweep.metric,
        sweep.model,
        sweep.split,
        if higher {
            "darker: higher"
        } else {
            "darker: lower"
        },
        sweep.best,
    );
    if !rest.is_empty() {
        let _ = write!(caption, "; each cell the best over {}", rest.join(", "));
    }
    Ok(Some(figure("sweep", "sweep", &caption, &svg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kd_runtime::train::sweep::ConfigResult;

    fn sweep(keys: &[&str], rows: &[(&[&str], f64)]) -> SweepSummary {
        SweepSummary {
            name: "tune".into(),
            search: "grid".into(),
            select: "accuracy of s on d.val".into(),
            metric: "accuracy".into(),
            model: "s".into(),
            split: "d.val".into(),
            best: "c01".into(),
            teacher_forwards: 0,
            configs: rows
                .iter()
                .enumerate()
                .map(|(i, (values, score))| ConfigResult {
                    name: format!("c{:02}", i + 1),
                    values: keys
                        .iter()
                        .zip(values.iter())
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    score: *score,
                    score_std: None,
                    baselines: Default::default(),
                    teacher_forwards: 0,
                    shared_stages: 0,
                })
                .collect(),
        }
    }

    /// The (width, height) of every filled rectangle of an SVG but its background.
    fn cells(html: &str) -> Vec<(f64, f64)> {
        let svg = &html[html.find("<svg").unwrap_or(0)..];
        svg.split("<rect")
            .skip(2)
            .filter(|r| !r.contains("fill=\"none\""))
            .map(|r| {
                let number = |name: &str| -> f64 {
                    let at = r
                        .find(&format!(" {name}=\""))
                        .map_or(0, |i| i + name.len() + 3);
                    r[at..]
                        .split('"')
                        .next()
                        .unwrap_or("")
                        .parse()
                        .unwrap_or(0.0)
                };
                (number("width"), number("height"))
            })
            .collect()
    }

    #[test]
    fn a_sweep_of_one_key_is_one_row_of_full_cells() {
        let one = sweep(
            &["stage.distill.lr"],
            &[(&["0.001"], 0.9), (&["0.1"], 0.8), (&["0.01"], 0.95)],
        );
        let html = section(&one).unwrap_or_default();
        let drawn = cells(&html);
        assert_eq!(drawn.len(), 3, "{html}");
        for (w, h) in drawn {
            assert!(w > 50.0 && h > 50.0, "a cell of {w} x {h}");
        }
        // The values along the axis in numeric order (the table keeps the sweep's).
        let svg = &html[html.find("<svg").unwrap_or(0)..];
        let at = |v: &str| svg.find(&format!(">\n{v}\n<")).unwrap_or(usize::MAX);
        assert!(at("0.001") < at("0.01") && at("0.01") < at("0.1"), "{html}");
    }

    #[test]
    fn two_keys_make_a_grid_and_a_missing_pair_is_grey() {
        let two = sweep(
            &["a.b.c", "d.e.f"],
            &[(&["1", "x"], 0.5), (&["2", "x"], 0.6), (&["1", "y"], 0.7)],
        );
        let html = section(&two).unwrap_or_default();
        let drawn = cells(&html);
        assert_eq!(drawn.len(), 4, "three scores and a grey cell: {html}");
        assert!(html.contains("fill=\"#F0F0F0\""), "{html}");
    }

    #[test]
    fn values_are_ordered_as_numbers_and_shortened_for_an_axis() {
        assert_eq!(short("0.001"), "0.001");
        assert_eq!(short("0.0123456789"), "0.0123");
        assert_eq!(short("0.000123456789"), "1.23e-4");
        assert_eq!(short("relu"), "relu");
    }
}
