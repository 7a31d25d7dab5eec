//! DAG-aware extraction with a caller-supplied cost function.
//!
//! The cost of a choice is the sum of the own costs of the distinct e-nodes
//! it selects: a subgraph used twice is paid once. The algorithm is the
//! DAG-aware greedy of the extraction literature: every e-class keeps the
//! set of classes its best choice reaches (with their own costs); a node's
//! cost is its own cost plus the cost of the union of its children's sets; a
//! class whose best choice improves wakes its parents, until nothing
//! improves. Classes, nodes and the work queue are visited in a stable order
//! (class ids, then egg's node order) and ties keep the earlier choice, so
//! the same e-graph always gives the same extraction.
//!
//! The sets make this quadratic in the worst case; past a work budget
//! (default 20 million set entries touched) extraction falls back to tree
//! costs (own cost plus the children's costs, shared subgraphs counted once
//! per use), which is linear per round, and says so.
//!
//! `egg`'s `LpExtractor` needs the CBC solver (a system library), so reformc
//! uses this greedy one.

use super::analysis::IrEGraph;
use super::lang::{IrNode, NodeOp};
use egg::Id;
use reformc_ir::{OpKind, TensorType};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// The own cost of one e-node (not counting its operands).
///
/// Any `Fn(&IrNode, &TensorType, &[&TensorType]) -> f64` is a cost function:
///
/// ```
/// use reformc_passes::eqsat::extract::CostFunction;
/// use reformc_passes::eqsat::lang::IrNode;
/// use reformc_ir::TensorType;
/// let count_everything = |_: &IrNode, _: &TensorType, _: &[&TensorType]| 1.0;
/// let _: &dyn CostFunction = &count_everything;
/// ```
pub trait CostFunction {
    /// Cost of `node`, whose result type is `ty` and operand types `operands`.
    /// Must be finite and non-negative.
    fn node_cost(&self, node: &IrNode, ty: &TensorType, operands: &[&TensorType]) -> f64;
}

impl<F: Fn(&IrNode, &TensorType, &[&TensorType]) -> f64> CostFunction for F {
    fn node_cost(&self, node: &IrNode, ty: &TensorType, operands: &[&TensorType]) -> f64 {
        self(node, ty, operands)
    }
}

/// The default cost: a weight per op kind (see [`op_weight`]), ignoring sizes.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpCountCost;

/// Weight of one op of `kind` in [`OpCountCost`]: the kind's
/// [`reformc_ir::OpFacts::extract_weight`] (sources and region arguments 0;
/// views, data movement and elementwise ops 1; reductions and softmax 2;
/// `linear` and `matmul` 10, so that an epilogue fused into `linear` always
/// pays; attention 20; other model ops 5).
///
/// ```
/// use reformc_passes::eqsat::extract::op_weight;
/// use reformc_ir::OpKind;
/// assert!(op_weight(OpKind::Linear) < op_weight(OpKind::Linear) + op_weight(OpKind::Act));
/// assert_eq!(op_weight(OpKind::Weight), 0.0);
/// ```
pub fn op_weight(kind: OpKind) -> f64 {
    kind.facts().extract_weight
}

impl CostFunction for OpCountCost {
    fn node_cost(&self, node: &IrNode, _ty: &TensorType, _operands: &[&TensorType]) -> f64 {
        match &*node.op {
            NodeOp::Arg { .. } | NodeOp::Capture { .. } => 0.0,
            op => op_weight(op.kind()),
        }
    }
}

/// The chosen e-node of every class reachable from the roots.
#[derive(Clone, Debug)]
pub struct Extraction {
    choice: HashMap<Id, IrNode>,
    /// Sum of the own costs of the distinct chosen nodes.
    pub cost: f64,
    /// True when the DAG-aware search exceeded its budget and tree costs were used.
    pub tree_fallback: bool,
}

