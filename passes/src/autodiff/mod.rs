//! The `autodiff` pass: reverse-mode differentiation of a graph's scalar
//! `loss` output with respect to every float weight.
//!
//! The input is a tensor-op graph (`lower-model` expresses model ops in
//! tensor ops) in which `reversible_block`s may remain. The pass
//! 1. flattens each reversible block into the top-level body, remembering
//!    its structure ([`unfold`]);
//! 2. sweeps the body backwards from `d loss = 1`, applying one rule per op
//!    kind ([`rules`], an exhaustive table);
//! 3. differentiates each reversible block by recomputing its input from its
//!    output (`x2 = y2 - g(y1)`, `x1 = y1 - f(x2)`, REFORMER.md §3.3), so no
//!    activation inside a reversible stack is kept for the backward pass;
//!    LSH buckets and random draws are reused from the forward pass, never
//!    recomputed;
//! 4. names each weight's gradient `grad:<weight name>` (zeros for a weight
//!    the loss does not depend on) and keeps `loss` as the only other output.
//!
//! ```
//! use reformc_passes::autodiff::differentiate;
//! let text = "graph {\n  %0 = weight {name=\"w\"} : f32[4]\n  %1 = input {name=\"x\"} : f32[4]\n  %2 = mul %0, %1 : f32[4]\n  %3 = reduce %2 {axes=[0], kind=\"sum\"} : f32[]\n  output \"loss\" = %3\n}\n";
//! let g = reformc_ir::parse(text).unwrap();
//! let d = differentiate(&g, "loss").unwrap();
//! assert!(d.outputs.iter().any(|(n, _)| n == "grad:w"));
//! ```

mod builder;
pub mod checkpoint;
mod loss;
mod raise;
mod rules;
mod sweep;
mod unfold;

pub use builder::{Builder, Built};
pub use loss::{append_fused_loss, append_loss, default_chunk, LABELS, LOSS};
pub use raise::raise_linears;
pub use rules::{is_differentiable, rule_of, vjp, Rule};
pub use sweep::{active_values, Sweep};
pub use unfold::{coupled_values, unfold, Branch, Coupling};

use crate::pass::{Pass, PassError, PassOptions};
use checkpoint::{Checkpointing, Segment};
use reformc_ir::{Graph, OpKind, ValueId};

/// Prefix of the output that holds a weight's gradient.
pub const GRAD_PREFIX: &str = "grad:";

/// The graph computing `loss` and the gradient of every float weight.
pub fn differentiate(g: &Graph, loss: &str) -> Result<Graph, String> {
    differentiate_with(g, loss, &Checkpointing::None).map(|(d, _)| d)
}

