//! The *unfused* memory view: liveness over the graph's ops one at a time
//! (regions included), in-place reuse, and buffer placement greedy by size.
//!
//! This is not what generated code does: that is [`crate::buffer_plan`]
//! (fusion included), whose resident total [`crate::footprint`] gives and
//! `reformc explain` reports as the static peak. This module stays as the
//! per-stage and per-layer view of `explain` (FLOPs and "unfused peak"
//! columns), where attributing bytes to the ops of a layer is the point.
//!
//! Schedule: ops run in body order; an op with regions runs its regions' ops
//! first (region arguments appear when the region starts) and finishes at its
//! own step, so its operands and its regions' results stay live until then.
//!
//! Buffers:
//! - weights and graph inputs are resident and reported apart
//!   ([`MemoryPlan::weight_bytes`], [`MemoryPlan::input_bytes`]);
//! - `reshape` results and `reversible_block` region arguments are views (they
//!   share their source's buffer); elementwise ops and `reversible_block` write
//!   in place into an operand of the same size whose last use they are;
//! - each op's internal temporaries ([`crate::cost::OpCost::temp_bytes`]) are a
//!   buffer live during that op only;
//! - graph outputs stay live to the end.
//!
//! Buffers are placed in one arena by the greedy-by-size heuristic (largest
//! first, at the lowest offset not overlapping any placed buffer whose
//! lifetime overlaps); the arena size is [`MemoryPlan::arena_bytes`]. Its lower
//! bound, the largest sum of live bytes at any step, is
//! [`MemoryPlan::live_peak_bytes`].
//!
//! ```
//! use reformc_passes::memory_plan::plan_memory;
//! use reformc_passes::cost::dim_env;
//! let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[N]\n %1 = exp %0 : f32[N]\n %2 = exp %1 : f32[N]\n %3 = add %1, %2 : f32[N]\n output \"y\" = %3\n}").unwrap();
//! let mut env = dim_env(&g, 1, 1);
//! env.insert("N".into(), 256);
//! let plan = plan_memory(&g, &env).unwrap();
//! assert_eq!(plan.input_bytes, 1024);
//! assert_eq!(plan.arena_bytes, 2048); // %1 and %2 live together; %3 reuses %1 (or %2) in place
//! ```

use crate::cost::{bytes_of, op_cost, CostError, OpCost, Sizing};
use crate::pass::{Pass, PassError, PassOptions};
use reformc_ir::{layer_of, DimEnv, Graph, Node, OpKind, OpLevel, ResultBuffer, ValueId};
use std::collections::HashMap;
use std::fmt;

/// Which part of a model an op belongs to, ordered as the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Graph inputs, padding, random streams.
    Inputs,
    /// Word and position embeddings.
    Embeddings,
    /// Layer `i` (ops with the attribute `layer = i`).
    Layer(u32),
    /// Final layer norm, LM head and output cut.
    Head,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Inputs => f.write_str("inputs"),
            Stage::Embeddings => f.write_str("embeddings"),
            Stage::Layer(i) => write!(f, "layer {i}"),
            Stage::Head => f.write_str("head"),
        }
    }
}

/// The stage a weight belongs to: its `layer` attribute (recorded by the
/// frontend) when it has one, else embeddings or head by its name.
///
/// ```
/// use reformc_passes::memory_plan::{stage_of_weight, Stage};
/// let g = reformc_ir::parse("graph {\n  %0 = weight {layer=3, name=\"a\"} : f32[4]\n  %1 = weight {name=\"reformer.embeddings.word_embeddings.weight\"} : f32[4]\n  %2 = weight {name=\"lm_head.decoder.weight\"} : f32[4]\n  output \"y\" = %0\n}\n").unwrap();
/// let stage = |i: usize| stage_of_weight(g.node(g.body[i]));
/// assert_eq!(stage(0), Stage::Layer(3));
/// assert_eq!(stage(1), Stage::Embeddings);
/// assert_eq!(stage(2), Stage::Head);
/// ```
pub fn stage_of_weight(node: &Node) -> Stage {
    if let Some(i) = layer_of(node).and_then(|i| u32::try_from(i).ok()) {
        return Stage::Layer(i);
    }
    if node.op.str("name").unwrap_or("").contains("embeddings") {
        Stage::Embeddings
    } else {
        Stage::Head
    }
}

