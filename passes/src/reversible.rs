//! The `reversible` pass: fold additive couplings into `reversible_block`s,
//! and the helpers around them.
//!
//! The pass recognises, in any body, the coupling of REFORMER.md §3.1 built
//! from primitive ops
//!
//! ```text
//! x1 = slice{a, 0, D}(x)      x2 = slice{a, D, 2D}(x)      (a = the last axis, x is 2D wide)
//! y1 = add(x1, F)             y2 = add(x2, G)              (either operand order)
//! y  = concat{a}(y1, y2)
//! ```
//!
//! where `F` is a subgraph that depends on `x` only through `x2` and `G`
//! one that depends on it only through `y1` (both may use any value that
//! does not depend on `x`: weights, masks, hashing inputs), and where no
//! value of the coupling is used outside it. It becomes
//! `y = reversible_block x {f(x2) {F}, g(y1) {G}}`, F's and G's ops moved
//! into the regions (values they use from outside are captured).
//!
//! [`unfold_reversible`] is the inverse transformation (every block to the
//! primitive form above), [`fold_reversible`] the pass's core, and
//! [`invert_reversible`] builds the block's inverse `x2 = y2 - g(y1)`,
//! `x1 = y1 - f(x2)` (REFORMER.md §3.3) for the training recompute.
//!
//! ```
//! use reformc_passes::reversible::{fold_reversible, unfold_reversible};
//! let text = "graph {\n  %0 = input {name=\"x\"} : f32[N,8]\n  %1 = reversible_block %0 : f32[N,8] {\n    f(%2: f32[N,4]) {\n      %3 = tanh %2 : f32[N,4]\n      yield %3\n    }\n    g(%4: f32[N,4]) {\n      %5 = exp %4 : f32[N,4]\n      yield %5\n    }\n  }\n  output \"y\" = %1\n}\n";
//! let mut g = reformc_ir::parse(text).unwrap();
//! assert_eq!(unfold_reversible(&mut g).unwrap(), 1);
//! assert!(reformc_ir::print(&g).contains("%2 = slice %0 {axis=1, end=8, start=4} : f32[N,4]"));
//! assert_eq!(fold_reversible(&mut g).unwrap(), 1);
//! assert_eq!(reformc_ir::print(&g), text);
//! ```

use crate::pass::{Pass, PassError, PassOptions};
use crate::scoped::{map_node_refs, Body, BodyNode, Capture, Program, Ref};
use reformc_ir::{Attr, Dim, Graph, Node, Op, OpKind, Region, TensorType, ValueId};
use std::collections::HashMap;

/// The `reversible` pass (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReversiblePass;

impl Pass for ReversiblePass {
    fn name(&self) -> &'static str {
        "reversible"
    }

    fn summary(&self) -> &'static str {
        "fold y1 = x1 + f(x2), y2 = x2 + g(y1) couplings of slices, adds and a concat into reversible_block"
    }

    fn run(&self, g: &mut Graph, _opts: &PassOptions) -> Result<Vec<String>, PassError> {
        let err = |message: String| PassError {
            pass: "reversible".into(),
            message,
        };
        reformc_ir::verify(g).map_err(|e| err(format!("the input graph does not verify: {e}")))?;
        let n = fold_reversible(g).map_err(err)?;
        Ok(vec![match n {
            0 => "no reversible coupling found".to_string(),
            1 => "folded 1 reversible coupling into a reversible_block".to_string(),
            n => format!("folded {n} reversible couplings into reversible_blocks"),
        }])
    }
}

fn half_type(t: &TensorType) -> Option<(TensorType, usize, u64)> {
    let a = t.rank().checked_sub(1)?;
    match t.shape[a] {
        Dim::Const(w) if w % 2 == 0 && w > 0 => {
            let mut h = t.clone();
            h.shape[a] = Dim::Const(w / 2);
            Some((h, a, w / 2))
        }
        _ => None,
    }
}

fn slice(axis: usize, start: u64, end: u64) -> Op {
    Op::new(OpKind::Slice)
        .with("axis", Attr::Int(axis as i64))
        .with("start", Attr::Int(start as i64))
        .with("end", Attr::Int(end as i64))
}