impl Extraction {
    /// An extraction from an explicit choice (class to node, children
    /// canonical), with its DAG cost under `cost`. Fails when a root or a
    /// chosen child has no choice, or the choice has a cycle.
    pub fn from_choice(
        eg: &IrEGraph,
        roots: &[Id],
        choice: HashMap<Id, IrNode>,
        cost: &dyn CostFunction,
    ) -> Result<Extraction, String> {
        let mut state: HashMap<Id, bool> = HashMap::new(); // false: on the stack, true: done
        let mut total = 0.0;
        for r in roots {
            let mut stack = vec![(eg.find(*r), 0usize)];
            while let Some((c, next)) = stack.pop() {
                if next == 0 {
                    match state.get(&c) {
                        Some(true) => continue,
                        Some(false) => return Err("the choice has a cycle".into()),
                        None => {
                            state.insert(c, false);
                        }
                    }
                }
                let node = choice
                    .get(&c)
                    .ok_or_else(|| format!("class {c} has no choice"))?;
                if next < node.children.len() {
                    stack.push((c, next + 1));
                    let k = eg.find(node.children[next]);
                    match state.get(&k) {
                        Some(true) => {}
                        Some(false) => return Err("the choice has a cycle".into()),
                        None => stack.push((k, 0)),
                    }
                } else {
                    state.insert(c, true);
                    total += own_cost(eg, c, node, cost);
                }
            }
        }
        let choice = choice
            .into_iter()
            .filter(|(c, _)| state.get(c) == Some(&true))
            .collect();
        Ok(Extraction {
            choice,
            cost: total,
            tree_fallback: false,
        })
    }

    /// The chosen node of the class `id` (children canonical), if reachable from the roots.
    pub fn chosen(&self, eg: &IrEGraph, id: Id) -> Option<&IrNode> {
        self.choice.get(&eg.find(id))
    }
}

/// Default work budget of the DAG-aware search (set entries touched).
pub const DEFAULT_DAG_BUDGET: usize = 20_000_000;

/// A node's own cost as extraction counts it (finite, non-negative, and
/// positive for nodes with operands, so that tree costs grow along edges).
fn own_cost(eg: &IrEGraph, class: Id, n: &IrNode, cost: &dyn CostFunction) -> f64 {
    let operand_types: Vec<&TensorType> = n.children.iter().map(|c| &eg[*c].data.ty).collect();
    let mut own = cost.node_cost(n, &eg[class].data.ty, &operand_types);
    if !own.is_finite() || own < 0.0 {
        own = 0.0;
    }
    if !n.children.is_empty() {
        own = own.max(1e-6);
    }
    own
}

struct Classes {
    ids: Vec<Id>,
    index: HashMap<Id, usize>,
    /// Per class: (node, own cost, child class indices).
    nodes: Vec<Vec<(IrNode, f64, Vec<usize>)>>,
    parents: Vec<Vec<usize>>,
}

fn classes(eg: &IrEGraph, cost: &dyn CostFunction) -> Classes {
    let mut ids: Vec<Id> = eg.classes().map(|c| c.id).collect();
    ids.sort_unstable();
    let index: HashMap<Id, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut nodes = Vec::with_capacity(ids.len());
    let mut parents = vec![Vec::new(); ids.len()];
    for (ci, id) in ids.iter().enumerate() {
        let class = &eg[*id];
        let mut ns: Vec<IrNode> = class
            .nodes
            .iter()
            .map(|n| IrNode {
                op: n.op.clone(),
                children: n.children.iter().map(|c| eg.find(*c)).collect(),
            })
            .collect();
        ns.sort();
        ns.dedup();
        let mut list = Vec::with_capacity(ns.len());
        for n in ns {
            let kids: Vec<usize> = n.children.iter().map(|c| index[c]).collect();
            let own = own_cost(eg, *id, &n, cost);
            for &k in &kids {
                if parents[k].last() != Some(&ci) {
                    parents[k].push(ci);
                }
            }
            list.push((n, own, kids));
        }
        nodes.push(list);
    }
    for p in &mut parents {
        p.sort_unstable();
        p.dedup();
    }
    Classes {
        ids,
        index,
        nodes,
        parents,
    }
}

/// A class's best choice: node index, total cost, and the classes it reaches with their own costs.
#[derive(Clone)]
struct Best {
    node: usize,
    total: f64,
    set: Rc<Vec<(u32, f64)>>,
}

