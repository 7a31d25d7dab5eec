//! Differential tests: reformc's MLIR CPU pipeline (melior pass manager +
//! ExecutionEngine) against the reference interpreter on the same inputs.

use crate::common;

use common::compare;

#[test]
fn elementwise_broadcast_and_activations_match_the_interpreter() {
    compare(
        "graph {
  %0 = weight {name=\"b\"} : f32[8]
  %1 = input {name=\"x\"} : f32[B,L,8]
  %2 = input {name=\"y\"} : f32[L,1]
  %3 = add %1, %0 : f32[B,L,8]
  %4 = mul %3, %2 : f32[B,L,8]
  %5 = act %4 {fn=\"gelu\"} : f32[B,L,8]
  %6 = act %5 {fn=\"gelu_new\"} : f32[B,L,8]
  %7 = exp %6 : f32[B,L,8]
  %8 = sub %7, %1 : f32[B,L,8]
  %9 = max %8, %2 : f32[B,L,8]
  %10 = tanh %9 : f32[B,L,8]
  %11 = lt %10, %0 : bool[B,L,8]
  %12 = neg %10 : f32[B,L,8]
  %13 = select %11, %12, %10 : f32[B,L,8]
  output \"z\" = %13
}
",
        &[&[8], &[2, 5, 8], &[5, 1]],
        1e-5,
    );
}

#[test]
fn matmul_softmax_reductions_and_shapes_match_the_interpreter() {
    compare(
        "graph {
  %0 = weight {name=\"w\"} : f32[1,8,6]
  %1 = input {name=\"x\"} : f32[B,L,8]
  %2 = matmul %1, %0 : f32[B,L,6]
  %3 = softmax %2 {axis=2} : f32[B,L,6]
  %4 = reduce %2 {axes=[2], keepdim, kind=\"mean\"} : f32[B,L,1]
  %5 = reduce %2 {axes=[1], kind=\"logsumexp\"} : f32[B,6]
  %6 = reduce %3 {axes=[0,1], kind=\"max\"} : f32[6]
  %13 = reshape %2 : f32[B,L,2,3]
  %14 = transpose %13 {perm=[0,2,1,3]} : f32[B,2,L,3]
  %15 = transpose %14 {perm=[0,2,1,3]} : f32[B,L,2,3]
  %16 = reshape %15 : f32[B,L,6]
  %7 = transpose %2 {perm=[0,2,1]} : f32[B,6,L]
  %8 = transpose %7 {perm=[0,2,1]} : f32[B,L,6]
  %9 = index %3 {axis=0, index=1} : f32[L,6]
  %10 = concat %8, %3 {axis=2} : f32[B,L,12]
  %11 = slice %10 {axis=2, end=9, start=2} : f32[B,L,7]
  %12 = sub %2, %4 : f32[B,L,6]
  output \"s\" = %11
  output \"m\" = %12
  output \"l\" = %5
  output \"x\" = %6
  output \"i\" = %9
  output \"r\" = %16
}
",
        &[&[1, 8, 6], &[3, 7, 8]],
        1e-5,
    );
}

/// Reshapes whose axes do not pair up in groups, with several dynamic axes
/// (lowered as a gather, since the flattened `expand_shape` crashes MLIR 22's
/// `expand-strided-metadata`), and static ones (flattened).
#[test]
fn ungrouped_reshapes_match_the_interpreter() {
    compare(
        "graph {
  %0 = input {name=\"x\"} : f32[B,2,L,3]
  %1 = reshape %0 : f32[B,6,L]
  %2 = reshape %1 : f32[B,L,6]
  %3 = reshape %2 : f32[B,3,L,2]
  %4 = input {name=\"y\"} : f32[2,6]
  %5 = reshape %4 : f32[3,4]
  %6 = reshape %4 : f32[12]
  output \"a\" = %1
  output \"b\" = %3
  output \"c\" = %5
  output \"d\" = %6
}
",
        &[&[2, 2, 5, 3], &[2, 6]],
        0.0,
    );
}
