//! Evaluates a stage's dataflow nodes for one batch: batches, augmentation, model forwards,
//! arithmetic and the loss built-ins.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use kd_plan::{argument, Kind, NodeId, Op, Plan, Stage};

use crate::augment::{self, AugmentKey};
use crate::cache::OutputCache;
use crate::error::{plan_error, Result, RuntimeError, TensorContext};
use crate::losses::{self, Dist, Labels};
use crate::model::Model;

/// A batch as the `Batch` nodes hand it out.
#[derive(Clone, Debug)]
pub struct BatchData {
    /// `[B, ...sample_shape]`, normalised, f32.
    pub x: Tensor,
    pub labels: Labels,
    /// Where the rows come from: data source, split, each row's position in the split,
    /// and the split's size (the keys of the output cache).
    pub data: String,
    pub split: String,
    pub indices: Vec<usize>,
    pub split_samples: usize,
}

/// A value flowing along an edge.
#[derive(Clone, Debug)]
pub enum Value {
    Tensor(Tensor),
    /// A distribution made by `softmax` (probabilities first) or `log_softmax`.
    Dist {
        dist: Dist,
        log_first: bool,
    },
    Labels(Labels),
    Const(f64),
}

impl Value {
    /// The tensor this value stands for; constants become 0-d tensors.
    fn tensor(&self) -> Result<Tensor> {
        match self {
            Value::Tensor(t) => Ok(t.clone()),
            Value::Dist { dist, log_first } => Ok(if *log_first {
                dist.log_probs.clone()
            } else {
                dist.probs.clone()
            }),
            Value::Const(c) => Tensor::new(*c as f32, &candle_core::Device::Cpu).ctx("a constant"),
            Value::Labels(_) => Err(plan_error("labels used where a tensor is needed")),
        }
    }

    fn constant(&self) -> Result<f64> {
        match self {
            Value::Const(c) => Ok(*c),
            Value::Tensor(t) if t.elem_count() == 1 => t
                .flatten_all()
                .and_then(|t| t.to_dtype(DType::F64))
                .and_then(|t| t.to_vec1::<f64>())
                .map(|v| v[0])
                .ctx("reading a scalar"),
            _ => Err(plan_error("a temperature must be a scalar")),
        }
    }

    /// The value as a distribution, reading a plain tensor by the kind its edge declares.
    fn dist(&self, kind: Kind) -> Result<Dist> {
        match self {
            Value::Dist { dist, .. } => Ok(dist.clone()),
            Value::Tensor(t) => match kind {
                Kind::Probabilities => Dist::from_probs(t),
                Kind::LogProbabilities => Dist::from_log_probs(t),
                _ => Dist::from_logits(t, 1.0),
            }
            .ctx("reading a distribution"),
            _ => Err(plan_error(
                "expected a distribution, logits or probabilities",
            )),
        }
    }

    /// Probabilities, e.g. the target of a soft cross-entropy.
    fn probs(&self, kind: Kind) -> Result<Tensor> {
        match (self, kind) {
            (Value::Tensor(t), Kind::Probabilities) => Ok(t.clone()),
            _ => Ok(self.dist(kind)?.probs),
        }
    }
}

/// The outputs of one node, by port.
type Ports = Vec<(String, Value)>;

/// Everything one evaluation of a stage's nodes needs.
pub struct StepInput<'a> {
    pub plan: &'a Plan,
    pub stage: &'a Stage,
    pub seed: u64,
    pub epoch: usize,
    pub step: usize,
    /// Validation: every model in eval mode, augmentation skipped.
    pub validating: bool,
    /// The batch of each `(data, split)` the stage's `Batch` nodes read (while validating,
    /// every `Batch` node reads `validation`).
    pub batches: &'a HashMap<(String, String), BatchData>,
    pub validation: Option<&'a BatchData>,
    /// Normalised value of a raw zero per channel, per data source (augmentation fill).
    pub fills: &'a HashMap<String, Vec<f32>>,
    /// The stage's trainable projections (`project(...)` in its loss): weight and bias.
    pub projections: &'a HashMap<String, (candle_core::Var, candle_core::Var)>,
}

/// What a step produced besides the node values.
#[derive(Default)]
pub struct StepOutput {
    pub loss: Option<Tensor>,
    /// The first `output` of the trained model (for validation metrics).
    pub trained_output: Option<Tensor>,
    /// Samples that went through frozen models.
    pub frozen_samples: u64,
    /// When the loss is not finite: the nodes whose values are not, in evaluation order.
    pub non_finite: Vec<NodeId>,
}

