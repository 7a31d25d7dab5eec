//! The `seq_chunk` region op: text round trip and verifier rules.

use reformc_ir::{parse, print, verify};

const CHUNKED: &str = "graph {
  %0 = input {name=\"x\"} : f32[B,L,4]
  %1 = weight {name=\"w\"} : f32[6,4]
  %2 = seq_chunk %0 {axis=1, size=3} : f32[B,L,6] {
    body(%3: f32[B,C,4]) {
      %4 = linear %3, %1 {activation=\"relu\"} : f32[B,C,6]
      yield %4
    }
  }
  output \"y\" = %2
}
";

#[test]
fn prints_and_parses_back() {
    let g = parse(CHUNKED).unwrap();
    verify(&g).unwrap();
    assert_eq!(print(&g), CHUNKED);
}

fn verify_err(text: &str) -> String {
    let g = parse(text).unwrap();
    verify(&g).unwrap_err().to_string()
}

#[test]
fn rejects_bad_bodies() {
    // The argument's chunk axis must be a symbol.
    let e = verify_err(
        &CHUNKED
            .replace("body(%3: f32[B,C,4])", "body(%3: f32[B,3,4])")
            .replace("f32[B,C,6]", "f32[B,3,6]"),
    );
    assert!(
        e.contains("must have a symbol (the chunk length) on axis 1"),
        "{e}"
    );
    // The chunk symbol must be fresh.
    let e = verify_err(
        &CHUNKED
            .replace("f32[B,C,4]", "f32[B,B,4]")
            .replace("f32[B,C,6]", "f32[B,B,6]"),
    );
    assert!(e.contains("must be fresh"), "{e}");
    // The other dims must match the operand.
    let e = verify_err(
        &CHUNKED
            .replace("body(%3: f32[B,C,4])", "body(%3: f32[N,C,4])")
            .replace("f32[B,C,6]", "f32[N,C,6]"),
    );
    assert!(
        e.contains("with axis 1 replaced by the chunk symbol"),
        "{e}"
    );
    // The result is the yield's type with the symbol replaced by the operand's dim.
    let e = verify_err(&CHUNKED.replace(": f32[B,L,6] {", ": f32[B,C,6] {"));
    assert!(e.contains("result type must be f32[B,L,6]"), "{e}");
    // Attributes are checked against the schema.
    let e = verify_err(&CHUNKED.replace("size=3", "size=0"));
    assert!(e.contains("`size` must be >= 1"), "{e}");
    let e = verify_err(&CHUNKED.replace("axis=1", "axis=3"));
    assert!(e.contains("out of range"), "{e}");
    // Outer values the body uses must not mention the chunk symbol.
    let text = "graph {
  %0 = input {name=\"x\"} : f32[B,L,4]
  %1 = input {name=\"z\"} : f32[B,C,4]
  %2 = seq_chunk %0 {axis=1, size=3} : f32[B,L,4] {
    body(%3: f32[B,C,4]) {
      %4 = add %3, %1 : f32[B,C,4]
      yield %4
    }
  }
  output \"y\" = %2
}
";
    let e = verify_err(text);
    assert!(e.contains("uses an outer value of type f32[B,C,4]"), "{e}");
}
