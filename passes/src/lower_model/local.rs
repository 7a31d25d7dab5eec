//! Decomposition of `local_attention` into tensor ops: written on branch
//! `lshdec`; until it is merged, lowering a `local_attention` is an error.

use reformc_ir::{Graph, Node, ValueId};

/// Lowers `local_attention(q, k, v[, mask])`: not available on this branch.
pub(crate) fn lower(_g: &mut Graph, _node: &Node, _inputs: &[ValueId]) -> Result<ValueId, String> {
    Err("local_attention: no tensor-op lowering yet".into())
}
