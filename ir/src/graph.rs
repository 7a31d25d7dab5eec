//! The SSA dataflow graph: an arena of single-result nodes, blocks and regions.

use crate::{Op, OpKind, TensorType};
use std::fmt;

/// A value: the result of the node with the same index in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    /// Index into [`Graph::nodes`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// One op application with its single result.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The op kind and its attributes.
    pub op: Op,
    /// The operands, in the order the op's schema defines.
    pub inputs: Vec<ValueId>,
    /// The type of the node's result.
    pub ty: TensorType,
    /// Nested regions (only `reversible_block` has them today).
    pub regions: Vec<Region>,
}

impl Node {
    /// A node without regions.
    ///
    /// ```
    /// use reformc_ir::{DType, Node, Op, OpKind, TensorType};
    /// let n = Node::new(Op::new(OpKind::Exp), vec![], TensorType::scalar(DType::F32));
    /// assert!(n.regions.is_empty());
    /// ```
    pub fn new(op: Op, inputs: Vec<ValueId>, ty: TensorType) -> Node {
        Node {
            op,
            inputs,
            ty,
            regions: vec![],
        }
    }
}

/// A nested body: arguments, ops in order, results.
///
/// Ops inside a region may use values defined before the op that owns the
/// region (weights, for instance), like MLIR's regions.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Region {
    /// Argument values (nodes of kind [`OpKind::Arg`]).
    pub args: Vec<ValueId>,
    /// Ops in execution order (arguments excluded).
    pub body: Vec<ValueId>,
    /// Values the region yields.
    pub results: Vec<ValueId>,
}

/// A whole model or kernel: an arena of nodes, the top-level body and named outputs.
///
/// ```
/// use reformc_ir::{DType, Dim, Graph, Op, OpKind, Attr, TensorType};
/// let mut g = Graph::new();
/// let t = TensorType::new(DType::F32, vec![Dim::sym("N")]);
/// let x = g.add(Op::new(OpKind::Input).with("name", Attr::Str("x".into())), vec![], t.clone());
/// let y = g.add(Op::new(OpKind::Exp), vec![x], t);
/// g.set_output("y", y);
/// assert_eq!(g.len(), 2);
/// reformc_ir::verify(&g).unwrap();
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// The arena: node `i` defines `ValueId(i)`, whether it sits in the
    /// top-level body, in a region, or is a region argument.
    pub nodes: Vec<Node>,
    /// Top-level ops in execution order.
    pub body: Vec<ValueId>,
    /// Named graph results.
    pub outputs: Vec<(String, ValueId)>,
    /// Stack of regions under construction (see [`Graph::begin_region`]).
    open: Vec<Region>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Number of nodes in the arena (region nodes included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the arena holds no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node defining `v`.
    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.index()]
    }

    /// Mutable access to the node defining `v`.
    pub fn node_mut(&mut self, v: ValueId) -> &mut Node {
        &mut self.nodes[v.index()]
    }

    /// The type of `v`.
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.nodes[v.index()].ty
    }

    /// Appends an op to the innermost open region, or to the top-level body.
    pub fn add(&mut self, op: Op, inputs: Vec<ValueId>, ty: TensorType) -> ValueId {
        self.add_node(Node {
            op,
            inputs,
            ty,
            regions: vec![],
        })
    }

    /// Appends an op to the top-level body even while regions are open: for
    /// weights and other sources that region bodies capture.
    pub fn add_top(&mut self, op: Op, inputs: Vec<ValueId>, ty: TensorType) -> ValueId {
        let id = self.push_detached(Node {
            op,
            inputs,
            ty,
            regions: vec![],
        });
        self.body.push(id);
        id
    }

    /// Appends a node (with regions) like [`Graph::add`].
    pub fn add_node(&mut self, node: Node) -> ValueId {
        let id = self.push_detached(node);
        match self.open.last_mut() {
            Some(region) => region.body.push(id),
            None => self.body.push(id),
        }
        id
    }

    /// Puts a node in the arena without placing it in any body.
    pub fn push_detached(&mut self, node: Node) -> ValueId {
        let id = ValueId(u32::try_from(self.nodes.len()).expect("more than 2^32 IR nodes"));
        self.nodes.push(node);
        id
    }

    /// Opens a region whose arguments have the given types; ops added until
    /// [`Graph::end_region`] go into it. Returns the argument values.
    pub fn begin_region(&mut self, arg_types: &[TensorType]) -> Vec<ValueId> {
        let args: Vec<ValueId> = arg_types
            .iter()
            .map(|t| {
                self.push_detached(Node {
                    op: Op::new(OpKind::Arg),
                    inputs: vec![],
                    ty: t.clone(),
                    regions: vec![],
                })
            })
            .collect();
        self.open.push(Region {
            args: args.clone(),
            body: vec![],
            results: vec![],
        });
        args
    }

    /// Closes the innermost open region with its results.
    pub fn end_region(&mut self, results: Vec<ValueId>) -> Region {
        let mut region = self.open.pop().expect("end_region without begin_region");
        region.results = results;
        region
    }

    /// Names `v` as a graph output (replacing an output of the same name).
    pub fn set_output(&mut self, name: &str, v: ValueId) {
        match self.outputs.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = v,
            None => self.outputs.push((name.to_string(), v)),
        }
    }

    /// Top-level nodes of a kind, in body order.
    pub fn find(&self, kind: OpKind) -> impl Iterator<Item = ValueId> + '_ {
        self.body
            .iter()
            .copied()
            .filter(move |v| self.node(*v).op.kind == kind)
    }

    /// Graph inputs (not weights), in body order, with their names.
    pub fn inputs(&self) -> Vec<(&str, ValueId)> {
        self.named_sources(OpKind::Input)
    }

    /// Weights, in body order, with their names.
    pub fn weights(&self) -> Vec<(&str, ValueId)> {
        self.named_sources(OpKind::Weight)
    }

    fn named_sources(&self, kind: OpKind) -> Vec<(&str, ValueId)> {
        self.walk()
            .into_iter()
            .filter(|v| self.node(*v).op.kind == kind)
            .filter_map(|v| self.node(v).op.str("name").map(|n| (n, v)))
            .collect()
    }

    /// Every op in execution order, regions expanded before their owner
    /// is finished (pre-order: owner first, then its regions' ops).
    pub fn walk(&self) -> Vec<ValueId> {
        let mut out = Vec::with_capacity(self.nodes.len());
        self.walk_block(&self.body, &mut out);
        out
    }

    fn walk_block(&self, block: &[ValueId], out: &mut Vec<ValueId>) {
        for &v in block {
            out.push(v);
            for r in &self.node(v).regions {
                out.extend(r.args.iter().copied());
                self.walk_block(&r.body, out);
            }
        }
    }
}
