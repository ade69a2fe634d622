//! `kdc`: the command line. Thin by design: every command is a few calls into the
//! compiler and the runtime, plus reporting.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kd_compiler::diagnostics::{render_plain, to_json};
use kd_compiler::{compile, parse_overrides, Compiled, KdError};
use kd_plan::Plan;

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
    /// Run a pipeline (.kd) or a compiled Plan (.yaml).
    Run {
        file: PathBuf,
        /// The run folder; it must not exist or be empty.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

/// Why a command failed: the user's input (exit 1) or how kdc was called (exit 2).
enum Failure {
    Input,
    Usage(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input) => ExitCode::from(1),
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let format = cli.error_format;
    match &cli.command {
        Command::Check { file, verbose, set } => {
            let compiled = compile_file(file, set, format)?;
            if *verbose {
                print!("{}", kd_compiler::explain::explain(&compiled.plan));
            }
            eprintln!("{}: ok", file.display());
            Ok(())
        }
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
        Command::Run { file, out, set } => {
            let plan = if is_plan(file) {
                if !set.is_empty() {
                    return Err(Failure::Usage(
                        "--set applies to .kd files; edit the plan instead".into(),
                    ));
                }
                load_plan(file, format)?
            } else {
                compile_file(file, set, format)?.plan
            };
            run_plan(&plan, out.as_deref(), format)
        }
    }
}

fn is_plan(file: &Path) -> bool {
    matches!(
        file.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn compile_file(file: &Path, set: &[String], format: ErrorFormat) -> Result<Compiled, Failure> {
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

/// `runs/<name>-<UTC timestamp>`, unless `--out` names the folder.
fn run_folder(plan: &Plan, out: Option<&Path>, format: ErrorFormat) -> Result<PathBuf, Failure> {
    if let Some(dir) = out {
        let non_empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if non_empty || dir.is_file() {
            plain_error(
                "kd::run::out_exists",
                &format!("the run folder `{}` already exists and is not empty; kdc never overwrites a run", dir.display()),
                format,
            );
            return Err(Failure::Input);
        }
        std::fs::create_dir_all(dir).map_err(|e| io_failure(dir, &e, format))?;
        return Ok(dir.to_path_buf());
    }
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
            Ok(()) => return Ok(dir),
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

fn run_plan(plan: &Plan, out: Option<&Path>, format: ErrorFormat) -> Result<(), Failure> {
    let dir = run_folder(plan, out, format)?;
    let yaml = plan
        .to_yaml()
        .map_err(|e| Failure::Usage(format!("cannot write the plan: {e}")))?;
    let plan_path = dir.join("plan.yaml");
    std::fs::write(&plan_path, yaml).map_err(|e| io_failure(&plan_path, &e, format))?;
    let progress = if std::io::stderr().is_terminal() {
        kd_runtime::Progress::Bars
    } else {
        kd_runtime::Progress::Lines
    };
    let options = kd_runtime::RunOptions {
        out_dir: dir.clone(),
        progress,
        kdc_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    match kd_runtime::run_plan(plan, &options) {
        Ok(summary) => {
            print!("{}", kd_runtime::report(&summary));
            println!("run folder: {}", dir.display());
            Ok(())
        }
        Err(error) => {
            match format {
                ErrorFormat::Human => eprintln!("{:?}", miette::Report::new(error)),
                ErrorFormat::Json => {
                    let d = to_json(&error, &plan.source.path.display().to_string(), "");
                    if let Ok(line) = serde_json::to_string(&d) {
                        eprintln!("{line}");
                    }
                }
            }
            eprintln!("the run folder keeps what was written: {}", dir.display());
            Err(Failure::Input)
        }
    }
}
