//! `kdc report RUNDIR` (docs/language.md, section 14): a short digits run over two seeds
//! becomes report.html, a page that Debian's headless Chromium opens with every chart
//! drawn and nothing on its console; the paired difference of the student and its baseline
//! is computed seed by seed. A folder that is not a finished run, and a broken summary,
//! are diagnostics. Chromium comes from Debian (`.ci/run` installs it); a missing one fails
//! the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::root;

fn kdc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("kdc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The digits example, two epochs a stage, over seeds 7 and 8.
fn short_run(dir: &Path) {
    let out = dir.display().to_string();
    let output = kdc(&[
        "run",
        "examples/digits.kd",
        "--out",
        &out,
        "--set",
        "stage.teach.epochs=2",
        "--set",
        "stage.distill.epochs=2",
        "--set",
        "pipeline.digits.repeat=2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
}

/// An attribute of the page's `<body>` as Chromium left it.
fn body_attribute(dom: &str, name: &str) -> Option<usize> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let at = body.find(&format!("{name}=\""))? + name.len() + 2;
    body[at..].split('"').next()?.parse().ok()
}

#[test]
fn a_report_opens_in_headless_chromium_with_every_chart_drawn() {
    let dir = scratch("page").join("run");
    short_run(&dir);
    let made = kdc(&["report", &dir.display().to_string()]);
    assert!(made.status.success(), "{}", stderr(&made));
    let page = dir.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing is fetched when the page is viewed.
    for fetch in ["src=\"http", "href=\"http", "<link", "@import", "url("] {
        assert!(!html.contains(fetch), "the page fetches something: {fetch}");
    }
    // Three stages (loss and validation accuracy each), accuracy against size, and a
    // confusion matrix for each of the three models.
    let figures = html.matches("<figure class=\"chart\"").count();
    assert_eq!(figures, 10, "{html}");
    for kind in ["loss", "validation", "size", "confusion"] {
        assert!(
            html.contains(&format!("data-chart=\"{kind}\"")),
            "no {kind} chart"
        );
    }
    // The paired difference, seed by seed, against the summary's per-seed scores.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let per_seed = |model: &str| -> Vec<f64> {
        summary["models"][model]["per_seed"]["test"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["accuracy"].as_f64().unwrap())
            .collect()
    };
    let (s, b) = (per_seed("s"), per_seed("scratch"));
    assert_eq!(s.len(), 2);
    let diffs: Vec<f64> = s.iter().zip(&b).map(|(s, b)| (s - b) * 100.0).collect();
    let mean = (diffs[0] + diffs[1]) / 2.0;
    let std = ((diffs[0] - mean).powi(2) + (diffs[1] - mean).powi(2)).sqrt();
    let expected = format!("{mean:+.2} ± {std:.2} accuracy points (2 seeds, paired)");
    assert!(html.contains(&expected), "{expected} is not on the page");

    let (dom, log) = open_in_chromium(&page);
    // The page's script counts the figures and the SVGs the browser laid out with text.
    assert_eq!(body_attribute(&dom, "data-charts"), Some(10), "{log}");
    assert_eq!(body_attribute(&dom, "data-drawn"), Some(10), "{log}");
}

/// The DOM headless Chromium made of `page`, and its log; a console message fails.
fn open_in_chromium(page: &Path) -> (String, String) {
    let profile = page.with_file_name("chromium");
    let chromium = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium from Debian (apt install chromium)");
    let dom = String::from_utf8_lossy(&chromium.stdout).to_string();
    let log = stderr(&chromium);
    assert!(chromium.status.success(), "{log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    (dom, log)
}

/// A sweep's folder reports the chosen configuration's run, the configurations in a
/// table, and the selected metric as a heat map over the two swept keys.
#[test]
fn a_sweeps_report_has_its_configurations_and_a_heat_map() {
    let dir = scratch("sweep").join("run");
    let out = dir.display().to_string();
    let o = kdc(&[
        "run",
        "tests/sweep/digits.kd",
        "--sweep",
        "tune",
        "--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let made = kdc(&["report", &out]);
    assert!(made.status.success(), "{}", stderr(&made));
    let page = dir.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let best = summary["sweep"]["best"].as_str().unwrap();
    assert!(
        html.contains(&format!("The best is <b>{best}</b>")),
        "{html}"
    );
    // Every configuration is a row of the table, the chosen one marked.
    let configs = summary["sweep"]["configs"].as_array().unwrap();
    assert_eq!(configs.len(), 4);
    for c in configs {
        let name = c["name"].as_str().unwrap();
        let class = if name == best { " class=\"best\"" } else { "" };
        assert!(
            html.contains(&format!("<tr{class}><td>{name}</td>")),
            "no row for {name}"
        );
        let score = format!("<td>{:.2}", 100.0 * c["score"].as_f64().unwrap());
        assert!(html.contains(&score), "{name}: {score}");
    }
    // The heat map, and the chosen configuration's curves (its three stages), read
    // from its folder: the sweep's own folder has no metrics.jsonl.
    assert!(!dir.join("metrics.jsonl").exists());
    assert_eq!(html.matches("data-chart=\"sweep\"").count(), 1);
    assert_eq!(html.matches("data-chart=\"loss\"").count(), 3, "{html}");
    let figures = html.matches("<figure class=\"chart\"").count();
    let (dom, log) = open_in_chromium(&page);
    assert_eq!(body_attribute(&dom, "data-charts"), Some(figures), "{log}");
    assert_eq!(body_attribute(&dom, "data-drawn"), Some(figures), "{log}");
}

/// Every number of every epoch record is a scalar in the seed's TensorBoard event file,
/// as TensorBoard's own loader reads it: tag `STAGE/FIELD`, step the epoch, and the
/// seed's training seconds so far as its time.
#[test]
fn tensorboard_reads_every_epoch_record() {
    let dir = scratch("tensorboard").join("run");
    short_run(&dir);
    let out = dir.with_file_name("scalars.json");
    let status = Command::new(common::python())
        .arg(root().join("tests/tensorboard/read_events.py"))
        .arg(&dir)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let seen = seen.as_object().unwrap();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["seed-7", "seed-8"],
        "one TensorBoard run per seed"
    );
    let jsonl = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let mut clock = std::collections::HashMap::new();
    let mut expected = 0;
    for line in jsonl.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let seed = record["seed"].as_u64().unwrap();
        let (stage, epoch) = (record["stage"].as_str().unwrap(), record["epoch"].as_i64());
        let time: &mut f64 = clock.entry(seed).or_default();
        *time += record["seconds"].as_f64().unwrap();
        for (field, value) in record.as_object().unwrap() {
            let Some(value) = value.as_f64() else {
                continue;
            };
            if ["seed", "epoch", "steps"].contains(&field.as_str()) {
                continue;
            }
            let tag = format!("{stage}/{field}");
            let points = seen[&format!("seed-{seed}")][&tag]
                .as_array()
                .unwrap_or_else(|| panic!("no {tag} for seed {seed}"));
            let point = points
                .iter()
                .find(|p| p[0].as_i64() == epoch)
                .unwrap_or_else(|| panic!("{tag} has no step {epoch:?}"));
            assert_eq!(point[1].as_f64().unwrap() as f32, value as f32, "{tag}");
            assert!((point[2].as_f64().unwrap() - *time).abs() < 1e-6, "{tag}");
            expected += 1;
        }
    }
    let total: usize = seen
        .values()
        .flat_map(|tags| tags.as_object().unwrap().values())
        .map(|points| points.as_array().unwrap().len())
        .sum();
    assert_eq!(total, expected, "nothing but the records' numbers");
    assert!(expected > 0);
}

#[test]
fn a_folder_that_is_not_a_finished_run_is_a_diagnostic() {
    let dir = scratch("broken");
    let out = kdc(&["report", &dir.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("kd::report::not_a_run"),
        "{}",
        stderr(&out)
    );
    std::fs::write(dir.join("summary.json"), "{\"schema_version\": 1}").unwrap();
    let out = kdc(&["report", &dir.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("kd::report::summary"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("report.html").exists(), "nothing is written");
}
