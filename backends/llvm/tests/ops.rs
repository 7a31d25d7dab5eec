//! Op-level differential tests: hand-written graphs (broadcasting
//! elementwise ops, layout ops, casts, `seq_chunk`, `attention {kv_chunk}`,
//! `linear {activation}` epilogues) run by the JIT and the interpreter; and
//! the input checks of generated code.

use inkwell::context::Context;
use ndarray::{ArrayD, IxDyn};
use reformc_backend_llvm::{abi::err, BackendError, CompileOptions, DimLimit, JitModel, Tensors};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn f32t(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), values(n, seed)).unwrap())
}

fn compare(text: &str, inputs: &Tensors, weights: &Tensors, tol: f64) {
    let g = reformc_ir::parse(text).unwrap_or_else(|e| panic!("{e}"));
    reformc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let want = reformc_interp::run(&g, inputs, weights).unwrap_or_else(|e| panic!("interp: {e}"));
    let got =
        reformc_backend_llvm::jit_run(&g, inputs, weights).unwrap_or_else(|e| panic!("jit: {e}"));
    assert_eq!(want.len(), got.len());
    for (name, w) in &want {
        let x = &got[name];
        assert_eq!(x.dtype(), w.dtype(), "{name}");
        assert_eq!(x.shape(), w.shape(), "{name}");
        let (a, b) = (x.to_f64(), w.to_f64());
        let d = (&a - &b)
            .iter()
            .zip(b.iter())
            .map(|(d, r)| d.abs() / r.abs().max(1.0))
            .fold(0.0f64, f64::max);
        assert!(
            d <= tol,
            "output {name}: JIT differs from the interpreter by {d:e}"
        );
    }
}

const ELEMENTWISE: &str = r#"graph {
  %0 = input {name="x"} : f32[B,L,8]
  %1 = input {name="y"} : f32[L,8]
  %2 = add %0, %1 : f32[B,L,8]
  %3 = sub %2, %0 : f32[B,L,8]
  %4 = mul %3, %0 : f32[B,L,8]
  %5 = exp %4 : f32[B,L,8]
  %6 = div %5, %2 : f32[B,L,8]
  %7 = max %6, %1 : f32[B,L,8]
  %8 = min %7, %0 : f32[B,L,8]
  %9 = tanh %8 : f32[B,L,8]
  %10 = neg %9 : f32[B,L,8]
  %11 = act %10 {fn="gelu"} : f32[B,L,8]
  %12 = act %11 {fn="gelu_new"} : f32[B,L,8]
  %13 = act %12 {fn="silu"} : f32[B,L,8]
  %14 = act %13 {fn="sigmoid"} : f32[B,L,8]
  %15 = act %0 {fn="relu"} : f32[B,L,8]
  %16 = act %0 {fn="gelu_fast"} : f32[B,L,8]
  %17 = log %5 : f32[B,L,8]
  %18 = sqrt %5 : f32[B,L,8]
  %19 = rsqrt %5 : f32[B,L,8]
  %20 = lt %0, %1 : bool[B,L,8]
  %21 = select %20, %15, %16 : f32[B,L,8]
  %22 = eq %0, %0 : bool[B,L,8]
  output "a" = %14
  output "b" = %17
  output "c" = %18
  output "d" = %19
  output "e" = %21
  output "f" = %22
}
"#;

#[test]
fn elementwise_ops_with_broadcasting() {
    let mut inputs = BTreeMap::new();
    inputs.insert("x".to_string(), f32t(&[3, 5, 8], 1));
    inputs.insert("y".to_string(), f32t(&[5, 8], 2));
    compare(ELEMENTWISE, &inputs, &BTreeMap::new(), 1e-6);
}

const LAYOUT: &str = r#"graph {
  %0 = input {name="x"} : f32[B,L,8]
  %1 = input {name="ids"} : i64[B,L]
  %2 = transpose %0 {perm=[2,0,1]} : f32[8,B,L]
  %3 = reshape %2 : f32[2,4,B,L]
  %4 = slice %3 {axis=1, end=3, start=1} : f32[2,2,B,L]
  %5 = index %4 {axis=0, index=1} : f32[2,B,L]
  %6 = concat %5, %2, %5 {axis=0} : f32[12,B,L]
  %7 = pad_to_multiple %1 {axis=1, min_len=2, multiple=4, value=7} : i64[B,P]
  %8 = iota %7 {axis=1} : i64[P]
  %9 = cast %0 : i64[B,L,8]
  %10 = cast %9 : f32[B,L,8]
  %11 = cast %7 : f32[B,P]
  %12 = truncate %11, %1 {axis=1} : f32[B,L]
  %13 = add %8, %8 : i64[P]
  %14 = constant {value=2.5} : f32[]
  %15 = mul %12, %14 : f32[B,L]
  output "a" = %6
  output "b" = %7
  output "c" = %13
  output "d" = %10
  output "e" = %15
}
"#;

