//! Shared by the training-step tests (`grad_hf`, `grad_jit`): the step graph
//! of a fixture, splitting a step's outputs, and the gradient metric.

// Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use crate::common::Case;
use ndarray::ArrayD;
use reformc_ir::{DType, Graph};
use reformc_passes::autodiff::{GRAD_PREFIX, LOSS};
use reformc_passes::PassOptions;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;

/// The case's training-step graph in `dtype`, through `reformc grad`'s pipeline
/// (recorded buckets replayed where HF hashed).
pub fn step_graph(case: &Case, dtype: DType) -> Graph {
    step_graph_with(case, dtype, None)
}

/// [`step_graph`] with `--chunk-lm-head` (which fuses the LM head into the loss).
pub fn step_graph_with(case: &Case, dtype: DType, chunk_lm_head: Option<u64>) -> Graph {
    step_graph_chunked(case, dtype, chunk_lm_head, None)
}

/// [`step_graph_with`], the feed-forward also chunked (`--chunk-ff`) when
/// `chunk_ff` is given: one `feed_forward` op and its fused derivative.
pub fn step_graph_chunked(
    case: &Case,
    dtype: DType,
    chunk_lm_head: Option<u64>,
    chunk_ff: Option<u64>,
) -> Graph {
    let mut g = case.graph(dtype, case.replay_source());
    let opts = PassOptions {
        seq_len: Some(case.seq_len() as u64),
        chunk_size_lm_head: chunk_lm_head,
        chunk_size_feed_forward: chunk_ff,
        ..Default::default()
    };
    reformc_train::grad::build_step(&mut g, &opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    g
}

/// [`step_graph`] with every model op lowered before autodiff
/// (`--lowered-grads`): no fused derivative kernels, about three times the ops.
pub fn lowered_step_graph(case: &Case, dtype: DType) -> Graph {
    let mut g = case.graph(dtype, case.replay_source());
    let opts = PassOptions {
        seq_len: Some(case.seq_len() as u64),
        lowered_grads: true,
        ..Default::default()
    };
    reformc_train::grad::build_step(&mut g, &opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    g
}

/// The loss and the gradients by weight name of one step's outputs.
pub fn split(out: &BTreeMap<String, Tensor>) -> (f64, BTreeMap<String, ArrayD<f64>>) {
    let loss = out[LOSS].to_f64().iter().next().copied().unwrap();
    let grads = out
        .iter()
        .filter_map(|(n, t)| Some((n.strip_prefix(GRAD_PREFIX)?.to_string(), t.to_f64())))
        .collect();
    (loss, grads)
}

/// Worst per-tensor error of `got` against `want` (issue 12's metric: max abs
/// error relative to the tensor's max abs, floored at 1e-3 of the largest
/// gradient), with the tensor's name; a NaN counts as infinite.
pub fn grad_error(
    case: &str,
    got: &BTreeMap<String, ArrayD<f64>>,
    want: &BTreeMap<String, ArrayD<f64>>,
) -> (f64, String) {
    let max_abs = |a: &ArrayD<f64>| a.iter().fold(0.0f64, |m, &x| m.max(x.abs()));
    worst_tensor(case, got, want, max_abs, |g, w| {
        g.iter()
            .zip(w.iter())
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
    })
}

/// Worst per-tensor relative RMS error of `got` against `want`:
/// `‖got − want‖ / ‖want‖`, the norm floored at 1e-3 of the largest
/// gradient's norm, with the tensor's name; a NaN counts as infinite. Mixed
/// precision (bf16 products) is judged by it: a ReLU whose input rounds
/// across zero moves single elements by their whole value, which the max
/// error of [`grad_error`] magnifies.
pub fn grad_rms_error(
    case: &str,
    got: &BTreeMap<String, ArrayD<f64>>,
    want: &BTreeMap<String, ArrayD<f64>>,
) -> (f64, String) {
    let norm = |a: &ArrayD<f64>| a.iter().map(|x| x * x).sum::<f64>().sqrt();
    worst_tensor(case, got, want, norm, |g, w| {
        g.iter()
            .zip(w.iter())
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt()
    })
}

/// The largest `dist(got, want) / size(want)` over the tensors of `want`,
/// `size` floored at 1e-3 of the largest tensor's, and its name.
fn worst_tensor(
    case: &str,
    got: &BTreeMap<String, ArrayD<f64>>,
    want: &BTreeMap<String, ArrayD<f64>>,
    size: impl Fn(&ArrayD<f64>) -> f64,
    dist: impl Fn(&ArrayD<f64>, &ArrayD<f64>) -> f64,
) -> (f64, String) {
    let largest = want.values().map(&size).fold(0.0f64, f64::max);
    let mut worst = (0.0, String::new());
    for (name, w) in want {
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
        assert_eq!(g.shape(), w.shape(), "{case}: {name}");
        let rel = dist(g, w) / size(w).max(1e-3 * largest);
        if rel.is_nan() || rel >= worst.0 {
            worst = (if rel.is_nan() { f64::INFINITY } else { rel }, name.clone());
        }
    }
    worst
}
