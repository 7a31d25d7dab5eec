//! Checkpoints: one safetensors file holding every weight under its own name
//! (F32), the optimizer state under `optimizer.<state>.<weight>`, and in
//! `__metadata__` the format version, the step, the optimizer and its
//! hyper-parameters, the run (seed, window length, batch, data length) and a
//! fingerprint of the model.
//!
//! All randomness of a run is keyed by (seed, step), so the step and the
//! seed are the whole RNG state. Writing is atomic: `<out>.tmp` in the same
//! directory, flushed to disk, then renamed over `<out>`.

use crate::optim::{Optimizer, OptimizerConfig};
use ndarray::{ArrayD, IxDyn};
use reformc_tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// `format` in the metadata of every checkpoint.
pub const FORMAT: &str = "reformc-train-checkpoint";
/// `format_version`: bumped whenever the layout or the meaning of a field changes.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of the optimizer state's tensor names.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";

/// What identifies a model: a description of its configuration and the
/// names and shapes of its weights. Two runs may share a checkpoint only if
/// both agree.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelId {
    /// A canonical description of the configuration (the CLI uses the
    /// resolved model spec, so formatting of the config file does not matter).
    pub config: String,
    /// Every weight's (name, shape), sorted by name.
    pub weights: Vec<(String, Vec<usize>)>,
}

impl ModelId {
    /// The identity of a model with `config` and `weights`.
    pub fn new(config: impl Into<String>, weights: &BTreeMap<String, Tensor>) -> ModelId {
        ModelId {
            config: config.into(),
            weights: weights
                .iter()
                .map(|(n, t)| (n.clone(), t.shape().to_vec()))
                .collect(),
        }
    }

    /// The identity of a model with `config` and weights of these names and
    /// shapes (in any order).
    pub fn from_shapes(
        config: impl Into<String>,
        mut weights: Vec<(String, Vec<usize>)>,
    ) -> ModelId {
        weights.sort();
        ModelId {
            config: config.into(),
            weights,
        }
    }

