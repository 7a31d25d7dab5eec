//! The MLIR backend through the CLI: `compile --emit mlir` (module and
//! signature file, weights embedded or as arguments), `run --backend mlir`,
//! and the bad inputs that must exit 2 with one line.
//!
//! The graphs here are IR files made of ops the backend lowers; whole Hugging
//! Face models are in `tests/mlir_fixtures.rs`.

use crate::common;

use common::mlir_module::check_upstream;
use common::random_model::write_safetensors;
use common::Scratch;
use ndarray::{ArrayD, IxDyn};
use reformc_interp::Tensor;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A graph of lowered ops: token ids [B, 8] cast, projected, biased, softmaxed.
const GRAPH: &str = "graph {
  %0 = input {name=\"input_ids\"} : i64[B,8]
  %1 = cast %0 : f32[B,8]
  %2 = weight {name=\"proj.weight\"} : f32[8,6]
  %3 = matmul %1, %2 : f32[B,6]
  %4 = weight {name=\"proj.bias\"} : f32[6]
  %5 = add %3, %4 : f32[B,6]
  %6 = softmax %5 {axis=1} : f32[B,6]
  output \"logits\" = %6
}
";

/// Runs reformc in the workspace root; returns (exit code, stdout, stderr).
fn reformc(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args.iter().map(|a| a.as_ref()))
        .current_dir(common::root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "reformc panicked: {stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// Asserts exit 2 with exactly one line on stderr containing every `needle`.
fn assert_one_line_error(got: (i32, String, String), needles: &[&str]) {
    let (code, _, stderr) = got;
    assert_eq!(code, 2, "expected exit 2, got {code}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in: {stderr}");
    }
}

fn f32_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 1000.0 - 0.5) * 0.6)
        .collect();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap())
}

/// The graph, its weights and token ids in a scratch folder.
struct Setup {
    dir: Scratch,
    ir: PathBuf,
    weights: PathBuf,
    ids: PathBuf,
}

impl Setup {
    /// `reformc run` on the set-up's graph, weights and ids into `out`,
    /// quietly, with `flags` added.
    fn run(&self, out: &Path, flags: &[&str]) -> (i32, String, String) {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"run",
            &self.ir,
            &"--weights",
            &self.weights,
            &"--input",
            &self.ids,
            &"--output",
            &out,
            &"-q",
        ];
        for f in flags {
            args.push(f);
        }
        reformc(&args)
    }
}

fn setup(name: &str) -> Setup {
    let dir = Scratch::new(name);
    let ir = dir.write("g.ir", GRAPH.as_bytes());
    let mut w = BTreeMap::new();
    w.insert("proj.weight".to_string(), f32_tensor(&[8, 6], 1));
    w.insert("proj.bias".to_string(), f32_tensor(&[6], 2));
    let weights = dir.path("w.safetensors");
    write_safetensors(&weights, &w);
    let ids = dir.path("ids.npy");
    let a = ArrayD::from_shape_fn(IxDyn(&[3, 8]), |ix| ((ix[0] * 5 + ix[1] * 3) % 7) as i64);
    common::write(&ids, &a);
    Setup {
        dir,
        ir,
        weights,
        ids,
    }
}

