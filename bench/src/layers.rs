//! `kdc bench layers`: every layer of docs/language.md section 6.1 and every augmentation
//! of section 5, timed alone in kdc and in PyTorch, per sample, so that a slow one shows at
//! a glance. A layer is timed inside a small model (`input PREFIX LAYER`) on kdc's training
//! path: its forward and its backward entry of kdc's own reverse pass
//! (`Model::time_layers`). The prefix gives the layer an input that needs a gradient, as
//! inside a network; a row without one times a first layer, whose input is data. The twin
//! in torch_ref.py (`--case layers`) times PyTorch's module the same way, inside the same
//! small model with the same loss: its forward, and its backward from its output's gradient
//! to its input's (tensor hooks).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use kd_plan::AugmentOp;
use kd_runtime::data::augment::{self, AugmentKey, Tokens};
use kd_runtime::model::Model;
use kd_runtime::train::losses::Labels;
use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::{median, median_ratio, TorchRef};

/// One layer row: `model m { input INPUT PREFIX LAYER }`, the layer last.
#[derive(Debug, Clone, Copy)]
pub struct LayerRow {
    /// The row's name, shared with torch_ref.py's twin.
    pub id: &'static str,
    pub input: &'static str,
    pub prefix: &'static str,
    pub layer: &'static str,
    pub batch: usize,
}

/// Token rows: `TOKENS` ids per row, each row 4 to `TOKENS` real tokens, then padding.
const TOKENS: usize = 48;

const fn row(
    id: &'static str,
    input: &'static str,
    prefix: &'static str,
    layer: &'static str,
    batch: usize,
) -> LayerRow {
    LayerRow {
        id,
        input,
        prefix,
        layer,
        batch,
    }
}

/// The shapes are those of the bench's training cases: CIFAR-size feature maps at batch 128
/// and 48-token texts at batch 32 (BERT-size blocks at 128 tokens, batch 8). A tap before
/// an activation keeps it from fusing into the layer before (the prefix is not timed).
pub const LAYERS: &[LayerRow] = &[
    row("linear", "[512]", "batchnorm", "linear(256)", 128),
    row("conv2d_first", "[3, 32, 32]", "", "conv2d(16, kernel: 3, padding: 1)", 128),
    row("conv2d", "[16, 32, 32]", "batchnorm", "conv2d(16, kernel: 3, padding: 1)", 128),
    row("conv2d_stride2", "[16, 32, 32]", "batchnorm", "conv2d(32, kernel: 3, stride: 2, padding: 1)", 128),
    row("conv2d_1x1", "[16, 32, 32]", "batchnorm", "conv2d(32, kernel: 1, stride: 2, bias: false)", 128),
    row("maxpool", "[16, 32, 32]", "batchnorm", "maxpool(2)", 128),
    row("avgpool", "[16, 32, 32]", "batchnorm", "avgpool(2)", 128),
    row("avgpool_global", "[32, 16, 16]", "batchnorm", "avgpool(16)", 128),
    row("batchnorm2d", "[16, 32, 32]", "conv2d(16, kernel: 1)", "batchnorm", 128),
    row("batchnorm1d", "[256]", "linear(256)", "batchnorm", 128),
    row("dropout", "[4096]", "batchnorm as pre", "dropout(0.5)", 128),
    row("flatten", "[16, 16, 16]", "batchnorm", "flatten", 128),
    row("relu", "[4096]", "batchnorm as pre", "relu", 128),
    row("gelu", "[4096]", "batchnorm as pre", "gelu", 128),
    row("tanh", "[4096]", "batchnorm as pre", "tanh", 128),
    row("sigmoid", "[4096]", "batchnorm as pre", "sigmoid", 128),
    row("softmax", "[1000]", "batchnorm as pre", "softmax", 128),
    row(
        "residual",
        "[16, 32, 32]",
        "batchnorm",
        "residual { conv2d(16, kernel: 3, padding: 1) batchnorm relu conv2d(16, kernel: 3, padding: 1) batchnorm }",
        128,
    ),
    row("embedding", "tokens[48]", "", "embedding(30522, 64)", 32),
    row("embedding_positions", "tokens[48]", "", "embedding(30522, 64, positions: true)", 32),
    row("linear_seq", "tokens[48]", "embedding(30522, 64)", "linear(256)", 32),
    row("conv1d", "tokens[48]", "embedding(30522, 64)", "conv1d(128, kernel: 3, padding: 1)", 32),
    row("lstm", "tokens[48]", "embedding(30522, 64)", "lstm(64)", 32),
    row("bilstm", "tokens[48]", "embedding(30522, 64)", "bilstm(64)", 32),
    row("transformer", "tokens[48]", "embedding(30522, 64)", "transformer(heads: 4, ff: 128)", 32),
    row(
        "transformer_bert",
        "tokens[128]",
        "embedding(30522, 384)",
        "transformer(heads: 12, ff: 1536)",
        8,
    ),
    row("layernorm", "tokens[48]", "embedding(30522, 64)", "layernorm", 32),
    row("pool_max", "tokens[48]", "embedding(30522, 64)", "pool(max)", 32),
    row("pool_mean", "tokens[48]", "embedding(30522, 64)", "pool(mean)", 32),
    row("pool_first", "tokens[48]", "embedding(30522, 64)", "pool(first)", 32),
];

