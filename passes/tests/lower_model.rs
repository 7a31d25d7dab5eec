//! `lower-model` against the interpreter: every decomposed model op, on
//! random graphs and weights in f64 and f32 and several shapes (batch > 1,
//! odd lengths), computes what the model op computes; whole models (the HF
//! fixtures, schema models with full attention) give the same logits.

use crate::common;

use common::random_model::{random_inputs, random_weights, Lcg};
use ndarray::{ArrayD, IxDyn};
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_interp::Tensor;
use reformc_ir::{parse, print, verify, DType, Graph, OpKind, OpLevel};
use reformc_passes::lower_model::lower_model;
use reformc_passes::{lookup, PassManager, PassOptions, Pipeline};
use std::collections::BTreeMap;

/// The error a lowering not written yet reports (`local.rs`, `lsh.rs` until
/// the `lshdec` branch is merged).
const NOT_YET: &str = "no tensor-op lowering yet";

/// Values bound to a graph's inputs and weights.
struct Bindings {
    inputs: BTreeMap<String, Tensor>,
    weights: BTreeMap<String, Tensor>,
}

/// Random normal-ish floats in `[-scale, scale)`.
fn floats(rng: &mut Lcg, shape: &[usize], scale: f64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| f64::from(rng.unit()) * scale).collect();
    Tensor::F64(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()).cast(dtype)
}

fn ints(rng: &mut Lcg, shape: &[usize], below: u64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<i64> = (0..n).map(|_| rng.below(below) as i64).collect();
    Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

/// Largest |a - b| relative to the largest |b| (at least 1).
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64(), b.to_f64());
    assert_eq!(a.shape(), b.shape());
    let scale = b.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    (&a - &b).mapv(f64::abs).fold(0.0f64, |m, &x| m.max(x)) / scale
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        _ => 1e-5,
    }
}

/// Lowers `text`, checks that no model op but `reversible_block` and
/// `lsh_hash` is left and that the result prints and parses back, then runs
/// both graphs and compares every output.
fn check(ctx: &str, text: &str, b: &Bindings, dtype: DType) {
    let g = parse(text).unwrap_or_else(|e| panic!("{ctx}: {e}\n{text}"));
    verify(&g).unwrap_or_else(|e| panic!("{ctx}: {e}\n{text}"));
    let low = lower_model(&g).unwrap_or_else(|e| panic!("{ctx}: {e}\n{text}"));
    assert_lowered(ctx, &low);
    let printed = print(&low);
    assert_eq!(print(&parse(&printed).unwrap()), printed, "{ctx}");
    let want =
        reformc_interp::run(&g, &b.inputs, &b.weights).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let got = reformc_interp::run(&low, &b.inputs, &b.weights)
        .unwrap_or_else(|e| panic!("{ctx}: {e}\n{printed}"));
    for (name, w) in &want {
        assert_eq!(got[name].dtype(), w.dtype(), "{ctx}: {name}");
        let err = rel_err(&got[name], w);
        assert!(
            err <= tolerance(dtype),
            "{ctx}: output {name} differs by {err:e}"
        );
    }
}

/// Every op left is a tensor op, a source, `reversible_block` or `lsh_hash`.
fn assert_lowered(ctx: &str, g: &Graph) {
    for v in g.walk() {
        let k = g.node(v).op.kind;
        assert!(
            k.level() != OpLevel::Model || matches!(k, OpKind::ReversibleBlock | OpKind::LshHash),
            "{ctx}: `{k}` is left after lower-model"
        );
    }
}

fn ty(dtype: DType) -> &'static str {
    match dtype {
        DType::F64 => "f64",
        _ => "f32",
    }
}

const DTYPES: [DType; 2] = [DType::F64, DType::F32];
/// (batch, length) pairs: batch > 1 and odd lengths included.
const SHAPES: [(usize, usize); 4] = [(1, 1), (1, 6), (2, 7), (3, 5)];

