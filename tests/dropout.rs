//! Dropout in training steps end to end: the LLVM JIT draws the
//! interpreter's masks bit for bit, a JIT training step with dropout matches
//! the interpreter's, and `reformc grad` applies a config's dropout (or not,
//! with `--no-dropout`).

use crate::common;

use common::read;
use ndarray::{ArrayD, IxDyn};
use reformc_frontend::spec::tests_support::tiny;
use reformc_tensor::Tensor;
use reformc_train::grad::ModelStep;
use reformc_train::step::StepFn;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scalar(v: i64) -> Tensor {
    Tensor::I64(ArrayD::from_elem(IxDyn(&[]), v))
}

#[test]
fn jit_masks_equal_the_interpreters() {
    let text = r#"graph {
  %0 = input {name="seed"} : i64[]
  %1 = input {name="x"} : f32[B,L,37]
  %2 = dropout_mask %0, %1 {p=0.3, stream=4294967809} : f32[B,L,37]
  %3 = dropout_mask %0, %1 {p=0.0, stream=4294967810} : f32[B,L,37]
  %4 = dropout_mask %0, %1 {p=0.9, stream=4294967809} : f32[B,L,37]
  output "a" = %2
  output "b" = %3
  output "c" = %4
}
"#;
    let g = reformc_ir::parse(text).unwrap();
    for seed in [0i64, 7, -3] {
        let inputs = BTreeMap::from([
            ("seed".to_string(), scalar(seed)),
            (
                "x".to_string(),
                Tensor::F32(ArrayD::zeros(IxDyn(&[2, 300, 37]))),
            ),
        ]);
        let want = reformc_interp::run(&g, &inputs, &BTreeMap::new()).unwrap();
        let got = reformc_backend_llvm::jit_run(&g, &inputs, &BTreeMap::new()).unwrap();
        for name in ["a", "b", "c"] {
            let (w, o) = (want[name].to_f64(), got[name].to_f64());
            assert_eq!(w, o, "output {name}, seed {seed}");
        }
        let a = want["a"].to_f64();
        let zeros = a.iter().filter(|&&x| x == 0.0).count() as f64 / a.len() as f64;
        assert!((zeros - 0.3).abs() < 0.02, "fraction dropped {zeros}");
        assert!(a
            .iter()
            .all(|&x| x == 0.0 || x == f64::from((1.0 / 0.7f64) as f32)));
        assert!(want["b"].to_f64().iter().all(|&x| x == 1.0));
    }
}

/// Random f32 weights for every weight of the step graph.
fn weights_of(g: &reformc_ir::Graph) -> BTreeMap<String, Tensor> {
    let mut s = 12345u64;
    g.weights()
        .into_iter()
        .map(|(name, v)| {
            let shape: Vec<usize> = g
                .ty(v)
                .shape
                .iter()
                .map(|d| d.as_const().unwrap() as usize)
                .collect();
            let t = ArrayD::from_shape_fn(IxDyn(&shape), |_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
            });
            (name.to_string(), Tensor::F32(t))
        })
        .collect()
}

