//! The hostile-input sweep of issue #8: one table of bad invocations (malformed
//! configs, weights and `.npy` files, absurd flags, outputs that alias inputs)
//! through `reformc` and a compiled executable. Every case must end within a
//! time bound (no hang) with exit code 2 (no panic, no signal), print exactly
//! one line naming what was wrong, and leave every file it was given untouched.

use crate::common;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CASE: &str = "tests/fixtures/causal_mixed_r2";
/// Far above what any case needs (they stop before loading a model or right
/// after); a case still running then counts as a hang.
const HANG: Duration = Duration::from_secs(60);

/// One bad invocation: the program's arguments (`{d}` is the scratch folder)
/// and a word the error line must contain.
struct Case {
    what: &'static str,
    exe: bool,
    args: Vec<String>,
    names: &'static str,
}

fn case(what: &'static str, args: &str, names: &'static str) -> Case {
    Case {
        what,
        exe: false,
        args: args.split_whitespace().map(String::from).collect(),
        names,
    }
}

fn exe_case(what: &'static str, args: &str, names: &'static str) -> Case {
    Case {
        exe: true,
        ..case(what, args, names)
    }
}

/// The scratch folder: the fixture's files plus the hostile ones.
fn prepare(d: &Path) {
    let src = common::root().join(CASE);
    for f in [
        "config.json",
        "model.safetensors",
        "input_ids.npy",
        "lsh_buckets.npy",
        "lsh_rotations.npy",
    ] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
    v["num_hashes"] = serde_json::json!(1_000_000_000u64);
    std::fs::write(d.join("hashes.json"), v.to_string()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
    v["lsh_num_chunks_before"] = serde_json::json!(1_000_000_000u64);
    std::fs::write(d.join("before.json"), v.to_string()).unwrap();
    std::fs::write(d.join("broken.json"), &config[..config.len() / 2]).unwrap();
    std::fs::write(d.join("huge.json"), vec![b' '; 17 << 20]).unwrap();
    let w = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(d.join("truncated.safetensors"), &w[..w.len() - 7]).unwrap();
    std::fs::write(d.join("nan.safetensors"), with_nan(&w)).unwrap();
    std::fs::copy(
        common::root().join("tests/corpus/safetensors/duplicate_name.safetensors"),
        d.join("duplicate.safetensors"),
    )
    .unwrap();
    std::fs::write(
        d.join("huge_shape.npy"),
        npy_header("<i8", "(1, 1000000000000)"),
    )
    .unwrap();
    std::fs::write(
        d.join("garbage.npy"),
        b"\x93NUMPY\x01\x00\xff\xffnot a header",
    )
    .unwrap();
    let ids: ArrayD<i64> = common::read(&src.join("input_ids.npy"));
    let mask = ArrayD::<i64>::ones(IxDyn(&[ids.shape()[0], ids.shape()[1] + 3]));
    mask.write_npy(std::fs::File::create(d.join("mask_shape.npy")).unwrap())
        .unwrap();
    let mut b: ArrayD<i64> = common::read(&src.join("lsh_buckets.npy"));
    *b.iter_mut().last().unwrap() = 1 << 62;
    b.write_npy(std::fs::File::create(d.join("buckets_range.npy")).unwrap())
        .unwrap();
    let mut r: ArrayD<f32> = common::read(&src.join("lsh_rotations.npy"));
    *r.iter_mut().next().unwrap() = f32::NAN;
    r.write_npy(std::fs::File::create(d.join("rot_nan.npy")).unwrap())
        .unwrap();
    std::os::unix::fs::symlink(d.join("model.safetensors"), d.join("link.npy")).unwrap();
    std::fs::hard_link(d.join("input_ids.npy"), d.join("hard.npy")).unwrap();
}

/// The safetensors file with the word embedding's first element set to NaN
/// (a tensor every model uses: `lm_head.bias` is in the file but unused).
fn with_nan(w: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(w[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&w[8..8 + n]).unwrap();
    let first = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("word_embeddings.weight"))
        .map(|(_, v)| v["data_offsets"][0].as_u64().unwrap() as usize)
        .unwrap();
    let mut out = w.to_vec();
    out[8 + n + first..8 + n + first + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    out
}

fn npy_header(descr: &str, shape: &str) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (h.len() + 11) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out
}

fn cases() -> Vec<Case> {
    let run = "run {d}/config.json --weights {d}/model.safetensors --input {d}/input_ids.npy";
    let out = "--output {d}/out.npy";
    let r = |rest: &str| format!("{run} {rest}");
    let mut v = vec![
        case("broken JSON", "dump {d}/broken.json", "broken.json"),
        case(
            "num_hashes 1e9",
            "compile {d}/hashes.json --weights {d}/model.safetensors -o {d}/x",
            "num_hashes",
        ),
        case(
            "chunks before 1e9",
            "explain {d}/before.json",
            "lsh_num_chunks_before",
        ),
        case("config /dev/zero", "dump /dev/zero", "/dev/zero"),
        case("config over 16 MiB", "dump {d}/huge.json", "huge.json"),
        case(
            "--seq-len 0",
            "explain {d}/config.json --seq-len 0",
            "--seq-len",
        ),
        case("--batch 0", "explain {d}/config.json --batch 0", "--batch"),
        case(
            "compile --threads 100000",
            "compile {d}/config.json --weights {d}/model.safetensors -o {d}/x --threads 100000",
            "--threads",
        ),
        case(
            "compile -o onto the config",
            "compile {d}/config.json --weights {d}/model.safetensors -o {d}/config.json",
            "config",
        ),
        case(
            "dump -o onto the config",
            "dump {d}/config.json -o {d}/config.json",
            "config",
        ),
        case(
            "compile -o into a missing folder",
            "compile {d}/config.json --weights {d}/model.safetensors -o {d}/missing/x",
            "missing",
        ),
    ];
    let runs: [(&'static str, String, &'static str); 14] = [
        ("truncated weights", format!("run {{d}}/config.json --weights {{d}}/truncated.safetensors --input {{d}}/input_ids.npy {out}"), "truncated.safetensors"),
        ("NaN weight", format!("run {{d}}/config.json --weights {{d}}/nan.safetensors --input {{d}}/input_ids.npy {out}"), "NaN"),
        ("duplicate tensor names", format!("run {{d}}/config.json --weights {{d}}/duplicate.safetensors --input {{d}}/input_ids.npy {out}"), "duplicate.safetensors"),
        ("weights /dev/urandom", format!("run {{d}}/config.json --weights /dev/urandom --input {{d}}/input_ids.npy {out}"), "/dev/urandom"),
        ("huge .npy shape", format!("run {{d}}/config.json --weights {{d}}/model.safetensors --input {{d}}/huge_shape.npy {out}"), "huge_shape.npy"),
        ("garbage .npy", format!("run {{d}}/config.json --weights {{d}}/model.safetensors --input {{d}}/garbage.npy {out}"), "garbage.npy"),
        ("input /dev/zero", format!("run {{d}}/config.json --weights {{d}}/model.safetensors --input /dev/zero {out}"), "/dev/zero"),
        ("mask of the wrong shape", r(&format!("--attention-mask {{d}}/mask_shape.npy {out}")), "mask_shape.npy"),
        ("bucket id 2^62", r(&format!("--lsh-buckets {{d}}/buckets_range.npy {out}")), "buckets_range.npy"),
        ("NaN rotation", r(&format!("--lsh-rotations {{d}}/rot_nan.npy {out}")), "rot_nan.npy"),
        ("--kv-chunk u64::MAX", r(&format!("--kv-chunk 18446744073709551615 {out}")), "--kv-chunk"),
        ("--output is --input", r("--output {d}/input_ids.npy"), "--input"),
        ("--output is a hard link to --input", r("--output {d}/hard.npy"), "--input"),
        ("--output is a symlink to the weights", r("--output {d}/link.npy"), "--weights"),
    ];
    v.extend(runs.into_iter().map(|(what, args, names)| Case {
        what,
        exe: false,
        args: args.split_whitespace().map(String::from).collect(),
        names,
    }));
    let e = "--input {d}/input_ids.npy";
    v.extend([
        exe_case(
            "exe: --output is --input",
            &format!("{e} --output {{d}}/input_ids.npy"),
            "--input",
        ),
        exe_case(
            "exe: input /dev/zero",
            "--input /dev/zero --output {d}/o.npy",
            "/dev/zero",
        ),
        exe_case(
            "exe: huge .npy shape",
            "--input {d}/huge_shape.npy --output {d}/o.npy",
            "huge_shape.npy",
        ),
        exe_case(
            "exe: bucket id 2^62",
            &format!("{e} --lsh-buckets {{d}}/buckets_range.npy --output {{d}}/o.npy"),
            "buckets_range.npy",
        ),
        exe_case(
            "exe: NaN weight",
            &format!("{e} --weights {{d}}/nan.safetensors --output {{d}}/o.npy"),
            "NaN",
        ),
        exe_case(
            "exe: --threads 100000",
            &format!("{e} --threads 100000 --output {{d}}/o.npy"),
            "--threads",
        ),
        exe_case(
            "exe: --weights-mode bogus",
            &format!("{e} --weights-mode bogus --output {{d}}/o.npy"),
            "--weights-mode",
        ),
    ]);
    v
}

/// Every file in `d` with its bytes (symlinks as their target's name).
fn snapshot(d: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = match std::fs::read_link(&p) {
                Ok(t) => t.display().to_string().into_bytes(),
                Err(_) if p.is_file() => std::fs::read(&p).unwrap(),
                Err(_) => vec![],
            };
            (p, bytes)
        })
        .collect()
}

