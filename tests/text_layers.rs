//! kdc's sequence layers against straightforward f64 references written here from the
//! textbook formulas (LSTM in PyTorch's gate order; a pre-norm transformer block), masking
//! that makes padding invisible, and attention transfer on a hand-checked example.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
// The references index like the formulas they transcribe.
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use kd_runtime::model::Model;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The model `name` of a small program over tests/text (compiled as a file in tests/).
fn model(layers: &str, len: usize, seed: u64) -> Model {
    let source = format!(
        "data mail = text(\"text/mail.jsonl\") {{ classes: [\"ham\", \"spam\"], tokenizer: \"text/tokenizer.json\", max_len: {len} }}\n\
         model m {{ input tokens[{len}] {layers} }}\n\
         student s = m\n\
         stage a {{ train s on mail.train, loss cross_entropy(s.output, label), optimizer adam, epochs 1 }}\n"
    );
    let compiled = kd_compiler::compile(&source, &root().join("tests/layers.kd"), &[])
        .unwrap_or_else(|e| panic!("{layers}: {e:?}"));
    let spec = compiled.plan.model("s").unwrap().clone();
    let mut model = Model::new(&spec, seed).unwrap();
    model.set_pad_id(0);
    model
}

fn ids(rows: &[Vec<u32>], len: usize) -> Tensor {
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            r.iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(len)
                .map(|i| i as f32)
        })
        .collect();
    Tensor::from_vec(flat, (rows.len(), len), &Device::Cpu).unwrap()
}

fn output(model: &mut Model, x: &Tensor) -> Vec<Vec<f32>> {
    let outputs = model.forward(x, false).unwrap();
    let out = &outputs.iter().find(|(p, _)| p == "output").unwrap().1;
    out.flatten_from(1).unwrap().to_vec2::<f32>().unwrap()
}

fn params(model: &Model) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    model
        .params()
        .iter()
        .map(|(n, v)| {
            let values = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (
                n.clone(),
                (
                    v.dims().to_vec(),
                    values.into_iter().map(f64::from).collect(),
                ),
            )
        })
        .collect()
}

fn rows() -> Vec<Vec<u32>> {
    vec![
        vec![101, 7592, 1010, 2088, 999, 102],
        vec![
            101, 2023, 2003, 1037, 2936, 6251, 2007, 2062, 19204, 2015, 102,
        ],
        vec![101, 102],
    ]
}

