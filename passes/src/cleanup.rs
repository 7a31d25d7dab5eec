//! Plain common-subexpression and dead-code elimination (`cse`, `dce`).
//!
//! `simplify` gets both from the e-graph; these are the cheap, saturation-free
//! versions for pipelines that want them alone. Both work body by body: CSE
//! merges identical ops (same kind, attributes, type and operands; ops with
//! regions are never merged) within one body; DCE removes ops no result
//! depends on, and captures a region no longer uses. Graph inputs are kept:
//! they are the signature.
//!
//! ```
//! use reformc_passes::cleanup::{cse, dce};
//! let mut g = reformc_ir::parse("graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = exp %0 : f32[N]\n  %2 = exp %0 : f32[N]\n  %3 = tanh %0 : f32[N]\n  %4 = add %1, %2 : f32[N]\n  output \"y\" = %4\n}\n").unwrap();
//! assert_eq!(cse(&mut g).unwrap(), 1);
//! assert_eq!(dce(&mut g).unwrap(), 1);
//! assert_eq!(reformc_ir::print(&g), "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = exp %0 : f32[N]\n  %2 = add %1, %1 : f32[N]\n  output \"y\" = %2\n}\n");
//! ```

use crate::pass::{Pass, PassError, PassOptions};
use crate::scoped::{map_node_refs, Body, Program, Ref};
use reformc_ir::{Graph, Op, OpKind, TensorType, ValueId};
use std::collections::HashMap;

fn renumber(r: Ref, map: &[Option<u32>]) -> Ref {
    match r {
        Ref::Node(j) => Ref::Node(map[j as usize].expect("live nodes only use live nodes")),
        r => r,
    }
}

/// Drops the captures `body` no longer uses; renumbers the rest.
fn prune_captures(body: &mut Body) {
    let mut used = vec![false; body.captures.len()];
    for i in 0..body.nodes.len() {
        for r in body.node_uses(i) {
            if let Ref::Capture(k) = r {
                used[k as usize] = true;
            }
        }
    }
    for r in &body.results {
        if let Ref::Capture(k) = r {
            used[*k as usize] = true;
        }
    }
    if used.iter().all(|u| *u) {
        return;
    }
    let mut map = vec![0u32; used.len()];
    let mut next = 0;
    for (k, u) in used.iter().enumerate() {
        map[k] = next;
        next += u32::from(*u);
    }
    let old = std::mem::take(&mut body.captures);
    body.captures = old
        .into_iter()
        .zip(&used)
        .filter(|(_, u)| **u)
        .map(|(c, _)| c)
        .collect();
    let fix = |r: Ref| match r {
        Ref::Capture(k) => Ref::Capture(map[k as usize]),
        r => r,
    };
    for n in &mut body.nodes {
        map_node_refs(n, &mut |r| fix(r));
    }
    for r in &mut body.results {
        *r = fix(*r);
    }
}

fn dce_body(body: &mut Body, top: bool) -> usize {
    let mut removed = 0;
    for n in &mut body.nodes {
        for r in &mut n.regions {
            removed += dce_body(r, false);
            prune_captures(r);
        }
    }
    let n = body.nodes.len();
    let mut live = vec![false; n];
    let mut stack: Vec<usize> = body
        .results
        .iter()
        .filter_map(|r| {
            if let Ref::Node(i) = r {
                Some(*i as usize)
            } else {
                None
            }
        })
        .collect();
    if top {
        stack.extend((0..n).filter(|&i| body.nodes[i].op.kind == OpKind::Input));
    }
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut live[i], true) {
            continue;
        }
        stack.extend(body.node_uses(i).filter_map(|r| {
            if let Ref::Node(j) = r {
                Some(j as usize)
            } else {
                None
            }
        }));
    }
    let mut map = vec![None; n];
    let old = std::mem::take(&mut body.nodes);
    for (i, mut node) in old.into_iter().enumerate() {
        if !live[i] {
            removed += 1;
            continue;
        }
        map_node_refs(&mut node, &mut |r| renumber(r, &map));
        map[i] = Some(body.nodes.len() as u32);
        body.nodes.push(node);
    }
    for r in &mut body.results {
        *r = renumber(*r, &map);
    }
    removed
}

