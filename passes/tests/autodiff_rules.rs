//! Every derivative rule against central finite differences, in f64 through
//! the interpreter: one small graph per op kind (and per variant: broadcasting,
//! keepdim, axes).

use crate::autodiff_support;

use autodiff_support::{check_gradients, random, random_weights, with_probe_loss};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;

/// Checks the graph `body` (lines of IR text, weights `w*` f64, output "y").
fn case_with(body: &str, extra: BTreeMap<String, Tensor>, lo: f64, hi: f64) {
    let text = format!("graph {{\n{body}\n}}\n");
    let g = with_probe_loss(&text);
    let y = g.outputs[0].1;
    let _ = y;
    let probe_v = g
        .inputs()
        .into_iter()
        .find(|(n, _)| *n == "probe")
        .unwrap()
        .1;
    let shape: Vec<usize> = g
        .ty(probe_v)
        .shape
        .iter()
        .map(|d| d.as_const().unwrap() as usize)
        .collect();
    let mut inputs = extra;
    inputs.insert("probe".into(), Tensor::F64(random(&shape, 99, -1.0, 1.0)));
    for seed in [1u64, 7] {
        let weights = random_weights(&g, seed, lo, hi);
        check_gradients(&g, &inputs, &weights, 1e-6);
    }
}

fn case(body: &str) {
    case_with(body, BTreeMap::new(), -1.0, 1.0)
}

fn positive(body: &str) {
    case_with(body, BTreeMap::new(), 0.5, 2.0)
}

#[test]
fn binary_ops_with_broadcasting() {
    for op in ["add", "sub", "mul", "max", "min"] {
        case(&format!(
            "%0 = weight {{name=\"a\"}} : f64[3,4]\n%1 = weight {{name=\"b\"}} : f64[4]\n%2 = {op} %0, %1 : f64[3,4]\noutput \"y\" = %2"
        ));
        case(&format!(
            "%0 = weight {{name=\"a\"}} : f64[3,1]\n%1 = weight {{name=\"b\"}} : f64[2,3,4]\n%2 = {op} %0, %1 : f64[2,3,4]\noutput \"y\" = %2"
        ));
    }
    positive("%0 = weight {name=\"a\"} : f64[3,4]\n%1 = weight {name=\"b\"} : f64[3,1]\n%2 = div %0, %1 : f64[3,4]\noutput \"y\" = %2");
}

#[test]
fn unary_ops() {
    for op in ["neg", "exp", "tanh"] {
        case(&format!(
            "%0 = weight {{name=\"a\"}} : f64[2,5]\n%1 = {op} %0 : f64[2,5]\noutput \"y\" = %1"
        ));
    }
    for op in ["log", "sqrt", "rsqrt"] {
        positive(&format!(
            "%0 = weight {{name=\"a\"}} : f64[2,5]\n%1 = {op} %0 : f64[2,5]\noutput \"y\" = %1"
        ));
    }
}

#[test]
fn activations() {
    for f in ["relu", "gelu", "gelu_new", "silu", "tanh", "sigmoid"] {
        case(&format!(
            "%0 = weight {{name=\"a\"}} : f64[3,7]\n%1 = act %0 {{fn=\"{f}\"}} : f64[3,7]\noutput \"y\" = %1"
        ));
    }
}

#[test]
fn matmul_with_batch_broadcast() {
    case("%0 = weight {name=\"a\"} : f64[2,3,4]\n%1 = weight {name=\"b\"} : f64[2,4,5]\n%2 = matmul %0, %1 : f64[2,3,5]\noutput \"y\" = %2");
    case("%0 = weight {name=\"a\"} : f64[2,3,4]\n%1 = weight {name=\"b\"} : f64[1,4,5]\n%2 = matmul %0, %1 : f64[2,3,5]\noutput \"y\" = %2");
}

