//! Adversarial bounds: a 64-layer Reformer with factorized buckets runs
//! through `simplify` within its limits, reports the limit it hit instead of
//! running away, and extracts the same graph every time.

use reformc_frontend::config::parse_model_config;
use reformc_frontend::lower::{lower, LowerOptions};
use reformc_ir::{print, Graph};
use reformc_passes::eqsat::{Phase, SaturationLimits, StopReason};
use reformc_passes::reversible::unfold_reversible;
use reformc_passes::simplify::{algebra_rules, default_phases, SimplifyPass};
use std::path::Path;
use std::time::{Duration, Instant};

/// 64 layers alternating local and LSH attention, buckets factorized as [4, 8].
fn deep_model() -> Graph {
    let layers: Vec<&str> = (0..64)
        .map(|i| if i % 2 == 0 { "local" } else { "lsh" })
        .collect();
    let config = serde_json::json!({
        "model_type": "reformer",
        "architectures": ["ReformerModelWithLMHead"],
        "is_decoder": true,
        "attn_layers": layers,
        "num_buckets": [4, 8],
        "num_hashes": 2,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "attention_head_size": 8,
        "feed_forward_size": 64,
        "vocab_size": 48,
        "axial_pos_shape": [16, 16],
        "axial_pos_embds_dim": [16, 16],
        "max_position_embeddings": 256,
        "lsh_attn_chunk_length": 16,
        "local_attn_chunk_length": 16
    });
    let (spec, _, _) = parse_model_config(&config.to_string(), Path::new("deep.json")).unwrap();
    assert_eq!(spec.layers.len(), 64);
    lower(&spec, &LowerOptions::default()).unwrap().graph
}

#[test]
fn default_simplify_saturates_on_the_folded_model() {
    let g = deep_model();
    let mut s = g.clone();
    let report = SimplifyPass::new().run_report(&mut s).unwrap();
    assert_eq!(report.stop_reason(), StopReason::Saturated, "{report}");
    assert_eq!(report.egraphs, 1 + 2 * 64);
    assert_eq!(print(&s), print(&g));
}

#[test]
fn exploding_rules_stop_at_the_node_limit_deterministically() {
    // Primitive form: one body, the residual stream a chain of 64 additions once
    // slice(concat(..)) folds; associativity and commutativity explode on it.
    let mut g = deep_model();
    unfold_reversible(&mut g).unwrap();
    let mut phases = default_phases();
    phases.push(Phase {
        name: "algebra",
        rules: algebra_rules(),
    });
    let limits = SaturationLimits::default();
    let pass = SimplifyPass::new()
        .with_phases(phases)
        .with_limits(limits.clone());
    let start = Instant::now();
    let mut a = g.clone();
    let report = pass.run_report(&mut a).unwrap();
    let took = start.elapsed();
    eprintln!("{report}");
    assert_eq!(report.stop_reason(), StopReason::NodeLimit, "{report}");
    assert_eq!(
        report.limits_hit(),
        vec![("top", "algebra", StopReason::NodeLimit)]
    );
    // Rules stop applying at the limit: the overshoot is one rewrite's nodes.
    assert!(report.max_enodes <= limits.node_limit + 8, "{report}");
    assert!(
        took < limits.time_limit + Duration::from_secs(60),
        "{took:?}"
    );
    reformc_ir::verify(&a).unwrap();
    let mut b = g.clone();
    pass.run_report(&mut b).unwrap();
    assert_eq!(print(&a), print(&b), "two runs extracted different graphs");
}

#[test]
fn every_limit_is_reported() {
    let mut g = deep_model();
    unfold_reversible(&mut g).unwrap();
    let mut phases = default_phases();
    phases.push(Phase {
        name: "algebra",
        rules: algebra_rules(),
    });
    let run = |limits: SaturationLimits| {
        let mut x = g.clone();
        let r = SimplifyPass::new()
            .with_phases(phases.clone())
            .with_limits(limits)
            .run_report(&mut x)
            .unwrap();
        reformc_ir::verify(&x).unwrap();
        r.stop_reason()
    };
    assert_eq!(
        run(SaturationLimits {
            node_limit: 3_000,
            ..Default::default()
        }),
        StopReason::NodeLimit
    );
    assert_eq!(
        run(SaturationLimits {
            iter_limit: 1,
            ..Default::default()
        }),
        StopReason::IterationLimit
    );
    assert_eq!(
        run(SaturationLimits {
            time_limit: Duration::ZERO,
            ..Default::default()
        }),
        StopReason::TimeLimit
    );
}

#[test]
fn reversible_refolds_the_deep_model_after_simplify() {
    let g = deep_model();
    let mut u = g.clone();
    unfold_reversible(&mut u).unwrap();
    SimplifyPass::new().run_report(&mut u).unwrap();
    let t = Instant::now();
    let n = reformc_passes::reversible::fold_reversible(&mut u).unwrap();
    eprintln!("folded {n} blocks in {:?}", t.elapsed());
    assert_eq!(n, 64);
    SimplifyPass::new().run_report(&mut u).unwrap();
    assert_eq!(u.find(reformc_ir::OpKind::ReversibleBlock).count(), 64);
    assert_eq!(u.len(), g.len());
}
