//! The `lower-model` pass: every model op rewritten into IR tensor ops with
//! exactly the interpreter's semantics (interp/src/nn.rs and attention.rs are
//! the reference), so that autodiff needs one derivative rule per tensor op.
//!
//! [`lower_model`] builds a new graph by walking the old one in order and
//! mapping old values to new ones:
//! - model ops are replaced by a decomposition (one file per op group:
//!   [`basic`] for embeddings, layer norm and linear, [`attention`] for full
//!   attention, `local` and `lsh` for the chunked attentions), each with the
//!   signature `lower(g, node, inputs) -> Result<ValueId, String>`;
//! - `reversible_block` is kept, its regions' bodies lowered recursively;
//! - `seq_chunk` is inlined: its body is applied once to the whole operand.
//!   This relies on the body being position-wise along the chunked axis
//!   (what the `chunk` pass creates: feed-forward branches and the LM head),
//!   which [`check_position_wise`] verifies before inlining;
//! - every other node (tensor ops, sources, `lsh_hash`, `random_normal`) is
//!   copied;
//! - in a training pipeline, model ops whose derivative is a fused kernel
//!   ([`keeps_for_grad`]: `layer_norm`, `lsh_attention` without dropout of
//!   its probabilities) are copied too, and a chunked feed-forward becomes
//!   one `feed_forward` op ([`feed_forward`]), unless `--lowered-grads` asks
//!   for their decompositions.
//!
//! The pass is registered but not in the default pipeline: training appends
//! it after the default passes.
//!
//! ```
//! use reformc_passes::lower_model::lower_model;
//! let text = "graph {\n  %0 = input {name=\"x\"} : f32[B,L,4]\n  %1 = weight {name=\"w\"} : f32[3,4]\n  %2 = linear %0, %1 : f32[B,L,3]\n  output \"y\" = %2\n}\n";
//! let g = reformc_ir::parse(text).unwrap();
//! let lowered = lower_model(&g).unwrap();
//! let printed = reformc_ir::print(&lowered);
//! assert!(printed.contains("matmul"));
//! assert!(!printed.contains("linear"));
//! ```

pub(crate) mod attention;
pub(crate) mod basic;
mod build;
mod chunked;
mod dropout;
mod feed_forward;
pub(crate) mod local;
pub(crate) mod lsh;

pub use chunked::lower_attention_node;
pub use dropout::{stream as dropout_stream, DropoutRates, Site as DropoutSite};

use crate::pass::{Pass, PassError, PassOptions};
use reformc_ir::{verify, Dim, Graph, Node, OpKind, OpLevel, Region, TensorType, ValueId, LAYER};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The `lower-model` pass (see the module docs).
pub struct LowerModelPass;

impl Pass for LowerModelPass {
    fn name(&self) -> &'static str {
        "lower-model"
    }

    fn summary(&self) -> &'static str {
        "rewrites model ops (embedding, linear, attention, ...) into tensor ops, keeping those with a derivative of their own (layer_norm, lsh_attention, local_attention, a chunked feed-forward as feed_forward) unless --lowered-grads; inlines other seq_chunks"
    }

    fn run(&self, g: &mut Graph, opts: &PassOptions) -> Result<Vec<String>, PassError> {
        let before = count_model_ops(g);
        let keep = if opts.lowered_grads {
            Keep::Nothing
        } else {
            Keep::FusedGrads
        };
        let lowered = lower_model_keeping(g, opts.dropout, keep).map_err(|message| PassError {
            pass: self.name().into(),
            message,
        })?;
        *g = lowered;
        let kept = count_model_ops(g);
        let mut notes = vec![format!(
            "lowered {} model op(s) to tensor ops ({} node(s) now)",
            before - kept,
            g.len()
        )];
        if kept > 0 {
            notes.push(format!(
                "kept {} for their fused derivatives (--lowered-grads lowers them too)",
                kept_by_kind(g)
            ));
        }
        if let Some(rates) = opts.dropout.filter(|r| !r.is_zero()) {
            let masks = g
                .walk()
                .into_iter()
                .filter(|v| g.node(*v).op.kind == OpKind::DropoutMask)
                .count();
            notes.push(format!(
                "dropout: {masks} mask(s) keyed by the `seed` input (hidden {}, lsh {}, local {})",
                rates.hidden, rates.lsh_attention, rates.local_attention
            ));
        }
        Ok(notes)
    }
}

