//! Hugging Face `config.json` (`model_type: "reformer"`) to [`ModelSpec`].
//!
//! Every `ReformerConfig` field of REFORMER.md §6.1 is read, with the defaults
//! of `transformers` 5.23.0 when a key is absent. Fields that do not change
//! inference (dropout probabilities, `initializer_range`,
//! `axial_norm_std`, `hash_seed`, token ids other than `pad_token_id`, ...) and
//! Hugging Face bookkeeping keys are accepted and ignored. Unknown keys are
//! tolerated and reported as warnings. `chunk_size_feed_forward` and
//! `chunk_size_lm_head` do not change results either; when nonzero they are
//! kept in the spec for the `chunk` pass.
//!
//! ```
//! use std::path::Path;
//! use reformc_frontend::hf_config::parse_hf_config;
//! let (spec, warnings) = parse_hf_config(r#"{"model_type": "reformer"}"#, Path::new("config.json")).unwrap();
//! assert_eq!((spec.hidden_size, spec.num_heads, spec.head_dim), (256, 12, 64));
//! assert!(warnings.is_empty());
//! ```

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{check_range, from_json_error, FrontendError, MAX_SIZE};
use crate::spec::{
    Activation, Architecture, AttentionKind, BucketSpec, DropoutSpec, HeadSpec, LocalSpec, LshSpec,
    ModelSpec, PositionSpec,
};

/// Activation names accepted in `hidden_act`, with the [`Activation`] each
/// maps to. `swish` is `silu`; `gelu_python` is the exact (erf) GELU and
/// `gelu_pytorch_tanh` the tanh approximation, which is `gelu_new`; `linear`
/// is HF's identity (`LinearActivation`), the IR's [`Activation::None`].
/// `leaky_relu` is PyTorch's `nn.LeakyReLU()` with its default slope 0.01,
/// which is what HF's `ACT2FN` builds.
pub const HF_ACTIVATIONS: &[(&str, Activation)] = &[
    ("relu", Activation::Relu),
    ("gelu", Activation::Gelu),
    ("gelu_new", Activation::GeluNew),
    ("gelu_fast", Activation::GeluFast),
    ("silu", Activation::Silu),
    ("swish", Activation::Silu),
    ("tanh", Activation::Tanh),
    ("sigmoid", Activation::Sigmoid),
    ("gelu_python", Activation::Gelu),
    ("gelu_pytorch_tanh", Activation::GeluNew),
    ("mish", Activation::Mish),
    ("relu6", Activation::Relu6),
    ("quick_gelu", Activation::QuickGelu),
    ("leaky_relu", Activation::LeakyRelu),
    ("linear", Activation::None),
];

/// Names in transformers 5.23's `ACT2FN` that reformc does not implement: an
/// error names them as such, so that a reader knows the config is valid HF.
const HF_UNSUPPORTED_ACTIVATIONS: &[&str] = &[
    "gelu_10",
    "gelu_accurate",
    "gelu_python_tanh",
    "hardswish",
    "laplace",
    "relu2",
    "sqrtsoftplus",
    "prelu",
    "xielu",
];

/// Maps a Hugging Face `hidden_act` name to the IR's activation.
///
/// ```
/// use reformc_frontend::hf_config::activation_from_hf;
/// use reformc_ir::Activation;
/// assert_eq!(activation_from_hf("swish"), Some(Activation::Silu));
/// assert_eq!(activation_from_hf("mish"), Some(Activation::Mish));
/// assert_eq!(activation_from_hf("linear"), Some(Activation::None));
/// assert_eq!(activation_from_hf("relu2"), None);
/// ```
pub fn activation_from_hf(name: &str) -> Option<Activation> {
    HF_ACTIVATIONS
        .iter()
        .find(|(hf, _)| *hf == name)
        .map(|(_, ir)| *ir)
}

/// Keys that Hugging Face configs carry and reformc accepts without using
/// (besides the fields of `RawHf`). Keys starting with `_` are accepted too.
const IGNORED_KEYS: &[&str] = &[
    "transformers_version",
    "torch_dtype",
    "dtype",
    "id2label",
    "label2id",
    "num_labels",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "use_cache",
    "problem_type",
    "eos_token_id",
    "bos_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "is_encoder_decoder",
    "add_cross_attention",
    "cross_attention_hidden_size",
    "tokenizer_class",
    "prefix",
    "task_specific_params",
    "finetuning_task",
    "pruned_heads",
    "torchscript",
    "tf_legacy_loss",
    "use_bfloat16",
    "classifier_dropout",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
];

/// The typed view of a Reformer `config.json`; `Default` gives HF 5.23.0's defaults.
#[derive(Deserialize)]
#[serde(default)]
struct RawHf {
    // Read only to check its JSON type.
    #[allow(dead_code)]
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    attention_head_size: u64,
    attn_layers: Vec<String>,
    num_hidden_layers: Option<u64>,
    // Read only to check its JSON type.
    #[allow(dead_code)]
    axial_norm_std: Option<f64>,
    axial_pos_embds: bool,
    axial_pos_shape: Vec<u64>,
    axial_pos_embds_dim: Vec<u64>,
    chunk_size_feed_forward: Option<u64>,
    chunk_size_lm_head: Option<u64>,
    feed_forward_size: u64,
    hash_seed: Option<i64>,
    hidden_act: String,
    hidden_dropout_prob: Option<f64>,
    hidden_size: u64,
    // Read only to check its JSON type.
    #[allow(dead_code)]
    initializer_range: Option<f64>,
    is_decoder: bool,
    layer_norm_eps: f64,
    local_num_chunks_before: u64,
    local_num_chunks_after: u64,
    local_attention_probs_dropout_prob: Option<f64>,
    local_attn_chunk_length: u64,
    lsh_attn_chunk_length: u64,
    lsh_attention_probs_dropout_prob: Option<f64>,
    lsh_num_chunks_before: u64,
    lsh_num_chunks_after: u64,
    max_position_embeddings: u64,
    num_attention_heads: u64,
    num_buckets: Value,
    num_hashes: u64,
    pad_token_id: Option<i64>,
    vocab_size: u64,
    tie_word_embeddings: Option<bool>,
}

