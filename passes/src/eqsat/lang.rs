//! The egg language translated from the IR.
//!
//! An e-node is an [`IrNode`]: a payload ([`NodeOp`]: the op kind and its
//! attributes, plus the declared result type where the type rules cannot
//! derive it) and the operands as children. Shapes live in types, never in
//! names: two ops are the same e-node exactly when their kinds, attributes,
//! declared types (if any) and children are equal.
//!
//! ```
//! use reformc_passes::eqsat::lang::{IrNode, NodeOp};
//! use reformc_ir::{Attr, Op, OpKind};
//! use egg::{Id, Language};
//! let t = IrNode::new(NodeOp::ir(Op::new(OpKind::Transpose).with("perm", Attr::Ints(vec![1, 0])), None), vec![Id::from(0)]);
//! assert_eq!(t.to_string(), "transpose{perm=[1,0]}");
//! assert_eq!(t.children(), &[Id::from(0)]);
//! ```

use egg::{Id, Language};
use reformc_ir::{Attr, Op, OpKind, TensorType};
use std::cmp::Ordering;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

/// What an e-node computes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeOp {
    /// An IR op without regions. `ty` is the declared result type when the
    /// type rules cannot derive it from the operands (`input`, `weight`,
    /// `constant`, `reshape`, `cast`, ...), `None` when they can.
    Ir {
        /// The op kind and its attributes.
        op: Op,
        /// The declared result type, or `None` when it is derived.
        ty: Option<TensorType>,
    },
    /// Argument `index` of the region body being optimized.
    Arg {
        /// Position in the body's argument list.
        index: u32,
        /// The argument's type.
        ty: TensorType,
    },
    /// A value of an enclosing body that this body uses (its index in the
    /// body's capture list).
    Capture {
        /// Position in the body's capture list.
        index: u32,
        /// The captured value's type.
        ty: TensorType,
    },
    /// An op with regions, kept opaque: its regions live in a side table
    /// (`slot`); its children are its `operands` operands followed by the
    /// outer values its regions capture.
    Opaque {
        /// The op kind and its attributes (the regions are not part of it).
        op: Op,
        /// Index of the op's regions in the side table
        /// ([`BodyEGraph::slots`](super::convert::BodyEGraph::slots)).
        slot: u32,
        /// How many leading children are the op's own operands; the rest
        /// are the values its regions capture.
        operands: u32,
        /// The declared result type: the type rules do not look into regions.
        ty: TensorType,
    },
}

impl NodeOp {
    /// A plain IR op payload.
    pub fn ir(op: Op, ty: Option<TensorType>) -> NodeOp {
        NodeOp::Ir { op, ty }
    }

    /// The op kind (`arg` for arguments and captures).
    pub fn kind(&self) -> OpKind {
        match self {
            NodeOp::Ir { op, .. } | NodeOp::Opaque { op, .. } => op.kind,
            NodeOp::Arg { .. } | NodeOp::Capture { .. } => OpKind::Arg,
        }
    }

    /// The IR op, for `Ir` and `Opaque` payloads.
    pub fn op(&self) -> Option<&Op> {
        match self {
            NodeOp::Ir { op, .. } | NodeOp::Opaque { op, .. } => Some(op),
            _ => None,
        }
    }

    /// A coarse key that sorts first: the variant, then the kind.
    pub fn discriminant(&self) -> (u8, OpKind) {
        match self {
            NodeOp::Ir { op, .. } => (0, op.kind),
            NodeOp::Arg { .. } => (1, OpKind::Arg),
            NodeOp::Capture { .. } => (2, OpKind::Arg),
            NodeOp::Opaque { op, .. } => (3, op.kind),
        }
    }
}

fn cmp_attr(a: &Attr, b: &Attr) -> Ordering {
    fn tag(a: &Attr) -> u8 {
        match a {
            Attr::Unit => 0,
            Attr::Int(_) => 1,
            Attr::Float(_) => 2,
            Attr::Str(_) => 3,
            Attr::Ints(_) => 4,
        }
    }
    match (a, b) {
        (Attr::Int(x), Attr::Int(y)) => x.cmp(y),
        (Attr::Float(x), Attr::Float(y)) => x.to_bits().cmp(&y.to_bits()),
        (Attr::Str(x), Attr::Str(y)) => x.cmp(y),
        (Attr::Ints(x), Attr::Ints(y)) => x.cmp(y),
        _ => tag(a).cmp(&tag(b)),
    }
}

fn cmp_op(a: &Op, b: &Op) -> Ordering {
    a.kind.cmp(&b.kind).then_with(|| {
        let mut x = a.attrs.iter();
        let mut y = b.attrs.iter();
        loop {
            match (x.next(), y.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some((ka, va)), Some((kb, vb))) => {
                    let o = ka.cmp(kb).then_with(|| cmp_attr(va, vb));
                    if o != Ordering::Equal {
                        return o;
                    }
                }
            }
        }
    })
}

fn cmp_ty(a: &TensorType, b: &TensorType) -> Ordering {
    a.dtype.cmp(&b.dtype).then_with(|| a.shape.cmp(&b.shape))
}

fn cmp_opt_ty(a: &Option<TensorType>, b: &Option<TensorType>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => cmp_ty(x, y),
    }
}

