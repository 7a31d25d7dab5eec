//! Per-layer checkpointing for layers that are not reversible.
//!
//! Ordinary reverse mode keeps every activation a layer computes alive from
//! the forward pass to the layer's backward, so a plain residual stack's
//! activation memory grows with depth. A checkpointed layer keeps only its
//! inputs (the residual stream entering it, masks, weights): its backward
//! first recomputes the layer's ops from them, then back-propagates through
//! the recomputed values, and the forward values die as soon as the forward
//! is done with them. LSH hashing and random draws are reused from the
//! forward pass (as the reversible recompute does), so the recomputed layer
//! is bit-identical to the one that ran.
//!
//! A layer is the set of top-level ops carrying its `layer` attribute (the
//! frontend records it); it qualifies when exactly one of its values is used
//! outside it (the stream it passes on), so that replaying it in place of
//! that value is sound.

use crate::cost::dim_env;
use crate::memory_plan::plan_memory;
use crate::pass::PassOptions;
use reformc_ir::{Graph, OpKind, ValueId};
use std::collections::{BTreeMap, HashSet};

/// One layer that can be recomputed in the backward pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The layer index (`layer` attribute).
    pub layer: u64,
    /// The layer's ops in order (weights and inputs excluded: they stay).
    pub body: Vec<ValueId>,
    /// The one value the rest of the graph reads.
    pub result: ValueId,
}

/// Which layers to recompute.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Checkpointing {
    /// Keep every activation (plain reverse mode).
    #[default]
    None,
    /// Recompute every layer that qualifies.
    All,
    /// Recompute the layers with these indices (those that qualify).
    Layers(Vec<u64>),
}

impl Checkpointing {
    /// Whether layer `i` is to be recomputed.
    pub fn covers(&self, i: u64) -> bool {
        match self {
            Checkpointing::None => false,
            Checkpointing::All => true,
            Checkpointing::Layers(l) => l.contains(&i),
        }
    }
}

/// How the `autodiff` pass picks the layers to recompute (`--recompute-layers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerRecompute {
    /// Recompute the fewest layers that bring the step's static activation
    /// peak under the memory budget; none without a budget.
    #[default]
    Auto,
    /// Keep every activation.
    Never,
    /// Recompute every layer that qualifies.
    All,
}

impl std::str::FromStr for LayerRecompute {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(LayerRecompute::Auto),
            "none" => Ok(LayerRecompute::Never),
            "all" => Ok(LayerRecompute::All),
            _ => Err(format!("expected auto, none or all, found `{s}`")),
        }
    }
}

/// A step graph and how it was obtained: the layers it recomputes and a
/// note for the pass log.
pub struct Choice {
    /// The differentiated graph.
    pub graph: Graph,
    /// Layers recomputed in the backward pass.
    pub layers: Vec<u64>,
    /// What was decided and why (none when nothing could be recomputed).
    pub note: Option<String>,
}

/// Differentiates `g`'s `loss`, recomputing the layers `opts.recompute`
/// asks for: with `Auto` and a memory budget, the fewest leading layers
/// whose recomputation brings the static activation peak (memory plan at
/// `opts.seq_len`, `opts.batch`) under the budget.
pub fn choose(g: &Graph, loss: &str, opts: &PassOptions) -> Result<Choice, String> {
    let layers = candidates(g)?;
    let n = layers.len();
    let fixed = |c: Checkpointing, note: Option<String>| {
        let (graph, layers) = super::differentiate_with(g, loss, &c)?;
        Ok(Choice {
            graph,
            layers,
            note,
        })
    };
    match (opts.recompute, opts.memory_budget, opts.seq_len) {
        _ if n == 0 => fixed(Checkpointing::None, None),
        (LayerRecompute::Never, ..) | (LayerRecompute::Auto, None, _) => {
            fixed(Checkpointing::None, None)
        }
        (LayerRecompute::All, ..) => fixed(
            Checkpointing::All,
            Some(format!(
                "recomputing all {n} layer(s) in the backward pass (--recompute-layers all)"
            )),
        ),
        (LayerRecompute::Auto, Some(_), None) => fixed(
            Checkpointing::None,
            Some(format!("{n} layer(s) could be recomputed, but without a target length (--seq-len) the memory budget cannot size them: every activation kept")),
        ),
        (LayerRecompute::Auto, Some(budget), Some(_)) => by_budget(g, loss, opts, &layers, budget),
    }
}

/// The fewest leading `layers` (binary search) whose recomputation brings
/// the step's static activation peak under `budget`.
fn by_budget(
    g: &Graph,
    loss: &str,
    opts: &PassOptions,
    layers: &[u64],
    budget: u64,
) -> Result<Choice, String> {
    let n = layers.len();
    let attempt = |k: usize| -> Result<(Graph, Vec<u64>, u64), String> {
        let c = Checkpointing::Layers(layers[..k].to_vec());
        let (d, l) = super::differentiate_with(g, loss, &c)?;
        let p = peak(&d, opts)?;
        Ok((d, l, p))
    };
    let stored = attempt(0)?;
    if stored.2 <= budget {
        let note = format!(
            "the step's static activation peak, {}, fits the memory budget ({}): every activation of the {n} layer(s) kept",
            mib(stored.2),
            mib(budget)
        );
        return Ok(Choice {
            graph: stored.0,
            layers: vec![],
            note: Some(note),
        });
    }
    let (mut lo, mut hi) = (1, n);
    let mut best = attempt(n)?;
    while lo < hi {
        let mid = (lo + hi) / 2;
        let t = attempt(mid)?;
        if t.2 <= budget {
            (hi, best) = (mid, t);
        } else {
            lo = mid + 1;
        }
    }
    let outcome = if best.2 <= budget {
        format!("to fit the memory budget ({})", mib(budget))
    } else {
        format!(
            "and the step is still above the memory budget ({})",
            mib(budget)
        )
    };
    let note = format!(
        "recomputing {} of {n} layer(s) in the backward pass ({}) {outcome}: static activation peak {} ({} keeping every activation)",
        best.1.len(),
        span(&best.1),
        mib(best.2),
        mib(stored.2)
    );
    Ok(Choice {
        graph: best.0,
        layers: best.1,
        note: Some(note),
    })
}

