//! Differential tests of the sort and LSH attention lowerings: reformc's MLIR
//! CPU pipeline against the reference interpreter on the same inputs.

use crate::common;

use common::{compare_args, random_f32, random_i64};
use reformc_backend_mlir::{emit_module, verify_module, EmitOptions};
use reformc_interp::Tensor;
use reformc_testkit::mlir_module::check_module_text;

/// A graph sorting an `i64[B,N]` input along axis 1.
fn argsort_graph(dtype: &str, axis: usize) -> String {
    format!(
        "graph {{
  %0 = input {{name=\"x\"}} : {dtype}[B,N]
  %1 = argsort %0 {{axis={axis}}} : i64[B,N]
  output \"p\" = %1
}}
"
    )
}

#[test]
fn argsort_with_ties_matches_the_interpreter() {
    for (b, n, hi) in [
        (2, 1, 3),
        (2, 5, 3),
        (1, 8, 4),
        (2, 13, 5),
        (3, 64, 1000),
        (2, 100, 7),
        // All keys equal: the identity permutation.
        (2, 9, 1),
        (2, 1000, 50),
    ] {
        let x = random_i64(&[b, n], hi, (b * 1000 + n) as u64);
        compare_args(&argsort_graph("i64", 1), vec![x], 0.0);
    }
}

#[test]
fn argsort_of_floats_and_inner_axes_matches_the_interpreter() {
    let g = "graph {
  %0 = input {name=\"x\"} : f32[B,N,3]
  %1 = argsort %0 {axis=1} : i64[B,N,3]
  %2 = argsort %0 {axis=0} : i64[B,N,3]
  output \"p\" = %1
  output \"q\" = %2
}
";
    for (b, n) in [(2, 7), (3, 16), (1, 1)] {
        // Coarse values so that ties occur, plus signed zeros.
        let Tensor::F32(mut x) = random_f32(&[b, n, 3], n as u64) else {
            unreachable!()
        };
        x.mapv_inplace(|v| (v * 3.0).round() / 2.0);
        x[[0, 0, 0]] = -0.0;
        compare_args(g, vec![Tensor::F32(x)], 0.0);
    }
}

