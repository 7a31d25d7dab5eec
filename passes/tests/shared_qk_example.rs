//! The shared-QK example model (`examples/shared-qk-transformer.json`): what
//! `explain --attention=auto` picks at short and long lengths, its weights,
//! and the attention rewrites evaluated by the interpreter.

use crate::attn_support;

use attn_support::*;
use reformc_ir::DType;
use reformc_passes::explain::explain;
use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline};

fn auto(seq_len: u64) -> PassOptions {
    PassOptions {
        seq_len: Some(seq_len),
        attention: Some("auto".into()),
        ..Default::default()
    }
}

#[test]
fn explain_auto_picks_full_at_512_and_lsh_at_65536() {
    let g = example_graph(DType::F32);
    let short = explain(&g, &auto(512), &Pipeline::default_pipeline()).unwrap();
    assert_eq!(short.layers.len(), 6);
    for l in &short.layers {
        assert!(
            l.attention == "full" || l.attention == "exact",
            "layer {}: {} ({})",
            l.index,
            l.attention,
            l.reason
        );
        assert_eq!(l.requested, "full");
        assert!(l.reason.contains("lsh would save only"), "{}", l.reason);
    }
    let long = explain(&g, &auto(65536), &Pipeline::default_pipeline()).unwrap();
    for l in &long.layers {
        assert_eq!(l.attention, "lsh", "layer {}: {}", l.index, l.reason);
        assert!(
            l.reason
                .contains("shared QK; full attention would need 64.0 GiB of logits at L=65536"),
            "{}",
            l.reason
        );
        assert_eq!(l.buckets, vec![32, 64]);
        assert_eq!(l.chunk, Some(64));
    }
    // Unfused liveness: full attention's [B,H,L,L] logits are gone per layer.
    for l in &long.layers {
        assert!(
            l.peak_bytes < l.peak_bytes_before / 50,
            "layer {}: {} vs {}",
            l.index,
            l.peak_bytes,
            l.peak_bytes_before
        );
    }
    // The compiled plan streams full attention in blocks of logit rows, so
    // there LSH saves no memory (its buckets and sort state even cost a
    // little): the headline is that plan, not the unfused view.
    assert_eq!(long.peak_bytes, long.footprint.total());
    assert!(long.peak_bytes.abs_diff(long.peak_bytes_before) < long.peak_bytes / 10);
    let json = long.to_json();
    assert_eq!(json["seq_len"], 65536);
    assert_eq!(json["batch"], 1);
    assert_eq!(json["layers"][3]["attention"], "lsh");
    assert!(json["layers"][3]["flops"].as_u64().unwrap() > 0);
    assert!(json["peak_bytes"].as_u64().unwrap() > 0);
    println!("{}", short.to_table());
    println!("{}", long.to_table());
}

#[test]
fn exact_is_chosen_when_full_logits_exceed_the_budget() {
    let g = example_graph(DType::F32);
    // 4 heads x 2048^2 x 4 bytes = 64 MiB of logits; a 32 MiB budget forces exact,
    // and 2048 is too short for LSH to be 16x cheaper.
    let opts = PassOptions {
        memory_budget: Some(32 << 20),
        ..auto(2048)
    };
    let e = explain(&g, &opts, &Pipeline::default_pipeline()).unwrap();
    for l in &e.layers {
        assert_eq!(l.attention, "exact", "{}", l.reason);
        assert_eq!(l.kv_chunk, Some(128));
        assert!(
            l.reason.contains("over the 32.0 MiB budget"),
            "{}",
            l.reason
        );
    }
    assert!(e.peak_bytes < e.peak_bytes_before);
}

#[test]
fn rewrites_keep_the_example_logits_at_short_length() {
    let spec = example_spec();
    let ws = weight_map(&random_weights(&spec, 1));
    let g = example_graph(DType::F32);
    let inputs = random_ids(2, 40, spec.vocab_size, 3);
    let want = interp_output(&g, &inputs, &ws, "logits");
    for (mode, kv) in [("exact", 16), ("full", 16), ("lsh", 16)] {
        let mut h = g.clone();
        let opts = PassOptions {
            seq_len: Some(40),
            attention: Some(mode.into()),
            kv_chunk: Some(kv),
            ..Default::default()
        };
        let pm = PassManager::new(
            Pipeline::default_pipeline(),
            Instrumentation {
                quiet: true,
                ..Default::default()
            },
        )
        .unwrap();
        let report = pm.run(&mut h, &opts, &mut Vec::new()).unwrap();
        let text = reformc_ir::print(&h);
        match mode {
            "exact" => assert_eq!(text.matches("kv_chunk=16").count(), 6),
            "lsh" => assert_eq!(
                text.matches("lsh_attention").count(),
                6,
                "{:?}",
                report.notes()
            ),
            _ => assert!(!text.contains("kv_chunk")),
        }
        // L=40 is at most LSH's chunk of 64, so even `lsh` is exact here.
        let got = interp_output(&h, &inputs, &ws, "logits");
        let err = max_rel_diff(&got, &want);
        assert!(err < 1e-5, "{mode}: {err}");
    }
}

#[test]
fn weights_are_deterministic_and_load_with_reformcs_checks() {
    let spec = example_spec();
    let a = random_weights(&spec, 1);
    assert_eq!(a, random_weights(&spec, 1));
    let params: usize = a.iter().map(|(_, _, d)| d.len()).sum();
    assert_eq!(params, 4_569_088);
    let dir = std::env::temp_dir().join(format!("reformc-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    write_safetensors(&path, &a);
    let file = reformc_frontend::weights::WeightFile::open(&path).unwrap();
    let expected = reformc_frontend::lower::expected_weights(&example_graph(DType::F32));
    file.check(&expected, &[]).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `examples/shared-qk-transformer.safetensors` (18.3 MB, not committed):
/// `cargo test -p reformc-passes --test integration -- --ignored shared_qk_example::write_example_weights`
#[test]
#[ignore]
fn write_example_weights() {
    let path = root().join("examples/shared-qk-transformer.safetensors");
    write_safetensors(&path, &random_weights(&example_spec(), 1));
    println!("wrote {}", path.display());
}

#[test]
fn progress_lines_notes_and_timing_report() {
    let mut g = example_graph(DType::F32);
    let instr = Instrumentation {
        time_passes: true,
        print_after: ["attention".to_string()].into(),
        ..Default::default()
    };
    let pm = PassManager::new(Pipeline::default_pipeline(), instr).unwrap();
    let mut out = Vec::new();
    pm.run(&mut g, &auto(65536), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let n = Pipeline::default_pipeline().passes.len();
    let attention = Pipeline::default_pipeline()
        .passes
        .iter()
        .position(|p| p == "attention")
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!("[{attention}/{n}] attention ")),
        "{text}"
    );
    assert!(
        text.contains("    layer 5: lsh (was full; shared QK;"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "// -----// IR Dump After attention ({attention}/{n}) //----- //\ngraph {{"
        )),
        "{text}"
    );
    assert!(text.contains("Pass execution timing report"), "{text}");
    println!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with('[') || l.starts_with("   "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