#[test]
fn padding_is_invisible_to_every_sequence_layer() {
    let stacks = [
        "embedding(30522, 6) conv1d(5, kernel: 3, padding: 1) relu max_over_time linear(2)",
        "embedding(30522, 6) conv1d(5, kernel: 2) tanh pool(mean) linear(2)",
        "embedding(30522, 6) lstm(4) pool(mean) linear(2)",
        "embedding(30522, 6) bilstm(4) pool(max) linear(2)",
        "embedding(30522, 8) transformer(heads: 2, ff: 12) layernorm pool(first) linear(2)",
        "embedding(30522, 8) transformer(heads: 4, ff: 8) linear(3) relu pool(mean) linear(2)",
    ];
    for stack in stacks {
        // The same weights (no parameter depends on the length), two amounts of padding.
        let mut short = model(stack, 12, 3);
        let mut long = model(stack, 20, 3);
        let a = output(&mut short, &ids(&rows(), 12));
        let b = output(&mut long, &ids(&rows(), 20));
        for (ra, rb) in a.iter().zip(&b) {
            for (x, y) in ra.iter().zip(rb) {
                assert!((x - y).abs() < 1e-5, "{stack}: {ra:?} vs {rb:?}");
            }
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn matvec(w: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    (0..rows)
        .map(|r| (0..cols).map(|c| w[r * cols + c] * x[c]).sum())
        .collect()
}

#[test]
fn lstm_follows_pytorch_gate_order_in_both_directions() {
    let (dim, hidden) = (5, 3);
    let stack = format!("embedding(30522, {dim}) bilstm({hidden}) as seq pool(mean) linear(2)");
    let mut m = model(&stack, 12, 9);
    let p = params(&m);
    let row = &rows()[1];
    let outputs = m
        .forward(&ids(std::slice::from_ref(row), 12), false)
        .unwrap();
    let got = outputs
        .iter()
        .find(|(n, _)| n == "seq")
        .unwrap()
        .1
        .to_vec3::<f32>()
        .unwrap();
    let table = &p["embedding1.weight"].1;
    let xs: Vec<Vec<f64>> = row
        .iter()
        .map(|&id| table[id as usize * dim..(id as usize + 1) * dim].to_vec())
        .collect();
    for (direction, suffix) in ["", "_reverse"].iter().enumerate() {
        let w_ih = &p[&format!("lstm1.weight_ih{suffix}")].1;
        let w_hh = &p[&format!("lstm1.weight_hh{suffix}")].1;
        let bias = &p[&format!("lstm1.bias{suffix}")].1;
        let (mut h, mut c) = (vec![0.0; hidden], vec![0.0; hidden]);
        let order: Vec<usize> = if direction == 0 {
            (0..xs.len()).collect()
        } else {
            (0..xs.len()).rev().collect()
        };
        for t in order {
            let a = matvec(w_ih, 4 * hidden, dim, &xs[t]);
            let b = matvec(w_hh, 4 * hidden, hidden, &h);
            let gate =
                |k: usize, j: usize| a[k * hidden + j] + b[k * hidden + j] + bias[k * hidden + j];
            for j in 0..hidden {
                let (i, f, g) = (sigmoid(gate(0, j)), sigmoid(gate(1, j)), gate(2, j).tanh());
                c[j] = f * c[j] + i * g;
            }
            for j in 0..hidden {
                let o = sigmoid(gate(3, j));
                h[j] = o * c[j].tanh();
            }
            for j in 0..hidden {
                let kdc = f64::from(got[0][t][direction * hidden + j]);
                assert!(
                    (kdc - h[j]).abs() < 1e-5,
                    "direction {direction}, step {t}: {kdc} vs {}",
                    h[j]
                );
            }
        }
        // Past the real tokens, the outputs are zero.
        for t in xs.len()..12 {
            assert_eq!(got[0][t][direction * hidden], 0.0);
        }
    }
}

fn layer_norm(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    x.iter()
        .zip(w)
        .zip(b)
        .map(|((v, w), b)| (v - mean) / (var + 1e-5).sqrt() * w + b)
        .collect()
}

fn linear(w: &[f64], b: &[f64], out: usize, x: &[f64]) -> Vec<f64> {
    matvec(w, out, x.len(), x)
        .iter()
        .zip(b)
        .map(|(v, b)| v + b)
        .collect()
}

fn gelu(x: f64) -> f64 {
    // erf by Abramowitz and Stegun 7.1.26 is too coarse for 1e-5; integrate instead.
    let steps = 2000;
    let z = x / std::f64::consts::SQRT_2;
    let h = z / steps as f64;
    let mut sum = 0.0;
    for k in 0..=steps {
        let t = k as f64 * h;
        let weight = if k == 0 || k == steps {
            1.0
        } else if k % 2 == 1 {
            4.0
        } else {
            2.0
        };
        sum += weight * (-t * t).exp();
    }
    let erf = 2.0 / std::f64::consts::PI.sqrt() * sum * h / 3.0;
    0.5 * x * (1.0 + erf)
}

#[test]
fn transformer_block_is_pre_norm_attention_over_real_tokens() {
    let (d, heads, ff) = (8, 2, 6);
    let stack = format!(
        "embedding(30522, {d}) transformer(heads: {heads}, ff: {ff}) as seq pool(mean) linear(2)"
    );
    let mut m = model(&stack, 12, 4);
    let p = params(&m);
    let row = &rows()[0];
    let outputs = m
        .forward(&ids(std::slice::from_ref(row), 12), false)
        .unwrap();
    let got = outputs
        .iter()
        .find(|(n, _)| n == "seq")
        .unwrap()
        .1
        .to_vec3::<f32>()
        .unwrap();
    let w = |n: &str| p[&format!("transformer1.{n}")].1.clone();
    let table = &p["embedding1.weight"].1;
    let xs: Vec<Vec<f64>> = row
        .iter()
        .map(|&id| table[id as usize * d..(id as usize + 1) * d].to_vec())
        .collect();
    let len = xs.len();
    let normed: Vec<Vec<f64>> = xs
        .iter()
        .map(|x| layer_norm(x, &w("norm1.weight"), &w("norm1.bias")))
        .collect();
    let qkv: Vec<Vec<f64>> = normed
        .iter()
        .map(|x| linear(&w("qkv.weight"), &w("qkv.bias"), 3 * d, x))
        .collect();
    let dh = d / heads;
    let mut context = vec![vec![0.0; d]; len];
    for head in 0..heads {
        for i in 0..len {
            let q = &qkv[i][head * dh..(head + 1) * dh];
            let scores: Vec<f64> = (0..len)
                .map(|j| {
                    let k = &qkv[j][d + head * dh..d + (head + 1) * dh];
                    q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (dh as f64).sqrt()
                })
                .collect();
            let top = scores.iter().cloned().fold(f64::MIN, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
            let total: f64 = exps.iter().sum();
            for j in 0..len {
                for c in 0..dh {
                    context[i][head * dh + c] += exps[j] / total * qkv[j][2 * d + head * dh + c];
                }
            }
        }
    }
    for i in 0..len {
        let attended = linear(&w("attn_out.weight"), &w("attn_out.bias"), d, &context[i]);
        let h: Vec<f64> = xs[i].iter().zip(&attended).map(|(a, b)| a + b).collect();
        let n2 = layer_norm(&h, &w("norm2.weight"), &w("norm2.bias"));
        let inner: Vec<f64> = linear(&w("ff1.weight"), &w("ff1.bias"), ff, &n2)
            .into_iter()
            .map(gelu)
            .collect();
        let fed = linear(&w("ff2.weight"), &w("ff2.bias"), d, &inner);
        for c in 0..d {
            let want = h[c] + fed[c];
            let kdc = f64::from(got[0][i][c]);
            assert!(
                (kdc - want).abs() < 1e-5,
                "token {i}, channel {c}: {kdc} vs {want}"
            );
        }
    }
}

#[test]
fn attention_transfer_matches_a_hand_computed_example() {
    // One sample, two channels of 1x2 maps. a: squares (1, 4) and (9, 0): mean over
    // channels (5, 2), unit norm (5, 2)/sqrt(29). b: one channel (0, 2): squares (0, 4),
    // unit (0, 1). Loss: mean of squared differences over the 2 positions.
    let a = Tensor::from_vec(vec![1f32, 2.0, 3.0, 0.0], (1, 2, 1, 2), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(vec![0f32, 2.0], (1, 1, 1, 2), &Device::Cpu).unwrap();
    let got = kd_runtime::train::losses::attention_transfer(&a, &b)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let s = 29f64.sqrt();
    let want = ((5.0 / s - 0.0).powi(2) + (2.0 / s - 1.0).powi(2)) / 2.0;
    assert!((f64::from(got) - want).abs() < 1e-6, "{got} vs {want}");
    // Sequences [B, L, C]: channels on the last axis.
    let seq = Tensor::from_vec(vec![1f32, 3.0, 2.0, 0.0], (1, 2, 2), &Device::Cpu).unwrap();
    let got = kd_runtime::train::losses::attention_transfer(&seq, &seq)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(got, 0.0);
    let _ = Path::new("");
}

/// One stack of each kind of sequence layer.
const STACKS: [&str; 3] = [
    "embedding(30522, 6, positions: true) conv1d(5, kernel: 3, padding: 1) relu max_over_time linear(2)",
    "embedding(30522, 6) bilstm(4) pool(mean) linear(2)",
    "embedding(30522, 8) transformer(heads: 2, ff: 12) layernorm pool(first) linear(2)",
];

/// A forward without gradients (a frozen teacher) records no graph in any sequence layer
/// and gives the values of a tracked forward.
#[test]
fn sequence_stacks_run_without_a_graph_when_frozen() {
    for stack in STACKS {
        let mut m = model(stack, 12, 3);
        let x = ids(&rows(), 12);
        let tracked = m.forward(&x, false).unwrap();
        let frozen = m.forward_with(&x, false, true, false).unwrap();
        for ((port, a), (_, b)) in tracked.iter().zip(&frozen) {
            assert!(a.track_op() && !b.track_op(), "{stack}: {port}");
            let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
            assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        }
    }
}

#[test]
fn every_parameter_of_every_sequence_stack_gets_a_gradient() {
    for stack in STACKS {
        let mut m = model(stack, 12, 3);
        let outputs = m.forward(&ids(&rows(), 12), true).unwrap();
        let out = &outputs.iter().find(|(p, _)| p == "output").unwrap().1;
        let grads = m.backward(&out.sqr().unwrap().sum_all().unwrap()).unwrap();
        for (name, var) in m.params() {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{stack}: no gradient for {name}"));
            let norm = grad
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{stack}: zero gradient for {name}");
        }
    }
}

#[test]
fn transformer_gradients_match_finite_differences() {
    let stack = "embedding(30522, 8) transformer(heads: 2, ff: 12) pool(mean) linear(2)";
    let mut m = model(stack, 12, 5);
    let x = ids(&rows(), 12);
    let loss = |m: &mut Model| -> f64 {
        let outputs = m.forward(&x, false).unwrap();
        let out = &outputs.iter().find(|(p, _)| p == "output").unwrap().1;
        f64::from(
            out.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        )
    };
    let outputs = m.forward(&x, false).unwrap();
    let out = &outputs.iter().find(|(p, _)| p == "output").unwrap().1;
    let grads = m.backward(&out.sqr().unwrap().sum_all().unwrap()).unwrap();
    let params: Vec<(String, candle_core::Var)> = m.params().to_vec();
    for (name, var) in params
        .iter()
        .filter(|(n, _)| n.contains("qkv") || n.contains("ff1.weight"))
    {
        let analytic = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Entries in the query, key and value parts of qkv, and in ff1.
        for &k in &[0usize, 9, original.len() / 2 + 3, original.len() - 1] {
            let shifted = |delta: f32| {
                let mut values = original.clone();
                values[k] += delta;
                Tensor::from_vec(values, var.dims(), &Device::Cpu).unwrap()
            };
            let eps = 1e-2f32;
            var.set(&shifted(eps)).unwrap();
            let up = loss(&mut m);
            var.set(&shifted(-eps)).unwrap();
            let down = loss(&mut m);
            var.set(&shifted(0.0)).unwrap();
            let numeric = (up - down) / (2.0 * f64::from(eps));
            let a = f64::from(analytic[k]);
            assert!(
                (a - numeric).abs() <= 2e-2 * a.abs().max(numeric.abs()) + 1e-3,
                "{name}[{k}]: autograd {a}, finite differences {numeric}"
            );
        }
    }
}
