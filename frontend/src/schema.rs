//! reformc's own model schema (`"format": "reformc-model"`, `"version": 1`).
//!
//! It expresses everything a [`ModelSpec`] can: Reformer models (reversible
//! layers, LSH and local attention, axial position embeddings) and plain
//! pre-norm transformers (`"architecture": "residual"`, `"full"` attention with
//! or without a shared query/key projection). Unknown fields are rejected, and
//! every error names the field path (`layers[2].shared_qk`). The format is
//! documented, field by field, with the weight names each model expects, in
//! `docs/model-schema.md`.
//!
//! ```
//! use std::path::Path;
//! use reformc_frontend::schema::{parse_schema, to_schema_json};
//! let text = r#"{
//!   "format": "reformc-model", "version": 1, "architecture": "residual",
//!   "vocab_size": 100, "hidden_size": 64, "num_heads": 4, "head_dim": 16,
//!   "feed_forward_size": 256, "layers": ["full", "full"], "causal": true
//! }"#;
//! let (spec, _warnings) = parse_schema(text, Path::new("model.json")).unwrap();
//! assert_eq!(spec.layers.len(), 2);
//! let again = parse_schema(&to_schema_json(&spec), Path::new("again.json")).unwrap().0;
//! assert_eq!(again, spec);
//! ```

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::error::{check_range, from_json_error, FrontendError, MAX_SIZE};
use crate::spec::{
    Activation, Architecture, AttentionKind, BucketSpec, DropoutSpec, HeadSpec, LocalSpec, LshSpec,
    ModelSpec, PositionSpec,
};

/// The value of the `format` field that marks a reformc model file.
pub const SCHEMA_FORMAT: &str = "reformc-model";

/// The schema version this crate reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    format: String,
    version: u64,
    #[serde(default = "default_architecture")]
    architecture: RawArchitecture,
    vocab_size: u64,
    hidden_size: u64,
    num_heads: u64,
    head_dim: u64,
    feed_forward_size: u64,
    #[serde(default = "default_activation")]
    activation: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    causal: bool,
    layers: Vec<RawLayer>,
    #[serde(default)]
    lsh: RawLsh,
    #[serde(default)]
    local: RawLocal,
    #[serde(default)]
    position: RawPosition,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: u64,
    #[serde(default)]
    pad_token_id: i64,
    #[serde(default)]
    head: RawHead,
    #[serde(default = "default_prefix")]
    weight_prefix: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    hidden_dropout_prob: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    lsh_attention_probs_dropout_prob: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    local_attention_probs_dropout_prob: f64,
}

/// Whether a probability is 0 (left out of written schema files).
fn is_zero(p: &f64) -> bool {
    *p == 0.0
}