fn merge(a: &[(u32, f64)], b: &[(u32, f64)]) -> Vec<(u32, f64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

fn dag_greedy(cl: &Classes, budget: usize) -> Option<Vec<Option<Best>>> {
    let n = cl.ids.len();
    let mut best: Vec<Option<Best>> = vec![None; n];
    let mut queue: VecDeque<usize> = (0..n).collect();
    let mut queued = vec![true; n];
    let mut work = 0usize;
    while let Some(c) = queue.pop_front() {
        queued[c] = false;
        let mut cand: Option<Best> = None;
        'nodes: for (ni, (_, own, kids)) in cl.nodes[c].iter().enumerate() {
            let mut set: Rc<Vec<(u32, f64)>> = Rc::new(Vec::new());
            for &k in kids {
                let Some(b) = &best[k] else { continue 'nodes };
                if set.is_empty() {
                    set = b.set.clone();
                } else if !Rc::ptr_eq(&set, &b.set) {
                    work += set.len() + b.set.len();
                    set = Rc::new(merge(&set, &b.set));
                }
            }
            if set.binary_search_by_key(&(c as u32), |e| e.0).is_ok() {
                continue; // the node would reach its own class
            }
            let total = own + set.iter().map(|e| e.1).sum::<f64>();
            work += set.len();
            if cand.as_ref().is_none_or(|b| total < b.total) {
                let mut s = (*set).clone();
                let pos = s.partition_point(|e| e.0 < c as u32);
                s.insert(pos, (c as u32, *own));
                cand = Some(Best {
                    node: ni,
                    total,
                    set: Rc::new(s),
                });
            }
        }
        if work > budget {
            return None;
        }
        if let Some(cand) = cand {
            if best[c].as_ref().is_none_or(|b| cand.total < b.total) {
                best[c] = Some(cand);
                for &p in &cl.parents[c] {
                    if !queued[p] {
                        queued[p] = true;
                        queue.push_back(p);
                    }
                }
            }
        }
    }
    Some(best)
}

fn tree_greedy(cl: &Classes) -> Vec<Option<(usize, f64)>> {
    let n = cl.ids.len();
    let mut best: Vec<Option<(usize, f64)>> = vec![None; n];
    let mut queue: VecDeque<usize> = (0..n).collect();
    let mut queued = vec![true; n];
    while let Some(c) = queue.pop_front() {
        queued[c] = false;
        let mut cand: Option<(usize, f64)> = None;
        'nodes: for (ni, (_, own, kids)) in cl.nodes[c].iter().enumerate() {
            let mut total = *own;
            for &k in kids {
                let Some((_, t)) = best[k] else {
                    continue 'nodes;
                };
                total += t;
            }
            if cand.is_none_or(|(_, t)| total < t) {
                cand = Some((ni, total));
            }
        }
        if let Some(cand) = cand {
            if best[c].is_none_or(|(_, t)| cand.1 < t) {
                best[c] = Some(cand);
                for &p in &cl.parents[c] {
                    if !queued[p] {
                        queued[p] = true;
                        queue.push_back(p);
                    }
                }
            }
        }
    }
    best
}

/// Follows the choices from the roots; `None` on a cycle or an unreachable class.
fn collect(
    eg: &IrEGraph,
    cl: &Classes,
    choice: &[Option<usize>],
    roots: &[Id],
) -> Option<(HashMap<Id, IrNode>, f64)> {
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut state = vec![0u8; cl.ids.len()];
    let mut out = HashMap::new();
    let mut cost = 0.0;
    for r in roots {
        let start = *cl.index.get(&eg.find(*r))?;
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        if state[start] == 2 {
            continue;
        }
        state[start] = 1;
        while let Some((c, next)) = stack.pop() {
            let ni = choice[c]?;
            let (node, own, kids) = &cl.nodes[c][ni];
            if next < kids.len() {
                stack.push((c, next + 1));
                let k = kids[next];
                match state[k] {
                    0 => {
                        state[k] = 1;
                        stack.push((k, 0));
                    }
                    1 => return None,
                    _ => {}
                }
            } else {
                state[c] = 2;
                cost += own;
                out.insert(cl.ids[c], node.clone());
            }
        }
    }
    Some((out, cost))
}

