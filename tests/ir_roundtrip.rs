//! The IR text format round-trips every graph the frontend produces, and
//! the dot export covers every op.

use crate::common;

use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_ir::{parse, print, verify, DType};

fn all_graphs() -> Vec<(String, reformc_ir::Graph)> {
    let mut out = vec![];
    let mut configs: Vec<_> = common::fixtures()
        .into_iter()
        .map(|d| d.join("config.json"))
        .collect();
    configs.push(common::root().join("examples/tiny-reformer/config.json"));
    for cfg in configs {
        let spec = reformc_frontend::config::load_model_config(&cfg).unwrap();
        for dtype in [DType::F32, DType::F64] {
            for source in [LshSource::Seeded, LshSource::Rotations, LshSource::Buckets] {
                let g = lower(
                    &spec,
                    &LowerOptions {
                        dtype,
                        lsh_source: source,
                        seq_len: Some(128),
                    },
                )
                .unwrap()
                .graph;
                out.push((format!("{} {dtype} {source:?}", cfg.display()), g));
            }
        }
    }
    out
}

#[test]
fn print_parse_print_is_identical_for_every_frontend_graph() {
    for (name, g) in all_graphs() {
        verify(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = print(&g);
        let parsed = parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        verify(&parsed).unwrap_or_else(|e| panic!("{name}: reparsed graph: {e}"));
        assert_eq!(print(&parsed), text, "{name}");
        assert_eq!(parsed.len(), g.len(), "{name}: node count");
    }
}

#[test]
fn dot_export_has_a_node_per_op_and_an_edge_per_use() {
    for (name, g) in all_graphs().into_iter().take(6) {
        let (pg, _) = reformc_ir::to_petgraph(&g);
        let uses: usize = g.walk().iter().map(|v| g.node(*v).inputs.len()).sum();
        assert_eq!(pg.node_count(), g.walk().len() + g.outputs.len(), "{name}");
        assert_eq!(pg.edge_count(), uses + g.outputs.len(), "{name}");
        assert!(reformc_ir::to_dot(&g).starts_with("digraph"));
    }
}

/// The lowered IR of one fixture, blessed with `cargo insta review` (or
/// INSTA_UPDATE=always) when the lowering changes on purpose.
#[test]
fn lowered_ir_snapshot() {
    let spec = reformc_frontend::config::load_model_config(
        &common::root().join("tests/fixtures/causal_mixed_r2/config.json"),
    )
    .unwrap();
    let g = lower(&spec, &LowerOptions::default()).unwrap().graph;
    insta::assert_snapshot!("causal_mixed_r2_lowered", print(&g));
}