/// Model ops that `lower-model` rewrites (those it keeps, `reversible_block`
/// and `lsh_hash`, excluded), anywhere in the graph.
fn count_model_ops(g: &Graph) -> usize {
    g.walk()
        .into_iter()
        .filter(|v| lowered_kind(g.node(*v).op.kind))
        .count()
}

/// A model op kind that `lower-model` lowers or keeps for its derivative
/// (`reversible_block` and `lsh_hash` stay as they are).
fn lowered_kind(k: OpKind) -> bool {
    k.level() == OpLevel::Model && !matches!(k, OpKind::ReversibleBlock | OpKind::LshHash)
}

/// The model ops [`count_model_ops`] counts, by kind in first-use order:
/// "24 layer_norm, 12 lsh_attention and 12 feed_forward ops".
fn kept_by_kind(g: &Graph) -> String {
    let mut counts: Vec<(OpKind, usize)> = Vec::new();
    for v in g.walk() {
        let k = g.node(v).op.kind;
        if !lowered_kind(k) {
            continue;
        }
        match counts.iter_mut().find(|(kind, _)| *kind == k) {
            Some((_, n)) => *n += 1,
            None => counts.push((k, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let list = match parts.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => parts.join(""),
    };
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    format!("{list} op{}", if total == 1 { "" } else { "s" })
}

/// Returns `g` with every model op expressed with tensor ops (see the module
/// docs). The result verifies; an op without a lowering, or a `seq_chunk`
/// whose body is not position-wise, is an error naming the node.
pub fn lower_model(g: &Graph) -> Result<Graph, String> {
    lower_model_with(g, None)
}

/// [`lower_model`] for a training step: with nonzero `dropout` rates, each
/// dropout site of Hugging Face's Reformer (see [`DropoutSite`]) multiplies
/// its value by a `dropout_mask` keyed by the `seed` input (added when the
/// graph has none) and the site's [`dropout_stream`].
pub fn lower_model_with(g: &Graph, dropout: Option<DropoutRates>) -> Result<Graph, String> {
    lower_model_keeping(g, dropout, Keep::Nothing)
}

/// Which model ops [`lower_model_keeping`] copies instead of lowering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Lower every model op (the decomposition is the reference semantics).
    Nothing,
    /// Keep those with a fused derivative kernel ([`keeps_for_grad`]).
    FusedGrads,
}

/// Whether a training pipeline keeps `node` as it is for `autodiff`'s fused
/// derivative rule: `layer_norm`, and `lsh_attention` and `local_attention`
/// where no dropout of their probabilities applies and (local attention)
/// queries, keys and values have one type (the caller checks those).
///
/// ```
/// use reformc_ir::{Attr, Node, Op, OpKind, TensorType, DType};
/// use reformc_passes::lower_model::keeps_for_grad;
/// let ln = Node {
///     op: Op::new(OpKind::LayerNorm).with("eps", Attr::Float(1e-12)),
///     inputs: vec![],
///     ty: TensorType::new(DType::F32, vec![]),
///     regions: vec![],
/// };
/// assert!(keeps_for_grad(&ln));
/// ```
pub fn keeps_for_grad(node: &Node) -> bool {
    matches!(
        node.op.kind,
        OpKind::LayerNorm | OpKind::LshAttention | OpKind::LocalAttention
    )
}

/// [`lower_model_with`], copying the model ops `keep` names unchanged.
pub fn lower_model_keeping(
    g: &Graph,
    dropout: Option<DropoutRates>,
    keep: Keep,
) -> Result<Graph, String> {
    let reserved = all_symbols(g);
    let mut cx = Lowering {
        old: g,
        new: Graph::new(),
        map: HashMap::new(),
        subst: BTreeMap::new(),
        numbering: g
            .walk()
            .into_iter()
            .enumerate()
            .map(|(i, v)| (v, i))
            .collect(),
        dropout: None,
        keep,
    };
    if let Some(rates) = dropout.filter(|r| !r.is_zero()) {
        cx.dropout = Some((rates, cx.seed_input()?));
    }
    build::with_reserved_symbols(reserved, || cx.block(&g.body))?;
    for (name, v) in &g.outputs {
        let nv = cx.mapped(*v)?;
        cx.new.set_output(name, nv);
    }
    if cx.dropout.is_some() {
        // The seed was created first, for the masks; callers pass inputs in
        // interface order, so it goes back among them.
        order_inputs(&mut cx.new);
    }
    verify(&cx.new).map_err(|e| format!("the lowered graph does not verify: {e}"))?;
    Ok(cx.new)
}

/// The forward inputs a compiled model takes, in the order its callers pass
/// them (executables, libraries): ids, mask, then `seed` (the key of the
/// seeded hashing and of dropout masks) before the hashing input a variant
/// replays instead. A training step adds `labels`.
pub const INTERFACE_INPUTS: [&str; 5] = [
    "input_ids",
    "attention_mask",
    "seed",
    "lsh_rotations",
    "lsh_buckets",
];

/// Moves `g`'s top-level inputs to the front of its body, those of
/// [`INTERFACE_INPUTS`] in that order, then the others in their order.
/// Inputs have no operands, so any order before their uses is valid.
///
/// ```
/// let text = "graph {\n  %0 = input {name=\"seed\"} : i64[]\n  %1 = input {name=\"input_ids\"} : i64[B,L]\n  %2 = input {name=\"labels\"} : i64[B,L]\n  %3 = input {name=\"attention_mask\"} : i64[B,L]\n  output \"a\" = %0\n  output \"b\" = %1\n  output \"c\" = %2\n  output \"d\" = %3\n}\n";
/// let mut g = reformc_ir::parse(text).unwrap();
/// reformc_passes::lower_model::order_inputs(&mut g);
/// let names: Vec<&str> = g.inputs().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["input_ids", "attention_mask", "seed", "labels"]);
/// ```
pub fn order_inputs(g: &mut Graph) {
    let rank = |g: &Graph, v: ValueId| {
        let name = g.node(v).op.str("name").unwrap_or("");
        INTERFACE_INPUTS
            .iter()
            .position(|n| *n == name)
            .unwrap_or(INTERFACE_INPUTS.len())
    };
    let (mut inputs, rest): (Vec<ValueId>, Vec<ValueId>) = g
        .body
        .iter()
        .partition(|v| g.node(**v).op.kind == OpKind::Input);
    inputs.sort_by_key(|v| rank(g, *v));
    inputs.extend(rest);
    g.body = inputs;
}

/// Every symbol that appears in a type of `g`.
fn all_symbols(g: &Graph) -> BTreeSet<String> {
    g.nodes
        .iter()
        .flat_map(|n| n.ty.shape.iter())
        .filter_map(|d| match d {
            Dim::Sym(s) => Some(s.clone()),
            Dim::Const(_) => None,
        })
        .collect()
}

/// The state of one lowering: the old graph, the new one being built, the
/// value map and the symbol substitution of inlined `seq_chunk` bodies.
struct Lowering<'a> {
    old: &'a Graph,
    new: Graph,
    map: HashMap<ValueId, ValueId>,
    /// Chunk symbols of inlined `seq_chunk` bodies, replaced by the dim of
    /// the whole operand.
    subst: BTreeMap<String, Dim>,
    /// The printer's number of every old value (for messages).
    numbering: HashMap<ValueId, usize>,
    /// Dropout rates and the new graph's `seed` input, in a training step.
    dropout: Option<(DropoutRates, ValueId)>,
    /// Model ops copied instead of lowered.
    keep: Keep,
}

impl Lowering<'_> {
    fn mapped(&self, v: ValueId) -> Result<ValueId, String> {
        self.map
            .get(&v)
            .copied()
            .ok_or_else(|| format!("{} is used before it is defined", self.name(v)))
    }

    /// `%n` as the printer numbers the old value `v`.
    fn name(&self, v: ValueId) -> String {
        format!("%{}", self.numbering.get(&v).copied().unwrap_or(v.index()))
    }

    /// `ty` with the chunk symbols of inlined bodies replaced.
    fn ty(&self, ty: &TensorType) -> TensorType {
        let shape = ty
            .shape
            .iter()
            .map(|d| match d {
                Dim::Sym(s) => self.subst.get(s).cloned().unwrap_or_else(|| d.clone()),
                Dim::Const(_) => d.clone(),
            })
            .collect();
        TensorType::new(ty.dtype, shape)
    }

    /// The new graph's `i64[]` input `seed`, created first: the old graph's
    /// (then mapped to it) or a new one.
    fn seed_input(&mut self) -> Result<ValueId, String> {
        let old = self.old.body.iter().copied().find(|v| {
            let n = self.old.node(*v);
            n.op.kind == OpKind::Input && n.op.str("name") == Some("seed")
        });
        let ty = TensorType::scalar(reformc_ir::DType::I64);
        if let Some(v) = old {
            if *self.old.ty(v) != ty {
                return Err(format!(
                    "the input `seed` is {}, dropout needs i64[]",
                    self.old.ty(v)
                ));
            }
        }
        let op =
            reformc_ir::Op::new(OpKind::Input).with("name", reformc_ir::Attr::Str("seed".into()));
        let seed = self.new.add(op, vec![], ty);
        if let Some(v) = old {
            self.map.insert(v, seed);
        }
        Ok(seed)
    }

    /// The dropout mask of a model op of the old graph, if one applies.
    fn mask_of(&self, old: &Node) -> Option<(DropoutSite, dropout::Mask)> {
        let (rates, seed) = self.dropout?;
        let (site, layer) = dropout::site_of(self.old, old)?;
        let p = rates.of(site, old.op.kind);
        let stream = dropout::stream(layer, site);
        (p > 0.0).then_some((site, dropout::Mask { seed, p, stream }))
    }

    /// The mask of the position embeddings and their operand index when
    /// `old` is `words + positions` (HF drops the position embeddings,
    /// `[B, P, D]`, before the sum; the mask takes the words' shape).
    fn positions_mask(&self, old: &Node) -> Option<(dropout::Mask, usize)> {
        if old.inputs.len() != 2 {
            return None;
        }
        (0..2).find_map(|at| match self.mask_of(self.old.node(old.inputs[at]))? {
            (DropoutSite::Positions, m) => Some((m, at)),
            _ => None,
        })
    }

    fn block(&mut self, body: &[ValueId]) -> Result<(), String> {
        for &v in body {
            if self.map.contains_key(&v) {
                continue; // the `seed` input, created first
            }
            let node = self.old.node(v);
            let nv = self.node(node).map_err(|e| {
                let layer = node
                    .op
                    .int(LAYER)
                    .map_or(String::new(), |l| format!(", layer {l}"));
                if e.starts_with('%') {
                    e
                } else {
                    format!("{} ({}{layer}): {e}", self.name(v), node.op.kind)
                }
            })?;
            self.map.insert(v, nv);
        }
        Ok(())
    }

    /// [`keeps_for_grad`], with the operand check it leaves to the caller:
    /// local attention's fused derivative needs `q`, `k` and `v` of one type.
    fn keeps(&self, old: &Node) -> bool {
        let same_qkv = || match old.inputs.get(..3) {
            Some(qkv) => qkv
                .iter()
                .all(|&i| self.old.node(i).ty == self.old.node(qkv[0]).ty),
            None => false,
        };
        keeps_for_grad(old) && (old.op.kind != OpKind::LocalAttention || same_qkv())
    }

    /// Lowers or copies one node, returning the value that replaces it.
    fn node(&mut self, old: &Node) -> Result<ValueId, String> {
        let inputs = old
            .inputs
            .iter()
            .map(|v| self.mapped(*v))
            .collect::<Result<Vec<_>, _>>()?;
        let node = Node {
            op: old.op.clone(),
            inputs: old.inputs.clone(),
            ty: self.ty(&old.ty),
            regions: vec![],
        };
        let first = self.new.len();
        let mask = self.mask_of(old);
        let probs = mask.filter(|(s, _)| *s == DropoutSite::AttentionProbs);
        let probs = probs.map(|(_, m)| m);
        let out = match old.op.kind {
            OpKind::ReversibleBlock => return self.reversible(old, &node, inputs),
            _ if self.keep == Keep::FusedGrads && mask.is_none() && self.keeps(old) => {
                return Ok(self.new.add(node.op, inputs, node.ty))
            }
            OpKind::SeqChunk => return self.seq_chunk(old, inputs[0]),
            OpKind::Linear if matches!(mask, Some((DropoutSite::FeedForwardInner, _))) => {
                let m = mask.map(|(_, m)| m).expect("matched");
                dropout_before_activation(&mut self.new, &node, &inputs, &m)?
            }
            OpKind::Embedding | OpKind::AxialPosEmbedding | OpKind::LayerNorm | OpKind::Linear => {
                let y = basic::lower(&mut self.new, &node, &inputs)?;
                match mask {
                    // Masked where they are added to the words (one mask per batch row).
                    Some((DropoutSite::Positions, _)) | None => y,
                    Some((_, m)) => m.apply(&mut self.new, y)?,
                }
            }
            OpKind::Add if self.positions_mask(old).is_some() => {
                let (m, at) = self.positions_mask(old).expect("matched");
                let (pe, words) = (inputs[at], inputs[1 - at]);
                let source = self.old.node(old.inputs[at]);
                let pe = if source.op.kind == OpKind::AxialPosEmbedding {
                    let w0 = self.mapped(source.inputs[1])?;
                    let w1 = self.mapped(source.inputs[2])?;
                    m.apply_axial(&mut self.new, pe, words, w0, w1)?
                } else {
                    m.apply_like(&mut self.new, pe, words)?
                };
                let mut sum = [words, pe];
                sum.swap(0, 1 - at); // operands in their old order
                build::emit(&mut self.new, reformc_ir::Op::new(OpKind::Add), &sum)?
            }
            OpKind::Attention => attention::lower(&mut self.new, &node, &inputs)?,
            OpKind::LocalAttention => local::lower(&mut self.new, &node, &inputs, probs)?,
            OpKind::LshAttention => lsh::lower(&mut self.new, &node, &inputs, probs)?,
            _ if !old.regions.is_empty() => {
                return Err(format!(
                    "`{}` has regions that lower-model does not know how to lower",
                    old.op.kind
                ))
            }
            _ => return Ok(self.new.add(node.op, inputs, node.ty)),
        };
        self.check_result(&node, out)?;
        keep_layer(&mut self.new, &node, first);
        Ok(out)
    }

    /// A decomposition must give exactly the type the model op declared.
    fn check_result(&self, node: &Node, out: ValueId) -> Result<(), String> {
        let got = self.new.ty(out);
        if *got != node.ty {
            return Err(format!(
                "the decomposition yields {got}, but the op declares {} (a bug in lower-model)",
                node.ty
            ));
        }
        Ok(())
    }

    /// Copies a `reversible_block`, lowering its regions' bodies in place.
    fn reversible(
        &mut self,
        old: &Node,
        node: &Node,
        inputs: Vec<ValueId>,
    ) -> Result<ValueId, String> {
        let regions = old
            .regions
            .iter()
            .map(|r| self.region(r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.new.add_node(Node {
            op: node.op.clone(),
            inputs,
            ty: node.ty.clone(),
            regions,
        }))
    }

    fn region(&mut self, r: &Region) -> Result<Region, String> {
        let arg_types: Vec<TensorType> = r.args.iter().map(|a| self.ty(self.old.ty(*a))).collect();
        let args = self.new.begin_region(&arg_types);
        for (old, new) in r.args.iter().zip(&args) {
            self.map.insert(*old, *new);
        }
        let lowered = self.block(&r.body);
        let results = lowered.and_then(|()| {
            r.results
                .iter()
                .map(|v| self.mapped(*v))
                .collect::<Result<Vec<_>, _>>()
        });
        // Close the region even on error, so the builder's stack stays balanced.
        let region = self.new.end_region(results.clone().unwrap_or_default());
        results.map(|_| region)
    }

    /// Inlines a position-wise `seq_chunk`: its body applied to the whole
    /// operand, the chunk symbol replaced by the operand's dim.
    fn seq_chunk(&mut self, old: &Node, x: ValueId) -> Result<ValueId, String> {
        if let Some(y) = self.kept_feed_forward(old, x)? {
            return Ok(y);
        }
        let axis = old.op.usize("axis").unwrap_or(0);
        let body = old.regions.first().ok_or("seq_chunk has no body region")?;
        check_position_wise(self.old, body, axis)?;
        let arg = *body
            .args
            .first()
            .ok_or("seq_chunk's body has no argument")?;
        let result = *body
            .results
            .first()
            .ok_or("seq_chunk's body yields nothing")?;
        let chunk_dim = self.old.ty(arg).shape.get(axis).cloned();
        let whole = self.new.ty(x).shape.get(axis).cloned();
        let (Some(Dim::Sym(sym)), Some(whole)) = (chunk_dim, whole) else {
            return Err(format!(
                "seq_chunk's body argument {} has no chunk symbol on axis {axis}",
                self.old.ty(arg)
            ));
        };
        self.subst.insert(sym.clone(), whole);
        self.map.insert(arg, x);
        let lowered = self.block(&body.body);
        self.subst.remove(&sym);
        lowered?;
        self.mapped(result)
    }
}

impl Lowering<'_> {
    /// A training step's chunked feed-forward as one `feed_forward` op
    /// (see [`feed_forward`]), when fused derivatives are kept, the body is
    /// exactly the feed-forward and no dropout applies inside it.
    fn kept_feed_forward(&mut self, old: &Node, x: ValueId) -> Result<Option<ValueId>, String> {
        if self.keep != Keep::FusedGrads {
            return Ok(None);
        }
        let Some(m) = feed_forward::match_body(self.old, old) else {
            return Ok(None);
        };
        let body = &old.regions[0].body;
        if body
            .iter()
            .any(|&v| self.mask_of(self.old.node(v)).is_some())
        {
            return Ok(None);
        }
        let mut weights = [x; 6];
        for (w, old_w) in weights.iter_mut().zip(m.weights) {
            *w = self.mapped(old_w)?;
        }
        Ok(feed_forward::emit(&mut self.new, m, x, weights))
    }
}

