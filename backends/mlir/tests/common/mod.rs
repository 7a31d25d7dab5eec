//! Shared by the MLIR backend's differential tests: random arguments, and
//! the comparison of the MLIR CPU pipeline with the reference interpreter.
#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};
use reformc_backend_mlir::jit_run;
use reformc_interp::Tensor;
use std::collections::BTreeMap;

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A random `f32` tensor of `shape` with values in [-1, 1).
pub fn random_f32(shape: &[usize], seed: u64) -> Tensor {
    let data = values(shape.iter().product(), seed);
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap())
}

/// A random `i64` tensor of `shape` with values in [0, hi).
pub fn random_i64(shape: &[usize], hi: i64, seed: u64) -> Tensor {
    let data = values(shape.iter().product(), seed)
        .into_iter()
        .map(|x| (((x as f64 + 1.0) / 2.0 * hi as f64) as i64).clamp(0, hi - 1))
        .collect();
    Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap())
}

/// Parses and verifies `text`, runs it on `args` (weights then inputs, in
/// graph order) in the interpreter and the MLIR JIT, and compares every
/// output: floats within `tol` relative to max(|reference|, 1), integers and
/// booleans exactly.
pub fn compare_args(text: &str, args: Vec<Tensor>, tol: f64) {
    let g = reformc_ir::parse(text).unwrap_or_else(|e| panic!("{e}"));
    reformc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<(String, bool)> = g
        .weights()
        .into_iter()
        .map(|(n, _)| (n.to_string(), true))
        .chain(g.inputs().into_iter().map(|(n, _)| (n.to_string(), false)))
        .collect();
    assert_eq!(names.len(), args.len(), "one tensor per argument");
    let (mut inputs, mut weights) = (BTreeMap::new(), BTreeMap::new());
    for ((name, is_weight), t) in names.iter().zip(&args) {
        if *is_weight {
            weights.insert(name.clone(), t.clone());
        } else {
            inputs.insert(name.clone(), t.clone());
        }
    }
    let want = reformc_interp::run(&g, &inputs, &weights).unwrap_or_else(|e| panic!("{e}"));
    let got = jit_run(&g, &args).unwrap_or_else(|e| panic!("jit: {e}"));
    assert_eq!(got.len(), g.outputs.len());
    for ((name, _), x) in g.outputs.iter().zip(&got) {
        let w = &want[name];
        assert_eq!(x.shape(), w.shape(), "output {name}");
        assert_eq!(x.dtype(), w.dtype(), "output {name}");
        let (x, w) = (x.to_f64(), w.to_f64());
        let exact = matches!(
            want[name],
            Tensor::I64(_) | Tensor::I32(_) | Tensor::Bool(_)
        );
        // NaNs must sit in the same places (a plain max would skip them).
        let d = x
            .iter()
            .zip(w.iter())
            .map(|(&a, &b)| match (a.is_nan(), b.is_nan()) {
                (true, true) => 0.0,
                (false, false) if a == b => 0.0,
                (false, false) => (a - b).abs() / b.abs().max(1.0),
                _ => f64::INFINITY,
            })
            .fold(0.0f64, f64::max);
        let tol = if exact { 0.0 } else { tol };
        assert!(
            d <= tol,
            "output {name}: MLIR differs from the interpreter by {d:e}"
        );
    }
}

/// [`compare_args`] on random `f32` arguments of the given shapes.
pub fn compare(text: &str, shapes: &[&[usize]], tol: f64) {
    let args = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| random_f32(s, i as u64 + 1))
        .collect();
    compare_args(text, args, tol);
}
