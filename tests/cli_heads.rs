//! The task heads through the command line (tests/fixtures_heads): `reformc
//! run` writes HF's classification logits [B, num_labels] and question
//! answering logits [B, L, 2] (start, end) with the JIT, the interpreter and
//! the MLIR CPU pipeline,
//! `reformc compile` builds an executable that does too, and the training
//! commands refuse a task head with one line naming the head (exit 2).

use crate::common;

use common::{head_fixtures, max_abs_diff, read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reformc-cli-heads-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn reformc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `--input`, `--attention-mask` and `--lsh-buckets` of a case (HF's hashing
/// replayed).
fn inputs(case: &Path) -> Vec<String> {
    let mut v = vec!["--input".to_string(), s(&case.join("input_ids.npy"))];
    for (flag, file) in [
        ("--attention-mask", "attention_mask.npy"),
        ("--lsh-buckets", "lsh_buckets.npy"),
    ] {
        if case.join(file).exists() {
            v.extend([flag.to_string(), s(&case.join(file))]);
        }
    }
    v
}

#[test]
fn run_writes_hf_head_outputs_with_the_jit_the_interpreter_and_mlir() {
    let dir = scratch("run");
    for case in head_fixtures() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let want: ndarray::ArrayD<f64> = read(&case.join("logits_f64.npy"));
        let engines: [&[&str]; 3] = [&[], &["--interp"], &["--backend", "mlir"]];
        for (i, engine) in engines.into_iter().enumerate() {
            let out = dir.join(format!("{name}-{i}.npy"));
            let mut args = vec![
                "run".to_string(),
                s(&case.join("config.json")),
                "--weights".into(),
                s(&case.join("model.safetensors")),
                "--output".into(),
                s(&out),
            ];
            args.extend(inputs(&case));
            args.extend(engine.iter().map(|a| a.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = reformc(&args);
            let stdout = String::from_utf8_lossy(&r.stdout);
            assert!(
                r.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            let what = if name.starts_with("cls_") {
                "classification logits"
            } else {
                "start/end logits"
            };
            assert!(
                stdout.contains(&format!("wrote {what} `logits`")),
                "{stdout}"
            );
            let got = read::<f32>(&out).mapv(f64::from);
            assert_eq!(got.shape(), want.shape(), "{name}");
            let d = max_abs_diff(&got, &want);
            assert!(
                d <= 1e-4,
                "{name} {engine:?}: |reformc - HF float64| = {d:e}"
            );
        }
    }
}

#[test]
fn compiled_executable_writes_the_classification_logits() {
    let case = head_fixtures()
        .into_iter()
        .find(|c| c.ends_with("cls_noncausal_mask_b2"))
        .unwrap();
    let dir = scratch("exe");
    let exe = dir.join("cls");
    let r = reformc(&[
        "compile",
        &s(&case.join("config.json")),
        "--weights",
        &s(&case.join("model.safetensors")),
        "-o",
        &s(&exe),
        "-q",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = dir.join("out.npy");
    let mut args = inputs(&case);
    args.extend(["--output".into(), s(&out)]);
    let r = Command::new(&exe).args(&args).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("wrote classification logits [2, 3]"),
        "{}",
        String::from_utf8_lossy(&r.stdout)
    );
    let got = read::<f32>(&out).mapv(f64::from);
    let d = max_abs_diff(&got, &read(&case.join("logits_f64.npy")));
    assert!(d <= 1e-4, "exe vs HF float64 {d:e}");
}

#[test]
fn training_commands_refuse_a_task_head() {
    let dir = scratch("grad");
    for case in head_fixtures() {
        let weights = s(&case.join("model.safetensors"));
        let r = reformc(&[
            "grad",
            &s(&case.join("config.json")),
            "--weights",
            &weights,
            "--input",
            &s(&case.join("input_ids.npy")),
            "--output",
            &s(&dir.join("g.safetensors")),
            "-q",
        ]);
        assert_eq!(r.status.code(), Some(2));
        let err = String::from_utf8_lossy(&r.stderr);
        let head = if case.ends_with("cls_noncausal_mask_b2")
            || case.ends_with("cls_causal_padded_gelu")
        {
            "a sequence-classification head (ReformerForSequenceClassification)"
        } else {
            "a question-answering head (ReformerForQuestionAnswering)"
        };
        assert!(
            err.starts_with(&format!(
                "error: {weights}: grad: the model has {head}; reformc trains LM heads only"
            )),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!dir.join("g.safetensors").exists());
        let r = reformc(&[
            "dump",
            &s(&case.join("config.json")),
            "--weights",
            &weights,
            "--train",
            "--seq-len",
            "32",
            "-q",
        ]);
        assert_eq!(r.status.code(), Some(2));
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.starts_with(&format!(
                "error: {weights}: dump --train: the model has {head}"
            )),
            "{err}"
        );
    }
}
