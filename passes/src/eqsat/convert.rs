//! IR to e-graph to IR.
//!
//! Each body (the top level and every region) becomes its own e-graph,
//! innermost first: **regions are optimized region by region**. Inside an
//! e-graph, the body's arguments and captured outer values are leaves
//! ([`NodeOp::Arg`], [`NodeOp::Capture`]), and an op with regions is an
//! opaque e-node ([`NodeOp::Opaque`]) whose children are its operands
//! followed by the outer values its (already optimized) regions capture, so
//! that what a region uses stays alive and is renumbered with the body. No
//! rewrite looks inside an opaque node; common subexpressions are merged
//! within a body, never across region boundaries.
//!
//! Back to IR, extraction picks one node per reachable class (dead code
//! disappears; graph inputs are kept as they are the signature); when the
//! extraction is not strictly cheaper than the input (measured the same
//! way, DAG costs), the input's own nodes are kept, so a body never gets
//! worse by the cost function, and ties keep the input as it was. The
//! nodes are placed in a topological order that follows the original one:
//! a class containing an original node takes that node's position, a new
//! class goes right after its last operand. When no rule fires, the result
//! prints exactly like the input.

use super::analysis::{infer_type, IrEGraph, TypeAnalysis};
use super::extract::{extract, CostFunction, Extraction};
use super::lang::{IrNode, NodeOp};
use super::runner::{run_phases, Phase, SaturationLimits, SaturationReport};
use crate::scoped::{Body, BodyNode, Capture, Program, Ref};
use egg::Id;
use reformc_ir::{OpKind, TensorType};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

/// Settings of one optimization of a program.
pub struct Optimizer<'a> {
    /// Rule phases saturated, in order, on every body's e-graph.
    pub phases: &'a [Phase],
    /// Bounds of the runs; the time limit is one deadline shared by all
    /// bodies and phases of the program.
    pub limits: &'a SaturationLimits,
    /// What extraction minimises; also decides whether a body's extraction
    /// beats the input (it must be strictly cheaper to replace it).
    pub cost: &'a dyn CostFunction,
    /// Work budget of the DAG-aware extraction, per e-graph.
    pub dag_budget: usize,
}

struct Ctx<'a> {
    opt: &'a Optimizer<'a>,
    deadline: Instant,
    report: SaturationReport,
}

impl Optimizer<'_> {
    /// Saturates and extracts every body of `p`.
    pub fn optimize(&self, p: &Program) -> Result<(Program, SaturationReport), String> {
        let start = Instant::now();
        let mut ctx = Ctx {
            opt: self,
            deadline: start + self.limits.time_limit,
            report: SaturationReport::default(),
        };
        let body = optimize_body(&p.body, &mut ctx, "top", true)?;
        ctx.report.total_time = start.elapsed();
        Ok((
            Program {
                body,
                outputs: p.outputs.clone(),
            },
            ctx.report,
        ))
    }
}

/// The e-graph of one body and how it maps back.
pub struct BodyEGraph {
    /// The e-graph: the body's leaves and nodes, rebuilt.
    pub egraph: IrEGraph,
    /// The class of every original node.
    pub node_ids: Vec<Id>,
    /// Classes of the results, then of the kept inputs.
    pub roots: Vec<Id>,
    /// How many leading entries of `roots` are the body's results (the rest
    /// are kept graph inputs).
    pub results: usize,
    /// Regions of opaque nodes, by slot.
    pub slots: Vec<Vec<Body>>,
    /// The e-node of every original node, as added.
    pub nodes: Vec<IrNode>,
    /// The argument and capture leaves: class and e-node.
    pub leaves: Vec<(Id, IrNode)>,
}

