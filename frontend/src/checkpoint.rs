//! Finding a checkpoint's files: Hugging Face folders (as `save_pretrained`
//! writes them), sharded safetensors checkpoints, and the formats reformc
//! cannot read (PyTorch pickles), which get the one-line conversion.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::FrontendError;
use crate::hf_config::shown;

/// The single-file weights name `save_pretrained` writes.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index `save_pretrained` writes beside the shards of a large checkpoint.
pub const SHARD_INDEX_FILE: &str = "model.safetensors.index.json";
/// The configuration file of a Hugging Face folder.
pub const CONFIG_FILE: &str = "config.json";

/// Where a model's weights are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightSource {
    /// One `.safetensors` file.
    File(PathBuf),
    /// A `model.safetensors.index.json` naming the shard of each tensor.
    Sharded(PathBuf),
}

/// Resolves a weights path: a `.safetensors` file, a shard index
/// (`*.safetensors.index.json`), or a folder holding either
/// (`model.safetensors` first). PyTorch pickles (`.bin`, `.pt`, `.pth`, or a
/// folder with only `pytorch_model.bin`) are refused with the command that
/// converts them.
///
/// ```
/// use std::path::{Path, PathBuf};
/// use reformc_frontend::checkpoint::{locate_weights, WeightSource};
/// let w = locate_weights(Path::new("model.safetensors")).unwrap();
/// assert_eq!(w, WeightSource::File(PathBuf::from("model.safetensors")));
/// let e = locate_weights(Path::new("pytorch_model.bin")).unwrap_err().to_string();
/// assert!(e.contains("save_file"));
/// ```
pub fn locate_weights(path: &Path) -> Result<WeightSource, FrontendError> {
    if path.is_dir() {
        return locate_in_folder(path);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".index.json") {
        return Ok(WeightSource::Sharded(path.to_path_buf()));
    }
    if [".bin", ".pt", ".pth", ".ckpt"]
        .iter()
        .any(|ext| name.ends_with(ext))
    {
        return Err(pickle_error(path));
    }
    Ok(WeightSource::File(path.to_path_buf()))
}

/// The weights inside a Hugging Face folder.
fn locate_in_folder(dir: &Path) -> Result<WeightSource, FrontendError> {
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        return Ok(WeightSource::File(single));
    }
    let index = dir.join(SHARD_INDEX_FILE);
    if index.exists() {
        return Ok(WeightSource::Sharded(index));
    }
    let pickle = dir.join("pytorch_model.bin");
    if pickle.exists() {
        return Err(pickle_error(&pickle));
    }
    Err(FrontendError::Checkpoint {
        path: dir.to_path_buf(),
        message: format!(
            "the folder has neither {WEIGHTS_FILE} nor {SHARD_INDEX_FILE} (as Hugging Face's save_pretrained writes them)"
        ),
    })
}

/// reformc reads safetensors only: unpickling runs arbitrary code.
fn pickle_error(path: &Path) -> FrontendError {
    let out = path.with_file_name(WEIGHTS_FILE);
    FrontendError::Checkpoint {
        path: path.to_path_buf(),
        message: format!(
            "a PyTorch pickle, which reformc does not read (loading one can run arbitrary code); convert it once with: python -c \"import torch, safetensors.torch as st; sd = torch.load('{}', map_location='cpu', weights_only=True); st.save_file({{k: v.contiguous().clone() for k, v in sd.items()}}, '{}')\"",
            path.display(),
            out.display()
        ),
    }
}

/// The configuration and weights of a command's model arguments: `config`
/// may be a Hugging Face folder, whose `config.json` is then the
/// configuration and whose weights (if any) the default for `weights`.
///
/// ```
/// use std::path::{Path, PathBuf};
/// use reformc_frontend::checkpoint::model_paths;
/// let (c, w) = model_paths(Path::new("config.json"), Some(Path::new("w.safetensors"))).unwrap();
/// assert_eq!((c, w), (PathBuf::from("config.json"), Some(PathBuf::from("w.safetensors"))));
/// ```
pub fn model_paths(
    config: &Path,
    weights: Option<&Path>,
) -> Result<(PathBuf, Option<PathBuf>), FrontendError> {
    if !config.is_dir() {
        return Ok((config.to_path_buf(), weights.map(Path::to_path_buf)));
    }
    let file = config.join(CONFIG_FILE);
    if !file.is_file() {
        return Err(FrontendError::Checkpoint {
            path: config.to_path_buf(),
            message: format!(
                "a folder without {CONFIG_FILE}: pass a Hugging Face model folder (as save_pretrained writes it) or the config file itself"
            ),
        });
    }
    let weights = match weights {
        Some(w) => Some(w.to_path_buf()),
        None => folder_has_weights(config).then(|| config.to_path_buf()),
    };
    Ok((file, weights))
}

/// Whether a folder holds weights reformc can find (or a pickle it explains).
fn folder_has_weights(dir: &Path) -> bool {
    [WEIGHTS_FILE, SHARD_INDEX_FILE, "pytorch_model.bin"]
        .iter()
        .any(|f| dir.join(f).exists())
}