#[test]
fn layout_ops_and_casts() {
    for (b, l) in [(1usize, 1usize), (2, 5), (3, 8), (1, 2)] {
        let mut inputs = BTreeMap::new();
        inputs.insert("x".to_string(), f32t(&[b, l, 8], 3));
        let ids: Vec<i64> = (0..b * l).map(|i| (i * 7 % 11) as i64).collect();
        inputs.insert(
            "ids".to_string(),
            Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[b, l]), ids).unwrap()),
        );
        let mut x = f32t(&[b, l, 8], 3);
        if let Tensor::F32(a) = &mut x {
            a.mapv_inplace(|v| v * 10.0);
        }
        inputs.insert("x".to_string(), x);
        compare(LAYOUT, &inputs, &BTreeMap::new(), 0.0);
    }
}

const CHUNKED: &str = r#"graph {
  %0 = input {name="x"} : f32[B,L,4]
  %1 = weight {name="w"} : f32[6,4]
  %2 = weight {name="b"} : f32[6]
  %3 = seq_chunk %0 {axis=1, size=3} : f32[B,L,6] {
    body(%4: f32[B,C,4]) {
      %5 = linear %4, %1, %2 {activation="silu"} : f32[B,C,6]
      %6 = add %5, %2 : f32[B,C,6]
      yield %6
    }
  }
  %7 = seq_chunk %3 {axis=0, size=2} : f32[B,L,6] {
    body(%8: f32[D,L,6]) {
      %9 = exp %8 : f32[D,L,6]
      yield %9
    }
  }
  %10 = linear %0, %1 : f32[B,L,6]
  output "y" = %7
  output "z" = %10
}
"#;

#[test]
fn seq_chunk_along_inner_and_outer_axes() {
    let mut w = BTreeMap::new();
    w.insert("w".to_string(), f32t(&[6, 4], 4));
    w.insert("b".to_string(), f32t(&[6], 5));
    for (b, l) in [(1usize, 1usize), (3, 7), (2, 3), (5, 10)] {
        let mut inputs = BTreeMap::new();
        inputs.insert("x".to_string(), f32t(&[b, l, 4], 6));
        compare(CHUNKED, &inputs, &w, 1e-5);
    }
}

const ATTENTION: &str = r#"graph {
  %0 = input {name="q"} : f32[B,L,8]
  %1 = input {name="k"} : f32[B,L,8]
  %2 = input {name="v"} : f32[B,L,12]
  %3 = input {name="attention_mask"} : i64[B,L]
  %4 = attention %0, %1, %2, %3 {causal, heads=2, kv_chunk=3, scale=0.5} : f32[B,L,12]
  %5 = attention %0, %1, %2, %3 {causal, heads=2, scale=0.5} : f32[B,L,12]
  %6 = attention %0, %0, %2, %3 {heads=2, key_norm, kv_chunk=4, scale=0.5, self_mask} : f32[B,L,12]
  %7 = attention %0, %1, %2 {heads=2, scale=0.25} : f32[B,L,12]
  %8 = weight {name="w"} : f32[5,12]
  %9 = linear %4, %8 {activation="gelu"} : f32[B,L,5]
  %10 = linear %5, %8 {activation="tanh"} : f32[B,L,5]
  %11 = linear %6, %8 {activation="sigmoid"} : f32[B,L,5]
  %12 = linear %7, %8 {activation="gelu_new"} : f32[B,L,5]
  %13 = linear %7, %8 {activation="gelu_fast"} : f32[B,L,5]
  %14 = linear %7, %8 {activation="relu"} : f32[B,L,5]
  output "a" = %9
  output "b" = %10
  output "c" = %11
  output "d" = %12
  output "e" = %13
  output "f" = %14
}
"#;

