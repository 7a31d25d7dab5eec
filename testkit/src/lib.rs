//! Test support shared by reformc's crates: the Hugging Face golden fixture
//! cases under `tests/fixtures` (made by `scripts/hf_fixtures.py`), loaded
//! and bound to graphs the way every engine's tests need them, and the small
//! generic helpers around them (`.npy` files, differences, interpreter runs).

pub mod iree;
pub mod mlir_module;
pub mod mutate;
pub mod random_graph;
pub mod random_model;
mod scratch;
pub use scratch::Scratch;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
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
    cases_in("tests/fixtures", 10)
}

/// Every task-head fixture directory under tests/fixtures_heads, sorted
/// (`ReformerForSequenceClassification` and `ReformerForQuestionAnswering`
/// cases of `scripts/hf_fixtures.py`; their `logits_f64.npy` is the head's
/// output, [B, num_labels] or [B, L, 2]).
pub fn head_fixtures() -> Vec<PathBuf> {
    cases_in("tests/fixtures_heads", 4)
}

/// The case folders (those with a `config.json`) under `dir`, sorted; at
/// least `at_least` of them, or the fixtures are missing.
fn cases_in(dir: &str, at_least: usize) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    v.sort();
    assert!(
        v.len() >= at_least,
        "expected at least {at_least} cases in {dir}, found {}",
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
        weights.apply_layout(&mut spec, false);
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

/// A safetensors file from a header text and a data section of `data` zero bytes.
fn st_file(header: &str, data: usize) -> Vec<u8> {
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    f.resize(f.len() + data, 0);
    f
}

/// One malformed safetensors file of the shared corpus: its file name, its
/// bytes, and what every loader's message must mention (alternatives
/// separated by `|`, for files where which tensor is blamed depends on the
/// loader).
pub struct Malformed {
    /// File name under `tests/corpus/safetensors`.
    pub name: &'static str,
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// What the error message must contain.
    pub needle: &'static str,
}

/// The malformed safetensors corpus that both weight loaders (the
/// frontend's and the runtime's) must reject; committed under
/// `tests/corpus/safetensors` (tests/cli_readers.rs checks it is current).
pub fn malformed_safetensors() -> Vec<Malformed> {
    let e = |dtype: &str, shape: &str, b: u64, end: u64| {
        format!(r#"{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{b},{end}]}}"#)
    };
    let f32x2 = |b: u64| e("F32", "[2]", b, b + 8);
    let m = |name, header: String, data, needle| Malformed {
        name,
        bytes: st_file(&header, data),
        needle,
    };
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    let mut too_long = 1000u64.to_le_bytes().to_vec();
    too_long.extend_from_slice(b"{}");
    vec![
        m(
            "duplicate_aliased.safetensors",
            format!(r#"{{"a":{},"a":{}}}"#, f32x2(0), f32x2(0)),
            8,
            "`a`",
        ),
        m(
            "duplicate_name.safetensors",
            format!(r#"{{"a":{},"a":{}}}"#, f32x2(0), f32x2(8)),
            16,
            "`a`",
        ),
        m(
            "aliased_offsets.safetensors",
            format!(r#"{{"a":{},"b":{}}}"#, f32x2(0), f32x2(0)),
            8,
            "`a`|`b`",
        ),
        m(
            "overlapping_offsets.safetensors",
            format!(r#"{{"a":{},"b":{}}}"#, f32x2(0), f32x2(4)),
            12,
            "`b`",
        ),
        m(
            "gap_between_tensors.safetensors",
            format!(r#"{{"a":{},"b":{}}}"#, f32x2(0), f32x2(12)),
            20,
            "`b`",
        ),
        m(
            "trailing_bytes.safetensors",
            format!(r#"{{"a":{}}}"#, f32x2(0)),
            12,
            "trailing bytes",
        ),
        m(
            "data_past_the_end.safetensors",
            format!(r#"{{"a":{}}}"#, e("F32", "[4]", 0, 16)),
            8,
            "truncated",
        ),
        m(
            "size_mismatch.safetensors",
            format!(r#"{{"a":{}}}"#, e("F32", "[3]", 0, 8)),
            8,
            "`a`",
        ),
        m(
            "unknown_dtype.safetensors",
            format!(r#"{{"a":{}}}"#, e("F33", "[2]", 0, 8)),
            8,
            "`a`",
        ),
        m(
            "begin_after_end.safetensors",
            format!(r#"{{"a":{}}}"#, e("F32", "[2]", 8, 0)),
            8,
            "`a`",
        ),
        m(
            "shape_overflow.safetensors",
            format!(r#"{{"a":{}}}"#, e("F32", "[4294967296,4294967296]", 0, 8)),
            8,
            "`a`",
        ),
        m(
            "negative_offset.safetensors",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}}"#.into(),
            8,
            "`a`",
        ),
        m(
            "missing_shape.safetensors",
            r#"{"a":{"dtype":"F32","data_offsets":[0,8]}}"#.into(),
            8,
            "`a`",
        ),
        m(
            "bad_metadata.safetensors",
            format!(r#"{{"__metadata__":{{"k":1}},"a":{}}}"#, f32x2(0)),
            8,
            "__metadata__",
        ),
        m(
            "header_not_json.safetensors",
            "{{{{{{{{".into(),
            0,
            "header",
        ),
        m(
            "header_not_object.safetensors",
            "[1, 2]  ".into(),
            0,
            "header",
        ),
        Malformed {
            name: "header_length_huge.safetensors",
            bytes: huge,
            needle: "header",
        },
        Malformed {
            name: "header_length_past_the_end.safetensors",
            bytes: too_long,
            needle: "header",
        },
        Malformed {
            name: "empty.safetensors",
            bytes: Vec::new(),
            needle: "0 bytes",
        },
    ]
}

/// The committed corpus: (path, needle) for every file listed in
/// `tests/corpus/safetensors/expect.txt`.
pub fn malformed_safetensors_corpus() -> Vec<(PathBuf, String)> {
    let dir = root().join("tests/corpus/safetensors");
    let list = std::fs::read_to_string(dir.join("expect.txt")).unwrap();
    list.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(f, n)| (dir.join(f), n.to_string()))
        .collect()
}

/// The arguments of a module's `@forward` with weights as arguments: the
/// graph's weights, then its inputs, each taken by name.
pub fn forward_args(
    g: &Graph,
    weights: &BTreeMap<String, Tensor>,
    inputs: &BTreeMap<String, Tensor>,
) -> Vec<Tensor> {
    g.weights()
        .into_iter()
        .map(|(n, _)| weights[n].clone())
        .chain(g.inputs().into_iter().map(|(n, _)| inputs[n].clone()))
        .collect()
}

/// Dtype and rank of each output of `g`, in order.
pub fn output_types(g: &Graph) -> Vec<(DType, usize)> {
    g.outputs
        .iter()
        .map(|(_, v)| (g.ty(*v).dtype, g.ty(*v).rank()))
        .collect()
}
