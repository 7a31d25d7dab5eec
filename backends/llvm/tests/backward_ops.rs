//! The backward-pass ops (`broadcast`, `scatter_add`, `act_grad`) in the
//! JIT against the interpreter, on random data of several shapes.

use ndarray::{ArrayD, IxDyn};
use reformc_backend_llvm::{abi::err, BackendError, Tensors};
use reformc_ir::Activation;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;

/// Deterministic values in [lo, hi).
fn values(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

fn f32t(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
    let v: Vec<f32> = values(shape.iter().product(), seed, lo, hi)
        .into_iter()
        .map(|x| x as f32)
        .collect();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

fn ids(shape: &[usize], seed: u64, bound: usize) -> Tensor {
    let v: Vec<i64> = values(shape.iter().product(), seed, 0.0, bound as f64)
        .into_iter()
        .map(|x| x as i64)
        .collect();
    Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

/// Runs `text` in the interpreter and the JIT; the largest difference
/// relative to max(1, |reference|) over every output must be <= `tol`.
fn compare(text: &str, inputs: &Tensors, tol: f64) {
    let g = reformc_ir::parse(text).unwrap_or_else(|e| panic!("{e}"));
    reformc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let none = BTreeMap::new();
    let want = reformc_interp::run(&g, inputs, &none).unwrap_or_else(|e| panic!("interp: {e}"));
    let got =
        reformc_backend_llvm::jit_run(&g, inputs, &none).unwrap_or_else(|e| panic!("jit: {e}"));
    for (name, w) in &want {
        let x = &got[name];
        assert_eq!(x.dtype(), w.dtype(), "{name}");
        assert_eq!(x.shape(), w.shape(), "{name}");
        let (a, b) = (x.to_f64(), w.to_f64());
        let d = a
            .iter()
            .zip(b.iter())
            .map(|(p, q)| (p - q).abs() / q.abs().max(1.0))
            .fold(0.0f64, f64::max);
        assert!(
            d <= tol,
            "{name}: JIT differs from the interpreter by {d:e}\n{text}"
        );
    }
}

fn inputs(list: Vec<(&str, Tensor)>) -> Tensors {
    list.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

const BROADCAST: &str = r#"graph {
  %0 = input {name="x"} : f32[1,L,1]
  %1 = input {name="r"} : f32[B,L,4]
  %2 = input {name="i"} : i64[4]
  %3 = broadcast %0, %1 : f32[B,L,4]
  %4 = broadcast %2, %1 : i64[B,L,4]
  %5 = broadcast %1, %1 : f32[B,L,4]
  output "a" = %3
  output "b" = %4
  output "c" = %5
}"#;

#[test]
fn broadcast_matches_the_interpreter() {
    for (b, l) in [(1, 1), (2, 3), (3, 17)] {
        let ins = inputs(vec![
            ("x", f32t(&[1, l, 1], 1, -1.0, 1.0)),
            ("r", f32t(&[b, l, 4], 2, -1.0, 1.0)),
            ("i", ids(&[4], 3, 100)),
        ]);
        compare(BROADCAST, &ins, 0.0);
    }
}

#[test]
fn act_grad_matches_the_interpreter_for_every_activation() {
    for act in Activation::ALL.into_iter().filter_map(|a| a.name()) {
        let text = format!(
            "graph {{\n  %0 = input {{name=\"x\"}} : f32[B,N]\n  %1 = input {{name=\"dy\"}} : f32[B,N]\n  \
             %2 = act_grad %0, %1 {{fn=\"{act}\"}} : f32[B,N]\n  output \"y\" = %2\n}}"
        );
        for (b, n) in [(1, 1), (3, 50)] {
            let ins = inputs(vec![
                ("x", f32t(&[b, n], 4, -5.0, 5.0)),
                ("dy", f32t(&[b, n], 5, -2.0, 2.0)),
            ]);
            // The same f64 formulas, rounded once; libm may differ in the last bit.
            compare(&text, &ins, 1e-6);
        }
    }
}

const EMBEDDING_GRAD: &str = r#"graph {
  %0 = input {name="table"} : f32[V,D]
  %1 = input {name="ids"} : i64[N,1]
  %2 = input {name="dy"} : f32[N,D]
  %3 = broadcast %1, %2 : i64[N,D]
  %4 = scatter_add %0, %3, %2 {axis=0} : f32[V,D]
  output "y" = %4
}"#;

const SCATTER_INNER: &str = r#"graph {
  %0 = input {name="r"} : f32[A,M,C]
  %1 = input {name="i"} : i64[A,K,C]
  %2 = input {name="s"} : f32[A,K,C]
  %3 = scatter_add %0, %1, %2 {axis=1} : f32[A,M,C]
  output "y" = %3
}"#;

#[test]
fn scatter_add_matches_the_interpreter_bit_for_bit() {
    for (v, d, n) in [(1, 1, 1), (5, 3, 12), (40, 8, 200)] {
        let ins = inputs(vec![
            ("table", f32t(&[v, d], 6, -1.0, 1.0)),
            ("ids", ids(&[n, 1], 7, v)),
            ("dy", f32t(&[n, d], 8, -1.0, 1.0)),
        ]);
        // The same additions in the same order.
        compare(EMBEDDING_GRAD, &ins, 0.0);
    }
    for (a, m, k, c) in [(1, 1, 1, 1), (2, 3, 5, 4), (3, 7, 2, 1)] {
        let ins = inputs(vec![
            ("r", f32t(&[a, m, c], 9, -1.0, 1.0)),
            ("i", ids(&[a, k, c], 10, m)),
            ("s", f32t(&[a, k, c], 11, -1.0, 1.0)),
        ]);
        compare(SCATTER_INNER, &ins, 0.0);
    }
}

/// Row indices (rank below the data's): whole rows of `[A, M, R, C]` move,
/// forward (`gather`) and back (`scatter_add`, its adjoint).
const ROWS: &str = r#"graph {
  %0 = input {name="r"} : f32[A,M,R,C]
  %1 = input {name="i"} : i64[A,K]
  %2 = input {name="s"} : f32[A,K,R,C]
  %3 = scatter_add %0, %1, %2 {axis=1} : f32[A,M,R,C]
  %4 = gather %0, %1 {axis=1} : f32[A,K,R,C]
  output "y" = %3
  output "g" = %4
}"#;

