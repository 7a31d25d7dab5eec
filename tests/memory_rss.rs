//! `reformc explain`'s static peak against the measured peak RSS of the
//! compiled executable: the bench model (`examples/reformer-12layer`, random
//! weights) compiled for one length and run at that length under
//! `/usr/bin/time`, whose maximum resident set size must be within 10% of
//! the `peak_bytes` explain reports for the same length and thread count.
//!
//! Both lengths run in CI (the 64K forward takes about 26 s on the 2-core AMD
//! EPYC VM, with the runtime optimised in test builds); `scripts/memory_rss.sh`
//! runs them alone and prints the figures.

use crate::common;

use common::random_model::{random_weights, write_safetensors, Lcg};
use reformc_frontend::config::parse_model_config;
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_ir::DType;
use std::path::PathBuf;
use std::process::Command;

/// Worker threads of the measured run (and of explain's estimate).
const THREADS: &str = "2";

fn scratch(name: &str) -> PathBuf {
    let d = common::root().join("target/tmp").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn reformc(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Compiles the bench model for `len`, runs it on `len` random ids and
/// returns (explain's static peak, measured peak RSS), both in bytes.
fn explain_and_measure(len: u64) -> (u64, u64) {
    let dir = scratch(&format!("memory-rss-{len}"));
    let cfg = common::root().join("examples/reformer-12layer/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let (spec, _, _) = parse_model_config(&text, &cfg).unwrap();
    let opts = LowerOptions {
        dtype: DType::F32,
        lsh_source: LshSource::Seeded,
        seq_len: Some(len),
    };
    let g = lower(&spec, &opts).unwrap().graph;
    let w = random_weights(&g, &mut Lcg(len));
    let (st, exe, ids) = (
        dir.join("w.safetensors"),
        dir.join("m"),
        dir.join("ids.npy"),
    );
    write_safetensors(&st, &w);
    let seq = len.to_string();
    reformc(&[
        &"compile",
        &cfg,
        &"--weights",
        &st,
        &"-o",
        &exe,
        &"--seq-len",
        &seq,
        &"-q",
    ]);
    let mut rng = Lcg(len + 1);
    let v: Vec<i64> = (0..len).map(|_| rng.below(258) as i64).collect();
    let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, len as usize]), v).unwrap();
    common::write(&ids, &a);
    let json = reformc(&[
        &"explain",
        &cfg,
        &"--seq-len",
        &seq,
        &"--threads",
        &THREADS,
        &"--json",
        &"-q",
    ]);
    let e: serde_json::Value = serde_json::from_str(&json).unwrap();
    let predicted = e["peak_bytes"].as_u64().expect("peak_bytes");
    let t = std::time::Instant::now();
    let run = Command::new("/usr/bin/time")
        .args(["-f", "PEAK_RSS_KIB %M"])
        .arg(&exe)
        .args(["--input".as_ref(), ids.as_os_str()])
        .args(["--output".as_ref(), dir.join("out.npy").as_os_str()])
        .args(["--threads", THREADS])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let kib: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("PEAK_RSS_KIB "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in: {stderr}"));
    eprintln!(
        "L={len}: explain {:.1} MiB, measured {:.1} MiB, run {:.1} s",
        predicted as f64 / 1048576.0,
        kib as f64 / 1024.0,
        t.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    (predicted, kib * 1024)
}

fn assert_within_10_percent(len: u64) {
    let (predicted, measured) = explain_and_measure(len);
    let err = (predicted as f64 - measured as f64).abs() / measured as f64;
    assert!(
        err <= 0.10,
        "L={len}: explain's static peak {predicted} B vs measured peak RSS {measured} B ({:.1}% off)",
        err * 100.0
    );
}

#[test]
fn explain_matches_the_executables_peak_rss_at_16k() {
    assert_within_10_percent(16384);
}

#[test]
fn explain_matches_the_executables_peak_rss_at_64k() {
    assert_within_10_percent(65536);
}
