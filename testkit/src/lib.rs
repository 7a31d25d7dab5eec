//! Test support shared by reformc's crates: the Hugging Face golden fixture
//! cases under `tests/fixtures` (made by `scripts/hf_fixtures.py`), loaded
//! and bound to graphs the way every engine's tests need them.

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::ReadNpyExt;
use reformc_frontend::config::load_model_config;
use reformc_frontend::lower::{expected_weights, lower, LowerOptions, LshSource};
use reformc_frontend::spec::ModelSpec;
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

pub fn read<T: ndarray_npy::ReadableElement>(p: &Path) -> ArrayD<T> {
    ArrayD::<T>::read_npy(File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// One HF golden case, loaded.
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
        if self.has("lsh_buckets.npy") {
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

impl Case {
    /// Runs `g` with the interpreter on this case's inputs and weights.
    pub fn run(&self, g: &Graph, source: LshSource) -> BTreeMap<String, Tensor> {
        reformc_interp::run(g, &self.inputs(source), &self.weight_map(g))
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
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
