//! The model behind a Python `Model`, without Python: loading the config and
//! weights, checking a run's arrays, lowering, the pass pipeline and the
//! engines. It follows what `reformc run`, `grad`, `explain` and `dump` do
//! (src/cli), with arrays in memory instead of `.npy` files: each message
//! names the Python argument where the CLI names the file.

use crate::error::{Error, Result};
use crate::jit_cache::JitCache;
use ndarray::{ArrayD, IxDyn};
use reformc_frontend::config::{parse_model_config, read_config_text, ConfigFormat};
use reformc_frontend::lower::{expected_weights, lower, LowerOptions, LshSource};
use reformc_frontend::spec::{HeadSpec, ModelSpec};
use reformc_frontend::weights::WeightFile;
use reformc_ir::{DType, Graph};
use reformc_passes::autodiff::LABELS;
use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline, PipelineError};
use reformc_tensor::Tensor;
use reformc_train::labels::{aligned, IGNORE};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Named tensors: weights, graph inputs, graph outputs.
pub type Tensors = BTreeMap<String, Tensor>;

/// The choices `reformc.compile` takes: the flags of `reformc run` that make
/// sense for a model kept in memory.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--precision f64`: activations and outputs in float64 (the interpreter runs them).
    pub f64: bool,
    /// `--precision bf16`: matrix products of bf16-rounded operands
    /// accumulated in f32 (the LLVM JIT only).
    pub bf16: bool,
    /// `--lm-head-bias`.
    pub lm_head_bias: bool,
    /// `--allow-nonfinite-weights`.
    pub allow_nonfinite_weights: bool,
    /// `--interp`: the reference interpreter instead of the LLVM JIT.
    pub interp: bool,
    /// Worker threads of the runtime kernels (0 = all cores); `None` leaves the setting alone.
    pub threads: Option<usize>,
    /// `--pipeline`: comma-separated passes, `none` for no pass.
    pub pipeline: Option<String>,
    /// `--attention`: auto, full, exact or lsh.
    pub attention: Option<String>,
    /// `--kv-chunk`.
    pub kv_chunk: Option<u64>,
    /// `--seq-len`: the length the cost model plans for (default: each call's).
    pub seq_len: Option<u64>,
    /// `--batch`.
    pub batch: Option<u64>,
    /// `--memory-budget` in bytes.
    pub memory_budget: Option<u64>,
    /// `--chunk-ff`.
    pub chunk_ff: Option<u64>,
    /// `--chunk-lm-head`.
    pub chunk_lm_head: Option<u64>,
    /// `--no-dropout` (training steps only).
    pub no_dropout: bool,
    /// `-q`: no progress lines or pass notes on stderr.
    pub quiet: bool,
    /// `--recompute-layers` (training steps only).
    pub recompute: reformc_passes::autodiff::checkpoint::LayerRecompute,
}

/// The arrays of one call, converted to the CLI's element types.
pub struct Call {
    /// Token ids `[B, L]`.
    pub ids: ArrayD<i64>,
    /// Attention mask `[B, L]`, 0 = padding.
    pub mask: Option<ArrayD<i64>>,
    /// LSH rotations `[n_lsh_layers, H, d, r, S/2]`.
    pub rotations: Option<ArrayD<f32>>,
    /// Recorded LSH buckets `[n_lsh_layers, B, H, r*L_padded]`.
    pub buckets: Option<ArrayD<i64>>,
    /// Seed of the counter-based rotation generator.
    pub seed: i64,
    /// Training step only: labels `[B, L]` (default: the ids).
    pub labels: Option<ArrayD<i64>>,
}

/// A compiled model: its spec, its weights (read and checked once), and the
/// optimised graph of each (hashing source, length) it has run at.
pub struct Model {
    /// The config file.
    pub config: PathBuf,
    /// The weight file.
    pub weights_path: PathBuf,
    /// The parsed model, adapted to the weight file's layout.
    pub spec: ModelSpec,
    /// Every weight the model reads, by name (shared with the JIT worker).
    pub weights: Arc<Tensors>,
    /// The options of `compile`.
    pub opts: Options,
    /// Optimised forward graphs: lowering and the pipeline depend on the
    /// hashing source and the length only, so a second call at the same
    /// length skips them.
    graphs: Mutex<HashMap<(u8, usize), Arc<Graph>>>,
    /// The JIT-compiled module of each cached graph, kept across calls.
    jit: JitCache,
}

