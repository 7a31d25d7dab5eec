//! Differential tests of the model-level lowerings (embeddings, layer norm,
//! linear, gather, argmax, padding, truncation, reversible blocks and
//! sequence chunking): reformc's MLIR CPU pipeline against the interpreter,
//! on several shapes each (batch > 1, odd lengths, dynamic dims), and the
//! emitted text checked by `mlir-opt-22` and for upstream dialects.

use crate::common;

use common::{random_f32, random_i64};
use reformc_backend_mlir::{emit_module, jit_run, verify_module, EmitOptions, MlirError};
use reformc_interp::Tensor;
use reformc_testkit::mlir_module::check_module_text;
use std::collections::BTreeMap;

/// Emits `text`, verifies the module with melior and (when installed)
/// `mlir-opt-22`, and checks that every op is in an upstream dialect.
fn check_module(text: &str) -> String {
    let g = reformc_ir::parse(text).unwrap_or_else(|e| panic!("{e}"));
    reformc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let module = emit_module(&g, &EmitOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = verify_module(&module) {
        panic!("melior rejects the module: {e}\n{module}");
    }
    check_module_text(&module);
    module
}

/// Checks the module once, then compares the JIT with the interpreter on
/// every argument list.
fn run_cases(text: &str, cases: Vec<Vec<Tensor>>) {
    check_module(text);
    for args in cases {
        compare_strict(text, &args, 1e-5);
    }
}

/// `common::compare_args` that also fails on NaNs in different places
/// (that helper folds differences with `f64::max`, which skips NaNs):
/// floats within `tol` relative to max(|reference|, 1), integers exactly.
fn compare_strict(text: &str, args: &[Tensor], tol: f64) {
    let g = reformc_ir::parse(text).unwrap_or_else(|e| panic!("{e}"));
    reformc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let (mut inputs, mut weights) = (BTreeMap::new(), BTreeMap::new());
    let names = g.weights().into_iter().map(|(n, _)| (n, true));
    let names = names.chain(g.inputs().into_iter().map(|(n, _)| (n, false)));
    for ((name, is_weight), t) in names.zip(args) {
        let map = if is_weight { &mut weights } else { &mut inputs };
        map.insert(name.to_string(), t.clone());
    }
    let want = reformc_interp::run(&g, &inputs, &weights).unwrap_or_else(|e| panic!("{e}"));
    let got = jit_run(&g, args).unwrap_or_else(|e| panic!("jit: {e}"));
    assert_eq!(got.len(), g.outputs.len());
    for ((name, _), x) in g.outputs.iter().zip(&got) {
        let w = &want[name];
        assert_eq!(
            (x.shape(), x.dtype()),
            (w.shape(), w.dtype()),
            "output {name}"
        );
        let tol = if w.dtype().is_float() { tol } else { 0.0 };
        for (a, b) in x.to_f64().iter().zip(w.to_f64().iter()) {
            let ok = if a.is_nan() || b.is_nan() {
                a.is_nan() && b.is_nan()
            } else {
                (a - b).abs() / b.abs().max(1.0) <= tol
            };
            assert!(ok, "output {name}: MLIR gives {a}, the interpreter {b}");
        }
    }
}

/// `random_f32` with values in [lo, lo + 2 * scale).
fn scaled(shape: &[usize], seed: u64, scale: f32, lo: f32) -> Tensor {
    match random_f32(shape, seed) {
        Tensor::F32(a) => Tensor::F32(a.mapv(|x| (x + 1.0) * scale + lo)),
        _ => unreachable!(),
    }
}

const EMBEDDING: &str = "graph {
  %0 = weight {name=\"table\"} : f32[11,6]
  %1 = input {name=\"ids\"} : i64[B,L]
  %2 = embedding %1, %0 : f32[B,L,6]
  %3 = input {name=\"flat\"} : i64[N]
  %4 = embedding %3, %0 : f32[N,6]
  output \"e\" = %2
  output \"f\" = %4
}
";

#[test]
fn embedding_matches_the_interpreter() {
    let m = check_module(EMBEDDING);
    assert!(
        m.contains("tensor.extract"),
        "a gather from the table:\n{m}"
    );
    let cases = [(1, 1, 1), (2, 7, 3), (3, 5, 8)]
        .iter()
        .enumerate()
        .map(|(i, &(b, l, n))| {
            let s = i as u64 * 10;
            vec![
                random_f32(&[11, 6], s + 1),
                random_i64(&[b, l], 11, s + 2),
                random_i64(&[n], 11, s + 3),
            ]
        })
        .collect();
    run_cases(EMBEDDING, cases);
}

const AXIAL: &str = "graph {
  %0 = weight {name=\"w0\"} : f32[4,1,3]
  %1 = weight {name=\"w1\"} : f32[1,5,2]
  %2 = input {name=\"ids\"} : i64[B,L]
  %3 = iota %2 {axis=1} : i64[L]
  %4 = axial_pos_embedding %3, %0, %1 : f32[L,5]
  %5 = input {name=\"pos\"} : i64[N]
  %6 = axial_pos_embedding %5, %0, %1 : f32[N,5]
  output \"a\" = %4
  output \"p\" = %6
}
";

#[test]
fn axial_pos_embedding_matches_the_interpreter() {
    let cases = [(1, 1, 2), (2, 13, 5), (1, 20, 20)]
        .iter()
        .enumerate()
        .map(|(i, &(b, l, n))| {
            let s = i as u64 * 10;
            vec![
                random_f32(&[4, 1, 3], s + 1),
                random_f32(&[1, 5, 2], s + 2),
                random_i64(&[b, l], 7, s + 3),
                random_i64(&[n], 20, s + 4),
            ]
        })
        .collect();
    run_cases(AXIAL, cases);
}

const LAYER_NORM: &str = "graph {
  %0 = weight {name=\"w\"} : f32[7]
  %1 = weight {name=\"b\"} : f32[7]
  %2 = input {name=\"x\"} : f32[B,L,7]
  %3 = layer_norm %2, %0, %1 {eps=1e-05} : f32[B,L,7]
  %4 = input {name=\"y\"} : f32[N,7]
  %5 = layer_norm %4, %0, %1 {eps=1e-12} : f32[N,7]
  output \"x\" = %3
  output \"y\" = %5
}
";

#[test]
fn layer_norm_matches_the_interpreter() {
    let cases = [(1, 1, 1), (2, 9, 4), (3, 4, 17)]
        .iter()
        .enumerate()
        .map(|(i, &(b, l, n))| {
            let s = i as u64 * 10;
            vec![
                random_f32(&[7], s + 1),
                random_f32(&[7], s + 2),
                // An offset mean and a wide range test the two-pass variance.
                scaled(&[b, l, 7], s + 3, 4.0, 3.0),
                random_f32(&[n, 7], s + 4),
            ]
        })
        .collect();
    run_cases(LAYER_NORM, cases);
}

const LINEAR: &str = "graph {
  %0 = weight {name=\"w\"} : f32[6,5]
  %1 = weight {name=\"b\"} : f32[6]
  %2 = weight {name=\"w2\"} : f32[3,6]
  %3 = input {name=\"x\"} : f32[B,L,5]
  %4 = linear %3, %0 : f32[B,L,6]
  %5 = linear %3, %0, %1 : f32[B,L,6]
  %6 = linear %3, %0, %1 {activation=\"relu\"} : f32[B,L,6]
  %7 = linear %3, %0, %1 {activation=\"gelu\"} : f32[B,L,6]
  %8 = linear %3, %0 {activation=\"gelu_new\"} : f32[B,L,6]
  %9 = linear %3, %0, %1 {activation=\"gelu_fast\"} : f32[B,L,6]
  %10 = linear %3, %0, %1 {activation=\"silu\"} : f32[B,L,6]
  %11 = linear %3, %0, %1 {activation=\"tanh\"} : f32[B,L,6]
  %12 = linear %3, %0, %1 {activation=\"sigmoid\"} : f32[B,L,6]
  %13 = input {name=\"y\"} : f32[N,6]
  %14 = linear %13, %2 : f32[N,3]
  %15 = linear %6, %2 : f32[B,L,3]
  output \"plain\" = %4
  output \"bias\" = %5
  output \"relu\" = %6
  output \"gelu\" = %7
  output \"gelu_new\" = %8
  output \"gelu_fast\" = %9
  output \"silu\" = %10
  output \"tanh\" = %11
  output \"sigmoid\" = %12
  output \"rank2\" = %14
  output \"chain\" = %15
}
";

#[test]
fn linear_with_bias_and_activations_matches_the_interpreter() {
    let cases = [(1, 1, 1), (2, 7, 3), (3, 2, 9)]
        .iter()
        .enumerate()
        .map(|(i, &(b, l, n))| {
            let s = i as u64 * 10;
            vec![
                random_f32(&[6, 5], s + 1),
                random_f32(&[6], s + 2),
                random_f32(&[3, 6], s + 3),
                scaled(&[b, l, 5], s + 4, 2.0, -2.0),
                random_f32(&[n, 6], s + 5),
            ]
        })
        .collect();
    run_cases(LINEAR, cases);
}

const GATHER: &str = "graph {
  %0 = input {name=\"x\"} : f32[B,L,6]
  %1 = input {name=\"i\"} : i64[B,L,4]
  %2 = gather %0, %1 {axis=2} : f32[B,L,4]
  %3 = input {name=\"j\"} : i64[B,M,6]
  %4 = gather %0, %3 {axis=1} : f32[B,M,6]
  %5 = input {name=\"k\"} : i64[B,L,6]
  %6 = gather %5, %5 {axis=2} : i64[B,L,6]
  output \"g\" = %2
  output \"h\" = %4
  output \"k\" = %6
}
";

#[test]
fn gather_matches_the_interpreter() {
    let cases = [(1, 1, 1), (2, 7, 3), (3, 5, 12)]
        .iter()
        .enumerate()
        .map(|(i, &(b, l, m))| {
            let s = i as u64 * 10;
            vec![
                random_f32(&[b, l, 6], s + 1),
                random_i64(&[b, l, 4], 6, s + 2),
                random_i64(&[b, m, 6], l as i64, s + 3),
                random_i64(&[b, l, 6], 6, s + 4),
            ]
        })
        .collect();
    run_cases(GATHER, cases);
}

// `t` holds small integers, so that maxima tie and the first one must win;
// `log` of negative entries of `x` gives NaNs, some in first place.
const ARGMAX: &str = "graph {
  %0 = input {name=\"x\"} : f32[B,L,7]
  %1 = input {name=\"t\"} : i64[B,L,7]
  %2 = argmax %0 {axis=2} : i64[B,L]
  %3 = argmax %0 {axis=1} : i64[B,7]
  %4 = cast %1 : f32[B,L,7]
  %5 = argmax %4 {axis=2} : i64[B,L]
  %6 = argmax %4 {axis=0} : i64[L,7]
  %7 = log %0 : f32[B,L,7]
  %8 = argmax %7 {axis=2} : i64[B,L]
  %9 = argmax %7 {axis=1} : i64[B,7]
  %10 = argmax %1 {axis=1} : i64[B,7]
  output \"a\" = %2
  output \"b\" = %3
  output \"ties\" = %5
  output \"ties0\" = %6
  output \"nan\" = %8
  output \"nan1\" = %9
  output \"int\" = %10
  output \"log\" = %7
}
";

#[test]
fn argmax_matches_the_interpreter_with_ties_and_nans() {
    let cases = [(1, 1), (2, 7), (3, 10)]
        .iter()
        .enumerate()
        .map(|(i, &(b, l))| {
            let s = i as u64 * 10;
            vec![
                random_f32(&[b, l, 7], s + 1),
                random_i64(&[b, l, 7], 3, s + 2),
            ]
        })
        .collect();
    run_cases(ARGMAX, cases);
}

const PAD: &str = "graph {
  %0 = input {name=\"ids\"} : i64[B,L]
  %1 = pad_to_multiple %0 {axis=1, min_len=0, multiple=4, value=3} : i64[B,P]
  %2 = input {name=\"x\"} : f32[B,L,3]
  %3 = pad_to_multiple %2 {axis=1, min_len=5, multiple=4, value=-1.5} : f32[B,Q,3]
  %4 = pad_to_multiple %2 {axis=2, min_len=0, multiple=2, value=0} : f32[B,L,R]
  %5 = truncate %3, %0 {axis=1} : f32[B,L,3]
  %6 = exp %3 : f32[B,Q,3]
  %7 = truncate %6, %2 {axis=1} : f32[B,L,3]
  output \"ids\" = %1
  output \"x\" = %3
  output \"last\" = %4
  output \"back\" = %5
  output \"exp\" = %7
}
";

#[test]
fn pad_to_multiple_and_truncate_match_the_interpreter() {
    let cases = [(1, 1), (2, 4), (2, 5), (3, 6), (1, 9)]
        .iter()
        .enumerate()
        .map(|(i, &(b, l))| {
            let s = i as u64 * 10;
            vec![
                random_i64(&[b, l], 100, s + 1),
                random_f32(&[b, l, 3], s + 2),
            ]
        })
        .collect();
    run_cases(PAD, cases);
}

const SEQ_CHUNK: &str = "graph {
  %0 = weight {name=\"w\"} : f32[5,4]
  %1 = weight {name=\"b\"} : f32[5]
  %2 = input {name=\"x\"} : f32[B,L,4]
  %3 = seq_chunk %2 {axis=1, size=3} : f32[B,L,5] {
    body(%4: f32[B,C,4]) {
      %5 = linear %4, %0, %1 {activation=\"gelu\"} : f32[B,C,5]
      %6 = softmax %5 {axis=1} : f32[B,C,5]
      yield %6
    }
  }
  %7 = seq_chunk %2 {axis=0, size=1} : f32[B,L,4] {
    body(%8: f32[D,L,4]) {
      %9 = reduce %8 {axes=[1], keepdim, kind=\"sum\"} : f32[D,1,4]
      %10 = sub %8, %9 : f32[D,L,4]
      yield %10
    }
  }
  %11 = seq_chunk %2 {axis=1, size=4} : f32[B,L,5] {
    body(%12: f32[B,E,4]) {
      %13 = seq_chunk %12 {axis=0, size=2} : f32[B,E,5] {
        body(%14: f32[F,E,4]) {
          %15 = linear %14, %0, %1 : f32[F,E,5]
          %16 = softmax %15 {axis=1} : f32[F,E,5]
          yield %16
        }
      }
      %17 = reduce %13 {axes=[1], keepdim, kind=\"max\"} : f32[B,1,5]
      %18 = sub %13, %17 : f32[B,E,5]
      yield %18
    }
  }
  output \"y\" = %3
  output \"z\" = %7
  output \"nested\" = %11
}
";

/// The softmax along the chunked axis makes every chunk boundary visible;
/// the third result nests a chunking of the batch inside one of the sequence.
#[test]
fn seq_chunk_matches_the_interpreter() {
    let m = check_module(SEQ_CHUNK);
    assert!(
        m.contains("scf.for") && m.contains("tensor.insert_slice"),
        "{m}"
    );
    let cases = [(1, 1), (2, 3), (2, 7), (3, 2)]
        .iter()
        .enumerate()
        .map(|(i, &(b, l))| {
            let s = i as u64 * 10;
            vec![
                random_f32(&[5, 4], s + 1),
                random_f32(&[5], s + 2),
                random_f32(&[b, l, 4], s + 3),
            ]
        })
        .collect();
    run_cases(SEQ_CHUNK, cases);
}

/// A reversible block whose `g` chunks a feed-forward along the sequence
/// (as `--chunk-ff` builds it), followed by a second block that reads the first.
const REVERSIBLE: &str = "graph {
  %0 = weight {name=\"ln_w\"} : f32[4]
  %1 = weight {name=\"ln_b\"} : f32[4]
  %2 = weight {name=\"wf\"} : f32[4,4]
  %3 = weight {name=\"w1\"} : f32[6,4]
  %4 = weight {name=\"b1\"} : f32[6]
  %5 = weight {name=\"w2\"} : f32[4,6]
  %6 = weight {name=\"b2\"} : f32[4]
  %7 = input {name=\"x\"} : f32[B,L,8]
  %8 = reversible_block %7 : f32[B,L,8] {
    f(%9: f32[B,L,4]) {
      %10 = layer_norm %9, %0, %1 {eps=1e-12} : f32[B,L,4]
      %11 = linear %10, %2 : f32[B,L,4]
      yield %11
    }
    g(%12: f32[B,L,4]) {
      %13 = seq_chunk %12 {axis=1, size=2} : f32[B,L,4] {
        body(%14: f32[B,C,4]) {
          %15 = layer_norm %14, %0, %1 {eps=1e-12} : f32[B,C,4]
          %16 = linear %15, %3, %4 {activation=\"relu\"} : f32[B,C,6]
          %17 = linear %16, %5, %6 : f32[B,C,4]
          yield %17
        }
      }
      yield %13
    }
  }
  %18 = reversible_block %8 : f32[B,L,8] {
    f(%19: f32[B,L,4]) {
      %20 = seq_chunk %19 {axis=1, size=3} : f32[B,L,4] {
        body(%21: f32[B,C2,4]) {
          %22 = linear %21, %2 : f32[B,C2,4]
          yield %22
        }
      }
      yield %20
    }
    g(%23: f32[B,L,4]) {
      %24 = act %23 {fn=\"tanh\"} : f32[B,L,4]
      yield %24
    }
  }
  output \"y\" = %18
}
";

#[test]
fn reversible_blocks_with_chunked_feed_forward_match_the_interpreter() {
    let cases = [(1, 1), (2, 5), (1, 8), (3, 3)]
        .iter()
        .enumerate()
        .map(|(i, &(b, l))| {
            let s = i as u64 * 10;
            vec![
                random_f32(&[4], s + 1),
                random_f32(&[4], s + 2),
                random_f32(&[4, 4], s + 3),
                random_f32(&[6, 4], s + 4),
                random_f32(&[6], s + 5),
                random_f32(&[4, 6], s + 6),
                random_f32(&[4], s + 7),
                random_f32(&[b, l, 8], s + 8),
            ]
        })
        .collect();
    run_cases(REVERSIBLE, cases);
}

/// One reversible layer of the hand-built model below: `f` is a
/// pre-norm projection pair (standing in for attention), `g` a pre-norm
/// feed-forward, chunked along the sequence when `chunk` is given.
fn model_layer(i: usize, input: usize, first: usize, chunk: Option<usize>) -> (String, usize) {
    let n = |k: usize| first + k;
    let w = |k: usize, name: &str, shape: &str| {
        format!(
            "  %{} = weight {{name=\"l{i}.{name}\"}} : f32[{shape}]\n",
            n(k)
        )
    };
    let mut s = String::new();
    s += &w(0, "ln_w", "8");
    s += &w(1, "ln_b", "8");
    s += &w(2, "q", "8,8");
    s += &w(3, "o", "8,8");
    s += &w(4, "ff_ln_w", "8");
    s += &w(5, "ff_ln_b", "8");
    s += &w(6, "d1", "12,8");
    s += &w(7, "b1", "12");
    s += &w(8, "d2", "8,12");
    s += &w(9, "b2", "8");
    let ff = |x: usize, len: &str, at: usize| {
        format!(
            "      %{a} = layer_norm %{x}, %{lw}, %{lb} {{eps=1e-12}} : f32[B,{len},8]
      %{h} = linear %{a}, %{d1}, %{b1} {{activation=\"gelu_new\"}} : f32[B,{len},12]
      %{o} = linear %{h}, %{d2}, %{b2} : f32[B,{len},8]\n",
            a = at,
            h = at + 1,
            o = at + 2,
            lw = n(4),
            lb = n(5),
            d1 = n(6),
            b1 = n(7),
            d2 = n(8),
            b2 = n(9)
        )
    };
    let (r, fa, ga) = (n(10), n(11), n(15));
    s += &format!(
        "  %{r} = reversible_block %{input} : f32[B,P,16] {{
    f(%{fa}: f32[B,P,8]) {{
      %{a} = layer_norm %{fa}, %{lw}, %{lb} {{eps=1e-12}} : f32[B,P,8]
      %{b} = linear %{a}, %{q} {{activation=\"tanh\"}} : f32[B,P,8]
      %{c} = linear %{b}, %{o} : f32[B,P,8]
      yield %{c}
    }}
    g(%{ga}: f32[B,P,8]) {{\n",
        a = n(12),
        b = n(13),
        c = n(14),
        lw = n(0),
        lb = n(1),
        q = n(2),
        o = n(3)
    );
    match chunk {
        Some(size) => {
            let (sc, arg) = (n(16), n(17));
            s += &format!(
                "      %{sc} = seq_chunk %{ga} {{axis=1, size={size}}} : f32[B,P,8] {{
        body(%{arg}: f32[B,C{i},8]) {{\n"
            );
            s += &ff(arg, &format!("C{i}"), n(18));
            s += &format!(
                "          yield %{}\n        }}\n      }}\n      yield %{sc}\n",
                n(20)
            );
        }
        None => {
            s += &ff(ga, "P", n(18));
            s += &format!("      yield %{}\n", n(20));
        }
    }
    s += "    }\n  }\n";
    (s, r)
}

/// A small Reformer-shaped model whose layers use only the ops above:
/// padded ids, token + axial position embeddings, three reversible layers
/// (two with a chunked feed-forward), the final norm, a chunked LM head,
/// truncation to the input length and the argmax prediction.
fn model_graph() -> String {
    let mut s = String::from(
        "graph {
  %0 = input {name=\"input_ids\"} : i64[B,L]
  %1 = pad_to_multiple %0 {axis=1, min_len=4, multiple=4, value=0} : i64[B,P]
  %2 = weight {name=\"emb\"} : f32[13,8]
  %3 = embedding %1, %2 : f32[B,P,8]
  %4 = iota %1 {axis=1} : i64[P]
  %5 = weight {name=\"pos0\"} : f32[4,1,3]
  %6 = weight {name=\"pos1\"} : f32[1,4,5]
  %7 = axial_pos_embedding %4, %5, %6 : f32[P,8]
  %8 = add %3, %7 : f32[B,P,8]
  %9 = concat %8, %8 {axis=2} : f32[B,P,16]
",
    );
    let mut x = 9;
    for (i, chunk) in [Some(3), None, Some(2)].into_iter().enumerate() {
        let (text, out) = model_layer(i, x, 100 + 30 * i, chunk);
        s += &text;
        x = out;
    }
    s += &format!(
        "  %200 = weight {{name=\"norm_w\"}} : f32[16]
  %201 = weight {{name=\"norm_b\"}} : f32[16]
  %202 = layer_norm %{x}, %200, %201 {{eps=1e-12}} : f32[B,P,16]
  %203 = weight {{name=\"head_w\"}} : f32[13,16]
  %204 = weight {{name=\"head_b\"}} : f32[13]
  %205 = seq_chunk %202 {{axis=1, size=5}} : f32[B,P,13] {{
    body(%206: f32[B,H,16]) {{
      %207 = linear %206, %203, %204 : f32[B,H,13]
      yield %207
    }}
  }}
  %208 = truncate %205, %0 {{axis=1}} : f32[B,L,13]
  %209 = argmax %208 {{axis=2}} : i64[B,L]
  output \"logits\" = %208
  output \"predictions\" = %209
}}
"
    );
    s
}

/// The whole model, interpreter against the MLIR JIT, at lengths that pad
/// (5, 13) and do not (1, 3 at or below `min_len`, 8 a multiple), batch 1 to 3.
#[test]
fn end_to_end_model_matches_the_interpreter() {
    let text = model_graph();
    let g = reformc_ir::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let weights: Vec<Tensor> = g
        .weights()
        .iter()
        .enumerate()
        .map(|(k, (_, v))| {
            let shape: Vec<usize> = g
                .ty(*v)
                .shape
                .iter()
                .map(|d| d.as_const().expect("static weights") as usize)
                .collect();
            random_f32(&shape, 1000 + k as u64)
        })
        .collect();
    let cases = [(1, 1), (2, 3), (2, 5), (1, 8), (3, 13)]
        .iter()
        .enumerate()
        .map(|(i, &(b, l))| {
            let mut args = weights.clone();
            args.push(random_i64(&[b, l], 13, 77 + i as u64));
            args
        })
        .collect();
    run_cases(&text, cases);
}

const F64_OPS: &str = "graph {
  %0 = weight {name=\"table\"} : f64[9,4]
  %1 = weight {name=\"w\"} : f64[4]
  %2 = weight {name=\"b\"} : f64[4]
  %3 = weight {name=\"d\"} : f64[4,4]
  %4 = input {name=\"ids\"} : i64[B,L]
  %5 = embedding %4, %0 : f64[B,L,4]
  %6 = layer_norm %5, %1, %2 {eps=1e-12} : f64[B,L,4]
  %7 = linear %6, %3, %1 {activation=\"gelu\"} : f64[B,L,4]
  %8 = argmax %7 {axis=2} : i64[B,L]
  output \"y\" = %7
  output \"i\" = %8
}
";

/// The lowerings follow the element type: an `f64` graph agrees to 1e-12.
#[test]
fn f64_model_ops_match_the_interpreter() {
    let f64s = |shape: &[usize], seed: u64| Tensor::F64(random_f32(shape, seed).to_f64());
    check_module(F64_OPS);
    for (i, &(b, l)) in [(1, 1), (2, 7)].iter().enumerate() {
        let s = i as u64 * 10;
        let args = vec![
            f64s(&[9, 4], s + 1),
            f64s(&[4], s + 2),
            f64s(&[4], s + 3),
            f64s(&[4, 4], s + 4),
            random_i64(&[b, l], 9, s + 5),
        ];
        compare_strict(F64_OPS, &args, 1e-12);
    }
}

/// A table without a constant row count cannot bound its ids: the lowering
/// answers with an error naming the op, never with invalid MLIR.
#[test]
fn symbolic_table_sizes_are_rejected_with_the_op_named() {
    let text = "graph {
  %0 = input {name=\"table\"} : f32[V,4]
  %1 = input {name=\"ids\"} : i64[B,L]
  %2 = embedding %1, %0 : f32[B,L,4]
  output \"e\" = %2
}
";
    let g = reformc_ir::parse(text).unwrap_or_else(|e| panic!("{e}"));
    reformc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    match emit_module(&g, &EmitOptions::default()) {
        Err(MlirError::Invalid { op, reason, .. }) => {
            assert_eq!(op, reformc_ir::OpKind::Embedding);
            assert!(reason.contains("constant"), "{reason}");
        }
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}