/// Runs `prog args` with a deadline: (exit code or None for a signal, stderr).
fn run_bounded(prog: &Path, args: &[String]) -> (Option<i32>, String) {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if t0.elapsed() > HANG {
            let _ = child.kill();
            panic!(
                "{} {args:?}: still running after {HANG:?} (a hang)",
                prog.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn compile_exe(d: &Path) -> PathBuf {
    let exe = d.join("model");
    let (code, err) = run_bounded(
        Path::new(env!("CARGO_BIN_EXE_reformc")),
        &[
            "compile".into(),
            d.join("config.json").display().to_string(),
            "--weights".into(),
            d.join("model.safetensors").display().to_string(),
            "-o".into(),
            exe.display().to_string(),
            "-q".into(),
        ],
    );
    assert_eq!(code, Some(0), "compile: {err}");
    exe
}

#[test]
fn every_hostile_input_is_exit_2_one_line_and_touches_nothing() {
    let d = std::env::temp_dir().join(format!("reformc-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    prepare(&d);
    let exe = compile_exe(&d);
    let before = snapshot(&d);
    let (mut failures, mut report) = (vec![], vec![]);
    let cases = cases();
    for c in &cases {
        let args: Vec<String> = c
            .args
            .iter()
            .map(|a| a.replace("{d}", &d.display().to_string()))
            .collect();
        let prog = if c.exe {
            exe.clone()
        } else {
            PathBuf::from(env!("CARGO_BIN_EXE_reformc"))
        };
        let (code, err) = run_bounded(&prog, &args);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let ok = code == Some(2)
            && lines.len() == 1
            && lines[0].starts_with("error: ")
            && lines[0].contains(c.names);
        report.push(format!("{:38} {}", c.what, lines.first().unwrap_or(&"")));
        if !ok {
            failures.push(format!("{}: exit {code:?}, stderr {err:?}", c.what));
        }
        let after = snapshot(&d);
        if after != before {
            let changed: Vec<_> = after
                .iter()
                .filter(|(p, b)| before.get(*p) != Some(b))
                .map(|(p, _)| p.display().to_string())
                .collect();
            failures.push(format!("{}: changed or created {changed:?}", c.what));
            for p in after.keys().filter(|p| !before.contains_key(*p)) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&d);
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
