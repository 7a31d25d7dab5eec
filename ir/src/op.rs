//! Op kinds, their schemas (operands, attributes, regions) and the `Op` value.

use crate::attr::{Attr, Attrs};
use std::fmt;

macro_rules! op_kinds {
    ($( $variant:ident => $name:literal, $level:ident, $summary:literal; )*) => {
        /// Every op reformc knows, at both levels of the IR.
        ///
        /// ```
        /// use reformc_ir::OpKind;
        /// assert_eq!(OpKind::from_name("lsh_attention"), Some(OpKind::LshAttention));
        /// assert_eq!(OpKind::LshAttention.name(), "lsh_attention");
        /// ```
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OpKind { $($variant),* }

        impl OpKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$variant),*];

            /// The keyword of the text format.
            pub fn name(self) -> &'static str {
                match self { $(OpKind::$variant => $name),* }
            }

            /// One line on what the op computes.
            pub fn summary(self) -> &'static str {
                match self { $(OpKind::$variant => $summary),* }
            }

            /// Whether this is a model-level op (lowered by passes) or a tensor op.
            pub fn level(self) -> OpLevel {
                match self { $(OpKind::$variant => OpLevel::$level),* }
            }

            /// Looks a kind up by its keyword.
            pub fn from_name(name: &str) -> Option<OpKind> {
                match name { $($name => Some(OpKind::$variant),)* _ => None }
            }
        }
    };
}

/// The two levels of ops that share one graph (DESIGN.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpLevel {
    /// Graph inputs, weights, constants and random streams.
    Source,
    /// Model ops: fused, semantically rich, lowered where a backend lacks a kernel.
    Model,
    /// Tensor ops: the primitive vocabulary every backend implements.
    Tensor,
}

op_kinds! {
    Arg => "arg", Source, "a region argument (printed in the region header, never as an op)";
    Input => "input", Source, "a runtime input bound by name";
    Weight => "weight", Source, "a parameter tensor bound by name to a safetensors entry";
    Constant => "constant", Source, "a scalar constant";
    RandomNormal => "random_normal", Source, "N(0,1) samples from a counter-based generator keyed by (seed operand, stream)";
    Embedding => "embedding", Model, "rows of a table selected by integer ids";
    AxialPosEmbedding => "axial_pos_embedding", Model, "axial position embedding: concat(w0[p / n1], w1[p % n1])";
    LayerNorm => "layer_norm", Model, "layer normalisation over the last axis with weight and bias";
    Linear => "linear", Model, "x * w^T (+ b), optionally followed by an activation";
    Attention => "attention", Model, "full multi-head softmax attention over [B,L,H*d] tensors";
    LocalAttention => "local_attention", Model, "chunked local multi-head attention with neighbouring chunks";
    LshHash => "lsh_hash", Model, "angular LSH bucket ids with round offsets, [B,H,r,L]";
    LshAttention => "lsh_attention", Model, "Reformer LSH attention given bucket ids (shared QK)";
    ReversibleBlock => "reversible_block", Model, "reversible residual pair: y1 = x1 + f(x2), y2 = x2 + g(y1) on halves of the last axis";
    SeqChunk => "seq_chunk", Model, "applies its body to consecutive chunks of `size` along `axis` (the last may be shorter) and concatenates the results";
    PadToMultiple => "pad_to_multiple", Tensor, "pads an axis up to a multiple with a fill value (HF eval padding rule)";
    Truncate => "truncate", Tensor, "keeps the first n entries of an axis, n taken from a reference operand";
    Iota => "iota", Tensor, "0, 1, .., n-1 with n the reference operand's axis length";
    Index => "index", Tensor, "selects one position of an axis, dropping it";
    Slice => "slice", Tensor, "a constant range [start, end) of an axis";
    Add => "add", Tensor, "elementwise a + b with broadcasting";
    Sub => "sub", Tensor, "elementwise a - b with broadcasting";
    Mul => "mul", Tensor, "elementwise a * b with broadcasting";
    Div => "div", Tensor, "elementwise a / b with broadcasting";
    Max => "max", Tensor, "elementwise maximum with broadcasting";
    Min => "min", Tensor, "elementwise minimum with broadcasting";
    Lt => "lt", Tensor, "elementwise a < b, bool result";
    Eq => "eq", Tensor, "elementwise a == b, bool result";
    Neg => "neg", Tensor, "elementwise -x";
    Exp => "exp", Tensor, "elementwise e^x";
    Log => "log", Tensor, "elementwise natural logarithm";
    Sqrt => "sqrt", Tensor, "elementwise square root";
    Rsqrt => "rsqrt", Tensor, "elementwise 1/sqrt(x)";
    Tanh => "tanh", Tensor, "elementwise tanh";
    Act => "act", Tensor, "an activation function by name (relu, gelu, gelu_new, silu, tanh, sigmoid)";
    Cast => "cast", Tensor, "converts to the result dtype";
    Matmul => "matmul", Tensor, "batched matrix product [...,m,k] x [...,k,n]";
    Reduce => "reduce", Tensor, "sum, max, mean or logsumexp over axes";
    Softmax => "softmax", Tensor, "softmax along an axis";
    Gather => "gather", Tensor, "take_along_axis: out[..i..] = x[..idx[..i..]..]";
    Argmax => "argmax", Tensor, "index of the first maximum along an axis, axis removed";
    Argsort => "argsort", Tensor, "stable ascending sort permutation along an axis";
    Select => "select", Tensor, "cond ? a : b with broadcasting";
    Reshape => "reshape", Tensor, "same elements, the result type's shape";
    Transpose => "transpose", Tensor, "permutes axes";
    Concat => "concat", Tensor, "joins operands along an axis";
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type an attribute must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrType {
    Unit,
    Int,
    Float,
    Str,
    Ints,
    /// A float or an integer (for `constant`).
    Number,
}

/// One attribute an op accepts.
#[derive(Clone, Copy, Debug)]
pub struct AttrSpec {
    pub name: &'static str,
    pub ty: AttrType,
    pub required: bool,
    /// Smallest allowed value of an `Int` (or of every entry of `Ints`).
    pub min: i64,
}

const fn req(name: &'static str, ty: AttrType, min: i64) -> AttrSpec {
    AttrSpec {
        name,
        ty,
        required: true,
        min,
    }
}

const fn opt(name: &'static str, ty: AttrType, min: i64) -> AttrSpec {
    AttrSpec {
        name,
        ty,
        required: false,
        min,
    }
}

const ANY: i64 = i64::MIN;

/// Operands, attributes and regions an op kind takes.
#[derive(Clone, Copy, Debug)]
pub struct OpSchema {
    pub min_operands: usize,
    /// `None` for variadic ops.
    pub max_operands: Option<usize>,
    pub attrs: &'static [AttrSpec],
    /// Names of the regions, in order.
    pub regions: &'static [&'static str],
}