/// Assigns every node (regions included) a [`Stage`]: weights by name, sources
/// to `inputs`, other ops the latest stage among their operands (and, for an op
/// with regions, among its regions' ops).
///
/// Random streams and constants are attributed to the earliest stage that
/// uses them (the LSH layer whose rotations they are).
pub fn stages(g: &Graph) -> HashMap<ValueId, Stage> {
    let mut out = HashMap::new();
    stage_block(g, &g.body, Stage::Inputs, &mut out);
    let mut first_use: HashMap<ValueId, Stage> = HashMap::new();
    for v in g.walk() {
        let Some(&s) = out.get(&v) else { continue };
        for i in &g.node(v).inputs {
            if matches!(
                g.nodes.get(i.index()).map(|n| n.op.kind),
                Some(OpKind::RandomNormal | OpKind::Constant)
            ) {
                let e = first_use.entry(*i).or_insert(s);
                *e = (*e).min(s);
            }
        }
    }
    out.extend(first_use);
    out
}

fn stage_block(
    g: &Graph,
    block: &[ValueId],
    arg_stage: Stage,
    out: &mut HashMap<ValueId, Stage>,
) -> Stage {
    let mut latest = arg_stage;
    for &v in block {
        let Some(node) = g.nodes.get(v.index()) else {
            continue;
        };
        let mut s = if node.op.kind == OpKind::Weight {
            stage_of_weight(node)
        } else if node.op.kind.level() == OpLevel::Source {
            Stage::Inputs
        } else {
            node.inputs
                .iter()
                .filter_map(|i| out.get(i))
                .copied()
                .max()
                .unwrap_or(Stage::Inputs)
        };
        let input_stage = s;
        for r in &node.regions {
            for a in &r.args {
                out.insert(*a, input_stage);
            }
            s = s.max(stage_block(g, &r.body, input_stage, out));
        }
        out.insert(v, s);
        if !matches!(
            node.op.kind,
            OpKind::Weight | OpKind::Input | OpKind::Constant | OpKind::RandomNormal
        ) {
            latest = latest.max(s);
        }
    }
    latest
}

/// One scheduled op.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The value the op defines.
    pub value: ValueId,
    /// The op's kind.
    pub kind: OpKind,
    /// The model stage the op belongs to.
    pub stage: Stage,
    /// Cost of one execution of the op at its sizing dims (an op inside a
    /// `seq_chunk` body runs once per chunk; see [`Sizing::repeat`]).
    pub cost: OpCost,
    /// Bytes of arena buffers live while this op runs (its temporaries included).
    pub live_bytes: u64,
}

/// One arena buffer: the values sharing it, its size, lifetime and offset.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    /// Values stored in this buffer (views and in-place results share one);
    /// empty for an op's temporaries.
    pub values: Vec<ValueId>,
    /// For temporaries: the op they belong to.
    pub temp_of: Option<ValueId>,
    /// Size in bytes: that of the largest value stored in it.
    pub size: u64,
    /// First step the buffer is live.
    pub start: usize,
    /// Last step (inclusive) the buffer is live.
    pub end: usize,
    /// Byte offset in the arena, chosen by the greedy-by-size placement.
    pub offset: u64,
}

/// Memory of one stage.
#[derive(Clone, Debug, PartialEq)]
pub struct StageMemory {
    /// The stage.
    pub stage: Stage,
    /// Largest live arena bytes at any step of the stage.
    pub peak_live_bytes: u64,
    /// FLOPs of the stage's ops, counting every execution (once per chunk
    /// inside `seq_chunk`).
    pub flops: u64,
    /// Ops of the stage, not counting weights, graph inputs and region
    /// arguments.
    pub ops: usize,
    /// Weights of the stage.
    pub weight_bytes: u64,
}

/// The result of [`plan_memory`].
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Arena size after placement: the static peak of activations and temporaries.
    pub arena_bytes: u64,
    /// Lower bound of the arena: the largest sum of live bytes at one step.
    pub live_peak_bytes: u64,
    /// Step (index into `steps`) where the live bytes peak.
    pub peak_step: usize,
    /// Resident weights.
    pub weight_bytes: u64,
    /// Graph inputs (owned by the caller).
    pub input_bytes: u64,
    /// Every op in schedule order (an op with regions after its regions' ops).
    pub steps: Vec<Step>,
    /// Every arena buffer with its placement, largest first.
    pub buffers: Vec<Buffer>,
    /// Per stage, in model order.
    pub stages: Vec<StageMemory>,
    /// Total FLOPs of the graph.
    pub flops: u64,
}

