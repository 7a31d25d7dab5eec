//! Differential tests of the sort and LSH attention lowerings: reformc's MLIR
//! CPU pipeline against the reference interpreter on the same inputs.

mod common;

use common::{compare_args, random_f32, random_i64};
use reformc_interp::Tensor;

/// A graph sorting an `i64[B,N]` input along axis 1.
fn argsort_graph(dtype: &str, axis: usize) -> String {
    format!(
        "graph {{
  %0 = input {{name=\"x\"}} : {dtype}[B,N]
  %1 = argsort %0 {{axis={axis}}} : i64[B,N]
  output \"p\" = %1
}}
"
    )
}

#[test]
fn argsort_with_ties_matches_the_interpreter() {
    for (b, n, hi) in [(2, 1, 3), (2, 5, 3), (1, 8, 4), (2, 13, 5), (3, 64, 1000), (2, 100, 7)] {
        let x = random_i64(&[b, n], hi, (b * 1000 + n) as u64);
        compare_args(&argsort_graph("i64", 1), vec![x], 0.0);
    }
}

#[test]
fn argsort_of_floats_and_inner_axes_matches_the_interpreter() {
    let g = "graph {
  %0 = input {name=\"x\"} : f32[B,N,3]
  %1 = argsort %0 {axis=1} : i64[B,N,3]
  %2 = argsort %0 {axis=0} : i64[B,N,3]
  output \"p\" = %1
  output \"q\" = %2
}
";
    for (b, n) in [(2, 7), (3, 16), (1, 1)] {
        // Coarse values so that ties occur, plus signed zeros.
        let Tensor::F32(mut x) = random_f32(&[b, n, 3], n as u64) else {
            unreachable!()
        };
        x.mapv_inplace(|v| (v * 3.0).round() / 2.0);
        x[[0, 0, 0]] = -0.0;
        compare_args(g, vec![Tensor::F32(x)], 0.0);
    }
}

/// A graph with one `lsh_attention` of `heads` heads of width 4 over
/// `rounds` rounds, with a mask operand when `mask`.
fn lsh_graph(heads: usize, rounds: usize, chunk: usize, before: usize, after: usize, causal: bool, mask: bool) -> String {
    let w = heads * 4;
    let (m_in, m_arg) = if mask {
        ("  %3 = input {name=\"mask\"} : i64[B,L]\n", ", %3")
    } else {
        ("", "")
    };
    let causal = if causal { ", causal" } else { "" };
    format!(
        "graph {{
  %0 = input {{name=\"qk\"}} : f32[B,L,{w}]
  %1 = input {{name=\"v\"}} : f32[B,L,{w}]
  %2 = input {{name=\"buckets\"}} : i64[B,{heads},{rounds},L]
{m_in}  %4 = lsh_attention %0, %1, %2{m_arg} {{after={after}, before={before}{causal}, chunk={chunk}, heads={heads}}} : f32[B,L,{w}]
  output \"y\" = %4
}}
"
    )
}

/// Random arguments of [`lsh_graph`]: buckets in `0..nb` plus round offsets
/// `r nb`, a mask keeping about three positions in four.
fn lsh_args(b: usize, l: usize, heads: usize, rounds: usize, nb: i64, mask: bool, seed: u64) -> Vec<Tensor> {
    let w = heads * 4;
    let Tensor::I64(mut bk) = random_i64(&[b, heads, rounds, l], nb, seed + 2) else {
        unreachable!()
    };
    for ((_, _, r, _), x) in bk.indexed_iter_mut().map(|(i, x)| ((i[0], i[1], i[2], i[3]), x)) {
        *x += r as i64 * nb;
    }
    let mut args = vec![
        random_f32(&[b, l, w], seed),
        random_f32(&[b, l, w], seed + 1),
        Tensor::I64(bk),
    ];
    if mask {
        let Tensor::I64(m) = random_i64(&[b, l], 4, seed + 3) else {
            unreachable!()
        };
        args.push(Tensor::I64(m.mapv(|x| i64::from(x != 0))));
    }
    args
}

#[test]
fn lsh_attention_matches_the_interpreter() {
    // (batch, length, heads, rounds, chunk, before, after, causal, mask)
    let cases = [
        (2, 12, 2, 1, 4, 1, 0, false, false),
        (2, 12, 2, 2, 4, 1, 1, true, true),
        (1, 20, 1, 4, 4, 1, 0, true, false),
        (2, 15, 2, 1, 5, 0, 1, false, true),
        (1, 6, 2, 2, 4, 1, 0, true, true),
        (2, 9, 1, 2, 3, 2, 1, false, false),
        (1, 21, 2, 4, 7, 0, 0, true, true),
        (2, 3, 2, 2, 4, 1, 0, true, true),
        (1, 4, 1, 1, 4, 1, 1, false, true),
    ];
    for (i, &(b, l, h, r, chunk, before, after, causal, mask)) in cases.iter().enumerate() {
        let g = lsh_graph(h, r, chunk, before, after, causal, mask);
        let args = lsh_args(b, l, h, r, 4, mask, 10 * i as u64);
        compare_args(&g, args, 1e-5);
    }
}
