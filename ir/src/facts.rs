//! Per-op facts: every property of an op kind that passes and backends
//! decide on, in one exhaustive `match` ([`OpKind::facts`]).
//!
//! A new [`OpKind`] variant fails to compile here until its facts are
//! written down, and a new variant of any fact enum ([`CostClass`],
//! [`UnaryFn`], ...) fails to compile in each consumer's exhaustive `match`
//! until that consumer has decided (docs/architecture.md, "How to add an op").

use crate::op::OpKind;

/// How `reformc_passes::cost::op_cost` prices an op: each class is one
/// formula there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostClass {
    /// No work and no traffic: the value is bound from outside or is a view
    /// (sources, `reshape`); only its own bytes count.
    Free,
    /// Writes its result without reading operands' data, with this many
    /// FLOPs per result element (`iota`, `random_normal`, `seq_chunk`'s
    /// concatenation).
    Generate(u8),
    /// Reads its operands and writes its result, with this many FLOPs per
    /// result element (elementwise ops, `layer_norm`, `softmax`).
    PerElement(u8),
    /// Data movement without arithmetic: reads and writes the result's bytes
    /// (`slice`, `transpose`, `concat`, ...).
    Copy,
    /// Rows picked by the integer first operand (`embedding`, `gather`).
    Lookup,
    /// Zero-fills the result, then adds every element of the last operand
    /// into a result position read from the integer middle operand
    /// (`scatter_add`): one FLOP and a read-modify-write per source element.
    Scatter,
    /// `x @ w^T (+ b)` with an optional activation.
    Linear,
    /// `feed_forward` (`[rows, D]` through `[F, D]` and `[D, F]` weights,
    /// operands 3 and 5: two `rows x D x F` products) or one of its gradients
    /// (the products a group's kernel call runs, attributed by `wrt`).
    FeedForward,
    /// A batched matrix product.
    Matmul,
    /// A reduction reading every input element once (`reduce`, `argmax`).
    Reduce,
    /// A sort along one axis (`argsort`).
    Sort,
    /// Full (or chunked-exact) softmax attention.
    Attention,
    /// Chunked local attention.
    LocalAttention,
    /// Reformer LSH attention.
    LshAttention,
    /// LSH bucketing.
    LshHash,
    /// The fused LM head and cross-entropy (`lm_loss`), or its gradient
    /// (`lm_loss_grad`): a `[rows, D] x [D, V]` product and a softmax over V
    /// per chunk of rows.
    LmLoss,
}

/// How an op relates positions along the sequence axis: whether the `chunk`
/// pass may run it on a chunk of the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// Mixes positions (or is not analysed): never chunked.
    Mixed,
    /// Each result element from the same position of every operand
    /// (elementwise with broadcasting).
    Pointwise,
    /// Each row of the first operand on its own, the other operands being
    /// parameters (`layer_norm`, `linear` over the last axis).
    RowsOfFirst,
    /// Works along its `axis` attribute only (`softmax`): row-wise unless
    /// that is the chunked axis.
    AlongAxisAttr,
}

/// What becomes of the result's buffer (the memory plans).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultBuffer {
    /// A buffer of its own.
    Fresh,
    /// A view of the first operand's buffer (`reshape`).
    View,
    /// May take over the buffer of an operand that dies here and has the
    /// result's dtype and size (same-dtype elementwise ops,
    /// `reversible_block`).
    ReuseOperand,
}

/// The scalar function of an elementwise op of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryFn {
    /// `-x` (any numeric dtype).
    Neg,
    /// `e^x`.
    Exp,
    /// `ln(x)`.
    Log,
    /// `sqrt(x)`.
    Sqrt,
    /// `1/sqrt(x)`.
    Rsqrt,
    /// `tanh(x)`.
    Tanh,
    /// The [`crate::Activation`] named by the op's `fn` attribute.
    Act,
}

/// The scalar function of an elementwise op of two operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryFn {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` (integers truncate toward zero).
    Div,
    /// `max(a, b)`.
    Max,
    /// `min(a, b)`.
    Min,
    /// `a < b`, a `bool` result.
    Lt,
    /// `a == b`, a `bool` result.
    Eq,
}

impl BinaryFn {
    /// True for the comparisons, whose result is `bool`.
    pub fn is_comparison(self) -> bool {
        match self {
            BinaryFn::Lt | BinaryFn::Eq => true,
            BinaryFn::Add
            | BinaryFn::Sub
            | BinaryFn::Mul
            | BinaryFn::Div
            | BinaryFn::Max
            | BinaryFn::Min => false,
        }
    }
}

/// The shape of an elementwise op (numpy broadcasting throughout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elementwise {
    /// One operand, the result of its dtype.
    Unary(UnaryFn),
    /// Two operands of one dtype.
    Binary(BinaryFn),
    /// `cond ? a : b`.
    Select,
    /// A dtype conversion.
    Cast,
    /// `dy * act'(x)` of two operands of one float dtype, the activation
    /// named by the op's `fn` attribute (`act_grad`).
    ActGrad,
}

