//! The backend's interface around the lowerings: weights embedded as
//! `dense_resource` blobs (every dtype a weight can have) against weights as
//! arguments, a saved module run again, the weight checks, and the signature.

use crate::common;

use common::{random_f32, random_i64};
use reformc_backend_mlir::{
    emit_module, emit_module_with_weights, jit_run, jit_run_emitted, jit_run_with_weights,
    signature_json, verify_module, EmitOptions, MlirError, WeightsMode,
};
use reformc_interp::Tensor;
use std::collections::BTreeMap;
use std::process::Command;

const EMBED: EmitOptions = EmitOptions {
    weights_mode: WeightsMode::Embed,
};

/// f32, f64 and i64 weights, one of them read twice, and two inputs.
const GRAPH: &str = "graph {
  %0 = input {name=\"x\"} : f32[B,L,8]
  %1 = weight {name=\"layer.0/w\"} : f32[1,8,5]
  %2 = matmul %0, %1 : f32[B,L,5]
  %3 = weight {name=\"bias\"} : f32[5]
  %4 = add %2, %3 : f32[B,L,5]
  %5 = weight {name=\"bias\"} : f32[5]
  %6 = mul %4, %5 : f32[B,L,5]
  %7 = weight {name=\"scale64\"} : f64[5]
  %8 = cast %6 : f64[B,L,5]
  %9 = mul %8, %7 : f64[B,L,5]
  %10 = weight {name=\"offsets\"} : i64[5]
  %11 = input {name=\"ids\"} : i64[B,5]
  %12 = add %11, %10 : i64[B,5]
  %13 = weight {name=\"temperature\"} : f64[]
  %14 = mul %9, %13 : f64[B,L,5]
  output \"y\" = %14
  output \"z\" = %12
}
";

fn graph() -> reformc_ir::Graph {
    let g = reformc_ir::parse(GRAPH).unwrap();
    reformc_ir::verify(&g).unwrap();
    g
}

fn weights() -> BTreeMap<String, Tensor> {
    let mut w = BTreeMap::new();
    w.insert("layer.0/w".to_string(), random_f32(&[1, 8, 5], 1));
    w.insert("bias".to_string(), random_f32(&[5], 2));
    let s = random_f32(&[5], 3).to_f64().mapv(|x| x * 3.0 + 0.125);
    w.insert("scale64".to_string(), Tensor::F64(s));
    w.insert("offsets".to_string(), random_i64(&[5], 1000, 4));
    w.insert(
        "temperature".to_string(),
        Tensor::F64(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), 1.5)),
    );
    w
}

fn inputs(b: usize, l: usize) -> Vec<Tensor> {
    vec![random_f32(&[b, l, 8], 5), random_i64(&[b, 5], 50, 6)]
}

/// Weights as `jit_run` wants them: in graph order, one per weight op.
fn weight_args(g: &reformc_ir::Graph, w: &BTreeMap<String, Tensor>) -> Vec<Tensor> {
    g.weights().iter().map(|(n, _)| w[*n].clone()).collect()
}

#[test]
fn embedded_weights_compute_what_weight_arguments_compute() {
    let (g, w) = (graph(), weights());
    for (b, l) in [(1, 1), (2, 7), (3, 16)] {
        let mut args = weight_args(&g, &w);
        args.extend(inputs(b, l));
        let want = jit_run(&g, &args).unwrap();
        let got = jit_run_with_weights(&g, &w, &inputs(b, l)).unwrap();
        assert_eq!(got, want, "B={b} L={l}");
    }
}

#[test]
fn the_embedded_module_verifies_and_names_one_blob_per_weight() {
    let (g, w) = (graph(), weights());
    let text = emit_module_with_weights(&g, &EMBED, &w).unwrap();
    verify_module(&text).unwrap();
    // `bias` is read twice from one blob; `/` is not in a bare identifier.
    assert_eq!(text.matches("dense_resource<bias>").count(), 2);
    assert!(text.contains("dense_resource<layer.0_w> : tensor<1x8x5xf32>"));
    assert!(
        text.contains("      scale64: \"0x08000000"),
        "f64: alignment 8"
    );
    assert!(
        text.contains("      offsets: \"0x08000000"),
        "i64: alignment 8"
    );
    assert_eq!(text.matches("      bias: \"0x04000000").count(), 1);
    // A rank-0 weight is inline (IREE crashes on a rank-0 dense_resource).
    assert!(text.contains("arith.constant dense<0x3FF8000000000000> : tensor<f64>"));
    assert!(!text.contains("temperature"));
    let head = text.lines().find(|l| l.contains("@forward")).unwrap();
    assert_eq!(
        head.matches("reformc.name").count(),
        4,
        "x, ids, y, z: {head}"
    );
    let dir = std::env::temp_dir().join(format!("reformc-iface-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.mlir");
    std::fs::write(&p, &text).unwrap();
    let out = Command::new("mlir-opt-22").arg(&p).output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.unwrap_or_else(|e| panic!("mlir-opt-22: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "mlir-opt-22: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_saved_module_runs_again_in_either_mode() {
    let (g, w) = (graph(), weights());
    let want = jit_run_with_weights(&g, &w, &inputs(2, 3)).unwrap();
    let embedded = emit_module_with_weights(&g, &EMBED, &w).unwrap();
    assert_eq!(
        jit_run_emitted(&g, WeightsMode::Embed, &embedded, &inputs(2, 3)).unwrap(),
        want
    );
    let plain = emit_module(&g, &EmitOptions::default()).unwrap();
    let mut args = weight_args(&g, &w);
    args.extend(inputs(2, 3));
    assert_eq!(
        jit_run_emitted(&g, WeightsMode::Args, &plain, &args).unwrap(),
        want
    );
    // The embedded module takes the inputs only.
    assert!(jit_run_emitted(&g, WeightsMode::Embed, &embedded, &args).is_err());
}

#[test]
fn weights_that_do_not_match_name_the_tensor() {
    let g = graph();
    let cases: [(&str, Option<Tensor>, &str); 4] = [
        ("bias", None, "weight `bias` is missing (expected f32[5])"),
        (
            "bias",
            Some(random_f32(&[6], 1)),
            "weight `bias`: expected f32[5], found f32[6]",
        ),
        (
            "scale64",
            Some(random_f32(&[5], 1)),
            "weight `scale64`: expected f64[5], found f32[5]",
        ),
        (
            "layer.0/w",
            Some(random_f32(&[8, 5], 1)),
            "weight `layer.0/w`: expected f32[1,8,5], found f32[8,5]",
        ),
    ];
    for (name, replacement, message) in cases {
        let mut w = weights();
        match replacement {
            Some(t) => w.insert(name.to_string(), t),
            None => w.remove(name),
        };
        for mode in [WeightsMode::Embed, WeightsMode::Args] {
            let err =
                emit_module_with_weights(&g, &EmitOptions { weights_mode: mode }, &w).unwrap_err();
            assert!(matches!(err, MlirError::Weights(_)), "{err}");
            assert_eq!(err.to_string(), message);
        }
    }
    // Embedding without the data says which weight is missing.
    let err = emit_module(&g, &EMBED).unwrap_err();
    assert!(err.to_string().contains("is missing"), "{err}");
}

#[test]
fn the_signature_lists_arguments_in_order_with_symbolic_dims() {
    let g = graph();
    let embed: serde_json::Value = serde_json::from_str(&signature_json(&g, &EMBED)).unwrap();
    let names = |s: &serde_json::Value, k: &str| -> Vec<String> {
        s[k].as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(embed["entry"], "forward");
    assert_eq!(names(&embed, "inputs"), ["x", "ids"]);
    assert_eq!(names(&embed, "outputs"), ["y", "z"]);
    assert_eq!(
        embed["inputs"][0]["shape"],
        serde_json::json!(["B", "L", 8])
    );
    assert_eq!(embed["outputs"][0]["dtype"], "f64");
    assert_eq!(embed["outputs"][1]["dtype"], "i64");
    let args: serde_json::Value =
        serde_json::from_str(&signature_json(&g, &EmitOptions::default())).unwrap();
    assert_eq!(
        names(&args, "inputs"),
        [
            "layer.0/w",
            "bias",
            "bias",
            "scale64",
            "offsets",
            "temperature",
            "x",
            "ids"
        ]
    );
    assert_eq!(args["inputs"][0]["kind"], "weight");
    assert_eq!(args["inputs"][6]["kind"], "input");
    // The argument count matches the function's.
    let text = emit_module(&g, &EmitOptions::default()).unwrap();
    let head = text.lines().find(|l| l.contains("@forward")).unwrap();
    let params = head.split("->").next().unwrap();
    assert_eq!(params.matches("reformc.name").count(), 8);
}
