//! The interpreter's kernels for the ops that serve the backward pass:
//! `broadcast`, `scatter_add` and `act_grad`, checked by hand, against a
//! naive reference, as the adjoint of `gather`, and against finite
//! differences of the activations.

use ndarray::{ArrayD, IxDyn};
use reformc_interp::nn::{activate, activate_grad, Activation};
use reformc_interp::tensor_ops::{act_grad, broadcast_to, gather, scatter_add};
use reformc_interp::{run, Tensor};
use std::collections::BTreeMap;

fn a<T: Clone>(shape: &[usize], v: &[T]) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()
}

fn flat<T: Copy>(x: &ArrayD<T>) -> Vec<T> {
    x.iter().copied().collect()
}

/// A small deterministic generator (splitmix64), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shape(&mut self, rank: usize) -> Vec<usize> {
        (0..rank).map(|_| 1 + self.below(4)).collect()
    }
    fn floats(&mut self, shape: &[usize]) -> ArrayD<f64> {
        ArrayD::from_shape_fn(IxDyn(shape), |_| self.uniform())
    }
}

fn run_one(text: &str, inputs: &[(&str, Tensor)]) -> Result<Tensor, String> {
    let g = reformc_ir::parse(text).map_err(|e| e.to_string())?;
    reformc_ir::verify(&g).map_err(|e| e.to_string())?;
    let inputs: BTreeMap<String, Tensor> = inputs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let mut out = run(&g, &inputs, &BTreeMap::new()).map_err(|e| e.to_string())?;
    Ok(out.remove("y").expect("output y"))
}

// ---------------------------------------------------------------- broadcast

