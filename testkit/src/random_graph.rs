//! Differential fuzzing of the op set: random small IR graphs (matmul with
//! broadcast batch dims, gather, argsort, argmax, select, reduce, softmax,
//! elementwise, layout ops, and the backward-pass ops broadcast, scatter_add
//! and act_grad) with random static shapes and their input
//! tensors, shared by the backends' differential tests (interpreter vs LLVM
//! JIT in backends/llvm/tests/random_graphs.rs, vs the MLIR CPU pipeline in
//! backends/mlir/tests/random_graphs.rs).
//!
//! Order-sensitive ops (argsort, argmax, comparisons) only see values that
//! both engines compute bit-identically, so that a rounding difference in
//! a sum cannot flip a permutation and fail a test for no bug.
//!
//! ```
//! let b = reformc_testkit::random_graph::random_graph(7);
//! let g = reformc_ir::parse(&b.text()).unwrap();
//! reformc_ir::verify(&g).unwrap();
//! assert!(!b.inputs.is_empty());
//! ```

use crate::mutate::Rng;
use ndarray::{ArrayD, IxDyn};
use reformc_interp::Tensor;
use std::collections::BTreeMap;

/// The ops a random graph must keep covering (each in at least a few of 64
/// graphs): the generator's tests check it, so that it does not drift.
pub const COVERED: &[&str] = &[
    "= matmul",
    "= gather",
    "= argsort",
    "= argmax",
    "= select",
    "= reduce",
    "= softmax",
    "= transpose",
    "= concat",
    "= slice",
    "= lt",
    "logsumexp",
    "keepdim",
    "= broadcast",
    "= scatter_add",
    "= act_grad",
];

/// A value of the graph being built.
#[derive(Clone)]
struct Val {
    id: usize,
    dtype: &'static str,
    shape: Vec<usize>,
    /// Computed bit-identically by both engines (inputs, layout ops, min/max).
    exact: bool,
}

/// A random graph under construction: its op lines, values and input tensors.
#[derive(Default)]
pub struct Builder {
    lines: Vec<String>,
    vals: Vec<Val>,
    /// The tensors bound to the graph's inputs, by name.
    pub inputs: BTreeMap<String, Tensor>,
}

fn ty(dtype: &str, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("{dtype}[{}]", dims.join(","))
}

impl Builder {
    fn push(&mut self, rhs: String, dtype: &'static str, shape: Vec<usize>, exact: bool) -> Val {
        let id = self.vals.len();
        self.lines
            .push(format!("  %{id} = {rhs} : {}", ty(dtype, &shape)));
        let v = Val {
            id,
            dtype,
            shape,
            exact,
        };
        self.vals.push(v.clone());
        v
    }

    fn input_f32(&mut self, shape: Vec<usize>, rng: &mut Rng) -> Val {
        let name = format!("x{}", self.inputs.len());
        let n = shape.iter().product();
        // A 1/64 grid in [-2, 2): ties happen, which exercises stable argsort.
        let data = (0..n).map(|_| rng.below(256) as f32 / 64.0 - 2.0).collect();
        let t = ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap();
        self.inputs.insert(name.clone(), Tensor::F32(t));
        self.push(format!("input {{name=\"{name}\"}}"), "f32", shape, true)
    }

    fn input_idx(&mut self, shape: Vec<usize>, bound: usize, rng: &mut Rng) -> Val {
        let name = format!("i{}", self.inputs.len());
        let n = shape.iter().product();
        let data = (0..n).map(|_| rng.below(bound) as i64).collect();
        let t = ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap();
        self.inputs.insert(name.clone(), Tensor::I64(t));
        self.push(format!("input {{name=\"{name}\"}}"), "i64", shape, true)
    }

    fn pick(&self, rng: &mut Rng, ok: impl Fn(&Val) -> bool) -> Option<Val> {
        let c: Vec<&Val> = self.vals.iter().filter(|v| ok(v)).collect();
        (!c.is_empty()).then(|| c[rng.below(c.len())].clone())
    }