/// Everything passes and backends need to know about an op kind.
///
/// ```
/// use reformc_ir::{BinaryFn, CostClass, Elementwise, OpKind, Rows};
/// let f = OpKind::Add.facts();
/// assert_eq!(f.elementwise, Some(Elementwise::Binary(BinaryFn::Add)));
/// assert_eq!(f.cost, CostClass::PerElement(1));
/// assert_eq!(f.rows, Rows::Pointwise);
/// assert_eq!(OpKind::Weight.facts().extract_weight, 0.0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpFacts {
    /// The cost formula.
    pub cost: CostClass,
    /// Own weight of one such op in equality-saturation extraction
    /// (`OpCountCost`): sources 0, views and elementwise ops 1, reductions 2,
    /// contractions 10, attention 20, other model ops 5.
    pub extract_weight: f64,
    /// Positions along the sequence axis (the `chunk` pass).
    pub rows: Rows,
    /// The result's buffer.
    pub buffer: ResultBuffer,
    /// The scalar function, for elementwise ops.
    pub elementwise: Option<Elementwise>,
}

/// A non-elementwise op: positions mixed, a fresh buffer (the safe defaults).
const fn other(cost: CostClass, extract_weight: f64) -> OpFacts {
    OpFacts {
        cost,
        extract_weight,
        rows: Rows::Mixed,
        buffer: ResultBuffer::Fresh,
        elementwise: None,
    }
}

/// `f` with its sequence-position behaviour replaced.
const fn with_rows(f: OpFacts, rows: Rows) -> OpFacts {
    OpFacts { rows, ..f }
}

/// An elementwise op: `flops` per element, weight 1, chunkable.
const fn pointwise(e: Elementwise, flops: u8, buffer: ResultBuffer) -> OpFacts {
    OpFacts {
        cost: CostClass::PerElement(flops),
        extract_weight: 1.0,
        rows: Rows::Pointwise,
        buffer,
        elementwise: Some(e),
    }
}

/// A same-dtype elementwise op of one operand.
const fn unary(u: UnaryFn, flops: u8) -> OpFacts {
    pointwise(Elementwise::Unary(u), flops, ResultBuffer::ReuseOperand)
}

/// An elementwise op of two operands, one FLOP per element.
const fn binary(b: BinaryFn, buffer: ResultBuffer) -> OpFacts {
    pointwise(Elementwise::Binary(b), 1, buffer)
}

impl OpKind {
    /// The facts of this kind (see [`OpFacts`]).
    pub const fn facts(self) -> OpFacts {
        use CostClass as C;
        use OpKind::*;
        use ResultBuffer::{Fresh, ReuseOperand};
        match self {
            Arg | Input | Weight | Constant => other(C::Free, 0.0),
            RandomNormal => other(C::Generate(20), 2.0),
            // One Philox block (10 rounds) per four elements, one compare each.
            DropoutMask => other(C::Generate(12), 2.0),
            Embedding | AxialPosEmbedding => other(C::Lookup, 5.0),
            LayerNorm => with_rows(other(C::PerElement(8), 5.0), Rows::RowsOfFirst),
            Linear => with_rows(other(C::Linear, 10.0), Rows::RowsOfFirst),
            FeedForward => with_rows(other(C::FeedForward, 10.0), Rows::RowsOfFirst),
            Attention => other(C::Attention, 20.0),
            LocalAttention => other(C::LocalAttention, 20.0),
            LshHash => other(C::LshHash, 5.0),
            LshAttention => other(C::LshAttention, 20.0),
            ReversibleBlock => OpFacts {
                buffer: ReuseOperand,
                ..other(C::PerElement(1), 5.0)
            },
            SeqChunk => other(C::Generate(0), 5.0),
            PadToMultiple => other(C::Copy, 2.0),
            Truncate | Index | Slice => other(C::Copy, 1.0),
            Iota => other(C::Generate(0), 1.0),
            Add => binary(BinaryFn::Add, ReuseOperand),
            Sub => binary(BinaryFn::Sub, ReuseOperand),
            Mul => binary(BinaryFn::Mul, ReuseOperand),
            Div => binary(BinaryFn::Div, ReuseOperand),
            Max => binary(BinaryFn::Max, ReuseOperand),
            Min => binary(BinaryFn::Min, ReuseOperand),
            // A bool result is not the operand's dtype: no reuse.
            Lt => binary(BinaryFn::Lt, Fresh),
            Eq => binary(BinaryFn::Eq, Fresh),
            Neg => unary(UnaryFn::Neg, 1),
            Exp => unary(UnaryFn::Exp, 4),
            Log => unary(UnaryFn::Log, 4),
            Sqrt => unary(UnaryFn::Sqrt, 4),
            Rsqrt => unary(UnaryFn::Rsqrt, 4),
            Tanh => unary(UnaryFn::Tanh, 4),
            Act => unary(UnaryFn::Act, 4),
            // Another dtype, or a bool operand first: no reuse.
            Cast => pointwise(Elementwise::Cast, 1, Fresh),
            Select => pointwise(Elementwise::Select, 1, Fresh),
            Matmul => other(C::Matmul, 10.0),
            LmLoss | LmLossGrad => other(C::LmLoss, 10.0),
            // Two passes over x and dy per row (statistics, then the result).
            LayerNormGrad => other(C::PerElement(12), 5.0),
            FeedForwardGrad => other(C::FeedForward, 10.0),
            // Costed as the forward (its operands sit where the forward's do);
            // it runs about three times the forward's products.
            LshAttentionGrad => other(C::LshAttention, 20.0),
            LocalAttentionGrad => other(C::LocalAttention, 20.0),
            Reduce | Argmax => other(C::Reduce, 2.0),
            Softmax => with_rows(other(C::PerElement(5), 2.0), Rows::AlongAxisAttr),
            Gather => other(C::Lookup, 2.0),
            Argsort => other(C::Sort, 2.0),
            Reshape => OpFacts {
                buffer: ResultBuffer::View,
                ..other(C::Free, 1.0)
            },
            Transpose | Concat => other(C::Copy, 1.0),
            // Reads `x` with repeats; the reference contributes its shape only.
            Broadcast => other(C::Copy, 1.0),
            ScatterAdd => other(C::Scatter, 2.0),
            ActGrad => pointwise(Elementwise::ActGrad, 8, ReuseOperand),
        }
    }

