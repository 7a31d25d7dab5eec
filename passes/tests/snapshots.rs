//! insta snapshots of the IR after each pass of the default pipeline, for
//! the HF fixture `causal_mixed_r2` and the shared-QK example, in every
//! attention mode. Each snapshot starts with the pass's notes (the saturation
//! statistics of `simplify` carry timings, so its notes are left out).

use crate::attn_support;

use attn_support::*;
use reformc_frontend::lower::LshSource;
use reformc_ir::{print, DType, Graph};
use reformc_passes::{Instrumentation, PassEvent, PassManager, PassOptions, Pipeline};

fn snapshots(case: &str, g: &Graph, mode: Option<&str>, seq_len: u64) {
    let pm = PassManager::new(
        Pipeline::default_pipeline(),
        Instrumentation {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let opts = PassOptions {
        seq_len: Some(seq_len),
        attention: mode.map(str::to_string),
        chunk_size_feed_forward: Some(16),
        chunk_size_lm_head: Some(32),
        ..Default::default()
    };
    let mut shots: Vec<(String, String)> = Vec::new();
    let mut observe = |e: PassEvent<'_>| {
        if let PassEvent::After {
            index,
            name,
            graph,
            record,
        } = e
        {
            let mut text: String = if name == "simplify" {
                String::new()
            } else {
                record.notes.iter().map(|n| format!("// {n}\n")).collect()
            };
            if record.changed || index == 1 {
                text.push_str(&print(graph));
            } else {
                text.push_str("// (IR unchanged)\n");
            }
            shots.push((
                format!(
                    "{case}__{}__L{seq_len}__{index:02}-{name}",
                    mode.unwrap_or("config")
                ),
                text,
            ));
        }
    };
    let mut h = g.clone();
    pm.run_with(&mut h, &opts, &mut Vec::new(), &mut |_| {}, &mut observe)
        .unwrap_or_else(|e| panic!("{e}"));
    for (name, text) in shots {
        insta::assert_snapshot!(name, text);
    }
}

#[test]
fn causal_mixed_r2_after_each_pass() {
    let case = Case::load(&fixture("causal_mixed_r2"));
    let g = case.graph(DType::F32, LshSource::Seeded);
    insta::assert_snapshot!("causal_mixed_r2__input", print(&g));
    for mode in [None, Some("full"), Some("exact"), Some("lsh"), Some("auto")] {
        snapshots("causal_mixed_r2", &g, mode, 64);
    }
}

#[test]
fn shared_qk_example_after_each_pass() {
    let g = example_graph(DType::F32);
    insta::assert_snapshot!("shared_qk__input", print(&g));
    for mode in [None, Some("full"), Some("exact"), Some("lsh")] {
        snapshots("shared_qk", &g, mode, 512);
    }
    snapshots("shared_qk", &g, Some("auto"), 512);
    snapshots("shared_qk", &g, Some("auto"), 65536);
}