#[test]
fn broadcast_repeats_unit_axes_and_adds_leading_ones() {
    let x = Tensor::F64(a(&[2, 1], &[1.0, 2.0]));
    let y = broadcast_to(&x, &[2, 2, 3]).unwrap();
    assert_eq!(y.shape(), &[2, 2, 3]);
    assert_eq!(
        flat(&y.to_f64()),
        [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    );
    // Not broadcastable: an error, not a panic.
    let e = broadcast_to(&x, &[3, 3]).unwrap_err();
    assert!(e.contains("[2, 1] does not broadcast to [3, 3]"), "{e}");
}

#[test]
fn broadcast_in_a_graph_binds_the_reference_shape_and_keeps_xs_dtype() {
    let text = "graph {
  %0 = input {name=\"x\"} : i32[1,C]
  %1 = input {name=\"r\"} : f32[B,N,C]
  %2 = broadcast %0, %1 : i32[B,N,C]
  output \"y\" = %2
}";
    let x = Tensor::I32(a(&[1, 2], &[7, -3]));
    let r = Tensor::zeros(reformc_ir::DType::F32, &[2, 3, 2]);
    let y = run_one(text, &[("x", x), ("r", r)]).unwrap();
    assert_eq!(y.dtype(), reformc_ir::DType::I32);
    assert_eq!(y.shape(), &[2, 3, 2]);
    assert_eq!(flat(&y.to_i64()), [7, -3].repeat(6));
}

// -------------------------------------------------------------- scatter_add

#[test]
fn scatter_add_by_hand() {
    // The embedding gradient: table [V=4, D=2], ids [3] broadcast to [3,2].
    let idx = a(&[3, 2], &[2, 2, 0, 0, 2, 2]);
    let dy = a(&[3, 2], &[1.0, 2.0, 10.0, 20.0, 100.0, 200.0]);
    let out = scatter_add::<f64>(&[4, 2], &idx, &dy, 0).unwrap();
    assert_eq!(flat(&out), [10.0, 20.0, 0.0, 0.0, 101.0, 202.0, 0.0, 0.0]);
    // Along the last axis: each row scatters into its own row.
    let idx = a(&[2, 3], &[1, 1, 0, 2, 0, 2]);
    let src = a(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let out = scatter_add::<f64>(&[2, 3], &idx, &src, 1).unwrap();
    assert_eq!(flat(&out), [3.0, 3.0, 0.0, 5.0, 0.0, 10.0]);
    // The result axis may be shorter or longer than the source's.
    let out = scatter_add::<f64>(&[2, 5], &idx, &src, 1).unwrap();
    assert_eq!(out.shape(), &[2, 5]);
    assert_eq!(out.sum(), src.sum());
}

#[test]
fn scatter_add_accumulates_in_row_major_order() {
    // 1 + 1e-16 + 1e-16 ... in f64 depends on the order: sequential
    // row-major accumulation gives exactly 1 for each of these.
    let src = a(&[4], &[1.0, 1e-16, 1e-16, 1e-16]);
    let out = scatter_add::<f64>(&[1], &a(&[4], &[0, 0, 0, 0]), &src, 0).unwrap();
    assert_eq!(out[[0]], ((1.0 + 1e-16) + 1e-16) + 1e-16);
    let src = a(&[4], &[1e-16, 1e-16, 1e-16, 1.0]);
    let out = scatter_add::<f64>(&[1], &a(&[4], &[0, 0, 0, 0]), &src, 0).unwrap();
    assert_eq!(out[[0]], ((1e-16 + 1e-16) + 1e-16) + 1.0);
}

#[test]
fn scatter_add_index_out_of_range_names_position_and_value() {
    let idx = a(&[2, 2], &[0, 1, 5, 0]);
    let src = a(&[2, 2], &[1.0f32; 4]);
    let e = scatter_add(&[3, 2], &idx, &src, 0).unwrap_err();
    assert_eq!(
        e,
        "scatter_add index 5 at position [1, 0] is out of range for axis 0 of length 3"
    );
    let idx = a(&[2, 2], &[0, 1, 0, -1]);
    let e = scatter_add(&[3, 2], &idx, &src, 0).unwrap_err();
    assert!(e.contains("index -1 at position [1, 1]"), "{e}");
}

/// `scatter_add` written the obvious way, over flat offsets.
fn naive_scatter_add(
    shape: &[usize],
    idx: &ArrayD<i64>,
    src: &ArrayD<f64>,
    axis: usize,
) -> Vec<f64> {
    let strides =
        |s: &[usize]| -> Vec<usize> { (0..s.len()).map(|i| s[i + 1..].iter().product()).collect() };
    let (ss, os) = (strides(src.shape()), strides(shape));
    let src_shape = src.shape().to_vec();
    let (idx, src) = (flat(idx), flat(src));
    let mut out = vec![0.0; shape.iter().product()];
    for (k, v) in src.iter().enumerate() {
        let mut off = 0;
        for d in 0..shape.len() {
            let c = if d == axis {
                idx[k] as usize
            } else {
                (k / ss[d]) % src_shape[d]
            };
            off += c * os[d];
        }
        out[off] += v;
    }
    out
}

/// Random (ref shape, idx, src, axis) with src's axis length independent of ref's.
fn random_case(rng: &mut Rng) -> (Vec<usize>, ArrayD<i64>, ArrayD<f64>, usize) {
    let rank = 1 + rng.below(3);
    let shape = rng.shape(rank);
    let axis = rng.below(rank);
    let mut src_shape = shape.clone();
    src_shape[axis] = 1 + rng.below(5);
    let n = shape[axis];
    let idx = ArrayD::from_shape_fn(IxDyn(&src_shape), |_| rng.below(n) as i64);
    let src = rng.floats(&src_shape);
    (shape, idx, src, axis)
}

#[test]
fn scatter_add_matches_a_naive_reference() {
    let mut rng = Rng(1);
    for _ in 0..200 {
        let (shape, idx, src, axis) = random_case(&mut rng);
        let got = scatter_add(&shape, &idx, &src, axis).unwrap();
        assert_eq!(got.shape(), &shape[..]);
        let want = naive_scatter_add(&shape, &idx, &src, axis);
        // The same additions in the same order: bit-identical.
        assert_eq!(flat(&got), want, "shape {shape:?} axis {axis} idx {idx:?}");
    }
}

#[test]
fn scatter_add_is_the_adjoint_of_gather() {
    // <gather(x, idx), y> == <x, scatter_add(x, idx, y)>.
    let mut rng = Rng(2);
    for _ in 0..200 {
        let (shape, idx, y, axis) = random_case(&mut rng);
        let x = rng.floats(&shape);
        let gx = gather(&Tensor::F64(x.clone()), &idx, axis)
            .unwrap()
            .to_f64();
        let lhs: f64 = gx.iter().zip(y.iter()).map(|(p, q)| p * q).sum();
        let sy = scatter_add(&shape, &idx, &y, axis).unwrap();
        let rhs: f64 = x.iter().zip(sy.iter()).map(|(p, q)| p * q).sum();
        assert!(
            (lhs - rhs).abs() <= 1e-12 * (1.0 + lhs.abs()),
            "{lhs} vs {rhs}"
        );
    }
}

const SCATTER_GRAPH: &str = "graph {
  %0 = input {name=\"table\"} : f32[V,D]
  %1 = input {name=\"ids\"} : i32[N,1]
  %2 = input {name=\"dy\"} : f32[N,D]
  %3 = broadcast %1, %2 : i32[N,D]
  %4 = scatter_add %0, %3, %2 {axis=0} : f32[V,D]
  output \"y\" = %4
}";

#[test]
fn embedding_gradient_in_a_graph_with_i32_ids() {
    let table = Tensor::zeros(reformc_ir::DType::F32, &[3, 2]);
    let ids = Tensor::I32(a(&[3, 1], &[1, 1, 0]));
    let dy = Tensor::F32(a(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    let y = run_one(
        SCATTER_GRAPH,
        &[("table", table.clone()), ("ids", ids), ("dy", dy.clone())],
    )
    .unwrap();
    assert_eq!(y.dtype(), reformc_ir::DType::F32);
    assert_eq!(flat(&y.to_f64()), [5.0, 6.0, 4.0, 6.0, 0.0, 0.0]);
    // An id past the table: an interpreter error naming the value, not a panic.
    let ids = Tensor::I32(a(&[3, 1], &[1, 3, 0]));
    let e = run_one(SCATTER_GRAPH, &[("table", table), ("ids", ids), ("dy", dy)]).unwrap_err();
    assert_eq!(
        e,
        "%4 = scatter_add: scatter_add index 3 at position [1, 0] is out of range for axis 0 of length 3"
    );
}

// ----------------------------------------------------------------- act_grad

fn named() -> impl Iterator<Item = Activation> {
    Activation::ALL
        .into_iter()
        .filter(|a| *a != Activation::None)
}

#[test]
fn act_grad_by_hand() {
    use Activation::*;
    let d = |f, x: f64| activate_grad(f, x);
    assert_eq!(d(Relu, 0.0), 0.0, "relu'(0) = 0 as in PyTorch");
    assert_eq!(d(Relu, -1.0), 0.0);
    assert_eq!(d(Relu, 1e-30), 1.0);
    assert_eq!(d(Sigmoid, 0.0), 0.25);
    assert_eq!(d(Tanh, 0.0), 1.0);
    assert_eq!(d(Silu, 0.0), 0.5);
    for f in [Gelu, GeluNew, GeluFast] {
        assert_eq!(d(f, 0.0), 0.5, "{f:?}");
    }
    // gelu'(1) = Φ(1) + φ(1) = 0.8413447460685429 + 0.24197072451914337.
    assert!((d(Gelu, 1.0) - 1.0833154705876864).abs() < 1e-15);
    // Far out, every gelu is the identity or zero, silu too.
    for f in [Gelu, GeluNew, GeluFast, Silu] {
        assert!((d(f, 30.0) - 1.0).abs() < 1e-10, "{f:?}");
        assert!(d(f, -30.0).abs() < 1e-10, "{f:?}");
    }
    // The graph op multiplies by dy.
    let x = a(&[3], &[-1.0f64, 0.0, 2.0]);
    let dy = a(&[3], &[5.0f64, 7.0, 3.0]);
    assert_eq!(flat(&act_grad(Relu, &x, &dy).unwrap()), [0.0, 0.0, 3.0]);
    assert_eq!(flat(&act_grad(Sigmoid, &x, &dy).unwrap())[1], 7.0 * 0.25);
    assert!(act_grad(Relu, &x, &a(&[2], &[1.0, 1.0])).is_err());
    // PyTorch's choices at the kinks: hardtanh passes no gradient at either
    // bound, leaky_relu takes the slope at 0.
    assert_eq!(d(Relu6, 0.0), 0.0);
    assert_eq!(d(Relu6, 6.0), 0.0);
    assert_eq!(d(Relu6, 3.0), 1.0);
    assert_eq!(d(LeakyRelu, 0.0), 0.01);
    assert_eq!(d(LeakyRelu, 2.0), 1.0);
    // mish'(0) = tanh(ln 2) = 0.6; quick_gelu'(0) = 1/2.
    assert!((d(Mish, 0.0) - 0.6).abs() < 1e-15);
    assert_eq!(d(QuickGelu, 0.0), 0.5);
}

#[test]
fn new_activations_by_hand() {
    use Activation::*;
    let f = |g, x: f64| activate(g, x);
    assert_eq!(f(Relu6, 7.5), 6.0);
    assert_eq!(f(Relu6, -1.0), 0.0);
    assert_eq!(f(Relu6, 2.5), 2.5);
    assert_eq!(f(LeakyRelu, -3.0), -0.03);
    assert_eq!(f(LeakyRelu, 3.0), 3.0);
    assert_eq!(activate(LeakyRelu, -3.0f32), -3.0f32 * 0.01f32);
    // mish(1) = tanh(ln(1 + e)), quick_gelu(1) = sigmoid(1.702).
    assert!((f(Mish, 1.0) - 0.865_098_388_267_310_3).abs() < 1e-12);
    assert!((f(QuickGelu, 1.0) - 1.0 / (1.0 + (-1.702f64).exp())).abs() < 1e-15);
    // Far out mish is the identity (no overflow to NaN) or zero.
    assert_eq!(f(Mish, 1000.0), 1000.0);
    assert!(f(Mish, -1000.0).abs() < 1e-300);
}

#[test]
fn act_grad_matches_central_differences_in_f64() {
    let mut rng = Rng(3);
    let mut points: Vec<f64> = (-120..=120).map(|i| i as f64 * 0.05 + 0.0123).collect();
    points.extend((0..200).map(|_| rng.uniform() * 8.0));
    let h = 1e-5;
    for f in named() {
        for &x in &points {
            // relu, relu6 and leaky_relu have kinks (at 0, and relu6 at 6): stay
            // off them by more than the step.
            let kinked = matches!(
                f,
                Activation::Relu | Activation::Relu6 | Activation::LeakyRelu
            );
            if kinked && (x.abs() < 4.0 * h || (x - 6.0).abs() < 4.0 * h) {
                continue;
            }
            let fd = (activate(f, x + h) - activate(f, x - h)) / (2.0 * h);
            let d = activate_grad(f, x);
            assert!(
                (d - fd).abs() <= 1e-7,
                "{f:?}'({x}) = {d}, differences {fd}"
            );
        }
    }
}

#[test]
fn act_grad_in_a_graph_in_f32_and_f64() {
    for f in named() {
        let name = f.name().expect("named");
        for dt in ["f32", "f64"] {
            let text = format!(
                "graph {{\n  %0 = input {{name=\"x\"}} : {dt}[N]\n  %1 = input {{name=\"dy\"}} : {dt}[N]\n  \
                 %2 = act_grad %0, %1 {{fn=\"{name}\"}} : {dt}[N]\n  output \"y\" = %2\n}}"
            );
            let xs: Vec<f64> = (0..41).map(|i| -4.0 + 0.2 * i as f64).collect();
            let dys: Vec<f64> = xs.iter().map(|x| 1.5 - x * 0.25).collect();
            let x = Tensor::F64(a(&[xs.len()], &xs));
            let dy = Tensor::F64(a(&[xs.len()], &dys));
            let (x, dy) = if dt == "f32" {
                (
                    x.cast(reformc_ir::DType::F32),
                    dy.cast(reformc_ir::DType::F32),
                )
            } else {
                (x, dy)
            };
            let y = run_one(&text, &[("x", x.clone()), ("dy", dy.clone())]).unwrap();
            assert_eq!(y.dtype().to_string(), dt);
            let (x, dy, y) = (x.to_f64(), dy.to_f64(), y.to_f64());
            for i in 0..xs.len() {
                let want = dy[[i]] * activate_grad(f, x[[i]]);
                let tol = if dt == "f32" {
                    1e-6 * (1.0 + want.abs())
                } else {
                    0.0
                };
                assert!(
                    (y[[i]] - want).abs() <= tol,
                    "{name} {dt} at {}: {} vs {want}",
                    x[[i]],
                    y[[i]]
                );
            }
        }
    }
}
