//! Differential tests on every Hugging Face fixture (tests/fixtures), with
//! HF's recorded LSH buckets replayed: the JIT and the AOT executable equal
//! the interpreter and HF's float64 logits within 1e-4, at 1 and 2 threads.

use crate::common;

use common::{fixtures, max_abs_diff, read, run, scratch, Case, CompileCase};
use inkwell::context::Context;
use reformc_backend_llvm::{set_threads, JitModel};
use reformc_ir::DType;

const TOL: f64 = 1e-4;

#[test]
fn jit_matches_interpreter_and_hf_float64_at_1_and_2_threads() {
    let mut report = vec![];
    for dir in fixtures() {
        let case = Case::load(&dir);
        let source = case.replay_source();
        let g = case.graph(DType::F32, source);
        let want = case.interp(source);
        let reference = case.reference_f64();
        let ctx = Context::create();
        let model = JitModel::new(&ctx, &g, &case.weight_map(&g))
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        for threads in [1, 2] {
            set_threads(threads).unwrap();
            let out = model
                .run(&case.inputs(source))
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let got = out["logits"].to_f64();
            let (d_interp, d_hf) = (max_abs_diff(&got, &want), max_abs_diff(&got, &reference));
            report.push(format!(
                "{:36} threads={threads} |jit-interp| {d_interp:.2e} |jit-hf64| {d_hf:.2e} (compile {:.0} ms)",
                case.name,
                model.compile_time.as_secs_f64() * 1e3
            ));
            assert!(
                d_interp <= TOL,
                "{} ({threads} threads): JIT vs interpreter {d_interp:e}",
                case.name
            );
            assert!(
                d_hf <= TOL,
                "{} ({threads} threads): JIT vs HF float64 {d_hf:e}",
                case.name
            );
        }
    }
    set_threads(0).unwrap();
    println!("{}", report.join("\n"));
}

#[test]
fn aot_executable_matches_interpreter_and_hf_float64_at_1_and_2_threads() {
    let dir = scratch("fixtures_exe");
    let mut report = vec![];
    for fixture in fixtures() {
        let case = Case::load(&fixture);
        let exe = case.compile_exe(&dir);
        let want = case.interp(case.replay_source());
        let reference = case.reference_f64();
        for threads in ["1", "2"] {
            let out = dir.join(format!("{}-{threads}.npy", case.name));
            let mut args = case.exe_args(&dir);
            args.extend([
                "--output".into(),
                out.display().to_string(),
                "--threads".into(),
                threads.into(),
            ]);
            let res = run(&exe, &args);
            assert!(
                res.status.success(),
                "{}: {}",
                case.name,
                String::from_utf8_lossy(&res.stderr)
            );
            let got = read::<f32>(&out).mapv(f64::from);
            let (d_interp, d_hf) = (max_abs_diff(&got, &want), max_abs_diff(&got, &reference));
            report.push(format!(
                "{:36} threads={threads} |exe-interp| {d_interp:.2e} |exe-hf64| {d_hf:.2e}",
                case.name
            ));
            assert!(
                d_interp <= TOL,
                "{} ({threads} threads): exe vs interpreter {d_interp:e}",
                case.name
            );
            assert!(
                d_hf <= TOL,
                "{} ({threads} threads): exe vs HF float64 {d_hf:e}",
                case.name
            );
        }
    }
    println!("{}", report.join("\n"));
}

/// The seeded variant (rotations drawn by `random_normal`, buckets by
/// `lsh_hash`) and HF's rotations (hashing by our kernel) agree with the
/// interpreter too.
#[test]
fn jit_hashing_variants_match_interpreter() {
    use reformc_frontend::lower::LshSource;
    for dir in fixtures() {
        let case = Case::load(&dir);
        if case.spec.num_lsh_layers() == 0 {
            continue;
        }
        for source in [LshSource::Seeded, LshSource::Rotations] {
            if source == LshSource::Rotations && !case.has("lsh_rotations.npy") {
                continue;
            }
            let g = case.graph(DType::F32, source);
            // With `Rotations`, the inputs carry HF's `lsh_rotations.npy`.
            let inputs = case.inputs(source);
            let w = case.weight_map(&g);
            let want = reformc_interp::run(&g, &inputs, &w).unwrap();
            let got = reformc_backend_llvm::jit_run(&g, &inputs, &w)
                .unwrap_or_else(|e| panic!("{} {source:?}: {e}", case.name));
            let d = max_abs_diff(&got["logits"].to_f64(), &want["logits"].to_f64());
            assert!(
                d <= TOL,
                "{} {source:?}: JIT vs interpreter {d:e}",
                case.name
            );
        }
    }
}

