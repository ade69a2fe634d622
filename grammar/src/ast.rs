//! The spanned AST: what the user wrote, before any name is resolved.

use serde::Serialize;

/// Byte offsets `[start, end)` into the source text.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

impl From<Span> for miette::SourceSpan {
    fn from(span: Span) -> Self {
        (span.start, span.end.saturating_sub(span.start)).into()
    }
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Program {
    pub declarations: Vec<Declaration>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub enum Declaration {
    Pipeline(PipelineDecl),
    Data(DataDecl),
    Augment(AugmentDecl),
    Model(ModelDecl),
    Role(RoleDecl),
    Loss(LossDecl),
    Stage(StageDecl),
    Baseline(BaselineDecl),
    Evaluate(EvaluateDecl),
    Export(ExportDecl),
    Sweep(SweepDecl),
}

// ---------------------------------------------------------------------------------------
// Values and settings

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Value {
    pub kind: ValueKind,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub enum ValueKind {
    /// A number, with its unit (`deg`, `%`) if written.
    Number {
        value: f64,
        unit: Option<String>,
    },
    Str(String),
    Bool(bool),
    List(Vec<Value>),
    Name(String),
    Call(Call),
}

impl ValueKind {
    /// What the user reads in a diagnostic: "a number", "a string", ...
    pub fn describe(&self) -> &'static str {
        match self {
            ValueKind::Number { .. } => "a number",
            ValueKind::Str(_) => "a string",
            ValueKind::Bool(_) => "a boolean",
            ValueKind::List(_) => "a list",
            ValueKind::Name(_) => "a name",
            ValueKind::Call(_) => "a call",
        }
    }
}

/// `name(arg, key: arg, ...)`, or a bare `name` where a call may stand.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Call {
    pub name: Ident,
    pub args: Vec<Argument>,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Argument {
    pub name: Option<Ident>,
    pub value: Value,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Setting {
    pub key: Ident,
    pub value: SettingValue,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub enum SettingValue {
    Value(Value),
    Block(Vec<Setting>),
}

// ---------------------------------------------------------------------------------------
// Declarations

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct PipelineDecl {
    pub name: Ident,
    pub settings: Vec<Setting>,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct DataDecl {
    pub name: Ident,
    pub source: Call,
    pub settings: Vec<Setting>,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct AugmentDecl {
    pub name: Ident,
    pub ops: Vec<Call>,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ModelDecl {
    pub name: Ident,
    /// `input tokens[...]`: the model reads token ids.
    pub tokens: bool,
    pub input: Value,
    pub layers: Vec<LayerNode>,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct LayerNode {
    pub kind: LayerKind,
    /// `as name`: a tap on this layer's output.
    pub alias: Option<Ident>,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub enum LayerKind {
    Call(Call),
    Residual(Vec<LayerNode>),
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    Teacher,
    Student,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct RoleDecl {
    pub role: RoleKind,
    pub name: Ident,
    pub source: RoleSource,
    pub span: Span,
}

/// What a role is an instance of.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub enum RoleSource {
    /// `= arch` or `= arch from "weights.safetensors"`
    Architecture {
        architecture: Ident,
        init_from: Option<Value>,
        /// `{ precision: bf16 }` after it.
        settings: Vec<Setting>,
    },
    /// `= onnx("file.onnx") { ... }`
    Onnx(OnnxSource),
    Bert(BertSource),
    /// `= prune(s) { sparsity: 50% }`
    Prune(PruneSource),
    /// `= quantize(s) on digits.train { samples: 512 }`
    Quantize(QuantizeSource),
}

/// `quantize(model) on data.split { settings }`: the model in int8, calibrated on the split.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct QuantizeSource {
    pub source: Ident,
    pub data: DataRef,
    pub settings: Vec<Setting>,
    pub span: Span,
}

/// `prune(model) { settings }`: the model's architecture, its weights magnitude-pruned.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct PruneSource {
    pub source: Ident,
    pub settings: Vec<Setting>,
    pub span: Span,
}

/// `bert("folder") { settings }`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct BertSource {
    pub path: Value,
    pub settings: Vec<Setting>,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct OnnxSource {
    /// The file, a string literal.
    pub path: Value,
    pub ports: Vec<OnnxPort>,
    pub span: Span,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnnxPortRole {
    Input,
    Output,
    Tap,
}

/// `input "name" [shape]`, `output "name" [shape]` or `tap "name" [shape] as alias`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct OnnxPort {
    pub role: OnnxPortRole,
    /// The ONNX value's name, a string literal.
    pub value: Value,
    /// One sample's shape (a list), when written.
    pub shape: Option<Value>,
    pub alias: Option<Ident>,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct LossDecl {
    pub name: Ident,
    pub params: Vec<LossParam>,
    pub body: Expr,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct LossParam {
    pub name: Ident,
    pub default: Expr,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct StageDecl {
    pub name: Ident,
    pub statements: Vec<StageStmt>,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub enum StageStmt {
    Train {
        model: Ident,
        data: DataRef,
        augment: Option<Ident>,
        span: Span,
    },
    Distill {
        /// One teacher or several (`distill t1, t2 -> s`), in the order written.
        teachers: Vec<Ident>,
        student: Ident,
        data: DataRef,
        augment: Option<Ident>,
        span: Span,
    },
    Loss(Expr),
    Optimizer(Call),
    Schedule(Call),
    Validate(DataRef),
    /// `keep best <metric>` (`Some`) or `keep last` (`None`).
    Keep {
        best: Option<Ident>,
        span: Span,
    },
    /// `epochs N`, `batch N`, `clip X`, `early_stop N`.
    Setting(Setting),
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct DataRef {
    pub data: Ident,
    pub split: Ident,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct BaselineDecl {
    pub name: Ident,
    pub student: Ident,
    pub stages: Vec<Ident>,
    /// The teachers the baseline leaves out (`without t1, t2`); empty when not written.
    pub without: Vec<Ident>,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct EvaluateDecl {
    pub models: Vec<Ident>,
    pub data: DataRef,
    pub metrics: Vec<Ident>,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ExportDecl {
    pub model: Ident,
    pub paths: Vec<Value>,
    pub span: Span,
}

/// `sweep NAME { search ..., KEY in ..., select METRIC of MODEL on DATA.SPLIT }`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct SweepDecl {
    pub name: Ident,
    /// `grid` (the default when not written) or `random(trials: N, seed: S)`.
    pub search: Option<Call>,
    pub axes: Vec<SweepAxis>,
    pub select: Option<SweepSelect>,
    pub span: Span,
}

/// `KEY in [v1, v2]` or `KEY in uniform(a, b)`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct SweepAxis {
    /// A `--set` key (`stage.distill.epochs`), with the span of its text.
    pub key: Ident,
    pub values: SweepValues,
    pub span: Span,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub enum SweepValues {
    /// The alternatives, each a value as `--set` takes it.
    List(Vec<Value>),
    /// A distribution a random search samples from.
    Sample(Call),
}

/// `select accuracy of s on digits.val`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct SweepSelect {
    pub metric: Ident,
    pub model: Ident,
    pub data: DataRef,
    pub span: Span,
}

// ---------------------------------------------------------------------------------------
// Loss expressions

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Pow => "^",
        }
    }
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub enum ExprKind {
    Number(f64),
    /// A parameter or a bare name such as `label`.
    Name(Ident),
    /// `model.tap`
    Member {
        object: Ident,
        field: Ident,
    },
    Call {
        name: Ident,
        args: Vec<ExprArg>,
    },
    Binary {
        op: BinaryOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Neg(Box<Expr>),
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ExprArg {
    pub name: Option<Ident>,
    pub value: Expr,
}
