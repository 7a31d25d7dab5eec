//! Graphviz export through petgraph.

use crate::{Graph, OpKind};
use petgraph::dot::{Config, Dot};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::HashMap;

/// The dataflow graph in Graphviz `dot` syntax: one node per op (regions
/// flattened, their ops prefixed by the owner), one edge per use.
///
/// ```
/// let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[N]\n %1 = exp %0 : f32[N]\n output \"y\" = %1\n}").unwrap();
/// let dot = reformc_ir::to_dot(&g);
/// assert!(dot.starts_with("digraph"));
/// assert!(dot.contains("exp"));
/// ```
pub fn to_dot(g: &Graph) -> String {
    let (pg, _) = to_petgraph(g);
    format!("{:?}", Dot::with_config(&pg, &[Config::EdgeNoLabel]))
}

/// The graph as a petgraph `DiGraph` whose node weights are labels, and the
/// map from values to petgraph nodes. Used for dot export and graph algorithms.
pub fn to_petgraph(g: &Graph) -> (DiGraph<String, ()>, HashMap<crate::ValueId, NodeIndex>) {
    let mut pg = DiGraph::new();
    let mut index = HashMap::new();
    for (n, v) in g.walk().into_iter().enumerate() {
        let node = g.node(v);
        let label = match node.op.kind {
            OpKind::Input | OpKind::Weight => format!(
                "%{n} {} {}\n{}",
                node.op.kind,
                node.op.str("name").unwrap_or(""),
                node.ty
            ),
            _ => format!("%{n} {}\n{}", node.op, node.ty),
        };
        index.insert(v, pg.add_node(label));
    }
    for v in g.walk() {
        for i in &g.node(v).inputs {
            if let (Some(&a), Some(&b)) = (index.get(i), index.get(&v)) {
                pg.add_edge(a, b, ());
            }
        }
    }
    for (name, v) in &g.outputs {
        let out = pg.add_node(format!("output {name}"));
        if let Some(&a) = index.get(v) {
            pg.add_edge(a, out, ());
        }
    }
    (pg, index)
}
