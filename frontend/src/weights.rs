//! `.safetensors` weight files: opening, checking against what a model needs, reading.
//!
//! A [`WeightFile`] memory-maps the file and parses its header once; tensors are
//! decoded on demand. [`expected_tensors`] lists the tensors (names and shapes)
//! a [`ModelSpec`] needs, which [`WeightFile::check`] compares with the file.
//!
//! ```no_run
//! use std::path::Path;
//! use reformc_frontend::{config::load_model_config, weights::{expected_tensors, WeightFile}};
//! let spec = load_model_config(Path::new("config.json"))?;
//! let weights = WeightFile::open(Path::new("model.safetensors"))?;
//! let (expected, allowed_extra) = expected_tensors(&spec);
//! weights.check(&expected, &allowed_extra)?;
//! let emb = weights.tensor_f32("reformer.embeddings.word_embeddings.weight")?;
//! # Ok::<(), reformc_frontend::error::FrontendError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use reformc_tensor::safetensors::parse as check_header;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};

use crate::checkpoint::{locate_weights, read_shard_index, WeightSource};
use crate::error::FrontendError;
use crate::half::{bf16_to_f32, f16_to_f32};
use crate::hf_config::shown;
use crate::spec::{AttentionKind, HeadSpec, ModelSpec, PositionSpec};

/// One tensor's header entry.
#[derive(Clone, Debug)]
struct Entry {
    dtype: Dtype,
    shape: Vec<u64>,
    /// Which of the checkpoint's files holds it.
    shard: usize,
    /// Byte range in that file (already offset by the header).
    start: usize,
    end: usize,
}

/// One memory-mapped `.safetensors` file of a checkpoint.
#[derive(Debug)]
struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// The dtypes a weight may be stored in: F32 as is, the others widened or
/// narrowed to F32 at load ([`WeightFile::tensor_f32`]).
const LOADABLE: [Dtype; 4] = [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64];

/// An open checkpoint: one `.safetensors` file, or the shards a
/// `model.safetensors.index.json` names, with headers parsed and validated
/// and data memory-mapped.
#[derive(Debug)]
pub struct WeightFile {
    path: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
}

impl WeightFile {
    /// Opens and validates a checkpoint: a safetensors file, a shard index
    /// (`model.safetensors.index.json`) or a Hugging Face folder holding
    /// either ([`crate::checkpoint::locate_weights`]).
    ///
    /// Fails with [`FrontendError::Io`] if a file cannot be read, and with
    /// [`FrontendError::WeightFile`] if a header is malformed, data is
    /// truncated or does not match the header, or the shards disagree with
    /// their index.
    ///
    /// The files are memory-mapped: they must not be modified while the
    /// `WeightFile` is alive.
    pub fn open(path: &Path) -> Result<Self, FrontendError> {
        match locate_weights(path)? {
            WeightSource::File(file) => {
                let mut tensors = BTreeMap::new();
                let shard = open_shard(&file, 0, &mut tensors)?;
                Ok(WeightFile {
                    path: file,
                    shards: vec![shard],
                    tensors,
                })
            }
            WeightSource::Sharded(index) => Self::open_sharded(&index),
        }
    }

    /// Opens the shards of an index, checking that each holds exactly the
    /// tensors the index assigns to it.
    fn open_sharded(index: &Path) -> Result<Self, FrontendError> {
        let map = read_shard_index(index)?;
        let files: BTreeSet<&PathBuf> = map.values().collect();
        let (mut shards, mut tensors) = (Vec::new(), BTreeMap::new());
        for (i, file) in files.into_iter().enumerate() {
            let mut own = BTreeMap::new();
            shards.push(open_shard(file, i, &mut own)?);
            for (name, entry) in own {
                if map.get(&name) != Some(file) {
                    return Err(FrontendError::Checkpoint {
                        path: file.clone(),
                        message: format!(
                            "tensor `{}` is not assigned to this shard by {}",
                            shown(&name),
                            index.display()
                        ),
                    });
                }
                tensors.insert(name, entry);
            }
        }
        if let Some((name, file)) = map.iter().find(|(n, _)| !tensors.contains_key(*n)) {
            return Err(FrontendError::Checkpoint {
                path: file.clone(),
                message: format!(
                    "has no tensor `{}`, which {} assigns to it",
                    shown(name),
                    index.display()
                ),
            });
        }
        Ok(WeightFile {
            path: index.to_path_buf(),
            shards,
            tensors,
        })
    }

    /// The checkpoint's path: the safetensors file, or the shard index.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the checkpoint is one file with every tensor in F32: what a
    /// compiled executable can memory-map and use as is.
    pub fn is_plain_f32(&self) -> bool {
        self.shards.len() == 1 && self.tensors.values().all(|e| e.dtype == Dtype::F32)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Number of tensors in the file.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The dtype (safetensors spelling: `F32`, `F16`, `BF16`, `I64`, ...) and
    /// shape of a tensor, or `None` if the file has no tensor of that name.
    pub fn info(&self, name: &str) -> Option<(String, Vec<u64>)> {
        self.tensors
            .get(name)
            .map(|e| (dtype_name(e.dtype), e.shape.clone()))
    }

    /// The raw little-endian bytes of a tensor (no alignment guarantee), or
    /// `None` if the file has no tensor of that name.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.tensors.get(name).map(|e| self.data(e))
    }

