//! Activation memory of a training step does not grow with depth: the
//! reversible recompute keeps only the top block's output for the backward
//! pass. Measured with the memory plan's static live peak (activations and
//! temporaries, arena before placement) of the step graph, 2 vs 12 layers;
//! the same graph with the blocks unfolded into plain residual code (so
//! ordinary reverse mode stores every layer's activations) grows with depth.

use reformc_frontend::config::parse_model_config;
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_ir::{DType, Graph};
use reformc_passes::autodiff::{append_loss, differentiate, LOSS};
use reformc_passes::cost::dim_env;
use reformc_passes::memory_plan::plan_memory;
use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline};
use std::path::Path;

const LEN: u64 = 2048;

/// The forward graph of an all-LSH causal Reformer with `layers` layers.
fn forward(layers: usize) -> Graph {
    let path = Path::new("tests/fixtures/causal_lsh_r1/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    cfg["attn_layers"] = serde_json::json!(vec!["lsh"; layers]);
    cfg["num_hidden_layers"] = serde_json::json!(layers);
    cfg["axial_pos_shape"] = serde_json::json!([32, 64]);
    cfg["max_position_embeddings"] = serde_json::json!(LEN);
    cfg["lsh_attn_chunk_length"] = serde_json::json!(64);
    cfg["num_buckets"] = serde_json::json!(32);
    let (spec, _, _) = parse_model_config(&cfg.to_string(), path).unwrap();
    let opts = LowerOptions {
        dtype: DType::F32,
        lsh_source: LshSource::Seeded,
        seq_len: Some(LEN),
    };
    let mut g = lower(&spec, &opts).unwrap().graph;
    let names: Vec<&str> = vec![
        "simplify",
        "attention",
        "reversible",
        "chunk",
        "lower-model",
    ];
    let pm = PassManager::new(
        Pipeline::new(&names).unwrap(),
        Instrumentation {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let popts = PassOptions {
        seq_len: Some(LEN),
        ..Default::default()
    };
    pm.run(&mut g, &popts, &mut std::io::sink()).unwrap();
    append_loss(&mut g, "logits").unwrap();
    g
}

/// Live activation peak (bytes) of the step graph of `g`.
fn step_peak(g: &Graph) -> u64 {
    let d = differentiate(g, LOSS).unwrap();
    plan_memory(&d, &dim_env(&d, 1, LEN))
        .unwrap()
        .live_peak_bytes
}

#[test]
fn reversible_step_memory_is_flat_in_depth_and_stored_activations_are_not() {
    let (two, twelve) = (forward(2), forward(12));
    let (r2, r12) = (step_peak(&two), step_peak(&twelve));
    let unfolded = |g: &Graph| {
        let mut g = g.clone();
        reformc_passes::reversible::unfold_reversible(&mut g).unwrap();
        step_peak(&g)
    };
    let (s2, s12) = (unfolded(&two), unfolded(&twelve));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("L={LEN}: reversible recompute {:.1} -> {:.1} MiB (2 -> 12 layers); stored activations {:.1} -> {:.1} MiB", mib(r2), mib(r12), mib(s2), mib(s12));
    assert!(
        r12 as f64 <= 1.15 * r2 as f64,
        "recompute: {r2} -> {r12} bytes"
    );
    assert!(
        s12 as f64 >= 2.0 * s2 as f64,
        "stored: {s2} -> {s12} bytes (the contrast should grow)"
    );
    assert!(
        r12 * 2 < s12,
        "recompute at 12 layers should need far less than storing"
    );
}
