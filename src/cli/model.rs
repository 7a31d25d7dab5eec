//! Loading a model for a command: config, weights (validated against the graph), lowering.

use super::error::{CliError, CliResult};
use ndarray::{ArrayD, IxDyn};
use reformc_frontend::checkpoint::model_paths;
use reformc_frontend::config::{parse_model_config, read_config_text, ConfigFormat};
use reformc_frontend::lower::{expected_weights, lower, LowerOptions, Lowered};
use reformc_frontend::spec::{HeadSpec, ModelSpec};
use reformc_frontend::weights::WeightFile;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Resolves a command's model arguments in place: a Hugging Face folder as
/// `config` becomes its `config.json`, and its weights (if any) fill in an
/// absent `weights`. Optional weights stay `None` when there are none.
pub fn resolve_paths(config: &mut PathBuf, weights: &mut Option<PathBuf>) -> CliResult<()> {
    let (c, w) = model_paths(config, weights.as_deref())?;
    (*config, *weights) = (c, w);
    Ok(())
}

/// [`resolve_paths`] for a command that needs weights: `flag` is
/// `--weights` as given, `weights` receives the resolved path.
pub fn resolve_required_paths(
    config: &mut PathBuf,
    flag: &Option<PathBuf>,
    weights: &mut PathBuf,
) -> CliResult<()> {
    let mut given = flag.clone();
    let folder = config.is_dir();
    resolve_paths(config, &mut given)?;
    *weights = given.ok_or_else(|| {
        CliError::input(if folder {
            format!(
                "{}: the model folder has no weights (model.safetensors or model.safetensors.index.json); pass --weights",
                config.parent().unwrap_or(Path::new(".")).display()
            )
        } else {
            "this command needs the model's weights: pass --weights model.safetensors (or give a Hugging Face model folder instead of the config)".to_string()
        })
    })?;
    Ok(())
}

pub use reformc_frontend::inputs::max_len;

/// A parsed model description, adapted to the layout of its weight file.
pub struct Model {
    pub spec: ModelSpec,
    pub weights: Option<WeightFile>,
}

/// Reads `config` (HF `config.json` or reformc schema) and, if given, opens
/// `weights`. For an HF config the weight file decides the layout: a
/// `reformer.` prefix and an LM head (`ReformerModelWithLMHead` /
/// `ReformerForMaskedLM`) or a bare `ReformerModel` (no prefix, no head).
pub fn load(config: &Path, weights: Option<&Path>, lm_head_bias: bool) -> CliResult<Model> {
    let text = read_config_text(config)?;
    let (mut spec, warnings, format) = parse_model_config(&text, config)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let weights = weights.map(WeightFile::open).transpose()?;
    if let (Some(w), ConfigFormat::HuggingFace) = (&weights, format) {
        w.apply_layout(&mut spec, lm_head_bias);
    } else if let HeadSpec::LmHead { bias } = &mut spec.head {
        *bias |= lm_head_bias;
    }
    Ok(Model { spec, weights })
}

impl Model {
    /// Lowers the model; errors are the user's (e.g. automatic buckets without a length).
    pub fn lower(&self, opts: &LowerOptions) -> CliResult<Lowered> {
        lower(&self.spec, opts).map_err(CliError::input)
    }

    /// Checks the weight file against what `lowered` needs and loads every tensor.
    pub fn weight_tensors(&self, lowered: &Lowered) -> CliResult<BTreeMap<String, Tensor>> {
        let Some(file) = &self.weights else {
            return Err(CliError::input(
                "this command needs the model's weights: pass --weights model.safetensors",
            ));
        };
        graph_weights(file, &lowered.graph)
    }
}

/// Checks `file` against the weights `graph` reads (names, shapes, F32) and
/// loads each of them.
pub fn graph_weights(
    file: &WeightFile,
    graph: &reformc_ir::Graph,
) -> CliResult<BTreeMap<String, Tensor>> {
    let expected = expected_weights(graph);
    // HF 5.x checkpoints carry lm_head.bias without using it.
    let extra: Vec<String> = ["lm_head.bias".to_string()]
        .into_iter()
        .filter(|n| !expected.iter().any(|(e, _)| e == n))
        .collect();
    load_checked(file, expected, &extra)
}

/// Checks `file` against `expected` (names, shapes, F32; `extra` tensors
/// may be present unused) and loads every expected tensor.
pub fn load_checked(
    file: &WeightFile,
    expected: Vec<(String, Vec<u64>)>,
    extra: &[String],
) -> CliResult<BTreeMap<String, Tensor>> {
    file.check(&expected, extra)?;
    let mut out = BTreeMap::new();
    for (name, shape) in expected {
        let data = file.tensor_f32(&name)?;
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let array = ArrayD::from_shape_vec(IxDyn(&shape), data)
            .map_err(|e| CliError::internal(format!("{name}: {e}")))?;
        out.insert(name, Tensor::F32(array));
    }
    Ok(out)
}

/// Refuses a NaN or infinite weight (exit 2, naming the tensor, the first bad
/// flat index and its value): such a weight makes every output NaN. With
/// `allow` (`--allow-nonfinite-weights`) it is a warning instead.
pub fn check_finite(weights: &BTreeMap<String, Tensor>, file: &Path, allow: bool) -> CliResult<()> {
    for (name, t) in weights {
        let bad = match t {
            Tensor::F32(a) => first_nonfinite(a.iter().map(|&x| f64::from(x))),
            Tensor::F64(a) => first_nonfinite(a.iter().copied()),
            _ => None,
        };
        let Some((index, value)) = bad else { continue };
        let message = format!(
            "{}: tensor `{name}`: non-finite value {value} at flat index {index} (shape {:?})",
            file.display(),
            t.shape()
        );
        if !allow {
            return Err(CliError::input(format!(
                "{message}; pass --allow-nonfinite-weights to run it anyway"
            )));
        }
        eprintln!("warning: {message} (allowed by --allow-nonfinite-weights)");
    }
    Ok(())
}

/// Row-major flat index and value of the first NaN or infinity.
fn first_nonfinite(values: impl Iterator<Item = f64>) -> Option<(usize, f64)> {
    values.enumerate().find(|(_, x)| !x.is_finite())
}
