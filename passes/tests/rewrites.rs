//! Property tests: every rewrite of the `attention` pass evaluated before and
//! after by the reference interpreter on random inputs, and the chunked-exact
//! attention (`kv_chunk`) against the materialised softmax on random shapes.

use crate::attn_support;

use attn_support::SplitMix;
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use reformc_interp::Tensor;
use reformc_ir::Graph;
use reformc_passes::attention::AttentionPass;
use reformc_passes::{LshOverrides, Pass, PassOptions};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    len: usize,
    heads: usize,
    d: usize,
    causal: bool,
    masked: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..24,
        1usize..4,
        prop::sample::select(vec![2usize, 4, 8]),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(batch, len, heads, d, causal, masked, seed)| Case {
            batch,
            len,
            heads,
            d,
            causal,
            masked,
            seed,
        })
}

fn flags(c: &Case) -> String {
    if c.causal {
        ", causal".into()
    } else {
        String::new()
    }
}

/// Shared-QK full attention: `attention %x, %x, %v, %m {key_norm, self_mask, scale=1/sqrt(d)}`.
fn shared_attention(c: &Case, dtype: &str) -> Graph {
    let w = c.heads * c.d;
    let scale = 1.0 / (c.d as f64).sqrt();
    let text = format!(
        "graph {{\n  %0 = input {{name=\"x\"}} : {dtype}[B,L,{w}]\n  %1 = input {{name=\"v\"}} : {dtype}[B,L,{w}]\n  %2 = input {{name=\"m\"}} : i64[B,L]\n  %3 = attention %0, %0, %1, %2 {{heads={h}{causal}, key_norm, scale={scale:?}, self_mask}} : {dtype}[B,L,{w}]\n  output \"y\" = %3\n}}\n",
        h = c.heads,
        causal = flags(c),
    );
    reformc_ir::parse(&text).unwrap()
}

/// Separate q, k, v with 1/sqrt(d) scaling (a `local`/plain full layer).
fn plain_attention(c: &Case, dtype: &str) -> Graph {
    let w = c.heads * c.d;
    let scale = 1.0 / (c.d as f64).sqrt();
    let text = format!(
        "graph {{\n  %0 = input {{name=\"x\"}} : {dtype}[B,L,{w}]\n  %1 = input {{name=\"v\"}} : {dtype}[B,L,{w}]\n  %2 = input {{name=\"k\"}} : {dtype}[B,L,{w}]\n  %3 = input {{name=\"m\"}} : i64[B,L]\n  %4 = attention %0, %2, %1, %3 {{heads={h}{causal}, scale={scale:?}}} : {dtype}[B,L,{w}]\n  output \"y\" = %4\n}}\n",
        h = c.heads,
        causal = flags(c),
    );
    reformc_ir::parse(&text).unwrap()
}

/// An LSH layer as the frontend lowers it, chunk `chunk`, 2 rounds, 4 buckets.
fn lsh_layer(c: &Case, chunk: usize) -> Graph {
    let w = c.heads * c.d;
    let text = format!(
        "graph {{\n  %0 = input {{name=\"seed\"}} : i64[]\n  %1 = input {{name=\"x\"}} : f32[B,L,{w}]\n  %2 = input {{name=\"v\"}} : f32[B,L,{w}]\n  %3 = input {{name=\"m\"}} : i64[B,L]\n  %4 = random_normal %0 {{stream=0}} : f32[{h},{d},2,2]\n  %5 = lsh_hash %1, %4, %3 {{buckets=[4], heads={h}, n_hashes=2}} : i64[B,{h},2,L]\n  %6 = lsh_attention %1, %2, %5, %3 {{after=0, before=1{causal}, chunk={chunk}, heads={h}}} : f32[B,L,{w}]\n  output \"y\" = %6\n}}\n",
        h = c.heads,
        d = c.d,
        causal = flags(c),
    );
    let g = reformc_ir::parse(&text).unwrap();
    reformc_ir::verify(&g).unwrap();
    g
}

