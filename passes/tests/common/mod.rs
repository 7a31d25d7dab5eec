//! Shared helpers of the passes' integration tests: the HF fixture cases.

#![allow(dead_code)]

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

/// Every fixture directory under the workspace's tests/fixtures, sorted.
pub fn fixtures() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    v.sort();
    assert!(
        v.len() >= 10,
        "expected the HF fixtures under {}",
        root.display()
    );
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
        Case {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            dir: dir.to_path_buf(),
            spec,
            ids,
            mask,
        }
    }

    pub fn all() -> Vec<Case> {
        fixtures().iter().map(|d| Case::load(d)).collect()
    }

    pub fn len(&self) -> usize {
        self.ids.shape()[1]
    }

    pub fn graph(&self, dtype: DType, source: LshSource) -> Graph {
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

    /// The fixture's weights, by the names `g` expects.
    pub fn weights(&self, g: &Graph) -> BTreeMap<String, Tensor> {
        let file = WeightFile::open(&self.dir.join("model.safetensors")).unwrap();
        expected_weights(g)
            .into_iter()
            .map(|(n, s)| {
                let shape: Vec<usize> = s.iter().map(|&d| d as usize).collect();
                let t = Tensor::F32(
                    ArrayD::from_shape_vec(IxDyn(&shape), file.tensor_f32(&n).unwrap()).unwrap(),
                );
                (n, t)
            })
            .collect()
    }

    /// The source that replays HF's hashing: recorded buckets when HF hashed.
    pub fn source(&self) -> LshSource {
        if self.dir.join("lsh_buckets.npy").exists() {
            LshSource::Buckets
        } else {
            LshSource::Seeded
        }
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
        if source == LshSource::Buckets {
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

    /// Runs `g` on this case's inputs and weights.
    pub fn run(&self, g: &Graph, source: LshSource) -> BTreeMap<String, Tensor> {
        reformc_interp::run(g, &self.inputs(source), &self.weights(g))
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

/// Every output of `a` and `b` agree within `tol` (relative).
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
