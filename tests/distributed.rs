//! Data-parallel runs (docs/distributed.md). Built with `--features mpi` and run under
//! Open MPI's `mpirun` (`.ci/run` installs it): one step with 2 or 4 ranks gives the
//! weights one process gives, to rounding; two runs with the same number of ranks are
//! bitwise equal; 1, 2 and 4 ranks end within seed-to-seed noise of each other; a killed
//! rank stops the run, which resumes bitwise under the same number of ranks and runs to
//! its end under another; and launchers that do not add up are diagnostics. The last
//! need no MPI and run in every build.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A fresh, empty folder for one test (the run folders go inside it).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-dist-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `kdc run` alone, with these launcher variables set.
fn kdc_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kdc"));
    command.args(args).current_dir(root());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("kdc runs")
}

#[test]
fn a_launcher_placement_that_does_not_add_up_is_a_diagnostic() {
    let dir = scratch("placement").join("run");
    let dir = dir.display().to_string();
    let args = ["run", "examples/digits.kd", "--out", &dir];
    let cases = [
        (
            [("OMPI_COMM_WORLD_RANK", "5"), ("OMPI_COMM_WORLD_SIZE", "2")],
            "rank 5 of a world of 2",
        ),
        (
            [("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "two")],
            "`SLURM_STEP_NUM_TASKS` is `two`",
        ),
    ];
    for (env, expected) in cases {
        let output = kdc_with_env(&args, &env);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(text.contains("kd::run::distributed"), "{text}");
        assert!(text.contains(expected), "{text}");
        assert!(!Path::new(&dir).exists(), "nothing is written");
    }
}

/// Several ranks in a kdc built without MPI: a diagnostic that says how to build it.
#[cfg(not(feature = "mpi"))]
#[test]
fn several_ranks_need_the_mpi_build() {
    let dir = scratch("no-mpi").join("run");
    let dir = dir.display().to_string();
    let env = [("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")];
    let output = kdc_with_env(&["run", "examples/digits.kd", "--out", &dir], &env);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("built without MPI"), "{text}");
    assert!(text.contains("--features mpi"), "{text}");
}

#[cfg(feature = "mpi")]
mod mpi {
    use super::*;
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    /// `mpirun` with `ranks` processes of `kdc args` (oversubscribed: the tests run more
    /// ranks than this machine has cores).
    fn mpirun(ranks: usize, args: &[&str]) -> Command {
        let mut command = Command::new("mpirun");
        command
            // Open MPI ends the job past two minutes: a hang fails the test, not CI.
            .args([
                "-np",
                &ranks.to_string(),
                "--oversubscribe",
                "--timeout",
                "120",
            ])
            .arg(env!("CARGO_BIN_EXE_kdc"))
            .args(args)
            .current_dir(root())
            // Open MPI refuses root unless told; CI containers run as root.
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        command
    }

    fn run(ranks: usize, args: &[&str]) -> Output {
        let output = mpirun(ranks, args).output().expect("mpirun starts");
        assert!(
            output.status.success(),
            "{ranks} ranks: {}",
            stderr(&output)
        );
        output
    }

    fn values(dir: &Path, file: &str) -> Vec<(String, Vec<f32>)> {
        let tensors =
            candle_core::safetensors::load(dir.join(file), &candle_core::Device::Cpu).unwrap();
        let mut out: Vec<(String, Vec<f32>)> = tensors
            .into_iter()
            .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn summary(dir: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
    }

    fn accuracy(dir: &Path, model: &str) -> f64 {
        summary(dir)["models"][model]["metrics"]["test"]["accuracy"]
            .as_f64()
            .unwrap()
    }

    #[test]
    fn one_step_on_several_ranks_gives_the_weights_of_one_process() {
        // Each stage of mlp.kd is one step over the whole train split (batch 2048).
        let base = scratch("one-step");
        let mut weights = Vec::new();
        for ranks in [1, 2, 4] {
            let dir = base.join(format!("n{ranks}"));
            let out = dir.display().to_string();
            run(ranks, &["run", "tests/distributed/mlp.kd", "--out", &out]);
            weights.push((ranks, values(&dir, "teacher.safetensors")));
            weights.push((ranks, values(&dir, "student.safetensors")));
        }
        let (one, rest) = weights.split_at(2);
        for (i, (ranks, tensors)) in rest.iter().enumerate() {
            for ((name, a), (_, b)) in one[i % 2].1.iter().zip(tensors) {
                let largest = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    worst <= 1e-5 * largest.max(1.0),
                    "{ranks} ranks: `{name}` is {worst} away from one process's"
                );
            }
        }
        // And the whole split went through the teacher once in the distilling stage.
        for ranks in [1, 2, 4] {
            let stages = summary(&base.join(format!("n{ranks}")))["stages"].clone();
            assert_eq!(stages[1]["teacher_forwards"], 1078, "{ranks} ranks");
        }
    }

    /// The digits example, short, with a checkpoint every 7 steps.
    fn digits(out: &Path, epochs: usize) -> Vec<String> {
        let mut args: Vec<String> = ["run", "examples/digits.kd", "--out"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(out.display().to_string());
        for set in [
            format!("stage.teach.epochs={epochs}"),
            format!("stage.distill.epochs={epochs}"),
            "pipeline.digits.checkpoint_every=7".into(),
            "pipeline.digits.threads=1".into(),
        ] {
            args.push("--set".into());
            args.push(set);
        }
        args
    }

    fn strs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }

    /// What two runs that compute the same must share: the exports byte for byte and the
    /// summary and metrics without their timings.
    fn outcome(dir: &Path) -> (Vec<Vec<u8>>, serde_json::Value, Vec<serde_json::Value>) {
        let exports = ["teacher", "student", "baseline"]
            .iter()
            .map(|m| std::fs::read(dir.join(format!("{m}.safetensors"))).unwrap())
            .collect();
        let mut summary = summary(dir);
        summary.as_object_mut().unwrap().remove("peak_rss_mb");
        for stage in summary["stages"].as_array_mut().unwrap() {
            let stage = stage.as_object_mut().unwrap();
            stage.remove("seconds");
            stage.remove("samples_per_s");
        }
        for (_, model) in summary["models"].as_object_mut().unwrap() {
            model.as_object_mut().unwrap().remove("latency_ms");
        }
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|line| {
                let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
                v.as_object_mut().unwrap().remove("seconds");
                v
            })
            .collect();
        (exports, summary, metrics)
    }

    #[test]
    fn two_runs_on_the_same_number_of_ranks_are_bitwise_equal() {
        let base = scratch("repeat");
        let (a, b) = (base.join("a"), base.join("b"));
        run(2, &strs(&digits(&a, 2)));
        run(2, &strs(&digits(&b, 2)));
        assert!(outcome(&a) == outcome(&b), "two runs on 2 ranks differ");
        // The rank that writes is the only one that wrote: one summary, one log.
        let lines = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 6, "{lines}");
    }

    #[test]
    fn one_two_and_four_ranks_end_within_seed_to_seed_noise() {
        let base = scratch("ranks");
        // What changing the seed alone does to one process's teacher and student.
        let mut by_seed = Vec::new();
        for seed in 7..10 {
            let dir = base.join(format!("seed{seed}"));
            let mut args = digits(&dir, 4);
            args.extend(["--set".into(), format!("pipeline.digits.seed={seed}")]);
            run(1, &strs(&args));
            by_seed.push((accuracy(&dir, "t"), accuracy(&dir, "s")));
        }
        let spread = |pick: fn(&(f64, f64)) -> f64| {
            let v: Vec<f64> = by_seed.iter().map(pick).collect();
            v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min)
        };
        let (teacher_noise, student_noise) = (spread(|p| p.0), spread(|p| p.1));
        for ranks in [2, 4] {
            let dir = base.join(format!("n{ranks}"));
            run(ranks, &strs(&digits(&dir, 4)));
            let (t, s) = (accuracy(&dir, "t"), accuracy(&dir, "s"));
            // Seed 7 is the first of the seeds above.
            let (t1, s1) = by_seed[0];
            assert!(
                (t - t1).abs() <= teacher_noise.max(0.01),
                "{ranks} ranks: teacher {t} against {t1}, seeds spread {teacher_noise}"
            );
            assert!(
                (s - s1).abs() <= student_noise.max(0.01),
                "{ranks} ranks: student {s} against {s1}, seeds spread {student_noise}"
            );
        }
    }

    #[test]
    fn ranks_that_compiled_different_plans_are_refused_before_anything_runs() {
        let dir = scratch("plans").join("run");
        let out = dir.display().to_string();
        let kdc = env!("CARGO_BIN_EXE_kdc");
        // Two programs in one world (MPMD): rank 1 overrides a setting rank 0 does not.
        let output = Command::new("mpirun")
            .args([
                "-np",
                "1",
                kdc,
                "run",
                "examples/digits.kd",
                "--out",
                &out,
                ":",
            ])
            .args(["-np", "1", kdc, "run", "examples/digits.kd", "--out", &out])
            .args(["--set", "stage.teach.epochs=1"])
            .current_dir(root())
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .output()
            .unwrap();
        let text = stderr(&output);
        assert!(!output.status.success(), "{text}");
        assert!(text.contains("kd::run::distributed"), "{text}");
        assert!(
            text.contains("the ranks disagree about the Plan: rank 1"),
            "{text}"
        );
        assert!(!dir.join("plan.yaml").exists(), "nothing ran");
    }

    #[test]
    fn empty_shards_clipping_and_early_stopping_keep_the_ranks_together() {
        // 1,078 training digits in batches of 359: the last batch has one row, so three of
        // four ranks have none; the teacher clips its gradients and stops early.
        let base = scratch("edges");
        let mut outcomes = Vec::new();
        for name in ["a", "b"] {
            let dir = base.join(name);
            let mut args = digits(&dir, 3);
            for set in [
                "stage.teach.batch=359",
                "stage.distill.batch=359",
                "stage.teach.clip=0.5",
                "stage.teach.early_stop=1",
            ] {
                args.extend(["--set".into(), set.into()]);
            }
            run(4, &strs(&args));
            outcomes.push(outcome(&dir));
        }
        assert!(outcomes[0] == outcomes[1], "two runs on 4 ranks differ");
    }

    /// The ranks `mpirun` started (its children).
    fn ranks_of(mpirun: &Child) -> Vec<u32> {
        let found = Command::new("pgrep")
            .args(["-P", &mpirun.id().to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&found.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    #[test]
    fn a_killed_rank_stops_the_run_which_resumes_on_any_number_of_ranks() {
        let base = scratch("kill");
        let whole = base.join("whole");
        run(2, &strs(&digits(&whole, 6)));
        let mut moments = [900u64, 1500, 2100].into_iter();
        let mut resumed_bitwise = false;
        for attempt in 0..3 {
            let dir = base.join(format!("killed{attempt}"));
            let mut child = mpirun(2, &strs(&digits(&dir, 6)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(moments.next().unwrap_or(1000)));
            let ranks = ranks_of(&child);
            if child.try_wait().unwrap().is_some() || ranks.len() < 2 {
                continue; // it finished first on this machine: try a shorter moment
            }
            // SIGKILL to rank 1 alone: mpirun must stop rank 0 too, not leave it waiting.
            let _ = Command::new("kill")
                .args(["-9", &ranks[1].to_string()])
                .status();
            let started = Instant::now();
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "a rank died and the others still run after a minute"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            if dir.join("summary.json").is_file() {
                continue; // killed as it finished
            }
            let out = dir.display().to_string();
            // The same folder resumed under 3 ranks, from a copy.
            let other = base.join(format!("other{attempt}"));
            let other_out = other.display().to_string();
            assert!(Command::new("cp")
                .args(["-r", &out, &other_out])
                .status()
                .unwrap()
                .success());
            run(2, &["run", "--resume", &out]);
            assert!(
                outcome(&dir) == outcome(&whole),
                "resumed on 2 ranks, the run differs"
            );
            resumed_bitwise = true;
            run(3, &["run", "--resume", &other_out]);
            let (steps, whole_steps): (Vec<_>, Vec<_>) = summary(&other)["stages"]
                .as_array()
                .unwrap()
                .iter()
                .zip(summary(&whole)["stages"].as_array().unwrap())
                .map(|(a, b)| (a["steps"].clone(), b["steps"].clone()))
                .unzip();
            assert_eq!(
                steps, whole_steps,
                "resumed on 3 ranks, every stage ran to its end"
            );
            break;
        }
        assert!(resumed_bitwise, "no kill landed inside the run");
    }
}
