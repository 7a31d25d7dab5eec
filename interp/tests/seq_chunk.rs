//! `seq_chunk` evaluates to the same tensor as its body applied to the whole operand.

use ndarray::{ArrayD, IxDyn};
use reformc_interp::{run, Tensor};
use std::collections::BTreeMap;

fn graph(size: usize) -> String {
    format!(
        "graph {{
  %0 = input {{name=\"x\"}} : f32[B,L,4]
  %1 = weight {{name=\"w\"}} : f32[6,4]
  %2 = weight {{name=\"b\"}} : f32[6]
  %3 = seq_chunk %0 {{axis=1, size={size}}} : f32[B,L,6] {{
    body(%4: f32[B,C,4]) {{
      %5 = linear %4, %1, %2 {{activation=\"gelu\"}} : f32[B,C,6]
      %6 = exp %5 : f32[B,C,6]
      yield %6
    }}
  }}
  %7 = linear %0, %1, %2 {{activation=\"gelu\"}} : f32[B,L,6]
  %8 = exp %7 : f32[B,L,6]
  output \"chunked\" = %3
  output \"plain\" = %8
}}"
    )
}

fn tensor(shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap())
}

#[test]
fn chunked_equals_plain() {
    let mut w = BTreeMap::new();
    w.insert("w".to_string(), tensor(&[6, 4], 1));
    w.insert("b".to_string(), tensor(&[6], 2));
    for len in [0usize, 1, 5, 8] {
        for size in [1usize, 2, 3, 5, 8, 100] {
            let g = reformc_ir::parse(&graph(size)).unwrap();
            reformc_ir::verify(&g).unwrap();
            let mut inputs = BTreeMap::new();
            inputs.insert("x".to_string(), tensor(&[2, len, 4], 3));
            let out = run(&g, &inputs, &w).unwrap_or_else(|e| panic!("len {len} size {size}: {e}"));
            assert_eq!(out["chunked"].shape(), &[2, len, 6]);
            assert_eq!(out["chunked"], out["plain"], "len {len} size {size}");
        }
    }
}
