//! The static buffer plan: which op allocates which intermediate buffer and
//! after which op it is freed (last use within its block, a use inside a
//! region counting as a use by the region's owner).
//!
//! Generated code follows this plan exactly; [`BufferPlan`] reports it with
//! symbolic sizes and a peak estimate for concrete dims.

use crate::fusion::Fusion;
use reformc_ir::{DType, Dim, DimEnv, Graph, OpKind, ValueId};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// Identifies a block: the top level (`None`) or region `i` of an op.
pub type BlockKey = Option<(ValueId, usize)>;

/// True for values whose buffer generated code allocates (and so must free).
pub fn owned(g: &Graph, v: ValueId) -> bool {
    !matches!(
        g.node(v).op.kind,
        OpKind::Input | OpKind::Weight | OpKind::Arg
    )
}

/// Every value `v`'s op reads: its operands and, recursively, whatever its
/// regions' ops read and yield.
/// Fused-away operands (see [`Fusion`]) count through what they read: a
/// linear with a layer-norm prologue keeps the norm's input alive.
pub fn deep_uses(g: &Graph, fusion: &Fusion, v: ValueId, out: &mut Vec<ValueId>) {
    let node = g.node(v);
    fusion.effective_inputs(g, v, out);
    for r in &node.regions {
        out.extend(r.results.iter().copied());
        for &w in &r.body {
            deep_uses(g, fusion, w, out);
        }
    }
}

/// Per block: the values to free after each op of the block.
pub struct Liveness {
    /// Per block, per op index: the values freed after that op.
    pub free_after: HashMap<BlockKey, Vec<Vec<ValueId>>>,
    /// Buffers to return to the system when freed rather than keep cached:
    /// no allocation after theirs has their type, so a cached block would
    /// only add to the footprint (see runtime/src/alloc.rs).
    pub release: HashSet<ValueId>,
}

/// Steps of one walk over the blocks in execution order: when each buffer is
/// allocated and freed, and whether it sits in a repeating `seq_chunk` body.
#[derive(Default)]
struct Timeline {
    step: usize,
    alloc: Vec<(ValueId, usize, bool)>,
    freed: HashMap<ValueId, usize>,
    /// Allocation step of each value (a group's members allocate with their leader's).
    at: HashMap<ValueId, usize>,
}

impl Timeline {
    fn walk(
        &mut self,
        g: &Graph,
        f: &Fusion,
        l: &Liveness,
        key: BlockKey,
        body: &[ValueId],
        rep: bool,
    ) {
        for (i, &v) in body.iter().enumerate() {
            let node = g.node(v);
            if node.op.kind == OpKind::ReversibleBlock && !f.in_place.contains(&v) {
                self.alloc.push((v, self.step, rep)); // the state, before the regions
            }
            let inner = rep || node.op.kind == OpKind::SeqChunk;
            for (ri, r) in node.regions.iter().enumerate() {
                self.walk(g, f, l, Some((v, ri)), &r.body, inner);
            }
            self.step += 1;
            let stored = owned(g, v)
                && !f.absorbed(v)
                && !f.accumulated.contains(&v)
                && node.op.kind != OpKind::ReversibleBlock;
            let step = alloc_step(f, &mut self.at, v, self.step);
            if stored {
                self.alloc.push((v, step, rep));
            }
            let results = node.regions.iter().flat_map(|r| r.results.iter());
            for &d in l.after(key, i).iter().chain(results) {
                self.freed.insert(d, self.step);
            }
        }
    }
}

/// The step at which `v`'s buffer is allocated: `step`, or its group
/// leader's (recorded in `at`, as `v`'s is here) when one kernel call
/// computes both (see [`Fusion::grouped`]).
fn alloc_step(f: &Fusion, at: &mut HashMap<ValueId, usize>, v: ValueId, step: usize) -> usize {
    let s = f
        .grouped
        .get(&v)
        .and_then(|l| at.get(l))
        .copied()
        .unwrap_or(step);
    at.insert(v, s);
    s
}

