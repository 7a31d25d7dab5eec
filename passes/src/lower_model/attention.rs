//! Decomposition of full multi-head `attention` (every flag: `causal`,
//! `key_norm`, `self_mask`, the optional `[B,Lk]` mask; `kv_chunk` is the
//! same function computed differently, so it lowers like the materialised
//! form), in interp/src/attention.rs's order:
//!
//! ```text
//! q, k, v   [B,L,H*d] -> [B,H,L,d]
//! k         = k * rsqrt(mean(k*k) + 1e-6)        (key_norm)
//! k         = k / (1/scale)                      (HF divides by sqrt(d))
//! logits    = q @ k^T                            [B,H,Lq,Lk]
//! logits    = -1e9 where the mask is 0 or (causal) the key is later
//! logits    = -1e5 at the query's own position   (self_mask, applied last)
//! out       = softmax(logits) @ v -> [B,Lq,H*dv]
//! ```

use super::build::{
    const_dim, constant, emit, iota, op, reduce_keep, reshape, transpose, with_scalar,
};
use reformc_ir::{Attr, Dim, Graph, Node, Op, OpKind, ValueId};

/// Logit of masked (padding or causal) keys, as the interpreter's `MASK_VALUE`.
pub(crate) const MASK_VALUE: f64 = -1e9;
/// Logit of a query's own position, as the interpreter's `SELF_MASK_VALUE`.
pub(crate) const SELF_MASK_VALUE: f64 = -1e5;
/// The epsilon of the shared-QK key normalisation (HF's `_len_norm`).
const KEY_NORM_EPS: f64 = 1e-6;

/// Lowers `attention(q, k, v[, mask])` (see the module docs).
pub(crate) fn lower(g: &mut Graph, node: &Node, inputs: &[ValueId]) -> Result<ValueId, String> {
    let heads = node.op.usize("heads").ok_or("attention needs `heads`")?;
    let scale = node.op.float("scale").ok_or("attention needs `scale`")?;
    let q = split_heads(g, inputs[0], heads)?;
    let mut k = split_heads(g, inputs[1], heads)?;
    let v = split_heads(g, inputs[2], heads)?;
    if node.op.flag("key_norm") {
        k = key_norm(g, k)?;
    }
    k = with_scalar(g, OpKind::Div, k, 1.0 / scale)?;
    let kt = transpose(g, k, &[0, 1, 3, 2])?;
    let mut logits = op(g, OpKind::Matmul, &[q, kt])?;
    let rules = Masks {
        padding: inputs.get(3).copied(),
        causal: node.op.flag("causal"),
        self_mask: node.op.flag("self_mask"),
    };
    logits = rules.apply(g, logits, inputs[0], inputs[1])?;
    let probs = emit(
        g,
        Op::new(OpKind::Softmax).with("axis", Attr::Int(3)),
        &[logits],
    )?;
    let out = op(g, OpKind::Matmul, &[probs, v])?;
    merge_heads(g, out, node)
}

/// `[B,L,H*d]` -> `[B,H,L,d]`.
pub(crate) fn split_heads(g: &mut Graph, x: ValueId, heads: usize) -> Result<ValueId, String> {
    let s = g.ty(x).shape.clone();
    let width = const_dim(&s[2], "the attention width")?;
    let h = heads as u64;
    if h == 0 || width % h != 0 {
        return Err(format!("width {width} is not divisible by {heads} heads"));
    }
    let shape = vec![
        s[0].clone(),
        s[1].clone(),
        Dim::Const(h),
        Dim::Const(width / h),
    ];
    let x4 = reshape(g, x, shape);
    transpose(g, x4, &[0, 2, 1, 3])
}

/// `[B,H,L,d]` -> the node's `[B,L,H*d]`.
pub(crate) fn merge_heads(g: &mut Graph, x: ValueId, node: &Node) -> Result<ValueId, String> {
    let t = transpose(g, x, &[0, 2, 1, 3])?;
    Ok(reshape(g, t, node.ty.shape.clone()))
}

/// HF's `_len_norm` on the last axis: `x * rsqrt(mean(x*x) + 1e-6)`.
pub(crate) fn key_norm(g: &mut Graph, k: ValueId) -> Result<ValueId, String> {
    let last = g.ty(k).rank() - 1;
    let sq = op(g, OpKind::Mul, &[k, k])?;
    let ms = reduce_keep(g, "mean", sq, last)?;
    let shifted = with_scalar(g, OpKind::Add, ms, KEY_NORM_EPS)?;
    let inv = op(g, OpKind::Rsqrt, &[shifted])?;
    op(g, OpKind::Mul, &[k, inv])
}

/// The masks of one attention, by original positions (REFORMER.md §1.6).
pub(crate) struct Masks {
    /// The `[B,Lk]` key mask (nonzero = keep), if any.
    pub padding: Option<ValueId>,
    /// Mask keys later than the query.
    pub causal: bool,
    /// Mask the query's own position (last, with its own value).
    pub self_mask: bool,
}

impl Masks {
    /// Applies the masks to `[B,H,Lq,Lk]` logits; `q` and `k` are the
    /// `[B,L,..]` operands whose axis 1 gives the positions.
    pub(crate) fn apply(
        &self,
        g: &mut Graph,
        mut logits: ValueId,
        q: ValueId,
        k: ValueId,
    ) -> Result<ValueId, String> {
        let dtype = g.ty(logits).dtype;
        if let Some(mask) = self.padding {
            let s = g.ty(mask).shape.clone();
            let dropped = with_scalar(g, OpKind::Eq, mask, 0.0)?;
            let dropped = reshape(
                g,
                dropped,
                vec![s[0].clone(), Dim::Const(1), Dim::Const(1), s[1].clone()],
            );
            logits = fill(g, dropped, MASK_VALUE, logits, dtype)?;
        }
        if !(self.causal || self.self_mask) {
            return Ok(logits);
        }
        let (qpos, kpos) = positions(g, q, k)?;
        if self.causal {
            let later = op(g, OpKind::Lt, &[qpos, kpos])?;
            logits = fill(g, later, MASK_VALUE, logits, dtype)?;
        }
        if self.self_mask {
            let same = op(g, OpKind::Eq, &[qpos, kpos])?;
            logits = fill(g, same, SELF_MASK_VALUE, logits, dtype)?;
        }
        Ok(logits)
    }
}

/// `select(cond, value, x)`.
fn fill(
    g: &mut Graph,
    cond: ValueId,
    value: f64,
    x: ValueId,
    dtype: reformc_ir::DType,
) -> Result<ValueId, String> {
    let c = constant(g, dtype, value);
    op(g, OpKind::Select, &[cond, c, x])
}

/// Query positions `[Lq,1]` and key positions `[1,Lk]`.
fn positions(g: &mut Graph, q: ValueId, k: ValueId) -> Result<(ValueId, ValueId), String> {
    let iq = iota(g, q, 1)?;
    let ik = iota(g, k, 1)?;
    let lq = g.ty(iq).shape[0].clone();
    let lk = g.ty(ik).shape[0].clone();
    let qpos = reshape(g, iq, vec![lq, Dim::Const(1)]);
    let kpos = reshape(g, ik, vec![Dim::Const(1), lk]);
    Ok((qpos, kpos))
}