#[test]
fn row_indices_gather_and_scatter_whole_rows_as_the_interpreter() {
    for (a, m, k, r, c) in [(1, 1, 1, 1, 1), (2, 3, 5, 2, 4), (3, 7, 40, 3, 33)] {
        let ins = inputs(vec![
            ("r", f32t(&[a, m, r, c], 14, -1.0, 1.0)),
            ("i", ids(&[a, k], 15, m)),
            ("s", f32t(&[a, k, r, c], 16, -1.0, 1.0)),
        ]);
        compare(ROWS, &ins, 0.0);
    }
}

#[test]
fn scatter_add_index_out_of_range_is_a_value_error() {
    let g = reformc_ir::parse(EMBEDDING_GRAD).unwrap();
    for bad in [3i64, -1] {
        let ids = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![0, bad]).unwrap();
        let ins = inputs(vec![
            ("table", f32t(&[3, 2], 12, -1.0, 1.0)),
            ("ids", Tensor::I64(ids)),
            ("dy", f32t(&[2, 2], 13, -1.0, 1.0)),
        ]);
        match reformc_backend_llvm::jit_run(&g, &ins, &BTreeMap::new()) {
            Err(BackendError::Run { code, message }) => {
                assert_eq!(code, err::VALUE, "{message}");
                assert!(
                    message.contains("scatter_add") && message.contains("out of range"),
                    "{message}"
                );
            }
            other => panic!("expected a run error, got {other:?}"),
        }
    }
}

const LM_LOSS: &str = r#"graph {
  %0 = input {name="h"} : f32[B,L,5]
  %1 = input {name="w"} : f32[9,5]
  %2 = input {name="labels"} : i64[B,L]
  %3 = input {name="dy"} : f32[]
  %4 = lm_loss %0, %1, %2 {chunk=3} : f32[]
  %5 = lm_loss_grad %0, %1, %2, %3 {chunk=3, wrt="h"} : f32[B,L,5]
  %6 = lm_loss_grad %0, %1, %2, %3 {chunk=3, wrt="w"} : f32[9,5]
  output "total" = %4
  output "dh" = %5
  output "dw" = %6
}"#;

