//! Differential fuzzing of the GPU backend's loop rewrites: random small IR
//! graphs (`reformc_testkit::random_graph`, as the LLVM and MLIR backends'
//! tests use) through `host_check` (bufferization, copies as generics,
//! parallel loops, their interchange and collapse, then run on the CPU)
//! against the interpreter, and each through `compile_ptx`, so that every op
//! the generator covers also lowers to PTX.

use reformc_backend_gpu::{compile_ptx, host_check, GpuOptions};
use reformc_backend_mlir::{emit_module, EmitOptions};
use reformc_testkit::random_graph::{assert_agrees, random_graph, COVERED};
use reformc_testkit::{forward_args, output_types};
use std::collections::BTreeMap;

const CASES: u64 = 48;

/// Compares one random graph on the host, and lowers it to PTX when `ptx`
/// options are given; returns its text.
fn compare(seed: u64, ptx: Option<&GpuOptions>) -> String {
    let b = random_graph(seed);
    let text = b.text();
    let ctx = format!("seed {seed}:\n{text}");
    let g = reformc_ir::parse(&text).unwrap_or_else(|e| panic!("{ctx}{e}"));
    let none = BTreeMap::new();
    let want = reformc_interp::run(&g, &b.inputs, &none).unwrap_or_else(|e| panic!("{ctx}{e}"));
    let args = forward_args(&g, &none, &b.inputs);
    let outs = output_types(&g);
    let module = emit_module(&g, &EmitOptions::default()).unwrap_or_else(|e| panic!("{ctx}{e}"));
    let got = host_check(&module, &args, &outs).unwrap_or_else(|e| panic!("{ctx}host: {e}"));
    for ((name, _), x) in g.outputs.iter().zip(&got) {
        assert_agrees(&ctx, name, x, &want[name]);
    }
    if let Some(opts) = ptx {
        let k = compile_ptx(&module, opts).unwrap_or_else(|e| panic!("{ctx}ptx: {e}"));
        assert!(k.ptx.contains(".target sm_90"), "{ctx}no PTX");
    }
    text
}

#[test]
fn random_graphs_through_the_gpu_loop_stages_agree_with_the_interpreter() {
    let opts = GpuOptions {
        libdevice: reformc_backend_gpu::find_libdevice(None).unwrap(),
        ..GpuOptions::default()
    };
    // Without libdevice, graphs whose kernels call math functions cannot be
    // lowered to PTX; the host check still runs.
    let ptx = opts.libdevice.is_some().then_some(&opts);
    if ptx.is_none() {
        eprintln!("no libdevice (scripts/setup.sh installs it): checking on the host only, no PTX");
    }
    let texts: String = (0..CASES).map(|seed| compare(seed, ptx)).collect();
    for op in COVERED {
        assert!(texts.matches(op).count() >= 3, "`{op}` rarely generated");
    }
}