/// One augmentation row: the op alone on a batch (CIFAR-size images at batch 128, 48-token
/// texts at batch 32).
#[derive(Debug, Clone)]
pub struct AugmentRow {
    pub id: &'static str,
    /// As written in an `augment` block.
    pub written: &'static str,
    pub op: AugmentOp,
    pub text: bool,
}

pub fn augment_rows() -> Vec<AugmentRow> {
    let image = |id, written, op| AugmentRow {
        id,
        written,
        op,
        text: false,
    };
    let text = |id, written, op| AugmentRow {
        id,
        written,
        op,
        text: true,
    };
    vec![
        image(
            "crop",
            "crop(padding: 4)",
            AugmentOp::RandomCrop { padding: 4 },
        ),
        image("flip", "flip(p: 0.5)", AugmentOp::Flip { p: 0.5 }),
        image(
            "rotate",
            "rotate(max: 10deg)",
            AugmentOp::Rotate { max_degrees: 10.0 },
        ),
        image(
            "translate",
            "translate(max: 2)",
            AugmentOp::Translate { max_pixels: 2 },
        ),
        image("noise", "noise(std: 0.1)", AugmentOp::Noise { std: 0.1 }),
        image("cutout", "cutout(size: 8)", AugmentOp::Cutout { size: 8 }),
        image(
            "mixup",
            "mixup(alpha: 0.2)",
            AugmentOp::Mixup { alpha: 0.2 },
        ),
        text(
            "token_dropout",
            "token_dropout(p: 0.1)",
            AugmentOp::TokenDropout { p: 0.1 },
        ),
        text(
            "mask_tokens",
            "mask_tokens(p: 0.15)",
            AugmentOp::MaskTokens { p: 0.15 },
        ),
        text(
            "span_delete",
            "span_delete(max: 5)",
            AugmentOp::SpanDelete { max: 5 },
        ),
        text(
            "swap_tokens",
            "swap_tokens(n: 2)",
            AugmentOp::SwapTokens { n: 2 },
        ),
    ]
}

/// Image augmentation rows' samples and batch; text rows use [`TOKENS`] at batch 32.
const IMAGE: [usize; 3] = [3, 32, 32];
const IMAGE_BATCH: usize = 128;
const TEXT_BATCH: usize = 32;

/// One row's figures: microseconds per sample, one entry per run.
#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    pub id: String,
    /// The layer or operation as written in a `.kd` file.
    pub written: String,
    pub batch: usize,
    /// Whether the row has a backward (augmentations do not).
    pub backward: bool,
    pub kdc_forward_us: Vec<f64>,
    pub kdc_backward_us: Vec<f64>,
    pub torch_forward_us: Vec<f64>,
    pub torch_backward_us: Vec<f64>,
}

impl RowResult {
    fn new(id: &str, written: &str, batch: usize, backward: bool) -> RowResult {
        RowResult {
            id: id.to_string(),
            written: written.to_string(),
            batch,
            backward,
            kdc_forward_us: Vec::new(),
            kdc_backward_us: Vec::new(),
            torch_forward_us: Vec::new(),
            torch_backward_us: Vec::new(),
        }
    }