impl MemoryPlan {
    /// Static peak of the whole run: arena + weights + inputs.
    pub fn peak_bytes(&self) -> u64 {
        self.arena_bytes
            .saturating_add(self.weight_bytes)
            .saturating_add(self.input_bytes)
    }

    /// The op running at the peak step, if any.
    pub fn peak_op(&self) -> Option<&Step> {
        self.steps.get(self.peak_step)
    }

    /// The stage entry of `stage`, if the graph has one.
    pub fn stage(&self, stage: Stage) -> Option<&StageMemory> {
        self.stages.iter().find(|s| s.stage == stage)
    }
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, x: usize) -> usize {
        let mut r = x;
        while self.0[r] != r {
            r = self.0[r];
        }
        let mut x = x;
        while self.0[x] != r {
            let next = self.0[x];
            self.0[x] = r;
            x = next;
        }
        r
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[rb] = ra;
        }
    }
}

/// Plans memory for `g` at the dims in `env` (see [`crate::cost::dim_env`]).
///
/// Errors when a size cannot be evaluated (an unbound symbol).
pub fn plan_memory(g: &Graph, env: &DimEnv) -> Result<MemoryPlan, CostError> {
    // 1. Schedule (post-order over regions) with def/last-use steps.
    let stage_of = stages(g);
    let sizing = Sizing::new(g, env.clone());
    let mut sched = Scheduler {
        g,
        steps: vec![],
        def: HashMap::new(),
        last: HashMap::new(),
        views: vec![],
    };
    sched.block(&g.body)?;
    let end = sched.steps.len();
    for (_, v) in &g.outputs {
        sched.last.insert(*v, end);
    }
    let Scheduler {
        steps: order,
        def,
        mut last,
        views,
        ..
    } = sched;

    // 2. Sizes and resident bytes.
    let mut weight_bytes = 0u64;
    let mut input_bytes = 0u64;
    let mut stage_weights: HashMap<Stage, u64> = HashMap::new();
    let mut size: HashMap<ValueId, u64> = HashMap::new();
    let mut arena_values: Vec<ValueId> = Vec::new();
    for (&v, _) in def.iter() {
        let node = g.node(v);
        let b = bytes_of(&node.ty, sizing.env(v)).ok_or_else(|| CostError {
            at: format!("%{} = {}", v.0, node.op.kind),
            message: format!("cannot size {}: a dimension symbol is unbound", node.ty),
        })?;
        if node.op.kind == OpKind::Weight {
            weight_bytes = weight_bytes.saturating_add(b);
            *stage_weights
                .entry(stage_of.get(&v).copied().unwrap_or(Stage::Head))
                .or_default() += b;
        } else if node.op.kind == OpKind::Input {
            input_bytes = input_bytes.saturating_add(b);
        } else {
            size.insert(v, b);
            arena_values.push(v);
        }
    }
    arena_values.sort();

    // 3. Aliasing: views and in-place results share a buffer.
    let index: HashMap<ValueId, usize> = arena_values
        .iter()
        .enumerate()
        .map(|(i, v)| (*v, i))
        .collect();
    let mut uf = UnionFind((0..arena_values.len()).collect());
    for (view, source) in &views {
        if let (Some(&a), Some(&b)) = (index.get(source), index.get(view)) {
            uf.union(a, b);
        }
    }
    // Group lifetimes, updated as in-place merges happen (in schedule order).
    let mut group_end: HashMap<usize, usize> = HashMap::new();
    for (i, v) in arena_values.iter().enumerate() {
        let r = uf.find(i);
        let e = last.get(v).copied().unwrap_or(def[v]);
        let slot = group_end.entry(r).or_insert(e);
        *slot = (*slot).max(e);
    }
    for (step, &v) in order.iter().enumerate() {
        let node = g.node(v);
        if node.op.kind.facts().buffer != ResultBuffer::ReuseOperand || !index.contains_key(&v) {
            continue;
        }
        for &input in &node.inputs {
            let Some(&ii) = index.get(&input) else {
                continue;
            };
            let ri = uf.find(ii);
            let rv = uf.find(index[&v]);
            if ri == rv
                || group_end.get(&ri).copied() != Some(step)
                || size.get(&input) != size.get(&v)
            {
                continue;
            }
            let ev = group_end.get(&rv).copied().unwrap_or(step);
            uf.union(ri, rv);
            let r = uf.find(ri);
            group_end.insert(r, ev.max(step));
            last.insert(input, step);
            break;
        }
    }

    // 4. Buffers.
    let mut groups: HashMap<usize, Buffer> = HashMap::new();
    for (i, v) in arena_values.iter().enumerate() {
        let r = uf.find(i);
        let (d, e) = (def[v], last.get(v).copied().unwrap_or(def[v]).max(def[v]));
        let b = groups.entry(r).or_insert(Buffer {
            values: vec![],
            temp_of: None,
            size: 0,
            start: d,
            end: e,
            offset: 0,
        });
        b.values.push(*v);
        b.size = b.size.max(size[v]);
        b.start = b.start.min(d);
        b.end = b.end.max(e);
    }
    let mut buffers: Vec<Buffer> = groups.into_values().collect();
    let mut steps = Vec::with_capacity(order.len());
    for (i, &v) in order.iter().enumerate() {
        let cost = op_cost(g, v, sizing.env(v))?;
        if cost.temp_bytes > 0 {
            buffers.push(Buffer {
                values: vec![],
                temp_of: Some(v),
                size: cost.temp_bytes,
                start: i,
                end: i,
                offset: 0,
            });
        }
        let node = g.node(v);
        steps.push(Step {
            value: v,
            kind: node.op.kind,
            stage: stage_of.get(&v).copied().unwrap_or(Stage::Inputs),
            cost,
            live_bytes: 0,
        });
    }
    buffers.sort_by(|a, b| {
        b.size
            .cmp(&a.size)
            .then(a.start.cmp(&b.start))
            .then(a.values.first().cmp(&b.values.first()))
    });

    // 5. Live bytes per step (sweep) and greedy-by-size placement.
    let mut delta = vec![0i128; end + 2];
    for b in &buffers {
        delta[b.start] += b.size as i128;
        delta[(b.end + 1).min(end + 1)] -= b.size as i128;
    }
    let mut live = 0i128;
    let (mut live_peak, mut peak_step) = (0u64, 0usize);
    for (i, s) in steps.iter_mut().enumerate() {
        live += delta[i];
        // Saturate, never truncate: a sum past u64 means "overflowed" to callers.
        s.live_bytes = live.clamp(0, i128::from(u64::MAX)) as u64;
        if s.live_bytes > live_peak {
            live_peak = s.live_bytes;
            peak_step = i;
        }
    }
    let mut placed: Vec<usize> = Vec::new();
    let mut arena = 0u64;
    for i in 0..buffers.len() {
        let mut conflicts: Vec<(u64, u64)> = placed
            .iter()
            .map(|&j| &buffers[j])
            .filter(|o| o.start <= buffers[i].end && buffers[i].start <= o.end)
            .map(|o| (o.offset, o.offset.saturating_add(o.size)))
            .collect();
        conflicts.sort_unstable();
        let mut offset = 0u64;
        for (lo, hi) in conflicts {
            if offset.saturating_add(buffers[i].size) <= lo {
                break;
            }
            offset = offset.max(hi);
        }
        buffers[i].offset = offset;
        arena = arena.max(offset.saturating_add(buffers[i].size));
        placed.push(i);
    }

    // 6. Stages.
    let mut by_stage: Vec<StageMemory> = Vec::new();
    for s in &steps {
        let entry = match by_stage.iter_mut().find(|m| m.stage == s.stage) {
            Some(m) => m,
            None => {
                by_stage.push(StageMemory {
                    stage: s.stage,
                    peak_live_bytes: 0,
                    flops: 0,
                    ops: 0,
                    weight_bytes: stage_weights.get(&s.stage).copied().unwrap_or(0),
                });
                by_stage.last_mut().expect("pushed")
            }
        };
        entry.peak_live_bytes = entry.peak_live_bytes.max(s.live_bytes);
        entry.flops = entry
            .flops
            .saturating_add(s.cost.flops.saturating_mul(sizing.repeat(s.value)));
        if !matches!(s.kind, OpKind::Weight | OpKind::Input | OpKind::Arg) {
            entry.ops += 1;
        }
    }
    by_stage.sort_by_key(|m| m.stage);
    let flops = steps.iter().fold(0u64, |a, s| {
        a.saturating_add(s.cost.flops.saturating_mul(sizing.repeat(s.value)))
    });
    Ok(MemoryPlan {
        arena_bytes: arena,
        live_peak_bytes: live_peak,
        peak_step,
        weight_bytes,
        input_bytes,
        steps,
        buffers,
        stages: by_stage,
        flops,
    })
}

