//! The attention pass and the default pipeline on Hugging Face golden
//! fixtures, evaluated by the reference interpreter.

use crate::attn_support;

use attn_support::*;
use reformc_ir::DType;
use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline};

fn run_pipeline(g: &mut reformc_ir::Graph, opts: &PassOptions) -> reformc_passes::PipelineReport {
    let pm = PassManager::new(
        Pipeline::default_pipeline(),
        Instrumentation {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    pm.run(g, opts, &mut Vec::new())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn default_pipeline_keeps_every_fixture_within_1e4_of_hf_f64() {
    for dir in fixtures() {
        let case = Case::load(&dir);
        let mut g = case.graph(DType::F32, case.replay_source());
        let kinds = |g: &reformc_ir::Graph| {
            reformc_passes::attention::sites(g)
                .iter()
                .map(|s| (s.layer, s.kind))
                .collect::<Vec<_>>()
        };
        let before = kinds(&g);
        let opts = PassOptions {
            seq_len: Some(case.seq_len() as u64),
            batch: Some(case.ids.shape()[0] as u64),
            ..Default::default()
        };
        run_pipeline(&mut g, &opts);
        assert_eq!(
            kinds(&g),
            before,
            "{}: the default options keep the configured attention",
            case.name
        );
        let got = interp_output(
            &g,
            &case.inputs(case.replay_source()),
            &case.weight_map(&g),
            "logits",
        );
        let err = max_abs_diff(&got, &case.reference_f64());
        println!("{:40} max abs err {err:.2e}", case.name);
        assert!(err < 1e-4, "{}: {err}", case.name);
    }
}

/// Fixtures whose padded length is at most the LSH chunk: HF computes plain
/// shared-QK attention there, so `--attention=full` (and `exact`) must give the
/// same logits.
#[test]
fn full_and_exact_attention_keep_logits_when_the_sequence_fits_one_lsh_chunk() {
    let mut checked = 0;
    for dir in fixtures() {
        let case = Case::load(&dir);
        let g = case.graph(DType::F32, case.replay_source());
        let env = reformc_passes::cost::dim_env(&g, 1, case.seq_len() as u64);
        if env["P"] > case.spec.lsh.chunk || case.spec.num_lsh_layers() == 0 {
            continue;
        }
        let weights = case.weight_map(&g);
        let want = interp_output(&g, &case.inputs(case.replay_source()), &weights, "logits");
        for mode in ["full", "exact"] {
            let mut h = g.clone();
            let opts = PassOptions {
                seq_len: Some(case.seq_len() as u64),
                attention: Some(mode.into()),
                kv_chunk: Some(5),
                ..Default::default()
            };
            let report = run_pipeline(&mut h, &opts);
            let text = reformc_ir::print(&h);
            assert!(
                !text.contains("lsh_attention") && !text.contains("lsh_hash"),
                "{}: {text}",
                case.name
            );
            let notes = report.notes();
            assert!(
                notes
                    .iter()
                    .any(|n| n.contains(&format!(": {mode} (was lsh;"))),
                "{}: {notes:?}",
                case.name
            );
            let got = interp_output(&h, &case.inputs(case.replay_source()), &weights, "logits");
            let err = max_rel_diff(&got, &want);
            println!("{:40} {mode}: max rel change {err:.2e}", case.name);
            assert!(err < 1e-5, "{} {mode}: {err}", case.name);
            assert!(
                max_abs_diff(&got, &case.reference_f64()) < 1e-4,
                "{}",
                case.name
            );
        }
        checked += 1;
    }
    assert!(checked >= 2, "expected short fixtures, found {checked}");
}

/// `exact` keeps local layers and replaces LSH by exact attention; at lengths
/// above the LSH chunk that changes the function (no longer approximate), so
/// compare `exact` against `full` instead: both are the same function.
#[test]
fn exact_equals_full_on_long_fixtures() {
    let case = Case::load(&fixture("causal_mixed_r2"));
    let g = case.graph(DType::F32, case.replay_source());
    let weights = case.weight_map(&g);
    let mut outs = vec![];
    for (mode, kv) in [("full", 1), ("exact", 7), ("exact", 64)] {
        let mut h = g.clone();
        let opts = PassOptions {
            seq_len: Some(case.seq_len() as u64),
            attention: Some(mode.into()),
            kv_chunk: Some(kv),
            ..Default::default()
        };
        let report = run_pipeline(&mut h, &opts);
        assert!(
            report.notes().iter().any(|n| n.contains("layer 0: local")),
            "{:?}",
            report.notes()
        );
        outs.push(interp_output(
            &h,
            &case.inputs(case.replay_source()),
            &weights,
            "logits",
        ));
    }
    assert!(max_rel_diff(&outs[1], &outs[0]) < 1e-5);
    assert!(max_rel_diff(&outs[2], &outs[0]) < 1e-5);
}

#[test]
fn auto_on_a_fixture_explains_every_layer() {
    let case = Case::load(&fixture("causal_mixed_r2"));
    let g = case.graph(DType::F32, case.replay_source());
    let opts = PassOptions {
        seq_len: Some(64),
        attention: Some("auto".into()),
        ..Default::default()
    };
    let e = reformc_passes::explain::explain(&g, &opts, &Pipeline::default_pipeline()).unwrap();
    let kinds: Vec<&str> = e.layers.iter().map(|l| l.attention.as_str()).collect();
    // At L=64 with LSH chunks of 8 (2 rounds), exact attention is only ~2x the FLOPs of LSH: full wins.
    assert_eq!(kinds, ["local", "full", "local", "full"]);
    assert!(
        e.layers[1].reason.starts_with("was lsh;"),
        "{}",
        e.layers[1].reason
    );
    assert_eq!(e.layers[0].chunk, Some(16));
}