fn concat(axis: usize) -> Op {
    Op::new(OpKind::Concat).with("axis", Attr::Int(axis as i64))
}

// ---------------------------------------------------------------- unfold

/// Copies a region's ops into `out` (a body being built), its argument
/// bound to `arg` and its captures to `caps`; the reference of its result.
fn inline_region(region: &Body, arg: Ref, caps: &[Ref], out: &mut Vec<BodyNode>) -> Ref {
    let base = out.len() as u32;
    let map = |r: Ref| match r {
        Ref::Arg(_) => arg,
        Ref::Capture(k) => caps[k as usize],
        Ref::Node(j) => Ref::Node(base + j),
    };
    for n in &region.nodes {
        let mut n = n.clone();
        map_node_refs(&mut n, &mut |r| map(r));
        out.push(n);
    }
    map(region.results[0])
}

fn unfold_body(body: &mut Body) -> Result<usize, String> {
    let mut count = 0;
    for n in &mut body.nodes {
        for r in &mut n.regions {
            count += unfold_body(r)?;
        }
    }
    if !body
        .nodes
        .iter()
        .any(|n| n.op.kind == OpKind::ReversibleBlock)
    {
        return Ok(count);
    }
    let old = std::mem::take(&mut body.nodes);
    let mut remap: Vec<Ref> = Vec::with_capacity(old.len());
    let fix = |remap: &[Ref], r: Ref| match r {
        Ref::Node(j) => remap[j as usize],
        r => r,
    };
    for mut n in old {
        map_node_refs(&mut n, &mut |r| fix(&remap, r));
        if n.op.kind != OpKind::ReversibleBlock {
            body.nodes.push(n);
            remap.push(Ref::Node(body.nodes.len() as u32 - 1));
            continue;
        }
        let x = n.inputs[0];
        let (half, a, d) = half_type(&n.ty)
            .ok_or_else(|| format!("reversible_block of type {} has no even last axis", n.ty))?;
        if n.regions.len() != 2
            || n.regions
                .iter()
                .any(|r| r.args.len() != 1 || r.results.len() != 1)
        {
            return Err(
                "reversible_block needs regions f and g with one argument and one result".into(),
            );
        }
        let nodes = &mut body.nodes;
        let push = |nodes: &mut Vec<BodyNode>, op: Op, ty: &TensorType, inputs: Vec<Ref>| {
            nodes.push(BodyNode {
                op,
                ty: ty.clone(),
                inputs,
                regions: vec![],
            });
            Ref::Node(nodes.len() as u32 - 1)
        };
        let x1 = push(nodes, slice(a, 0, d), &half, vec![x]);
        let x2 = push(nodes, slice(a, d, 2 * d), &half, vec![x]);
        let caps: Vec<Ref> = n.regions[0].captures.iter().map(|c| c.outer).collect();
        let fo = inline_region(&n.regions[0], x2, &caps, nodes);
        let y1 = push(nodes, Op::new(OpKind::Add), &half, vec![x1, fo]);
        let caps: Vec<Ref> = n.regions[1].captures.iter().map(|c| c.outer).collect();
        let go = inline_region(&n.regions[1], y1, &caps, nodes);
        let y2 = push(nodes, Op::new(OpKind::Add), &half, vec![x2, go]);
        let y = push(nodes, concat(a), &n.ty, vec![y1, y2]);
        remap.push(y);
        count += 1;
    }
    for r in &mut body.results {
        *r = fix(&remap, *r);
    }
    Ok(count)
}

/// Replaces every `reversible_block` (in every body) by its primitive form:
/// slices of the halves, the inlined regions, two adds and a concat.
/// Returns how many blocks were unfolded.
pub fn unfold_reversible(g: &mut Graph) -> Result<usize, String> {
    let mut p = Program::from_graph(g)?;
    let n = unfold_body(&mut p.body)?;
    *g = p.to_graph();
    Ok(n)
}

// ---------------------------------------------------------------- fold

/// One recognised coupling, by node index in its body.
struct Coupling {
    x: Ref,
    x1: usize,
    x2: usize,
    y1: usize,
    y2: usize,
    y: usize,
    fo: Ref,
    go: Ref,
    f: Vec<usize>,
    g: Vec<usize>,
}

