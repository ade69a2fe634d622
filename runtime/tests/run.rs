//! End to end: a hand-built Plan (train a teacher, distill a student, train a baseline)
//! on three Gaussian blobs, run twice with the same seed and once with another.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::path::{Path, PathBuf};

use common::*;
use kd_plan::*;
use kd_runtime::{report, run_plan, Progress, RunOptions, Summary};

fn layer(name: &str, layer: Layer, input: Vec<usize>, output: Vec<usize>) -> LayerSpec {
    LayerSpec {
        name: name.into(),
        layer,
        input,
        output,
        params: 0,
        flops: 0,
        span: Span::default(),
    }
}

fn mlp(name: &str, role: Role, hidden: usize, init_key: &str) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        architecture: format!("mlp{hidden}"),
        role,
        input: vec![2],
        layers: vec![
            layer(
                "fc1",
                Layer::Linear {
                    out: hidden,
                    bias: true,
                },
                vec![2],
                vec![hidden],
            ),
            layer("act", Layer::Relu, vec![hidden], vec![hidden]),
            layer(
                "fc2",
                Layer::Linear { out: 3, bias: true },
                vec![hidden],
                vec![3],
            ),
        ],
        taps: vec![],
        init_from: None,
        onnx: None,
        pruned: None,
        quantized: None,
        bert: None,
        tokens: false,
        precision: Default::default(),
        init_key: init_key.into(),
        params: 2 * hidden + hidden + 3 * hidden + 3,
        flops: 0,
        span: Span::default(),
    }
}

fn ty(kind: Kind, shape: Vec<usize>) -> TensorType {
    TensorType { kind, shape }
}

struct GraphBuilder<'a> {
    graph: &'a mut Graph,
    stage: String,
    nodes: Vec<NodeId>,
}

impl GraphBuilder<'_> {
    fn node(&mut self, op: Op, kind: Kind, args: &[(NodeId, &str)]) -> NodeId {
        let id = self.graph.add_node(Node {
            stage: self.stage.clone(),
            op,
            ty: ty(kind, vec![]),
            span: Span::default(),
        });
        for (arg, (source, port)) in args.iter().enumerate() {
            let kind = if *port == "label" {
                Kind::Labels
            } else {
                self.graph[*source].ty.kind
            };
            self.graph.add_edge(
                *source,
                id,
                Edge {
                    port: port.to_string(),
                    arg,
                    ty: ty(kind, vec![]),
                },
            );
        }
        self.nodes.push(id);
        id
    }
}