#[test]
fn reductions() {
    for kind in ["sum", "mean", "max", "logsumexp"] {
        case(&format!(
            "%0 = weight {{name=\"a\"}} : f64[2,3,4]\n%1 = reduce %0 {{axes=[2], kind=\"{kind}\"}} : f64[2,3]\noutput \"y\" = %1"
        ));
        case(&format!(
            "%0 = weight {{name=\"a\"}} : f64[2,3,4]\n%1 = reduce %0 {{axes=[0,2], keepdim, kind=\"{kind}\"}} : f64[1,3,1]\noutput \"y\" = %1"
        ));
    }
}

#[test]
fn softmax() {
    case("%0 = weight {name=\"a\"} : f64[2,3,4]\n%1 = softmax %0 {axis=1} : f64[2,3,4]\noutput \"y\" = %1");
}

#[test]
fn shape_ops() {
    case("%0 = weight {name=\"a\"} : f64[2,6]\n%1 = reshape %0 : f64[3,4]\noutput \"y\" = %1");
    case("%0 = weight {name=\"a\"} : f64[2,3,4]\n%1 = transpose %0 {perm=[2,0,1]} : f64[4,2,3]\noutput \"y\" = %1");
    case("%0 = weight {name=\"a\"} : f64[2,3]\n%1 = weight {name=\"b\"} : f64[2,2]\n%2 = concat %0, %1, %0 {axis=1} : f64[2,8]\noutput \"y\" = %2");
    case("%0 = weight {name=\"a\"} : f64[2,7]\n%1 = slice %0 {axis=1, end=6, start=2} : f64[2,4]\noutput \"y\" = %1");
    case("%0 = weight {name=\"a\"} : f64[3,4]\n%1 = index %0 {axis=0, index=1} : f64[4]\noutput \"y\" = %1");
    case("%0 = weight {name=\"a\"} : f64[2,5]\n%1 = pad_to_multiple %0 {axis=1, min_len=0, multiple=4, value=0.0} : f64[2,8]\noutput \"y\" = %1");
    case("%0 = weight {name=\"a\"} : f64[2,5]\n%1 = weight {name=\"r\"} : f64[2,3]\n%2 = truncate %0, %1 {axis=1} : f64[2,3]\noutput \"y\" = %2");
    case("%0 = weight {name=\"a\"} : f64[4]\n%1 = weight {name=\"r\"} : f64[3,4]\n%2 = broadcast %0, %1 : f64[3,4]\noutput \"y\" = %2");
}

#[test]
fn indexing_ops() {
    let idx = |shape: &[usize], vals: Vec<i64>| {
        Tensor::I64(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), vals).unwrap())
    };
    let extra = BTreeMap::from([("i".to_string(), idx(&[2, 3], vec![0, 3, 3, 1, 2, 0]))]);
    case_with(
        "%0 = weight {name=\"a\"} : f64[2,4]\n%1 = input {name=\"i\"} : i64[2,3]\n%2 = gather %0, %1 {axis=1} : f64[2,3]\noutput \"y\" = %2",
        extra.clone(),
        -1.0,
        1.0,
    );
    case_with(
        "%0 = weight {name=\"r\"} : f64[2,4]\n%1 = input {name=\"i\"} : i64[2,3]\n%2 = weight {name=\"s\"} : f64[2,3]\n%3 = scatter_add %0, %1, %2 {axis=1} : f64[2,4]\noutput \"y\" = %3",
        extra,
        -1.0,
        1.0,
    );
    case("%0 = weight {name=\"a\"} : f64[2,3]\n%1 = weight {name=\"b\"} : f64[2,3]\n%2 = weight {name=\"c\"} : f64[3]\n%3 = lt %0, %2 : bool[2,3]\n%4 = select %3, %0, %1 : f64[2,3]\noutput \"y\" = %4");
}

