//! Decompositions of the dense model ops: `embedding`, `axial_pos_embedding`,
//! `layer_norm` and `linear` (bias and activation epilogue included), in the
//! order interp/src/nn.rs computes them.

use super::build::{
    const_dim, emit, fresh_sym, op, reduce_keep, reshape, to_i64, transpose, with_scalar,
};
use reformc_ir::{Activation, Attr, Dim, Graph, Node, Op, OpKind, ValueId};

/// Lowers one dense model op (see the module docs); `inputs` are the mapped
/// operands, `node` the old node (its attributes and result type).
pub(crate) fn lower(g: &mut Graph, node: &Node, inputs: &[ValueId]) -> Result<ValueId, String> {
    match node.op.kind {
        OpKind::Embedding => embedding(g, node, inputs[0], inputs[1]),
        OpKind::AxialPosEmbedding => axial(g, inputs[0], inputs[1], inputs[2]),
        OpKind::LayerNorm => layer_norm(g, node, inputs),
        OpKind::Linear => linear(g, node, inputs),
        other => Err(format!("`{other}` is not a dense model op")),
    }
}

/// `embedding(ids, table)`: the ids flattened to `[N]` (a fresh symbol when
/// they have rank > 1), whose rows of the table are gathered along axis 0
/// (a rank-1 index takes whole rows), so that the derivative is a
/// `scatter_add` into the table; the rows are then reshaped to
/// `ids.shape + [D]`.
fn embedding(g: &mut Graph, node: &Node, ids: ValueId, table: ValueId) -> Result<ValueId, String> {
    let ids = to_i64(g, ids);
    let flat = match g.ty(ids).rank() {
        1 => ids,
        _ => {
            let n = fresh_sym(g, "N");
            reshape(g, ids, vec![n])
        }
    };
    let rows = gather0(g, table, flat)?;
    Ok(reshape(g, rows, node.ty.shape.clone()))
}

/// `gather(x, idx) {axis=0}`.
fn gather0(g: &mut Graph, x: ValueId, idx: ValueId) -> Result<ValueId, String> {
    emit(
        g,
        Op::new(OpKind::Gather).with("axis", Attr::Int(0)),
        &[x, idx],
    )
}

/// `axial_pos_embedding(pos, w0, w1)`: rows `pos / n1` of `w0` viewed as
/// `[n0,d0]` and `pos - (pos / n1) * n1` of `w1` viewed as `[n1,d1]`
/// (positions are non-negative, so that is `pos % n1`; a negative or too
/// large position makes the gather fail as the interpreter does), joined.
fn axial(g: &mut Graph, pos: ValueId, w0: ValueId, w1: ValueId) -> Result<ValueId, String> {
    let pos = to_i64(g, pos);
    let (s0, s1) = (g.ty(w0).shape.clone(), g.ty(w1).shape.clone());
    let n1 = const_dim(&s1[1], "the second axial size n1")?;
    let t0 = reshape(g, w0, vec![s0[0].clone(), s0[2].clone()]);
    let t1 = reshape(g, w1, vec![s1[1].clone(), s1[2].clone()]);
    let row = with_scalar(g, OpKind::Div, pos, n1 as f64)?;
    let back = with_scalar(g, OpKind::Mul, row, n1 as f64)?;
    let col = op(g, OpKind::Sub, &[pos, back])?;
    let e0 = gather0(g, t0, row)?;
    let e1 = gather0(g, t1, col)?;
    emit(
        g,
        Op::new(OpKind::Concat).with("axis", Attr::Int(1)),
        &[e0, e1],
    )
}

/// `layer_norm(x, w, b) {eps}` over the last axis: `d = x - mean(x)`,
/// `var = mean(d * d)` (biased), `y = d * rsqrt(var + eps) * w + b`.
fn layer_norm(g: &mut Graph, node: &Node, inputs: &[ValueId]) -> Result<ValueId, String> {
    let (x, w, b) = (inputs[0], inputs[1], inputs[2]);
    let last = g
        .ty(x)
        .rank()
        .checked_sub(1)
        .ok_or("layer_norm needs an operand of rank >= 1")?;
    let eps = node.op.float("eps").unwrap_or(1e-12);
    let mean = reduce_keep(g, "mean", x, last)?;
    let d = op(g, OpKind::Sub, &[x, mean])?;
    let sq = op(g, OpKind::Mul, &[d, d])?;
    let var = reduce_keep(g, "mean", sq, last)?;
    let shifted = with_scalar(g, OpKind::Add, var, eps)?;
    let inv = op(g, OpKind::Rsqrt, &[shifted])?;
    let normed = op(g, OpKind::Mul, &[d, inv])?;
    let scaled = op(g, OpKind::Mul, &[normed, w])?;
    op(g, OpKind::Add, &[scaled, b])
}

/// `linear(x, w[, b]) {activation?}`: `x @ w^T` as a batched `matmul` with
/// `w^T` `[in,out]` reshaped to `x`'s rank (leading 1s broadcast over the
/// batch dims), then `+ b`, then `act`. A vector `x` is viewed as `[1,in]`.
fn linear(g: &mut Graph, node: &Node, inputs: &[ValueId]) -> Result<ValueId, String> {
    let (x, w) = (inputs[0], inputs[1]);
    let xr = g.ty(x).rank();
    let (x2, rank) = if xr >= 2 {
        (x, xr)
    } else {
        let inner = g.ty(x).shape.clone();
        let mut shape = vec![Dim::Const(1)];
        shape.extend(inner);
        (reshape(g, x, shape), 2)
    };
    let wt = transpose(g, w, &[1, 0])?;
    let wt_shape = g.ty(wt).shape.clone();
    let mut shape = vec![Dim::Const(1); rank - 2];
    shape.extend(wt_shape);
    let wt = if rank > 2 { reshape(g, wt, shape) } else { wt };
    let mut y = op(g, OpKind::Matmul, &[x2, wt])?;
    if let Some(&b) = inputs.get(2) {
        y = op(g, OpKind::Add, &[y, b])?;
    }
    let act = node.op.activation()?;
    if act != Activation::None {
        let name = node
            .op
            .str("activation")
            .ok_or("linear's activation must be a string")?;
        y = emit(
            g,
            Op::new(OpKind::Act).with("fn", Attr::Str(name.into())),
            &[y],
        )?;
    }
    Ok(if xr >= 2 {
        y
    } else {
        reshape(g, y, node.ty.shape.clone())
    })
}
