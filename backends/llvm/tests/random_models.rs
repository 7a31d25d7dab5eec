//! Random small models (reformc's model schema: reversible and residual,
//! local / LSH / full attention, axial and learned positions, several
//! activations) with random weights, at several batch sizes and lengths
//! (padded lengths, lengths up to one chunk): the JIT equals the interpreter.

use inkwell::context::Context;
use reformc_backend_llvm::JitModel;
use reformc_frontend::config::parse_model_config;
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_ir::DType;
use reformc_testkit::random_model::{random_config, random_inputs, random_weights, Lcg as Rng};
use std::path::Path;

#[test]
fn random_models_match_the_interpreter() {
    let mut rng = Rng(20_251_128);
    let mut report = Vec::new();
    let mut cases = 0;
    for model in 0..12 {
        let text = random_config(&mut rng);
        let (spec, _, _) = parse_model_config(&text, Path::new("random.json"))
            .unwrap_or_else(|e| panic!("model {model}: {e}\n{text}"));
        let chunk = spec.min_chunk().unwrap_or(8) as usize;
        // Lengths: one token, up to one chunk, padded, exact multiples.
        let lens = [1usize, chunk, chunk + 1, 2 * chunk + 3, 24];
        for source in [LshSource::Buckets, LshSource::Seeded] {
            if source == LshSource::Seeded && spec.num_lsh_layers() == 0 {
                continue;
            }
            let lowered = lower(
                &spec,
                &LowerOptions {
                    dtype: DType::F32,
                    lsh_source: source,
                    seq_len: Some(32),
                },
            )
            .unwrap();
            let g = &lowered.graph;
            let w = random_weights(g, &mut rng);
            let ctx = Context::create();
            let jit =
                JitModel::new(&ctx, g, &w).unwrap_or_else(|e| panic!("model {model}: {e}\n{text}"));
            for &l in &lens {
                if spec.check_length(l as u64).is_err() {
                    continue;
                }
                for b in [1usize, 2, 3] {
                    let inp = random_inputs(&spec, b, l, &mut rng, source, &lowered.bucket_factors);
                    let want = reformc_interp::run(g, &inp, &w).unwrap_or_else(|e| {
                        panic!("model {model} B={b} L={l}: interp: {e}\n{text}")
                    });
                    let got = jit
                        .run(&inp)
                        .unwrap_or_else(|e| panic!("model {model} B={b} L={l}: jit: {e}\n{text}"));
                    let (a, c) = (want["logits"].to_f64(), got["logits"].to_f64());
                    assert_eq!(a.shape(), c.shape());
                    let d = (&a - &c).mapv(f64::abs).fold(0.0f64, |m, &x| m.max(x));
                    assert!(
                        d <= 1e-4,
                        "model {model} {source:?} B={b} L={l}: JIT vs interpreter {d:e}\n{text}"
                    );
                    cases += 1;
                    report.push(format!("model {model:2} {source:?} B={b} L={l:2}: {d:.1e}"));
                }
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(cases >= 100, "only {cases} cases ran");
}