struct Scheduler<'g> {
    g: &'g Graph,
    steps: Vec<ValueId>,
    def: HashMap<ValueId, usize>,
    last: HashMap<ValueId, usize>,
    /// (view, source) pairs: values that share their source's buffer.
    views: Vec<(ValueId, ValueId)>,
}

impl Scheduler<'_> {
    fn use_at(&mut self, v: ValueId, step: usize) {
        let e = self.last.entry(v).or_insert(step);
        *e = (*e).max(step);
    }

    fn block(&mut self, block: &[ValueId]) -> Result<(), CostError> {
        for &v in block {
            let Some(node) = self.g.nodes.get(v.index()) else {
                return Err(CostError {
                    at: format!("%{}", v.0),
                    message: "refers to no node".into(),
                });
            };
            let first = self.steps.len();
            for (ri, r) in node.regions.iter().enumerate() {
                let start = self.steps.len();
                for &a in &r.args {
                    self.def.insert(a, start);
                    if node.op.kind == OpKind::ReversibleBlock {
                        // f's argument is a half of the input, g's a half of the result.
                        self.views.push((
                            a,
                            if ri == 0 {
                                node.inputs.first().copied().unwrap_or(v)
                            } else {
                                v
                            },
                        ));
                    }
                    if node.op.kind == OpKind::SeqChunk {
                        // The body's argument is a chunk (a view) of the input.
                        self.views
                            .push((a, node.inputs.first().copied().unwrap_or(v)));
                    }
                }
                self.block(&r.body)?;
                // Region results are read when the owner finishes (recorded below).
            }
            let step = self.steps.len();
            self.steps.push(v);
            // A seq_chunk's result is filled chunk by chunk: it exists while the body runs.
            self.def.insert(
                v,
                if node.op.kind == OpKind::SeqChunk {
                    first
                } else {
                    step
                },
            );
            for i in node.inputs.clone() {
                self.use_at(i, step);
            }
            for r in &node.regions {
                for res in r.results.clone() {
                    self.use_at(res, step);
                }
                for &a in &r.args {
                    self.use_at(a, step);
                }
            }
            if node.op.kind.facts().buffer == ResultBuffer::View {
                if let Some(&src) = node.inputs.first() {
                    self.views.push((v, src));
                }
            }
        }
        Ok(())
    }
}

