//! The ops that serve the backward pass (`broadcast`, `scatter_add`,
//! `act_grad`): text round trip, type inference and verifier rejections.

use reformc_ir::{infer_type, parse, print, verify, Attr, DType, Dim, Op, OpKind, TensorType};

/// A graph using all three ops, in the printer's canonical form.
const BACKWARD: &str = "graph {
  %0 = input {name=\"x\"} : f32[B,L,64]
  %1 = input {name=\"dy\"} : f32[B,L,64]
  %2 = input {name=\"ids\"} : i64[N,1]
  %3 = weight {name=\"table\"} : f32[320,64]
  %4 = input {name=\"g\"} : f32[N,64]
  %5 = input {name=\"bias\"} : f32[64]
  %6 = act_grad %0, %1 {fn=\"gelu\"} : f32[B,L,64]
  %7 = broadcast %5, %6 : f32[B,L,64]
  %8 = broadcast %2, %4 : i64[N,64]
  %9 = scatter_add %3, %8, %4 {axis=0} : f32[320,64]
  output \"dx\" = %6
  output \"db\" = %7
  output \"dtable\" = %9
}
";

#[test]
fn prints_and_parses_back() {
    let g = parse(BACKWARD).unwrap();
    verify(&g).unwrap();
    assert_eq!(print(&g), BACKWARD);
    let again = parse(&print(&g)).unwrap();
    assert_eq!(print(&again), BACKWARD);
}

fn ty(d: DType, dims: &[&str]) -> TensorType {
    let shape = dims
        .iter()
        .map(|s| s.parse::<u64>().map_or_else(|_| Dim::sym(s), Dim::Const))
        .collect();
    TensorType::new(d, shape)
}

#[test]
fn infers_result_types() {
    let x = ty(DType::I64, &["1", "64"]);
    let r = ty(DType::F32, &["B", "L", "64"]);
    let b = infer_type(&Op::new(OpKind::Broadcast), &[&x, &r]).unwrap();
    assert_eq!(b.unwrap().to_string(), "i64[B,L,64]");

    let table = ty(DType::F64, &["V", "8"]);
    let idx = ty(DType::I32, &["N", "8"]);
    let src = ty(DType::F32, &["N", "8"]);
    let op = Op::new(OpKind::ScatterAdd).with("axis", Attr::Int(0));
    let s = infer_type(&op, &[&table, &idx, &src]).unwrap();
    assert_eq!(
        s.unwrap().to_string(),
        "f32[V,8]",
        "ref's shape, src's dtype"
    );

    let op = Op::new(OpKind::ActGrad).with("fn", Attr::Str("silu".into()));
    let a = infer_type(&op, &[&r, &r]).unwrap();
    assert_eq!(a.unwrap(), r);
}

fn error_of(body: &str) -> String {
    let text = format!("graph {{\n{body}\n}}\n");
    let g = parse(&text).unwrap_or_else(|e| panic!("test graph does not parse: {e}\n{text}"));
    verify(&g)
        .expect_err("the verifier accepted a bad graph")
        .to_string()
}

const SCATTER_IN: &str = "%r = weight {name=\"t\"} : f32[V,8]
%i = input {name=\"i\"} : i64[N,8]
%s = input {name=\"s\"} : f32[N,8]";

#[test]
fn rejects_indices_not_of_the_source_shape() {
    let body = SCATTER_IN.replace("i64[N,8]", "i64[N,1]");
    let e = error_of(&format!(
        "{body}\n%o = scatter_add %r, %i, %s {{axis=0}} : f32[V,8]\noutput \"o\" = %o"
    ));
    assert_eq!(
        e,
        "%3 = scatter_add: indices i64[N,1] must match operand 0 (reference) f32[V,8] on its first 2 axes but 0"
    );
    let body = SCATTER_IN.replace("i64[N,8]", "i64[N,8,1]");
    let e = error_of(&format!(
        "{body}\n%o = scatter_add %r, %i, %s {{axis=0}} : f32[V,8]\noutput \"o\" = %o"
    ));
    assert!(e.contains("must have rank 1..=2"), "{e}");
}

#[test]
fn row_indices_move_whole_rows() {
    // A rank-1 index along axis 0 of a [V,8] reference: src rows of 8.
    let body = SCATTER_IN.replace("i64[N,8]", "i64[N]");
    let text = format!(
        "graph {{\n{body}\n%o = scatter_add %r, %i, %s {{axis=0}} : f32[V,8]\n%g = gather %r, %i {{axis=0}} : f32[N,8]\noutput \"o\" = %o\noutput \"g\" = %g\n}}\n"
    );
    let g = parse(&text).unwrap();
    verify(&g).unwrap();
}

#[test]
fn rejects_float_indices_and_integer_sources() {
    let body = SCATTER_IN.replace("i64[N,8]", "f32[N,8]");
    let e = error_of(&format!(
        "{body}\n%o = scatter_add %r, %i, %s {{axis=0}} : f32[V,8]\noutput \"o\" = %o"
    ));
    assert!(e.contains("operand 1 must be an integer tensor"), "{e}");
    let body = SCATTER_IN.replace("f32[N,8]", "i64[N,8]");
    let e = error_of(&format!(
        "{body}\n%o = scatter_add %r, %i, %s {{axis=0}} : i64[V,8]\noutput \"o\" = %o"
    ));
    assert!(e.contains("operand 2 must be a float tensor"), "{e}");
}

#[test]
fn rejects_a_source_that_does_not_fit_the_reference() {
    let body = SCATTER_IN
        .replace("f32[N,8]", "f32[N,4]")
        .replace("i64[N,8]", "i64[N]");
    let e = error_of(&format!(
        "{body}\n%o = scatter_add %r, %i, %s {{axis=0}} : f32[V,8]\noutput \"o\" = %o"
    ));
    assert!(
        e.contains(
            "operand 2 (src) f32[N,4] must be shaped like the indices i64[N] followed by the reference f32[V,8]'s trailing axes, f32[N,8]"
        ),
        "{e}"
    );
    // Along axis 1 the first axes must agree (N vs V).
    let e = error_of(&format!(
        "{SCATTER_IN}\n%o = scatter_add %r, %i, %s {{axis=1}} : f32[V,8]\noutput \"o\" = %o"
    ));
    assert!(e.contains("on its first 2 axes but 1"), "{e}");
    let e = error_of(&format!(
        "{SCATTER_IN}\n%o = scatter_add %r, %i, %s {{axis=2}} : f32[V,8]\noutput \"o\" = %o"
    ));
    assert!(e.contains("attribute `axis`=2 is out of range"), "{e}");
    let e = error_of(&format!(
        "{SCATTER_IN}\n%o = scatter_add %r, %i, %s : f32[V,8]\noutput \"o\" = %o"
    ));
    assert!(e.contains("missing attribute `axis`"), "{e}");
}

#[test]
fn rejects_a_declared_type_other_than_refs_shape_and_srcs_dtype() {
    let e = error_of(&format!(
        "{SCATTER_IN}\n%o = scatter_add %r, %i, %s {{axis=0}} : f32[N,8]\noutput \"o\" = %o"
    ));
    assert!(
        e.contains("result type must be f32[V,8], found f32[N,8]"),
        "{e}"
    );
}

#[test]
fn rejects_a_bad_broadcast() {
    let x = "%x = input {name=\"x\"} : f32[3,1]\n%r = input {name=\"r\"} : f32[B,4,5]";
    let e = error_of(&format!(
        "{x}\n%o = broadcast %x, %r : f32[B,4,5]\noutput \"o\" = %o"
    ));
    assert_eq!(
        e,
        "%2 = broadcast: f32[3,1] does not broadcast to f32[B,4,5]: axis 0 has length 3, expected 1 or 4"
    );
    // More axes than the reference.
    let e = error_of(&format!(
        "{x}\n%o = broadcast %r, %x : f32[3,1]\noutput \"o\" = %o"
    ));
    assert!(e.contains("has more axes than the reference"), "{e}");
    // A symbol does not broadcast to another symbol.
    let e = error_of(
        "%x = input {name=\"x\"} : f32[M]\n%r = input {name=\"r\"} : f32[N]\n\
         %o = broadcast %x, %r : f32[N]\noutput \"o\" = %o",
    );
    assert!(e.contains("expected 1 or N"), "{e}");
    // The result keeps x's dtype.
    let e = error_of(
        "%x = input {name=\"x\"} : i64[1]\n%r = input {name=\"r\"} : f32[N]\n\
         %o = broadcast %x, %r : f32[N]\noutput \"o\" = %o",
    );
    assert!(e.contains("result type must be i64[N]"), "{e}");
}

#[test]
fn rejects_bad_act_grads() {
    let x = "%x = input {name=\"x\"} : f32[N,4]\n%d = input {name=\"d\"} : f32[N,4]";
    let e = error_of(&format!(
        "{x}\n%o = act_grad %x, %d {{fn=\"relu2\"}} : f32[N,4]\noutput \"o\" = %o"
    ));
    assert!(e.contains("unknown activation `relu2`"), "{e}");
    let e = error_of(&format!(
        "{x}\n%o = act_grad %x, %d : f32[N,4]\noutput \"o\" = %o"
    ));
    assert!(e.contains("missing attribute `fn`"), "{e}");
    let bad = x.replace(
        "%d = input {name=\"d\"} : f32[N,4]",
        "%d = input {name=\"d\"} : f64[N,4]",
    );
    let e = error_of(&format!(
        "{bad}\n%o = act_grad %x, %d {{fn=\"relu\"}} : f32[N,4]\noutput \"o\" = %o"
    ));
    assert_eq!(
        e,
        "%2 = act_grad: operand 1 (dy) must have the type of x f32[N,4], found f64[N,4]"
    );
    let ints = "%x = input {name=\"x\"} : i64[4]";
    let e = error_of(&format!(
        "{ints}\n%o = act_grad %x, %x {{fn=\"relu\"}} : i64[4]\noutput \"o\" = %o"
    ));
    assert!(e.contains("operand 0 must be a float tensor"), "{e}");
}
