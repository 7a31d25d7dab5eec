//! The `chunk` pass: compute feed-forward branches and the LM head on
//! chunks of the sequence (REFORMER.md §4, paper eq. 10).
//!
//! A chunked computation is a `seq_chunk` region op: its body takes one
//! chunk of the operand along `axis` (the sequence axis, 1 in `[B, P, D]`
//! activations) and yields one chunk; the interpreter applies it to
//! consecutive chunks of `size` (the last may be shorter) and concatenates.
//! The body's argument has the operand's type with the chunked dim replaced
//! by a fresh symbol (`C`, or `C1`, `C2`, ... when `C` is taken): the chunk
//! length is symbolic, bound afresh for every chunk, so one body serves the
//! short last chunk too.
//!
//! - **Feed-forward**: the `g` region of every `reversible_block` whose ops
//!   all work position by position (layer norm over the last axis, `linear`,
//!   activations, elementwise ops with position-independent operands) moves
//!   into one `seq_chunk`; weights and other outer values are captured.
//! - **LM head**: a top-level `linear` that produces a graph output
//!   (directly or through `truncate`) becomes a `seq_chunk` around it.
//!   Chunking the loss with the logits needs a second chunked operand (the
//!   labels); it will join this `seq_chunk` when the IR has a loss op.
//!
//! Chunk sizes come from [`PassOptions::chunk_size_feed_forward`] and
//! [`PassOptions::chunk_size_lm_head`] (Hugging Face's `chunk_size_*` when
//! nonzero: the frontend keeps them in `ModelSpec::chunk_size_feed_forward`
//! and `ModelSpec::chunk_size_lm_head`), else from [`PassOptions::memory_budget`]: the largest power of
//! two whose per-chunk temporaries (batch [`PassOptions::batch`], default 1)
//! fit the budget, and no chunking when the whole sequence
//! ([`PassOptions::seq_len`]) fits. Without either, the pass changes nothing.
//!
//! ```
//! use reformc_passes::chunk::ChunkPass;
//! use reformc_passes::{Pass, PassOptions};
//! let mut g = reformc_ir::parse("graph {\n  %0 = input {name=\"x\"} : f32[B,P,4]\n  %1 = weight {name=\"w\"} : f32[6,4]\n  %2 = linear %0, %1 : f32[B,P,6]\n  output \"logits\" = %2\n}\n").unwrap();
//! let opts = PassOptions { chunk_size_lm_head: Some(64), ..Default::default() };
//! ChunkPass.run(&mut g, &opts).unwrap();
//! assert_eq!(reformc_ir::print(&g), "graph {\n  %0 = input {name=\"x\"} : f32[B,P,4]\n  %1 = weight {name=\"w\"} : f32[6,4]\n  %2 = seq_chunk %0 {axis=1, size=64} : f32[B,P,6] {\n    body(%3: f32[B,C,4]) {\n      %4 = linear %3, %1 : f32[B,C,6]\n      yield %4\n    }\n  }\n  output \"logits\" = %2\n}\n");
//! ```

use crate::pass::{Pass, PassError, PassOptions};
use crate::scoped::{map_node_refs, Body, BodyNode, Capture, Program, Ref};
use reformc_ir::{Attr, Dim, Graph, Op, OpKind, Rows, TensorType};
use std::collections::{BTreeSet, HashMap};

/// The sequence axis of `[B, P, D]` activations, the axis the pass chunks.
pub const SEQ_AXIS: usize = 1;

/// The `chunk` pass (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkPass;

fn seq_chunk_op(axis: usize, size: u64) -> Op {
    Op::new(OpKind::SeqChunk)
        .with("axis", Attr::Int(axis as i64))
        .with("size", Attr::Int(size as i64))
}

fn with_dim(t: &TensorType, axis: usize, d: Dim) -> TensorType {
    let mut t = t.clone();
    t.shape[axis] = d;
    t
}

/// Whether a position-independent operand of type `t` broadcasts against a
/// result of rank `rank` without spanning `axis`.
fn broadcast_safe(t: &TensorType, rank: usize, axis: usize) -> bool {
    if t.rank() > rank {
        return false;
    }
    let offset = rank - t.rank();
    axis < offset || t.shape[axis - offset] == Dim::Const(1)
}

