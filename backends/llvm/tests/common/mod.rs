//! Shared helpers of the backend's integration tests: HF fixture cases,
//! compiled executables, `.npy` files, max-abs-difference.

#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use reformc_backend_llvm::aot::{self, Emit};
use reformc_backend_llvm::{CompileOptions, DimLimit, ExeInfo, Variant, WeightsMode};
use reformc_frontend::config::load_model_config;
use reformc_frontend::lower::{expected_weights, lower, LowerOptions, LshSource};
use reformc_frontend::spec::{HeadSpec, ModelSpec, PositionSpec};
use reformc_frontend::weights::WeightFile;
use reformc_interp::Tensor;
use reformc_ir::{DType, Graph};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every HF fixture directory, sorted.
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

/// A scratch directory under the target dir, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let d = root().join("target/tmp/backend-llvm-tests").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn read<T: ndarray_npy::ReadableElement>(p: &Path) -> ArrayD<T> {
    ArrayD::<T>::read_npy(std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn write<T: ndarray_npy::WritableElement>(p: &Path, a: &ArrayD<T>) {
    a.write_npy(std::fs::File::create(p).unwrap()).unwrap();
}

pub fn max_abs_diff(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    (a - b).mapv(f64::abs).fold(0.0, |m: f64, &x| m.max(x))
}

/// One HF golden case.
pub struct Case {
    pub dir: PathBuf,
    pub name: String,
    pub spec: ModelSpec,
    pub ids: ArrayD<i64>,
    pub mask: ArrayD<i64>,
    pub has_mask: bool,
    pub weights: WeightFile,
}

impl Case {
    pub fn load(dir: &Path) -> Case {
        let mut spec = load_model_config(&dir.join("config.json")).unwrap();
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

    pub fn len(&self) -> usize {
        self.ids.shape()[1]
    }

    pub fn has_buckets(&self) -> bool {
        self.dir.join("lsh_buckets.npy").exists()
    }

    /// Buckets when HF hashed (exact replay), else seeded.
    pub fn replay_source(&self) -> LshSource {
        if self.has_buckets() {
            LshSource::Buckets
        } else {
            LshSource::Seeded
        }
    }

    pub fn graph(&self, source: LshSource) -> Graph {
        lower(
            &self.spec,
            &LowerOptions {
                dtype: DType::F32,
                lsh_source: source,
                seq_len: Some(self.len() as u64),
            },
        )
        .unwrap()
        .graph
    }

    pub fn factors(&self) -> Vec<u64> {
        lower(
            &self.spec,
            &LowerOptions {
                dtype: DType::F32,
                lsh_source: LshSource::Seeded,
                seq_len: Some(self.len() as u64),
            },
        )
        .unwrap()
        .bucket_factors
    }

    pub fn weight_map(&self, g: &Graph) -> BTreeMap<String, Tensor> {
        expected_weights(g)
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

    pub fn buckets(&self) -> ArrayD<i64> {
        read(&self.dir.join("lsh_buckets.npy"))
    }

    pub fn inputs(&self, source: LshSource) -> BTreeMap<String, Tensor> {
        let mut m = BTreeMap::new();
        m.insert("input_ids".to_string(), Tensor::I64(self.ids.clone()));
        m.insert("attention_mask".to_string(), Tensor::I64(self.mask.clone()));
        m.insert(
            "seed".to_string(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 0)),
        );
        if source == LshSource::Buckets {
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
        m
    }

    pub fn reference_f64(&self) -> ArrayD<f64> {
        read(&self.dir.join("logits_f64.npy"))
    }

    /// The interpreter's output for `source`.
    pub fn interp(&self, source: LshSource) -> ArrayD<f64> {
        let g = self.graph(source);
        let out = reformc_interp::run(&g, &self.inputs(source), &self.weight_map(&g)).unwrap();
        out.values().next().unwrap().to_f64()
    }

    /// The variants `reformc compile` builds.
    pub fn variants(&self) -> Vec<Variant> {
        let sources: Vec<(&str, LshSource)> = if self.spec.num_lsh_layers() > 0 {
            vec![
                ("seeded", LshSource::Seeded),
                ("rotations", LshSource::Rotations),
                ("buckets", LshSource::Buckets),
            ]
        } else {
            vec![("main", LshSource::Seeded)]
        };
        sources
            .into_iter()
            .map(|(n, s)| Variant {
                name: n.into(),
                graph: self.graph(s),
            })
            .collect()
    }

    pub fn max_len(&self) -> u64 {
        let mut m = self.spec.max_position_embeddings;
        if let PositionSpec::Axial { shape, .. } = &self.spec.position {
            m = m.min(shape[0] * shape[1]);
        }
        m
    }

    pub fn options(&self, default_weights: Option<String>) -> CompileOptions {
        CompileOptions {
            model_name: self.name.clone(),
            limits: vec![DimLimit {
                symbol: "P".into(),
                max: self.max_len(),
                what: "padded sequence length".into(),
            }],
            allowed_extra_weights: vec!["lm_head.bias".into()],
            default_weights,
            ..CompileOptions::default()
        }
    }

    pub fn exe_info(&self, default_weights: Option<String>) -> ExeInfo {
        let spec = &self.spec;
        let (pad_multiple, pad_min_len) = match spec.min_chunk() {
            Some(min) => (spec.chunk_lcm() as i64, min as i64),
            None => (1, 0),
        };
        let n_lsh = spec.num_lsh_layers() as i64;
        ExeInfo {
            model_name: self.name.clone(),
            output_name: "logits".into(),
            default_weights,
            default_threads: 0,
            vocab_size: spec.vocab_size as i64,
            max_len: self.max_len() as i64,
            pad_multiple,
            pad_min_len,
            n_lsh,
            heads: spec.num_heads as i64,
            head_dim: spec.head_dim as i64,
            rounds: spec.lsh.n_hashes as i64,
            rot_half: self.factors().iter().sum::<u64>() as i64 / 2,
            variants: if n_lsh > 0 { 7 } else { 1 },
        }
    }

    /// Weight bytes in the module's table order (for `--weights=embed`).
    pub fn embedded(&self, variants: &[Variant]) -> WeightsMode {
        let table = reformc_backend_llvm::weight_table(variants).unwrap();
        WeightsMode::Embedded(
            table
                .iter()
                .map(|(n, _)| {
                    self.weights
                        .tensor_f32(n)
                        .unwrap()
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect()
                })
                .collect(),
        )
    }

    /// Compiles the case to an executable in `dir` (weights memory-mapped from the fixture).
    pub fn compile_exe(&self, dir: &Path) -> PathBuf {
        let out = dir.join(&self.name);
        let w = self.dir.join("model.safetensors").display().to_string();
        let variants = self.variants();
        aot::compile(
            &variants,
            &self.options(Some(w.clone())),
            &WeightsMode::Runtime,
            Emit::Exe,
            &out,
            Some(&self.exe_info(Some(w))),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        out
    }

    /// Command-line arguments that replay HF (buckets, mask).
    pub fn exe_args(&self, dir: &Path) -> Vec<String> {
        let mut args = vec![
            "--input".to_string(),
            self.dir.join("input_ids.npy").display().to_string(),
        ];
        if self.has_mask {
            args.push("--attention-mask".into());
            args.push(self.dir.join("attention_mask.npy").display().to_string());
        }
        if self.has_buckets() {
            args.push("--lsh-buckets".into());
            args.push(self.dir.join("lsh_buckets.npy").display().to_string());
        }
        let _ = dir;
        args
    }
}

/// Runs a program; panics if it was killed by a signal (a crash).
pub fn run(exe: &Path, args: &[String]) -> Output {
    let out = Command::new(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    assert!(
        out.status.code().is_some(),
        "{} {args:?} crashed: {:?}\nstderr: {}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