#[test]
fn chains_share_and_accumulate() {
    // One weight used three times: cotangents from every use add up.
    case("%0 = weight {name=\"a\"} : f64[3,4]\n%1 = mul %0, %0 : f64[3,4]\n%2 = tanh %1 : f64[3,4]\n%3 = add %2, %0 : f64[3,4]\n%4 = softmax %3 {axis=1} : f64[3,4]\noutput \"y\" = %4");
}

#[test]
fn fused_lm_loss_in_chunks() {
    // Rows 0 and 3 ignored (-100); chunks of 2 rows over 5 rows.
    let labels = Tensor::I64(
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 5]), vec![-100, 4, 0, -100, 2])
            .unwrap(),
    );
    let extra = BTreeMap::from([("l".to_string(), labels)]);
    case_with(
        "%0 = weight {name=\"h\"} : f64[1,5,3]\n%1 = weight {name=\"w\"} : f64[6,3]\n%2 = input {name=\"l\"} : i64[1,5]\n%3 = lm_loss %0, %1, %2 {chunk=2} : f64[]\noutput \"y\" = %3",
        extra,
        -1.0,
        1.0,
    );
}

#[test]
fn layer_norm_through_its_fused_derivative() {
    // x, weight and bias all carry gradients; rows of 5 over a [2, 3] batch.
    case("%0 = weight {name=\"x\"} : f64[2,3,5]\n%1 = weight {name=\"g\"} : f64[5]\n%2 = weight {name=\"b\"} : f64[5]\n%3 = layer_norm %0, %1, %2 {eps=1e-5} : f64[2,3,5]\noutput \"y\" = %3");
    // A row of one value normalises to 0: only the bias has a gradient.
    case("%0 = weight {name=\"x\"} : f64[4,1]\n%1 = weight {name=\"g\"} : f64[1]\n%2 = weight {name=\"b\"} : f64[1]\n%3 = layer_norm %0, %1, %2 {eps=1e-5} : f64[4,1]\noutput \"y\" = %3");
}

#[test]
fn feed_forward_through_its_fused_derivative() {
    // Every operand carries a gradient: rows of D = 4 over a [2, 3] batch,
    // F = 6, for a kinked and a smooth activation and none.
    for act in ["relu", "gelu", "silu"] {
        case(&format!(
            "%0 = weight {{name=\"x\"}} : f64[2,3,4]\n\
             %1 = weight {{name=\"g\"}} : f64[4]\n\
             %2 = weight {{name=\"b\"}} : f64[4]\n\
             %3 = weight {{name=\"w1\"}} : f64[6,4]\n\
             %4 = weight {{name=\"b1\"}} : f64[6]\n\
             %5 = weight {{name=\"w2\"}} : f64[4,6]\n\
             %6 = weight {{name=\"b2\"}} : f64[4]\n\
             %7 = feed_forward %0, %1, %2, %3, %4, %5, %6 {{activation=\"{act}\", chunk=2, eps=1e-5}} : f64[2,3,4]\n\
             output \"y\" = %7"
        ));
    }
    case("%0 = weight {name=\"x\"} : f64[5,3]\n%1 = weight {name=\"g\"} : f64[3]\n%2 = weight {name=\"b\"} : f64[3]\n%3 = weight {name=\"w1\"} : f64[2,3]\n%4 = weight {name=\"b1\"} : f64[2]\n%5 = weight {name=\"w2\"} : f64[3,2]\n%6 = weight {name=\"b2\"} : f64[3]\n%7 = feed_forward %0, %1, %2, %3, %4, %5, %6 {chunk=1, eps=1e-5} : f64[5,3]\noutput \"y\" = %7");
}

/// `[b, h, rounds, len]` bucket ids with round offsets (round `r` in
/// `[r·nb, (r+1)·nb)`), drawn from `seed`.
fn lsh_buckets(b: usize, h: usize, rounds: usize, len: usize, nb: i64, seed: u64) -> Tensor {
    let mut x = seed;
    let ids = (0..b * h * rounds * len)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (i / len) % rounds;
            r as i64 * nb + ((x >> 33) as i64).rem_euclid(nb)
        })
        .collect();
    Tensor::I64(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[b, h, rounds, len]), ids).unwrap())
}

