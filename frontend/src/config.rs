//! Loading a model configuration file in either supported format.
//!
//! A file with a `"format"` key is read as reformc's own model schema
//! ([`crate::schema`], `"format": "reformc-model"`); a file with a `"model_type"`
//! key as a Hugging Face `config.json` ([`crate::hf_config`]). Anything else is
//! an [`FrontendError::UnknownFormat`] error saying what was expected.
//!
//! ```no_run
//! use std::path::Path;
//! use reformc_frontend::config::load_model_config;
//! let spec = load_model_config(Path::new("tests/fixtures/causal_lsh_r1/config.json"))?;
//! println!("{} layers, width {}", spec.layers.len(), spec.hidden_size);
//! # Ok::<(), reformc_frontend::error::FrontendError>(())
//! ```

use std::path::Path;

use serde_json::Value;

use crate::error::FrontendError;
use crate::hf_config::{json_kind, parse_hf_config, short_json, shown};
use crate::schema::{parse_schema, SCHEMA_FORMAT};
use crate::spec::ModelSpec;

/// The two configuration formats reformc reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigFormat {
    /// A Hugging Face `config.json` with `"model_type": "reformer"`.
    HuggingFace,
    /// reformc's own schema, `"format": "reformc-model"` (docs/model-schema.md).
    Reformc,
}

/// Reads a model configuration file, detects its format and parses it.
///
/// Warnings (unknown keys and the like) are dropped; use
/// [`load_model_config_with_warnings`] to show them.
pub fn load_model_config(path: &Path) -> Result<ModelSpec, FrontendError> {
    load_model_config_with_warnings(path).map(|(spec, _)| spec)
}

/// Like [`load_model_config`], also returning warnings (one line each, naming the file).
pub fn load_model_config_with_warnings(
    path: &Path,
) -> Result<(ModelSpec, Vec<String>), FrontendError> {
    let text = read_config_text(path)?;
    parse_model_config(&text, path).map(|(spec, warnings, _)| (spec, warnings))
}