/// Finds the config and the weights: a Hugging Face folder holds
/// `config.json` and (unless `weights` is given) its weights, found as the CLI
/// finds them (`model.safetensors`, a sharded index; a pickle is explained);
/// next to a config file, `model.safetensors` is the default weight file.
pub fn locate(path: &Path, weights: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let (config, found) = reformc_frontend::checkpoint::model_paths(path, weights)?;
    if !config.exists() {
        return Err(Error::input(format!(
            "{}: no such file (expected a config.json, or a folder holding config.json and model.safetensors)",
            config.display()
        )));
    }
    use reformc_frontend::checkpoint::{locate_weights, WeightSource};
    let weights = match found {
        // A folder names its file: the signature reports the file's path.
        Some(w) => match locate_weights(&w)? {
            WeightSource::File(f) | WeightSource::Sharded(f) => f,
        },
        None if path.is_dir() => {
            return Err(Error::input(format!(
                "{}: the model folder has no weights (model.safetensors or model.safetensors.index.json): pass weights=",
                path.display()
            )))
        }
        None => {
            let w = path.parent().unwrap_or(Path::new(".")).join("model.safetensors");
            if !w.exists() {
                return Err(Error::input(format!(
                    "{}: no such file: pass weights=\"model.safetensors\"",
                    w.display()
                )));
            }
            w
        }
    };
    Ok((config, weights))
}

/// Reads `config` (HF `config.json` or reformc schema) and opens `weights`,
/// if given, as `reformc run` does: for an HF config the weight file decides
/// the layout (a `reformer.` prefix, the head). Also the config's warnings.
pub fn read_spec(
    config: &Path,
    weights: Option<&Path>,
    lm_head_bias: bool,
) -> Result<(ModelSpec, Option<WeightFile>, Vec<String>)> {
    let text = read_config_text(config)?;
    let (mut spec, warnings, format) = parse_model_config(&text, config)?;
    let file = weights.map(WeightFile::open).transpose()?;
    if let (Some(f), ConfigFormat::HuggingFace) = (&file, format) {
        f.apply_layout(&mut spec, lm_head_bias);
    } else if let HeadSpec::LmHead { bias } = &mut spec.head {
        *bias |= lm_head_bias;
    }
    Ok((spec, file, warnings))
}

impl Model {
    /// Reads the config and the weights and checks them against the graph,
    /// as `reformc run` does before it reads any input.
    pub fn load(config: &Path, weights_path: &Path, opts: Options) -> Result<Model> {
        let (spec, file, warnings) = read_spec(config, Some(weights_path), opts.lm_head_bias)?;
        for w in warnings {
            eprintln!("warning: {w}");
        }
        let file = file.ok_or_else(|| Error::internal("the weight file was not opened"))?;
        // The weights a graph reads do not depend on the length; automatic
        // buckets (`num_buckets: null`) need one to lower, so the largest.
        let seq_len = opts.seq_len.or(Some(spec.max_position_embeddings));
        let lowered = lower(
            &spec,
            &LowerOptions {
                dtype: dtype(&opts),
                lsh_source: LshSource::Seeded,
                seq_len,
            },
        )
        .map_err(Error::input)?;
        let weights = load_weights(&file, &lowered.graph)?;
        check_finite(&weights, weights_path, opts.allow_nonfinite_weights)?;
        let weights = Arc::new(weights);
        Ok(Model {
            config: config.to_path_buf(),
            weights_path: weights_path.to_path_buf(),
            spec,
            jit: JitCache::new(weights.clone(), opts.compile_options()),
            weights,
            opts,
            graphs: Mutex::new(HashMap::new()),
        })
    }

