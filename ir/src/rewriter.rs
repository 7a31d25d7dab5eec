//! Editing a graph in place: use lists, insertion, erasure, use replacement
//! and compaction, the one set of graph-edit helpers every pass uses.
//!
//! [`UseLists`] is the read-only index (who uses a value, which block holds
//! an op); [`Rewriter`] owns a `&mut Graph` and keeps that index up to date
//! across every edit it makes, so that a pass never recounts uses or
//! searches for an op's block by hand.
//!
//! Passes edit graphs in one of two ways, both owned by this crate: in place
//! through a [`Rewriter`] (the attention pass, inverting a reversible block:
//! a few ops inserted or replaced in a large graph), or by rebuilding through
//! [`crate::scoped::Program`] (chunking, reversible folding, cleanup,
//! simplification and eqsat extraction: whole bodies renumbered or moved
//! between regions). No pass keeps private graph-edit helpers.
//!
//! ```
//! use reformc_ir::{parse, print, verify, Node, Op, OpKind, Rewriter};
//! let mut g = parse("graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = exp %0 : f32[N]\n  %2 = neg %1 : f32[N]\n  output \"y\" = %2\n}\n").unwrap();
//! let (x, e, n) = (g.body[0], g.body[1], g.body[2]);
//! let mut rw = Rewriter::new(&mut g);
//! // Put a tanh before the neg and make the neg read it instead of the exp.
//! let t = rw.insert_before(n, Node::new(Op::new(OpKind::Tanh), vec![x], rw.graph().ty(x).clone())).unwrap();
//! rw.replace_all_uses(e, t);
//! assert!(rw.users(e).is_empty());
//! rw.erase(e).unwrap();
//! verify(&g).unwrap();
//! assert_eq!(print(&g), "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = tanh %0 : f32[N]\n  %2 = neg %1 : f32[N]\n  output \"y\" = %2\n}\n");
//! ```

use crate::{Graph, Node, Op, OpKind, ValueId};
use std::fmt;

/// A block: the top-level body or the body of one region of an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockId {
    /// [`Graph::body`].
    Top,
    /// `regions[index].body` of the node `owner`.
    Region {
        /// The op owning the region.
        owner: ValueId,
        /// Which of its regions.
        index: usize,
    },
}

/// One use of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Use {
    /// Operand `index` of the op `user`.
    Operand {
        /// The using op.
        user: ValueId,
        /// Position among its operands.
        index: usize,
    },
    /// Result `index` of region `region` of the op `owner`.
    Yield {
        /// The op owning the region.
        owner: ValueId,
        /// Which of its regions.
        region: usize,
        /// Position among the region's results.
        index: usize,
    },
    /// The graph output at position `index` of [`Graph::outputs`].
    Output(usize),
}

/// Why an edit was refused. The graph is unchanged when one is returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewriteError(pub String);

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RewriteError {}

fn refuse<T>(message: String) -> Result<T, RewriteError> {
    Err(RewriteError(message))
}

/// Users and placement of every value of a graph, computed in one walk.
///
/// Only ops placed in a block (and region arguments) count: a detached arena
/// node neither has a block nor uses anything.
///
/// ```
/// use reformc_ir::{parse, Use, UseLists, BlockId};
/// let g = parse("graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = add %0, %0 : f32[N]\n  output \"y\" = %1\n}\n").unwrap();
/// let u = UseLists::new(&g);
/// let (x, y) = (g.body[0], g.body[1]);
/// assert_eq!(u.count(x), 2);
/// assert_eq!(u.users(y), &[Use::Output(0)]);
/// assert_eq!(u.block_of(y), Some(BlockId::Top));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UseLists {
    users: Vec<Vec<Use>>,
    place: Vec<Option<BlockId>>,
}

impl UseLists {
    /// The use lists of `g`.
    pub fn new(g: &Graph) -> UseLists {
        let mut u = UseLists {
            users: vec![Vec::new(); g.len()],
            place: vec![None; g.len()],
        };
        let body = g.body.clone();
        for v in body {
            u.attach(g, v, BlockId::Top);
        }
        for (i, (_, v)) in g.outputs.iter().enumerate() {
            u.add(*v, Use::Output(i));
        }
        u
    }

    /// Every use of `v` (empty for unknown values).
    pub fn users(&self, v: ValueId) -> &[Use] {
        self.users.get(v.index()).map_or(&[], Vec::as_slice)
    }