const fn schema(min: usize, max: Option<usize>, attrs: &'static [AttrSpec]) -> OpSchema {
    OpSchema {
        min_operands: min,
        max_operands: max,
        attrs,
        regions: &[],
    }
}

use AttrType as T;

const ATTENTION_COMMON: &[AttrSpec] = &[
    req("heads", T::Int, 1),
    req("scale", T::Float, ANY),
    opt("causal", T::Unit, ANY),
    opt("key_norm", T::Unit, ANY),
    opt("self_mask", T::Unit, ANY),
    // Chunked-exact attention: a streaming (online) softmax over key chunks of
    // this many keys; O(L) memory, the same result as the materialised softmax.
    opt("kv_chunk", T::Int, 1),
];

const LOCAL_ATTENTION: &[AttrSpec] = &[
    req("heads", T::Int, 1),
    req("scale", T::Float, ANY),
    req("chunk", T::Int, 1),
    req("before", T::Int, 0),
    req("after", T::Int, 0),
    opt("causal", T::Unit, ANY),
];

const LSH_ATTENTION: &[AttrSpec] = &[
    req("heads", T::Int, 1),
    req("chunk", T::Int, 1),
    req("before", T::Int, 0),
    req("after", T::Int, 0),
    opt("causal", T::Unit, ANY),
];

