//! kdc's benchmarks, behind `kdc bench`:
//! - `train`: torch_ref.py's training cases run through kdc's real runtime path (a compiled
//!   Plan run by `kd_runtime::run_plan`), each beside PyTorch in the same run, with the
//!   sgemm roof of both;
//! - `cache`: a distilling stage with its teacher's outputs cached versus run every step;
//! - `layers`: every layer and augmentation alone, forward and backward, beside PyTorch;
//! - `compile`: `kdc check` on every example, and on generated files of growing length.
//!
//! Figures are medians over runs, and the figure to compare is the ratio measured in one
//! run: the machine is shared and noisy.

pub mod cases;
pub mod compile_speed;
pub mod error;
pub mod layers;
pub mod torch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kd_plan::{CacheMode, Plan};
use kd_runtime::{Progress, RunOptions, StepTime};
use serde::Serialize;

pub use cases::Case;
pub use error::{BenchError, Result};
pub use torch::TorchRef;

use crate::cases::STEPS_PER_EPOCH;
use crate::error::io;

/// What `kdc bench train` runs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub cases: Vec<Case>,
    /// Runs of each case; every figure is the median over runs.
    pub runs: usize,
    /// Timed steps in each run (after one epoch of warm-up).
    pub steps: usize,
    pub threads: usize,
    /// PyTorch, or why it is not there.
    pub torch: std::result::Result<TorchRef, String>,
    /// Scratch folder for the cases' data and run folders (emptied first).
    pub work_dir: PathBuf,
    pub kdc_version: String,
    /// Where kdc runs the cases (and PyTorch its twins: the same device).
    pub device: kd_plan::Device,
}

/// One case's figures, one entry per run.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub batch: usize,
    pub kdc_samples_per_s: Vec<f64>,
    pub torch_samples_per_s: Vec<f64>,
    /// Peak resident set of each run in MiB: kdc's from a peak reset just before the case
    /// ran in this process, PyTorch's from its process, which runs the case alone.
    pub kdc_peak_rss_mb: Vec<f64>,
    pub torch_peak_rss_mb: Vec<f64>,
    /// Single-sample forward latency in milliseconds, per run (the `evaluate` case).
    pub kdc_latency_ms: Vec<f64>,
    pub torch_latency_ms: Vec<f64>,
    /// Why PyTorch's twin of this case did not run, when it did not.
    pub torch_failed: Option<String>,
    /// Dense FLOPs of one step: the teacher's forward when it runs, and three times the
    /// student's forward (forward, input gradients, weight gradients).
    pub flops_per_step: f64,
}

/// The 1024 x 1024 x 1024 f32 matmul, GFLOP/s per run.
#[derive(Debug, Clone, Serialize)]
pub struct SgemmResult {
    pub kdc_gflops: Vec<f64>,
    pub torch_gflops: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub threads: usize,
    pub runs: usize,
    pub steps: usize,
    /// `torch.__version__`, or why PyTorch did not run.
    pub torch: std::result::Result<String, String>,
    pub sgemm: SgemmResult,
    pub cases: Vec<CaseResult>,
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    Some(sorted[sorted.len() / 2])
}

/// The median of per-run ratios: each ratio compares two runs made moments apart.
pub fn median_ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&ratios)
}