/// The keys `RawHf` reads (kept in step with its fields; checked by a test).
const RAW_KEYS: &[&str] = &[
    "model_type",
    "architectures",
    "attention_head_size",
    "attn_layers",
    "num_hidden_layers",
    "axial_norm_std",
    "axial_pos_embds",
    "axial_pos_shape",
    "axial_pos_embds_dim",
    "chunk_size_feed_forward",
    "chunk_size_lm_head",
    "feed_forward_size",
    "hash_seed",
    "hidden_act",
    "hidden_dropout_prob",
    "hidden_size",
    "initializer_range",
    "is_decoder",
    "layer_norm_eps",
    "local_num_chunks_before",
    "local_num_chunks_after",
    "local_attention_probs_dropout_prob",
    "local_attn_chunk_length",
    "lsh_attn_chunk_length",
    "lsh_attention_probs_dropout_prob",
    "lsh_num_chunks_before",
    "lsh_num_chunks_after",
    "max_position_embeddings",
    "num_attention_heads",
    "num_buckets",
    "num_hashes",
    "pad_token_id",
    "vocab_size",
    "tie_word_embeddings",
];

impl Default for RawHf {
    fn default() -> Self {
        RawHf {
            model_type: None,
            architectures: None,
            attention_head_size: 64,
            attn_layers: ["local", "lsh", "local", "lsh", "local", "lsh"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            num_hidden_layers: None,
            axial_norm_std: Some(1.0),
            axial_pos_embds: true,
            axial_pos_shape: vec![64, 64],
            axial_pos_embds_dim: vec![64, 192],
            chunk_size_feed_forward: Some(0),
            chunk_size_lm_head: Some(0),
            feed_forward_size: 512,
            hash_seed: None,
            hidden_act: "relu".to_string(),
            hidden_dropout_prob: Some(0.05),
            hidden_size: 256,
            initializer_range: Some(0.02),
            is_decoder: false,
            layer_norm_eps: 1e-12,
            local_num_chunks_before: 1,
            local_num_chunks_after: 0,
            local_attention_probs_dropout_prob: Some(0.05),
            local_attn_chunk_length: 64,
            lsh_attn_chunk_length: 64,
            lsh_attention_probs_dropout_prob: Some(0.0),
            lsh_num_chunks_before: 1,
            lsh_num_chunks_after: 0,
            max_position_embeddings: 4096,
            num_attention_heads: 12,
            num_buckets: Value::Null,
            num_hashes: 1,
            pad_token_id: Some(0),
            vocab_size: 320,
            tie_word_embeddings: Some(false),
        }
    }
}

/// Architectures whose checkpoints carry `reformer.`-prefixed body weights and an LM head.
const LM_HEAD_ARCHITECTURES: &[&str] = &["ReformerModelWithLMHead", "ReformerForMaskedLM"];

/// The class of HF's sequence-classification head.
const CLASSIFICATION_ARCHITECTURE: &str = "ReformerForSequenceClassification";

/// The class of HF's question-answering head.
const QA_ARCHITECTURE: &str = "ReformerForQuestionAnswering";

/// HF's `num_labels`: the `num_labels` key when present, else the size of
/// `id2label` (what `save_pretrained` writes: `num_labels` is a property of
/// `PretrainedConfig` computed from it), else HF's default 2.
fn hf_num_labels(
    object: &serde_json::Map<String, Value>,
    path: &Path,
) -> Result<u64, FrontendError> {
    let n = if let Some(v) = object.get("num_labels") {
        v.as_u64().ok_or_else(|| {
            FrontendError::field(
                path,
                "num_labels",
                format!("expected a positive integer, found {}", short_json(v)),
            )
        })?
    } else if let Some(v) = object.get("id2label") {
        v.as_object().map(|m| m.len() as u64).ok_or_else(|| {
            FrontendError::field(
                path,
                "id2label",
                format!(
                    "expected an object mapping label ids to names, found {}",
                    short_json(v)
                ),
            )
        })?
    } else {
        2
    };
    if n == 0 {
        let field = if object.contains_key("num_labels") {
            "num_labels"
        } else {
            "id2label"
        };
        return Err(FrontendError::field(
            path,
            field,
            "expected at least 1 label, found 0",
        ));
    }
    Ok(n)
}

/// Parses the text of a Hugging Face Reformer `config.json`.
///
/// `path` is used only in error messages. Returns the resolved [`ModelSpec`]
/// and warnings (unknown keys, settings reformc ignores or adjusts), one line each.
///
/// The head and weight prefix follow `architectures[0]`: `ReformerModelWithLMHead`
/// and `ReformerForMaskedLM` (or no `architectures`) give
/// `HeadSpec::LmHead { bias: false }` with prefix `reformer.`; `ReformerModel`
/// gives `HeadSpec::None` with prefix `""`; `ReformerForSequenceClassification`
/// gives `HeadSpec::Classification` (with HF's `num_labels`, from `id2label`
/// when the key is absent) and `ReformerForQuestionAnswering`
/// `HeadSpec::QuestionAnswering` (which needs 2 labels), both with prefix
/// `reformer.`; any other `Reformer*` class gives the body only
/// (`HeadSpec::None`, prefix `reformer.`) and a warning.
///
/// ```
/// use std::path::Path;
/// use reformc_frontend::hf_config::parse_hf_config;
/// let err = parse_hf_config(r#"{"model_type": "reformer", "hidden_act": "relu2"}"#, Path::new("c.json"))
///     .unwrap_err();
/// assert!(err.to_string().starts_with("c.json: field `hidden_act`: expected one of relu, gelu"));
/// ```
pub fn parse_hf_config(text: &str, path: &Path) -> Result<(ModelSpec, Vec<String>), FrontendError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrontendError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let Some(object) = value.as_object() else {
        return Err(FrontendError::UnknownFormat {
            path: path.to_path_buf(),
            message: format!(
                "expected a JSON object with \"model_type\": \"reformer\", found {}",
                json_kind(&value)
            ),
        });
    };
    match object.get("model_type") {
        Some(Value::String(s)) if s == "reformer" => {}
        Some(other) => {
            return Err(FrontendError::field(
                path,
                "model_type",
                format!(
                    "expected \"reformer\", found {} (for other models write a reformc model file, see docs/model-schema.md)",
                    short_json(other)
                ),
            ))
        }
        None => {
            return Err(FrontendError::field(
                path,
                "model_type",
                "missing: expected \"reformer\"",
            ))
        }
    }