fn lm_loss_inputs(labels: Vec<i64>) -> Tensors {
    let n = labels.len();
    inputs(vec![
        ("h", f32t(&[1, n, 5], 21, -1.0, 1.0)),
        ("w", f32t(&[9, 5], 22, -1.0, 1.0)),
        (
            "labels",
            Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[1, n]), labels).unwrap()),
        ),
        ("dy", Tensor::F32(ArrayD::from_elem(IxDyn(&[]), 0.5))),
    ])
}

#[test]
fn fused_lm_loss_and_its_gradients_match_the_interpreter() {
    // 7 rows in chunks of 3 (the last one short), two rows ignored.
    let ins = lm_loss_inputs(vec![8, -100, 0, 4, 4, -100, 1]);
    compare(LM_LOSS, &ins, 1e-5);
}

#[test]
fn each_lm_loss_gradient_alone_matches_the_interpreter() {
    // The two gradients are one call (one computation of the logits); an
    // op between them keeps them apart, and each one alone is a call too.
    let apart = LM_LOSS.replace(
        "  %6 = lm_loss_grad",
        "  %7 = neg %3 : f32[]\n  output \"n\" = %7\n  %6 = lm_loss_grad",
    );
    let ins = lm_loss_inputs(vec![8, -100, 0, 4, 4, -100, 1]);
    compare(&apart, &ins, 1e-5);
}

#[test]
fn fused_lm_loss_label_out_of_range_is_a_value_error() {
    let g = reformc_ir::parse(LM_LOSS).unwrap();
    let ins = lm_loss_inputs(vec![0, 9]);
    match reformc_backend_llvm::jit_run(&g, &ins, &BTreeMap::new()) {
        Err(BackendError::Run { code, message }) => {
            assert_ne!(code, 0);
            assert!(message.contains("label 9 of row 1"), "{message}");
        }
        other => panic!("expected a run error, got {other:?}"),
    }
}

#[test]
fn layer_norm_grad_matches_the_interpreter() {
    for (rows, width) in [(1usize, 1usize), (3, 5), (70, 33)] {
        let text = format!(
            "graph {{\n  %0 = input {{name=\"x\"}} : f32[{rows},{width}]\n  %1 = input {{name=\"w\"}} : f32[{width}]\n  %2 = input {{name=\"dy\"}} : f32[{rows},{width}]\n  %3 = layer_norm_grad %0, %1, %2 {{eps=1e-5, wrt=\"x\"}} : f32[{rows},{width}]\n  %4 = layer_norm_grad %0, %1, %2 {{eps=1e-5, wrt=\"w\"}} : f32[{width}]\n  output \"dx\" = %3\n  output \"dw\" = %4\n}}"
        );
        let ins = inputs(vec![
            ("x", f32t(&[rows, width], 1, -3.0, 4.0)),
            ("w", f32t(&[width], 2, -1.0, 1.0)),
            ("dy", f32t(&[rows, width], 3, -1.0, 1.0)),
        ]);
        compare(&text, &ins, 1e-4);
    }
}