fn cse_body(body: &mut Body) -> usize {
    let mut merged = 0;
    for n in &mut body.nodes {
        for r in &mut n.regions {
            merged += cse_body(r);
        }
    }
    let mut seen: HashMap<(Op, TensorType, Vec<Ref>), u32> = HashMap::new();
    let mut map: Vec<Option<u32>> = Vec::with_capacity(body.nodes.len());
    let old = std::mem::take(&mut body.nodes);
    for mut node in old {
        map_node_refs(&mut node, &mut |r| renumber(r, &map));
        if node.regions.is_empty() {
            let key = (node.op.clone(), node.ty.clone(), node.inputs.clone());
            if let Some(&j) = seen.get(&key) {
                map.push(Some(j));
                merged += 1;
                continue;
            }
            seen.insert(key, body.nodes.len() as u32);
        }
        map.push(Some(body.nodes.len() as u32));
        body.nodes.push(node);
    }
    for r in &mut body.results {
        *r = renumber(*r, &map);
    }
    merged
}

/// Merges identical ops within each body; returns how many were merged away.
pub fn cse(g: &mut Graph) -> Result<usize, String> {
    let mut p = Program::from_graph(g)?;
    let n = cse_body(&mut p.body);
    if n > 0 {
        *g = p.to_graph();
    }
    Ok(n)
}

/// Removes ops no result depends on (graph inputs stay); returns how many.
pub fn dce(g: &mut Graph) -> Result<usize, String> {
    let mut p = Program::from_graph(g)?;
    let n = dce_body(&mut p.body, true);
    if n > 0 {
        *g = p.to_graph();
    }
    Ok(n)
}

/// Replaces every top-level `slice` of a top-level `concat` (other than the
/// concats in `keep`) along the same axis that takes exactly one operand's
/// range by that operand; returns how many. The backward pass of reversible
/// blocks concatenates halves only to slice them again one block further;
/// after this, [`dce`] removes such concats and the copies go. (Autodiff
/// keeps the forward pass's concats: a block's output is what the backward
/// may read, its halves are activations inside the block.)
///
/// ```
/// use reformc_passes::cleanup::{dce, fold_slices_of_concats};
/// let mut g = reformc_ir::parse("graph {\n  %0 = input {name=\"a\"} : f32[N,2]\n  %1 = input {name=\"b\"} : f32[N,3]\n  %2 = concat %0, %1 {axis=1} : f32[N,5]\n  %3 = slice %2 {axis=1, end=5, start=2} : f32[N,3]\n  output \"y\" = %3\n}\n").unwrap();
/// assert_eq!(fold_slices_of_concats(&mut g, &Default::default()), 1);
/// dce(&mut g).unwrap();
/// assert_eq!(reformc_ir::print(&g), "graph {\n  %0 = input {name=\"a\"} : f32[N,2]\n  %1 = input {name=\"b\"} : f32[N,3]\n  output \"y\" = %1\n}\n");
/// ```
pub fn fold_slices_of_concats(g: &mut Graph, keep: &std::collections::HashSet<ValueId>) -> usize {
    let top: std::collections::HashSet<ValueId> = g.body.iter().copied().collect();
    let mut replace: HashMap<ValueId, ValueId> = HashMap::new();
    for &v in &g.body {
        let node = g.node(v);
        if node.op.kind != OpKind::Slice {
            continue;
        }
        let src = node.inputs[0];
        let cat = g.node(src);
        let axis = node.op.int("axis");
        if cat.op.kind != OpKind::Concat
            || !top.contains(&src)
            || keep.contains(&src)
            || cat.op.int("axis") != axis
        {
            continue;
        }
        let (Some(axis), Some(start), Some(end)) = (axis, node.op.int("start"), node.op.int("end"))
        else {
            continue;
        };
        let mut at = 0i64;
        for &x in &cat.inputs {
            let Some(len) = g.ty(x).shape.get(axis as usize).and_then(|d| d.as_const()) else {
                break;
            };
            if (at, at + len as i64) == (start, end) && g.ty(x) == g.ty(v) {
                replace.insert(v, x);
                break;
            }
            at += len as i64;
        }
    }
    if replace.is_empty() {
        return 0;
    }
    for v in g.walk() {
        for input in g.node_mut(v).inputs.iter_mut() {
            if let Some(&x) = replace.get(input) {
                *input = x;
            }
        }
    }
    for (_, out) in g.outputs.iter_mut() {
        if let Some(&x) = replace.get(out) {
            *out = x;
        }
    }
    replace.len()
}

