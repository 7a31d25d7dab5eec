//! `reformc run`: run a model on token ids and write its output as `.npy`.

use super::error::{CliError, CliResult};
use super::passes::PassArgs;
use super::{model, npy, outputs};
use clap::Args;
use ndarray::{ArrayD, IxDyn};
use reformc_frontend::lower::{LowerOptions, LshSource};
use reformc_frontend::spec::{AttentionKind, HeadSpec, ModelSpec};
use reformc_ir::DType;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `reformc run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model description: a Hugging Face config.json, a reformc model file, or IR text (`.ir`).
    pub config: PathBuf,
    /// Weights (.safetensors, Hugging Face tensor names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Token ids: int64 or int32 .npy of shape [B, L].
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the output (.npy): logits [B, L, V], or the last hidden state [B, L, 2D] of a bare model.
    #[arg(long)]
    pub output: PathBuf,
    /// Attention mask: int .npy [B, L], 0 = padding (HF semantics).
    #[arg(long)]
    pub attention_mask: Option<PathBuf>,
    /// LSH rotations: float32 .npy [n_lsh_layers, H, d, r, S/2] in layer order (HF's draws).
    #[arg(long, conflicts_with = "lsh_buckets")]
    pub lsh_rotations: Option<PathBuf>,
    /// Recorded LSH buckets: int64 .npy [n_lsh_layers, B, H, r*L_padded], as HF's _hash_vectors returns them.
    #[arg(long)]
    pub lsh_buckets: Option<PathBuf>,
    /// Seed of the counter-based generator drawing LSH rotations when no file is given.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Use the reference interpreter instead of the LLVM JIT (the default engine;
    /// f64 runs always use the interpreter: the runtime kernels are f32).
    #[arg(long, conflicts_with = "backend")]
    pub interp: bool,
    /// The compiled engine: `llvm` (reformc's LLVM JIT, the default) or `mlir`
    /// (the module `compile --emit mlir` writes, weights embedded, through
    /// reformc's MLIR CPU pipeline and MLIR's ExecutionEngine).
    #[arg(long, value_parser = ["llvm", "mlir"])]
    pub backend: Option<String>,
    /// Time every op of the JIT-compiled model and print a table by op kind and
    /// the slowest ops to stderr.
    #[arg(long)]
    pub profile: bool,
    /// Arithmetic precision of the run; the output .npy has this dtype.
    #[arg(long, value_parser = ["f32", "f64"], default_value = "f32")]
    pub precision: String,
    /// Add `lm_head.bias` to the logits (HF 4.x behaviour; HF 5.x ignores it).
    #[arg(long)]
    pub lm_head_bias: bool,
    /// Run even when a weight is NaN or infinite (a warning instead of an error).
    #[arg(long)]
    pub allow_nonfinite_weights: bool,
    /// Reference outputs (.npy) to report the max absolute difference against.
    #[arg(long = "compare")]
    pub compare: Vec<PathBuf>,
    #[command(flatten)]
    pub passes: PassArgs,
}

/// Runs the command.
pub fn run(args: &RunArgs) -> CliResult<()> {
    if super::opt::is_ir(&args.config) {
        return super::run_ir::run(args);
    }
    let inputs = inputs(args);
    outputs::guard("--output", &args.output, &inputs)?;
    args.passes.guard_outputs(&inputs)?;
    let m = model::load(&args.config, Some(&args.weights), args.lm_head_bias)?;
    let spec = &m.spec;
    let ids = read_ids(&args.input, spec)?;
    let (batch, len) = (ids.shape()[0], ids.shape()[1]);
    let padded = spec
        .check_length(len as u64)
        .map_err(|e| CliError::input(format!("{}: {e}", args.input.display())))?
        as usize;
    let mask = match &args.attention_mask {
        Some(p) => read_mask(p, &[batch, len])?,
        None => ArrayD::from_elem(IxDyn(&[batch, len]), 1),
    };
    let source = match (&args.lsh_rotations, &args.lsh_buckets) {
        (_, Some(_)) => LshSource::Buckets,
        (Some(_), None) => LshSource::Rotations,
        (None, None) => LshSource::Seeded,
    };
    let dtype = if args.precision == "f64" {
        DType::F64
    } else {
        DType::F32
    };
    let seq_len = Some(len as u64);
    let mut lowered = m.lower(&LowerOptions {
        dtype,
        lsh_source: source,
        seq_len,
    })?;
    // HF adds a padding bucket when the mask (given, or made by padding to the chunk multiple) pads.
    let pads = padded > len || mask.iter().any(|&m| m == 0);
    let n_buckets = lowered.bucket_factors.iter().product::<u64>() + u64::from(pads);
    let weights = m.weight_tensors(&lowered)?;
    model::check_finite(&weights, &args.weights, args.allow_nonfinite_weights)?;
    let mut inputs = BTreeMap::new();
    inputs.insert("input_ids".to_string(), Tensor::I64(ids));
    inputs.insert("attention_mask".to_string(), Tensor::I64(mask));
    inputs.insert(
        "seed".to_string(),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[]), args.seed)),
    );
    let half_width = lowered.bucket_factors.iter().sum::<u64>() as usize / 2;
    if let Some(p) = &args.lsh_rotations {
        let shape = [
            spec.num_lsh_layers(),
            spec.num_heads as usize,
            spec.head_dim as usize,
            spec.lsh.n_hashes as usize,
            half_width,
        ];
        let rotations = npy::read_f32(p, &shape, "LSH rotations [n_lsh_layers, H, d, r, S/2]")?;
        if let Some((i, x)) = rotations.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(CliError::input(format!(
                "{}: LSH rotations: non-finite value {x} at flat index {i} (expected finite float32 values)",
                p.display()
            )));
        }
        inputs.insert("lsh_rotations".to_string(), Tensor::F32(rotations));
    }
    if let Some(p) = &args.lsh_buckets {
        inputs.insert(
            "lsh_buckets".to_string(),
            Tensor::I64(read_buckets(p, spec, batch, padded, n_buckets)?),
        );
    }
    // Passes run once every input is read and checked, so bad input fails fast and alone.
    args.passes.optimize(&mut lowered.graph, spec, seq_len)?;
    let (outputs, engine) = engine(args, &lowered.graph, &inputs, &weights)?;
    let what = if matches!(spec.head, HeadSpec::None) {
        "last hidden state"
    } else {
        "logits"
    };
    write_outputs(args, outputs, engine, what)
}

/// Writes the first output to `--output`, says what was written, and reports
/// the difference to each `--compare` reference.
pub(super) fn write_outputs(
    args: &RunArgs,
    outputs: BTreeMap<String, Tensor>,
    engine: &str,
    what: &str,
) -> CliResult<()> {
    let (name, out) = outputs
        .into_iter()
        .next()
        .ok_or_else(|| CliError::internal("the graph has no output"))?;
    match &out {
        Tensor::F32(a) => npy::write(&args.output, a)?,
        Tensor::F64(a) => npy::write(&args.output, a)?,
        other => {
            return Err(CliError::internal(format!(
                "unexpected output dtype {}",
                other.dtype()
            )))
        }
    }
    println!(
        "reformc: wrote {what} `{name}` {:?} {} to {} ({engine})",
        out.shape(),
        out.dtype(),
        args.output.display()
    );
    let got = out.to_f64();
    for reference in &args.compare {
        let want = npy::read_float_any(reference)?;
        if want.shape() != got.shape() {
            return Err(CliError::input(format!(
                "{}: shape {:?} does not match the output's {:?}",
                reference.display(),
                want.shape(),
                got.shape()
            )));
        }
        let diff = (&got - &want).mapv(f64::abs).fold(0.0f64, |a, &b| a.max(b));
        println!(
            "reformc: max |output - {}| = {diff:.3e}",
            reference.display()
        );
    }
    Ok(())
}

/// Every file `run` reads, by flag: no output may be one of them.
pub(super) fn inputs(args: &RunArgs) -> outputs::Inputs<'_> {
    let mut v: outputs::Inputs<'_> = vec![
        ("the config", args.config.as_path()),
        ("--weights", args.weights.as_path()),
        ("--input", args.input.as_path()),
    ];
    let optional = [
        ("--attention-mask", &args.attention_mask),
        ("--lsh-rotations", &args.lsh_rotations),
        ("--lsh-buckets", &args.lsh_buckets),
    ];
    v.extend(
        optional
            .iter()
            .filter_map(|(f, p)| Some((*f, p.as_deref()?))),
    );
    v.extend(args.compare.iter().map(|p| ("--compare", p.as_path())));
    v
}

/// Token ids: int [B, L], every id in [0, vocab_size).
pub(super) fn read_ids(path: &Path, spec: &ModelSpec) -> CliResult<ArrayD<i64>> {
    let ids = npy::read_int(path, 2, "token ids [B, L]")?;
    if ids.is_empty() {
        return Err(CliError::input(format!(
            "{}: token ids: expected a non-empty [B, L] array, found shape {:?}",
            path.display(),
            ids.shape()
        )));
    }
    if let Some((ix, &id)) = ids
        .indexed_iter()
        .find(|(_, &v)| v < 0 || v as u64 >= spec.vocab_size)
    {
        return Err(CliError::input(format!(
            "{}: token id {id} at [{}, {}] is out of range: the vocabulary has {} entries (expected 0 <= id < {})",
            path.display(),
            ix[0],
            ix[1],
            spec.vocab_size,
            spec.vocab_size
        )));
    }
    Ok(ids)
}

pub(super) fn read_mask(path: &Path, shape: &[usize]) -> CliResult<ArrayD<i64>> {
    let m = npy::read_int(path, 2, "attention mask [B, L]")?;
    if m.shape() != shape {
        return Err(CliError::input(format!(
            "{}: attention mask: expected shape {shape:?} (that of the token ids), found {:?}",
            path.display(),
            m.shape()
        )));
    }
    Ok(m)
}

/// HF's bucket layout [n, B, H, r*P] reshaped to the IR's [n, B, H, r, P].
pub(super) fn read_buckets(
    path: &Path,
    spec: &ModelSpec,
    batch: usize,
    padded: usize,
    n_buckets: u64,
) -> CliResult<ArrayD<i64>> {
    let n = spec
        .layers
        .iter()
        .filter(|l| **l == AttentionKind::Lsh)
        .count();
    let (h, r) = (spec.num_heads as usize, spec.lsh.n_hashes as usize);
    let want = [n, batch, h, r * padded];
    let b = npy::read_int(path, 4, "LSH buckets [n_lsh_layers, B, H, r*L_padded]")?;
    if b.shape() != want {
        return Err(CliError::input(format!("{}: LSH buckets: expected shape {want:?} ([n_lsh_layers, B, H, r*L_padded] with L_padded={padded}), found {:?}", path.display(), b.shape())));
    }
    let ids = b.as_standard_layout();
    let ids = ids.as_slice().unwrap_or_default();
    reformc_runtime::attention::check_bucket_ids(ids, r, padded, n_buckets)
        .map_err(|e| CliError::input(format!("{}: LSH buckets: {e}", path.display())))?;
    b.into_shape_with_order(IxDyn(&[n, batch, h, r, padded]))
        .map_err(|e| CliError::internal(format!("{}: LSH buckets: {e}", path.display())))
}

/// The engine `--backend` names: the MLIR CPU pipeline for `mlir`, otherwise
/// [`run_engine`]'s choice.
pub(super) fn engine(
    args: &RunArgs,
    graph: &reformc_ir::Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
) -> CliResult<(BTreeMap<String, Tensor>, &'static str)> {
    if args.backend.as_deref() != Some("mlir") {
        return run_engine((args.interp, args.profile), graph, inputs, weights);
    }
    if args.profile {
        eprintln!("warning: --profile times the LLVM JIT only; the MLIR pipeline is not profiled");
    }
    super::mlir::run_engine(graph, inputs, weights, &args.config, args.passes.quiet)
}

/// The engine switch: the LLVM JIT by default, the reference interpreter with
/// `--interp` or for f64 graphs (the runtime kernels are f32 only).
pub(super) fn run_engine(
    (interp, profile): (bool, bool),
    graph: &reformc_ir::Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
) -> CliResult<(BTreeMap<String, Tensor>, &'static str)> {
    let f64_graph = graph
        .outputs
        .iter()
        .any(|(_, v)| graph.ty(*v).dtype == DType::F64);
    if interp || f64_graph {
        if profile {
            eprintln!(
                "warning: --profile times the LLVM JIT only; the interpreter is not profiled"
            );
        }
        let out = reformc_interp::run(graph, inputs, weights)
            .map_err(|e| CliError::internal(format!("interpreter: {e}")))?;
        return Ok((out, "interpreter"));
    }
    let jit = || {
        let opts = reformc_backend_llvm::CompileOptions {
            profile,
            ..Default::default()
        };
        let (out, table) = reformc_backend_llvm::jit_run_with(graph, inputs, weights, &opts)?;
        if let Some(table) = table {
            eprint!("{table}");
        }
        Ok::<_, reformc_backend_llvm::BackendError>(out)
    };
    match jit() {
        Ok(out) => Ok((out, "LLVM JIT")),
        Err(reformc_backend_llvm::BackendError::Unsupported(m)) => {
            eprintln!("warning: LLVM JIT: {m}; running the interpreter instead");
            let out = reformc_interp::run(graph, inputs, weights)
                .map_err(|e| CliError::internal(format!("interpreter: {e}")))?;
            Ok((out, "interpreter"))
        }
        // Codes 1-9 are bad inputs or weights (model.h REFORMC_ERR_*).
        Err(reformc_backend_llvm::BackendError::Run { code, message })
            if (1..=9).contains(&code) =>
        {
            Err(CliError::input(message))
        }
        Err(e) => Err(CliError::internal(format!("LLVM JIT: {e}"))),
    }
}
