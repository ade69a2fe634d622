//! The Plan: the contract between the compiler and the runtime.
//!
//! A Plan is everything the runtime needs to run a pipeline and nothing it does not: data
//! sources with resolved paths and split sizes, augmentation pipelines, models as layer
//! lists with their inferred shapes, a dataflow graph of tensor operations (batches, model
//! forwards, loss expressions) and one schedule per stage. It serialises to YAML and back;
//! the runtime never sees the `.kd` source. Every graph node keeps the byte span of the
//! source text that made it, so an error found while running still points at a line.

use std::path::PathBuf;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod sweep;
pub use sweep::{Selection, SweepConfig, SweepPlan};

/// Bumped whenever a Plan written by an older kdc could be misread by a newer one.
pub const PLAN_VERSION: u32 = 4;

/// Byte offsets `[start, end)` into the `.kd` source.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Plan {
    pub version: u32,
    pub source: SourceInfo,
    pub settings: Settings,
    pub data: Vec<DataSpec>,
    pub augments: Vec<AugmentSpec>,
    pub models: Vec<ModelSpec>,
    pub graph: Graph,
    pub stages: Vec<Stage>,
    pub evaluations: Vec<Evaluation>,
    pub exports: Vec<Export>,
    /// The `--set key=value` overrides applied before checking, for provenance.
    #[serde(default)]
    pub overrides: Vec<Override>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SourceInfo {
    /// The `.kd` file the Plan was compiled from.
    pub path: PathBuf,
    /// The folder every relative path in the Plan resolves against (the `.kd` file's folder).
    pub base_dir: PathBuf,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Override {
    pub key: String,
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Settings {
    pub name: String,
    pub seed: u64,
    pub device: Device,
    /// Folder under which `kdc run` makes `<name>-<timestamp>` run folders.
    pub output: PathBuf,
    /// Worker threads for the CPU kernels; `None` lets the runtime decide.
    pub threads: Option<usize>,
    /// Run the whole pipeline this many times with seeds `seed, seed + 1, ...`.
    pub repeat: u32,
    /// Also write a checkpoint every this many optimizer steps (always at each epoch's end).
    #[serde(default)]
    pub checkpoint_every: Option<usize>,
    /// What a non-finite loss or gradient does to a stage.
    #[serde(default)]
    pub non_finite: NonFinite,
    /// Where cached frozen-model outputs live.
    #[serde(default)]
    pub cache: CacheMode,
    /// The arithmetic models compute in unless their own declaration says otherwise.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// The floating-point format a model computes in. Trained weights stay f32 either way
/// (the optimizer's master copy); under `Bf16` each forward casts them, so activations
/// and gradients inside the model are bf16.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    pub fn name(&self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Where the outputs of frozen models (a cached teacher, a frozen BERT encoder) are kept.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// In memory, for the run.
    #[default]
    Memory,
    /// Also on disk under `<output>/cache/`, as safetensors files named by a hash of the
    /// model's weights, the data and the outputs kept, so later runs skip the forwards.
    Disk,
    /// Never: every step runs the frozen model again (to measure it, or to spare memory).
    Off,
}

/// The answer to a non-finite loss or gradient.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    /// Stop the run with a diagnostic; the last checkpoint stays as it was.
    #[default]
    Stop,
    /// Skip the batch (no update) and count it in the summary.
    Skip,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    Cpu,
    Cuda(usize),
    Auto,
}

// ---------------------------------------------------------------------------------------
// Data

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DataSpec {
    pub name: String,
    pub source: DataSource,
    /// Shape of one sample as the models see it, e.g. `[1, 28, 28]`.
    pub sample_shape: Vec<usize>,
    pub classes: usize,
    /// Human-readable class names, `classes` of them.
    pub class_names: Vec<String>,
    /// Maps a source label `l` to `relabel[l]` (e.g. digits 0-4 to 0, 5-9 to 1).
    pub relabel: Option<Vec<usize>>,
    /// Use only the first `limit` samples of the training part (and of the test part).
    pub limit: Option<usize>,
    /// Raw values are divided by this before normalisation (255 for IDX bytes).
    pub scale: f64,
    pub normalize: Normalize,
    pub splits: Vec<SplitSpec>,
    /// Set for text data: how samples become token ids.
    #[serde(default)]
    pub text: Option<TextSpec>,
    /// The samples the checker found, after `limit`: what editors show. The runtime counts
    /// again when it reads the files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<Samples>,
}

/// Samples in a data source's training part, and in its own test part (IDX `t10k` files).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Samples {
    pub train: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<usize>,
}

/// Tokenisation of a text data source: each sample becomes `max_len` token ids, padded
/// with `pad_id` at the end (the attention mask is `id != pad_id`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TextSpec {
    /// A Hugging Face `tokenizer.json`.
    pub tokenizer: PathBuf,
    pub max_len: usize,
    pub vocab: usize,
    pub pad_id: u32,
    /// The id text augmentation's `mask_tokens` writes (`None`: the tokenizer has no mask
    /// token, and the checker refuses `mask_tokens` on this data).
    pub mask_id: Option<u32>,
    /// Ids that augmentation never drops, masks or moves (`[CLS]`, `[SEP]`, ...).
    pub special_ids: Vec<u32>,
}

/// How a text source is laid out on disk.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TextFormat {
    /// One JSON object per line.
    Jsonl,
    /// A JSON array of objects.
    Json,
    /// Comma-separated, with a header row naming the fields.
    Csv,
    /// Tab-separated, with a header row naming the fields.
    Tsv,
    /// One file per sample, in one sub-folder per raw label.
    Folders,
}

/// The colour an image source's samples have.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImageColor {
    Rgb,
    Gray,
}

/// A table file's format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TableFormat {
    Parquet,
    /// Arrow IPC, the file or the stream format.
    Arrow,
}