    /// How many times `v` is used (an op using it twice counts twice).
    pub fn count(&self, v: ValueId) -> usize {
        self.users(v).len()
    }

    /// The block holding the op `v`; `None` for detached nodes and region
    /// arguments.
    pub fn block_of(&self, v: ValueId) -> Option<BlockId> {
        self.place.get(v.index()).copied().flatten()
    }

    fn grow(&mut self, len: usize) {
        if self.users.len() < len {
            self.users.resize(len, Vec::new());
            self.place.resize(len, None);
        }
    }

    fn add(&mut self, v: ValueId, u: Use) {
        self.grow(v.index() + 1);
        self.users[v.index()].push(u);
    }

    fn remove(&mut self, v: ValueId, u: Use) {
        if let Some(list) = self.users.get_mut(v.index()) {
            if let Some(i) = list.iter().position(|x| *x == u) {
                list.remove(i);
            }
        }
    }

    /// Records `v` as placed in `block`, with the uses it and its regions make.
    fn attach(&mut self, g: &Graph, v: ValueId, block: BlockId) {
        self.grow(g.len());
        // A body naming a missing node is the verifier's to report.
        let Some(node) = g.nodes.get(v.index()) else {
            return;
        };
        self.place[v.index()] = Some(block);
        for (index, i) in node.inputs.iter().enumerate() {
            self.add(*i, Use::Operand { user: v, index });
        }
        for (ri, r) in node.regions.iter().enumerate() {
            let inner = BlockId::Region {
                owner: v,
                index: ri,
            };
            for &x in &r.body {
                self.attach(g, x, inner);
            }
            for (index, x) in r.results.iter().enumerate() {
                self.add(
                    *x,
                    Use::Yield {
                        owner: v,
                        region: ri,
                        index,
                    },
                );
            }
        }
    }

    /// Undoes [`UseLists::attach`].
    fn detach(&mut self, g: &Graph, v: ValueId) {
        let Some(node) = g.nodes.get(v.index()) else {
            return;
        };
        self.place[v.index()] = None;
        for (index, i) in node.inputs.iter().enumerate() {
            self.remove(*i, Use::Operand { user: v, index });
        }
        for (ri, r) in node.regions.iter().enumerate() {
            for &x in &r.body {
                self.detach(g, x);
            }
            for (index, x) in r.results.iter().enumerate() {
                self.remove(
                    *x,
                    Use::Yield {
                        owner: v,
                        region: ri,
                        index,
                    },
                );
            }
        }
    }
}

/// A graph being edited, with its [`UseLists`] kept current.
///
/// Erased ops leave their block but stay in the arena (their ids stay
/// valid) until [`Rewriter::compact`] renumbers the arena.
pub struct Rewriter<'g> {
    g: &'g mut Graph,
    uses: UseLists,
}

