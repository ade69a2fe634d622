//! What the checker needs to know about an ONNX file: its graph's inputs and outputs,
//! every value a node computes (with its shape when the file records it), the size of its
//! weights and the operators candle-onnx cannot run.

use std::collections::BTreeMap;
use std::path::Path;

use candle_onnx::onnx::{tensor_shape_proto::dimension::Value as Dim, type_proto, ValueInfoProto};
use prost::Message;

/// The operators candle-onnx 0.11 evaluates (`candle_onnx::simple_eval`).
const SUPPORTED: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Exp",
    "Equal",
    "Not",
    "MatMul",
    "Reshape",
    "LogSoftmax",
    "Softmax",
    "Transpose",
    "Dropout",
    "MaxPool",
    "AveragePool",
    "BatchNormalization",
    "Squeeze",
    "ConstantOfShape",
    "Unsqueeze",
    "Clip",
    "Gather",
    "GatherElements",
    "Shape",
    "Size",
    "Sqrt",
    "Range",
    "Greater",
    "Less",
    "LessOrEqual",
    "GreaterOrEqual",
    "Log",
    "Min",
    "Where",
    "Conv",
    "Concat",
    "Abs",
    "Cos",
    "Sin",
    "Neg",
    "Erf",
    "Tanh",
    "Sigmoid",
    "Gelu",
    "Relu",
    "PRelu",
    "Ceil",
    "Floor",
    "Constant",
    "Cast",
    "CumSum",
    "Flatten",
    "Identity",
    "If",
    "Pad",
    "Slice",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "Split",
    "Expand",
    "Tile",
    "ReduceSum",
    "ArgMin",
    "ArgMax",
    "LeakyRelu",
    "Gemm",
    "LSTM",
    "RNN",
    "Xor",
    "And",
    "Or",
    "Sign",
    "Selu",
    "OneHot",
    "HardSwish",
    "Resize",
    "Trilu",
    "ScatterND",
];

/// A value's dimensions: a number, or `None` for a symbolic one (`batch`) or one the file
/// does not give.
pub type Dims = Vec<Option<usize>>;

#[derive(Debug, Clone, Default)]
pub struct OnnxFacts {
    /// Graph inputs that are not weights, with their dimensions.
    pub inputs: BTreeMap<String, Option<Dims>>,
    pub outputs: BTreeMap<String, Option<Dims>>,
    /// Every value a node computes, with its dimensions when the file records them.
    pub values: BTreeMap<String, Option<Dims>>,
    /// Numbers in the weights (initializers).
    pub params: usize,
    /// `op_type (node name)` of each node candle-onnx cannot run.
    pub unsupported: Vec<String>,
    /// Values computed by a `Softmax` node: probabilities, not logits.
    pub softmax_outputs: Vec<String>,
}

fn dims(info: &ValueInfoProto) -> Option<Dims> {
    let Some(type_proto::Value::TensorType(tensor)) = info.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let shape = tensor.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Dim::DimValue(v)) if v > 0 => Some(v as usize),
                _ => None,
            })
            .collect(),
    )
}

/// Reads the file's graph; the error says what is wrong with the file.
pub fn read(path: &Path) -> Result<OnnxFacts, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let model = candle_onnx::onnx::ModelProto::decode(bytes.as_slice())
        .map_err(|e| format!("it is not an ONNX model ({e})"))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| "it holds no graph".to_string())?;
    let mut facts = OnnxFacts::default();
    let weights: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    for input in &graph.input {
        if !weights.contains(input.name.as_str()) {
            facts.inputs.insert(input.name.clone(), dims(input));
        }
    }
    for output in &graph.output {
        facts.outputs.insert(output.name.clone(), dims(output));
    }
    for node in &graph.node {
        for output in &node.output {
            facts.values.insert(output.clone(), None);
            if node.op_type == "Softmax" {
                facts.softmax_outputs.push(output.clone());
            }
        }
        // candle-onnx 0.11 indexes Gemm's optional third input unchecked.
        let gemm_without_c = node.op_type == "Gemm" && node.input.len() < 3;
        if !SUPPORTED.contains(&node.op_type.as_str()) || gemm_without_c {
            let name = if node.name.is_empty() {
                node.output.first().cloned().unwrap_or_default()
            } else {
                node.name.clone()
            };
            let what = if gemm_without_c {
                "Gemm without C"
            } else {
                node.op_type.as_str()
            };
            facts.unsupported.push(format!("{what} ({name})"));
        }
    }
    for info in graph.value_info.iter().chain(&graph.output) {
        if let Some(known) = facts.values.get_mut(&info.name) {
            *known = dims(info);
        }
    }
    // Saturating: a hostile file's dimensions may overflow.
    facts.params = graph
        .initializer
        .iter()
        .map(|t| {
            t.dims
                .iter()
                .fold(1usize, |n, &d| n.saturating_mul(d.max(0) as usize))
        })
        .fold(0usize, usize::saturating_add);
    Ok(facts)
}