fn node_of(r: Ref) -> Option<usize> {
    match r {
        Ref::Node(i) => Some(i as usize),
        _ => None,
    }
}

/// `(x, which)` when node `i` is `slice{last axis}` of half `which` (0 or 1) of a 2D-wide `x`.
fn half_slice(body: &Body, i: usize) -> Option<(Ref, u8)> {
    let n = &body.nodes[i];
    if n.op.kind != OpKind::Slice || n.inputs.len() != 1 {
        return None;
    }
    let x = n.inputs[0];
    let (half, a, d) = half_type(body.ty(x))?;
    if n.op.usize("axis")? != a || n.ty != half {
        return None;
    }
    match (n.op.int("start")?, n.op.int("end")?) {
        (0, e) if e as u64 == d => Some((x, 0)),
        (s, e) if s as u64 == d && e as u64 == 2 * d => Some((x, 1)),
        _ => None,
    }
}

/// For node `add` `i`: `(slice node, other operand)` pairs where the slice takes half `which` of `x`.
fn add_of_half(body: &Body, i: usize, which: u8) -> Vec<(usize, Ref, Ref)> {
    let n = &body.nodes[i];
    if n.op.kind != OpKind::Add || n.inputs.len() != 2 {
        return vec![];
    }
    let mut out = Vec::new();
    for (p, q) in [(n.inputs[0], n.inputs[1]), (n.inputs[1], n.inputs[0])] {
        if let Some(s) = node_of(p) {
            if let Some((x, w)) = half_slice(body, s) {
                if w == which {
                    out.push((s, x, q));
                }
            }
        }
    }
    out
}

/// Nodes that depend on `root` (itself included), transitively, within the body.
fn dependents(body: &Body, root: Ref) -> Vec<bool> {
    let mut dep = vec![false; body.nodes.len()];
    if let Some(i) = node_of(root) {
        dep[i] = true;
    }
    for i in 0..body.nodes.len() {
        if !dep[i]
            && body
                .node_uses(i)
                .any(|r| r == root || node_of(r).is_some_and(|j| dep[j]))
        {
            dep[i] = true;
        }
    }
    dep
}

/// Nodes `root` depends on (itself included).
fn ancestors(body: &Body, root: Ref) -> Vec<bool> {
    let mut anc = vec![false; body.nodes.len()];
    let mut stack: Vec<usize> = node_of(root).into_iter().collect();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut anc[i], true) {
            continue;
        }
        stack.extend(body.node_uses(i).filter_map(node_of));
    }
    anc
}

fn find_coupling(body: &Body, users: &[Vec<usize>], is_result: &[bool]) -> Option<Coupling> {
    for y in 0..body.nodes.len() {
        let n = &body.nodes[y];
        if n.op.kind != OpKind::Concat || n.inputs.len() != 2 {
            continue;
        }
        let (Some(y1), Some(y2)) = (node_of(n.inputs[0]), node_of(n.inputs[1])) else {
            continue;
        };
        for (x2, x, go) in add_of_half(body, y2, 1) {
            for (x1, xx, fo) in add_of_half(body, y1, 0) {
                if xx != x || n.ty != *body.ty(x) || n.op.usize("axis") != Some(n.ty.rank() - 1) {
                    continue;
                }
                if let Some(c) = check_coupling(
                    body,
                    users,
                    is_result,
                    Coupling {
                        x,
                        x1,
                        x2,
                        y1,
                        y2,
                        y,
                        fo,
                        go,
                        f: vec![],
                        g: vec![],
                    },
                ) {
                    return Some(c);
                }
            }
        }
    }
    None
}