/// How a table's encoded images become `[C, H, W]` samples (as `DataSource::Images`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableImages {
    pub color: ImageColor,
    pub resize: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// IDX files (raw or gzip). `test_*` are the source's own test set, where it has one.
    Idx {
        train_images: PathBuf,
        train_labels: PathBuf,
        test_images: Option<PathBuf>,
        test_labels: Option<PathBuf>,
    },
    /// A CSV file (raw or gzip) of numeric features and one label column.
    Csv {
        path: PathBuf,
        header: bool,
        /// Zero-based index of the label column in each row.
        label_column: usize,
        delimiter: char,
    },
    /// NumPy `.npy` files of samples (`[N, ...]`) and labels (`[N]`), and optionally the
    /// source's own test part.
    Npy {
        x: PathBuf,
        y: PathBuf,
        test_x: Option<PathBuf>,
        test_y: Option<PathBuf>,
        /// Samples stored channels last (`[N, H, W, C]`): models see `[C, H, W]`.
        channels_last: bool,
    },
    /// Arrays of one NumPy `.npz` archive, named by their keys.
    Npz {
        path: PathBuf,
        x: String,
        y: String,
        test_x: Option<String>,
        test_y: Option<String>,
        channels_last: bool,
    },
    /// Images (PNG, BMP, JPEG, WebP): a folder with one sub-folder per class, or a list
    /// file (CSV/TSV/JSON Lines/JSON) of `path` and `label` fields. Samples are
    /// `sample_shape` (`[C, H, W]`), kept as bytes.
    Images {
        path: PathBuf,
        /// The source's own test part: a second folder (or list) of the same classes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<PathBuf>,
        /// Raw label (a class folder's name, or the list's label) to class index.
        classes: Vec<(String, usize)>,
        color: ImageColor,
        /// Scale the shorter side to this, then crop the centre to the sample's H x W.
        resize: Option<u32>,
    },
    /// A Parquet or Arrow IPC table, or a folder of them read in name order: one column of
    /// encoded images or of texts (see `DataSpec::text` for tokenisation), one of labels.
    Table {
        format: TableFormat,
        path: PathBuf,
        /// The source's own test part: another table (or folder) with the same columns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<PathBuf>,
        /// The column holding the samples.
        column: String,
        /// The column holding the labels.
        label: String,
        /// Raw label (a string, an integer in decimal, or a ClassLabel's name) to class index.
        classes: Vec<(String, usize)>,
        /// For an image column, how images become samples; `None`: a text column.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        images: Option<TableImages>,
    },
    /// Text samples with a label each (see `DataSpec::text` for tokenisation).
    Text {
        /// A file, or for `folders` the folder holding one sub-folder per raw label.
        path: PathBuf,
        format: TextFormat,
        /// The field holding the text (unused for `folders`).
        text_field: String,
        /// The field holding the label (unused for `folders`: the sub-folder's name).
        label_field: String,
        /// For `folders`: only files whose name ends with this (e.g. `.txt`).
        extension: Option<String>,
        /// Raw label value to class index; every value met must be listed.
        classes: Vec<(String, usize)>,
        /// Drop e-mail style headers: keep what follows the first blank line.
        skip_headers: bool,
    },
}

impl DataSource {
    /// Every file the source reads, for provenance hashes.
    pub fn files(&self) -> Vec<&PathBuf> {
        match self {
            DataSource::Idx {
                train_images,
                train_labels,
                test_images,
                test_labels,
            } => {
                let mut files = vec![train_images, train_labels];
                files.extend(test_images.iter());
                files.extend(test_labels.iter());
                files
            }
            DataSource::Npy {
                x,
                y,
                test_x,
                test_y,
                ..
            } => {
                let mut files = vec![x, y];
                files.extend(test_x.iter());
                files.extend(test_y.iter());
                files
            }
            DataSource::Images { path, test, .. } | DataSource::Table { path, test, .. } => {
                let mut files = vec![path];
                files.extend(test.iter());
                files
            }
            DataSource::Csv { path, .. }
            | DataSource::Npz { path, .. }
            | DataSource::Text { path, .. } => vec![path],
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    None,
    /// `(x - mean[c]) / std[c]` per channel (one value applies to every channel).
    Given {
        mean: Vec<f64>,
        std: Vec<f64>,
    },
    /// Mean and standard deviation per channel, computed on the `train` split only.
    TrainStats,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SplitSpec {
    pub name: String,
    pub size: SplitSize,
    /// Whether stages and evaluations may read this split's labels.
    pub labeled: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SplitSize {
    /// Exactly this many samples of the training part, stratified by label.
    Count(usize),
    /// This fraction of the training part, stratified by label.
    Fraction(f64),
    /// The source's own test set (IDX `t10k` files).
    SourceTest,
}

// ---------------------------------------------------------------------------------------
// Augmentation

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AugmentSpec {
    pub name: String,
    pub ops: Vec<AugmentOp>,
}

/// Image augmentations on `[C, H, W]` samples; each draws from kdc's seeded generator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum AugmentOp {
    /// Pad by `padding` zeros on each side, then crop back to the original size at random.
    RandomCrop { padding: usize },
    /// Mirror left-right with probability `p`.
    Flip { p: f64 },
    /// Rotate by an angle drawn uniformly from `[-max_degrees, max_degrees]`.
    Rotate { max_degrees: f64 },
    /// Shift by whole pixels drawn uniformly from `[-max_pixels, max_pixels]` on each axis.
    Translate { max_pixels: usize },
    /// Add Gaussian noise of standard deviation `std` (in normalised units).
    Noise { std: f64 },
    /// Zero a `size` x `size` square at a random centre.
    Cutout { size: usize },
    /// Blend each sample with another of the batch, weight drawn from Beta(alpha, alpha);
    /// the labels blend with the same weight.
    Mixup { alpha: f64 },
    /// Text: drop each token with probability `p` (the rest close up, padding grows).
    TokenDropout { p: f64 },
    /// Text: replace each token with the tokenizer's mask token with probability `p`.
    MaskTokens { p: f64 },
    /// Text: delete one span of 1 to `max` consecutive tokens at a random place.
    SpanDelete { max: usize },
    /// Text: swap `n` random pairs of tokens.
    SwapTokens { n: usize },
}

// ---------------------------------------------------------------------------------------
// Models

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Teacher,
    Student,
    Baseline,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// The instance name declared in the `.kd` file (`t`, `s`, `scratch`).
    pub name: String,
    /// The architecture it instantiates.
    pub architecture: String,
    pub role: Role,
    pub input: Vec<usize>,
    pub layers: Vec<LayerSpec>,
    pub taps: Vec<Tap>,
    /// Start from these safetensors weights instead of a fresh initialisation.
    pub init_from: Option<PathBuf>,
    /// Fresh weights are drawn from `(seed, init_key)`: a baseline shares its student's key,
    /// so both start from bitwise the same weights.
    pub init_key: String,
    pub params: usize,
    pub flops: u64,
    pub span: Span,
    /// Set for a model that runs from an ONNX file (frozen; `layers` is empty).
    #[serde(default)]
    pub onnx: Option<OnnxSpec>,
    /// Set for a BERT-family model from a checkpoint folder (`layers` is empty).
    #[serde(default)]
    pub bert: Option<BertSpec>,
    /// The input is token ids (`input tokens[len]`), padded with the data's pad id.
    #[serde(default)]
    pub tokens: bool,
    /// What the model computes in: its own `precision:`, else the pipeline's (an ONNX
    /// model always runs in its file's f32).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Set for a model made from another's weights by magnitude pruning (`prune(s)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<Pruning>,
    /// Set for an int8 model made from another after the stages (`quantize(s) on ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized: Option<Quantization>,
}

/// `quantize(from) on data.split { samples: N }`: `from`'s architecture and weights after
/// every stage, its `linear` and `conv2d` layers computing in int8: weights symmetric per
/// output channel, each layer's input symmetric per tensor with a scale calibrated on
/// `samples` samples of the split (1,024 by default), drawn from the seed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Quantization {
    pub from: String,
    pub data: String,
    pub split: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// The quantised layers' weights, by name (`linear1.weight`, `residual1.shortcut.weight`).
    pub weights: Vec<String>,
    /// `aware: true`: quantisation-aware training. The model is made (weights taken, input
    /// scales calibrated) when the first stage that uses it starts; stages train it with
    /// its linear and conv2d layers fake-quantised (straight-through gradients), and it
    /// computes in int8 after the last stage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aware: bool,
}

/// `prune(from) { sparsity: ..., every: ... }`: a model of `from`'s architecture that starts
/// from `from`'s weights as they are when a stage first uses it (or, if none does, when the
/// run evaluates), with the smallest-magnitude values of each tensor in `tensors` set to
/// zero and kept at zero by every later update (a mask per tensor).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Pruning {
    pub from: String,
    /// The fraction of each pruned tensor's values that are zero. A constant prunes once,
    /// when the model is made; a schedule prunes gradually over the first stage that trains
    /// the model, reaching its last value after the stage's last step.
    pub sparsity: ValueSchedule,
    /// A gradual schedule updates the masks after every `every` steps (and after the last).
    pub every: usize,
    /// Unstructured pruning: the tensors masked (see [`prunable`]); empty for neurons.
    pub tensors: Vec<String>,
    /// `granularity: neurons`: the layers whose outputs are removed, each with its reader.
    /// The model's `layers` are then the narrower ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neurons: Vec<NeuronGroup>,
}