fn default_architecture() -> RawArchitecture {
    RawArchitecture::Reversible
}
fn default_activation() -> String {
    "relu".to_string()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_max_positions() -> u64 {
    4096
}
fn default_prefix() -> String {
    "reformer.".to_string()
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawArchitecture {
    Reversible,
    Residual,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLsh {
    chunk: u64,
    before: u64,
    after: u64,
    n_hashes: u64,
    buckets: RawBuckets,
}

impl Default for RawLsh {
    fn default() -> Self {
        RawLsh {
            chunk: 64,
            before: 1,
            after: 0,
            n_hashes: 1,
            buckets: RawBuckets(BucketSpec::Auto),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLocal {
    chunk: u64,
    before: u64,
    after: u64,
}

impl Default for RawLocal {
    fn default() -> Self {
        RawLocal {
            chunk: 64,
            before: 1,
            after: 0,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum PositionType {
    Axial,
    Learned,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPosition {
    #[serde(rename = "type")]
    kind: PositionType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shape: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dims: Option<Vec<u64>>,
}

impl Default for RawPosition {
    fn default() -> Self {
        RawPosition {
            kind: PositionType::Learned,
            shape: None,
            dims: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum HeadType {
    LmHead,
    None,
    Classification,
    QuestionAnswering,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHead {
    #[serde(rename = "type")]
    kind: HeadType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_labels: Option<u64>,
}

impl Default for RawHead {
    fn default() -> Self {
        RawHead {
            kind: HeadType::LmHead,
            bias: None,
            num_labels: None,
        }
    }
}

/// One entry of `layers`: `"lsh"`, `"local"`, `"full"` or
/// `{"type": "full", "shared_qk": true}`.
struct RawLayer(AttentionKind);

const LAYER_TYPES: &[&str] = &["lsh", "local", "full"];
const LAYER_FIELDS: &[&str] = &["type", "shared_qk"];

impl Serialize for RawLayer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            AttentionKind::Lsh => s.serialize_str("lsh"),
            AttentionKind::Local => s.serialize_str("local"),
            AttentionKind::Full { shared_qk: false } => s.serialize_str("full"),
            AttentionKind::Full { shared_qk: true } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", "full")?;
                m.serialize_entry("shared_qk", &true)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for RawLayer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawLayer;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "\"lsh\", \"local\", \"full\" or an object like {\"type\": \"full\", \"shared_qk\": true}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawLayer, E> {
                match v {
                    "lsh" => Ok(RawLayer(AttentionKind::Lsh)),
                    "local" => Ok(RawLayer(AttentionKind::Local)),
                    "full" => Ok(RawLayer(AttentionKind::Full { shared_qk: false })),
                    _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawLayer, A::Error> {
                let mut kind: Option<String> = None;
                let mut shared_qk: Option<bool> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "type" => {
                            if kind.is_some() {
                                return Err(de::Error::duplicate_field("type"));
                            }
                            kind = Some(map.next_value()?);
                        }
                        "shared_qk" => {
                            if shared_qk.is_some() {
                                return Err(de::Error::duplicate_field("shared_qk"));
                            }
                            shared_qk = Some(map.next_value()?);
                        }
                        other => return Err(de::Error::unknown_field(other, LAYER_FIELDS)),
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
                match (kind.as_str(), shared_qk) {
                    ("full", s) => Ok(RawLayer(AttentionKind::Full {
                        shared_qk: s.unwrap_or(false),
                    })),
                    ("lsh", None) => Ok(RawLayer(AttentionKind::Lsh)),
                    ("local", None) => Ok(RawLayer(AttentionKind::Local)),
                    ("lsh" | "local", Some(_)) => Err(de::Error::custom(
                        "`shared_qk` applies only to \"full\" layers (LSH layers always share the query/key projection, local layers never do)",
                    )),
                    (other, _) => Err(de::Error::unknown_variant(other, LAYER_TYPES)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `lsh.buckets`: `"auto"`, an integer, or a list of factors.
struct RawBuckets(BucketSpec);

impl Serialize for RawBuckets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            BucketSpec::Auto => s.serialize_str("auto"),
            BucketSpec::Factors(f) if f.len() == 1 => s.serialize_u64(f[0]),
            BucketSpec::Factors(f) => f.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RawBuckets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBuckets;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"auto\", an even integer or a list of even integers")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawBuckets, E> {
                if v == "auto" {
                    Ok(RawBuckets(BucketSpec::Auto))
                } else {
                    Err(E::invalid_value(Unexpected::Str(v), &self))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawBuckets, E> {
                Ok(RawBuckets(BucketSpec::Factors(vec![v])))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawBuckets, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawBuckets, A::Error> {
                let mut factors = Vec::new();
                while let Some(f) = seq.next_element::<u64>()? {
                    factors.push(f);
                }
                Ok(RawBuckets(BucketSpec::Factors(factors)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses the text of a reformc model file.
///
/// `path` is used only in messages. Returns the [`ModelSpec`] and warnings (one
/// line each). Missing optional fields take the defaults documented in
/// `docs/model-schema.md`.
///
/// ```
/// use std::path::Path;
/// use reformc_frontend::schema::parse_schema;
/// let text = r#"{"format": "reformc-model", "version": 1, "vocab_size": 10, "hidden_size": 8,
///   "num_heads": 2, "head_dim": 4, "feed_forward_size": 16, "layers": ["lsh"], "lsh": {"chunks": 8}}"#;
/// let err = parse_schema(text, Path::new("m.json")).unwrap_err().to_string();
/// assert!(err.starts_with("m.json: field `lsh.chunks`: unknown field `chunks`"), "{err}");
/// ```
pub fn parse_schema(text: &str, path: &Path) -> Result<(ModelSpec, Vec<String>), FrontendError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let raw: RawModel =
        serde_path_to_error::deserialize(&mut *de).map_err(|e| from_json_error(path, e))?;
    de.end().map_err(|e| FrontendError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut warnings = Vec::new();
    let spec = build(raw, path, &mut warnings)?;
    Ok((spec, warnings))
}

fn build(
    raw: RawModel,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<ModelSpec, FrontendError> {
    if raw.format != SCHEMA_FORMAT {
        return Err(FrontendError::field(
            path,
            "format",
            format!("expected {SCHEMA_FORMAT:?}, found {:?}", raw.format),
        ));
    }
    if raw.version != SCHEMA_VERSION {
        return Err(FrontendError::field(
            path,
            "version",
            format!(
                "expected {SCHEMA_VERSION} (the schema version this reformc reads), found {}",
                raw.version
            ),
        ));
    }
    check_range(path, "vocab_size", raw.vocab_size, 1)?;
    check_range(path, "hidden_size", raw.hidden_size, 1)?;
    check_range(path, "num_heads", raw.num_heads, 1)?;
    check_range(path, "head_dim", raw.head_dim, 1)?;
    check_range(path, "feed_forward_size", raw.feed_forward_size, 1)?;
    check_range(
        path,
        "max_position_embeddings",
        raw.max_position_embeddings,
        1,
    )?;
    check_range(path, "lsh.chunk", raw.lsh.chunk, 1)?;
    check_range(path, "lsh.n_hashes", raw.lsh.n_hashes, 1)?;
    check_range(path, "local.chunk", raw.local.chunk, 1)?;
    check_range(path, "lsh.before", raw.lsh.before, 0)?;
    check_range(path, "lsh.after", raw.lsh.after, 0)?;
    check_range(path, "local.before", raw.local.before, 0)?;
    check_range(path, "local.after", raw.local.after, 0)?;

    // `linear` is the identity, which has no IR name (a `linear` op without
    // the attribute); HF spells it the same way.
    let activation = match raw.activation.as_str() {
        "linear" => Activation::None,
        name => Activation::from_name(name).ok_or_else(|| {
            FrontendError::field(
                path,
                "activation",
                format!(
                    "expected one of {}, linear, found {:?}",
                    Activation::names(),
                    raw.activation
                ),
            )
        })?,
    };
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
            "lsh_attention_probs_dropout_prob",
            raw.lsh_attention_probs_dropout_prob,
        ),
        (
            "local_attention_probs_dropout_prob",
            raw.local_attention_probs_dropout_prob,
        ),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(FrontendError::field(
                path,
                field,
                format!("expected a probability in [0, 1], found {p}"),
            ));
        }
    }
    if raw.layers.is_empty() {
        return Err(FrontendError::field(
            path,
            "layers",
            "expected at least one layer, found []",
        ));
    }
    if let BucketSpec::Factors(factors) = &raw.lsh.buckets.0 {
        if factors.is_empty() {
            return Err(FrontendError::field(
                path,
                "lsh.buckets",
                "expected \"auto\", an even integer or a non-empty list of even integers, found []",
            ));
        }
        let single = factors.len() == 1;
        for (i, &f) in factors.iter().enumerate() {
            if f > MAX_SIZE {
                return Err(FrontendError::field(
                    path,
                    if single {
                        "lsh.buckets".to_string()
                    } else {
                        format!("lsh.buckets[{i}]")
                    },
                    format!("must be at most {MAX_SIZE}, found {f}"),
                ));
            }
            if f < 2 || f % 2 != 0 {
                let field = if single {
                    "lsh.buckets".to_string()
                } else {
                    format!("lsh.buckets[{i}]")
                };
                return Err(FrontendError::field(
                    path,
                    field,
                    format!("expected an even integer >= 2, found {f}"),
                ));
            }
        }
    }

    if let BucketSpec::Factors(factors) = &raw.lsh.buckets.0 {
        let product = factors.iter().try_fold(1u64, |a, &b| a.checked_mul(b));
        if !matches!(product, Some(p) if p <= MAX_SIZE) {
            return Err(FrontendError::field(
                path,
                "lsh.buckets",
                format!("the product of the factors must be at most {MAX_SIZE}, found {factors:?}"),
            ));
        }
    }

    let position = match raw.position.kind {
        PositionType::Learned => {
            for (name, v) in [("shape", &raw.position.shape), ("dims", &raw.position.dims)] {
                if v.is_some() {
                    return Err(FrontendError::field(
                        path,
                        format!("position.{name}"),
                        "applies only to \"type\": \"axial\" position embeddings",
                    ));
                }
            }
            PositionSpec::Learned
        }
        PositionType::Axial => {
            let shape = two_positive(path, "position.shape", raw.position.shape.as_deref())?;
            let dims = two_positive(path, "position.dims", raw.position.dims.as_deref())?;
            let sum = dims[0].saturating_add(dims[1]);
            if sum != raw.hidden_size {
                return Err(FrontendError::field(
                    path,
                    "position.dims",
                    format!(
                        "entries must sum to hidden_size={}, found {dims:?} (sum {sum})",
                        raw.hidden_size
                    ),
                ));
            }
            let positions = shape[0].saturating_mul(shape[1]);
            if positions < raw.max_position_embeddings {
                warnings.push(format!(
                    "{}: position.shape {shape:?} covers {positions} positions, fewer than max_position_embeddings={}: sequences are limited to {positions} tokens",
                    path.display(),
                    raw.max_position_embeddings
                ));
            }
            PositionSpec::Axial { shape, dims }
        }
    };

    if raw.pad_token_id < 0 || raw.pad_token_id as u64 >= raw.vocab_size {
        return Err(FrontendError::field(
            path,
            "pad_token_id",
            format!(
                "expected a token id in 0..{} (vocab_size), found {}",
                raw.vocab_size, raw.pad_token_id
            ),
        ));
    }

    if raw.head.num_labels.is_some() && raw.head.kind != HeadType::Classification {
        return Err(FrontendError::field(
            path,
            "head.num_labels",
            "applies only to \"type\": \"classification\"",
        ));
    }
    if raw.head.bias.is_some() && raw.head.kind != HeadType::LmHead {
        return Err(FrontendError::field(
            path,
            "head.bias",
            "applies only to \"type\": \"lm_head\"",
        ));
    }
    let head = match (raw.head.kind, raw.head.bias) {
        (HeadType::LmHead, bias) => HeadSpec::LmHead {
            bias: bias.unwrap_or(false),
        },
        (HeadType::None, _) => HeadSpec::None,
        (HeadType::Classification, _) => {
            let n = raw.head.num_labels.unwrap_or(2);
            check_range(path, "head.num_labels", n, 1)?;
            HeadSpec::Classification { num_labels: n }
        }
        (HeadType::QuestionAnswering, _) => HeadSpec::QuestionAnswering,
    };

    if !raw.weight_prefix.is_empty() && !raw.weight_prefix.ends_with('.') {
        warnings.push(format!(
            "{}: weight_prefix {:?} does not end with '.': tensor names will read like `{}embeddings.word_embeddings.weight`",
            path.display(),
            raw.weight_prefix,
            raw.weight_prefix
        ));
    }

    Ok(ModelSpec {
        architecture: match raw.architecture {
            RawArchitecture::Reversible => Architecture::Reversible,
            RawArchitecture::Residual => Architecture::Residual,
        },
        vocab_size: raw.vocab_size,
        hidden_size: raw.hidden_size,
        num_heads: raw.num_heads,
        head_dim: raw.head_dim,
        feed_forward_size: raw.feed_forward_size,
        activation,
        layer_norm_eps: raw.layer_norm_eps,
        causal: raw.causal,
        layers: raw.layers.into_iter().map(|l| l.0).collect(),
        lsh: LshSpec {
            chunk: raw.lsh.chunk,
            before: raw.lsh.before,
            after: raw.lsh.after,
            n_hashes: raw.lsh.n_hashes,
            buckets: raw.lsh.buckets.0,
        },
        local: LocalSpec {
            chunk: raw.local.chunk,
            before: raw.local.before,
            after: raw.local.after,
        },
        position,
        max_position_embeddings: raw.max_position_embeddings,
        pad_token_id: raw.pad_token_id,
        head,
        weight_prefix: raw.weight_prefix,
        chunk_size_feed_forward: None,
        chunk_size_lm_head: None,
        dropout: DropoutSpec {
            hidden: raw.hidden_dropout_prob,
            lsh_attention: raw.lsh_attention_probs_dropout_prob,
            local_attention: raw.local_attention_probs_dropout_prob,
        },
    })
}

fn two_positive(path: &Path, field: &str, v: Option<&[u64]>) -> Result<[u64; 2], FrontendError> {
    let Some(v) = v else {
        return Err(FrontendError::field(
            path,
            field,
            "missing: axial position embeddings need 2 entries",
        ));
    };
    if v.len() != 2 {
        return Err(FrontendError::field(
            path,
            field,
            format!("expected 2 entries, found {} ({v:?})", v.len()),
        ));
    }
    for (i, &x) in v.iter().enumerate() {
        check_range(path, &format!("{field}[{i}]"), x, 1)?;
    }
    Ok([v[0], v[1]])
}

/// Writes `spec` as a reformc model file (pretty-printed JSON, every field explicit).
///
/// [`parse_schema`] reads the result back into an equal [`ModelSpec`].
///
/// ```
/// use std::path::Path;
/// use reformc_frontend::{hf_config::parse_hf_config, schema::to_schema_json};
/// let (spec, _) = parse_hf_config(r#"{"model_type": "reformer"}"#, Path::new("c.json")).unwrap();
/// let json = to_schema_json(&spec);
/// assert!(json.contains("\"format\": \"reformc-model\""));
/// ```
pub fn to_schema_json(spec: &ModelSpec) -> String {
    let raw = RawModel {
        format: SCHEMA_FORMAT.to_string(),
        version: SCHEMA_VERSION,
        architecture: match spec.architecture {
            Architecture::Reversible => RawArchitecture::Reversible,
            Architecture::Residual => RawArchitecture::Residual,
        },
        vocab_size: spec.vocab_size,
        hidden_size: spec.hidden_size,
        num_heads: spec.num_heads,
        head_dim: spec.head_dim,
        feed_forward_size: spec.feed_forward_size,
        activation: spec.activation.name().unwrap_or("linear").to_string(),
        layer_norm_eps: spec.layer_norm_eps,
        causal: spec.causal,
        layers: spec.layers.iter().cloned().map(RawLayer).collect(),
        lsh: RawLsh {
            chunk: spec.lsh.chunk,
            before: spec.lsh.before,
            after: spec.lsh.after,
            n_hashes: spec.lsh.n_hashes,
            buckets: RawBuckets(spec.lsh.buckets.clone()),
        },
        local: RawLocal {
            chunk: spec.local.chunk,
            before: spec.local.before,
            after: spec.local.after,
        },
        position: match &spec.position {
            PositionSpec::Axial { shape, dims } => RawPosition {
                kind: PositionType::Axial,
                shape: Some(shape.to_vec()),
                dims: Some(dims.to_vec()),
            },
            PositionSpec::Learned => RawPosition::default(),
        },
        max_position_embeddings: spec.max_position_embeddings,
        pad_token_id: spec.pad_token_id,
        hidden_dropout_prob: spec.dropout.hidden,
        lsh_attention_probs_dropout_prob: spec.dropout.lsh_attention,
        local_attention_probs_dropout_prob: spec.dropout.local_attention,
        head: match spec.head {
            HeadSpec::LmHead { bias } => RawHead {
                kind: HeadType::LmHead,
                bias: Some(bias),
                num_labels: None,
            },
            HeadSpec::None => RawHead {
                kind: HeadType::None,
                bias: None,
                num_labels: None,
            },
            HeadSpec::Classification { num_labels } => RawHead {
                kind: HeadType::Classification,
                bias: None,
                num_labels: Some(num_labels),
            },
            HeadSpec::QuestionAnswering => RawHead {
                kind: HeadType::QuestionAnswering,
                bias: None,
                num_labels: None,
            },
        },
        weight_prefix: spec.weight_prefix.clone(),
    };
    // Serializing these plain structs to a String cannot fail (no maps with
    // non-string keys, no non-finite floats reach here from a validated spec;
    // a NaN eps would be written as null and rejected on reading).
    serde_json::to_string_pretty(&raw).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf_config::parse_hf_config;

    const MINIMAL: &str = r#"{"format": "reformc-model", "version": 1, "vocab_size": 100,
        "hidden_size": 64, "num_heads": 4, "head_dim": 16, "feed_forward_size": 256, "layers": ["lsh"]}"#;

    /// MINIMAL with the fields of `extra` (a JSON object's body) set or replaced.
    fn with(extra: &str) -> String {
        let mut base: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
        let extra: serde_json::Value = serde_json::from_str(&format!("{{{extra}}}")).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base.to_string()
    }

    fn parse(text: &str) -> Result<ModelSpec, String> {
        parse_schema(text, Path::new("m.json"))
            .map(|(s, _)| s)
            .map_err(|e| {
                let s = e.to_string();
                assert!(!s.contains('\n'), "{s}");
                s
            })
    }

    fn round_trip(spec: &ModelSpec) {
        let json = to_schema_json(spec);
        let back = parse(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        assert_eq!(&back, spec, "{json}");
    }

    #[test]
    fn defaults() {
        let spec = parse(&with("")).unwrap();
        assert_eq!(spec.architecture, Architecture::Reversible);
        assert_eq!(spec.activation, Activation::Relu);
        assert_eq!(spec.layer_norm_eps, 1e-12);
        assert!(!spec.causal);
        assert_eq!(
            spec.lsh,
            LshSpec {
                chunk: 64,
                before: 1,
                after: 0,
                n_hashes: 1,
                buckets: BucketSpec::Auto
            }
        );
        assert_eq!(
            spec.local,
            LocalSpec {
                chunk: 64,
                before: 1,
                after: 0
            }
        );
        assert_eq!(spec.position, PositionSpec::Learned);
        assert_eq!(spec.max_position_embeddings, 4096);
        assert_eq!(spec.pad_token_id, 0);
        assert_eq!(spec.head, HeadSpec::LmHead { bias: false });
        assert_eq!(spec.weight_prefix, "reformer.");
    }

    #[test]
    fn round_trips() {
        let base = parse(&with("")).unwrap();
        round_trip(&base);
        let mut s = base.clone();
        s.architecture = Architecture::Residual;
        s.layers = vec![
            AttentionKind::Full { shared_qk: true },
            AttentionKind::Full { shared_qk: false },
            AttentionKind::Lsh,
            AttentionKind::Local,
        ];
        s.causal = true;
        s.activation = Activation::GeluNew;
        s.layer_norm_eps = 1e-5;
        s.lsh = LshSpec {
            chunk: 32,
            before: 2,
            after: 1,
            n_hashes: 8,
            buckets: BucketSpec::Factors(vec![4, 8]),
        };
        s.local = LocalSpec {
            chunk: 16,
            before: 0,
            after: 3,
        };
        s.position = PositionSpec::Axial {
            shape: [16, 256],
            dims: [16, 48],
        };
        s.pad_token_id = 7;
        s.head = HeadSpec::None;
        s.weight_prefix = String::new();
        round_trip(&s);
        s.lsh.buckets = BucketSpec::Factors(vec![32]);
        s.head = HeadSpec::LmHead { bias: true };
        round_trip(&s);
        s.head = HeadSpec::Classification { num_labels: 5 };
        round_trip(&s);
        s.head = HeadSpec::QuestionAnswering;
        s.activation = Activation::None; // HF's `linear`
        round_trip(&s);
        s.activation = Activation::Mish;
        round_trip(&s);
        for eps in [1e-12, 1e-6, 1e-5, 0.1, 3e-7] {
            s.layer_norm_eps = eps;
            round_trip(&s);
        }
        // Every HF default and fixture config round-trips too.
        let (hf, _) =
            parse_hf_config(r#"{"model_type": "reformer"}"#, Path::new("c.json")).unwrap();
        round_trip(&hf);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        for dir in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let p = dir.path().join("config.json");
            if let Ok(text) = std::fs::read_to_string(&p) {
                round_trip(&parse_hf_config(&text, &p).unwrap().0);
            }
        }
    }

    #[test]
    fn layer_forms() {
        let layers = |v: &str| parse(&with(&format!(r#""layers": {v}"#))).map(|s| s.layers);
        assert_eq!(
            layers(r#"["lsh", "local", "full", {"type": "full", "shared_qk": true}, {"type": "full"}, {"type": "lsh"}]"#)
                .unwrap(),
            vec![
                AttentionKind::Lsh,
                AttentionKind::Local,
                AttentionKind::Full { shared_qk: false },
                AttentionKind::Full { shared_qk: true },
                AttentionKind::Full { shared_qk: false },
                AttentionKind::Lsh,
            ]
        );
        let e = layers(r#"["lsh", "dense"]"#).unwrap_err();
        assert!(
            e.starts_with("m.json: field `layers[1]`: invalid value: string \"dense\", expected \"lsh\", \"local\", \"full\""),
            "{e}"
        );
        let e = layers(r#"[{"type": "full", "shared": true}]"#).unwrap_err();
        assert!(
            e.starts_with("m.json: field `layers[0].shared`: unknown field `shared`, expected `type` or `shared_qk`"),
            "{e}"
        );
        let e = layers(r#"[{"type": "full", "shared_qk": 1}]"#).unwrap_err();
        assert!(
            e.starts_with("m.json: field `layers[0].shared_qk`: invalid type: integer `1`, expected true or false"),
            "{e}"
        );
        let e = layers(r#"["lsh", {"type": "lsh", "shared_qk": true}]"#).unwrap_err();
        assert!(
            e.starts_with("m.json: field `layers[1]`: `shared_qk` applies only to \"full\""),
            "{e}"
        );
        let e = layers(r#"[{"shared_qk": true}]"#).unwrap_err();
        assert!(
            e.starts_with("m.json: field `layers[0].type`: missing field `type`"),
            "{e}"
        );
        let e = layers(r#"[{"type": "sparse"}]"#).unwrap_err();
        assert!(
            e.starts_with("m.json: field `layers[0]`: unknown variant `sparse`"),
            "{e}"
        );
        let e = layers("[]").unwrap_err();
        assert_eq!(
            e,
            "m.json: field `layers`: expected at least one layer, found []"
        );
    }

    #[test]
    fn bucket_forms() {
        let b =
            |v: &str| parse(&with(&format!(r#""lsh": {{"buckets": {v}}}"#))).map(|s| s.lsh.buckets);
        assert_eq!(b(r#""auto""#).unwrap(), BucketSpec::Auto);
        assert_eq!(b("16").unwrap(), BucketSpec::Factors(vec![16]));
        assert_eq!(b("[2, 4]").unwrap(), BucketSpec::Factors(vec![2, 4]));
        assert_eq!(
            b("[2, 5]").unwrap_err(),
            "m.json: field `lsh.buckets[1]`: expected an even integer >= 2, found 5"
        );
        assert_eq!(
            b("9").unwrap_err(),
            "m.json: field `lsh.buckets`: expected an even integer >= 2, found 9"
        );
        assert!(b("[]").unwrap_err().contains("non-empty list"));
        assert!(b("null")
            .unwrap_err()
            .starts_with("m.json: field `lsh.buckets`: invalid type: null"));
        assert!(b("[2, \"x\"]")
            .unwrap_err()
            .starts_with("m.json: field `lsh.buckets[1]`: invalid type: string"));
        assert!(b("-2").unwrap_err().contains("invalid value: integer `-2`"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#""hidden_size": 0"#, "m.json: field `hidden_size`: must be at least 1, found 0"),
            (r#""architecture": "recurrent""#, "m.json: field `architecture`: unknown variant `recurrent`, expected `reversible` or `residual`"),
            (r#""activation": "swish""#, "m.json: field `activation`: expected one of relu, gelu, gelu_new, gelu_fast, silu, tanh, sigmoid, mish, relu6, quick_gelu, leaky_relu, linear, found \"swish\""),
            (r#""lsh": {"chunk": 0}"#, "m.json: field `lsh.chunk`: must be at least 1, found 0"),
            (r#""local": {"chunk": "8"}"#, "m.json: field `local.chunk`: invalid type: string \"8\", expected a non-negative integer"),
            (r#""position": {"type": "axial", "shape": [8, 8], "dims": [32, 16]}"#, "m.json: field `position.dims`: entries must sum to hidden_size=64, found [32, 16] (sum 48)"),
            (r#""position": {"type": "axial", "shape": [8, 8, 2], "dims": [32, 32]}"#, "m.json: field `position.shape`: expected 2 entries, found 3 ([8, 8, 2])"),
            (r#""position": {"type": "axial", "dims": [32, 32]}"#, "m.json: field `position.shape`: missing: axial position embeddings need 2 entries"),
            (r#""position": {"type": "learned", "dims": [32, 32]}"#, "m.json: field `position.dims`: applies only to \"type\": \"axial\" position embeddings"),
            (r#""position": {"type": "rotary"}"#, "m.json: field `position.type`: unknown variant `rotary`, expected `axial` or `learned`"),
            (r#""head": {"type": "none", "bias": true}"#, "m.json: field `head.bias`: applies only to \"type\": \"lm_head\""),
            (r#""head": {"type": "lm_head", "bias": true, "tied": false}"#, "m.json: field `head.tied`: unknown field `tied`, expected one of `type`, `bias`, `num_labels`"),
            (r#""head": {"type": "none", "num_labels": 3}"#, "m.json: field `head.num_labels`: applies only to \"type\": \"classification\""),
            (r#""head": {"type": "classification", "num_labels": 0}"#, "m.json: field `head.num_labels`: must be at least 1, found 0"),
            (r#""head": {"type": "question_answering", "bias": true}"#, "m.json: field `head.bias`: applies only to \"type\": \"lm_head\""),
            (r#""num_heads": 2147483649"#, "m.json: field `num_heads`: must be at most 2147483648, found 2147483649"),
            (r#""local": {"after": 2147483649}"#, "m.json: field `local.after`: must be at most 2147483648, found 2147483649"),
            (r#""lsh": {"buckets": [65536, 65536]}"#, "m.json: field `lsh.buckets`: the product of the factors must be at most 2147483648, found [65536, 65536]"),
            (r#""pad_token_id": 100"#, "m.json: field `pad_token_id`: expected a token id in 0..100 (vocab_size), found 100"),
            (r#""model_type": "reformer""#, "m.json: field `model_type`: unknown field `model_type`"),
        ];
        for (extra, want) in cases {
            let e = parse(&with(extra)).unwrap_err();
            assert!(e.starts_with(want), "{extra}: {e}");
        }
        let text = with(r#""version": 2"#);
        assert_eq!(
            parse(&text).unwrap_err(),
            "m.json: field `version`: expected 1 (the schema version this reformc reads), found 2"
        );
        let text = with(r#""format": "reformer""#);
        assert_eq!(
            parse(&text).unwrap_err(),
            "m.json: field `format`: expected \"reformc-model\", found \"reformer\""
        );
        let text = MINIMAL.replace("\"hidden_size\": 64,", "");
        assert!(parse(&text)
            .unwrap_err()
            .starts_with("m.json: field `hidden_size`: missing field `hidden_size`"));
        let e = parse(&format!("{MINIMAL} trailing")).unwrap_err();
        assert!(
            e.starts_with("m.json: invalid JSON: trailing characters at line"),
            "{e}"
        );
        let e = parse(&MINIMAL.replace("\"version\": 1,", "\"version\": 1, \"version\": 1,"))
            .unwrap_err();
        assert!(
            e.starts_with("m.json: field `version`: duplicate field `version`"),
            "{e}"
        );
        let e = parse(&MINIMAL.replace("\"lsh\"]", "\"lsh\",]")).unwrap_err();
        assert!(
            e.starts_with("m.json: invalid JSON: trailing comma at line 2 column"),
            "{e}"
        );
    }

    #[test]
    fn doc_example_parses() {
        let doc = include_str!("../../docs/model-schema.md");
        let mut specs = Vec::new();
        for block in doc.split("```json").skip(1) {
            let json = block.split("```").next().unwrap_or("");
            if !json.contains("\"format\": \"reformc-model\"") {
                continue;
            }
            let (spec, warnings) = parse_schema(json, Path::new("doc.json")).unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            round_trip(&spec);
            specs.push(spec);
        }
        assert!(specs.len() >= 2, "the doc should hold complete examples");
        // The first example is the HF config of examples/tiny-reformer.
        let hf =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny-reformer/config.json");
        if let Ok(text) = std::fs::read_to_string(&hf) {
            assert_eq!(parse_hf_config(&text, &hf).unwrap().0, specs[0]);
        }
    }
}
