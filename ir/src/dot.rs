//! Graphviz export (regions as clusters) and the graph as a petgraph `DiGraph`.

use crate::{Graph, OpKind, Region, ValueId};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::HashMap;

/// The dataflow graph in Graphviz `dot` syntax: one node per op, one edge per
/// use. Each region is a cluster (`subgraph cluster_...`) holding its
/// arguments, its ops and a `yield` node, with a dashed edge from the op that
/// owns it; labels are plain dot strings (`\"` only where the IR text has a quote).
///
/// ```
/// let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[N]\n %1 = exp %0 : f32[N]\n output \"y\" = %1\n}").unwrap();
/// let dot = reformc_ir::to_dot(&g);
/// assert!(dot.starts_with("digraph"));
/// assert!(dot.contains("n1 [label=\"%1 exp\\nf32[N]\"];"));
/// ```
pub fn to_dot(g: &Graph) -> String {
    let number: HashMap<ValueId, usize> = g
        .walk()
        .into_iter()
        .enumerate()
        .map(|(n, v)| (v, n))
        .collect();
    let mut d = DotWriter {
        g,
        number: &number,
        out: String::from("digraph {\n  compound=true;\n  node [shape=box];\n"),
        edges: String::new(),
    };
    d.block(&g.body, 1);
    for (i, (name, v)) in g.outputs.iter().enumerate() {
        d.line(
            1,
            &format!(
                "out{i} [label={}, shape=ellipse];",
                quoted(&format!("output {name}"))
            ),
        );
        d.edge(&format!("n{} -> out{i};", number[v]));
    }
    let DotWriter { mut out, edges, .. } = d;
    out.push_str(&edges);
    out.push_str("}\n");
    out
}

/// Node and cluster declarations go to `out` as they nest; edges are kept
/// apart and appended at the top level, after every node has its cluster
/// (a node's cluster is where Graphviz first sees it).
struct DotWriter<'a> {
    g: &'a Graph,
    number: &'a HashMap<ValueId, usize>,
    out: String,
    edges: String,
}

impl DotWriter<'_> {
    fn line(&mut self, depth: usize, text: &str) {
        self.out.push_str(&"  ".repeat(depth));
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn edge(&mut self, text: &str) {
        self.edges.push_str("  ");
        self.edges.push_str(text);
        self.edges.push('\n');
    }

    fn block(&mut self, body: &[ValueId], depth: usize) {
        for &v in body {
            let n = self.number[&v];
            let node = self.g.node(v);
            self.line(
                depth,
                &format!("n{n} [label={}];", quoted(&label(self.g, v, n))),
            );
            for i in &node.inputs {
                if let Some(a) = self.number.get(i) {
                    self.edge(&format!("n{a} -> n{n};"));
                }
            }
            let names = node.op.kind.schema().regions;
            for (i, r) in node.regions.iter().enumerate() {
                let name = names.get(i).copied().unwrap_or("region");
                self.region(n, i, name, r, depth);
            }
        }
    }

    /// One region as a cluster; the owner's edge points at the cluster's
    /// `yield` node (always present) and is clipped at the cluster border.
    fn region(&mut self, owner: usize, i: usize, name: &str, r: &Region, depth: usize) {
        let cluster = format!("cluster_n{owner}_{i}");
        self.line(depth, &format!("subgraph {cluster} {{"));
        self.line(
            depth + 1,
            &format!("label={};", quoted(&format!("%{owner} {name}"))),
        );
        self.line(depth + 1, "style=rounded;");
        for &a in &r.args {
            let n = self.number[&a];
            self.line(
                depth + 1,
                &format!("n{n} [label={}];", quoted(&label(self.g, a, n))),
            );
        }
        self.block(&r.body, depth + 1);
        let y = format!("y{owner}_{i}");
        self.line(depth + 1, &format!("{y} [label=\"yield\", shape=plain];"));
        self.line(depth, "}");
        for v in &r.results {
            if let Some(a) = self.number.get(v) {
                self.edge(&format!("n{a} -> {y};"));
            }
        }
        self.edge(&format!("n{owner} -> {y} [style=dashed, lhead={cluster}];"));
    }
}

/// A dot string literal: quotes and backslashes escaped, newlines as `\n`.
fn quoted(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// `%n op {attrs}` and the type on a second line; inputs and weights show
/// their name instead of the attribute list.
fn label(g: &Graph, v: ValueId, n: usize) -> String {
    let node = g.node(v);
    match node.op.kind {
        OpKind::Input | OpKind::Weight => format!(
            "%{n} {} {}\n{}",
            node.op.kind,
            node.op.str("name").unwrap_or(""),
            node.ty
        ),
        _ => format!("%{n} {}\n{}", node.op, node.ty),
    }
}

/// The graph as a petgraph `DiGraph` whose node weights are labels, and the
/// map from values to petgraph nodes. Used for dot export and graph algorithms.
pub fn to_petgraph(g: &Graph) -> (DiGraph<String, ()>, HashMap<crate::ValueId, NodeIndex>) {
    let mut pg = DiGraph::new();
    let mut index = HashMap::new();
    for (n, v) in g.walk().into_iter().enumerate() {
        index.insert(v, pg.add_node(label(g, v, n)));
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

#[cfg(test)]
mod tests {
    use super::to_dot;

    const BLOCK: &str = "graph {\n  %0 = input {name=\"x\"} : f32[N,8]\n  %1 = reversible_block %0 : f32[N,8] {\n    f(%2: f32[N,4]) {\n      %3 = tanh %2 : f32[N,4]\n      yield %3\n    }\n    g(%4: f32[N,4]) {\n      yield %4\n    }\n  }\n  output \"y\" = %1\n}\n";

    #[test]
    fn regions_are_clusters_with_an_edge_from_their_block() {
        let dot = to_dot(&crate::parse(BLOCK).unwrap());
        assert!(
            dot.contains("subgraph cluster_n1_0 {\n    label=\"%1 f\";"),
            "{dot}"
        );
        assert!(
            dot.contains("subgraph cluster_n1_1 {\n    label=\"%1 g\";"),
            "{dot}"
        );
        assert!(
            dot.contains("n1 -> y1_0 [style=dashed, lhead=cluster_n1_0];"),
            "{dot}"
        );
        assert!(dot.contains("n3 -> y1_0;"), "{dot}");
        // The region's ops are declared inside its cluster, not at the top level.
        let cluster = dot.find("subgraph cluster_n1_0").unwrap();
        assert!(dot.find("n3 [label=").unwrap() > cluster, "{dot}");
    }

    #[test]
    fn labels_escape_quotes_once() {
        let text = "graph {\n  %0 = input {name=\"x\"} : f32[N,4]\n  %1 = weight {name=\"w\"} : f32[6,4]\n  %2 = linear %0, %1 {activation=\"relu\"} : f32[N,6]\n  output \"y\" = %2\n}\n";
        let dot = to_dot(&crate::parse(text).unwrap());
        assert!(
            dot.contains(r#"n2 [label="%2 linear {activation=\"relu\"}\nf32[N,6]"];"#),
            "{dot}"
        );
        assert!(!dot.contains(r#"\\"#), "doubly escaped: {dot}");
        assert!(
            dot.contains(r#"n1 [label="%1 weight w\nf32[6,4]"];"#),
            "{dot}"
        );
    }
}
