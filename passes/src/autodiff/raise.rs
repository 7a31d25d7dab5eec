//! The step's products of a layer input and a weight back into `linear`s.
//!
//! `lower-model` writes every `linear` as `matmul(x, reshape(transpose(w)))`
//! (plus an `add` of its bias and an `act`) so that `autodiff` needs one rule
//! per tensor op. After differentiation the forward's and the recomputed
//! products are `linear`s again, with the bias and a ReLU in the GEMM's
//! epilogue: the LLVM backend's fusion plan then treats them as in a forward
//! pass (a layer norm as the prologue of the linears that alone read it, a
//! feed-forward as one stack of two layers, the query/key and value
//! projections as a pair), and each fold saves a pass over the product.
//!
//! The bits do not change: `linear` runs the same GEMM over the same weight
//! values, adds the bias after the sum as `add` does, and ReLU is `max(x, 0)`
//! either way. Other activations stay separate ops (the runtime's vector
//! activations and generated code's need not round alike).
//!
//! ```
//! let text = "graph {
//!   %0 = input {name=\"x\"} : f32[B,L,4]
//!   %1 = weight {name=\"w\"} : f32[3,4]
//!   %2 = weight {name=\"b\"} : f32[3]
//!   %3 = transpose %1 {perm=[1,0]} : f32[4,3]
//!   %4 = reshape %3 : f32[1,4,3]
//!   %5 = matmul %0, %4 : f32[B,L,3]
//!   %6 = add %5, %2 : f32[B,L,3]
//!   %7 = act %6 {fn=\"relu\"} : f32[B,L,3]
//!   output \"y\" = %7
//! }";
//! let mut g = reformc_ir::parse(text).unwrap();
//! assert_eq!(reformc_passes::autodiff::raise_linears(&mut g), 1);
//! reformc_passes::cleanup::dce(&mut g).unwrap();
//! let printed = reformc_ir::print(&g);
//! assert!(printed.contains("linear %0, %1, %2 {activation=\"relu\"}"), "{printed}");
//! ```

use reformc_ir::{Attr, Dim, Graph, Op, OpKind, Use, UseLists, ValueId};

/// Rewrites each top-level `matmul(x, reshape(transpose(w)))` of a 2-D
/// weight `w` (with the `add` of a 1-D bias that alone reads it, and the
/// ReLU that alone reads that) into one `linear`, in place of the last op
/// folded, so its readers keep their operand. Returns how many; the folded
/// ops die (run `dce`).
pub fn raise_linears(g: &mut Graph) -> usize {
    let uses = UseLists::new(g);
    // The op that alone reads `v`, once (not an output or a region result).
    let only_reader = |v: ValueId| match uses.users(v) {
        [Use::Operand { user, .. }] => Some(*user),
        _ => None,
    };
    let mut rewrites = Vec::new();
    for &m in &g.body {
        let Some(w) = weight_of(g, m) else { continue };
        let mut inputs = vec![g.node(m).inputs[0], w];
        let mut last = m;
        if let Some((add, bias)) = only_reader(m).and_then(|a| bias_add(g, a, m)) {
            inputs.push(bias);
            last = add;
        }
        let relu = only_reader(last).filter(|&a| is_relu(g, a, last));
        let mut op = Op::new(OpKind::Linear);
        if let Some(layer) = g.node(m).op.attrs.get("layer") {
            op = op.with("layer", layer.clone());
        }
        if let Some(a) = relu {
            op = op.with("activation", Attr::Str("relu".into()));
            last = a;
        }
        rewrites.push((last, op, inputs));
    }
    let n = rewrites.len();
    for (v, op, inputs) in rewrites {
        let node = g.node_mut(v);
        node.op = op;
        node.inputs = inputs;
    }
    n
}

/// The weight `w` when `m` is `matmul(x, reshape(transpose{1,0}(w)))` with
/// `w` a 2-D f32 `weight` `[out, in]` and `x` f32 `[.., in]`.
fn weight_of(g: &Graph, m: ValueId) -> Option<ValueId> {
    let node = g.node(m);
    if node.op.kind != OpKind::Matmul || node.inputs.len() != 2 {
        return None;
    }
    let (x, r) = (node.inputs[0], node.inputs[1]);
    let reshape = g.node(r);
    let t = *reshape.inputs.first()?;
    let transpose = g.node(t);
    let w = *transpose.inputs.first()?;
    let (tx, tw, tr) = (g.ty(x), g.ty(w), g.ty(r));
    let is = |v: ValueId, k: OpKind| g.node(v).op.kind == k;
    let swapped = transpose.op.ints("perm") == Some(&[1, 0][..]);
    // The linear's result, x's rows by `out`, must be the product's type.
    let rows_by_out = |shape: &[Dim]| {
        let mut s = shape.to_vec();
        s.pop();
        s.push(tw.shape[0].clone());
        s
    };
    let shapes = tw.rank() == 2
        && tr.shape == [Dim::Const(1), tw.shape[1].clone(), tw.shape[0].clone()]
        && tx.shape.last() == Some(&tw.shape[1])
        && g.ty(m).shape == rows_by_out(&tx.shape);
    let f32s = [x, w, m]
        .iter()
        .all(|&v| g.ty(v).dtype == reformc_ir::DType::F32);
    (is(r, OpKind::Reshape) && is(t, OpKind::Transpose) && is(w, OpKind::Weight))
        .then_some(())
        .filter(|_| swapped && shapes && f32s)
        .map(|_| w)
}

