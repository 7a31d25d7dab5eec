//! Codegen-level fusion: which values generated code never stores, and which
//! ops write into a neighbour's buffer instead of a fresh one.
//!
//! The IR keeps every op separate (passes and the interpreter reason about
//! them one at a time); this plan decides how a backend emits them (the LLVM backend
//! consumes it; [`crate::buffer_plan`] and `reformc explain` report it):
//!
//! - a `layer_norm` read only by `linear`s (as their input) is a *prologue*:
//!   each linear normalizes its rows block by block, and the `[rows, width]`
//!   normalized tensor never exists;
//! - a `linear` read only by one other `linear` is the *inner layer* of a
//!   two-layer stack (a feed-forward block): its `[rows, d_ff]` output lives a
//!   block of rows at a time;
//! - a `reversible_block` whose input has no other reader runs *in place*: it
//!   takes the input's buffer as its state and updates the halves
//!   (`x1 += f(x2)`, then `x2 += g(x1)`), with no copies of the halves;
//! - a region result that is a `linear` with no activation and no other
//!   reader is *accumulated* straight onto the reversible state half.
//!
//! - an elementwise op (arithmetic, comparison, `select`, `cast`, unary
//!   functions and activations) whose only reader is an elementwise op of
//!   the same shape in the same block is *inlined* into that reader's loop:
//!   a chain like `sub`, `mul`, `add` in a backward pass is one loop over
//!   the elements with no intermediate buffer. A few cheap arithmetic ops
//!   read by up to four such loops are computed again in each (memory
//!   traffic costs more than the arithmetic).
//!
//! - a `transpose` of the last two axes read only by a `matmul` (with no
//!   broadcast batch axes) is *read transposed* by the product: B's panels
//!   are packed from the untransposed buffer (as `linear` packs its weight),
//!   and the micro-kernel walks a transposed A with swapped strides (a weight
//!   gradient `xᵀ · dy` reads `x` where it lies).
//!
//! - a `truncate` that cuts nothing, a `reshape`, and an f32 `add` of a
//!   broadcast row block *take over* their dying first operand's buffer
//!   (the add then adds the rows in place).
//!
//! All seven keep the interpreter's rounding (runtime/src/dense.rs; an
//! inlined op computes the same f32 operation on the same operands, it only
//! skips storing the result). This is the one fusion planner: the backend
//! does not recompute it.
//!
//! ```text
//! %7 = layer_norm %6, ...      // prologue of %8
//! %8 = linear %7, %w1 {relu}   // inner layer of %9
//! %9 = linear %8, %w2          // emitted as one rc_dense_f32 call
//! ```

use reformc_ir::{Activation, BinaryFn, CostClass, DType, Elementwise, Graph, OpKind, ValueId};
use std::collections::{HashMap, HashSet};

/// One reader of a value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Use {
    /// Operand `index` of op `user`, which sits in block `block`.
    Operand {
        user: ValueId,
        index: usize,
        block: Option<(ValueId, usize)>,
    },
    /// Yielded by a region of `owner`.
    RegionResult { owner: ValueId },
    /// A graph output.
    Output,
}

/// The fusion decisions for one graph (see the module doc).
#[derive(Debug, Default)]
pub struct Fusion {
    /// `layer_norm`s computed as the prologue of each reading `linear`.
    pub prologue: HashSet<ValueId>,
    /// `linear`s computed as the first layer of their reader's stack.
    pub inner: HashSet<ValueId>,
    /// `reversible_block`s that take their input's buffer as their state.
    pub in_place: HashSet<ValueId>,
    /// Region results accumulated onto the owning reversible block's state.
    pub accumulated: HashSet<ValueId>,
    /// `truncate`s that take over their dying input's buffer when they cut
    /// nothing (decided at run time), `reshape`s that take it over always,
    /// and f32 `add`s of a broadcast row block that add in place into their
    /// dying first operand (of the result's type).
    pub take_input: HashSet<ValueId>,
    /// Elementwise ops computed inside their elementwise reader's loop.
    pub inlined: HashSet<ValueId>,
    /// Transposes of the last two axes that their `matmul` reads in place.
    pub transposed: HashSet<ValueId>,
    /// Ops that the kernel call of their group's leader computes (the value:
    /// the leader). Three kinds of group:
    /// - a run of consecutive `feed_forward_grad`s of one block with the
    ///   same operands and attributes but `wrt`, led by the first of them or
    ///   by a `feed_forward` of the same operands and attributes just before
    ///   the run (its output comes from the same call);
    /// - a run of consecutive `lm_loss_grad`s with the same operands and
    ///   attributes but `wrt` (the gradients with respect to `h` and `w`),
    ///   led by the first: one call computes the logits once for both;
    /// - a *pair* of consecutive stored `linear`s of one input (an
    ///   attention's query/key and value projections), led by the first: one
    ///   call normalizes the rows once (a shared layer-norm prologue) and
    ///   writes both products.
    pub grouped: HashMap<ValueId, ValueId>,
    /// Each group by its leader, leader first, in block order.
    groups: HashMap<ValueId, Vec<ValueId>>,
}