fn inputs(c: &Case, f64_: bool) -> BTreeMap<String, Tensor> {
    let mut rng = SplitMix(c.seed);
    let w = c.heads * c.d;
    let mut t = |scale: f64| {
        let a = ArrayD::from_shape_fn(IxDyn(&[c.batch, c.len, w]), |_| rng.normal() * scale);
        if f64_ {
            Tensor::F64(a)
        } else {
            Tensor::F32(a.mapv(|x| x as f32))
        }
    };
    let (x, v, k) = (t(2.0), t(1.0), t(2.0));
    let mut rng = SplitMix(c.seed ^ 0x5555);
    // Position 0 always valid; others masked with probability 1/4 when `masked`.
    let m = ArrayD::from_shape_fn(IxDyn(&[c.batch, c.len]), |i| {
        i64::from(i[1] == 0 || !c.masked || !rng.next_u64().is_multiple_of(4))
    });
    let mut out = BTreeMap::new();
    out.insert("x".into(), x);
    out.insert("v".into(), v);
    out.insert("k".into(), k);
    out.insert("m".into(), Tensor::I64(m));
    out.insert(
        "seed".into(),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[]), c.seed as i64 & 0xffff)),
    );
    out
}

fn eval(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> ArrayD<f64> {
    let mut used = inputs.clone();
    used.retain(|k, _| g.inputs().iter().any(|(n, _)| n == k));
    reformc_interp::run(g, &used, &BTreeMap::new())
        .unwrap_or_else(|e| panic!("{e}\n{}", reformc_ir::print(g)))["y"]
        .to_f64()
}

fn rewrite(g: &Graph, mode: &str, kv: u64, lsh_chunk: u64) -> (Graph, Vec<String>) {
    let mut h = g.clone();
    let opts = PassOptions {
        seq_len: Some(24),
        attention: Some(mode.into()),
        kv_chunk: Some(kv),
        lsh: LshOverrides {
            chunk: Some(lsh_chunk),
            n_hashes: Some(2),
            buckets: Some(vec![4]),
            ..Default::default()
        },
        ..Default::default()
    };
    let notes = AttentionPass.run(&mut h, &opts).unwrap();
    reformc_ir::verify(&h).unwrap_or_else(|e| panic!("{e}\n{}", reformc_ir::print(&h)));
    (h, notes)
}

fn rel(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    a.iter()
        .zip(b.iter())
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() / (1.0 + y.abs())))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// `attention {kv_chunk}` equals the materialised softmax: within 1e-6 in f64.
    #[test]
    fn exact_attention_equals_full_f64(c in case(), kv in 1u64..30) {
        for g in [shared_attention(&c, "f64"), plain_attention(&c, "f64")] {
            let (h, _) = rewrite(&g, "exact", kv, 64);
            let has_kv = reformc_ir::print(&h).contains(&format!("kv_chunk={}", kv));
            prop_assert!(has_kv, "kv_chunk missing");
            let inp = inputs(&c, true);
            let (want, got) = (eval(&g, &inp), eval(&h, &inp));
            let err = want.iter().zip(got.iter()).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            prop_assert!(err < 1e-6, "{:?} kv={}: {}", c, kv, err);
            // ... and `full` turns it back.
            let (back, _) = rewrite(&h, "full", kv, 64);
            prop_assert_eq!(reformc_ir::print(&back), reformc_ir::print(&g));
        }
    }

    /// The same in f32, within 1e-5 relative.
    #[test]
    fn exact_attention_equals_full_f32(c in case(), kv in 1u64..30) {
        let g = shared_attention(&c, "f32");
        let (h, _) = rewrite(&g, "exact", kv, 64);
        let inp = inputs(&c, false);
        let err = rel(&eval(&h, &inp), &eval(&g, &inp));
        prop_assert!(err < 1e-5, "{:?} kv={}: {}", c, kv, err);
    }

    /// LSH -> full / exact shared-QK attention is exact when the sequence fits one LSH chunk.
    #[test]
    fn lsh_to_full_is_exact_within_one_chunk(c in case(), kv in 1u64..30) {
        let chunk = 24usize.max(c.len);
        let g = lsh_layer(&c, chunk);
        let inp = inputs(&c, false);
        let want = eval(&g, &inp);
        for mode in ["full", "exact"] {
            let (h, notes) = rewrite(&g, mode, kv, 64);
            let text = reformc_ir::print(&h);
            prop_assert!(!text.contains("lsh_hash") && !text.contains("random_normal"), "{}", text);
            prop_assert!(notes[0].starts_with(&format!("layer 0: {} (was lsh", mode)), "{:?}", notes);
            let err = rel(&eval(&h, &inp), &want);
            prop_assert!(err < 1e-5, "{:?} {}: {}", c, mode, err);
        }
    }

    /// Shared-QK full attention -> LSH is exact when the sequence fits one LSH chunk
    /// (lsh_attention computes full attention there), and the result verifies.
    #[test]
    fn full_to_lsh_is_exact_within_one_chunk(c in case()) {
        let g = shared_attention(&c, "f32");
        let (h, notes) = rewrite(&g, "lsh", 16, 32);
        let text = reformc_ir::print(&h);
        prop_assert!(text.contains("lsh_attention") && text.contains("random_normal"), "{}", text);
        prop_assert!(notes[0].starts_with("layer 0: lsh (shared QK"), "{:?}", notes);
        let inp = inputs(&c, false);
        let err = rel(&eval(&h, &inp), &eval(&g, &inp));
        prop_assert!(err < 1e-5, "{:?}: {}", c, err);
        // Non-shared attention is left alone, with a note.
        let p = plain_attention(&c, "f32");
        let (q, notes) = rewrite(&p, "lsh", 16, 32);
        prop_assert_eq!(reformc_ir::print(&q), reformc_ir::print(&p));
        prop_assert!(notes[0].contains("cannot use lsh"), "{:?}", notes);
    }
}

