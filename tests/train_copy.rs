//! `reformc train` on a copy task: a tiny Reformer (2 layers, local + LSH,
//! hidden 32, vocab 16, windows of 32) learns, and a resumed run reproduces
//! the uninterrupted one bit for bit. The training tests need the gradient
//! engine (the lead enables them when it lands).

use reformc_frontend::config::{parse_model_config, read_config_text};
use reformc_frontend::spec::HeadSpec;
use reformc_frontend::weights::expected_tensors;
use reformc_interp::philox::{normals, philox4x32};
use reformc_tensor::npy;
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("reformc-train-copy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CONFIG: &str = r#"{
  "architectures": ["ReformerModelWithLMHead"],
  "model_type": "reformer",
  "attn_layers": ["local", "lsh"],
  "hidden_size": 32,
  "num_attention_heads": 2,
  "attention_head_size": 16,
  "feed_forward_size": 64,
  "vocab_size": 16,
  "axial_pos_embds": true,
  "axial_pos_shape": [4, 8],
  "axial_pos_embds_dim": [16, 16],
  "max_position_embeddings": 32,
  "local_attn_chunk_length": 8,
  "local_num_chunks_before": 1,
  "local_num_chunks_after": 0,
  "lsh_attn_chunk_length": 8,
  "lsh_num_chunks_before": 1,
  "lsh_num_chunks_after": 0,
  "num_buckets": 4,
  "num_hashes": 1,
  "is_decoder": true,
  "hidden_act": "relu",
  "hidden_dropout_prob": 0.0,
  "local_attention_probs_dropout_prob": 0.0,
  "lsh_attention_probs_dropout_prob": 0.0,
  "layer_norm_eps": 1e-12,
  "pad_token_id": 0,
  "chunk_size_lm_head": 0,
  "chunk_size_feed_forward": 0,
  "tie_word_embeddings": false
}"#;

/// Writes the config and a random initialisation (layer norms 1 and 0,
/// biases 0, everything else N(0, 0.05²) from Philox); returns (config, weights).
fn tiny_model(s: &Scratch) -> (PathBuf, PathBuf) {
    let config = s.path("config.json");
    std::fs::write(&config, CONFIG).unwrap();
    let (mut spec, _, _) =
        parse_model_config(&read_config_text(&config).unwrap(), &config).unwrap();
    spec.weight_prefix = "reformer.".into();
    spec.head = HeadSpec::LmHead { bias: false };
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = expected_tensors(&spec)
        .0
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: u64 = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("layer_norm.weight") {
                vec![1.0; n as usize]
            } else if name.ends_with(".bias") {
                vec![0.0; n as usize]
            } else {
                normals(2024, i as u64, n as usize)
                    .iter()
                    .map(|x| (0.05 * x) as f32)
                    .collect()
            };
            let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            (name, shape.iter().map(|&d| d as usize).collect(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let weights = s.path("init.safetensors");
    safetensors::tensor::serialize_to_file(views, &None, &weights).unwrap();
    (config, weights)
}

/// Blocks of 8 tokens each followed by its copy; tokens 1..15 drawn with
/// probability ∝ 1/k² (entropy 1.34 nats), so even a unigram model beats
/// uniform guessing (ln 16 = 2.77), and the copies are predictable.
fn copy_task(s: &Scratch) -> PathBuf {
    let weights: Vec<f64> = (1..16).map(|k| 1.0 / (k * k) as f64).collect();
    let total: f64 = weights.iter().sum();
    let draw = |i: u32| {
        let mut p = f64::from(philox4x32([i, 0, 0, 0], [7, 0])[0]) / 4_294_967_296.0 * total;
        for (k, w) in weights.iter().enumerate() {
            if p < *w {
                return k as i64 + 1;
            }
            p -= w;
        }
        15
    };
    let mut ids = Vec::new();
    for block in 0..500u32 {
        let b: Vec<i64> = (0..8).map(|j| draw(block * 8 + j)).collect();
        ids.extend_from_slice(&b);
        ids.extend_from_slice(&b);
    }
    let p = s.path("tokens.npy");
    npy::write(&p, &npy::to_bytes_i64(&[ids.len()], &ids)).unwrap();
    p
}

/// Runs reformc; returns (exit code, stdout, stderr).
fn reformc(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        o.status.code().unwrap_or(-1),
        text(&o.stdout),
        text(&o.stderr),
    )
}

/// `reformc train` with Adam on the copy task; returns the loss of each progress line.
fn train(config: &Path, data: &Path, out: &Path, steps: u64, from: Option<&Path>) -> Vec<f64> {
    train_with(config, data, out, steps, from, &[])
}

/// [`train`] with `extra` flags.
fn train_with(
    config: &Path,
    data: &Path,
    out: &Path,
    steps: u64,
    from: Option<&Path>,
    extra: &[&str],
) -> Vec<f64> {
    let steps = steps.to_string();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"train",
        &config,
        &"--data",
        &data,
        &"--steps",
        &steps,
        &"--seq-len",
        &"32",
        &"--batch",
        &"4",
        &"--optimizer",
        &"adam",
        &"--lr",
        &"0.01",
        &"--seed",
        &"5",
        &"--checkpoint-every",
        &"10",
        &"--out",
        &out,
    ];
    let init = out.with_file_name("init.safetensors");
    let from = from.map(Path::to_path_buf);
    match &from {
        Some(ck) => {
            args.push(&"--resume");
            args.push(ck);
        }
        None => {
            args.push(&"--weights");
            args.push(&init);
        }
    }
    args.extend(extra.iter().map(|x| x as &dyn AsRef<std::ffi::OsStr>));
    let (code, stdout, stderr) = reformc(&args);
    assert_eq!(code, 0, "{stderr}");
    stdout
        .lines()
        .filter(|l| l.starts_with("step "))
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn the_copy_model_and_data_are_valid() {
    // The generated model runs (interpreter), so the training tests start from valid files.
    let s = Scratch::new("valid");
    let (config, weights) = tiny_model(&s);
    copy_task(&s);
    let ids = s.path("ids.npy");
    npy::write(
        &ids,
        &npy::to_bytes_i64(&[1, 32], &(0..32).map(|i| i % 16).collect::<Vec<_>>()),
    )
    .unwrap();
    let out = s.path("logits.npy");
    let (code, _, stderr) = reformc(&[
        &"run",
        &config,
        &"--weights",
        &weights,
        &"--input",
        &ids,
        &"--output",
        &out,
        &"--interp",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let logits = npy::read(&out).unwrap();
    assert_eq!(logits.shape, vec![1, 32, 16]);
    let tokens = npy::read(&s.path("tokens.npy")).unwrap();
    let npy::NpyData::Int(t) = tokens.data else {
        panic!()
    };
    assert!(t.iter().all(|&x| (1..16).contains(&x)));
    assert_eq!(t[..8], t[8..16]);
}

#[test]
fn training_reduces_the_copy_loss() {
    let s = Scratch::new("loss");
    let (config, _) = tiny_model(&s);
    let data = copy_task(&s);
    let losses = train(&config, &data, &s.path("c.safetensors"), 60, None);
    assert_eq!(losses.len(), 60);
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[55..]));
    // Uniform guessing costs ln 16 = 2.77; the unigram entropy is 1.34 and
    // half of the tokens are copies.
    assert!(
        last < 0.8 * first,
        "loss {first:.4} -> {last:.4}: {losses:?}"
    );
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let s = Scratch::new("resume");
    let (config, _) = tiny_model(&s);
    let data = copy_task(&s);
    let whole = s.path("whole.safetensors");
    let all = train(&config, &data, &whole, 40, None);
    let part = s.path("part.safetensors");
    let first = train(&config, &data, &part, 20, None);
    let rest = train(&config, &data, &part, 40, Some(&part));
    assert_eq!([first, rest].concat(), all, "losses");
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&part).unwrap(),
        "checkpoints"
    );
}

