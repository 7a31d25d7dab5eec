//! Helpers of the backend's integration tests that only they need:
//! compiling a fixture case (variants, options, executable info, embedded
//! weights, executables and their arguments), running programs, scratch
//! directories. The fixture cases themselves come from `reformc-testkit`.

#![allow(dead_code)]
#![allow(unused_imports)]

pub use reformc_testkit::*;

use reformc_backend_llvm::aot::{self, Emit};
use reformc_backend_llvm::{CompileOptions, DimLimit, ExeInfo, Variant, WeightsMode};
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_frontend::spec::PositionSpec;
use reformc_ir::DType;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory under the target dir, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let d = root().join("target/tmp/backend-llvm-tests").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiling a fixture case the way `reformc compile` does.
pub trait CompileCase {
    /// The bucket factors of the case's LSH layers.
    fn factors(&self) -> Vec<u64>;
    /// The longest (padded) sequence the model takes.
    fn max_len(&self) -> u64;
    /// The variants `reformc compile` builds.
    fn variants(&self) -> Vec<Variant>;
    fn options(&self, default_weights: Option<String>) -> CompileOptions;
    fn exe_info(&self, default_weights: Option<String>) -> ExeInfo;
    /// Weight bytes in the module's table order (for `--weights=embed`).
    fn embedded(&self, variants: &[Variant]) -> WeightsMode;
    /// Compiles the case to an executable in `dir` (weights memory-mapped from the fixture).
    fn compile_exe(&self, dir: &Path) -> PathBuf;
    /// Command-line arguments that replay HF (buckets, mask).
    fn exe_args(&self, dir: &Path) -> Vec<String>;
    /// Runs `exe` on the case (its [`CompileCase::exe_args`] and `extra`),
    /// asserts that it succeeded and returns its output, written in `dir`.
    fn run_exe(&self, exe: &Path, dir: &Path, extra: &[String]) -> ndarray::ArrayD<f64>;
}

impl CompileCase for Case {
    fn factors(&self) -> Vec<u64> {
        lower(
            &self.spec,
            &LowerOptions {
                dtype: DType::F32,
                lsh_source: LshSource::Seeded,
                seq_len: Some(self.seq_len() as u64),
            },
        )
        .unwrap()
        .bucket_factors
    }

    fn variants(&self) -> Vec<Variant> {
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
                graph: self.graph(DType::F32, s),
            })
            .collect()
    }

    fn max_len(&self) -> u64 {
        let mut m = self.spec.max_position_embeddings;
        if let PositionSpec::Axial { shape, .. } = &self.spec.position {
            m = m.min(shape[0] * shape[1]);
        }
        m
    }

    fn options(&self, default_weights: Option<String>) -> CompileOptions {
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

    fn exe_info(&self, default_weights: Option<String>) -> ExeInfo {
        let spec = &self.spec;
        let (pad_multiple, pad_min_len) = spec.padding();
        let (pad_multiple, pad_min_len) = (pad_multiple as i64, pad_min_len as i64);
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
            n_buckets: i32::try_from(self.factors().iter().product::<u64>()).unwrap_or(0),
            step: None,
        }
    }

    fn embedded(&self, variants: &[Variant]) -> WeightsMode {
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

    fn compile_exe(&self, dir: &Path) -> PathBuf {
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

    fn exe_args(&self, dir: &Path) -> Vec<String> {
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

    fn run_exe(&self, exe: &Path, dir: &Path, extra: &[String]) -> ndarray::ArrayD<f64> {
        let out = dir.join(format!("{}.out.npy", self.name));
        let mut args = self.exe_args(dir);
        args.extend(["--output".into(), out.display().to_string()]);
        args.extend(extra.iter().cloned());
        let res = run(exe, &args);
        assert!(
            res.status.success(),
            "{}: {}",
            self.name,
            String::from_utf8_lossy(&res.stderr)
        );
        read::<f32>(&out).mapv(f64::from)
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