/// One line naming the `top` largest buffers live at the plan's peak step:
/// value (or the op a temporary belongs to), op kind, stage and size.
fn live_at_peak(g: &Graph, plan: &MemoryPlan, top: usize) -> String {
    let stages = stages(g);
    let live: Vec<&Buffer> = plan
        .buffers
        .iter()
        .filter(|b| b.start <= plan.peak_step && plan.peak_step <= b.end)
        .collect();
    let total = live.iter().fold(0u64, |s, b| s.saturating_add(b.size));
    let shown: Vec<String> = live
        .iter()
        .take(top)
        .map(|b| {
            let (v, temp) = match (b.values.first(), b.temp_of) {
                (Some(&v), _) => (Some(v), ""),
                (None, Some(t)) => (Some(t), " scratch"),
                (None, None) => (None, ""),
            };
            let Some(v) = v else {
                return crate::cost::fmt_bytes(b.size);
            };
            let stage = stages.get(&v).map(|s| s.to_string()).unwrap_or_default();
            format!(
                "{} {}{temp} in {stage} {}",
                crate::cost::fmt_bytes(b.size),
                g.node(v).op.kind,
                g.ty(v)
            )
        })
        .collect();
    format!(
        "live at the peak: {} buffer(s), {}; largest: {}",
        live.len(),
        crate::cost::fmt_bytes(total),
        shown.join("; ")
    )
}

