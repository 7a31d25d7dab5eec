//! The training-step graph on the LLVM JIT against the interpreter, for every
//! Hugging Face fixture (tests/fixtures): the same graph `reformc grad` builds
//! (frontend -> default passes -> `lower-model` -> `autodiff`), recorded
//! buckets replayed, f32.
//!
//! Metric: the loss within 1e-6 relative; per gradient tensor, the max abs
//! error relative to that tensor's max abs value (floored at 1e-3 of the
//! largest gradient of the case) within 1e-5.

use crate::common;
use crate::step_support;

use common::{fixtures, read, Case};
use ndarray::ArrayD;
use reformc_ir::DType;
use reformc_passes::autodiff::LABELS;
use reformc_tensor::Tensor;
use step_support::{grad_error, lowered_step_graph, split, step_graph_chunked};

/// Fixtures of the default test: one with LSH layers (the integer argsort,
/// argmax and gather of the LSH lowering), one with local attention only.
const QUICK: &[&str] = &["causal_lsh_r1", "noncausal_local_only"];

/// Compares the JIT with the interpreter on the fixtures `keep` selects, the
/// feed-forward chunked by `chunk_ff` when given; returns how many ran.
fn check(keep: &dyn Fn(&str) -> bool, chunk_ff: Option<u64>) -> usize {
    let mut report = vec![];
    for dir in fixtures() {
        let case = Case::load(&dir);
        if !case.has("labels.npy") || !keep(&case.name) {
            continue;
        }
        let g = step_graph_chunked(&case, DType::F32, None, chunk_ff);
        let fused_ff = reformc_ir::print(&g).contains("feed_forward_grad");
        assert_eq!(
            fused_ff,
            chunk_ff.is_some(),
            "{}: feed_forward_grad",
            case.name
        );
        let mut inputs = case.inputs(case.replay_source());
        let labels: ArrayD<i64> = read(&case.dir.join("labels.npy"));
        let aligned = reformc_train::labels::aligned(&labels, case.spec.causal);
        inputs.insert(LABELS.into(), Tensor::I64(aligned));
        let weights = case.weight_map(&g);
        let want = reformc_interp::run(&g, &inputs, &weights)
            .unwrap_or_else(|e| panic!("{}: interpreter: {e}", case.name));
        let got = reformc_backend_llvm::jit_run(&g, &inputs, &weights)
            .unwrap_or_else(|e| panic!("{}: LLVM JIT: {e}", case.name));
        let ((loss_w, grads_w), (loss_g, grads_g)) = (split(&want), split(&got));
        let loss_err = (loss_g - loss_w).abs() / loss_w.abs();
        assert!(
            loss_err <= 1e-6,
            "{}: JIT loss {loss_g} vs interpreter {loss_w} (rel {loss_err:e})",
            case.name
        );
        assert_eq!(
            grads_g.len(),
            grads_w.len(),
            "{}: gradient count",
            case.name
        );
        let (err, name) = grad_error(&case.name, &grads_g, &grads_w);
        assert!(
            err <= 1e-5,
            "{}: JIT gradient of {name} off by {err:e} (relative)",
            case.name
        );
        report.push(format!(
            "{:34} loss rel {loss_err:.1e}  grads worst {err:.1e} ({name})",
            case.name
        ));
    }
    println!("{}", report.join("\n"));
    report.len()
}

#[test]
fn jit_step_matches_the_interpreter_on_lsh_and_local_fixtures() {
    assert_eq!(check(&|name| QUICK.contains(&name), None), QUICK.len());
}

/// The same with the feed-forward chunked: one `feed_forward` op, and in the
/// backward one kernel call for each branch's recomputed output and gradients.
#[test]
fn jit_step_with_the_chunked_feed_forward_matches_the_interpreter() {
    assert_eq!(check(&|name| QUICK.contains(&name), Some(8)), QUICK.len());
}

/// The step graph of a two-layer model, every model op lowered, has about a
/// thousand top-level ops:
/// the backend generates it as segments, each op in a function of its own,
/// and ops with the same code share one. No function may grow with the
/// graph but the variant's own, which only calls the segments (one function
/// of the whole step took LLVM minutes to compile).
#[test]
fn a_step_graph_compiles_as_small_shared_functions() {
    let case = Case::load(
        &fixtures()
            .into_iter()
            .find(|d| d.ends_with("causal_lsh_r1"))
            .unwrap(),
    );
    let g = lowered_step_graph(&case, DType::F32);
    let ops = g.body.len();
    let ctx = reformc_backend_llvm::Context::create();
    let variants = [reformc_backend_llvm::Variant {
        name: "main".into(),
        graph: g,
    }];
    let cm = reformc_backend_llvm::build_module(
        &ctx,
        &variants,
        &Default::default(),
        &reformc_backend_llvm::WeightsMode::Runtime,
        None,
    )
    .expect("the step graph compiles");
    let defined: Vec<_> = cm
        .module
        .get_functions()
        .filter(|f| f.count_basic_blocks() > 0)
        .collect();
    let size = |f: &reformc_backend_llvm::FunctionValue| {
        f.get_basic_block_iter()
            .map(|b| b.get_instructions().count())
            .sum::<usize>()
    };
    let is_variant =
        |f: &reformc_backend_llvm::FunctionValue| f.get_name().to_bytes().ends_with(b"_main");
    let variant = defined.iter().find(|f| is_variant(f)).map(size).unwrap();
    let largest = defined
        .iter()
        .filter(|f| !is_variant(f))
        .map(size)
        .max()
        .unwrap();
    let outlined = defined
        .iter()
        .filter(|f| f.get_name().to_string_lossy().contains(".block%"))
        .count();
    assert!(ops > 900, "the fixture's step has {ops} top-level ops");
    assert!(
        largest < 3000,
        "largest outlined function: {largest} instructions for {ops} ops"
    );
    // The variant's own function only calls segments and moves their results.
    assert!(
        variant < 8 * ops,
        "the variant's function: {variant} instructions for {ops} ops"
    );
    assert!(
        outlined > 20 && outlined < ops / 2,
        "{outlined} outlined functions for {ops} ops: expected shared per-op functions"
    );
}

/// Every fixture: about 8 s each (compiling the step is most of it).
#[test]
#[ignore = "slow: 2-3 minutes for all fixtures; run with --ignored"]
fn jit_step_matches_the_interpreter_on_every_hf_fixture() {
    assert!(check(&|_| true, None) >= 10);
    assert!(check(&|_| true, Some(8)) >= 10);
}