    /// The graph as IR text; every value is an output.
    pub fn text(&self) -> String {
        let mut s = String::from("graph {\n");
        for l in &self.lines {
            s += l;
            s.push('\n');
        }
        for v in &self.vals {
            s += &format!("  output \"o{}\" = %{}\n", v.id, v.id);
        }
        s + "}\n"
    }
}

fn random_shape(rng: &mut Rng, min_rank: usize) -> Vec<usize> {
    let rank = min_rank + rng.below(4 - min_rank);
    (0..rank).map(|_| 1 + rng.below(5)).collect()
}

fn is_f32(v: &Val) -> bool {
    v.dtype == "f32" && !v.shape.is_empty()
}

/// Appends one random op; returns false when no operand fits.
fn add_op(b: &mut Builder, rng: &mut Rng) -> bool {
    match rng.below(12) {
        0 => unary(b, rng),
        1 => binary(b, rng),
        2 => matmul(b, rng),
        3 => reduce(b, rng),
        4 => softmax(b, rng),
        5 => argsort_gather(b, rng),
        6 => argmax(b, rng),
        7 => gather(b, rng),
        8 => select(b, rng),
        9 => transpose(b, rng),
        10 => reshape_concat(b, rng),
        _ => slice(b, rng),
    }
}

fn unary(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, is_f32) else {
        return false;
    };
    let op = [
        "exp",
        "tanh",
        "neg",
        "act {fn=\"relu\"}",
        "act {fn=\"gelu\"}",
    ][rng.below(5)];
    let (kind, attrs) = op.split_once(' ').unwrap_or((op, ""));
    let exact = x.exact && (kind == "neg" || op.contains("relu"));
    let rhs = format!("{kind} %{} {attrs}", x.id);
    b.push(rhs.trim_end().to_string(), "f32", x.shape, exact);
    true
}

fn binary(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, is_f32) else {
        return false;
    };
    // The second operand is a suffix of the first's shape: numpy broadcasting.
    let cut = rng.below(x.shape.len() + 1);
    let suffix = x.shape[cut..].to_vec();
    let y = match b.pick(rng, |v| v.dtype == "f32" && v.shape == suffix) {
        Some(y) if rng.below(2) == 0 => y,
        _ => b.input_f32(suffix, rng),
    };
    let op = ["add", "sub", "mul", "max", "min"][rng.below(5)];
    let exact = x.exact && y.exact && matches!(op, "max" | "min");
    let rhs = format!("{op} %{}, %{}", x.id, y.id);
    b.push(rhs, "f32", x.shape, exact);
    true
}

fn matmul(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, |v| v.dtype == "f32" && v.shape.len() >= 2) else {
        return false;
    };
    let r = x.shape.len();
    let n = 1 + rng.below(5);
    // Each batch dim of the right operand is x's or 1 (broadcast).
    let mut shape: Vec<usize> = x.shape[..r - 2]
        .iter()
        .map(|&d| if rng.below(2) == 0 { d } else { 1 })
        .collect();
    shape.extend([x.shape[r - 1], n]);
    let w = b.input_f32(shape, rng);
    let mut out = x.shape.clone();
    out[r - 1] = n;
    b.push(format!("matmul %{}, %{}", x.id, w.id), "f32", out, false);
    true
}

fn reduce(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, is_f32) else {
        return false;
    };
    let axes: Vec<usize> = (0..x.shape.len()).filter(|_| rng.below(2) == 0).collect();
    let axes = if axes.is_empty() { vec![0] } else { axes };
    let keep = rng.below(2) == 0;
    let kind = ["sum", "max", "mean", "logsumexp"][rng.below(4)];
    let out: Vec<usize> = (0..x.shape.len())
        .filter_map(|a| match (axes.contains(&a), keep) {
            (true, true) => Some(1),
            (true, false) => None,
            _ => Some(x.shape[a]),
        })
        .collect();
    let list: Vec<String> = axes.iter().map(|a| a.to_string()).collect();
    let keep = if keep { ", keepdim" } else { "" };
    let rhs = format!(
        "reduce %{} {{axes=[{}]{keep}, kind=\"{kind}\"}}",
        x.id,
        list.join(",")
    );
    let exact = x.exact && kind == "max";
    b.push(rhs, "f32", out, exact);
    true
}

