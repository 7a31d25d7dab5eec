//! The derivative table: what reverse mode does for every op kind.
//!
//! [`rule_of`] is one exhaustive `match` over [`OpKind`], so adding an op
//! kind without deciding its derivative is a compile error. A
//! [`Rule::Vjp`] maps the cotangent of an op's result to cotangents of its
//! operands (a vector-Jacobian product) built from tensor ops.

use super::builder::{Builder, Built};
use reformc_ir::{Attr, DType, Dim, Node, Op, OpKind, Reduction, TensorType, ValueId};

/// What reverse mode does with an op kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A vector-Jacobian product built from tensor ops ([`vjp`]).
    Vjp,
    /// No gradient flows through the op (sources, integer and boolean
    /// results, LSH hashing and random draws, as in Hugging Face and the paper).
    Constant,
    /// Recomputed from its output (REFORMER.md §3.3), handled by the sweep.
    Reversible,
    /// A model op: run `lower-model` first, which expresses it in tensor ops.
    LowerFirst,
    /// No derivative rule yet; the reason says which.
    Missing(&'static str),
}

/// The rule for `kind`.
///
/// ```
/// use reformc_ir::OpKind;
/// use reformc_passes::autodiff::{rule_of, Rule};
/// assert_eq!(rule_of(OpKind::Matmul), Rule::Vjp);
/// assert_eq!(rule_of(OpKind::LshHash), Rule::Constant);
/// assert_eq!(rule_of(OpKind::Linear), Rule::LowerFirst);
/// assert_eq!(rule_of(OpKind::LayerNorm), Rule::Vjp);
/// ```
pub fn rule_of(kind: OpKind) -> Rule {
    use OpKind::*;
    match kind {
        // A dropout mask depends on its `like` operand's shape only.
        Arg | Input | Weight | Constant | RandomNormal | DropoutMask | LshHash | Iota | Lt | Eq
        | Argmax | Argsort => Rule::Constant,
        Embedding | AxialPosEmbedding | Linear | Attention | SeqChunk => Rule::LowerFirst,
        ReversibleBlock => Rule::Reversible,
        PadToMultiple | Truncate | Index | Slice | Add | Sub | Mul | Div | Max | Min | Neg
        | Exp | Log | Sqrt | Rsqrt | Tanh | Act | Cast | Matmul | Reduce | Softmax | Gather
        | Select | Reshape | Transpose | Concat | Broadcast | ScatterAdd | LmLoss
        // `lower-model` keeps these for their fused derivatives unless told
        // to lower them (`PassOptions::lowered_grads`).
        | LayerNorm | LshAttention | LocalAttention | FeedForward => Rule::Vjp,
        ActGrad => Rule::Missing("act_grad (second derivatives are not supported)"),
        LmLossGrad => Rule::Missing("lm_loss_grad (second derivatives are not supported)"),
        LayerNormGrad => {
            Rule::Missing("layer_norm_grad (second derivatives are not supported)")
        }
        LshAttentionGrad => {
            Rule::Missing("lsh_attention_grad (second derivatives are not supported)")
        }
        LocalAttentionGrad => {
            Rule::Missing("local_attention_grad (second derivatives are not supported)")
        }
        FeedForwardGrad => {
            Rule::Missing("feed_forward_grad (second derivatives are not supported)")
        }
    }
}