/// Node `i` of `body` (which depends on the argument) computes each position
/// from the same position of its chunked operands.
fn row_wise(body: &Body, i: usize, dep: &[bool], axis: usize, len: &Dim) -> bool {
    let n = &body.nodes[i];
    let is_dep = |r: &Ref| match r {
        Ref::Arg(_) => true,
        Ref::Node(j) => dep[*j as usize],
        Ref::Capture(_) => false,
    };
    let rank = n.ty.rank();
    if !n.regions.is_empty() || axis + 1 >= rank || n.ty.shape[axis] != *len {
        return false;
    }
    let chunked_ok = |r: &Ref| body.ty(*r).rank() == rank && body.ty(*r).shape[axis] == *len;
    match n.op.kind.facts().rows {
        Rows::RowsOfFirst => {
            is_dep(&n.inputs[0]) && chunked_ok(&n.inputs[0]) && !n.inputs[1..].iter().any(is_dep)
        }
        Rows::AlongAxisAttr => chunked_ok(&n.inputs[0]) && n.op.usize("axis") != Some(axis),
        Rows::Pointwise => n.inputs.iter().all(|r| {
            if is_dep(r) {
                chunked_ok(r)
            } else {
                broadcast_safe(body.ty(*r), rank, axis)
            }
        }),
        Rows::Mixed => false,
    }
}

/// Nodes of `body` that depend on its argument.
fn arg_dependents(body: &Body) -> Vec<bool> {
    let mut dep = vec![false; body.nodes.len()];
    for i in 0..body.nodes.len() {
        dep[i] = body
            .node_uses(i)
            .any(|r| matches!(r, Ref::Arg(_)) || r.node().is_some_and(|j| dep[j]));
    }
    dep
}

/// Per-position bytes of the values `nodes` compute (`B` counted as `batch`,
/// other symbols as 1, the chunked axis excluded).
fn bytes_per_position(types: &[&TensorType], axis: usize, batch: u64) -> u64 {
    types
        .iter()
        .map(|t| {
            let elems: u64 = t
                .shape
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != axis)
                .map(|(_, d)| match d {
                    Dim::Const(c) => *c,
                    Dim::Sym(s) if s == "B" => batch,
                    Dim::Sym(_) => 1,
                })
                .product();
            elems * t.dtype.size_bytes()
        })
        .sum()
}

/// The largest power-of-two chunk length whose temporaries
/// (`per_position` bytes each) fit `budget` bytes; at least 1.
///
/// ```
/// use reformc_passes::chunk::chunk_for_budget;
/// assert_eq!(chunk_for_budget(1000, 64_000), 64);
/// assert_eq!(chunk_for_budget(1000, 63_999), 32);
/// assert_eq!(chunk_for_budget(1000, 10), 1);
/// ```
pub fn chunk_for_budget(per_position: u64, budget: u64) -> u64 {
    let fit = budget / per_position.max(1);
    if fit <= 1 {
        1
    } else {
        1u64 << (63 - fit.leading_zeros()).min(30)
    }
}