/// Builds the e-graph of `body`, whose regions are already in their final
/// form (`regions[i]` replaces the regions of node `i`). At the top level
/// (`keep_inputs`), graph inputs are extra roots.
pub fn body_to_egraph(
    body: &Body,
    regions: Vec<Vec<Body>>,
    keep_inputs: bool,
) -> Result<BodyEGraph, String> {
    let mut eg = IrEGraph::new(TypeAnalysis::default());
    let args: Vec<Id> = body
        .args
        .iter()
        .enumerate()
        .map(|(i, t)| {
            eg.add(IrNode::new(
                NodeOp::Arg {
                    index: i as u32,
                    ty: t.clone(),
                },
                vec![],
            ))
        })
        .collect();
    let caps: Vec<Id> = body
        .captures
        .iter()
        .enumerate()
        .map(|(i, c)| {
            eg.add(IrNode::new(
                NodeOp::Capture {
                    index: i as u32,
                    ty: c.ty.clone(),
                },
                vec![],
            ))
        })
        .collect();
    let leaves: Vec<(Id, IrNode)> = args
        .iter()
        .chain(&caps)
        .map(|id| (*id, eg[*id].nodes[0].clone()))
        .collect();
    let mut node_ids: Vec<Id> = Vec::with_capacity(body.nodes.len());
    let mut slots = Vec::new();
    let mut nodes = Vec::with_capacity(body.nodes.len());
    let resolve = |node_ids: &[Id], r: &Ref| -> Result<Id, String> {
        match r {
            Ref::Arg(i) => args.get(*i as usize).copied(),
            Ref::Capture(i) => caps.get(*i as usize).copied(),
            Ref::Node(i) => node_ids.get(*i as usize).copied(),
        }
        .ok_or_else(|| format!("dangling reference {r:?}"))
    };
    for (n, regions) in body.nodes.iter().zip(regions) {
        let mut children = n
            .inputs
            .iter()
            .map(|r| resolve(&node_ids, r))
            .collect::<Result<Vec<_>, _>>()?;
        let op = if regions.is_empty() {
            let types: Vec<&TensorType> = children.iter().map(|c| &eg[*c].data.ty).collect();
            let derived = matches!(infer_type(&n.op, &types), Ok(Some(ref t)) if *t == n.ty);
            NodeOp::Ir {
                op: n.op.clone(),
                ty: (!derived).then(|| n.ty.clone()),
            }
        } else {
            for r in &regions {
                for c in &r.captures {
                    children.push(resolve(&node_ids, &c.outer)?);
                }
            }
            let slot = slots.len() as u32;
            slots.push(regions);
            NodeOp::Opaque {
                op: n.op.clone(),
                slot,
                operands: n.inputs.len() as u32,
                ty: n.ty.clone(),
            }
        };
        let node = IrNode::new(op, children);
        node_ids.push(eg.add(node.clone()));
        nodes.push(node);
    }
    let mut roots = body
        .results
        .iter()
        .map(|r| resolve(&node_ids, r))
        .collect::<Result<Vec<_>, _>>()?;
    let results = roots.len();
    if keep_inputs {
        for (i, n) in body.nodes.iter().enumerate() {
            if n.op.kind == OpKind::Input {
                roots.push(node_ids[i]);
            }
        }
    }
    if !eg.analysis.errors.is_empty() {
        return Err(eg.analysis.errors.join("; "));
    }
    eg.rebuild();
    Ok(BodyEGraph {
        egraph: eg,
        node_ids,
        roots,
        results,
        slots,
        nodes,
        leaves,
    })
}

/// The extraction that keeps the input: every class reachable from the
/// roots takes its argument or capture leaf if it has one, else its first
/// original node. Choices strictly decrease in original position along
/// every edge (leaves first), so this is acyclic even when rules merged
/// original nodes.
pub fn original_choice(be: &BodyEGraph, cost: &dyn CostFunction) -> Result<Extraction, String> {
    let eg = &be.egraph;
    let mut choice: HashMap<Id, IrNode> = HashMap::new();
    // Leaves first: a class holding an argument or capture takes it.
    for (id, leaf) in &be.leaves {
        choice.entry(eg.find(*id)).or_insert_with(|| leaf.clone());
    }
    for (id, node) in be.node_ids.iter().zip(&be.nodes) {
        let canonical = IrNode {
            op: node.op.clone(),
            children: node.children.iter().map(|c| eg.find(*c)).collect(),
        };
        choice.entry(eg.find(*id)).or_insert(canonical);
    }
    Extraction::from_choice(eg, &be.roots, choice, cost)
}