/// Cotangents of `node`'s operands (`None` where no gradient flows) given
/// the cotangent `dy` of its result `y`.
pub fn vjp(
    b: &mut Builder,
    node: &Node,
    y: ValueId,
    dy: ValueId,
) -> Result<Vec<Option<ValueId>>, String> {
    use OpKind::*;
    let x = &node.inputs;
    let t = |b: &Builder, i: usize| b.ty(x[i]);
    let one = |v: Built| v.map(|v| vec![Some(v)]);
    match node.op.kind {
        Add => {
            let (ta, tb) = (t(b, 0), t(b, 1));
            Ok(vec![
                Some(b.unbroadcast(dy, &ta)?),
                Some(b.unbroadcast(dy, &tb)?),
            ])
        }
        Sub => {
            let (ta, tb) = (t(b, 0), t(b, 1));
            let n = b.neg(dy)?;
            Ok(vec![
                Some(b.unbroadcast(dy, &ta)?),
                Some(b.unbroadcast(n, &tb)?),
            ])
        }
        Mul => {
            let (ta, tb) = (t(b, 0), t(b, 1));
            let da = b.mul(dy, x[1])?;
            let db = b.mul(dy, x[0])?;
            Ok(vec![
                Some(b.unbroadcast(da, &ta)?),
                Some(b.unbroadcast(db, &tb)?),
            ])
        }
        Div => {
            // d(a/b)/db = -(a/b)/b.
            let (ta, tb) = (t(b, 0), t(b, 1));
            let da = b.div(dy, x[1])?;
            let q = b.mul(da, y)?;
            let db = b.neg(q)?;
            Ok(vec![
                Some(b.unbroadcast(da, &ta)?),
                Some(b.unbroadcast(db, &tb)?),
            ])
        }
        Max | Min => min_max(b, node, dy),
        Neg => one(b.neg(dy)),
        Exp => one(b.mul(dy, y)),
        Log => one(b.div(dy, x[0])),
        Sqrt => {
            let half = b.scale(dy, 0.5)?;
            one(b.div(half, y))
        }
        Rsqrt => {
            // d x^(-1/2) = -1/2 x^(-3/2) = -1/2 y^3.
            let y2 = b.mul(y, y)?;
            let y3 = b.mul(y2, y)?;
            let k = b.scale(y3, -0.5)?;
            one(b.mul(dy, k))
        }
        Tanh => {
            let y2 = b.mul(y, y)?;
            let c1 = b.constant(1.0, b.ty(y).dtype);
            let d = b.sub(c1, y2)?;
            one(b.mul(dy, d))
        }
        Act => {
            let f = node.op.str("fn").unwrap_or_default().to_string();
            // relu's derivative is 1 exactly where its output is positive
            // (relu6's where its output is strictly between 0 and 6), as
            // for its input: reading the output lets the pre-activation
            // die at the activation, a `[rows, d_ff]` buffer less in the
            // feed-forward's backward.
            let at = match f.as_str() {
                "relu" | "relu6" => y,
                _ => x[0],
            };
            let op = Op::new(ActGrad).with("fn", Attr::Str(f));
            one(b.op(op, &[at, dy]))
        }
        LmLoss => {
            let grad = |b: &mut Builder, wrt: &str| {
                let op = Op::new(LmLossGrad)
                    .with("wrt", Attr::Str(wrt.into()))
                    .with("chunk", Attr::Int(node.op.int("chunk").unwrap_or(1)));
                b.op(op, &[x[0], x[1], x[2], dy])
            };
            Ok(vec![Some(grad(b, "h")?), Some(grad(b, "w")?), None])
        }
        LayerNorm => {
            let grad = |b: &mut Builder, wrt: &str| {
                let op = Op::new(LayerNormGrad)
                    .with("eps", Attr::Float(node.op.float("eps").unwrap_or(1e-12)))
                    .with("wrt", Attr::Str(wrt.into()));
                b.op(op, &[x[0], x[1], dy])
            };
            let tb = t(b, 2);
            Ok(vec![
                Some(grad(b, "x")?),
                Some(grad(b, "w")?),
                Some(b.unbroadcast(dy, &tb)?),
            ])
        }
        // One `feed_forward_grad` per operand, consecutive: generated code
        // computes them in one kernel call.
        FeedForward => reformc_ir::FEED_FORWARD_OPERANDS
            .iter()
            .map(|wrt| {
                let mut op = Op {
                    kind: FeedForwardGrad,
                    attrs: node.op.attrs.clone(),
                };
                op.attrs.insert("wrt".into(), Attr::Str((*wrt).into()));
                let mut operands = x.to_vec();
                operands.push(dy);
                b.op(op, &operands).map(Some)
            })
            .collect(),
        // One kernel gives the gradients of qk and v (LSH; the buckets are
        // constants) or of q, k and v (local).
        LshAttention => fused_attention_grads(b, node, LshAttentionGrad, x, y, dy, 2),
        LocalAttention => fused_attention_grads(b, node, LocalAttentionGrad, x, y, dy, 3),
        Cast if t(b, 0).dtype.is_float() => Ok(vec![Some(b.cast(dy, t(b, 0).dtype))]),
        Cast => Ok(vec![None]),
        Matmul => {
            let (ta, tb) = (t(b, 0), t(b, 1));
            let bt = b.transpose_last2(x[1])?;
            let da = b.op(Op::new(Matmul), &[dy, bt])?;
            let at = b.transpose_last2(x[0])?;
            let db = b.op(Op::new(Matmul), &[at, dy])?;
            Ok(vec![
                Some(b.unbroadcast(da, &ta)?),
                Some(b.unbroadcast(db, &tb)?),
            ])
        }
        Reduce => reduce(b, node, y, dy),
        Softmax => {
            let axis = node.op.usize("axis").unwrap_or(0);
            let p = b.mul(dy, y)?;
            let s = b.reduce(p, "sum", &[axis], true)?;
            let d = b.sub(dy, s)?;
            one(b.mul(y, d))
        }
        Gather => {
            let axis = node.op.usize("axis").unwrap_or(0);
            Ok(vec![Some(b.scatter_add(x[0], x[1], dy, axis)?), None])
        }
        ScatterAdd => {
            let axis = node.op.usize("axis").unwrap_or(0);
            let op = Op::new(Gather).with("axis", Attr::Int(axis as i64));
            Ok(vec![None, None, Some(b.op(op, &[dy, x[1]])?)])
        }
        Broadcast => {
            let tx = t(b, 0);
            Ok(vec![Some(b.unbroadcast(dy, &tx)?), None])
        }
        Select => {
            let (ta, tb) = (t(b, 1), t(b, 2));
            let z = b.constant(0.0, b.ty(dy).dtype);
            let da = b.select(x[0], dy, z)?;
            let db = b.select(x[0], z, dy)?;
            Ok(vec![
                None,
                Some(b.unbroadcast(da, &ta)?),
                Some(b.unbroadcast(db, &tb)?),
            ])
        }
        Reshape => Ok(vec![Some(b.reshape(dy, t(b, 0).shape))]),
        Transpose => {
            let perm = node.op.ints("perm").unwrap_or(&[]);
            let mut inv = vec![0i64; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p as usize] = i as i64;
            }
            one(b.op(Op::new(Transpose).with("perm", Attr::Ints(inv)), &[dy]))
        }
        Concat => concat(b, node, dy),
        Slice => {
            let axis = node.op.usize("axis").unwrap_or(0);
            let start = node.op.int("start").unwrap_or(0) as u64;
            let idx = b.axis_positions(dy, axis, start)?;
            one(b.scatter_add(x[0], idx, dy, axis))
        }
        Truncate => {
            let axis = node.op.usize("axis").unwrap_or(0);
            let idx = b.axis_positions(dy, axis, 0)?;
            Ok(vec![Some(b.scatter_add(x[0], idx, dy, axis)?), None])
        }
        PadToMultiple => {
            let axis = node.op.usize("axis").unwrap_or(0);
            let op = Op::new(Truncate).with("axis", Attr::Int(axis as i64));
            one(b.op(op, &[dy, x[0]]))
        }
        Index => index(b, node, dy),
        kind => Err(format!(
            "{kind} has no vector-Jacobian product ({:?})",
            rule_of(kind)
        )),
    }
}

