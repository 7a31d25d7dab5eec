//! Size limits of a model description (docs/model-schema.md, "Limits").
//!
//! Each field is already at most [`crate::error::MAX_SIZE`]; these checks
//! bound the fields that multiply into buffer sizes, loop counts and
//! parameter counts, so that an absurd config is refused at load, naming the
//! field, instead of failing later out of memory or in a kernel.
//!
//! ```
//! use std::path::Path;
//! use reformc_frontend::config::parse_model_config;
//! let err = parse_model_config(r#"{"model_type": "reformer", "num_hashes": 1000000000}"#, Path::new("c.json")).unwrap_err();
//! assert!(err.to_string().starts_with("c.json: field `num_hashes`: must be at most 64"));
//! ```

use crate::config::ConfigFormat;
use crate::error::FrontendError;
use crate::spec::{Architecture, AttentionKind, BucketSpec, ModelSpec, PositionSpec};
use std::path::Path;

/// Most hash rounds `r` (HF `num_hashes`; models use 1 to 8).
pub const MAX_HASHES: u64 = 64;
/// Most neighbouring chunks attended before or after (LSH and local).
pub const MAX_NEIGHBOUR_CHUNKS: u64 = 64;
/// Most layers.
pub const MAX_LAYERS: u64 = 4096;
/// Longest sequence a model may declare (`max_position_embeddings`, and
/// the axial grid `n0 * n1`), and the longest chunk.
pub const MAX_POSITIONS: u64 = 1 << 24;
/// Most elements of one weight tensor or LSH rotation tensor (2^34: 64 GiB of f32).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 34;
/// Most parameters of a whole model (2^36: 256 GiB of f32).
pub const MAX_PARAMETERS: u64 = 1 << 36;

/// The fields the limits name, spelled per format.
#[derive(Clone, Copy)]
enum Field {
    Hashes,
    LshChunk,
    LshBefore,
    LshAfter,
    LocalChunk,
    LocalBefore,
    LocalAfter,
    Layers,
    MaxPositions,
    AxialShape,
    Buckets,
    Vocab,
    Heads,
    FeedForward,
}

fn name(f: Field, format: ConfigFormat) -> &'static str {
    let hf = format == ConfigFormat::HuggingFace;
    let pick = |h, s| if hf { h } else { s };
    match f {
        Field::Hashes => pick("num_hashes", "lsh.n_hashes"),
        Field::LshChunk => pick("lsh_attn_chunk_length", "lsh.chunk"),
        Field::LshBefore => pick("lsh_num_chunks_before", "lsh.before"),
        Field::LshAfter => pick("lsh_num_chunks_after", "lsh.after"),
        Field::LocalChunk => pick("local_attn_chunk_length", "local.chunk"),
        Field::LocalBefore => pick("local_num_chunks_before", "local.before"),
        Field::LocalAfter => pick("local_num_chunks_after", "local.after"),
        Field::Layers => pick("attn_layers", "layers"),
        Field::MaxPositions => "max_position_embeddings",
        Field::AxialShape => pick("axial_pos_shape", "position.shape"),
        Field::Buckets => pick("num_buckets", "lsh.buckets"),
        Field::Vocab => "vocab_size",
        Field::Heads => pick("num_attention_heads", "num_heads"),
        Field::FeedForward => "feed_forward_size",
    }
}

/// Checks `spec` against the limits above; the error names the field as
/// `format` spells it.
pub fn check_limits(
    spec: &ModelSpec,
    path: &Path,
    format: ConfigFormat,
) -> Result<(), FrontendError> {
    let err = |f: Field, m: String| FrontendError::field(path, name(f, format), m);
    let at_most = |f: Field, v: u64, max: u64| {
        if v > max {
            Err(err(f, format!("must be at most {max}, found {v}")))
        } else {
            Ok(())
        }
    };
    at_most(Field::Hashes, spec.lsh.n_hashes, MAX_HASHES)?;
    at_most(Field::LshBefore, spec.lsh.before, MAX_NEIGHBOUR_CHUNKS)?;
    at_most(Field::LshAfter, spec.lsh.after, MAX_NEIGHBOUR_CHUNKS)?;
    at_most(Field::LocalBefore, spec.local.before, MAX_NEIGHBOUR_CHUNKS)?;
    at_most(Field::LocalAfter, spec.local.after, MAX_NEIGHBOUR_CHUNKS)?;
    at_most(Field::LshChunk, spec.lsh.chunk, MAX_POSITIONS)?;
    at_most(Field::LocalChunk, spec.local.chunk, MAX_POSITIONS)?;
    at_most(Field::Layers, spec.layers.len() as u64, MAX_LAYERS)?;
    at_most(
        Field::MaxPositions,
        spec.max_position_embeddings,
        MAX_POSITIONS,
    )?;
    if let PositionSpec::Axial { shape, .. } = &spec.position {
        let grid = shape[0].saturating_mul(shape[1]);
        if grid > MAX_POSITIONS {
            return Err(err(
                Field::AxialShape,
                format!("the grid holds {grid} positions, more than the limit {MAX_POSITIONS}"),
            ));
        }
    }
    check_rotations(spec, &err)?;
    check_parameters(spec, &err)
}

