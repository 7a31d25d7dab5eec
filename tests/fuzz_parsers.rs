//! Stable fuzzing at the command line: mutated configs, weights, `.npy`
//! files and IR text, and the malformed files under tests/corpus/, give exit
//! 0 or 2 (one `error:` line naming the file), never a panic, an abort or a
//! signal. In-process fuzz tests of each parser live in runtime/tests and
//! frontend/tests; long runs use the cargo-fuzz targets in fuzz/.

use crate::common;

use common::mutate::{mutate, Rng};
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_ir::{parse, print, verify, DType};
use std::path::{Path, PathBuf};
use std::process::Command;

const CASE: &str = "tests/fixtures/causal_mixed_r2";

fn fixture(f: &str) -> PathBuf {
    common::root().join(CASE).join(f)
}

fn corpus_of(dir: &str, crashes: bool) -> Vec<PathBuf> {
    common::mutate::corpus_files(&common::root(), dir, crashes)
}

fn corpus(dir: &str) -> Vec<PathBuf> {
    corpus_of(dir, false)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reformc-fuzz-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs reformc and checks the outcome: success, or exit 2 with exactly one
/// `error:` line that names `file`.
fn expect_0_or_2(args: &[&Path], file: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let Some(code) = out.status.code() else {
        panic!("{args:?}: killed by a signal ({:?}): {stderr}", out.status);
    };
    assert!(code == 0 || code == 2, "{args:?}: exit {code}: {stderr}");
    if code == 2 {
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            errors[0].contains(&*name),
            "{args:?}: should name {name}: {stderr}"
        );
    }
}

fn run_args<'a>(
    config: &'a Path,
    weights: &'a Path,
    input: &'a Path,
    out: &'a Path,
) -> Vec<&'a Path> {
    vec![
        Path::new("run"),
        config,
        Path::new("--weights"),
        weights,
        Path::new("--input"),
        input,
        Path::new("--output"),
        out,
        Path::new("--interp"),
    ]
}

/// A short input keeps each interpreter run fast.
fn short_ids(dir: &Path) -> PathBuf {
    let p = dir.join("ids.npy");
    let ids = ndarray::ArrayD::<i64>::from_shape_vec(ndarray::IxDyn(&[1, 4]), vec![1, 2, 3, 4]);
    common::write(&p, &ids.unwrap());
    p
}

fn check_ir(text: &str) {
    match parse(text) {
        Ok(g) => {
            let _ = verify(&g);
            let printed = print(&g);
            let again = parse(&printed).expect("printed text parses");
            assert_eq!(print(&again), printed);
        }
        Err(e) => assert!(
            e.line >= 1 && e.col >= 1 && !e.message.contains('\n'),
            "{e}"
        ),
    }
}

#[test]
fn mutated_ir_text_never_panics() {
    let spec = reformc_frontend::config::load_model_config(&fixture("config.json")).unwrap();
    let opts = LowerOptions {
        dtype: DType::F32,
        lsh_source: LshSource::Rotations,
        seq_len: Some(16),
    };
    let text = print(&lower(&spec, &opts).unwrap().graph);
    let mut rng = Rng::new(21);
    for _ in 0..1_500 {
        check_ir(&String::from_utf8_lossy(&mutate(text.as_bytes(), &mut rng)));
    }
}

#[test]
fn ir_corpus_replays() {
    for p in corpus("ir") {
        eprintln!("{}", p.display());
        check_ir(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
    }
}

#[test]
fn dump_of_mutated_and_corpus_configs_is_exit_0_or_2() {
    let dir = scratch("cfg");
    let seed = std::fs::read(fixture("config.json")).unwrap();
    let mut rng = Rng::new(22);
    for i in 0..24 {
        let p = dir.join(format!("config{i}.json"));
        std::fs::write(&p, mutate(&seed, &mut rng)).unwrap();
        expect_0_or_2(&[Path::new("dump"), &p], &p);
    }
    for p in corpus("config") {
        expect_0_or_2(&[Path::new("dump"), &p], &p);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn run_with_mutated_and_corpus_weights_is_exit_0_or_2() {
    let dir = scratch("weights");
    let ids = short_ids(&dir);
    let out = dir.join("out.npy");
    let full = std::fs::read(fixture("model.safetensors")).unwrap();
    let n = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let mut rng = Rng::new(23);
    for i in 0..8 {
        let p = dir.join(format!("w{i}.safetensors"));
        let mut bytes = mutate(&full[..n], &mut rng);
        bytes.extend_from_slice(&full[n..]);
        std::fs::write(&p, bytes).unwrap();
        expect_0_or_2(&run_args(&fixture("config.json"), &p, &ids, &out), &p);
    }
    for p in corpus("safetensors") {
        expect_0_or_2(&run_args(&fixture("config.json"), &p, &ids, &out), &p);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn run_with_mutated_and_corpus_npy_is_exit_0_or_2() {
    let dir = scratch("npy");
    let out = dir.join("out.npy");
    let seed = std::fs::read(short_ids(&dir)).unwrap();
    let mut rng = Rng::new(24);
    for i in 0..16 {
        let p = dir.join(format!("ids{i}.npy"));
        std::fs::write(&p, mutate(&seed, &mut rng)).unwrap();
        expect_0_or_2(
            &run_args(
                &fixture("config.json"),
                &fixture("model.safetensors"),
                &p,
                &out,
            ),
            &p,
        );
    }
    for p in corpus_of("npy", false)
        .into_iter()
        .chain(corpus_of("npy", true))
    {
        expect_0_or_2(
            &run_args(
                &fixture("config.json"),
                &fixture("model.safetensors"),
                &p,
                &out,
            ),
            &p,
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn run_with_corpus_crash_weights_is_exit_0_or_2() {
    let dir = scratch("crash-weights");
    let ids = short_ids(&dir);
    let out = dir.join("out.npy");
    for p in corpus_of("safetensors", true) {
        expect_0_or_2(&run_args(&fixture("config.json"), &p, &ids, &out), &p);
    }
    let _ = std::fs::remove_dir_all(dir);
}