    fn kdc_total(&self) -> Vec<f64> {
        sums(&self.kdc_forward_us, &self.kdc_backward_us, self.backward)
    }

    fn torch_total(&self) -> Vec<f64> {
        sums(
            &self.torch_forward_us,
            &self.torch_backward_us,
            self.backward,
        )
    }
}

fn sums(forward: &[f64], backward: &[f64], with_backward: bool) -> Vec<f64> {
    match with_backward {
        true => forward.iter().zip(backward).map(|(f, b)| f + b).collect(),
        false => forward.to_vec(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LayersReport {
    pub threads: usize,
    pub runs: usize,
    pub steps: usize,
    /// `torch.__version__`, or why PyTorch did not run.
    pub torch: std::result::Result<String, String>,
    pub rows: Vec<RowResult>,
}

/// Which rows to time: all, or those named.
#[derive(Debug, Clone)]
pub struct LayerFilter(Vec<String>);

impl LayerFilter {
    /// The rows named in `names` (all rows when it is empty); an unknown name is an error
    /// that lists the rows.
    pub fn new(names: &[String]) -> Result<LayerFilter> {
        let known: Vec<&str> = LAYERS
            .iter()
            .map(|r| r.id)
            .chain(augment_rows().iter().map(|a| a.id))
            .collect();
        if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
            return Err(BenchError::UnknownRow {
                row: unknown.clone(),
                rows: known.join(", "),
            });
        }
        Ok(LayerFilter(names.to_vec()))
    }

    fn wants(&self, id: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n == id)
    }
}

/// Times every row `runs` times (kdc, then PyTorch's twin of every row, run after run).
pub fn layers(
    filter: &LayerFilter,
    runs: usize,
    steps: usize,
    threads: usize,
    torch: &std::result::Result<TorchRef, String>,
    note: &mut dyn FnMut(&str),
) -> Result<LayersReport> {
    let augments: Vec<AugmentRow> = augment_rows()
        .into_iter()
        .filter(|a| filter.wants(a.id))
        .collect();
    let layer_rows: Vec<&LayerRow> = LAYERS.iter().filter(|r| filter.wants(r.id)).collect();
    let mut rows: Vec<RowResult> = layer_rows
        .iter()
        .map(|r| RowResult::new(r.id, r.layer, r.batch, true))
        .chain(augments.iter().map(|a| {
            let batch = if a.text { TEXT_BATCH } else { IMAGE_BATCH };
            RowResult::new(a.id, a.written, batch, false)
        }))
        .collect();
    let mut torch_version = torch.as_ref().map(|_| String::new()).map_err(Clone::clone);
    for run in 0..runs {
        note(&format!("run {} of {runs}: kdc", run + 1));
        for (row, result) in layer_rows.iter().zip(rows.iter_mut()) {
            // On a pool's worker, as `run_plan` runs a pipeline.
            let (forward, backward) =
                kd_runtime::on_worker(threads, || time_layer(row, steps, threads))?;
            result.kdc_forward_us.push(forward);
            result.kdc_backward_us.push(backward);
        }
        for (row, result) in augments.iter().zip(rows.iter_mut().skip(layer_rows.len())) {
            let micros = kd_runtime::on_worker(threads, || time_augment(row, steps))?;
            result.kdc_forward_us.push(micros);
        }
        if let (Ok(reference), Ok(_)) = (torch, &torch_version) {
            note(&format!("run {} of {runs}: PyTorch", run + 1));
            let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            let extra = ["--rows".to_string(), ids.join(",")];
            match reference.run_all("layers", steps, threads, &extra) {
                Ok(values) => {
                    for value in values {
                        if let Some(v) = value.get("torch").and_then(|v| v.as_str()) {
                            torch_version = Ok(v.to_string());
                        }
                        let id = value.get("row").and_then(|r| r.as_str());
                        let Some(result) = rows.iter_mut().find(|r| Some(r.id.as_str()) == id)
                        else {
                            continue;
                        };
                        let figure = |key: &str| value.get(key).and_then(|v| v.as_f64());
                        if let Some(f) = figure("forward_us") {
                            result.torch_forward_us.push(f);
                        }
                        if let Some(b) = figure("backward_us") {
                            result.torch_backward_us.push(b);
                        }
                    }
                }
                Err(reason) => torch_version = Err(reason),
            }
        }
    }
    Ok(LayersReport {
        threads,
        runs,
        steps,
        torch: torch_version,
        rows,
    })
}

fn layer_error(row: &LayerRow, reason: impl std::fmt::Display) -> BenchError {
    BenchError::Layer {
        row: row.id.to_string(),
        reason: reason.to_string(),
    }
}

/// The row's model (`input`, the prefix, the layer, with the layer's output as `output`)
/// and the sample shape it declares (token rows: `[len]`).
fn layer_model(row: &LayerRow) -> Result<(Model, Vec<usize>)> {
    let source = format!(
        "model m {{ input {} {} {} }}\nstudent s = m\n",
        row.input, row.prefix, row.layer
    );
    let file = Path::new("layers.kd");
    let compiled = kd_compiler::compile(&source, file, &[]).map_err(|errors| {
        layer_error(
            row,
            kd_compiler::diagnostics::render_plain(&errors, "layers.kd", &source),
        )
    })?;
    let spec = compiled
        .plan
        .model("s")
        .ok_or_else(|| layer_error(row, "no model `s`"))?
        .clone();
    let mut model = Model::new(&spec, 7).map_err(|e| layer_error(row, e))?;
    if row.input.starts_with("tokens") {
        model.set_pad_id(0);
    }
    model.time_layers();
    Ok((model, spec.input))
}

/// A batch for `row`: token ids with 4 to all real tokens per row (the rest 0, padding),
/// or values in [-1, 1).
fn layer_input(row: &LayerRow, spec_input: &[usize]) -> Result<Tensor> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let tensor = if row.input.starts_with("tokens") {
        let len = spec_input.first().copied().unwrap_or(TOKENS);
        let mut ids = Vec::with_capacity(row.batch * len);
        for _ in 0..row.batch {
            let real = 4 + (next() % (len as u64 - 3)) as usize;
            ids.extend((0..len).map(|t| match t < real {
                true => (2 + next() % 30_520) as f32,
                false => 0.0,
            }));
        }
        Tensor::from_vec(ids, (row.batch, len), &Device::Cpu)
    } else {
        let n = row.batch * spec_input.iter().product::<usize>();
        let values: Vec<f32> = (0..n)
            .map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect();
        let mut dims = vec![row.batch];
        dims.extend_from_slice(spec_input);
        Tensor::from_vec(values, dims, &Device::Cpu)
    };
    tensor.map_err(|e| layer_error(row, e))
}