/// `mlir-opt-22` accepts the module file (the tool is part of the set-up: a
/// missing tool fails the test).
fn mlir_opt_verifies(path: &Path) {
    let out = Command::new("mlir-opt-22")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("mlir-opt-22: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "mlir-opt-22 rejects {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn signature(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn compile_emits_an_embedded_module_and_its_signature() {
    let s = setup("embed");
    let out = s.dir.path("model.mlir");
    let (code, stdout, stderr) = reformc(&[
        &"compile",
        &s.ir,
        &"--weights",
        &s.weights,
        &"--emit",
        &"mlir",
        &"-o",
        &out,
        &"-q",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty(), "-q prints nothing: {stdout}");
    let module = std::fs::read_to_string(&out).unwrap();
    // Only the runtime input is an argument; the weights are blobs.
    let head = module
        .lines()
        .find(|l| l.contains("func.func @forward"))
        .unwrap();
    assert!(head.contains("reformc.name = \"input_ids\""), "{head}");
    assert!(!head.contains("proj."), "weights are not arguments: {head}");
    assert!(module.contains("arith.constant dense_resource<proj.weight> : tensor<8x6xf32>"));
    assert!(module.contains("dialect_resources"));
    // The bias blob: alignment 4, then 6 little-endian f32.
    let bias = module
        .lines()
        .find_map(|l| l.trim().strip_prefix("proj.bias: \""))
        .unwrap();
    assert!(bias.starts_with("0x04000000"), "{bias}");
    assert_eq!(bias.trim_end_matches(['"', ',']).len(), 2 + 8 + 6 * 8);
    check_upstream(&module);
    mlir_opt_verifies(&out);
    let sig = signature(&s.dir.path("model.mlir.json"));
    assert_eq!(sig["entry"], "forward");
    assert_eq!(sig["weights_mode"], "embed");
    let inputs = sig["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0]["name"], "input_ids");
    assert_eq!(inputs[0]["dtype"], "i64");
    assert_eq!(inputs[0]["shape"], serde_json::json!(["B", 8]));
    assert_eq!(sig["outputs"][0]["name"], "logits");
    assert_eq!(sig["outputs"][0]["shape"], serde_json::json!(["B", 6]));
}

#[test]
fn compile_with_weights_as_arguments_names_them() {
    let s = setup("args");
    let out = s.dir.path("m.mlir");
    let (code, stdout, stderr) = reformc(&[
        &"compile",
        &s.ir,
        &"--weights",
        &s.weights,
        &"--emit",
        &"mlir",
        &"--weights-mode",
        &"args",
        &"-o",
        &out,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("m.mlir.json"), "{stdout}");
    let module = std::fs::read_to_string(&out).unwrap();
    assert!(!module.contains("dense_resource"));
    let head = module
        .lines()
        .find(|l| l.contains("func.func @forward"))
        .unwrap();
    let w = head.find("\"proj.weight\"").unwrap();
    let b = head.find("\"proj.bias\"").unwrap();
    let ids = head.find("\"input_ids\"").unwrap();
    assert!(w < b && b < ids, "weights lead, in graph order: {head}");
    mlir_opt_verifies(&out);
    let sig = signature(&s.dir.path("m.mlir.json"));
    assert_eq!(sig["weights_mode"], "args");
    let names: Vec<&str> = sig["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["proj.weight", "proj.bias", "input_ids"]);
    assert_eq!(sig["inputs"][0]["kind"], "weight");
    assert_eq!(sig["inputs"][0]["shape"], serde_json::json!([8, 6]));
}

#[test]
fn run_on_the_mlir_backend_matches_the_interpreter_and_the_llvm_jit() {
    let s = setup("run");
    let mut outs = Vec::new();
    for (i, engine) in [&["--backend", "mlir"][..], &["--interp"], &[]]
        .iter()
        .enumerate()
    {
        let out = s.dir.path(&format!("out{i}.npy"));
        let (code, stdout, stderr) = s.run(&out, engine);
        assert_eq!(code, 0, "{engine:?}: {stderr}");
        if i == 0 {
            assert!(stdout.contains("(MLIR CPU pipeline)"), "{stdout}");
        }
        outs.push(common::read::<f32>(&out));
    }
    assert_eq!(outs[0].shape(), [3, 6]);
    for other in &outs[1..] {
        let d = (&outs[0] - other)
            .mapv(f32::abs)
            .fold(0.0f32, |m, &x| m.max(x));
        assert!(d <= 1e-5, "MLIR differs by {d}");
    }
}

#[test]
fn profile_on_the_mlir_backend_times_every_leaf_op_without_changing_the_output() {
    let s = setup("profile");
    let mut outs = Vec::new();
    for (i, profile) in [false, true].into_iter().enumerate() {
        let out = s.dir.path(&format!("out{i}.npy"));
        let flags: &[&str] = match profile {
            true => &["--backend", "mlir", "--profile"],
            false => &["--backend", "mlir"],
        };
        let (code, _, stderr) = s.run(&out, flags);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stderr.contains("by op kind"), profile, "{stderr}");
        outs.push(common::read::<f32>(&out));
    }
    assert_eq!(outs[0], outs[1], "timing calls changed the result");
}

#[test]
fn weights_that_do_not_match_are_one_line_naming_the_tensor() {
    let s = setup("mismatch");
    let bad = s.dir.path("bad.safetensors");
    let mut w = BTreeMap::new();
    w.insert("proj.weight".to_string(), f32_tensor(&[8, 5], 1));
    w.insert("proj.bias".to_string(), f32_tensor(&[6], 2));
    write_safetensors(&bad, &w);
    let out = s.dir.path("m.mlir");
    let got = reformc(&[
        &"compile",
        &s.ir,
        &"--weights",
        &bad,
        &"--emit",
        &"mlir",
        &"-o",
        &out,
    ]);
    assert_one_line_error(got, &["proj.weight", "[8, 6]"]);
    assert!(!out.exists());
    w.remove("proj.bias");
    write_safetensors(&bad, &w);
    let got = reformc(&[
        &"compile",
        &s.ir,
        &"--weights",
        &bad,
        &"--emit",
        &"mlir",
        &"-o",
        &out,
    ]);
    assert_one_line_error(got, &["proj.bias"]);
}

#[test]
fn a_model_with_another_models_weights_is_one_line() {
    let s = setup("model-mismatch");
    let fixtures = common::root().join("tests/fixtures");
    let out = s.dir.path("m.mlir");
    let got = reformc(&[
        &"compile",
        &fixtures.join("causal_lsh_r1/config.json"),
        &"--weights",
        &fixtures.join("noncausal_local_only/model.safetensors"),
        &"--emit",
        &"mlir",
        &"-o",
        &out,
        &"-q",
    ]);
    assert_one_line_error(got, &["noncausal_local_only/model.safetensors", "tensor `"]);
    assert!(!out.exists());
}

#[test]
fn an_unwritable_output_is_one_line() {
    let s = setup("unwritable");
    let out = s.dir.path("no/such/dir/m.mlir");
    let got = reformc(&[
        &"compile",
        &s.ir,
        &"--weights",
        &s.weights,
        &"--emit",
        &"mlir",
        &"-o",
        &out,
    ]);
    assert_one_line_error(got, &["--output", "m.mlir"]);
    // The signature file may not overwrite an input either.
    let clash = s.dir.path("w");
    std::fs::copy(&s.weights, s.dir.path("w.json")).unwrap();
    let got = reformc(&[
        &"compile",
        &s.ir,
        &"--weights",
        &s.dir.path("w.json"),
        &"--emit",
        &"mlir",
        &"-o",
        &clash,
    ]);
    assert_one_line_error(got, &["signature"]);
}

#[test]
fn flags_of_the_other_backend_are_refused_in_one_line() {
    let s = setup("flags");
    let out = s.dir.path("m.mlir");
    let base: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"compile", &s.ir, &"--weights", &s.weights, &"-o", &out];
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--emit", "mlir", "--weights-mode", "mmap"],
            &["--weights-mode mmap"],
        ),
        (
            &["--emit", "exe", "--weights-mode", "args"],
            &["--weights-mode args"],
        ),
        (
            &["--emit", "obj", "--lsh-source", "buckets"],
            &["--lsh-source"],
        ),
        (&["--emit", "mlir", "--memory-plan"], &["--memory-plan"]),
    ];
    for (extra, needles) in cases {
        let mut args = base.clone();
        for e in extra {
            args.push(e);
        }
        assert_one_line_error(reformc(&args), needles);
    }
    let got = reformc(&[
        &"run",
        &s.ir,
        &"--weights",
        &s.weights,
        &"--input",
        &s.ids,
        &"--output",
        &out,
        &"--backend",
        &"mlir",
        &"--interp",
    ]);
    assert_one_line_error(got, &["--interp"]);
}

/// Every op the backend does not lower yet is a one-line compile error naming
/// it, never invalid MLIR; an op it lowers compiles. (Which is which changes
/// as lowerings land: the library decides what to expect.)
#[test]
fn an_op_without_a_lowering_is_one_line_naming_it() {
    let graphs = [
        ("argsort", "%2 = argsort %1 {axis=1} : i64[B,8]"),
        ("argmax", "%2 = argmax %1 {axis=1} : i64[B]"),
    ];
    let s = setup("unsupported");
    let none = s.dir.path("none.safetensors");
    write_safetensors(&none, &BTreeMap::new());
    for (op, line) in graphs {
        let text = format!(
            "graph {{\n  %0 = input {{name=\"input_ids\"}} : i64[B,8]\n  %1 = cast %0 : f32[B,8]\n  {line}\n  output \"y\" = %2\n}}\n"
        );
        let g = reformc_ir::parse(&text).unwrap_or_else(|e| panic!("{op}: {e}"));
        let lowered = reformc_backend_mlir::emit_module(&g, &Default::default());
        let ir = s.dir.write(&format!("{op}.ir"), text.as_bytes());
        let out = s.dir.path(&format!("{op}.mlir"));
        let got = reformc(&[
            &"compile",
            &ir,
            &"--weights",
            &none,
            &"--emit",
            &"mlir",
            &"-o",
            &out,
            &"-q",
            &"--pipeline",
            &"none",
        ]);
        match lowered {
            Err(reformc_backend_mlir::MlirError::Unsupported { .. }) => {
                assert_one_line_error(got, &[&format!("`{op}`"), &format!("{op}.ir")]);
                assert!(!out.exists(), "{op}: no module is written");
            }
            Err(e) => panic!("{op}: {e}"),
            Ok(_) => {
                assert_eq!(got.0, 0, "{op}: {}", got.2);
                mlir_opt_verifies(&out);
            }
        }
    }
}

/// The module `compile` writes runs on IREE (CPU and Vulkan) with the inputs
/// its signature names, and gives the interpreter's output.
#[test]
fn the_compiled_module_runs_on_iree_like_the_interpreter() {
    let s = setup("iree");
    let (module, want) = (s.dir.path("m.mlir"), s.dir.path("want.npy"));
    let (code, _, stderr) = reformc(&[
        &"compile",
        &s.ir,
        &"--weights",
        &s.weights,
        &"--emit",
        &"mlir",
        &"-o",
        &module,
        &"-q",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = reformc(&[
        &"run",
        &s.ir,
        &"--weights",
        &s.weights,
        &"--input",
        &s.ids,
        &"--output",
        &want,
        &"--interp",
        &"-q",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let sig = signature(&s.dir.path("m.mlir.json"));
    assert_eq!(sig["inputs"][0]["name"], "input_ids");
    let ids = Tensor::I64(common::read::<i64>(&s.ids));
    let want = common::read::<f32>(&want);
    let text = std::fs::read_to_string(&module).unwrap();
    let iree = common::iree::Iree::find();
    for device in [common::iree::Device::Cpu, common::iree::Device::Vulkan] {
        let got = iree
            .run_module(&text, device, std::slice::from_ref(&ids), 1)
            .unwrap_or_else(|e| panic!("{e}"));
        let Tensor::F32(got) = &got[0] else {
            panic!("{device:?}: not f32")
        };
        let d = (got - &want).mapv(f32::abs).fold(0.0f32, |m, &x| m.max(x));
        assert!(
            d <= 1e-5,
            "{device:?}: IREE differs from the interpreter by {d}"
        );
    }
}