/// A buffer's size in bytes as a symbolic product: the constant factor
/// (element size included) and the sorted names of its symbolic dims. The
/// runtime's cache reuses blocks by byte size alone, so two types of equal
/// size (`f32[L, 128]` and `f32[2, L, 64]`, or `i32` and `f32` of one shape)
/// share blocks; equal keys mean equal sizes for every binding of the dims.
fn byte_size(g: &Graph, v: ValueId) -> (u64, Vec<&str>) {
    let ty = g.ty(v);
    let mut k = ty.dtype.size_bytes();
    let mut syms = Vec::new();
    for d in &ty.shape {
        match d {
            Dim::Const(n) => k = k.saturating_mul(*n),
            Dim::Sym(s) => syms.push(s.as_str()),
        }
    }
    syms.sort_unstable();
    (k, syms)
}

/// Values that are freed outside any repeating body and whose byte size
/// ([`byte_size`]) no allocation after that asks for.
fn release_set(g: &Graph, fusion: &Fusion, live: &Liveness) -> HashSet<ValueId> {
    let mut t = Timeline::default();
    t.walk(g, fusion, live, None, &g.body, false);
    let mut release = HashSet::new();
    for &(v, _, rep) in &t.alloc {
        let Some(&freed) = t.freed.get(&v) else {
            continue;
        };
        let size = byte_size(g, v);
        let reused = t
            .alloc
            .iter()
            .any(|&(w, at, _)| at > freed && byte_size(g, w) == size);
        if !rep && !reused {
            release.insert(v);
        }
    }
    release
}

impl Liveness {
    /// Computes the plan of every block of `g`.
    pub fn new(g: &Graph, fusion: &Fusion) -> Liveness {
        let mut l = Liveness {
            free_after: HashMap::new(),
            release: HashSet::new(),
        };
        let outputs: HashSet<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
        l.block(g, fusion, None, &g.body, &outputs);
        l.release = release_set(g, fusion, &l);
        l
    }

    fn block(
        &mut self,
        g: &Graph,
        fusion: &Fusion,
        key: BlockKey,
        body: &[ValueId],
        escapes: &HashSet<ValueId>,
    ) {
        let mut last: HashMap<ValueId, usize> = HashMap::new();
        let mut uses = Vec::new();
        for (i, &v) in body.iter().enumerate() {
            uses.clear();
            deep_uses(g, fusion, v, &mut uses);
            for u in &uses {
                last.insert(*u, i);
            }
        }
        let mut free_after = vec![Vec::new(); body.len()];
        for (i, &v) in body.iter().enumerate() {
            if owned(g, v) && !escapes.contains(&v) {
                let at = last.get(&v).copied().unwrap_or(i).max(i);
                free_after[at].push(v);
            }
            for (ri, r) in g.node(v).regions.iter().enumerate() {
                let esc: HashSet<ValueId> = r.results.iter().copied().collect();
                self.block(g, fusion, Some((v, ri)), &r.body, &esc);
            }
        }
        self.free_after.insert(key, free_after);
    }

    /// The values to free after op `index` of block `key`.
    pub fn after(&self, key: BlockKey, index: usize) -> &[ValueId] {
        self.free_after
            .get(&key)
            .and_then(|v| v.get(index))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// One buffer of the static plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedBuffer {
    /// The value as the printer numbers it (`%12`), or a description of an op's temporary.
    pub name: String,
    /// The op that allocates it.
    pub op: String,
    /// Element type.
    pub dtype: DType,
    /// Symbolic shape (the chunk symbol of a `seq_chunk` body stands for `size`).
    pub shape: Vec<Dim>,
    /// Step (ops numbered in execution order, region ops before their owner) that allocates it.
    pub alloc_step: usize,
    /// Step after which it is freed; `None` for graph outputs (handed to the caller).
    pub free_step: Option<usize>,
    /// Freed back to the system rather than into the allocator's cache
    /// (see [`Liveness::release`]).
    pub released: bool,
}

/// The static allocation plan of one graph.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BufferPlan {
    /// Every buffer generated code allocates, in allocation order.
    pub buffers: Vec<PlannedBuffer>,
    /// Number of steps (ops executed once each; `seq_chunk` bodies repeat).
    pub steps: usize,
    /// Values for symbols that only exist inside `seq_chunk` bodies (the chunk size).
    pub chunk_syms: Vec<(String, u64)>,
    /// What generated code fuses ([`crate::fusion`]), counted.
    pub fusion: FusionSummary,
}