    /// A 64-bit FNV-1a hash of the weight list and the config, in hex.
    ///
    /// ```
    /// use reformc_train::checkpoint::ModelId;
    /// let a = ModelId { config: "c".into(), weights: vec![("w".into(), vec![2, 3])] };
    /// let mut b = a.clone();
    /// b.weights[0].1 = vec![3, 2];
    /// assert_eq!(a.fingerprint().len(), 16);
    /// assert_ne!(a.fingerprint(), b.fingerprint());
    /// ```
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        eat(weight_list(&self.weights).as_bytes());
        eat(b"\0");
        eat(self.config.as_bytes());
        format!("{h:016x}")
    }

    /// What differs between the model of a checkpoint (`self`) and `other`,
    /// in one phrase; `None` when they are the same model.
    pub fn difference(&self, other: &ModelId) -> Option<String> {
        let ours: BTreeMap<&String, &Vec<usize>> =
            self.weights.iter().map(|(n, s)| (n, s)).collect();
        let theirs: BTreeMap<&String, &Vec<usize>> =
            other.weights.iter().map(|(n, s)| (n, s)).collect();
        for (name, shape) in &ours {
            match theirs.get(name) {
                None => return Some(format!("it has weight `{name}`, which the model does not")),
                Some(s) if s != shape => {
                    return Some(format!(
                        "weight `{name}` is {shape:?} in it, {s:?} in the model"
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(name) = theirs.keys().find(|n| !ours.contains_key(*n)) {
            return Some(format!("it lacks the model's weight `{name}`"));
        }
        if self.config != other.config {
            return Some(format!(
                "the configuration differs: {}",
                first_difference(&self.config, &other.config)
            ));
        }
        None
    }
}

/// The weight list as JSON (`[["name",[2,3]],...]`): the metadata form.
fn weight_list(w: &[(String, Vec<usize>)]) -> String {
    serde_json::to_string(w).unwrap_or_default()
}

fn parse_weight_list(text: &str) -> Option<Vec<(String, Vec<usize>)>> {
    serde_json::from_str(text).ok()
}

/// The first field (comma-separated piece) where two config descriptions differ.
fn first_difference(a: &str, b: &str) -> String {
    let (pa, pb): (Vec<&str>, Vec<&str>) = (a.split(", ").collect(), b.split(", ").collect());
    match pa.iter().zip(&pb).find(|(x, y)| x != y) {
        Some((x, y)) => format!("`{}` in it, `{}` in the model", x.trim(), y.trim()),
        None => format!("{} fields in it, {} in the model", pa.len(), pb.len()),
    }
}

/// The run a checkpoint belongs to: what a resume must agree on to continue
/// it exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct RunInfo {
    /// The run seed (windows and LSH hashing are keyed by (seed, step)).
    pub seed: u64,
    /// Window length L.
    pub seq_len: u64,
    /// Windows per step B.
    pub batch: u64,
    /// Micro-batches per optimizer step (1 in checkpoints written before
    /// gradient accumulation existed).
    pub grad_accum: u64,
    /// Number of tokens of the data file.
    pub data_len: u64,
}

/// A checkpoint read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Steps completed: the resumed run starts at this 0-based step.
    pub step: u64,
    /// The run.
    pub run: RunInfo,
    /// The model it was written for.
    pub model: ModelId,
    /// The optimizer and its hyper-parameters.
    pub optimizer: OptimizerConfig,
    /// The weights.
    pub weights: BTreeMap<String, Tensor>,
    /// The optimizer state (names without the `optimizer.` prefix).
    pub state: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// Refuses a checkpoint of another model: `path: checkpoint of another
    /// model (<what differs>)`.
    pub fn check_model(&self, path: &Path, model: &ModelId) -> Result<(), String> {
        match self.model.difference(model) {
            None => Ok(()),
            Some(what) => Err(format!(
                "{}: a checkpoint of another model ({what})",
                path.display()
            )),
        }
    }

    /// The optimizer with its state restored.
    pub fn restore_optimizer(&self) -> Result<Optimizer, String> {
        let mut opt = Optimizer::new(self.optimizer.clone(), &self.weights);
        opt.load_state(self.state.clone())?;
        Ok(opt)
    }
}

/// Writes a checkpoint of `step` completed steps to `path`, atomically.
pub fn write(
    path: &Path,
    step: u64,
    run: &RunInfo,
    model: &ModelId,
    weights: &BTreeMap<String, Tensor>,
    optimizer: &Optimizer,
) -> Result<(), String> {
    let mut meta = optimizer.config().metadata();
    for (k, v) in [
        ("format", FORMAT.to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("step", step.to_string()),
        ("seed", run.seed.to_string()),
        ("seq_len", run.seq_len.to_string()),
        ("batch", run.batch.to_string()),
        ("grad_accum", run.grad_accum.to_string()),
        ("data_len", run.data_len.to_string()),
        ("model.fingerprint", model.fingerprint()),
        ("model.config", model.config.clone()),
        ("model.weights", weight_list(&model.weights)),
    ] {
        meta.insert(k.to_string(), v);
    }
    let state = optimizer
        .state()
        .iter()
        .map(|(k, v)| (format!("{OPTIMIZER_PREFIX}{k}"), v));
    let tensors: Vec<(String, &Tensor)> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v))
        .chain(state)
        .collect();
    let mut arrays = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let Tensor::F32(a) = t else {
            return Err(format!(
                "checkpoint tensor `{name}` is {}, not f32",
                t.dtype()
            ));
        };
        arrays.push((name.as_str(), a));
    }
    write_atomic(path, |w| serialize(w, &meta, &arrays))
        .map_err(|e| format!("{}: cannot write the checkpoint: {e}", path.display()))
}

