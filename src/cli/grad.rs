//! `reformc grad`: one training step — the loss and the gradient of every weight.
//!
//! The forward graph goes through the usual passes, then `lower-model`
//! (model ops as tensor ops) and `autodiff` (the loss and reverse mode,
//! reversible blocks recomputed); the step graph runs on the LLVM JIT (f32)
//! or the reference interpreter (`--interp`, and every f64 step).

use super::error::{CliError, CliResult};
use super::feed::{self, FeedArgs};
use super::passes::PassArgs;
use super::{npy, outputs};
use clap::Args;
use ndarray::{ArrayD, IxDyn};
use reformc_frontend::spec::HeadSpec;
use reformc_passes::autodiff::{GRAD_PREFIX, LABELS, LOSS};
use reformc_tensor::safetensors_write::{blob, write};
use reformc_tensor::Tensor;
use reformc_train::labels::{aligned, IGNORE};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `reformc grad`.
#[derive(Args, Debug)]
pub struct GradArgs {
    /// Model description: a Hugging Face config.json or a reformc model file,
    /// or a Hugging Face model folder (config.json + model.safetensors, or a
    /// sharded model.safetensors.index.json), as save_pretrained writes it.
    pub config: PathBuf,
    /// Weights: .safetensors (F32, F16, BF16 or F64), a sharded checkpoint's
    /// model.safetensors.index.json, or a folder holding either; Hugging Face
    /// tensor names. Defaults to the model folder's weights.
    #[arg(long = "weights", value_name = "WEIGHTS")]
    pub weights_flag: Option<PathBuf>,
    /// The weights path after resolution (`--weights`, or the model folder):
    /// set by [`super::model::resolve_required_paths`] before the command runs.
    #[arg(skip)]
    pub weights: PathBuf,
    /// Token ids: int64 or int32 .npy of shape [B, L].
    #[arg(long)]
    pub input: PathBuf,
    /// Labels: int .npy [B, L] (default: the token ids); -100 marks an ignored
    /// position. A causal LM (ReformerModelWithLMHead) predicts label t+1 at
    /// position t, a masked LM label t.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Where to write the gradients (.safetensors, the weights' names).
    #[arg(long)]
    pub output: PathBuf,
    /// Also write the loss as a 0-d float64 .npy.
    #[arg(long)]
    pub loss_output: Option<PathBuf>,
    /// Attention mask: int .npy [B, L], 0 = padding (HF semantics).
    #[arg(long)]
    pub attention_mask: Option<PathBuf>,
    /// LSH rotations: float32 .npy [n_lsh_layers, H, d, r, S/2] in layer order.
    #[arg(long, conflicts_with = "lsh_buckets")]
    pub lsh_rotations: Option<PathBuf>,
    /// Recorded LSH buckets: int64 .npy [n_lsh_layers, B, H, r*L_padded] (replayed exactly).
    #[arg(long)]
    pub lsh_buckets: Option<PathBuf>,
    /// Seed of the counter-based generator drawing LSH rotations when no file is given.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Run the step on the reference interpreter instead of the LLVM JIT
    /// (f64 steps always run there).
    #[arg(long, conflicts_with = "backend")]
    pub interp: bool,
    /// `llvm` (the default for f32): the step compiled by the LLVM JIT.
    #[arg(long, value_parser = ["llvm"])]
    pub backend: Option<String>,
    /// Time every op of the compiled step and print a table (stderr) by op
    /// kind and by op, as `run --profile` does.
    #[arg(long)]
    pub profile: bool,
    /// Arithmetic precision; the gradients are written in this dtype (F32
    /// for bf16: mixed precision, every matrix product of bf16-rounded
    /// operands accumulated in f32, everything else in f32; the LLVM JIT only).
    #[arg(long, value_parser = ["f32", "f64", "bf16"], default_value = "f32")]
    pub precision: String,
    /// Add `lm_head.bias` to the logits (HF 4.x behaviour; HF 5.x ignores it).
    #[arg(long)]
    pub lm_head_bias: bool,
    #[command(flatten)]
    pub passes: PassArgs,
}