/// The fused LSH attention backward in the JIT (the runtime kernel) against
/// the interpreter: rounds combined, causal and padding masks, windows wider
/// than the chunk count (duplicated keys), and `L <= chunk`.
#[test]
fn lsh_attention_grad_matches_the_interpreter() {
    // (len, chunk, before, after, rounds, causal, masked)
    let cases = [
        (32, 4, 1, 0, 2, true, true),
        (24, 8, 1, 1, 1, false, false),
        (8, 4, 1, 1, 1, true, true),
        (12, 4, 0, 0, 3, false, true),
        (6, 8, 1, 0, 2, true, true),
        (64, 8, 2, 0, 1, true, false),
    ];
    for (len, chunk, before, after, rounds, causal, masked) in cases {
        let flag = if causal { ", causal" } else { "" };
        let attrs = format!("{{after={after}, before={before}{flag}, chunk={chunk}, heads=2}}");
        let (mask_in, mask_op) = match masked {
            true => (
                format!("  %3 = input {{name=\"m\"}} : i64[2,{len}]\n"),
                ", %3",
            ),
            false => (String::new(), ""),
        };
        let text = format!(
            "graph {{\n  %0 = input {{name=\"qk\"}} : f32[2,{len},10]\n  %1 = input {{name=\"v\"}} : f32[2,{len},10]\n  %2 = input {{name=\"bk\"}} : i64[2,2,{rounds},{len}]\n{mask_in}  %4 = input {{name=\"dy\"}} : f32[2,{len},10]\n  %5 = lsh_attention %0, %1, %2{mask_op} {attrs} : f32[2,{len},10]\n  %6 = lsh_attention_grad %0, %1, %2, %5, %4{mask_op} {attrs} : f32[2,2,{len},10]\n  output \"g\" = %6\n}}"
        );
        // Buckets with round offsets: round r in [4r, 4r + 4).
        let bk: Vec<i64> = values(4 * rounds * len, len as u64, 0.0, 4.0)
            .into_iter()
            .enumerate()
            .map(|(i, x)| 4 * ((i / len) % rounds) as i64 + x as i64)
            .collect();
        let mut list = vec![
            ("qk", f32t(&[2, len, 10], 5, -1.0, 1.0)),
            ("v", f32t(&[2, len, 10], 6, -1.0, 1.0)),
            ("dy", f32t(&[2, len, 10], 7, -1.0, 1.0)),
            (
                "bk",
                Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2, 2, rounds, len]), bk).unwrap()),
            ),
        ];
        if masked {
            let m: Vec<i64> = (0..2 * len).map(|i| i64::from(i % 7 != 2)).collect();
            list.push((
                "m",
                Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2, len]), m).unwrap()),
            ));
        }
        compare(&text, &inputs(list), 1e-4);
    }
}

/// The fused local attention backward in the JIT (the runtime kernel)
/// against the interpreter: neighbours both ways, causal and padding masks,
/// windows wider than the chunk count, and `L <= chunk`.
#[test]
fn local_attention_grad_matches_the_interpreter() {
    // (len, chunk, before, after, causal, masked)
    let cases = [
        (32, 4, 1, 0, true, true),
        (24, 8, 1, 1, false, false),
        (8, 4, 2, 1, true, true),
        (6, 8, 1, 0, false, true),
        (64, 8, 2, 0, true, false),
    ];
    for (len, chunk, before, after, causal, masked) in cases {
        let flag = if causal { ", causal" } else { "" };
        let attrs =
            format!("{{after={after}, before={before}{flag}, chunk={chunk}, heads=2, scale=0.3}}");
        let (mask_in, mask_op) = match masked {
            true => (
                format!("  %3 = input {{name=\"m\"}} : i64[2,{len}]\n"),
                ", %3",
            ),
            false => (String::new(), ""),
        };
        let text = format!(
            "graph {{\n  %0 = input {{name=\"q\"}} : f32[2,{len},10]\n  %1 = input {{name=\"k\"}} : f32[2,{len},10]\n  %2 = input {{name=\"v\"}} : f32[2,{len},10]\n{mask_in}  %4 = input {{name=\"dy\"}} : f32[2,{len},10]\n  %5 = local_attention %0, %1, %2{mask_op} {attrs} : f32[2,{len},10]\n  %6 = local_attention_grad %0, %1, %2, %5, %4{mask_op} {attrs} : f32[3,2,{len},10]\n  output \"g\" = %6\n}}"
        );
        let mut list = vec![
            ("q", f32t(&[2, len, 10], 5, -1.0, 1.0)),
            ("k", f32t(&[2, len, 10], 8, -1.0, 1.0)),
            ("v", f32t(&[2, len, 10], 6, -1.0, 1.0)),
            ("dy", f32t(&[2, len, 10], 7, -1.0, 1.0)),
        ];
        if masked {
            let m: Vec<i64> = (0..2 * len).map(|i| i64::from(i % 7 != 2)).collect();
            list.push((
                "m",
                Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2, len]), m).unwrap()),
            ));
        }
        compare(&text, &inputs(list), 1e-4);
    }
}

