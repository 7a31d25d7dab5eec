//! The LM head fused with the cross-entropy (`lm_loss`, `append_fused_loss`):
//! the step of a fixture equals the unfused step's (f64, interpreter), the
//! fused op replaces the head's ops, and at a large vocabulary the step's
//! static activation peak no longer holds `[B, L, V]` logits.

#[allow(dead_code)] // The shared helpers; this file uses two of them.
use crate::autodiff_support;

use autodiff_support::random_weights;
use reformc_ir::{parse, Graph, OpKind};
use reformc_passes::autodiff::{append_fused_loss, append_loss, differentiate, LABELS, LOSS};
use reformc_passes::cost::dim_env;
use reformc_passes::memory_plan::plan_memory;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;

/// A two-layer MLP with a bias-free LM head over the hidden state `h`.
fn model(vocab: usize, padded: bool) -> Graph {
    let (len, pad) = if padded {
        ("P", "truncate %8, %0 {axis=1} : f64[B,L,V]")
    } else {
        ("L", "")
    };
    let logits = if padded { "%9" } else { "%8" };
    let text = format!(
        "graph {{
  %0 = input {{name=\"x\"}} : f64[B,L,4]
  %1 = weight {{name=\"a\"}} : f64[4,4]
  %2 = reshape %1 : f64[1,4,4]
  %3 = {input}
  %4 = matmul %3, %2 : f64[B,{len},4]
  %5 = tanh %4 : f64[B,{len},4]
  %6 = weight {{name=\"lm_head.decoder.weight\"}} : f64[{vocab},4]
  %7 = transpose %6 {{perm=[1,0]}} : f64[4,{vocab}]
  %r = reshape %7 : f64[1,4,{vocab}]
  %8 = matmul %5, %r : f64[B,{len},{vocab}]
  {pad_line}
  output \"logits\" = {logits}
}}
",
        input = if padded {
            "pad_to_multiple %0 {axis=1, min_len=0, multiple=4, value=0} : f64[B,P,4]"
        } else {
            "add %0, %0 : f64[B,L,4]"
        },
        pad_line = if padded {
            format!("%9 = {pad}")
        } else {
            String::new()
        },
    );
    parse(&text.replace(",V]", &format!(",{vocab}]"))).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn run(g: &Graph, labels: Vec<i64>, seed: u64) -> BTreeMap<String, Tensor> {
    let n = labels.len();
    let x = autodiff_support::random(&[1, n, 4], 5, -1.0, 1.0);
    let inputs = BTreeMap::from([
        ("x".to_string(), Tensor::F64(x)),
        (
            LABELS.to_string(),
            Tensor::I64(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, n]), labels).unwrap()),
        ),
    ]);
    reformc_interp::run(g, &inputs, &random_weights(g, seed, -1.0, 1.0)).unwrap()
}

#[test]
fn the_fused_step_equals_the_unfused_one() {
    for padded in [false, true] {
        let g = model(7, padded);
        let mut plain = g.clone();
        append_loss(&mut plain, "logits").unwrap();
        let mut fused = g.clone();
        assert!(append_fused_loss(&mut fused, "logits", Some(2)).unwrap());
        let text = reformc_ir::print(&fused);
        assert!(text.contains("lm_loss") && !text.contains(", 7]"), "{text}");
        let (p, f) = (
            differentiate(&plain, LOSS).unwrap(),
            differentiate(&fused, LOSS).unwrap(),
        );
        let labels = vec![3, -100, 0, 6, 6];
        let (a, b) = (run(&p, labels.clone(), 1), run(&f, labels, 1));
        for (name, x) in &a {
            let (x, y) = (x.to_f64(), b[name].to_f64());
            let d = (&x - &y).mapv(f64::abs).fold(0.0f64, |m, &v| m.max(v));
            assert!(d <= 1e-12, "{name} (padded {padded}): {d:e}");
        }
    }
}

#[test]
fn other_logits_are_left_alone() {
    let mut g = parse("graph {\n  %0 = input {name=\"h\"} : f32[B,L,4]\n  %1 = exp %0 : f32[B,L,4]\n  output \"logits\" = %1\n}\n").unwrap();
    let before = reformc_ir::print(&g);
    assert!(!append_fused_loss(&mut g, "logits", None).unwrap());
    assert_eq!(reformc_ir::print(&g), before);
}

#[test]
fn a_large_vocabulary_step_never_holds_the_logits() {
    let (vocab, len) = (32_000u64, 2048u64);
    let g = model(vocab as usize, false);
    let peak = |fuse: bool| {
        let mut s = g.clone();
        match fuse {
            true => assert!(append_fused_loss(&mut s, "logits", None).unwrap()),
            false => append_loss(&mut s, "logits").unwrap(),
        }
        let d = differentiate(&s, LOSS).unwrap();
        let fused_ops = d
            .body
            .iter()
            .filter(|&&v| d.node(v).op.kind == OpKind::LmLossGrad)
            .count();
        assert_eq!(fused_ops, if fuse { 2 } else { 0 });
        plan_memory(&d, &dim_env(&d, 1, len))
            .unwrap()
            .live_peak_bytes
    };
    let (plain, fused) = (peak(false), peak(true));
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "V={vocab}, L={len}, f64: static activation peak {:.1} MiB unfused, {:.1} MiB fused",
        mib(plain),
        mib(fused)
    );
    let logits = len * vocab * 8;
    assert!(
        plain >= 2 * logits,
        "unfused peak {plain} should hold the logits and their gradient"
    );
    assert!(
        fused < logits / 8,
        "fused peak {fused} vs one [L, V] logits {logits}"
    );
}

#[test]
fn the_pass_fuses_wide_heads_or_when_asked() {
    use reformc_passes::autodiff::AutodiffPass;
    use reformc_passes::{Pass, PassOptions};
    let fused = |vocab: usize, chunk: Option<u64>| {
        let mut g = model(vocab, true);
        let opts = PassOptions {
            chunk_size_lm_head: chunk,
            ..Default::default()
        };
        let notes = AutodiffPass.run(&mut g, &opts).unwrap();
        let has = g.body.iter().any(|&v| g.node(v).op.kind == OpKind::LmLoss);
        assert_eq!(
            has,
            notes[0].contains("fused with the LM head"),
            "{notes:?}"
        );
        has
    };
    // The head's input is 4 wide: fused from V = 5 on, or with a chunk.
    assert!(!fused(4, None));
    assert!(fused(5, None));
    assert!(fused(4, Some(2)));
    assert!(!fused(4, Some(0)), "a chunk of 0 means unset");
}