/// Runs `stage.nodes` in order and returns the loss and the trained model's output.
pub fn run_step(
    input: &StepInput,
    models: &mut HashMap<String, Model>,
    cache: &mut OutputCache,
) -> Result<StepOutput> {
    let graph = &input.plan.graph;
    let mut values: HashMap<NodeId, Ports> = HashMap::with_capacity(input.stage.nodes.len());
    let mut out = StepOutput::default();
    for &node_id in &input.stage.nodes {
        let node = graph.node_weight(node_id).ok_or_else(|| {
            plan_error(format!("stage `{}` lists a missing node", input.stage.name))
        })?;
        let arg = |index: usize| -> Result<(&Value, Kind)> {
            let (source, edge) = argument(graph, node_id, index).ok_or_else(|| {
                plan_error(format!(
                    "node {:?} of stage `{}` lacks argument {index}",
                    node.op, input.stage.name
                ))
            })?;
            let ports = values
                .get(&source)
                .ok_or_else(|| plan_error(format!("an argument of {:?} runs after it", node.op)))?;
            let value = match ports.iter().find(|(name, _)| *name == edge.port) {
                Some((_, value)) => value,
                // Single-output nodes answer whatever their one port is called.
                None if ports.len() == 1 => &ports[0].1,
                None => {
                    return Err(plan_error(format!(
                        "no port `{}` on the argument of {:?}",
                        edge.port, node.op
                    )))
                }
            };
            Ok((value, edge.ty.kind))
        };
        let single = |value: Value| vec![("out".to_string(), value)];
        let ports: Ports = match &node.op {
            Op::Batch { data, split } => {
                let batch = batch_of(input, data, split)?;
                vec![
                    ("x".to_string(), Value::Tensor(batch.x.clone())),
                    ("label".to_string(), Value::Labels(batch.labels.clone())),
                ]
            }
            Op::Augment { pipeline } => {
                let source = argument(graph, node_id, 0)
                    .map(|(source, _)| source)
                    .ok_or_else(|| plan_error("augment without a batch"))?;
                let batch_ports = values
                    .get(&source)
                    .ok_or_else(|| plan_error("augment runs before its batch"))?
                    .clone();
                if input.validating {
                    batch_ports
                } else {
                    augment_ports(input, source, pipeline, &batch_ports)?
                }
            }
            Op::Forward { model, train } => {
                let x = arg(0)?.0.tensor()?;
                let is_trained = *model == input.stage.trains;
                let instance = models
                    .get_mut(model)
                    .ok_or_else(|| plan_error(format!("no model `{model}`")))?;
                let train_mode = *train && is_trained && !input.validating;
                // Rows straight from a batch recur every epoch; augmented ones do not.
                let cacheable = input.validating
                    || argument(graph, node_id, 0).is_some_and(|(source, _)| {
                        matches!(
                            graph.node_weight(source).map(|n| &n.op),
                            Some(Op::Batch { .. })
                        )
                    });
                // Only the trained model needs a graph for the backward pass.
                let gradients = is_trained && !input.validating;
                let outputs = instance.forward_with(&x, train_mode, cacheable, gradients)?;
                if !is_trained && !input.validating {
                    out.frozen_samples += x.dims().first().copied().unwrap_or(0) as u64;
                }
                if is_trained && out.trained_output.is_none() {
                    out.trained_output = outputs
                        .iter()
                        .find(|(p, _)| p == "output")
                        .map(|(_, t)| t.clone());
                }
                outputs
                    .into_iter()
                    .map(|(port, t)| {
                        // A frozen model is a constant for this stage: no gradient flows back.
                        let t = if is_trained { t } else { t.detach() };
                        (port, Value::Tensor(t))
                    })
                    .collect()
            }
            Op::CachedForward { model } => {
                let (source, _) = argument(graph, node_id, 0)
                    .ok_or_else(|| plan_error("a cached forward without a batch"))?;
                let Some(Op::Batch { data, split }) = graph.node_weight(source).map(|n| &n.op)
                else {
                    return Err(plan_error("a cached forward must read a batch"));
                };
                let batch = batch_of(input, data, split)?;
                // While validating, the batch comes from the validation split.
                let (data, split) = match input.validation {
                    Some(v) if input.validating => (v.data.clone(), v.split.clone()),
                    _ => (data.clone(), split.clone()),
                };
                let instance = models
                    .get_mut(model)
                    .ok_or_else(|| plan_error(format!("no model `{model}`")))?;
                // Only what the stage reads is kept: a teacher's 1,200-wide hidden tap
                // cached for every MNIST image would cost 264 MB and serve nothing.
                let wanted = kd_plan::read_ports(graph, node_id);
                let cached = cache.forward(
                    &(model.clone(), data, split),
                    batch.split_samples,
                    &batch.indices,
                    &batch.x,
                    |x| {
                        let mut outputs = instance.forward_with(x, false, true, false)?;
                        outputs.retain(|(port, _)| wanted.contains(port));
                        Ok(outputs)
                    },
                )?;
                if !input.validating {
                    out.frozen_samples += cached.computed as u64;
                }
                cached
                    .ports
                    .into_iter()
                    .map(|(port, t)| (port, Value::Tensor(t)))
                    .collect()
            }
            Op::Const { value } => single(Value::Const(*value)),
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow => {
                single(arithmetic(&node.op, arg(0)?.0, arg(1)?.0)?)
            }
            Op::Neg => single(match arg(0)?.0 {
                Value::Const(c) => Value::Const(-c),
                other => Value::Tensor(other.tensor()?.neg().ctx("negation")?),
            }),
            Op::Softmax | Op::LogSoftmax => {
                let (x, kind) = arg(0)?;
                let temperature = match argument(graph, node_id, 1) {
                    Some(_) => arg(1)?.0.constant()?,
                    None => 1.0,
                };
                let dist = match x {
                    Value::Tensor(t)
                        if !matches!(kind, Kind::Probabilities | Kind::LogProbabilities) =>
                    {
                        Dist::from_logits(t, temperature).ctx("softmax")?
                    }
                    // Tempering a distribution: its logarithm is a valid score vector.
                    other => Dist::from_logits(&other.dist(kind)?.log_probs, temperature)
                        .ctx("softmax")?,
                };
                single(Value::Dist {
                    dist,
                    log_first: node.op == Op::LogSoftmax,
                })
            }
            Op::Kl => {
                let (p, p_kind) = arg(0)?;
                let (q, q_kind) = arg(1)?;
                single(Value::Tensor(
                    losses::kl(&p.dist(p_kind)?, &q.dist(q_kind)?).ctx("kl")?,
                ))
            }
            Op::SoftCrossEntropy => {
                let (q, q_kind) = arg(0)?;
                let (p, p_kind) = arg(1)?;
                let loss = losses::soft_cross_entropy(&q.dist(q_kind)?, &p.probs(p_kind)?)
                    .ctx("soft cross-entropy")?;
                single(Value::Tensor(loss))
            }
            Op::CrossEntropy => {
                let logits = arg(0)?.0.tensor()?;
                let labels = match arg(1)?.0 {
                    Value::Labels(labels) => labels,
                    _ => {
                        return Err(plan_error(
                            "cross_entropy needs labels as its second argument",
                        ))
                    }
                };
                single(Value::Tensor(
                    losses::cross_entropy(&logits, labels).ctx("cross-entropy")?,
                ))
            }
            Op::Mse => single(Value::Tensor(
                losses::mse(&arg(0)?.0.tensor()?, &arg(1)?.0.tensor()?).ctx("mse")?,
            )),
            Op::Cosine => single(Value::Tensor(
                losses::cosine(&arg(0)?.0.tensor()?, &arg(1)?.0.tensor()?).ctx("cosine")?,
            )),
            Op::AttentionTransfer => single(Value::Tensor(
                losses::attention_transfer(&arg(0)?.0.tensor()?, &arg(1)?.0.tensor()?)
                    .ctx("attention transfer")?,
            )),
            Op::Project { name, .. } => {
                let x = arg(0)?.0.tensor()?;
                let (weight, bias) = input.projections.get(name).ok_or_else(|| {
                    plan_error(format!(
                        "stage `{}` has no projection `{name}`",
                        input.stage.name
                    ))
                })?;
                let y = x
                    .broadcast_matmul(&weight.as_tensor().t().ctx("projection")?)
                    .and_then(|y| y.broadcast_add(bias.as_tensor()))
                    .ctx_with(|| format!("projection `{name}`"))?;
                single(Value::Tensor(y))
            }
            Op::Loss => {
                let loss = arg(0)?.0.tensor()?;
                if loss.elem_count() != 1 {
                    return Err(plan_error(format!(
                        "the loss of stage `{}` is not a scalar (shape {:?})",
                        input.stage.name,
                        loss.dims()
                    )));
                }
                let loss = loss
                    .flatten_all()
                    .and_then(|l| l.sum_all())
                    .ctx("the loss")?;
                if node_id == input.stage.loss || out.loss.is_none() {
                    out.loss = Some(loss.clone());
                }
                single(Value::Tensor(loss))
            }
        };
        values.insert(node_id, ports);
    }
    if let Some(loss) = &out.loss {
        if !all_finite(&Value::Tensor(loss.clone()))? {
            for node_id in &input.stage.nodes {
                let Some(ports) = values.get(node_id) else {
                    continue;
                };
                let mut finite = true;
                for (_, value) in ports {
                    finite &= all_finite(value)?;
                }
                if !finite {
                    out.non_finite.push(*node_id);
                }
            }
        }
    }
    Ok(out)
}

