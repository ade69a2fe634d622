//! `kdc`: the command line. Thin by design: every command is a few calls into the
//! compiler and the runtime, plus reporting.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use kd_compiler::diagnostics::{render_plain, to_json};
use kd_compiler::{compile, parse_overrides, Compiled, KdError};
use kd_plan::{Plan, SweepPlan};
use miette::Diagnostic;

#[derive(Parser)]
#[command(
    name = "kdc",
    version,
    about = "Checks, compiles and runs knowledge-distillation pipelines written in .kd"
)]
struct Cli {
    /// How diagnostics are printed on stderr.
    #[arg(long, value_enum, global = true, default_value = "human")]
    error_format: ErrorFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum ErrorFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum BenchKind {
    /// Training throughput beside PyTorch, and the matmul roof.
    Train,
    /// Every layer and augmentation alone, forward and backward, beside PyTorch.
    Layers,
    /// A distilling stage with its teacher cached and uncached.
    Cache,
    /// `kdc check` on the examples and on generated files.
    Compile,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Subcommand)]
enum Command {
    /// Check a .kd file and report every problem found.
    Check {
        file: PathBuf,
        /// Also print each model's layers, shapes, parameters and FLOPs.
        #[arg(long, short)]
        verbose: bool,
        /// Override a value before checking: `kind.name.field=value`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Rewrite .kd files in their canonical layout (docs/language.md, "Layout").
    Fmt {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Change nothing: show what would change, exit 1 if anything would.
        #[arg(long)]
        check: bool,
    },
    /// Serve an editor over stdin and stdout (the Language Server Protocol).
    Lsp,
    /// Write report.html into a finished run folder: the models side by side, the curves,
    /// confusion matrices and accuracy against size, as one self-contained page.
    Report { run: PathBuf },
    /// Print each model's layers, shapes, parameters and FLOPs.
    Explain {
        file: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Compile a .kd file to a Plan (YAML).
    Compile {
        file: PathBuf,
        /// Where to write the Plan; standard output if absent.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Print the pipeline's dataflow graph.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "mermaid")]
        format: GraphFormat,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Run a pipeline (.kd) or a compiled Plan (.yaml), or continue a stopped run.
    Run {
        /// The pipeline; with --resume, checked to compile to the run's own plan.
        #[arg(required_unless_present = "resume")]
        file: Option<PathBuf>,
        /// The run folder; it must not exist or be empty (see --force).
        #[arg(long, conflicts_with = "resume")]
        out: Option<PathBuf>,
        /// Replace the earlier kdc run in --out (only a folder holding a plan.yaml).
        #[arg(long, requires = "out")]
        force: bool,
        /// Continue the run in this folder from its last checkpoint.
        #[arg(long, value_name = "RUNDIR")]
        resume: Option<PathBuf>,
        /// Where to run, over the pipeline's `device:` (also on --resume: a run may
        /// continue on another device).
        #[arg(long, value_name = "cpu|cuda|cuda:N|auto", value_parser = parse_device)]
        device: Option<kd_plan::Device>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Run the file's sweep NAME: every configuration, then the best on its
        /// validation split.
        #[arg(long, value_name = "NAME", conflicts_with = "resume")]
        sweep: Option<String>,
    },
    /// Measure kdc: training throughput against PyTorch 2, teacher caching, check speed.
    Bench {
        #[arg(value_enum, default_value = "all")]
        kind: BenchKind,
        /// Training cases to run (default: all), or with `layers` rows of its table.
        #[arg(long = "case", value_name = "NAME")]
        cases: Vec<String>,
        /// Runs of each case; every figure is the median over runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Timed training steps per run, after one untimed epoch.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Threads for kdc and PyTorch alike (default: every core).
        #[arg(long)]
        threads: Option<usize>,
        /// The Python of a venv with PyTorch (default: $KDC_TORCH_PYTHON, then
        /// ~/.cache/torch-ref/bin/python).
        #[arg(long)]
        python: Option<PathBuf>,
        /// The PyTorch reference script.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/torch_ref.py"))]
        torch_ref: PathBuf,
        /// The folder of .kd files whose check time is measured.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))]
        examples: PathBuf,
        /// Print the reports as JSON lines instead of tables.
        #[arg(long)]
        json: bool,
        /// Where the training cases run, kdc and PyTorch alike (docs/cuda.md).
        #[arg(long, value_name = "cpu|cuda|cuda:N", default_value = "cpu", value_parser = parse_device)]
        device: kd_plan::Device,
    },
}

/// Why a command failed: the user's input (exit 1), how kdc was called (exit 2), or an
/// interrupt that stopped a run with a checkpoint (exit 130, as shells report Ctrl-C).
enum Failure {
    Input,
    Usage(String),
    Interrupted,
}

/// mimalloc rather than glibc's allocator: a training step frees and allocates its
/// activations every step, and glibc gives large blocks back to the system each time, so
/// they were page-faulted in afresh (a tenth of a step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where the last panic happened, for the one-line report.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Where the last panic happened (` at FILE:LINE`), taken for the one-line report.
fn last_panic_location() -> String {
    LAST_PANIC
        .lock()
        .ok()
        .and_then(|mut l| l.take())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    // A panic is a kdc bug, never the user's fault: the hook only remembers where it
    // happened, and one line reports it below (exit 2). RUST_BACKTRACE keeps the default.
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            if let Ok(mut last) = LAST_PANIC.lock() {
                *last = Some(location);
            }
        }));
    }
    let cli = Cli::parse();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&cli)));
    let Ok(outcome) = outcome else {
        let location = last_panic_location();
        eprintln!("error[kd::internal]: kdc hit a bug{location}; please report it with the command that caused it");
        return ExitCode::from(2);
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input) => ExitCode::from(1),
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Interrupted) => ExitCode::from(130),
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let format = cli.error_format;
    match &cli.command {
        Command::Check { file, verbose, set } => {
            let compiled = compile_file(file, set, format)?;
            // Every configuration of every sweep is checked as the file is (the file's
            // warnings were printed above, once).
            for name in sweep_names(file) {
                let (source, shown, overrides) = read_with_overrides(file, set, format)?;
                if let Err(errors) = kd_compiler::compile_sweep(&source, file, &overrides, &name) {
                    report(&errors, &shown, &source, format);
                    return Err(Failure::Input);
                }
            }
            if *verbose {
                print!("{}", kd_compiler::explain::explain(&compiled.plan));
            }
            eprintln!("{}: ok", file.display());
            Ok(())
        }
        Command::Fmt { files, check } => fmt_files(files, *check, format),
        Command::Report { run } => match kd_report::write(run) {
            Ok(path) => {
                println!("{}", path.display());
                Ok(())
            }
            Err(error) => {
                report_failure(error, format);
                Err(Failure::Input)
            }
        },
        Command::Lsp => kd_lsp::serve_stdio().map_err(|e| {
            plain_error("kd::lsp", &e, format);
            Failure::Input
        }),
        Command::Explain { file, set } => {
            let compiled = compile_file(file, set, format)?;
            print!("{}", kd_compiler::explain::explain(&compiled.plan));
            Ok(())
        }
        Command::Compile { file, output, set } => {
            let compiled = compile_file(file, set, format)?;
            let yaml = compiled
                .plan
                .to_yaml()
                .map_err(|e| Failure::Usage(format!("cannot write the plan: {e}")))?;
            match output {
                Some(path) => {
                    std::fs::write(path, yaml).map_err(|e| io_failure(path, &e, format))?
                }
                None => print!("{yaml}"),
            }
            Ok(())
        }
        Command::Graph {
            file,
            format: graph,
            set,
        } => {
            let compiled = compile_file(file, set, format)?;
            print!(
                "{}",
                match graph {
                    GraphFormat::Mermaid => kd_compiler::render::mermaid(&compiled.plan),
                    GraphFormat::Dot => kd_compiler::render::dot(&compiled.plan),
                }
            );
            Ok(())
        }
        Command::Run {
            file,
            out,
            force,
            resume,
            device,
            set,
            sweep,
        } => {
            let on_device = |mut plan: Plan| {
                if let Some(device) = device {
                    plan.settings.device = device.clone();
                }
                plan
            };
            let sweep_on_device = |mut sweep: SweepPlan| {
                for config in &mut sweep.configs {
                    config.plan = on_device(config.plan.clone());
                }
                sweep
            };
            if let Some(dir) = resume {
                if dir.join(SWEEP_FILE).is_file() {
                    let sweep = resumable_sweep(dir, file.as_deref(), set, format)?;
                    let sweep = sweep_on_device(sweep);
                    return run_plan(Job::Sweep(&sweep), RunFolder::Resume(dir), format);
                }
                let plan = on_device(resumable_plan(dir, file.as_deref(), set, format)?);
                return run_plan(Job::Plan(&plan), RunFolder::Resume(dir), format);
            }
            let Some(file) = file else {
                return Err(Failure::Usage("name a pipeline to run".into()));
            };
            let folder = match out {
                Some(dir) if *force => RunFolder::Replace(dir),
                Some(dir) => RunFolder::New(dir),
                None => RunFolder::Fresh,
            };
            if let Some(name) = sweep {
                if is_plan(file) {
                    return Err(Failure::Usage(
                        "--sweep runs a sweep declared in a .kd file".into(),
                    ));
                }
                let sweep = sweep_on_device(compile_sweep_file(file, set, name, format)?.sweep);
                return run_plan(Job::Sweep(&sweep), folder, format);
            }
            let plan = on_device(pipeline_plan(file, set, format)?);
            run_plan(Job::Plan(&plan), folder, format)
        }
        Command::Bench {
            kind,
            cases,
            runs,
            steps,
            threads,
            python,
            torch_ref,
            examples,
            json,
            device,
        } => {
            let rows = kd_bench::layers::LayerFilter::new(cases);
            let mut chosen = Vec::new();
            // `--case` names rows of the layer table there.
            for name in cases.iter().filter(|_| *kind != BenchKind::Layers) {
                let case = kd_bench::Case::from_name(name).ok_or_else(|| {
                    let names: Vec<&str> = kd_bench::Case::ALL.iter().map(|c| c.name()).collect();
                    Failure::Usage(format!(
                        "no bench case `{name}`; the cases are {}",
                        names.join(", ")
                    ))
                })?;
                chosen.push(case);
            }
            if chosen.is_empty() {
                chosen = kd_bench::Case::ALL.to_vec();
            }
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let work_dir = std::env::temp_dir().join(format!("kdc-bench-{}", std::process::id()));
            let options = BenchOptions {
                runs: (*runs).max(1),
                steps: (*steps).max(1),
                work_dir,
                json: *json,
            };
            let wants = |k: BenchKind| *kind == k || *kind == BenchKind::All;
            let outcome = (|| -> kd_bench::Result<()> {
                if wants(BenchKind::Compile) {
                    let report = kd_bench::compile_speed::measure(
                        examples,
                        &[1250, 2500, 5000, 10000],
                        10,
                        &options.work_dir,
                    )?;
                    options.print("compile", &report, report.table())?;
                }
                if wants(BenchKind::Cache) {
                    let report = kd_bench::cache(
                        options.runs,
                        3,
                        threads,
                        &options.work_dir,
                        env!("CARGO_PKG_VERSION"),
                        &mut |line| eprintln!("bench: {line}"),
                    )?;
                    options.print("cache", &report, report.table())?;
                }
                if wants(BenchKind::Layers) {
                    let report = kd_bench::layers::layers(
                        &rows?,
                        options.runs,
                        options.steps,
                        threads,
                        &kd_bench::TorchRef::find(python.clone(), torch_ref.clone()),
                        &mut |line| eprintln!("bench: {line}"),
                    )?;
                    options.print("layers", &report, report.table())?;
                }
                if wants(BenchKind::Train) {
                    let train = kd_bench::TrainOptions {
                        cases: chosen,
                        runs: options.runs,
                        steps: options.steps,
                        threads,
                        torch: kd_bench::TorchRef::find(python.clone(), torch_ref.clone()),
                        work_dir: options.work_dir.clone(),
                        kdc_version: env!("CARGO_PKG_VERSION").to_string(),
                        device: device.clone(),
                    };
                    let report = kd_bench::train(&train, &mut |line| eprintln!("bench: {line}"))?;
                    options.print("train", &report, report.table())?;
                }
                Ok(())
            })();
            let _ = std::fs::remove_dir_all(&options.work_dir);
            outcome.map_err(|error| {
                eprintln!("{:?}", miette::Report::new(error));
                Failure::Input
            })
        }
    }
}