fn stage(
    name: &str,
    kind: StageKind,
    trains: &str,
    frozen: Vec<String>,
    loss: NodeId,
    nodes: Vec<NodeId>,
    epochs: usize,
) -> Stage {
    Stage {
        name: name.into(),
        kind,
        trains: trains.into(),
        frozen,
        data: "blobs".into(),
        split: "train".into(),
        augment: None,
        loss,
        nodes,
        epochs,
        batch: 32,
        optimizer: Optimizer::Adam {
            lr: 0.02,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        schedule: Schedule {
            kind: ScheduleKind::Cosine { min_lr: 0.001 },
            warmup_epochs: 1,
        },
        clip: Some(5.0),
        validate: None,
        baseline_of: None,
        span: Span::default(),
        projections: Vec::new(),
    }
}

/// A train stage: batch -> forward(model) -> cross_entropy -> loss.
fn train_stage(graph: &mut Graph, name: &str, model: &str, epochs: usize) -> Stage {
    let mut g = GraphBuilder {
        graph,
        stage: name.into(),
        nodes: vec![],
    };
    let batch = g.node(
        Op::Batch {
            data: "blobs".into(),
            split: "train".into(),
        },
        Kind::Input,
        &[],
    );
    let forward = g.node(
        Op::Forward {
            model: model.into(),
            train: true,
        },
        Kind::Logits,
        &[(batch, "x")],
    );
    let ce = g.node(
        Op::CrossEntropy,
        Kind::Scalar,
        &[(forward, "output"), (batch, "label")],
    );
    let loss = g.node(Op::Loss, Kind::Scalar, &[(ce, "out")]);
    let nodes = g.nodes;
    stage(name, StageKind::Train, model, vec![], loss, nodes, epochs)
}

/// 0.7 * T^2 * KL(softmax(t/T) || softmax(s/T)) + 0.3 * CE(s, y), T = 2.
fn distill_stage(graph: &mut Graph, epochs: usize) -> Stage {
    let mut g = GraphBuilder {
        graph,
        stage: "distill".into(),
        nodes: vec![],
    };
    let batch = g.node(
        Op::Batch {
            data: "blobs".into(),
            split: "train".into(),
        },
        Kind::Input,
        &[],
    );
    let teacher = g.node(
        Op::Forward {
            model: "t".into(),
            train: false,
        },
        Kind::Logits,
        &[(batch, "x")],
    );
    let student = g.node(
        Op::Forward {
            model: "s".into(),
            train: true,
        },
        Kind::Logits,
        &[(batch, "x")],
    );
    let temperature = g.node(Op::Const { value: 2.0 }, Kind::Scalar, &[]);
    let p = g.node(
        Op::Softmax,
        Kind::Probabilities,
        &[(teacher, "output"), (temperature, "out")],
    );
    let q = g.node(
        Op::Softmax,
        Kind::Probabilities,
        &[(student, "output"), (temperature, "out")],
    );
    let kl = g.node(Op::Kl, Kind::Scalar, &[(p, "out"), (q, "out")]);
    let two = g.node(Op::Const { value: 2.0 }, Kind::Scalar, &[]);
    let t_squared = g.node(Op::Pow, Kind::Scalar, &[(temperature, "out"), (two, "out")]);
    let scaled = g.node(Op::Mul, Kind::Scalar, &[(kl, "out"), (t_squared, "out")]);
    let alpha = g.node(Op::Const { value: 0.7 }, Kind::Scalar, &[]);
    let soft = g.node(Op::Mul, Kind::Scalar, &[(alpha, "out"), (scaled, "out")]);
    let ce = g.node(
        Op::CrossEntropy,
        Kind::Scalar,
        &[(student, "output"), (batch, "label")],
    );
    let beta = g.node(Op::Const { value: 0.3 }, Kind::Scalar, &[]);
    let hard = g.node(Op::Mul, Kind::Scalar, &[(ce, "out"), (beta, "out")]);
    let total = g.node(Op::Add, Kind::Scalar, &[(soft, "out"), (hard, "out")]);
    let loss = g.node(Op::Loss, Kind::Scalar, &[(total, "out")]);
    let nodes = g.nodes;
    stage(
        "distill",
        StageKind::Distill {
            teachers: vec!["t".into()],
            student: "s".into(),
        },
        "s",
        vec!["t".into()],
        loss,
        nodes,
        epochs,
    )
}

fn blobs_plan(dir: &Path, seed: u64, repeat: u32) -> Plan {
    write(&dir.join("blobs.csv"), blobs_csv(100, 7).as_bytes());
    let mut data = csv_spec(
        "blobs",
        "blobs.csv",
        2,
        3,
        vec![
            split("train", SplitSize::Fraction(0.6)),
            split("val", SplitSize::Count(60)),
            split("test", SplitSize::Count(60)),
        ],
    );
    data.normalize = Normalize::TrainStats;
    let mut graph = Graph::default();
    let mut teacher_stage = train_stage(&mut graph, "teach", "t", 6);
    teacher_stage.validate = Some(Validate {
        data: "blobs".into(),
        split: "val".into(),
        keep: Keep::Best(Metric::Accuracy),
        early_stop: Some(3),
    });
    let distill = distill_stage(&mut graph, 4);
    let mut baseline = train_stage(&mut graph, "scratch", "scratch", 4);
    baseline.baseline_of = Some("distill".into());
    baseline.optimizer = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-4,
    };
    Plan {
        version: PLAN_VERSION,
        source: SourceInfo {
            path: dir.join("blobs.kd"),
            base_dir: dir.to_path_buf(),
        },
        settings: Settings {
            name: "blobs".into(),
            seed,
            device: Device::Auto,
            output: PathBuf::from("runs"),
            threads: None,
            repeat,
            checkpoint_every: None,
            non_finite: Default::default(),
            cache: Default::default(),
            precision: Default::default(),
        },
        data: vec![data],
        augments: vec![],
        models: vec![
            mlp("t", Role::Teacher, 32, "t"),
            mlp("s", Role::Student, 8, "s"),
            mlp("scratch", Role::Baseline, 8, "s"),
        ],
        graph,
        stages: vec![teacher_stage, distill, baseline],
        evaluations: vec![Evaluation {
            models: vec!["t".into(), "s".into(), "scratch".into()],
            data: "blobs".into(),
            split: "test".into(),
            metrics: vec![Metric::Accuracy, Metric::F1],
            span: Span::default(),
        }],
        exports: vec![
            Export {
                model: "t".into(),
                path: "t.safetensors".into(),
                span: Span::default(),
            },
            Export {
                model: "s".into(),
                path: "student/s.safetensors".into(),
                span: Span::default(),
            },
        ],
        overrides: vec![Override {
            key: "seed".into(),
            value: seed.to_string(),
        }],
    }
}