/// Whether every number a value holds is finite. Only used once a loss is not, so it may
/// copy. A distribution is judged by the form it is used in (a zero probability has a log
/// of minus infinity, which is no fault).
fn all_finite(value: &Value) -> Result<bool> {
    let tensor = match value {
        Value::Labels(_) => return Ok(true),
        Value::Const(c) => return Ok(c.is_finite()),
        other => other.tensor()?,
    };
    let values = tensor
        .flatten_all()
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .ctx("looking for a non-finite value")?;
    Ok(values.iter().all(|v| v.is_finite()))
}

/// The batch a `Batch` node of `data.split` hands out (the validation batch while
/// validating).
fn batch_of<'b>(input: &'b StepInput, data: &str, split: &str) -> Result<&'b BatchData> {
    match input.validation {
        Some(batch) if input.validating => Ok(batch),
        _ => input
            .batches
            .get(&(data.to_string(), split.to_string()))
            .ok_or_else(|| plan_error(format!("no batch of `{data}.{split}`"))),
    }
}

fn augment_ports(
    input: &StepInput,
    batch_node: NodeId,
    pipeline: &str,
    batch_ports: &Ports,
) -> Result<Ports> {
    let spec = input
        .plan
        .augment(pipeline)
        .ok_or_else(|| plan_error(format!("no augmentation `{pipeline}`")))?;
    let data_name = match input.plan.graph.node_weight(batch_node).map(|n| &n.op) {
        Some(Op::Batch { data, .. }) => data.clone(),
        _ => input.stage.data.clone(),
    };
    let sample_shape = input
        .plan
        .data(&data_name)
        .map(|d| d.sample_shape.clone())
        .ok_or_else(|| plan_error(format!("no data `{data_name}`")))?;
    let find = |port: &str| batch_ports.iter().find(|(p, _)| p == port).map(|(_, v)| v);
    let x = find("x")
        .ok_or_else(|| plan_error("augment input has no `x`"))?
        .tensor()?;
    let mut labels = match find("label") {
        Some(Value::Labels(labels)) => labels.clone(),
        _ => return Err(plan_error("augment input has no `label`")),
    };
    let dims = x.dims().to_vec();
    let mut host = x
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .ctx("reading a batch")?;
    let fill = input
        .fills
        .get(&data_name)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let key = AugmentKey {
        seed: input.seed,
        stage: &input.stage.name,
        epoch: input.epoch,
        step: input.step,
    };
    match input.plan.data(&data_name).and_then(|d| d.text.as_ref()) {
        Some(text) => {
            let tokens = augment::Tokens {
                pad_id: text.pad_id,
                mask_id: text.mask_id,
                special: &text.special_ids,
            };
            augment::apply_text(&spec.ops, &mut host, text.max_len, tokens, key);
        }
        None => augment::apply(&spec.ops, &mut host, &mut labels, &sample_shape, fill, key),
    }
    let x = Tensor::from_vec(host, dims, x.device()).ctx("building an augmented batch")?;
    Ok(vec![
        ("x".to_string(), Value::Tensor(x)),
        ("label".to_string(), Value::Labels(labels)),
    ])
}

