//! A scoped, value-numbered view of a graph that passes can rebuild freely.
//!
//! Every body (the top level and each region) is a [`Body`]: its argument
//! types, the outer values it captures, its nodes in execution order and its
//! results. Operands are [`Ref`]s relative to the body they appear in (an
//! argument, a capture, or an earlier node of the same body), and a region's
//! captures are `Ref`s into the body that holds the region's owner. Moving
//! ops between bodies (folding a reversible block, chunking a branch) is
//! then a matter of renumbering references, and [`Program::to_graph`] builds
//! a fresh, verified-shape [`Graph`] arena.
//!
//! `Program::from_graph(g).to_graph()` prints exactly like `g`.
//!
//! This is the rebuild half of graph editing; small in-place edits go through
//! [`crate::Rewriter`] instead (see the `rewriter` module for which passes use
//! which).
//!
//! ```
//! use reformc_ir::scoped::Program;
//! let text = "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = exp %0 : f32[N]\n  output \"y\" = %1\n}\n";
//! let g = reformc_ir::parse(text).unwrap();
//! let p = Program::from_graph(&g).unwrap();
//! assert_eq!(p.body.nodes.len(), 2);
//! assert_eq!(reformc_ir::print(&p.to_graph()), text);
//! ```

use crate::{Graph, Node, Op, OpKind, Region, TensorType, ValueId};
use std::collections::HashMap;

/// An operand, relative to the body it appears in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ref {
    /// The body's argument.
    Arg(u32),
    /// The body's capture (a value of an enclosing body).
    Capture(u32),
    /// An earlier node of the body.
    Node(u32),
}

impl Ref {
    /// The index of the node this refers to, when it is a node of the body.
    ///
    /// ```
    /// use reformc_ir::scoped::Ref;
    /// assert_eq!(Ref::Node(3).node(), Some(3));
    /// assert_eq!(Ref::Arg(0).node(), None);
    /// ```
    pub fn node(self) -> Option<usize> {
        match self {
            Ref::Node(i) => Some(i as usize),
            Ref::Arg(_) | Ref::Capture(_) => None,
        }
    }
}

/// A value of an enclosing body that a body uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Capture {
    /// The value, as a reference in the enclosing body.
    pub outer: Ref,
    /// The value's type.
    pub ty: TensorType,
}

/// One op of a body.
#[derive(Clone, Debug, PartialEq)]
pub struct BodyNode {
    /// The op kind and its attributes.
    pub op: Op,
    /// The result type.
    pub ty: TensorType,
    /// Operands, relative to this body.
    pub inputs: Vec<Ref>,
    /// The op's regions (their captures refer to this body).
    pub regions: Vec<Body>,
}

/// The top level or one region.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Body {
    /// Argument types (none at the top level).
    pub args: Vec<TensorType>,
    /// Outer values used inside (none at the top level).
    pub captures: Vec<Capture>,
    /// Ops in execution order.
    pub nodes: Vec<BodyNode>,
    /// Yielded values (the named outputs at the top level).
    pub results: Vec<Ref>,
}

/// A whole graph: the top-level body and the names of its results.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    /// The top-level body.
    pub body: Body,
    /// Output names, one per `body.results` entry.
    pub outputs: Vec<String>,
}

#[derive(Default)]
struct Scope {
    local: HashMap<ValueId, Ref>,
    capture_index: HashMap<ValueId, u32>,
    captures: Vec<Capture>,
}

fn resolve(g: &Graph, scopes: &mut [Scope], depth: usize, v: ValueId) -> Result<Ref, String> {
    if let Some(r) = scopes[depth].local.get(&v) {
        return Ok(*r);
    }
    if let Some(i) = scopes[depth].capture_index.get(&v) {
        return Ok(Ref::Capture(*i));
    }
    if depth == 0 || v.index() >= g.len() {
        return Err(format!("value %{} is used where it is not defined", v.0));
    }
    let outer = resolve(g, scopes, depth - 1, v)?;
    let s = &mut scopes[depth];
    let i = s.captures.len() as u32;
    s.captures.push(Capture {
        outer,
        ty: g.ty(v).clone(),
    });
    s.capture_index.insert(v, i);
    Ok(Ref::Capture(i))
}

