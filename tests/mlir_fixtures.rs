//! Every Hugging Face fixture through the MLIR backend, end to end:
//! `reformc compile --emit mlir` (weights embedded, HF's recorded buckets as
//! the `lsh_buckets` input) -> `mlir-opt-22` verifies it -> only upstream
//! dialects -> `reformc run --backend mlir` and IREE llvm-cpu agree with HF's
//! float64 logits and with the interpreter within 1e-4 (absolute, as
//! `tests/golden_hf.rs` scales them); three fixtures (LSH with 2 rounds, a
//! padding mask, local attention only) also through IREE Vulkan on llvmpipe.
//!
//! Each test runs every case and then reports all the failures at once.

use crate::common;

use common::iree::{Device, Iree};
use common::mlir_module::{op_dialects, UPSTREAM};
use common::{fixtures, max_abs_diff, Case, Scratch};
use reformc_frontend::lower::LshSource;
use reformc_interp::Tensor;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fixtures that also run on IREE's Vulkan backend.
const VULKAN_CASES: &[&str] = &[
    "causal_mixed_r2",
    "causal_mask_padded_b2",
    "noncausal_local_only",
];

fn reformc(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args.iter().map(|a| a.as_ref()))
        .current_dir(common::root())
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("exit {:?}: {}", out.status.code(), stderr.trim()))
    }
}

