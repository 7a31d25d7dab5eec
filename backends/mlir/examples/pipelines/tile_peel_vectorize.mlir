  module @reformc_transforms attributes {sym_visibility = "private", transform.with_named_sequence} {
    transform.named_sequence @match_c4(%op: !transform.any_op {transform.readonly}) -> !transform.any_op {
      %0 = transform.match.structured failures(propagate) %op : (!transform.any_op) -> !transform.any_op {
      ^bb0(%s: !transform.any_op):
        %r = transform.match.structured.rank %s : (!transform.any_op) -> !transform.param<i64>
        %c = transform.param.constant 4 : i64 -> !transform.param<i64>
        transform.match.param.cmpi eq %r, %c : !transform.param<i64>
        transform.match.structured.dim %s[2] {reduction} : !transform.any_op
        transform.match.structured.dim %s[0, 1, 3] {parallel} : !transform.any_op
        transform.match.structured.body %s {contraction = ["arith.mulf", "arith.addf"]} : !transform.any_op
        transform.match.structured.yield %s : !transform.any_op
      }
      transform.yield %0 : !transform.any_op
    }
    transform.named_sequence @tile_c4(%op: !transform.any_op {transform.consumed}) -> !transform.any_op {
      %i = transform.structured.interchange %op iterator_interchange = [0, 1, 3, 2] : (!transform.any_op) -> !transform.any_op
      %t, %l0, %l1, %l2, %l3 = transform.structured.tile_using_for %i tile_sizes [1, 6, 16, 1] : (!transform.any_op) -> (!transform.any_op, !transform.any_op, !transform.op<"scf.for">, !transform.any_op, !transform.any_op)
      %main, %rest = transform.loop.peel %l1 : (!transform.op<"scf.for">) -> (!transform.any_op, !transform.any_op)
      transform.yield %main : !transform.any_op
    }
    transform.named_sequence @__transform_main(%root: !transform.any_op {transform.consumed}) {
      %r, %mains = transform.foreach_match in %root @match_c4 -> @tile_c4 : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
      %f = transform.structured.match ops{["func.func"]} in %r : (!transform.any_op) -> !transform.any_op
      transform.apply_patterns to %f {
        transform.apply_patterns.canonicalization
        transform.apply_patterns.linalg.tiling_canonicalization
      } : !transform.any_op
      %g = transform.structured.match ops{["linalg.generic"]} in %mains : (!transform.any_op) -> !transform.any_op
      transform.structured.vectorize %g : !transform.any_op
      %loops = transform.structured.match ops{["scf.for"]} in %mains : (!transform.any_op) -> !transform.any_op
      transform.foreach %loops : !transform.any_op {
      ^bb0(%l: !transform.any_op):
        transform.loop.hoist_loop_invariant_subsets %l : !transform.any_op
        transform.loop.hoist_loop_invariant_subsets %l : !transform.any_op
      }
      transform.apply_patterns to %f {
        transform.apply_patterns.vector.lower_masked_transfers
        transform.apply_patterns.vector.lower_contraction lowering_strategy = "outerproduct"
        transform.apply_patterns.vector.lower_outerproduct
        transform.apply_patterns.vector.lower_transfer max_transfer_rank = 1
        transform.apply_patterns.vector.transfer_permutation_patterns
        transform.apply_patterns.canonicalization
      } : !transform.any_op
      transform.yield
    }
  }
