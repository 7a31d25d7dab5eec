//! Stable fuzzing of the compiler's parsers of user files: mutated fixture
//! configs (HF and reformc schema) and safetensors files never panic, and
//! every error is one line naming the file. tests/corpus/ is replayed too.
//! Long runs use the cargo-fuzz targets in fuzz/.

#[allow(dead_code)]
#[path = "../../testkit/src/mutate.rs"]
mod mutate;

use mutate::{corpus_files, mutate, Rng};
use reformc_frontend::config::parse_model_config;
use reformc_frontend::weights::WeightFile;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn seed(rel: &str) -> Vec<u8> {
    std::fs::read(root().join(rel)).unwrap()
}

/// The files of tests/corpus/<dir> with their bytes (see `corpus_files`).
fn corpus(dir: &str, crashes: bool) -> Vec<(PathBuf, Vec<u8>)> {
    corpus_files(&root(), dir, crashes)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn assert_names(msg: &str, file: &str) {
    assert!(msg.starts_with(&format!("{file}: ")), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

fn check_config(bytes: &[u8]) {
    // The loader reads with read_to_string: invalid UTF-8 is an I/O error there.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Err(e) = parse_model_config(text, Path::new("fuzz.json")) {
        assert_names(&e.to_string(), "fuzz.json");
    }
}

fn check_weights(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    let shown = path.display().to_string();
    match WeightFile::open(path) {
        Ok(w) => {
            let names: Vec<String> = w.names().iter().map(|s| s.to_string()).collect();
            for name in names {
                if let Err(e) = w.tensor_f32(&name) {
                    assert_names(&e.to_string(), &shown);
                }
            }
        }
        Err(e) => assert_names(&e.to_string(), &shown),
    }
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("reformc-fuzz-{}-{name}", std::process::id()))
}

#[test]
fn mutated_configs_never_panic() {
    let seeds = [
        seed("tests/fixtures/causal_mixed_r2/config.json"),
        seed("tests/fixtures/noncausal_local_only/config.json"),
        seed("examples/shared-qk-transformer.json"),
    ];
    let mut rng = Rng::new(11);
    for i in 0..6_000 {
        check_config(&mutate(&seeds[i % seeds.len()], &mut rng));
    }
}

#[test]
fn mutated_safetensors_files_never_panic() {
    let full = seed("tests/fixtures/causal_mixed_r2/model.safetensors");
    let n = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let path = scratch("w.safetensors");
    let mut rng = Rng::new(12);
    for i in 0..1_500 {
        // Mostly header mutations on the whole file; sometimes the header alone.
        let base = if i % 4 == 0 {
            &full[..8 + n]
        } else {
            &full[..]
        };
        let mut m = mutate(&base[..(8 + n + 64).min(base.len())], &mut rng);
        m.extend_from_slice(&base[(8 + n + 64).min(base.len())..]);
        check_weights(&path, &m);
    }
    let _ = std::fs::remove_file(path);
}

fn replay(crashes: bool) {
    for (p, b) in corpus("config", crashes) {
        eprintln!("{}", p.display());
        check_config(&b);
    }
    let path = scratch("corpus.safetensors");
    for (p, b) in corpus("safetensors", crashes) {
        eprintln!("{}", p.display());
        check_weights(&path, &b);
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn corpus_files_replay() {
    replay(false);
}

#[test]
fn corpus_crash_files_replay() {
    replay(true);
}

#[test]
fn control_characters_in_keys_and_values_stay_on_one_line() {
    let texts = [
        r#"{"a\nb": 1}"#,
        r#"{"model_type": "reformer", "a\nb": 1}"#,
        r#"{"model_type": "reformer", "hidden_act": "re\nlu"}"#,
        r#"{"model_type": "reformer", "attn_layers": ["lo\ncal"]}"#,
        r#"{"format": "reformc-model", "version": 1, "a\nb": 1}"#,
        r#"{"format": "reformc-model", "version": 1, "architecture": "re\nsidual"}"#,
        r#"{"format": "reformc-mo\ndel"}"#,
    ];
    for text in texts {
        match parse_model_config(text, Path::new("fuzz.json")) {
            Ok((_, warnings, _)) => {
                for w in warnings {
                    assert!(!w.contains('\n'), "{text}: {w}");
                }
            }
            Err(e) => assert_names(&e.to_string(), "fuzz.json"),
        }
    }
}