#[test]
fn jit_step_with_dropout_matches_the_interpreter() {
    let mut spec = tiny();
    spec.dropout.hidden = 0.2;
    spec.dropout.lsh_attention = 0.1;
    spec.dropout.local_attention = 0.1;
    let ctx = reformc_backend_llvm::Context::create();
    let mut interp = ModelStep::new(&spec, 32, 1, 9).unwrap();
    let mut jit = ModelStep::new(&spec, 32, 1, 9).unwrap();
    let weights = weights_of(jit.graph());
    // Every site survives the whole training pipeline: words, positions and
    // final LayerNorm, plus 4 per layer (probabilities, attention output,
    // feed-forward inner and output).
    let g = jit.graph();
    let streams: std::collections::BTreeSet<i64> = g
        .walk()
        .into_iter()
        .filter(|v| g.node(*v).op.kind == reformc_ir::OpKind::DropoutMask)
        .filter_map(|v| g.node(v).op.int("stream"))
        .collect();
    assert_eq!(streams.len(), 3 + 4 * spec.layers.len(), "{streams:?}");
    jit.compile(&ctx, &weights).unwrap();
    let ids = Tensor::I64(ArrayD::from_shape_fn(IxDyn(&[1, 32]), |i| {
        ((i[1] * 5 + 1) % 48) as i64
    }));
    let mut plain = ModelStep::new(&spec.for_training(true).unwrap(), 32, 1, 9).unwrap();
    let (l0, _) = plain.step(&weights, &ids, 3).unwrap();
    let (lw, gw) = interp.step(&weights, &ids, 3).unwrap();
    let (lg, gg) = jit.step(&weights, &ids, 3).unwrap();
    assert!((lg - lw).abs() <= 1e-5 * lw.abs(), "loss {lg} vs {lw}");
    assert!(
        (lw - l0).abs() > 1e-4,
        "dropout changed nothing: {lw} vs {l0}"
    );
    let (l_next, _) = interp.step(&weights, &ids, 4).unwrap();
    assert_ne!(l_next, lw, "each step draws its own masks");
    for (name, w) in &gw {
        let (w, o) = (w.to_f64(), gg[name].to_f64());
        let scale = w.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        let err = w
            .iter()
            .zip(o.iter())
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-4 * scale, "{name}: {err:e} (scale {scale:e})");
    }
}

const CASE: &str = "tests/fixtures/causal_lsh_r1";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reformc-dropout-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `reformc grad` on `config` with the fixture's weights, ids and buckets;
/// returns the process output and the loss.
fn grad(config: &Path, dir: &Path, extra: &[&str]) -> (Output, f64) {
    let (out, loss) = (dir.join("g.safetensors"), dir.join("loss.npy"));
    let _ = std::fs::remove_file(&loss);
    let r = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(["grad", config.to_str().unwrap()])
        .args(["--weights", &format!("{CASE}/model.safetensors")])
        .args(["--input", &format!("{CASE}/input_ids.npy")])
        .args(["--lsh-buckets", &format!("{CASE}/lsh_buckets.npy")])
        .args(["--output", out.to_str().unwrap()])
        .args(["--loss-output", loss.to_str().unwrap(), "-q", "--interp"])
        .args(extra)
        .output()
        .unwrap();
    let value = if r.status.success() {
        read::<f64>(&loss).iter().next().copied().unwrap()
    } else {
        f64::NAN
    };
    (r, value)
}