/// Largest configuration file read, in bytes (16 MiB): real configs are a
/// few KiB, and the bound keeps an endless input (`/dev/zero`, a pipe) or a
/// mistaken path to a weights file from being read into memory.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads a configuration file as text, refusing non-regular files and files
/// above [`MAX_CONFIG_BYTES`]; the read itself is bounded too, in case the
/// file grows meanwhile.
///
/// ```
/// use std::path::Path;
/// use reformc_frontend::config::read_config_text;
/// let e = read_config_text(Path::new("/dev/zero")).unwrap_err().to_string();
/// assert!(e.starts_with("/dev/zero: cannot read file: not a regular file"), "{e}");
/// ```
pub fn read_config_text(path: &Path) -> Result<String, FrontendError> {
    use std::io::Read;
    let refuse = |m: String| FrontendError::io(path, std::io::Error::other(m));
    let not_a_file = || refuse("not a regular file (a configuration must be a JSON file)".into());
    // Checked before opening too: opening a FIFO blocks until a writer comes.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(not_a_file());
    }
    let file = std::fs::File::open(path).map_err(|e| FrontendError::io(path, e))?;
    let meta = file.metadata().map_err(|e| FrontendError::io(path, e))?;
    if !meta.is_file() {
        return Err(not_a_file());
    }
    let too_big = |n: u64| {
        refuse(format!(
            "the file is {n} bytes, more than the {MAX_CONFIG_BYTES} bytes (16 MiB) a configuration may have"
        ))
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FrontendError::io(path, e))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        refuse(format!(
            "the file is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Parses configuration text in either format; `path` is used only in messages.
///
/// ```
/// use std::path::Path;
/// use reformc_frontend::config::{parse_model_config, ConfigFormat};
/// let (spec, _, format) = parse_model_config(r#"{"model_type": "reformer"}"#, Path::new("c.json")).unwrap();
/// assert_eq!((format, spec.hidden_size), (ConfigFormat::HuggingFace, 256));
/// let err = parse_model_config(r#"{"hidden_size": 8}"#, Path::new("c.json")).unwrap_err();
/// assert!(err.to_string().starts_with("c.json: unknown model format: expected"));
/// ```
pub fn parse_model_config(
    text: &str,
    path: &Path,
) -> Result<(ModelSpec, Vec<String>, ConfigFormat), FrontendError> {
    let format = detect_format(text, path)?;
    let (spec, warnings) = match format {
        ConfigFormat::HuggingFace => parse_hf_config(text, path)?,
        ConfigFormat::Reformc => parse_schema(text, path)?,
    };
    crate::limits::check_limits(&spec, path, format)?;
    Ok((spec, warnings, format))
}

/// Decides which format configuration text is in, without validating it further.
pub fn detect_format(text: &str, path: &Path) -> Result<ConfigFormat, FrontendError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrontendError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let expected = format!(
        "expected a Hugging Face config with \"model_type\": \"reformer\" or a reformc model file with \"format\": \"{SCHEMA_FORMAT}\""
    );
    let Some(object) = value.as_object() else {
        return Err(FrontendError::UnknownFormat {
            path: path.to_path_buf(),
            message: format!("{expected}, found {}", json_kind(&value)),
        });
    };
    if let Some(format) = object.get("format") {
        if format.as_str() == Some(SCHEMA_FORMAT) {
            return Ok(ConfigFormat::Reformc);
        }
        return Err(FrontendError::field(
            path,
            "format",
            format!("expected \"{SCHEMA_FORMAT}\", found {}", short_json(format)),
        ));
    }
    if object.contains_key("model_type") {
        return Ok(ConfigFormat::HuggingFace);
    }
    let mut keys: Vec<String> = object.keys().map(|k| shown(k)).take(8).collect();
    if object.len() > keys.len() {
        keys.push("...".into());
    }
    Err(FrontendError::UnknownFormat {
        path: path.to_path_buf(),
        message: format!(
            "{expected}, found an object with neither key (keys: {})",
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            }
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::tests::temp_dir;

    #[test]
    fn dispatches_on_format() {
        let dir = temp_dir("config-dispatch");
        let hf = dir.join("config.json");
        std::fs::write(
            &hf,
            r#"{"model_type": "reformer", "hidden_size": 128, "axial_pos_embds": false}"#,
        )
        .unwrap();
        assert_eq!(load_model_config(&hf).unwrap().hidden_size, 128);

        let own = dir.join("model.json");
        std::fs::write(
            &own,
            r#"{"format": "reformc-model", "version": 1, "architecture": "residual", "vocab_size": 10,
                "hidden_size": 8, "num_heads": 2, "head_dim": 4, "feed_forward_size": 16, "layers": ["full"]}"#,
        )
        .unwrap();
        let spec = load_model_config(&own).unwrap();
        assert_eq!(spec.architecture, crate::spec::Architecture::Residual);

        let (_, warnings) = {
            std::fs::write(&hf, r#"{"model_type": "reformer", "foo": 1}"#).unwrap();
            load_model_config_with_warnings(&hf).unwrap()
        };
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].ends_with("config.json: ignoring unknown key `foo`"),
            "{warnings:?}"
        );
    }

    #[test]
    fn reads_are_bounded() {
        let dir = temp_dir("config-bounded");
        let big = dir.join("big.json");
        // Sparse: no 16 MiB written to disk.
        std::fs::File::create(&big)
            .and_then(|f| f.set_len(MAX_CONFIG_BYTES + 1))
            .unwrap();
        let e = load_model_config(&big).unwrap_err().to_string();
        assert!(e.starts_with(&big.display().to_string()), "{e}");
        assert!(e.contains("more than the 16777216 bytes (16 MiB)"), "{e}");
        for endless in ["/dev/zero", "/dev/urandom"] {
            let e = load_model_config(Path::new(endless))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("{endless}: cannot read file: not a regular file")),
                "{e}"
            );
        }
        let e = load_model_config(&dir).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let latin1 = dir.join("latin1.json");
        std::fs::write(&latin1, b"{\"model_type\": \"r\xe9former\"}").unwrap();
        let e = load_model_config(&latin1).unwrap_err().to_string();
        assert!(
            e.contains("not UTF-8 text (invalid byte at offset 17)"),
            "{e}"
        );
    }

    #[test]
    fn errors() {
        let dir = temp_dir("config-errors");
        let missing = dir.join("nope.json");
        let e = load_model_config(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cannot read file: ", missing.display())),
            "{e}"
        );

        let p = Path::new("x.json");
        let e = parse_model_config("{\"model_type\": \"reformer\",\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.json: invalid JSON: EOF while parsing a value at line 2 column 0"),
            "{e}"
        );
        let e = parse_model_config(r#"{"a": 1, "b": 2}"#, p)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "x.json: unknown model format: expected a Hugging Face config with \"model_type\": \"reformer\" or a reformc model file with \"format\": \"reformc-model\", found an object with neither key (keys: a, b)"
        );
        let e = parse_model_config("[]", p).unwrap_err().to_string();
        assert!(e.ends_with("found an array"), "{e}");
        let e = parse_model_config(r#"{"format": "onnx"}"#, p)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "x.json: field `format`: expected \"reformc-model\", found \"onnx\""
        );
        let e = parse_model_config(r#"{"model_type": "gpt2"}"#, p)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.json: field `model_type`: expected \"reformer\", found \"gpt2\""),
            "{e}"
        );
        let dir_as_file = parse_model_config("", p).unwrap_err().to_string();
        assert!(
            dir_as_file.starts_with("x.json: invalid JSON: EOF"),
            "{dir_as_file}"
        );
        let non_utf8 = dir.join("bin.json");
        std::fs::write(&non_utf8, [0xff, 0xfe, 0x00]).unwrap();
        let e = load_model_config(&non_utf8).unwrap_err().to_string();
        assert!(e.contains("bin.json: cannot read file: "), "{e}");
    }

    #[test]
    fn never_panics_on_junk() {
        // A cheap fuzz: every prefix of valid configs, and some byte flips.
        let texts = [
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny-reformer/config.json"),
            )
            .unwrap_or_else(|_| r#"{"model_type": "reformer", "num_buckets": [2, 4]}"#.to_string()),
            r#"{"format": "reformc-model", "version": 1, "vocab_size": 10, "hidden_size": 8, "num_heads": 2,
               "head_dim": 4, "feed_forward_size": 16, "layers": ["lsh", {"type": "full", "shared_qk": true}],
               "lsh": {"buckets": [2, 4]}, "position": {"type": "axial", "shape": [4, 4], "dims": [4, 4]}}"#
                .to_string(),
        ];
        for text in &texts {
            for cut in 0..text.len() {
                if text.is_char_boundary(cut) {
                    let _ = parse_model_config(&text[..cut], Path::new("f.json"));
                }
            }
            let bytes = text.as_bytes();
            for i in 0..bytes.len() {
                for b in [b'0', b'-', b'"', b'[', b'}', b'9', b'e', b'.'] {
                    let mut v = bytes.to_vec();
                    v[i] = b;
                    if let Ok(s) = String::from_utf8(v) {
                        if let Err(e) = parse_model_config(&s, Path::new("f.json")) {
                            assert!(!e.to_string().contains('\n'));
                        }
                    }
                }
            }
        }
    }
}