/// The per-layer rotation tensor `[H, d, r, S/2]` must be allocatable.
fn check_rotations(
    spec: &ModelSpec,
    err: &impl Fn(Field, String) -> FrontendError,
) -> Result<(), FrontendError> {
    let BucketSpec::Factors(f) = &spec.lsh.buckets else {
        return Ok(());
    };
    if !spec.layers.contains(&AttentionKind::Lsh) {
        return Ok(());
    }
    let half = f.iter().try_fold(0u64, |a, &x| a.checked_add(x / 2));
    let n = half.and_then(|h| product(&[spec.num_heads, spec.head_dim, spec.lsh.n_hashes, h]));
    match n {
        Some(n) if n <= MAX_TENSOR_ELEMENTS => Ok(()),
        _ => Err(err(
            Field::Buckets,
            format!(
                "the LSH rotations (heads x head size x rounds x buckets/2) would exceed {MAX_TENSOR_ELEMENTS} elements"
            ),
        )),
    }
}

fn product(xs: &[u64]) -> Option<u64> {
    xs.iter().try_fold(1u64, |a, &x| a.checked_mul(x))
}

/// The largest weight tensors, with the field that sizes them: each must
/// stay under [`MAX_TENSOR_ELEMENTS`] and their sum over the layers (the
/// parameter count, within a small factor) under [`MAX_PARAMETERS`].
fn check_parameters(
    spec: &ModelSpec,
    err: &impl Fn(Field, String) -> FrontendError,
) -> Result<(), FrontendError> {
    let (v, d, h, hd, f) = (
        spec.vocab_size,
        spec.hidden_size,
        spec.num_heads,
        spec.head_dim,
        spec.feed_forward_size,
    );
    let width = match spec.architecture {
        Architecture::Reversible => d.saturating_mul(2),
        Architecture::Residual => d,
    };
    let positions = match spec.position {
        PositionSpec::Learned => spec.max_position_embeddings,
        PositionSpec::Axial { .. } => 0,
    };
    let attention = product(&[h, hd, d, 4]);
    let feed_forward = product(&[f, d, 2]);
    let tensors = [
        (
            Field::Vocab,
            "vocab_size x hidden_size",
            product(&[v, width]),
        ),
        (
            Field::MaxPositions,
            "max_position_embeddings x hidden_size",
            product(&[positions, d]),
        ),
        (Field::Heads, "heads x head size x hidden_size", attention),
        (
            Field::FeedForward,
            "feed_forward_size x hidden_size",
            feed_forward,
        ),
    ];
    for (field, what, n) in &tensors {
        if n.is_none_or(|n| n > MAX_TENSOR_ELEMENTS) {
            return Err(err(
                *field,
                format!(
                    "{what} exceeds the limit of {MAX_TENSOR_ELEMENTS} elements per weight tensor"
                ),
            ));
        }
    }
    let per_layer = attention
        .zip(feed_forward)
        .and_then(|(a, b)| a.checked_add(b));
    let total = per_layer
        .and_then(|x| x.checked_mul(spec.layers.len() as u64))
        .and_then(|x| tensors[..2].iter().try_fold(x, |a, t| a.checked_add(t.2?)));
    match total {
        Some(t) if t <= MAX_PARAMETERS => Ok(()),
        _ => Err(err(
            Field::Layers,
            format!("the model would have more than {MAX_PARAMETERS} parameters (the limit)"),
        )),
    }
}