impl Fusion {
    /// Plans `g` (deterministic: depends only on the graph).
    pub fn new(g: &Graph) -> Fusion {
        let mut uses: HashMap<ValueId, Vec<Use>> = HashMap::new();
        collect(g, None, &g.body, &mut uses);
        for (_, v) in &g.outputs {
            uses.entry(*v).or_default().push(Use::Output);
        }
        let mut f = Fusion::default();
        f.block(g, None, &g.body, &uses);
        let regions = g.walk().into_iter().flat_map(|v| &g.node(v).regions);
        for body in regions.map(|r| &r.body).chain([&g.body]) {
            f.group_gradients(g, body);
            f.pair_linears(g, body);
        }
        f
    }

    /// The values one kernel call computes with `v`, `v` first, when `v`
    /// leads a group (see [`Fusion::grouped`]); empty otherwise.
    pub fn group_of(&self, v: ValueId) -> &[ValueId] {
        self.groups.get(&v).map_or(&[], Vec::as_slice)
    }

    /// How many pairs of linears one call computes (see [`Fusion::grouped`]).
    pub fn linear_pairs(&self, g: &Graph) -> usize {
        (self.groups.keys())
            .filter(|&&l| g.node(l).op.kind == OpKind::Linear)
            .count()
    }

    /// True when `v` is never stored (its reader computes it).
    pub fn absorbed(&self, v: ValueId) -> bool {
        self.prologue.contains(&v)
            || self.inner.contains(&v)
            || self.inlined.contains(&v)
            || self.transposed.contains(&v)
    }

    /// `v`'s operands as generated code reads them: an absorbed operand is
    /// replaced by what it reads (recursively).
    pub fn effective_inputs(&self, g: &Graph, v: ValueId, out: &mut Vec<ValueId>) {
        for &u in &g.node(v).inputs {
            if self.absorbed(u) {
                self.effective_inputs(g, u, out);
            } else {
                out.push(u);
            }
        }
    }

    fn block(
        &mut self,
        g: &Graph,
        key: Option<(ValueId, usize)>,
        body: &[ValueId],
        uses: &HashMap<ValueId, Vec<Use>>,
    ) {
        let none = Vec::new();
        let here: HashSet<ValueId> = body.iter().copied().collect();
        for &v in body {
            let node = g.node(v);
            let us = uses.get(&v).unwrap_or(&none);
            let read_by_linear_in_block = |u: &Use| {
                matches!(u, Use::Operand { user, index: 0, block }
                    if *block == key && g.node(*user).op.kind == OpKind::Linear)
            };
            let f32 = node.ty.dtype == DType::F32;
            // Each pattern is about one kind; every other op is emitted on its own.
            let kind = node.op.kind;
            if kind == OpKind::LayerNorm
                && f32
                && !us.is_empty()
                && us.iter().all(read_by_linear_in_block)
            {
                self.prologue.insert(v);
            }
            if kind == OpKind::Linear
                && f32
                && us.len() == 1
                && read_by_linear_in_block(&us[0])
                && !node.inputs.first().is_some_and(|x| self.inner.contains(x))
            {
                self.inner.insert(v);
            }
            if pointwise(g, v) && self.inlinable(g, v, key, us) {
                self.inlined.insert(v);
            }
            if kind == OpKind::Transpose && f32 && swaps_last_two(node) {
                if let [Use::Operand { user, index, block }] = us.as_slice() {
                    if *block == key && *index < 2 && unbroadcast_matmul(g, *user) {
                        self.transposed.insert(v);
                    }
                }
            }
            if matches!(kind, OpKind::Truncate | OpKind::Reshape) && sole_reader(g, uses, v, &here)
            {
                self.take_input.insert(v);
            }
            // An add of a broadcast row block (`x + bias`, the embeddings'
            // `words + positions`) adds in place into its dying full-shape
            // operand instead of filling a fresh buffer.
            if kind == OpKind::Add
                && f32
                && node.inputs.first().is_some_and(|&x| g.ty(x) == &node.ty)
                && sole_reader(g, uses, v, &here)
            {
                self.take_input.insert(v);
            }
            if kind == OpKind::ReversibleBlock {
                if sole_reader(g, uses, v, &here) && f32 {
                    self.in_place.insert(v);
                }
                for r in &node.regions {
                    for &res in &r.results {
                        let ru = uses.get(&res).unwrap_or(&none);
                        let rn = g.node(res);
                        if r.body.contains(&res)
                            && rn.op.kind == OpKind::Linear
                            && rn.op.activation() == Ok(Activation::None)
                            && rn.ty.dtype == DType::F32
                            && ru.as_slice() == [Use::RegionResult { owner: v }]
                        {
                            self.accumulated.insert(res);
                        }
                    }
                }
            }
            for (ri, r) in node.regions.iter().enumerate() {
                self.block(g, Some((v, ri)), &r.body, uses);
            }
        }
    }
}