#[test]
fn attention_with_kv_chunk_and_linear_epilogues() {
    let mut w = BTreeMap::new();
    w.insert("w".to_string(), f32t(&[5, 12], 7));
    for (b, l) in [(1usize, 1usize), (2, 7), (3, 16)] {
        let mut inputs = BTreeMap::new();
        inputs.insert("q".to_string(), f32t(&[b, l, 8], 8));
        inputs.insert("k".to_string(), f32t(&[b, l, 8], 9));
        inputs.insert("v".to_string(), f32t(&[b, l, 12], 10));
        let mask: Vec<i64> = (0..b * l).map(|i| i64::from(i % 5 != 3)).collect();
        inputs.insert(
            "attention_mask".to_string(),
            Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[b, l]), mask).unwrap()),
        );
        compare(ATTENTION, &inputs, &w, 1e-4);
    }
}

/// Every fusion path of the LLVM backend: the first block runs in place (its
/// input dies there) with layer-norm-prologue two-layer stacks accumulated
/// onto both halves; the second must copy its input (read again by the final
/// add), its f yields a non-linear (an add follows) and its g reads the
/// strided half with a non-linear op (a contiguous copy first) and shares
/// one norm between two linears.
const FUSED: &str = r#"graph {
  %0 = input {name="x"} : f32[B,L,8]
  %1 = weight {name="g"} : f32[4]
  %2 = weight {name="b"} : f32[4]
  %3 = weight {name="w1"} : f32[6,4]
  %4 = weight {name="w2"} : f32[4,6]
  %5 = weight {name="c"} : f32[6]
  %27 = exp %0 : f32[B,L,8]
  %6 = reversible_block %27 : f32[B,L,8] {
    f(%7: f32[B,L,4]) {
      %8 = layer_norm %7, %1, %2 {eps=1e-5} : f32[B,L,4]
      %9 = linear %8, %3 : f32[B,L,6]
      %10 = linear %9, %4, %2 : f32[B,L,4]
      yield %10
    }
    g(%11: f32[B,L,4]) {
      %12 = layer_norm %11, %1, %2 {eps=1e-5} : f32[B,L,4]
      %13 = linear %12, %3 {activation="relu"} : f32[B,L,6]
      %14 = linear %13, %4, %2 : f32[B,L,4]
      yield %14
    }
  }
  %15 = reversible_block %6 : f32[B,L,8] {
    f(%16: f32[B,L,4]) {
      %17 = add %16, %16 : f32[B,L,4]
      yield %17
    }
    g(%18: f32[B,L,4]) {
      %19 = tanh %18 : f32[B,L,4]
      %20 = layer_norm %19, %1, %2 {eps=1e-5} : f32[B,L,4]
      %21 = linear %20, %3 : f32[B,L,6]
      %22 = linear %20, %3, %5 : f32[B,L,6]
      %23 = linear %21, %4 : f32[B,L,4]
      %24 = linear %22, %4 : f32[B,L,4]
      %25 = add %23, %24 : f32[B,L,4]
      yield %25
    }
  }
  %26 = add %15, %6 : f32[B,L,8]
  output "y" = %26
}
"#;

#[test]
fn fused_stacks_and_in_place_reversible_blocks_match_the_interpreter() {
    let mut w = BTreeMap::new();
    w.insert("g".to_string(), f32t(&[4], 11));
    w.insert("b".to_string(), f32t(&[4], 12));
    w.insert("w1".to_string(), f32t(&[6, 4], 13));
    w.insert("w2".to_string(), f32t(&[4, 6], 14));
    w.insert("c".to_string(), f32t(&[6], 16));
    for (b, l) in [(1usize, 1usize), (2, 5), (3, 70)] {
        let mut inputs = BTreeMap::new();
        inputs.insert("x".to_string(), f32t(&[b, l, 8], 15));
        compare(FUSED, &inputs, &w, 1e-4);
    }
}