/// Rewrites a `g` region so that its position-wise ops run in one
/// `seq_chunk`; `None` when the region is not position-wise.
fn chunk_region(body: &Body, axis: usize, size: u64, sym: &str) -> Option<Body> {
    let arg_ty = body.args.first()?;
    if body.args.len() != 1 || body.results.len() != 1 || axis + 1 >= arg_ty.rank() {
        return None;
    }
    let len = arg_ty.shape[axis].clone();
    let dep = arg_dependents(body);
    let result = body.results[0].node().filter(|&r| dep[r])?;
    if !(0..body.nodes.len())
        .filter(|&i| dep[i])
        .all(|i| row_wise(body, i, &dep, axis, &len))
    {
        return None;
    }
    // Position-independent nodes stay in the region, before the seq_chunk.
    let mut outer: Vec<BodyNode> = Vec::new();
    let mut outer_index: HashMap<usize, u32> = HashMap::new();
    for (i, n) in body.nodes.iter().enumerate() {
        if !dep[i] {
            let mut n = n.clone();
            map_node_refs(&mut n, &mut |r| match r {
                Ref::Node(j) => Ref::Node(outer_index[&(j as usize)]),
                r => r,
            });
            outer_index.insert(i, outer.len() as u32);
            outer.push(n);
        }
    }
    let mut inner_index: HashMap<usize, u32> = HashMap::new();
    let mut captures: Vec<Capture> = Vec::new();
    let mut cap_of: HashMap<Ref, u32> = HashMap::new();
    let mut map = |r: Ref, inner_index: &HashMap<usize, u32>| -> Ref {
        match r {
            Ref::Arg(_) => Ref::Arg(0),
            Ref::Node(j) if dep[j as usize] => Ref::Node(inner_index[&(j as usize)]),
            r => {
                let outer_ref = match r {
                    Ref::Node(j) => Ref::Node(outer_index[&(j as usize)]),
                    r => r,
                };
                let k = *cap_of.entry(outer_ref).or_insert_with(|| {
                    captures.push(Capture {
                        outer: outer_ref,
                        ty: body.ty(r).clone(),
                    });
                    captures.len() as u32 - 1
                });
                Ref::Capture(k)
            }
        }
    };
    let mut inner_nodes = Vec::new();
    for (i, n) in body.nodes.iter().enumerate() {
        if dep[i] {
            let mut n = n.clone();
            map_node_refs(&mut n, &mut |r| map(r, &inner_index));
            n.ty = with_dim(&n.ty, axis, Dim::sym(sym));
            inner_index.insert(i, inner_nodes.len() as u32);
            inner_nodes.push(n);
        }
    }
    let inner_result = map(body.results[0], &inner_index);
    let inner = Body {
        args: vec![with_dim(arg_ty, axis, Dim::sym(sym))],
        captures,
        nodes: inner_nodes,
        results: vec![inner_result],
    };
    outer.push(BodyNode {
        op: seq_chunk_op(axis, size),
        ty: body.nodes[result].ty.clone(),
        inputs: vec![Ref::Arg(0)],
        regions: vec![inner],
    });
    Some(Body {
        args: body.args.clone(),
        captures: body.captures.clone(),
        results: vec![Ref::Node(outer.len() as u32 - 1)],
        nodes: outer,
    })
}

/// Calls `f` on the `g` region of every `reversible_block`, in every body.
fn for_each_ff_region(body: &mut Body, f: &mut dyn FnMut(&mut Body)) {
    for n in &mut body.nodes {
        for r in &mut n.regions {
            for_each_ff_region(r, f);
        }
        if n.op.kind == OpKind::ReversibleBlock && n.regions.len() == 2 {
            f(&mut n.regions[1]);
        }
    }
}

/// Symbols used anywhere in the graph's types.
fn symbols(g: &Graph) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for v in g.walk() {
        let n = g.node(v);
        let args = n
            .regions
            .iter()
            .flat_map(|r| r.args.iter().map(|a| g.ty(*a)));
        for t in std::iter::once(&n.ty).chain(args) {
            for d in &t.shape {
                if let Dim::Sym(s) = d {
                    out.insert(s.clone());
                }
            }
        }
    }
    out
}

/// A chunk symbol not used anywhere in `g`: `C`, else `C1`, `C2`, ...
pub fn fresh_chunk_symbol(g: &Graph) -> String {
    let used = symbols(g);
    std::iter::once("C".to_string())
        .chain((1..).map(|i| format!("C{i}")))
        .find(|s| !used.contains(s))
        .expect("an unused name exists")
}

/// Chunks every position-wise feed-forward branch (`g` regions) along
/// [`SEQ_AXIS`] in chunks of `size`; returns how many were chunked.
pub fn chunk_feed_forward(g: &mut Graph, size: u64) -> Result<usize, String> {
    if size == 0 {
        return Err("chunk size must be at least 1".into());
    }
    let sym = fresh_chunk_symbol(g);
    let mut p = Program::from_graph(g)?;
    let mut count = 0;
    for_each_ff_region(&mut p.body, &mut |r| {
        if let Some(new) = chunk_region(r, SEQ_AXIS, size, &sym) {
            *r = new;
            count += 1;
        }
    });
    if count > 0 {
        *g = p.to_graph();
    }
    Ok(count)
}

