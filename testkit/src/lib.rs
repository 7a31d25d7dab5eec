//! Test support shared by reformc's crates: the Hugging Face golden fixture
//! cases under `tests/fixtures` (made by `scripts/hf_fixtures.py`), loaded
//! and bound to graphs the way every engine's tests need them, and the small
//! generic helpers around them (`.npy` files, differences, interpreter runs).

pub mod mutate;
pub mod random_model;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use reformc_frontend::config::load_model_config;
use reformc_frontend::lower::{expected_weights, lower, LowerOptions, LshSource};
use reformc_frontend::spec::{HeadSpec, ModelSpec};
use reformc_frontend::weights::WeightFile;
use reformc_interp::Tensor;
use reformc_ir::{DType, Graph};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Root of the workspace.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fixture case folder called `name`.
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// Every fixture directory under tests/fixtures, sorted.
pub fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    v.sort();
    assert!(
        v.len() >= 10,
        "expected at least 10 fixture cases, found {}",
        v.len()
    );
    v
}

/// Reads a `.npy` file (panics naming the file).
pub fn read<T: ndarray_npy::ReadableElement>(p: &Path) -> ArrayD<T> {
    ArrayD::<T>::read_npy(File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Writes `a` as a `.npy` file.
pub fn write<T: ndarray_npy::WritableElement>(p: &Path, a: &ArrayD<T>) {
    a.write_npy(File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

/// One HF golden case, loaded.
pub struct Case {
    pub dir: PathBuf,
    pub name: String,
    pub spec: ModelSpec,
    pub ids: ArrayD<i64>,
    /// The attention mask (all ones when the case has no `attention_mask.npy`).
    pub mask: ArrayD<i64>,
    /// Whether the case has an `attention_mask.npy`.
    pub has_mask: bool,
    pub weights: WeightFile,
}

impl Case {
    /// Loads the case in `dir`. As `reformc` does for an HF config with a
    /// weight file, the weights decide the layout (`reformer.` prefix, LM head).
    pub fn load(dir: &Path) -> Case {
        let mut spec =
            load_model_config(&dir.join("config.json")).unwrap_or_else(|e| panic!("{e}"));
        let weights = WeightFile::open(&dir.join("model.safetensors")).unwrap();
        let (prefix, head) = weights.detect_layout();
        spec.weight_prefix = prefix;
        spec.head = if head {
            HeadSpec::LmHead { bias: false }
        } else {
            HeadSpec::None
        };
        let ids: ArrayD<i64> = read(&dir.join("input_ids.npy"));
        let has_mask = dir.join("attention_mask.npy").exists();
        let mask = if has_mask {
            read(&dir.join("attention_mask.npy"))
        } else {
            ArrayD::from_elem(ids.raw_dim(), 1)
        };
        Case {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            dir: dir.to_path_buf(),
            spec,
            ids,
            mask,
            has_mask,
            weights,
        }
    }

    /// Every fixture case, sorted by name.
    pub fn all() -> Vec<Case> {
        fixtures().iter().map(|d| Case::load(d)).collect()
    }

    /// The (unpadded) sequence length L of the inputs.
    pub fn seq_len(&self) -> usize {
        self.ids.shape()[1]
    }

    pub fn has(&self, file: &str) -> bool {
        self.dir.join(file).exists()
    }

    /// Whether HF hashed (the case recorded its LSH buckets).
    pub fn has_buckets(&self) -> bool {
        self.has("lsh_buckets.npy")
    }

    /// HF's recorded LSH buckets, as stored.
    pub fn buckets(&self) -> ArrayD<i64> {
        read(&self.dir.join("lsh_buckets.npy"))
    }

    pub fn graph(&self, dtype: DType, source: LshSource) -> Graph {
        lower(
            &self.spec,
            &LowerOptions {
                dtype,
                lsh_source: source,
                seq_len: Some(self.seq_len() as u64),
            },
        )
        .unwrap()
        .graph
    }

    pub fn weight_map(&self, g: &Graph) -> BTreeMap<String, Tensor> {
        let expected = expected_weights(g);
        self.weights
            .check(&expected, &["lm_head.bias".to_string()])
            .unwrap();
        expected
            .into_iter()
            .map(|(n, s)| {
                let shape: Vec<usize> = s.iter().map(|&d| d as usize).collect();
                let t = Tensor::F32(
                    ArrayD::from_shape_vec(IxDyn(&shape), self.weights.tensor_f32(&n).unwrap())
                        .unwrap(),
                );
                (n, t)
            })
            .collect()
    }

    /// Inputs for a graph lowered with `source`.
    pub fn inputs(&self, source: LshSource) -> BTreeMap<String, Tensor> {
        let mut m = BTreeMap::new();
        m.insert("input_ids".to_string(), Tensor::I64(self.ids.clone()));
        m.insert("attention_mask".to_string(), Tensor::I64(self.mask.clone()));
        m.insert(
            "seed".to_string(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 0)),
        );
        match source {
            LshSource::Buckets => {
                let b = self.buckets();
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
            LshSource::Rotations => {
                m.insert(
                    "lsh_rotations".to_string(),
                    Tensor::F32(read(&self.dir.join("lsh_rotations.npy"))),
                );
            }
            LshSource::Seeded => {}
        }
        m
    }

    /// The hashing source that replays HF exactly: buckets when HF hashed.
    pub fn replay_source(&self) -> LshSource {
        if self.has_buckets() {
            LshSource::Buckets
        } else {
            LshSource::Seeded
        }
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

/// Runs `g` with the interpreter and returns output `name` as f64 (inputs
/// the graph does not take are ignored).
pub fn interp_output(
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

impl Case {
    /// Runs `g` with the interpreter on this case's inputs and weights.
    pub fn run(&self, g: &Graph, source: LshSource) -> BTreeMap<String, Tensor> {
        reformc_interp::run(g, &self.inputs(source), &self.weight_map(g))
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// The interpreter's output (logits, or the hidden state of a headless
    /// model) for the F32 graph lowered with `source`, as f64.
    pub fn interp(&self, source: LshSource) -> ArrayD<f64> {
        let g = self.graph(DType::F32, source);
        let out = self.run(&g, source);
        out.values().next().unwrap().to_f64()
    }
}

/// Largest |a - b| relative to the largest |a| (at least 1).
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64(), b.to_f64());
    assert_eq!(a.shape(), b.shape());
    let scale = a.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    (&a - &b).mapv(f64::abs).fold(0.0f64, |m, &x| m.max(x)) / scale
}

/// Every output of `a` and `b` agrees within `tol` (relative).
pub fn assert_close(
    a: &BTreeMap<String, Tensor>,
    b: &BTreeMap<String, Tensor>,
    tol: f64,
    what: &str,
) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (k, x) in a {
        let d = rel_diff(x, &b[k]);
        assert!(d <= tol, "{what}: output {k} differs by {d:e} (relative)");
    }
}