/// Above one chunk, the LSH rewrite is an approximation: check it runs, keeps
/// shapes, and that its buckets follow HF's automatic rule at the target length.
#[test]
fn full_to_lsh_above_one_chunk_runs_and_uses_hf_buckets() {
    let c = Case {
        batch: 2,
        len: 64,
        heads: 2,
        d: 8,
        causal: true,
        masked: false,
        seed: 9,
    };
    let g = shared_attention(&c, "f32");
    let mut h = g.clone();
    let opts = PassOptions {
        seq_len: Some(64),
        attention: Some("lsh".into()),
        lsh: LshOverrides {
            chunk: Some(8),
            ..Default::default()
        },
        ..Default::default()
    };
    let notes = AttentionPass.run(&mut h, &opts).unwrap();
    reformc_ir::verify(&h).unwrap();
    // 64 / 8 = 8 chunks -> 16 buckets (HF's rule, no position table: limit from L).
    assert!(notes[0].contains("buckets [16]"), "{notes:?}");
    assert!(reformc_ir::print(&h).contains("buckets=[16]"));
    let y = eval(&h, &inputs(&c, false));
    assert_eq!(y.shape(), &[2, 64, 16]);
    assert!(y.iter().all(|x| x.is_finite()));
}

#[test]
fn kv_chunk_must_be_positive() {
    let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[B,L,8]\n %1 = attention %0, %0, %0 {heads=2, kv_chunk=0, scale=0.5} : f32[B,L,8]\n output \"y\" = %1\n}").unwrap();
    let e = reformc_ir::verify(&g).unwrap_err();
    assert!(e.message.contains("kv_chunk"), "{e}");
    let opts = PassOptions {
        attention: Some("exact".into()),
        kv_chunk: Some(0),
        ..Default::default()
    };
    assert!(AttentionPass.run(&mut g.clone(), &opts).is_err());
}
