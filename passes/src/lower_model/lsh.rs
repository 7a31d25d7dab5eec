//! Decomposition of `lsh_attention` into tensor ops: written on branch
//! `lshdec`; until it is merged, lowering an `lsh_attention` is an error.

use reformc_ir::{Graph, Node, ValueId};

/// Lowers `lsh_attention(qk, v, buckets[, mask])`: not available on this branch.
pub(crate) fn lower(_g: &mut Graph, _node: &Node, _inputs: &[ValueId]) -> Result<ValueId, String> {
    Err("lsh_attention: no tensor-op lowering yet".into())
}
