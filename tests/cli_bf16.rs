//! `--precision bf16` from the command line: `run` (LLVM JIT) and a compiled
//! executable give the same bits, differ from fp32 by bf16's rounding only,
//! and the commands that cannot honour it refuse it in one line.

use crate::common;

use common::Scratch;
use ndarray::ArrayD;
use ndarray_npy::ReadNpyExt;
use std::path::Path;
use std::process::Command;

const CASE: &str = "tests/fixtures/causal_mixed_r2";

/// Runs reformc in the repository root; returns (exit code, stderr).
fn reformc(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "reformc panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn read(p: &Path) -> ArrayD<f32> {
    ArrayD::<f32>::read_npy(std::fs::File::open(p).unwrap()).unwrap()
}

#[test]
fn run_and_executable_agree_bit_for_bit_and_stay_near_fp32() {
    let dir = Scratch::new("cli-bf16");
    let p = |f: &str| dir.dir().join(f).display().to_string();
    let ids = format!("{CASE}/input_ids.npy");
    let buckets = format!("{CASE}/lsh_buckets.npy");
    let common = ["--input", &ids, "--lsh-buckets", &buckets, "-q"];
    for (precision, out) in [("bf16", p("run16.npy")), ("f32", p("run32.npy"))] {
        let mut args = vec!["run", CASE, "--precision", precision, "-o", &out];
        args.extend(common);
        let (code, err) = reformc(&args);
        assert_eq!(code, 0, "{err}");
    }
    let exe = p("model16");
    let (code, err) = reformc(&["compile", CASE, "--precision", "bf16", "-o", &exe, "-q"]);
    assert_eq!(code, 0, "{err}");
    let exe_out = p("exe16.npy");
    let st = Command::new(&exe)
        .args([
            "--input",
            &ids,
            "--lsh-buckets",
            &buckets,
            "--output",
            &exe_out,
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (r16, r32, e16) = (
        read(Path::new(&p("run16.npy"))),
        read(Path::new(&p("run32.npy"))),
        read(Path::new(&exe_out)),
    );
    assert_eq!(r16, e16, "run and the executable, both bf16");
    assert_ne!(r16, r32, "bf16 changes the logits");
    let err: f64 = r16
        .iter()
        .zip(&r32)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let norm: f64 = r32.iter().map(|b| (*b as f64).powi(2)).sum();
    assert!(
        (err / norm).sqrt() < 1e-2,
        "rel RMS {}",
        (err / norm).sqrt()
    );
}

#[test]
fn commands_without_bf16_refuse_it_in_one_line() {
    let ids = format!("{CASE}/input_ids.npy");
    for (args, needle) in [
        (
            vec![
                "run",
                CASE,
                "--input",
                &ids,
                "-o",
                "/tmp/reformc-bf16-x.npy",
                "--precision",
                "bf16",
                "--interp",
            ],
            "LLVM JIT only",
        ),
        (
            vec![
                "run",
                CASE,
                "--input",
                &ids,
                "-o",
                "/tmp/reformc-bf16-x.npy",
                "--precision",
                "bf16",
                "--backend",
                "mlir",
            ],
            "LLVM JIT only",
        ),
        (
            vec![
                "grad",
                CASE,
                "--input",
                &ids,
                "--output",
                "/tmp/reformc-bf16-x.safetensors",
                "--precision",
                "bf16",
                "--interp",
            ],
            "LLVM JIT only",
        ),
        (
            vec![
                "compile",
                CASE,
                "--precision",
                "bf16",
                "--emit",
                "mlir",
                "-o",
                "/tmp/x.mlir",
            ],
            "--emit mlir",
        ),
    ] {
        let (code, err) = reformc(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(
            lines[0].contains("bf16") && lines[0].contains(needle),
            "{args:?}: {err}"
        );
    }
}
