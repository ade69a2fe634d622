//! Evaluates a stage's dataflow nodes for one batch: batches, augmentation, model forwards,
//! arithmetic and the loss built-ins.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use kd_plan::{argument, Kind, NodeId, Op, Plan, Stage};

use crate::data::augment::{self, AugmentKey};
use crate::error::{plan_error, Result, RuntimeError, TensorContext};
use crate::model::Model;
use crate::train::cache::OutputCache;
use crate::train::losses::{self, Dist, Labels};

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
    /// The stage's step (0-based, over all its epochs) and its number of steps, which
    /// scheduled loss parameters follow (validation takes the epoch's last step).
    pub progress: (usize, usize),
    /// In a data-parallel training step, this rank and the number of ranks: the batches
    /// and their augmentations are made whole, then the rest of the step sees this rank's
    /// rows alone ([`crate::distributed::shard`]).
    pub shard: Option<(usize, usize)>,
    /// In a sweep: where frozen models' outputs of augmented batches are shared, and each
    /// frozen model's digest.
    pub frozen: Option<(&'a super::shared::Shared, &'a HashMap<String, sha2::Sha256>)>,
}

impl StepInput<'_> {
    /// The rows of a batch of `n` this step computes on: all of them, or this rank's.
    fn rows(&self, n: usize) -> std::ops::Range<usize> {
        match self.shard {
            Some((rank, size)) if !self.validating => crate::distributed::shard(n, rank, size),
            _ => 0..n,
        }
    }

    /// Where this step's rows start in its batches (0 but in a data-parallel step; every
    /// batch of a step has the same number of rows).
    fn first_row(&self) -> usize {
        match self.batches.values().next() {
            Some(batch) => self.rows(batch.indices.len()).start,
            None => 0,
        }
    }
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
    // Batches and augmentations before a data-parallel step takes its rows: an
    // augmentation is drawn on the whole batch, as one process draws it.
    let mut whole: HashMap<NodeId, Ports> = HashMap::new();
    let mut out = StepOutput::default();
    for &node in &input.stage.nodes {
        let op = &graph
            .node_weight(node)
            .ok_or_else(|| {
                plan_error(format!("stage `{}` lists a missing node", input.stage.name))
            })?
            .op;
        let args = Args {
            input,
            values: &values,
            node,
            op,
        };
        let ports: Ports = match op {
            Op::Batch { data, split } => {
                let batch = batch_of(input, data, split)?;
                let ports = vec![
                    ("x".to_string(), Value::Tensor(batch.x.clone())),
                    ("label".to_string(), Value::Labels(batch.labels.clone())),
                ];
                let rows = input.rows(batch.indices.len());
                let mine = rows_of(&ports, &rows)?;
                whole.insert(node, ports);
                mine
            }
            Op::Augment { pipeline } => {
                let ports = augment_node(&args, &whole, pipeline)?;
                let rows = input.rows(batch_rows(&ports));
                let mine = rows_of(&ports, &rows)?;
                whole.insert(node, ports);
                mine
            }
            Op::Forward { model, train } => forward_node(&args, model, *train, models, &mut out)?,
            Op::CachedForward { model } => {
                cached_forward_node(&args, model, models, cache, &mut out)?
            }
            Op::Loss => {
                let loss = loss_node(&args)?;
                if node == input.stage.loss || out.loss.is_none() {
                    out.loss = Some(loss.clone());
                }
                single(Value::Tensor(loss))
            }
            _ => single(value_node(&args)?),
        };
        values.insert(node, ports);
    }
    if let Some(loss) = &out.loss {
        if !all_finite(&Value::Tensor(loss.clone()))? {
            out.non_finite = non_finite_nodes(input, &values)?;
        }
    }
    Ok(out)
}

/// A single-output node's ports.
fn single(value: Value) -> Ports {
    vec![("out".to_string(), value)]
}

/// One node of a step and the values computed before it.
struct Args<'a> {
    input: &'a StepInput<'a>,
    values: &'a HashMap<NodeId, Ports>,
    node: NodeId,
    op: &'a Op,
}