#[test]
fn lsh_attention_through_its_fused_derivative() {
    // (len, chunk, before, after, rounds, causal, masked): sorted chunks
    // with neighbours, rounds combined, windows wider than the chunk count
    // (duplicated keys), and L <= chunk (full shared-QK attention).
    let cases = [
        (8, 4, 1, 0, 2, true, true),
        (12, 4, 1, 1, 1, false, false),
        (8, 4, 1, 1, 1, true, false),
        (6, 3, 0, 0, 3, false, true),
        (4, 8, 1, 0, 2, true, true),
    ];
    for (len, chunk, before, after, rounds, causal, masked) in cases {
        let flag = if causal { ", causal" } else { "" };
        let mut extra = BTreeMap::from([(
            "bk".to_string(),
            lsh_buckets(2, 2, rounds, len, 3, len as u64 + 10 * rounds as u64),
        )]);
        let (mask_in, mask_op) = if masked {
            let m: Vec<i64> = (0..2 * len).map(|i| i64::from(i % 5 != 3)).collect();
            extra.insert(
                "m".to_string(),
                Tensor::I64(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2, len]), m).unwrap()),
            );
            (
                format!("%3 = input {{name=\"m\"}} : i64[2,{len}]\n"),
                ", %3",
            )
        } else {
            (String::new(), "")
        };
        case_with(
            &format!(
                "%0 = weight {{name=\"qk\"}} : f64[2,{len},6]\n%1 = weight {{name=\"v\"}} : f64[2,{len},6]\n%2 = input {{name=\"bk\"}} : i64[2,2,{rounds},{len}]\n{mask_in}%4 = lsh_attention %0, %1, %2{mask_op} {{after={after}, before={before}{flag}, chunk={chunk}, heads=2}} : f64[2,{len},6]\noutput \"y\" = %4"
            ),
            extra,
            -1.0,
            1.0,
        );
    }
}

#[test]
fn local_attention_through_its_fused_derivative() {
    // (len, chunk, before, after, causal, masked, shared): chunks with
    // neighbours both ways, windows wider than the chunk count (duplicated
    // keys), L <= chunk (full attention), and one value as q, k and v.
    let cases = [
        (8, 2, 1, 0, true, true, false),
        (12, 4, 1, 1, false, false, false),
        (8, 4, 2, 1, true, false, false),
        (4, 8, 1, 0, false, true, false),
        (8, 4, 1, 0, true, false, true),
    ];
    for (len, chunk, before, after, causal, masked, shared) in cases {
        let flag = if causal { ", causal" } else { "" };
        let mut extra = BTreeMap::new();
        let (mask_in, mask_op) = if masked {
            let m: Vec<i64> = (0..2 * len).map(|i| i64::from(i % 5 != 3)).collect();
            extra.insert(
                "m".to_string(),
                Tensor::I64(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2, len]), m).unwrap()),
            );
            (
                format!("%3 = input {{name=\"m\"}} : i64[2,{len}]\n"),
                ", %3",
            )
        } else {
            (String::new(), "")
        };
        let qkv = if shared { "%0, %0, %0" } else { "%0, %1, %2" };
        case_with(
            &format!(
                "%0 = weight {{name=\"q\"}} : f64[2,{len},6]\n%1 = weight {{name=\"k\"}} : f64[2,{len},6]\n%2 = weight {{name=\"v\"}} : f64[2,{len},6]\n{mask_in}%4 = local_attention {qkv}{mask_op} {{after={after}, before={before}{flag}, chunk={chunk}, heads=2, scale=0.4}} : f64[2,{len},6]\noutput \"y\" = %4"
            ),
            extra,
            -1.0,
            1.0,
        );
    }
}