/// `max`/`min`: the gradient goes to the operand that was chosen (the
/// first one on ties).
/// The cotangents of a chunked attention op's operands `x` (three, then
/// the mask if any) from its fused derivative `kind`, which recomputes the
/// attention from the operands, `y` and `dy` and stacks the gradients of
/// the first `n` operands along a new axis 0; `index` splits them.
fn fused_attention_grads(
    b: &mut Builder,
    node: &Node,
    kind: OpKind,
    x: &[ValueId],
    y: ValueId,
    dy: ValueId,
    n: usize,
) -> Result<Vec<Option<ValueId>>, String> {
    let mut operands = x[..3].to_vec();
    operands.extend([y, dy]);
    operands.extend(x.get(3).copied());
    let op = Op {
        kind,
        attrs: node.op.attrs.clone(),
    };
    let all = b.op(op, &operands)?;
    let mut out = Vec::with_capacity(x.len());
    for i in 0..n {
        let op = Op::new(OpKind::Index)
            .with("axis", Attr::Int(0))
            .with("index", Attr::Int(i as i64));
        out.push(Some(b.op(op, &[all])?));
    }
    out.resize(x.len(), None);
    Ok(out)
}

fn min_max(b: &mut Builder, node: &Node, dy: ValueId) -> Result<Vec<Option<ValueId>>, String> {
    let x = &node.inputs;
    let (ta, tb) = (b.ty(x[0]), b.ty(x[1]));
    // `max` picks b where a < b; `min` picks b where b < a.
    let (l, r) = if node.op.kind == OpKind::Max {
        (x[0], x[1])
    } else {
        (x[1], x[0])
    };
    let b_wins = b.op(Op::new(OpKind::Lt), &[l, r])?;
    let z = b.constant(0.0, b.ty(dy).dtype);
    let da = b.select(b_wins, z, dy)?;
    let db = b.select(b_wins, dy, z)?;
    Ok(vec![
        Some(b.unbroadcast(da, &ta)?),
        Some(b.unbroadcast(db, &tb)?),
    ])
}