/// Completes the F and G sets of a candidate and checks that folding it is valid.
fn check_coupling(
    body: &Body,
    users: &[Vec<usize>],
    is_result: &[bool],
    mut c: Coupling,
) -> Option<Coupling> {
    let n = body.nodes.len();
    let dep_x = dependents(body, c.x);
    let (dep_x2, anc_fo) = (
        dependents(body, Ref::Node(c.x2 as u32)),
        ancestors(body, c.fo),
    );
    let (dep_y1, anc_go) = (
        dependents(body, Ref::Node(c.y1 as u32)),
        ancestors(body, c.go),
    );
    c.f = (0..n)
        .filter(|&i| i != c.x2 && dep_x2[i] && anc_fo[i])
        .collect();
    c.g = (0..n)
        .filter(|&i| i != c.y1 && dep_y1[i] && anc_go[i])
        .collect();
    let mut in_f = vec![false; n];
    c.f.iter().for_each(|&i| in_f[i] = true);
    let mut in_g = vec![false; n];
    c.g.iter().for_each(|&i| in_g[i] = true);
    let half = body.ty(Ref::Node(c.x1 as u32)).clone();
    if [c.fo, c.go, Ref::Node(c.y1 as u32), Ref::Node(c.y2 as u32)]
        .iter()
        .any(|r| *body.ty(*r) != half)
    {
        return None;
    }
    // The branch results: computed inside the branch, or independent of x.
    let outside_ok = |r: Ref, inside: &[bool]| node_of(r).is_none_or(|j| inside[j] || !dep_x[j]);
    if !outside_ok(c.fo, &in_f) && c.fo != Ref::Node(c.x2 as u32)
        || !outside_ok(c.go, &in_g) && c.go != Ref::Node(c.y1 as u32)
    {
        return None;
    }
    // F uses x only through x2, G only through y1.
    for (set, arg) in [(&c.f, c.x2), (&c.g, c.y1)] {
        let inside = if arg == c.x2 { &in_f } else { &in_g };
        for &i in set {
            for r in body.node_uses(i) {
                if r == c.x || (r != Ref::Node(arg as u32) && !outside_ok(r, inside)) {
                    return None;
                }
            }
        }
    }
    // Nothing of the coupling is used outside it.
    let only = |i: usize, allowed: &dyn Fn(usize) -> bool| {
        !is_result[i] && users[i].iter().all(|&u| allowed(u))
    };
    let ok = only(c.x1, &|u| u == c.y1)
        && only(c.x2, &|u| in_f[u] || u == c.y2)
        && c.f.iter().all(|&i| only(i, &|u| in_f[u] || u == c.y1))
        && only(c.y1, &|u| in_g[u] || u == c.y)
        && c.g.iter().all(|&i| only(i, &|u| in_g[u] || u == c.y2))
        && only(c.y2, &|u| u == c.y);
    ok.then_some(c)
}

/// Builds a region body from `set` (node indices of `body`, in order) with
/// argument `arg` (a node of `body`) and result `result`; `outer` maps a
/// reference of `body` to its reference in the body being built.
fn extract_region(
    body: &Body,
    set: &[usize],
    arg: usize,
    result: Ref,
    outer: &dyn Fn(Ref) -> Ref,
) -> Body {
    let mut local: HashMap<usize, u32> = HashMap::new();
    let mut captures: Vec<Capture> = Vec::new();
    let mut cap_index: HashMap<Ref, u32> = HashMap::new();
    let mut map = |r: Ref, local: &HashMap<usize, u32>| -> Ref {
        match node_of(r) {
            Some(j) if j == arg => return Ref::Arg(0),
            Some(j) if local.contains_key(&j) => return Ref::Node(local[&j]),
            _ => {}
        }
        let k = *cap_index.entry(r).or_insert_with(|| {
            captures.push(Capture {
                outer: outer(r),
                ty: body.ty(r).clone(),
            });
            captures.len() as u32 - 1
        });
        Ref::Capture(k)
    };
    let mut nodes = Vec::with_capacity(set.len());
    for &i in set {
        let mut n = body.nodes[i].clone();
        map_node_refs(&mut n, &mut |r| map(r, &local));
        local.insert(i, nodes.len() as u32);
        nodes.push(n);
    }
    let result = map(result, &local);
    Body {
        args: vec![body.ty(Ref::Node(arg as u32)).clone()],
        captures,
        nodes,
        results: vec![result],
    }
}