    /// Runs the forward pass on `call`: the first output (logits, or the
    /// last hidden state of a bare model) and the engine that ran it.
    pub fn run(&self, call: &Call) -> Result<(Tensor, &'static str)> {
        let (inputs, source, len) = self.inputs(call)?;
        let key = (source as u8, len);
        let cached = self.cache().get(&key).cloned();
        let graph = match cached {
            Some(g) => g,
            None => {
                let mut g = self.lower(source, len)?;
                self.run_passes(&mut g, false, Some(len as u64))?;
                let g = Arc::new(g);
                self.cache().insert(key, g.clone());
                g
            }
        };
        let (out, engine) = self.engine(&graph, true, &inputs)?;
        let (_, first) = out
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("the graph has no output"))?;
        Ok((first, engine))
    }

    /// One training step on `call`, as `reformc grad`: the loss and the
    /// gradient of every weight, by weight name.
    pub fn grad(&self, call: &Call) -> Result<(f64, Tensors)> {
        if matches!(self.spec.head, HeadSpec::None) {
            return Err(Error::input(format!(
                "{}: the model has no LM head, so there is no loss to differentiate (expected ReformerModelWithLMHead or ReformerForMaskedLM weights)",
                self.weights_path.display()
            )));
        }
        let (mut inputs, source, len) = self.inputs(call)?;
        let labels = match &call.labels {
            Some(l) => check_labels(l, call.ids.shape(), self.spec.vocab_size)?,
            None => call.ids.clone(),
        };
        inputs.insert(
            LABELS.to_string(),
            Tensor::I64(aligned(&labels, self.spec.causal)),
        );
        let train_spec = self
            .spec
            .for_training(self.opts.no_dropout)
            .map_err(|e| Error::input(format!("{}: {e}", self.config.display())))?;
        let mut g = self.lower(source, len)?;
        let mut opts = self.pass_options(true);
        opts.seq_len = opts.seq_len.or(Some(len as u64));
        opts.dropout = reformc_train::grad::dropout_rates(&train_spec);
        self.pipeline_run(&mut g, &opts, true)?;
        // A step graph is built per call: compiled for this run only.
        let (mut out, _) = self.engine(&Arc::new(g), false, &inputs)?;
        reformc_train::grad::split_step_outputs(&mut out).map_err(Error::internal)
    }

    /// `reformc explain`'s table (or JSON) at `seq_len` for `threads` workers.
    pub fn explain(
        &self,
        seq_len: Option<u64>,
        threads: u64,
        train: bool,
        json: bool,
    ) -> Result<String> {
        let mut opts = self.pass_options(train);
        opts.seq_len = seq_len.or(opts.seq_len);
        let lowered = lower(
            &self.spec,
            &LowerOptions {
                seq_len: opts.seq_len,
                ..LowerOptions::default()
            },
        )
        .map_err(Error::input)?;
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            n => n,
        };
        let e = reformc_passes::explain::explain_on(
            &lowered.graph,
            &opts,
            &self.pipeline(train)?,
            threads,
        )
        .map_err(|e| Error::input(e.to_string()))?;
        if json {
            return serde_json::to_string_pretty(&e.to_json())
                .map_err(|e| Error::internal(e.to_string()));
        }
        Ok(e.to_table())
    }

    /// `reformc dump`'s IR text (or Graphviz dot) after the pipeline.
    pub fn dump(
        &self,
        source: LshSource,
        seq_len: Option<u64>,
        train: bool,
        dot: bool,
    ) -> Result<String> {
        let seq_len = seq_len.or(self.opts.seq_len);
        let mut g = lower(
            &self.spec,
            &LowerOptions {
                dtype: dtype(&self.opts),
                lsh_source: source,
                seq_len,
            },
        )
        .map_err(Error::input)?
        .graph;
        self.run_passes(&mut g, train, seq_len)?;
        Ok(match dot {
            true => reformc_ir::to_dot(&g),
            false => reformc_ir::print(&g),
        })
    }

    /// The JSON signature `reformc compile` gives this model (`<output>.json`
    /// of `--emit lib`, `reformc_model_signature()` of the compiled code):
    /// one variant per hashing source (`seeded`, `rotations`, `buckets`; one
    /// `main` without LSH layers), the padded-length limit, the weights.
    pub fn signature(&self) -> Result<String> {
        use reformc_backend_llvm::{CompileOptions, DimLimit, Variant, WeightsMode};
        let seq_len = self.opts.seq_len;
        let n_lsh = self.spec.num_lsh_layers();
        let sources: &[(&str, LshSource)] = match n_lsh {
            0 => &[("main", LshSource::Seeded)],
            _ => &[
                ("seeded", LshSource::Seeded),
                ("rotations", LshSource::Rotations),
                ("buckets", LshSource::Buckets),
            ],
        };
        let mut variants = Vec::new();
        let mut factors = Vec::new();
        for (name, source) in sources {
            let mut lowered = lower(
                &self.spec,
                &LowerOptions {
                    dtype: DType::F32,
                    lsh_source: *source,
                    seq_len,
                },
            )
            .map_err(Error::input)?;
            factors = lowered.bucket_factors.clone();
            self.run_passes(&mut lowered.graph, false, seq_len)?;
            variants.push(Variant {
                name: name.to_string(),
                graph: lowered.graph,
            });
        }
        let table = reformc_backend_llvm::weight_table(&variants)
            .map_err(|e| Error::internal(e.to_string()))?;
        let uses_bias = table.iter().any(|(n, _)| n == "lm_head.bias");
        let weights = std::fs::canonicalize(&self.weights_path)
            .unwrap_or_else(|_| self.weights_path.clone())
            .display()
            .to_string();
        let opts = CompileOptions {
            model_name: reformc_frontend::checkpoint::model_name(&self.config),
            limits: vec![DimLimit {
                symbol: "P".into(),
                max: reformc_frontend::inputs::max_len(&self.spec),
                what: "padded sequence length (max_position_embeddings / axial position grid)"
                    .into(),
            }],
            allowed_extra_weights: match uses_bias {
                true => vec![],
                false => vec!["lm_head.bias".into()],
            },
            default_weights: Some(weights),
            lsh_buckets_per_round: (n_lsh > 0).then(|| factors.iter().product()),
            ..CompileOptions::default()
        };
        let ctx = reformc_backend_llvm::Context::create();
        let cm =
            reformc_backend_llvm::build_module(&ctx, &variants, &opts, &WeightsMode::Runtime, None)
                .map_err(|e| Error::internal(format!("LLVM: {e}")))?;
        Ok(cm.signature)
    }

    /// The forward graphs compiled so far (a poisoned lock only means a
    /// panic elsewhere left the cache as it was: still valid).
    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(u8, usize), Arc<Graph>>> {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `call`'s arrays as `reformc run` checks its files and builds
    /// the named graph inputs; also the hashing source and the length.
    fn inputs(&self, call: &Call) -> Result<(Tensors, LshSource, usize)> {
        let spec = &self.spec;
        let ids = check_ids(&call.ids, spec)?;
        let (batch, len) = (ids.shape()[0], ids.shape()[1]);
        let padded = spec
            .check_length(len as u64)
            .map_err(|e| Error::input(format!("input_ids: {e}")))? as usize;
        let mask = match &call.mask {
            Some(m) => check_mask(m, &[batch, len])?,
            None => ArrayD::from_elem(IxDyn(&[batch, len]), 1),
        };
        let source = match (&call.rotations, &call.buckets) {
            (Some(_), Some(_)) => {
                return Err(Error::input("pass lsh_rotations or lsh_buckets, not both"))
            }
            (_, Some(_)) => LshSource::Buckets,
            (Some(_), None) => LshSource::Rotations,
            (None, None) => LshSource::Seeded,
        };
        // The bucket count (with HF's padding bucket when anything pads)
        // needs the lowering at this length; lowering is cheap.
        let lowered = lower(
            spec,
            &LowerOptions {
                dtype: dtype(&self.opts),
                lsh_source: source,
                seq_len: Some(len as u64),
            },
        )
        .map_err(Error::input)?;
        let pads = padded > len || mask.iter().any(|&m| m == 0);
        let n_buckets = lowered.bucket_factors.iter().product::<u64>() + u64::from(pads);
        let half_width = lowered.bucket_factors.iter().sum::<u64>() as usize / 2;
        let mut inputs = Tensors::new();
        inputs.insert("input_ids".into(), Tensor::I64(ids.clone()));
        inputs.insert("attention_mask".into(), Tensor::I64(mask));
        inputs.insert(
            "seed".into(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[]), call.seed)),
        );
        if let Some(r) = &call.rotations {
            let shape = [
                spec.num_lsh_layers(),
                spec.num_heads as usize,
                spec.head_dim as usize,
                spec.lsh.n_hashes as usize,
                half_width,
            ];
            inputs.insert(
                "lsh_rotations".into(),
                Tensor::F32(check_rotations(r, &shape)?),
            );
        }
        if let Some(b) = &call.buckets {
            inputs.insert(
                "lsh_buckets".into(),
                Tensor::I64(check_buckets(b, spec, batch, padded, n_buckets)?),
            );
        }
        Ok((inputs, source, len))
    }

    /// The forward graph for `source` at length `len`, not yet optimised.
    fn lower(&self, source: LshSource, len: usize) -> Result<Graph> {
        let lowered = lower(
            &self.spec,
            &LowerOptions {
                dtype: dtype(&self.opts),
                lsh_source: source,
                seq_len: Some(len as u64),
            },
        )
        .map_err(Error::input)?;
        Ok(lowered.graph)
    }

    /// The pipeline the options name, with the training passes for a step.
    fn pipeline(&self, train: bool) -> Result<Pipeline> {
        let p = match self.opts.pipeline.as_deref() {
            None => Pipeline::default_pipeline(),
            Some("none") | Some("") => {
                Pipeline::new::<&str>(&[]).map_err(|e| Error::input(format!("pipeline: {e}")))?
            }
            Some(text) => {
                Pipeline::parse(text).map_err(|e| Error::input(format!("pipeline: {e}")))?
            }
        };
        Ok(match train {
            true => reformc_train::grad::with_train_passes(p),
            false => p,
        })
    }

    /// Options every pass sees; chunk sizes default to the model's config,
    /// dropout applies to training steps only (as `PassArgs::options`).
    fn pass_options(&self, train: bool) -> PassOptions {
        let o = &self.opts;
        let dropout = match train && !o.no_dropout {
            true => reformc_train::grad::dropout_rates(&self.spec),
            false => None,
        };
        PassOptions {
            seq_len: o.seq_len,
            batch: o.batch,
            memory_budget: o.memory_budget,
            attention: o.attention.clone(),
            kv_chunk: o.kv_chunk,
            chunk_size_feed_forward: o.chunk_ff.or(self.spec.chunk_size_feed_forward),
            chunk_size_lm_head: o.chunk_lm_head.or(self.spec.chunk_size_lm_head),
            recompute: o.recompute,
            dropout,
            ..PassOptions::default()
        }
    }

    /// Runs the pipeline on `g`, planning for `seq_len` unless the options name a length.
    fn run_passes(&self, g: &mut Graph, train: bool, seq_len: Option<u64>) -> Result<()> {
        let mut opts = self.pass_options(train);
        opts.seq_len = opts.seq_len.or(seq_len);
        self.pipeline_run(g, &opts, train)
    }

    /// Runs the pipeline with `opts` as given; progress lines and notes go
    /// to stderr unless `quiet`, as the CLI prints them.
    fn pipeline_run(&self, g: &mut Graph, opts: &PassOptions, train: bool) -> Result<()> {
        let instr = Instrumentation {
            quiet: self.opts.quiet,
            ..Instrumentation::default()
        };
        let pm = PassManager::new(self.pipeline(train)?, instr)
            .map_err(|e| Error::input(e.to_string()))?;
        let mut stderr = std::io::stderr();
        let mut progress = |p: &reformc_passes::Progress<'_>| p.eprint();
        pm.run_with(g, opts, &mut stderr, &mut progress, &mut |_| {})
            .map(|_| ())
            .map_err(|e| match &e {
                // The user's choice of passes or options, not a bug.
                PipelineError::Pass(p) if !p.message.contains("does not verify") => {
                    Error::input(e.to_string())
                }
                _ => Error::internal(e.to_string()),
            })
    }

    /// How many modules the JIT has compiled and kept for this model.
    pub fn jit_compilations(&self) -> usize {
        self.jit.compilations()
    }

    /// The engine switch of `reformc run`: the LLVM JIT (its module kept for
    /// the next call when `keep`), or the reference interpreter (`interp`, f64
    /// graphs, ops the JIT does not support).
    fn engine(
        &self,
        graph: &Arc<Graph>,
        keep: bool,
        inputs: &Tensors,
    ) -> Result<(Tensors, &'static str)> {
        if let Some(n) = self.opts.threads {
            reformc_backend_llvm::set_threads(n).map_err(|e| Error::input(e.to_string()))?;
        }
        let interp = || {
            reformc_interp::run(graph, inputs, &*self.weights)
                .map_err(|e| Error::internal(format!("interpreter: {e}")))
        };
        let f64_graph = graph
            .outputs
            .iter()
            .any(|(_, v)| graph.ty(*v).dtype == DType::F64);
        if self.opts.interp || f64_graph {
            return Ok((interp()?, "interpreter"));
        }
        use reformc_backend_llvm::BackendError;
        let out = match keep {
            true => self.jit.run(graph, inputs.clone()),
            false => {
                let opts = self.opts.compile_options();
                reformc_backend_llvm::jit_run_with(graph, inputs, &self.weights, &opts)
                    .map(|(out, _)| out)
            }
        };
        match out {
            Ok(out) => Ok((out, "LLVM JIT")),
            Err(BackendError::Unsupported(m)) => {
                eprintln!("warning: LLVM JIT: {m}; running the interpreter instead");
                Ok((interp()?, "interpreter"))
            }
            // Codes 1-9 are bad inputs or weights (model.h REFORMC_ERR_*).
            Err(BackendError::Run { code, message }) if (1..=9).contains(&code) => {
                Err(Error::input(message))
            }
            Err(e) => Err(Error::internal(format!("LLVM JIT: {e}"))),
        }
    }
}