    /// An entry's bytes in its shard.
    fn data(&self, e: &Entry) -> &[u8] {
        &self.shards[e.shard].mmap[e.start..e.end]
    }

    /// The file that holds an entry (the shard, for a sharded checkpoint).
    fn file_of(&self, e: &Entry) -> PathBuf {
        self.shards[e.shard].path.clone()
    }

    /// Checks the file against the tensors a model needs.
    ///
    /// `expected` lists (name, shape) pairs, F32 (or F16, BF16, F64: converted
    /// at load); `allowed_extra` names
    /// tensors the file may hold that the model does not use (e.g. HF's unused
    /// `lm_head.bias`). Problems are looked for in this order: missing tensors,
    /// wrongly shaped tensors, non-F32 tensors, unexpected tensors (each group in
    /// the order of `expected`, then of the sorted names). The first one is
    /// returned, saying how many more there are.
    ///
    /// ```no_run
    /// # use std::path::Path;
    /// # use reformc_frontend::weights::WeightFile;
    /// let w = WeightFile::open(Path::new("model.safetensors"))?;
    /// w.check(&[("lm_head.decoder.weight".to_string(), vec![320, 512])], &["lm_head.bias".to_string()])?;
    /// # Ok::<(), reformc_frontend::error::FrontendError>(())
    /// ```
    pub fn check(
        &self,
        expected: &[(String, Vec<u64>)],
        allowed_extra: &[String],
    ) -> Result<(), FrontendError> {
        let mut problems: Vec<Box<dyn Fn(usize) -> FrontendError + '_>> = Vec::new();
        for (name, shape) in expected {
            if !self.tensors.contains_key(name) {
                let hint = self.prefix_hint(name);
                problems.push(Box::new(move |more| FrontendError::MissingTensor {
                    path: self.path.clone(),
                    tensor: shown(name),
                    expected: shape.clone(),
                    hint: hint.clone(),
                    more,
                }));
            }
        }
        for (name, shape) in expected {
            if let Some(e) = self.tensors.get(name) {
                if &e.shape != shape {
                    problems.push(Box::new(move |more| FrontendError::TensorShape {
                        path: self.file_of(e),
                        tensor: shown(name),
                        expected: shape.clone(),
                        found: e.shape.clone(),
                        more,
                    }));
                }
            }
        }
        for (name, _) in expected {
            if let Some(e) = self.tensors.get(name) {
                if !LOADABLE.contains(&e.dtype) {
                    problems.push(Box::new(move |more| FrontendError::TensorDtype {
                        path: self.file_of(e),
                        tensor: shown(name),
                        found: dtype_name(e.dtype),
                        more,
                    }));
                }
            }
        }
        let known: BTreeSet<&str> = expected
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(allowed_extra.iter().map(String::as_str))
            .collect();
        for name in self.tensors.keys() {
            if !known.contains(name.as_str()) {
                problems.push(Box::new(move |more| FrontendError::UnexpectedTensor {
                    path: self.path.clone(),
                    tensor: shown(name),
                    more,
                }));
            }
        }
        match problems.first() {
            None => Ok(()),
            Some(first) => Err(first(problems.len() - 1)),
        }
    }

    /// A hint when `name` is missing but the same name with or without the
    /// `reformer.` prefix is present.
    fn prefix_hint(&self, name: &str) -> String {
        let other = match name.strip_prefix("reformer.") {
            Some(rest) => rest.to_string(),
            None => format!("reformer.{name}"),
        };
        if self.tensors.contains_key(&other) {
            format!("; the file has `{other}` (wrong weight prefix?)")
        } else {
            String::new()
        }
    }

