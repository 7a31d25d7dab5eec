//! The task heads against Hugging Face (tests/fixtures_heads, made by
//! scripts/hf_fixtures.py): `ReformerForSequenceClassification` (output
//! `logits` [B, num_labels]) and `ReformerForQuestionAnswering` (output
//! `logits` [B, L, 2], HF's start logits at [..., 0] and end logits at
//! [..., 1]), with HF's recorded LSH buckets replayed. The interpreter in f32
//! and f64, the JIT at 1 and 2 threads, the JIT after the pass pipeline and
//! the AOT executable all match HF's float64 outputs.

use crate::common;

use common::{head_fixtures, max_abs_diff, scratch, Case, CompileCase};
use reformc_backend_llvm::{jit_run, set_threads};
use reformc_frontend::spec::HeadSpec;
use reformc_ir::DType;

const TOL: f64 = 1e-4;

/// The head each fixture must have come out as (the config's architecture
/// and the weight file agree), and the output shape that goes with it.
fn check_head(case: &Case) -> Vec<usize> {
    let b = case.ids.shape()[0];
    let want = case.reference_f64();
    let shape = match case.spec.head {
        HeadSpec::Classification { num_labels } => {
            assert!(case.name.starts_with("cls_"), "{}", case.name);
            vec![b, num_labels as usize]
        }
        HeadSpec::QuestionAnswering => {
            assert!(case.name.starts_with("qa_"), "{}", case.name);
            vec![b, case.seq_len(), 2]
        }
        ref other => panic!("{}: head {other:?}", case.name),
    };
    assert_eq!(want.shape(), &shape[..], "{}", case.name);
    shape
}

#[test]
fn interpreter_matches_hf_float64_in_f32_and_f64() {
    let mut report = vec![];
    for dir in head_fixtures() {
        let case = Case::load(&dir);
        let shape = check_head(&case);
        let source = case.replay_source();
        for (dtype, tol) in [(DType::F32, TOL), (DType::F64, 1e-9)] {
            let g = case.graph(dtype, source);
            let out = case.run(&g, source);
            assert_eq!(out.len(), 1, "{}: one output", case.name);
            let got = out["logits"].to_f64();
            assert_eq!(got.shape(), &shape[..], "{}", case.name);
            let d = max_abs_diff(&got, &case.reference_f64());
            report.push(format!("{:28} {dtype} |interp-hf64| {d:.2e}", case.name));
            assert!(
                d <= tol,
                "{} {dtype}: interpreter vs HF float64 {d:e}",
                case.name
            );
        }
    }
    println!("{}", report.join("\n"));
}

#[test]
fn jit_matches_interpreter_and_hf_float64_at_1_and_2_threads() {
    for dir in head_fixtures() {
        let case = Case::load(&dir);
        check_head(&case);
        let source = case.replay_source();
        let g = case.graph(DType::F32, source);
        let want = case.interp(source);
        let w = case.weight_map(&g);
        for threads in [1, 2] {
            set_threads(threads).unwrap();
            let got = jit_run(&g, &case.inputs(source), &w)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name))["logits"]
                .to_f64();
            let d_interp = max_abs_diff(&got, &want);
            let d_hf = max_abs_diff(&got, &case.reference_f64());
            assert!(
                d_interp <= TOL,
                "{} ({threads}): JIT vs interpreter {d_interp:e}",
                case.name
            );
            assert!(
                d_hf <= TOL,
                "{} ({threads}): JIT vs HF float64 {d_hf:e}",
                case.name
            );
        }
    }
    set_threads(0).unwrap();
}

/// The default pipeline with chunked feed-forward and (for question
/// answering) a chunked head: the head stays exact.
#[test]
fn jit_matches_hf_after_the_pass_pipeline() {
    use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline};
    for dir in head_fixtures() {
        let case = Case::load(&dir);
        let source = case.replay_source();
        let mut g = case.graph(DType::F32, source);
        let opts = PassOptions {
            seq_len: Some(case.seq_len() as u64),
            chunk_size_feed_forward: Some(8),
            chunk_size_lm_head: Some(8),
            ..Default::default()
        };
        let pm = PassManager::new(
            Pipeline::default_pipeline(),
            Instrumentation {
                quiet: true,
                ..Default::default()
            },
        )
        .unwrap();
        pm.run(&mut g, &opts, &mut std::io::sink())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let w = case.weight_map(&g);
        let got = jit_run(&g, &case.inputs(source), &w)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name))["logits"]
            .to_f64();
        let d = max_abs_diff(&got, &case.reference_f64());
        assert!(d <= TOL, "{}: passes + JIT vs HF float64 {d:e}", case.name);
    }
}

#[test]
fn aot_executable_matches_hf_float64() {
    let dir = scratch("heads_exe");
    for fixture in head_fixtures() {
        let case = Case::load(&fixture);
        let exe = case.compile_exe(&dir);
        let got = case.run_exe(&exe, &dir, &[]);
        let d = max_abs_diff(&got, &case.reference_f64());
        assert!(d <= TOL, "{}: exe vs HF float64 {d:e}", case.name);
    }
}