/// [`differentiate`], recomputing the layers `checkpointing` names in the
/// backward pass instead of keeping their activations ([`checkpoint`]);
/// also returns the layers it recomputes.
pub fn differentiate_with(
    g: &Graph,
    loss: &str,
    checkpointing: &Checkpointing,
) -> Result<(Graph, Vec<u64>), String> {
    let &(_, loss_v) = g
        .outputs
        .iter()
        .find(|(n, _)| n == loss)
        .ok_or_else(|| format!("the graph has no output `{loss}` to differentiate"))?;
    let lt = g.ty(loss_v);
    if lt.rank() != 0 || !lt.dtype.is_float() {
        return Err(format!("`{loss}` must be a float scalar, found {lt}"));
    }
    let (mut h, couplings) = unfold(g)?;
    let loss_v = h
        .outputs
        .iter()
        .find(|(n, _)| n == loss)
        .map(|o| o.1)
        .expect("kept by unfold");
    let order = h.body.clone();
    let weights: Vec<(String, reformc_ir::ValueId)> = h
        .weights()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    let segments: Vec<Segment> = checkpoint::segments(&h, &coupled_values(&couplings))
        .into_iter()
        .filter(|s| checkpointing.covers(s.layer))
        .collect();
    let recomputed_layers = segments.iter().map(|s| s.layer).collect();
    let mut sweep = Sweep::new(&mut h, couplings, segments);
    if !sweep.active.contains(&loss_v) {
        return Err(format!("`{loss}` does not depend on any float weight"));
    }
    let seed = sweep.b.constant(1.0, lt.dtype);
    sweep.ct.insert(loss_v, seed);
    sweep.run(&order)?;
    let mut grads = Vec::new();
    for (name, w) in weights {
        if !sweep.b.ty(w).dtype.is_float() {
            continue;
        }
        let d = match sweep.ct.get(&w) {
            Some(&d) => d,
            None => sweep.b.zeros_like(w)?,
        };
        grads.push((format!("{GRAD_PREFIX}{name}"), d));
    }
    h.outputs = vec![(loss.to_string(), loss_v)];
    h.outputs.extend(grads);
    // Reversible blocks' backward concatenates halves that the next block
    // slices apart again: read the halves directly (never the forward's
    // halves, which are activations inside a block; the forward's own
    // concats go later, see [`fold_forward_concats`]).
    let forward: std::collections::HashSet<_> = order.iter().copied().collect();
    crate::cleanup::fold_slices_of_concats(&mut h, &forward);
    // The forward's and the recomputed products are `linear`s again, with
    // their bias and ReLU in the GEMM's epilogue (the same bits).
    raise_linears(&mut h);
    // Rules differentiate every float operand, constants included (a mask
    // value, a scale): what no gradient needs goes, so no backend computes it.
    crate::cleanup::dce(&mut h)?;
    reformc_ir::verify(&h).map_err(|e| format!("the differentiated graph does not verify: {e}"))?;
    Ok((h, recomputed_layers))
}

/// Folds the forward pass's `slice(concat(..))` pairs of a differentiated
/// graph: a reversible block's output is the concat of its halves, which the
/// next block slices apart again, copying every layer's state twice. Each
/// such slice reads its half directly and the concat goes, unless an op
/// outside the forward (the backward, which starts from the top block's
/// output) reads it; so the backward still reads what [`differentiate`]
/// made it read. The forward is what `loss` depends on. Returns how many
/// slices it folded; the values are the same bits.
///
/// ```
/// use reformc_passes::autodiff::fold_forward_concats;
/// let mut g = reformc_ir::parse("graph {\n  %0 = input {name=\"x\"} : f32[2,4]\n  %1 = exp %0 : f32[2,4]\n  %2 = neg %0 : f32[2,4]\n  %3 = concat %1, %2 {axis=1} : f32[2,8]\n  %4 = slice %3 {axis=1, end=4, start=0} : f32[2,4]\n  %5 = reduce %4 {axes=[0,1], kind=\"sum\"} : f32[]\n  %6 = mul %3, %3 : f32[2,8]\n  output \"loss\" = %5\n  output \"g\" = %6\n}\n").unwrap();
/// let loss = g.outputs[0].1;
/// // %3 is read outside the forward (by %6): it stays, and so does %4.
/// assert_eq!(fold_forward_concats(&mut g, loss).unwrap(), 0);
/// g.outputs.pop();
/// reformc_passes::cleanup::dce(&mut g).unwrap();
/// let loss = g.outputs[0].1;
/// assert_eq!(fold_forward_concats(&mut g, loss).unwrap(), 1);
/// assert!(!reformc_ir::print(&g).contains("concat"));
/// ```
pub fn fold_forward_concats(g: &mut Graph, loss: ValueId) -> Result<usize, String> {
    let forward = ancestors(g, loss);
    let read_outside: std::collections::HashSet<ValueId> = g
        .walk()
        .into_iter()
        .filter(|v| !forward.contains(v))
        .flat_map(|v| g.node(v).inputs.clone())
        .chain(
            g.outputs
                .iter()
                .filter(|(_, v)| *v != loss)
                .map(|(_, v)| *v),
        )
        .filter(|x| forward.contains(x))
        .collect();
    let n = crate::cleanup::fold_slices_of_concats(g, &read_outside);
    if n > 0 {
        crate::cleanup::dce(g)?;
    }
    Ok(n)
}