/// Neurons removed from one layer (a linear layer's outputs, a convolution's output
/// channels): the rows of its weight and bias, the channels of the batch norms between it
/// and the layer that reads it, and that reader's columns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NeuronGroup {
    /// The layer's parameter prefix (`linear1`, `conv2`).
    pub layer: String,
    /// Batch norms in between, by prefix (`bn1`).
    pub norms: Vec<String>,
    /// The readers' parameter prefixes: a `linear` or `conv2d` layer, or the first such
    /// layer of a residual body and the block's shortcut (`residual1.conv1`,
    /// `residual1.shortcut`).
    pub readers: Vec<String>,
    /// The readers' input columns per neuron: 1, or a flattened channel's `H * W`.
    pub block: usize,
    /// Neurons before and after pruning.
    pub from: usize,
    pub keep: usize,
}

impl Pruning {
    /// Whether the sparsity follows a schedule over a stage (rather than one cut).
    pub fn gradual(&self) -> bool {
        !matches!(self.sparsity, ValueSchedule::Constant { .. })
    }
}

/// A BERT-family encoder from a folder holding `config.json` and `model.safetensors`,
/// run by candle-transformers, pooled, with a linear classification head.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BertSpec {
    /// The folder, as written in the `.kd` file: relative to `source.base_dir`.
    pub path: PathBuf,
    pub pooling: Pooling,
    pub classes: usize,
    pub trainable: Trainable,
    /// The checkpoint's encoder layers this model keeps, in order (all of them unless a
    /// student takes a subset, as DistilBERT takes every other layer).
    pub layers: Vec<usize>,
    pub hidden: usize,
    pub vocab: usize,
    /// Position embeddings in the checkpoint: the longest input.
    pub max_positions: usize,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean of the last layer over real (unpadded) tokens.
    Mean,
    /// The last layer at the first token (`[CLS]`).
    Cls,
}

/// Which parameters of a BERT model a stage that trains it updates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Trainable {
    /// The classification head only; the encoder's outputs are cached per sample.
    Head,
    /// The head and the last `n` encoder layers.
    Last(usize),
    /// Everything, embeddings included.
    All,
}

