//! Differential tests of the `attention` and `local_attention` lowerings:
//! reformc's MLIR CPU pipeline against the reference interpreter, over the
//! attribute combinations the interpreter accepts, plus `mlir-opt-22`
//! verification of the emitted text.

use crate::common;

use common::{compare_args, random_f32, random_i64};
use ndarray::{ArrayD, IxDyn};
use reformc_backend_mlir::{emit_module, verify_module, EmitOptions};
use reformc_interp::Tensor;
use reformc_testkit::mlir_module::check_module_text;

/// Relative tolerance of the f32 comparisons (the bound).
const TOL: f64 = 1e-5;

/// Queries/keys of width `w` and values of width `wv` over dims `b`, `l`
/// (`lk` for keys and values), an optional mask, and one output per
/// attribute string in `ops` (each `kind {attrs}`).
fn graph(
    dt: &str,
    dims: (&str, &str, &str),
    w: u64,
    wv: u64,
    mask: bool,
    ops: &[String],
) -> String {
    let (b, l, lk) = dims;
    let mut s = String::from("graph {\n");
    s += &format!("  %q = input {{name=\"q\"}} : {dt}[{b},{l},{w}]\n");
    s += &format!("  %k = input {{name=\"k\"}} : {dt}[{b},{lk},{w}]\n");
    s += &format!("  %v = input {{name=\"v\"}} : {dt}[{b},{lk},{wv}]\n");
    let m = if mask {
        s += &format!("  %m = input {{name=\"mask\"}} : i64[{b},{lk}]\n");
        ", %m"
    } else {
        ""
    };
    for (i, op) in ops.iter().enumerate() {
        let (kind, attrs) = op.split_once(' ').expect("kind and attributes");
        s += &format!("  %r{i} = {kind} %q, %k, %v{m} {attrs} : {dt}[{b},{l},{wv}]\n");
    }
    for i in 0..ops.len() {
        s += &format!("  output \"y{i}\" = %r{i}\n");
    }
    s + "}\n"
}

/// A 0/1 mask `[b, l]`: row 0 random (position 0 kept, so no row is fully
/// masked under causal), later rows padded at the end (the last `b` - 1..
/// positions dropped), as tokenisers pad.
fn mask(b: usize, l: usize, seed: u64) -> Tensor {
    let Tensor::I64(mut m) = random_i64(&[b, l], 2, seed) else {
        unreachable!("random_i64 gives i64")
    };
    m[[0, 0]] = 1;
    for bi in 1..b {
        let keep = l.saturating_sub(bi + 1).max(1);
        for i in 0..l {
            m[[bi, i]] = i64::from(i < keep);
        }
    }
    Tensor::I64(m)
}

/// Arguments q, k, v (and the mask) for the shapes of [`graph`].
fn args(
    b: usize,
    l: usize,
    lk: usize,
    w: usize,
    wv: usize,
    with_mask: bool,
    seed: u64,
) -> Vec<Tensor> {
    let mut a = vec![
        random_f32(&[b, l, w], seed),
        random_f32(&[b, lk, w], seed + 1),
        random_f32(&[b, lk, wv], seed + 2),
    ];
    if with_mask {
        a.push(mask(b, lk, seed + 3));
    }
    a
}

/// Scales the f32 tensors of `a` by `f`, so that logits spread beyond [-1, 1].
fn scaled(a: Vec<Tensor>, f: f32) -> Vec<Tensor> {
    a.into_iter()
        .map(|t| match t {
            Tensor::F32(x) => Tensor::F32(x.mapv(|v| v * f)),
            t => t,
        })
        .collect()
}

