//! Bad input to `reformc`: each case gives exit code 2 and one clear line
//! naming the file and the field or tensor, never a panic.

use crate::common;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const CASE: &str = "tests/fixtures/causal_mixed_r2";

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("reformc-cli-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }

    fn write_config(&self, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let mut v: Value = serde_json::from_str(
            &std::fs::read_to_string(common::root().join(CASE).join("config.json")).unwrap(),
        )
        .unwrap();
        edit(&mut v);
        let p = self.path("config.json");
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        p
    }

    fn write_npy<T: ndarray_npy::WritableElement>(&self, name: &str, a: ArrayD<T>) -> PathBuf {
        let p = self.path(name);
        a.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(f: &str) -> PathBuf {
    common::root().join(CASE).join(f)
}

/// Runs reformc; returns (exit code, stderr).
fn reformc(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args.iter().map(|a| a.as_ref()))
        .current_dir(common::root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "reformc panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

/// `reformc run` with the fixture's files, overridden by `over` (flag -> path).
fn run_with(config: &Path, weights: &Path, input: &Path, extra: &[(&str, &Path)]) -> (i32, String) {
    let scratch = Scratch::new("out");
    let out = scratch.path("out.npy");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"run",
        &config,
        &"--weights",
        &weights,
        &"--input",
        &input,
        &"--output",
    ];
    args.push(&out);
    for (flag, path) in extra {
        args.push(flag);
        args.push(path);
    }
    reformc(&args)
}

fn assert_error(result: (i32, String), file: &str, needles: &[&str]) {
    let (code, stderr) = result;
    assert_eq!(code, 2, "expected exit code 2, got {code}: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {stderr}");
    let line = errors[0];
    assert!(line.starts_with("error: "), "{line}");
    assert!(line.contains(file), "message should name {file}: {line}");
    for n in needles {
        assert!(line.contains(n), "message should mention {n:?}: {line}");
    }
}

fn config_error(edit: impl FnOnce(&mut Value), needles: &[&str]) {
    let s = Scratch::new(&format!("cfg{}", needles[0].len()));
    let cfg = s.write_config(edit);
    assert_error(
        run_with(
            &cfg,
            &fixture("model.safetensors"),
            &fixture("input_ids.npy"),
            &[],
        ),
        "config.json",
        needles,
    );
}

#[test]
fn malformed_json() {
    let s = Scratch::new("malformed");
    let p = s.path("config.json");
    std::fs::write(&p, "{\"model_type\": \"reformer\",, }").unwrap();
    assert_error(
        run_with(
            &p,
            &fixture("model.safetensors"),
            &fixture("input_ids.npy"),
            &[],
        ),
        "config.json",
        &["invalid JSON", "line 1"],
    );
}

#[test]
fn unknown_model_type() {
    config_error(
        |v| v["model_type"] = "bert".into(),
        &["model_type", "reformer"],
    );
}

#[test]
fn axial_dims_not_summing_to_hidden_size() {
    config_error(
        |v| v["axial_pos_embds_dim"] = serde_json::json!([8, 8]),
        &["axial_pos_embds_dim", "hidden_size"],
    );
}

#[test]
fn odd_bucket_factor() {
    config_error(
        |v| v["num_buckets"] = serde_json::json!([2, 3]),
        &["num_buckets", "even"],
    );
}

#[test]
fn unknown_activation() {
    config_error(
        |v| v["hidden_act"] = "swishy".into(),
        &["hidden_act", "relu"],
    );
}

fn weights_error(
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
    needles: &[&str],
) {
    let st_bytes = std::fs::read(fixture("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, &None).unwrap();
    let s = Scratch::new(&format!("w{}", needles[0].len()));
    let p = s.path("model.safetensors");
    std::fs::write(&p, bytes).unwrap();
    assert_error(
        run_with(&fixture("config.json"), &p, &fixture("input_ids.npy"), &[]),
        "model.safetensors",
        needles,
    );
}

const EMB: &str = "reformer.embeddings.word_embeddings.weight";

#[test]
fn missing_tensor() {
    weights_error(|t| t.retain(|x| x.0 != EMB), &[EMB, "missing"]);
}

#[test]
fn extra_tensor() {
    weights_error(
        |t| {
            t.push((
                "reformer.extra.weight".into(),
                safetensors::Dtype::F32,
                vec![1],
                vec![0; 4],
            ))
        },
        &["reformer.extra.weight", "unexpected"],
    );
}

#[test]
fn misshapen_tensor() {
    weights_error(
        |t| {
            let e = t.iter_mut().find(|x| x.0 == EMB).unwrap();
            e.2 = vec![e.2[1], e.2[0]];
        },
        &[EMB, "shape"],
    );
}

#[test]
fn non_float_tensor() {
    // F16, BF16 and F64 load (converted); an integer tensor is refused.
    weights_error(
        |t| {
            let e = t.iter_mut().find(|x| x.0 == EMB).unwrap();
            e.1 = safetensors::Dtype::I32;
        },
        &[
            EMB,
            "expected dtype F32 (or F16, BF16, F64, converted at load), found I32",
        ],
    );
}

#[test]
fn truncated_weight_file() {
    let s = Scratch::new("trunc");
    let bytes = std::fs::read(fixture("model.safetensors")).unwrap();
    let p = s.path("model.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_error(
        run_with(&fixture("config.json"), &p, &fixture("input_ids.npy"), &[]),
        "model.safetensors",
        &["safetensors"],
    );
}

#[test]
fn missing_weight_file() {
    let p = PathBuf::from("/nonexistent/model.safetensors");
    assert_error(
        run_with(&fixture("config.json"), &p, &fixture("input_ids.npy"), &[]),
        "model.safetensors",
        &["cannot"],
    );
}

#[test]
fn rotations_of_the_wrong_shape() {
    let s = Scratch::new("rot");
    let p = s.write_npy("rot.npy", ArrayD::<f32>::zeros(IxDyn(&[2, 2, 16, 2, 3])));
    assert_error(
        run_with(
            &fixture("config.json"),
            &fixture("model.safetensors"),
            &fixture("input_ids.npy"),
            &[("--lsh-rotations", &p)],
        ),
        "rot.npy",
        &["[2, 2, 16, 2, 4]", "[2, 2, 16, 2, 3]"],
    );
}

#[test]
fn buckets_of_the_wrong_shape() {
    let s = Scratch::new("bk");
    let p = s.write_npy("bk.npy", ArrayD::<i64>::zeros(IxDyn(&[2, 1, 2, 100])));
    assert_error(
        run_with(
            &fixture("config.json"),
            &fixture("model.safetensors"),
            &fixture("input_ids.npy"),
            &[("--lsh-buckets", &p)],
        ),
        "bk.npy",
        &["[2, 1, 2, 128]"],
    );
}

fn ids_error(ids: ArrayD<i64>, needles: &[&str]) {
    let s = Scratch::new(&format!("ids{}", needles[0].len()));
    let p = s.write_npy("ids.npy", ids);
    assert_error(
        run_with(
            &fixture("config.json"),
            &fixture("model.safetensors"),
            &p,
            &[],
        ),
        "ids.npy",
        needles,
    );
}

#[test]
fn token_id_out_of_vocabulary() {
    let mut ids = ArrayD::<i64>::zeros(IxDyn(&[1, 16]));
    ids[[0, 3]] = 48;
    ids_error(ids, &["48", "[0, 3]", "vocabulary"]);
}

#[test]
fn negative_token_id() {
    let mut ids = ArrayD::<i64>::zeros(IxDyn(&[1, 16]));
    ids[[0, 5]] = -1;
    ids_error(ids, &["-1", "[0, 5]"]);
}

#[test]
fn input_of_the_wrong_dtype() {
    let s = Scratch::new("f32ids");
    let p = s.write_npy("ids.npy", ArrayD::<f32>::zeros(IxDyn(&[1, 16])));
    assert_error(
        run_with(
            &fixture("config.json"),
            &fixture("model.safetensors"),
            &p,
            &[],
        ),
        "ids.npy",
        &["int64 or int32", "<f4"],
    );
}

#[test]
fn input_of_the_wrong_rank() {
    ids_error(ArrayD::<i64>::zeros(IxDyn(&[16])), &["rank-2", "[16]"]);
}

#[test]
fn int32_input_is_accepted() {
    let s = Scratch::new("i32");
    let ids: ArrayD<i64> = common::read(&fixture("input_ids.npy"));
    let p = s.write_npy("ids.npy", ids.mapv(|x| x as i32));
    let (code, stderr) = run_with(
        &fixture("config.json"),
        &fixture("model.safetensors"),
        &p,
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn length_above_max_position_embeddings() {
    // causal_mixed_r2 has max_position_embeddings 64 (axial grid 8x8).
    ids_error(
        ArrayD::<i64>::zeros(IxDyn(&[1, 80])),
        &["80", "max_position_embeddings=64"],
    );
}

#[test]
fn length_above_axial_grid() {
    let s = Scratch::new("grid");
    let cfg = s.write_config(|v| v["max_position_embeddings"] = 4096.into());
    let p = s.write_npy("ids.npy", ArrayD::<i64>::zeros(IxDyn(&[1, 80])));
    assert_error(
        run_with(&cfg, &fixture("model.safetensors"), &p, &[]),
        "ids.npy",
        &["80", "axial position grid 8x8"],
    );
}

#[test]
fn mask_of_the_wrong_shape() {
    let s = Scratch::new("mask");
    let m = s.write_npy("mask.npy", ArrayD::<i64>::ones(IxDyn(&[2, 64])));
    assert_error(
        run_with(
            &fixture("config.json"),
            &fixture("model.safetensors"),
            &fixture("input_ids.npy"),
            &[("--attention-mask", &m)],
        ),
        "mask.npy",
        &["[1, 64]", "[2, 64]"],
    );
}