/// An ONNX model: the file, the graph's input and output values, and the tapped values.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OnnxSpec {
    /// As written in the `.kd` file: relative to `source.base_dir`.
    pub path: PathBuf,
    pub input: String,
    pub output: String,
    /// `(tap name in the pipeline, ONNX value name)`.
    pub taps: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// Prefix of the layer's parameter names (`linear1` gives `linear1.weight`).
    pub name: String,
    pub layer: Layer,
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub params: usize,
    /// Multiply-adds counted as two FLOPs, per sample, forward only.
    pub flops: u64,
    pub span: Span,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Acts on the last axis.
    Linear {
        out: usize,
        bias: bool,
    },
    Conv2d {
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    },
    MaxPool {
        kernel: usize,
        stride: usize,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
    },
    /// Batch norm over channels (axis 0 of a sample), or features for 1-D samples.
    BatchNorm {
        eps: f64,
        momentum: f64,
    },
    Dropout {
        p: f64,
    },
    Flatten,
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
    Softmax,
    /// `body(x) + shortcut(x)`; the shortcut is the identity unless given (a 1x1
    /// convolution or a linear layer, when the body changes the shape).
    Residual {
        body: Vec<LayerSpec>,
        shortcut: Option<Box<LayerSpec>>,
    },
    /// Token ids `[L]` to vectors `[L, dim]`; with `positions`, plus a learned vector per
    /// position.
    Embedding {
        vocab: usize,
        dim: usize,
        positions: bool,
    },
    /// Over the time axis of `[L, C]`, giving `[L', out]`.
    Conv1d {
        out: usize,
        kernel: usize,
        padding: usize,
        bias: bool,
    },
    /// `[L, C]` to `[L, hidden]` (`[L, 2 hidden]` both ways); padded steps carry the state.
    Lstm {
        hidden: usize,
        bidirectional: bool,
    },
    /// A pre-norm transformer encoder block on `[L, D]`: multi-head self-attention over
    /// the real tokens, then a feed-forward of width `ff`, each with a residual.
    Transformer {
        heads: usize,
        ff: usize,
        dropout: f64,
    },
    /// Normalises the last axis.
    LayerNorm {
        eps: f64,
    },
    /// `[L, C]` to `[C]` over the real tokens.
    Pool {
        kind: SeqPool,
    },
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SeqPool {
    /// Max over time (TextCNN).
    Max,
    Mean,
    /// The first token.
    First,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Tap {
    pub name: String,
    /// Index into `ModelSpec::layers`: the tap is that layer's output.
    pub layer: usize,
    pub ty: TensorType,
}

// ---------------------------------------------------------------------------------------
// The dataflow graph

/// What a tensor means; the checker enforces each built-in's argument kinds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A batch of model inputs.
    Input,
    /// Integer class labels (or blended labels after mixup).
    Labels,
    /// Unnormalised class scores.
    Logits,
    /// Rows that sum to one.
    Probabilities,
    /// Natural logarithms of probabilities.
    LogProbabilities,
    /// Intermediate activations.
    Features,
    /// A single number per batch (a loss or a constant).
    Scalar,
}

/// A tensor's kind and its per-sample shape (the batch axis is implicit).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub kind: Kind,
    pub shape: Vec<usize>,
}

impl TensorType {
    pub fn scalar() -> Self {
        TensorType {
            kind: Kind::Scalar,
            shape: vec![],
        }
    }
}

pub type Graph = StableDiGraph<Node, Edge>;
pub type NodeId = NodeIndex;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Node {
    /// The stage this node belongs to.
    pub stage: String,
    pub op: Op,
    /// Type of the node's main output (`x` of a batch, the loss of a loss op, ...).
    pub ty: TensorType,
    pub span: Span,
}

/// An edge feeds output `port` of its source node into argument `arg` of its target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Edge {
    pub port: String,
    pub arg: usize,
    pub ty: TensorType,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A shuffled mini-batch of `data.split`; ports `x` and `label`.
    Batch {
        data: String,
        split: String,
    },
    /// Applies an augmentation pipeline; argument 0 is the batch node (ports `x`, `label`),
    /// outputs ports `x` and `label`.
    Augment {
        pipeline: String,
    },
    /// Runs a model on argument 0; one output port per tap (and `output`). `train` says
    /// whether dropout and batch-norm statistics are in training mode.
    Forward {
        model: String,
        train: bool,
    },
    /// A frozen model's forward on a batch that no augmentation changed, so each sample's
    /// outputs are the same every epoch: the runtime computes them once per sample in the
    /// stage and serves them from a cache afterwards. Argument 0 and the ports are a
    /// `Forward`'s. Inserted by the compiler, never written by hand.
    CachedForward {
        model: String,
    },
    /// A constant scalar.
    Const {
        value: f64,
    },
    /// A scalar that changes over the stage, step by step: a named loss's parameter bound
    /// to a schedule (`hinton(T = linear(from: 8, to: 1))`). `name` is `LOSS.PARAM`, as
    /// metrics.jsonl logs it.
    Scheduled {
        name: String,
        schedule: ValueSchedule,
    },
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Neg,
    /// `softmax(x / T)`: argument 0 the logits, argument 1 the temperature.
    Softmax,
    /// `log_softmax(x / T)`: argument 0 the logits, argument 1 the temperature.
    LogSoftmax,
    /// `sum_j p_j (log p_j - log q_j)`, mean over the batch; arguments `p` (target), `q`.
    Kl,
    /// Mean over the batch of `-log softmax(x)[y]`; arguments logits, labels.
    CrossEntropy,
    /// Mean over the batch of `-sum_j p_j log q_j`; arguments q (logits or
    /// log-probabilities, the prediction), p (probabilities, the target).
    SoftCrossEntropy,
    /// Mean over all elements of `(a - b)^2`.
    Mse,
    /// Mean over the batch of `1 - cos(a, b)`.
    Cosine,
    /// Attention transfer (Zagoruyko and Komodakis): each argument's map is the mean over
    /// channels of squared activations, flattened and L2-normalised per sample; the loss is
    /// the mean squared difference of the two maps.
    AttentionTransfer,
    /// A trainable linear map of argument 0's last axis to `out` (`{stage}.{name}`): part
    /// of what the stage trains, never exported.
    Project {
        name: String,
        input: usize,
        out: usize,
    },
    /// The mean of two or more distributions of one width (arguments 0..n, probabilities
    /// or log-probabilities): several teachers' softened outputs as one target.
    Ensemble,
    /// The stage's objective: argument 0, a scalar.
    Loss,
}

/// How a scheduled scalar moves over a stage's steps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ValueSchedule {
    Constant {
        value: f64,
    },
    /// From `from` at the first step to `to` at the last, in a straight line.
    Linear {
        from: f64,
        to: f64,
    },
    /// From `from` at the first step to `to` at the last, along half a cosine.
    Cosine {
        from: f64,
        to: f64,
    },
    /// `from` before the fraction `at` of the stage's steps, `to` from there on.
    Step {
        from: f64,
        to: f64,
        at: f64,
    },
    /// From `from` to `to` along `1 - (1 - t)^3`: fast at first, flat at the end (Zhu and
    /// Gupta 2017's gradual pruning schedule).
    Cubic {
        from: f64,
        to: f64,
    },
}

