//! Reversible blocks are outlined into functions shared by layers of the same
//! kind (codegen/outline.rs): the module's function count does not grow with
//! depth, and a deep model still equals the interpreter.

use inkwell::context::Context;
use ndarray::{ArrayD, IxDyn};
use reformc_backend_llvm::{build_module, CompileOptions, JitModel, Variant, WeightsMode};
use reformc_frontend::config::parse_model_config;
use reformc_frontend::lower::{expected_weights, lower, LowerOptions, LshSource};
use reformc_ir::{DType, Graph};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::path::Path;

/// A reversible model of `n` layers alternating local and LSH attention.
fn graph(n: usize) -> Graph {
    let layers: Vec<&str> = (0..n)
        .map(|i| if i % 2 == 0 { r#""local""# } else { r#""lsh""# })
        .collect();
    let text = format!(
        r#"{{
  "format": "reformc-model", "version": 1, "architecture": "reversible",
  "vocab_size": 20, "hidden_size": 16, "num_heads": 2, "head_dim": 8,
  "feed_forward_size": 24, "activation": "relu", "layer_norm_eps": 1e-5,
  "causal": true, "layers": [{}],
  "lsh": {{"chunk": 4, "before": 1, "after": 0, "n_hashes": 2, "buckets": 4}},
  "local": {{"chunk": 4, "before": 1, "after": 0}},
  "position": {{"type": "learned"}}, "max_position_embeddings": 64,
  "pad_token_id": 0, "head": {{"type": "lm_head", "bias": false}},
  "weight_prefix": ""
}}"#,
        layers.join(", ")
    );
    let (spec, _, _) = parse_model_config(&text, Path::new("deep.json")).unwrap();
    let opts = LowerOptions {
        dtype: DType::F32,
        lsh_source: LshSource::Seeded,
        seq_len: Some(16),
    };
    lower(&spec, &opts).unwrap().graph
}

/// Names of the outlined block functions in the module built for `g`.
fn block_functions(g: &Graph) -> Vec<String> {
    let ctx = Context::create();
    let variants = [Variant {
        name: "seeded".into(),
        graph: g.clone(),
    }];
    let cm = build_module(
        &ctx,
        &variants,
        &CompileOptions::default(),
        &WeightsMode::Runtime,
        None,
    )
    .unwrap();
    cm.module
        .get_functions()
        .map(|f| f.get_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".block%"))
        .collect()
}

#[test]
fn layers_of_one_kind_share_a_function() {
    let shallow = block_functions(&graph(4));
    let deep = block_functions(&graph(24));
    assert!(!shallow.is_empty(), "no outlined block");
    assert!(
        deep.len() == shallow.len() && deep.len() < 24,
        "24 layers: {deep:?}; 4 layers: {shallow:?}"
    );
}

fn weights(g: &Graph) -> BTreeMap<String, Tensor> {
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    expected_weights(g)
        .into_iter()
        .map(|(n, s)| {
            let shape: Vec<usize> = s.iter().map(|&d| d as usize).collect();
            let count: usize = shape.iter().product();
            let v = (0..count).map(|_| next()).collect();
            let a = ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap();
            (n, Tensor::F32(a))
        })
        .collect()
}

#[test]
fn a_deep_model_equals_the_interpreter() {
    let g = graph(12);
    let w = weights(&g);
    let (b, l) = (2usize, 13usize);
    let ids = (0..b * l).map(|i| (i * 7 % 19) as i64 + 1).collect();
    let mut inp = BTreeMap::new();
    inp.insert(
        "input_ids".to_string(),
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[b, l]), ids).unwrap()),
    );
    inp.insert(
        "attention_mask".to_string(),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[b, l]), 1)),
    );
    inp.insert(
        "seed".to_string(),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 5)),
    );
    let want = reformc_interp::run(&g, &inp, &w).unwrap()["logits"].to_f64();
    let ctx = Context::create();
    let jit = JitModel::new(&ctx, &g, &w).unwrap();
    let got = jit.run(&inp).unwrap()["logits"].to_f64();
    assert_eq!(want.shape(), got.shape());
    let d = (&want - &got).mapv(f64::abs).fold(0.0f64, |m, &x| m.max(x));
    assert!(d <= 1e-4, "12 layers: JIT vs interpreter {d:e}");
}
