//! Stable fuzzing of the executable's parsers of user bytes: mutated valid
//! `.npy` files, safetensors headers and command lines never panic, and every
//! error is one line (exit 2 for arguments). Files under tests/corpus/ are
//! replayed too. Long runs use the cargo-fuzz targets in fuzz/.

#[path = "../../testkit/src/mutate.rs"]
mod mutate;

use mutate::{corpus_files, mutate, mutate_args, Rng};
use reformc_exe_runtime::exe_main::check_args;
use reformc_tensor::npy::{self, NpyData};
use reformc_tensor::safetensors;
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

fn check_npy(bytes: &[u8]) {
    match npy::parse(bytes) {
        Ok(a) => {
            let n = match &a.data {
                NpyData::F32(v) => v.len(),
                NpyData::F64(v) => v.len(),
                NpyData::Int(v) => v.len(),
            };
            let want = a.shape.iter().try_fold(1usize, |p, &d| p.checked_mul(d));
            assert_eq!(Some(n), want, "shape {:?}", a.shape);
        }
        Err(e) => assert!(!e.is_empty() && !e.contains('\n'), "{e}"),
    }
}

fn check_safetensors(bytes: &[u8]) {
    match safetensors::parse(bytes, bytes.len() as u64) {
        Ok((entries, start)) => {
            for e in entries {
                assert!(e.begin <= e.end && start + e.end <= bytes.len() as u64);
            }
        }
        Err(m) => assert!(!m.is_empty() && !m.contains('\n'), "{m}"),
    }
}

fn check_argv(args: &[String]) {
    let argv: Vec<String> = std::iter::once("model".to_string())
        .chain(args.iter().cloned())
        .collect();
    if let Err((m, c)) = check_args(&argv) {
        assert_eq!(c, 2, "{argv:?}: {m}");
        assert!(!m.is_empty() && !m.contains('\n'), "{argv:?}: {m}");
    }
}

#[test]
fn mutated_npy_files_never_panic() {
    let seeds = [
        seed("tests/fixtures/causal_mixed_r2/input_ids.npy"),
        seed("tests/fixtures/causal_mixed_r2/lsh_rotations.npy"),
        seed("tests/fixtures/causal_mixed_r2/lsh_buckets.npy"),
        npy::to_bytes_f64(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    ];
    let mut rng = Rng::new(1);
    for i in 0..20_000 {
        check_npy(&mutate(&seeds[i % seeds.len()], &mut rng));
    }
}

#[test]
fn mutated_safetensors_headers_never_panic() {
    let full = seed("tests/fixtures/causal_mixed_r2/model.safetensors");
    // Mutating only the header and a little data keeps each case small.
    let n = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let head = &full[..(8 + n + 64).min(full.len())];
    let mut rng = Rng::new(2);
    for _ in 0..3_000 {
        check_safetensors(&mutate(head, &mut rng));
    }
}

#[test]
fn mutated_command_lines_are_exit_2_or_accepted() {
    let seeds: Vec<Vec<String>> = [
        "--input ids.npy --output out.npy",
        "--input=ids.npy --output=out.npy --threads 4 --seed 7 --time",
        "--input ids.npy --output out.npy --lsh-rotations r.npy --attention-mask m.npy",
        "--input ids.npy --output out.npy --lsh-buckets b.npy --weights w.safetensors",
        "--signature",
        "--help",
    ]
    .iter()
    .map(|s| s.split(' ').map(String::from).collect())
    .collect();
    let mut rng = Rng::new(3);
    for i in 0..20_000 {
        check_argv(&mutate_args(&seeds[i % seeds.len()], &mut rng));
    }
}

fn replay(crashes: bool) {
    for (p, b) in corpus("npy", crashes) {
        eprintln!("{}", p.display());
        check_npy(&b);
    }
    for (p, b) in corpus("safetensors", crashes) {
        eprintln!("{}", p.display());
        check_safetensors(&b);
    }
    for (p, b) in corpus("exe_args", crashes) {
        let text = String::from_utf8_lossy(&b);
        let args: Vec<String> = text.split('\0').map(String::from).collect();
        eprintln!("{}", p.display());
        check_argv(&args);
    }
}

#[test]
fn corpus_files_replay() {
    replay(false);
}

#[test]
fn corpus_crash_files_replay() {
    replay(true);
}
