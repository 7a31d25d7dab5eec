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
    transform.named_sequence @tile_c4(%op: !transform.any_op {transform.consumed}) {
      %p, %f = transform.structured.tile_using_forall %op tile_sizes [1, 256] : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
      %t, %l0, %l1 = transform.structured.tile_using_for %p tile_sizes [1, 8] : (!transform.any_op) -> (!transform.any_op, !transform.any_op, !transform.any_op)
      %i = transform.structured.interchange %t iterator_interchange = [0, 2, 1, 3] : (!transform.any_op) -> !transform.any_op
      transform.yield
    }
    transform.named_sequence @__transform_main(%root: !transform.any_op {transform.consumed}) {
      %r = transform.foreach_match in %root @match_c4 -> @tile_c4 : (!transform.any_op) -> !transform.any_op
      transform.yield
    }
  }