impl ValueSchedule {
    /// The value at `step` (0-based) of `total` steps.
    pub fn at(&self, step: usize, total: usize) -> f64 {
        // 0 at the first step, 1 at the last.
        let along =
            step.min(total.saturating_sub(1)) as f64 / total.saturating_sub(1).max(1) as f64;
        match *self {
            ValueSchedule::Constant { value } => value,
            // Exactly `to` at the end (`from + (to - from)` can fall an ulp short: a
            // sparsity's neuron count rounds on it).
            ValueSchedule::Linear { to, .. } if along >= 1.0 => to,
            ValueSchedule::Linear { from, to } => from + (to - from) * along,
            ValueSchedule::Cosine { from, to } => {
                to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * along).cos())
            }
            ValueSchedule::Cubic { from, to } => to + (from - to) * (1.0 - along).powi(3),
            ValueSchedule::Step { from, to, at } => {
                // The first step of the switch, `ceil(at * total)`, the product taken a few
                // ulps down so that `0.07 * 100` (7.000000000000001) switches at step 7.
                let switch = (at * total as f64 * (1.0 - 4.0 * f64::EPSILON))
                    .ceil()
                    .max(0.0) as usize;
                if step < switch {
                    from
                } else {
                    to
                }
            }
        }
    }

    /// The first and last values: every value lies between them.
    pub fn ends(&self) -> (f64, f64) {
        match *self {
            ValueSchedule::Constant { value } => (value, value),
            ValueSchedule::Linear { from, to }
            | ValueSchedule::Cosine { from, to }
            | ValueSchedule::Cubic { from, to }
            | ValueSchedule::Step { from, to, .. } => (from, to),
        }
    }

    /// The schedule `form` (a name of `VALUE_SCHEDULES` in the compiler's vocabulary) with
    /// its arguments' values in the vocabulary's order; `None` for an unknown form or count.
    pub fn from_form(form: &str, values: &[f64]) -> Option<ValueSchedule> {
        Some(match (form, values) {
            ("constant", &[value]) => ValueSchedule::Constant { value },
            ("linear", &[from, to]) => ValueSchedule::Linear { from, to },
            ("cosine", &[from, to]) => ValueSchedule::Cosine { from, to },
            ("cubic", &[from, to]) => ValueSchedule::Cubic { from, to },
            ("step", &[from, to, at]) => ValueSchedule::Step { from, to, at },
            _ => return None,
        })
    }

    /// The form's name, as written in a `.kd` file.
    pub fn form(&self) -> &'static str {
        match self {
            ValueSchedule::Constant { .. } => "constant",
            ValueSchedule::Linear { .. } => "linear",
            ValueSchedule::Cosine { .. } => "cosine",
            ValueSchedule::Cubic { .. } => "cubic",
            ValueSchedule::Step { .. } => "step",
        }
    }
}

/// The node that feeds argument `arg` of `node`, with the port it reads.
pub fn argument(graph: &Graph, node: NodeId, arg: usize) -> Option<(NodeId, &Edge)> {
    use petgraph::visit::EdgeRef;
    graph
        .edges_directed(node, petgraph::Direction::Incoming)
        .find(|e| e.weight().arg == arg)
        .map(|e| (e.source(), e.weight()))
}