/// The fixtures after the default pass pipeline with chunked-exact attention
/// (`kv_chunk`) and chunked feed-forward / LM head (`seq_chunk`): the JIT
/// runs what the passes produce and equals the interpreter on it.
#[test]
fn jit_matches_interpreter_after_the_pass_pipeline() {
    use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline};
    let (mut chunked, mut streamed) = (0, 0);
    for (attention, kv_chunk, ff, head) in [(None, None, 16, 8), (Some("exact"), Some(8), 5, 7)] {
        for dir in fixtures() {
            let case = Case::load(&dir);
            let source = case.replay_source();
            let mut g = case.graph(DType::F32, source);
            let opts = PassOptions {
                seq_len: Some(case.seq_len() as u64),
                attention: attention.map(str::to_string),
                kv_chunk,
                chunk_size_feed_forward: Some(ff),
                chunk_size_lm_head: Some(head),
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
                .unwrap_or_else(|e| panic!("{}: passes: {e}", case.name));
            let text = reformc_ir::print(&g);
            chunked += usize::from(text.contains("seq_chunk"));
            streamed += usize::from(text.contains("kv_chunk"));
            let inputs = case.inputs(source);
            let w = case.weight_map(&g);
            let want = reformc_interp::run(&g, &inputs, &w).unwrap();
            let got = reformc_backend_llvm::jit_run(&g, &inputs, &w)
                .unwrap_or_else(|e| panic!("{} {attention:?}: {e}", case.name));
            let d = max_abs_diff(&got["logits"].to_f64(), &want["logits"].to_f64());
            assert!(
                d <= TOL,
                "{} {attention:?}: JIT vs interpreter {d:e}",
                case.name
            );
            if attention.is_none() {
                let d = max_abs_diff(&got["logits"].to_f64(), &case.reference_f64());
                assert!(d <= TOL, "{}: JIT vs HF float64 {d:e}", case.name);
            }
        }
    }
    assert!(
        chunked >= 20 && streamed >= 10,
        "seq_chunk in {chunked} graphs, kv_chunk in {streamed}"
    );
}

/// The generated entry (what the .so exports as `reformc_model_run`) checks the
/// range of replayed bucket ids itself: HF's recorded buckets pass on every
/// fixture (padded and masked ones included), and a negative id, a huge id and
/// another round's id are each refused with the value error code.
#[test]
fn generated_entry_checks_the_range_of_replayed_buckets() {
    use reformc_backend_llvm::{BackendError, CompileOptions};
    use reformc_frontend::lower::{lower, LowerOptions, LshSource};
    let mut checked = 0;
    for dir in fixtures() {
        let case = Case::load(&dir);
        if !case.has_buckets() {
            continue;
        }
        let lowered = lower(
            &case.spec,
            &LowerOptions {
                dtype: DType::F32,
                lsh_source: LshSource::Buckets,
                seq_len: Some(case.seq_len() as u64),
            },
        )
        .unwrap();
        let opts = CompileOptions {
            lsh_buckets_per_round: Some(lowered.bucket_factors.iter().product()),
            ..CompileOptions::default()
        };
        let ctx = Context::create();
        let g = &lowered.graph;
        let model = JitModel::with_options(&ctx, g, &case.weight_map(g), &opts).unwrap();
        let inputs = case.inputs(LshSource::Buckets);
        model
            .run(&inputs)
            .unwrap_or_else(|e| panic!("{}: recorded buckets refused: {e}", case.name));
        let reformc_tensor::Tensor::I64(good) = &inputs["lsh_buckets"] else {
            panic!("{}: buckets are not i64", case.name);
        };
        // HF's layout [n, B, H, r·P] gives the same numbers as [n, B, H, r, P];
        // one element short is refused.
        let want = model.run(&inputs).unwrap();
        let s = good.shape();
        for (rp, ok) in [(s[3] * s[4], true), (s[3] * s[4] - 1, false)] {
            let flat = good.iter().copied().take(s[0] * s[1] * s[2] * rp).collect();
            let hf = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[s[0], s[1], s[2], rp]), flat);
            let mut hf_inputs = inputs.clone();
            hf_inputs.insert(
                "lsh_buckets".into(),
                reformc_tensor::Tensor::I64(hf.unwrap()),
            );
            match (model.run(&hf_inputs), ok) {
                (Ok(got), true) => assert_eq!(got, want, "{}: HF layout", case.name),
                (Err(BackendError::Run { message, .. }), false) => {
                    // r > 1: not divisible, a rank error; r = 1: a length error.
                    assert!(message.contains("lsh_buckets"), "{message}")
                }
                (other, _) => panic!("{}: HF layout with r·P={rp}: {other:?}", case.name),
            }
        }
        let last = good.len() - 1;
        let mut bads = vec![-1, 1 << 62];
        if case.spec.lsh.n_hashes > 1 {
            // A round-0 id placed in the last round.
            bads.push(*good.iter().next().unwrap());
        }
        for bad in bads {
            let mut b = good.clone();
            *b.iter_mut().nth(last).unwrap() = bad;
            let mut poked = inputs.clone();
            poked.insert("lsh_buckets".into(), reformc_tensor::Tensor::I64(b));
            match model.run(&poked) {
                Err(BackendError::Run { code: 5, message }) => {
                    assert!(message.contains("flat index"), "{}: {message}", case.name)
                }
                other => panic!("{}: bucket id {bad}: {other:?}", case.name),
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} fixtures with recorded buckets"
    );
}
