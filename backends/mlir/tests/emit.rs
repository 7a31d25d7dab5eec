//! Hand-written graphs lowered to MLIR, checked by melior's verifier, by
//! `mlir-opt-22` and for upstream dialects only.

use reformc_backend_mlir::{emit_module, verify_module, EmitOptions, MlirError};
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

fn emit(text: &str) -> String {
    let g = reformc_ir::parse(text).expect("test graph parses");
    reformc_ir::verify(&g).expect("test graph verifies");
    emit_module(&g, &EmitOptions::default()).expect("graph lowers")
}

/// The dialect prefix of every op in `module` (`%x = dialect.op` or a line
/// starting with `dialect.op`).
fn op_dialects(module: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in module.lines() {
        let line = line.trim();
        let op = match line.split_once(" = ") {
            Some((lhs, rhs)) if lhs.starts_with('%') => rhs,
            _ => line,
        };
        let word = op.split([' ', '(', '{', '<']).next().unwrap_or("");
        if let Some((dialect, _)) = word.split_once('.') {
            if dialect.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !dialect.is_empty() {
                out.push(dialect.to_string());
            }
        }
    }
    out
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

/// Every check an emitted module must pass.
fn check(text: &str) -> String {
    let module = emit(text);
    if let Err(e) = verify_module(&module) {
        panic!("melior rejects the module: {e}\n{module}");
    }
    if let Some(Err(e)) = mlir_opt(&module) {
        panic!("mlir-opt-22 rejects the module: {e}\n{module}");
    }
    let dialects = op_dialects(&module);
    assert!(!dialects.is_empty(), "no ops found in\n{module}");
    for d in &dialects {
        assert!(UPSTREAM.contains(&d.as_str()), "dialect `{d}` in\n{module}");
    }
    module
}

#[test]
fn elementwise_with_broadcasting_activations_and_casts() {
    let m = check(
        "graph {
  %0 = input {name=\"x\"} : f32[B,L,8]
  %1 = weight {name=\"layer.bias\"} : f32[8]
  %2 = add %0, %1 : f32[B,L,8]
  %3 = act %2 {fn=\"gelu\"} : f32[B,L,8]
  %4 = act %3 {fn=\"gelu_new\"} : f32[B,L,8]
  %5 = act %4 {fn=\"silu\"} : f32[B,L,8]
  %6 = act %5 {fn=\"relu\"} : f32[B,L,8]
  %7 = exp %6 : f32[B,L,8]
  %8 = rsqrt %7 : f32[B,L,8]
  %9 = neg %8 : f32[B,L,8]
  %10 = lt %9, %1 : bool[B,L,8]
  %11 = select %10, %9, %0 : f32[B,L,8]
  %12 = cast %11 : i64[B,L,8]
  %13 = neg %12 : i64[B,L,8]
  %14 = cast %13 : f32[B,L,8]
  %15 = constant {value=2.5} : f32[]
  %16 = mul %14, %15 : f32[B,L,8]
  output \"y\" = %16
  output \"m\" = %10
}
",
    );
    // The weight is the leading argument, named by its safetensors name.
    let sig = m
        .lines()
        .find(|l| l.contains("func.func @forward"))
        .unwrap();
    let w = sig.find("layer.bias").expect("weight name");
    let x = sig.find("\"x\"").expect("input name");
    assert!(w < x, "weights come first: {sig}");
    assert!(sig.contains("tensor<?x?x8xf32>"), "dynamic dims: {sig}");
    assert!(m.contains("math.erf") && m.contains("math.tanh") && m.contains("arith.fptosi"));
}

#[test]
fn matmul_reductions_and_softmax() {
    check(
        "graph {
  %0 = input {name=\"x\"} : f32[B,L,8]
  %1 = weight {name=\"w\"} : f32[1,8,4]
  %2 = matmul %0, %1 : f32[B,L,4]
  %3 = softmax %2 {axis=2} : f32[B,L,4]
  %4 = reduce %3 {axes=[1], kind=\"sum\"} : f32[B,4]
  %5 = reduce %2 {axes=[2], keepdim, kind=\"mean\"} : f32[B,L,1]
  %6 = reduce %2 {axes=[1,2], kind=\"max\"} : f32[B]
  %7 = reduce %2 {axes=[2], kind=\"logsumexp\"} : f32[B,L]
  output \"s\" = %4
  output \"m\" = %5
  output \"x\" = %6
  output \"l\" = %7
}
",
    );
}

#[test]
fn shape_ops() {
    check(
        "graph {
  %0 = input {name=\"x\"} : f32[B,L,8]
  %1 = reshape %0 : f32[B,L,2,4]
  %2 = transpose %1 {perm=[0,2,1,3]} : f32[B,2,L,4]
  %3 = concat %0, %0 {axis=2} : f32[B,L,16]
  %4 = slice %3 {axis=2, end=12, start=4} : f32[B,L,8]
  %5 = index %2 {axis=1, index=1} : f32[B,L,4]
  %6 = iota %0 {axis=1} : i64[L]
  %7 = reshape %2 : f32[B,2,4,L]
  output \"t\" = %2
  output \"s\" = %4
  output \"i\" = %5
  output \"p\" = %6
  output \"r\" = %7
}
",
    );
}

#[test]
fn an_op_the_lowering_cannot_take_is_an_error_naming_it() {
    // An embedding table whose row count is only known at run time.
    let g = reformc_ir::parse(
        "graph {
  %0 = input {name=\"ids\"} : i64[B,L]
  %1 = input {name=\"table\"} : f32[V,8]
  %2 = embedding %0, %1 : f32[B,L,8]
  output \"y\" = %2
}
",
    )
    .expect("parses");
    let err = emit_module(&g, &EmitOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            MlirError::Invalid {
                op: reformc_ir::OpKind::Embedding,
                value: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("embedding"), "{err}");
}

#[test]
fn bad_module_text_is_a_verify_error_with_diagnostics() {
    let err = verify_module("module { func.func @f() -> f32 { func.return } }").unwrap_err();
    assert!(matches!(err, MlirError::Verify(_)), "{err:?}");
    assert!(
        err.to_string().len() > "MLIR module does not verify: ".len(),
        "{err}"
    );
}