/// Median forward and backward microseconds per sample of `row`'s layer over `steps` timed
/// training steps (after 3 untimed ones).
fn time_layer(row: &LayerRow, steps: usize, threads: usize) -> Result<(f64, f64)> {
    kd_runtime::configure_threads(Some(threads));
    let (mut model, spec_input) = layer_model(row)?;
    let x = layer_input(row, &spec_input)?;
    let fail = |e: candle_core::Error| layer_error(row, e);
    let mut weights: Option<Tensor> = None;
    let (mut forward, mut backward) = (Vec::new(), Vec::new());
    for step in 0..steps + 3 {
        let ports = model.forward(&x, true).map_err(|e| layer_error(row, e))?;
        let output = ports
            .iter()
            .find(|(name, _)| name == "output")
            .map(|(_, t)| t.clone())
            .ok_or_else(|| layer_error(row, "no output"))?;
        if weights.is_none() {
            weights = Some(Tensor::randn(0f32, 1.0, output.dims(), &Device::Cpu).map_err(fail)?);
        }
        let loss = match &weights {
            Some(w) => (output.to_dtype(DType::F32).map_err(fail)? * w)
                .and_then(|t| t.sum_all())
                .map_err(fail)?,
            None => return Err(layer_error(row, "no loss weights")),
        };
        model.backward(&loss).map_err(fail)?;
        let times = model.take_layer_times();
        let last = times.iter().map(|t| t.last).max().unwrap_or(0);
        let Some(time) = times.iter().find(|t| t.last == last) else {
            return Err(layer_error(row, "the reverse pass timed no layer"));
        };
        if time.first != time.last {
            return Err(layer_error(row, "the layer ran fused with the one before"));
        }
        if step >= 3 {
            forward.push(time.forward.as_secs_f64());
            backward.push(time.backward.as_secs_f64());
        }
    }
    let per_sample = |v: &[f64]| median(v).unwrap_or(f64::NAN) * 1e6 / row.batch as f64;
    Ok((per_sample(&forward), per_sample(&backward)))
}