impl Options {
    /// What the LLVM JIT compiles with: bf16 products or not.
    fn compile_options(&self) -> reformc_backend_llvm::CompileOptions {
        reformc_backend_llvm::CompileOptions {
            bf16: self.bf16,
            ..Default::default()
        }
    }
}

/// The activation dtype the options ask for.
fn dtype(opts: &Options) -> DType {
    match opts.f64 {
        true => DType::F64,
        false => DType::F32,
    }
}

/// Checks `file` against the weights `graph` reads (names, shapes, F32;
/// HF 5.x checkpoints carry `lm_head.bias` unused) and loads each of them.
fn load_weights(file: &WeightFile, graph: &Graph) -> Result<Tensors> {
    let expected = expected_weights(graph);
    let extra: Vec<String> = ["lm_head.bias".to_string()]
        .into_iter()
        .filter(|n| !expected.iter().any(|(e, _)| e == n))
        .collect();
    load_expected(file, expected, &extra)
}

/// Checks `file` against `expected` (names, shapes, F32; `extra` tensors
/// may be present unused) and loads every expected tensor.
pub fn load_expected(
    file: &WeightFile,
    expected: Vec<(String, Vec<u64>)>,
    extra: &[String],
) -> Result<Tensors> {
    file.check(&expected, extra)?;
    let mut out = Tensors::new();
    for (name, shape) in expected {
        let data = file.tensor_f32(&name)?;
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let array = ArrayD::from_shape_vec(IxDyn(&shape), data)
            .map_err(|e| Error::internal(format!("{name}: {e}")))?;
        out.insert(name, Tensor::F32(array));
    }
    Ok(out)
}