/// `reduce`: the cotangent broadcast back over the reduced axes, weighted
/// by the reduction's derivative.
fn reduce(
    b: &mut Builder,
    node: &Node,
    y: ValueId,
    dy: ValueId,
) -> Result<Vec<Option<ValueId>>, String> {
    let x = node.inputs[0];
    let tx = b.ty(x);
    let axes: Vec<usize> = node
        .op
        .ints("axes")
        .unwrap_or(&[])
        .iter()
        .map(|&a| a as usize)
        .collect();
    let kept: Vec<Dim> = (0..tx.rank())
        .map(|i| {
            if axes.contains(&i) {
                Dim::Const(1)
            } else {
                tx.shape[i].clone()
            }
        })
        .collect();
    let dyk = b.reshape(dy, kept.clone());
    let spread = b.broadcast(dyk, x)?;
    let dx = match node.op.reduction()? {
        Reduction::Sum => spread,
        Reduction::Mean => {
            let ones = b.constant(1.0, tx.dtype);
            let ones = b.broadcast(ones, x)?;
            let n = b.reduce(ones, "sum", &axes, true)?;
            b.div(spread, n)?
        }
        Reduction::Max => {
            let yk = b.reshape(y, kept);
            let at_max = b.op(Op::new(OpKind::Eq), &[x, yk])?;
            let z = b.constant(0.0, tx.dtype);
            b.select(at_max, spread, z)?
        }
        Reduction::LogSumExp => {
            let yk = b.reshape(y, kept);
            let d = b.sub(x, yk)?;
            let p = b.op(Op::new(OpKind::Exp), &[d])?;
            b.mul(spread, p)?
        }
    };
    Ok(vec![Some(dx)])
}

/// `concat`: slices of the cotangent at each operand's offset (the
/// operands' lengths along the axis must be constants).
fn concat(b: &mut Builder, node: &Node, dy: ValueId) -> Result<Vec<Option<ValueId>>, String> {
    let axis = node.op.usize("axis").unwrap_or(0);
    let mut start = 0u64;
    let mut out = Vec::with_capacity(node.inputs.len());
    for &x in &node.inputs {
        let len = b.ty(x).shape[axis].as_const().ok_or_else(|| {
            format!(
                "concat along axis {axis} of an operand of symbolic length {} has no gradient rule",
                b.ty(x)
            )
        })?;
        out.push(Some(b.slice(dy, axis, start, start + len)?));
        start += len;
    }
    Ok(out)
}

/// `index`: the cotangent scattered back at the selected position.
fn index(b: &mut Builder, node: &Node, dy: ValueId) -> Result<Vec<Option<ValueId>>, String> {
    let x = node.inputs[0];
    let axis = node.op.usize("axis").unwrap_or(0);
    let pos = node.op.int("index").unwrap_or(0);
    let mut shape = b.ty(dy).shape;
    shape.insert(axis, Dim::Const(1));
    let src = b.reshape(dy, shape);
    let c = b.constant(pos as f64, DType::I64);
    let idx = b.broadcast(c, src)?;
    Ok(vec![Some(b.scatter_add(x, idx, src, axis)?)])
}

/// Whether values of `ty` carry gradients.
pub fn is_differentiable(ty: &TensorType) -> bool {
    ty.dtype.is_float()
}
