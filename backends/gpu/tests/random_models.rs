//! Random small models (reformc's model schema: reversible and residual,
//! local / LSH / full attention, axial and learned positions, several
//! activations), after the default pass pipeline with the feed-forward and
//! the LM head chunked (so `seq_chunk` loops and reversible blocks are in the
//! graph), through the GPU backend's loop stages on the host (`host_check`)
//! against the interpreter, at several batch sizes and lengths, and each
//! lowered to PTX.

use reformc_backend_gpu::{compile_ptx, find_libdevice, host_check, GpuOptions};
use reformc_backend_mlir::{emit_module, EmitOptions};
use reformc_frontend::config::parse_model_config;
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_ir::DType;
use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline};
use reformc_testkit::random_model::{random_config, random_inputs, random_weights, Lcg as Rng};
use reformc_testkit::{forward_args, output_types};
use std::path::Path;

#[test]
fn random_models_through_the_gpu_loop_stages_match_the_interpreter() {
    let mut rng = Rng(20_261_206);
    let libdevice = find_libdevice(None).unwrap();
    let mut cases = 0;
    for model in 0..6 {
        let text = random_config(&mut rng);
        let (spec, _, _) = parse_model_config(&text, Path::new("random.json"))
            .unwrap_or_else(|e| panic!("model {model}: {e}\n{text}"));
        let chunk = spec.min_chunk().unwrap_or(8) as usize;
        let source = if model % 2 == 0 {
            LshSource::Buckets
        } else {
            LshSource::Seeded
        };
        let lower_opts = LowerOptions {
            dtype: DType::F32,
            lsh_source: source,
            seq_len: Some(32),
        };
        let mut lowered = lower(&spec, &lower_opts).unwrap();
        let opts = PassOptions {
            chunk_size_feed_forward: Some(3),
            chunk_size_lm_head: Some(5),
            ..PassOptions::default()
        };
        let quiet = Instrumentation {
            quiet: true,
            ..Instrumentation::default()
        };
        let pm = PassManager::new(Pipeline::default_pipeline(), quiet).unwrap();
        pm.run(&mut lowered.graph, &opts, &mut std::io::sink())
            .unwrap_or_else(|e| panic!("model {model}: passes: {e}\n{text}"));
        let g = &lowered.graph;
        let w = random_weights(g, &mut rng);
        let module = emit_module(g, &EmitOptions::default()).unwrap();
        if libdevice.is_some() {
            let gpu = GpuOptions {
                libdevice: libdevice.clone(),
                ..GpuOptions::default()
            };
            compile_ptx(&module, &gpu).unwrap_or_else(|e| panic!("model {model}: ptx: {e}"));
        }
        let outs = output_types(g);
        let at = g.outputs.iter().position(|(n, _)| n == "logits").unwrap();
        for &l in &[1usize, chunk + 1, 2 * chunk + 3] {
            if spec.check_length(l as u64).is_err() {
                continue;
            }
            for b in [1usize, 2] {
                let inp = random_inputs(&spec, b, l, &mut rng, source, &lowered.bucket_factors);
                let args = forward_args(g, &w, &inp);
                let got = host_check(&module, &args, &outs)
                    .unwrap_or_else(|e| panic!("model {model} B={b} L={l}: {e}\n{text}"));
                let want = reformc_interp::run(g, &inp, &w)
                    .unwrap_or_else(|e| panic!("model {model} B={b} L={l}: interp: {e}"));
                let (a, c) = (want["logits"].to_f64(), got[at].to_f64());
                assert_eq!(a.shape(), c.shape());
                let d = (&a - &c).mapv(f64::abs).fold(0.0f64, |m, &x| m.max(x));
                assert!(
                    d <= 1e-4,
                    "model {model} {source:?} B={b} L={l}: GPU loop stages vs interpreter {d:e}\n{text}"
                );
                cases += 1;
            }
        }
    }
    assert!(cases >= 20, "only {cases} cases ran");
}