/// Median microseconds per sample of applying `row`'s operation to a batch, over `steps`
/// timed batches (after 3 untimed ones); each batch is a fresh copy, not timed.
fn time_augment(row: &AugmentRow, steps: usize) -> Result<f64> {
    let batch = if row.text { TEXT_BATCH } else { IMAGE_BATCH };
    let layer = LayerRow {
        id: row.id,
        input: if row.text {
            "tokens[48]"
        } else {
            "[3, 32, 32]"
        },
        prefix: "",
        layer: row.written,
        batch,
    };
    let shape = if row.text {
        vec![TOKENS]
    } else {
        IMAGE.to_vec()
    };
    let x = layer_input(&layer, &shape)?;
    let values: Vec<f32> = x
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(|e| layer_error(&layer, e))?;
    let special = [0u32, 101, 102];
    let tokens = Tokens {
        pad_id: 0,
        mask_id: Some(103),
        special: &special,
    };
    let fill = [-2.0f32, -2.0, -2.0];
    let mut seconds = Vec::with_capacity(steps);
    for step in 0..steps + 3 {
        let mut batch_values = values.clone();
        let mut labels = Labels::hard((0..batch as u32).map(|i| i % 10).collect());
        let key = AugmentKey {
            seed: 7,
            stage: "bench",
            epoch: 0,
            step,
        };
        let ops = std::slice::from_ref(&row.op);
        let started = Instant::now();
        match row.text {
            true => augment::apply_text(ops, &mut batch_values, TOKENS, tokens, key),
            false => augment::apply(ops, &mut batch_values, &mut labels, &shape, &fill, key),
        }
        let took = started.elapsed().as_secs_f64();
        std::hint::black_box(&batch_values);
        if step >= 3 {
            seconds.push(took);
        }
    }
    Ok(median(&seconds).unwrap_or(f64::NAN) * 1e6 / batch as f64)
}

impl LayersReport {
    /// The report as a Markdown table: microseconds per sample, and kdc's speed as a
    /// multiple of PyTorch's (above 1: kdc is faster), forward, backward and both.
    pub fn table(&self) -> String {
        let fmt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        let mut out = format!(
            "{} threads, median of {} runs of {} timed steps each; microseconds per sample; \
             speed = PyTorch time / kdc time\n",
            self.threads, self.runs, self.steps
        );
        match &self.torch {
            Ok(version) => out.push_str(&format!("PyTorch {version}\n\n")),
            Err(reason) => out.push_str(&format!("PyTorch did not run: {reason}\n\n")),
        }
        out.push_str(
            "| row | layer | batch | kdc fwd | kdc bwd | PyTorch fwd | PyTorch bwd \
             | speed fwd | speed bwd | speed |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for row in &self.rows {
            let backward = |v: &[f64]| match row.backward {
                true => fmt(median(v), 2),
                false => "-".to_string(),
            };
            let speed_bwd = match row.backward {
                true => fmt(
                    median_ratio(&row.torch_backward_us, &row.kdc_backward_us),
                    2,
                ),
                false => "-".to_string(),
            };
            out.push_str(&format!(
                "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row.id,
                row.written,
                row.batch,
                fmt(median(&row.kdc_forward_us), 2),
                backward(&row.kdc_backward_us),
                fmt(median(&row.torch_forward_us), 2),
                backward(&row.torch_backward_us),
                fmt(median_ratio(&row.torch_forward_us, &row.kdc_forward_us), 2),
                speed_bwd,
                fmt(median_ratio(&row.torch_total(), &row.kdc_total()), 2),
            ));
        }
        out
    }
}