/// The body an extraction chooses, in an order that follows the original one.
pub fn egraph_to_body(
    be: &BodyEGraph,
    original: &Body,
    choice: &super::extract::Extraction,
) -> Result<Body, String> {
    let eg = &be.egraph;
    let chosen = |id: Id| {
        choice
            .chosen(eg, id)
            .ok_or_else(|| format!("class {id} was not extracted"))
    };
    // Position of each class that holds an original node: the first such node.
    let mut orig_pos: HashMap<Id, usize> = HashMap::new();
    for (i, id) in be.node_ids.iter().enumerate() {
        orig_pos.entry(eg.find(*id)).or_insert(i);
    }
    // Classes to emit as nodes (not args or captures), found from the roots.
    let mut order: Vec<Id> = Vec::new();
    let mut seen: HashMap<Id, ()> = HashMap::new();
    let mut stack: Vec<Id> = be.roots.iter().map(|r| eg.find(*r)).collect();
    while let Some(c) = stack.pop() {
        if seen.insert(c, ()).is_some() {
            continue;
        }
        let n = chosen(c)?;
        if matches!(&*n.op, NodeOp::Ir { .. } | NodeOp::Opaque { .. }) {
            order.push(c);
        }
        stack.extend(n.children.iter().map(|k| eg.find(*k)));
    }
    order.sort_unstable();
    // Keys: original position, or just after the latest operand.
    let mut key: HashMap<Id, (usize, usize, Id)> = HashMap::new();
    fn key_of(
        eg: &IrEGraph,
        c: Id,
        choice: &super::extract::Extraction,
        orig: &HashMap<Id, usize>,
        key: &mut HashMap<Id, (usize, usize, Id)>,
    ) -> (usize, usize, Id) {
        if let Some(k) = key.get(&c) {
            return *k;
        }
        // Iterative post-order to avoid deep recursion on long chains.
        let mut stack = vec![(c, false)];
        while let Some((x, expanded)) = stack.pop() {
            if key.contains_key(&x) {
                continue;
            }
            let kids: Vec<Id> = choice
                .chosen(eg, x)
                .map(|n| n.children.iter().map(|k| eg.find(*k)).collect())
                .unwrap_or_default();
            if !expanded {
                stack.push((x, true));
                for k in kids {
                    if !key.contains_key(&k) {
                        stack.push((k, false));
                    }
                }
                continue;
            }
            let k = match orig.get(&x) {
                Some(p) => (*p, 0, x),
                None => {
                    let after = kids
                        .iter()
                        .filter_map(|k| key.get(k))
                        .map(|k| k.0)
                        .max()
                        .unwrap_or(0);
                    (after, 1, x)
                }
            };
            key.insert(x, k);
        }
        key[&c]
    }
    for c in &order {
        key_of(eg, *c, choice, &orig_pos, &mut key);
    }
    // Kahn's algorithm, smallest key first.
    let emitted: HashMap<Id, ()> = order.iter().map(|c| (*c, ())).collect();
    let mut pending: HashMap<Id, usize> = HashMap::new();
    let mut users: HashMap<Id, Vec<Id>> = HashMap::new();
    for c in &order {
        let mut kids: Vec<Id> = chosen(*c)?
            .children
            .iter()
            .map(|k| eg.find(*k))
            .filter(|k| emitted.contains_key(k))
            .collect();
        kids.sort_unstable();
        kids.dedup();
        pending.insert(*c, kids.len());
        for k in kids {
            users.entry(k).or_default().push(*c);
        }
    }
    let mut heap: BinaryHeap<Reverse<(usize, usize, Id)>> = order
        .iter()
        .filter(|c| pending[*c] == 0)
        .map(|c| Reverse(key[c]))
        .collect();
    let mut new_index: HashMap<Id, u32> = HashMap::new();
    let mut sequence: Vec<Id> = Vec::with_capacity(order.len());
    while let Some(Reverse((_, _, c))) = heap.pop() {
        new_index.insert(c, sequence.len() as u32);
        sequence.push(c);
        for u in users.get(&c).map(Vec::as_slice).unwrap_or(&[]) {
            let p = pending.get_mut(u).expect("user is emitted");
            *p -= 1;
            if *p == 0 {
                heap.push(Reverse(key[u]));
            }
        }
    }
    if sequence.len() != order.len() {
        return Err("the extracted graph has a cycle".into());
    }
    // Captures keep their original order; unused ones are dropped.
    let mut used_caps: Vec<u32> = Vec::new();
    let mut leaf = |n: &IrNode| -> Option<Ref> {
        match &*n.op {
            NodeOp::Arg { index, .. } => Some(Ref::Arg(*index)),
            NodeOp::Capture { index, .. } => {
                if !used_caps.contains(index) {
                    used_caps.push(*index);
                }
                Some(Ref::Capture(*index))
            }
            _ => None,
        }
    };
    let mut refs: HashMap<Id, Ref> = HashMap::new();
    for c in seen.keys() {
        if let Some(r) = leaf(chosen(*c)?) {
            refs.insert(*c, r);
        }
    }
    used_caps.sort_unstable();
    let cap_map: HashMap<u32, u32> = used_caps
        .iter()
        .enumerate()
        .map(|(new, old)| (*old, new as u32))
        .collect();
    let to_ref = |c: Id| -> Result<Ref, String> {
        let c = eg.find(c);
        match refs.get(&c) {
            Some(Ref::Capture(i)) => Ok(Ref::Capture(cap_map[i])),
            Some(r) => Ok(*r),
            None => new_index
                .get(&c)
                .map(|i| Ref::Node(*i))
                .ok_or_else(|| format!("class {c} has no value")),
        }
    };
    let mut nodes = Vec::with_capacity(sequence.len());
    for c in &sequence {
        let n = chosen(*c)?;
        let ty = eg[*c].data.ty.clone();
        let node = match &*n.op {
            NodeOp::Ir { op, .. } => BodyNode {
                op: op.clone(),
                ty,
                inputs: n
                    .children
                    .iter()
                    .map(|k| to_ref(*k))
                    .collect::<Result<_, _>>()?,
                regions: vec![],
            },
            NodeOp::Opaque {
                op, slot, operands, ..
            } => {
                let operands = *operands as usize;
                let inputs = n.children[..operands]
                    .iter()
                    .map(|k| to_ref(*k))
                    .collect::<Result<_, _>>()?;
                let mut regions = be
                    .slots
                    .get(*slot as usize)
                    .cloned()
                    .ok_or("missing region slot")?;
                let mut outer = n.children[operands..].iter();
                for r in &mut regions {
                    for cap in &mut r.captures {
                        cap.outer = to_ref(*outer.next().ok_or("missing capture operand")?)?;
                    }
                }
                BodyNode {
                    op: op.clone(),
                    ty,
                    inputs,
                    regions,
                }
            }
            _ => unreachable!("leaves are not emitted"),
        };
        nodes.push(node);
    }
    let results = be.roots[..be.results]
        .iter()
        .map(|r| to_ref(*r))
        .collect::<Result<_, _>>()?;
    let captures: Vec<Capture> = used_caps
        .iter()
        .map(|i| original.captures[*i as usize].clone())
        .collect();
    Ok(Body {
        args: original.args.clone(),
        captures,
        nodes,
        results,
    })
}

