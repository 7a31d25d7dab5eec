//! The reversible rule: gradients through stacked `reversible_block`s equal
//! finite differences, and the backward pass reads no activation from inside
//! a block (it recomputes them from the blocks' outputs).

use crate::autodiff_support;

use autodiff_support::{check_gradients, random, random_weights, with_probe_loss};
use reformc_ir::OpKind;
use reformc_passes::autodiff::{differentiate, fold_forward_concats, unfold};
use reformc_tensor::Tensor;
use std::collections::{BTreeMap, HashSet};

const STACK: &str = r#"graph {
  %0 = weight {name="x"} : f64[2,3,8]
  %1 = weight {name="wf"} : f64[4,4]
  %2 = weight {name="wg"} : f64[4]
  %3 = reshape %1 : f64[1,4,4]
  %4 = reversible_block %0 : f64[2,3,8] {
    f(%5: f64[2,3,4]) {
      %6 = matmul %5, %3 : f64[2,3,4]
      %7 = tanh %6 : f64[2,3,4]
      yield %7
    }
    g(%8: f64[2,3,4]) {
      %9 = mul %8, %2 : f64[2,3,4]
      %10 = act %9 {fn="gelu"} : f64[2,3,4]
      yield %10
    }
  }
  %11 = reversible_block %4 : f64[2,3,8] {
    f(%12: f64[2,3,4]) {
      %13 = softmax %12 {axis=2} : f64[2,3,4]
      %14 = matmul %13, %3 : f64[2,3,4]
      yield %14
    }
    g(%15: f64[2,3,4]) {
      %16 = exp %15 : f64[2,3,4]
      %17 = mul %16, %2 : f64[2,3,4]
      yield %17
    }
  }
  %18 = reduce %11 {axes=[2], keepdim, kind="logsumexp"} : f64[2,3,1]
  %19 = sub %11, %18 : f64[2,3,8]
  output "y" = %19
}
"#;

fn probe() -> BTreeMap<String, Tensor> {
    BTreeMap::from([(
        "probe".to_string(),
        Tensor::F64(random(&[2, 3, 8], 5, -1.0, 1.0)),
    )])
}

#[test]
fn stacked_blocks_match_finite_differences() {
    let g = with_probe_loss(STACK);
    for seed in [3u64, 11] {
        check_gradients(&g, &probe(), &random_weights(&g, seed, -1.0, 1.0), 1e-6);
    }
}

#[test]
fn backward_reads_no_activation_inside_a_block() {
    let g = with_probe_loss(STACK);
    let (flat, couplings) = unfold(&g).unwrap();
    let outputs: HashSet<_> = couplings.iter().map(|c| c.y).collect();
    let inside: HashSet<_> = couplings
        .iter()
        .flat_map(|c| c.values.iter().copied())
        .filter(|v| !outputs.contains(v))
        .collect();
    let d = differentiate(&g, "loss").unwrap();
    let forward = flat.len();
    let mut reads = Vec::new();
    for (i, node) in d.nodes.iter().enumerate().skip(forward) {
        for x in &node.inputs {
            if inside.contains(x) && d.ty(*x).dtype.is_float() {
                reads.push(format!("%{i} reads %{}", x.0));
            }
        }
    }
    assert!(
        reads.is_empty(),
        "the backward pass reads block activations: {reads:?}"
    );
    // Only the last block's output (and the loss's own values) survive.
    let used_outputs: Vec<_> = outputs
        .iter()
        .filter(|y| d.nodes.iter().skip(forward).any(|n| n.inputs.contains(y)))
        .collect();
    assert_eq!(
        used_outputs.len(),
        1,
        "only the top block's output may be read"
    );
}

#[test]
fn the_forward_reads_block_halves_directly_with_the_same_bits() {
    // Block 1's output is concatenated only to be sliced apart by block 2:
    // after the fold, block 2 reads the halves and the concat goes; the top
    // block's output, which the backward reads, stays. Same outputs, bit for
    // bit (the interpreter on both graphs).
    let g = with_probe_loss(STACK);
    let d = differentiate(&g, "loss").unwrap();
    let mut folded = d.clone();
    let loss = folded.outputs[0].1;
    let n = fold_forward_concats(&mut folded, loss).unwrap();
    let count = |g: &reformc_ir::Graph, k: OpKind| {
        g.walk().iter().filter(|v| g.node(**v).op.kind == k).count()
    };
    assert_eq!(n, 2, "block 2 slices both halves of block 1's output");
    assert_eq!(
        count(&folded, OpKind::Concat),
        count(&d, OpKind::Concat) - 1
    );
    assert_eq!(count(&folded, OpKind::Slice), count(&d, OpKind::Slice) - 2);
    reformc_ir::verify(&folded).unwrap();
    let weights = random_weights(&g, 7, -1.0, 1.0);
    let run = |g: &reformc_ir::Graph| reformc_interp::run(g, &probe(), &weights).unwrap();
    assert_eq!(run(&folded), run(&d));
    // Nothing left to fold.
    let loss = folded.outputs[0].1;
    assert_eq!(fold_forward_concats(&mut folded, loss).unwrap(), 0);
}
