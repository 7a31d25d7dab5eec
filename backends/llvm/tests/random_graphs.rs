//! Differential fuzzing of the op set: random small IR graphs
//! (`reformc_testkit::random_graph`) run by the interpreter and the LLVM JIT.
//! Integer and bool outputs must agree exactly, float outputs within a
//! relative tolerance.

use reformc_testkit::random_graph::{assert_agrees, random_graph, COVERED};
use std::collections::BTreeMap;

const CASES: u64 = 64;

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
        assert_agrees(&ctx, name, &got[name], w);
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
