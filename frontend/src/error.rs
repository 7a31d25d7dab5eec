//! [`FrontendError`]: every way reading a model's configuration or weights can fail.
//!
//! Each variant renders as exactly one line that names the file, the field path
//! (`attn_layers[2]`, `lsh.buckets[1]`) or tensor name, what was expected and
//! what was found:
//!
//! ```text
//! tests/x/config.json: field `axial_pos_embds_dim`: entries must sum to hidden_size=256, found [64, 128] (sum 192)
//! model.safetensors: tensor `reformer.encoder.layer_norm.weight`: expected shape [512], found [256] (and 2 more problems)
//! ```
//!
//! No function of this crate panics on bad input; it returns one of these.

use std::path::{Path, PathBuf};

/// An error reading a model configuration (`config.json`, reformc's model
/// schema) or a `.safetensors` weight file.
///
/// ```
/// use reformc_frontend::error::FrontendError;
/// let e = FrontendError::field("config.json", "hidden_size", "must be at least 1, found 0");
/// assert_eq!(e.to_string(), "config.json: field `hidden_size`: must be at least 1, found 0");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The file could not be opened, read or memory-mapped.
    #[error("{path}: cannot read file: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },

    /// The file is not valid JSON (the message carries line and column).
    #[error("{path}: invalid JSON: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's description, e.g. `expected `,` or `}` at line 3 column 5`.
        message: String,
    },

    /// The JSON is neither a Hugging Face Reformer config nor a reformc model file.
    #[error("{path}: unknown model format: {message}")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        message: String,
    },

    /// A configuration field is missing, has the wrong JSON type or an invalid value.
    #[error("{path}: field `{field}`: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field path, e.g. `attn_layers[2]` or `position.dims`.
        field: String,
        /// What was expected and what was found.
        message: String,
    },

    /// The file is not a valid safetensors container (bad header, truncated data, ...).
    #[error("{path}: not a valid safetensors file: {message}")]
    WeightFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A checkpoint's files cannot be found or do not agree: a folder without
    /// weights, a PyTorch pickle, shards that disagree with their index.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong, and how to fix it.
        message: String,
    },

    /// A tensor the model needs is absent from the weight file.
    #[error("{path}: tensor `{tensor}`: missing (expected F32 of shape {expected:?}){hint}{}", more_suffix(*more))]
    MissingTensor {
        /// The weight file.
        path: PathBuf,
        /// The tensor's full name.
        tensor: String,
        /// The shape the model needs.
        expected: Vec<u64>,
        /// Empty, or a hint such as `; the file has `reformer.X`: is the weight prefix right?`.
        hint: String,
        /// How many further problems [`crate::weights::WeightFile::check`] found.
        more: usize,
    },

    /// A tensor has a different shape from the one the model needs.
    #[error("{path}: tensor `{tensor}`: expected shape {expected:?}, found {found:?}{}", more_suffix(*more))]
    TensorShape {
        /// The weight file.
        path: PathBuf,
        /// The tensor's full name.
        tensor: String,
        /// The shape the model needs.
        expected: Vec<u64>,
        /// The shape in the file.
        found: Vec<u64>,
        /// How many further problems were found.
        more: usize,
    },

    /// A tensor is stored with an element type reformc cannot load as a float
    /// weight (F32, or F16, BF16 and F64, converted at load).
    #[error("{path}: tensor `{tensor}`: expected dtype F32 (or F16, BF16, F64, converted at load), found {found}{}", more_suffix(*more))]
    TensorDtype {
        /// The weight file.
        path: PathBuf,
        /// The tensor's full name.
        tensor: String,
        /// The dtype in the file (safetensors spelling: `F16`, `BF16`, `F64`, ...).
        found: String,
        /// How many further problems were found.
        more: usize,
    },

    /// The weight file holds a tensor the model does not use.
    #[error("{path}: tensor `{tensor}`: unexpected tensor, not used by this model{}", more_suffix(*more))]
    UnexpectedTensor {
        /// The weight file.
        path: PathBuf,
        /// The tensor's full name.
        tensor: String,
        /// How many further problems were found.
        more: usize,
    },

    /// A tensor was requested by name but the file has none of that name.
    #[error("{path}: tensor `{tensor}`: not found (the file has {count} tensors)")]
    NoSuchTensor {
        /// The weight file.
        path: PathBuf,
        /// The requested name.
        tensor: String,
        /// How many tensors the file has.
        count: usize,
    },
}

fn more_suffix(more: usize) -> String {
    match more {
        0 => String::new(),
        1 => " (and 1 more problem)".to_string(),
        n => format!(" (and {n} more problems)"),
    }
}