/// The ports of `node` that other nodes read, sorted, each once.
pub fn read_ports(graph: &Graph, node: NodeId) -> Vec<String> {
    let mut ports: Vec<String> = graph
        .edges_directed(node, petgraph::Direction::Outgoing)
        .map(|e| e.weight().port.clone())
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

// ---------------------------------------------------------------------------------------
// Stages

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Stage {
    pub name: String,
    pub kind: StageKind,
    /// The model whose parameters this stage updates.
    pub trains: String,
    /// Models run but not updated (a distillation stage's teacher).
    pub frozen: Vec<String>,
    pub data: String,
    pub split: String,
    pub augment: Option<String>,
    /// The `Loss` node of this stage in the graph.
    pub loss: NodeId,
    /// The nodes this stage runs, in an order where every node follows its arguments.
    pub nodes: Vec<NodeId>,
    pub epochs: usize,
    pub batch: usize,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value.
    pub clip: Option<f64>,
    pub validate: Option<Validate>,
    /// Set on stages that train a baseline: the stage they copy.
    pub baseline_of: Option<String>,
    pub span: Span,
    /// Trainable projections of the stage's feature losses (`Op::Project` nodes).
    #[serde(default)]
    pub projections: Vec<Projection>,
}

/// A `project(...)` in a stage's loss: a linear map with bias, `out x input`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Projection {
    pub name: String,
    pub input: usize,
    pub out: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    Train,
    /// From one teacher or several, in the order the stage names them.
    Distill {
        teachers: Vec<String>,
        student: String,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    Sgd {
        lr: f64,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
    /// Adam with L2 weight decay added to the gradient (as PyTorch's `Adam`).
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    /// Adam with decoupled weight decay (as PyTorch's `AdamW`).
    AdamW {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

impl Optimizer {
    pub fn lr(&self) -> f64 {
        match self {
            Optimizer::Sgd { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::AdamW { lr, .. } => *lr,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// Ramp the learning rate linearly from near zero over this many epochs first.
    pub warmup_epochs: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        every: usize,
        gamma: f64,
    },
    /// Cosine decay from the base rate to `min_lr` over the stage, per step.
    Cosine {
        min_lr: f64,
    },
    /// Linear decay from the base rate to zero over the stage, per step.
    Linear,
}

impl Schedule {
    /// Learning rate at `step` (0-based) of `total` steps, `steps_per_epoch` per epoch.
    pub fn lr_at(&self, base: f64, step: usize, total: usize, steps_per_epoch: usize) -> f64 {
        let warmup = self.warmup_epochs * steps_per_epoch;
        if step < warmup {
            return base * (step + 1) as f64 / warmup as f64;
        }
        let after = (step - warmup) as f64;
        let span = total.saturating_sub(warmup).max(1) as f64;
        match &self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step { every, gamma } => {
                let epoch = step / steps_per_epoch.max(1);
                base * gamma.powi((epoch / (*every).max(1)) as i32)
            }
            ScheduleKind::Cosine { min_lr } => {
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * after / span).cos())
            }
            ScheduleKind::Linear => base * (1.0 - after / span),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Validate {
    pub data: String,
    pub split: String,
    pub keep: Keep,
    /// Stop after this many epochs without improvement of the kept metric.
    pub early_stop: Option<usize>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Restore the weights of the epoch with the best value of the metric.
    Best(Metric),
    Last,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    Precision,
    Recall,
    F1,
    /// The stage's own loss on the validation split (lower is better).
    Loss,
    Confusion,
    PerClass,
    Agreement,
    Ece,
}

impl Metric {
    /// As the `.kd` language writes it.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::F1 => "f1",
            Metric::Loss => "loss",
            Metric::Confusion => "confusion",
            Metric::PerClass => "per_class",
            Metric::Agreement => "agreement",
            Metric::Ece => "ece",
        }
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Loss | Metric::Ece)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub models: Vec<String>,
    pub data: String,
    pub split: String,
    pub metrics: Vec<Metric>,
    pub span: Span,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Export {
    pub model: String,
    /// A path relative to the run folder.
    pub path: PathBuf,
    pub span: Span,
}

impl Plan {
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(self)
    }

    pub fn from_yaml(text: &str) -> Result<Plan, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }

    /// sha256 of the Plan's YAML form, less its source location: two Plans that would run
    /// the same way hash the same.
    pub fn hash(&self) -> String {
        let mut canonical = self.clone();
        canonical.source = SourceInfo {
            path: PathBuf::new(),
            base_dir: PathBuf::new(),
        };
        // Where a run executes is not what it computes: a run checkpointed on a GPU
        // resumes on the CPU (`kdc run --resume DIR --device cpu`) and the reverse.
        canonical.settings.device = Device::Auto;
        let text = serde_yaml::to_string(&canonical).unwrap_or_default();
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Where `other` differs from this plan, as `path: this -> other` lines, ignoring
    /// where each part came from (source paths and byte spans: an edited comment in the
    /// `.kd` file does not make another plan).
    pub fn differences(&self, other: &Plan) -> Vec<String> {
        let as_value = |plan: &Plan| {
            let mut plan = plan.clone();
            // Not part of the hash either (see `hash`).
            plan.settings.device = Device::Auto;
            let mut value = serde_yaml::to_value(&plan).unwrap_or(serde_yaml::Value::Null);
            if let serde_yaml::Value::Mapping(map) = &mut value {
                map.remove("source");
            }
            value
        };
        let mut found = Vec::new();
        diff_values("", &as_value(self), &as_value(other), &mut found);
        found
    }

    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn data(&self, name: &str) -> Option<&DataSpec> {
        self.data.iter().find(|d| d.name == name)
    }

    pub fn augment(&self, name: &str) -> Option<&AugmentSpec> {
        self.augments.iter().find(|a| a.name == name)
    }

    /// Resolves a path from the Plan against the `.kd` file's folder.
    pub fn resolve(&self, path: &std::path::Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.source.base_dir.join(path)
        }
    }
}

/// The tensors magnitude pruning applies to: the weight matrices and kernels of `linear`,
/// `conv2d`, `conv1d`, residual shortcuts, `lstm` and `transformer` layers. Biases, norms
/// and embeddings (a row per token, not connections) are left whole, as PyTorch's pruning
/// examples do.
pub fn prunable(layers: &[LayerSpec]) -> Vec<String> {
    parameter_shapes(layers)
        .into_iter()
        .filter(|(name, shape)| {
            let mut parts = name.rsplit('.');
            let field = parts.next().unwrap_or_default();
            let layer = parts.next().unwrap_or_default();
            shape.len() >= 2 && field.starts_with("weight") && !layer.starts_with("embedding")
        })
        .map(|(name, _)| name)
        .collect()
}

/// The weights of the layers int8 quantisation applies to: `linear` and `conv2d` layers
/// and residual shortcuts, anywhere in the model.
pub fn quantizable(layers: &[LayerSpec]) -> Vec<String> {
    let dense: Vec<String> = flat_layers(layers, "")
        .into_iter()
        .filter(|(_, l)| matches!(l.layer, Layer::Linear { .. } | Layer::Conv2d { .. }))
        .map(|(prefix, l)| format!("{prefix}{}.weight", l.name))
        .collect();
    parameter_shapes(layers)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| dense.contains(name) || name.ends_with(".shortcut.weight"))
        .collect()
}

/// Every layer with its name prefix (`residual1.` inside a block), blocks before their
/// bodies.
fn flat_layers<'l>(layers: &'l [LayerSpec], prefix: &str) -> Vec<(String, &'l LayerSpec)> {
    let mut out = Vec::new();
    for layer in layers {
        out.push((prefix.to_string(), layer));
        if let Layer::Residual { body, .. } = &layer.layer {
            out.extend(flat_layers(body, &format!("{prefix}{}.", layer.name)));
        }
    }
    out
}

/// The names and shapes of every tensor a model's safetensors file holds, in layer order:
/// `{layer}.weight` and `.bias`, batch norm's `.running_mean` and `.running_var`, and
/// `{residual}.{layer}.weight` / `{residual}.shortcut.weight` inside residual blocks.
pub fn parameter_shapes(layers: &[LayerSpec]) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for layer in layers {
        layer_parameters(layer, "", &mut out);
    }
    out
}

