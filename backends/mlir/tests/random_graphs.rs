//! Differential fuzzing of the op set: random small IR graphs
//! (`reformc_testkit::random_graph`, the same generator the LLVM backend's
//! test uses) run by the interpreter and reformc's MLIR CPU pipeline.
//! Integer and bool outputs must agree exactly, float outputs within a
//! relative tolerance.

use reformc_backend_mlir::jit_run;
use reformc_tensor::Tensor;
use reformc_testkit::random_graph::{assert_agrees, random_graph, COVERED};
use std::collections::BTreeMap;

const CASES: u64 = 48;

/// Compares one random graph; returns its text.
fn compare(seed: u64) -> String {
    let b = random_graph(seed);
    let text = b.text();
    let ctx = format!("seed {seed}:\n{text}");
    let g = reformc_ir::parse(&text).unwrap_or_else(|e| panic!("{ctx}{e}"));
    reformc_ir::verify(&g).unwrap_or_else(|e| panic!("{ctx}{e}"));
    let none = BTreeMap::new();
    let want = reformc_interp::run(&g, &b.inputs, &none).unwrap_or_else(|e| panic!("{ctx}{e}"));
    // Arguments in the function's order: the graph's inputs (it has no weights).
    let args: Vec<Tensor> = g
        .inputs()
        .into_iter()
        .map(|(name, _)| b.inputs[name].clone())
        .collect();
    let got = jit_run(&g, &args).unwrap_or_else(|e| panic!("{ctx}mlir: {e}"));
    for ((name, _), x) in g.outputs.iter().zip(&got) {
        assert_agrees(&ctx, name, x, &want[name]);
    }
    text
}

#[test]
fn random_graphs_agree_between_interpreter_and_mlir() {
    let texts: String = (0..CASES).map(compare).collect();
    // The generator must keep covering the ops this test exists for.
    for op in COVERED {
        assert!(texts.matches(op).count() >= 3, "`{op}` rarely generated");
    }
}
