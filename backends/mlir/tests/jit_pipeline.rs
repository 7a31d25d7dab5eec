//! reformc's own MLIR CPU pipeline frees its buffers: a `seq_chunk` loop that
//! allocates hundreds of megabytes over its iterations (a few hundred
//! kilobytes per iteration) keeps the process's peak resident set bounded, and
//! the results handed back to Rust are freed after they are copied out.
//!
//! One test in this binary, so that no other test moves the process's peak.

mod common;

use common::random_f32;
use reformc_backend_mlir::jit_run;

/// A feed-forward chunked along the sequence, 16 tokens at a time: each
/// iteration allocates about 16 x (64 + 1024 + 1024 + 64 + 64) floats plus the
/// transposed weights (about 0.66 MB), 2048 iterations at L = 32768 (1.3 GB in
/// total without deallocation).
const FF: &str = "graph {
  %0 = weight {name=\"w1\"} : f32[1024,64]
  %1 = weight {name=\"b1\"} : f32[1024]
  %2 = weight {name=\"w2\"} : f32[64,1024]
  %3 = weight {name=\"b2\"} : f32[64]
  %4 = input {name=\"x\"} : f32[B,L,64]
  %5 = seq_chunk %4 {axis=1, size=16} : f32[B,L,64] {
    body(%6: f32[B,C,64]) {
      %7 = linear %6, %0, %1 {activation=\"relu\"} : f32[B,C,1024]
      %8 = linear %7, %2, %3 : f32[B,C,64]
      %9 = add %8, %6 : f32[B,C,64]
      yield %9
    }
  }
  output \"y\" = %5
}
";

/// Results that alias an argument or each other: the deallocation pipeline
/// must hand back buffers the runner may free (a clone of the argument), once
/// per distinct buffer.
const ALIASES: &str = "graph {
  %0 = input {name=\"x\"} : f32[B,L]
  %1 = exp %0 : f32[B,L]
  output \"x\" = %0
  output \"e\" = %1
  output \"e2\" = %1
}
";

/// The process's peak resident set (`VmHWM`) in kB.
fn peak_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("procfs");
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

fn args(l: usize) -> Vec<reformc_interp::Tensor> {
    vec![
        random_f32(&[1024, 64], 1),
        random_f32(&[1024], 2),
        random_f32(&[64, 1024], 3),
        random_f32(&[64], 4),
        random_f32(&[1, l, 64], 5),
    ]
}

#[test]
fn chunked_loop_and_results_do_not_leak() {
    let g = reformc_ir::parse(FF).unwrap();
    // Correct first (the interpreter on a short sequence, odd length). The
    // second layer sums 1024 products of values of magnitude ~10 into outputs
    // of magnitude ~100, in another order than the interpreter's GEMM: a few
    // f32 ulps (7.6e-6 each at 100) of difference, hence 1e-4 and not 1e-5.
    common::compare_args(FF, args(37), 1e-4);
    for _ in 0..3 {
        common::compare_args(ALIASES, vec![random_f32(&[2, 5], 9)], 1e-6);
    }
    // Compiling the module has its own peak: measure from after a first
    // (small) run.
    jit_run(&g, &args(64)).unwrap();
    let big = args(32768);
    let before = peak_kb();
    for _ in 0..4 {
        let y = jit_run(&g, &big).unwrap();
        assert_eq!(y[0].shape(), &[1, 32768, 64]);
    }
    let grown_mb = (peak_kb() - before) / 1024;
    // The input, one result (8 MB each) and its copy, plus one iteration's
    // buffers and the compiler's own memory: far below the 1.3 GB a leaking
    // loop needs, or the 32 MB that four leaked results would add.
    eprintln!("peak resident set grew by {grown_mb} MB");
    assert!(grown_mb < 96, "peak resident set grew by {grown_mb} MB");
    // A pipeline that leaves ops LLVM cannot translate: an error, not a crash
    // on a null ExecutionEngine.
    // The only test of this binary: nothing else reads the environment.
    std::env::set_var(
        "REFORMC_MLIR_PIPELINE",
        "builtin.module(one-shot-bufferize{bufferize-function-boundaries})",
    );
    let err = jit_run(&g, &args(4)).unwrap_err();
    std::env::remove_var("REFORMC_MLIR_PIPELINE");
    assert!(err.to_string().contains("ExecutionEngine"), "{err}");
}
