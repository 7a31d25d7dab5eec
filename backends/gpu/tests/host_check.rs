//! The GPU backend's loop rewrites (parallel loops collapsed to one
//! dimension, parallel loops hoisted out of reduction loops) checked on the
//! CPU: every HF fixture through `host_check` against HF's float64 logits
//! (1e-4), so that what the kernels are built from is known to compute the
//! model before any GPU runs it.

use reformc_backend_gpu::host_check;
use reformc_backend_mlir::{emit_module, EmitOptions};
use reformc_testkit::{fixtures, forward_args, max_abs_diff, output_types, Case};

#[test]
fn every_fixture_through_the_gpu_loop_stages_matches_hf() {
    let mut failures = Vec::new();
    for dir in fixtures() {
        let case = Case::load(&dir);
        let source = case.replay_source();
        let g = case.graph(reformc_ir::DType::F32, source);
        let text = emit_module(&g, &EmitOptions::default()).unwrap();
        let weights = case.weight_map(&g);
        let inputs = case.inputs(source);
        let args = forward_args(&g, &weights, &inputs);
        match host_check(&text, &args, &output_types(&g)) {
            Ok(out) => {
                let err = max_abs_diff(&out[0].to_f64(), &case.reference_f64());
                if err > 1e-4 {
                    failures.push(format!("{}: max |err| {err:.2e}", case.name));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
