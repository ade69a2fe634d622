//! `kdc report RUNDIR`: a finished run folder (`summary.json`, `metrics.jsonl`) as one
//! self-contained HTML page, `report.html` in the folder: the models side by side
//! (accuracy, F1, a student's paired difference with its baseline, parameters, bytes,
//! latency, compression), each stage's loss and validation curves, confusion matrices, and
//! accuracy against model size; for a sweep, its configurations and a heat map of the
//! selected metric. Charts are SVG drawn by plotters, inline; the page fetches
//! nothing when it is viewed.

mod charts;
mod page;
mod sweep;

use std::path::{Path, PathBuf};

use kd_runtime::Summary;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ReportError {
    #[error("`{}` is not a finished kdc run: it has no summary.json", dir.display())]
    #[diagnostic(
        code(kd::report::not_a_run),
        help("kdc report reads a run folder that `kdc run` finished; a stopped run continues with `kdc run --resume DIR`")
    )]
    NotARun { dir: PathBuf },

    #[error("cannot read `{}`", path.display())]
    #[diagnostic(code(kd::report::read))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{}` is not a summary this kdc can read: {reason}", path.display())]
    #[diagnostic(
        code(kd::report::summary),
        help("summary.json is written by `kdc run`; a file edited by hand, or written by another version of kdc, cannot be reported")
    )]
    Summary { path: PathBuf, reason: String },

    #[error("`{}` line {line}: {reason}", path.display())]
    #[diagnostic(
        code(kd::report::metrics),
        help("metrics.jsonl holds one JSON object per epoch, as `kdc run` writes it")
    )]
    Metrics {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("cannot draw the chart `{chart}`: {reason}")]
    #[diagnostic(code(kd::report::chart))]
    Chart { chart: String, reason: String },

    #[error("cannot write `{}`", path.display())]
    #[diagnostic(code(kd::report::write))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One line of `metrics.jsonl`: an epoch of a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Epoch {
    pub seed: u64,
    pub stage: String,
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

/// What a report is made from.
#[derive(Debug, Clone)]
pub struct Run {
    pub summary: Summary,
    pub epochs: Vec<Epoch>,
}

/// Reads a finished run folder.
pub fn read(dir: &Path) -> Result<Run, ReportError> {
    let summary_path = dir.join("summary.json");
    if !summary_path.is_file() {
        return Err(ReportError::NotARun {
            dir: dir.to_path_buf(),
        });
    }
    let summary = parse_summary(dir, &read_text(&summary_path)?)?;
    // A sweep's curves are those of the configuration it chose, in that one's folder.
    let mut metrics_path = dir.join("metrics.jsonl");
    if let (false, Some(sweep)) = (metrics_path.is_file(), &summary.sweep) {
        // A configuration's folder is a name in the sweep's folder, never a path out of it.
        let mut parts = Path::new(&sweep.best).components();
        match (parts.next(), parts.next()) {
            (Some(std::path::Component::Normal(name)), None) => {
                metrics_path = dir.join(name).join("metrics.jsonl");
            }
            _ => {
                return Err(ReportError::Summary {
                    path: summary_path,
                    reason: format!(
                        "the sweep's best configuration `{}` is not a folder name",
                        sweep.best
                    ),
                })
            }
        }
    }
    let epochs = match metrics_path.is_file() {
        true => parse_epochs(&read_text(&metrics_path)?, &metrics_path)?,
        false => Vec::new(),
    };
    Ok(Run { summary, epochs })
}

/// A run from the texts of its `summary.json` and `metrics.jsonl` (errors name the files
/// in `dir`).
pub fn parse(dir: &Path, summary: &str, metrics: &str) -> Result<Run, ReportError> {
    let summary = parse_summary(dir, summary)?;
    let epochs = parse_epochs(metrics, &dir.join("metrics.jsonl"))?;
    Ok(Run { summary, epochs })
}

fn parse_summary(dir: &Path, text: &str) -> Result<Summary, ReportError> {
    serde_json::from_str(text).map_err(|e| ReportError::Summary {
        path: dir.join("summary.json"),
        reason: e.to_string(),
    })
}

/// `report.html` in `dir` for the run there; returns its path.
pub fn write(dir: &Path) -> Result<PathBuf, ReportError> {
    let run = read(dir)?;
    let html = render(&run)?;
    let path = dir.join("report.html");
    kd_runtime::output::files::write_atomically(&path, html.as_bytes()).map_err(|e| {
        ReportError::Write {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    Ok(path)
}

/// The page for `run`.
pub fn render(run: &Run) -> Result<String, ReportError> {
    page::render(run)
}

fn read_text(path: &Path) -> Result<String, ReportError> {
    std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The epochs of `metrics.jsonl`; a line that is not an epoch record is an error naming it.
fn parse_epochs(text: &str, path: &Path) -> Result<Vec<Epoch>, ReportError> {
    let mut epochs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |reason: String| ReportError::Metrics {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| fail(format!("not JSON ({e})")))?;
        let number = |key: &str| value.get(key).and_then(serde_json::Value::as_f64);
        let count = |key: &str| value.get(key).and_then(serde_json::Value::as_u64);
        let (Some(seed), Some(stage), Some(epoch), Some(train_loss)) = (
            count("seed"),
            value.get("stage").and_then(serde_json::Value::as_str),
            count("epoch"),
            number("train_loss"),
        ) else {
            return Err(fail(
                "an epoch record needs `seed`, `stage`, `epoch` and `train_loss`".into(),
            ));
        };
        epochs.push(Epoch {
            seed,
            stage: stage.to_string(),
            epoch: usize::try_from(epoch).map_err(|_| fail(format!("epoch {epoch}")))?,
            train_loss,
            val_loss: number("val_loss"),
            val_accuracy: number("val_accuracy"),
        });
    }
    Ok(epochs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_line_without_its_fields_names_its_line() {
        let path = Path::new("metrics.jsonl");
        let good = r#"{"seed":7,"stage":"teach","model":"t","epoch":1,"steps":3,"lr":0.1,"train_loss":0.5,"seconds":0.1}"#;
        let epochs = parse_epochs(&format!("{good}\n\n{good}\n"), path).unwrap_or_default();
        assert_eq!(epochs.len(), 2);
        assert_eq!(epochs[0].val_loss, None);
        for bad in [
            "{\"seed\":7}",
            "not json",
            "[1,2]",
            "{\"seed\":-1,\"stage\":\"a\",\"epoch\":1,\"train_loss\":1}",
        ] {
            let text = format!("{good}\n{bad}\n");
            match parse_epochs(&text, path) {
                Err(ReportError::Metrics { line, .. }) => assert_eq!(line, 2, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
