//! `reformc train`: the bad input it refuses before any training (each exit 2
//! with one line, nothing written). The runs themselves need the gradient
//! engine: see tests/train_copy.rs.

use crate::common;

use reformc_frontend::config::{parse_model_config, read_config_text};
use reformc_frontend::weights::{expected_tensors, WeightFile};
use reformc_tensor::{npy, Tensor};
use reformc_train::checkpoint::{self, ModelId, RunInfo};
use reformc_train::optim::{AdamConfig, Optimizer, OptimizerConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const CASE: &str = "tests/fixtures/causal_mixed_r2";

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("reformc-cli-train-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }

    /// A 1-D int64 token file.
    fn tokens(&self, name: &str, ids: &[i64]) -> PathBuf {
        let p = self.path(name);
        npy::write(&p, &npy::to_bytes_i64(&[ids.len()], ids)).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(f: &str) -> PathBuf {
    common::root().join(CASE).join(f)
}

/// Runs `reformc train CONFIG --data DATA --out OUT` + `extra`; returns (exit code, stderr).
fn train(data: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .arg("train")
        .arg(fixture("config.json"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "reformc panicked: {stderr}");
    (o.status.code().unwrap_or(-1), stderr)
}

/// Asserts exit 2 with one line containing `want`, and no `out` written.
fn refused(data: &Path, out: &Path, extra: &[&str], want: &str) {
    let (code, stderr) = train(data, out, extra);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(want), "expected `{want}` in: {stderr}");
    assert!(!out.exists(), "{} was written", out.display());
    assert!(!checkpoint::temp_path(out).exists());
}

fn good_tokens(s: &Scratch) -> PathBuf {
    let ids: Vec<i64> = (0..500).map(|i| (i * 7 % 48) as i64).collect();
    s.tokens("tokens.npy", &ids)
}

fn weights_flag() -> String {
    fixture("model.safetensors").display().to_string()
}

#[test]
fn data_shorter_than_one_window() {
    let s = Scratch::new("short");
    let data = s.tokens("short.npy", &[1, 2, 3, 4, 5]);
    let w = weights_flag();
    refused(
        &data,
        &s.path("c.safetensors"),
        &["--weights", &w, "--steps", "2", "--seq-len", "32"],
        "short.npy: --data: 5 tokens is shorter than one window of --seq-len 32",
    );
}

#[test]
fn token_ids_outside_the_vocabulary() {
    let s = Scratch::new("vocab");
    let mut ids = vec![3i64; 100];
    ids[41] = 48;
    let data = s.tokens("ids.npy", &ids);
    let w = weights_flag();
    refused(
        &data,
        &s.path("c.safetensors"),
        &["--weights", &w, "--steps", "2", "--seq-len", "32"],
        "ids.npy: --data: token id 48 at index 41 is outside [0, 48) (the model's vocab_size)",
    );
}

#[test]
fn data_that_is_not_a_1d_integer_array() {
    let s = Scratch::new("dtype");
    let f = s.path("f.npy");
    npy::write(&f, &npy::to_bytes_f32(&[64], &[1.0; 64])).unwrap();
    let w = weights_flag();
    let args = ["--weights", w.as_str(), "--steps", "2", "--seq-len", "32"];
    refused(
        &f,
        &s.path("c.safetensors"),
        &args,
        "expected a 1-D integer array of token ids, found dtype <f4",
    );
    let two = s.path("two.npy");
    npy::write(&two, &npy::to_bytes_i64(&[2, 40], &[1; 80])).unwrap();
    refused(&two, &s.path("c.safetensors"), &args, "found shape [2, 40]");
    refused(
        &s.path("missing.npy"),
        &s.path("c.safetensors"),
        &args,
        "missing.npy",
    );
}

#[test]
fn bad_counts_and_rates() {
    let s = Scratch::new("flags");
    let data = good_tokens(&s);
    let out = s.path("c.safetensors");
    let w = weights_flag();
    let base = |steps: &'static str, len: &'static str, extra: &[&'static str]| {
        let mut v = vec!["--weights", w.as_str(), "--steps", steps, "--seq-len", len];
        v.extend_from_slice(extra);
        v
    };
    refused(
        &data,
        &out,
        &base("0", "32", &[]),
        "--steps must be at least 1",
    );
    refused(
        &data,
        &out,
        &base("2", "0", &[]),
        "--seq-len must be at least 1",
    );
    refused(
        &data,
        &out,
        &base("2", "32", &["--batch", "0"]),
        "--batch must be at least 1",
    );
    refused(
        &data,
        &out,
        &base("2", "32", &["--checkpoint-every", "0"]),
        "--checkpoint-every must be at least 1",
    );
    refused(
        &data,
        &out,
        &base("2", "32", &["--lr=-0.1"]),
        "--lr -0.1: the learning rate must be a positive finite number",
    );
    refused(
        &data,
        &out,
        &base("2", "32", &["--lr", "NaN"]),
        "the learning rate must be a positive finite number",
    );
    refused(
        &data,
        &out,
        &base("2", "32", &["--optimizer", "sgd"]),
        "invalid value 'sgd' for '--optimizer",
    );
    refused(
        &data,
        &out,
        &base("2", "32", &["--max-grad-norm", "0"]),
        "--max-grad-norm 0: the norm to clip gradients to must be a positive finite number",
    );
    refused(
        &data,
        &out,
        &base("2", "32", &["--decay-steps", "5"]),
        "--decay-steps 5 needs --lr-decay linear or cosine",
    );
    refused(
        &data,
        &out,
        &base("2", "32", &["--lr-decay", "exp"]),
        "invalid value 'exp' for '--lr-decay",
    );
    refused(
        &data,
        &out,
        &["--weights", w.as_str(), "--steps=-3", "--seq-len", "32"],
        "invalid value '-3' for '--steps <STEPS>'",
    );
    refused(
        &data,
        &out,
        &base("2", "1000", &[]),
        "--seq-len: sequence length 1000 (padded to 1008) exceeds max_position_embeddings=64",
    );
    refused(
        &data,
        &out,
        &["--steps", "2", "--seq-len", "32"],
        "--weights",
    );
}

#[test]
fn output_clashing_with_an_input() {
    let s = Scratch::new("clash");
    let data = good_tokens(&s);
    let w = weights_flag();
    let before = std::fs::read(&data).unwrap();
    let (code, stderr) = train(
        &data,
        &data,
        &["--weights", &w, "--steps", "2", "--seq-len", "32"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--out"), "{stderr}");
    assert_eq!(std::fs::read(&data).unwrap(), before);
}

/// The fixture's weights, as F32 tensors.
fn fixture_weights() -> BTreeMap<String, Tensor> {
    let file = WeightFile::open(&fixture("model.safetensors")).unwrap();
    file.names()
        .into_iter()
        .map(|n| {
            let (_, shape) = file.info(n).unwrap();
            let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            let a = ndarray::ArrayD::from_shape_vec(shape, file.tensor_f32(n).unwrap()).unwrap();
            (n.to_string(), Tensor::F32(a))
        })
        .collect()
}

/// The identity `reformc train` gives the fixture's model (its resolved spec and weight list).
fn fixture_model() -> ModelId {
    let path = fixture("config.json");
    let (mut spec, _, _) = parse_model_config(&read_config_text(&path).unwrap(), &path).unwrap();
    WeightFile::open(&fixture("model.safetensors"))
        .unwrap()
        .apply_layout(&mut spec, false);
    let shapes = expected_tensors(&spec)
        .0
        .into_iter()
        .map(|(n, s)| (n, s.into_iter().map(|d| d as usize).collect()))
        .collect();
    ModelId::from_shapes(format!("{spec:?}"), shapes)
}

/// Writes a checkpoint of `weights` claiming to be of `model`.
fn write_checkpoint(path: &Path, model: &ModelId, weights: &BTreeMap<String, Tensor>) {
    let opt = Optimizer::new(OptimizerConfig::Adam(AdamConfig::default()), weights);
    let run = RunInfo {
        seed: 0,
        seq_len: 32,
        batch: 1,
        grad_accum: 1,
        data_len: 500,
    };
    checkpoint::write(path, 3, &run, model, weights, &opt).unwrap();
}

#[test]
fn resume_from_a_checkpoint_of_another_model() {
    let s = Scratch::new("other");
    let data = good_tokens(&s);
    let mut weights = fixture_weights();
    weights.remove("lm_head.bias");
    let ours = fixture_model();
    // The same weights, another configuration (e.g. a different eps).
    let other = ModelId {
        config: ours
            .config
            .replace("layer_norm_eps: 1e-12", "layer_norm_eps: 1e-5"),
        ..ours.clone()
    };
    assert_ne!(other.config, ours.config);
    let ck = s.path("other.safetensors");
    write_checkpoint(&ck, &other, &weights);
    let bytes = std::fs::read(&ck).unwrap();
    let ck_flag = ck.display().to_string();
    let args = [
        "--resume",
        ck_flag.as_str(),
        "--steps",
        "5",
        "--seq-len",
        "32",
    ];
    refused(&data, &s.path("c.safetensors"), &args,
        "other.safetensors: a checkpoint of another model (the configuration differs: `layer_norm_eps: 1e-5` in it, `layer_norm_eps: 1e-12` in the model)");
    // Resuming in place: the checkpoint is not touched either.
    let (code, stderr) = train(&data, &ck, &args);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(std::fs::read(&ck).unwrap(), bytes);

    // A weight of another shape.
    let mut small = weights.clone();
    let name = "lm_head.decoder.weight";
    small.insert(
        name.into(),
        Tensor::zeros(reformc_tensor::DType::F32, &[47, 64]),
    );
    let shapes = small
        .iter()
        .map(|(n, t)| (n.clone(), t.shape().to_vec()))
        .collect();
    let ck2 = s.path("small.safetensors");
    write_checkpoint(
        &ck2,
        &ModelId::from_shapes(ours.config.clone(), shapes),
        &small,
    );
    let ck2_flag = ck2.display().to_string();
    refused(&data, &s.path("c.safetensors"), &["--resume", &ck2_flag, "--steps", "5", "--seq-len", "32"],
        "small.safetensors: a checkpoint of another model (weight `lm_head.decoder.weight` is [47, 64] in it, [48, 64] in the model)");
}

#[test]
fn resume_with_another_optimizer_or_from_a_plain_weight_file() {
    let s = Scratch::new("resume-bad");
    let data = good_tokens(&s);
    let mut weights = fixture_weights();
    weights.remove("lm_head.bias");
    let ck = s.path("ck.safetensors");
    write_checkpoint(&ck, &fixture_model(), &weights);
    let ck_flag = ck.display().to_string();
    refused(&data, &s.path("c.safetensors"),
        &["--resume", &ck_flag, "--optimizer", "adafactor", "--steps", "5", "--seq-len", "32"],
        "ck.safetensors: the checkpoint's optimizer is adam; --optimizer adafactor cannot continue its state");
    refused(
        &data,
        &s.path("c.safetensors"),
        &["--resume", &ck_flag, "--steps", "3", "--seq-len", "32"],
        "nothing to do: 3 steps are done and --steps is 3",
    );
    let missing = s.path("missing.safetensors").display().to_string();
    refused(
        &data,
        &s.path("c.safetensors"),
        &["--resume", &missing, "--steps", "5", "--seq-len", "32"],
        "missing.safetensors",
    );
    let w = weights_flag();
    refused(&data, &s.path("c.safetensors"), &["--resume", &w, "--steps", "5", "--seq-len", "32"],
        "model.safetensors: not a reformc checkpoint: metadata `format` is `pt`, expected `reformc-train-checkpoint`");
}

/// `--chunk-ff` runs the feed-forward as one op whose backward is one
/// blocked kernel (blocks of at least 1024 rows): on windows shorter than a
/// block it computes what the unchunked step computes in the same order, so
/// the checkpoints are the same bytes. `--chunk-lm-head` fuses the LM head
/// into the loss, a different summation order: its run only has to succeed.
#[test]
fn chunk_flags_train_and_the_feed_forward_chunk_keeps_the_bits() {
    let s = Scratch::new("chunks");
    let data = good_tokens(&s);
    let w = weights_flag();
    let run = |name: &str, extra: &[&str]| {
        let out = s.path(name);
        let mut args = vec!["--weights", w.as_str(), "--steps", "2", "--seq-len", "32"];
        args.extend_from_slice(extra);
        let (code, stderr) = train(&data, &out, &args);
        assert_eq!(code, 0, "{stderr}");
        std::fs::read(out).unwrap()
    };
    let plain = run("plain.safetensors", &[]);
    assert!(plain == run("ff.safetensors", &["--chunk-ff", "8"]));
    run("head.safetensors", &["--chunk-lm-head", "8"]);
    refused(
        &data,
        &s.path("c.safetensors"),
        &[
            "--weights",
            &w,
            "--steps",
            "2",
            "--seq-len",
            "32",
            "--chunk-ff",
            "0",
        ],
        "--chunk-ff",
    );
}