/// What every part of `kdc bench` shares.
struct BenchOptions {
    runs: usize,
    steps: usize,
    work_dir: PathBuf,
    json: bool,
}

impl BenchOptions {
    /// A report as one JSON line, or as its table under a heading.
    fn print(
        &self,
        kind: &str,
        report: &impl serde::Serialize,
        table: String,
    ) -> kd_bench::Result<()> {
        if self.json {
            let value = serde_json::json!({ "bench": kind, "report": report });
            println!("{value}");
        } else {
            println!("## kdc bench {kind}\n\n{table}");
        }
        Ok(())
    }
}

/// The plan of a `.kd` file (with `--set`) or of a compiled plan.
fn pipeline_plan(file: &Path, set: &[String], format: ErrorFormat) -> Result<Plan, Failure> {
    if is_plan(file) {
        if !set.is_empty() {
            return Err(Failure::Usage(
                "--set applies to .kd files; edit the plan instead".into(),
            ));
        }
        load_plan(file, format)
    } else {
        Ok(compile_file(file, set, format)?.plan)
    }
}

/// The plan saved in a run folder, after checking that `file` (when named) still compiles
/// to it.
fn resumable_plan(
    dir: &Path,
    file: Option<&Path>,
    set: &[String],
    format: ErrorFormat,
) -> Result<Plan, Failure> {
    let saved_path = dir.join("plan.yaml");
    if !saved_path.is_file() {
        plain_error(
            "kd::run::not_a_run",
            &format!(
                "`{}` is not a kdc run folder: it has no plan.yaml",
                dir.display()
            ),
            format,
        );
        return Err(Failure::Input);
    }
    let saved = load_plan(&saved_path, format)?;
    if dir.join("summary.json").is_file() && !kd_runtime::train::checkpoint::path(dir).exists() {
        plain_error(
            "kd::run::finished",
            &format!(
                "the run in `{}` has finished: there is nothing to resume",
                dir.display()
            ),
            format,
        );
        return Err(Failure::Input);
    }
    match file {
        Some(file) => {
            let plan = pipeline_plan(file, set, format)?;
            let changes = saved.differences(&plan);
            if !changes.is_empty() {
                let shown: Vec<String> =
                    changes.iter().take(12).map(|c| format!("  {c}")).collect();
                let more = match changes.len().saturating_sub(shown.len()) {
                    0 => String::new(),
                    n => format!("\n  ... and {n} more"),
                };
                plain_error(
                    "kd::run::resume_mismatch",
                    &format!(
                        "`{}` no longer compiles to the plan of the run in `{}`; what changed (run -> file):\n{}{more}\nhelp: undo the change to continue the run, or start a new run",
                        file.display(),
                        dir.display(),
                        shown.join("\n")
                    ),
                    format,
                );
                return Err(Failure::Input);
            }
        }
        None if !set.is_empty() => {
            return Err(Failure::Usage(
                "--set changes a pipeline; a resumed run keeps its plan".into(),
            ))
        }
        None => {}
    }
    Ok(saved)
}