fn layer_parameters(layer: &LayerSpec, prefix: &str, out: &mut Vec<(String, Vec<usize>)>) {
    let name = format!("{prefix}{}", layer.name);
    match &layer.layer {
        Layer::Linear { out: width, bias } => {
            let inp = layer.input.last().copied().unwrap_or(0);
            out.push((format!("{name}.weight"), vec![*width, inp]));
            if *bias {
                out.push((format!("{name}.bias"), vec![*width]));
            }
        }
        Layer::Conv2d {
            out: channels,
            kernel,
            bias,
            ..
        } => {
            let c = layer.input.first().copied().unwrap_or(0);
            out.push((
                format!("{name}.weight"),
                vec![*channels, c, *kernel, *kernel],
            ));
            if *bias {
                out.push((format!("{name}.bias"), vec![*channels]));
            }
        }
        Layer::BatchNorm { .. } => {
            let c = layer.input.first().copied().unwrap_or(0);
            for field in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{name}.{field}"), vec![c]));
            }
        }
        Layer::Embedding {
            vocab,
            dim,
            positions,
        } => {
            out.push((format!("{name}.weight"), vec![*vocab, *dim]));
            if *positions {
                let len = layer.input.first().copied().unwrap_or(0);
                out.push((format!("{name}.positions"), vec![len, *dim]));
            }
        }
        Layer::Conv1d {
            out: channels,
            kernel,
            bias,
            ..
        } => {
            let c = layer.input.last().copied().unwrap_or(0);
            out.push((format!("{name}.weight"), vec![*channels, c, *kernel]));
            if *bias {
                out.push((format!("{name}.bias"), vec![*channels]));
            }
        }
        Layer::Lstm {
            hidden,
            bidirectional,
        } => {
            let c = layer.input.last().copied().unwrap_or(0);
            let directions: &[&str] = if *bidirectional {
                &["", "_reverse"]
            } else {
                &[""]
            };
            for d in directions {
                out.push((format!("{name}.weight_ih{d}"), vec![4 * hidden, c]));
                out.push((format!("{name}.weight_hh{d}"), vec![4 * hidden, *hidden]));
                out.push((format!("{name}.bias{d}"), vec![4 * hidden]));
            }
        }
        Layer::Transformer { ff, .. } => {
            let d = layer.input.last().copied().unwrap_or(0);
            for (part, shape) in [
                ("norm1.weight", vec![d]),
                ("norm1.bias", vec![d]),
                ("qkv.weight", vec![3 * d, d]),
                ("qkv.bias", vec![3 * d]),
                ("attn_out.weight", vec![d, d]),
                ("attn_out.bias", vec![d]),
                ("norm2.weight", vec![d]),
                ("norm2.bias", vec![d]),
                ("ff1.weight", vec![*ff, d]),
                ("ff1.bias", vec![*ff]),
                ("ff2.weight", vec![d, *ff]),
                ("ff2.bias", vec![d]),
            ] {
                out.push((format!("{name}.{part}"), shape));
            }
        }
        Layer::LayerNorm { .. } => {
            let d = layer.input.last().copied().unwrap_or(0);
            out.push((format!("{name}.weight"), vec![d]));
            out.push((format!("{name}.bias"), vec![d]));
        }
        Layer::Residual { body, shortcut } => {
            let inner = format!("{name}.");
            for l in body {
                layer_parameters(l, &inner, out);
            }
            if let Some(s) = shortcut {
                // A shortcut is always `{residual}.shortcut`, whatever its spec is called.
                let named = LayerSpec {
                    name: "shortcut".into(),
                    ..(**s).clone()
                };
                layer_parameters(&named, &inner, out);
            }
        }
        _ => {}
    }
}

/// The kind of a layer (or of the first layer inside a residual block) that kdc's ONNX
/// export cannot write, or `None` when the whole layer can be written. Sequence layers
/// inside a residual block are the one gap: the export tracks the attention mask along the
/// main path only.
pub fn onnx_unsupported(layer: &Layer) -> Option<&'static str> {
    match layer {
        Layer::Residual { body, shortcut } => {
            body.iter()
                .chain(shortcut.as_deref())
                .find_map(|l| match &l.layer {
                    Layer::Embedding { .. } => Some("embedding"),
                    Layer::Conv1d { .. } => Some("conv1d"),
                    Layer::Lstm { .. } => Some("lstm"),
                    Layer::Transformer { .. } => Some("transformer"),
                    Layer::Pool { .. } => Some("pool"),
                    other => onnx_unsupported(other),
                })
        }
        _ => None,
    }
}

/// What kdc itself writes at `path` (relative to a run folder), when an export there would
/// collide with it: `plan.yaml`, `summary.json`, `metrics.jsonl`, the checkpoint, the
/// `.kdc-run` marker, and the `seed-N` folders of repeated runs.
pub fn reserved_in_run_folder(path: &str) -> Option<&'static str> {
    let first = path.split('/').next().unwrap_or_default();
    match first {
        "plan.yaml" => Some("plan"),
        "summary.json" => Some("summary"),
        "metrics.jsonl" => Some("metrics log"),
        "checkpoint.safetensors" | "checkpoint.safetensors.partial" => Some("checkpoint"),
        ".kdc-run" => Some("run-folder marker"),
        f if f.starts_with("seed-") => Some("per-seed folder"),
        _ => None,
    }
}

