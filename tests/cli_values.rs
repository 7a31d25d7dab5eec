//! Garbage values and absurd sizes: NaN/Inf weights, out-of-range LSH
//! buckets, non-finite rotations, oversized configs and size flags are user
//! errors (exit 2, naming the file or flag), never a wrapped number, an
//! all-NaN output or a failure later on.

use crate::common;

use common::Scratch;

use ndarray::ArrayD;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const CASE: &str = "tests/fixtures/causal_mixed_r2";
const EMB: &str = "reformer.embeddings.word_embeddings.weight";

fn fixture(case: &str, f: &str) -> PathBuf {
    common::root().join(case).join(f)
}

/// Runs reformc; returns (exit code, stderr).
fn reformc(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args.iter().map(|a| a.as_ref()))
        .current_dir(common::root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "reformc panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

/// Exit 2 with one `error:` line (clap adds a blank line and a hint) that
/// mentions every needle.
fn assert_user_error((code, stderr): (i32, String), needles: &[&str]) {
    assert_eq!(code, 2, "expected exit code 2, got {code}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {stderr}");
    for n in needles {
        assert!(
            errors[0].contains(n),
            "error should mention {n:?}: {stderr}"
        );
    }
}

/// `reformc run --interp` on the fixture `case` with `extra` arguments.
fn run_case(case: &str, weights: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String) {
    let s = Scratch::new("out");
    let out = s.path("out.npy");
    let config = fixture(case, "config.json");
    let input = fixture(case, "input_ids.npy");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"run",
        &config,
        &"--weights",
        &weights,
        &"--input",
        &input,
        &"--output",
        &out,
        &"--interp",
        &"-q",
    ];
    args.extend_from_slice(extra);
    reformc(&args)
}