#[test]
fn embedding_matches_the_interpreter() {
    let mut rng = Lcg(1);
    for dtype in DTYPES {
        for (b, l) in SHAPES {
            let t = ty(dtype);
            let text = format!(
                "graph {{\n  %0 = input {{name=\"ids\"}} : i64[B,L]\n  %1 = weight {{name=\"table\"}} : {t}[11,6]\n  %2 = embedding %0, %1 : {t}[B,L,6]\n  %3 = input {{name=\"flat\"}} : i64[N]\n  %4 = embedding %3, %1 : {t}[N,6]\n  output \"y\" = %2\n  output \"z\" = %4\n}}\n"
            );
            let bind = Bindings {
                inputs: [
                    ("ids".to_string(), ints(&mut rng, &[b, l], 11)),
                    ("flat".to_string(), ints(&mut rng, &[l + 2], 11)),
                ]
                .into(),
                weights: [(
                    "table".to_string(),
                    floats(&mut rng, &[11, 6], 1.0, DType::F32),
                )]
                .into(),
            };
            check(&format!("embedding {t} B={b} L={l}"), &text, &bind, dtype);
        }
    }
}

#[test]
fn embedding_is_a_gather_of_the_table() {
    let text = "graph {\n  %0 = input {name=\"ids\"} : i64[B,L]\n  %1 = weight {name=\"table\"} : f32[11,6]\n  %2 = embedding %0, %1 : f32[B,L,6]\n  output \"y\" = %2\n}\n";
    let low = lower_model(&parse(text).unwrap()).unwrap();
    let gathers: Vec<_> = low
        .walk()
        .into_iter()
        .filter(|v| low.node(*v).op.kind == OpKind::Gather)
        .collect();
    assert_eq!(gathers.len(), 1);
    // The table itself is gathered (so its gradient is a scatter_add).
    assert_eq!(
        low.node(low.node(gathers[0]).inputs[0]).op.kind,
        OpKind::Weight
    );
}

#[test]
fn out_of_range_ids_fail_in_the_lowered_graph_too() {
    let text = "graph {\n  %0 = input {name=\"ids\"} : i64[B,L]\n  %1 = weight {name=\"table\"} : f64[4,2]\n  %2 = embedding %0, %1 : f64[B,L,2]\n  output \"y\" = %2\n}\n";
    let low = lower_model(&parse(text).unwrap()).unwrap();
    let mut rng = Lcg(5);
    let inputs: BTreeMap<String, Tensor> = [(
        "ids".to_string(),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[1, 3]), 4)),
    )]
    .into();
    let weights: BTreeMap<String, Tensor> = [(
        "table".to_string(),
        floats(&mut rng, &[4, 2], 1.0, DType::F64),
    )]
    .into();
    let err = reformc_interp::run(&low, &inputs, &weights).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn axial_pos_embedding_matches_the_interpreter() {
    let mut rng = Lcg(2);
    for dtype in DTYPES {
        for (b, l) in SHAPES {
            let t = ty(dtype);
            let text = format!(
                "graph {{\n  %0 = input {{name=\"ids\"}} : i64[B,L]\n  %1 = iota %0 {{axis=1}} : i64[L]\n  %2 = weight {{name=\"w0\"}} : {t}[3,1,4]\n  %3 = weight {{name=\"w1\"}} : {t}[1,5,2]\n  %4 = axial_pos_embedding %1, %2, %3 : {t}[L,6]\n  %5 = input {{name=\"pos\"}} : i64[N]\n  %6 = axial_pos_embedding %5, %2, %3 : {t}[N,6]\n  output \"y\" = %4\n  output \"z\" = %6\n}}\n"
            );
            let bind = Bindings {
                inputs: [
                    ("ids".to_string(), ints(&mut rng, &[b, l], 3)),
                    ("pos".to_string(), ints(&mut rng, &[b * l + 3], 15)),
                ]
                .into(),
                weights: [
                    (
                        "w0".to_string(),
                        floats(&mut rng, &[3, 1, 4], 1.0, DType::F32),
                    ),
                    (
                        "w1".to_string(),
                        floats(&mut rng, &[1, 5, 2], 1.0, DType::F32),
                    ),
                ]
                .into(),
            };
            check(&format!("axial {t} B={b} L={l}"), &text, &bind, dtype);
        }
    }
}