    /// Decodes a tensor (little-endian, any alignment) into `f32` values in
    /// row-major order: F32 as is, F16 and BF16 widened exactly, F64 rounded
    /// to nearest.
    ///
    /// Fails with [`FrontendError::NoSuchTensor`] for an unknown name and
    /// [`FrontendError::TensorDtype`] for a tensor of another dtype.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, FrontendError> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| FrontendError::NoSuchTensor {
                path: self.path.clone(),
                tensor: shown(name),
                count: self.tensors.len(),
            })?;
        let bytes = self.data(e);
        let words = |n: usize| bytes.chunks_exact(n);
        Ok(match e.dtype {
            Dtype::F32 => words(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => words(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Dtype::BF16 => words(2)
                .map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Dtype::F64 => words(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")) as f32)
                .collect(),
            other => {
                return Err(FrontendError::TensorDtype {
                    path: self.file_of(e),
                    tensor: shown(name),
                    found: dtype_name(other),
                    more: 0,
                })
            }
        })
    }

    /// Recognises the layout of a Hugging Face Reformer checkpoint.
    ///
    /// Returns the body's weight prefix (`"reformer."` when any tensor name
    /// starts with it, as in `ReformerModelWithLMHead` and `ReformerForMaskedLM`
    /// checkpoints; `""` for a bare `ReformerModel`) and whether the file has an
    /// LM head (`lm_head.decoder.weight`).
    pub fn detect_layout(&self) -> (String, bool) {
        let prefix = if self.tensors.keys().any(|n| n.starts_with("reformer.")) {
            "reformer."
        } else {
            ""
        };
        (
            prefix.to_string(),
            self.tensors.contains_key("lm_head.decoder.weight"),
        )
    }

    /// Makes `spec` (read from an HF `config.json`) use this file's layout
    /// ([`WeightFile::detect_layout`]): its weight prefix, and the head the
    /// file holds. An LM head (with a bias when `lm_head_bias`) when it has
    /// `lm_head.decoder.weight`; a classification head when it has
    /// `classifier.out_proj.weight` (with the config's `num_labels` when the
    /// config names that head, so that a disagreeing tensor is reported by
    /// the weight check, else the tensor's row count); a question-answering
    /// head when it has `qa_outputs.weight`; otherwise none (the body). The
    /// CLI and the test kit both load HF checkpoints this way.
    pub fn apply_layout(&self, spec: &mut ModelSpec, lm_head_bias: bool) {
        let (prefix, has_lm_head) = self.detect_layout();
        spec.weight_prefix = prefix;
        let has = |n: &str| self.tensors.contains_key(n);
        spec.head = if has_lm_head {
            HeadSpec::LmHead { bias: lm_head_bias }
        } else if has(CLASSIFIER_OUT) {
            match spec.head {
                HeadSpec::Classification { num_labels } => HeadSpec::Classification { num_labels },
                _ => HeadSpec::Classification {
                    num_labels: self.tensors[CLASSIFIER_OUT]
                        .shape
                        .first()
                        .copied()
                        .unwrap_or(0),
                },
            }
        } else if has(QA_OUTPUTS) {
            HeadSpec::QuestionAnswering
        } else {
            HeadSpec::None
        };
    }
}

/// The output projection of HF's classification head (`[num_labels, D]`).
const CLASSIFIER_OUT: &str = "classifier.out_proj.weight";

/// The projection of HF's question-answering head (`[2, W]`).
const QA_OUTPUTS: &str = "qa_outputs.weight";

/// Maps and validates one safetensors file, adding its tensors (tagged with
/// `index`) to `tensors`.
fn open_shard(
    path: &Path,
    index: usize,
    tensors: &mut BTreeMap<String, Entry>,
) -> Result<Shard, FrontendError> {
    let bad = |message: String| FrontendError::WeightFile {
        path: path.to_path_buf(),
        message: shown(&message),
    };
    let not_a_file =
        || bad("not a regular file (weights must be a safetensors file of known size)".into());
    // Checked before opening too: opening a FIFO blocks until a writer comes.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(not_a_file());
    }
    let file = File::open(path).map_err(|e| FrontendError::io(path, e))?;
    let meta = file.metadata().map_err(|e| FrontendError::io(path, e))?;
    if !meta.is_file() {
        return Err(not_a_file());
    }
    let len = meta.len();
    if len < 8 {
        return Err(bad(format!(
            "the file is {len} bytes, too short for the 8-byte header length"
        )));
    }
    // SAFETY: the map is only read. The file may be changed by another
    // process while mapped; as every mmap-based reader (safetensors' own
    // included), we document that the file must not be modified meanwhile.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| FrontendError::io(path, e))?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(&mmap).map_err(|e| bad(describe(&e, &mmap)))?;
    // The runtime's rules too (duplicate names, exact tiling, metadata),
    // so that a file `reformc run` accepts loads in executables and the .so.
    check_header(&mmap, len).map_err(bad)?;
    let data_start = header_len + 8;
    for (name, info) in metadata.tensors() {
        let (s, e) = info.data_offsets;
        tensors.insert(
            name,
            Entry {
                dtype: info.dtype,
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                shard: index,
                start: data_start + s,
                end: data_start + e,
            },
        );
    }
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
    })
}

