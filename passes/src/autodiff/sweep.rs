//! The reverse sweep: cotangents flow from the loss back to the weights.

use super::builder::Builder;
use super::checkpoint::Segment;
use super::rules::{is_differentiable, rule_of, vjp, Rule};
use super::unfold::{Branch, Coupling};
use reformc_ir::{Graph, OpKind, ValueId};
use std::collections::{HashMap, HashSet};

/// State of one reverse sweep over a flattened graph.
pub struct Sweep<'g> {
    /// The graph the backward ops are appended to.
    pub b: Builder<'g>,
    /// Cotangent of each value that has one so far.
    pub ct: HashMap<ValueId, ValueId>,
    /// Values that depend on a weight through differentiable ops.
    pub active: HashSet<ValueId>,
    /// Forward values replaced by their recomputation (block inputs).
    pub recomputed: HashMap<ValueId, ValueId>,
    /// Couplings by their output value.
    couplings: HashMap<ValueId, Coupling>,
    /// Checkpointed layers by their result.
    segments: HashMap<ValueId, Segment>,
    /// Values inside couplings and checkpointed layers, which only their
    /// coupling's or layer's rule visits.
    inside: HashSet<ValueId>,
}

impl<'g> Sweep<'g> {
    /// A sweep over `g` (flattened) whose couplings are `couplings` and
    /// whose checkpointed layers are `segments`.
    pub fn new(g: &'g mut Graph, couplings: Vec<Coupling>, segments: Vec<Segment>) -> Self {
        let active = active_values(g, &g.body);
        let coupled = super::unfold::coupled_values(&couplings);
        let layered = segments.iter().flat_map(|s| s.body.iter().copied());
        let results: HashSet<ValueId> = couplings
            .iter()
            .map(|c| c.y)
            .chain(segments.iter().map(|s| s.result))
            .collect();
        let inside = coupled
            .into_iter()
            .chain(layered)
            .filter(|v| !results.contains(v))
            .collect();
        Sweep {
            b: Builder::new(g),
            ct: HashMap::new(),
            active,
            recomputed: HashMap::new(),
            couplings: couplings.into_iter().map(|c| (c.y, c)).collect(),
            segments: segments.into_iter().map(|s| (s.result, s)).collect(),
            inside,
        }
    }

    /// Adds `d` to the cotangent of `v`.
    pub fn accumulate(&mut self, v: ValueId, d: ValueId) -> Result<(), String> {
        let sum = match self.ct.get(&v) {
            Some(&old) => self.b.add(old, d)?,
            None => d,
        };
        self.ct.insert(v, sum);
        Ok(())
    }

    /// Visits `order` backwards, applying each op's rule.
    pub fn run(&mut self, order: &[ValueId]) -> Result<(), String> {
        for &v in order.iter().rev() {
            if self.inside.contains(&v) {
                continue;
            }
            let Some(&dy) = self.ct.get(&v) else { continue };
            if self.couplings.contains_key(&v) {
                self.coupling(v, dy)?;
            } else if self.segments.contains_key(&v) {
                self.segment(v, dy)?;
            } else {
                self.op(v, dy)?;
            }
        }
        Ok(())
    }

    /// Applies `v`'s rule with cotangent `dy`.
    fn op(&mut self, v: ValueId, dy: ValueId) -> Result<(), String> {
        let node = self.b.g.node(v).clone();
        match rule_of(node.op.kind) {
            Rule::Constant => return Ok(()),
            Rule::Vjp => {}
            Rule::Reversible => return Err("a reversible_block was not flattened".into()),
            Rule::LowerFirst => {
                return Err(format!(
                    "%{} = {} is a model op: run lower-model before autodiff",
                    v.0, node.op.kind
                ))
            }
            Rule::Missing(why) => return Err(format!("%{}: no derivative for {why}", v.0)),
        }
        let y = self.recomputed.get(&v).copied().unwrap_or(v);
        let ds = vjp(&mut self.b, &node, y, dy)
            .map_err(|e| format!("%{} = {}: {e}", v.0, node.op.kind))?;
        for (x, d) in node.inputs.iter().zip(ds) {
            if let Some(d) = d {
                if self.active.contains(x) {
                    self.accumulate(*x, d)?;
                }
            }
        }
        Ok(())
    }

