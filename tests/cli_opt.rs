//! `reformc opt` on hand-written IR files: output, instrumentation, and bad
//! input (exit 2, one line naming the file and where).

use crate::common;

use common::Scratch;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GRAPH: &str = "graph {
  %0 = input {name=\"x\"} : f32[B,L,8]
  %1 = transpose %0 {perm=[0,2,1]} : f32[B,8,L]
  %2 = transpose %1 {perm=[0,2,1]} : f32[B,L,8]
  %3 = exp %2 : f32[B,L,8]
  output \"y\" = %3
}
";

const FOLDED: &str = "graph {
  %0 = input {name=\"x\"} : f32[B,L,8]
  %1 = exp %0 : f32[B,L,8]
  output \"y\" = %1
}
";

fn opt(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .arg("opt")
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "reformc panicked: {stderr}");
    out
}

/// Asserts exit 2 and a single `error:` line containing every one of `needles`.
fn assert_user_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "`{n}` missing from: {stderr}");
    }
}

#[test]
fn runs_the_named_passes_and_prints_ir() {
    let s = Scratch::new("print");
    let input = s.write("g.ir", GRAPH.as_bytes());
    let out = opt(&[&input, &"--passes", &"simplify", &"-q"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), FOLDED);
    let none = opt(&[&input, &"--passes", &"none", &"-q"]);
    assert_eq!(String::from_utf8_lossy(&none.stdout), GRAPH);
}

#[test]
fn output_file_and_print_after_all() {
    let s = Scratch::new("out");
    let input = s.write("g.ir", GRAPH.as_bytes());
    let output = s.path("out.ir");
    let out = opt(&[
        &input,
        &"--passes",
        &"simplify,dce",
        &"--print-after-all",
        &"-o",
        &output,
    ]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&output).unwrap(), FOLDED);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("IR Dump After simplify (1/2)"), "{stderr}");
    assert!(stderr.contains("IR Dump After dce (2/2)"), "{stderr}");
}

#[test]
fn dot_output() {
    let s = Scratch::new("dot");
    let input = s.write("g.ir", GRAPH.as_bytes());
    let out = opt(&[&input, &"--passes", &"none", &"--format", &"dot"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("digraph"));
}

#[test]
fn parse_error_names_file_line_and_column() {
    let s = Scratch::new("parse");
    let input = s.write("bad.ir", b"graph {\n  %0 = frobnicate\n}\n");
    let out = opt(&[&input]);
    assert_user_error(&out, &["bad.ir:2:", "frobnicate"]);
    assert!(out.stdout.is_empty());
}

#[test]
fn ir_that_does_not_verify_is_the_users_error() {
    let s = Scratch::new("verify");
    let text = "graph {\n  %0 = input {name=\"x\"} : i64[N]\n  %1 = exp %0 : i64[N]\n  output \"y\" = %1\n}\n";
    let input = s.write("v.ir", text.as_bytes());
    assert_user_error(&opt(&[&input]), &["v.ir", "does not verify", "%1 = exp"]);
}

#[test]
fn a_pass_refusing_the_ir_is_the_users_error() {
    let s = Scratch::new("refuse");
    let text = "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = exp %0 : f32[N]\n  output \"y\" = %1\n}\n";
    let input = s.write("m.ir", text.as_bytes());
    let out = opt(&[&input, &"--passes", &"memory-plan", &"-q"]);
    assert_user_error(&out, &["m.ir", "memory-plan", "unbound"]);
}

#[test]
fn bad_flags_and_files() {
    let s = Scratch::new("flags");
    let input = s.write("g.ir", GRAPH.as_bytes());
    assert_user_error(
        &opt(&[&input, &"--passes", &"simplify,bogus"]),
        &["--passes", "bogus", "known passes"],
    );
    assert_user_error(
        &opt(&[&input, &"-o", &input]),
        &["--output", "g.ir", "same file"],
    );
    assert_eq!(std::fs::read_to_string(&input).unwrap(), GRAPH);
    let binary = s.write("b.ir", &[0x67, 0xff, 0xfe, 0x00]);
    assert_user_error(&opt(&[&binary]), &["b.ir", "UTF-8"]);
    assert_user_error(
        &opt(&[&s.path("missing.ir")]),
        &["missing.ir", "cannot read"],
    );
}

const FIXTURE: &str = "tests/fixtures/causal_mixed_r2";

fn fixture(f: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURE)
        .join(f)
}

fn reformc(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "reformc panicked: {stderr}");
    out
}

/// The fixture's IR as `dump` writes it before any pass, in `s`.
fn dumped(s: &Scratch) -> PathBuf {
    let ir = s.path("model.ir");
    let out = reformc(&[
        &"dump",
        &fixture("config.json"),
        &"--weights",
        &fixture("model.safetensors"),
        &"--pipeline",
        &"none",
        &"-q",
        &"-o",
        &ir,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ir
}

fn run_model(model: &Path, ids: &Path, out: &Path) -> Output {
    reformc(&[
        &"run",
        &model,
        &"--weights",
        &fixture("model.safetensors"),
        &"--input",
        &ids,
        &"--output",
        &out,
        &"--interp",
        &"-q",
    ])
}

#[test]
fn run_on_dumped_ir_matches_run_on_the_config() {
    let s = Scratch::new("run-ir");
    let ir = dumped(&s);
    let (a, b) = (s.path("a.npy"), s.path("b.npy"));
    let ids = fixture("input_ids.npy");
    let from_ir = run_model(&ir, &ids, &a);
    assert!(
        from_ir.status.success(),
        "{}",
        String::from_utf8_lossy(&from_ir.stderr)
    );
    assert!(run_model(&fixture("config.json"), &ids, &b)
        .status
        .success());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn run_on_ir_refuses_bad_ids_and_unfeedable_inputs() {
    let s = Scratch::new("run-ir-bad");
    let ir = dumped(&s);
    let out = s.path("out.npy");
    let big = s.path("big.npy");
    let ids = ndarray::ArrayD::<i64>::from_elem(ndarray::IxDyn(&[1, 64]), 1000);
    ndarray_npy::WriteNpyExt::write_npy(&ids, std::fs::File::create(&big).unwrap()).unwrap();
    assert_user_error(
        &run_model(&ir, &big, &out),
        &["big.npy", "token id 1000 at [0, 0]", "48 rows"],
    );
    let x = s.write("x.ir", b"graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = exp %0 : f32[N]\n  output \"y\" = %1\n}\n");
    assert_user_error(
        &run_model(&x, &fixture("input_ids.npy"), &out),
        &["x.ir", "graph input `x`", "input_ids (--input)"],
    );
    assert!(!out.exists());
}

#[test]
fn compile_refuses_ir_in_one_line() {
    let s = Scratch::new("compile-ir");
    let ir = s.write("m.ir", GRAPH.as_bytes());
    let out = reformc(&[
        &"compile",
        &ir,
        &"--weights",
        &fixture("model.safetensors"),
        &"-o",
        &s.path("m"),
    ]);
    assert_user_error(&out, &["m.ir", "compile needs a model config"]);
}