/// The tensors a model needs, as (name, shape) pairs in a stable order, and the
/// names a checkpoint may carry that the model does not use (`lm_head.bias`
/// when the head has no bias: HF 5.x keeps it in the state dict but never adds it).
///
/// Body tensors carry `spec.weight_prefix`; `lm_head.*` never does (as in HF).
/// `docs/model-schema.md` lists the same names.
///
/// ```
/// use std::path::Path;
/// use reformc_frontend::{hf_config::parse_hf_config, weights::expected_tensors};
/// let (spec, _) = parse_hf_config(r#"{"model_type": "reformer"}"#, Path::new("c.json")).unwrap();
/// let (tensors, extra) = expected_tensors(&spec);
/// assert_eq!(tensors[0], ("reformer.embeddings.word_embeddings.weight".to_string(), vec![320, 256]));
/// assert_eq!(extra, vec!["lm_head.bias".to_string()]);
/// ```
pub fn expected_tensors(spec: &ModelSpec) -> (Vec<(String, Vec<u64>)>, Vec<String>) {
    let p = &spec.weight_prefix;
    let d = spec.hidden_size;
    let hd = spec.num_heads.saturating_mul(spec.head_dim);
    let ff = spec.feed_forward_size;
    let v = spec.vocab_size;
    let w = spec.output_width();
    let mut t: Vec<(String, Vec<u64>)> = Vec::new();
    let mut add = |name: String, shape: Vec<u64>| t.push((name, shape));
    add(format!("{p}embeddings.word_embeddings.weight"), vec![v, d]);
    match spec.position {
        PositionSpec::Axial { shape, dims } => {
            add(
                format!("{p}embeddings.position_embeddings.weights.0"),
                vec![shape[0], 1, dims[0]],
            );
            add(
                format!("{p}embeddings.position_embeddings.weights.1"),
                vec![1, shape[1], dims[1]],
            );
        }
        PositionSpec::Learned => add(
            format!("{p}embeddings.position_embeddings.embedding.weight"),
            vec![spec.max_position_embeddings, d],
        ),
    }
    for (i, layer) in spec.layers.iter().enumerate() {
        let l = format!("{p}encoder.layers.{i}");
        add(format!("{l}.attention.layer_norm.weight"), vec![d]);
        add(format!("{l}.attention.layer_norm.bias"), vec![d]);
        let projections: &[&str] = match layer {
            AttentionKind::Lsh | AttentionKind::Full { shared_qk: true } => &["query_key", "value"],
            AttentionKind::Local | AttentionKind::Full { shared_qk: false } => {
                &["query", "key", "value"]
            }
        };
        for proj in projections {
            add(
                format!("{l}.attention.self_attention.{proj}.weight"),
                vec![hd, d],
            );
        }
        add(format!("{l}.attention.output.dense.weight"), vec![d, hd]);
        add(format!("{l}.feed_forward.layer_norm.weight"), vec![d]);
        add(format!("{l}.feed_forward.layer_norm.bias"), vec![d]);
        add(format!("{l}.feed_forward.dense.dense.weight"), vec![ff, d]);
        add(format!("{l}.feed_forward.dense.dense.bias"), vec![ff]);
        add(format!("{l}.feed_forward.output.dense.weight"), vec![d, ff]);
        add(format!("{l}.feed_forward.output.dense.bias"), vec![d]);
    }
    add(format!("{p}encoder.layer_norm.weight"), vec![w]);
    add(format!("{p}encoder.layer_norm.bias"), vec![w]);
    let mut extra = Vec::new();
    match spec.head {
        HeadSpec::LmHead { bias } => {
            add("lm_head.decoder.weight".to_string(), vec![v, w]);
            if bias {
                add("lm_head.bias".to_string(), vec![v]);
            } else {
                extra.push("lm_head.bias".to_string());
            }
        }
        HeadSpec::None => {}
        // HF's names: the heads sit beside `reformer.`, never under it.
        HeadSpec::Classification { num_labels } => {
            add("classifier.dense.weight".to_string(), vec![d, w]);
            add("classifier.dense.bias".to_string(), vec![d]);
            add(CLASSIFIER_OUT.to_string(), vec![num_labels, d]);
            add("classifier.out_proj.bias".to_string(), vec![num_labels]);
        }
        HeadSpec::QuestionAnswering => {
            add(QA_OUTPUTS.to_string(), vec![2, w]);
            add("qa_outputs.bias".to_string(), vec![2]);
        }
    }
    (t, extra)
}