fn is_plan(file: &Path) -> bool {
    matches!(
        file.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// `kdc fmt`: every file formatted (or, with `check`, compared); a file with a syntax
/// error is reported as `kdc check` reports it and left as it is.
fn fmt_files(files: &[PathBuf], check: bool, format: ErrorFormat) -> Result<(), Failure> {
    let mut failed = false;
    for file in files {
        let source = match std::fs::read_to_string(file) {
            Ok(s) => s,
            Err(e) => {
                io_failure(file, &e, format);
                failed = true;
                continue;
            }
        };
        let formatted = match kd_grammar::format(&source) {
            Ok(f) => f,
            Err(e) => {
                report(
                    &[KdError::from(e)],
                    &file.display().to_string(),
                    &source,
                    format,
                );
                failed = true;
                continue;
            }
        };
        if formatted == source {
            continue;
        }
        if check {
            print!("{}", fmt_diff(file, &source, &formatted));
            failed = true;
        } else if let Err(e) =
            kd_runtime::output::files::write_atomically(file, formatted.as_bytes())
        {
            plain_error("kd::io", &e.to_string(), format);
            failed = true;
        } else {
            eprintln!("formatted {}", file.display());
        }
    }
    match failed {
        true => Err(Failure::Input),
        false => Ok(()),
    }
}

/// What `kdc fmt` would change in `file`, as a unified diff.
fn fmt_diff(file: &Path, before: &str, after: &str) -> String {
    let name = file.display().to_string();
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(2)
        .header(&name, &format!("{name} (formatted)"))
        .to_string()
}

/// The sweeps a file declares (none when it does not parse: its check says why).
fn sweep_names(file: &Path) -> Vec<String> {
    let Ok(source) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let Ok(program) = kd_grammar::parse(&source) else {
        return Vec::new();
    };
    program
        .declarations
        .iter()
        .filter_map(|d| match d {
            kd_grammar::ast::Declaration::Sweep(s) => Some(s.name.name.clone()),
            _ => None,
        })
        .collect()
}

/// The Plans of a file's sweep `name`, every configuration checked.
fn compile_sweep_file(
    file: &Path,
    set: &[String],
    name: &str,
    format: ErrorFormat,
) -> Result<kd_compiler::CompiledSweep, Failure> {
    let (source, shown, overrides) = read_with_overrides(file, set, format)?;
    match kd_compiler::compile_sweep(&source, file, &overrides, name) {
        Ok(compiled) => {
            report(&compiled.warnings, &shown, &source, format);
            Ok(compiled)
        }
        Err(errors) => {
            report(&errors, &shown, &source, format);
            Err(Failure::Input)
        }
    }
}

/// The sweep saved in a run folder, after checking that `file` (when named) still
/// compiles to it.
fn resumable_sweep(
    dir: &Path,
    file: Option<&Path>,
    set: &[String],
    format: ErrorFormat,
) -> Result<SweepPlan, Failure> {
    let path = dir.join(SWEEP_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io_failure(&path, &e, format))?;
    let saved: SweepPlan = serde_yaml::from_str(&text).map_err(|e| {
        plain_error(
            "kd::plan::invalid",
            &format!("`{}` is not a kdc sweep: {e}", path.display()),
            format,
        );
        Failure::Input
    })?;
    if dir.join("summary.json").is_file() {
        plain_error(
            "kd::run::finished",
            &format!(
                "the sweep in `{}` has finished: there is nothing to resume",
                dir.display()
            ),
            format,
        );
        return Err(Failure::Input);
    }
    match file {
        Some(file) => {
            let compiled = compile_sweep_file(file, set, &saved.name, format)?.sweep;
            if compiled.hash() != saved.hash() {
                plain_error(
                    "kd::run::resume_mismatch",
                    &format!(
                        "`{}` no longer compiles to the sweep `{}` of the run in `{}`\nhelp: undo the change to continue the sweep, or start a new one",
                        file.display(),
                        saved.name,
                        dir.display()
                    ),
                    format,
                );
                return Err(Failure::Input);
            }
        }
        None if !set.is_empty() => {
            return Err(Failure::Usage(
                "--set changes a pipeline; a resumed sweep keeps its plans".into(),
            ))
        }
        None => {}
    }
    Ok(saved)
}

/// The file a sweep's run folder keeps its configurations' plans in.
const SWEEP_FILE: &str = "sweep.yaml";

/// What `kdc run` runs: one Plan, or a sweep's.
#[derive(Clone, Copy)]
enum Job<'a> {
    Plan(&'a Plan),
    Sweep(&'a SweepPlan),
}

impl<'a> Job<'a> {
    /// The Plan that names the run folder and resolves sources for messages: the
    /// first configuration's in a sweep.
    fn plan(self) -> Result<&'a Plan, Failure> {
        match self {
            Job::Plan(plan) => Ok(plan),
            Job::Sweep(sweep) => sweep
                .configs
                .first()
                .map(|c| &c.plan)
                .ok_or_else(|| Failure::Usage("the sweep has no configurations".into())),
        }
    }

    fn hash(self) -> String {
        match self {
            Job::Plan(plan) => plan.hash(),
            Job::Sweep(sweep) => sweep.hash(),
        }
    }

    /// The file the run folder keeps it in, and its text.
    fn saved(self) -> Result<(&'static str, String), Failure> {
        let failed = |e: String| Failure::Usage(format!("cannot write the plan: {e}"));
        match self {
            Job::Plan(plan) => Ok((
                "plan.yaml",
                plan.to_yaml().map_err(|e| failed(e.to_string()))?,
            )),
            Job::Sweep(sweep) => Ok((
                SWEEP_FILE,
                serde_yaml::to_string(sweep).map_err(|e| failed(e.to_string()))?,
            )),
        }
    }
}

/// A file's text, its name for messages, and the `--set` overrides (reported against the
/// file when they do not parse).
fn read_with_overrides(
    file: &Path,
    set: &[String],
    format: ErrorFormat,
) -> Result<(String, String, Vec<kd_plan::Override>), Failure> {
    let source = std::fs::read_to_string(file).map_err(|e| io_failure(file, &e, format))?;
    let name = file.display().to_string();
    let overrides = parse_overrides(set).map_err(|errors| {
        report(
            &errors.into_iter().map(KdError::from).collect::<Vec<_>>(),
            &name,
            &source,
            format,
        );
        Failure::Input
    })?;
    Ok((source, name, overrides))
}

fn compile_file(file: &Path, set: &[String], format: ErrorFormat) -> Result<Compiled, Failure> {
    let (source, name, overrides) = read_with_overrides(file, set, format)?;
    match compile(&source, file, &overrides) {
        Ok(compiled) => {
            report(&compiled.warnings, &name, &source, format);
            Ok(compiled)
        }
        Err(errors) => {
            report(&errors, &name, &source, format);
            Err(Failure::Input)
        }
    }
}

fn report(diagnostics: &[KdError], file: &str, source: &str, format: ErrorFormat) {
    if diagnostics.is_empty() {
        return;
    }
    match format {
        ErrorFormat::Human => eprint!("{}", render_human(diagnostics, file, source)),
        ErrorFormat::Json => {
            for d in diagnostics {
                if let Ok(line) = serde_json::to_string(&to_json(d, file, source)) {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn render_human(diagnostics: &[KdError], file: &str, source: &str) -> String {
    if std::io::stderr().is_terminal() {
        let mut out = String::new();
        for d in diagnostics {
            let report = miette::Report::new(d.clone())
                .with_source_code(miette::NamedSource::new(file, source.to_string()));
            out.push_str(&format!("{report:?}\n"));
        }
        out
    } else {
        render_plain(diagnostics, file, source)
    }
}

/// A problem with a file the user named, reported like any other diagnostic.
fn io_failure(path: &Path, error: &std::io::Error, format: ErrorFormat) -> Failure {
    plain_error(
        "kd::io",
        &format!("cannot use `{}`: {error}", path.display()),
        format,
    );
    Failure::Input
}

fn plain_error(code: &str, message: &str, format: ErrorFormat) {
    match format {
        ErrorFormat::Human => eprintln!("error[{code}]: {message}"),
        ErrorFormat::Json => eprintln!(
            "{}",
            serde_json::json!({"code": code, "severity": "error", "message": message, "help": null, "labels": [],
                "start": null, "end": null, "line": null, "column": null})
        ),
    }
}

fn load_plan(file: &Path, format: ErrorFormat) -> Result<Plan, Failure> {
    let text = std::fs::read_to_string(file).map_err(|e| io_failure(file, &e, format))?;
    let plan = Plan::from_yaml(&text).map_err(|e| {
        plain_error(
            "kd::plan::invalid",
            &format!("`{}` is not a kdc plan: {e}", file.display()),
            format,
        );
        Failure::Input
    })?;
    if plan.version != kd_plan::PLAN_VERSION {
        plain_error(
            "kd::plan::version",
            &format!(
                "`{}` is a version {} plan; this kdc reads version {}",
                file.display(),
                plan.version,
                kd_plan::PLAN_VERSION
            ),
            format,
        );
        return Err(Failure::Input);
    }
    Ok(plan)
}

/// `--device`: `cpu`, `cuda` (`cuda:0`), `cuda:N` or `auto`, as the language's strings.
fn parse_device(text: &str) -> Result<kd_plan::Device, String> {
    match text {
        "cpu" => Ok(kd_plan::Device::Cpu),
        "auto" => Ok(kd_plan::Device::Auto),
        "cuda" => Ok(kd_plan::Device::Cuda(0)),
        _ => text
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(kd_plan::Device::Cuda)
            .ok_or_else(|| "expected `cpu`, `cuda`, `cuda:N` or `auto`".to_string()),
    }
}

/// Where a run writes.
enum RunFolder<'a> {
    /// `<output>/<name>-<UTC timestamp>`, a folder no run has used.
    Fresh,
    /// `--out`: must not exist or be empty.
    New(&'a Path),
    /// `--out --force`: an earlier run's folder, replaced.
    Replace(&'a Path),
    /// `--resume`: the run's own folder.
    Resume(&'a Path),
}

/// Makes (or, for `--force`, remakes) the run folder.
fn run_folder(plan: &Plan, folder: &RunFolder, format: ErrorFormat) -> Result<PathBuf, Failure> {
    let dir = match folder {
        RunFolder::Resume(dir) => return Ok(dir.to_path_buf()),
        RunFolder::Fresh => return fresh_run_folder(plan, format),
        RunFolder::New(dir) | RunFolder::Replace(dir) => *dir,
    };
    let non_empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if dir.is_file() {
        plain_error(
            "kd::run::out_exists",
            &format!("`{}` is a file, not a run folder", dir.display()),
            format,
        );
        return Err(Failure::Input);
    }
    if non_empty {
        let replace = matches!(folder, RunFolder::Replace(_));
        // --force replaces an earlier run, never a folder kdc did not make (a folder where
        // `kdc compile -o plan.yaml` wrote a plan is not a run folder).
        if !replace || !dir.join(RUN_MARKER).is_file() {
            let message = if replace {
                format!("`{}` is not empty and is not a kdc run folder (it has no {RUN_MARKER}): kdc replaces only its own run folders, even with --force", dir.display())
            } else {
                format!("the run folder `{}` already exists and is not empty; kdc never overwrites a run (--force replaces an earlier run, --resume continues it)", dir.display())
            };
            plain_error("kd::run::out_exists", &message, format);
            return Err(Failure::Input);
        }
        std::fs::remove_dir_all(dir).map_err(|e| io_failure(dir, &e, format))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io_failure(dir, &e, format))?;
    mark_run_folder(dir, format)?;
    Ok(dir.to_path_buf())
}

/// Marks a folder as a kdc run folder, the only kind `--force` will replace.
const RUN_MARKER: &str = ".kdc-run";

fn mark_run_folder(dir: &Path, format: ErrorFormat) -> Result<(), Failure> {
    let marker = dir.join(RUN_MARKER);
    std::fs::write(
        &marker,
        "a kdc run folder: `kdc run --out THIS --force` may replace it\n",
    )
    .map_err(|e| io_failure(&marker, &e, format))
}

fn fresh_run_folder(plan: &Plan, format: ErrorFormat) -> Result<PathBuf, Failure> {
    let root = plan.resolve(&plan.settings.output);
    let stamp = timestamp();
    for attempt in 0..1000 {
        let name = match attempt {
            0 => format!("{}-{stamp}", plan.settings.name),
            n => format!("{}-{stamp}-{n}", plan.settings.name),
        };
        let dir = root.join(name);
        std::fs::create_dir_all(&root).map_err(|e| io_failure(&root, &e, format))?;
        // create_dir (not _all) fails if the folder exists: no two runs share one.
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                mark_run_folder(&dir, format)?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_failure(&dir, &e, format)),
        }
    }
    Err(Failure::Usage("cannot find a free run folder name".into()))
}

fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn run_plan(job: Job, folder: RunFolder, format: ErrorFormat) -> Result<(), Failure> {
    let plan = job.plan()?;
    let world = kd_runtime::World::from_launcher().map_err(|e| {
        runtime_failure(plan, e, format);
        Failure::Input
    })?;
    if world.size() == 1 {
        return run_in(job, folder, format, world);
    }
    if matches!(job, Job::Sweep(_)) {
        plain_error(
            "kd::run::distributed",
            "a sweep runs in one process: its configurations share what they compute there",
            format,
        );
        world.abort(1)
    }
    // Under a launcher every rank runs this; rank 0 makes the folder, and an error of a
    // rank stops them all (MPI_Abort) rather than leaving the others in a collective.
    // A panic must not leave the others waiting either: MPI_Finalize would wait for them.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_in(job, folder, format, world.clone())
    }));
    let Ok(outcome) = outcome else {
        let location = last_panic_location();
        eprintln!(
            "error[kd::internal]: kdc hit a bug{location} on rank {}; please report it with the command that caused it",
            world.rank()
        );
        world.abort(2)
    };
    match outcome {
        Err(Failure::Input) => world.abort(1),
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            world.abort(2)
        }
        other => other,
    }
}

/// [`run_plan`] in `world`: a single process, or one rank of a data-parallel run.
fn run_in(
    job: Job,
    folder: RunFolder,
    format: ErrorFormat,
    world: kd_runtime::World,
) -> Result<(), Failure> {
    let plan = job.plan()?;
    let resuming = matches!(folder, RunFolder::Resume(_));
    // A resumed run keeps its plan.yaml; a run killed before its first checkpoint
    // starts again from the beginning in the same folder.
    let made = match world.writes() {
        true => run_folder(plan, &folder, format).map(|dir| {
            // A sweep resumes configuration by configuration (each with its checkpoint).
            let resume = resuming
                && (matches!(job, Job::Sweep(_))
                    || kd_runtime::train::checkpoint::path(&dir).exists());
            Some((dir, resume))
        }),
        false => Ok(None),
    };
    let (dir, resume) = match world.size() {
        1 => made?.unwrap_or_default(),
        _ => {
            let mine = made.as_ref().ok().and_then(|d| d.as_ref());
            let agreed = world.agree_on_run(&job.hash(), mine.map(|(d, r)| (d.as_path(), *r)));
            made?;
            agreed.map_err(|e| {
                runtime_failure(plan, e, format);
                Failure::Input
            })?
        }
    };
    if !resuming && world.writes() {
        let (name, yaml) = job.saved()?;
        let plan_path = dir.join(name);
        kd_runtime::output::files::write_atomically(&plan_path, yaml.as_bytes()).map_err(|e| {
            runtime_failure(plan, e, format);
            Failure::Input
        })?;
    }
    let progress = if !world.writes() {
        // Rank 0 shows the run's progress for all of them.
        kd_runtime::Progress::Quiet
    } else if std::io::stderr().is_terminal() {
        kd_runtime::Progress::Bars
    } else {
        kd_runtime::Progress::Lines
    };
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupt);
    // The first Ctrl-C asks for a checkpoint at the next step; a second one quits at once
    // (every file kdc writes is replaced atomically, so nothing is left half written).
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted: writing a checkpoint after this step (Ctrl-C again quits at once)"
        );
    });
    let options = kd_runtime::RunOptions {
        out_dir: dir.clone(),
        progress,
        kdc_version: env!("CARGO_PKG_VERSION").to_string(),
        resume,
        interrupt: Some(interrupt),
        step_times: None,
        world: world.clone(),
        shared: None,
    };
    let outcome = match job {
        Job::Plan(plan) => kd_runtime::run_plan(plan, &options),
        Job::Sweep(sweep) => kd_runtime::run_sweep(sweep, &options),
    };
    match outcome {
        Ok(_) if !world.writes() => Ok(()),
        Ok(summary) => {
            print!("{}", kd_runtime::report(&summary));
            println!("run folder: {}", dir.display());
            Ok(())
        }
        Err(error @ kd_runtime::RuntimeError::Interrupted { .. }) => {
            // Every rank stopped at the same step; rank 0 says where.
            if world.writes() {
                runtime_failure(plan, error, format);
            }
            Err(Failure::Interrupted)
        }
        Err(error) => {
            runtime_failure(plan, error, format);
            eprintln!("the run folder keeps what was written: {}", dir.display());
            Err(Failure::Input)
        }
    }
}

/// Prints why `kdc report` could not make a report.
fn report_failure(error: kd_report::ReportError, format: ErrorFormat) {
    match format {
        ErrorFormat::Human => eprintln!("{:?}", miette::Report::new(error)),
        ErrorFormat::Json => {
            let d = to_json(&error, "", "");
            if let Ok(line) = serde_json::to_string(&d) {
                eprintln!("{line}");
            }
        }
    }
}

/// Prints a runtime error, with the `.kd` source it points into when that can be read.
fn runtime_failure(plan: &Plan, error: kd_runtime::RuntimeError, format: ErrorFormat) {
    let file = plan.source.path.display().to_string();
    let source = std::fs::read_to_string(&plan.source.path).ok();
    match format {
        ErrorFormat::Human => match source {
            Some(source) if error.labels().is_some() => {
                let report = miette::Report::new(error)
                    .with_source_code(miette::NamedSource::new(file, source));
                eprintln!("{report:?}");
            }
            _ => eprintln!("{:?}", miette::Report::new(error)),
        },
        ErrorFormat::Json => {
            let d = to_json(&error, &file, source.as_deref().unwrap_or(""));
            if let Ok(line) = serde_json::to_string(&d) {
                eprintln!("{line}");
            }
        }
    }
}