/// Refuses a NaN or infinite weight, as `reformc run` does (a warning with
/// `allow_nonfinite_weights`).
fn check_finite(weights: &Tensors, file: &Path, allow: bool) -> Result<()> {
    for (name, t) in weights {
        let Some(message) = nonfinite(name, t, file) else {
            continue;
        };
        if !allow {
            return Err(Error::input(format!(
                "{message}; pass allow_nonfinite_weights=True to run it anyway"
            )));
        }
        eprintln!("warning: {message} (allowed by allow_nonfinite_weights)");
    }
    Ok(())
}

/// The first NaN or infinity of weight `name` (read from `file`), said in
/// one phrase: the tensor, the flat index, the value and the shape.
pub fn nonfinite(name: &str, t: &Tensor, file: &Path) -> Option<String> {
    let Tensor::F32(a) = t else { return None };
    let (index, value) = a.iter().enumerate().find(|(_, x)| !x.is_finite())?;
    Some(format!(
        "{}: tensor `{name}`: non-finite value {value} at flat index {index} (shape {:?})",
        file.display(),
        t.shape()
    ))
}

/// Token ids: `[B, L]`, non-empty, every id in `[0, vocab_size)`.
fn check_ids<'a>(ids: &'a ArrayD<i64>, spec: &ModelSpec) -> Result<&'a ArrayD<i64>> {
    rank("input_ids", "token ids [B, L]", ids.shape(), 2)?;
    if ids.is_empty() {
        return Err(Error::input(format!(
            "input_ids: token ids: expected a non-empty [B, L] array, found shape {:?}",
            ids.shape()
        )));
    }
    let len = ids.shape()[1];
    let bad = reformc_frontend::inputs::token_id_error(ids.iter().copied(), len, spec.vocab_size);
    if let Some(m) = bad {
        return Err(Error::input(format!("input_ids: {m}")));
    }
    Ok(ids)
}

