//! `reformc run`: run a model on token ids and write its output as `.npy`.

use super::error::{CliError, CliResult};
use super::feed::{self, FeedArgs};
use super::passes::PassArgs;
use super::{npy, outputs};
use clap::Args;
use reformc_ir::DType;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    let mut feed = feed::prepare(&FeedArgs {
        config: &args.config,
        weights: &args.weights,
        input: &args.input,
        attention_mask: args.attention_mask.as_deref(),
        lsh_rotations: args.lsh_rotations.as_deref(),
        lsh_buckets: args.lsh_buckets.as_deref(),
        seed: args.seed,
        precision: &args.precision,
        lm_head_bias: args.lm_head_bias,
        allow_nonfinite_weights: args.allow_nonfinite_weights,
    })?;
    let (spec, seq_len) = (&feed.model.spec, Some(feed.shape[1] as u64));
    let (inputs, weights) = (&feed.inputs, &feed.weights);
    // Passes run once every input is read and checked, so bad input fails fast and alone.
    args.passes
        .optimize(&mut feed.lowered.graph, spec, seq_len)?;
    let (outputs, engine) = engine(args, &feed.lowered.graph, inputs, weights)?;
    let what = spec.head.output_description();
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
    let optional = [
        ("--attention-mask", &args.attention_mask),
        ("--lsh-rotations", &args.lsh_rotations),
        ("--lsh-buckets", &args.lsh_buckets),
    ];
    let mut v = feed::input_files((&args.config, &args.weights, &args.input), &optional);
    v.extend(args.compare.iter().map(|p| ("--compare", p.as_path())));
    v
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