/// A graph with one `lsh_attention` of `heads` heads of width 4 over
/// `rounds` rounds, with a mask operand when `mask`.
fn lsh_graph(
    heads: usize,
    rounds: usize,
    chunk: usize,
    before: usize,
    after: usize,
    causal: bool,
    mask: bool,
) -> String {
    let w = heads * 4;
    let (m_in, m_arg) = if mask {
        ("  %3 = input {name=\"mask\"} : i64[B,L]\n", ", %3")
    } else {
        ("", "")
    };
    let causal = if causal { ", causal" } else { "" };
    format!(
        "graph {{
  %0 = input {{name=\"qk\"}} : f32[B,L,{w}]
  %1 = input {{name=\"v\"}} : f32[B,L,{w}]
  %2 = input {{name=\"buckets\"}} : i64[B,{heads},{rounds},L]
{m_in}  %4 = lsh_attention %0, %1, %2{m_arg} {{after={after}, before={before}{causal}, chunk={chunk}, heads={heads}}} : f32[B,L,{w}]
  output \"y\" = %4
}}
"
    )
}

/// Random arguments of [`lsh_graph`]: buckets in `0..nb` plus round offsets
/// `r nb`, a mask keeping about three positions in four.
fn lsh_args(
    b: usize,
    l: usize,
    heads: usize,
    rounds: usize,
    nb: i64,
    mask: bool,
    seed: u64,
) -> Vec<Tensor> {
    let w = heads * 4;
    let Tensor::I64(mut bk) = random_i64(&[b, heads, rounds, l], nb, seed + 2) else {
        unreachable!()
    };
    for ((_, _, r, _), x) in bk
        .indexed_iter_mut()
        .map(|(i, x)| ((i[0], i[1], i[2], i[3]), x))
    {
        *x += r as i64 * nb;
    }
    let mut args = vec![
        random_f32(&[b, l, w], seed),
        random_f32(&[b, l, w], seed + 1),
        Tensor::I64(bk),
    ];
    if mask {
        let Tensor::I64(m) = random_i64(&[b, l], 4, seed + 3) else {
            unreachable!()
        };
        args.push(Tensor::I64(m.mapv(|x| i64::from(x != 0))));
    }
    args
}

#[test]
fn lsh_attention_matches_the_interpreter() {
    // (batch, length, heads, rounds, chunk, before, after, causal, mask)
    let cases = [
        (2, 12, 2, 1, 4, 1, 0, false, false),
        (2, 12, 2, 2, 4, 1, 1, true, true),
        (1, 20, 1, 4, 4, 1, 0, true, false),
        (2, 15, 2, 1, 5, 0, 1, false, true),
        (1, 6, 2, 2, 4, 1, 0, true, true),
        (2, 9, 1, 2, 3, 2, 1, false, false),
        (1, 21, 2, 4, 7, 0, 0, true, true),
        (2, 3, 2, 2, 4, 1, 0, true, true),
        (1, 4, 1, 1, 4, 1, 1, false, true),
        (2, 64, 2, 2, 8, 1, 1, true, true),
        // Two chunks, one before and one after: the window holds a chunk twice.
        (1, 8, 1, 1, 4, 1, 1, true, true),
        // A deep network: N = 1920 slots padded to 2048, 15 chunks per round.
        (1, 960, 2, 2, 64, 1, 0, true, true),
    ];
    for (i, &(b, l, h, r, chunk, before, after, causal, mask)) in cases.iter().enumerate() {
        let g = lsh_graph(h, r, chunk, before, after, causal, mask);
        let args = lsh_args(b, l, h, r, 4, mask, 10 * i as u64);
        compare_args(&g, args, 1e-5);
    }
    // One bucket per round: every key ties, the order is the index order.
    let g = lsh_graph(2, 2, 4, 1, 1, true, true);
    compare_args(&g, lsh_args(2, 16, 2, 2, 1, true, 99), 1e-5);
}

#[test]
fn lsh_attention_in_f64_with_a_bool_mask_matches_the_interpreter() {
    let g = lsh_graph(2, 2, 4, 1, 0, true, true)
        .replace("f32[", "f64[")
        .replace("i64[B,L]", "bool[B,L]");
    let mut args = lsh_args(2, 12, 2, 2, 3, true, 7);
    for a in &mut args[..2] {
        *a = Tensor::F64(a.to_f64());
    }
    let Tensor::I64(m) = &args[3] else {
        unreachable!()
    };
    args[3] = Tensor::Bool(m.mapv(|x| x != 0));
    compare_args(&g, args, 1e-12);
}

/// Emits `text` as a module; checks it with melior's verifier and, when the
/// `mlir-opt-22`, and that every op is upstream. Saves it
/// under `$REFORMC_MLIR_DUMP/<name>.mlir` when that variable is set.
fn check_module(name: &str, text: &str) -> String {
    let g = reformc_ir::parse(text).expect("test graph parses");
    let module = emit_module(&g, &EmitOptions::default()).expect("graph lowers");
    verify_module(&module).unwrap_or_else(|e| panic!("melior rejects the module: {e}"));
    check_module_text(&module);
    if let Ok(dir) = std::env::var("REFORMC_MLIR_DUMP") {
        std::fs::write(format!("{dir}/{name}.mlir"), &module).expect("dump writable");
    }
    module
}

#[test]
fn sort_and_lsh_attention_modules_verify_with_upstream_dialects_only() {
    let m = check_module("argsort", &argsort_graph("f32", 1));
    assert!(
        m.contains("scf.while") && m.contains("arith.xori"),
        "bitonic network:\n{m}"
    );
    let m = check_module("lsh_r2_causal_mask", &lsh_graph(2, 2, 4, 1, 0, true, true));
    // One sort (by bucket; the inverse permutation is a binary search), a
    // short-sequence branch, and no [L, L] tensor in the sorted branch: its
    // logits are one [B, H, N / chunk, chunk, chunk] per window block
    // (before + 1 + after = 2 blocks), and no window is gathered.
    assert_eq!(
        m.matches("arith.xori").count(),
        2,
        "one sort, two stages per iteration"
    );
    assert!(m.contains("scf.if"));
    assert!(m.contains("tensor<?x2x?x4x4xf32>"), "block logits:\n{m}");
    assert!(!m.contains("x4x8xf32>"), "no whole-window logits:\n{m}");
    check_module("lsh_r1", &lsh_graph(1, 1, 8, 0, 0, false, false));
}

/// A tensor as `.npy` bytes (format 1.0, little endian, C order).
fn npy(t: &Tensor) -> Vec<u8> {
    let (descr, data): (&str, Vec<u8>) = match t {
        Tensor::F32(a) => ("<f4", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::F64(a) => ("<f8", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::I64(a) => ("<i8", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::I32(a) => ("<i4", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::Bool(a) => ("|b1", a.iter().map(|&x| u8::from(x)).collect()),
    };
    let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
    let comma = if dims.len() == 1 { "," } else { "" };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}{comma}), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// For a manual IREE run: with `$REFORMC_MLIR_DUMP` set, writes the module of
/// `text`, its arguments (`<name>.in<i>.npy`) and the interpreter's first
/// output (`<name>.want.npy`) there.
fn dump_case(name: &str, text: &str, args: &[Tensor]) {
    let Ok(dir) = std::env::var("REFORMC_MLIR_DUMP") else {
        return;
    };
    check_module(name, text);
    let g = reformc_ir::parse(text).expect("test graph parses");
    let mut inputs = std::collections::BTreeMap::new();
    for ((n, _), t) in g.inputs().into_iter().zip(args) {
        inputs.insert(n.to_string(), t.clone());
    }
    let weights = std::collections::BTreeMap::new();
    let want = reformc_interp::run(&g, &inputs, &weights).expect("interpreter runs");
    for (i, t) in args.iter().enumerate() {
        std::fs::write(format!("{dir}/{name}.in{i}.npy"), npy(t)).expect("dump writable");
    }
    let first = &want[&g.outputs[0].0];
    std::fs::write(format!("{dir}/{name}.want.npy"), npy(first)).expect("dump writable");
}

#[test]
fn dump_cases_for_iree() {
    dump_case(
        "sort",
        &argsort_graph("i64", 1),
        &[random_i64(&[2, 37], 9, 5)],
    );
    let g = lsh_graph(2, 2, 4, 1, 1, true, true);
    dump_case("lsh", &g, &lsh_args(2, 20, 2, 2, 4, true, 3));
    dump_case("lsh_short", &g, &lsh_args(2, 3, 2, 2, 4, true, 4));
    let g = lsh_graph(2, 4, 16, 1, 1, false, true);
    dump_case("lsh_big", &g, &lsh_args(2, 240, 2, 4, 8, true, 6));
}

#[test]
fn lsh_attention_with_a_static_length_off_the_chunk_grid_is_an_error() {
    // L = 10 > chunk = 4 and r L = 10 is not a multiple of 4: the interpreter
    // rejects it at run time, the lowering when the length is known.
    let g = "graph {
  %0 = input {name=\"qk\"} : f32[1,10,8]
  %1 = input {name=\"buckets\"} : i64[1,2,1,10]
  %2 = lsh_attention %0, %0, %1 {after=0, before=1, chunk=4, heads=2} : f32[1,10,8]
  output \"y\" = %2
}
";
    let g = reformc_ir::parse(g).expect("test graph parses");
    let err = emit_module(&g, &EmitOptions::default()).expect_err("no module");
    assert!(err.to_string().contains("multiple of the chunk"), "{err}");
}

#[test]
fn lsh_attention_with_static_shapes_matches_the_interpreter() {
    // A known length picks the branch when the module is emitted.
    for (b, l, r) in [(2, 12, 2), (1, 3, 2), (2, 4, 1)] {
        let g = lsh_graph(2, r, 4, 1, 0, true, true)
            .replace("[B,L,", &format!("[{b},{l},"))
            .replace("[B,L]", &format!("[{b},{l}]"))
            .replace(",L]", &format!(",{l}]"))
            .replace("[B,", &format!("[{b},"));
        assert!(!g.contains('B') && !g.contains(",L"), "static: {g}");
        let m = check_module("lsh_static", &g);
        assert!(!m.contains("scf.if"), "one branch only");
        compare_args(&g, lsh_args(b, l, 2, r, 4, true, 5), 1e-5);
    }
}