    let de = &mut serde_json::Deserializer::from_str(text);
    let raw: RawHf = serde_path_to_error::deserialize(de).map_err(|e| from_json_error(path, e))?;

    let mut warnings = Vec::new();
    for key in object.keys() {
        if !RAW_KEYS.contains(&key.as_str())
            && !IGNORED_KEYS.contains(&key.as_str())
            && !key.starts_with('_')
        {
            warnings.push(format!(
                "{}: ignoring unknown key `{}`",
                path.display(),
                shown(key)
            ));
        }
    }
    let num_labels = hf_num_labels(object, path)?;
    let spec = build(raw, path, num_labels, &mut warnings)?;
    Ok((spec, warnings))
}

/// Validates the typed config and resolves it into a [`ModelSpec`].
fn build(
    raw: RawHf,
    path: &Path,
    num_labels: u64,
    warnings: &mut Vec<String>,
) -> Result<ModelSpec, FrontendError> {
    check_range(path, "vocab_size", raw.vocab_size, 1)?;
    check_range(path, "hidden_size", raw.hidden_size, 1)?;
    check_range(path, "num_attention_heads", raw.num_attention_heads, 1)?;
    check_range(path, "attention_head_size", raw.attention_head_size, 1)?;
    check_range(path, "feed_forward_size", raw.feed_forward_size, 1)?;
    check_range(
        path,
        "max_position_embeddings",
        raw.max_position_embeddings,
        1,
    )?;
    check_range(path, "num_hashes", raw.num_hashes, 1)?;
    check_range(path, "lsh_attn_chunk_length", raw.lsh_attn_chunk_length, 1)?;
    check_range(
        path,
        "local_attn_chunk_length",
        raw.local_attn_chunk_length,
        1,
    )?;
    check_range(path, "lsh_num_chunks_before", raw.lsh_num_chunks_before, 0)?;
    check_range(path, "lsh_num_chunks_after", raw.lsh_num_chunks_after, 0)?;
    check_range(
        path,
        "local_num_chunks_before",
        raw.local_num_chunks_before,
        0,
    )?;
    check_range(
        path,
        "local_num_chunks_after",
        raw.local_num_chunks_after,
        0,
    )?;

    if !(raw.layer_norm_eps.is_finite() && raw.layer_norm_eps >= 0.0) {
        return Err(FrontendError::field(
            path,
            "layer_norm_eps",
            format!(
                "expected a finite number >= 0, found {}",
                raw.layer_norm_eps
            ),
        ));
    }
    for (field, p) in [
        ("hidden_dropout_prob", raw.hidden_dropout_prob),
        (
            "local_attention_probs_dropout_prob",
            raw.local_attention_probs_dropout_prob,
        ),
        (
            "lsh_attention_probs_dropout_prob",
            raw.lsh_attention_probs_dropout_prob,
        ),
    ] {
        if let Some(p) = p {
            if !(0.0..=1.0).contains(&p) {
                return Err(FrontendError::field(
                    path,
                    field,
                    format!("expected a probability in [0, 1], found {p}"),
                ));
            }
        }
    }

    // Layers.
    if raw.attn_layers.is_empty() {
        return Err(FrontendError::field(
            path,
            "attn_layers",
            "expected at least one layer (\"lsh\" or \"local\"), found []",
        ));
    }
    let mut layers = Vec::with_capacity(raw.attn_layers.len());
    for (i, l) in raw.attn_layers.iter().enumerate() {
        layers.push(match l.as_str() {
            "lsh" => AttentionKind::Lsh,
            "local" => AttentionKind::Local,
            other => {
                return Err(FrontendError::field(
                    path,
                    format!("attn_layers[{i}]"),
                    format!("expected \"lsh\" or \"local\", found {other:?}"),
                ))
            }
        });
    }
    if let Some(n) = raw.num_hidden_layers {
        if n != layers.len() as u64 {
            return Err(FrontendError::field(
                path,
                "num_hidden_layers",
                format!(
                    "must equal the length of attn_layers ({}), found {n}",
                    layers.len()
                ),
            ));
        }
    }

    // Activation.
    let Some(activation) = activation_from_hf(&raw.hidden_act) else {
        let names: Vec<&str> = HF_ACTIVATIONS.iter().map(|(hf, _)| *hf).collect();
        let note = if HF_UNSUPPORTED_ACTIVATIONS.contains(&raw.hidden_act.as_str()) {
            " (transformers accepts it, reformc does not implement it)"
        } else {
            ""
        };
        return Err(FrontendError::field(
            path,
            "hidden_act",
            format!(
                "expected one of {}, found {:?}{note}",
                names.join(", "),
                raw.hidden_act
            ),
        ));
    };

    // Buckets.
    let buckets = parse_num_buckets(&raw.num_buckets, path)?;

    // Position embeddings.
    let position = if raw.axial_pos_embds {
        let shape = two_positive(path, "axial_pos_shape", &raw.axial_pos_shape)?;
        let dims = two_positive(path, "axial_pos_embds_dim", &raw.axial_pos_embds_dim)?;
        let sum = dims[0].saturating_add(dims[1]);
        if sum != raw.hidden_size {
            return Err(FrontendError::field(
                path,
                "axial_pos_embds_dim",
                format!(
                    "entries must sum to hidden_size={}, found {:?} (sum {sum})",
                    raw.hidden_size, raw.axial_pos_embds_dim
                ),
            ));
        }
        let positions = shape[0].saturating_mul(shape[1]);
        if positions < raw.max_position_embeddings {
            warnings.push(format!(
                "{}: axial_pos_shape {:?} covers {positions} positions, fewer than max_position_embeddings={}: sequences are limited to {positions} tokens",
                path.display(),
                raw.axial_pos_shape,
                raw.max_position_embeddings
            ));
        }
        PositionSpec::Axial { shape, dims }
    } else {
        PositionSpec::Learned
    };

    // Padding id.
    let pad_token_id = match raw.pad_token_id {
        Some(id) => {
            if id < 0 || id as u64 >= raw.vocab_size {
                return Err(FrontendError::field(
                    path,
                    "pad_token_id",
                    format!(
                        "expected a token id in 0..{} (vocab_size), found {id}",
                        raw.vocab_size
                    ),
                ));
            }
            id
        }
        None => {
            warnings.push(format!(
                "{}: pad_token_id is null; padding (to a multiple of the chunk length) uses token 0, which is masked out",
                path.display()
            ));
            0
        }
    };

    // Head and weight prefix.
    let (head, weight_prefix) = match raw.architectures.as_deref() {
        None | Some([]) => (HeadSpec::LmHead { bias: false }, "reformer.".to_string()),
        Some(archs) => {
            if archs.len() > 1 {
                warnings.push(format!(
                    "{}: architectures lists {} classes; using the first, {:?}",
                    path.display(),
                    archs.len(),
                    archs[0]
                ));
            }
            let a = archs[0].as_str();
            if LM_HEAD_ARCHITECTURES.contains(&a) {
                (HeadSpec::LmHead { bias: false }, "reformer.".to_string())
            } else if a == "ReformerModel" {
                (HeadSpec::None, String::new())
            } else if a == CLASSIFICATION_ARCHITECTURE {
                (
                    HeadSpec::Classification { num_labels },
                    "reformer.".to_string(),
                )
            } else if a == QA_ARCHITECTURE {
                // HF splits qa_outputs' last axis into exactly (start, end):
                // any other width fails in its forward.
                if num_labels != 2 {
                    return Err(FrontendError::field(
                        path,
                        "num_labels",
                        format!(
                            "{QA_ARCHITECTURE} splits qa_outputs into start and end logits, so it needs 2 labels, found {num_labels}"
                        ),
                    ));
                }
                (HeadSpec::QuestionAnswering, "reformer.".to_string())
            } else if a.starts_with("Reformer") {
                warnings.push(format!(
                    "{}: architectures[0] {a:?} has a head reformc does not compile; compiling the body only (output: last hidden state)",
                    path.display()
                ));
                (HeadSpec::None, "reformer.".to_string())
            } else {
                return Err(FrontendError::field(
                    path,
                    "architectures[0]",
                    format!(
                        "expected a Reformer class (ReformerModelWithLMHead, ReformerForMaskedLM, ReformerModel, {CLASSIFICATION_ARCHITECTURE} or {QA_ARCHITECTURE}), found {a:?}"
                    ),
                ));
            }
        }
    };

    if let Some(seed) = raw.hash_seed {
        // HF calls torch.manual_seed(hash_seed) before each LSH layer's
        // torch.randn: CPU Mersenne Twister plus a Box-Muller fill whose
        // vectorised form depends on the CPU. Reproducing that bit for bit is
        // out of scope; the draw itself is two lines of torch, so the message
        // says how to hand it to reformc.
        warnings.push(format!(
            "{}: hash_seed={seed} is not reproduced: HF seeds torch's CPU generator with it before every LSH layer's rotation draw (so every LSH layer gets torch.manual_seed({seed}); torch.randn((H, d, r, S/2))), and reformc does not implement torch's generator; without --lsh-rotations or --lsh-buckets its rotations come from its own Philox generator (--seed) and buckets differ from HF's. To match HF, write the rotations with `python scripts/hf_hash_seed_rotations.py {} -o R.npy` and pass --lsh-rotations R.npy",
            path.display(),
            path.display()
        ));
    }
    if raw.tie_word_embeddings == Some(true) {
        warnings.push(format!(
            "{}: tie_word_embeddings=true is ignored: the Reformer LM head is {} wide, the word embedding {}",
            path.display(),
            2 * raw.hidden_size,
            raw.hidden_size
        ));
    }
    Ok(ModelSpec {
        architecture: Architecture::Reversible,
        vocab_size: raw.vocab_size,
        hidden_size: raw.hidden_size,
        num_heads: raw.num_attention_heads,
        head_dim: raw.attention_head_size,
        feed_forward_size: raw.feed_forward_size,
        activation,
        layer_norm_eps: raw.layer_norm_eps,
        causal: raw.is_decoder,
        layers,
        lsh: LshSpec {
            chunk: raw.lsh_attn_chunk_length,
            before: raw.lsh_num_chunks_before,
            after: raw.lsh_num_chunks_after,
            n_hashes: raw.num_hashes,
            buckets,
        },
        local: LocalSpec {
            chunk: raw.local_attn_chunk_length,
            before: raw.local_num_chunks_before,
            after: raw.local_num_chunks_after,
        },
        position,
        max_position_embeddings: raw.max_position_embeddings,
        pad_token_id,
        head,
        weight_prefix,
        chunk_size_feed_forward: raw.chunk_size_feed_forward.filter(|&c| c > 0),
        chunk_size_lm_head: raw.chunk_size_lm_head.filter(|&c| c > 0),
        dropout: DropoutSpec {
            hidden: raw.hidden_dropout_prob.unwrap_or(0.0),
            lsh_attention: raw.lsh_attention_probs_dropout_prob.unwrap_or(0.0),
            local_attention: raw.local_attention_probs_dropout_prob.unwrap_or(0.0),
        },
    })
}