/// safetensors' spelling of a dtype (`F32`, `BF16`, `F8_E4M3`, ...).
fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// A one-line description of a safetensors header error, with the details the
/// crate's error leaves out recovered from the bytes.
fn describe(e: &SafeTensorError, bytes: &[u8]) -> String {
    let n = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    let len = bytes.len();
    match e {
        SafeTensorError::HeaderTooSmall => {
            format!("the file is {len} bytes, too short for the 8-byte header length")
        }
        SafeTensorError::HeaderTooLarge => format!(
            "the header length field says {n} bytes, more than the 100,000,000 allowed (not a safetensors file?)"
        ),
        SafeTensorError::InvalidHeaderLength => format!(
            "the header length field says {n} bytes but only {} follow it (truncated file?)",
            len.saturating_sub(8)
        ),
        SafeTensorError::InvalidHeader => "the header is not valid UTF-8".to_string(),
        SafeTensorError::InvalidHeaderStart => "the header does not start with '{'".to_string(),
        SafeTensorError::InvalidHeaderDeserialization => {
            header_problem(bytes, n).unwrap_or_else(|| {
                "the header is not a valid tensor table (each entry needs dtype, shape and data_offsets)"
                    .to_string()
            })
        }
        SafeTensorError::InvalidOffset(name) => format!(
            "tensor `{name}`: data_offsets do not follow on from the previous tensor's (the data section must be packed in order)"
        ),
        SafeTensorError::TensorInvalidInfo => header_problem(bytes, n).unwrap_or_else(|| {
            "a tensor's data_offsets do not match the size of its dtype and shape".to_string()
        }),
        SafeTensorError::MetadataIncompleteBuffer => {
            let described = header_table(bytes, n)
                .and_then(|ends| ends.into_iter().max())
                .unwrap_or(0);
            let actual = len
                .saturating_sub(8)
                .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
            if (actual as u64) < described {
                format!(
                    "the data section is {actual} bytes but the header describes {described} (truncated file?)"
                )
            } else {
                format!(
                    "the data section is {actual} bytes but the header describes {described} (trailing bytes?)"
                )
            }
        }
        SafeTensorError::ValidationOverflow => header_problem(bytes, n)
            .unwrap_or_else(|| "a tensor's shape is too large (its size overflows)".to_string()),
        other => format!("{other:?}"),
    }
}

/// The end offsets of the header's tensors, parsed leniently, for messages only.
fn header_table(bytes: &[u8], n: u64) -> Option<Vec<u64>> {
    let header = bytes.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?;
    let value: serde_json::Value = serde_json::from_slice(header).ok()?;
    let mut out = Vec::new();
    for (name, entry) in value.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let end = entry
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(|x| x.as_u64())
            .unwrap_or(0);
        out.push(end);
    }
    Some(out)
}

