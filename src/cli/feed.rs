//! Reading and checking everything a model run needs, shared by `run` and
//! `grad`: the model and its weights, token ids, the attention mask, LSH
//! rotations or buckets, the lowered graph and the named inputs.

use super::error::{CliError, CliResult};
use super::{model, npy};
use ndarray::{ArrayD, IxDyn};
use reformc_frontend::inputs::{lsh_bucket_shapes, token_id_error};
use reformc_frontend::lower::{LowerOptions, Lowered, LshSource};
use reformc_frontend::spec::ModelSpec;
use reformc_ir::DType;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::path::Path;

/// The files and choices of a run, by flag.
pub struct FeedArgs<'a> {
    /// The model description.
    pub config: &'a Path,
    /// `--weights`.
    pub weights: &'a Path,
    /// `--input`: token ids [B, L].
    pub input: &'a Path,
    /// `--attention-mask`.
    pub attention_mask: Option<&'a Path>,
    /// `--lsh-rotations`.
    pub lsh_rotations: Option<&'a Path>,
    /// `--lsh-buckets`.
    pub lsh_buckets: Option<&'a Path>,
    /// `--seed` of the counter-based generator.
    pub seed: i64,
    /// `--precision`: `f32` or `f64`.
    pub precision: &'a str,
    /// `--lm-head-bias`.
    pub lm_head_bias: bool,
    /// `--allow-nonfinite-weights`.
    pub allow_nonfinite_weights: bool,
}

/// A model ready to run: lowered (no pass run yet), its weights and its named inputs.
pub struct Feed {
    /// The model and its weight file.
    pub model: model::Model,
    /// The lowered graph.
    pub lowered: Lowered,
    /// Graph inputs by name (`input_ids`, `attention_mask`, `seed`, and the hashing input).
    pub inputs: BTreeMap<String, Tensor>,
    /// Weights by name.
    pub weights: BTreeMap<String, Tensor>,
    /// `[B, L]` of the token ids.
    pub shape: [usize; 2],
}

/// The files a run reads, by flag (the config, `--weights`, `--input` and
/// each optional file given), for the guard that no output overwrites one.
pub fn input_files<'a>(
    a: (&'a Path, &'a Path, &'a Path),
    optional: &[(&'static str, &'a Option<std::path::PathBuf>)],
) -> super::outputs::Inputs<'a> {
    let mut v: super::outputs::Inputs<'a> =
        vec![("the config", a.0), ("--weights", a.1), ("--input", a.2)];
    v.extend(
        optional
            .iter()
            .filter_map(|(f, p)| Some((*f, p.as_deref()?))),
    );
    v
}