/// Top-level `linear` nodes producing a graph output (directly or through `truncate`).
fn head_linears(body: &Body) -> Vec<usize> {
    let mut out = Vec::new();
    for r in &body.results {
        let mut i = r.node();
        if let Some(t) = i.filter(|&t| body.nodes[t].op.kind == OpKind::Truncate) {
            i = body.nodes[t].inputs[0].node();
        }
        if let Some(l) = i.filter(|&l| {
            body.nodes[l].op.kind == OpKind::Linear && body.nodes[l].ty.rank() > SEQ_AXIS + 1
        }) {
            if !out.contains(&l) {
                out.push(l);
            }
        }
    }
    out
}

/// Chunks the LM head (see the module docs) along [`SEQ_AXIS`] in chunks of
/// `size`; returns how many heads were chunked.
pub fn chunk_lm_head(g: &mut Graph, size: u64) -> Result<usize, String> {
    if size == 0 {
        return Err("chunk size must be at least 1".into());
    }
    let sym = fresh_chunk_symbol(g);
    let mut p = Program::from_graph(g)?;
    let heads = head_linears(&p.body);
    for &l in &heads {
        let lin = p.body.nodes[l].clone();
        let x = lin.inputs[0];
        let x_ty = p.body.ty(x).clone();
        let captures: Vec<Capture> = lin.inputs[1..]
            .iter()
            .map(|r| Capture {
                outer: *r,
                ty: p.body.ty(*r).clone(),
            })
            .collect();
        let inputs = std::iter::once(Ref::Arg(0))
            .chain((0..captures.len() as u32).map(Ref::Capture))
            .collect();
        let inner = BodyNode {
            op: lin.op.clone(),
            ty: with_dim(&lin.ty, SEQ_AXIS, Dim::sym(&sym)),
            inputs,
            regions: vec![],
        };
        let body = Body {
            args: vec![with_dim(&x_ty, SEQ_AXIS, Dim::sym(&sym))],
            captures,
            nodes: vec![inner],
            results: vec![Ref::Node(0)],
        };
        p.body.nodes[l] = BodyNode {
            op: seq_chunk_op(SEQ_AXIS, size),
            ty: lin.ty,
            inputs: vec![x],
            regions: vec![body],
        };
    }
    if !heads.is_empty() {
        *g = p.to_graph();
    }
    Ok(heads.len())
}

/// Per-position temporaries of the feed-forward branches and of the LM head.
fn temporaries(g: &Graph, batch: u64) -> Result<(u64, u64), String> {
    let p = Program::from_graph(g)?;
    let mut ff = 0;
    let mut body = p.body.clone();
    for_each_ff_region(&mut body, &mut |r| {
        let dep = arg_dependents(r);
        let types: Vec<&TensorType> = r
            .nodes
            .iter()
            .zip(&dep)
            .filter(|(_, d)| **d)
            .map(|(n, _)| &n.ty)
            .collect();
        ff = ff.max(bytes_per_position(&types, SEQ_AXIS, batch));
    });
    let head = head_linears(&p.body)
        .iter()
        .map(|&l| {
            let n = &p.body.nodes[l];
            bytes_per_position(&[&n.ty, p.body.ty(n.inputs[0])], SEQ_AXIS, batch)
        })
        .max()
        .unwrap_or(0);
    Ok((ff, head))
}