fn run_in(name: &str, seed: u64, repeat: u32) -> (PathBuf, Summary) {
    let dir = temp_dir(name);
    let out = dir.join("run");
    std::fs::create_dir_all(&out).unwrap();
    let plan = blobs_plan(&dir, seed, repeat);
    let summary = run_plan(
        &plan,
        &RunOptions {
            out_dir: out.clone(),
            progress: Progress::Quiet,
            kdc_version: "test".into(),
            resume: false,
            interrupt: None,
            step_times: None,
            world: kd_runtime::World::single(),
            shared: None,
        },
    )
    .unwrap();
    (out, summary)
}

fn schema() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/summary.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn distillation_end_to_end() {
    let (out_a, a) = run_in("e2e-a", 11, 1);
    let (out_b, b) = run_in("e2e-b", 11, 1);
    let (out_c, c) = run_in("e2e-c", 12, 1);

    // Learns: three well separated blobs.
    for model in ["t", "s", "scratch"] {
        let accuracy = a.models[model].metrics["test"].accuracy;
        assert!(accuracy > 0.8, "{model} accuracy {accuracy}");
    }
    // Same seed: bitwise the same weights and metrics; another seed: other weights.
    for file in ["t.safetensors", "student/s.safetensors"] {
        let bytes_a = std::fs::read(out_a.join(file)).unwrap();
        assert_eq!(bytes_a, std::fs::read(out_b.join(file)).unwrap(), "{file}");
        assert_ne!(bytes_a, std::fs::read(out_c.join(file)).unwrap(), "{file}");
    }
    // Everything but the measured latency.
    let results = |s: &Summary| {
        let mut models = s.models.clone();
        for m in models.values_mut() {
            m.latency_ms = None;
        }
        models
    };
    assert_eq!(results(&a), results(&b));
    let losses = |s: &Summary| s.stages.iter().map(|st| st.final_loss).collect::<Vec<_>>();
    assert_eq!(losses(&a), losses(&b));
    assert_ne!(losses(&a), losses(&c));

    // Teacher forwards are counted where a frozen model runs, and only there.
    let stage = |name: &str| a.stages.iter().find(|s| s.name == name).unwrap();
    assert_eq!(stage("distill").teacher_forwards, 180 * 4);
    assert_eq!(stage("teach").teacher_forwards, 0);
    assert_eq!(stage("scratch").teacher_forwards, 0);
    assert_eq!(stage("distill").steps, 4 * 6);
    assert!(stage("teach").best_epoch.is_some());
    assert!(stage("distill").best_epoch.is_none());

    // Parameter names and export sizes.
    let tensors =
        candle_core::safetensors::load(out_a.join("t.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    assert_eq!(names, ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]);
    assert_eq!(tensors["fc1.weight"].dims(), &[32, 2]);
    assert_eq!(a.models["t"].params, 32 * 2 + 32 + 3 * 32 + 3);
    assert_eq!(
        a.models["t"].bytes,
        Some(
            std::fs::metadata(out_a.join("t.safetensors"))
                .unwrap()
                .len()
        )
    );
    assert_eq!(a.models["scratch"].bytes, None);
    // Students and baselines are compared with the teacher.
    assert!(a.models["s"].metrics["test"].agreement.is_some());
    assert!(a.models["t"].metrics["test"].agreement.is_none());

    // The run folder: metrics.jsonl one line per epoch, summary.json valid against the schema.
    let lines = std::fs::read_to_string(out_a.join("metrics.jsonl")).unwrap();
    let epochs: usize = a.stages.iter().map(|s| s.epochs).sum();
    assert_eq!(lines.lines().count(), epochs);
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    for key in [
        "seed",
        "stage",
        "model",
        "epoch",
        "steps",
        "lr",
        "train_loss",
        "seconds",
        "val_accuracy",
        "val_f1",
        "val_loss",
    ] {
        assert!(
            first.get(key).is_some(),
            "metrics.jsonl lacks {key}: {first}"
        );
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_a.join("summary.json")).unwrap())
            .unwrap();
    let errors = common::schema::validate(&schema(), &written);
    assert!(
        errors.is_empty(),
        "summary.json does not match the schema: {errors:#?}"
    );
    // serde_json may read the last digit of a float one ulp off: compare with a tolerance.
    let parsed: Summary = serde_json::from_value(written).unwrap();
    assert_eq!(parsed.stages.len(), a.stages.len());
    for (name, model) in &a.models {
        let back = &parsed.models[name];
        assert_eq!(
            back.metrics["test"].confusion,
            model.metrics["test"].confusion
        );
        assert!((back.metrics["test"].f1 - model.metrics["test"].f1).abs() < 1e-12);
    }
    assert_eq!(a.provenance.data_files.len(), 1);
    assert_eq!(a.provenance.overrides["seed"], "11");

    let text = report(&a);
    println!("{text}");
    assert!(
        text.contains("teacher") && text.contains("scratch"),
        "{text}"
    );
    assert!(text.contains("baseline `scratch`"), "{text}");
}

#[test]
fn repeated_seeds_report_means_and_deviations() {
    let (out, summary) = run_in("e2e-repeat", 5, 2);
    assert_eq!(summary.seeds, vec![5, 6]);
    assert!(out.join("seed-5/t.safetensors").exists());
    assert!(out.join("seed-6/student/s.safetensors").exists());
    assert_eq!(summary.stages.len(), 6);
    let std = summary.models["s"].metrics_std.as_ref().unwrap();
    assert!(std["test"].accuracy >= 0.0);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let errors = common::schema::validate(&schema(), &written);
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(report(&summary).contains('±'));
}

#[test]
fn cuda_is_refused_with_help() {
    let dir = temp_dir("cuda");
    let mut plan = blobs_plan(&dir, 1, 1);
    plan.settings.device = Device::Cuda(0);
    let err = run_plan(
        &plan,
        &RunOptions {
            out_dir: dir.clone(),
            progress: Progress::Quiet,
            kdc_version: "test".into(),
            resume: false,
            interrupt: None,
            step_times: None,
            world: kd_runtime::World::single(),
            shared: None,
        },
    )
    .unwrap_err();
    let diagnostic: &dyn miette::Diagnostic = &err;
    assert_eq!(diagnostic.code().unwrap().to_string(), "kd::run::device");
    assert!(diagnostic.help().unwrap().to_string().contains("cpu"));
}

#[test]
fn a_diverging_loss_names_stage_epoch_and_step() {
    let dir = temp_dir("nan");
    let out = dir.join("run");
    std::fs::create_dir_all(&out).unwrap();
    let mut plan = blobs_plan(&dir, 1, 1);
    plan.stages[0].optimizer = Optimizer::Sgd {
        lr: 1e30,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    plan.stages[0].clip = None;
    plan.stages[0].schedule = Schedule {
        kind: ScheduleKind::Constant,
        warmup_epochs: 0,
    };
    let err = run_plan(
        &plan,
        &RunOptions {
            out_dir: out,
            progress: Progress::Quiet,
            kdc_version: "t".into(),
            resume: false,
            interrupt: None,
            step_times: None,
            world: kd_runtime::World::single(),
            shared: None,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, kd_runtime::RuntimeError::NonFinite(ref e) if e.stage == "teach" && e.what == "the loss"),
        "{err:?}"
    );
}

#[test]
fn a_plan_survives_yaml() {
    let dir = temp_dir("yaml");
    let plan = blobs_plan(&dir, 3, 1);
    let back = Plan::from_yaml(&plan.to_yaml().unwrap()).unwrap();
    assert_eq!(back.hash(), plan.hash());
}

/// The 8x8 digits as images, a small CNN, an augmentation pipeline with mixup.
#[test]
fn digits_cnn_with_augmentation() {
    let dir = temp_dir("digits-cnn");
    let out = dir.join("run");
    std::fs::create_dir_all(&out).unwrap();
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data");
    let mut data = csv_spec(
        "digits",
        "digits.csv.gz",
        64,
        10,
        vec![
            split("train", SplitSize::Fraction(0.8)),
            split("test", SplitSize::Fraction(0.2)),
        ],
    );
    data.sample_shape = vec![1, 8, 8];
    data.scale = 16.0;
    data.normalize = Normalize::TrainStats;
    let conv = Layer::Conv2d {
        out: 8,
        kernel: 3,
        stride: 1,
        padding: 1,
        bias: true,
    };
    let model = ModelSpec {
        name: "cnn".into(),
        architecture: "cnn".into(),
        role: Role::Teacher,
        input: vec![1, 8, 8],
        layers: vec![
            layer("conv", conv, vec![1, 8, 8], vec![8, 8, 8]),
            layer(
                "bn",
                Layer::BatchNorm {
                    eps: 1e-5,
                    momentum: 0.1,
                },
                vec![8, 8, 8],
                vec![8, 8, 8],
            ),
            layer("relu", Layer::Relu, vec![8, 8, 8], vec![8, 8, 8]),
            layer(
                "pool",
                Layer::MaxPool {
                    kernel: 2,
                    stride: 2,
                },
                vec![8, 8, 8],
                vec![8, 4, 4],
            ),
            layer("flat", Layer::Flatten, vec![8, 4, 4], vec![128]),
            layer(
                "fc",
                Layer::Linear {
                    out: 10,
                    bias: true,
                },
                vec![128],
                vec![10],
            ),
        ],
        taps: vec![],
        init_from: None,
        onnx: None,
        pruned: None,
        quantized: None,
        bert: None,
        tokens: false,
        precision: Default::default(),
        init_key: "cnn".into(),
        params: 0,
        flops: 0,
        span: Span::default(),
    };
    let mut graph = Graph::default();
    let mut g = GraphBuilder {
        graph: &mut graph,
        stage: "fit".into(),
        nodes: vec![],
    };
    let batch = g.node(
        Op::Batch {
            data: "digits".into(),
            split: "train".into(),
        },
        Kind::Input,
        &[],
    );
    let augmented = g.node(
        Op::Augment {
            pipeline: "aug".into(),
        },
        Kind::Input,
        &[(batch, "x")],
    );
    let forward = g.node(
        Op::Forward {
            model: "cnn".into(),
            train: true,
        },
        Kind::Logits,
        &[(augmented, "x")],
    );
    let ce = g.node(
        Op::CrossEntropy,
        Kind::Scalar,
        &[(forward, "output"), (augmented, "label")],
    );
    let loss = g.node(Op::Loss, Kind::Scalar, &[(ce, "out")]);
    let nodes = g.nodes;
    let mut fit = stage("fit", StageKind::Train, "cnn", vec![], loss, nodes, 3);
    fit.data = "digits".into();
    fit.batch = 64;
    fit.augment = Some("aug".into());
    fit.optimizer = Optimizer::AdamW {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    fit.validate = Some(Validate {
        data: "digits".into(),
        split: "test".into(),
        keep: Keep::Best(Metric::Loss),
        early_stop: None,
    });
    let plan = Plan {
        version: PLAN_VERSION,
        source: SourceInfo {
            path: data_dir.join("digits.kd"),
            base_dir: data_dir.clone(),
        },
        settings: Settings {
            name: "digits".into(),
            seed: 1,
            device: Device::Cpu,
            output: "runs".into(),
            threads: Some(candle_core::utils::get_num_threads()),
            repeat: 1,
            checkpoint_every: None,
            non_finite: Default::default(),
            cache: Default::default(),
            precision: Default::default(),
        },
        data: vec![data],
        augments: vec![AugmentSpec {
            name: "aug".into(),
            ops: vec![
                AugmentOp::Translate { max_pixels: 1 },
                AugmentOp::Rotate { max_degrees: 10.0 },
                AugmentOp::Noise { std: 0.05 },
                AugmentOp::Mixup { alpha: 0.2 },
            ],
        }],
        models: vec![model],
        graph,
        stages: vec![fit],
        evaluations: vec![Evaluation {
            models: vec!["cnn".into()],
            data: "digits".into(),
            split: "test".into(),
            metrics: vec![Metric::Accuracy],
            span: Span::default(),
        }],
        exports: vec![Export {
            model: "cnn".into(),
            path: "cnn.safetensors".into(),
            span: Span::default(),
        }],
        overrides: vec![],
    };
    let summary = run_plan(
        &plan,
        &RunOptions {
            out_dir: out.clone(),
            progress: Progress::Lines,
            kdc_version: "t".into(),
            resume: false,
            interrupt: None,
            step_times: None,
            world: kd_runtime::World::single(),
            shared: None,
        },
    )
    .unwrap();
    let accuracy = summary.models["cnn"].metrics["test"].accuracy;
    assert!(accuracy > 0.8, "accuracy {accuracy}");
    // Asking for the count already in effect changes no environment variable while other
    // tests run.
    assert_eq!(summary.threads, candle_core::utils::get_num_threads());
    assert!(summary.stages[0].best_epoch.is_some());
    let tensors =
        candle_core::safetensors::load(out.join("cnn.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(tensors.contains_key("bn.running_mean") && tensors.contains_key("conv.weight"));
}

/// A run on the layers composed from candle's ops (kdc's CPU kernels off: the path a GPU
/// takes) ends where the kernels' run does, within float rounding: the same losses to
/// 1e-3 and the same accuracy to one test sample in a hundred.
#[test]
fn a_run_on_the_composed_layers_ends_as_the_kernels_run() {
    let (_, kernels) = run_in("kernels", 4, 1);
    kd_runtime::ops::set_cpu_kernels(false);
    let (_, composed) = run_in("composed", 4, 1);
    kd_runtime::ops::set_cpu_kernels(true);
    assert_eq!(kernels.stages.len(), composed.stages.len());
    for (a, b) in kernels.stages.iter().zip(&composed.stages) {
        assert!(
            (a.final_loss - b.final_loss).abs() <= 1e-3 * a.final_loss.abs().max(1e-3),
            "stage {}: loss {} vs {}",
            a.name,
            a.final_loss,
            b.final_loss
        );
    }
    for (name, model) in &kernels.models {
        for (split, metrics) in &model.metrics {
            let other = &composed.models[name].metrics[split];
            assert!(
                (metrics.accuracy - other.accuracy).abs() <= 0.01,
                "{name} on {split}: accuracy {} vs {}",
                metrics.accuracy,
                other.accuracy
            );
        }
    }
}