impl<'g> Rewriter<'g> {
    /// Starts editing `g`, computing its use lists.
    pub fn new(g: &'g mut Graph) -> Rewriter<'g> {
        let uses = UseLists::new(g);
        Rewriter { g, uses }
    }

    /// The graph as edited so far.
    pub fn graph(&self) -> &Graph {
        self.g
    }

    /// The current use lists.
    pub fn use_lists(&self) -> &UseLists {
        &self.uses
    }

    /// Every use of `v`.
    pub fn users(&self, v: ValueId) -> &[Use] {
        self.uses.users(v)
    }

    /// The block holding the op `v` (see [`UseLists::block_of`]).
    pub fn block_of(&self, v: ValueId) -> Option<BlockId> {
        self.uses.block_of(v)
    }

    /// The block holding the op `v` and its position there.
    ///
    /// ```
    /// use reformc_ir::{parse, Rewriter, BlockId};
    /// let mut g = parse("graph {\n  %0 = input {name=\"x\"} : f32[N,8]\n  %1 = reversible_block %0 : f32[N,8] {\n    f(%2: f32[N,4]) {\n      %3 = tanh %2 : f32[N,4]\n      yield %3\n    }\n    g(%4: f32[N,4]) {\n      %5 = exp %4 : f32[N,4]\n      yield %5\n    }\n  }\n  output \"y\" = %1\n}\n").unwrap();
    /// let block = g.body[1];
    /// let tanh = g.node(block).regions[0].body[0];
    /// let rw = Rewriter::new(&mut g);
    /// assert_eq!(rw.locate(tanh), Some((BlockId::Region { owner: block, index: 0 }, 0)));
    /// assert_eq!(rw.locate(block), Some((BlockId::Top, 1)));
    /// ```
    pub fn locate(&self, v: ValueId) -> Option<(BlockId, usize)> {
        let b = self.block_of(v)?;
        let pos = self.block(b).iter().position(|x| *x == v)?;
        Some((b, pos))
    }

    /// The ops of block `b` in order (empty when `b` names no region).
    pub fn block(&self, b: BlockId) -> &[ValueId] {
        match b {
            BlockId::Top => &self.g.body,
            BlockId::Region { owner, index } => self
                .g
                .nodes
                .get(owner.index())
                .and_then(|n| n.regions.get(index))
                .map_or(&[], |r| r.body.as_slice()),
        }
    }

    fn block_vec_mut(&mut self, b: BlockId) -> Result<&mut Vec<ValueId>, RewriteError> {
        match b {
            BlockId::Top => Ok(&mut self.g.body),
            BlockId::Region { owner, index } => self
                .g
                .nodes
                .get_mut(owner.index())
                .and_then(|n| n.regions.get_mut(index))
                .map(|r| &mut r.body)
                .ok_or_else(|| RewriteError(format!("{owner} has no region {index}"))),
        }
    }

    fn check_exists(&self, v: ValueId) -> Result<(), RewriteError> {
        if v.index() < self.g.len() {
            Ok(())
        } else {
            refuse(format!("{v} is not a value of the graph"))
        }
    }

    /// Adds `node` to the arena and places it at `pos` of block `b`; its
    /// region bodies (arena nodes made with [`Graph::push_detached`]) are
    /// placed with it.
    pub fn insert_at(
        &mut self,
        b: BlockId,
        pos: usize,
        node: Node,
    ) -> Result<ValueId, RewriteError> {
        for i in &node.inputs {
            self.check_exists(*i)?;
        }
        if pos > self.block(b).len() {
            return refuse(format!("position {pos} is past the end of its block"));
        }
        if let BlockId::Region { owner, .. } = b {
            self.check_exists(owner)?;
        }
        self.block_vec_mut(b)?;
        let v = self.g.push_detached(node);
        self.block_vec_mut(b)?.insert(pos, v);
        self.uses.attach(self.g, v, b);
        Ok(v)
    }

    /// Puts `node` in the arena only, for instance as an op of a region
    /// body being built; it is placed (and its uses counted) when the op
    /// owning the region is inserted.
    pub fn push_detached(&mut self, node: Node) -> ValueId {
        self.g.push_detached(node)
    }

    /// Adds `node` right before the placed op `anchor`, in its block.
    /// Inserting several nodes before the same anchor keeps their order.
    pub fn insert_before(&mut self, anchor: ValueId, node: Node) -> Result<ValueId, RewriteError> {
        let (b, pos) = self
            .locate(anchor)
            .ok_or_else(|| RewriteError(format!("{anchor} is in no block")))?;
        self.insert_at(b, pos, node)
    }

    /// Adds `node` at the end of block `b`.
    pub fn append(&mut self, b: BlockId, node: Node) -> Result<ValueId, RewriteError> {
        let end = self.block(b).len();
        self.insert_at(b, end, node)
    }

    /// Mutable access to the op (kind and attributes) of `v`; operands are
    /// changed with [`Rewriter::set_inputs`] so that uses stay counted.
    pub fn op_mut(&mut self, v: ValueId) -> &mut Op {
        &mut self.g.node_mut(v).op
    }

    /// Replaces the operands of `v`.
    pub fn set_inputs(&mut self, v: ValueId, inputs: Vec<ValueId>) -> Result<(), RewriteError> {
        self.check_exists(v)?;
        for i in &inputs {
            self.check_exists(*i)?;
        }
        let placed = self.block_of(v).is_some();
        let old = std::mem::replace(&mut self.g.node_mut(v).inputs, inputs);
        if placed {
            for (index, i) in old.iter().enumerate() {
                self.uses.remove(*i, Use::Operand { user: v, index });
            }
            for (index, i) in self.g.node(v).inputs.clone().into_iter().enumerate() {
                self.uses.add(i, Use::Operand { user: v, index });
            }
        }
        Ok(())
    }

    /// Makes every use of `old` (operands, region results, graph outputs) use
    /// `new`; returns how many uses moved. The caller keeps dominance: `new`
    /// must be visible wherever `old` was used.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) -> usize {
        if old == new || new.index() >= self.g.len() || old.index() >= self.uses.users.len() {
            return 0;
        }
        let moved = std::mem::take(&mut self.uses.users[old.index()]);
        for u in &moved {
            match *u {
                Use::Operand { user, index } => self.g.node_mut(user).inputs[index] = new,
                Use::Yield {
                    owner,
                    region,
                    index,
                } => self.g.node_mut(owner).regions[region].results[index] = new,
                Use::Output(i) => self.g.outputs[i].1 = new,
            }
            self.uses.add(new, *u);
        }
        moved.len()
    }

