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
//! The same coupling on two separate streams, the form `simplify` leaves
//! once `slice(concat(..))` folds away between layers,
//!
//! ```text
//! y1 = add(a, F)              y2 = add(b, G)               (F reads b, G reads y1)
//! ```
//!
//! with `a` and `b` any values (one value twice for Hugging Face's duplicated
//! embedding) and other uses of `y1` after `y2`, becomes
//! `y = reversible_block concat(a, b)` with `y1`, `y2` the slices of `y`;
//! a later `simplify` folds the concat/slice glue between blocks
//! (`concat-slices`, `slice-concat`). So the pass works before or after
//! `simplify`.
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
use reformc_ir::{
    Attr, BlockId, Dim, Graph, Node, Op, OpKind, Region, Rewriter, TensorType, ValueId,
};
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
        if let Some(s) = p.node() {
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
    if let Some(i) = root.node() {
        dep[i] = true;
    }
    for i in 0..body.nodes.len() {
        if !dep[i]
            && body
                .node_uses(i)
                .any(|r| r == root || r.node().is_some_and(|j| dep[j]))
        {
            dep[i] = true;
        }
    }
    dep
}

/// Nodes `root` depends on (itself included).
fn ancestors(body: &Body, root: Ref) -> Vec<bool> {
    let mut anc = vec![false; body.nodes.len()];
    let mut stack: Vec<usize> = root.node().into_iter().collect();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut anc[i], true) {
            continue;
        }
        stack.extend(body.node_uses(i).filter_map(|r| r.node()));
    }
    anc
}

