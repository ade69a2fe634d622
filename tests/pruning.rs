//! Pruned models end to end (`prune(s) { sparsity: ... }`): the zeros are where the masks
//! say and stay there through training, a gradual schedule reaches its target on the
//! stage's last step, and a baseline of a pruned student starts from its weights.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// `kdc run FILE --out OUT EXTRA...` from the repository's root, which must succeed: the
/// run's summary (checked against its schema) and what it printed.
fn run_file(file: &Path, out: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kdc"))
        .arg("run")
        .arg(file)
        .arg("--out")
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
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    (common::valid_summary(out), stdout)
}

fn run(out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--force"];
    args.extend(extra);
    run_file(Path::new("tests/cases/ok/pruning.kd"), out, &args).0
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
    // Its baseline is pruned alike, over its copy of `ramp`.
    assert_eq!(models["alone"]["nonzero_params"], 2410 - 1843 - 288);
    assert_eq!(models["alone"]["sparsity"], models["sparse"]["sparsity"]);
    // The sparsity logged per epoch follows the cubic schedule and ends at its target.
    let logged: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["stage"] == "ramp" || v["stage"] == "alone/ramp")
        .map(|v| v["sparsity"].as_f64().unwrap())
        .collect();
    assert_eq!(logged.len(), 6);
    assert_eq!(logged[..3], logged[3..]);
    assert!(logged[..3].windows(2).all(|w| w[0] < w[1]), "{logged:?}");
    assert_eq!(logged[2], 0.9);
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
    let (summary, _) = run_file(&file, &out, &[]);
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

/// A pipeline of `model` (its layers), `student s` and `student thin`, pruned by neurons.
fn neuron_plan(layers: &str) -> kd_plan::Plan {
    let data = common::root().join("examples/data/digits.csv.gz");
    let text = format!(
        r#"data digits = csv("{}") {{ label: 64, shape: [1, 8, 8], scale: 16 }}
model m {{ input [1, 8, 8] {layers} }}
student s = m
student thin = prune(s) {{ sparsity: 40%, granularity: neurons }}
stage fit {{ train s on digits.train, loss cross_entropy(s.logits, label), optimizer adam, epochs 1 }}
evaluate thin on digits.train
"#,
        data.display()
    );
    let path = std::env::temp_dir().join("kdc-pruning-neurons.kd");
    kd_compiler::compile(&text, &path, &[])
        .unwrap_or_else(|e| panic!("{e:?}"))
        .plan
}