impl Fusion {
    /// Whether pointwise `v` may be computed inside its readers' loops: every
    /// reader is a pointwise op of `v`'s shape in `v`'s block, and when there
    /// are several (each computes `v` again), `v` with what it inlines is a
    /// few cheap arithmetic ops ([`MAX_DUPLICATED`]), never a transcendental
    /// function or a division.
    fn inlinable(&self, g: &Graph, v: ValueId, key: Option<(ValueId, usize)>, us: &[Use]) -> bool {
        let shape = &g.ty(v).shape;
        let in_loop = |u: &Use| {
            matches!(u, Use::Operand { user, block, .. }
                if *block == key && pointwise(g, *user) && g.ty(*user).shape == *shape)
        };
        match us.len() {
            0 => false,
            1 => in_loop(&us[0]),
            n => {
                n <= MAX_READERS && us.iter().all(in_loop) && self.cheap_ops(g, v) <= MAX_DUPLICATED
            }
        }
    }

    /// The ops `v` computes in its reader's loop (itself and what it
    /// inlines), or more than [`MAX_DUPLICATED`] when one is not cheap (one
    /// FLOP per element in the IR's facts, and not a division).
    fn cheap_ops(&self, g: &Graph, v: ValueId) -> usize {
        let node = g.node(v);
        let kind = node.op.kind;
        if kind.facts().cost != CostClass::PerElement(1) || kind == OpKind::Div {
            return MAX_DUPLICATED + 1;
        }
        1 + node
            .inputs
            .iter()
            .filter(|u| self.inlined.contains(u))
            .map(|&u| self.cheap_ops(g, u))
            .sum::<usize>()
    }
}

/// Readers of one value that may each compute it again.
const MAX_READERS: usize = 4;

/// Ops a value read by several loops may cost each of them.
const MAX_DUPLICATED: usize = 3;

/// True when `v` computes each element from the same element of its
/// (broadcast) operands, with no way to fail: integer division stops the
/// model on a zero divisor, so it is never inlined nor given inlined operands.
pub fn pointwise(g: &Graph, v: ValueId) -> bool {
    let node = g.node(v);
    match node.op.kind.facts().elementwise {
        Some(Elementwise::Binary(BinaryFn::Div)) => node.ty.dtype.is_float(),
        Some(
            Elementwise::Unary(_)
            | Elementwise::Binary(_)
            | Elementwise::Select
            | Elementwise::Cast,
        ) => true,
        // `act_grad` has its own kernel.
        Some(Elementwise::ActGrad) | None => false,
    }
}

/// True for a transpose whose `perm` swaps the last two axes only.
fn swaps_last_two(node: &reformc_ir::Node) -> bool {
    let Some(perm) = node.op.ints("perm") else {
        return false;
    };
    let r = perm.len();
    r >= 2
        && perm[..r - 2]
            .iter()
            .enumerate()
            .all(|(i, &p)| p == i as i64)
        && perm[r - 2] == (r - 1) as i64
        && perm[r - 1] == (r - 2) as i64
}