/// `v` and every value it is computed from.
fn ancestors(g: &Graph, v: ValueId) -> std::collections::HashSet<ValueId> {
    let mut seen = std::collections::HashSet::from([v]);
    let mut stack = vec![v];
    while let Some(x) = stack.pop() {
        let node = g.node(x);
        let region_reads = node.regions.iter().flat_map(|r| r.body.iter());
        for &y in node.inputs.iter().chain(region_reads) {
            if seen.insert(y) {
                stack.push(y);
            }
        }
    }
    seen
}

/// Appends the loss: fused with the LM head when `--chunk-lm-head` asks for
/// it or when the head's logits are wider than its input (V > D: fusing
/// costs one more head-sized product per step, as the gradients recompute
/// the logits, worth it where the `[B, L, V]` logits outweigh the head's
/// input); returns the note saying which.
fn add_loss(g: &mut Graph, opts: &PassOptions) -> Result<String, String> {
    let chunk = opts.chunk_size_lm_head.filter(|&c| c > 0);
    let shape = loss::head_shape(g, "logits");
    let wide = shape.is_some_and(|(v, d)| v > d);
    if (chunk.is_some() || wide) && append_fused_loss(g, "logits", chunk)? {
        return Ok(format!(
            "loss: mean cross-entropy against the `labels` input, fused with the LM head (`lm_loss`, {} rows at a time: the [B, L, V] logits never exist whole)",
            fused_chunk(g)
        ));
    }
    append_loss(g, "logits")?;
    Ok(match shape {
        Some((v, d)) => format!("loss: mean cross-entropy of `logits` against the `labels` input (the LM head is not fused: V = {v} <= its input width {d}, so its logits are small; --chunk-lm-head N fuses it)"),
        None => "loss: mean cross-entropy of `logits` against the `labels` input".to_string(),
    })
}

/// The `chunk` of the graph's `lm_loss`.
fn fused_chunk(g: &Graph) -> i64 {
    g.body
        .iter()
        .map(|&v| g.node(v))
        .find(|n| n.op.kind == OpKind::LmLoss)
        .and_then(|n| n.op.int("chunk"))
        .unwrap_or(0)
}

/// Whether `g` still holds an op autodiff cannot take (a model op other than
/// `reversible_block`, `lsh_hash`).
pub fn needs_lowering(g: &Graph) -> bool {
    g.walk()
        .iter()
        .any(|v| rule_of(g.node(*v).op.kind) == Rule::LowerFirst)
        || g.walk().iter().any(|v| {
            g.node(*v).op.kind == OpKind::ReversibleBlock
                && g.node(*v)
                    .regions
                    .iter()
                    .any(|r| r.body.iter().any(|b| !g.node(*b).regions.is_empty()))
        })
}

/// The `autodiff` pass (see the module docs): differentiates the output
/// `loss`, appending the cross-entropy of `logits` ([`append_loss`]) when the
/// graph has no `loss` output.
#[derive(Clone, Copy, Debug, Default)]
pub struct AutodiffPass;

impl Pass for AutodiffPass {
    fn name(&self) -> &'static str {
        "autodiff"
    }

    fn summary(&self) -> &'static str {
        "reverse mode: the gradient of the `loss` output with respect to every weight, reversible blocks recomputed, other layers recomputed to fit the memory budget"
    }

    fn run(&self, g: &mut Graph, opts: &PassOptions) -> Result<Vec<String>, PassError> {
        let err = |message| PassError {
            pass: String::new(),
            message,
        };
        let mut notes = vec![];
        if !g.outputs.iter().any(|(n, _)| n == LOSS) {
            notes.push(add_loss(g, opts).map_err(err)?);
        }
        let choice = checkpoint::choose(g, LOSS, opts).map_err(err)?;
        let n = choice.graph.outputs.len() - 1;
        *g = choice.graph;
        let loss = g.outputs[0].1;
        let folded = fold_forward_concats(g, loss).map_err(err)?;
        if folded > 0 {
            notes.push(format!(
                "the forward reads {folded} halves of block outputs directly"
            ));
        }
        notes.push(format!("{n} weight gradients"));
        notes.extend(choice.note);
        Ok(notes)
    }
}