/// The `memory-plan` pass: reports the static peak of the plan generated
/// code follows ([`crate::footprint`]) and, beside it, this module's unfused
/// liveness view; the IR is not changed.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryPlanPass;

/// Sequence length the `memory-plan` pass assumes when none is given.
pub const DEFAULT_SEQ_LEN: u64 = 4096;

impl Pass for MemoryPlanPass {
    fn name(&self) -> &'static str {
        "memory-plan"
    }

    fn summary(&self) -> &'static str {
        "reports the static peak of the compiled buffer plan (fusion included) and the unfused liveness view (IR unchanged)"
    }

    fn run(&self, g: &mut Graph, opts: &PassOptions) -> Result<Vec<String>, PassError> {
        let seq = opts.seq_len.unwrap_or(DEFAULT_SEQ_LEN);
        let env = crate::cost::dim_env(g, opts.batch_or_default(), seq);
        let plan = plan_memory(g, &env).map_err(|e| PassError {
            pass: self.name().into(),
            message: e.to_string(),
        })?;
        let fp = crate::footprint::footprint(g, &env, 1).map_err(|e| PassError {
            pass: self.name().into(),
            message: e.to_string(),
        })?;
        let b = crate::cost::fmt_bytes;
        let mut notes = vec![format!(
            "static peak of the compiled plan {} at B={}, L={seq}{} on 1 thread (activations {}, allocator cache {}, weights {}, inputs {}, kernel scratch {}, thread scratch {}, executable {}); unfused liveness: activations {} [lower bound {}]{}",
            b(fp.total()),
            opts.batch_or_default(),
            env.get("P").filter(|p| **p != seq).map(|p| format!(" (P={p})")).unwrap_or_default(),
            b(fp.activations),
            b(fp.allocator_cache),
            b(fp.weights),
            b(fp.inputs),
            b(fp.kernel_scratch),
            b(fp.thread_scratch),
            b(fp.fixed),
            b(plan.arena_bytes),
            b(plan.live_peak_bytes),
            if opts.seq_len.is_none() { format!("; no target length given, assumed L={DEFAULT_SEQ_LEN}") } else { String::new() },
        )];
        if let Some(s) = plan.peak_op() {
            notes.push(format!("peak while running {} in {}", s.kind, s.stage));
            notes.push(live_at_peak(g, &plan, 8));
        }
        Ok(notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: u64) -> DimEnv {
        let mut e = DimEnv::new();
        e.insert("N".into(), n);
        e
    }

    #[test]
    fn chain_reuses_buffers() {
        // x -> a = exp x -> b = neg a -> c = tanh b: a can't be in place of x (an input),
        // b and c are in place of a, so the arena is one buffer.
        let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[N]\n %1 = exp %0 : f32[N]\n %2 = neg %1 : f32[N]\n %3 = tanh %2 : f32[N]\n output \"y\" = %3\n}").unwrap();
        let p = plan_memory(&g, &env(100)).unwrap();
        assert_eq!(p.arena_bytes, 400);
        assert_eq!(p.input_bytes, 400);
        assert_eq!(p.live_peak_bytes, 400);
    }

    #[test]
    fn diamond_needs_two_buffers_and_different_sizes_pack() {
        // %1 [N], %2 [2N] (concat %1 %1), %3 = slice keeps N: %1 and %2 overlap; %3 overlaps %2.
        let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[4]\n %1 = exp %0 : f32[4]\n %2 = concat %1, %1 {axis=0} : f32[8]\n %3 = slice %2 {axis=0, end=4, start=0} : f32[4]\n %4 = exp %3 : f32[4]\n output \"y\" = %4\n}").unwrap();
        let p = plan_memory(&g, &DimEnv::new()).unwrap();
        // step1: %1 (16); step2: %1 + %2 (48); step3: %2 + %3 (48); step4: %3 -> %4 in place (16).
        assert_eq!(p.live_peak_bytes, 48);
        assert_eq!(p.arena_bytes, 48);
    }

    #[test]
    fn unbound_dims_are_an_error() {
        let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[N]\n %1 = exp %0 : f32[N]\n output \"y\" = %1\n}").unwrap();
        assert!(plan_memory(&g, &DimEnv::new()).is_err());
    }
}
