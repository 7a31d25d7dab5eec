//! The e-graph analysis: every e-class carries its result type (dtype and
//! symbolic shape) and, for scalar constants, the constant's value.
//!
//! Types follow the IR's type rules: [`infer_type`] (the IR's own
//! [`reformc_ir::infer_type`], which the verifier checks with) derives a
//! result type from the operand types, and [`check_node`] runs the IR
//! verifier itself on one op. Ops whose result type the rules cannot derive
//! (`input`, `weight`, `constant`, `random_normal`, `reshape`, `cast`,
//! `pad_to_multiple`, `concat` along a symbolic axis) carry their declared
//! type in the e-node payload.
//!
//! Merging two classes of different types is a bug in a rewrite rule: debug
//! builds assert, release builds record the error, which the runner turns
//! into a failed pass.

use super::lang::{IrNode, NodeOp};
use egg::{Analysis, DidMerge, EGraph, Id};
use reformc_ir::{Attr, DType, Graph, Op, OpKind, TensorType};

/// The analysis state: errors found while building or merging classes.
#[derive(Debug, Default, Clone)]
pub struct TypeAnalysis {
    /// Type errors (rule bugs); a non-empty list fails the saturation run.
    pub errors: Vec<String>,
}

/// What every e-class knows about its value.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassData {
    /// The result type of every e-node in the class.
    pub ty: TensorType,
    /// The value, if the class holds a scalar `constant`.
    pub constant: Option<f64>,
}

/// The e-graph reformc saturates.
pub type IrEGraph = EGraph<IrNode, TypeAnalysis>;

impl Analysis<IrNode> for TypeAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut IrEGraph, enode: &IrNode, _id: Id) -> ClassData {
        let ty = match &*enode.op {
            NodeOp::Ir { ty: Some(t), .. }
            | NodeOp::Arg { ty: t, .. }
            | NodeOp::Capture { ty: t, .. }
            | NodeOp::Opaque { ty: t, .. } => t.clone(),
            NodeOp::Ir { op, ty: None } => {
                let operands: Vec<&TensorType> =
                    enode.children.iter().map(|c| &egraph[*c].data.ty).collect();
                match infer_type(op, &operands) {
                    Ok(Some(t)) => t,
                    other => {
                        let why = match other {
                            Err(e) => e,
                            _ => "the result type cannot be derived and none was declared".into(),
                        };
                        let msg = format!("e-node {enode}: {why}");
                        debug_assert!(false, "{msg}");
                        egraph.analysis.errors.push(msg);
                        TensorType::scalar(DType::F32)
                    }
                }
            }
        };
        let constant = match &*enode.op {
            NodeOp::Ir { op, .. } if op.kind == OpKind::Constant && ty.rank() == 0 => {
                op.float("value")
            }
            _ => None,
        };
        ClassData { ty, constant }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        if a.ty != b.ty {
            let msg = format!("merged e-classes of different types {} and {}", a.ty, b.ty);
            debug_assert!(false, "{msg}");
            self.errors.push(msg);
            return DidMerge(false, true);
        }
        match (a.constant, b.constant) {
            (None, Some(v)) => {
                a.constant = Some(v);
                DidMerge(true, false)
            }
            (Some(_), None) => DidMerge(false, true),
            _ => DidMerge(false, false),
        }
    }
}

/// The IR's type rules, re-exported for the rules and the conversion.
pub use reformc_ir::infer_type;

/// Runs the IR verifier on `op` applied to operands of types `operands` with
/// result type `result` (a one-op graph); ops with regions are not checked.
///
/// ```
/// use reformc_passes::eqsat::analysis::check_node;
/// use reformc_ir::{DType, Dim, Op, OpKind, TensorType};
/// let x = TensorType::new(DType::I64, vec![Dim::sym("N")]);
/// let err = check_node(&Op::new(OpKind::Exp), &[&x], &x).unwrap_err();
/// assert!(err.contains("must be a float tensor"));
/// ```
pub fn check_node(op: &Op, operands: &[&TensorType], result: &TensorType) -> Result<(), String> {
    if !op.kind.schema().regions.is_empty() {
        return Ok(());
    }
    let mut g = Graph::new();
    let inputs = operands
        .iter()
        .enumerate()
        .map(|(i, t)| {
            g.add(
                Op::new(OpKind::Input).with("name", Attr::Str(format!("x{i}"))),
                vec![],
                (*t).clone(),
            )
        })
        .collect();
    let y = g.add(op.clone(), inputs, result.clone());
    g.set_output("y", y);
    reformc_ir::verify(&g).map_err(|e| e.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reformc_ir::parse;

    /// `infer_type` derives the type of every derivable node of a graph exercising
    /// every tensor op, and `check_node` accepts it.
    #[test]
    fn agrees_with_the_verifier() {
        let text = r#"graph {
  %0 = input {name="x"} : f32[B,L,8]
  %1 = input {name="ids"} : i64[B,L]
  %2 = weight {name="w"} : f32[16,8]
  %3 = weight {name="t"} : f32[10,8]
  %4 = linear %0, %2 {activation="relu"} : f32[B,L,16]
  %5 = embedding %1, %3 : f32[B,L,8]
  %6 = add %0, %5 : f32[B,L,8]
  %7 = lt %0, %5 : bool[B,L,8]
  %8 = select %7, %0, %5 : f32[B,L,8]
  %9 = transpose %8 {perm=[0,2,1]} : f32[B,8,L]
  %10 = matmul %0, %9 : f32[B,L,L]
  %11 = softmax %10 {axis=2} : f32[B,L,L]
  %12 = reduce %11 {axes=[1], kind="sum", keepdim} : f32[B,1,L]
  %13 = reduce %11 {axes=[0,2], kind="max"} : f32[L]
  %14 = slice %0 {axis=2, start=2, end=6} : f32[B,L,4]
  %15 = concat %14, %14 {axis=2} : f32[B,L,8]
  %16 = index %0 {axis=1, index=0} : f32[B,8]
  %17 = argmax %0 {axis=2} : i64[B,L]
  %18 = argsort %0 {axis=1} : i64[B,L,8]
  %19 = gather %0, %18 {axis=1} : f32[B,L,8]
  %20 = iota %1 {axis=1} : i64[L]
  %21 = truncate %0, %1 {axis=1} : f32[B,L,8]
  %22 = act %6 {fn="gelu"} : f32[B,L,8]
  %23 = attention %0, %0, %0 {heads=2, scale=0.5} : f32[B,L,8]
  %24 = weight {name="g"} : f32[8]
  %25 = layer_norm %0, %24, %24 {eps=1e-5} : f32[B,L,8]
  %26 = neg %0 : f32[B,L,8]
  %27 = concat %0, %0 {axis=1} : f32[B,M,8]
  output "y" = %4
}"#;
        let g = parse(text).unwrap();
        for v in g.walk() {
            let n = g.node(v);
            let operands: Vec<&TensorType> = n.inputs.iter().map(|i| g.ty(*i)).collect();
            match infer_type(&n.op, &operands).unwrap() {
                Some(t) => {
                    assert_eq!(t, n.ty, "{}", n.op);
                    check_node(&n.op, &operands, &t).unwrap_or_else(|e| panic!("{}: {e}", n.op));
                }
                None => assert!(
                    matches!(n.op.kind, OpKind::Input | OpKind::Weight | OpKind::Concat),
                    "{}",
                    n.op
                ),
            }
        }
    }
}