fn convert_block(
    g: &Graph,
    block: &[ValueId],
    scopes: &mut Vec<Scope>,
) -> Result<Vec<BodyNode>, String> {
    let depth = scopes.len() - 1;
    let mut nodes = Vec::with_capacity(block.len());
    for &v in block {
        if v.index() >= g.len() {
            return Err(format!("body refers to missing node %{}", v.0));
        }
        let n = g.node(v);
        let inputs = n
            .inputs
            .iter()
            .map(|i| resolve(g, scopes, depth, *i))
            .collect::<Result<Vec<_>, _>>()?;
        let mut regions = Vec::with_capacity(n.regions.len());
        for r in &n.regions {
            regions.push(convert_region(g, r, scopes)?);
        }
        let idx = nodes.len() as u32;
        nodes.push(BodyNode {
            op: n.op.clone(),
            ty: n.ty.clone(),
            inputs,
            regions,
        });
        if scopes[depth].local.insert(v, Ref::Node(idx)).is_some() {
            return Err(format!("value %{} is defined twice", v.0));
        }
    }
    Ok(nodes)
}

fn convert_region(g: &Graph, r: &Region, scopes: &mut Vec<Scope>) -> Result<Body, String> {
    let mut scope = Scope::default();
    for (i, a) in r.args.iter().enumerate() {
        if a.index() >= g.len() {
            return Err(format!("region argument %{} is missing", a.0));
        }
        scope.local.insert(*a, Ref::Arg(i as u32));
    }
    scopes.push(scope);
    let nodes = convert_block(g, &r.body, scopes);
    let depth = scopes.len() - 1;
    let results = nodes.and_then(|nodes| {
        let results = r
            .results
            .iter()
            .map(|v| resolve(g, scopes, depth, *v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((nodes, results))
    });
    let scope = scopes.pop().expect("pushed above");
    let (nodes, results) = results?;
    Ok(Body {
        args: r.args.iter().map(|a| g.ty(*a).clone()).collect(),
        captures: scope.captures,
        nodes,
        results,
    })
}

impl Program {
    /// The scoped view of `g`. Fails (without panicking) on graphs that use a
    /// value outside its scope or refer to missing nodes.
    pub fn from_graph(g: &Graph) -> Result<Program, String> {
        let mut scopes = vec![Scope::default()];
        let nodes = convert_block(g, &g.body, &mut scopes)?;
        let results = g
            .outputs
            .iter()
            .map(|(_, v)| resolve(g, &mut scopes, 0, *v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Program {
            body: Body {
                args: vec![],
                captures: vec![],
                nodes,
                results,
            },
            outputs: g.outputs.iter().map(|(n, _)| n.clone()).collect(),
        })
    }

    /// A fresh graph arena holding this program.
    pub fn to_graph(&self) -> Graph {
        let mut g = Graph::new();
        let (block, results) = emit(&mut g, &self.body, &[], &[]);
        g.body = block;
        g.outputs = self.outputs.iter().cloned().zip(results).collect();
        g
    }
}

fn emit(
    g: &mut Graph,
    body: &Body,
    args: &[ValueId],
    caps: &[ValueId],
) -> (Vec<ValueId>, Vec<ValueId>) {
    let mut vals: Vec<ValueId> = Vec::with_capacity(body.nodes.len());
    let get = |vals: &[ValueId], r: &Ref| match r {
        Ref::Arg(i) => args[*i as usize],
        Ref::Capture(i) => caps[*i as usize],
        Ref::Node(i) => vals[*i as usize],
    };
    for n in &body.nodes {
        let inputs = n.inputs.iter().map(|r| get(&vals, r)).collect();
        let mut regions = Vec::with_capacity(n.regions.len());
        for r in &n.regions {
            let rargs: Vec<ValueId> = r
                .args
                .iter()
                .map(|t| {
                    g.push_detached(Node {
                        op: Op::new(OpKind::Arg),
                        inputs: vec![],
                        ty: t.clone(),
                        regions: vec![],
                    })
                })
                .collect();
            let rcaps: Vec<ValueId> = r.captures.iter().map(|c| get(&vals, &c.outer)).collect();
            let (block, results) = emit(g, r, &rargs, &rcaps);
            regions.push(Region {
                args: rargs,
                body: block,
                results,
            });
        }
        let id = g.push_detached(Node {
            op: n.op.clone(),
            inputs,
            ty: n.ty.clone(),
            regions,
        });
        vals.push(id);
    }
    let results = body.results.iter().map(|r| get(&vals, r)).collect();
    (vals, results)
}

impl Body {
    /// The type of a reference in this body.
    pub fn ty(&self, r: Ref) -> &TensorType {
        match r {
            Ref::Arg(i) => &self.args[i as usize],
            Ref::Capture(i) => &self.captures[i as usize].ty,
            Ref::Node(i) => &self.nodes[i as usize].ty,
        }
    }

    /// Every reference a node makes: its operands and its regions' captures.
    pub fn node_uses(&self, i: usize) -> impl Iterator<Item = Ref> + '_ {
        let n = &self.nodes[i];
        n.inputs.iter().copied().chain(
            n.regions
                .iter()
                .flat_map(|r| r.captures.iter().map(|c| c.outer)),
        )
    }

    /// For every node, the nodes that use it (operands or region captures),
    /// in order and without repeats, and whether a body result uses it.
    pub fn users(&self) -> (Vec<Vec<usize>>, Vec<bool>) {
        let mut users = vec![Vec::new(); self.nodes.len()];
        for i in 0..self.nodes.len() {
            for r in self.node_uses(i) {
                if let Ref::Node(j) = r {
                    let u: &mut Vec<usize> = &mut users[j as usize];
                    if u.last() != Some(&i) {
                        u.push(i);
                    }
                }
            }
        }
        let mut result = vec![false; self.nodes.len()];
        for r in &self.results {
            if let Ref::Node(j) = r {
                result[*j as usize] = true;
            }
        }
        (users, result)
    }

    /// Number of ops in this body and all nested regions.
    pub fn op_count(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| 1 + n.regions.iter().map(Body::op_count).sum::<usize>())
            .sum()
    }
}

/// Rewrites every reference of a node (operands and region captures) with `f`.
pub fn map_node_refs(n: &mut BodyNode, f: &mut impl FnMut(Ref) -> Ref) {
    for r in &mut n.inputs {
        *r = f(*r);
    }
    for region in &mut n.regions {
        for c in &mut region.captures {
            c.outer = f(c.outer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_regions_and_captures() {
        let text = "graph {
  %0 = input {name=\"x\"} : f32[B,L,8]
  %1 = weight {name=\"w\"} : f32[4,4]
  %2 = reversible_block %0 : f32[B,L,8] {
    f(%3: f32[B,L,4]) {
      %4 = linear %3, %1 : f32[B,L,4]
      yield %4
    }
    g(%5: f32[B,L,4]) {
      %6 = seq_chunk %5 {axis=1, size=2} : f32[B,L,4] {
        body(%7: f32[B,C,4]) {
          %8 = linear %7, %1 : f32[B,C,4]
          yield %8
        }
      }
      yield %6
    }
  }
  output \"y\" = %2
}
";
        let g = crate::parse(text).unwrap();
        crate::verify(&g).unwrap();
        let p = Program::from_graph(&g).unwrap();
        let block = &p.body.nodes[2];
        assert_eq!(
            block.regions[0].captures,
            vec![Capture {
                outer: Ref::Node(1),
                ty: g.ty(g.body[1]).clone()
            }]
        );
        // The inner seq_chunk body captures the weight through the g region.
        let g_region = &block.regions[1];
        assert_eq!(g_region.captures.len(), 1);
        assert_eq!(
            g_region.nodes[0].regions[0].captures[0].outer,
            Ref::Capture(0)
        );
        let back = p.to_graph();
        crate::verify(&back).unwrap();
        assert_eq!(crate::print(&back), text);
        assert_eq!(p.body.op_count(), 6);
        let (users, result) = p.body.users();
        assert_eq!(users[1], vec![2]);
        assert_eq!(result, vec![false, false, true]);
    }

    #[test]
    fn rejects_out_of_scope_uses() {
        let mut g = Graph::new();
        let t = TensorType::new(crate::DType::F32, vec![]);
        let x = g.add(Op::new(OpKind::Exp), vec![ValueId(7)], t);
        g.set_output("y", x);
        assert!(Program::from_graph(&g).is_err());
    }
}