#[test]
fn removing_neurons_computes_what_the_wide_model_computes_without_them() {
    // The narrow model equals the wide one whose removed neurons' readers ignore them
    // (their columns zeroed): in eval mode, batch norms, pools and flatten included.
    use candle_core::{Device, Tensor};
    use kd_runtime::model::Model;
    let cases = [
        "conv2d(6, kernel: 3, padding: 1) batchnorm relu conv2d(5, kernel: 3) relu maxpool(2) \
         flatten linear(12) batchnorm gelu dropout(0.2) linear(10) as logits",
        "flatten linear(20) tanh linear(9) relu linear(10) as logits",
        // A batch norm after `flatten` keeps the conv's channels; the linear after it goes.
        "conv2d(4, kernel: 3) relu flatten batchnorm linear(12) relu linear(10) as logits",
        // Before a block with a projection shortcut: the shortcut and the body's first
        // conv read the channels; inside the body, the first conv's channels go too.
        "conv2d(6, kernel: 3, padding: 1) batchnorm relu \
         residual { conv2d(8, kernel: 3, stride: 2, padding: 1) batchnorm relu \
         conv2d(8, kernel: 3, padding: 1) batchnorm } relu flatten linear(10) as logits",
        // A body that starts with a batch norm; then a block that adds its input back
        // unchanged, whose input keeps its width.
        "conv2d(6, kernel: 3, padding: 1) relu residual { batchnorm relu conv2d(8, kernel: 3, padding: 1) } \
         residual { conv2d(5, kernel: 3, padding: 1) relu conv2d(8, kernel: 3, padding: 1) } \
         avgpool(2) flatten linear(10) as logits",
    ];
    for layers in cases {
        let plan = neuron_plan(layers);
        let spec = |name: &str| plan.models.iter().find(|m| m.name == name).unwrap();
        let (wide_spec, thin_spec) = (spec("s"), spec("thin"));
        let groups = &thin_spec.pruned.as_ref().unwrap().neurons;
        assert!(!groups.is_empty());
        assert!(thin_spec.params < wide_spec.params);
        let wide = Model::new(wide_spec, 5).unwrap();
        // Batch norms with running statistics of their own, so that slicing them matters.
        for (name, var) in wide.state() {
            if name.contains("running") || name.starts_with("bn") {
                let noise = common::random(var.dims(), name.len() as u64);
                let value = if name.ends_with("running_var") {
                    (noise.abs().unwrap() + 0.5).unwrap()
                } else {
                    noise
                };
                var.set(&value).unwrap();
            }
        }
        let mut thin = Model::new(thin_spec, 5).unwrap();
        thin.take_neurons(&wide, groups).unwrap();
        // Which neurons were kept: the thin layer's biases are some of the wide one's (its
        // weight rows lose the columns of the neurons pruned before it).
        let rows = |m: &Model, name: &str| -> Vec<f32> {
            let (_, t) = m.state().find(|(n, _)| *n == name).unwrap();
            t.as_tensor().to_vec1::<f32>().unwrap()
        };
        let mut reference = Model::new(wide_spec, 5).unwrap();
        reference.take_weights(&wide).unwrap();
        for group in groups {
            let bias = format!("{}.bias", group.layer);
            let (wide_rows, thin_rows) = (rows(&wide, &bias), rows(&thin, &bias));
            let kept: Vec<usize> = thin_rows
                .iter()
                .map(|r| wide_rows.iter().position(|w| w == r).unwrap())
                .collect();
            assert!(kept.windows(2).all(|w| w[0] < w[1]), "kept in order");
            assert_eq!(kept.len(), group.keep);
            // Zero the readers' columns of every removed neuron in the reference.
            for reader in &group.readers {
                let reader = format!("{reader}.weight");
                let (_, var) = reference.state().find(|(n, _)| *n == reader).unwrap();
                let dims = var.dims().to_vec();
                let columns: usize = dims[1..].iter().product::<usize>() / dims[1];
                let mut values = var
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let per_neuron = group.block * columns;
                let row = dims[1] * columns;
                for r in 0..dims[0] {
                    for neuron in (0..group.from).filter(|k| !kept.contains(k)) {
                        for c in 0..per_neuron {
                            values[r * row + neuron * per_neuron + c] = 0.0;
                        }
                    }
                }
                var.set(&Tensor::from_vec(values, dims.as_slice(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        // Gradually: the wide model with the same share of neurons masked computes what
        // the narrow model made from it computes.
        let mut masked = Model::new(wide_spec, 5).unwrap();
        masked.take_weights(&wide).unwrap();
        let sparsity = thin_spec.pruned.as_ref().unwrap().sparsity.ends().1;
        masked.mask_neurons(groups, sparsity).unwrap();
        let mut narrowed = Model::new(thin_spec, 5).unwrap();
        narrowed.take_unmasked_neurons(&masked, groups).unwrap();
        let x = common::random(&[7, 1, 8, 8], 3);
        let out = |m: &mut Model| -> Vec<f32> {
            let ports = m.forward_with(&x, false, false, false).unwrap();
            let (_, logits) = ports.iter().find(|(n, _)| n == "output").unwrap();
            logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (a, b) = (out(&mut reference), out(&mut thin));
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                "{layers}: {a:?} vs {b:?}"
            );
        }
        let (a, b) = (out(&mut masked), out(&mut narrowed));
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                "{layers}, masked: {a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn a_model_pruned_by_neurons_is_smaller_and_trains() {
    let out = scratch("neurons");
    let (summary, _) = run_file(Path::new("tests/cases/ok/pruning_neurons.kd"), &out, &[]);
    let models = &summary["models"];
    assert_eq!(models["s"]["params"], 15790);
    // conv1 16 -> 8, conv3 12 -> 6, linear1 48 -> 24; the residual block, the tapped
    // `hidden` and the output keep their widths.
    assert_eq!(models["thin"]["params"], 6928);
    assert_eq!(models["thin"]["nonzero_params"], 6928);
    assert!(models["thin"].get("sparsity").is_none());
    let shapes: Vec<(String, Vec<usize>)> =
        candle_core::safetensors::load(out.join("thin.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec()))
            .collect();
    let shape = |name: &str| shapes.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(shape("conv1.weight"), [8, 1, 3, 3]);
    assert_eq!(shape("bn1.running_var"), [8]);
    assert_eq!(shape("conv2.weight"), [16, 8, 3, 3]);
    assert_eq!(shape("conv3.weight"), [6, 16, 1, 1]);
    assert_eq!(shape("linear1.weight"), [24, 96]);
    assert_eq!(shape("linear2.weight"), [24, 24]);
    let bytes = std::fs::metadata(out.join("thin.onnx")).unwrap().len();
    assert!(bytes < 4 * 15790, "{bytes}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_compression_chain_is_reported_side_by_side() {
    // teacher -> distilled -> neuron-pruned -> int8: the terminal's chain table lists them
    // in that order, each smaller than the one before, and the summary has every file.
    let out = scratch("chain");
    let (summary, stdout) = run_file(Path::new("tests/cases/ok/compress_chain.kd"), &out, &[]);
    let table = &stdout[stdout.find("compression").expect("a chain table")..];
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(3)
        .take(4)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(names, ["t", "s", "pruned", "int8"], "{table}");
    assert_eq!(rows[3][1], "pruned");
    assert_eq!(rows[3][2], "int8");
    let ratio = |r: &Vec<&str>| {
        r.last()
            .unwrap()
            .trim_end_matches('x')
            .parse::<f64>()
            .unwrap()
    };
    assert!(
        rows.windows(2).all(|w| ratio(&w[0]) < ratio(&w[1])),
        "{table}"
    );
    let files = &summary["models"]["int8"]["files"];
    let size = |f: &str| files[f].as_u64().unwrap();
    assert_eq!(
        size("int8.safetensors"),
        std::fs::metadata(out.join("int8.safetensors"))
            .unwrap()
            .len()
    );
    assert!(size("int8.onnx") > 0);
    let pruned = summary["models"]["pruned"]["files"]["pruned.safetensors"]
        .as_u64()
        .unwrap();
    // int8 weights are a quarter of the f32 bytes; the header, the scales and the f32
    // biases and norms weigh more on a model this small (3,844 of 10,096 bytes here).
    assert!(2 * size("int8.safetensors") < pruned, "{pruned}");
    assert_eq!(summary["models"]["int8"]["precision"], "int8");
    let _ = std::fs::remove_dir_all(&out);
}

/// The int8 tensors of a safetensors file, by name (its JSON header gives each tensor's
/// dtype and byte range).
fn int8_tensors(file: &Path) -> Vec<(String, Vec<i8>)> {
    let bytes = std::fs::read(file).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let data = &bytes[8 + len..];
    let mut out: Vec<(String, Vec<i8>)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, t)| t["dtype"] == "I8")
        .map(|(name, t)| {
            let range = t["data_offsets"].as_array().unwrap();
            let (start, end) = (
                range[0].as_u64().unwrap() as usize,
                range[1].as_u64().unwrap() as usize,
            );
            (
                name.clone(),
                data[start..end].iter().map(|b| *b as i8).collect(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_quantisation_aware_model_from_a_pruned_one_keeps_its_zeros() {
    // No stage uses `sparse`: it is made when `qat`, made from it, is, and `qat` trains
    // with its masks, so its int8 weights are at least as sparse as `sparse` was made.
    let out = scratch("aware");
    let (summary, _) = run_file(
        Path::new("tests/cases/ok/quantize_aware_pruned.kd"),
        &out,
        &[],
    );
    let int8 = int8_tensors(&out.join("qat.safetensors"));
    let names: Vec<&str> = int8.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["linear1.weight", "linear2.weight"]);
    for (name, values) in &int8 {
        let zeros = values.iter().filter(|v| **v == 0).count();
        assert!(
            zeros as f64 >= 0.6 * values.len() as f64,
            "{name}: {zeros} of {} are zero",
            values.len()
        );
    }
    let models = &summary["models"];
    assert_eq!(models["qat"]["quantization"], "aware");
    assert!(
        models["qat"]["metrics"]["test"]["accuracy"]
            .as_f64()
            .unwrap()
            > 0.8
    );
    let _ = std::fs::remove_dir_all(&out);
}