impl<'a> Args<'a> {
    /// The value of argument `index`, and its kind.
    fn get(&self, index: usize) -> Result<(&'a Value, Kind)> {
        let (source, edge) =
            argument(&self.input.plan.graph, self.node, index).ok_or_else(|| {
                plan_error(format!(
                    "node {:?} of stage `{}` lacks argument {index}",
                    self.op, self.input.stage.name
                ))
            })?;
        let ports = self
            .values
            .get(&source)
            .ok_or_else(|| plan_error(format!("an argument of {:?} runs after it", self.op)))?;
        let value = match ports.iter().find(|(name, _)| *name == edge.port) {
            Some((_, value)) => value,
            // Single-output nodes answer whatever their one port is called.
            None if ports.len() == 1 => &ports[0].1,
            None => {
                return Err(plan_error(format!(
                    "no port `{}` on the argument of {:?}",
                    edge.port, self.op
                )))
            }
        };
        Ok((value, edge.ty.kind))
    }

    fn tensor(&self, index: usize) -> Result<Tensor> {
        self.get(index)?.0.tensor()
    }

    /// The node that argument `index` comes from.
    fn source(&self, index: usize) -> Option<NodeId> {
        argument(&self.input.plan.graph, self.node, index).map(|(source, _)| source)
    }

    fn source_op(&self, index: usize) -> Option<&'a Op> {
        let graph = &self.input.plan.graph;
        self.source(index)
            .and_then(|source| graph.node_weight(source))
            .map(|n| &n.op)
    }
}

/// The rows of a batch's or an augmentation's ports (`x`, `label`) a step computes on.
fn rows_of(ports: &Ports, rows: &std::ops::Range<usize>) -> Result<Ports> {
    if rows.start == 0 && rows.end == batch_rows(ports) {
        return Ok(ports.clone());
    }
    ports
        .iter()
        .map(|(port, value)| {
            let value = match value {
                Value::Tensor(t) => Value::Tensor(
                    t.narrow(0, rows.start, rows.len())
                        .ctx("taking this rank's rows of a batch")?,
                ),
                Value::Labels(labels) => Value::Labels(Labels {
                    classes: labels.classes.get(rows.clone()).unwrap_or(&[]).to_vec(),
                    mix: labels.mix.as_ref().map(|mix| losses::Mix {
                        partner: mix.partner.get(rows.clone()).unwrap_or(&[]).to_vec(),
                        lambda: mix.lambda,
                    }),
                }),
                other => other.clone(),
            };
            Ok((port.clone(), value))
        })
        .collect()
}

/// The number of rows of a batch's ports (its labels).
fn batch_rows(ports: &Ports) -> usize {
    ports
        .iter()
        .find_map(|(_, v)| match v {
            Value::Labels(labels) => Some(labels.classes.len()),
            _ => None,
        })
        .unwrap_or(0)
}

/// An augmentation of a batch (the batch itself while validating), drawn on the whole
/// batch (`whole` holds the batches before a data-parallel step took its rows).
fn augment_node(args: &Args, whole: &HashMap<NodeId, Ports>, pipeline: &str) -> Result<Ports> {
    let source = args
        .source(0)
        .ok_or_else(|| plan_error("augment without a batch"))?;
    let batch_ports = whole
        .get(&source)
        .or_else(|| args.values.get(&source))
        .ok_or_else(|| plan_error("augment runs before its batch"))?;
    match args.input.validating {
        true => Ok(batch_ports.clone()),
        false => augment_ports(args.input, source, pipeline, batch_ports),
    }
}