/// Linear pairs (one `rc_dense_pair_f32` call): two projections of a
/// reversible half through one layer norm (strided rows, one with a bias and
/// gelu), a pair of a plain input without a norm, and a third linear of the
/// same norm that stays alone.
const PAIRS: &str = r#"graph {
  %0 = input {name="x"} : f32[B,L,8]
  %1 = weight {name="g"} : f32[4]
  %2 = weight {name="b"} : f32[4]
  %3 = weight {name="wq"} : f32[6,4]
  %4 = weight {name="wv"} : f32[5,4]
  %5 = weight {name="wo"} : f32[4,6]
  %6 = weight {name="c"} : f32[5]
  %7 = weight {name="wx"} : f32[3,8]
  %8 = exp %0 : f32[B,L,8]
  %9 = reversible_block %8 : f32[B,L,8] {
    f(%10: f32[B,L,4]) {
      %11 = layer_norm %10, %1, %2 {eps=1e-5} : f32[B,L,4]
      %12 = linear %11, %3 : f32[B,L,6]
      %13 = linear %11, %4, %6 {activation="gelu"} : f32[B,L,5]
      %14 = linear %11, %4 : f32[B,L,5]
      %15 = reduce %13 {axes=[2], keepdim, kind="sum"} : f32[B,L,1]
      %16 = reduce %14 {axes=[2], keepdim, kind="sum"} : f32[B,L,1]
      %17 = mul %12, %15 : f32[B,L,6]
      %18 = mul %17, %16 : f32[B,L,6]
      %19 = linear %18, %5 : f32[B,L,4]
      yield %19
    }
    g(%20: f32[B,L,4]) {
      yield %20
    }
  }
  %21 = linear %0, %7 : f32[B,L,3]
  %22 = linear %0, %7 {activation="relu"} : f32[B,L,3]
  output "y" = %9
  output "p" = %21
  output "q" = %22
}
"#;

#[test]
fn linear_pairs_match_the_interpreter() {
    let mut w = BTreeMap::new();
    for (name, shape, seed) in [
        ("g", &[4][..], 31),
        ("b", &[4], 32),
        ("wq", &[6, 4], 33),
        ("wv", &[5, 4], 34),
        ("wo", &[4, 6], 35),
        ("c", &[5], 36),
        ("wx", &[3, 8], 37),
    ] {
        w.insert(name.to_string(), f32t(shape, seed));
    }
    let g = reformc_ir::parse(PAIRS).unwrap();
    let f = reformc_passes::fusion::Fusion::new(&g);
    let pairs = g.walk().into_iter().filter(|&v| f.group_of(v).len() == 2);
    assert_eq!(pairs.count(), 2, "the projections and the outer pair");
    for (b, l) in [(1usize, 1usize), (2, 5), (3, 70)] {
        let mut inputs = BTreeMap::new();
        inputs.insert("x".to_string(), f32t(&[b, l, 8], 38));
        compare(PAIRS, &inputs, &w, 1e-5);
    }
}

/// The generic tensor ops (no model lowering makes them; hand-written and
/// training graphs do): batched matmul with a broadcast operand, reductions
/// over one and two axes with and without keepdim, softmax, argmax, argsort
/// and a gather by the argsort permutation.
const TENSOR_OPS: &str = r#"graph {
  %0 = input {name="x"} : f32[B,L,8]
  %1 = weight {name="w"} : f32[1,8,5]
  %2 = matmul %0, %1 : f32[B,L,5]
  %3 = transpose %0 {perm=[0,2,1]} : f32[B,8,L]
  %4 = matmul %0, %3 : f32[B,L,L]
  %5 = reduce %0 {axes=[1], kind="sum"} : f32[B,8]
  %6 = reduce %0 {axes=[0,2], keepdim, kind="max"} : f32[1,L,1]
  %7 = reduce %4 {axes=[2], kind="logsumexp"} : f32[B,L]
  %8 = reduce %0 {axes=[2], kind="mean"} : f32[B,L]
  %9 = softmax %4 {axis=2} : f32[B,L,L]
  %10 = argmax %0 {axis=2} : i64[B,L]
  %11 = argsort %0 {axis=1} : i64[B,L,8]
  %12 = gather %0, %11 {axis=1} : f32[B,L,8]
  output "mm" = %2
  output "mm_batched" = %4
  output "sum" = %5
  output "max" = %6
  output "lse" = %7
  output "mean" = %8
  output "softmax" = %9
  output "argmax" = %10
  output "argsort" = %11
  output "sorted" = %12
}
"#;

#[test]
fn generic_tensor_ops_match_the_interpreter() {
    let mut w = BTreeMap::new();
    w.insert("w".to_string(), f32t(&[1, 8, 5], 21));
    for (b, l) in [(1usize, 1usize), (2, 7), (3, 33)] {
        let mut inputs = BTreeMap::new();
        inputs.insert("x".to_string(), f32t(&[b, l, 8], 22));
        compare(TENSOR_OPS, &inputs, &w, 1e-5);
    }
    // An index outside the axis is a value error with the runtime's message.
    let g = reformc_ir::parse(
        "graph {\n  %0 = input {name=\"x\"} : f32[N,4]\n  %1 = input {name=\"i\"} : i64[N,2]\n  %2 = gather %0, %1 {axis=1} : f32[N,2]\n  output \"y\" = %2\n}",
    )
    .unwrap();
    let mut inputs = BTreeMap::new();
    inputs.insert("x".to_string(), f32t(&[1, 4], 23));
    let idx = ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![0i64, 4]).unwrap();
    inputs.insert("i".to_string(), Tensor::I64(idx));
    let (code, msg) = err_of(reformc_backend_llvm::jit_run(&g, &inputs, &BTreeMap::new()));
    assert_eq!(code, err::VALUE, "{msg}");
    assert!(msg.contains("gather index 4 is out of range"), "{msg}");
}