fn apply_coupling(body: &mut Body, c: &Coupling) {
    let before = body.clone();
    let n = before.nodes.len();
    let mut removed = vec![false; n];
    for i in [c.x1, c.x2, c.y1, c.y2]
        .into_iter()
        .chain(c.f.iter().copied())
        .chain(c.g.iter().copied())
    {
        removed[i] = true;
    }
    let mut remap: Vec<Option<Ref>> = vec![None; n];
    let fix = |remap: &[Option<Ref>], r: Ref| match r {
        Ref::Node(j) => remap[j as usize].expect("defined before use and not removed"),
        r => r,
    };
    body.nodes.clear();
    for (i, node) in before.nodes.iter().enumerate() {
        if i == c.y {
            let outer = |r: Ref| fix(&remap, r);
            let f = extract_region(&before, &c.f, c.x2, c.fo, &outer);
            let g = extract_region(&before, &c.g, c.y1, c.go, &outer);
            let block = BodyNode {
                op: Op::new(OpKind::ReversibleBlock),
                ty: node.ty.clone(),
                inputs: vec![fix(&remap, c.x)],
                regions: vec![f, g],
            };
            body.nodes.push(block);
        } else if removed[i] {
            continue;
        } else {
            let mut node = node.clone();
            map_node_refs(&mut node, &mut |r| fix(&remap, r));
            body.nodes.push(node);
        }
        remap[i] = Some(Ref::Node(body.nodes.len() as u32 - 1));
    }
    for r in &mut body.results {
        *r = fix(&remap, *r);
    }
}

fn fold_body(body: &mut Body) -> usize {
    let mut count = 0;
    for n in &mut body.nodes {
        for r in &mut n.regions {
            count += fold_body(r);
        }
    }
    loop {
        let (users, is_result) = body.users();
        match find_coupling(body, &users, &is_result) {
            Some(c) => {
                apply_coupling(body, &c);
                count += 1;
            }
            None => return count,
        }
    }
}

/// Folds every recognised coupling (in every body) into a `reversible_block`.
/// Returns how many were folded.
pub fn fold_reversible(g: &mut Graph) -> Result<usize, String> {
    let mut p = Program::from_graph(g)?;
    let n = fold_body(&mut p.body);
    if n > 0 {
        *g = p.to_graph();
    }
    Ok(n)
}

// ---------------------------------------------------------------- invert

/// Deep-copies `block` (ops of one body) into new nodes, mapping operands
/// through `map` (values not in it are kept); returns the new ids in order.
fn clone_block(
    g: &mut Graph,
    block: &[ValueId],
    map: &mut HashMap<ValueId, ValueId>,
) -> Vec<ValueId> {
    let mut out = Vec::with_capacity(block.len());
    for &v in block {
        let node = g.node(v).clone();
        let inputs = node
            .inputs
            .iter()
            .map(|i| *map.get(i).unwrap_or(i))
            .collect();
        let mut regions = Vec::with_capacity(node.regions.len());
        for r in &node.regions {
            let args: Vec<ValueId> = r
                .args
                .iter()
                .map(|a| {
                    let ty = g.ty(*a).clone();
                    let new = g.push_detached(Node {
                        op: Op::new(OpKind::Arg),
                        inputs: vec![],
                        ty,
                        regions: vec![],
                    });
                    map.insert(*a, new);
                    new
                })
                .collect();
            let body = clone_block(g, &r.body, map);
            let results = r.results.iter().map(|x| *map.get(x).unwrap_or(x)).collect();
            regions.push(Region {
                args,
                body,
                results,
            });
        }
        let new = g.push_detached(Node {
            op: node.op.clone(),
            inputs,
            ty: node.ty.clone(),
            regions,
        });
        map.insert(v, new);
        out.push(new);
    }
    out
}

/// The node owning the region whose body holds `target` (`None` at the top level).
fn owner_of(g: &Graph, body: &[ValueId], target: ValueId) -> Option<Option<(ValueId, usize)>> {
    for &v in body {
        if v == target {
            return Some(None);
        }
        for (ri, r) in g.node(v).regions.iter().enumerate() {
            match owner_of(g, &r.body, target) {
                Some(None) => return Some(Some((v, ri))),
                Some(found) => return Some(found),
                None => {}
            }
        }
    }
    None
}