/// The `cse` pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct CsePass;

/// The `dce` pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct DcePass;

fn run(
    name: &str,
    g: &mut Graph,
    f: fn(&mut Graph) -> Result<usize, String>,
    what: &str,
) -> Result<Vec<String>, PassError> {
    let err = |message: String| PassError {
        pass: name.into(),
        message,
    };
    reformc_ir::verify(g).map_err(|e| err(format!("the input graph does not verify: {e}")))?;
    let n = f(g).map_err(err)?;
    reformc_ir::verify(g)
        .map_err(|e| err(format!("internal error: the result does not verify: {e}")))?;
    Ok(vec![format!("{what} {n} ops")])
}

impl Pass for CsePass {
    fn name(&self) -> &'static str {
        "cse"
    }

    fn summary(&self) -> &'static str {
        "merge identical ops within each body (no saturation)"
    }

    fn run(&self, g: &mut Graph, _opts: &PassOptions) -> Result<Vec<String>, PassError> {
        run("cse", g, cse, "merged")
    }
}

impl Pass for DcePass {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn summary(&self) -> &'static str {
        "remove ops that no output depends on (graph inputs stay)"
    }

    fn run(&self, g: &mut Graph, _opts: &PassOptions) -> Result<Vec<String>, PassError> {
        run("dce", g, dce, "removed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::check_rewrite;

    #[test]
    fn work_inside_regions_and_prune_captures() {
        let start = "graph {
  %x = input {name=\"x\"} : f32[B,L,8]
  %unused = input {name=\"u\"} : f32[B]
  %w = weight {name=\"w\"} : f32[4,4]
  %v = weight {name=\"v\"} : f32[4,4]
  %r = reversible_block %x : f32[B,L,8] {
    f(%a: f32[B,L,4]) {
      %1 = linear %a, %w : f32[B,L,4]
      %2 = linear %a, %w : f32[B,L,4]
      %3 = linear %a, %v : f32[B,L,4]
      %4 = add %1, %2 : f32[B,L,4]
      yield %4
    }
    g(%b: f32[B,L,4]) {
      yield %b
    }
  }
  %dead = exp %x : f32[B,L,8]
  output \"y\" = %r
}
";
        let after_cse = start
            .replace("      %2 = linear %a, %w : f32[B,L,4]\n", "")
            .replace("%4 = add %1, %2", "%4 = add %1, %1");
        check_rewrite(&CsePass, start, &after_cse);
        let goal = after_cse
            .replace("      %3 = linear %a, %v : f32[B,L,4]\n", "")
            .replace("  %v = weight {name=\"v\"} : f32[4,4]\n", "")
            .replace("  %dead = exp %x : f32[B,L,8]\n", "");
        check_rewrite(&DcePass, &after_cse, &goal);
        let mut g = reformc_ir::parse(&goal).unwrap();
        let p = Program::from_graph(&g).unwrap();
        assert_eq!(p.body.nodes[3].regions[0].captures.len(), 1);
        assert_eq!(dce(&mut g).unwrap(), 0);
    }
}