/// The fixture's weights with `value` written at flat index `index` of `name`.
fn poked_weights(dir: &Scratch, name: &str, index: usize, value: f32) -> PathBuf {
    let bytes = std::fs::read(fixture(CASE, "model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let t = tensors.iter_mut().find(|t| t.0 == name).unwrap();
    t.3[4 * index..4 * index + 4].copy_from_slice(&value.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let p = dir.path("model.safetensors");
    std::fs::write(&p, safetensors::serialize(views, &None).unwrap()).unwrap();
    p
}

#[test]
fn nonfinite_weights_are_refused_unless_allowed() {
    let s = Scratch::new("nan-weights");
    for (value, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let w = poked_weights(&s, EMB, 5, value);
        assert_user_error(
            run_case(CASE, &w, &[]),
            &["model.safetensors", EMB, shown, "flat index 5"],
        );
        let (code, stderr) = run_case(CASE, &w, &[&"--allow-nonfinite-weights"]);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stderr.contains("warning:") && stderr.contains(EMB),
            "{stderr}"
        );
    }
    let w = poked_weights(&s, EMB, 7, f32::NEG_INFINITY);
    let out = s.path("model");
    let config = fixture(CASE, "config.json");
    assert_user_error(
        reformc(&[&"compile", &config, &"--weights", &w, &"-o", &out, &"-q"]),
        &[EMB, "-inf", "flat index 7", "--allow-nonfinite-weights"],
    );
    assert!(!out.exists());
}

/// Every fixture's recorded buckets pass the range check (masked and padded
/// ones with the padding bucket).
#[test]
fn recorded_buckets_of_every_fixture_are_in_range() {
    for case in [
        "tests/fixtures/causal_mixed_r2",
        "tests/fixtures/causal_mask_padded_b2",
        "tests/fixtures/noncausal_mask_padded_r8",
        "tests/fixtures/causal_lsh_r4_factorized",
    ] {
        let buckets = fixture(case, "lsh_buckets.npy");
        let mask = fixture(case, "attention_mask.npy");
        let w = fixture(case, "model.safetensors");
        let mut extra: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--lsh-buckets", &buckets];
        if mask.exists() {
            extra.extend_from_slice(&[&"--attention-mask", &mask]);
        }
        let (code, stderr) = run_case(case, &w, &extra);
        assert_eq!(code, 0, "{case}: {stderr}");
    }
}

#[test]
fn out_of_range_buckets_are_refused() {
    let s = Scratch::new("buckets");
    let mut b =
        ArrayD::<i64>::read_npy(std::fs::File::open(fixture(CASE, "lsh_buckets.npy")).unwrap())
            .unwrap();
    let w = fixture(CASE, "model.safetensors");
    // 8 buckets, 2 rounds of 64 slots, no padding: round 1 holds 8..16.
    for (index, value) in [(3, 1i64 << 62), (4, -1), (70, 3), (70, 16)] {
        let saved = b.as_slice().unwrap()[index];
        b.as_slice_mut().unwrap()[index] = value;
        let p = s.path("buckets.npy");
        b.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
        b.as_slice_mut().unwrap()[index] = saved;
        assert_user_error(
            run_case(CASE, &w, &[&"--lsh-buckets", &p]),
            &[
                "buckets.npy",
                &format!("bucket id {value} at flat index {index}"),
            ],
        );
    }
}

#[test]
fn nonfinite_rotations_are_refused() {
    let s = Scratch::new("rotations");
    let mut r =
        ArrayD::<f32>::read_npy(std::fs::File::open(fixture(CASE, "lsh_rotations.npy")).unwrap())
            .unwrap();
    r.as_slice_mut().unwrap()[11] = f32::NAN;
    let p = s.path("rot.npy");
    r.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
    assert_user_error(
        run_case(
            CASE,
            &fixture(CASE, "model.safetensors"),
            &[&"--lsh-rotations", &p],
        ),
        &["rot.npy", "NaN", "flat index 11"],
    );
}

fn config_with(s: &Scratch, key: &str, value: Value) -> PathBuf {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(CASE, "config.json")).unwrap())
            .unwrap();
    v[key] = value;
    let p = s.path("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    p
}

#[test]
fn absurd_config_sizes_are_refused_by_every_command() {
    let s = Scratch::new("sizes");
    let w = fixture(CASE, "model.safetensors");
    let out = s.path("out");
    for (key, value) in [
        ("num_hashes", serde_json::json!(1_000_000_000u64)),
        ("lsh_num_chunks_before", serde_json::json!(1_000_000_000u64)),
        ("local_num_chunks_after", serde_json::json!(65)),
        ("max_position_embeddings", serde_json::json!(1u64 << 30)),
        ("feed_forward_size", serde_json::json!(1u64 << 31)),
    ] {
        let cfg = config_with(&s, key, value);
        assert_user_error(reformc(&[&"dump", &cfg]), &["config.json", key]);
        assert_user_error(reformc(&[&"explain", &cfg]), &["config.json", key]);
        assert_user_error(
            reformc(&[&"compile", &cfg, &"--weights", &w, &"-o", &out, &"-q"]),
            &["config.json", key],
        );
    }
    // Sizes valid one by one whose product is not: the parameter count.
    let cfg = config_with(&s, "attn_layers", serde_json::json!(vec!["local"; 4096]));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["num_hidden_layers"] = serde_json::json!(4096);
    v["feed_forward_size"] = serde_json::json!(1u64 << 20);
    v["hidden_size"] = serde_json::json!(1u64 << 12);
    v["axial_pos_embds_dim"] = serde_json::json!([1u64 << 11, 1u64 << 11]);
    std::fs::write(&cfg, v.to_string()).unwrap();
    assert_user_error(
        reformc(&[&"dump", &cfg]),
        &["config.json", "attn_layers", "parameters"],
    );
}

#[test]
fn explain_refuses_zero_and_overflowing_sizes() {
    let cfg = fixture(CASE, "config.json");
    for (flag, value) in [
        ("--seq-len", "0"),
        ("--seq-len", "4611686018427387904"),
        ("--seq-len", "18446744073709551615"),
        ("--batch", "0"),
        ("--batch", "18446744073709551615"),
    ] {
        assert_user_error(
            reformc(&[&"explain", &cfg, &flag, &value]),
            &[flag, value, "1..="],
        );
    }
    // Within the flags' ranges, but B*L*L overflows 64 bits.
    assert_user_error(
        reformc(&[
            &"explain",
            &cfg,
            &"--seq-len",
            &"4294967296",
            &"--batch",
            &"1048576",
            &"--attention",
            &"full",
        ]),
        &["--seq-len 4294967296", "--batch 1048576", "64 bits"],
    );
}

#[test]
fn size_flags_are_range_checked_at_parsing() {
    let cfg = fixture(CASE, "config.json");
    for (flag, value) in [
        ("--kv-chunk", "0"),
        ("--kv-chunk", "18446744073709551615"),
        ("--chunk-ff", "18446744073709551615"),
        ("--chunk-ff", "0"),
        ("--chunk-lm-head", "0"),
        ("--memory-budget", "0"),
        ("--memory-budget", "18446744073709551615"),
    ] {
        for cmd in ["dump", "explain"] {
            assert_user_error(
                reformc(&[&cmd, &cfg, &flag, &value]),
                &[flag, value, "1..="],
            );
        }
    }
}

#[test]
fn compile_refuses_an_unusable_thread_count() {
    let s = Scratch::new("threads");
    let out = s.path("model");
    let cfg = fixture(CASE, "config.json");
    let w = fixture(CASE, "model.safetensors");
    for n in ["--threads=100000", "--threads=-1"] {
        assert_user_error(
            reformc(&[&"compile", &cfg, &"--weights", &w, &"-o", &out, &n]),
            &["--threads", "0..=4096"],
        );
    }
    assert!(!out.exists());
}