fn softmax(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, is_f32) else {
        return false;
    };
    let axis = rng.below(x.shape.len());
    b.push(
        format!("softmax %{} {{axis={axis}}}", x.id),
        "f32",
        x.shape,
        false,
    );
    true
}

fn argsort_gather(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, |v| is_f32(v) && v.exact) else {
        return false;
    };
    let axis = rng.below(x.shape.len());
    let p = b.push(
        format!("argsort %{} {{axis={axis}}}", x.id),
        "i64",
        x.shape.clone(),
        true,
    );
    let rhs = format!("gather %{}, %{} {{axis={axis}}}", x.id, p.id);
    b.push(rhs, "f32", x.shape, true);
    true
}

fn argmax(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, |v| is_f32(v) && v.exact) else {
        return false;
    };
    let axis = rng.below(x.shape.len());
    let mut out = x.shape.clone();
    out.remove(axis);
    b.push(
        format!("argmax %{} {{axis={axis}}}", x.id),
        "i64",
        out,
        true,
    );
    true
}

fn gather(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, is_f32) else {
        return false;
    };
    let axis = rng.below(x.shape.len());
    let mut ishape = x.shape.clone();
    ishape[axis] = 1 + rng.below(6);
    let idx = b.input_idx(ishape.clone(), x.shape[axis], rng);
    let rhs = format!("gather %{}, %{} {{axis={axis}}}", x.id, idx.id);
    b.push(rhs, "f32", ishape, x.exact);
    true
}

fn select(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, |v| is_f32(v) && v.exact) else {
        return false;
    };
    let y = b.input_f32(x.shape.clone(), rng);
    let c = b.push(
        format!("lt %{}, %{}", x.id, y.id),
        "bool",
        x.shape.clone(),
        true,
    );
    let z = b
        .pick(rng, |v| v.dtype == "f32" && v.shape == x.shape)
        .unwrap();
    let rhs = format!("select %{}, %{}, %{}", c.id, z.id, x.id);
    b.push(rhs, "f32", x.shape, z.exact);
    true
}

fn transpose(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, |v| !v.shape.is_empty() && v.dtype != "bool") else {
        return false;
    };
    let mut perm: Vec<usize> = (0..x.shape.len()).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    let out: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let list: Vec<String> = perm.iter().map(|p| p.to_string()).collect();
    let rhs = format!("transpose %{} {{perm=[{}]}}", x.id, list.join(","));
    b.push(rhs, x.dtype, out, x.exact);
    true
}

fn reshape_concat(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, is_f32) else {
        return false;
    };
    let n: usize = x.shape.iter().product();
    let flat = b.push(format!("reshape %{}", x.id), "f32", vec![1, n], x.exact);
    let twice = b.push(
        format!("concat %{}, %{} {{axis=0}}", flat.id, flat.id),
        "f32",
        vec![2, n],
        x.exact,
    );
    let _ = b.push(format!("reshape %{}", twice.id), "f32", vec![n, 2], x.exact);
    true
}

fn slice(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, |v| is_f32(v) && v.shape.iter().any(|&d| d > 1)) else {
        return false;
    };
    let axis = (0..x.shape.len()).find(|&a| x.shape[a] > 1).unwrap();
    let start = rng.below(x.shape[axis]);
    let end = start + 1 + rng.below(x.shape[axis] - start);
    let mut out = x.shape.clone();
    out[axis] = end - start;
    let rhs = format!("slice %{} {{axis={axis}, end={end}, start={start}}}", x.id);
    b.push(rhs, "f32", out, x.exact);
    true
}