/// The attention mask: the shape of the ids.
fn check_mask(m: &ArrayD<i64>, shape: &[usize]) -> Result<ArrayD<i64>> {
    rank("attention_mask", "attention mask [B, L]", m.shape(), 2)?;
    if m.shape() != shape {
        return Err(Error::input(format!(
            "attention_mask: attention mask: expected shape {shape:?} (that of the token ids), found {:?}",
            m.shape()
        )));
    }
    Ok(m.clone())
}

/// LSH rotations: exactly `shape`, every value finite.
fn check_rotations(r: &ArrayD<f32>, shape: &[usize]) -> Result<ArrayD<f32>> {
    if r.shape() != shape {
        return Err(Error::input(format!(
            "lsh_rotations: LSH rotations [n_lsh_layers, H, d, r, S/2]: expected shape {shape:?}, found {:?}",
            r.shape()
        )));
    }
    if let Some((i, x)) = r.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::input(format!(
            "lsh_rotations: LSH rotations: non-finite value {x} at flat index {i} (expected finite float32 values)"
        )));
    }
    Ok(r.clone())
}

/// HF's bucket layout `[n, B, H, r*P]`, range-checked, reshaped to the IR's `[n, B, H, r, P]`.
fn check_buckets(
    b: &ArrayD<i64>,
    spec: &ModelSpec,
    batch: usize,
    padded: usize,
    n_buckets: u64,
) -> Result<ArrayD<i64>> {
    let what = "LSH buckets [n_lsh_layers, B, H, r*L_padded]";
    rank("lsh_buckets", what, b.shape(), 4)?;
    let (want, ir) = reformc_frontend::inputs::lsh_bucket_shapes(spec, batch, padded);
    let r = ir[3];
    if b.shape() != want {
        return Err(Error::input(format!(
            "lsh_buckets: LSH buckets: expected shape {want:?} ([n_lsh_layers, B, H, r*L_padded] with L_padded={padded}), found {:?}",
            b.shape()
        )));
    }
    let ids = b.as_standard_layout();
    let ids = ids.as_slice().unwrap_or_default();
    reformc_runtime::attention::check_bucket_ids(ids, r, padded, n_buckets)
        .map_err(|e| Error::input(format!("lsh_buckets: LSH buckets: {e}")))?;
    b.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&ir))
        .map_err(|e| Error::internal(format!("lsh_buckets: {e}")))
}

/// Labels: the shape of the ids, each -100 or a token id.
fn check_labels(l: &ArrayD<i64>, shape: &[usize], vocab: u64) -> Result<ArrayD<i64>> {
    rank("labels", "labels [B, L]", l.shape(), 2)?;
    if l.shape() != shape {
        return Err(Error::input(format!(
            "labels: labels: expected shape {shape:?} (that of the token ids), found {:?}",
            l.shape()
        )));
    }
    if let Some((ix, &v)) = l
        .indexed_iter()
        .find(|(_, &v)| v != IGNORE && (v < 0 || v as u64 >= vocab))
    {
        return Err(Error::input(format!(
            "labels: label {v} at [{}, {}] is out of range (expected -100 or 0 <= label < {vocab})",
            ix[0], ix[1]
        )));
    }
    Ok(l.clone())
}

/// Refuses an array of the wrong rank, in the words of the `.npy` readers.
pub fn rank(arg: &str, what: &str, shape: &[usize], want: usize) -> Result<()> {
    if shape.len() != want {
        return Err(Error::input(format!(
            "{arg}: {what}: expected a rank-{want} array, found shape {shape:?}"
        )));
    }
    Ok(())
}
