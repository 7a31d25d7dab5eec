//! Dropout in training steps: masks inside reversible blocks are recomputed
//! from their key in the backward pass (never stored, never re-drawn), so
//! the gradients equal finite differences of the forward that was run and
//! the plain reverse-mode gradients of the unfolded blocks.

use crate::autodiff_support;

use autodiff_support::{check_gradients, random, random_weights, with_probe_loss};
use ndarray::{ArrayD, IxDyn};
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_frontend::spec::tests_support::tiny;
use reformc_ir::{DType, Graph, OpKind};
use reformc_passes::autodiff::{append_loss, differentiate, unfold, GRAD_PREFIX, LABELS, LOSS};
use reformc_passes::lower_model::{lower_model_with, DropoutRates};
use reformc_tensor::Tensor;
use std::collections::{BTreeMap, HashSet};

/// Two reversible blocks with dropout in both branches (different streams).
const STACK: &str = r#"graph {
  %0 = weight {name="x"} : f64[2,3,8]
  %1 = weight {name="wf"} : f64[4,4]
  %2 = weight {name="wg"} : f64[4]
  %3 = input {name="seed"} : i64[]
  %4 = reshape %1 : f64[1,4,4]
  %5 = reversible_block %0 : f64[2,3,8] {
    f(%6: f64[2,3,4]) {
      %7 = matmul %6, %4 : f64[2,3,4]
      %8 = dropout_mask %3, %7 {p=0.3, stream=4294967556} : f64[2,3,4]
      %9 = mul %7, %8 : f64[2,3,4]
      %10 = tanh %9 : f64[2,3,4]
      yield %10
    }
    g(%11: f64[2,3,4]) {
      %12 = mul %11, %2 : f64[2,3,4]
      %13 = act %12 {fn="gelu"} : f64[2,3,4]
      %14 = dropout_mask %3, %13 {p=0.5, stream=4294967557} : f64[2,3,4]
      %15 = mul %13, %14 : f64[2,3,4]
      yield %15
    }
  }
  %16 = reversible_block %5 : f64[2,3,8] {
    f(%17: f64[2,3,4]) {
      %18 = softmax %17 {axis=2} : f64[2,3,4]
      %19 = dropout_mask %3, %18 {p=0.3, stream=4294967812} : f64[2,3,4]
      %20 = mul %18, %19 : f64[2,3,4]
      %21 = matmul %20, %4 : f64[2,3,4]
      yield %21
    }
    g(%22: f64[2,3,4]) {
      %23 = exp %22 : f64[2,3,4]
      %24 = mul %23, %2 : f64[2,3,4]
      yield %24
    }
  }
  output "y" = %16
}
"#;

fn inputs(seed: i64) -> BTreeMap<String, Tensor> {
    BTreeMap::from([
        (
            "probe".to_string(),
            Tensor::F64(random(&[2, 3, 8], 5, -1.0, 1.0)),
        ),
        (
            "seed".to_string(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[]), seed)),
        ),
    ])
}

#[test]
fn reversible_dropout_matches_finite_differences() {
    let g = with_probe_loss(STACK);
    for (seed, wseed) in [(1i64, 3u64), (99, 11)] {
        check_gradients(
            &g,
            &inputs(seed),
            &random_weights(&g, wseed, -1.0, 1.0),
            1e-6,
        );
    }
}

#[test]
fn masks_are_recomputed_not_stored() {
    let g = with_probe_loss(STACK);
    let (flat, couplings) = unfold(&g).unwrap();
    let outputs: HashSet<_> = couplings.iter().map(|c| c.y).collect();
    let inside: HashSet<_> = couplings
        .iter()
        .flat_map(|c| c.values.iter().copied())
        .filter(|v| !outputs.contains(v))
        .collect();
    let d = differentiate(&g, "loss").unwrap();
    let forward = flat.len();
    for (i, node) in d.nodes.iter().enumerate().skip(forward) {
        for x in &node.inputs {
            assert!(
                !(inside.contains(x) && d.ty(*x).dtype.is_float()),
                "%{i} reads the forward's %{} from inside a block",
                x.0
            );
        }
    }
    let recomputed = d
        .nodes
        .iter()
        .skip(forward)
        .filter(|n| n.op.kind == OpKind::DropoutMask)
        .count();
    assert_eq!(recomputed, 3, "each mask is drawn again from its key");
}

/// The tiny Reformer (local + LSH layers) lowered in f64 with dropout, with
/// its loss appended.
fn tiny_step(rates: Option<DropoutRates>, unfolded: bool) -> Graph {
    let spec = tiny();
    let opts = LowerOptions {
        dtype: DType::F64,
        lsh_source: LshSource::Seeded,
        seq_len: Some(32),
    };
    let mut g = lower(&spec, &opts).unwrap().graph;
    if unfolded {
        reformc_passes::reversible::unfold_reversible(&mut g).unwrap();
    }
    let mut g = lower_model_with(&g, rates).unwrap();
    append_loss(&mut g, "logits").unwrap();
    g
}

fn tiny_inputs(seed: i64) -> BTreeMap<String, Tensor> {
    let ids = ArrayD::from_shape_fn(IxDyn(&[1, 32]), |i| ((i[1] * 7 + 3) % 48) as i64);
    BTreeMap::from([
        ("input_ids".to_string(), Tensor::I64(ids.clone())),
        (LABELS.to_string(), Tensor::I64(ids)),
        (
            "attention_mask".to_string(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[1, 32]), 1)),
        ),
        (
            "seed".to_string(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[]), seed)),
        ),
    ])
}

const RATES: DropoutRates = DropoutRates {
    hidden: 0.2,
    lsh_attention: 0.1,
    local_attention: 0.15,
};

fn run_step(g: &Graph, seed: i64, weights: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let d = differentiate(g, LOSS).unwrap();
    reformc_interp::run(&d, &tiny_inputs(seed), weights).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn reversible_step_with_dropout_equals_the_unfolded_step() {
    let rev = tiny_step(Some(RATES), false);
    let masks = rev
        .walk()
        .into_iter()
        .filter(|v| rev.node(*v).op.kind == OpKind::DropoutMask)
        .count();
    // Words, positions, final LN; per layer: probs, attention output, FF inner and output.
    assert_eq!(masks, 3 + 2 * 4, "{}", reformc_ir::print(&rev));
    let unf = tiny_step(Some(RATES), true);
    let weights = random_weights(&rev, 7, -0.5, 0.5);
    let (a, b) = (run_step(&rev, 5, &weights), run_step(&unf, 5, &weights));
    let plain = run_step(&tiny_step(None, false), 5, &weights);
    let loss = |o: &BTreeMap<String, Tensor>| o[LOSS].to_f64().iter().next().copied().unwrap();
    assert!((loss(&a) - loss(&b)).abs() <= 1e-12 * loss(&a).abs());
    assert!(
        (loss(&a) - loss(&plain)).abs() > 1e-6,
        "dropout changed nothing"
    );
    for (name, ga) in a.iter().filter(|(n, _)| n.starts_with(GRAD_PREFIX)) {
        let (ga, gb) = (ga.to_f64(), b[name].to_f64());
        let scale = gb.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        let err = ga
            .iter()
            .zip(gb.iter())
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(err <= 1e-9 * scale, "{name}: {err:e} (scale {scale:e})");
    }
}

#[test]
fn zero_rates_give_the_step_without_dropout() {
    let zero = tiny_step(Some(DropoutRates::default()), false);
    let none = tiny_step(None, false);
    assert_eq!(reformc_ir::print(&zero), reformc_ir::print(&none));
}