    /// Removes the op `v` (and its regions' ops) from its block. Refuses while
    /// `v` has users. The node stays in the arena, detached.
    pub fn erase(&mut self, v: ValueId) -> Result<(), RewriteError> {
        let (b, pos) = self
            .locate(v)
            .ok_or_else(|| RewriteError(format!("{v} is in no block")))?;
        if let Some(u) = self.users(v).first() {
            return refuse(format!("{v} is still used ({u:?})"));
        }
        self.block_vec_mut(b)?.remove(pos);
        self.uses.detach(self.g, v);
        Ok(())
    }

    /// Erases every op among `candidates` that has no use, then their
    /// operands that lost their last use, and so on. Graph inputs and weights
    /// stay (they are the graph's signature). Returns how many ops were erased.
    pub fn remove_dead(&mut self, candidates: impl IntoIterator<Item = ValueId>) -> usize {
        let mut work: Vec<ValueId> = candidates.into_iter().collect();
        let mut erased = 0;
        while let Some(c) = work.pop() {
            let keep =
                self.g.nodes.get(c.index()).is_none_or(|n| {
                    matches!(n.op.kind, OpKind::Input | OpKind::Weight | OpKind::Arg)
                });
            if keep || !self.users(c).is_empty() || self.block_of(c).is_none() {
                continue;
            }
            let inputs = self.g.node(c).inputs.clone();
            if self.erase(c).is_ok() {
                erased += 1;
                work.extend(inputs);
            }
        }
        erased
    }

    /// [`Rewriter::remove_dead`] over every placed op: dead-code elimination.
    pub fn remove_unused(&mut self) -> usize {
        let all = self.g.walk();
        self.remove_dead(all.into_iter().rev())
    }

    /// Drops arena nodes that are in no block (erased or never placed) and
    /// renumbers the rest, keeping their order. Returns the map from old ids
    /// to new ones (`None` for dropped nodes).
    ///
    /// ```
    /// use reformc_ir::{parse, print, Rewriter};
    /// let text = "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = exp %0 : f32[N]\n  %2 = neg %0 : f32[N]\n  output \"y\" = %2\n}\n";
    /// let mut g = parse(text).unwrap();
    /// let mut rw = Rewriter::new(&mut g);
    /// assert_eq!(rw.remove_unused(), 1);
    /// let map = rw.compact();
    /// assert_eq!(map.iter().filter(|m| m.is_none()).count(), 1);
    /// assert_eq!(g.len(), 2);
    /// reformc_ir::verify(&g).unwrap();
    /// ```
    pub fn compact(&mut self) -> Vec<Option<ValueId>> {
        let mut live = vec![false; self.g.len()];
        for v in self.g.walk() {
            live[v.index()] = true;
        }
        let mut map = vec![None; self.g.len()];
        let mut next = 0u32;
        for (i, keep) in live.iter().enumerate() {
            if *keep {
                map[i] = Some(ValueId(next));
                next += 1;
            }
        }
        let old = std::mem::take(&mut self.g.nodes);
        // Values outside the arena's live part are left as they are (the
        // verifier reports them); live ones are renumbered.
        let fix = |v: &mut ValueId| {
            if let Some(Some(n)) = map.get(v.index()) {
                *v = *n;
            }
        };
        for (i, mut node) in old.into_iter().enumerate() {
            if !live[i] {
                continue;
            }
            node.inputs.iter_mut().for_each(fix);
            for r in &mut node.regions {
                r.args.iter_mut().for_each(fix);
                r.body.iter_mut().for_each(fix);
                r.results.iter_mut().for_each(fix);
            }
            self.g.nodes.push(node);
        }
        self.g.body.iter_mut().for_each(fix);
        for (_, v) in &mut self.g.outputs {
            fix(v);
        }
        self.uses = UseLists::new(self.g);
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, print, verify, DType, Dim, TensorType};
    use proptest::prelude::*;

