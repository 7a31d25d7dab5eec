//! The training loss: mean cross-entropy of the logits against labels.

use super::builder::Builder;
use reformc_ir::{Attr, DType, Graph, Op, OpKind, TensorType, ValueId};

/// Name of the labels input the loss adds: i64 `[B, L]`, aligned with the
/// logits' positions (`-100` marks an ignored position).
pub const LABELS: &str = "labels";

/// Name of the scalar loss output.
pub const LOSS: &str = "loss";

/// Replaces the output `logits` (`[B, L, V]`) by `loss`, the mean over
/// positions whose label is not -100 of `logsumexp(logits) - logits[label]`,
/// and adds the input [`LABELS`].
///
/// The labels are aligned with the logits: a causal LM's shift (position t
/// predicts token t+1) is applied by the caller when it builds the labels.
/// With no labelled position the loss is 0/0 = NaN, as in PyTorch.
///
/// ```
/// let text = "graph {\n  %0 = weight {name=\"w\"} : f32[B,L,5]\n  output \"logits\" = %0\n}\n";
/// let mut g = reformc_ir::parse(text).unwrap();
/// reformc_passes::autodiff::append_loss(&mut g, "logits").unwrap();
/// reformc_ir::verify(&g).unwrap();
/// assert_eq!(g.outputs[0].0, "loss");
/// ```
pub fn append_loss(g: &mut Graph, logits_name: &str) -> Result<(), String> {
    let (logits, lt) = logits_output(g, logits_name)?;
    let labels = labels_input(g, &lt);
    let mut b = Builder::new(g);
    let ignored = ignored_rows(&mut b, labels)?;
    let zero = b.constant(0.0, DType::I64);
    let safe = b.select(ignored, zero, labels)?;
    let mut col = lt.shape[..2].to_vec();
    col.push(reformc_ir::Dim::Const(1));
    let safe = b.reshape(safe, col);
    let picked = b.op(
        Op::new(OpKind::Gather).with("axis", Attr::Int(2)),
        &[logits, safe],
    )?;
    let lse = b.reduce(logits, "logsumexp", &[2], true)?;
    let nll = b.sub(lse, picked)?;
    let nll = b.reshape(nll, lt.shape[..2].to_vec());
    let fz = b.constant(0.0, lt.dtype);
    let kept = b.select(ignored, fz, nll)?;
    let total = b.reduce(kept, "sum", &[0, 1], false)?;
    set_loss(g, logits_name, ignored, total)
}

/// [`append_loss`] with the LM head fused into the loss, when the logits
/// are `h @ wᵀ` of a weight `w` (a lowered `linear` without bias): one
/// `lm_loss {chunk}` op takes `h`, `w` and the labels, so neither the
/// `[B, L, V]` logits nor their gradient ever exist whole; the head's own
/// ops are removed (a truncation of the logits from the padded length to L
/// becomes one of `h`). Returns `false` (and changes nothing) when the
/// logits have another form.
///
/// ```
/// let text = "graph {\n  %0 = input {name=\"h\"} : f32[B,L,4]\n  %1 = weight {name=\"w\"} : f32[9,4]\n  %2 = transpose %1 {perm=[1,0]} : f32[4,9]\n  %3 = reshape %2 : f32[1,4,9]\n  %4 = matmul %0, %3 : f32[B,L,9]\n  output \"logits\" = %4\n}\n";
/// let mut g = reformc_ir::parse(text).unwrap();
/// assert!(reformc_passes::autodiff::append_fused_loss(&mut g, "logits", Some(64)).unwrap());
/// assert!(reformc_ir::print(&g).contains("lm_loss"));
/// assert!(!reformc_ir::print(&g).contains("matmul"));
/// ```
pub fn append_fused_loss(
    g: &mut Graph,
    logits_name: &str,
    chunk: Option<u64>,
) -> Result<bool, String> {
    let (logits, lt) = logits_output(g, logits_name)?;
    // The logits of a padded model are truncated back to L: truncate h instead.
    let (logits, truncated) = untruncated(g, logits);
    let Some((h, w)) = head_operands(g, logits) else {
        return Ok(false);
    };
    let h = match truncated {
        Some((op, reference)) => Builder::new(g).op(op, &[h, reference])?,
        None => h,
    };
    let vocab = g.ty(w).shape[0].as_const().unwrap_or(1).max(1);
    let chunk = chunk.filter(|&c| c > 0).unwrap_or(default_chunk(vocab));
    let labels = labels_input(g, &lt);
    let op = Op::new(OpKind::LmLoss).with("chunk", Attr::Int(chunk as i64));
    let mut b = Builder::new(g);
    let total = b.op(op, &[h, w, labels])?;
    let ignored = ignored_rows(&mut b, labels)?;
    set_loss(g, logits_name, ignored, total)?;
    crate::cleanup::dce(g)?;
    Ok(true)
}

