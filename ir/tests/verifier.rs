//! The verifier rejects hand-made bad graphs with messages that name the
//! value, the op and what was expected.

use reformc_ir::{parse, verify};

fn error_of(body: &str) -> String {
    let text = format!("graph {{\n{body}\n}}\n");
    let g = parse(&text).unwrap_or_else(|e| panic!("test graph does not parse: {e}\n{text}"));
    verify(&g)
        .expect_err("the verifier accepted a bad graph")
        .to_string()
}

const X: &str = "%x = input {name=\"x\"} : f32[B,L,32]";

#[test]
fn wrong_result_type() {
    let e = error_of(&format!(
        "{X}\n%y = exp %x : f32[B,L,16]\noutput \"y\" = %y"
    ));
    assert_eq!(
        e,
        "%1 = exp: result type must be f32[B,L,32], found f32[B,L,16]"
    );
}

#[test]
fn float_op_on_integers() {
    let e = error_of("%x = input {name=\"x\"} : i64[N]\n%y = exp %x : i64[N]\noutput \"y\" = %y");
    assert_eq!(
        e,
        "%1 = exp: operand 0 must be a float tensor, found i64[N]"
    );
}

#[test]
fn missing_attribute() {
    let e = error_of(&format!(
        "{X}\n%y = softmax %x : f32[B,L,32]\noutput \"y\" = %y"
    ));
    assert_eq!(e, "%1 = softmax: missing attribute `axis`");
}

#[test]
fn unknown_attribute() {
    let e = error_of(&format!(
        "{X}\n%y = softmax %x {{axis=2, temperature=2.0}} : f32[B,L,32]\noutput \"y\" = %y"
    ));
    assert!(
        e.starts_with("%1 = softmax: unknown attribute `temperature` (known: axis)"),
        "{e}"
    );
}

#[test]
fn attribute_below_its_range() {
    let e = error_of(&format!(
        "{X}\n%m = input {{name=\"m\"}} : i64[B,L]\n%y = local_attention %x, %x, %x, %m {{after=0, before=1, chunk=0, heads=2, scale=0.25}} : f32[B,L,32]\noutput \"y\" = %y"
    ));
    assert_eq!(
        e,
        "%2 = local_attention: attribute `chunk` must be >= 1, found 0"
    );
}

#[test]
fn attribute_of_the_wrong_type() {
    let e = error_of(&format!(
        "{X}\n%y = softmax %x {{axis=2.0}} : f32[B,L,32]\noutput \"y\" = %y"
    ));
    assert_eq!(e, "%1 = softmax: attribute `axis` must be Int, found `2.0`");
}

#[test]
fn wrong_operand_count() {
    let e = error_of(&format!(
        "{X}\n%y = add %x : f32[B,L,32]\noutput \"y\" = %y"
    ));
    assert_eq!(e, "%1 = add: takes 2 operands, found 1");
}

#[test]
fn heads_must_divide_the_width() {
    let e = error_of(&format!(
        "{X}\n%y = attention %x, %x, %x {{heads=3, scale=0.25}} : f32[B,L,32]\noutput \"y\" = %y"
    ));
    assert_eq!(e, "%1 = attention: width 32 is not divisible by heads=3");
}

#[test]
fn odd_bucket_factor() {
    let e = error_of(&format!(
        "{X}\n%r = input {{name=\"r\"}} : f32[2,16,1,3]\n%b = lsh_hash %x, %r {{buckets=[2,3], heads=2, n_hashes=1}} : i64[B,2,1,L]\noutput \"b\" = %b"
    ));
    assert_eq!(
        e,
        "%2 = lsh_hash: every bucket factor must be even, found [2, 3]"
    );
}

#[test]
fn rotations_of_the_wrong_shape() {
    let e = error_of(&format!(
        "{X}\n%r = input {{name=\"r\"}} : f32[2,16,1,3]\n%b = lsh_hash %x, %r {{buckets=[8], heads=2, n_hashes=1}} : i64[B,2,1,L]\noutput \"b\" = %b"
    ));
    assert_eq!(
        e,
        "%2 = lsh_hash: rotations must be f32[2,16,1,4], found f32[2,16,1,3]"
    );
}

#[test]
fn shapes_that_do_not_broadcast() {
    let e = error_of(&format!("{X}\n%z = input {{name=\"z\"}} : f32[B,L,16]\n%y = add %x, %z : f32[B,L,32]\noutput \"y\" = %y"));
    assert_eq!(
        e,
        "%2 = add: shapes do not broadcast: f32[B,L,32] and f32[B,L,16]"
    );
}

#[test]
fn region_value_used_outside_its_region() {
    // The parser scopes region values, so make the bad use by rewiring an operand.
    let mut g = parse(
        "graph {\n%x = input {name=\"x\"} : f32[B,L,8]\n%y = reversible_block %x : f32[B,L,8] {\n f(%a: f32[B,L,4]) {\n %t = exp %a : f32[B,L,4]\n yield %t\n }\n g(%b: f32[B,L,4]) {\n yield %b\n }\n}\n%z = exp %y : f32[B,L,8]\noutput \"z\" = %z\n}",
    )
    .unwrap();
    let t = g.walk()[3];
    assert_eq!(g.node(t).op.kind, reformc_ir::OpKind::Exp);
    let z = *g.body.last().unwrap();
    g.node_mut(z).inputs[0] = t;
    g.node_mut(z).ty = g.ty(t).clone();
    assert_eq!(
        verify(&g).unwrap_err().to_string(),
        "%5 = exp: operand 0 (%3) is used before it is defined or outside its region"
    );
}

#[test]
fn region_types_must_be_halves() {
    let e = error_of(
        "%x = input {name=\"x\"} : f32[B,L,8]\n%y = reversible_block %x : f32[B,L,8] {\n f(%a: f32[B,L,8]) {\n yield %a\n }\n g(%b: f32[B,L,4]) {\n yield %b\n }\n}\noutput \"y\" = %y",
    );
    assert_eq!(e, "%1 = reversible_block: region `f` argument must be f32[B,L,4] (half of the input's last axis), found f32[B,L,8]");
}

#[test]
fn output_must_be_defined_at_top_level() {
    let mut g = parse("graph {\n %x = input {name=\"x\"} : f32[N]\n output \"y\" = %x\n}").unwrap();
    g.outputs[0].1 = reformc_ir::ValueId(7);
    assert_eq!(
        verify(&g).unwrap_err().to_string(),
        "output \"y\": refers to a value that is not defined at the top level"
    );
}

#[test]
fn use_before_definition() {
    // The parser rejects this, so build it by swapping the body order.
    let mut g = parse(
        "graph {\n %x = input {name=\"x\"} : f32[N]\n %y = exp %x : f32[N]\n output \"y\" = %y\n}",
    )
    .unwrap();
    g.body.swap(0, 1);
    assert_eq!(
        verify(&g).unwrap_err().to_string(),
        "%0 = exp: operand 0 (%1) is used before it is defined or outside its region"
    );
}

#[test]
fn parser_names_line_and_column() {
    let e =
        parse("graph {\n %x = input {name=\"x\"} : f32[N]\n %y = frob %x : f32[N]\n}").unwrap_err();
    assert_eq!(e.to_string(), "3:7: unknown op `frob`");
    let e = parse("graph {\n %y = exp %x : f32[N]\n}").unwrap_err();
    assert_eq!(e.to_string(), "2:11: use of undefined value `%x`");
}