/// `a op b` for constants and tensors; constants fold, scalars broadcast.
fn arithmetic(op: &Op, a: &Value, b: &Value) -> Result<Value> {
    let fail = |source| RuntimeError::Tensor {
        context: format!("{op:?}"),
        source,
    };
    if let (Value::Const(a), Value::Const(b)) = (a, b) {
        return Ok(Value::Const(match op {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
            Op::Div => a / b,
            _ => a.powf(*b),
        }));
    }
    let result = match (a, b) {
        (a, Value::Const(c)) => {
            let t = a.tensor()?;
            match op {
                Op::Add => t.affine(1.0, *c),
                Op::Sub => t.affine(1.0, -c),
                Op::Mul => t.affine(*c, 0.0),
                Op::Div => t.affine(1.0 / c, 0.0),
                _ => t.powf(*c),
            }
        }
        (Value::Const(c), b) => {
            let t = b.tensor()?;
            match op {
                Op::Add => t.affine(1.0, *c),
                Op::Sub => t.affine(-1.0, *c),
                Op::Mul => t.affine(*c, 0.0),
                Op::Div => t.recip().and_then(|r| r.affine(*c, 0.0)),
                // c^t = exp(t ln c)
                _ => t.affine(c.ln(), 0.0).and_then(|t| t.exp()),
            }
        }
        (a, b) => {
            let (a, b) = (a.tensor()?, b.tensor()?);
            match op {
                Op::Add => a.broadcast_add(&b),
                Op::Sub => a.broadcast_sub(&b),
                Op::Mul => a.broadcast_mul(&b),
                Op::Div => a.broadcast_div(&b),
                _ => a.broadcast_pow(&b),
            }
        }
    };
    result.map(Value::Tensor).map_err(fail)
}