/// Finds the first header entry that is malformed, for a precise message.
fn header_problem(bytes: &[u8], n: u64) -> Option<String> {
    let header = bytes.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?;
    let value: serde_json::Value = match serde_json::from_slice(header) {
        Ok(v) => v,
        Err(e) => return Some(format!("the header is not valid JSON: {e}")),
    };
    let Some(object) = value.as_object() else {
        return Some("the header is not a JSON object".to_string());
    };
    for (name, entry) in object {
        if name == "__metadata__" {
            if !entry
                .as_object()
                .is_some_and(|m| m.values().all(|v| v.is_string()))
            {
                return Some("`__metadata__` must be an object of strings".to_string());
            }
            continue;
        }
        let dtype = entry.get("dtype").and_then(|d| d.as_str());
        let shape: Option<Vec<u64>> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|x| x.as_u64()).collect());
        let offsets: Option<Vec<u64>> = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|x| x.as_u64()).collect());
        let (Some(dtype), Some(shape), Some(offsets)) = (dtype, shape, offsets) else {
            return Some(format!(
                "tensor `{name}`: header entry needs \"dtype\" (string), \"shape\" (list of integers) and \"data_offsets\" ([begin, end]), found {}",
                crate::hf_config::short_json(entry)
            ));
        };
        let size = match dtype {
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
            "I16" | "U16" | "F16" | "BF16" => 2,
            "I32" | "U32" | "F32" => 4,
            "I64" | "U64" | "F64" => 8,
            other => return Some(format!("tensor `{name}`: unknown dtype {other:?}")),
        };
        if offsets.len() != 2 {
            return Some(format!(
                "tensor `{name}`: data_offsets must be [begin, end], found {offsets:?}"
            ));
        }
        let want = shape
            .iter()
            .try_fold(size as u64, |acc, &d| acc.checked_mul(d));
        let have = offsets[1].checked_sub(offsets[0]);
        if want != have {
            return Some(format!(
                "tensor `{name}`: data_offsets {offsets:?} span {} bytes but dtype {dtype} and shape {shape:?} need {}",
                have.map_or("a negative number of".to_string(), |h| h.to_string()),
                want.map_or("more than 2^64".to_string(), |w| w.to_string())
            ));
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hf_config::parse_hf_config;
    use crate::schema::parse_schema;

    /// A fresh, empty temporary directory for one test, removed when dropped.
    pub(crate) struct TempDir(PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Creates a [`TempDir`] named after the test.
    pub(crate) fn temp_dir(test: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("reformc-frontend-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Serializes tensors (name, dtype, shape, bytes) into safetensors format.
    pub(crate) fn safetensors_bytes(tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let mut h = serde_json::Value::Object(header).to_string().into_bytes();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(data);
        out
    }

    fn f32s(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn small() -> Vec<(&'static str, &'static str, Vec<u64>, Vec<u8>)> {
        vec![
            (
                "a",
                "F32",
                vec![2, 3],
                f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]),
            ),
            ("b", "F32", vec![2], f32s(&[0.25, 1e-30])),
            ("c", "I16", vec![2], vec![0, 60, 0, 60]),
            ("extra", "F32", vec![1], f32s(&[9.0])),
        ]
    }

    fn exp(list: &[(&str, &[u64])]) -> Vec<(String, Vec<u64>)> {
        list.iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect()
    }

    #[test]
    fn open_info_and_read() {
        let dir = temp_dir("open");
        let p = write(&dir, "w.safetensors", &safetensors_bytes(&small()));
        let w = WeightFile::open(&p).unwrap();
        assert_eq!(w.names(), vec!["a", "b", "c", "extra"]);
        assert_eq!(w.len(), 4);
        assert_eq!(w.info("a"), Some(("F32".to_string(), vec![2, 3])));
        assert_eq!(w.info("c"), Some(("I16".to_string(), vec![2])));
        assert_eq!(w.info("zz"), None);
        assert_eq!(
            w.tensor_f32("a").unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]
        );
        assert_eq!(w.tensor_f32("b").unwrap(), vec![0.25, 1e-30]);
        assert_eq!(w.bytes("c"), Some(&[0u8, 60, 0, 60][..]));
        let e = w.tensor_f32("c").unwrap_err().to_string();
        assert!(
            e.ends_with("w.safetensors: tensor `c`: expected dtype F32 (or F16, BF16, F64, converted at load), found I16"),
            "{e}"
        );
        let e = w.tensor_f32("nope").unwrap_err().to_string();
        assert!(
            e.ends_with("tensor `nope`: not found (the file has 4 tensors)"),
            "{e}"
        );
        assert_eq!(w.detect_layout(), (String::new(), false));
    }

    #[test]
    fn half_and_double_weights_load_as_f32() {
        let dir = temp_dir("halves");
        let t = vec![
            ("h", "F16", vec![2], vec![0, 0x3c, 0, 0xc0]),
            ("b", "BF16", vec![2], vec![0x80, 0x3f, 0xa0, 0xc0]),
            ("d", "F64", vec![1], 0.1f64.to_le_bytes().to_vec()),
        ];
        let p = write(&dir, "w.safetensors", &safetensors_bytes(&t));
        let w = WeightFile::open(&p).unwrap();
        assert!(!w.is_plain_f32());
        assert_eq!(w.tensor_f32("h").unwrap(), vec![1.0, -2.0]);
        assert_eq!(w.tensor_f32("b").unwrap(), vec![1.0, -5.0]);
        assert_eq!(w.tensor_f32("d").unwrap(), vec![0.1f32]);
        let e = exp(&[("h", &[2]), ("b", &[2]), ("d", &[1])]);
        assert_eq!(w.check(&e, &[]).map_err(|e| e.to_string()), Ok(()));
    }

    #[test]
    fn sharded_checkpoints_open_as_one() {
        let dir = temp_dir("shards");
        let s1 = vec![("a", "F32", vec![2], f32s(&[1.0, 2.0]))];
        let s2 = vec![("b", "F16", vec![1], vec![0, 0x3c])];
        write(&dir, "m-1.safetensors", &safetensors_bytes(&s1));
        write(&dir, "m-2.safetensors", &safetensors_bytes(&s2));
        let index = r#"{"metadata": {"total_size": 10}, "weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}"#;
        let idx = write(&dir, "model.safetensors.index.json", index.as_bytes());
        // The folder finds its index; the index opens directly too.
        for p in [dir.to_path_buf(), idx.clone()] {
            let w = WeightFile::open(&p).unwrap();
            assert_eq!(w.path(), idx.as_path());
            assert_eq!(w.names(), vec!["a", "b"]);
            assert_eq!(w.tensor_f32("a").unwrap(), vec![1.0, 2.0]);
            assert_eq!(w.tensor_f32("b").unwrap(), vec![1.0]);
            assert!(!w.is_plain_f32());
            let e = w.check(&exp(&[("a", &[3]), ("b", &[1])]), &[]).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!(
                    "{}: tensor `a`",
                    dir.join("m-1.safetensors").display()
                )),
                "the shard is named: {e}"
            );
        }
        // A tensor the index puts elsewhere, or one the shard lacks.
        let index = r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-2.safetensors"}}"#;
        write(&dir, "model.safetensors.index.json", index.as_bytes());
        let e = WeightFile::open(&idx).unwrap_err().to_string();
        let want = format!("has no tensor `a`, which {} assigns to it", idx.display());
        assert!(e.ends_with(&want), "{e}");
        let index = r#"{"weight_map": {"a": "m-1.safetensors"}}"#;
        write(&dir, "model.safetensors.index.json", index.as_bytes());
        let w = WeightFile::open(&idx).unwrap();
        assert_eq!(
            w.names(),
            vec!["a"],
            "only the shards the index lists are opened"
        );
        let index = r#"{"weight_map": {"a": "m-1.safetensors", "b": "m-1.safetensors"}}"#;
        write(&dir, "model.safetensors.index.json", index.as_bytes());
        let e = WeightFile::open(&idx).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: has no tensor `b`",
                dir.join("m-1.safetensors").display()
            )),
            "{e}"
        );
        let missing = r#"{"weight_map": {"a": "gone.safetensors"}}"#;
        write(&dir, "model.safetensors.index.json", missing.as_bytes());
        let e = WeightFile::open(&idx).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: cannot read file",
                dir.join("gone.safetensors").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn unaligned_data_decodes() {
        // A 1-byte U8 tensor first puts the F32 data at an odd offset.
        let dir = temp_dir("unaligned");
        let t = vec![
            ("x", "U8", vec![1], vec![7u8]),
            ("y", "F32", vec![3], f32s(&[1.5, -2.0, 3.25])),
        ];
        let p = write(&dir, "w.safetensors", &safetensors_bytes(&t));
        let w = WeightFile::open(&p).unwrap();
        assert_eq!(w.tensor_f32("y").unwrap(), vec![1.5, -2.0, 3.25]);
    }

    #[test]
    fn check_reports_problems_in_order() {
        let dir = temp_dir("check");
        let p = write(&dir, "w.safetensors", &safetensors_bytes(&small()));
        let w = WeightFile::open(&p).unwrap();
        let path = p.display().to_string();
        let check = |e: &[(String, Vec<u64>)], extra: &[&str]| {
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            w.check(e, &extra).map_err(|e| e.to_string())
        };
        // Everything right.
        assert_eq!(
            check(&exp(&[("a", &[2, 3]), ("b", &[2])]), &["c", "extra"]),
            Ok(())
        );
        // Missing comes first, and counts the rest: missing m, shape b, dtype c, extra `extra`.
        assert_eq!(
            check(
                &exp(&[("a", &[2, 3]), ("m", &[4]), ("b", &[3]), ("c", &[2])]),
                &[]
            )
            .unwrap_err(),
            format!(
                "{path}: tensor `m`: missing (expected F32 of shape [4]) (and 3 more problems)"
            )
        );
        assert_eq!(
            check(&exp(&[("a", &[2, 3]), ("b", &[3]), ("c", &[2])]), &[]).unwrap_err(),
            format!("{path}: tensor `b`: expected shape [3], found [2] (and 2 more problems)")
        );
        assert_eq!(
            check(&exp(&[("a", &[2, 3]), ("b", &[2]), ("c", &[2])]), &[]).unwrap_err(),
            format!("{path}: tensor `c`: expected dtype F32 (or F16, BF16, F64, converted at load), found I16 (and 1 more problem)")
        );
        assert_eq!(
            check(&exp(&[("a", &[2, 3]), ("b", &[2])]), &["c"]).unwrap_err(),
            format!("{path}: tensor `extra`: unexpected tensor, not used by this model")
        );
        assert_eq!(
            check(&exp(&[("a", &[2, 3]), ("b", &[2])]), &["extra"]).unwrap_err(),
            format!("{path}: tensor `c`: unexpected tensor, not used by this model")
        );
    }

    #[test]
    fn missing_tensor_hints_at_the_prefix() {
        let dir = temp_dir("hint");
        let t = vec![("reformer.a", "F32", vec![1], f32s(&[1.0]))];
        let p = write(&dir, "w.safetensors", &safetensors_bytes(&t));
        let w = WeightFile::open(&p).unwrap();
        let e = w
            .check(&exp(&[("a", &[1])]), &["reformer.a".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("tensor `a`: missing (expected F32 of shape [1]); the file has `reformer.a` (wrong weight prefix?)"),
            "{e}"
        );
        assert_eq!(w.detect_layout(), ("reformer.".to_string(), false));
    }

    #[test]
    fn bad_files() {
        let dir = temp_dir("bad");
        let good = safetensors_bytes(&small());
        let open = |name: &str, bytes: &[u8]| {
            let p = write(&dir, name, bytes);
            let e = WeightFile::open(&p).unwrap_err().to_string();
            assert!(e.starts_with(&p.display().to_string()), "{e}");
            assert!(!e.contains('\n'), "{e}");
            e
        };
        let e = open("truncated.safetensors", &good[..good.len() - 3]);
        assert!(
            e.ends_with(&format!(
                "not a valid safetensors file: the data section is {} bytes but the header describes {} (truncated file?)",
                good.len() - 3 - 8 - u64::from_le_bytes(good[..8].try_into().unwrap()) as usize,
                good.len() - 8 - u64::from_le_bytes(good[..8].try_into().unwrap()) as usize
            )),
            "{e}"
        );
        let e = open("cut_header.safetensors", &good[..20]);
        assert!(e.contains("the header length field says"), "{e}");
        assert!(e.contains("(truncated file?)"), "{e}");
        let e = open("empty.safetensors", b"");
        assert!(
            e.ends_with("the file is 0 bytes, too short for the 8-byte header length"),
            "{e}"
        );
        let e = open("huge.safetensors", &u64::MAX.to_le_bytes());
        assert!(e.contains("header length field says"), "{e}");
        let mut not_json = 8u64.to_le_bytes().to_vec();
        not_json.extend_from_slice(b"{\"a\": 1}");
        let e = open("notjson.safetensors", &not_json);
        assert!(
            e.contains("tensor `a`: header entry needs \"dtype\""),
            "{e}"
        );
        let mut garbage = 8u64.to_le_bytes().to_vec();
        garbage.extend_from_slice(b"{{{{{{{{");
        let e = open("garbage.safetensors", &garbage);
        assert!(e.contains("the header is not valid JSON"), "{e}");
        let bad_size = safetensors_bytes(&[("a", "F32", vec![3], f32s(&[1.0, 2.0]))]);
        let e = open("badsize.safetensors", &bad_size);
        assert!(
            e.contains(
                "tensor `a`: data_offsets [0, 8] span 8 bytes but dtype F32 and shape [3] need 12"
            ),
            "{e}"
        );
        let bad_dtype = safetensors_bytes(&[("a", "F33", vec![1], f32s(&[1.0]))]);
        let e = open("baddtype.safetensors", &bad_dtype);
        assert!(e.contains("tensor `a`: unknown dtype \"F33\""), "{e}");
        let e = WeightFile::open(&dir.join("does-not-exist.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does-not-exist.safetensors: cannot read file: "),
            "{e}"
        );
        // A directory is not a file either.
        assert!(WeightFile::open(&dir).is_err());
    }

    /// The shared corpus (tests/corpus/safetensors, also run through the
    /// runtime's loader): every file refused, naming the file and the tensor.
    #[test]
    fn malformed_corpus_is_refused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/safetensors");
        let list = std::fs::read_to_string(dir.join("expect.txt")).unwrap();
        let mut n = 0;
        for (file, needle) in list.lines().filter_map(|l| l.split_once('\t')) {
            let p = dir.join(file);
            let e = WeightFile::open(&p).unwrap_err().to_string();
            assert!(e.starts_with(&p.display().to_string()), "{e}");
            assert!(!e.contains('\n'), "{e}");
            assert!(
                needle.split('|').any(|x| e.contains(x)),
                "{file}: {needle}: {e}"
            );
            n += 1;
        }
        assert!(n >= 15, "only {n} corpus files");
    }

    #[test]
    fn expected_tensors_match_every_fixture() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut dirs: Vec<_> = std::fs::read_dir(root.join("tests/fixtures"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.push(root.join("examples/tiny-reformer"));
        let mut n = 0;
        for dir in dirs {
            let (Ok(text), Ok(w)) = (
                std::fs::read_to_string(dir.join("config.json")),
                WeightFile::open(&dir.join("model.safetensors")),
            ) else {
                continue;
            };
            let (spec, _) = parse_hf_config(&text, &dir.join("config.json")).unwrap();
            let (expected, extra) = expected_tensors(&spec);
            w.check(&expected, &extra).unwrap();
            assert_eq!(w.detect_layout(), ("reformer.".to_string(), true));
            for (name, shape) in &expected {
                let v = w.tensor_f32(name).unwrap();
                assert_eq!(v.len() as u64, shape.iter().product::<u64>());
            }
            n += 1;
        }
        assert!(n > 0, "no fixtures found");
    }

    #[test]
    fn expected_tensors_for_a_residual_model() {
        let text = r#"{"format": "reformc-model", "version": 1, "architecture": "residual",
            "vocab_size": 10, "hidden_size": 8, "num_heads": 2, "head_dim": 3, "feed_forward_size": 16,
            "layers": [{"type": "full", "shared_qk": true}, "full"], "max_position_embeddings": 32,
            "head": {"type": "lm_head", "bias": true}, "weight_prefix": ""}"#;
        let (spec, _) = parse_schema(text, Path::new("m.json")).unwrap();
        let (t, extra) = expected_tensors(&spec);
        assert!(extra.is_empty());
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"embeddings.position_embeddings.embedding.weight"));
        assert!(names.contains(&"encoder.layers.0.attention.self_attention.query_key.weight"));
        assert!(names.contains(&"encoder.layers.1.attention.self_attention.key.weight"));
        let get = |n: &str| {
            t.iter()
                .find(|(x, _)| x == n)
                .map(|(_, s)| s.clone())
                .unwrap()
        };
        assert_eq!(
            get("encoder.layers.1.attention.self_attention.query.weight"),
            vec![6, 8]
        );
        assert_eq!(
            get("encoder.layers.1.attention.output.dense.weight"),
            vec![8, 6]
        );
        assert_eq!(get("encoder.layer_norm.weight"), vec![8]);
        assert_eq!(get("lm_head.decoder.weight"), vec![10, 8]);
        assert_eq!(get("lm_head.bias"), vec![10]);
        assert_eq!(t.len(), 1 + 1 + (2 + 2 + 1 + 6) + (2 + 3 + 1 + 6) + 2 + 2);
    }
}