    /// The reversible rule (REFORMER.md §3.3): recompute the block's input
    /// from its output, then back-propagate through `g` and `f`.
    fn coupling(&mut self, y: ValueId, dy: ValueId) -> Result<(), String> {
        let c = self.couplings[&y].clone();
        let yv = self.recomputed.get(&y).copied().unwrap_or(y);
        let last = self.b.ty(yv).rank() - 1;
        let (h, w) = (c.half, 2 * c.half);
        let y1 = self.b.slice(yv, last, 0, h)?;
        let y2 = self.b.slice(yv, last, h, w)?;
        let dy1 = self.b.slice(dy, last, 0, h)?;
        let dy2 = self.b.slice(dy, last, h, w)?;
        // x2 = y2 - g(y1), then g's vector-Jacobian product at y1. A
        // `feed_forward` branch's product comes first instead, so that its
        // gradients follow it and share its kernel call (see
        // reformc_passes::fusion::Fusion::grouped); otherwise x2 first, which
        // frees y2 sooner.
        let (g_out, g_ops) = self.replay(&c.g, y1)?;
        let (x2, d_y1) = match self.b.g.node(g_out).op.kind {
            OpKind::FeedForward => {
                let d = self.through(g_ops, g_out, dy2, y1)?;
                (self.b.sub(y2, g_out)?, d)
            }
            _ => {
                let x2 = self.b.sub(y2, g_out)?;
                (x2, self.through(g_ops, g_out, dy2, y1)?)
            }
        };
        let dy1t = match d_y1 {
            Some(d) => self.b.add(dy1, d)?,
            None => dy1,
        };
        // x1 = y1 - f(x2), then f's vector-Jacobian product at x2.
        let (f_out, f_ops) = self.replay(&c.f, x2)?;
        let x1 = self.b.sub(y1, f_out)?;
        let d_x2 = self.through(f_ops, f_out, dy1t, x2)?;
        let dx2 = match d_x2 {
            Some(d) => self.b.add(dy2, d)?,
            None => dy2,
        };
        let x = self.b.concat(&[x1, x2], last)?;
        self.recomputed.insert(c.x, x);
        if self.active.contains(&c.x) {
            let dx = self.b.concat(&[dy1t, dx2], last)?;
            self.accumulate(c.x, dx)?;
        }
        Ok(())
    }

    /// A checkpointed layer: recompute its ops from the values it reads
    /// (kept from the forward pass), then back-propagate `dy` through the
    /// recomputed ops; cotangents reach the layer's inputs and weights.
    fn segment(&mut self, y: ValueId, dy: ValueId) -> Result<(), String> {
        let seg = self.segments[&y].clone();
        let (out, ops) = self.replay_ops(&seg.body, seg.result, HashMap::new());
        self.mark_active(&ops);
        if self.active.contains(&out) {
            self.accumulate(out, dy)?;
            self.run(&ops)?;
        }
        Ok(())
    }

    /// Marks the replayed `ops` that gradients flow through.
    fn mark_active(&mut self, ops: &[ValueId]) {
        for &v in ops {
            let node = self.b.g.node(v);
            if is_differentiable(&node.ty)
                && rule_of(node.op.kind) != Rule::Constant
                && node.inputs.iter().any(|i| self.active.contains(i))
            {
                self.active.insert(v);
            }
        }
    }

    /// Back-propagates `d_out` through the replayed ops `ops` (result `out`)
    /// and returns the cotangent of the replay's argument `arg`.
    fn through(
        &mut self,
        ops: Vec<ValueId>,
        out: ValueId,
        d_out: ValueId,
        arg: ValueId,
    ) -> Result<Option<ValueId>, String> {
        // The replay's values are new: mark the ones gradients flow through.
        self.active.insert(arg);
        self.mark_active(&ops);
        if !self.active.contains(&out) {
            return Ok(None);
        }
        self.accumulate(out, d_out)?;
        self.run(&ops)?;
        Ok(self.ct.get(&arg).copied())
    }

    /// Re-emits `branch` with its argument bound to `arg`. Every op is
    /// recomputed except the LSH hashing and the random draws, whose forward
    /// values are reused: hashing is never recomputed from an inexact
    /// inverse, and what is computed from the buckets (sort permutations,
    /// gather indices, masks) is recomputed exactly from them. Reusing those
    /// too would keep index tensors of every layer alive from the forward
    /// pass to the backward pass, so memory would grow with depth.
    fn replay(&mut self, branch: &Branch, arg: ValueId) -> Result<(ValueId, Vec<ValueId>), String> {
        let map = HashMap::from([(branch.arg, arg)]);
        Ok(self.replay_ops(&branch.body, branch.result, map))
    }

    /// Re-emits `body` with inputs renamed by `map` (and by earlier
    /// recomputations), skipping hashing and random draws (see [`Self::replay`]);
    /// returns the replayed `result` and the new ops.
    fn replay_ops(
        &mut self,
        body: &[ValueId],
        result: ValueId,
        mut map: HashMap<ValueId, ValueId>,
    ) -> (ValueId, Vec<ValueId>) {
        let mut ops = Vec::new();
        for &v in body {
            let node = self.b.g.node(v).clone();
            if matches!(node.op.kind, OpKind::LshHash | OpKind::RandomNormal) {
                continue;
            }
            let inputs = node
                .inputs
                .iter()
                .map(|i| *map.get(i).or(self.recomputed.get(i)).unwrap_or(i))
                .collect();
            let nv = self.b.g.add(node.op.clone(), inputs, node.ty.clone());
            map.insert(v, nv);
            ops.push(nv);
        }
        (map.get(&result).copied().unwrap_or(result), ops)
    }
}

/// Values among `order` (and the weights they read) that depend on a float
/// weight through ops with a derivative.
pub fn active_values(g: &Graph, order: &[ValueId]) -> HashSet<ValueId> {
    let mut active = HashSet::new();
    for &v in order {
        let node = g.node(v);
        let on = match node.op.kind {
            OpKind::Weight => is_differentiable(&node.ty),
            kind => {
                is_differentiable(&node.ty)
                    && !matches!(rule_of(kind), Rule::Constant)
                    && node.inputs.iter().any(|i| {
                        active.contains(i)
                            || (g.node(*i).op.kind == OpKind::Weight && is_differentiable(g.ty(*i)))
                    })
            }
        };
        if on {
            active.insert(v);
        }
    }
    active
}
