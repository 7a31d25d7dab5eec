//! Property-based fuzzing of the text parser: arbitrary and mutated input
//! never panics, and whatever parses also verifies or fails with a message.

use proptest::prelude::*;
use reformc_ir::{parse, print, verify};

const SEED_TEXT: &str = "graph {\n  %0 = input {name=\"x\"} : f32[B,L,8]\n  %1 = input {name=\"m\"} : i64[B,L]\n  %2 = layer_norm %0, %3, %3 {eps=1e-12} : f32[B,L,8]\n  %3 = weight {name=\"w\"} : f32[8]\n  %4 = reversible_block %0 : f32[B,L,8] {\n    f(%5: f32[B,L,4]) {\n      %6 = exp %5 : f32[B,L,4]\n      yield %6\n    }\n    g(%7: f32[B,L,4]) {\n      yield %7\n    }\n  }\n  %8 = local_attention %0, %0, %0, %1 {after=0, before=1, causal, chunk=4, heads=2, scale=0.5} : f32[B,L,8]\n  output \"y\" = %8\n}\n";

fn check(text: &str) {
    match parse(text) {
        Ok(g) => {
            // Verification may fail, but must not panic; printing must reparse.
            let _ = verify(&g);
            let printed = print(&g);
            let again = parse(&printed).expect("printed text parses");
            assert_eq!(print(&again), printed);
        }
        Err(e) => {
            assert!(e.line >= 1 && e.col >= 1);
            assert!(!e.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        check(&s);
    }

    #[test]
    fn token_soup_never_panics(tokens in proptest::collection::vec(prop_oneof![
        Just("graph"), Just("{"), Just("}"), Just("%0"), Just("%1"), Just("="), Just("input"), Just("exp"),
        Just("reversible_block"), Just(":"), Just("f32[B,L]"), Just("f32["), Just("]"), Just(","), Just("{name=\"x\"}"),
        Just("output"), Just("\"y\""), Just("yield"), Just("f("), Just(")"), Just("-1e9"), Just("[1,2]"), Just("causal"),
    ], 0..40)) {
        check(&tokens.join(" "));
    }

    #[test]
    fn mutated_valid_text_never_panics(cut in 0usize..SEED_TEXT.len(), len in 0usize..8, insert in "\\PC{0,4}") {
        let mut s: Vec<char> = SEED_TEXT.chars().collect();
        let end = (cut + len).min(s.len());
        s.splice(cut..end, insert.chars());
        check(&s.into_iter().collect::<String>());
    }
}

#[test]
fn deep_region_nesting_is_an_error_not_a_stack_overflow() {
    let mut text = String::from("graph {\n %0 = input {name=\"x\"} : f32[8]\n");
    for i in 0..5_000 {
        text += &format!(
            " %{} = reversible_block %0 : f32[8] {{ f(%a{i}: f32[4]) {{\n",
            i + 1
        );
    }
    let e = parse(&text).unwrap_err();
    assert!(e.message.contains("nested deeper than"), "{e}");
}