#[test]
fn the_compiled_step_trains_like_the_interpreter() {
    // The default engine (the step compiled once by the LLVM JIT, weights
    // rebound each step) against `--interp`, step by step: f32 sums in
    // different orders, so close, not equal.
    let s = Scratch::new("engines");
    let (config, _) = tiny_model(&s);
    let data = copy_task(&s);
    let jit = train(&config, &data, &s.path("jit.safetensors"), 8, None);
    let interp = train_with(
        &config,
        &data,
        &s.path("interp.safetensors"),
        8,
        None,
        &["--interp"],
    );
    assert_eq!(jit.len(), interp.len());
    for (step, (a, b)) in jit.iter().zip(&interp).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "step {step}: JIT loss {a} vs interpreter {b}"
        );
    }
}

#[test]
fn bf16_training_learns_the_copy_task_and_resumes_bit_for_bit() {
    // `--precision bf16`: the products of the step in bf16 (accumulated in
    // f32), the weights and Adam's state in f32. It still learns, differs
    // from the f32 run, and a resumed run reproduces the uninterrupted one.
    let s = Scratch::new("bf16");
    let (config, _) = tiny_model(&s);
    let data = copy_task(&s);
    let bf16 = ["--precision", "bf16"];
    let losses = train_with(
        &config,
        &data,
        &s.path("whole.safetensors"),
        60,
        None,
        &bf16,
    );
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[55..]));
    assert!(
        last < 0.8 * first,
        "loss {first:.4} -> {last:.4}: {losses:?}"
    );
    let f32_losses = train(&config, &data, &s.path("f32.safetensors"), 8, None);
    assert_ne!(f32_losses, losses[..8], "bf16 changes the losses");
    for (step, (a, b)) in losses.iter().zip(&f32_losses).enumerate() {
        assert!(
            (a - b).abs() <= 2e-2 * b.abs(),
            "step {step}: bf16 loss {a} vs f32 {b}"
        );
    }
    let part = s.path("part.safetensors");
    let head = train_with(&config, &data, &part, 30, None, &bf16);
    let tail = train_with(&config, &data, &part, 60, Some(&part), &bf16);
    assert_eq!([head, tail].concat(), losses, "losses");
    assert_eq!(
        std::fs::read(s.path("whole.safetensors")).unwrap(),
        std::fs::read(&part).unwrap(),
        "checkpoints"
    );
}