    const BLOCK: &str = "graph {\n  %0 = input {name=\"x\"} : f32[N,8]\n  %1 = weight {name=\"w\"} : f32[4,4]\n  %2 = reversible_block %0 : f32[N,8] {\n    f(%3: f32[N,4]) {\n      %4 = linear %3, %1 : f32[N,4]\n      yield %4\n    }\n    g(%5: f32[N,4]) {\n      %6 = exp %5 : f32[N,4]\n      yield %6\n    }\n  }\n  output \"y\" = %2\n}\n";

    fn t() -> TensorType {
        TensorType::new(DType::F32, vec![Dim::sym("N")])
    }

    #[test]
    fn use_lists_cover_operands_yields_and_outputs() {
        let g = parse(BLOCK).unwrap();
        let u = UseLists::new(&g);
        let (w, block) = (g.body[1], g.body[2]);
        let lin = g.node(block).regions[0].body[0];
        assert_eq!(
            u.users(w),
            &[Use::Operand {
                user: lin,
                index: 1
            }]
        );
        assert_eq!(
            u.users(lin),
            &[Use::Yield {
                owner: block,
                region: 0,
                index: 0
            }]
        );
        assert_eq!(u.users(block), &[Use::Output(0)]);
        assert_eq!(
            u.block_of(lin),
            Some(BlockId::Region {
                owner: block,
                index: 0
            })
        );
        // Region arguments are values but not ops of a block.
        assert_eq!(u.block_of(g.node(block).regions[0].args[0]), None);
    }

    #[test]
    fn erase_refuses_used_values_and_keeps_the_graph() {
        let mut g = parse(BLOCK).unwrap();
        let before = g.clone();
        let w = g.body[1];
        let mut rw = Rewriter::new(&mut g);
        assert!(rw.erase(w).unwrap_err().0.contains("still used"));
        assert!(rw.erase(ValueId(99)).is_err());
        assert_eq!(g, before);
    }

    #[test]
    fn erasing_an_owner_drops_its_regions_uses() {
        let mut g = parse(BLOCK).unwrap();
        let (x, w, block) = (g.body[0], g.body[1], g.body[2]);
        let mut rw = Rewriter::new(&mut g);
        rw.replace_all_uses(block, x);
        rw.erase(block).unwrap();
        assert!(rw.users(w).is_empty());
        assert_eq!(rw.users(x), &[Use::Output(0)]);
        // The weight stays: it is part of the signature.
        assert_eq!(rw.remove_unused(), 0);
        assert_eq!(rw.graph().body, vec![x, w]);
        verify(&g).unwrap();
    }

    #[test]
    fn insert_into_a_region_and_before_an_anchor() {
        let mut g = parse(BLOCK).unwrap();
        let block = g.body[2];
        let exp = g.node(block).regions[1].body[0];
        let arg = g.node(block).regions[1].args[0];
        let ty = g.ty(arg).clone();
        let mut rw = Rewriter::new(&mut g);
        let a = rw
            .insert_before(exp, Node::new(Op::new(OpKind::Tanh), vec![arg], ty.clone()))
            .unwrap();
        let b = rw
            .insert_before(exp, Node::new(Op::new(OpKind::Neg), vec![a], ty.clone()))
            .unwrap();
        rw.set_inputs(exp, vec![b]).unwrap();
        assert_eq!(rw.users(arg), &[Use::Operand { user: a, index: 0 }]);
        assert_eq!(
            rw.locate(exp),
            Some((
                BlockId::Region {
                    owner: block,
                    index: 1
                },
                2
            ))
        );
        let end = rw
            .append(
                BlockId::Region {
                    owner: block,
                    index: 1,
                },
                Node::new(Op::new(OpKind::Exp), vec![exp], ty),
            )
            .unwrap();
        assert_eq!(
            rw.block_of(end),
            Some(BlockId::Region {
                owner: block,
                index: 1
            })
        );
        assert!(rw
            .insert_at(
                BlockId::Top,
                99,
                Node::new(Op::new(OpKind::Exp), vec![], t())
            )
            .is_err());
        assert_eq!(rw.remove_unused(), 1);
        verify(&g).unwrap();
        let text = print(&g);
        assert!(text.contains("      %6 = tanh %5 : f32[N,4]\n      %7 = neg %6 : f32[N,4]\n      %8 = exp %7 : f32[N,4]\n      yield %8\n"), "{text}");
    }