    /// The scalar function of a one-operand elementwise kind.
    pub const fn unary_fn(self) -> Option<UnaryFn> {
        match self.facts().elementwise {
            Some(Elementwise::Unary(u)) => Some(u),
            Some(
                Elementwise::Binary(_)
                | Elementwise::Select
                | Elementwise::Cast
                | Elementwise::ActGrad,
            )
            | None => None,
        }
    }

    /// The scalar function of a two-operand elementwise kind.
    pub const fn binary_fn(self) -> Option<BinaryFn> {
        match self.facts().elementwise {
            Some(Elementwise::Binary(b)) => Some(b),
            Some(
                Elementwise::Unary(_)
                | Elementwise::Select
                | Elementwise::Cast
                | Elementwise::ActGrad,
            )
            | None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::OpLevel;

    #[test]
    fn facts_are_consistent() {
        for &k in OpKind::ALL {
            let f = k.facts();
            assert!(
                f.extract_weight.is_finite() && f.extract_weight >= 0.0,
                "{k}"
            );
            if k.level() == OpLevel::Source {
                assert!(
                    matches!(f.cost, CostClass::Free | CostClass::Generate(_)),
                    "{k}: sources read no data"
                );
            }
            if f.extract_weight == 0.0 {
                assert_eq!(k.level(), OpLevel::Source, "{k}: only sources are free");
                assert_eq!(
                    f.cost,
                    CostClass::Free,
                    "{k}: a free extraction costs nothing"
                );
            }
            if let Some(e) = f.elementwise {
                assert_eq!(f.rows, Rows::Pointwise, "{k}: elementwise ops chunk");
                assert_eq!(f.extract_weight, 1.0, "{k}");
                assert!(matches!(f.cost, CostClass::PerElement(_)), "{k}");
                let arity = match e {
                    Elementwise::Unary(_) | Elementwise::Cast => 1,
                    Elementwise::Binary(_) | Elementwise::ActGrad => 2,
                    Elementwise::Select => 3,
                };
                let s = k.schema();
                assert_eq!(
                    (s.min_operands, s.max_operands),
                    (arity, Some(arity)),
                    "{k}"
                );
                assert!(s.regions.is_empty(), "{k}");
            } else {
                assert_ne!(f.rows, Rows::Pointwise, "{k}: pointwise means elementwise");
            }
            if f.buffer == ResultBuffer::ReuseOperand {
                assert!(k.schema().min_operands >= 1, "{k}: reuses an operand");
                assert!(
                    !matches!(f.elementwise, Some(Elementwise::Binary(b)) if b.is_comparison()),
                    "{k}: a bool result cannot reuse its operand"
                );
            }
            if f.buffer == ResultBuffer::View {
                assert_eq!(f.cost, CostClass::Free, "{k}: a view costs nothing");
            }
        }
    }

    #[test]
    fn typed_functions_match_the_kinds() {
        assert_eq!(OpKind::Exp.unary_fn(), Some(UnaryFn::Exp));
        assert_eq!(OpKind::Exp.binary_fn(), None);
        assert_eq!(OpKind::Lt.binary_fn(), Some(BinaryFn::Lt));
        assert_eq!(OpKind::Cast.unary_fn(), None);
        // Each scalar function belongs to exactly one kind.
        for &k in OpKind::ALL {
            let same_fn = |j: &&OpKind| {
                (k.unary_fn().is_some() && j.unary_fn() == k.unary_fn())
                    || (k.binary_fn().is_some() && j.binary_fn() == k.binary_fn())
            };
            let kinds: Vec<&OpKind> = OpKind::ALL.iter().filter(same_fn).collect();
            assert!(kinds.len() <= 1, "{k}: {kinds:?}");
        }
    }
}
