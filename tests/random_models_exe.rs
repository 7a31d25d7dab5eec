//! Differential fuzzing of the whole pipeline: random small models (the
//! generator of backends/llvm/tests/random_models.rs, which checks the JIT)
//! compiled by `reformc compile` to an executable, run on random ids, masks
//! and recorded LSH buckets, against the interpreter.

use crate::common;

use common::random_model::{random_config, random_inputs, random_weights, write_safetensors, Lcg};
use reformc_frontend::config::parse_model_config;
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_interp::Tensor;
use reformc_ir::DType;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch() -> PathBuf {
    let d = common::root().join("target/tmp/random-models-exe");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn reformc(args: &[&dyn AsRef<std::ffi::OsStr>]) {
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the executable on `inp` (buckets flattened to [n, B, H, r*P]).
fn run_exe(exe: &Path, dir: &Path, inp: &BTreeMap<String, Tensor>) -> ndarray::ArrayD<f64> {
    let ids = dir.join("ids.npy");
    let mask = dir.join("mask.npy");
    let out = dir.join("out.npy");
    common::write(&ids, &inp["input_ids"].to_i64());
    common::write(&mask, &inp["attention_mask"].to_i64());
    let mut args: Vec<PathBuf> = ["--input".into(), ids, "--attention-mask".into(), mask].into();
    if let Some(b) = inp.get("lsh_buckets").filter(|b| b.shape()[0] > 0) {
        let s = b.shape();
        let flat = b
            .to_i64()
            .into_shape_clone(ndarray::IxDyn(&[s[0], s[1], s[2], s[3] * s[4]]));
        let p = dir.join("buckets.npy");
        common::write(&p, &flat.unwrap());
        args.extend(["--lsh-buckets".into(), p]);
    }
    args.extend(["--output".into(), out.clone()]);
    let res = Command::new(exe).args(&args).output().unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    common::read::<f32>(&out).mapv(f64::from)
}

#[test]
fn random_models_executable_matches_the_interpreter() {
    let dir = scratch();
    let mut rng = Lcg(20_251_205);
    let mut cases = 0;
    for model in 0..6 {
        let text = random_config(&mut rng);
        let (spec, _, _) = parse_model_config(&text, Path::new("random.json")).unwrap();
        let opts = LowerOptions {
            dtype: DType::F32,
            lsh_source: LshSource::Buckets,
            seq_len: Some(32),
        };
        let lowered = lower(&spec, &opts).unwrap();
        let g = &lowered.graph;
        let w = random_weights(g, &mut rng);
        let (cfg, st, exe) = (dir.join("m.json"), dir.join("w.safetensors"), dir.join("m"));
        std::fs::write(&cfg, &text).unwrap();
        write_safetensors(&st, &w);
        reformc(&[&"compile", &cfg, &"--weights", &st, &"-o", &exe]);
        let chunk = spec.min_chunk().unwrap_or(8) as usize;
        for (b, l) in [(1, chunk + 1), (2, 2 * chunk + 3)] {
            if spec.check_length(l as u64).is_err() {
                continue;
            }
            let inp = random_inputs(
                &spec,
                b,
                l,
                &mut rng,
                LshSource::Buckets,
                &lowered.bucket_factors,
            );
            let want = reformc_interp::run(g, &inp, &w).unwrap()["logits"].to_f64();
            let got = run_exe(&exe, &dir, &inp);
            assert_eq!(got.shape(), want.shape(), "model {model}\n{text}");
            let d = common::max_abs_diff(&got, &want);
            assert!(
                d <= 1e-4,
                "model {model} B={b} L={l}: executable vs interpreter {d:e}\n{text}"
            );
            cases += 1;
        }
    }
    assert!(cases >= 8, "only {cases} cases ran");
}