/// `reformc compile --emit mlir` of `case` into `dir`, checked by
/// `mlir-opt-22` and for upstream dialects; returns the module's path.
fn emit(case: &Case, dir: &Scratch) -> Result<PathBuf, String> {
    let out = dir.path("model.mlir");
    let source = match case.replay_source() {
        LshSource::Buckets => "buckets",
        _ => "seeded",
    };
    let len = case.seq_len().to_string();
    reformc(&[
        &"compile",
        &case.dir.join("config.json"),
        &"--weights",
        &case.dir.join("model.safetensors"),
        &"--emit",
        &"mlir",
        &"--lsh-source",
        &source,
        &"--seq-len",
        &len,
        &"-o",
        &out,
        &"-q",
    ])?;
    let verified = Command::new("mlir-opt-22")
        .arg(&out)
        .output()
        .map_err(|e| format!("mlir-opt-22: {e} (run scripts/setup.sh)"))?;
    if !verified.status.success() {
        return Err(format!(
            "mlir-opt-22 rejects the module: {}",
            String::from_utf8_lossy(&verified.stderr)
        ));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
    if let Some(d) = op_dialects(&text)
        .into_iter()
        .find(|d| !UPSTREAM.contains(&d.as_str()))
    {
        return Err(format!("dialect `{d}` in the module"));
    }
    Ok(out)
}

/// The runtime inputs of the module in signature order (`<module>.json`).
fn module_inputs(case: &Case, module: &Path) -> Result<Vec<Tensor>, String> {
    let sig = PathBuf::from(format!("{}.json", module.display()));
    let sig: Value =
        serde_json::from_str(&std::fs::read_to_string(&sig).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let all = case.inputs(case.replay_source());
    sig["inputs"]
        .as_array()
        .ok_or("signature without inputs")?
        .iter()
        .map(|i| {
            let name = i["name"].as_str().unwrap_or("");
            all.get(name)
                .cloned()
                .ok_or_else(|| format!("no value for module input `{name}`"))
        })
        .collect()
}

/// The output checked against HF's float64 logits and the interpreter.
fn check_logits(case: &Case, got: &ndarray::ArrayD<f64>) -> Result<(), String> {
    let want = case.reference_f64();
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let hf = max_abs_diff(got, &want);
    let interp = max_abs_diff(got, &case.interp(case.replay_source()));
    if hf > 1e-4 || interp > 1e-4 {
        return Err(format!(
            "max |err| {hf:.2e} against HF float64, {interp:.2e} against the interpreter"
        ));
    }
    Ok(())
}

/// Runs `check` on every case (or those in `only`) and fails listing every failure.
fn for_cases(only: Option<&[&str]>, check: impl Fn(&Case, &Scratch) -> Result<(), String>) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for dir in fixtures() {
        let case = Case::load(&dir);
        if only.is_some_and(|o| !o.contains(&case.name.as_str())) {
            continue;
        }
        ran += 1;
        let scratch = Scratch::new(&format!("mlir-{}", case.name));
        if let Err(e) = check(&case, &scratch) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(ran > 0, "no fixture ran");
    assert!(
        failures.is_empty(),
        "{} of {ran} fixtures fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_fixture_emits_verified_upstream_mlir_and_runs_on_the_mlir_backend() {
    for_cases(None, |case, dir| {
        let module = emit(case, dir)?;
        // `dump --emit mlir` prints what `compile` wrote.
        let len = case.seq_len().to_string();
        let source = match case.replay_source() {
            LshSource::Buckets => "buckets",
            _ => "seeded",
        };
        let dumped = reformc(&[
            &"dump",
            &case.dir.join("config.json"),
            &"--weights",
            &case.dir.join("model.safetensors"),
            &"--emit",
            &"mlir",
            &"--lsh-source",
            &source,
            &"--seq-len",
            &len,
            &"-q",
        ])?;
        if dumped != std::fs::read_to_string(&module).map_err(|e| e.to_string())? {
            return Err("dump --emit mlir differs from the compiled module".into());
        }
        let out = dir.path("logits.npy");
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = Vec::new();
        let (config, weights, ids) = (
            case.dir.join("config.json"),
            case.dir.join("model.safetensors"),
            case.dir.join("input_ids.npy"),
        );
        let (mask, buckets) = (
            case.dir.join("attention_mask.npy"),
            case.dir.join("lsh_buckets.npy"),
        );
        args.extend([
            &"run" as &dyn AsRef<std::ffi::OsStr>,
            &config,
            &"--weights",
            &weights,
            &"--input",
            &ids,
            &"--output",
            &out,
            &"--backend",
            &"mlir",
            &"-q",
        ]);
        if case.has_mask {
            args.extend([&"--attention-mask" as &dyn AsRef<std::ffi::OsStr>, &mask]);
        }
        if case.has_buckets() {
            args.extend([&"--lsh-buckets" as &dyn AsRef<std::ffi::OsStr>, &buckets]);
        }
        reformc(&args)?;
        let got: ndarray::ArrayD<f32> = common::read(&out);
        check_logits(case, &got.mapv(f64::from)).map_err(|e| format!("run --backend mlir: {e}"))
    });
}

/// IREE `device` on the module of each case in `only` (every case when `None`).
fn through_iree(only: Option<&[&str]>, device: Device) {
    let iree = Iree::find();
    for_cases(only, |case, dir| {
        let module = emit(case, dir)?;
        let inputs = module_inputs(case, &module)?;
        let text = std::fs::read_to_string(&module).map_err(|e| e.to_string())?;
        let out = iree.run_module(&text, device, &inputs, 1)?;
        check_logits(case, &out[0].to_f64()).map_err(|e| format!("IREE {device:?}: {e}"))
    });
}

#[test]
fn every_fixture_runs_on_iree_llvm_cpu() {
    through_iree(None, Device::Cpu);
}

#[test]
fn lsh_rounds_padding_and_local_fixtures_run_on_iree_vulkan() {
    through_iree(Some(VULKAN_CASES), Device::Vulkan);
}

/// The hashing sources other than replayed buckets: rotations given as an
/// input, and rotations drawn inside the module by the Philox generator
/// (keyed like the CPU backend, so the same `--seed` gives the interpreter's
/// draws). `run --backend mlir` must match `run --interp` with the same flags.
#[test]
fn rotations_and_seeded_hashing_match_the_interpreter() {
    for_cases(
        Some(&["causal_mixed_r2", "noncausal_lsh_r2_after1"]),
        |case, dir| {
            let (config, weights, ids, rotations) = (
                case.dir.join("config.json"),
                case.dir.join("model.safetensors"),
                case.dir.join("input_ids.npy"),
                case.dir.join("lsh_rotations.npy"),
            );
            for source in ["rotations", "seeded"] {
                let mut outs = Vec::new();
                for engine in [&["--backend", "mlir"][..], &["--interp"]] {
                    let out = dir.path(&format!("{source}-{}.npy", outs.len()));
                    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
                        &"run",
                        &config,
                        &"--weights",
                        &weights,
                        &"--input",
                        &ids,
                        &"--output",
                        &out,
                        &"--seed",
                        &"7",
                        &"-q",
                    ];
                    args.extend(engine.iter().map(|e| e as &dyn AsRef<std::ffi::OsStr>));
                    if source == "rotations" {
                        args.extend([
                            &"--lsh-rotations" as &dyn AsRef<std::ffi::OsStr>,
                            &rotations,
                        ]);
                    }
                    reformc(&args).map_err(|e| format!("{source}, {engine:?}: {e}"))?;
                    outs.push(common::read::<f32>(&out).mapv(f64::from));
                }
                let d = max_abs_diff(&outs[0], &outs[1]);
                if d > 1e-4 {
                    return Err(format!(
                        "{source}: MLIR differs from the interpreter by {d:.2e}"
                    ));
                }
            }
            Ok(())
        },
    );
}