impl Ord for NodeOp {
    fn cmp(&self, other: &Self) -> Ordering {
        self.discriminant()
            .cmp(&other.discriminant())
            .then_with(|| match (self, other) {
                (NodeOp::Ir { op: a, ty: ta }, NodeOp::Ir { op: b, ty: tb }) => {
                    cmp_op(a, b).then_with(|| cmp_opt_ty(ta, tb))
                }
                (NodeOp::Arg { index: a, ty: ta }, NodeOp::Arg { index: b, ty: tb })
                | (NodeOp::Capture { index: a, ty: ta }, NodeOp::Capture { index: b, ty: tb }) => {
                    a.cmp(b).then_with(|| cmp_ty(ta, tb))
                }
                (
                    NodeOp::Opaque {
                        op: a,
                        slot: sa,
                        operands: na,
                        ty: ta,
                    },
                    NodeOp::Opaque {
                        op: b,
                        slot: sb,
                        operands: nb,
                        ty: tb,
                    },
                ) => sa
                    .cmp(sb)
                    .then_with(|| na.cmp(nb))
                    .then_with(|| cmp_op(a, b))
                    .then_with(|| cmp_ty(ta, tb)),
                _ => Ordering::Equal,
            })
    }
}

impl PartialOrd for NodeOp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for NodeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeOp::Ir { op, ty } => {
                write!(f, "{}", op.kind)?;
                write_attrs(f, op)?;
                if let Some(t) = ty {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            NodeOp::Arg { index, ty } => write!(f, "arg{index}:{ty}"),
            NodeOp::Capture { index, ty } => write!(f, "capture{index}:{ty}"),
            NodeOp::Opaque { op, slot, ty, .. } => {
                write!(f, "{}#{slot}", op.kind)?;
                write_attrs(f, op)?;
                write!(f, ":{ty}")
            }
        }
    }
}

fn write_attrs(f: &mut fmt::Formatter<'_>, op: &Op) -> fmt::Result {
    if op.attrs.is_empty() {
        return Ok(());
    }
    f.write_str("{")?;
    for (i, (k, v)) in op.attrs.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        match v {
            Attr::Unit => f.write_str(k)?,
            v => write!(f, "{k}={v}")?,
        }
    }
    f.write_str("}")
}

/// One e-node: a shared payload and the operand classes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IrNode {
    /// The payload, behind an `Arc` so that cloning an e-node (which egg does
    /// often) does not copy its attributes and types.
    pub op: Arc<NodeOp>,
    /// The operand e-classes, in operand order (for an opaque node, followed
    /// by the values its regions capture).
    pub children: Vec<Id>,
}

impl IrNode {
    /// An e-node from its payload and children.
    pub fn new(op: NodeOp, children: Vec<Id>) -> IrNode {
        IrNode {
            op: Arc::new(op),
            children,
        }
    }

    /// The IR op if this is a plain `Ir` node of kind `kind`.
    pub fn ir_of(&self, kind: OpKind) -> Option<&Op> {
        match &*self.op {
            NodeOp::Ir { op, .. } if op.kind == kind => Some(op),
            _ => None,
        }
    }
}

impl Ord for IrNode {
    fn cmp(&self, other: &Self) -> Ordering {
        self.op
            .cmp(&other.op)
            .then_with(|| self.children.cmp(&other.children))
    }
}

impl PartialOrd for IrNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Language for IrNode {
    type Discriminant = (u8, OpKind);

    fn discriminant(&self) -> Self::Discriminant {
        self.op.discriminant()
    }

    fn matches(&self, other: &Self) -> bool {
        self.children.len() == other.children.len() && self.op == other.op
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

impl fmt::Display for IrNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reformc_ir::{DType, Dim};

    #[test]
    fn order_starts_with_the_discriminant() {
        let t = TensorType::new(DType::F32, vec![Dim::sym("N")]);
        let mut nodes = [
            IrNode::new(
                NodeOp::Capture {
                    index: 0,
                    ty: t.clone(),
                },
                vec![],
            ),
            IrNode::new(NodeOp::ir(Op::new(OpKind::Exp), None), vec![Id::from(3)]),
            IrNode::new(
                NodeOp::Arg {
                    index: 1,
                    ty: t.clone(),
                },
                vec![],
            ),
            IrNode::new(
                NodeOp::ir(Op::new(OpKind::Add), None),
                vec![Id::from(1), Id::from(2)],
            ),
            IrNode::new(NodeOp::ir(Op::new(OpKind::Exp), None), vec![Id::from(1)]),
        ];
        nodes.sort();
        let d: Vec<_> = nodes.iter().map(|n| n.discriminant()).collect();
        let mut sorted = d.clone();
        sorted.sort();
        assert_eq!(d, sorted);
        assert_eq!(nodes[0].children, vec![Id::from(1), Id::from(2)]);
        assert_eq!(nodes[1].children, vec![Id::from(1)]);
    }

    #[test]
    fn attributes_distinguish_nodes() {
        let a = |v: f64| {
            IrNode::new(
                NodeOp::ir(
                    Op::new(OpKind::Constant).with("value", Attr::Float(v)),
                    None,
                ),
                vec![],
            )
        };
        assert_ne!(a(1.0), a(2.0));
        assert!(a(1.0) < a(2.0));
        assert!(!a(1.0).matches(&a(2.0)));
        assert!(a(1.0).matches(&a(1.0)));
        assert_eq!(a(0.5).to_string(), "constant{value=0.5}");
    }
}