#[test]
fn layer_norm_matches_the_interpreter() {
    let mut rng = Lcg(3);
    for dtype in DTYPES {
        for (b, l) in SHAPES {
            for (eps, width) in [(1e-12, 7), (1e-5, 1), (0.5, 16)] {
                let t = ty(dtype);
                let text = format!(
                    "graph {{\n  %0 = input {{name=\"x\"}} : {t}[B,L,{width}]\n  %1 = weight {{name=\"w\"}} : {t}[{width}]\n  %2 = weight {{name=\"b\"}} : {t}[{width}]\n  %3 = layer_norm %0, %1, %2 {{eps={eps:?}}} : {t}[B,L,{width}]\n  %4 = input {{name=\"v\"}} : {t}[{width}]\n  %5 = layer_norm %4, %1, %2 {{eps={eps:?}}} : {t}[{width}]\n  output \"y\" = %3\n  output \"z\" = %5\n}}\n"
                );
                let bind = Bindings {
                    inputs: [
                        (
                            "x".to_string(),
                            floats(&mut rng, &[b, l, width], 3.0, dtype),
                        ),
                        ("v".to_string(), floats(&mut rng, &[width], 3.0, dtype)),
                    ]
                    .into(),
                    weights: [
                        ("w".to_string(), floats(&mut rng, &[width], 2.0, DType::F32)),
                        ("b".to_string(), floats(&mut rng, &[width], 1.0, DType::F32)),
                    ]
                    .into(),
                };
                check(
                    &format!("layer_norm {t} B={b} L={l} eps={eps}"),
                    &text,
                    &bind,
                    dtype,
                );
            }
        }
    }
}

#[test]
fn linear_with_bias_and_every_activation_matches_the_interpreter() {
    let mut rng = Lcg(4);
    let acts = [
        "",
        "relu",
        "gelu",
        "gelu_new",
        "gelu_fast",
        "silu",
        "tanh",
        "sigmoid",
    ];
    for dtype in DTYPES {
        for (b, l) in SHAPES {
            for (i, act) in acts.iter().enumerate() {
                let t = ty(dtype);
                let attr = if act.is_empty() {
                    String::new()
                } else {
                    format!(" {{activation=\"{act}\"}}")
                };
                // Every other case has a bias; each also runs on a matrix and a vector.
                let (bias, bias_op) = if i % 2 == 0 {
                    (format!("  %2 = weight {{name=\"b\"}} : {t}[5]\n"), ", %2")
                } else {
                    (String::new(), "")
                };
                let text = format!(
                    "graph {{\n  %0 = input {{name=\"x\"}} : {t}[B,L,3]\n  %1 = weight {{name=\"w\"}} : {t}[5,3]\n{bias}  %3 = linear %0, %1{bias_op}{attr} : {t}[B,L,5]\n  %4 = input {{name=\"m\"}} : {t}[N,3]\n  %5 = linear %4, %1{bias_op}{attr} : {t}[N,5]\n  %6 = input {{name=\"v\"}} : {t}[3]\n  %7 = linear %6, %1{bias_op}{attr} : {t}[5]\n  output \"y\" = %3\n  output \"z\" = %5\n  output \"u\" = %7\n}}\n"
                );
                let bind = Bindings {
                    inputs: [
                        ("x".to_string(), floats(&mut rng, &[b, l, 3], 2.0, dtype)),
                        ("m".to_string(), floats(&mut rng, &[l + 1, 3], 2.0, dtype)),
                        ("v".to_string(), floats(&mut rng, &[3], 2.0, dtype)),
                    ]
                    .into(),
                    weights: [
                        ("w".to_string(), floats(&mut rng, &[5, 3], 1.0, DType::F32)),
                        ("b".to_string(), floats(&mut rng, &[5], 1.0, DType::F32)),
                    ]
                    .into(),
                };
                check(
                    &format!("linear {t} B={b} L={l} act={act:?}"),
                    &text,
                    &bind,
                    dtype,
                );
            }
        }
    }
}