/// `(add, bias)` when `a` is `add(m, b)` or `add(b, m)` of `m`'s type with a
/// 1-D `b` as wide as `m`'s last axis.
fn bias_add(g: &Graph, a: ValueId, m: ValueId) -> Option<(ValueId, ValueId)> {
    let node = g.node(a);
    if node.op.kind != OpKind::Add || g.ty(a) != g.ty(m) || node.inputs.len() != 2 {
        return None;
    }
    let bias = match (node.inputs[0], node.inputs[1]) {
        (x, b) if x == m && b != m => b,
        (b, x) if x == m && b != m => b,
        _ => return None,
    };
    let tb = g.ty(bias);
    let fits =
        tb.rank() == 1 && tb.dtype == g.ty(m).dtype && g.ty(m).shape.last() == tb.shape.first();
    fits.then_some((a, bias))
}

/// Whether `a` is a ReLU `act` of `x` with `x`'s type.
fn is_relu(g: &Graph, a: ValueId, x: ValueId) -> bool {
    let node = g.node(a);
    node.op.kind == OpKind::Act
        && node.op.str("fn") == Some("relu")
        && node.inputs == [x]
        && g.ty(a) == g.ty(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x @ wᵀ (+ b) (act)` with `tail` appended, raised and cleaned.
    fn raised(tail: &str, b_kind: &str) -> (usize, String) {
        let text = format!(
            "graph {{
  %0 = input {{name=\"x\"}} : f32[B,L,4]
  %1 = weight {{name=\"w\"}} : f32[3,4]
  %2 = {b_kind} {{name=\"b\"}} : f32[3]
  %3 = transpose %1 {{perm=[1,0]}} : f32[4,3]
  %4 = reshape %3 : f32[1,4,3]
  %5 = matmul %0, %4 : f32[B,L,3]
{tail}}}"
        );
        let mut g = reformc_ir::parse(&text).unwrap();
        let n = raise_linears(&mut g);
        crate::cleanup::dce(&mut g).unwrap();
        reformc_ir::verify(&g).unwrap();
        (n, reformc_ir::print(&g))
    }

    #[test]
    fn a_bias_add_read_twice_keeps_the_relu_apart() {
        let (n, text) = raised(
            "  %6 = add %2, %5 : f32[B,L,3]\n  %7 = act %6 {fn=\"relu\"} : f32[B,L,3]\n  output \"y\" = %7\n  output \"z\" = %6\n",
            "weight",
        );
        assert_eq!(n, 1);
        assert!(text.contains("linear %0, %1, %2 :"), "{text}");
        assert!(text.contains("act "), "{text}");
    }

    #[test]
    fn other_activations_stay_ops() {
        let (_, text) = raised(
            "  %6 = add %5, %2 : f32[B,L,3]\n  %7 = act %6 {fn=\"gelu\"} : f32[B,L,3]\n  output \"y\" = %7\n",
            "input",
        );
        assert!(
            text.contains("linear %0, %1, %2 :") && text.contains("fn=\"gelu\""),
            "{text}"
        );
    }

    #[test]
    fn a_product_read_twice_keeps_its_bias_add() {
        let (n, text) = raised(
            "  %6 = add %5, %2 : f32[B,L,3]\n  output \"y\" = %6\n  output \"p\" = %5\n",
            "weight",
        );
        assert_eq!(n, 1);
        assert!(
            text.contains("linear %0, %1 :") && text.contains("add "),
            "{text}"
        );
    }

    #[test]
    fn a_product_that_adds_a_batch_axis_stays_a_matmul() {
        // [N, 4] @ [1, 4, 3] is [1, N, 3]: a linear would give [N, 3].
        let text = "graph {
  %0 = input {name=\"x\"} : f32[N,4]
  %1 = weight {name=\"w\"} : f32[3,4]
  %2 = transpose %1 {perm=[1,0]} : f32[4,3]
  %3 = reshape %2 : f32[1,4,3]
  %4 = matmul %0, %3 : f32[1,N,3]
  output \"y\" = %4
}";
        let mut g = reformc_ir::parse(text).unwrap();
        assert_eq!(raise_linears(&mut g), 0);
    }

    #[test]
    fn a_product_of_activations_stays_a_matmul() {
        // The right operand is an input (a gradient), not a weight.
        let text = "graph {
  %0 = input {name=\"x\"} : f32[B,L,4]
  %1 = input {name=\"w\"} : f32[3,4]
  %2 = transpose %1 {perm=[1,0]} : f32[4,3]
  %3 = reshape %2 : f32[1,4,3]
  %4 = matmul %0, %3 : f32[B,L,3]
  output \"y\" = %4
}";
        let mut g = reformc_ir::parse(text).unwrap();
        assert_eq!(raise_linears(&mut g), 0);
    }
}
