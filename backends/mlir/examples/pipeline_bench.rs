//! Times reformc's own MLIR CPU pipeline against the LLVM backend's JIT on the
//! same graph, in the same process: `cargo run -p reformc-backend-mlir
//! --example pipeline_bench -- [L] [REPEATS] [GRAPH.ir]`.
//!
//! Without a graph file it runs a feed-forward chain (layer norm, linear
//! 256->512 with ReLU, linear 512->256, residual) on `[1, L, 256]`, L = 16384
//! by default. Each backend compiles once, then runs REPEATS times (median).
//! Weights are random (the graph's weights, first arguments), inputs as
//! [`input`] makes them. A model's optimised graph comes from `reformc dump
//! CONFIG --weights W --seq-len L > model.ir`.
//! `REFORMC_MLIR_PIPELINE` replaces the MLIR pass pipeline (to compare).

use ndarray::{ArrayD, IxDyn};
use reformc_ir::{DType, Dim, Graph};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::time::Instant;

const FF: &str = "graph {
  %0 = weight {name=\"ln_w\"} : f32[256]
  %1 = weight {name=\"ln_b\"} : f32[256]
  %2 = weight {name=\"w1\"} : f32[512,256]
  %3 = weight {name=\"b1\"} : f32[512]
  %4 = weight {name=\"w2\"} : f32[256,512]
  %5 = weight {name=\"b2\"} : f32[256]
  %6 = input {name=\"x\"} : f32[B,L,256]
  %7 = layer_norm %6, %0, %1 {eps=1e-12} : f32[B,L,256]
  %8 = linear %7, %2, %3 {activation=\"relu\"} : f32[B,L,512]
  %9 = linear %8, %4, %5 : f32[B,L,256]
  %10 = add %9, %6 : f32[B,L,256]
  output \"y\" = %10
}
";

/// Deterministic values in [-1, 1).
fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data = (0..shape.iter().product::<usize>())
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap())
}

/// A value for input `name`: random f32 in [-1, 1); for `i64` inputs, an
/// all-ones `attention_mask`, a zero `seed`, else token ids in [0, 64) (below
/// any vocabulary the bench models have).
fn input(g: &Graph, name: &str, v: reformc_ir::ValueId, l: usize, seed: u64) -> Tensor {
    let sh = shape(g, v, l);
    match g.ty(v).dtype {
        DType::F32 => random(&sh, 100 + seed),
        DType::I64 => {
            let Tensor::F32(r) = random(&sh, 200 + seed) else {
                unreachable!("random is f32")
            };
            Tensor::I64(match name {
                "attention_mask" => r.mapv(|_| 1),
                "seed" => r.mapv(|_| 0),
                _ => r.mapv(|x| ((x + 1.0) * 32.0) as i64),
            })
        }
        d => panic!("input `{name}`: {d:?} inputs are not generated"),
    }
}

/// A concrete shape for `v`'s type: `B` is 1, every other symbol `l`.
fn shape(g: &Graph, v: reformc_ir::ValueId, l: usize) -> Vec<usize> {
    g.ty(v)
        .shape
        .iter()
        .map(|d| match d {
            Dim::Const(n) => *n as usize,
            Dim::Sym(s) if s.as_str() == "B" => 1,
            _ => l,
        })
        .collect()
}

/// The median of `t`.
fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let l: usize = argv.get(1).map_or(16384, |s| s.parse().expect("L"));
    let n: usize = argv.get(2).map_or(3, |s| s.parse().expect("REPEATS"));
    let text = argv.get(3).map_or(FF.to_string(), |p| {
        std::fs::read_to_string(p).expect("graph")
    });
    let g = reformc_ir::parse(&text).expect("graph parses");
    let weights: BTreeMap<String, Tensor> = g
        .weights()
        .into_iter()
        .enumerate()
        .map(|(i, (name, v))| (name.to_string(), random(&shape(&g, v, l), i as u64)))
        .collect();
    let inputs = |l: usize| -> BTreeMap<String, Tensor> {
        g.inputs()
            .into_iter()
            .enumerate()
            .map(|(i, (name, v))| (name.to_string(), input(&g, name, v, l, i as u64)))
            .collect()
    };
    let args = |l: usize| -> Vec<Tensor> {
        let ins = inputs(l);
        g.weights()
            .into_iter()
            .map(|(n, _)| weights[n].clone())
            .chain(g.inputs().into_iter().map(|(n, _)| ins[n].clone()))
            .collect()
    };
    let big = args(l);
    let (a, mt) = reformc_backend_mlir::jit_run_timed(&g, &big, n).expect("mlir");
    let ms = |d: &std::time::Duration| d.as_secs_f64() * 1e3;
    let mlir_c = ms(&mt.compile);
    let mlir = median(mt.runs.iter().map(ms).collect());
    let ins_big = inputs(l);
    let ctx = inkwell::context::Context::create();
    let t = Instant::now();
    let model = reformc_backend_llvm::JitModel::new(&ctx, &g, &weights).expect("llvm");
    let llvm_c = t.elapsed().as_secs_f64() * 1e3;
    let mut b = BTreeMap::new();
    let llvm = median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                b = model.run(&ins_big).expect("llvm run");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    // The two agree (a sanity check, not a test).
    let d = a[0]
        .to_f64()
        .iter()
        .zip(b[&g.outputs[0].0].to_f64().iter())
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max);
    println!("L={l}, ms, run = median of {n}:");
    println!("mlir: compile {mlir_c:.1}  run {mlir:.1}");
    println!("llvm: compile {llvm_c:.1}  run {llvm:.1}");
    println!(
        "run ratio mlir/llvm {:.2}; max rel difference {d:.1e}",
        mlir / llvm
    );
}