/// `num_buckets`: null (auto), an even integer >= 2, or a non-empty list of them.
fn parse_num_buckets(v: &Value, path: &Path) -> Result<BucketSpec, FrontendError> {
    let factor = |field: String, v: &Value| -> Result<u64, FrontendError> {
        match v.as_u64() {
            Some(n) if n > MAX_SIZE => Err(FrontendError::field(
                path,
                field,
                format!("must be at most {MAX_SIZE}, found {n}"),
            )),
            Some(n) if n >= 2 && n % 2 == 0 => Ok(n),
            _ => Err(FrontendError::field(
                path,
                field,
                format!("expected an even integer >= 2, found {}", short_json(v)),
            )),
        }
    };
    match v {
        Value::Null => Ok(BucketSpec::Auto),
        Value::Number(_) => Ok(BucketSpec::Factors(vec![factor(
            "num_buckets".to_string(),
            v,
        )?])),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, x)| factor(format!("num_buckets[{i}]"), x))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|f| {
                let product = f.iter().try_fold(1u64, |a, &b| a.checked_mul(b));
                match product {
                    Some(p) if p <= MAX_SIZE => Ok(BucketSpec::Factors(f)),
                    _ => Err(FrontendError::field(
                        path,
                        "num_buckets",
                        format!("the product of the factors must be at most {MAX_SIZE}, found {f:?}"),
                    )),
                }
            }),
        other => Err(FrontendError::field(
            path,
            "num_buckets",
            format!(
                "expected null (automatic), an even integer or a non-empty list of even integers, found {}",
                short_json(other)
            ),
        )),
    }
}