/// Runs the training benchmark; `note` hears what is running.
pub fn train(options: &TrainOptions, note: &mut dyn FnMut(&str)) -> Result<TrainReport> {
    let mut torch_version: std::result::Result<String, String> = options
        .torch
        .as_ref()
        .map(|_| String::new())
        .map_err(Clone::clone);
    let mut sgemm = SgemmResult {
        kdc_gflops: Vec::new(),
        torch_gflops: Vec::new(),
    };
    let mut cases: Vec<CaseResult> = options
        .cases
        .iter()
        .map(|c| CaseResult {
            case: c.name().to_string(),
            batch: c.batch(),
            kdc_samples_per_s: Vec::new(),
            torch_samples_per_s: Vec::new(),
            kdc_peak_rss_mb: Vec::new(),
            torch_peak_rss_mb: Vec::new(),
            kdc_latency_ms: Vec::new(),
            torch_latency_ms: Vec::new(),
            torch_failed: None,
            flops_per_step: 0.0,
        })
        .collect();
    // Runs are interleaved (kdc, then PyTorch, case by case) so that both sides of a ratio
    // see the same state of the machine.
    for run in 0..options.runs {
        note(&format!("run {} of {}: sgemm", run + 1, options.runs));
        sgemm.kdc_gflops.push(kdc_sgemm(options.steps)?);
        if let Ok(reference) = &options.torch {
            match reference.run("sgemm", options.steps, options.threads, &[]) {
                Ok(value) => {
                    if let Some(g) = value.get("gflops").and_then(|g| g.as_f64()) {
                        sgemm.torch_gflops.push(g);
                    }
                    if let Some(v) = value.get("torch").and_then(|v| v.as_str()) {
                        torch_version = Ok(v.to_string());
                    }
                }
                Err(reason) => torch_version = Err(reason),
            }
        }
        for (case, result) in options.cases.iter().zip(&mut cases) {
            note(&format!(
                "run {} of {}: {}",
                run + 1,
                options.runs,
                case.name()
            ));
            let measured = kdc_case(*case, options, run)?;
            result.kdc_samples_per_s.push(measured.samples_per_s);
            result.kdc_peak_rss_mb.extend(measured.peak_rss_mb);
            result.kdc_latency_ms.extend(measured.latency_ms);
            result.flops_per_step = measured.flops;
            if let (Ok(reference), Ok(_)) = (&options.torch, &torch_version) {
                match reference_case(reference, *case, options) {
                    Ok(value) => {
                        if let Some(s) = value.get("samples_per_s").and_then(|s| s.as_f64()) {
                            result.torch_samples_per_s.push(s);
                        }
                        if let Some(m) = value.get("peak_rss_mb").and_then(|m| m.as_f64()) {
                            result.torch_peak_rss_mb.push(m);
                        }
                        if let Some(l) = value.get("latency_ms").and_then(|l| l.as_f64()) {
                            result.torch_latency_ms.push(l);
                        }
                    }
                    // A case whose reference cannot run fails on its own (the others
                    // still compare); it shows in the table.
                    Err(reason) => result.torch_failed = Some(reason),
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&options.work_dir);
    Ok(TrainReport {
        threads: options.threads,
        runs: options.runs,
        steps: options.steps,
        torch: torch_version,
        sgemm,
        cases,
    })
}

/// kdc's matmul (candle's, as every dense layer runs it) on torch_ref.py's sgemm case:
/// the median of `steps` timed products after 3 untimed ones.
pub fn kdc_sgemm(steps: usize) -> Result<f64> {
    use candle_core::{Device, Tensor};
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    for _ in 0..3 {
        a.matmul(&b)?;
    }
    let mut seconds = Vec::with_capacity(steps);
    for _ in 0..steps.max(1) {
        let started = Instant::now();
        a.matmul(&b)?;
        seconds.push(started.elapsed().as_secs_f64());
    }
    let step = median(&seconds).unwrap_or(f64::NAN);
    Ok(2.0 * (n as f64).powi(3) / step / 1e9)
}

/// Writes a case's pipeline and `steps` batches of data into a fresh folder under
/// `work_dir`, compiles it with `--set` `overrides`, and returns the folder and the Plan.
pub fn prepare(
    case: Case,
    work_dir: &Path,
    label: &str,
    steps: usize,
    overrides: &[String],
) -> Result<(PathBuf, Plan)> {
    let dir = work_dir.join(format!("{}-{label}", case.name()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let file = dir.join(format!("{}.kd", case.name()));
    error::write_file(&file, case.source().as_bytes())?;
    case.write_data(&dir, steps)?;
    let compile_error = |messages: String| BenchError::Compile {
        case: case.name().to_string(),
        messages,
    };
    let overrides = kd_compiler::parse_overrides(overrides).map_err(|errors| {
        compile_error(
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let compiled = kd_compiler::compile(case.source(), &file, &overrides).map_err(|errors| {
        compile_error(kd_compiler::diagnostics::render_plain(
            &errors,
            &file.display().to_string(),
            case.source(),
        ))
    })?;
    Ok((dir, compiled.plan))
}

/// Runs `plan` into `dir/run`, returning its summary and every step's wall time.
pub fn run(
    case: Case,
    plan: &Plan,
    dir: &Path,
    kdc_version: &str,
) -> Result<(kd_runtime::Summary, Vec<StepTime>)> {
    let out_dir = dir.join("run");
    std::fs::create_dir_all(&out_dir).map_err(|e| io(&out_dir, e))?;
    let times = Arc::new(Mutex::new(Vec::new()));
    let options = RunOptions {
        out_dir,
        progress: Progress::Quiet,
        kdc_version: kdc_version.to_string(),
        resume: false,
        interrupt: None,
        step_times: Some(times.clone()),
        world: kd_runtime::World::single(),
        shared: None,
    };
    let summary = kd_runtime::run_plan(plan, &options).map_err(|source| BenchError::Run {
        case: case.name().to_string(),
        source: Box::new(source),
    })?;
    let times = times.lock().map(|t| t.clone()).unwrap_or_default();
    Ok((summary, times))
}

/// PyTorch's twin of `case`: bert_teacher's needs `transformers` (installed into the
/// reference's venv from PyPI when missing) and the MiniLM checkpoint.
fn reference_case(
    reference: &TorchRef,
    case: Case,
    options: &TrainOptions,
) -> std::result::Result<serde_json::Value, String> {
    let mut extra = Vec::new();
    if let kd_plan::Device::Cuda(index) = options.device {
        extra.extend(["--device".to_string(), format!("cuda:{index}")]);
    }
    if case == Case::BertTeacher {
        reference.ensure("transformers", cases::TRANSFORMERS)?;
        let folder =
            cases::minilm_folder().ok_or("no MiniLM checkpoint (scripts/fetch-data.sh minilm)")?;
        extra.extend(["--minilm".to_string(), folder.display().to_string()]);
    }
    reference.run(case.name(), options.steps, options.threads, &extra)
}

/// One run of a case through kdc.
struct Measured {
    /// The median timed step's.
    samples_per_s: f64,
    /// Dense FLOPs of one step.
    flops: f64,
    /// The peak resident set while the case ran (Linux only).
    peak_rss_mb: Option<f64>,
    /// A single sample's forward (the `evaluate` case).
    latency_ms: Option<f64>,
}

/// Starts a new peak of the process's resident set (Linux 4.0 and later: writing 5 to
/// clear_refs resets `VmHWM` to the current size); without it, the peak is the process's.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn kdc_case(case: Case, options: &TrainOptions, run_index: usize) -> Result<Measured> {
    if case == Case::Evaluate {
        return kdc_evaluate(options, run_index);
    }
    let epochs = 1 + options.steps.div_ceil(STEPS_PER_EPOCH);
    let (dir, mut plan) = prepare(
        case,
        &options.work_dir,
        &run_index.to_string(),
        STEPS_PER_EPOCH,
        &[format!("stage.{}.epochs={epochs}", case.stage())],
    )?;
    plan.settings.threads = Some(options.threads);
    plan.settings.device = options.device.clone();
    reset_peak_rss();
    let (summary, times) = run(case, &plan, &dir, &options.kdc_version)?;
    let timed: Vec<f64> = times
        .iter()
        .skip(STEPS_PER_EPOCH)
        .take(options.steps)
        .map(|t| t.seconds)
        .collect();
    if timed.len() < options.steps {
        return Err(BenchError::Steps {
            case: case.name().to_string(),
            got: timed.len(),
            wanted: options.steps,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    let step = median(&timed).unwrap_or(f64::NAN);
    Ok(Measured {
        samples_per_s: case.batch() as f64 / step,
        flops: step_flops(&plan, case.batch()),
        peak_rss_mb: summary.peak_rss_mb,
        latency_ms: None,
    })
}

/// The `evaluate` case: the runtime's prediction path (`kd_runtime::output::evaluate::predict`,
/// what an `evaluate` declaration runs) over the test split, the median of `steps`
/// passes after one, and the median of 50 single-sample forwards after one, on a worker
/// of a pool as `run_plan` runs.
fn kdc_evaluate(options: &TrainOptions, run_index: usize) -> Result<Measured> {
    use kd_runtime::data::Dataset;
    use kd_runtime::model::Model;
    let case = Case::Evaluate;
    let (dir, plan) = prepare(
        case,
        &options.work_dir,
        &run_index.to_string(),
        STEPS_PER_EPOCH,
        &[],
    )?;
    let fail = |e: kd_runtime::RuntimeError| BenchError::Run {
        case: case.name().to_string(),
        source: Box::new(e),
    };
    let threads = options.threads;
    kd_runtime::configure_threads(Some(threads));
    reset_peak_rss();
    let measured = kd_runtime::on_worker(threads, || -> Result<(f64, f64)> {
        let (Some(data), Some(spec)) = (plan.data.first(), plan.model("s")) else {
            return Err(BenchError::Compile {
                case: case.name().to_string(),
                messages: "no data or no model `s`".into(),
            });
        };
        let dataset =
            Dataset::load(data, &plan.source.base_dir, plan.settings.seed).map_err(fail)?;
        let split = dataset.split("test").map_err(fail)?;
        let device = kd_runtime::device::select(&options.device)
            .map_err(fail)?
            .device;
        let mut model = Model::new_on(spec, plan.settings.seed, &device).map_err(fail)?;
        let mut passes = Vec::new();
        for pass in 0..=options.steps {
            let started = Instant::now();
            kd_runtime::output::evaluate::predict(&mut model, &dataset, split).map_err(fail)?;
            if pass > 0 {
                passes.push(started.elapsed().as_secs_f64());
            }
        }
        let (mut x, mut labels) = (Vec::new(), Vec::new());
        dataset
            .fill_batch(split, &[0], &mut x, &mut labels)
            .map_err(fail)?;
        let mut shape = vec![1];
        shape.extend(&dataset.sample_shape);
        let x = candle_core::Tensor::from_vec(x, shape, &device)?;
        let mut latencies = Vec::new();
        for i in 0..=50 {
            let started = Instant::now();
            model.forward_with(&x, false, false, false).map_err(fail)?;
            if i > 0 {
                latencies.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        let pass = median(&passes).unwrap_or(f64::NAN);
        Ok((
            split.len() as f64 / pass,
            median(&latencies).unwrap_or(f64::NAN),
        ))
    })?;
    let peak_rss_mb = kd_runtime::output::summary::peak_rss_mb();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Measured {
        samples_per_s: measured.0,
        flops: step_flops(&plan, case.batch()) / 3.0,
        peak_rss_mb,
        latency_ms: Some(measured.1),
    })
}

/// Dense FLOPs of one training step of the plan's one stage (see `CaseResult`).
fn step_flops(plan: &Plan, batch: usize) -> f64 {
    let Some(stage) = plan.stages.first() else {
        return 0.0;
    };
    let teacher_runs = plan.settings.cache == CacheMode::Off;
    plan.models
        .iter()
        .map(|m| {
            let forward = m.flops as f64 * batch as f64;
            if m.name == stage.trains {
                3.0 * forward
            } else if teacher_runs {
                forward
            } else {
                0.0
            }
        })
        .sum()
}

impl TrainReport {
    /// The report as a Markdown table, with a line on PyTorch when it did not run.
    pub fn table(&self) -> String {
        let torch_sgemm = median(&self.sgemm.torch_gflops);
        let mut out = String::new();
        out.push_str(&format!(
            "{} threads, median of {} runs of {} timed steps each\n",
            self.threads, self.runs, self.steps
        ));
        match &self.torch {
            Ok(version) => out.push_str(&format!("PyTorch {version}\n\n")),
            Err(reason) => {
                out.push_str(&format!("PyTorch did not run: {reason}\n"));
                out.push_str(
                    "(set it up as bench/torch_ref.py says, or pass --python; kdc's figures \
                     stand alone)\n\n",
                );
            }
        }
        out.push_str(
            "| case | kdc | PyTorch | kdc / PyTorch | kdc GFLOP/s | of PyTorch sgemm \
             | kdc peak RSS MiB | PyTorch peak RSS MiB |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        let fmt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        out.push_str(&format!(
            "| sgemm 1024^3 (GFLOP/s) | {} | {} | {} | | | | |\n",
            fmt(median(&self.sgemm.kdc_gflops), 1),
            fmt(torch_sgemm, 1),
            fmt(
                median_ratio(&self.sgemm.kdc_gflops, &self.sgemm.torch_gflops),
                2
            ),
        ));
        for case in self.cases.iter().filter(|c| c.torch_failed.is_some()) {
            if let Some(reason) = &case.torch_failed {
                out.push_str(&format!("PyTorch's {} failed: {reason}\n", case.case));
            }
        }
        for case in &self.cases {
            let kdc = median(&case.kdc_samples_per_s);
            let gflops = kdc.map(|s| case.flops_per_step / case.batch as f64 * s / 1e9);
            out.push_str(&format!(
                "| {} [{}] (samples/s) | {} | {} | {} | {} | {} | {} | {} |\n",
                case.case,
                case.batch,
                fmt(kdc, 0),
                fmt(median(&case.torch_samples_per_s), 0),
                fmt(
                    median_ratio(&case.kdc_samples_per_s, &case.torch_samples_per_s),
                    2
                ),
                fmt(gflops, 1),
                fmt(gflops.zip(torch_sgemm).map(|(g, roof)| g / roof), 2),
                fmt(median(&case.kdc_peak_rss_mb), 0),
                fmt(median(&case.torch_peak_rss_mb), 0),
            ));
        }
        for case in self.cases.iter().filter(|c| !c.kdc_latency_ms.is_empty()) {
            if out.ends_with("|\n") {
                out.push('\n');
            }
            out.push_str(&format!(
                "{}: single-sample latency {} ms in kdc, {} ms in PyTorch (kdc / PyTorch \
                 speed {})\n",
                case.case,
                fmt(median(&case.kdc_latency_ms), 3),
                fmt(median(&case.torch_latency_ms), 3),
                fmt(
                    median_ratio(&case.torch_latency_ms, &case.kdc_latency_ms),
                    2
                ),
            ));
        }
        out
    }
}

/// A distilling stage with its frozen teacher cached (`cache: memory`) and run every step
/// (`cache: off`): the median stage time over `runs` runs of each.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    pub case: String,
    pub epochs: usize,
    pub samples: usize,
    pub cached_seconds: Vec<f64>,
    pub uncached_seconds: Vec<f64>,
    pub cached_teacher_forwards: u64,
    pub uncached_teacher_forwards: u64,
}

/// Steps per epoch of the caching benchmark: enough that the checkpoint at each epoch's end
/// (part of every real run) weighs as little as in a real one.
const CACHE_STEPS: usize = 40;

/// Runs the MLP case's stage for `epochs` epochs, cached and uncached, `runs` times each.
pub fn cache(
    runs: usize,
    epochs: usize,
    threads: usize,
    work_dir: &Path,
    kdc_version: &str,
    note: &mut dyn FnMut(&str),
) -> Result<CacheReport> {
    let case = Case::MlpDistill;
    let mut report = CacheReport {
        case: case.name().to_string(),
        epochs,
        samples: case.batch() * CACHE_STEPS,
        cached_seconds: Vec::new(),
        uncached_seconds: Vec::new(),
        cached_teacher_forwards: 0,
        uncached_teacher_forwards: 0,
    };
    for run_index in 0..runs {
        for mode in [CacheMode::Memory, CacheMode::Off] {
            note(&format!("run {} of {runs}: cache {mode:?}", run_index + 1));
            let setting = match mode {
                CacheMode::Off => "off",
                _ => "memory",
            };
            let (dir, mut plan) = prepare(
                case,
                work_dir,
                &format!("cache-{setting}"),
                CACHE_STEPS,
                &[
                    format!("stage.distill.epochs={epochs}"),
                    format!("pipeline.{}.cache={setting}", case.name()),
                ],
            )?;
            plan.settings.threads = Some(threads);
            let (summary, _) = run(case, &plan, &dir, kdc_version)?;
            let _ = std::fs::remove_dir_all(&dir);
            let stage = summary.stages.first();
            let seconds = stage.map_or(f64::NAN, |s| s.seconds);
            let forwards = stage.map_or(0, |s| s.teacher_forwards);
            match mode {
                CacheMode::Off => {
                    report.uncached_seconds.push(seconds);
                    report.uncached_teacher_forwards = forwards;
                }
                _ => {
                    report.cached_seconds.push(seconds);
                    report.cached_teacher_forwards = forwards;
                }
            }
        }
    }
    Ok(report)
}

impl CacheReport {
    pub fn table(&self) -> String {
        let cached = median(&self.cached_seconds);
        let uncached = median(&self.uncached_seconds);
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let mut out = format!(
            "{}: {} epochs of {} samples, median of {} runs\n\n",
            self.case,
            self.epochs,
            self.samples,
            self.cached_seconds.len()
        );
        out.push_str("| teacher | stage seconds | teacher forwards |\n|---|---:|---:|\n");
        out.push_str(&format!(
            "| run every step (`cache: off`) | {} | {} |\n",
            fmt(uncached),
            self.uncached_teacher_forwards
        ));
        out.push_str(&format!(
            "| cached (`cache: memory`) | {} | {} |\n",
            fmt(cached),
            self.cached_teacher_forwards
        ));
        out.push_str(&format!(
            "\ncached / uncached time: {}\n",
            fmt(median_ratio(&self.cached_seconds, &self.uncached_seconds))
        ));
        out
    }
}
