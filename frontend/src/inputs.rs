//! Checks of a model's inputs shared by every front door (CLI, Python).

use crate::spec::{ModelSpec, PositionSpec};

/// The longest padded input the model's position embeddings cover:
/// `max_position_embeddings`, or the axial grid when that is smaller.
pub fn max_len(spec: &ModelSpec) -> u64 {
    match &spec.position {
        PositionSpec::Axial { shape, .. } => spec.max_position_embeddings.min(shape[0] * shape[1]),
        _ => spec.max_position_embeddings,
    }
}

/// The shapes of recorded LSH buckets for `batch` sequences padded to
/// `padded`: HF's `[n_lsh_layers, B, H, r·P]` (what `_hash_vectors` returns,
/// what users pass) and the IR's `[n_lsh_layers, B, H, r, P]`, the same
/// elements in the same order.
pub fn lsh_bucket_shapes(
    spec: &ModelSpec,
    batch: usize,
    padded: usize,
) -> ([usize; 4], [usize; 5]) {
    let n = spec.num_lsh_layers();
    let (h, r) = (spec.num_heads as usize, spec.lsh.n_hashes as usize);
    ([n, batch, h, r * padded], [n, batch, h, r, padded])
}

/// The message for the first token id outside `[0, vocab)` in `ids`, given
/// in row-major order for a `[B, len]` array, or `None` when all are in range.
/// Callers prefix it with the file or argument the ids came from.
///
/// ```
/// use reformc_frontend::inputs::token_id_error;
/// assert_eq!(token_id_error([1, 2, 48, 0].into_iter(), 2, 48).unwrap(),
///     "token id 48 at [1, 0] is out of range: the vocabulary has 48 entries (expected 0 <= id < 48)");
/// assert!(token_id_error([0, 47].into_iter(), 2, 48).is_none());
/// ```
pub fn token_id_error(ids: impl Iterator<Item = i64>, len: usize, vocab: u64) -> Option<String> {
    let (i, id) = ids
        .enumerate()
        .find(|(_, v)| *v < 0 || *v as u64 >= vocab)?;
    let len = len.max(1);
    Some(format!(
        "token id {id} at [{}, {}] is out of range: the vocabulary has {vocab} entries (expected 0 <= id < {vocab})",
        i / len,
        i % len
    ))
}