/// `feed_forward` and its gradients over `[B, L, 8]` rows (F = 12): `lead`
/// puts the forward right before the gradients (one kernel call computes
/// them all), otherwise the gradients `wrts` come alone and the forward
/// after them (the fused dense stack).
fn feed_forward_graph(act: &str, wrts: &[&str], lead: bool) -> String {
    let ff_attrs = format!("activation=\"{act}\", chunk=16, eps=1e-5");
    let operands = "%0, %1, %2, %3, %4, %5, %6";
    let types = [
        "f32[B,L,8]",
        "f32[8]",
        "f32[8]",
        "f32[12,8]",
        "f32[12]",
        "f32[8,12]",
        "f32[8]",
    ];
    let names = ["x", "ln_w", "ln_b", "w1", "b1", "w2", "b2"];
    let mut s = String::from("graph {\n");
    for (i, (n, t)) in names.iter().zip(types).enumerate() {
        s += &format!("  %{i} = input {{name=\"{n}\"}} : {t}\n");
    }
    s += "  %7 = input {name=\"dy\"} : f32[B,L,8]\n";
    let fwd = format!("feed_forward {operands} {{{ff_attrs}}} : f32[B,L,8]");
    let mut next = 8;
    let mut outputs = Vec::new();
    if lead {
        s += &format!("  %{next} = {fwd}\n");
        outputs.push(("y".to_string(), next));
        next += 1;
    }
    for w in wrts {
        let i = names.iter().position(|n| n == w).unwrap();
        s += &format!(
            "  %{next} = feed_forward_grad {operands}, %7 {{{ff_attrs}, wrt=\"{w}\"}} : {}\n",
            types[i]
        );
        outputs.push((format!("d_{w}"), next));
        next += 1;
    }
    if !lead {
        s += &format!("  %{next} = {fwd}\n");
        outputs.push(("y".to_string(), next));
    }
    for (name, v) in outputs {
        s += &format!("  output \"{name}\" = %{v}\n");
    }
    s + "}"
}

#[test]
fn feed_forward_and_its_gradients_match_the_interpreter() {
    // 2 x 1100 rows: blocks of 1024 rows, the last one short.
    let list = vec![
        ("x", f32t(&[2, 1100, 8], 1, -2.0, 2.0)),
        ("ln_w", f32t(&[8], 2, 0.5, 1.5)),
        ("ln_b", f32t(&[8], 3, -0.5, 0.5)),
        ("w1", f32t(&[12, 8], 4, -0.5, 0.5)),
        ("b1", f32t(&[12], 5, -0.5, 0.5)),
        ("w2", f32t(&[8, 12], 6, -0.5, 0.5)),
        ("b2", f32t(&[8], 7, -0.5, 0.5)),
        ("dy", f32t(&[2, 1100, 8], 8, -1.0, 1.0)),
    ];
    let all = ["x", "ln_w", "ln_b", "w1", "b1", "w2", "b2"];
    for act in ["relu", "gelu"] {
        compare(
            &feed_forward_graph(act, &all, true),
            &inputs(list.clone()),
            1e-4,
        );
        compare(
            &feed_forward_graph(act, &["x", "b1", "w2"], false),
            &inputs(list.clone()),
            1e-4,
        );
        compare(
            &feed_forward_graph(act, &["ln_w"], false),
            &inputs(list.clone()),
            1e-4,
        );
    }
}