fn find_coupling(body: &Body, users: &[Vec<usize>], is_result: &[bool]) -> Option<Coupling> {
    for y in 0..body.nodes.len() {
        let n = &body.nodes[y];
        if n.op.kind != OpKind::Concat || n.inputs.len() != 2 {
            continue;
        }
        let (Some(y1), Some(y2)) = (n.inputs[0].node(), n.inputs[1].node()) else {
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
    let outside_ok = |r: Ref, inside: &[bool]| r.node().is_none_or(|j| inside[j] || !dep_x[j]);
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
    arg: Ref,
    result: Ref,
    outer: &dyn Fn(Ref) -> Ref,
) -> Body {
    let mut local: HashMap<usize, u32> = HashMap::new();
    let mut captures: Vec<Capture> = Vec::new();
    let mut cap_index: HashMap<Ref, u32> = HashMap::new();
    let mut map = |r: Ref, local: &HashMap<usize, u32>| -> Ref {
        if r == arg {
            return Ref::Arg(0);
        }
        if let Some(j) = r.node().filter(|j| local.contains_key(j)) {
            return Ref::Node(local[&j]);
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
        args: vec![body.ty(arg).clone()],
        captures,
        nodes,
        results: vec![result],
    }
}

/// The layer a folded block belongs to: that of its branches' ops (the
/// unfolded coupling's slices, adds and concat carry none, so that algebraic
/// rewrites see one residual stream).
fn branch_layer(body: &Body, f: &[usize], g: &[usize]) -> Option<u64> {
    f.iter().chain(g).find_map(|i| body.nodes[*i].op.layer())
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
            let f = extract_region(&before, &c.f, Ref::Node(c.x2 as u32), c.fo, &outer);
            let g = extract_region(&before, &c.g, Ref::Node(c.y1 as u32), c.go, &outer);
            let layer = branch_layer(&before, &c.f, &c.g);
            let block = BodyNode {
                op: Op::new(OpKind::ReversibleBlock).with_layer(layer),
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
        if let Some(c) = find_coupling(body, &users, &is_result) {
            apply_coupling(body, &c);
        } else if let Some(c) = find_stream_coupling(body, &users, &is_result) {
            apply_stream_coupling(body, &c);
        } else {
            return count;
        }
        count += 1;
    }
}

/// A coupling on two separate streams (the form `simplify` leaves once
/// `slice(concat(..))` folds): `y1 = a + F(b)`, `y2 = b + G(y1)`.
struct StreamCoupling {
    a: Ref,
    b: Ref,
    y1: usize,
    y2: usize,
    fo: Ref,
    go: Ref,
    f: Vec<usize>,
    g: Vec<usize>,
}

fn find_stream_coupling(
    body: &Body,
    users: &[Vec<usize>],
    is_result: &[bool],
) -> Option<StreamCoupling> {
    let add_operands = |i: usize| {
        let n = &body.nodes[i];
        (n.op.kind == OpKind::Add && n.inputs.len() == 2 && n.regions.is_empty())
            .then(|| [(n.inputs[0], n.inputs[1]), (n.inputs[1], n.inputs[0])])
    };
    for y2 in 0..body.nodes.len() {
        let Some(orders) = add_operands(y2) else {
            continue;
        };
        let t = &body.nodes[y2].ty;
        if t.shape.last().is_none_or(|d| d.as_const().is_none()) {
            continue;
        }
        for (b, go) in orders {
            let Some(go_node) = go.node() else { continue };
            let anc_go = ancestors(body, go);
            // The nearest additions first: G is usually a few ops.
            for y1 in (0..go_node + 1).rev().filter(|&i| anc_go[i]) {
                let Some(orders) = add_operands(y1) else {
                    continue;
                };
                for (a, fo) in orders {
                    let same = [a, b, fo, go, Ref::Node(y1 as u32)]
                        .iter()
                        .all(|r| body.ty(*r) == t);
                    if !same {
                        continue;
                    }
                    let c = StreamCoupling {
                        a,
                        b,
                        y1,
                        y2,
                        fo,
                        go,
                        f: vec![],
                        g: vec![],
                    };
                    if let Some(c) = check_stream(body, users, is_result, c, &anc_go) {
                        return Some(c);
                    }
                }
            }
        }
    }
    None
}

fn check_stream(
    body: &Body,
    users: &[Vec<usize>],
    is_result: &[bool],
    mut c: StreamCoupling,
    anc_go: &[bool],
) -> Option<StreamCoupling> {
    let n = body.nodes.len();
    let (dep_a, dep_b) = (dependents(body, c.a), dependents(body, c.b));
    let dep_y1 = dependents(body, Ref::Node(c.y1 as u32));
    let anc_fo = ancestors(body, c.fo);
    let is_node = |r: Ref, i: usize| r == Ref::Node(i as u32);
    c.f = (0..n)
        .filter(|&i| anc_fo[i] && dep_b[i] && !is_node(c.b, i))
        .collect();
    c.g = (0..n)
        .filter(|&i| anc_go[i] && dep_y1[i] && i != c.y1)
        .collect();
    let mut in_f = vec![false; n];
    c.f.iter().for_each(|&i| in_f[i] = true);
    let mut in_g = vec![false; n];
    c.g.iter().for_each(|&i| in_g[i] = true);
    // Values the branches may capture: independent of both streams.
    let free = |r: Ref| r.node().is_none_or(|j| !dep_a[j] && !dep_b[j]) && r != c.a && r != c.b;
    // F really reads b (a branch that ignores its argument is not a coupling).
    let fo_ok = c.fo == c.b || c.fo.node().is_some_and(|j| in_f[j]);
    let go_ok = c.go == Ref::Node(c.y1 as u32) || c.go.node().is_some_and(|j| in_g[j]);
    // The first stream must stay outside the branch that computes its partner.
    let a_outside = c.a.node().is_none_or(|j| !in_f[j]);
    if !fo_ok || !go_ok || !a_outside {
        return None;
    }
    for &i in &c.f {
        if !body
            .node_uses(i)
            .all(|r| r == c.b || r.node().is_some_and(|j| in_f[j]) || free(r))
        {
            return None;
        }
    }
    for &i in &c.g {
        let ok = |r: Ref| {
            r == Ref::Node(c.y1 as u32)
                || r.node().is_some_and(|j| in_g[j])
                || (free(r) && r.node().is_none_or(|j| !dep_y1[j]))
        };
        if !body.node_uses(i).all(ok) {
            return None;
        }
    }
    let only = |i: usize, allowed: &dyn Fn(usize) -> bool| {
        !is_result[i] && users[i].iter().all(|&u| allowed(u))
    };
    let ok = c.f.iter().all(|&i| only(i, &|u| in_f[u] || u == c.y1))
        && c.g.iter().all(|&i| only(i, &|u| in_g[u] || u == c.y2))
        // y1 is only available after the block, which takes y2's place.
        && users[c.y1].iter().all(|&u| in_g[u] || u == c.y2 || u > c.y2);
    ok.then_some(c)
}

fn apply_stream_coupling(body: &mut Body, c: &StreamCoupling) {
    let before = body.clone();
    let n = before.nodes.len();
    let mut removed = vec![false; n];
    for i in [c.y1]
        .into_iter()
        .chain(c.f.iter().copied())
        .chain(c.g.iter().copied())
    {
        removed[i] = true;
    }
    let t = before.nodes[c.y2].ty.clone();
    let a = t.rank() - 1;
    let d = t.shape[a]
        .as_const()
        .expect("checked by find_stream_coupling");
    let mut x_ty = t.clone();
    x_ty.shape[a] = Dim::Const(2 * d);
    let mut remap: Vec<Option<Ref>> = vec![None; n];
    let fix = |remap: &[Option<Ref>], r: Ref| match r {
        Ref::Node(j) => remap[j as usize].expect("defined before use and not removed"),
        r => r,
    };
    body.nodes.clear();
    for (i, node) in before.nodes.iter().enumerate() {
        if i == c.y2 {
            let outer = |r: Ref| fix(&remap, r);
            let f = extract_region(&before, &c.f, c.b, c.fo, &outer);
            let g = extract_region(&before, &c.g, Ref::Node(c.y1 as u32), c.go, &outer);
            let mut push = |op: Op, ty: &TensorType, inputs: Vec<Ref>, regions: Vec<Body>| {
                body.nodes.push(BodyNode {
                    op,
                    ty: ty.clone(),
                    inputs,
                    regions,
                });
                Ref::Node(body.nodes.len() as u32 - 1)
            };
            let x = push(
                concat(a),
                &x_ty,
                vec![fix(&remap, c.a), fix(&remap, c.b)],
                vec![],
            );
            let layer = branch_layer(&before, &c.f, &c.g);
            let block = Op::new(OpKind::ReversibleBlock).with_layer(layer);
            let y = push(block, &x_ty, vec![x], vec![f, g]);
            remap[c.y1] = Some(push(slice(a, 0, d), &t, vec![y], vec![]));
            remap[c.y2] = Some(push(slice(a, d, 2 * d), &t, vec![y], vec![]));
        } else if !removed[i] {
            let mut node = node.clone();
            map_node_refs(&mut node, &mut |r| fix(&remap, r));
            body.nodes.push(node);
            remap[i] = Some(Ref::Node(body.nodes.len() as u32 - 1));
        }
    }
    for r in &mut body.results {
        *r = fix(&remap, *r);
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
/// through `map` (values not in it are kept); the copies are appended to
/// `dest`, or only put in the arena (for the body of a copied region) when
/// `dest` is `None`. Returns the new ids in order.
fn clone_block(
    rw: &mut Rewriter<'_>,
    block: &[ValueId],
    map: &mut HashMap<ValueId, ValueId>,
    dest: Option<BlockId>,
) -> Result<Vec<ValueId>, String> {
    let mut out = Vec::with_capacity(block.len());
    for &v in block {
        let node = rw.graph().node(v).clone();
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
                    let ty = rw.graph().ty(*a).clone();
                    let new = rw.push_detached(Node::new(Op::new(OpKind::Arg), vec![], ty));
                    map.insert(*a, new);
                    new
                })
                .collect();
            let body = clone_block(rw, &r.body, map, None)?;
            let results = r.results.iter().map(|x| *map.get(x).unwrap_or(x)).collect();
            regions.push(Region {
                args,
                body,
                results,
            });
        }
        let copy = Node {
            regions,
            ..Node::new(node.op.clone(), inputs, node.ty.clone())
        };
        let new = match dest {
            Some(b) => rw.append(b, copy).map_err(|e| e.to_string())?,
            None => rw.push_detached(copy),
        };
        map.insert(v, new);
        out.push(new);
    }
    Ok(out)
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
    let mut rw = Rewriter::new(g);
    let dest = rw
        .block_of(block)
        .ok_or("the block is not in the graph's body")?;
    let add = |rw: &mut Rewriter<'_>, op: Op, inputs: Vec<ValueId>, ty: &TensorType| {
        rw.append(dest, Node::new(op, inputs, ty.clone()))
            .map_err(|e| e.to_string())
    };
    let y1 = add(&mut rw, slice(a, 0, d), vec![y], &half)?;
    let y2 = add(&mut rw, slice(a, d, 2 * d), vec![y], &half)?;
    let branch = |rw: &mut Rewriter<'_>, r: &Region, arg: ValueId| -> Result<ValueId, String> {
        let (&a0, &res) = r
            .args
            .first()
            .zip(r.results.first())
            .ok_or("a region needs one argument and one result")?;
        let mut map = HashMap::from([(a0, arg)]);
        clone_block(rw, &r.body, &mut map, Some(dest))?;
        Ok(*map.get(&res).unwrap_or(&res))
    };
    let go = branch(&mut rw, &node.regions[1], y1)?;
    let x2 = add(&mut rw, Op::new(OpKind::Sub), vec![y2, go], &half)?;
    let fo = branch(&mut rw, &node.regions[0], x2)?;
    let x1 = add(&mut rw, Op::new(OpKind::Sub), vec![y1, fo], &half)?;
    add(&mut rw, concat(a), vec![x1, x2], &node.ty)
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
        // A value of a branch used outside it.
        let text = coupling("  %e = exp %1 : f32[B,L,4]\n  output \"e\" = %e\n");
        check_rewrite(&ReversiblePass, &text, &text);
        // A half or y1 used outside: not the concat form any more, but still
        // a coupling of two streams, folded with a concat and two slices.
        for extra in ["  output \"h\" = %x2\n", "  output \"z\" = %y1\n"] {
            let text = coupling(extra);
            let original = parse(&text).unwrap();
            let mut g = original.clone();
            assert_eq!(fold_reversible(&mut g).unwrap(), 1);
            reformc_ir::verify(&g).unwrap();
            assert_eq!(g.find(OpKind::ReversibleBlock).count(), 1);
            assert_equivalent(&original, &g, 4, 3, 0.0);
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
    fn folds_couplings_on_separate_streams() {
        let start = "graph {
  %a = input {name=\"a\"} : f32[N,4]
  %b = input {name=\"b\"} : f32[N,4]
  %w = weight {name=\"w\"} : f32[4,4]
  %1 = linear %b, %w {activation=\"tanh\"} : f32[N,4]
  %y1 = add %a, %1 : f32[N,4]
  %2 = exp %y1 : f32[N,4]
  %y2 = add %2, %b : f32[N,4]
  %3 = mul %y1, %y2 : f32[N,4]
  output \"y1\" = %y1
  output \"m\" = %3
}
";
        let goal = "graph {
  %a = input {name=\"a\"} : f32[N,4]
  %b = input {name=\"b\"} : f32[N,4]
  %w = weight {name=\"w\"} : f32[4,4]
  %x = concat %a, %b {axis=1} : f32[N,8]
  %r = reversible_block %x : f32[N,8] {
    f(%fa: f32[N,4]) {
      %1 = linear %fa, %w {activation=\"tanh\"} : f32[N,4]
      yield %1
    }
    g(%ga: f32[N,4]) {
      %2 = exp %ga : f32[N,4]
      yield %2
    }
  }
  %y1 = slice %r {axis=1, start=0, end=4} : f32[N,4]
  %y2 = slice %r {axis=1, start=4, end=8} : f32[N,4]
  %3 = mul %y1, %y2 : f32[N,4]
  output \"y1\" = %y1
  output \"m\" = %3
}
";
        check_rewrite(&ReversiblePass, start, goal);
        // Both streams may be one value (HF duplicates the embedding).
        let dup = start.replace("%y1 = add %a, %1", "%y1 = add %b, %1");
        let mut g = parse(&dup).unwrap();
        assert_eq!(fold_reversible(&mut g).unwrap(), 1);
        assert!(
            print(&g).contains("concat %1, %1 {axis=1}"),
            "{}",
            print(&g)
        );
        // y1 used before y2 by something outside G: not folded.
        let early = start
            .replace(
                "  %2 = exp %y1 : f32[N,4]\n",
                "  %2 = exp %y1 : f32[N,4]\n  %e = neg %y1 : f32[N,4]\n",
            )
            .replace(
                "output \"m\" = %3",
                "output \"m\" = %3\n  output \"e\" = %e",
            );
        check_rewrite(&ReversiblePass, &early, &early);
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
