//! Integer variants of the generic tensor ops that the lowered training graph
//! uses (the LSH lowering's bucket keys: argmax and argsort over i64) in the
//! JIT against the interpreter, on random data with many ties.

use ndarray::{ArrayD, IxDyn};
use reformc_backend_llvm::Tensors;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;

/// Deterministic integers in [lo, hi) (xorshift).
fn ints(shape: &[usize], seed: u64, lo: i64, hi: i64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let v: Vec<i64> = (0..shape.iter().product::<usize>())
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (s % (hi - lo) as u64) as i64
        })
        .collect();
    Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

/// Runs `text` in the interpreter and the JIT; every output must be equal.
fn same_as_interpreter(text: &str, inputs: &Tensors) {
    let g = reformc_ir::parse(text).unwrap_or_else(|e| panic!("{e}"));
    reformc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let none = BTreeMap::new();
    let want = reformc_interp::run(&g, inputs, &none).unwrap_or_else(|e| panic!("interp: {e}"));
    let got =
        reformc_backend_llvm::jit_run(&g, inputs, &none).unwrap_or_else(|e| panic!("jit: {e}"));
    assert_eq!(want.len(), got.len());
    for (name, w) in &want {
        assert_eq!(got[name].to_i64(), w.to_i64(), "{name}\n{text}");
    }
}

const ARG_I64: &str = r#"graph {
  %0 = input {name="k"} : i64[B,L,5]
  %1 = argmax %0 {axis=2} : i64[B,L]
  %2 = argmax %0 {axis=1} : i64[B,5]
  %3 = argsort %0 {axis=1} : i64[B,L,5]
  %4 = argsort %0 {axis=2} : i64[B,L,5]
  %5 = gather %0, %3 {axis=1} : i64[B,L,5]
  output "argmax_last" = %1
  output "argmax_mid" = %2
  output "argsort_mid" = %3
  output "argsort_last" = %4
  output "sorted" = %5
}"#;

#[test]
fn i64_argmax_and_stable_argsort_match_the_interpreter() {
    // Few distinct values (ties: the first maximum, stable order), negative
    // ones, and keys as large as the LSH sort keys (bucket * L + position).
    for (seed, (b, l), (lo, hi)) in [
        (1, (1, 7), (0, 3)),
        (2, (2, 33), (-4, 4)),
        (3, (3, 64), (0, 1 << 40)),
        (4, (1, 1), (0, 2)),
    ] {
        let k = ints(&[b, l, 5], seed, lo, hi);
        let inputs = [("k".to_string(), k)].into_iter().collect();
        same_as_interpreter(ARG_I64, &inputs);
    }
}

/// Integer division with broadcasting: the one element-wise loop that stays
/// serial (a zero divisor stops the model from inside the loop).
const DIV_BROADCAST: &str = r#"graph {
  %0 = input {name="a"} : i64[B,L,5]
  %1 = input {name="d"} : i64[L,1]
  %2 = div %0, %1 : i64[B,L,5]
  output "q" = %2
}"#;

#[test]
fn broadcast_integer_division_matches_the_interpreter_and_stops_on_zero() {
    let a = ints(&[2, 9, 5], 11, -50, 50);
    let d = ints(&[9, 1], 12, 1, 7);
    let ins: Tensors = [("a".to_string(), a.clone()), ("d".to_string(), d)].into();
    same_as_interpreter(DIV_BROADCAST, &ins);
    let mut zero = ints(&[9, 1], 13, 1, 7).to_i64();
    zero[[4, 0]] = 0;
    let ins: Tensors = [("a".to_string(), a), ("d".to_string(), Tensor::I64(zero))].into();
    let g = reformc_ir::parse(DIV_BROADCAST).unwrap();
    let err = reformc_backend_llvm::jit_run(&g, &ins, &BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("division by zero"), "{err}");
}