/// Reads and checks every input of a run; bad input is exit 2 naming the file.
pub fn prepare(a: &FeedArgs<'_>) -> CliResult<Feed> {
    let m = model::load(a.config, Some(a.weights), a.lm_head_bias)?;
    let spec = &m.spec;
    let ids = read_ids(a.input, spec)?;
    let (batch, len) = (ids.shape()[0], ids.shape()[1]);
    let padded =
        spec.check_length(len as u64)
            .map_err(|e| CliError::input(format!("{}: {e}", a.input.display())))? as usize;
    let mask = match a.attention_mask {
        Some(p) => read_mask(p, &[batch, len])?,
        None => ArrayD::from_elem(IxDyn(&[batch, len]), 1),
    };
    let source = match (a.lsh_rotations, a.lsh_buckets) {
        (_, Some(_)) => LshSource::Buckets,
        (Some(_), None) => LshSource::Rotations,
        (None, None) => LshSource::Seeded,
    };
    let dtype = if a.precision == "f64" {
        DType::F64
    } else {
        DType::F32
    };
    let seq_len = Some(len as u64);
    let lowered = m.lower(&LowerOptions {
        dtype,
        lsh_source: source,
        seq_len,
    })?;
    // HF adds a padding bucket when the mask (given, or made by padding to the chunk multiple) pads.
    let pads = padded > len || mask.iter().any(|&m| m == 0);
    let n_buckets = lowered.bucket_factors.iter().product::<u64>() + u64::from(pads);
    let weights = m.weight_tensors(&lowered)?;
    model::check_finite(&weights, a.weights, a.allow_nonfinite_weights)?;
    let mut inputs = BTreeMap::new();
    let shape = [batch, len];
    inputs.insert("input_ids".to_string(), Tensor::I64(ids));
    inputs.insert("attention_mask".to_string(), Tensor::I64(mask));
    inputs.insert(
        "seed".to_string(),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[]), a.seed)),
    );
    let half_width = lowered.bucket_factors.iter().sum::<u64>() as usize / 2;
    if let Some(p) = a.lsh_rotations {
        let shape = [
            spec.num_lsh_layers(),
            spec.num_heads as usize,
            spec.head_dim as usize,
            spec.lsh.n_hashes as usize,
            half_width,
        ];
        let rotations = npy::read_f32(p, &shape, "LSH rotations [n_lsh_layers, H, d, r, S/2]")?;
        if let Some((i, x)) = rotations.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(CliError::input(format!(
                "{}: LSH rotations: non-finite value {x} at flat index {i} (expected finite float32 values)",
                p.display()
            )));
        }
        inputs.insert("lsh_rotations".to_string(), Tensor::F32(rotations));
    }
    if let Some(p) = a.lsh_buckets {
        inputs.insert(
            "lsh_buckets".to_string(),
            Tensor::I64(read_buckets(p, spec, batch, padded, n_buckets)?),
        );
    }
    Ok(Feed {
        model: m,
        lowered,
        inputs,
        weights,
        shape,
    })
}

/// Token ids: int [B, L], every id in [0, vocab_size).
pub fn read_ids(path: &Path, spec: &ModelSpec) -> CliResult<ArrayD<i64>> {
    let ids = npy::read_int(path, 2, "token ids [B, L]")?;
    if ids.is_empty() {
        return Err(CliError::input(format!(
            "{}: token ids: expected a non-empty [B, L] array, found shape {:?}",
            path.display(),
            ids.shape()
        )));
    }
    let len = ids.shape()[1];
    if let Some(m) = token_id_error(ids.iter().copied(), len, spec.vocab_size) {
        return Err(CliError::input(format!("{}: {m}", path.display())));
    }
    Ok(ids)
}

pub fn read_mask(path: &Path, shape: &[usize]) -> CliResult<ArrayD<i64>> {
    let m = npy::read_int(path, 2, "attention mask [B, L]")?;
    if m.shape() != shape {
        return Err(CliError::input(format!(
            "{}: attention mask: expected shape {shape:?} (that of the token ids), found {:?}",
            path.display(),
            m.shape()
        )));
    }
    Ok(m)
}

/// HF's bucket layout [n, B, H, r*P] reshaped to the IR's [n, B, H, r, P].
pub fn read_buckets(
    path: &Path,
    spec: &ModelSpec,
    batch: usize,
    padded: usize,
    n_buckets: u64,
) -> CliResult<ArrayD<i64>> {
    let (want, ir) = lsh_bucket_shapes(spec, batch, padded);
    let r = ir[3];
    let b = npy::read_int(path, 4, "LSH buckets [n_lsh_layers, B, H, r*L_padded]")?;
    if b.shape() != want {
        return Err(CliError::input(format!("{}: LSH buckets: expected shape {want:?} ([n_lsh_layers, B, H, r*L_padded] with L_padded={padded}), found {:?}", path.display(), b.shape())));
    }
    let ids = b.as_standard_layout();
    let ids = ids.as_slice().unwrap_or_default();
    reformc_runtime::attention::check_bucket_ids(ids, r, padded, n_buckets)
        .map_err(|e| CliError::input(format!("{}: LSH buckets: {e}", path.display())))?;
    b.into_shape_with_order(IxDyn(&ir))
        .map_err(|e| CliError::internal(format!("{}: LSH buckets: {e}", path.display())))
}
