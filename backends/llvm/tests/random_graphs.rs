//! Differential fuzzing of the op set: random small IR graphs
//! (`reformc_testkit::random_graph`) run by the interpreter and the LLVM JIT.
//! Integer and bool outputs must agree exactly, float outputs within a
//! relative tolerance.

use reformc_tensor::Tensor;
use reformc_testkit::random_graph::{random_graph, COVERED};
use std::collections::BTreeMap;

const CASES: u64 = 64;

/// Relative difference, 0 where both are the same infinity or both NaN
/// (chained `exp` may overflow in both engines alike).
fn rel_diff(a: f64, r: f64) -> f64 {
    if a == r || (a.is_nan() && r.is_nan()) {
        0.0
    } else {
        (a - r).abs() / r.abs().max(1.0)
    }
}

/// Compares one random graph; returns its text.
fn compare(seed: u64) -> String {
    let b = random_graph(seed);
    let text = b.text();
    let ctx = format!("seed {seed}:\n{text}");
    let g = reformc_ir::parse(&text).unwrap_or_else(|e| panic!("{ctx}{e}"));
    reformc_ir::verify(&g).unwrap_or_else(|e| panic!("{ctx}{e}"));
    let none = BTreeMap::new();
    let want = reformc_interp::run(&g, &b.inputs, &none).unwrap_or_else(|e| panic!("{ctx}{e}"));
    let got = reformc_backend_llvm::jit_run(&g, &b.inputs, &none)
        .unwrap_or_else(|e| panic!("{ctx}jit: {e}"));
    for (name, w) in &want {
        let x = &got[name];
        assert_eq!(
            (x.dtype(), x.shape()),
            (w.dtype(), w.shape()),
            "{ctx}{name}"
        );
        if matches!(w, Tensor::F32(_)) {
            let (a, r) = (x.to_f64(), w.to_f64());
            let d = a
                .iter()
                .zip(r.iter())
                .map(|(d, r)| rel_diff(*d, *r))
                .fold(0.0f64, f64::max);
            assert!(d <= 1e-5, "{ctx}{name}: differs by {d:e}");
        } else {
            assert_eq!(x.to_i64(), w.to_i64(), "{ctx}{name}");
        }
    }
    text
}

#[test]
fn random_graphs_agree_between_interpreter_and_jit() {
    let texts: String = (0..CASES).map(compare).collect();
    // The generator must keep covering the ops this test exists for.
    for op in COVERED {
        assert!(texts.matches(op).count() >= 3, "`{op}` rarely generated");
    }
}