/// A model's forward: with a graph for the backward when it is the trained model, else as
/// a constant of the stage.
fn forward_node(
    args: &Args,
    model: &str,
    train: bool,
    models: &mut HashMap<String, Model>,
    out: &mut StepOutput,
) -> Result<Ports> {
    let input = args.input;
    let x = args.tensor(0)?;
    let is_trained = model == input.stage.trains;
    let instance = models
        .get_mut(model)
        .ok_or_else(|| plan_error(format!("no model `{model}`")))?;
    let train_mode = train && is_trained && !input.validating;
    // Dropout draws this rank's rows' masks, the ones one process would draw for them.
    instance.set_first_row(input.first_row());
    // Rows straight from a batch recur every epoch; augmented ones do not.
    let cacheable = input.validating || matches!(args.source_op(0), Some(Op::Batch { .. }));
    // Only the trained model needs a graph for the backward pass.
    let gradients = is_trained && !input.validating;
    // A sweep's frozen model on a batch another configuration met: its outputs again.
    let shared = match (input.frozen, is_trained || input.validating) {
        (Some((shared, prints)), false) => match prints.get(model) {
            Some(print) => Some((shared, super::shared::outputs_key(print, &x)?)),
            None => None,
        },
        _ => None,
    };
    let known = match &shared {
        Some((store, key)) => store.outputs(key)?,
        None => None,
    };
    let outputs = match known {
        Some(outputs) => outputs,
        None => {
            let outputs = instance.forward_with(&x, train_mode, cacheable, gradients)?;
            if !is_trained && !input.validating {
                out.frozen_samples += x.dims().first().copied().unwrap_or(0) as u64;
            }
            if let Some((store, key)) = shared {
                store.keep_outputs(key, &outputs)?;
            }
            outputs
        }
    };
    if is_trained && out.trained_output.is_none() {
        out.trained_output = outputs
            .iter()
            .find(|(p, _)| p == "output")
            .map(|(_, t)| t.clone());
    }
    Ok(outputs
        .into_iter()
        .map(|(port, t)| {
            // A frozen model is a constant for this stage: no gradient flows back.
            let t = if is_trained { t } else { t.detach() };
            (port, Value::Tensor(t))
        })
        .collect())
}

/// A frozen model's outputs for a batch's samples, from the stage's output cache.
fn cached_forward_node(
    args: &Args,
    model: &str,
    models: &mut HashMap<String, Model>,
    cache: &mut OutputCache,
    out: &mut StepOutput,
) -> Result<Ports> {
    let input = args.input;
    let Some(Op::Batch { data, split }) = args.source_op(0) else {
        return Err(plan_error("a cached forward must read a batch"));
    };
    let whole = batch_of(input, data, split)?;
    let rows = input.rows(whole.indices.len());
    let x = whole
        .x
        .narrow(0, rows.start, rows.len())
        .ctx("taking this rank's rows of a batch")?;
    let indices = &whole.indices[rows];
    // While validating, the batch comes from the validation split.
    let (data, split) = match input.validation {
        Some(v) if input.validating => (v.data.clone(), v.split.clone()),
        _ => (data.clone(), split.clone()),
    };
    let instance = models
        .get_mut(model)
        .ok_or_else(|| plan_error(format!("no model `{model}`")))?;
    // Only what the stage reads is kept: a teacher's 1,200-wide hidden tap cached for
    // every MNIST image would cost 264 MB and serve nothing.
    let wanted = kd_plan::read_ports(&input.plan.graph, args.node);
    let cached = cache.forward(
        &(model.to_string(), data, split),
        whole.split_samples,
        indices,
        &x,
        |x| {
            let mut outputs = instance.forward_with(x, false, true, false)?;
            outputs.retain(|(port, _)| wanted.contains(port));
            Ok(outputs)
        },
    )?;
    if !input.validating {
        out.frozen_samples += cached.computed as u64;
    }
    Ok(cached
        .ports
        .into_iter()
        .map(|(port, t)| (port, Value::Tensor(t)))
        .collect())
}

/// A stage's loss: its expression's value, which must be a scalar.
fn loss_node(args: &Args) -> Result<Tensor> {
    let loss = args.tensor(0)?;
    if loss.elem_count() != 1 {
        return Err(plan_error(format!(
            "the loss of stage `{}` is not a scalar (shape {:?})",
            args.input.stage.name,
            loss.dims()
        )));
    }
    loss.flatten_all().and_then(|l| l.sum_all()).ctx("the loss")
}

