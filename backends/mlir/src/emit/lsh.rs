//! LSH hashing and LSH attention: sort by bucket, chunked attention, unsort, round combination.

use super::Emitter;
use crate::MlirError;
use reformc_ir::ValueId;

impl Emitter<'_> {
    /// Bucket ids: see `lsh_hash.rs`.
    pub(super) fn lsh_hash(&mut self, v: ValueId) -> Result<String, MlirError> {
        self.lsh_hash_tiled(v)
    }

    /// `lsh_attention`: see `lsh_attention.rs`.
    pub(super) fn lsh_attention(&mut self, v: ValueId) -> Result<String, MlirError> {
        self.lower_lsh_attention(v)
    }
}