/// True for an f32 `matmul` whose operands have its rank and its batch dims
/// (the product runs as one batch of matrix pairs).
fn unbroadcast_matmul(g: &Graph, v: ValueId) -> bool {
    let node = g.node(v);
    let out = &node.ty;
    let r = out.rank();
    node.op.kind == OpKind::Matmul
        && out.dtype == DType::F32
        && r >= 2
        && node.inputs.iter().all(|u| {
            let t = g.ty(*u);
            t.rank() == r && t.shape[..r - 2] == out.shape[..r - 2]
        })
}

/// True when `v`'s first operand is an op's own buffer (not an input,
/// weight or region argument) defined in `v`'s block (`here`: a region body
/// runs many times, an outer value must survive it) and `v` is its only reader.
fn sole_reader(
    g: &Graph,
    uses: &HashMap<ValueId, Vec<Use>>,
    v: ValueId,
    here: &HashSet<ValueId>,
) -> bool {
    g.node(v).inputs.first().is_some_and(|&x| {
        let xu = uses.get(&x).map_or(&[][..], Vec::as_slice);
        here.contains(&x)
            && xu.len() == 1
            && matches!(xu[0], Use::Operand { user, index: 0, .. } if user == v)
            && !matches!(
                g.node(x).op.kind,
                OpKind::Input | OpKind::Weight | OpKind::Arg
            )
    })
}

fn collect(
    g: &Graph,
    key: Option<(ValueId, usize)>,
    body: &[ValueId],
    uses: &mut HashMap<ValueId, Vec<Use>>,
) {
    for &v in body {
        let node = g.node(v);
        for (index, &u) in node.inputs.iter().enumerate() {
            uses.entry(u).or_default().push(Use::Operand {
                user: v,
                index,
                block: key,
            });
        }
        for (ri, r) in node.regions.iter().enumerate() {
            collect(g, Some((v, ri)), &r.body, uses);
            for &res in &r.results {
                uses.entry(res)
                    .or_default()
                    .push(Use::RegionResult { owner: v });
            }
        }
    }
}

impl Fusion {
    /// Records each pair of consecutive `linear`s in `body` that read the
    /// same input and are stored as they are (neither is the inner layer of a
    /// stack, accumulated onto a reversible half, or already in a group), the
    /// second reading nothing the first computes (see [`Fusion::grouped`]).
    fn pair_linears(&mut self, g: &Graph, body: &[ValueId]) {
        let mut i = 0;
        while i + 1 < body.len() {
            let (a, b) = (body[i], body[i + 1]);
            if self.pairable(g, a, b) {
                self.grouped.insert(b, a);
                self.groups.insert(a, vec![a, b]);
                i += 2;
            } else {
                i += 1;
            }
        }
    }

    fn pairable(&self, g: &Graph, a: ValueId, b: ValueId) -> bool {
        let stored = |v: ValueId| {
            let n = g.node(v);
            n.op.kind == OpKind::Linear
                && n.ty.dtype == DType::F32
                && !self.inner.contains(&v)
                && !self.accumulated.contains(&v)
                && !self.grouped.contains_key(&v)
                && !self.groups.contains_key(&v)
        };
        let (na, nb) = (g.node(a), g.node(b));
        stored(a)
            && stored(b)
            && !na.inputs.is_empty()
            && na.inputs.first() == nb.inputs.first()
            && !nb.inputs.contains(&a)
    }