/// `<path>.tmp`: where a checkpoint is written before the rename.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `path` through `<path>.tmp` with `fill`: flushed and synced, then
/// renamed over `path` (and the directory synced). On any failure the
/// temporary is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename is durable once the directory is synced (best effort:
    // some filesystems refuse to open a directory for syncing).
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The safetensors bytes: header (padded with spaces to 8 bytes), then each
/// tensor's little-endian data in order.
fn serialize(
    w: &mut dyn Write,
    meta: &BTreeMap<String, String>,
    arrays: &[(&str, &ArrayD<f32>)],
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(meta));
    let mut offset = 0usize;
    for (name, a) in arrays {
        let end = offset + 4 * a.len();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": a.shape(), "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_string(&header).map_err(std::io::Error::other)?;
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(text.as_bytes())?;
    let mut buf = Vec::new();
    for (_, a) in arrays {
        buf.clear();
        buf.extend(a.iter().flat_map(|x| x.to_le_bytes()));
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Reads a checkpoint, checking its format and that every tensor is F32.
pub fn read(path: &Path) -> Result<Checkpoint, String> {
    let fail = |m: String| format!("{}: {m}", path.display());
    let bytes =
        std::fs::read(path).map_err(|e| fail(format!("cannot read the checkpoint: {e}")))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| fail(format!("not a valid safetensors file: {e:?}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| fail(format!("not a valid safetensors file: {e:?}")))?;
    let meta: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    read_parts(&file, &meta).map_err(fail)
}

fn read_parts(
    file: &SafeTensors<'_>,
    meta: &BTreeMap<String, String>,
) -> Result<Checkpoint, String> {
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| format!("not a reformc checkpoint: metadata `{k}` is missing"))
    };
    let format = get("format")?;
    if format != FORMAT {
        return Err(format!(
            "not a reformc checkpoint: metadata `format` is `{format}`, expected `{FORMAT}`"
        ));
    }
    let version = get("format_version")?;
    if version != &FORMAT_VERSION.to_string() {
        return Err(format!(
            "checkpoint format version {version}; this reformc reads version {FORMAT_VERSION}"
        ));
    }
    let int = |k: &str| -> Result<u64, String> {
        let v = get(k)?;
        v.parse()
            .map_err(|_| format!("metadata `{k}` = `{v}` is not an integer"))
    };
    let weights_text = get("model.weights")?;
    let model = ModelId {
        config: get("model.config")?.clone(),
        weights: parse_weight_list(weights_text)
            .ok_or_else(|| "metadata `model.weights` is malformed".to_string())?,
    };
    if &model.fingerprint() != get("model.fingerprint")? {
        return Err(
            "metadata `model.fingerprint` does not match its model description (edited file?)"
                .into(),
        );
    }
    let (mut weights, mut state) = (BTreeMap::new(), BTreeMap::new());
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(format!(
                "tensor `{name}` is {:?}, expected F32",
                view.dtype()
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let a = ArrayD::from_shape_vec(IxDyn(view.shape()), data)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        match name.strip_prefix(OPTIMIZER_PREFIX) {
            Some(s) => state.insert(s.to_string(), Tensor::F32(a)),
            None => weights.insert(name, Tensor::F32(a)),
        };
    }
    if let Some(d) = model.difference(&ModelId::new(model.config.clone(), &weights)) {
        return Err(format!(
            "its weights do not match its own model description: {d}"
        ));
    }
    Ok(Checkpoint {
        step: int("step")?,
        run: RunInfo {
            seed: int("seed")?,
            seq_len: int("seq_len")?,
            batch: int("batch")?,
            grad_accum: match meta.contains_key("grad_accum") {
                true => int("grad_accum")?,
                false => 1,
            },
            data_len: int("data_len")?,
        },
        model,
        optimizer: OptimizerConfig::from_metadata(meta)?,
        weights,
        state,
    })
}

#[cfg(test)]
mod tests;
