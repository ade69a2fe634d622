//! The PyTorch reference: `torch_ref.py` run in its own venv, one case per process.

use std::path::PathBuf;
use std::process::Command;

/// Where PyTorch and the reference script are.
#[derive(Debug, Clone)]
pub struct TorchRef {
    pub python: PathBuf,
    pub script: PathBuf,
}

impl TorchRef {
    /// `python` if given, else `$KDC_TORCH_PYTHON`, else the venv torch_ref.py's set-up
    /// makes (`~/.cache/torch-ref`); `None` with the reason when there is no usable one.
    pub fn find(python: Option<PathBuf>, script: PathBuf) -> std::result::Result<TorchRef, String> {
        let python = python
            .or_else(|| std::env::var_os("KDC_TORCH_PYTHON").map(PathBuf::from))
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".cache/torch-ref/bin/python"))
            })
            .ok_or("no Python given and no HOME to look in")?;
        if !python.exists() {
            return Err(format!("`{}` does not exist", python.display()));
        }
        if !script.exists() {
            return Err(format!("`{}` does not exist", script.display()));
        }
        let reference = TorchRef { python, script };
        let probe = reference
            .command()
            .args(["-c", "import torch"])
            .output()
            .map_err(|e| format!("cannot start `{}`: {e}", reference.python.display()))?;
        if !probe.status.success() {
            return Err(format!(
                "`{}` cannot import torch",
                reference.python.display()
            ));
        }
        Ok(reference)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.python);
        // Settings for Debian's OpenBLAS that would slow down PyPI's PyTorch (as
        // torch_ref.py's own instructions say).
        command
            .env_remove("OPENBLAS_CORETYPE")
            .env_remove("OPENBLAS_L2_SIZE");
        command
    }

    /// Makes sure the venv can import `module`, installing `requirement` from PyPI with
    /// its pip when it cannot.
    pub fn ensure(&self, module: &str, requirement: &str) -> std::result::Result<(), String> {
        let imports = |reference: &TorchRef| {
            reference
                .command()
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if imports(self) {
            return Ok(());
        }
        let install = self
            .command()
            .args(["-m", "pip", "install", "--quiet", requirement])
            .output()
            .map_err(|e| format!("cannot start pip: {e}"))?;
        if !install.status.success() || !imports(self) {
            let stderr = String::from_utf8_lossy(&install.stderr);
            let last = stderr.lines().last().unwrap_or("");
            return Err(format!("installing `{requirement}` failed: {last}"));
        }
        Ok(())
    }

    /// Runs one case (with `extra` arguments); the last JSON object it prints, or why
    /// there is none.
    pub fn run(
        &self,
        case: &str,
        steps: usize,
        threads: usize,
        extra: &[String],
    ) -> std::result::Result<serde_json::Value, String> {
        self.run_all(case, steps, threads, extra)?
            .pop()
            .ok_or_else(|| format!("torch_ref.py --case {case} printed no JSON"))
    }

    /// Runs one case (with `extra` arguments); every JSON object it prints, or why there
    /// is none.
    pub fn run_all(
        &self,
        case: &str,
        steps: usize,
        threads: usize,
        extra: &[String],
    ) -> std::result::Result<Vec<serde_json::Value>, String> {
        let output = self
            .command()
            .arg(&self.script)
            .args(["--case", case, "--steps", &steps.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(extra)
            .output()
            .map_err(|e| format!("cannot start `{}`: {e}", self.python.display()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().last().unwrap_or("");
            return Err(format!("torch_ref.py --case {case} failed: {last}"));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let values: Vec<serde_json::Value> = stdout
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        match values.is_empty() {
            true => Err(format!("torch_ref.py --case {case} printed no JSON")),
            false => Ok(values),
        }
    }
}