/// Attention flag combinations: (causal, key_norm, self_mask, mask, kv_chunk).
const FLAGS: [(bool, bool, bool, bool, Option<u64>); 7] = [
    (false, false, false, false, None),
    (true, false, false, false, None),
    (false, true, true, false, None),
    (true, true, true, true, None),
    (false, false, false, true, Some(2)),
    (true, false, true, true, Some(3)),
    (false, true, false, true, None),
];

fn attention_attrs(heads: u64, scale: f64, f: (bool, bool, bool, bool, Option<u64>)) -> String {
    let mut attrs = vec![format!("heads={heads}"), format!("scale={scale:?}")];
    for (on, name) in [(f.0, "causal"), (f.1, "key_norm"), (f.2, "self_mask")] {
        if on {
            attrs.push(name.to_string());
        }
    }
    if let Some(kv) = f.4 {
        attrs.push(format!("kv_chunk={kv}"));
    }
    attrs.join(", ")
}

/// A `[b, l]` mask with some keys dropped (a whole row in one case).
fn mask(rng: &mut Lcg, b: usize, l: usize, dtype: DType) -> Tensor {
    let v: Vec<i64> = (0..b * l)
        .map(|i| i64::from(i % l == 0 || rng.below(3) != 0))
        .collect();
    Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[b, l]), v).unwrap()).cast(dtype)
}

#[test]
fn self_attention_with_every_flag_matches_the_interpreter() {
    let mut rng = Lcg(6);
    for dtype in DTYPES {
        for (b, l) in SHAPES {
            for (heads, d, dv) in [(1u64, 4u64, 4u64), (2, 3, 5)] {
                for f in FLAGS {
                    let t = ty(dtype);
                    let attrs = attention_attrs(heads, 1.0 / (d as f64).sqrt(), f);
                    let (w, wv) = (heads * d, heads * dv);
                    let (m, mop) = if f.3 {
                        ("  %3 = input {name=\"mask\"} : i64[B,L]\n", ", %3")
                    } else {
                        ("", "")
                    };
                    let text = format!(
                        "graph {{\n  %0 = input {{name=\"q\"}} : {t}[B,L,{w}]\n  %1 = input {{name=\"k\"}} : {t}[B,L,{w}]\n  %2 = input {{name=\"v\"}} : {t}[B,L,{wv}]\n{m}  %4 = attention %0, %1, %2{mop} {{{attrs}}} : {t}[B,L,{wv}]\n  %5 = attention %0, %0, %2{mop} {{{attrs}}} : {t}[B,L,{wv}]\n  output \"y\" = %4\n  output \"shared\" = %5\n}}\n"
                    );
                    let (bu, lu) = (b, l);
                    let bind = Bindings {
                        inputs: [
                            (
                                "q".to_string(),
                                floats(&mut rng, &[bu, lu, w as usize], 2.0, dtype),
                            ),
                            (
                                "k".to_string(),
                                floats(&mut rng, &[bu, lu, w as usize], 2.0, dtype),
                            ),
                            (
                                "v".to_string(),
                                floats(&mut rng, &[bu, lu, wv as usize], 1.0, dtype),
                            ),
                            ("mask".to_string(), mask(&mut rng, bu, lu, DType::I64)),
                        ]
                        .into(),
                        weights: BTreeMap::new(),
                    };
                    check(
                        &format!("attention {t} B={b} L={l} H={heads} {attrs} mask={}", f.3),
                        &text,
                        &bind,
                        dtype,
                    );
                }
            }
        }
    }
}