/// A graph long enough to be generated as outlined segments of 48 ops, with
/// a feed-forward group across a segment boundary: its leader computes every
/// member, so the segments must not split the group. (The filler is softmax
/// chains: an elementwise chain would be inlined into one loop.)
#[test]
fn a_feed_forward_group_across_segment_boundaries_stays_one_call() {
    let all = ["x", "ln_w", "ln_b", "w1", "b1", "w2", "b2"];
    let text = feed_forward_graph("relu", &all, true);
    let (head, tail) = text.split_once("  %8 = feed_forward").unwrap();
    let mut s = format!("{head}  %8 = input {{name=\"s\"}} : f32[4]\n");
    // Renumber the group after a chain of 36 softmaxes (the leader lands at 45).
    let shift = 37;
    let mut prev = 8;
    for i in 9..9 + 36 {
        s += &format!("  %{i} = softmax %{prev} {{axis=0}} : f32[4]\n");
        prev = i;
    }
    let mut body = String::from("  %8 = feed_forward");
    body += tail.trim_end_matches('}');
    for v in (8..=15).rev() {
        body = body.replace(&format!("%{v} "), &format!("%{} ", v + shift));
        body = body.replace(&format!("= %{v}\n"), &format!("= %{}\n", v + shift));
    }
    s += &body;
    for i in 53..53 + 300 {
        s += &format!("  %{i} = softmax %{prev} {{axis=0}} : f32[4]\n");
        prev = i;
    }
    s += &format!("  output \"chain\" = %{prev}\n}}");
    let list = vec![
        ("x", f32t(&[1, 1500, 8], 11, -2.0, 2.0)),
        ("ln_w", f32t(&[8], 12, 0.5, 1.5)),
        ("ln_b", f32t(&[8], 13, -0.5, 0.5)),
        ("w1", f32t(&[12, 8], 14, -0.5, 0.5)),
        ("b1", f32t(&[12], 15, -0.5, 0.5)),
        ("w2", f32t(&[8, 12], 16, -0.5, 0.5)),
        ("b2", f32t(&[8], 17, -0.5, 0.5)),
        ("dy", f32t(&[1, 1500, 8], 18, -1.0, 1.0)),
        ("s", f32t(&[4], 19, -1.0, 1.0)),
    ];
    compare(&s, &inputs(list), 1e-4);
}

/// A lowered feed-forward as a training step holds it (layer norm, two
/// products of transposed weights with bias adds and a ReLU, a residual),
/// the hidden values also read by a second output as the backward does.
const LOWERED_FF: &str = r#"graph {
  %0 = input {name="x"} : f32[B,L,8]
  %1 = weight {name="g"} : f32[8]
  %2 = weight {name="c"} : f32[8]
  %3 = weight {name="w1"} : f32[16,8]
  %4 = weight {name="b1"} : f32[16]
  %5 = weight {name="w2"} : f32[8,16]
  %6 = weight {name="b2"} : f32[8]
  %7 = layer_norm %0, %1, %2 {eps=1e-12} : f32[B,L,8]
  %8 = transpose %3 {perm=[1,0]} : f32[8,16]
  %9 = reshape %8 : f32[1,8,16]
  %10 = matmul %7, %9 : f32[B,L,16]
  %11 = add %10, %4 : f32[B,L,16]
  %12 = act %11 {fn="relu"} : f32[B,L,16]
  %13 = transpose %5 {perm=[1,0]} : f32[16,8]
  %14 = reshape %13 : f32[1,16,8]
  %15 = matmul %12, %14 : f32[B,L,8]
  %16 = add %15, %6 : f32[B,L,8]
  %17 = add %0, %16 : f32[B,L,8]
  %18 = neg %12 : f32[B,L,16]
  output "y" = %17
  output "h" = %18
}"#;

#[test]
fn raised_linears_give_the_bits_of_the_lowered_products() {
    let mut g = reformc_ir::parse(LOWERED_FF).unwrap();
    let ins = inputs(vec![("x", f32t(&[2, 70, 8], 31, -2.0, 2.0))]);
    let weights = inputs(vec![
        ("g", f32t(&[8], 32, 0.5, 1.5)),
        ("c", f32t(&[8], 33, -0.5, 0.5)),
        ("w1", f32t(&[16, 8], 34, -1.0, 1.0)),
        ("b1", f32t(&[16], 35, -1.0, 1.0)),
        ("w2", f32t(&[8, 16], 36, -1.0, 1.0)),
        ("b2", f32t(&[8], 37, -1.0, 1.0)),
    ]);
    let want = reformc_backend_llvm::jit_run(&g, &ins, &weights).unwrap();
    assert_eq!(reformc_passes::autodiff::raise_linears(&mut g), 2);
    reformc_passes::cleanup::dce(&mut g).unwrap();
    reformc_ir::verify(&g).unwrap();
    let text = reformc_ir::print(&g);
    assert!(
        !text.contains("matmul") && text.contains("activation=\"relu\""),
        "{text}"
    );
    let got = reformc_backend_llvm::jit_run(&g, &ins, &weights).unwrap();
    for (name, w) in &want {
        let bits = |t: &Tensor| t.to_f64().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got[name]), bits(w), "{name}");
    }
}