    #[test]
    fn remove_dead_follows_operands() {
        let text = "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = exp %0 : f32[N]\n  %2 = tanh %1 : f32[N]\n  %3 = neg %0 : f32[N]\n  output \"y\" = %3\n}\n";
        let mut g = parse(text).unwrap();
        let tanh = g.body[2];
        let mut rw = Rewriter::new(&mut g);
        assert_eq!(rw.remove_dead([tanh]), 2);
        rw.compact();
        assert_eq!(
            print(&g),
            "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = neg %0 : f32[N]\n  output \"y\" = %1\n}\n"
        );
    }

    /// A random chain over `f32[N]`: inputs, then unary and binary ops whose
    /// operands are earlier values, some of them outputs.
    fn random_graph(ops: &[(u8, usize, usize)], outputs: &[usize]) -> Graph {
        let mut g = Graph::new();
        let mut vals = vec![];
        for name in ["a", "b"] {
            vals.push(g.add(
                Op::new(OpKind::Input).with("name", crate::Attr::Str(name.into())),
                vec![],
                t(),
            ));
        }
        for &(k, i, j) in ops {
            let (x, y) = (vals[i % vals.len()], vals[j % vals.len()]);
            let v = match k % 3 {
                0 => g.add(Op::new(OpKind::Exp), vec![x], t()),
                1 => g.add(Op::new(OpKind::Add), vec![x, y], t()),
                _ => g.add(Op::new(OpKind::Mul), vec![x, y], t()),
            };
            vals.push(v);
        }
        for (n, o) in outputs.iter().enumerate() {
            g.set_output(&format!("o{n}"), vals[o % vals.len()]);
        }
        g
    }

    fn sorted(u: &UseLists) -> Vec<(Vec<Use>, Option<BlockId>)> {
        let mut out: Vec<_> = u
            .users
            .iter()
            .zip(&u.place)
            .map(|(l, p)| {
                let mut l = l.clone();
                l.sort();
                (l, *p)
            })
            .collect();
        while out.last().is_some_and(|(l, p)| l.is_empty() && p.is_none()) {
            out.pop();
        }
        out
    }

    #[derive(Clone, Debug)]
    enum Edit {
        Insert(usize, usize),
        Replace(usize, usize),
        Erase(usize),
        RemoveDead(usize),
        RemoveUnused,
        Compact,
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Insert(a, b)),
            (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Replace(a, b)),
            any::<usize>().prop_map(Edit::Erase),
            any::<usize>().prop_map(Edit::RemoveDead),
            Just(Edit::RemoveUnused),
            Just(Edit::Compact),
        ]
    }

    fn apply(rw: &mut Rewriter<'_>, e: &Edit) {
        let body = rw.graph().body.clone();
        let pick = |i: usize| body[i % body.len()];
        match *e {
            // A new op before `anchor` reading a value defined before it.
            Edit::Insert(a, b) => {
                let pos = a % body.len();
                let x = body[b % pos.max(1)];
                if pos > 0 {
                    rw.insert_before(body[pos], Node::new(Op::new(OpKind::Neg), vec![x], t()))
                        .unwrap();
                }
            }
            // Uses of a later value move to an earlier one: dominance holds.
            Edit::Replace(a, b) => {
                let (x, y) = (pick(a), pick(b));
                let (old, new) = if x.0 > y.0 { (x, y) } else { (y, x) };
                let pos_old = body.iter().position(|v| *v == old);
                let pos_new = body.iter().position(|v| *v == new);
                if pos_new < pos_old {
                    rw.replace_all_uses(old, new);
                }
            }
            Edit::Erase(a) => {
                let v = pick(a);
                let used = !rw.users(v).is_empty();
                assert_eq!(rw.erase(v).is_err(), used);
            }
            Edit::RemoveDead(a) => {
                rw.remove_dead([pick(a)]);
            }
            Edit::RemoveUnused => {
                rw.remove_unused();
            }
            Edit::Compact => {
                rw.compact();
            }
        }
    }

    proptest! {
        #[test]
        fn random_edits_stay_verifier_clean(
            ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>()), 1..12),
            outputs in proptest::collection::vec(any::<usize>(), 1..3),
            edits in proptest::collection::vec(edit(), 1..16),
        ) {
            let mut g = random_graph(&ops, &outputs);
            verify(&g).unwrap();
            let mut rw = Rewriter::new(&mut g);
            for e in &edits {
                apply(&mut rw, e);
                // The maintained lists equal freshly computed ones (up to order).
                prop_assert_eq!(sorted(rw.use_lists()), sorted(&UseLists::new(rw.graph())));
                prop_assert!(verify(rw.graph()).is_ok(), "{:?} broke\n{}", e, print(rw.graph()));
            }
        }
    }
}
