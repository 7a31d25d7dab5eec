//! Hand-written graphs lowered to MLIR, checked by melior's verifier, by
//! `mlir-opt-22` and for upstream dialects only.

use reformc_backend_mlir::{emit_module, verify_module, EmitOptions, MlirError};
use reformc_testkit::mlir_module::check_module_text;

fn emit(text: &str) -> String {
    let g = reformc_ir::parse(text).expect("test graph parses");
    reformc_ir::verify(&g).expect("test graph verifies");
    emit_module(&g, &EmitOptions::default()).expect("graph lowers")
}

/// Every check an emitted module must pass.
fn check(text: &str) -> String {
    let module = emit(text);
    if let Err(e) = verify_module(&module) {
        panic!("melior rejects the module: {e}\n{module}");
    }
    check_module_text(&module);
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
