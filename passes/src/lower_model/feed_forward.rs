//! The chunked feed-forward kept for its fused derivative: a `seq_chunk`
//! whose body is `layer_norm` → `linear {activation}` → `linear` becomes one
//! `feed_forward` op (weights as operands, the chunk size as `chunk`), so
//! that `autodiff` derives it with `feed_forward_grad`, a kernel that
//! recomputes and differentiates the branch block by block: its `[rows,
//! d_ff]` values never exist whole, in the forward or the backward pass.

use reformc_ir::{infer_type, Attr, Graph, Node, Op, OpKind, ValueId, LAYER};

/// What a matched feed-forward body reads: the old graph's values of
/// `ln_w, ln_b, w1, b1, w2, b2` (all defined outside the body) and the op.
pub(super) struct Matched {
    /// The six weights in `feed_forward`'s operand order after `x`.
    pub weights: [ValueId; 6],
    /// `feed_forward`'s op: eps, activation, chunk and the layer.
    pub op: Op,
}

/// Matches a `seq_chunk` node whose body is exactly the feed-forward
/// (`None` otherwise, and the caller inlines the body as for any other).
pub(super) fn match_body(g: &Graph, seq_chunk: &Node) -> Option<Matched> {
    let body = seq_chunk.regions.first()?;
    let (&[arg], &[result], &[ln, l1, l2]) = (
        body.args.as_slice(),
        body.results.as_slice(),
        body.body.as_slice(),
    ) else {
        return None;
    };
    let (nln, n1, n2) = (g.node(ln), g.node(l1), g.node(l2));
    let kinds = [nln.op.kind, n1.op.kind, n2.op.kind];
    let chained = nln.inputs.first() == Some(&arg)
        && n1.inputs.first() == Some(&ln)
        && n2.inputs.first() == Some(&l1)
        && result == l2;
    let shapes = nln.inputs.len() == 3 && n1.inputs.len() == 3 && n2.inputs.len() == 3;
    if kinds != [OpKind::LayerNorm, OpKind::Linear, OpKind::Linear]
        || !chained
        || !shapes
        || n2.op.attrs.contains_key("activation")
    {
        return None;
    }
    let weights = [
        nln.inputs[1],
        nln.inputs[2],
        n1.inputs[1],
        n1.inputs[2],
        n2.inputs[1],
        n2.inputs[2],
    ];
    if weights.iter().any(|w| body.body.contains(w) || *w == arg) {
        return None;
    }
    let mut op = Op::new(OpKind::FeedForward)
        .with("eps", Attr::Float(nln.op.float("eps")?))
        .with("chunk", Attr::Int(seq_chunk.op.int("size")?.max(1)));
    if let Some(a) = n1.op.attrs.get("activation") {
        op = op.with("activation", a.clone());
    }
    if let Some(l) = n1.op.attrs.get(LAYER) {
        op = op.with(LAYER, l.clone());
    }
    Some(Matched { weights, op })
}

/// Adds `feed_forward(x, weights...)` to `new` when its type is `x`'s and
/// checks (`None` otherwise: the caller falls back to inlining).
pub(super) fn emit(
    new: &mut Graph,
    m: Matched,
    x: ValueId,
    weights: [ValueId; 6],
) -> Option<ValueId> {
    let mut inputs = vec![x];
    inputs.extend(weights);
    let types: Vec<_> = inputs.iter().map(|&v| new.ty(v)).collect();
    let ty = infer_type(&m.op, &types).ok()??;
    (ty == *new.ty(x)).then(|| new.add(m.op, inputs, ty))
}