/// Runs the command.
pub fn run(args: &GradArgs) -> CliResult<()> {
    if args.precision == "bf16" && args.interp {
        return Err(CliError::input(
            "--precision bf16 runs on the LLVM JIT only (the interpreter computes in f32 or f64); drop --interp",
        ));
    }
    let inputs = inputs(args);
    outputs::guard("--output", &args.output, &inputs)?;
    if let Some(p) = &args.loss_output {
        outputs::guard("--loss-output", p, &inputs)?;
    }
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
        allow_nonfinite_weights: false,
    })?;
    let spec = &feed.model.spec;
    if matches!(spec.head, HeadSpec::None) {
        return Err(CliError::input(format!(
            "{}: the model has no LM head, so there is no loss to differentiate (expected ReformerModelWithLMHead or ReformerForMaskedLM weights)",
            args.weights.display()
        )));
    }
    super::compile::train_step::require_lm_head(spec, &args.weights, "grad")?;
    let labels = match &args.labels {
        Some(p) => read_labels(p, &feed.shape, spec.vocab_size)?,
        None => match &feed.inputs["input_ids"] {
            Tensor::I64(ids) => ids.clone(),
            _ => return Err(CliError::internal("token ids are not i64")),
        },
    };
    let labels = Tensor::I64(aligned(&labels, spec.causal));
    feed.inputs.insert(LABELS.to_string(), labels);
    let train_spec = spec
        .for_training(args.passes.no_dropout)
        .map_err(|e| CliError::input(format!("{}: {e}", args.config.display())))?;
    let mut passes = args.passes.clone();
    passes.train = true;
    let mut opts = passes.options(spec);
    opts.seq_len = opts.seq_len.or(Some(feed.shape[1] as u64));
    opts.dropout = reformc_train::grad::dropout_rates(&train_spec);
    passes.run_pipeline(&mut feed.lowered.graph, &opts, None)?;
    let (out, engine) = super::run::run_engine(
        super::run::EngineFlags {
            interp: args.interp,
            profile: args.profile,
            bf16: args.precision == "bf16",
        },
        &feed.lowered.graph,
        &feed.inputs,
        &feed.weights,
    )?;
    write_results(args, out, engine)
}

/// Labels: int [B, L] like the ids, each -100 or a token id.
fn read_labels(path: &Path, shape: &[usize], vocab: u64) -> CliResult<ArrayD<i64>> {
    let l = npy::read_int(path, 2, "labels [B, L]")?;
    if l.shape() != shape {
        return Err(CliError::input(format!(
            "{}: labels: expected shape {shape:?} (that of the token ids), found {:?}",
            path.display(),
            l.shape()
        )));
    }
    if let Some((ix, &v)) = l
        .indexed_iter()
        .find(|(_, &v)| v != IGNORE && (v < 0 || v as u64 >= vocab))
    {
        return Err(CliError::input(format!(
            "{}: label {v} at [{}, {}] is out of range (expected -100 or 0 <= label < {vocab})",
            path.display(),
            ix[0],
            ix[1]
        )));
    }
    Ok(l)
}

/// Writes the gradients and the loss, and prints the loss.
fn write_results(
    args: &GradArgs,
    mut out: BTreeMap<String, Tensor>,
    engine: &str,
) -> CliResult<()> {
    let loss = out
        .remove(LOSS)
        .ok_or_else(|| CliError::internal("the step graph has no loss output"))?
        .to_f64();
    let loss = loss.iter().next().copied().unwrap_or(f64::NAN);
    let grads: BTreeMap<String, _> = out
        .into_iter()
        .filter_map(|(n, t)| Some((n.strip_prefix(GRAD_PREFIX)?.to_string(), blob(&t))))
        .collect();
    write(&args.output, &grads, &BTreeMap::new()).map_err(CliError::internal)?;
    if let Some(p) = &args.loss_output {
        npy::write(p, &ArrayD::from_elem(IxDyn(&[]), loss))?;
    }
    println!(
        "reformc: loss {loss:.10} ; wrote {} gradients to {} ({engine})",
        grads.len(),
        args.output.display()
    );
    Ok(())
}

/// Every file `grad` reads, by flag: no output may be one of them.
fn inputs(args: &GradArgs) -> outputs::Inputs<'_> {
    let optional = [
        ("--labels", &args.labels),
        ("--attention-mask", &args.attention_mask),
        ("--lsh-rotations", &args.lsh_rotations),
        ("--lsh-buckets", &args.lsh_buckets),
    ];
    feed::input_files((&args.config, &args.weights, &args.input), &optional)
}
