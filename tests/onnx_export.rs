//! kdc's ONNX exports: onnx's full checker accepts them, onnxruntime computes what kdc
//! computes (within 1e-4, on real digits), and kdc loads its own export back as a teacher
//! that predicts what the exported student predicted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kdc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// The Python with onnxruntime (made from PyPI on first use by scripts/python-env.sh).
fn python() -> String {
    let output = Command::new("bash")
        .arg(root().join("scripts/python-env.sh"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn an_onnx_export_runs_in_onnxruntime_and_back_in_kdc() {
    let base = std::env::temp_dir().join(format!("kdc-onnx-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let run = base.join("run");
    let output = kdc(&[
        "run",
        "tests/onnx/export.kd",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // onnxruntime on the first 100 digits.
    let ort = base.join("ort.json");
    let status = Command::new(python())
        .args([
            root().join("tests/onnx/run_export.py").to_str().unwrap(),
            run.join("student.onnx").to_str().unwrap(),
            "100",
            ort.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let ort: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ort).unwrap()).unwrap();
    let rows = |v: &serde_json::Value| -> Vec<Vec<f32>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    };

    // kdc's own forward of the trained student on the same inputs.
    let source = std::fs::read_to_string(root().join("tests/onnx/export.kd")).unwrap();
    let plan = kd_compiler::compile(&source, &root().join("tests/onnx/export.kd"), &[])
        .unwrap()
        .plan;
    let spec = plan.model("s").unwrap();
    let mut model = kd_runtime::model::Model::new(spec, 0).unwrap();
    model
        .load_weights(&run.join("student.safetensors"))
        .unwrap();
    let inputs = rows(&ort["inputs"]);
    let x = Tensor::from_vec(inputs.concat(), (inputs.len(), 1, 8, 8), &Device::Cpu).unwrap();
    let ours = model.forward(&x, false).unwrap();
    let ours = ours
        .iter()
        .find(|(p, _)| p == "output")
        .unwrap()
        .1
        .to_vec2::<f32>()
        .unwrap();
    let theirs = rows(&ort["outputs"]);
    assert_eq!(ours.len(), theirs.len());
    let difference = ours
        .iter()
        .flatten()
        .zip(theirs.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        difference < 1e-4,
        "onnxruntime differs from kdc by {difference}"
    );

    // kdc loads its export as a teacher: the same predictions on the same test split.
    let reload = base.join("reload.kd");
    let data = root().join("examples/data/digits.csv.gz");
    std::fs::write(
        &reload,
        format!(
            r#"pipeline export {{ seed: 5 }}
data digits = csv("{}") {{
  header: false, label: 64, shape: [1, 8, 8], scale: 16, normalize: none
  split {{ train: 0.7, test: 0.3 }}
}}
teacher t = onnx("run/student.onnx") {{ input "input", output "output" }}
evaluate t on digits.test {{ accuracy }}
"#,
            data.display()
        ),
    )
    .unwrap();
    let again = base.join("again");
    let output = kdc(&[
        "run",
        reload.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exported = &summary(&run)["models"]["s"]["metrics"]["test"];
    let reloaded = &summary(&again)["models"]["t"]["metrics"]["test"];
    assert_eq!(exported["n"], reloaded["n"]);
    assert_eq!(exported["confusion"], reloaded["confusion"]);
    // The file's initializers also hold the batch-norm statistics (2 x (6 + 8)) and GELU's
    // three constants.
    let params = |s: &serde_json::Value, m: &str| s["models"][m]["params"].as_u64().unwrap();
    assert_eq!(
        params(&summary(&again), "t"),
        params(&summary(&run), "s") + 2 * (6 + 8) + 3
    );
}
