//! Pruned models end to end (`prune(s) { sparsity: ... }`): the zeros are where the masks
//! say and stay there through training, a gradual schedule reaches its target on the
//! stage's last step, and a baseline of a pruned student starts from its weights.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(out: &Path, extra: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(["run", "tests/cases/ok/pruning.kd", "--force", "--out"])
        .arg(out)
        .args(extra)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    common::valid_summary(out)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-pruning-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The exported tensors by name, as f32 values.
fn tensors(file: &Path) -> Vec<(String, Vec<f32>)> {
    let loaded = candle_core::safetensors::load(file, &candle_core::Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = loaded
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn pruned_weights_are_zero_where_the_masks_say_after_training() {
    let out = scratch("run");
    let summary = run(&out, &[]);
    let models = &summary["models"];
    // mlp: linear1.weight [32, 64] and linear2.weight [10, 32] are pruned, 2,368 values.
    let params = models["s"]["params"].as_u64().unwrap();
    assert_eq!(params, 2410);
    assert!(models["s"].get("sparsity").is_none());
    // `half`: 50% at once (1,024 + 160 values), fine-tuned with its mask.
    assert_eq!(models["half"]["pruned_from"], "s");
    assert_eq!(models["half"]["nonzero_params"], 2410 - 1184);
    assert_eq!(models["half"]["sparsity"], 0.5);
    // Its baseline starts from the same pruned weights and keeps the same mask.
    assert_eq!(models["scratch"]["nonzero_params"], 2410 - 1184);
    // `sparse`: cubic to 90% over `ramp`: round(0.9 n) of each tensor after its last step.
    let exported = tensors(&out.join("sparse.safetensors"));
    for (name, values) in &exported {
        let zeros = values.iter().filter(|v| **v == 0.0).count();
        if name.ends_with(".weight") {
            assert_eq!(
                zeros,
                (0.9 * values.len() as f64).round() as usize,
                "{name}"
            );
        } else {
            assert_eq!(zeros, 0, "{name}");
        }
    }
    assert_eq!(models["sparse"]["nonzero_params"], 2410 - 1843 - 288);
    // The sparsity logged per epoch follows the cubic schedule and ends at its target.
    let logged: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["stage"] == "ramp")
        .map(|v| v["sparsity"].as_f64().unwrap())
        .collect();
    assert_eq!(logged.len(), 3);
    assert!(logged.windows(2).all(|w| w[0] < w[1]), "{logged:?}");
    assert_eq!(*logged.last().unwrap(), 0.9);
    // Distillation from the trained teacher still gets somewhere at 90% sparsity.
    let accuracy = models["sparse"]["metrics"]["test"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!(accuracy > 0.3, "{accuracy}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_pruned_model_no_stage_trains_is_made_for_its_evaluation() {
    // `p` is pruned from `s` after every stage, and evaluated and exported as it is.
    let dir = scratch("untrained");
    std::fs::create_dir_all(&dir).unwrap();
    let data = common::root().join("examples/data/digits.csv.gz");
    let file = dir.join("p.kd");
    std::fs::write(
        &file,
        format!(
            r#"pipeline p {{ seed: 2 }}
data digits = csv("{}") {{ label: 64, shape: [1, 8, 8], scale: 16, split {{ train: 0.8, test: 0.2 }} }}
model mlp {{ input [1, 8, 8] flatten linear(32) relu linear(10) as logits }}
student s = mlp
student p = prune(s) {{ sparsity: 30% }}
stage fit {{ train s on digits.train, loss cross_entropy(s.logits, label), optimizer adam, epochs 2 }}
evaluate s, p on digits.test
export p to "p.safetensors"
"#,
            data.display()
        ),
    )
    .unwrap();
    let out = dir.join("run");
    let output = Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = common::valid_summary(&out);
    let pruned = (0.3f64 * 2048.0).round() + (0.3f64 * 320.0).round();
    assert_eq!(
        summary["models"]["p"]["nonzero_params"],
        2410 - pruned as u64
    );
    // Pruning cost something, but not everything.
    let accuracy = |m: &str| {
        summary["models"][m]["metrics"]["test"]["accuracy"]
            .as_f64()
            .unwrap()
    };
    assert!(
        accuracy("p") > 0.5 * accuracy("s"),
        "{} {}",
        accuracy("p"),
        accuracy("s")
    );
    let zeros: usize = tensors(&out.join("p.safetensors"))
        .iter()
        .map(|(_, v)| v.iter().filter(|x| **x == 0.0).count())
        .sum();
    assert_eq!(zeros, pruned as usize);
    let _ = std::fs::remove_dir_all(&dir);
}
