//! Helpers of the attention / cost / explain tests that only they need: the
//! shared-QK example model and its deterministic random weights and inputs.
//! The HF fixture cases and the generic helpers (`.npy` files, differences,
//! interpreter runs) come from `reformc-testkit`. (Kept apart from
//! `tests/common`, which the eqsat tests own.)

#![allow(dead_code)]
#![allow(unused_imports)]

pub use reformc_testkit::*;

use ndarray::{ArrayD, IxDyn};
use reformc_frontend::config::load_model_config;
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_frontend::spec::ModelSpec;
use reformc_frontend::weights::expected_tensors;
use reformc_interp::Tensor;
use reformc_ir::{DType, Graph};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// The shared-QK example model (examples/shared-qk-transformer.json).

pub fn example_path() -> PathBuf {
    root().join("examples/shared-qk-transformer.json")
}

pub fn example_spec() -> ModelSpec {
    load_model_config(&example_path()).unwrap_or_else(|e| panic!("{e}"))
}

/// The example lowered (its layers use no automatic LSH buckets, so no length is needed).
pub fn example_graph(dtype: DType) -> Graph {
    lower(
        &example_spec(),
        &LowerOptions {
            dtype,
            lsh_source: LshSource::Seeded,
            seq_len: None,
        },
    )
    .unwrap()
    .graph
}

/// SplitMix64: a tiny deterministic generator (same numbers everywhere).
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller, one value per call).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Deterministic random weights for `spec` with O(1)-scale activations (as
/// the HF fixtures use): Linear weights N(0, 1/fan_in), LayerNorm weights
/// 1 + N(0, 0.1²), biases N(0, 0.1²), embeddings N(0, 1). The tensor list is
/// `expected_tensors(spec)`, so the file passes reformc's weight checks.
pub fn random_weights(spec: &ModelSpec, seed: u64) -> Vec<(String, Vec<u64>, Vec<f32>)> {
    let (tensors, _) = expected_tensors(spec);
    let mut rng = SplitMix(seed);
    tensors
        .into_iter()
        .map(|(name, shape)| {
            let n: u64 = shape.iter().product();
            let ln = name.contains("layer_norm");
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    let z = rng.normal();
                    let x = if ln && name.ends_with(".weight") {
                        1.0 + 0.1 * z
                    } else if name.ends_with(".bias") {
                        0.1 * z
                    } else if name.contains("embeddings") {
                        z
                    } else {
                        z / (shape[shape.len() - 1] as f64).sqrt()
                    };
                    x as f32
                })
                .collect();
            (name, shape, data)
        })
        .collect()
}

pub fn weight_map(ws: &[(String, Vec<u64>, Vec<f32>)]) -> BTreeMap<String, Tensor> {
    ws.iter()
        .map(|(n, s, d)| {
            let shape: Vec<usize> = s.iter().map(|&x| x as usize).collect();
            (
                n.clone(),
                Tensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), d.clone()).unwrap()),
            )
        })
        .collect()
}

/// Writes `ws` as a safetensors file (F32).
pub fn write_safetensors(path: &Path, ws: &[(String, Vec<u64>, Vec<f32>)]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = ws
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                s.iter().map(|&x| x as usize).collect(),
                d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

/// Random token ids and an all-ones mask, `[batch, len]`, and seed 7.
pub fn random_ids(batch: usize, len: usize, vocab: u64, seed: u64) -> BTreeMap<String, Tensor> {
    let mut rng = SplitMix(seed);
    let ids = ArrayD::from_shape_fn(IxDyn(&[batch, len]), |_| (rng.next_u64() % vocab) as i64);
    let mut m = BTreeMap::new();
    m.insert("input_ids".to_string(), Tensor::I64(ids));
    m.insert(
        "attention_mask".to_string(),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[batch, len]), 1)),
    );
    m.insert(
        "seed".to_string(),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 7)),
    );
    m
}