/// The layers of `g` (before flattening) that may be recomputed, in order.
fn candidates(g: &Graph) -> Result<Vec<u64>, String> {
    let (h, couplings) = super::unfold::unfold(g)?;
    let coupled = super::unfold::coupled_values(&couplings);
    Ok(segments(&h, &coupled).iter().map(|s| s.layer).collect())
}

/// The static live peak (bytes) of `d` at the options' length and batch.
fn peak(d: &Graph, opts: &PassOptions) -> Result<u64, String> {
    let env = dim_env(d, opts.batch_or_default(), opts.seq_len.unwrap_or(1));
    plan_memory(d, &env)
        .map(|p| p.live_peak_bytes)
        .map_err(|e| e.to_string())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// `layers 0-5`, `layer 3`.
fn span(layers: &[u64]) -> String {
    match (layers.first(), layers.last()) {
        (Some(a), Some(b)) if a == b => format!("layer {a}"),
        (Some(a), Some(b)) => format!("layers {a}-{b}"),
        _ => "none".into(),
    }
}

/// The layers of `g`'s flattened body that may be checkpointed, in order;
/// values in `skip` (inside reversible couplings, which recompute already)
/// are never part of one.
///
/// ```
/// use reformc_passes::autodiff::checkpoint::segments;
/// let text = "graph {\n  %0 = input {name=\"x\"} : f32[4]\n  %1 = weight {layer=0, name=\"w\"} : f32[4]\n  %2 = mul %0, %1 {layer=0} : f32[4]\n  %3 = exp %2 {layer=0} : f32[4]\n  %4 = add %0, %3 {layer=0} : f32[4]\n  output \"y\" = %4\n}\n";
/// let g = reformc_ir::parse(text).unwrap();
/// let s = segments(&g, &Default::default());
/// assert_eq!(s.len(), 1);
/// assert_eq!(s[0].body.len(), 3);
/// ```
pub fn segments(g: &Graph, skip: &HashSet<ValueId>) -> Vec<Segment> {
    let mut by_layer: BTreeMap<u64, Vec<ValueId>> = BTreeMap::new();
    for &v in &g.body {
        let node = g.node(v);
        let stays = matches!(node.op.kind, OpKind::Weight | OpKind::Input);
        if let (Some(i), false, false) = (node.op.layer(), stays, skip.contains(&v)) {
            by_layer.entry(i).or_default().push(v);
        }
    }
    by_layer
        .into_iter()
        .filter_map(|(layer, body)| {
            let result = single_exit(g, &body)?;
            Some(Segment {
                layer,
                body,
                result,
            })
        })
        .collect()
}

/// The one value of `body` read outside it (or a graph output), when there
/// is exactly one and it is a float tensor.
fn single_exit(g: &Graph, body: &[ValueId]) -> Option<ValueId> {
    let inside: HashSet<ValueId> = body.iter().copied().collect();
    let mut exits: HashSet<ValueId> = g
        .outputs
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| inside.contains(v))
        .collect();
    for &v in &g.body {
        if inside.contains(&v) {
            continue;
        }
        exits.extend(g.node(v).inputs.iter().filter(|i| inside.contains(i)));
    }
    let mut exits = exits.into_iter();
    let only = exits.next()?;
    (exits.next().is_none() && g.ty(only).dtype.is_float()).then_some(only)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(text: &str) -> Graph {
        reformc_ir::parse(text).unwrap()
    }

    #[test]
    fn a_layer_read_twice_outside_does_not_qualify() {
        let g = graph("graph {\n  %0 = input {name=\"x\"} : f32[4]\n  %1 = exp %0 {layer=0} : f32[4]\n  %2 = log %1 {layer=0} : f32[4]\n  %3 = add %1, %2 : f32[4]\n  output \"y\" = %3\n}\n");
        assert!(segments(&g, &HashSet::new()).is_empty());
    }

    #[test]
    fn layers_are_found_in_order_and_skipped_values_stay_out() {
        let g = graph("graph {\n  %0 = input {name=\"x\"} : f32[4]\n  %1 = exp %0 {layer=0} : f32[4]\n  %2 = exp %1 {layer=1} : f32[4]\n  %3 = log %2 {layer=1} : f32[4]\n  output \"y\" = %3\n}\n");
        let s = segments(&g, &HashSet::new());
        assert_eq!(s.iter().map(|s| s.layer).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(s[1].result, g.body[3]);
        let skip = HashSet::from([g.body[1]]);
        assert_eq!(segments(&g, &skip).len(), 1);
    }

    #[test]
    fn policy_covers() {
        assert!(!Checkpointing::None.covers(0));
        assert!(Checkpointing::All.covers(7));
        assert!(Checkpointing::Layers(vec![1]).covers(1));
        assert!(!Checkpointing::Layers(vec![1]).covers(0));
    }
}