/// The attribute list `{...}` from the non-empty parts.
fn attrs(parts: &[String]) -> String {
    let parts: Vec<&String> = parts.iter().filter(|p| !p.is_empty()).collect();
    format!(
        "{{{}}}",
        parts
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn flag(on: bool, name: &str) -> String {
    if on {
        name.to_string()
    } else {
        String::new()
    }
}

/// `attention` with every flag combination, dense and with kv_chunk 3 and
/// one of 1, 2, 4 (dividing and not dividing the lengths below), against the
/// interpreter on dynamic B and L, batch 1 and 2, heads 1 and 2.
#[test]
fn attention_matches_the_interpreter_for_every_flag_combination() {
    for combo in 0..16u32 {
        let (causal, with_mask, key_norm, self_mask) = (
            combo & 1 != 0,
            combo & 2 != 0,
            combo & 4 != 0,
            combo & 8 != 0,
        );
        let heads = if combo % 3 == 0 { 1 } else { 2 };
        let common = [
            format!("heads={heads}"),
            "scale=0.35".to_string(),
            flag(causal, "causal"),
            flag(key_norm, "key_norm"),
            flag(self_mask, "self_mask"),
        ];
        // Dense, kv_chunk 3 and one of 1, 2, 4 in turn (all three lengths
        // below are covered by each over the combinations).
        let other = [1, 2, 4][combo as usize % 3];
        let ops: Vec<String> = [None, Some(3), Some(other)]
            .iter()
            .map(|kv| {
                let mut p = common.to_vec();
                if let Some(c) = kv {
                    p.push(format!("kv_chunk={c}"));
                }
                format!("attention {}", attrs(&p))
            })
            .collect();
        let text = graph("f32", ("B", "L", "L"), 8, 6, with_mask, &ops);
        let mut shapes = vec![(1, 5 + combo as usize % 4), (2, 7)];
        if combo % 5 == 0 {
            shapes.push((2, 1));
        }
        for (b, l) in shapes {
            let a = scaled(
                args(b, l, l, 8, 6, with_mask, u64::from(combo) * 10 + l as u64),
                3.0,
            );
            compare_args(&text, a, TOL);
        }
    }
}

/// Queries and keys of different lengths (cross attention), causal and
/// masked, dense and streamed.
#[test]
fn attention_with_fewer_queries_than_keys_matches_the_interpreter() {
    let ops = vec![
        "attention {heads=2, scale=0.5, causal}".to_string(),
        "attention {heads=2, scale=0.5, causal, kv_chunk=4}".to_string(),
        "attention {heads=2, scale=0.5, self_mask, key_norm, kv_chunk=3}".to_string(),
    ];
    let text = graph("f32", ("B", "M", "N"), 8, 4, true, &ops);
    for (b, m, n) in [(1, 3, 9), (2, 5, 5), (2, 4, 10)] {
        compare_args(&text, scaled(args(b, m, n, 8, 4, true, 7), 2.0), TOL);
    }
}

/// Static shapes take the paths without runtime sizes (no padding for a
/// dividing kv_chunk, no `scf.if` for local attention).
#[test]
fn static_shapes_match_the_interpreter() {
    let ops = vec![
        "attention {heads=2, scale=0.5, causal, self_mask, key_norm}".to_string(),
        "attention {heads=2, scale=0.5, causal, kv_chunk=4}".to_string(),
        "attention {heads=2, scale=0.5, kv_chunk=5}".to_string(),
        "local_attention {heads=2, scale=0.5, chunk=4, before=1, after=1, causal}".to_string(),
        "local_attention {heads=2, scale=0.5, chunk=2, before=2, after=0}".to_string(),
    ];
    let text = graph("f32", ("2", "8", "8"), 8, 6, true, &ops);
    compare_args(&text, scaled(args(2, 8, 8, 8, 6, true, 3), 2.0), TOL);
    // A static batch with a dynamic length.
    let text = graph("f32", ("1", "L", "L"), 8, 6, true, &ops);
    compare_args(&text, scaled(args(1, 8, 8, 8, 6, true, 4), 2.0), TOL);
    // A length no longer than the chunk is full attention.
    let short = vec![
        "local_attention {heads=1, scale=0.5, chunk=8, before=1, after=0, causal}".to_string(),
    ];
    let text = graph("f32", ("1", "5", "5"), 4, 4, true, &short);
    compare_args(&text, args(1, 5, 5, 4, 4, true, 5), TOL);
}

/// `local_attention` for every (before, after) in 0..=2, causal on and off,
/// mask on and off, chunk 2 and 3, on lengths of one to four chunks and
/// shorter than a chunk (full attention), batch 1 and 2, heads 1 and 2.
#[test]
fn local_attention_matches_the_interpreter_for_every_window() {
    for combo in 0..4u32 {
        let (causal, with_mask) = (combo & 1 != 0, combo & 2 != 0);
        let chunk = if combo < 2 { 2 } else { 3 };
        let heads = if combo % 2 == 0 { 2 } else { 1 };
        let mut ops = Vec::new();
        for before in 0..=2 {
            for after in 0..=2 {
                let p = [
                    format!("heads={heads}"),
                    "scale=0.4".to_string(),
                    format!("chunk={chunk}"),
                    format!("before={before}"),
                    format!("after={after}"),
                    flag(causal, "causal"),
                ];
                ops.push(format!("local_attention {}", attrs(&p)));
            }
        }
        let text = graph("f32", ("B", "L", "L"), 8, 4, with_mask, &ops);
        for (b, n) in [(1, 1), (2, 2), (1, 3), (2, 4)] {
            let l = chunk * n;
            let a = scaled(
                args(b, l, l, 8, 4, with_mask, u64::from(combo) + 31 * n as u64),
                3.0,
            );
            compare_args(&text, a, TOL);
        }
        // Shorter than one chunk: the interpreter's full attention.
        compare_args(
            &text,
            args(2, chunk - 1, chunk - 1, 8, 4, with_mask, 99),
            TOL,
        );
    }
}

/// f64 follows the interpreter to rounding.
#[test]
fn f64_attention_matches_the_interpreter_closely() {
    let ops = vec![
        "attention {heads=2, scale=0.5, causal, self_mask, key_norm, kv_chunk=3}".to_string(),
        "local_attention {heads=2, scale=0.5, chunk=2, before=1, after=1, causal}".to_string(),
    ];
    let text = graph("f64", ("B", "L", "L"), 6, 4, true, &ops);
    let a: Vec<Tensor> = args(2, 6, 6, 6, 4, true, 11)
        .into_iter()
        .map(|t| match t {
            Tensor::F32(x) => Tensor::F64(x.mapv(|v| f64::from(v) * 2.0)),
            t => t,
        })
        .collect();
    compare_args(&text, a, 1e-12);
}

/// A bool mask is read as keep = true, like a nonzero integer.
#[test]
fn bool_masks_match_the_interpreter() {
    let text = "graph {
  %q = input {name=\"q\"} : f32[B,L,4]
  %m = input {name=\"mask\"} : bool[B,L]
  %a = attention %q, %q, %q, %m {heads=2, scale=0.5, kv_chunk=2} : f32[B,L,4]
  %b = local_attention %q, %q, %q, %m {heads=1, scale=0.5, chunk=2, before=1, after=0} : f32[B,L,4]
  output \"a\" = %a
  output \"b\" = %b
}
";
    let Tensor::I64(m) = mask(2, 6, 4) else {
        unreachable!()
    };
    let m = Tensor::Bool(ArrayD::from_shape_fn(IxDyn(&[2, 6]), |i| {
        m[[i[0], i[1]]] != 0
    }));
    compare_args(text, vec![random_f32(&[2, 6, 4], 8), m], TOL);
}

/// Attributes the lowering cannot honour are errors, not invalid MLIR.
#[test]
fn a_static_length_that_is_not_a_multiple_of_the_chunk_is_an_error() {
    let text = graph(
        "f32",
        ("1", "7", "7"),
        4,
        4,
        false,
        &["local_attention {heads=1, scale=0.5, chunk=3, before=1, after=0}".to_string()],
    );
    let g = reformc_ir::parse(&text).unwrap();
    let e = emit_module(&g, &EmitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("multiple"), "{e}");
}

/// Every form (dense, streamed, local with and without `scf.if`) verifies
/// with melior and with `mlir-opt-22`, uses upstream dialects only, and
/// the streamed and local forms hold no `[L, L]`-sized tensor type.
#[test]
fn emitted_attention_verifies_with_mlir_opt_and_stays_linear() {
    let ops = vec![
        "attention {heads=2, scale=0.5, causal, self_mask, key_norm}".to_string(),
        "attention {heads=2, scale=0.5, causal, kv_chunk=4}".to_string(),
        "local_attention {heads=2, scale=0.5, chunk=4, before=1, after=1, causal}".to_string(),
    ];
    let text = graph("f32", ("B", "L", "L"), 8, 6, true, &ops);
    let g = reformc_ir::parse(&text).unwrap();
    let module = emit_module(&g, &EmitOptions::default()).unwrap();
    verify_module(&module).unwrap_or_else(|e| panic!("{e}\n{module}"));
    check_module_text(&module);
    // Only the dense op may build a tensor with two dynamic length axes.
    for kept in [&ops[1..2], &ops[2..3]] {
        let text = graph("f32", ("B", "L", "L"), 8, 6, true, kept);
        let g = reformc_ir::parse(&text).unwrap();
        let module = emit_module(&g, &EmitOptions::default()).unwrap();
        verify_module(&module).unwrap_or_else(|e| panic!("{e}\n{module}"));
        // The `scf.if` branch for a length of at most one chunk is full
        // attention, quadratic only in the chunk length.
        let mut short_branch = false;
        for line in module.lines() {
            if line.contains("scf.if") {
                short_branch = true;
            } else if line.contains("} else {") {
                short_branch = false;
            }
            for ty in line.split("tensor<").skip(1) {
                let ty = ty.split('>').next().unwrap_or("");
                let dynamic = ty.matches('?').count();
                assert!(
                    short_branch || dynamic <= 2,
                    "tensor<{ty}> has more dynamic axes than B and one length"
                );
            }
        }
    }
}