/// Checks that `v` has exactly two entries, each at least 1.
fn two_positive(path: &Path, field: &str, v: &[u64]) -> Result<[u64; 2], FrontendError> {
    if v.len() != 2 {
        return Err(FrontendError::field(
            path,
            field,
            format!(
                "expected 2 entries (reformc supports 2-axis axial embeddings), found {} ({v:?})",
                v.len()
            ),
        ));
    }
    for (i, &x) in v.iter().enumerate() {
        check_range(path, &format!("{field}[{i}]"), x, 1)?;
    }
    Ok([v[0], v[1]])
}

/// Text from a user's file with control characters escaped (one-line errors).
pub(crate) use reformc_tensor::shown;

/// A JSON value rendered compactly for an error message (truncated when long).
pub(crate) fn short_json(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// "an array", "a string", ... for messages about the top-level value.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(ModelSpec, Vec<String>), String> {
        parse_hf_config(text, Path::new("tests/x/config.json")).map_err(|e| e.to_string())
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error for {text}"),
            Err(e) => {
                assert!(!e.contains('\n'), "{e}");
                e
            }
        }
    }

    fn with(extra: &str) -> String {
        format!(r#"{{"model_type": "reformer", {extra}}}"#)
    }

    #[test]
    fn defaults_are_hf_5_23() {
        let (spec, warnings) = parse(r#"{"model_type": "reformer"}"#).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        use AttentionKind::{Local, Lsh};
        assert_eq!(
            spec,
            ModelSpec {
                architecture: Architecture::Reversible,
                vocab_size: 320,
                hidden_size: 256,
                num_heads: 12,
                head_dim: 64,
                feed_forward_size: 512,
                activation: Activation::Relu,
                layer_norm_eps: 1e-12,
                causal: false,
                layers: vec![Local, Lsh, Local, Lsh, Local, Lsh],
                lsh: LshSpec {
                    chunk: 64,
                    before: 1,
                    after: 0,
                    n_hashes: 1,
                    buckets: BucketSpec::Auto
                },
                local: LocalSpec {
                    chunk: 64,
                    before: 1,
                    after: 0
                },
                position: PositionSpec::Axial {
                    shape: [64, 64],
                    dims: [64, 192]
                },
                max_position_embeddings: 4096,
                pad_token_id: 0,
                head: HeadSpec::LmHead { bias: false },
                weight_prefix: "reformer.".into(),
                chunk_size_feed_forward: None,
                chunk_size_lm_head: None,
                dropout: DropoutSpec {
                    hidden: 0.05,
                    lsh_attention: 0.0,
                    local_attention: 0.05,
                },
            }
        );
    }

    #[test]
    fn raw_keys_match_the_struct() {
        // Every RAW_KEYS entry must be a field (a wrong-typed value of it is reported by path).
        for key in RAW_KEYS {
            if *key == "model_type" {
                continue;
            }
            let e = err(&with(&format!(r#""{key}": {{"x": 1}}"#)));
            assert!(e.contains(&format!("field `{key}`")), "{key}: {e}");
        }
    }

    #[test]
    fn reads_every_field() {
        let text = r#"{
          "model_type": "reformer",
          "architectures": ["ReformerForMaskedLM"],
          "attention_head_size": 8, "attn_layers": ["lsh", "local", "lsh"], "num_hidden_layers": 3,
          "axial_norm_std": 1.0, "axial_pos_embds": true, "axial_pos_shape": [8, 8], "axial_pos_embds_dim": [16, 16],
          "chunk_size_lm_head": 0, "chunk_size_feed_forward": 0, "eos_token_id": 2, "bos_token_id": null,
          "feed_forward_size": 64, "hash_seed": null, "hidden_act": "swish", "hidden_dropout_prob": 0.0,
          "hidden_size": 32, "initializer_range": 0.02, "is_decoder": true, "layer_norm_eps": 1e-5,
          "local_num_chunks_before": 2, "local_num_chunks_after": 1, "local_attention_probs_dropout_prob": 0.0,
          "local_attn_chunk_length": 16, "lsh_attn_chunk_length": 8, "lsh_attention_probs_dropout_prob": 0.0,
          "lsh_num_chunks_before": 1, "lsh_num_chunks_after": 1, "max_position_embeddings": 64,
          "num_attention_heads": 2, "num_buckets": [2, 4], "num_hashes": 4, "pad_token_id": 1,
          "vocab_size": 48, "tie_word_embeddings": false, "transformers_version": "5.23.0",
          "torch_dtype": "float32", "dtype": "float32", "_name_or_path": "x", "use_cache": true,
          "classifier_dropout": null, "id2label": {"0": "A"}, "label2id": {"A": 0},
          "output_hidden_states": false, "return_dict": true, "problem_type": null
        }"#;
        let (spec, warnings) = parse(text).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(spec.num_heads, 2);
        assert_eq!(spec.head_dim, 8);
        assert_eq!(spec.hidden_size, 32);
        assert_eq!(spec.feed_forward_size, 64);
        assert_eq!(spec.activation, Activation::Silu);
        assert!(spec.causal);
        assert_eq!(spec.layer_norm_eps, 1e-5);
        assert_eq!(
            spec.layers,
            vec![AttentionKind::Lsh, AttentionKind::Local, AttentionKind::Lsh]
        );
        assert_eq!(
            spec.lsh,
            LshSpec {
                chunk: 8,
                before: 1,
                after: 1,
                n_hashes: 4,
                buckets: BucketSpec::Factors(vec![2, 4])
            }
        );
        assert_eq!(
            spec.local,
            LocalSpec {
                chunk: 16,
                before: 2,
                after: 1
            }
        );
        assert_eq!(
            spec.position,
            PositionSpec::Axial {
                shape: [8, 8],
                dims: [16, 16]
            }
        );
        assert_eq!(spec.max_position_embeddings, 64);
        assert_eq!(spec.pad_token_id, 1);
        assert_eq!(spec.vocab_size, 48);
        assert_eq!(spec.head, HeadSpec::LmHead { bias: false });
        assert_eq!(spec.weight_prefix, "reformer.");
        assert_eq!(spec.chunk_lcm(), 16);
    }

    #[test]
    fn every_fixture_config_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut dirs: Vec<_> = std::fs::read_dir(root.join("tests/fixtures"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.push(root.join("examples/tiny-reformer"));
        let mut n = 0;
        for dir in dirs {
            let p = dir.join("config.json");
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let (spec, warnings) = parse_hf_config(&text, &p).unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            assert_eq!(spec.architecture, Architecture::Reversible);
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn num_buckets_forms() {
        let b =
            |v: &str| parse(&with(&format!(r#""num_buckets": {v}"#))).map(|(s, _)| s.lsh.buckets);
        assert_eq!(b("null").unwrap(), BucketSpec::Auto);
        assert_eq!(b("32").unwrap(), BucketSpec::Factors(vec![32]));
        assert_eq!(b("[4, 8]").unwrap(), BucketSpec::Factors(vec![4, 8]));
        assert_eq!(
            b("[4, 3]").unwrap_err(),
            "tests/x/config.json: field `num_buckets[1]`: expected an even integer >= 2, found 3"
        );
        assert_eq!(
            b("7").unwrap_err(),
            "tests/x/config.json: field `num_buckets`: expected an even integer >= 2, found 7"
        );
        assert!(b("0").unwrap_err().contains("found 0"));
        assert!(b("-4").unwrap_err().contains("found -4"));
        assert!(b("[]").unwrap_err().contains("non-empty list"));
        assert!(b(r#""auto""#).unwrap_err().contains("found \"auto\""));
    }

    #[test]
    fn malformed_json() {
        let e = err(r#"{"model_type": "reformer", "hidden_size": 256,"#);
        assert!(e.starts_with("tests/x/config.json: invalid JSON: "), "{e}");
        assert!(e.contains("line 1 column"), "{e}");
        let e = err("{\"model_type\": \"reformer\",\n \"hidden_size\": 256 256}");
        assert!(e.contains("line 2 column"), "{e}");
        let e = err("[1, 2]");
        assert_eq!(
            e,
            "tests/x/config.json: unknown model format: expected a JSON object with \"model_type\": \"reformer\", found an array"
        );
    }

    #[test]
    fn unknown_model_type() {
        let e = err(r#"{"model_type": "bert"}"#);
        assert!(
            e.starts_with(
                "tests/x/config.json: field `model_type`: expected \"reformer\", found \"bert\""
            ),
            "{e}"
        );
        let e = err(r#"{"hidden_size": 8}"#);
        assert_eq!(
            e,
            "tests/x/config.json: field `model_type`: missing: expected \"reformer\""
        );
    }

    #[test]
    fn axial_validation() {
        let e = err(&with(r#""axial_pos_embds_dim": [64, 128]"#));
        assert_eq!(e, "tests/x/config.json: field `axial_pos_embds_dim`: entries must sum to hidden_size=256, found [64, 128] (sum 192)");
        let e = err(&with(r#""axial_pos_shape": [4, 4, 4]"#));
        assert!(
            e.starts_with("tests/x/config.json: field `axial_pos_shape`: expected 2 entries"),
            "{e}"
        );
        let e = err(&with(r#""axial_pos_shape": [4, 0]"#));
        assert_eq!(
            e,
            "tests/x/config.json: field `axial_pos_shape[1]`: must be at least 1, found 0"
        );
        // Not validated when axial embeddings are off.
        let (spec, _) = parse(&with(
            r#""axial_pos_embds": false, "axial_pos_embds_dim": [1, 1]"#,
        ))
        .unwrap();
        assert_eq!(spec.position, PositionSpec::Learned);
        // Too few positions: a warning.
        let (_, w) = parse(&with(r#""axial_pos_shape": [8, 8]"#)).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("covers 64 positions"), "{w:?}");
    }

    #[test]
    fn activations() {
        let e = err(&with(r#""hidden_act": "relu2""#));
        assert_eq!(e, "tests/x/config.json: field `hidden_act`: expected one of relu, gelu, gelu_new, gelu_fast, silu, swish, tanh, sigmoid, gelu_python, gelu_pytorch_tanh, mish, relu6, quick_gelu, leaky_relu, linear, found \"relu2\" (transformers accepts it, reformc does not implement it)");
        let e = err(&with(r#""hidden_act": "mishh""#));
        assert!(e.ends_with("found \"mishh\""), "{e}");
        for (hf, ir) in HF_ACTIVATIONS {
            // Only HF's `linear` is the identity.
            assert_eq!(*ir == Activation::None, *hf == "linear", "{hf}");
            let (spec, _) = parse(&with(&format!(r#""hidden_act": "{hf}""#))).unwrap();
            assert_eq!(spec.activation, *ir);
        }
        // Every IR activation but the identity is reachable under its own name.
        for a in Activation::ALL
            .into_iter()
            .filter(|a| *a != Activation::None)
        {
            assert_eq!(activation_from_hf(a.name().unwrap()), Some(a));
        }
        let e = err(&with(r#""hidden_act": 3"#));
        assert!(
            e.starts_with("tests/x/config.json: field `hidden_act`: invalid type: integer `3`, expected a string"),
            "{e}"
        );
    }

    #[test]
    fn attn_layers_validation() {
        let e = err(&with(r#""attn_layers": ["lsh", "local", "full"]"#));
        assert_eq!(
            e,
            "tests/x/config.json: field `attn_layers[2]`: expected \"lsh\" or \"local\", found \"full\""
        );
        let e = err(&with(r#""attn_layers": ["lsh", 3]"#));
        assert!(
            e.starts_with("tests/x/config.json: field `attn_layers[1]`: invalid type: integer `3`"),
            "{e}"
        );
        let e = err(&with(r#""attn_layers": []"#));
        assert!(
            e.contains("field `attn_layers`: expected at least one layer"),
            "{e}"
        );
        let e = err(&with(r#""attn_layers": ["lsh"], "num_hidden_layers": 2"#));
        assert_eq!(
            e,
            "tests/x/config.json: field `num_hidden_layers`: must equal the length of attn_layers (1), found 2"
        );
    }

    #[test]
    fn wrong_types_and_sizes() {
        let e = err(&with(r#""hidden_size": "256""#));
        assert!(
            e.starts_with("tests/x/config.json: field `hidden_size`: invalid type: string \"256\", expected a non-negative integer"),
            "{e}"
        );
        let e = err(&with(r#""num_attention_heads": -2"#));
        assert!(
            e.starts_with(
                "tests/x/config.json: field `num_attention_heads`: invalid value: integer `-2`"
            ),
            "{e}"
        );
        let e = err(&with(r#""hidden_size": null"#));
        assert!(e.contains("field `hidden_size`: invalid type: null"), "{e}");
        for field in [
            "vocab_size",
            "hidden_size",
            "num_attention_heads",
            "attention_head_size",
            "feed_forward_size",
            "max_position_embeddings",
            "num_hashes",
            "lsh_attn_chunk_length",
            "local_attn_chunk_length",
        ] {
            let e = err(&with(&format!(r#""{field}": 0"#)));
            assert_eq!(
                e,
                format!("tests/x/config.json: field `{field}`: must be at least 1, found 0")
            );
        }
        let e = err(&with(r#""hidden_size": 4294967296"#));
        assert_eq!(
            e,
            "tests/x/config.json: field `hidden_size`: must be at most 2147483648, found 4294967296"
        );
        let e = err(&with(r#""lsh_num_chunks_before": 18446744073709551615"#));
        assert!(
            e.contains("field `lsh_num_chunks_before`: must be at most"),
            "{e}"
        );
        let e = err(&with(r#""num_buckets": [65536, 65536]"#));
        assert!(
            e.contains("field `num_buckets`: the product of the factors must be at most"),
            "{e}"
        );
        let e = err(&with(r#""axial_pos_shape": [4294967296, 1]"#));
        assert!(
            e.contains("field `axial_pos_shape[0]`: must be at most"),
            "{e}"
        );
        let e = err(&with(r#""is_decoder": "yes""#));
        assert!(
            e.contains("field `is_decoder`: invalid type: string \"yes\", expected true or false"),
            "{e}"
        );
        let e = err(&with(r#""layer_norm_eps": -1.0"#));
        assert!(
            e.contains("field `layer_norm_eps`: expected a finite number >= 0, found -1"),
            "{e}"
        );
        let e = err(&with(r#""hidden_dropout_prob": 1.5"#));
        assert!(
            e.contains("field `hidden_dropout_prob`: expected a probability"),
            "{e}"
        );
        let e = err(&with(r#""pad_token_id": 320"#));
        assert_eq!(e, "tests/x/config.json: field `pad_token_id`: expected a token id in 0..320 (vocab_size), found 320");
    }

    #[test]
    fn architectures_choose_head_and_prefix() {
        let head = |a: &str| {
            parse(&with(&format!(r#""architectures": ["{a}"]"#)))
                .map(|(s, w)| (s.head, s.weight_prefix, w.len()))
        };
        assert_eq!(
            head("ReformerModelWithLMHead").unwrap(),
            (HeadSpec::LmHead { bias: false }, "reformer.".into(), 0)
        );
        assert_eq!(
            head("ReformerModel").unwrap(),
            (HeadSpec::None, "".into(), 0)
        );
        assert_eq!(
            head("ReformerForSequenceClassification").unwrap(),
            (
                HeadSpec::Classification { num_labels: 2 },
                "reformer.".into(),
                0
            )
        );
        assert_eq!(
            head("ReformerForQuestionAnswering").unwrap(),
            (HeadSpec::QuestionAnswering, "reformer.".into(), 0)
        );
        // A Reformer class reformc has no head for: the body, with a warning.
        assert_eq!(
            head("ReformerForTokenClassification").unwrap(),
            (HeadSpec::None, "reformer.".into(), 1)
        );
        assert!(head("BertModel")
            .unwrap_err()
            .contains("field `architectures[0]`"));
    }

    #[test]
    fn num_labels_from_the_key_or_id2label() {
        let labels = |extra: &str| {
            parse(&with(&format!(
                r#""architectures": ["ReformerForSequenceClassification"]{extra}"#
            )))
            .map(|(s, _)| s.head)
        };
        let cls = |n| HeadSpec::Classification { num_labels: n };
        assert_eq!(labels("").unwrap(), cls(2));
        assert_eq!(
            labels(r#", "id2label": {"0": "a", "1": "b", "2": "c"}"#).unwrap(),
            cls(3)
        );
        assert_eq!(
            labels(r#", "num_labels": 1, "id2label": {"0": "a", "1": "b"}"#).unwrap(),
            cls(1)
        );
        assert_eq!(
            labels(r#", "num_labels": 0"#).unwrap_err(),
            "tests/x/config.json: field `num_labels`: expected at least 1 label, found 0"
        );
        assert_eq!(
            labels(r#", "num_labels": "3""#).unwrap_err(),
            "tests/x/config.json: field `num_labels`: expected a positive integer, found \"3\""
        );
        assert!(labels(r#", "id2label": [1]"#)
            .unwrap_err()
            .starts_with("tests/x/config.json: field `id2label`: expected an object"));
        let qa = |extra: &str| {
            parse(&with(&format!(
                r#""architectures": ["ReformerForQuestionAnswering"]{extra}"#
            )))
            .map(|(s, _)| s.head)
        };
        assert_eq!(
            qa(r#", "id2label": {"0": "a", "1": "b"}"#).unwrap(),
            HeadSpec::QuestionAnswering
        );
        assert_eq!(
            qa(r#", "num_labels": 3"#).unwrap_err(),
            "tests/x/config.json: field `num_labels`: ReformerForQuestionAnswering splits qa_outputs into start and end logits, so it needs 2 labels, found 3"
        );
    }

    #[test]
    fn warnings_for_unknown_and_ignored_settings() {
        let (_, w) = parse(&with(
            r#""hiden_size": 3, "hash_seed": 7, "pad_token_id": null, "tie_word_embeddings": true"#,
        ))
        .unwrap();
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w
            .iter()
            .any(|s| s.contains("ignoring unknown key `hiden_size`")));
        let seed = w.iter().find(|s| s.contains("hash_seed=7")).unwrap();
        assert!(
            seed.contains("hash_seed=7 is not reproduced")
                && seed.contains("torch.manual_seed(7)")
                && seed.contains("scripts/hf_hash_seed_rotations.py tests/x/config.json")
                && seed.ends_with("pass --lsh-rotations R.npy"),
            "{seed}"
        );
        assert!(w.iter().any(|s| s.contains("pad_token_id is null")));
        assert!(w.iter().all(|s| s.starts_with("tests/x/config.json: ")));
    }
}