/// Extracts the cheapest DAG (by `cost`) for `roots`; `budget` bounds the
/// DAG-aware search (see the module docs). Fails only when a root has no
/// finite-cost choice, which a well-formed e-graph never has.
pub fn extract(
    eg: &IrEGraph,
    roots: &[Id],
    cost: &dyn CostFunction,
    budget: usize,
) -> Result<Extraction, String> {
    let cl = classes(eg, cost);
    if let Some(best) = dag_greedy(&cl, budget) {
        let choice: Vec<Option<usize>> = best.iter().map(|b| b.as_ref().map(|b| b.node)).collect();
        if let Some((choice, cost)) = collect(eg, &cl, &choice, roots) {
            return Ok(Extraction {
                choice,
                cost,
                tree_fallback: false,
            });
        }
    }
    let best = tree_greedy(&cl);
    let choice: Vec<Option<usize>> = best.iter().map(|b| b.map(|b| b.0)).collect();
    let (choice, cost) =
        collect(eg, &cl, &choice, roots).ok_or("extraction found no acyclic choice for a root")?;
    Ok(Extraction {
        choice,
        cost,
        tree_fallback: true,
    })
}

#[cfg(test)]
mod tests {
    use super::super::analysis::TypeAnalysis;
    use super::super::lang::NodeOp;
    use super::*;
    use reformc_ir::{Attr, DType, Dim, Op};

    fn leaf(eg: &mut IrEGraph, name: &str) -> Id {
        let t = TensorType::new(DType::F32, vec![Dim::sym("N")]);
        eg.add(IrNode::new(
            NodeOp::ir(
                Op::new(OpKind::Input).with("name", Attr::Str(name.into())),
                Some(t),
            ),
            vec![],
        ))
    }

    fn op(eg: &mut IrEGraph, kind: OpKind, kids: Vec<Id>) -> Id {
        eg.add(IrNode::new(NodeOp::ir(Op::new(kind), None), kids))
    }

    /// Tree costs pay for a shared subgraph twice; the DAG-aware search does not.
    #[test]
    fn shared_subgraphs_are_counted_once() {
        let mut eg = IrEGraph::new(TypeAnalysis::default());
        let x = leaf(&mut eg, "x");
        let y = leaf(&mut eg, "y");
        // s = exp(exp(exp(x))) is shared; the root class holds add(s, s) and the
        // alternative add(x, y) costing 3 as a tree but... pick costs to make them differ.
        let e1 = op(&mut eg, OpKind::Exp, vec![x]);
        let e2 = op(&mut eg, OpKind::Exp, vec![e1]);
        let s = op(&mut eg, OpKind::Exp, vec![e2]);
        let a = op(&mut eg, OpKind::Mul, vec![s, s]);
        let l1 = op(&mut eg, OpKind::Log, vec![y]);
        let l2 = op(&mut eg, OpKind::Log, vec![l1]);
        let l3 = op(&mut eg, OpKind::Log, vec![l2]);
        let l4 = op(&mut eg, OpKind::Log, vec![l3]);
        let b = op(&mut eg, OpKind::Tanh, vec![l4]);
        eg.union(a, b);
        eg.rebuild();
        // DAG costs: mul branch 1 + 3 = 4, tanh branch 5. Tree costs: mul 1 + 3 + 3 = 7.
        let dag = extract(&eg, &[a], &OpCountCost, DEFAULT_DAG_BUDGET).unwrap();
        assert!(!dag.tree_fallback);
        assert_eq!(dag.cost, 4.0);
        assert_eq!(dag.chosen(&eg, a).unwrap().op.kind(), OpKind::Mul);
        let tree = extract(&eg, &[a], &OpCountCost, 0).unwrap();
        assert!(tree.tree_fallback);
        assert_eq!(tree.chosen(&eg, a).unwrap().op.kind(), OpKind::Tanh);
    }

    #[test]
    fn cycles_are_never_chosen() {
        let mut eg = IrEGraph::new(TypeAnalysis::default());
        let x = leaf(&mut eg, "x");
        let n = op(&mut eg, OpKind::Neg, vec![x]);
        let nn = op(&mut eg, OpKind::Neg, vec![n]);
        eg.union(nn, x);
        eg.rebuild();
        for budget in [0, DEFAULT_DAG_BUDGET] {
            let e = extract(&eg, &[n], &OpCountCost, budget).unwrap();
            assert_eq!(e.chosen(&eg, x).unwrap().op.kind(), OpKind::Input);
            assert_eq!(e.cost, 1.0);
        }
    }
}