/// `(V, D)` of the LM head weight when the output `logits_name` has the
/// form [`append_fused_loss`] fuses.
pub fn head_shape(g: &Graph, logits_name: &str) -> Option<(u64, u64)> {
    let (logits, _) = logits_output(g, logits_name).ok()?;
    let (_, w) = head_operands(g, untruncated(g, logits).0)?;
    let shape = &g.ty(w).shape;
    Some((shape[0].as_const()?, shape[1].as_const()?))
}

/// Rows per chunk of the fused loss by default: about 2^20 logits (4 MiB in
/// f32) at a time, and at least 16 rows.
pub fn default_chunk(vocab: u64) -> u64 {
    ((1u64 << 20) / vocab.max(1)).max(16)
}

/// The logits before a truncation from the padded length to L, and that
/// truncation (its op and reference operand) when there is one.
fn untruncated(g: &Graph, logits: ValueId) -> (ValueId, Option<(Op, ValueId)>) {
    match g.node(logits) {
        n if n.op.kind == OpKind::Truncate && n.op.int("axis") == Some(1) => {
            (n.inputs[0], Some((n.op.clone(), n.inputs[1])))
        }
        _ => (logits, None),
    }
}

/// `h` and `w` when `logits` is `matmul(h, reshape(transpose(w, [1,0])))`
/// with `w` a weight `[V, D]`.
fn head_operands(g: &Graph, logits: ValueId) -> Option<(ValueId, ValueId)> {
    let node = g.node(logits);
    let operand = |v: ValueId, kind: OpKind| {
        let n = g.node(v);
        (n.op.kind == kind).then(|| n.inputs.first().copied())?
    };
    if node.op.kind != OpKind::Matmul {
        return None;
    }
    let t = operand(node.inputs[1], OpKind::Reshape)?;
    let w = operand(t, OpKind::Transpose)?;
    let perm = g.node(t).op.ints("perm")?;
    let (h, wt) = (g.ty(node.inputs[0]), g.ty(w));
    let is_head = perm == [1, 0]
        && g.node(w).op.kind == OpKind::Weight
        && wt.rank() == 2
        && h.rank() == 3
        && h.shape.last() == Some(&wt.shape[1])
        && h.dtype == wt.dtype;
    is_head.then_some((node.inputs[0], w))
}

/// The float `[B, L, V]` output `name` and its type.
fn logits_output(g: &Graph, name: &str) -> Result<(ValueId, TensorType), String> {
    let &(_, logits) = g
        .outputs
        .iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| format!("the graph has no output `{name}`"))?;
    let lt = g.ty(logits).clone();
    if lt.rank() != 3 || !lt.dtype.is_float() {
        return Err(format!("`{name}` must be float [B, L, V], found {lt}"));
    }
    Ok((logits, lt))
}

/// The [`LABELS`] input, `[B, L]` of the logits `lt`.
fn labels_input(g: &mut Graph, lt: &TensorType) -> ValueId {
    let input = Op::new(OpKind::Input).with("name", Attr::Str(LABELS.into()));
    let shape = lt.shape[..2].to_vec();
    g.add(input, vec![], TensorType::new(DType::I64, shape))
}

/// `labels == -100`.
fn ignored_rows(b: &mut Builder, labels: ValueId) -> Result<ValueId, String> {
    let ignore = b.constant(-100.0, DType::I64);
    b.op(Op::new(OpKind::Eq), &[labels, ignore])
}

/// `loss = total / (positions not ignored)` replaces the output `logits_name`.
fn set_loss(
    g: &mut Graph,
    logits_name: &str,
    ignored: ValueId,
    total: ValueId,
) -> Result<(), String> {
    let mut b = Builder::new(g);
    let dtype = b.ty(total).dtype;
    let (zero, one) = (b.constant(0.0, dtype), b.constant(1.0, dtype));
    let counts = b.select(ignored, zero, one)?;
    let count = b.reduce(counts, "sum", &[0, 1], false)?;
    let loss = b.div(total, count)?;
    g.outputs.retain(|(n, _)| n != logits_name);
    g.outputs.insert(0, (LOSS.to_string(), loss));
    Ok(())
}