/// Arithmetic, distributions, the loss built-ins and projections: one value each.
fn value_node(args: &Args) -> Result<Value> {
    let tensor = Value::Tensor;
    Ok(match args.op {
        Op::Const { value } => Value::Const(*value),
        Op::Scheduled { schedule, .. } => {
            let (step, total) = args.input.progress;
            Value::Const(schedule.at(step, total))
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow => {
            arithmetic(args.op, args.get(0)?.0, args.get(1)?.0)?
        }
        Op::Neg => match args.get(0)?.0 {
            Value::Const(c) => Value::Const(-c),
            other => tensor(other.tensor()?.neg().ctx("negation")?),
        },
        Op::Softmax | Op::LogSoftmax => softmax_node(args)?,
        Op::Kl => {
            let (p, p_kind) = args.get(0)?;
            let (q, q_kind) = args.get(1)?;
            tensor(losses::kl(&p.dist(p_kind)?, &q.dist(q_kind)?).ctx("kl")?)
        }
        Op::SoftCrossEntropy => {
            let (q, q_kind) = args.get(0)?;
            let (p, p_kind) = args.get(1)?;
            let loss = losses::soft_cross_entropy(&q.dist(q_kind)?, &p.probs(p_kind)?)
                .ctx("soft cross-entropy")?;
            tensor(loss)
        }
        Op::CrossEntropy => {
            let Value::Labels(labels) = args.get(1)?.0 else {
                return Err(plan_error(
                    "cross_entropy needs labels as its second argument",
                ));
            };
            tensor(losses::cross_entropy(&args.tensor(0)?, labels).ctx("cross-entropy")?)
        }
        Op::Mse => tensor(losses::mse(&args.tensor(0)?, &args.tensor(1)?).ctx("mse")?),
        Op::Cosine => tensor(losses::cosine(&args.tensor(0)?, &args.tensor(1)?).ctx("cosine")?),
        Op::AttentionTransfer => tensor(
            losses::attention_transfer(&args.tensor(0)?, &args.tensor(1)?)
                .ctx("attention transfer")?,
        ),
        Op::Project { name, .. } => tensor(project(args, name)?),
        Op::Ensemble => ensemble_node(args)?,
        op @ (Op::Batch { .. }
        | Op::Augment { .. }
        | Op::Forward { .. }
        | Op::CachedForward { .. }
        | Op::Loss) => return Err(plan_error(format!("{op:?} is not a value node"))),
    })
}

/// `ensemble(p1, ..., pn)`: the mean of the distributions, its logarithm taken as a
/// log-sum-exp of theirs (stable where one of them is near zero).
fn ensemble_node(args: &Args) -> Result<Value> {
    let mut logs = Vec::new();
    while args.source(logs.len()).is_some() {
        let (value, kind) = args.get(logs.len())?;
        logs.push(value.dist(kind)?.log_probs);
    }
    if logs.len() < 2 {
        return Err(plan_error("an ensemble of fewer than two distributions"));
    }
    let n = logs.len() as f64;
    let log_mean = Tensor::stack(&logs, 0)
        .and_then(|l| l.log_sum_exp(0))
        .and_then(|l| l.affine(1.0, -n.ln()))
        .ctx("ensemble")?;
    Ok(Value::Dist {
        dist: Dist::from_log_probs(&log_mean).ctx("ensemble")?,
        log_first: false,
    })
}

/// `softmax(x, T)` or `log_softmax(x, T)`: a distribution kept in the form it will be read in.
fn softmax_node(args: &Args) -> Result<Value> {
    let (x, kind) = args.get(0)?;
    let temperature = match args.source(1) {
        Some(_) => args.get(1)?.0.constant()?,
        None => 1.0,
    };
    let dist = match x {
        Value::Tensor(t) if !matches!(kind, Kind::Probabilities | Kind::LogProbabilities) => {
            Dist::from_logits(t, temperature).ctx("softmax")?
        }
        // Tempering a distribution: its logarithm is a valid score vector.
        other => Dist::from_logits(&other.dist(kind)?.log_probs, temperature).ctx("softmax")?,
    };
    Ok(Value::Dist {
        dist,
        log_first: *args.op == Op::LogSoftmax,
    })
}

/// A stage's trainable projection `x @ W^T + b`.
fn project(args: &Args, name: &str) -> Result<Tensor> {
    let x = args.tensor(0)?;
    let (weight, bias) = args.input.projections.get(name).ok_or_else(|| {
        plan_error(format!(
            "stage `{}` has no projection `{name}`",
            args.input.stage.name
        ))
    })?;
    x.broadcast_matmul(&weight.as_tensor().t().ctx("projection")?)
        .and_then(|y| y.broadcast_add(bias.as_tensor()))
        .ctx_with(|| format!("projection `{name}`"))
}

/// The nodes of a step whose values are not all finite, in evaluation order.
fn non_finite_nodes(input: &StepInput, values: &HashMap<NodeId, Ports>) -> Result<Vec<NodeId>> {
    let mut out = Vec::new();
    for node in &input.stage.nodes {
        let Some(ports) = values.get(node) else {
            continue;
        };
        let mut finite = true;
        for (_, value) in ports {
            finite &= all_finite(value)?;
        }
        if !finite {
            out.push(*node);
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
