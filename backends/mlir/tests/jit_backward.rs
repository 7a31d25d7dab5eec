//! The backward-pass ops (`broadcast`, `scatter_add`, `act_grad`) through
//! the MLIR CPU pipeline against the reference interpreter.

use crate::common;

use common::{compare_args, random_f32, random_i64};
use reformc_interp::Tensor;
use reformc_ir::Activation;

#[test]
fn broadcast_matches_the_interpreter() {
    let text = "graph {
  %0 = input {name=\"x\"} : f32[1,L,1]
  %1 = input {name=\"r\"} : f32[B,L,4]
  %2 = input {name=\"i\"} : i64[4]
  %3 = broadcast %0, %1 : f32[B,L,4]
  %4 = broadcast %2, %1 : i64[B,L,4]
  %5 = broadcast %1, %1 : f32[B,L,4]
  output \"a\" = %3
  output \"b\" = %4
  output \"c\" = %5
}";
    for (b, l) in [(1, 1), (2, 3), (3, 17)] {
        let args = vec![
            random_f32(&[1, l, 1], 1),
            random_f32(&[b, l, 4], 2),
            random_i64(&[4], 100, 3),
        ];
        compare_args(text, args, 0.0);
    }
}

/// Values spread over [-5, 5), where every activation bends.
fn wide(shape: &[usize], seed: u64) -> Tensor {
    let t = random_f32(shape, seed).to_f64().mapv(|x| (x * 5.0) as f32);
    Tensor::F32(t)
}

#[test]
fn act_grad_matches_the_interpreter_for_every_activation() {
    for act in Activation::ALL.into_iter().filter_map(|a| a.name()) {
        let text = format!(
            "graph {{\n  %0 = input {{name=\"x\"}} : f32[B,N]\n  %1 = input {{name=\"dy\"}} : f32[B,N]\n  \
             %2 = act_grad %0, %1 {{fn=\"{act}\"}} : f32[B,N]\n  output \"y\" = %2\n}}"
        );
        // f32 arithmetic here, f64 rounded once in the interpreter.
        compare_args(
            &text,
            vec![wide(&[3, 50], 4), random_f32(&[3, 50], 5)],
            1e-5,
        );
        // Far out, where x^2 overflows f32: saturated derivatives, no NaN.
        let far = vec![1e20f32, -1e20, 3e12, -3e12, 30.0, -30.0];
        let x = Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 6]), far).unwrap());
        compare_args(&text, vec![x, random_f32(&[1, 6], 6)], 1e-5);
    }
}

const EMBEDDING_GRAD: &str = "graph {
  %0 = input {name=\"table\"} : f32[V,D]
  %1 = input {name=\"ids\"} : i64[N,1]
  %2 = input {name=\"dy\"} : f32[N,D]
  %3 = broadcast %1, %2 : i64[N,D]
  %4 = scatter_add %0, %3, %2 {axis=0} : f32[V,D]
  output \"y\" = %4
}";

const SCATTER_INNER: &str = "graph {
  %0 = input {name=\"r\"} : f32[A,M,C]
  %1 = input {name=\"i\"} : i32[A,K,C]
  %2 = input {name=\"s\"} : f32[A,K,C]
  %3 = scatter_add %0, %1, %2 {axis=1} : f32[A,M,C]
  output \"y\" = %3
}";

/// Row indices (rank below the data's): whole rows move, both ways.
const ROWS: &str = "graph {
  %0 = input {name=\"r\"} : f32[A,M,R,C]
  %1 = input {name=\"i\"} : i64[A,K]
  %2 = input {name=\"s\"} : f32[A,K,R,C]
  %3 = scatter_add %0, %1, %2 {axis=1} : f32[A,M,R,C]
  %4 = gather %0, %1 {axis=1} : f32[A,K,R,C]
  output \"y\" = %3
  output \"g\" = %4
}";

#[test]
fn row_indices_gather_and_scatter_whole_rows_as_the_interpreter() {
    for (a, m, k, r, c) in [(1, 1, 1, 1, 1), (2, 3, 5, 2, 4)] {
        let args = vec![
            random_f32(&[a, m, r, c], 12),
            random_i64(&[a, k], m as i64, 13),
            random_f32(&[a, k, r, c], 14),
        ];
        compare_args(ROWS, args, 0.0);
    }
}

#[test]
fn scatter_add_matches_the_interpreter_bit_for_bit() {
    for (v, d, n) in [(1, 1, 1), (5, 3, 12), (40, 8, 200)] {
        let args = vec![
            random_f32(&[v, d], 6),
            random_i64(&[n, 1], v as i64, 7),
            random_f32(&[n, d], 8),
        ];
        // The same additions in the same order.
        compare_args(EMBEDDING_GRAD, args, 0.0);
    }
    for (a, m, k, c) in [(1, 1, 1, 1), (2, 3, 5, 4), (3, 7, 2, 1)] {
        let idx = random_i64(&[a, k, c], m as i64, 10)
            .to_i64()
            .mapv(|x| x as i32);
        let args = vec![
            random_f32(&[a, m, c], 9),
            Tensor::I32(idx),
            random_f32(&[a, k, c], 11),
        ];
        compare_args(SCATTER_INNER, args, 0.0);
    }
}

#[test]
fn scatter_add_text_is_upstream_linalg_that_mlir_opt_verifies() {
    let g = reformc_ir::parse(EMBEDDING_GRAD).unwrap();
    let opts = reformc_backend_mlir::EmitOptions::default();
    let text = reformc_backend_mlir::emit_module(&g, &opts).unwrap();
    assert!(text.contains("\"reduction\""), "{text}");
    reformc_backend_mlir::verify_module(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
}