impl OpKind {
    /// The schema the verifier and the parser check against.
    pub fn schema(self) -> OpSchema {
        use OpKind::*;
        match self {
            Arg => schema(0, Some(0), &[]),
            Input | Weight => schema(0, Some(0), const { &[req("name", T::Str, ANY)] }),
            Constant => schema(0, Some(0), const { &[req("value", T::Number, ANY)] }),
            RandomNormal => schema(1, Some(1), const { &[req("stream", T::Int, 0)] }),
            Embedding => schema(2, Some(2), &[]),
            AxialPosEmbedding => schema(3, Some(3), &[]),
            LayerNorm => schema(3, Some(3), const { &[req("eps", T::Float, ANY)] }),
            Linear => schema(2, Some(3), const { &[opt("activation", T::Str, ANY)] }),
            Attention => schema(3, Some(4), ATTENTION_COMMON),
            LocalAttention => schema(3, Some(4), LOCAL_ATTENTION),
            LshHash => schema(
                2,
                Some(3),
                const {
                    &[
                        req("heads", T::Int, 1),
                        req("n_hashes", T::Int, 1),
                        req("buckets", T::Ints, 2),
                    ]
                },
            ),
            LshAttention => schema(3, Some(4), LSH_ATTENTION),
            ReversibleBlock => OpSchema {
                min_operands: 1,
                max_operands: Some(1),
                attrs: &[],
                regions: &["f", "g"],
            },
            // One operand; the body may capture outer values like any region.
            // The body's argument has the operand's type with the `axis` dim
            // replaced by a fresh symbol (the chunk length), see the verifier.
            SeqChunk => OpSchema {
                min_operands: 1,
                max_operands: Some(1),
                attrs: const { &[req("axis", T::Int, 0), req("size", T::Int, 1)] },
                regions: &["body"],
            },
            PadToMultiple => schema(
                1,
                Some(1),
                const {
                    &[
                        req("axis", T::Int, 0),
                        req("multiple", T::Int, 1),
                        req("min_len", T::Int, 0),
                        req("value", T::Number, ANY),
                    ]
                },
            ),
            Truncate => schema(2, Some(2), const { &[req("axis", T::Int, 0)] }),
            Iota => schema(1, Some(1), const { &[req("axis", T::Int, 0)] }),
            Index => schema(
                1,
                Some(1),
                const { &[req("axis", T::Int, 0), req("index", T::Int, 0)] },
            ),
            Slice => schema(
                1,
                Some(1),
                const {
                    &[
                        req("axis", T::Int, 0),
                        req("start", T::Int, 0),
                        req("end", T::Int, 0),
                    ]
                },
            ),
            Add | Sub | Mul | Div | Max | Min | Lt | Eq => schema(2, Some(2), &[]),
            Neg | Exp | Log | Sqrt | Rsqrt | Tanh | Cast => schema(1, Some(1), &[]),
            Act => schema(1, Some(1), const { &[req("fn", T::Str, ANY)] }),
            Matmul => schema(2, Some(2), &[]),
            Reduce => schema(
                1,
                Some(1),
                const {
                    &[
                        req("kind", T::Str, ANY),
                        req("axes", T::Ints, 0),
                        opt("keepdim", T::Unit, ANY),
                    ]
                },
            ),
            Softmax | Argmax | Argsort => schema(1, Some(1), const { &[req("axis", T::Int, 0)] }),
            Gather => schema(2, Some(2), const { &[req("axis", T::Int, 0)] }),
            Select => schema(3, Some(3), &[]),
            Reshape => schema(1, Some(1), &[]),
            Transpose => schema(1, Some(1), const { &[req("perm", T::Ints, 0)] }),
            Concat => schema(1, None, const { &[req("axis", T::Int, 0)] }),
        }
    }
}

/// Activation functions understood by `linear {activation}` and `act {fn}`.
pub const ACTIVATIONS: &[&str] = &[
    "relu",
    "gelu",
    "gelu_new",
    "gelu_fast",
    "silu",
    "tanh",
    "sigmoid",
];

/// Reductions understood by `reduce {kind}`.
pub const REDUCTIONS: &[&str] = &["sum", "max", "mean", "logsumexp"];

/// An op: its kind and attributes.
///
/// ```
/// use reformc_ir::{Attr, Op, OpKind};
/// let op = Op::new(OpKind::LayerNorm).with("eps", Attr::Float(1e-12));
/// assert_eq!(op.float("eps"), Some(1e-12));
/// assert!(!op.flag("causal"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    pub kind: OpKind,
    pub attrs: Attrs,
}

impl Op {
    /// An op without attributes.
    pub fn new(kind: OpKind) -> Op {
        Op {
            kind,
            attrs: Attrs::new(),
        }
    }

    /// Adds an attribute (builder style).
    pub fn with(mut self, name: &str, value: Attr) -> Op {
        self.attrs.insert(name.to_string(), value);
        self
    }

    /// Adds the flag `name` when `on` is true.
    pub fn with_flag(self, name: &str, on: bool) -> Op {
        if on {
            self.with(name, Attr::Unit)
        } else {
            self
        }
    }

    /// An integer attribute.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.attrs.get(name) {
            Some(Attr::Int(v)) => Some(*v),
            _ => None,
        }
    }

    /// An integer attribute as a usize (negative values read as `None`).
    pub fn usize(&self, name: &str) -> Option<usize> {
        self.int(name).and_then(|v| usize::try_from(v).ok())
    }

    /// A float attribute (integers are widened).
    pub fn float(&self, name: &str) -> Option<f64> {
        match self.attrs.get(name) {
            Some(Attr::Float(v)) => Some(*v),
            Some(Attr::Int(v)) => Some(*v as f64),
            _ => None,
        }
    }

    /// A string attribute.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.attrs.get(name) {
            Some(Attr::Str(v)) => Some(v),
            _ => None,
        }
    }

    /// An integer-list attribute.
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.attrs.get(name) {
            Some(Attr::Ints(v)) => Some(v),
            _ => None,
        }
    }

    /// Whether a flag is present.
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.attrs.get(name), Some(Attr::Unit))
    }
}

impl fmt::Display for Op {
    /// `name {attrs}` as the text format prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if !self.attrs.is_empty() {
            f.write_str(" {")?;
            for (i, (k, v)) in self.attrs.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                match v {
                    Attr::Unit => f.write_str(k)?,
                    v => write!(f, "{k}={v}")?,
                }
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}
