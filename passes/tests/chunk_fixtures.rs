//! `chunk` on every HF fixture: chunked graphs compute what the unchunked
//! ones compute, print and parse back, and survive the other passes.

use crate::common;

use common::{assert_close, Case};
use reformc_ir::{parse, print, DType};
use reformc_passes::chunk::ChunkPass;
use reformc_passes::reversible::{fold_reversible, unfold_reversible};
use reformc_passes::simplify::SimplifyPass;
use reformc_passes::{Pass, PassOptions};

#[test]
fn chunked_graphs_match_unchunked_ones() {
    for case in Case::all() {
        let source = case.replay_source();
        let g = case.graph(DType::F32, source);
        let want = case.run(&g, source);
        let layers = case.spec.layers.len();
        for (ff, head) in [(5, 7), (16, 64), (1, 1000)] {
            let mut c = g.clone();
            let opts = PassOptions {
                chunk_size_feed_forward: Some(ff),
                chunk_size_lm_head: Some(head),
                ..Default::default()
            };
            let notes = ChunkPass.run(&mut c, &opts).unwrap();
            assert_eq!(
                notes[0],
                format!("chunked {layers} feed-forward branches along axis 1 in chunks of {ff}"),
                "{}",
                case.name
            );
            assert_eq!(
                notes[1],
                format!("chunked 1 LM head linear(s) along axis 1 in chunks of {head}"),
                "{}",
                case.name
            );
            let text = print(&c);
            assert_eq!(text.matches("seq_chunk").count(), layers + 1);
            assert_eq!(print(&parse(&text).unwrap()), text, "{}", case.name);
            assert_close(
                &want,
                &case.run(&c, source),
                1e-6,
                &format!("{} ff={ff} head={head}", case.name),
            );
            // The other passes keep chunked graphs intact.
            let mut s = c.clone();
            SimplifyPass::new()
                .run(&mut s, &PassOptions::default())
                .unwrap();
            assert_eq!(print(&s), text, "{}", case.name);
            let mut u = c.clone();
            assert_eq!(unfold_reversible(&mut u).unwrap(), layers);
            assert_close(&want, &case.run(&u, source), 1e-6, &case.name);
            fold_reversible(&mut u).unwrap();
            assert_eq!(print(&u), text, "{}", case.name);
        }
    }
}

#[test]
fn f64_chunked_graphs_match_exactly_enough() {
    for case in Case::all().into_iter().take(4) {
        let source = case.replay_source();
        let g = case.graph(DType::F64, source);
        let mut c = g.clone();
        let opts = PassOptions {
            chunk_size_feed_forward: Some(3),
            chunk_size_lm_head: Some(5),
            ..Default::default()
        };
        ChunkPass.run(&mut c, &opts).unwrap();
        assert_close(
            &case.run(&g, source),
            &case.run(&c, source),
            1e-12,
            &case.name,
        );
    }
}

#[test]
fn chunk_sizes_come_from_the_hf_config() {
    use reformc_frontend::config::parse_model_config;
    let case = &Case::all()[0];
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.dir.join("config.json")).unwrap())
            .unwrap();
    config["chunk_size_feed_forward"] = 4.into();
    config["chunk_size_lm_head"] = 0.into();
    let (spec, warnings, _) =
        parse_model_config(&config.to_string(), std::path::Path::new("config.json")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        (spec.chunk_size_feed_forward, spec.chunk_size_lm_head),
        (Some(4), None)
    );
    let mut g = case.graph(DType::F32, case.replay_source());
    let opts = PassOptions {
        chunk_size_feed_forward: spec.chunk_size_feed_forward,
        chunk_size_lm_head: spec.chunk_size_lm_head,
        ..Default::default()
    };
    let notes = ChunkPass.run(&mut g, &opts).unwrap();
    assert_eq!(
        notes,
        vec![format!(
            "chunked {} feed-forward branches along axis 1 in chunks of 4",
            spec.layers.len()
        )]
    );
}
