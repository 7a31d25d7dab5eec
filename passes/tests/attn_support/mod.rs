//! Helpers of the attention / cost / explain tests: HF fixture cases, the
//! shared-QK example model and its deterministic random weights, interpreter
//! runs. (Kept apart from `tests/common`, which the eqsat tests own.)

#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::ReadNpyExt;
use reformc_frontend::config::load_model_config;
use reformc_frontend::lower::{expected_weights, lower, LowerOptions, LshSource};
use reformc_frontend::spec::ModelSpec;
use reformc_frontend::weights::{expected_tensors, WeightFile};
use reformc_interp::Tensor;
use reformc_ir::{DType, Graph};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Root of the workspace.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// Every fixture directory, sorted.
pub fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    v.sort();
    assert!(v.len() >= 10, "expected the HF fixtures, found {}", v.len());
    v
}

pub fn read<T: ndarray_npy::ReadableElement>(p: &Path) -> ArrayD<T> {
    ArrayD::<T>::read_npy(File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// One HF golden case.
pub struct Case {
    pub dir: PathBuf,
    pub name: String,
    pub spec: ModelSpec,
    pub ids: ArrayD<i64>,
    pub mask: ArrayD<i64>,
    pub weights: WeightFile,
}

impl Case {
    pub fn load(dir: &Path) -> Case {
        let spec = load_model_config(&dir.join("config.json")).unwrap_or_else(|e| panic!("{e}"));
        let ids: ArrayD<i64> = read(&dir.join("input_ids.npy"));
        let mask = if dir.join("attention_mask.npy").exists() {
            read(&dir.join("attention_mask.npy"))
        } else {
            ArrayD::from_elem(ids.raw_dim(), 1)
        };
        let weights = WeightFile::open(&dir.join("model.safetensors")).unwrap();
        Case {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            dir: dir.to_path_buf(),
            spec,
            ids,
            mask,
            weights,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.shape()[1]
    }

    /// Recorded buckets when HF hashed (exact replay), else seeded rotations.
    pub fn source(&self) -> LshSource {
        if self.dir.join("lsh_buckets.npy").exists() {
            LshSource::Buckets
        } else {
            LshSource::Seeded
        }
    }

    pub fn graph(&self, dtype: DType) -> Graph {
        self.graph_with(dtype, self.source())
    }

    pub fn graph_with(&self, dtype: DType, source: LshSource) -> Graph {
        lower(
            &self.spec,
            &LowerOptions {
                dtype,
                lsh_source: source,
                seq_len: Some(self.len() as u64),
            },
        )
        .unwrap()
        .graph
    }

    pub fn weight_map(&self, g: &Graph) -> BTreeMap<String, Tensor> {
        expected_weights(g)
            .into_iter()
            .map(|(n, s)| {
                let shape: Vec<usize> = s.iter().map(|&d| d as usize).collect();
                (
                    n.clone(),
                    Tensor::F32(
                        ArrayD::from_shape_vec(IxDyn(&shape), self.weights.tensor_f32(&n).unwrap())
                            .unwrap(),
                    ),
                )
            })
            .collect()
    }

    pub fn inputs(&self) -> BTreeMap<String, Tensor> {
        let mut m = BTreeMap::new();
        m.insert("input_ids".to_string(), Tensor::I64(self.ids.clone()));
        m.insert("attention_mask".to_string(), Tensor::I64(self.mask.clone()));
        m.insert(
            "seed".to_string(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 0)),
        );
        if self.source() == LshSource::Buckets {
            let b: ArrayD<i64> = read(&self.dir.join("lsh_buckets.npy"));
            let s = b.shape().to_vec();
            let r = self.spec.lsh.n_hashes as usize;
            m.insert(
                "lsh_buckets".to_string(),
                Tensor::I64(
                    b.into_shape_with_order(IxDyn(&[s[0], s[1], s[2], r, s[3] / r]))
                        .unwrap(),
                ),
            );
        }
        m
    }

    pub fn reference_f64(&self) -> ArrayD<f64> {
        read(&self.dir.join("logits_f64.npy"))
    }
}

pub fn max_abs_diff(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    (a - b).mapv(f64::abs).fold(0.0, |m: f64, &x| m.max(x))
}

/// Largest |a-b| / (1 + |b|).
pub fn max_rel_diff(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() / (1.0 + y.abs())))
}

/// Runs `g` and returns output `name` as f64 (inputs the graph does not take are ignored).
pub fn run(
    g: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
    name: &str,
) -> ArrayD<f64> {
    let mut used = inputs.clone();
    used.retain(|k, _| g.inputs().iter().any(|(n, _)| n == k));
    let out = reformc_interp::run(g, &used, weights)
        .unwrap_or_else(|e| panic!("{e}\n{}", reformc_ir::print(g)));
    out[name].to_f64()
}

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