/// The model's name (in signatures and headers): the config's file stem, or
/// its folder's name for a `config.json`.
///
/// ```
/// use std::path::Path;
/// use reformc_frontend::checkpoint::model_name;
/// assert_eq!(model_name(Path::new("models/tiny.json")), "tiny");
/// ```
pub fn model_name(config: &Path) -> String {
    let stem = config.file_stem().map(|s| s.to_string_lossy().into_owned());
    match stem.as_deref() {
        Some("config") | None => config
            .parent()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into()),
        Some(s) => s.to_string(),
    }
}

/// Reads a shard index: each tensor's shard file, resolved beside the index.
///
/// The index is JSON with a `weight_map` object from tensor name to shard
/// file name (a plain name, not a path: a shard outside the folder is refused).
pub fn read_shard_index(index: &Path) -> Result<BTreeMap<String, PathBuf>, FrontendError> {
    let bad = |message: String| FrontendError::Checkpoint {
        path: index.to_path_buf(),
        message: shown(&message),
    };
    let text = std::fs::read_to_string(index).map_err(|e| FrontendError::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            bad("expected an object `weight_map` from tensor name to shard file".into())
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut out = BTreeMap::new();
    for (name, shard) in map {
        let Some(file) = shard.as_str() else {
            return Err(bad(format!(
                "weight_map[{name:?}]: expected a shard file name (string), found {shard}"
            )));
        };
        let plain = Path::new(file)
            .file_name()
            .is_some_and(|n| n == std::ffi::OsStr::new(file));
        if !plain {
            return Err(bad(format!(
                "weight_map[{name:?}]: shard {file:?} is not a plain file name (shards live beside the index)"
            )));
        }
        out.insert(name.clone(), dir.join(file));
    }
    if out.is_empty() {
        return Err(bad("weight_map lists no tensors".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::tests::temp_dir;

    #[test]
    fn folders_resolve_to_their_files() {
        let d = temp_dir("ckpt-folder");
        std::fs::write(d.join(CONFIG_FILE), "{}").unwrap();
        let (c, w) = model_paths(&d, None).unwrap();
        assert_eq!((c, w), (d.join(CONFIG_FILE), None), "no weights yet");
        std::fs::write(d.join(SHARD_INDEX_FILE), "{}").unwrap();
        assert_eq!(
            locate_weights(&d).unwrap(),
            WeightSource::Sharded(d.join(SHARD_INDEX_FILE))
        );
        std::fs::write(d.join(WEIGHTS_FILE), "").unwrap();
        assert_eq!(
            locate_weights(&d).unwrap(),
            WeightSource::File(d.join(WEIGHTS_FILE)),
            "the single file wins"
        );
        let (_, w) = model_paths(&d, None).unwrap();
        assert_eq!(w, Some(d.to_path_buf()));
        let (_, w) = model_paths(&d, Some(Path::new("x.safetensors"))).unwrap();
        assert_eq!(w, Some(PathBuf::from("x.safetensors")), "--weights wins");
    }

    #[test]
    fn folders_without_config_or_weights_are_explained() {
        let d = temp_dir("ckpt-empty");
        let e = model_paths(&d, None).unwrap_err().to_string();
        assert!(e.ends_with("a folder without config.json: pass a Hugging Face model folder (as save_pretrained writes it) or the config file itself"), "{e}");
        let e = locate_weights(&d).unwrap_err().to_string();
        assert!(
            e.contains("neither model.safetensors nor model.safetensors.index.json"),
            "{e}"
        );
        std::fs::write(d.join("pytorch_model.bin"), "").unwrap();
        let e = locate_weights(&d).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: a PyTorch pickle",
                d.join("pytorch_model.bin").display()
            )),
            "{e}"
        );
        assert!(e.contains("weights_only=True"), "{e}");
    }

    #[test]
    fn shard_index_errors_name_the_entry() {
        let d = temp_dir("ckpt-index");
        let p = d.join(SHARD_INDEX_FILE);
        let err = |text: &str| {
            std::fs::write(&p, text).unwrap();
            read_shard_index(&p).unwrap_err().to_string()
        };
        assert!(err("{").contains("not valid JSON"));
        assert!(err(r#"{"metadata": {}}"#).contains("expected an object `weight_map`"));
        assert!(err(r#"{"weight_map": {"a": 3}}"#)
            .contains(r#"weight_map["a"]: expected a shard file name (string), found 3"#));
        assert!(
            err(r#"{"weight_map": {"a": "../x.safetensors"}}"#).contains("not a plain file name")
        );
        assert!(err(r#"{"weight_map": {}}"#).contains("lists no tensors"));
        std::fs::write(
            &p,
            r#"{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}"#,
        )
        .unwrap();
        let m = read_shard_index(&p).unwrap();
        assert_eq!(m["b"], d.join("s2.safetensors"));
    }
}