/// HF's feed-forward dense layer in train mode: dense, dropout, then the
/// activation (`linear {activation}` lowered without it, masked, activated).
fn dropout_before_activation(
    g: &mut Graph,
    node: &Node,
    inputs: &[ValueId],
    mask: &dropout::Mask,
) -> Result<ValueId, String> {
    let mut plain = node.clone();
    let activation = plain.op.attrs.remove("activation");
    let y = basic::lower(g, &plain, inputs)?;
    let y = mask.apply(g, y)?;
    match activation {
        Some(name) => build::emit(g, reformc_ir::Op::new(OpKind::Act).with("fn", name), &[y]),
        None => Ok(y),
    }
}

/// Ops a `seq_chunk` body may hold for inlining to be exact: each output
/// position depends only on the same input position along the chunked axis.
fn position_wise(kind: OpKind) -> bool {
    use OpKind::*;
    matches!(
        kind,
        Linear
            | LayerNorm
            | Add
            | Sub
            | Mul
            | Div
            | Max
            | Min
            | Lt
            | Eq
            | Neg
            | Exp
            | Log
            | Sqrt
            | Rsqrt
            | Tanh
            | Act
            | Cast
            | Select
            | Constant
            | Weight
    )
}

/// Checks that a `seq_chunk` body computes each position along `axis` from
/// the same position only, so that applying it once to the whole operand
/// gives what the chunked loop gives. `linear` and `layer_norm` act on the
/// last axis, so `axis` must not be the last one.
pub fn check_position_wise(g: &Graph, body: &Region, axis: usize) -> Result<(), String> {
    for &v in &body.body {
        let n = g.node(v);
        let kind = n.op.kind;
        if !position_wise(kind) {
            return Err(format!(
                "the seq_chunk body's `{kind}` is not known to be position-wise along axis {axis}; \
                 lower-model inlines only position-wise bodies (feed-forward branches, LM heads)"
            ));
        }
        let last = n.ty.rank().checked_sub(1);
        if matches!(kind, OpKind::Linear | OpKind::LayerNorm) && last == Some(axis) {
            return Err(format!(
                "the seq_chunk body's `{kind}` mixes positions along the chunked axis {axis} \
                 (its last axis)"
            ));
        }
    }
    Ok(())
}

/// Gives every node a decomposition added (from arena index `first` on) the
/// model op's `layer` attribute, so per-layer reports keep working.
fn keep_layer(g: &mut Graph, node: &Node, first: usize) {
    let Some(layer) = node.op.attrs.get(LAYER).cloned() else {
        return;
    };
    for n in &mut g.nodes[first..] {
        if n.op.kind != OpKind::Arg {
            n.op.attrs.insert(LAYER.to_string(), layer.clone());
        }
    }
}