#[test]
fn a_decaying_clipped_accumulating_run_resumes_bit_for_bit() {
    // `--lr-decay cosine --decay-steps 24 --max-grad-norm 0.5`: the schedule
    // is stored in the checkpoint, so a resume without those flags continues
    // it and reproduces the uninterrupted run (`--grad-accum 2`, like
    // `--batch`, is given again). The progress lines report the gradient
    // norm before clipping, above the limit here (clipping acts).
    let s = Scratch::new("schedule");
    let (config, _) = tiny_model(&s);
    let data = copy_task(&s);
    let flags = [
        "--lr-decay",
        "cosine",
        "--decay-steps",
        "24",
        "--max-grad-norm",
        "0.5",
        "--warmup",
        "4",
        "--grad-accum",
        "2",
        "--log-every",
        "1",
    ];
    let whole = s.path("whole.safetensors");
    let all = train_with(&config, &data, &whole, 24, None, &flags);
    let plain = train(&config, &data, &s.path("plain.safetensors"), 24, None);
    assert_ne!(all, plain, "the schedule changes the run");
    let part = s.path("part.safetensors");
    let head = train_with(&config, &data, &part, 12, None, &flags);
    let tail = train_with(
        &config,
        &data,
        &part,
        24,
        Some(&part),
        &["--grad-accum", "2", "--log-every", "1"],
    );
    assert_eq!([head, tail].concat(), all, "losses");
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&part).unwrap(),
        "checkpoints"
    );
    let (init, norms_out) = (s.path("init.safetensors"), s.path("norms.safetensors"));
    let args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"train",
        &config,
        &"--data",
        &data,
        &"--steps",
        &"2",
        &"--seq-len",
        &"32",
        &"--batch",
        &"4",
        &"--weights",
        &init,
        &"--max-grad-norm",
        &"0.5",
        &"--out",
        &norms_out,
    ];
    let (code, stdout, stderr) = reformc(&args);
    assert_eq!(code, 0, "{stderr}");
    let norms: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("step "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f[9], "grad-norm", "{l}");
            f[10].parse().unwrap()
        })
        .collect();
    assert!(
        norms.len() == 2 && norms.iter().all(|&n| n > 0.5),
        "{stdout}"
    );
}