/// How many ops of each kind generated code fuses or runs in place.
///
/// ```
/// let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[N,4]\n %1 = weight {name=\"w\"} : f32[4,4]\n %2 = linear %0, %1 : f32[N,4]\n %3 = linear %2, %1 : f32[N,4]\n output \"y\" = %3\n}").unwrap();
/// let plan = reformc_passes::buffer_plan::BufferPlan::new(&g);
/// assert_eq!(plan.fusion.stacks, 1);
/// assert_eq!(plan.fusion.to_string(), "0 layer-norm prologues, 1 two-layer stacks, 0 reversible blocks in place, 0 accumulations onto a state half, 0 truncates and reshapes reusing their input, 0 elementwise ops inlined into their reader, 0 linear pairs");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FusionSummary {
    /// Layer norms computed as the prologue of the linears that read them.
    pub prologues: usize,
    /// Linears computed as the first layer of a two-layer stack.
    pub stacks: usize,
    /// Reversible blocks updating their input's buffer in place.
    pub in_place: usize,
    /// Linears accumulating straight onto a reversible state half.
    pub accumulated: usize,
    /// Truncates and reshapes that may take over their input's buffer.
    pub take_input: usize,
    /// Elementwise ops computed inside their reader's loop.
    pub inlined: usize,
    /// Pairs of linears of one input computed by one call.
    pub pairs: usize,
}

impl std::fmt::Display for FusionSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} layer-norm prologues, {} two-layer stacks, {} reversible blocks in place, {} accumulations onto a state half, {} truncates and reshapes reusing their input, {} elementwise ops inlined into their reader, {} linear pairs",
            self.prologues, self.stacks, self.in_place, self.accumulated, self.take_input, self.inlined, self.pairs
        )
    }
}

impl BufferPlan {
    /// Builds the plan report of `g` (the same liveness generated code follows).
    pub fn new(g: &Graph) -> BufferPlan {
        let fusion = Fusion::new(g);
        let live = Liveness::new(g, &fusion);
        let numbering: HashMap<ValueId, usize> = g
            .walk()
            .into_iter()
            .enumerate()
            .map(|(i, v)| (v, i))
            .collect();
        let mut b = PlanBuilder {
            g,
            fusion: &fusion,
            live: &live,
            numbering: &numbering,
            step: 0,
            plan: BufferPlan::default(),
            pending: HashMap::new(),
            at: HashMap::new(),
        };
        b.block(None, &g.body);
        // Still pending at the end: outputs, which the caller frees.
        for (_, idx) in b.pending.drain() {
            b.plan.buffers[idx].free_step = None;
        }
        b.plan.steps = b.step;
        b.plan.fusion = FusionSummary {
            prologues: fusion.prologue.len(),
            stacks: fusion.inner.len(),
            in_place: fusion.in_place.len(),
            accumulated: fusion.accumulated.len(),
            take_input: fusion.take_input.len(),
            inlined: fusion.inlined.len(),
            pairs: fusion.linear_pairs(g),
        };
        b.plan
    }

    /// Bytes of one buffer under `env` (`None` if a symbol is unbound).
    pub fn bytes(&self, buf: &PlannedBuffer, env: &DimEnv) -> Option<u64> {
        let mut n = buf.dtype.size_bytes();
        for d in &buf.shape {
            let x = match d {
                Dim::Const(c) => *c,
                Dim::Sym(s) => match env.get(s) {
                    Some(x) => *x,
                    None => self.chunk_syms.iter().find(|(n, _)| n == s)?.1,
                },
            };
            n = n.checked_mul(x)?;
        }
        Some(n)
    }

    /// Largest total of live buffers over all steps under `env` (outputs
    /// included), or `None` if a symbol is unbound.
    ///
    /// ```
    /// let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[N]\n %1 = exp %0 : f32[N]\n %2 = softmax %1 {axis=0} : f32[N]\n output \"y\" = %2\n}").unwrap();
    /// let plan = reformc_passes::buffer_plan::BufferPlan::new(&g);
    /// let env = [("N".to_string(), 10u64)].into_iter().collect();
    /// assert_eq!(plan.peak_bytes(&env), Some(80));
    /// ```
    pub fn peak_bytes(&self, env: &DimEnv) -> Option<u64> {
        let mut peak = 0u64;
        for step in 0..=self.steps {
            let mut live = 0u64;
            for b in &self.buffers {
                if b.alloc_step <= step && b.free_step.is_none_or(|f| f >= step) {
                    live = live.checked_add(self.bytes(b, env)?)?;
                }
            }
            peak = peak.max(live);
        }
        Some(peak)
    }