/// Builds the inverse of the reversible block `block` applied to its own
/// result: ops computing `x` back from `y` as `x2 = y2 - g(y1)`,
/// `x1 = y1 - f(x2)`, `x = concat(x1, x2)`, appended to the body that holds
/// the block. Returns the value of the recomputed `x`.
///
/// ```
/// use reformc_passes::reversible::invert_reversible;
/// let mut g = reformc_ir::parse("graph {\n  %0 = input {name=\"x\"} : f32[N,8]\n  %1 = reversible_block %0 : f32[N,8] {\n    f(%2: f32[N,4]) {\n      %3 = tanh %2 : f32[N,4]\n      yield %3\n    }\n    g(%4: f32[N,4]) {\n      %5 = exp %4 : f32[N,4]\n      yield %5\n    }\n  }\n  output \"y\" = %1\n}\n").unwrap();
/// let block = g.body[1];
/// let x = invert_reversible(&mut g, block).unwrap();
/// g.set_output("x", x);
/// reformc_ir::verify(&g).unwrap();
/// assert!(reformc_ir::print(&g).contains("sub"));
/// ```
pub fn invert_reversible(g: &mut Graph, block: ValueId) -> Result<ValueId, String> {
    invert_reversible_from(g, block, block)
}

/// Like [`invert_reversible`], inverting the block at the value `y` (any
/// value of the block's type visible where the block is, for instance an
/// output recomputed later).
pub fn invert_reversible_from(
    g: &mut Graph,
    block: ValueId,
    y: ValueId,
) -> Result<ValueId, String> {
    if block.index() >= g.len() || y.index() >= g.len() {
        return Err("no such value".into());
    }
    let node = g.node(block).clone();
    if node.op.kind != OpKind::ReversibleBlock || node.regions.len() != 2 {
        return Err(format!(
            "%{} is a {}, not a reversible_block",
            block.0, node.op.kind
        ));
    }
    if g.ty(y) != &node.ty {
        return Err(format!(
            "cannot invert at a value of type {}: the block's type is {}",
            g.ty(y),
            node.ty
        ));
    }
    let (half, a, d) = half_type(&node.ty).ok_or("the block's last axis is not even")?;
    let owner =
        owner_of(g, &g.body.clone(), block).ok_or("the block is not in the graph's body")?;
    let mut new: Vec<ValueId> = Vec::new();
    let add =
        |g: &mut Graph, new: &mut Vec<ValueId>, op: Op, inputs: Vec<ValueId>, ty: &TensorType| {
            let v = g.push_detached(Node {
                op,
                inputs,
                ty: ty.clone(),
                regions: vec![],
            });
            new.push(v);
            v
        };
    let y1 = add(g, &mut new, slice(a, 0, d), vec![y], &half);
    let y2 = add(g, &mut new, slice(a, d, 2 * d), vec![y], &half);
    let branch = |g: &mut Graph,
                  new: &mut Vec<ValueId>,
                  r: &Region,
                  arg: ValueId|
     -> Result<ValueId, String> {
        let (&a0, &res) = r
            .args
            .first()
            .zip(r.results.first())
            .ok_or("a region needs one argument and one result")?;
        let mut map = HashMap::from([(a0, arg)]);
        new.extend(clone_block(g, &r.body, &mut map));
        Ok(*map.get(&res).unwrap_or(&res))
    };
    let go = branch(g, &mut new, &node.regions[1], y1)?;
    let x2 = add(g, &mut new, Op::new(OpKind::Sub), vec![y2, go], &half);
    let fo = branch(g, &mut new, &node.regions[0], x2)?;
    let x1 = add(g, &mut new, Op::new(OpKind::Sub), vec![y1, fo], &half);
    let x = add(g, &mut new, concat(a), vec![x1, x2], &node.ty);
    match owner {
        None => g.body.extend(new),
        Some((owner, ri)) => g.node_mut(owner).regions[ri].body.extend(new),
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_equivalent, check_rewrite, normalize};
    use reformc_ir::{parse, print};

    const BLOCK: &str = "graph {
  %x = input {name=\"x\"} : f32[B,L,8]
  %w = weight {name=\"w\"} : f32[4,4]
  %r = reversible_block %x : f32[B,L,8] {
    f(%a: f32[B,L,4]) {
      %1 = linear %a, %w {activation=\"tanh\"} : f32[B,L,4]
      yield %1
    }
    g(%b: f32[B,L,4]) {
      %2 = layer_norm %b, %bias, %bias {eps=1e-5} : f32[B,L,4]
      %3 = linear %2, %w : f32[B,L,4]
      yield %3
    }
  }
  output \"y\" = %r
}
";

    fn block_text() -> String {
        BLOCK.replace(
            "  %w = weight {name=\"w\"} : f32[4,4]\n",
            "  %w = weight {name=\"w\"} : f32[4,4]\n  %bias = weight {name=\"bias\"} : f32[4]\n",
        )
    }

    /// The primitive coupling, with the adds in the other operand order.
    fn coupling(extra_use: &str) -> String {
        format!(
            "graph {{
  %x = input {{name=\"x\"}} : f32[B,L,8]
  %w = weight {{name=\"w\"}} : f32[4,4]
  %bias = weight {{name=\"bias\"}} : f32[4]
  %x1 = slice %x {{axis=2, start=0, end=4}} : f32[B,L,4]
  %x2 = slice %x {{axis=2, start=4, end=8}} : f32[B,L,4]
  %1 = linear %x2, %w {{activation=\"tanh\"}} : f32[B,L,4]
  %y1 = add %1, %x1 : f32[B,L,4]
  %2 = layer_norm %y1, %bias, %bias {{eps=1e-5}} : f32[B,L,4]
  %3 = linear %2, %w : f32[B,L,4]
  %y2 = add %3, %x2 : f32[B,L,4]
  %y = concat %y1, %y2 {{axis=2}} : f32[B,L,8]
{extra_use}  output \"y\" = %y
}}
"
        )
    }

    #[test]
    fn folds_the_primitive_coupling() {
        check_rewrite(&ReversiblePass, &coupling(""), &block_text());
    }

    #[test]
    fn leaves_couplings_that_cannot_fold() {
        // A value of the coupling used outside it.
        for extra in [
            "  %e = exp %1 : f32[B,L,4]\n  output \"e\" = %e\n",
            "  output \"h\" = %x2\n",
            "  output \"z\" = %y1\n",
        ] {
            let text = coupling(extra);
            check_rewrite(&ReversiblePass, &text, &text);
        }
        // F reads x1 (not only x2).
        let text = coupling("").replace("%1 = linear %x2, %w", "%1 = linear %x1, %w");
        check_rewrite(&ReversiblePass, &text, &text);
        // G reads x2 (not only y1).
        let text = coupling("").replace("%2 = layer_norm %y1, %bias", "%2 = layer_norm %x2, %bias");
        check_rewrite(&ReversiblePass, &text, &text);
    }

    #[test]
    fn unfold_then_fold_is_the_identity() {
        let text = normalize(&block_text());
        let mut g = parse(&text).unwrap();
        let original = g.clone();
        assert_eq!(unfold_reversible(&mut g).unwrap(), 1);
        reformc_ir::verify(&g).unwrap();
        assert_eq!(
            print(&g),
            normalize(
                &coupling("")
                    .replace("%y1 = add %1, %x1", "%y1 = add %x1, %1")
                    .replace("%y2 = add %3, %x2", "%y2 = add %x2, %3")
            )
        );
        assert_equivalent(&original, &g, 11, 3, 0.0);
        assert_eq!(fold_reversible(&mut g).unwrap(), 1);
        assert_eq!(print(&g), text);
    }

    #[test]
    fn inverse_recovers_the_input() {
        let mut g = parse(&block_text()).unwrap();
        let block = g.body[3];
        let x = invert_reversible(&mut g, block).unwrap();
        g.set_output("x", x);
        reformc_ir::verify(&g).unwrap();
        let mut rng = crate::testing::Rng(5);
        let env = crate::testing::random_env(&g, &mut rng, 5);
        let (inputs, weights) = crate::testing::random_bindings(&g, &env, &mut rng);
        let out = reformc_interp::run(&g, &inputs, &weights).unwrap();
        let one = |t: &reformc_interp::Tensor| {
            std::collections::BTreeMap::from([("x".to_string(), t.clone())])
        };
        let d = crate::testing::max_rel_diff(&one(&inputs["x"]), &one(&out["x"]));
        assert!(d < 1e-5, "{d}");
        // Errors, not panics, on values that are not blocks.
        assert!(invert_reversible(&mut g, ValueId(0)).is_err());
        assert!(invert_reversible(&mut g, ValueId(100_000)).is_err());
    }
}