/// A random graph of 4 to 9 ops (plus inputs) drawn from `seed`.
pub fn random_graph(seed: u64) -> Builder {
    let mut rng = Rng::new(seed);
    let mut b = Builder::default();
    let s = random_shape(&mut rng, 2);
    b.input_f32(s, &mut rng);
    let s = random_shape(&mut rng, 1);
    b.input_f32(s, &mut rng);
    let mut added = 0;
    while added < 4 + rng.below(6) {
        if add_op(&mut b, &mut rng) {
            added += 1;
        }
    }
    // Drawn after the loop, so the graphs above stay what they were.
    backward_op(&mut b, &mut rng);
    b
}

/// Appends one of the backward-pass ops (or none, one time in four).
fn backward_op(b: &mut Builder, rng: &mut Rng) -> bool {
    match rng.below(4) {
        0 => broadcast(b, rng),
        1 => scatter_add(b, rng),
        2 => act_grad(b, rng),
        _ => false,
    }
}

/// `broadcast` of a value to a random shape it broadcasts to (extra
/// leading axes, unit axes stretched).
fn broadcast(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, is_f32) else {
        return false;
    };
    let mut shape: Vec<usize> = (0..rng.below(2)).map(|_| 1 + rng.below(3)).collect();
    shape.extend(
        x.shape
            .iter()
            .map(|&d| if d == 1 { 1 + rng.below(3) } else { d }),
    );
    let r = b.input_f32(shape.clone(), rng);
    let rhs = format!("broadcast %{}, %{}", x.id, r.id);
    b.push(rhs, "f32", shape, x.exact);
    true
}

/// `scatter_add` of a value into a fresh reference along a random axis.
fn scatter_add(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(src) = b.pick(rng, is_f32) else {
        return false;
    };
    let axis = rng.below(src.shape.len());
    let mut shape = src.shape.clone();
    shape[axis] = 1 + rng.below(5);
    let r = b.input_f32(shape.clone(), rng);
    let idx = b.input_idx(src.shape.clone(), shape[axis], rng);
    let rhs = format!(
        "scatter_add %{}, %{}, %{} {{axis={axis}}}",
        r.id, idx.id, src.id
    );
    b.push(rhs, "f32", shape, false);
    true
}

/// `act_grad` of a finite value (an input or a layout of one: an infinite
/// `x` makes some derivatives NaN in one engine and saturate in another).
fn act_grad(b: &mut Builder, rng: &mut Rng) -> bool {
    let Some(x) = b.pick(rng, |v| is_f32(v) && v.exact) else {
        return false;
    };
    let dy = b.input_f32(x.shape.clone(), rng);
    let names: Vec<&str> = reformc_ir::Activation::ALL
        .iter()
        .filter_map(|a| a.name())
        .collect();
    let name = names[rng.below(names.len())];
    let rhs = format!("act_grad %{}, %{} {{fn=\"{name}\"}}", x.id, dy.id);
    b.push(rhs, "f32", x.shape, false);
    true
}

/// Relative difference, 0 where both are the same infinity or both NaN
/// (chained `exp` may overflow in both engines alike).
fn rel_diff(a: f64, r: f64) -> f64 {
    if a == r || (a.is_nan() && r.is_nan()) {
        0.0
    } else {
        (a - r).abs() / r.abs().max(1.0)
    }
}

/// Panics (naming `ctx` and output `name`) unless an engine's output `got`
/// agrees with the interpreter's `want`: same dtype and shape, f32 within
/// 1e-5 relative, integers and booleans exactly.
pub fn assert_agrees(ctx: &str, name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(
        (got.dtype(), got.shape()),
        (want.dtype(), want.shape()),
        "{ctx}{name}"
    );
    if matches!(want, Tensor::F32(_)) {
        let (a, r) = (got.to_f64(), want.to_f64());
        let d = a
            .iter()
            .zip(r.iter())
            .map(|(d, r)| rel_diff(*d, *r))
            .fold(0.0f64, f64::max);
        assert!(d <= 1e-5, "{ctx}{name}: differs by {d:e}");
    } else {
        assert_eq!(got.to_i64(), want.to_i64(), "{ctx}{name}");
    }
}
