//! The training loss: mean cross-entropy of the logits against labels.

use super::builder::Builder;
use reformc_ir::{Attr, DType, Graph, Op, OpKind, TensorType};

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
    let &(_, logits) = g
        .outputs
        .iter()
        .find(|(n, _)| n == logits_name)
        .ok_or_else(|| format!("the graph has no output `{logits_name}`"))?;
    let lt = g.ty(logits).clone();
    if lt.rank() != 3 || !lt.dtype.is_float() {
        return Err(format!(
            "`{logits_name}` must be float [B, L, V], found {lt}"
        ));
    }
    let input = Op::new(OpKind::Input).with("name", Attr::Str(LABELS.into()));
    let labels = g.add(
        input,
        vec![],
        TensorType::new(DType::I64, lt.shape[..2].to_vec()),
    );
    let mut b = Builder::new(g);
    let ignore = b.constant(-100.0, DType::I64);
    let ignored = b.op(Op::new(OpKind::Eq), &[labels, ignore])?;
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
    let one = b.constant(1.0, lt.dtype);
    let counts = b.select(ignored, fz, one)?;
    let count = b.reduce(counts, "sum", &[0, 1], false)?;
    let loss = b.div(total, count)?;
    g.outputs.retain(|(n, _)| n != logits_name);
    g.outputs.insert(0, (LOSS.to_string(), loss));
    Ok(())
}
