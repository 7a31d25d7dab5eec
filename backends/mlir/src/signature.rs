//! The signature file written beside a module (`model.mlir.json`): what
//! `@forward` takes and returns, by name, so that a caller in another
//! pipeline (IREE, a custom runner) can feed it without reading the MLIR.

use crate::{EmitOptions, WeightsMode};
use reformc_ir::{Dim, Graph, ValueId};
use serde_json::{json, Value};

/// One argument or result: name, dtype (the IR's names: `f32`, `i64`, ...)
/// and shape, numeric dimensions as numbers and symbolic ones by name.
fn entry(g: &Graph, name: &str, v: ValueId, kind: Option<&str>) -> Value {
    let ty = g.ty(v);
    let shape: Vec<Value> = ty
        .shape
        .iter()
        .map(|d| match d {
            Dim::Const(c) => json!(c),
            Dim::Sym(s) => json!(s),
        })
        .collect();
    let mut e = json!({"name": name, "dtype": ty.dtype.to_string(), "shape": shape});
    if let Some(k) = kind {
        e["kind"] = json!(k);
    }
    e
}

/// The signature of the module [`crate::emit_module`] writes for `graph` with
/// `opts`, as pretty-printed JSON:
/// `{"entry": "forward", "weights_mode": ..., "inputs": [...], "outputs": [...]}`.
/// Inputs are the function's arguments in order: with `args`, the weights
/// first (`"kind": "weight"`, by safetensors name), then the runtime inputs
/// (`"kind": "input"`); with `embed`, the runtime inputs only.
///
/// ```
/// use reformc_backend_mlir::{signature_json, EmitOptions};
/// let g = reformc_ir::parse(
///     "graph {\n  %0 = input {name=\"input_ids\"} : i64[B,L]\n  %1 = cast %0 : f32[B,L]\n  output \"y\" = %1\n}\n",
/// )
/// .unwrap();
/// let s: serde_json::Value = serde_json::from_str(&signature_json(&g, &EmitOptions::default())).unwrap();
/// assert_eq!(s["entry"], "forward");
/// assert_eq!(s["inputs"][0]["shape"], serde_json::json!(["B", "L"]));
/// assert_eq!(s["outputs"][0]["dtype"], "f32");
/// ```
pub fn signature_json(graph: &Graph, opts: &EmitOptions) -> String {
    let embed = opts.weights_mode == WeightsMode::Embed;
    let mut inputs = Vec::new();
    if !embed {
        inputs.extend(
            graph
                .weights()
                .into_iter()
                .map(|(n, v)| entry(graph, n, v, Some("weight"))),
        );
    }
    inputs.extend(
        graph
            .inputs()
            .into_iter()
            .map(|(n, v)| entry(graph, n, v, Some("input"))),
    );
    let outputs: Vec<Value> = graph
        .outputs
        .iter()
        .map(|(n, v)| entry(graph, n, *v, None))
        .collect();
    let doc = json!({
        "entry": "forward",
        "weights_mode": if embed { "embed" } else { "args" },
        "inputs": inputs,
        "outputs": outputs,
    });
    // A `Value` always serializes.
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}