    /// A table of the plan, one buffer per line.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>5}  {:<28} {:<20} {:<28} freed after",
            "step", "buffer", "op", "type"
        );
        for b in &self.buffers {
            let ty = reformc_ir::TensorType::new(b.dtype, b.shape.clone());
            let freed = match b.free_step {
                Some(f) => format!("step {f}"),
                None => "output (caller owns)".to_string(),
            };
            let _ = writeln!(
                s,
                "{:>5}  {:<28} {:<20} {:<28} {freed}",
                b.alloc_step, b.name, b.op, ty
            );
        }
        s
    }
}

struct PlanBuilder<'a> {
    g: &'a Graph,
    fusion: &'a Fusion,
    live: &'a Liveness,
    numbering: &'a HashMap<ValueId, usize>,
    step: usize,
    plan: BufferPlan,
    /// Owned values allocated but not yet freed -> index in `plan.buffers`.
    pending: HashMap<ValueId, usize>,
    /// Allocation step of each value (a group's members allocate with their
    /// leader's kernel call, see [`Fusion::grouped`]).
    at: HashMap<ValueId, usize>,
}

impl PlanBuilder<'_> {
    fn name(&self, v: ValueId) -> String {
        format!("%{}", self.numbering.get(&v).copied().unwrap_or(usize::MAX))
    }

    fn temp(&mut self, name: String, op: &str, v: ValueId, start: usize) {
        let ty = self.g.ty(v).clone();
        self.plan.buffers.push(PlannedBuffer {
            name,
            op: op.to_string(),
            dtype: ty.dtype,
            shape: ty.shape,
            alloc_step: start,
            free_step: None,
            released: self.live.release.contains(&v),
        });
    }

    fn block(&mut self, key: BlockKey, body: &[ValueId]) {
        for (i, &v) in body.iter().enumerate() {
            let node = self.g.node(v);
            let first = self.step;
            let temps_from = self.plan.buffers.len();
            // The region ops allocate before their regions run.
            if node.op.kind == OpKind::ReversibleBlock && !self.fusion.in_place.contains(&v) {
                // The state is the input's buffer (in place) or the result's,
                // allocated before the regions run; the halves are views of it.
                self.pending.insert(v, self.plan.buffers.len());
                self.temp(self.name(v), "reversible_block", v, first);
            }
            if node.op.kind == OpKind::SeqChunk {
                if let (Some(r), Some(size)) = (node.regions.first(), node.op.int("size")) {
                    if let Some(&a) = r.args.first() {
                        for d in &self.g.ty(a).shape {
                            if let Dim::Sym(s) = d {
                                if !self.plan.chunk_syms.iter().any(|(n, _)| n == s)
                                    && !matches!(s.as_str(), "B" | "L" | "P")
                                {
                                    self.plan.chunk_syms.push((s.clone(), size as u64));
                                }
                            }
                        }
                        if node.op.int("axis") != Some(0) {
                            self.temp(format!("{} chunk", self.name(v)), "seq_chunk", a, first);
                        }
                    }
                }
            }
            for (ri, r) in node.regions.iter().enumerate() {
                self.block(Some((v, ri)), &r.body);
            }
            let step = self.step;
            self.step += 1;
            for (i, t) in self.plan.buffers.iter_mut().enumerate().skip(temps_from) {
                if self.pending.get(&v) != Some(&i) {
                    t.free_step = Some(step);
                }
            }
            let stored = !self.fusion.absorbed(v)
                && !self.fusion.accumulated.contains(&v)
                && node.op.kind != OpKind::ReversibleBlock;
            if self.fusion.in_place.contains(&v) {
                // The input's buffer lives on as the result's.
                if let Some(idx) = node.inputs.first().and_then(|x| self.pending.remove(x)) {
                    self.pending.insert(v, idx);
                }
            }
            let alloc_step = alloc_step(self.fusion, &mut self.at, v, step);
            if owned(self.g, v) && stored {
                let ty = node.ty.clone();
                self.pending.insert(v, self.plan.buffers.len());
                self.plan.buffers.push(PlannedBuffer {
                    name: self.name(v),
                    op: node.op.kind.name().to_string(),
                    dtype: ty.dtype,
                    shape: ty.shape,
                    alloc_step,
                    free_step: None,
                    released: self.live.release.contains(&v),
                });
            }
            for dead in self.live.after(key, i) {
                if let Some(idx) = self.pending.remove(dead) {
                    self.plan.buffers[idx].free_step = Some(step);
                }
            }
            // Region results are consumed (and freed) by their owner.
            for r in &node.regions {
                for res in &r.results {
                    if let Some(idx) = self.pending.remove(res) {
                        self.plan.buffers[idx].free_step = Some(step);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frees_after_last_use_and_keeps_outputs() {
        let g = reformc_ir::parse(
            "graph {\n %0 = input {name=\"x\"} : f32[N]\n %1 = exp %0 : f32[N]\n %2 = softmax %1 {axis=0} : f32[N]\n %3 = add %1, %2 : f32[N]\n output \"y\" = %3\n}",
        )
        .unwrap();
        let live = Liveness::new(&g, &Fusion::new(&g));
        assert!(live.after(None, 0).is_empty()); // input: never freed
        assert!(live.after(None, 1).is_empty());
        assert!(live.after(None, 2).is_empty());
        let mut freed = live.after(None, 3).to_vec();
        freed.sort();
        assert_eq!(freed, vec![ValueId(1), ValueId(2)]);
        let plan = BufferPlan::new(&g);
        assert_eq!(plan.buffers.len(), 3);
        assert_eq!(plan.buffers[2].free_step, None);
        let env: DimEnv = [("N".to_string(), 4)].into_iter().collect();
        assert_eq!(plan.peak_bytes(&env), Some(48));
        assert!(plan.to_text().contains("output (caller owns)"));
    }

    #[test]
    fn a_buffer_is_kept_for_a_later_one_of_the_same_byte_size() {
        // %1 (f32[N, 4]) dies before %3 (i32[N, 4]: another type, the same
        // bytes) is made, so the runtime's cache can hand %1's block to %3:
        // %1 stays cached. %4 (f32[N, 2]) matches nothing later: released.
        let g = reformc_ir::parse(
            "graph {\n %0 = input {name=\"x\"} : f32[N,4]\n %1 = exp %0 : f32[N,4]\n %2 = reduce %1 {axes=[1], kind=\"sum\"} : f32[N]\n %3 = cast %0 {dtype=\"i32\"} : i32[N,4]\n %4 = slice %0 {axis=1, start=0, end=2} : f32[N,2]\n %5 = reduce %4 {axes=[1], kind=\"sum\"} : f32[N]\n %6 = add %2, %5 : f32[N]\n output \"y\" = %6\n output \"z\" = %3\n}",
        )
        .unwrap();
        let live = Liveness::new(&g, &Fusion::new(&g));
        let release = &live.release;
        assert!(!release.contains(&g.body[1]), "{release:?}");
        assert!(release.contains(&g.body[4]), "{release:?}");
    }

    #[test]
    fn region_uses_count_as_uses_by_the_owner() {
        let text = "graph {\n  %0 = input {name=\"x\"} : f32[B,4]\n  %1 = input {name=\"y\"} : f32[B,2]\n  %2 = exp %1 : f32[B,2]\n  %3 = reversible_block %0 : f32[B,4] {\n    f(%4: f32[B,2]) {\n      %5 = add %4, %2 : f32[B,2]\n      yield %5\n    }\n    g(%6: f32[B,2]) {\n      yield %6\n    }\n  }\n  output \"y\" = %3\n}\n";
        let g = reformc_ir::parse(text).unwrap();
        let live = Liveness::new(&g, &Fusion::new(&g));
        let exp = g.body[2];
        assert!(live.after(None, 2).is_empty());
        assert_eq!(live.after(None, 3), &[exp]);
        let owner = g.body[3];
        // The region result escapes its block: the owner frees it.
        assert!(live.after(Some((owner, 0)), 0).is_empty());
        let plan = BufferPlan::new(&g);
        let names: Vec<&str> = plan.buffers.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, vec!["%2", "%3", "%5"]);
        let env: DimEnv = [("B".to_string(), 1)].into_iter().collect();
        // %2, the state (a copy of the input, which is not the block's to
        // overwrite) and %5 live together: 2 + 4 + 2 floats.
        assert_eq!(plan.peak_bytes(&env), Some(32));
    }
}