#[test]
fn cross_attention_and_bool_masks_match_the_interpreter() {
    let mut rng = Lcg(7);
    for dtype in DTYPES {
        for (b, lq, lk) in [(1usize, 3usize, 5usize), (2, 6, 1), (3, 4, 7)] {
            for f in FLAGS {
                let t = ty(dtype);
                let attrs = attention_attrs(2, 0.3, f);
                let (m, mop) = if f.3 {
                    ("  %3 = input {name=\"mask\"} : bool[B,K]\n", ", %3")
                } else {
                    ("", "")
                };
                let text = format!(
                    "graph {{\n  %0 = input {{name=\"q\"}} : {t}[B,Q,6]\n  %1 = input {{name=\"k\"}} : {t}[B,K,6]\n  %2 = input {{name=\"v\"}} : {t}[B,K,4]\n{m}  %4 = attention %0, %1, %2{mop} {{{attrs}}} : {t}[B,Q,4]\n  output \"y\" = %4\n}}\n"
                );
                let bind = Bindings {
                    inputs: [
                        ("q".to_string(), floats(&mut rng, &[b, lq, 6], 2.0, dtype)),
                        ("k".to_string(), floats(&mut rng, &[b, lk, 6], 2.0, dtype)),
                        ("v".to_string(), floats(&mut rng, &[b, lk, 4], 1.0, dtype)),
                        ("mask".to_string(), mask(&mut rng, b, lk, DType::Bool)),
                    ]
                    .into(),
                    weights: BTreeMap::new(),
                };
                check(
                    &format!("cross attention {t} B={b} Lq={lq} Lk={lk} {attrs}"),
                    &text,
                    &bind,
                    dtype,
                );
            }
        }
    }
}

