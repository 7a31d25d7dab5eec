//! Runs `simplify` on a 12-layer Reformer and prints the saturation report.
//!
//! `cargo run --release -p reformc-passes --example simplify_stats [LAYERS]`
//!
//! Three runs: the model as lowered (regions optimized one by one), its
//! primitive form (every `reversible_block` unfolded into slices, adds and a
//! concat: one large body), and the primitive form with the opt-in
//! `algebra` phase (associativity and commutativity), which explodes and
//! stops at the node limit.

use reformc_frontend::config::parse_model_config;
use reformc_frontend::lower::{lower, LowerOptions};
use reformc_passes::eqsat::Phase;
use reformc_passes::reversible::unfold_reversible;
use reformc_passes::simplify::{algebra_rules, default_phases, SimplifyPass};
use std::path::Path;
use std::time::Instant;

fn main() {
    let layers: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let attn: Vec<&str> = (0..layers)
        .map(|i| if i % 2 == 0 { "local" } else { "lsh" })
        .collect();
    let config = serde_json::json!({
        "model_type": "reformer",
        "architectures": ["ReformerModelWithLMHead"],
        "is_decoder": true,
        "attn_layers": attn,
        "num_buckets": [32, 64],
        "num_hashes": 2,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "attention_head_size": 64,
        "feed_forward_size": 1024,
        "axial_pos_shape": [64, 64],
        "axial_pos_embds_dim": [64, 192],
        "max_position_embeddings": 4096
    });
    let (spec, _, _) =
        parse_model_config(&config.to_string(), Path::new("reformer.json")).expect("valid config");
    let g = lower(&spec, &LowerOptions::default())
        .expect("lowers")
        .graph;
    let mut primitive = g.clone();
    unfold_reversible(&mut primitive).expect("unfolds");
    let mut with_algebra = default_phases();
    with_algebra.push(Phase {
        name: "algebra",
        rules: algebra_rules(),
    });
    let runs = [
        ("as lowered", g, SimplifyPass::new()),
        ("primitive form", primitive.clone(), SimplifyPass::new()),
        (
            "primitive form + algebra",
            primitive,
            SimplifyPass::new().with_phases(with_algebra),
        ),
    ];
    println!("{layers}-layer Reformer");
    for (what, mut graph, pass) in runs {
        let ops = graph.len();
        let t = Instant::now();
        let report = pass.run_report(&mut graph).expect("simplify runs");
        let wall = t.elapsed();
        println!(
            "\n{what}: {ops} IR nodes in, {} out, wall {wall:.1?}",
            graph.len()
        );
        println!("  {report}");
        println!("  applied: {:?}", report.applied());
        let hit = report.limits_hit();
        if !hit.is_empty() {
            println!("  limits hit: {hit:?}");
        }
    }
}
