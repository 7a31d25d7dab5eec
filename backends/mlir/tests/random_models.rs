//! Random small models (reformc's model schema: reversible and residual,
//! local / LSH / full attention, axial and learned positions, several
//! activations) with random weights, after reformc's default pass pipeline
//! (with the feed-forward and the LM head chunked, so `seq_chunk` loops and
//! reversible blocks are in the graph): the MLIR CPU pipeline equals the
//! interpreter at several batch sizes and lengths.

use reformc_backend_mlir::jit_run_with_weights_each;
use reformc_frontend::config::parse_model_config;
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_ir::DType;
use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline};
use reformc_tensor::Tensor;
use reformc_testkit::random_model::{random_config, random_inputs, random_weights, Lcg as Rng};
use std::path::Path;

#[test]
fn random_models_match_the_interpreter_on_the_mlir_pipeline() {
    let mut rng = Rng(20_261_205);
    let mut report = Vec::new();
    let mut cases = 0;
    for model in 0..8 {
        let text = random_config(&mut rng);
        let (spec, _, _) = parse_model_config(&text, Path::new("random.json"))
            .unwrap_or_else(|e| panic!("model {model}: {e}\n{text}"));
        let chunk = spec.min_chunk().unwrap_or(8) as usize;
        let source = if model % 2 == 0 {
            LshSource::Buckets
        } else {
            LshSource::Seeded
        };
        let mut lowered = lower(
            &spec,
            &LowerOptions {
                dtype: DType::F32,
                lsh_source: source,
                seq_len: Some(32),
            },
        )
        .unwrap();
        let opts = PassOptions {
            chunk_size_feed_forward: Some(3),
            chunk_size_lm_head: Some(5),
            ..PassOptions::default()
        };
        let pm = PassManager::new(
            Pipeline::default_pipeline(),
            Instrumentation {
                quiet: true,
                ..Instrumentation::default()
            },
        )
        .unwrap();
        pm.run(&mut lowered.graph, &opts, &mut std::io::sink())
            .unwrap_or_else(|e| panic!("model {model}: passes: {e}\n{text}"));
        let g = &lowered.graph;
        let w = random_weights(g, &mut rng);
        // Lengths: one token, one chunk plus one (padded), a longer padded one.
        let mut runs = Vec::new();
        for &l in &[1usize, chunk + 1, 2 * chunk + 3] {
            if spec.check_length(l as u64).is_err() {
                continue;
            }
            for b in [1usize, 2] {
                let inp = random_inputs(&spec, b, l, &mut rng, source, &lowered.bucket_factors);
                let args: Vec<Tensor> = g
                    .inputs()
                    .into_iter()
                    .map(|(name, _)| inp[name].clone())
                    .collect();
                runs.push((b, l, inp, args));
            }
        }
        // One compiled module (dynamic batch and length) for every run.
        let sets: Vec<Vec<Tensor>> = runs.iter().map(|r| r.3.clone()).collect();
        let (got, _) = jit_run_with_weights_each(g, &w, &sets)
            .unwrap_or_else(|e| panic!("model {model}: mlir: {e}\n{text}"));
        let at = g.outputs.iter().position(|(n, _)| n == "logits").unwrap();
        for ((b, l, inp, _), got) in runs.iter().zip(&got) {
            let want = reformc_interp::run(g, inp, &w)
                .unwrap_or_else(|e| panic!("model {model} B={b} L={l}: interp: {e}\n{text}"));
            let (a, c) = (want["logits"].to_f64(), got[at].to_f64());
            assert_eq!(a.shape(), c.shape());
            let d = (&a - &c).mapv(f64::abs).fold(0.0f64, |m, &x| m.max(x));
            assert!(
                d <= 1e-4,
                "model {model} {source:?} B={b} L={l}: MLIR vs interpreter {d:e}\n{text}"
            );
            cases += 1;
            report.push(format!("model {model} {source:?} B={b} L={l:2}: {d:.1e}"));
        }
    }
    println!("{}", report.join("\n"));
    assert!(cases >= 30, "only {cases} cases ran");
}