/// A reversible block whose regions hold model ops, and a position-wise
/// `seq_chunk` (inlined) inside one of them and at the top level.
#[test]
fn reversible_regions_are_lowered_and_seq_chunk_is_inlined() {
    let mut rng = Lcg(8);
    for dtype in DTYPES {
        for (b, l) in SHAPES {
            let t = ty(dtype);
            let text = format!(
                "graph {{
  %0 = input {{name=\"x\"}} : {t}[B,L,8]
  %1 = weight {{name=\"ln.w\"}} : {t}[4]
  %2 = weight {{name=\"ln.b\"}} : {t}[4]
  %3 = weight {{name=\"w1\"}} : {t}[6,4]
  %4 = weight {{name=\"b1\"}} : {t}[6]
  %5 = weight {{name=\"w2\"}} : {t}[4,6]
  %6 = weight {{name=\"head\"}} : {t}[3,8]
  %7 = reversible_block %0 : {t}[B,L,8] {{
    f(%8: {t}[B,L,4]) {{
      %9 = layer_norm %8, %1, %2 {{eps=1e-12}} : {t}[B,L,4]
      %10 = attention %9, %9, %9 {{causal, heads=2, scale=0.7}} : {t}[B,L,4]
      yield %10
    }}
    g(%11: {t}[B,L,4]) {{
      %12 = seq_chunk %11 {{axis=1, size=2}} : {t}[B,L,4] {{
        body(%13: {t}[B,C,4]) {{
          %14 = layer_norm %13, %1, %2 {{eps=1e-12}} : {t}[B,C,4]
          %15 = linear %14, %3, %4 {{activation=\"relu\"}} : {t}[B,C,6]
          %16 = linear %15, %5 : {t}[B,C,4]
          yield %16
        }}
      }}
      yield %12
    }}
  }}
  %17 = seq_chunk %7 {{axis=1, size=3}} : {t}[B,L,3] {{
    body(%18: {t}[B,C1,8]) {{
      %19 = linear %18, %6 : {t}[B,C1,3]
      yield %19
    }}
  }}
  output \"y\" = %17
}}
"
            );
            let weights = [
                ("ln.w", vec![4]),
                ("ln.b", vec![4]),
                ("w1", vec![6, 4]),
                ("b1", vec![6]),
                ("w2", vec![4, 6]),
                ("head", vec![3, 8]),
            ]
            .into_iter()
            .map(|(n, s)| (n.to_string(), floats(&mut rng, &s, 1.0, DType::F32)))
            .collect();
            let bind = Bindings {
                inputs: [("x".to_string(), floats(&mut rng, &[b, l, 8], 2.0, dtype))].into(),
                weights,
            };
            check(&format!("reversible {t} B={b} L={l}"), &text, &bind, dtype);
            let low = lower_model(&parse(&text).unwrap()).unwrap();
            let kinds: Vec<OpKind> = low
                .walk()
                .into_iter()
                .map(|v| low.node(v).op.kind)
                .collect();
            assert_eq!(
                kinds
                    .iter()
                    .filter(|k| **k == OpKind::ReversibleBlock)
                    .count(),
                1
            );
            assert!(!kinds.contains(&OpKind::SeqChunk));
        }
    }
}

#[test]
fn a_seq_chunk_body_that_mixes_positions_is_refused() {
    let text = "graph {
  %0 = input {name=\"x\"} : f32[B,L,4]
  %1 = seq_chunk %0 {axis=1, size=2} : f32[B,L,4] {
    body(%2: f32[B,C,4]) {
      %3 = softmax %2 {axis=1} : f32[B,C,4]
      yield %3
    }
  }
  output \"y\" = %1
}
";
    let err = lower_model(&parse(text).unwrap()).unwrap_err();
    assert!(err.contains("not known to be position-wise"), "{err}");
    assert!(err.contains("seq_chunk"), "{err}");
}

#[test]
fn local_and_lsh_attention_report_a_missing_lowering_or_lower() {
    let text = "graph {\n  %0 = input {name=\"x\"} : f32[B,L,4]\n  %1 = local_attention %0, %0, %0 {after=0, before=1, chunk=2, heads=2, layer=3, scale=0.5} : f32[B,L,4]\n  output \"y\" = %1\n}\n";
    match lower_model(&parse(text).unwrap()) {
        Err(e) => {
            assert!(e.contains(NOT_YET), "{e}");
            assert!(
                e.contains("local_attention") && e.contains("layer 3"),
                "{e}"
            );
        }
        Ok(g) => assert_lowered("local_attention", &g),
    }
}

#[test]
fn the_pass_is_registered_and_keeps_layers() {
    let pass = lookup("lower-model").expect("lower-model is registered");
    assert!(!reformc_passes::DEFAULT_PIPELINE.contains(&"lower-model"));
    let text = "graph {\n  %0 = input {name=\"x\"} : f32[B,L,4]\n  %1 = weight {layer=2, name=\"w\"} : f32[3,4]\n  %2 = linear %0, %1 {activation=\"relu\", layer=2} : f32[B,L,3]\n  output \"y\" = %2\n}\n";
    let mut g = parse(text).unwrap();
    let notes = pass.run(&mut g, &PassOptions::default()).unwrap();
    assert!(notes[0].contains("lowered 1 model op"), "{notes:?}");
    for v in g.walk() {
        let n = g.node(v);
        if n.op.kind != OpKind::Input {
            assert_eq!(n.op.int("layer"), Some(2), "{}", print(&g));
        }
    }
}

/// Runs the default pipeline on `g`, then `lower-model` through the pass
/// manager (as `--pipeline ...,lower-model` does).
fn pipeline_then_lower(g: &Graph, opts: &PassOptions) -> Result<(Graph, Graph), String> {
    let quiet = reformc_passes::Instrumentation {
        quiet: true,
        ..Default::default()
    };
    let mut passed = g.clone();
    PassManager::new(Pipeline::default_pipeline(), quiet.clone())
        .unwrap()
        .run(&mut passed, opts, &mut std::io::sink())
        .map_err(|e| e.to_string())?;
    let mut lowered = passed.clone();
    // Every model op lowered, layer norms too (a training pipeline keeps
    // those for their fused derivative).
    let all = PassOptions {
        lowered_grads: true,
        ..opts.clone()
    };
    PassManager::new(Pipeline::parse("lower-model,memory-plan").unwrap(), quiet)
        .unwrap()
        .run(&mut lowered, &all, &mut std::io::sink())
        .map_err(|e| e.to_string())?;
    assert_lowered("pipeline", &lowered);
    Ok((passed, lowered))
}

/// Every HF fixture, lowered by the frontend + default passes + `lower-model`
/// in f64 with the recorded buckets, gives HF's float64 logits. A fixture is
/// skipped only while one of its attention kinds has no lowering yet.
#[test]
fn hf_fixtures_give_the_same_logits_after_lowering() {
    let (mut ran, mut skipped) = (0, vec![]);
    for case in common::Case::all() {
        let source = case.replay_source();
        let g = case.graph(DType::F64, source);
        let opts = PassOptions {
            seq_len: Some(case.seq_len() as u64),
            chunk_size_feed_forward: case.spec.chunk_size_feed_forward,
            chunk_size_lm_head: case.spec.chunk_size_lm_head,
            ..Default::default()
        };
        let (passed, lowered) = match pipeline_then_lower(&g, &opts) {
            Ok(p) => p,
            Err(e) if e.contains(NOT_YET) => {
                println!("skipped {}: {e}", case.name);
                skipped.push(case.name.clone());
                continue;
            }
            Err(e) => panic!("{}: {e}", case.name),
        };
        let weights = case.weight_map(&passed);
        let inputs = case.inputs(source);
        let want = common::interp_output(&passed, &inputs, &weights, "logits");
        let got = common::interp_output(&lowered, &inputs, &weights, "logits");
        let err = common::max_abs_diff(&got, &want);
        assert!(
            err <= 1e-12,
            "{}: lowered logits differ by {err:e}",
            case.name
        );
        let hf = common::max_abs_diff(&got, &case.reference_f64());
        assert!(
            hf <= 1e-9,
            "{}: lowered logits differ from HF by {hf:e}",
            case.name
        );
        ran += 1;
    }
    println!(
        "{ran} fixture(s) checked, {} skipped: {skipped:?}",
        skipped.len()
    );
}

/// A schema model with full attention only (shared and separate QK),
/// reversible or residual, axial or learned positions, chunked feed-forward
/// and LM head: lowered, it gives the same logits (f64 and f32).
#[test]
fn full_attention_schema_models_give_the_same_logits_after_lowering() {
    let mut rng = Lcg(9);
    for (arch, position, causal) in [
        (
            "reversible",
            r#"{"type": "axial", "shape": [4, 8], "dims": [6, 10]}"#,
            true,
        ),
        ("residual", r#"{"type": "learned"}"#, false),
        ("reversible", r#"{"type": "learned"}"#, false),
        (
            "residual",
            r#"{"type": "axial", "shape": [8, 4], "dims": [8, 8]}"#,
            true,
        ),
    ] {
        let text = format!(
            r#"{{"format": "reformc-model", "version": 1, "architecture": "{arch}",
  "vocab_size": 23, "hidden_size": 16, "num_heads": 2, "head_dim": 4, "feed_forward_size": 24,
  "activation": "gelu", "layer_norm_eps": 1e-5, "causal": {causal},
  "layers": [{{"type": "full", "shared_qk": true}}, "full"],
  "position": {position}, "max_position_embeddings": 32,
  "head": {{"type": "lm_head", "bias": true}}, "weight_prefix": ""}}"#
        );
        let (spec, _) =
            reformc_frontend::schema::parse_schema(&text, std::path::Path::new("model.json"))
                .unwrap();
        for dtype in DTYPES {
            for (b, l) in [(1usize, 1usize), (2, 7), (3, 12)] {
                let ctx = format!(
                    "{arch} {position} causal={causal} {} B={b} L={l}",
                    ty(dtype)
                );
                let g = lower(
                    &spec,
                    &LowerOptions {
                        dtype,
                        lsh_source: LshSource::Seeded,
                        seq_len: Some(l as u64),
                    },
                )
                .unwrap()
                .graph;
                let opts = PassOptions {
                    seq_len: Some(l as u64),
                    chunk_size_feed_forward: Some(3),
                    chunk_size_lm_head: Some(4),
                    ..Default::default()
                };
                let (passed, lowered) =
                    pipeline_then_lower(&g, &opts).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert!(
                    print(&passed).contains("seq_chunk"),
                    "{ctx}: the test wants chunked bodies"
                );
                let weights = random_weights(&passed, &mut rng);
                let inputs = random_inputs(&spec, b, l, &mut rng, LshSource::Seeded, &[]);
                let want = common::interp_output(&passed, &inputs, &weights, "logits");
                let got = common::interp_output(&lowered, &inputs, &weights, "logits");
                let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
                let err = common::max_abs_diff(&got, &want) / scale;
                assert!(
                    err <= tolerance(dtype),
                    "{ctx}: lowered logits differ by {err:e}"
                );
            }
        }
    }
}

/// The HF fixtures with `--attention full` (LSH layers become exact shared-QK
/// attention): real weights, axial embeddings, padding masks and reversible
/// stacks through `lower-model`, lowered vs unlowered logits in f64. Fixtures
/// with local layers are skipped while local attention has no lowering.
#[test]
fn hf_fixtures_with_full_attention_give_the_same_logits_after_lowering() {
    let mut ran = vec![];
    for case in common::Case::all() {
        let source = case.replay_source();
        let g = case.graph(DType::F64, source);
        let opts = PassOptions {
            seq_len: Some(case.seq_len() as u64),
            attention: Some("full".into()),
            chunk_size_feed_forward: Some(5),
            chunk_size_lm_head: Some(7),
            ..Default::default()
        };
        let (passed, lowered) = match pipeline_then_lower(&g, &opts) {
            Ok(p) => p,
            Err(e) if e.contains(NOT_YET) => {
                println!("skipped {}: {e}", case.name);
                continue;
            }
            Err(e) => panic!("{}: {e}", case.name),
        };
        let weights = case.weight_map(&passed);
        let inputs = case.inputs(source);
        let want = common::interp_output(&passed, &inputs, &weights, "logits");
        let got = common::interp_output(&lowered, &inputs, &weights, "logits");
        let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        let err = common::max_abs_diff(&got, &want) / scale;
        assert!(
            err <= 1e-12,
            "{}: lowered logits differ by {err:e}",
            case.name
        );
        ran.push(case.name.clone());
    }
    println!("checked {ran:?}");
    assert!(ran.len() >= 3, "only {ran:?} have no local layer");
}

/// A training step keeps a chunked feed-forward as one `feed_forward` op
/// (its weights as operands) and says what it kept, by kind.
#[test]
fn a_chunked_feed_forward_is_kept_whole_and_the_note_names_it() {
    let text = "graph {
  %0 = input {name=\"x\"} : f32[B,P,4]
  %1 = weight {name=\"g\"} : f32[4]
  %2 = weight {name=\"b\"} : f32[4]
  %3 = weight {name=\"w1\"} : f32[6,4]
  %4 = weight {name=\"b1\"} : f32[6]
  %5 = weight {name=\"w2\"} : f32[4,6]
  %6 = weight {name=\"b2\"} : f32[4]
  %7 = seq_chunk %0 {axis=1, size=2} : f32[B,P,4] {
    body(%8: f32[B,C,4]) {
      %9 = layer_norm %8, %1, %2 {eps=1e-5} : f32[B,C,4]
      %10 = linear %9, %3, %4 {activation=\"gelu\"} : f32[B,C,6]
      %11 = linear %10, %5, %6 : f32[B,C,4]
      yield %11
    }
  }
  output \"y\" = %7
}";
    let pass = lookup("lower-model").expect("lower-model is registered");
    let mut g = reformc_ir::parse(text).unwrap();
    let notes = pass.run(&mut g, &PassOptions::default()).unwrap();
    let printed = reformc_ir::print(&g);
    assert!(
        printed.contains("feed_forward %0, %1, %2, %3, %4, %5, %6 {activation=\"gelu\", chunk=2, eps=1e-5} : f32[B,P,4]"),
        "{printed}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("kept 1 feed_forward op for")),
        "{notes:?}"
    );
    // --lowered-grads inlines the body instead.
    let mut g = reformc_ir::parse(text).unwrap();
    let opts = PassOptions {
        lowered_grads: true,
        ..Default::default()
    };
    pass.run(&mut g, &opts).unwrap();
    assert!(!reformc_ir::print(&g).contains("feed_forward"));
}