impl FrontendError {
    /// A [`FrontendError::Field`] error.
    ///
    /// ```
    /// use reformc_frontend::error::FrontendError;
    /// let e = FrontendError::field("c.json", "attn_layers[2]", "expected \"lsh\" or \"local\", found \"full\"");
    /// assert!(e.to_string().starts_with("c.json: field `attn_layers[2]`: "));
    /// ```
    pub fn field(
        path: impl AsRef<Path>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        FrontendError::Field {
            path: path.as_ref().to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// A [`FrontendError::Io`] error for `path`.
    pub fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        FrontendError::Io {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FrontendError::Io { path, .. }
            | FrontendError::Json { path, .. }
            | FrontendError::UnknownFormat { path, .. }
            | FrontendError::Field { path, .. }
            | FrontendError::WeightFile { path, .. }
            | FrontendError::Checkpoint { path, .. }
            | FrontendError::MissingTensor { path, .. }
            | FrontendError::TensorShape { path, .. }
            | FrontendError::TensorDtype { path, .. }
            | FrontendError::UnexpectedTensor { path, .. }
            | FrontendError::NoSuchTensor { path, .. } => path,
        }
    }
}

/// The largest size or count a configuration may give (2^31): products of two
/// sizes then fit in a `u64`, so later stages can multiply them without overflow.
pub const MAX_SIZE: u64 = 1 << 31;

/// Checks `min <= v <= MAX_SIZE` for a configuration field.
pub(crate) fn check_range(path: &Path, field: &str, v: u64, min: u64) -> Result<(), FrontendError> {
    if v < min {
        Err(FrontendError::field(
            path,
            field,
            format!("must be at least {min}, found {v}"),
        ))
    } else if v > MAX_SIZE {
        Err(FrontendError::field(
            path,
            field,
            format!("must be at most {MAX_SIZE}, found {v}"),
        ))
    } else {
        Ok(())
    }
}

/// Turns a `serde_path_to_error` failure from deserializing JSON text into a
/// one-line [`FrontendError`]: syntax errors become [`FrontendError::Json`],
/// type and value errors become [`FrontendError::Field`] with the field path.
/// For `unknown field` and `missing field` errors the offending field is
/// appended to the path.
pub(crate) fn from_json_error(
    path: &Path,
    err: serde_path_to_error::Error<serde_json::Error>,
) -> FrontendError {
    let field_path = err.path().to_string();
    let inner = err.into_inner();
    use serde_json::error::Category;
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => FrontendError::Json {
            path: path.to_path_buf(),
            message: inner.to_string(),
        },
        Category::Data => {
            let message = friendly_types(&inner.to_string());
            let mut field = if field_path == "." {
                String::new()
            } else {
                field_path
            };
            for prefix in ["unknown field `", "missing field `", "duplicate field `"] {
                if let Some(rest) = message.strip_prefix(prefix) {
                    if let Some(end) = rest.find('`') {
                        let name = &rest[..end];
                        // serde_path_to_error already records keys it has seen.
                        let recorded = field == name || field.ends_with(&format!(".{name}"));
                        if !recorded {
                            if !field.is_empty() {
                                field.push('.');
                            }
                            field.push_str(name);
                        }
                    }
                }
            }
            if field.is_empty() {
                field.push_str("(top level)");
            }
            // serde quotes unknown keys and variants verbatim.
            FrontendError::Field {
                path: path.to_path_buf(),
                field: crate::hf_config::shown(&field),
                message: crate::hf_config::shown(&message),
            }
        }
    }
}

/// Rewrites Rust type names in serde messages into JSON terms.
fn friendly_types(message: &str) -> String {
    message
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected a boolean", "expected true or false")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_renders_one_line_with_the_path() {
        let p = PathBuf::from("dir/f.json");
        let errors = vec![
            FrontendError::io(&p, std::io::Error::from(std::io::ErrorKind::NotFound)),
            FrontendError::Json {
                path: p.clone(),
                message: "EOF while parsing an object at line 1 column 1".into(),
            },
            FrontendError::UnknownFormat {
                path: p.clone(),
                message: "x".into(),
            },
            FrontendError::field(&p, "a[1]", "bad"),
            FrontendError::WeightFile {
                path: p.clone(),
                message: "truncated".into(),
            },
            FrontendError::Checkpoint {
                path: p.clone(),
                message: "a PyTorch pickle".into(),
            },
            FrontendError::MissingTensor {
                path: p.clone(),
                tensor: "t".into(),
                expected: vec![2, 3],
                hint: String::new(),
                more: 2,
            },
            FrontendError::TensorShape {
                path: p.clone(),
                tensor: "t".into(),
                expected: vec![2],
                found: vec![3],
                more: 1,
            },
            FrontendError::TensorDtype {
                path: p.clone(),
                tensor: "t".into(),
                found: "F16".into(),
                more: 0,
            },
            FrontendError::UnexpectedTensor {
                path: p.clone(),
                tensor: "t".into(),
                more: 0,
            },
            FrontendError::NoSuchTensor {
                path: p.clone(),
                tensor: "t".into(),
                count: 3,
            },
        ];
        for e in &errors {
            let s = e.to_string();
            assert!(s.starts_with("dir/f.json: "), "{s}");
            assert!(!s.contains('\n'), "{s}");
            assert_eq!(e.path(), p.as_path());
        }
        assert_eq!(
            errors[6].to_string(),
            "dir/f.json: tensor `t`: missing (expected F32 of shape [2, 3]) (and 2 more problems)"
        );
        assert_eq!(
            errors[7].to_string(),
            "dir/f.json: tensor `t`: expected shape [2], found [3] (and 1 more problem)"
        );
    }

    #[test]
    fn json_errors_carry_path_and_position() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            a: Vec<u64>,
        }
        let parse = |t: &str| {
            let de = &mut serde_json::Deserializer::from_str(t);
            serde_path_to_error::deserialize::<_, S>(de)
                .map_err(|e| from_json_error(Path::new("f.json"), e))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            parse(r#"{"a": [1, "x"]}"#),
            "f.json: field `a[1]`: invalid type: string \"x\", expected a non-negative integer at line 1 column 13"
        );
        assert!(parse(r#"{"a": [1,"#).starts_with("f.json: invalid JSON: EOF while parsing"));
        let e = parse(r#"{"a": [], "b": 1}"#);
        assert!(e.starts_with("f.json: field `b`: unknown field `b`"), "{e}");
        assert!(parse(r#"{}"#).starts_with("f.json: field `a`: missing field `a`"));
    }
}
