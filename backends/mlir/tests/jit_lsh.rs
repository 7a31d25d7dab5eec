//! Differential tests of the sort and LSH attention lowerings: reformc's MLIR
//! CPU pipeline against the reference interpreter on the same inputs.

mod common;

use common::{compare_args, random_f32, random_i64};

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