fn err_of(r: Result<Tensors, BackendError>) -> (i32, String) {
    match r {
        Err(BackendError::Run { code, message }) => (code, message),
        other => panic!("expected a run error, got {other:?}"),
    }
}

#[test]
fn generated_code_rejects_bad_inputs_with_codes_and_messages() {
    let text = r#"graph {
  %0 = input {name="ids"} : i64[B,L]
  %1 = input {name="attention_mask"} : i64[B,L]
  %2 = input {name="r"} : f32[P,3]
  %3 = pad_to_multiple %0 {axis=1, min_len=2, multiple=4, value=0} : i64[B,P]
  %4 = weight {name="t"} : f32[10,3]
  %5 = embedding %3, %4 : f32[B,P,3]
  %6 = add %5, %2 : f32[B,P,3]
  %7 = cast %1 : f32[B,L]
  %8 = truncate %6, %0 {axis=1} : f32[B,L,3]
  output "y" = %8
  output "m" = %7
}
"#;
    let g = reformc_ir::parse(text).unwrap();
    let mut w = BTreeMap::new();
    w.insert("t".to_string(), f32t(&[10, 3], 1));
    let ctx = Context::create();
    let opts = CompileOptions {
        limits: vec![DimLimit {
            symbol: "P".into(),
            max: 8,
            what: "padded length".into(),
        }],
        ..CompileOptions::default()
    };
    let m = JitModel::with_options(&ctx, &g, &w, &opts).unwrap();
    let ids = |b: usize, l: usize, v: i64| Tensor::I64(ArrayD::from_elem(IxDyn(&[b, l]), v));
    let good = |b, l| {
        let mut i = BTreeMap::new();
        i.insert("ids".to_string(), ids(b, l, 3));
        i.insert("attention_mask".to_string(), ids(b, l, 1));
        i.insert("r".to_string(), f32t(&[4, 3], 2));
        i
    };
    // A good run with padding (L=3 -> P=4): the shapes follow the inputs.
    let out = m.run(&good(1, 3)).unwrap();
    assert_eq!(out["y"].shape(), &[1, 3, 3]);
    assert_eq!(out["m"].shape(), &[1, 3]);
    // `r` says P = 4, but L=5 pads to 8: checked where P is computed.
    let (code, msg) = err_of(m.run(&good(2, 5)));
    assert_eq!(code, err::SHAPE, "{msg}");
    assert!(
        msg.contains(
            "pad_to_multiple: P (set by input `r` axis 0): computed 8, but the inputs say 4"
        ),
        "{msg}"
    );
    // Wrong dtype.
    let mut i = good(1, 3);
    i.insert("ids".into(), f32t(&[1, 3], 3));
    let (code, msg) = err_of(m.run(&i));
    assert_eq!(code, err::DTYPE, "{msg}");
    assert!(
        msg.contains("input `ids`: expected i64[B,L], found f32[1,3]"),
        "{msg}"
    );
    // Wrong rank.
    let mut i = good(1, 3);
    i.insert(
        "attention_mask".into(),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[3]), 1)),
    );
    let (code, msg) = err_of(m.run(&i));
    assert_eq!(code, err::RANK, "{msg}");
    // Inconsistent B.
    let mut i = good(2, 3);
    i.insert("attention_mask".into(), ids(1, 3, 1));
    let (code, msg) = err_of(m.run(&i));
    assert_eq!(code, err::SHAPE, "{msg}");
    assert!(
        msg.contains("axis 0 must be 2 (B, set by input `ids` axis 0)"),
        "{msg}"
    );
    // A fixed dim.
    let mut i = good(1, 3);
    i.insert("r".into(), f32t(&[4, 2], 3));
    let (code, msg) = err_of(m.run(&i));
    assert_eq!(code, err::SHAPE, "{msg}");
    // Over the compiled limit: P = 12 > 8.
    let mut i = good(1, 9);
    i.insert("r".into(), f32t(&[12, 3], 2));
    let (code, msg) = err_of(m.run(&i));
    assert_eq!(code, err::SHAPE, "{msg}");
    assert!(
        msg.contains("padded length: 12 exceeds the compiled maximum 8"),
        "{msg}"
    );
    // An id outside the table: the kernel's error, as a value error.
    let mut i = good(1, 3);
    i.insert("ids".into(), ids(1, 3, 10));
    let (code, msg) = err_of(m.run(&i));
    assert_eq!(code, err::VALUE, "{msg}");
    assert!(msg.contains("embedding"), "{msg}");
    // Empty inputs are rejected, not computed.
    let (code, msg) = err_of(m.run(&good(0, 3)));
    assert_eq!(code, err::SHAPE, "{msg}");
    // After all this, a good run still works (nothing leaked into the state).
    assert!(m.run(&good(2, 3)).is_ok());
}