fn optimize_body(body: &Body, ctx: &mut Ctx<'_>, path: &str, top: bool) -> Result<Body, String> {
    let names = |n: &BodyNode, i: usize| {
        n.op.kind
            .schema()
            .regions
            .get(i)
            .copied()
            .unwrap_or("region")
    };
    let mut regions = Vec::with_capacity(body.nodes.len());
    for (i, n) in body.nodes.iter().enumerate() {
        let mut rs = Vec::with_capacity(n.regions.len());
        for (ri, r) in n.regions.iter().enumerate() {
            rs.push(optimize_body(
                r,
                ctx,
                &format!("{path}/{i}.{}", names(n, ri)),
                false,
            )?);
        }
        regions.push(rs);
    }
    let be = body_to_egraph(body, regions, top)?;
    let BodyEGraph {
        egraph,
        node_ids,
        roots,
        results,
        slots,
        nodes,
        leaves,
    } = be;
    let (mut egraph, runs) =
        run_phases(egraph, ctx.opt.phases, ctx.opt.limits, ctx.deadline, path)?;
    egraph.rebuild();
    ctx.report.runs.extend(runs);
    ctx.report.egraphs += 1;
    ctx.report.enodes += egraph.total_size();
    ctx.report.eclasses += egraph.number_of_classes();
    ctx.report.max_enodes = ctx.report.max_enodes.max(egraph.total_size());
    let t = Instant::now();
    let extracted = extract(&egraph, &roots, ctx.opt.cost, ctx.opt.dag_budget)?;
    let be = BodyEGraph {
        egraph,
        node_ids,
        roots,
        results,
        slots,
        nodes,
        leaves,
    };
    // Never worse than the input: keep it unless the extraction is strictly cheaper.
    let original = original_choice(&be, ctx.opt.cost)?;
    ctx.report.tree_fallbacks += usize::from(extracted.tree_fallback);
    let choice = if extracted.cost < original.cost {
        extracted
    } else {
        ctx.report.kept_inputs += usize::from(extracted.cost > original.cost);
        original
    };
    ctx.report.extract_time += t.elapsed();
    ctx.report.cost += choice.cost;
    egraph_to_body(&be, body, &choice)
}