/// Appends to `found` every place where `a` and `b` differ, skipping `span` fields.
fn diff_values(path: &str, a: &serde_yaml::Value, b: &serde_yaml::Value, found: &mut Vec<String>) {
    use serde_yaml::Value;
    let show = |v: &Value| {
        let text = match v {
            Value::Null => "nothing".to_string(),
            other => serde_yaml::to_string(other)
                .map(|s| s.trim().replace('\n', "; "))
                .unwrap_or_default(),
        };
        match text.char_indices().nth(100) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text,
        }
    };
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            let mut keys: Vec<&Value> = x.keys().collect();
            keys.extend(y.keys().filter(|k| !x.contains_key(*k)));
            for key in keys {
                let name = key
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| show(key));
                if name == "span" {
                    continue;
                }
                let null = Value::Null;
                diff_values(
                    &child(&name),
                    x.get(key).unwrap_or(&null),
                    y.get(key).unwrap_or(&null),
                    found,
                );
            }
        }
        (Value::Sequence(x), Value::Sequence(y)) => {
            for (index, (p, q)) in x.iter().zip(y).enumerate() {
                diff_values(&format!("{path}[{index}]"), p, q, found);
            }
            let null = Value::Null;
            for index in x.len().min(y.len())..x.len().max(y.len()) {
                let (p, q) = (x.get(index).unwrap_or(&null), y.get(index).unwrap_or(&null));
                found.push(format!("{path}[{index}]: {} -> {}", show(p), show(q)));
            }
        }
        (Value::Tagged(x), Value::Tagged(y)) if x.tag == y.tag => {
            let tag = x.tag.to_string();
            diff_values(
                &child(tag.trim_start_matches('!')),
                &x.value,
                &y.value,
                found,
            );
        }
        _ if a == b => {}
        _ => found.push(format!("{path}: {} -> {}", show(a), show(b))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_schedules_run_from_their_first_to_their_last_step() {
        let linear = ValueSchedule::Linear { from: 8.0, to: 1.0 };
        assert_eq!(linear.at(0, 8), 8.0);
        assert_eq!(linear.at(7, 8), 1.0);
        assert_eq!(linear.at(1, 8), 7.0);
        assert_eq!(linear.at(0, 1), 8.0, "a one-step stage takes `from`");
        // Exactly `to` at the end: 0.05 + (0.21 - 0.05) is 0.20999999999999996.
        let sparsity = ValueSchedule::Linear {
            from: 0.05,
            to: 0.21,
        };
        assert_eq!(sparsity.at(9, 10), 0.21);
        let cosine = ValueSchedule::Cosine { from: 1.0, to: 0.0 };
        assert_eq!(cosine.at(0, 5), 1.0);
        assert!((cosine.at(2, 5) - 0.5).abs() < 1e-12);
        assert!(cosine.at(4, 5).abs() < 1e-12);
        // `step` switches at ceil(at * total), even where the product rounds up.
        let step = ValueSchedule::Step {
            from: 0.0,
            to: 1.0,
            at: 0.07,
        };
        assert_eq!(step.at(6, 100), 0.0);
        assert_eq!(step.at(7, 100), 1.0);
        let half = ValueSchedule::Step {
            from: 0.0,
            to: 1.0,
            at: 0.5,
        };
        assert_eq!((half.at(4, 10), half.at(5, 10)), (0.0, 1.0));
        assert_eq!(ValueSchedule::Constant { value: 3.0 }.at(9, 10), 3.0);
        // Zhu and Gupta's cubic: 0.9 * (1 - (1 - t)^3), from 0 to 0.9, steps 0..=4.
        let cubic = ValueSchedule::Cubic { from: 0.0, to: 0.9 };
        let values: Vec<f64> = (0..5).map(|i| cubic.at(i, 5)).collect();
        let expected = [
            0.0,
            0.9 * (1.0 - 0.421875),
            0.9 * 0.875,
            0.9 * (1.0 - 0.015625),
            0.9,
        ];
        for (v, e) in values.iter().zip(expected) {
            assert!((v - e).abs() < 1e-12, "{values:?}");
        }
    }

    #[test]
    fn differences_name_the_changed_values_and_ignore_spans() {
        let mut a = Plan {
            version: PLAN_VERSION,
            source: SourceInfo {
                path: PathBuf::from("a.kd"),
                base_dir: PathBuf::new(),
            },
            settings: Settings {
                name: "a".into(),
                seed: 0,
                device: Device::Cpu,
                output: PathBuf::from("runs"),
                threads: None,
                repeat: 1,
                checkpoint_every: None,
                non_finite: NonFinite::Stop,
                cache: Default::default(),
                precision: Default::default(),
            },
            data: Vec::new(),
            augments: Vec::new(),
            models: Vec::new(),
            graph: Graph::default(),
            stages: Vec::new(),
            evaluations: Vec::new(),
            exports: Vec::new(),
            overrides: Vec::new(),
        };
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.settings.seed = 8;
        b.source.path = PathBuf::from("elsewhere.kd");
        a.settings.repeat = 2;
        assert_eq!(
            a.differences(&b),
            vec!["settings.seed: 0 -> 8", "settings.repeat: 2 -> 1"]
        );
    }

    fn schedule(kind: ScheduleKind, warmup_epochs: usize) -> Schedule {
        Schedule {
            kind,
            warmup_epochs,
        }
    }

    #[test]
    fn warmup_ramps_linearly_then_hands_over() {
        let s = schedule(ScheduleKind::Constant, 1);
        // 10 steps per epoch: steps 0..9 ramp to the base rate, then it stays.
        assert!((s.lr_at(0.1, 0, 100, 10) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(0.1, 9, 100, 10) - 0.1).abs() < 1e-12);
        assert_eq!(s.lr_at(0.1, 50, 100, 10), 0.1);
    }

    #[test]
    fn step_decays_every_n_epochs() {
        let s = schedule(
            ScheduleKind::Step {
                every: 2,
                gamma: 0.5,
            },
            0,
        );
        assert_eq!(s.lr_at(1.0, 19, 100, 10), 1.0);
        assert_eq!(s.lr_at(1.0, 20, 100, 10), 0.5);
        assert_eq!(s.lr_at(1.0, 45, 100, 10), 0.25);
    }

    #[test]
    fn cosine_and_linear_end_at_their_floor() {
        let cosine = schedule(ScheduleKind::Cosine { min_lr: 0.01 }, 0);
        assert_eq!(cosine.lr_at(1.0, 0, 100, 10), 1.0);
        assert!((cosine.lr_at(1.0, 50, 100, 10) - 0.505).abs() < 1e-12);
        assert!((cosine.lr_at(1.0, 100, 100, 10) - 0.01).abs() < 1e-12);
        let linear = schedule(ScheduleKind::Linear, 0);
        assert!((linear.lr_at(1.0, 75, 100, 10) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn parameter_names_follow_layer_names() {
        let linear = LayerSpec {
            name: "linear1".into(),
            layer: Layer::Linear { out: 3, bias: true },
            input: vec![4],
            output: vec![3],
            params: 15,
            flops: 24,
            span: Span::default(),
        };
        let bn = LayerSpec {
            name: "bn1".into(),
            layer: Layer::BatchNorm {
                eps: 1e-5,
                momentum: 0.1,
            },
            input: vec![3],
            output: vec![3],
            params: 6,
            flops: 6,
            span: Span::default(),
        };
        let names: Vec<String> = parameter_shapes(&[linear, bn])
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "linear1.weight",
                "linear1.bias",
                "bn1.weight",
                "bn1.bias",
                "bn1.running_mean",
                "bn1.running_var"
            ]
        );
    }
}