/// Graphs that the passes produce: the `chunk` pass puts feed-forward
/// branches and the LM head into `seq_chunk`s, the `attention` pass turns
/// full attention into chunked-exact (`kv_chunk`).
#[test]
fn graphs_after_the_chunk_and_attention_passes() {
    use reformc_passes::{Pass, PassOptions};
    let text = r#"graph {
  %0 = input {name="x"} : f32[B,P,8]
  %1 = input {name="attention_mask"} : i64[B,P]
  %2 = weight {name="w1"} : f32[16,8]
  %3 = weight {name="b1"} : f32[16]
  %4 = weight {name="w2"} : f32[8,16]
  %5 = attention %0, %0, %0, %1 {heads=2, key_norm, scale=0.5, self_mask} : f32[B,P,8]
  %6 = linear %5, %2, %3 {activation="relu"} : f32[B,P,16]
  %7 = linear %6, %4 : f32[B,P,8]
  output "logits" = %7
}
"#;
    let mut g = reformc_ir::parse(text).unwrap();
    let opts = PassOptions {
        attention: Some("exact".into()),
        kv_chunk: Some(3),
        chunk_size_lm_head: Some(4),
        ..Default::default()
    };
    reformc_passes::attention::AttentionPass
        .run(&mut g, &opts)
        .unwrap();
    reformc_passes::chunk::ChunkPass.run(&mut g, &opts).unwrap();
    let printed = reformc_ir::print(&g);
    assert!(printed.contains("kv_chunk=3"), "{printed}");
    assert!(printed.contains("seq_chunk"), "{printed}");
    let mut w = BTreeMap::new();
    w.insert("w1".to_string(), f32t(&[16, 8], 11));
    w.insert("b1".to_string(), f32t(&[16], 12));
    w.insert("w2".to_string(), f32t(&[8, 16], 13));
    for (b, p) in [(1usize, 5usize), (2, 8), (1, 1)] {
        let mut inputs = BTreeMap::new();
        inputs.insert("x".to_string(), f32t(&[b, p, 8], 14));
        inputs.insert(
            "attention_mask".to_string(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[b, p]), 1)),
        );
        compare(&printed, &inputs, &w, 1e-4);
    }
}

#[test]
fn profiled_runs_report_every_leaf_op() {
    let mut w = BTreeMap::new();
    w.insert("w".to_string(), f32t(&[1, 8, 5], 21));
    let mut inputs = BTreeMap::new();
    inputs.insert("x".to_string(), f32t(&[2, 7, 8], 22));
    let g = reformc_ir::parse(TENSOR_OPS).unwrap();
    let opts = CompileOptions {
        profile: true,
        ..CompileOptions::default()
    };
    let (out, table) = reformc_backend_llvm::jit_run_with(&g, &inputs, &w, &opts).unwrap();
    assert_eq!(out, reformc_backend_llvm::jit_run(&g, &inputs, &w).unwrap());
    let table = table.expect("a profile table");
    for kind in ["matmul", "reduce", "softmax", "argmax", "argsort", "gather"] {
        assert!(
            table.contains(&format!("\n{kind} ")),
            "{kind} missing from\n{table}"
        );
    }
    // The batched product reads its transposed operand in place.
    assert!(!table.contains("\ntranspose "), "{table}");
    // reduce runs 4 times, each op once.
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("reduce ") && l.split_whitespace().nth(1) == Some("4")),
        "{table}"
    );
    let (_, none) =
        reformc_backend_llvm::jit_run_with(&g, &inputs, &w, &CompileOptions::default()).unwrap();
    assert!(none.is_none());
}
