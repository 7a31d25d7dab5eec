//! `reformc grad` and `reformc dump --train` end to end: the files they write,
//! and the bad input they refuse (exit 2, one line, nothing written).

use crate::common;

use common::read;
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CASE: &str = "tests/fixtures/causal_mixed_r2";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reformc-cli-grad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn reformc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args)
        .output()
        .unwrap()
}

fn f(name: &str) -> String {
    format!("{CASE}/{name}")
}

fn grad(out: &Path, extra: &[&str]) -> Output {
    let (config, weights, input) = (f("config.json"), f("model.safetensors"), f("input_ids.npy"));
    let mut args = vec![
        "grad",
        &config,
        "--weights",
        &weights,
        "--input",
        &input,
        "-q",
    ];
    let out_s = out.to_str().unwrap();
    args.extend(["--output", out_s]);
    args.extend(extra);
    reformc(&args)
}

#[test]
fn writes_the_loss_and_one_gradient_per_weight() {
    let dir = scratch("ok");
    let (out, loss) = (dir.join("g.safetensors"), dir.join("loss.npy"));
    let (labels, buckets) = (f("labels.npy"), f("lsh_buckets.npy"));
    let r = grad(
        &out,
        &[
            "--labels",
            &labels,
            "--lsh-buckets",
            &buckets,
            "--precision",
            "f64",
            "--loss-output",
            loss.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("loss 4."),
        "{}",
        String::from_utf8_lossy(&r.stdout)
    );
    let got: ArrayD<f64> = read(&loss);
    let want: ArrayD<f64> = read(Path::new(&f("loss_f64.npy")));
    assert_eq!(got.ndim(), 0);
    assert!((got[IxDyn(&[])] - want[IxDyn(&[])]).abs() < 1e-9 * want[IxDyn(&[])].abs());
    let grads = reformc_frontend::weights::WeightFile::open(&out).unwrap();
    let weights =
        reformc_frontend::weights::WeightFile::open(Path::new(&f("model.safetensors"))).unwrap();
    for name in weights.names() {
        if name == "lm_head.bias" {
            continue; // HF 5.x never reads it, and neither does the graph.
        }
        let (dtype, shape) = grads
            .info(name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(
            (dtype.as_str(), shape),
            ("F64", weights.info(name).unwrap().1),
            "{name}"
        );
    }
}

#[test]
fn seeded_hashing_gives_finite_f32_gradients() {
    let dir = scratch("seeded");
    let out = dir.join("g.safetensors");
    let r = grad(&out, &["--seed", "3"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let grads = reformc_frontend::weights::WeightFile::open(&out).unwrap();
    let mut nonzero = 0;
    for name in grads.names() {
        let v = grads.tensor_f32(name).unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}");
        nonzero += usize::from(v.iter().any(|&x| x != 0.0));
    }
    assert!(
        nonzero >= grads.len() - 1,
        "{nonzero} of {} gradients are non-zero",
        grads.len()
    );
}

fn refused(r: &Output, needle: &str, out: &Path) {
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert!(!out.exists(), "{} was written", out.display());
}

#[test]
fn refuses_labels_out_of_range_or_misshapen() {
    let dir = scratch("bad");
    let out = dir.join("g.safetensors");
    let ids: ArrayD<i64> = read(Path::new(&f("input_ids.npy")));
    let mut bad = ids.clone();
    bad[[0, 5]] = 48;
    let p = dir.join("labels.npy");
    common::write(&p, &bad);
    refused(
        &grad(&out, &["--labels", p.to_str().unwrap()]),
        "label 48 at [0, 5] is out of range",
        &out,
    );
    bad[[0, 5]] = -7;
    common::write(&p, &bad);
    refused(
        &grad(&out, &["--labels", p.to_str().unwrap()]),
        "expected -100 or 0 <= label < 48",
        &out,
    );
    let short = ArrayD::from_elem(IxDyn(&[1, 3]), 1i64);
    common::write(&p, &short);
    refused(
        &grad(&out, &["--labels", p.to_str().unwrap()]),
        "labels: expected shape",
        &out,
    );
    refused(
        &grad(Path::new(&f("input_ids.npy")), &[]),
        "--output",
        Path::new("/nonexistent"),
    );
}

#[test]
fn dump_train_prints_the_step_graph() {
    let r = reformc(&[
        "dump",
        &f("config.json"),
        "--train",
        "-q",
        "--lsh-source",
        "buckets",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("input {name=\"labels\"}"), "no labels input");
    assert!(text.contains("output \"loss\""));
    assert!(text.contains("output \"grad:reformer.embeddings.word_embeddings.weight\""));
    assert!(
        text.contains("scatter_add"),
        "the embedding's backward is a scatter_add"
    );
    assert!(
        !text.contains("reversible_block"),
        "blocks are flattened for the recompute"
    );
    assert!(
        text.contains("= linear ") && text.contains("= matmul "),
        "products of a weight are linears again after differentiation (autodiff/raise.rs); \
         their gradients are matmuls"
    );
    assert!(
        text.contains("lsh_attention_grad") && text.contains("local_attention_grad"),
        "LSH and local attention are differentiated by their fused kernels"
    );
}

#[test]
fn explain_train_reports_the_step_plan() {
    let r = reformc(&["explain", &f("config.json"), "--seq-len", "64", "--train"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8_lossy(&r.stdout);
    let flops = |pass: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(pass))
            .unwrap_or_else(|| panic!("no `{pass}` row in:\n{text}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (v, unit) = (cols[3].parse::<f64>().unwrap(), cols[4]);
        v * match unit {
            "kFLOP" => 1e3,
            "MFLOP" => 1e6,
            "GFLOP" => 1e9,
            _ => 1.0,
        }
    };
    // Forward + recompute + backward: about 3-5x the forward's FLOPs.
    let ratio = flops("autodiff") / flops("chunk");
    assert!(
        (3.0..5.0).contains(&ratio),
        "step/forward FLOPs {ratio}\n{text}"
    );
}

/// The fused derivative kernels (layer norm, LSH and local attention; the
/// fixture mixes both attention kinds; the feed-forward, chunked) against
/// autodiff of the model ops' tensor-op decompositions (`--lowered-grads`):
/// f64 steps agree within 1e-9 of each tensor's largest gradient, and `dump
/// --train` shows which was differentiated.
#[test]
fn fused_derivatives_match_the_lowered_decompositions() {
    let dir = scratch("fused");
    let (labels, buckets) = (f("labels.npy"), f("lsh_buckets.npy"));
    let common = [
        "--labels",
        &labels,
        "--lsh-buckets",
        &buckets,
        "--precision",
        "f64",
    ];
    let (fused, lowered) = (
        dir.join("fused.safetensors"),
        dir.join("lowered.safetensors"),
    );
    let mut args = common.to_vec();
    args.extend(["--chunk-ff", "4"]);
    let r = grad(&fused, &args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let mut args = common.to_vec();
    args.extend(["--chunk-ff", "4", "--lowered-grads"]);
    let r = grad(&lowered, &args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let a = reformc_frontend::weights::WeightFile::open(&fused).unwrap();
    let b = reformc_frontend::weights::WeightFile::open(&lowered).unwrap();
    assert_eq!(a.names(), b.names());
    for name in b.names() {
        let f64s = |w: &reformc_frontend::weights::WeightFile| -> Vec<f64> {
            assert_eq!(w.info(name).unwrap().0, "F64", "{name}");
            w.bytes(name)
                .unwrap()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let (x, y) = (f64s(&a), f64s(&b));
        let scale = y.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let err = x
            .iter()
            .zip(&y)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        assert!(err <= 1e-9 * scale, "{name}: {err} against {scale}");
    }
    let dump = |extra: &[&str]| {
        let (config, weights) = (f("config.json"), f("model.safetensors"));
        let mut args = vec!["dump", "--train", &config, "--weights", &weights, "-q"];
        args.extend(extra);
        let r = reformc(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout).into_owned()
    };
    let fused = dump(&["--chunk-ff", "4"]);
    for op in [
        "layer_norm_grad",
        "lsh_attention_grad",
        "local_attention_grad",
        "feed_forward_grad",
    ] {
        assert!(fused.contains(op), "no {op} in the step");
    }
    let lowered = dump(&["--chunk-ff", "4", "--lowered-grads"]);
    for op in [
        "layer_norm",
        "lsh_attention",
        "local_attention",
        "feed_forward",
    ] {
        assert!(!lowered.contains(&format!("{op} ")), "{op} kept");
        assert!(!lowered.contains(&format!("{op}_grad")), "{op}_grad used");
    }
}