    /// Records the runs of consecutive `feed_forward_grad`s in `body` that
    /// share operands and attributes except `wrt`, each led by the first of
    /// them or by the `feed_forward` of the same operands and attributes just
    /// before it (a reversible block's backward recomputes the branch's output
    /// there; see [`Fusion::grouped`]).
    /// Groups runs of gradients that one kernel call computes together: a
    /// feed-forward's (led by a `feed_forward` of the same operands just
    /// before them, when there is one) and a fused LM loss's (`wrt` h and w,
    /// one recomputation of the logits for both).
    fn group_gradients(&mut self, g: &Graph, body: &[ValueId]) {
        let strip = |n: &reformc_ir::Node| {
            let mut attrs = n.op.attrs.clone();
            attrs.remove("wrt");
            attrs
        };
        let joins = |lead: &reformc_ir::Node, n: &reformc_ir::Node| {
            let fwd = lead.inputs.len();
            let same_inputs = match lead.op.kind {
                OpKind::FeedForward => n.inputs.get(..fwd) == Some(&lead.inputs[..]),
                kind => kind == n.op.kind && n.inputs == lead.inputs,
            };
            same_inputs && strip(lead) == strip(n)
        };
        // The group's leader, and its first gradient (whose operands the rest share).
        let mut lead: Option<(ValueId, Option<ValueId>)> = None;
        for &v in body {
            let node = g.node(v);
            lead = match (node.op.kind, lead) {
                (OpKind::FeedForwardGrad | OpKind::LmLossGrad, Some((l, first))) => {
                    let like = g.node(first.unwrap_or(l));
                    match joins(g.node(l), node) && first.is_none_or(|_| joins(like, node)) {
                        true => {
                            self.grouped.insert(v, l);
                            self.groups.entry(l).or_insert_with(|| vec![l]).push(v);
                            Some((l, first.or(Some(v))))
                        }
                        false => Some((v, Some(v))),
                    }
                }
                (OpKind::FeedForwardGrad | OpKind::LmLossGrad, None) => Some((v, Some(v))),
                (OpKind::FeedForward, _) => Some((v, None)),
                _ => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(src: &str) -> Graph {
        reformc_ir::parse(src).unwrap()
    }

    /// The plan of `src` and its values in printed order.
    fn plan(src: &str) -> (Fusion, Vec<ValueId>) {
        let g = graph(src);
        (Fusion::new(&g), g.walk())
    }

    const FF: &str = "graph {
  %0 = input {name=\"x\"} : f32[N,4]
  %1 = weight {name=\"g\"} : f32[4]
  %2 = weight {name=\"b\"} : f32[4]
  %3 = weight {name=\"w1\"} : f32[8,4]
  %4 = weight {name=\"w2\"} : f32[4,8]
  %5 = layer_norm %0, %1, %2 {eps=1e-5} : f32[N,4]
  %6 = linear %5, %3 {activation=\"relu\"} : f32[N,8]
  %7 = linear %6, %4 : f32[N,4]
  output \"y\" = %7
}";

    #[test]
    fn a_feed_forward_is_one_stack() {
        let g = graph(FF);
        let f = Fusion::new(&g);
        let id = |n: usize| g.walk()[n];
        assert!(f.prologue.contains(&id(5)));
        assert!(f.inner.contains(&id(6)));
        assert!(!f.absorbed(id(7)), "the output is stored");
        let mut eff = Vec::new();
        f.effective_inputs(&g, id(7), &mut eff);
        assert_eq!(eff, vec![id(0), id(1), id(2), id(3), id(4)]);
    }

    #[test]
    fn two_stored_linears_of_one_input_are_a_pair() {
        let src = "graph {
  %0 = input {name=\"x\"} : f32[N,4]
  %1 = weight {name=\"g\"} : f32[4]
  %2 = weight {name=\"b\"} : f32[4]
  %3 = weight {name=\"w\"} : f32[4,4]
  %4 = layer_norm %0, %1, %2 {eps=1e-5} : f32[N,4]
  %5 = linear %4, %3 : f32[N,4]
  %6 = linear %4, %3, %2 {activation=\"gelu\"} : f32[N,4]
  %7 = linear %4, %3 : f32[N,4]
  %8 = linear %0, %3 : f32[N,4]
  %9 = linear %8, %3 : f32[N,4]
  %10 = linear %0, %3 : f32[N,4]
  %11 = add %9, %10 : f32[N,4]
  %12 = add %5, %6 : f32[N,4]
  %13 = add %11, %12 : f32[N,4]
  %14 = add %13, %7 : f32[N,4]
  output \"y\" = %14
}";
        let (f, ids) = plan(src);
        let id = |n: usize| ids[n];
        assert!(f.prologue.contains(&id(4)), "both read the norm");
        assert_eq!(f.group_of(id(5)), &[id(5), id(6)]);
        assert_eq!(f.grouped.get(&id(6)), Some(&id(5)));
        assert!(!f.grouped.contains_key(&id(7)), "a third stays alone");
        assert!(f.group_of(id(7)).is_empty());
        // %8 is the first layer of %9's stack, and %10 follows %9, which
        // reads another input.
        assert!(f.inner.contains(&id(8)));
        assert!(f.group_of(id(8)).is_empty() && f.group_of(id(9)).is_empty());
        assert!(!f.grouped.contains_key(&id(10)));
    }

    #[test]
    fn a_linear_that_reads_its_neighbour_or_accumulates_is_not_paired() {
        let src = "graph {
  %0 = input {name=\"x\"} : f32[N,8]
  %1 = weight {name=\"w\"} : f32[4,4]
  %2 = reversible_block %0 : f32[N,8] {
    f(%3: f32[N,4]) {
      %4 = linear %3, %1 : f32[N,4]
      %5 = linear %3, %1 : f32[N,4]
      %6 = add %4, %5 : f32[N,4]
      %7 = linear %6, %1 : f32[N,4]
      yield %7
    }
    g(%8: f32[N,4]) {
      %9 = linear %8, %1 : f32[N,4]
      %10 = linear %8, %1 : f32[N,4]
      yield %10
    }
  }
  output \"y\" = %2
}";
        let (f, ids) = plan(src);
        let id = |n: usize| ids[n];
        assert_eq!(f.group_of(id(4)), &[id(4), id(5)], "a pair inside a region");
        assert!(f.accumulated.contains(&id(10)));
        assert!(
            f.group_of(id(9)).is_empty(),
            "%10 accumulates onto the state"
        );
    }

    #[test]
    fn a_second_reader_keeps_the_value() {
        let src = FF.replace(
            "output \"y\" = %7",
            "%8 = add %5, %0 : f32[N,4]\n  output \"y\" = %7\n  output \"z\" = %8",
        );
        let g = graph(&src);
        let f = Fusion::new(&g);
        let id = |n: usize| g.walk()[n];
        assert!(!f.prologue.contains(&id(5)), "read by an add too");
        assert!(f.inner.contains(&id(6)));
    }

    #[test]
    fn a_truncate_may_take_over_only_a_dying_op_result() {
        let src = "graph {
  %0 = input {name=\"x\"} : f32[B,P,4]
  %1 = input {name=\"ids\"} : i64[B,L]
  %2 = exp %0 : f32[B,P,4]
  %3 = truncate %2, %1 {axis=1} : f32[B,L,4]
  %4 = truncate %0, %1 {axis=1} : f32[B,L,4]
  output \"y\" = %3
  output \"z\" = %4
}";
        let (f, ids) = plan(src);
        let id = |n: usize| ids[n];
        assert!(f.take_input.contains(&id(3)));
        assert!(
            !f.take_input.contains(&id(4)),
            "a graph input is the caller's"
        );
    }

    #[test]
    fn a_row_add_takes_over_its_dying_full_shape_operand() {
        let src = "graph {
  %0 = input {name=\"x\"} : f32[B,P,4]
  %1 = weight {name=\"b\"} : f32[4]
  %2 = exp %0 : f32[B,P,4]
  %3 = add %2, %1 : f32[B,P,4]
  %4 = exp %0 : f32[B,P,4]
  %5 = add %4, %1 : f32[B,P,4]
  %6 = add %1, %4 : f32[B,P,4]
  output \"y\" = %3
  output \"z\" = %5
  output \"w\" = %6
}";
        let (f, ids) = plan(src);
        let id = |n: usize| ids[n];
        assert!(f.take_input.contains(&id(3)), "%2 dies at the add");
        assert!(!f.take_input.contains(&id(5)), "%4 is read twice");
        assert!(
            !f.take_input.contains(&id(6)),
            "the first operand is the row"
        );
    }

    #[test]
    fn reversible_blocks_run_in_place_on_a_dying_input() {
        let src = "graph {
  %0 = input {name=\"x\"} : f32[N,8]
  %1 = weight {name=\"w\"} : f32[4,4]
  %2 = exp %0 : f32[N,8]
  %3 = reversible_block %2 : f32[N,8] {
    f(%4: f32[N,4]) {
      %5 = linear %4, %1 : f32[N,4]
      yield %5
    }
    g(%6: f32[N,4]) {
      %7 = exp %6 : f32[N,4]
      yield %7
    }
  }
  output \"y\" = %3
}";
        let (f, ids) = plan(src);
        let id = |n: usize| ids[n];
        assert!(f.in_place.contains(&id(3)));
        assert!(f.accumulated.contains(&id(5)));
        assert!(!f.accumulated.contains(&id(7)), "not a linear");
        // The graph input itself is never overwritten.
        let g2 = graph(&src.replace("reversible_block %2", "reversible_block %0"));
        assert!(Fusion::new(&g2).in_place.is_empty());
    }

    #[test]
    fn elementwise_chains_are_one_loop() {
        let src = "graph {
  %0 = input {name=\"x\"} : f32[N,4]
  %1 = input {name=\"b\"} : f32[4]
  %2 = sub %0, %1 : f32[N,4]
  %3 = mul %2, %2 : f32[N,4]
  %4 = exp %0 : f32[N,4]
  %5 = add %4, %1 : f32[N,4]
  %6 = mul %5, %0 : f32[N,4]
  %7 = add %6, %3 : f32[N,4]
  %8 = reduce %7 {axes=[1], kind=\"sum\"} : f32[N]
  output \"y\" = %8
}";
        let (f, ids) = plan(src);
        let id = |n: usize| ids[n];
        assert!(f.inlined.contains(&id(2)), "a cheap op, computed twice");
        assert!(f.inlined.contains(&id(3)));
        assert!(f.inlined.contains(&id(4)));
        assert!(f.inlined.contains(&id(5)));
        assert!(f.inlined.contains(&id(6)));
        assert!(!f.inlined.contains(&id(7)), "read by a reduce");
        assert!(f.absorbed(id(6)));
    }

    #[test]
    fn broadcasting_or_failing_ops_keep_their_buffer() {
        let src = "graph {
  %0 = input {name=\"x\"} : f32[N,4]
  %1 = input {name=\"b\"} : f32[4]
  %2 = input {name=\"i\"} : i64[N,4]
  %3 = input {name=\"j\"} : i64[N,4]
  %4 = exp %1 : f32[4]
  %5 = add %0, %4 : f32[N,4]
  %6 = div %2, %3 : i64[N,4]
  %7 = add %6, %3 : i64[N,4]
  %8 = exp %0 : f32[N,4]
  %9 = mul %8, %8 : f32[N,4]
  output \"y\" = %5
  output \"z\" = %7
  output \"w\" = %9
}";
        let (f, ids) = plan(src);
        assert!(!f.inlined.contains(&ids[8]), "an exp is not computed twice");
        assert!(!f.inlined.contains(&ids[4]), "[4] broadcast into [N,4]");
        assert!(!f.inlined.contains(&ids[6]), "integer division may fail");
    }

    #[test]
    fn a_matmul_reads_a_transpose_of_its_last_two_axes() {
        let src = "graph {
  %0 = input {name=\"x\"} : f32[B,P,4]
  %1 = input {name=\"d\"} : f32[B,6,4]
  %2 = transpose %1 {perm=[0,2,1]} : f32[B,4,6]
  %3 = matmul %0, %2 : f32[B,P,6]
  %4 = transpose %0 {perm=[0,2,1]} : f32[B,4,P]
  %5 = matmul %4, %0 : f32[B,4,4]
  %6 = transpose %1 {perm=[1,0,2]} : f32[6,B,4]
  %7 = input {name=\"w\"} : f32[6,4]
  %8 = transpose %7 {perm=[1,0]} : f32[4,6]
  %9 = matmul %0, %8 : f32[B,P,6]
  output \"y\" = %3
  output \"z\" = %5
  output \"u\" = %6
  output \"v\" = %9
}";
        let (f, ids) = plan(src);
        assert!(f.transposed.contains(&ids[2]));
        assert!(f.transposed.contains(&ids[4]), "a first operand too");
        assert!(!f.transposed.contains(&ids[6]), "not the last two axes");
        assert!(!f.transposed.contains(&ids[8]), "[4,6] broadcasts over B");
    }

    #[test]
    fn a_region_never_takes_an_outer_buffer() {
        let src = "graph {
  %0 = input {name=\"x\"} : f32[B,P,4]
  %1 = exp %0 : f32[B,P,4]
  %2 = reshape %1 : f32[B,P,2,2]
  %3 = exp %0 : f32[B,P,4]
  %4 = seq_chunk %0 {axis=1, size=2} : f32[B,P,4] {
    body(%5: f32[B,C,4]) {
      %6 = reshape %3 : f32[B,P,2,2]
      %7 = reshape %6 : f32[B,P,4]
      %8 = slice %7 {axis=1, start=0, end=1} : f32[B,1,4]
      %9 = add %5, %8 : f32[B,C,4]
      yield %9
    }
  }
  output \"y\" = %2
  output \"z\" = %4
}";
        let (f, ids) = plan(src);
        assert!(f.take_input.contains(&ids[2]), "a dying op result");
        assert!(!f.take_input.contains(&ids[6]), "%3 is read on every chunk");
        assert!(f.take_input.contains(&ids[7]), "defined in the body");
    }

    /// A feed-forward, its seven gradients and `extra` between them.
    fn feed_forward_step(extra: &str) -> Graph {
        let mut t = String::from("graph {\n");
        let shapes = [
            "f32[N,4]", "f32[4]", "f32[4]", "f32[6,4]", "f32[6]", "f32[4,6]", "f32[4]",
        ];
        let names = ["x", "ln_w", "ln_b", "w1", "b1", "w2", "b2"];
        for (i, (n, ty)) in names.iter().zip(shapes).enumerate() {
            t += &format!(" %{i} = input {{name=\"{n}\"}} : {ty}\n");
        }
        t += " %7 = input {name=\"dy\"} : f32[N,4]\n";
        let ops = "%0, %1, %2, %3, %4, %5, %6";
        t += &format!(" %8 = feed_forward {ops} {{chunk=2, eps=0.1}} : f32[N,4]\n");
        t += extra;
        let first = if extra.is_empty() { 9 } else { 10 };
        for (k, (n, ty)) in names.iter().zip(shapes).enumerate() {
            let v = first + k;
            t += &format!(
                " %{v} = feed_forward_grad {ops}, %7 {{chunk=2, eps=0.1, wrt=\"{n}\"}} : {ty}\n output \"d{n}\" = %{v}\n"
            );
        }
        t += " output \"y\" = %8\n}";
        reformc_ir::parse(&t).unwrap()
    }

    #[test]
    fn a_feed_forward_leads_the_gradients_that_follow_it() {
        let g = feed_forward_step("");
        let f = Fusion::new(&g);
        let lead = g.outputs.iter().find(|(n, _)| n == "y").unwrap().1;
        let group = f.group_of(lead);
        assert_eq!(group.len(), 8);
        assert_eq!(group[0], lead);
        assert!(group[1..].iter().all(|m| f.grouped[m] == lead));
        // Members are computed by the leader, not on their own.
        assert!(f.group_of(group[1]).is_empty());
    }

    #[test]
    fn an_op_between_them_makes_the_first_gradient_lead() {
        let g = feed_forward_step(" %9 = neg %0 : f32[N,4]\n output \"n\" = %9\n");
        let f = Fusion::new(&g);
        let dx = g.outputs.iter().find(|(n, _)| n == "dx").unwrap().1;
        assert_eq!(f.group_of(dx).len(), 7);
        assert_eq!(f.grouped.len(), 6);
    }

    #[test]
    fn the_lm_loss_gradients_are_one_call() {
        let grads = |between: &str| {
            let t = format!(
                "graph {{
  %0 = input {{name=\"h\"}} : f32[N,4]
  %1 = input {{name=\"w\"}} : f32[9,4]
  %2 = input {{name=\"labels\"}} : i64[N]
  %3 = input {{name=\"dy\"}} : f32[]
  %4 = lm_loss_grad %0, %1, %2, %3 {{chunk=2, wrt=\"h\"}} : f32[N,4]
{between}  %5 = lm_loss_grad %0, %1, %2, %3 {{chunk=2, wrt=\"w\"}} : f32[9,4]
  output \"dh\" = %4
  output \"dw\" = %5
}}"
            );
            let g = reformc_ir::parse(&t).unwrap();
            let at = |name: &str| g.outputs.iter().find(|(n, _)| n == name).unwrap().1;
            let f = Fusion::new(&g);
            let group = f.group_of(at("dh")).to_vec();
            (group, vec![at("dh"), at("dw")])
        };
        let (group, ids) = grads("");
        assert_eq!(group, ids, "led by the first");
        let (group, _) = grads("  %6 = neg %3 : f32[]\n  output \"n\" = %6\n");
        assert!(group.is_empty(), "an op between them keeps them apart");
    }
}
