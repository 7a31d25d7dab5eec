//! Flattening `reversible_block`s into the top-level body, remembering each
//! block's structure so that the backward pass can invert it.
//!
//! Values a block computes inside its regions become top-level values, so
//! the backward graph may keep the ones it must not recompute (LSH buckets,
//! random draws) without recomputing them from inexact inverses.

use super::builder::Builder;
use reformc_ir::{Graph, Node, Region, ValueId};
use std::collections::{HashMap, HashSet};

/// One flattened reversible block: `y = concat(x1 + f(x2), x2 + g(y1))`.
#[derive(Clone, Debug)]
pub struct Coupling {
    /// The block's input `x` (both halves).
    pub x: ValueId,
    /// The block's output `y`, a `concat` of `y1` and `y2`.
    pub y: ValueId,
    /// The width of one half (the last axis of `x` is twice this).
    pub half: u64,
    /// `f`'s body as flattened, its argument (`x2`) and its result.
    pub f: Branch,
    /// `g`'s body as flattened, its argument (`y1`) and its result.
    pub g: Branch,
    /// Every value the flattened block defines (slices, branches, adds, concat).
    pub values: Vec<ValueId>,
}

/// Every value the flattened `couplings` define (which only their reversible
/// rule visits).
pub fn coupled_values(couplings: &[Coupling]) -> HashSet<ValueId> {
    couplings
        .iter()
        .flat_map(|c| c.values.iter().copied())
        .collect()
}

/// A flattened region: the value that stood for its argument, its ops, its result.
#[derive(Clone, Debug)]
pub struct Branch {
    /// The value bound to the region's argument.
    pub arg: ValueId,
    /// The region's ops, flattened, in order.
    pub body: Vec<ValueId>,
    /// The value the region yields.
    pub result: ValueId,
}

/// `g` with every top-level `reversible_block` flattened, and the couplings.
pub fn unfold(g: &Graph) -> Result<(Graph, Vec<Coupling>), String> {
    let mut out = Graph::new();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut couplings = Vec::new();
    for &v in &g.body {
        let node = g.node(v);
        if node.op.kind == reformc_ir::OpKind::ReversibleBlock {
            let c = unfold_block(g, node, &mut out, &mut map)?;
            map.insert(v, c.y);
            couplings.push(c);
        } else {
            let nv = copy_node(g, v, &mut out, &mut map)?;
            map.insert(v, nv);
        }
    }
    for (name, v) in &g.outputs {
        out.set_output(name, map[v]);
    }
    Ok((out, couplings))
}

/// Copies `v`'s node into `out` with mapped inputs (regions must be absent).
fn copy_node(
    g: &Graph,
    v: ValueId,
    out: &mut Graph,
    map: &mut HashMap<ValueId, ValueId>,
) -> Result<ValueId, String> {
    let node = g.node(v);
    if !node.regions.is_empty() {
        return Err(format!(
            "%{} = {} has regions; run lower-model first (only reversible_block may keep regions)",
            v.0, node.op.kind
        ));
    }
    let inputs = node
        .inputs
        .iter()
        .map(|i| {
            map.get(i)
                .copied()
                .ok_or_else(|| format!("%{} uses %{} before it is defined", v.0, i.0))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(out.add(node.op.clone(), inputs, node.ty.clone()))
}

/// Flattens one block.
fn unfold_block(
    g: &Graph,
    node: &Node,
    out: &mut Graph,
    map: &mut HashMap<ValueId, ValueId>,
) -> Result<Coupling, String> {
    let x = *map
        .get(&node.inputs[0])
        .ok_or("a reversible block's input is undefined")?;
    let last = node
        .ty
        .rank()
        .checked_sub(1)
        .ok_or("a reversible block needs rank >= 1")?;
    let width = node.ty.shape[last]
        .as_const()
        .filter(|w| w % 2 == 0)
        .ok_or_else(|| {
            format!(
                "a reversible block's last axis must be an even constant, found {}",
                node.ty
            )
        })?;
    let half = width / 2;
    let first = out.len();
    let mut b = Builder::new(out);
    let x1 = b.slice(x, last, 0, half)?;
    let x2 = b.slice(x, last, half, width)?;
    let f = flatten_region(g, &node.regions[0], x2, out, map)?;
    let mut b = Builder::new(out);
    let y1 = b.add(x1, f.result)?;
    let gb = flatten_region(g, &node.regions[1], y1, out, map)?;
    let mut b = Builder::new(out);
    let y2 = b.add(x2, gb.result)?;
    let y = b.concat(&[y1, y2], last)?;
    let values = (first..out.len()).map(|i| ValueId(i as u32)).collect();
    Ok(Coupling {
        x,
        y,
        half,
        f,
        g: gb,
        values,
    })
}

/// Flattens a one-argument, one-result region with its argument bound to `arg`.
fn flatten_region(
    g: &Graph,
    r: &Region,
    arg: ValueId,
    out: &mut Graph,
    map: &mut HashMap<ValueId, ValueId>,
) -> Result<Branch, String> {
    let (&a, &res) = r
        .args
        .first()
        .zip(r.results.first())
        .ok_or("a reversible block's region needs one argument and one result")?;
    map.insert(a, arg);
    let mut body = Vec::with_capacity(r.body.len());
    for &v in &r.body {
        let nv = copy_node(g, v, out, map)?;
        map.insert(v, nv);
        body.push(nv);
    }
    let result = *map.get(&res).ok_or("a region's result is undefined")?;
    Ok(Branch { arg, body, result })
}