impl Pass for ChunkPass {
    fn name(&self) -> &'static str {
        "chunk"
    }

    fn summary(&self) -> &'static str {
        "run feed-forward branches and the LM head on chunks of the sequence (seq_chunk)"
    }

    fn run(&self, g: &mut Graph, opts: &PassOptions) -> Result<Vec<String>, PassError> {
        let err = |message: String| PassError {
            pass: "chunk".into(),
            message,
        };
        reformc_ir::verify(g).map_err(|e| err(format!("the input graph does not verify: {e}")))?;
        let (ff_bytes, head_bytes) = temporaries(g, opts.batch_or_default()).map_err(err)?;
        let mut notes = Vec::new();
        let size = |given: Option<u64>,
                    per_position: u64,
                    what: &str,
                    notes: &mut Vec<String>|
         -> Option<u64> {
            if let Some(s) = given.filter(|s| *s > 0) {
                return Some(s);
            }
            let budget = opts.memory_budget?;
            if per_position == 0 {
                return None;
            }
            if opts
                .seq_len
                .is_some_and(|l| l.saturating_mul(per_position) <= budget)
            {
                notes.push(format!(
                    "{what}: the whole sequence fits the memory budget, not chunked"
                ));
                return None;
            }
            let c = chunk_for_budget(per_position, budget);
            notes.push(format!("{what}: chunk of {c} positions ({per_position} bytes of temporaries per position, budget {budget} bytes)"));
            Some(c)
        };
        if let Some(s) = size(
            opts.chunk_size_feed_forward,
            ff_bytes,
            "feed-forward",
            &mut notes,
        ) {
            let n = chunk_feed_forward(g, s).map_err(err)?;
            notes.push(format!(
                "chunked {n} feed-forward branches along axis {SEQ_AXIS} in chunks of {s}"
            ));
        }
        if let Some(s) = size(opts.chunk_size_lm_head, head_bytes, "LM head", &mut notes) {
            let n = chunk_lm_head(g, s).map_err(err)?;
            notes.push(format!(
                "chunked {n} LM head linear(s) along axis {SEQ_AXIS} in chunks of {s}"
            ));
        }
        if notes.is_empty() {
            notes.push("no chunk size given (chunk_size_feed_forward, chunk_size_lm_head or a memory budget): nothing chunked".into());
        }
        reformc_ir::verify(g).map_err(|e| {
            err(format!(
                "internal error: the chunked graph does not verify: {e}"
            ))
        })?;
        Ok(notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_equivalent, normalize};
    use reformc_ir::{parse, print};

    const FF: &str = "graph {
  %x = input {name=\"x\"} : f32[B,P,8]
  %lw = weight {name=\"lw\"} : f32[4]
  %w1 = weight {name=\"w1\"} : f32[6,4]
  %b1 = weight {name=\"b1\"} : f32[6]
  %w2 = weight {name=\"w2\"} : f32[4,6]
  %r = reversible_block %x : f32[B,P,8] {
    f(%a: f32[B,P,4]) {
      %1 = tanh %a : f32[B,P,4]
      yield %1
    }
    g(%b: f32[B,P,4]) {
      %c = constant {value=0.5} : f32[]
      %2 = layer_norm %b, %lw, %lw {eps=1e-5} : f32[B,P,4]
      %3 = linear %2, %w1, %b1 {activation=\"gelu\"} : f32[B,P,6]
      %4 = linear %3, %w2 : f32[B,P,4]
      %5 = mul %4, %c : f32[B,P,4]
      yield %5
    }
  }
  output \"y\" = %r
}
";

    #[test]
    fn chunks_feed_forward_regions() {
        let mut g = parse(FF).unwrap();
        let original = g.clone();
        let opts = PassOptions {
            chunk_size_feed_forward: Some(3),
            ..Default::default()
        };
        let notes = ChunkPass.run(&mut g, &opts).unwrap();
        assert_eq!(
            notes,
            vec!["chunked 1 feed-forward branches along axis 1 in chunks of 3"]
        );
        let goal = FF.replace(
            "      %2 = layer_norm %b, %lw, %lw {eps=1e-5} : f32[B,P,4]
      %3 = linear %2, %w1, %b1 {activation=\"gelu\"} : f32[B,P,6]
      %4 = linear %3, %w2 : f32[B,P,4]
      %5 = mul %4, %c : f32[B,P,4]
      yield %5",
            "      %s = seq_chunk %b {axis=1, size=3} : f32[B,P,4] {
        body(%k: f32[B,C,4]) {
          %2 = layer_norm %k, %lw, %lw {eps=1e-5} : f32[B,C,4]
          %3 = linear %2, %w1, %b1 {activation=\"gelu\"} : f32[B,C,6]
          %4 = linear %3, %w2 : f32[B,C,4]
          %5 = mul %4, %c : f32[B,C,4]
          yield %5
        }
      }
      yield %s",
        );
        assert_eq!(print(&g), normalize(&goal));
        assert_equivalent(&original, &g, 3, 4, 1e-6);
        // Idempotent: a chunked branch is not chunked again.
        let again = ChunkPass.run(&mut g, &opts).unwrap();
        assert_eq!(
            again,
            vec!["chunked 0 feed-forward branches along axis 1 in chunks of 3"]
        );
        let text = print(&g);
        assert_eq!(print(&parse(&text).unwrap()), text);
    }

    #[test]
    fn leaves_branches_that_mix_positions() {
        // A softmax over the sequence axis mixes positions.
        let text = FF.replace(
            "%5 = mul %4, %c : f32[B,P,4]",
            "%5 = softmax %4 {axis=1} : f32[B,P,4]",
        );
        let mut g = parse(&text).unwrap();
        let opts = PassOptions {
            chunk_size_feed_forward: Some(3),
            ..Default::default()
        };
        ChunkPass.run(&mut g, &opts).unwrap();
        assert_eq!(print(&g), normalize(&text));
    }

    #[test]
    fn fresh_symbol_avoids_clashes() {
        let text = FF.replace("B,P", "C,P").replace("f32[B,", "f32[C,");
        let mut g = parse(&text).unwrap();
        assert_eq!(fresh_chunk_symbol(&g), "C1");
        chunk_feed_forward(&mut g, 2).unwrap();
        reformc_ir::verify(&g).unwrap();
        assert!(print(&g).contains("f32[C,C1,4]"));
    }

    #[test]
    fn memory_budget_picks_a_power_of_two() {
        let mut g = parse(FF).unwrap();
        // Per position: layer_norm 4 + linear 6 + linear 4 + mul 4 floats = 72 bytes at B=1; x2 at B=2.
        let opts = PassOptions {
            memory_budget: Some(144 * 40),
            batch: Some(2),
            ..Default::default()
        };
        let notes = ChunkPass.run(&mut g, &opts).unwrap();
        assert_eq!(notes[0], "feed-forward: chunk of 32 positions (144 bytes of temporaries per position, budget 5760 bytes)");
        assert!(
            print(&g).contains("seq_chunk %8 {axis=1, size=32}"),
            "{}",
            print(&g)
        );
        // The whole sequence fits: nothing to do.
        let mut g = parse(FF).unwrap();
        let opts = PassOptions {
            memory_budget: Some(1 << 20),
            seq_len: Some(64),
            ..Default::default()
        };
        let notes = ChunkPass.run(&mut g, &opts).unwrap();
        assert_eq!(
            notes,
            vec!["feed-forward: the whole sequence fits the memory budget, not chunked"]
        );
        assert_eq!(print(&g), normalize(FF));
        // No sizes at all.
        let notes = ChunkPass.run(&mut g, &PassOptions::default()).unwrap();
        assert!(notes[0].starts_with("no chunk size given"));
    }

    #[test]
    fn chunks_the_lm_head_through_truncate() {
        let text = "graph {
  %ids = input {name=\"ids\"} : i64[B,L]
  %x = input {name=\"x\"} : f32[B,P,8]
  %w = weight {name=\"w\"} : f32[5,8]
  %b = weight {name=\"b\"} : f32[5]
  %1 = linear %x, %w, %b : f32[B,P,5]
  %2 = truncate %1, %ids {axis=1} : f32[B,L,5]
  output \"logits\" = %2
}
";
        let mut g = parse(text).unwrap();
        let opts = PassOptions {
            chunk_size_lm_head: Some(2),
            ..Default::default()
        };
        let notes = ChunkPass.run(&mut g, &opts).unwrap();
        assert_eq!(
            notes,
            vec!["chunked 1 LM head linear(s) along axis 1 in chunks of 2"]
        );
        let goal = text.replace(
            "  %1 = linear %x, %w, %b : f32[B,P,5]\n",
            "  %1 = seq_chunk %x {axis=1, size=2} : f32[B,P,5] {\n    body(%c: f32[B,C,8]) {\n      %l = linear %c, %w, %b : f32[B,C,5]\n      yield %l\n    }\n  }\n",
        );
        assert_eq!(print(&g), normalize(&goal));
        // The interpreter needs P >= L here; check the chunked linear alone.
        let text = "graph {\n  %x = input {name=\"x\"} : f32[B,P,8]\n  %w = weight {name=\"w\"} : f32[5,8]\n  %1 = linear %x, %w : f32[B,P,5]\n  output \"y\" = %1\n}\n";
        let a = parse(text).unwrap();
        let mut b = a.clone();
        assert_eq!(chunk_lm_head(&mut b, 3).unwrap(), 1);
        assert_equivalent(&a, &b, 9, 4, 1e-6);
        assert!(chunk_lm_head(&mut b, 0).is_err());
    }
}