/// The fixture's config with the given dropout probabilities, in `dir`.
fn with_dropout(dir: &Path, rates: &[(&str, f64)]) -> PathBuf {
    let text = std::fs::read_to_string(format!("{CASE}/config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (field, p) in rates {
        cfg[*field] = serde_json::json!(p);
    }
    let config = dir.join("config.json");
    std::fs::write(&config, cfg.to_string()).unwrap();
    config
}

#[test]
fn grad_applies_the_configs_dropout_unless_told_not_to() {
    let dir = scratch("grad");
    let config = with_dropout(
        &dir,
        &[
            ("hidden_dropout_prob", 0.1),
            ("lsh_attention_probs_dropout_prob", 0.1),
        ],
    );
    let original = PathBuf::from(format!("{CASE}/config.json"));
    let (r0, base) = grad(&original, &dir, &[]);
    assert!(
        r0.status.success(),
        "{}",
        String::from_utf8_lossy(&r0.stderr)
    );
    let (r1, off) = grad(&config, &dir, &["--no-dropout"]);
    assert!(
        r1.status.success(),
        "{}",
        String::from_utf8_lossy(&r1.stderr)
    );
    assert_eq!(off, base, "--no-dropout is the step without dropout");
    let (r2, on) = grad(&config, &dir, &["--seed", "1"]);
    assert!(
        r2.status.success(),
        "{}",
        String::from_utf8_lossy(&r2.stderr)
    );
    assert!(
        (on - base).abs() > 1e-6,
        "dropout changed nothing: {on} vs {base}"
    );
    let (_, again) = grad(&config, &dir, &["--seed", "1"]);
    assert_eq!(again, on, "one seed, one loss");
    let (_, other) = grad(&config, &dir, &["--seed", "2"]);
    assert_ne!(other, on, "another seed draws other masks");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_training_step_command_applies_the_configs_dropout() {
    // dump --train builds the step as compile --train and explain --train do
    // (PassArgs::options): masks with the config's dropout, none with
    // --no-dropout, none in the inference graph.
    let dir = scratch("dump");
    let config = with_dropout(&dir, &[("hidden_dropout_prob", 0.1)]);
    let masks = |extra: &[&str]| {
        let r = Command::new(env!("CARGO_BIN_EXE_reformc"))
            .arg("dump")
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout)
            .matches("dropout_mask")
            .count()
    };
    assert!(masks(&["--train"]) > 0, "no mask in the training step");
    assert_eq!(masks(&["--train", "--no-dropout"]), 0);
    assert_eq!(masks(&[]), 0, "inference has no dropout");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `compile --train` of a config with dropout: every variant of the step
/// executable (seeded, rotations, buckets) draws the masks `reformc grad`
/// draws, keyed by `--seed`, so its gradients are `grad`'s, byte for byte,
/// and differ from the step without dropout. (The rotations and buckets
/// variants used to be built without dropout, and the executable could not
/// pass them a seed: the compile failed.) Also a model without LSH layers,
/// whose one variant takes the seed only for its masks.
#[test]
fn a_step_executable_applies_the_configs_dropout_in_every_variant() {
    let dir = scratch("step-exe");
    let case = |name: &str| PathBuf::from(format!("tests/fixtures/{name}"));
    let lsh = with_dropout(
        &dir,
        &[
            ("hidden_dropout_prob", 0.1),
            ("lsh_attention_probs_dropout_prob", 0.1),
        ],
    );
    let buckets = format!("{CASE}/lsh_buckets.npy");
    let rotations = format!("{CASE}/lsh_rotations.npy");
    let flags: [&[&str]; 3] = [
        &["--seed", "1"],
        &["--lsh-buckets", &buckets, "--seed", "1"],
        &["--lsh-rotations", &rotations, "--seed", "1"],
    ];
    check_step_exe(&dir, &lsh, &case("causal_lsh_r1"), &flags);
    // A local-only model: its config, with dropout, in a folder of its own.
    let local_dir = dir.join("local");
    std::fs::create_dir_all(&local_dir).unwrap();
    let text = std::fs::read_to_string(case("noncausal_local_only").join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["hidden_dropout_prob"] = serde_json::json!(0.1);
    cfg["local_attention_probs_dropout_prob"] = serde_json::json!(0.1);
    let local = local_dir.join("config.json");
    std::fs::write(&local, cfg.to_string()).unwrap();
    check_step_exe(
        &local_dir,
        &local,
        &case("noncausal_local_only"),
        &[&["--seed", "3"]],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Compiles `config` (weights and ids from `fixture`) as a step executable
/// and runs it with each of `flags`: the same gradient bytes as `reformc
/// grad` (LLVM JIT) with those flags, and another loss than without dropout.
fn check_step_exe(dir: &Path, config: &Path, fixture: &Path, flags: &[&[&str]]) {
    let weights = fixture.join("model.safetensors");
    let ids = fixture.join("input_ids.npy");
    let exe = dir.join("step");
    let r = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .arg("compile")
        .arg(config)
        .arg("--weights")
        .arg(&weights)
        .args(["--train", "-q", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for extra in flags {
        let run = |cmd: &mut Command, out: &str, more: &[&str]| -> (Vec<u8>, f64) {
            let (g, l) = (dir.join(out), dir.join(format!("{out}.loss.npy")));
            let r = cmd
                .arg("--input")
                .arg(&ids)
                .arg("--output")
                .arg(&g)
                .arg("--loss-output")
                .arg(&l)
                .args(*extra)
                .args(more)
                .output()
                .unwrap();
            assert!(
                r.status.success(),
                "{extra:?} {more:?}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            let loss = read::<f64>(&l).iter().next().copied().unwrap();
            (std::fs::read(&g).unwrap(), loss)
        };
        let grad = || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_reformc"));
            c.arg("grad")
                .arg(config)
                .arg("--weights")
                .arg(&weights)
                .arg("-q");
            c
        };
        let (exe_grads, exe_loss) = run(&mut Command::new(&exe), "exe.safetensors", &[]);
        let (jit_grads, jit_loss) = run(&mut grad(), "jit.safetensors", &[]);
        let (_, plain_loss) = run(&mut grad(), "plain.safetensors", &["--no-dropout"]);
        assert_eq!(exe_loss, jit_loss, "{extra:?}");
        assert!(
            exe_grads == jit_grads,
            "{extra:?}: the gradients differ from grad's"
        );
        assert!(
            (exe_loss - plain_loss).abs() > 1e-6,
            "{extra:?}: no dropout was applied ({exe_loss} vs {plain_loss})"
        );
    }
}

/// Hugging Face drops axial position embeddings with `dropout2d` over the
/// `[B, ax1, ax0, D]` transpose: one draw per batch row and axial column
/// `j = p mod ax1` keeps or drops every position of that column in every
/// channel. The interpreter and the JIT agree bit for bit.
#[test]
fn axial_position_dropout_drops_whole_axial_columns() {
    let text = r#"graph {
  %0 = input {name="input_ids"} : i64[B,L]
  %1 = weight {name="reformer.embeddings.word_embeddings.weight"} : f32[8,6]
  %2 = embedding %0, %1 : f32[B,L,6]
  %3 = iota %0 {axis=1} : i64[L]
  %4 = weight {name="reformer.embeddings.position_embeddings.weights.0"} : f32[4,1,2]
  %5 = weight {name="reformer.embeddings.position_embeddings.weights.1"} : f32[1,8,4]
  %6 = axial_pos_embedding %3, %4, %5 : f32[L,6]
  %7 = add %2, %6 : f32[B,L,6]
  output "e" = %7
}
"#;
    let old = reformc_ir::parse(text).unwrap();
    let rates = reformc_passes::lower_model::DropoutRates {
        hidden: 0.5,
        ..Default::default()
    };
    let g = reformc_passes::lower_model::lower_model_with(&old, Some(rates)).unwrap();
    // Words are zeros, positions ones: the output is the positions' mask.
    let weights = BTreeMap::from([
        (
            "reformer.embeddings.word_embeddings.weight".to_string(),
            Tensor::F32(ArrayD::zeros(IxDyn(&[8, 6]))),
        ),
        (
            "reformer.embeddings.position_embeddings.weights.0".to_string(),
            Tensor::F32(ArrayD::ones(IxDyn(&[4, 1, 2]))),
        ),
        (
            "reformer.embeddings.position_embeddings.weights.1".to_string(),
            Tensor::F32(ArrayD::ones(IxDyn(&[1, 8, 4]))),
        ),
    ]);
    let (mut kept, mut dropped) = (0, 0);
    for (len, seed) in [(32usize, 3i64), (20, 11), (32, 12)] {
        let inputs = BTreeMap::from([
            ("seed".to_string(), scalar(seed)),
            (
                "input_ids".to_string(),
                Tensor::I64(ArrayD::from_elem(IxDyn(&[3, len]), 1)),
            ),
        ]);
        let want = reformc_interp::run(&g, &inputs, &weights).unwrap()["e"].to_f64();
        let got = reformc_backend_llvm::jit_run(&g, &inputs, &weights).unwrap()["e"].to_f64();
        assert_eq!(want, got, "JIT vs interpreter at L={len}");
        for b in 0..3 {
            for p in 0..len {
                let x = want[[b, p, 0]];
                assert!(x == 0.0 || x == 2.0, "{x} at [{b}, {p}]");
                assert!(
                    (0..6).all(|d| want[[b, p, d]] == x),
                    "a channel differs at [{b}, {p}]"
                );
                assert_eq!(
                    x,
                    want[[b, p % 8, 0]],
                    "column {} differs at [{b}, {p}]",
                    p % 8
                );
                if p < 8 {
                    if x == 0.0 {
                        dropped += 1
                    } else {
                        kept += 1
                    }
                }
            }
        }
    }
    assert!(kept > 10 && dropped > 10, "kept {kept}, dropped {dropped}");
}
