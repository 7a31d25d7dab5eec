//! `reformc train`: a training loop on a token stream, with checkpoints and
//! exact resume (the loop itself is `reformc_train::run`).

use super::error::{CliError, CliResult};
use super::model;
use clap::Args;
use reformc_frontend::spec::ModelSpec;
use reformc_frontend::weights::{expected_tensors, WeightFile};
use reformc_train::checkpoint::{self, ModelId};
use reformc_train::data::TokenStream;
use reformc_train::grad::StepMemory;
use reformc_train::optim::Decay;
use reformc_train::run::{check_start, train, TrainError, TrainState};
use reformc_train::setup::{self, RunSettings};
use std::path::{Path, PathBuf};

/// Arguments of `reformc train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Model description: a Hugging Face config.json or a reformc model file,
    /// or a Hugging Face model folder (config.json + model.safetensors, or a
    /// sharded model.safetensors.index.json), as save_pretrained writes it.
    pub config: PathBuf,
    /// Initial weights (.safetensors, a shard index or a folder; Hugging Face
    /// tensor names), by default the model folder's; with --resume the weights
    /// come from the checkpoint and this may be omitted.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Token stream: a 1-D integer .npy (int64, int32, int16, int8 or uint8), ids in [0, vocab).
    #[arg(long)]
    pub data: PathBuf,
    /// Total number of steps (a resumed run continues up to it).
    #[arg(long)]
    pub steps: u64,
    /// Window length L: each step trains on B windows of L consecutive tokens.
    #[arg(long)]
    pub seq_len: u64,
    /// Windows per step B (per micro-batch with --grad-accum).
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Average the gradients of N micro-batches of B windows into each optimizer step
    /// (gradient accumulation: the batch of N·B windows at the memory of B).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub grad_accum: u64,
    /// The optimizer (default adam; on --resume, the checkpoint's).
    #[arg(long, value_parser = ["adam", "adafactor"])]
    pub optimizer: Option<String>,
    /// Learning rate (Adam: default 1e-3; Adafactor: default the relative step min(1e-2, 1/sqrt(t))).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Steps of linear learning-rate warm-up (default 0).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Decoupled weight decay (default 0).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// The learning rate after warm-up: constant (default), or decaying linearly or along a
    /// half cosine to 0 after --decay-steps steps, as Hugging Face's schedules (on --resume, the checkpoint's).
    #[arg(long, value_parser = ["constant", "linear", "cosine"])]
    pub lr_decay: Option<String>,
    /// Steps of the decay schedule, warm-up included: the rate is 0 after them (default: --steps, fixed when the run starts).
    #[arg(long)]
    pub decay_steps: Option<u64>,
    /// Scale each step's gradients to at most this global L2 norm (torch's clip_grad_norm_; default: no clipping).
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Run seed: window sampling and LSH hashing are keyed by (seed, step) (default 0; on --resume, the checkpoint's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write a checkpoint every N steps (and always after the last step).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// A progress line every N steps (0: only after the last step).
    #[arg(long, default_value_t = 1)]
    pub log_every: u64,
    /// The checkpoint file (.safetensors), written atomically; may be the --resume file.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run a checkpoint holds (weights, optimizer state, step, seed).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Add `lm_head.bias` to the logits (HF 4.x behaviour; HF 5.x ignores it).
    #[arg(long)]
    pub lm_head_bias: bool,
    /// Run the steps on the reference interpreter instead of compiling the
    /// step once with the LLVM JIT (the default).
    #[arg(long)]
    pub interp: bool,
    /// Worker threads of the compiled step (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// f32, or bf16: mixed precision, every matrix product of bf16-rounded
    /// weights and activations accumulated in f32 (AVX-512 BF16 where the
    /// CPU has it), everything else and the weights and optimizer in f32.
    #[arg(long, value_parser = ["f32", "bf16"], default_value = "f32")]
    pub precision: String,
    /// Bytes the step's static activation peak should stay under: layers
    /// that are not reversible are recomputed in the backward pass to fit
    /// (with --recompute-layers auto).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_budget: Option<u64>,
    /// Chunk the feed-forward along the sequence in chunks of N positions, its backward in blocks of at least that many rows (default: the config's `chunk_size_feed_forward`, else the memory budget decides).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::cli::passes::MAX_SEQ_LEN))]
    pub chunk_ff: Option<u64>,
    /// Fuse the LM head into the loss in chunks of N positions (default: the config's `chunk_size_lm_head`, else when the vocabulary is wide).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::cli::passes::MAX_SEQ_LEN))]
    pub chunk_lm_head: Option<u64>,
    /// Layers that are not reversible recomputed in the backward pass instead of keeping their activations (auto: the fewest leading layers that fit --memory-budget, none without one; reversible layers always recompute).
    #[arg(long, default_value = "auto", value_parser = ["auto", "none", "all"])]
    pub recompute_layers: String,
    /// Train without dropout even when the config asks for it.
    #[arg(long)]
    pub no_dropout: bool,
}

/// Runs the command.
pub fn run(args: &TrainArgs) -> CliResult<()> {
    let s = settings(args);
    let mut inputs = vec![
        ("the config", args.config.as_path()),
        ("--data", &args.data),
    ];
    if let Some(w) = &args.weights {
        inputs.push(("--weights", w));
    }
    setup::check_out(&s, &inputs).map_err(CliError::input)?;
    setup::check(&s).map_err(CliError::input)?;
    let layout = args.resume.as_ref().or(args.weights.as_ref());
    let m = model::load(
        &args.config,
        layout.map(PathBuf::as_path),
        args.lm_head_bias,
    )?;
    let spec = &m
        .spec
        .for_training(args.no_dropout)
        .map_err(|e| CliError::input(format!("{}: {e}", args.config.display())))?;
    // A head only matters once weights say which (an HF config follows its file).
    let head_source = layout.map(PathBuf::as_path).unwrap_or(&args.config);
    setup::require_lm_head(spec, head_source, "train").map_err(CliError::input)?;
    spec.check_length(args.seq_len)
        .map_err(|e| CliError::input(format!("--seq-len: {e}")))?;
    let data = TokenStream::read(&args.data, spec.vocab_size).map_err(CliError::input)?;
    data.check_window(args.seq_len as usize)
        .map_err(|e| CliError::input(format!("{}: --data: {e}", args.data.display())))?;
    let model_id = setup::model_identity(&m.spec);
    let (mut state, seed) = match &args.resume {
        Some(path) => resumed(&s, path, &model_id, data.len())?,
        None => fresh(&s, spec, m.weights.as_ref())?,
    };
    let opts = setup::options(&s, seed);
    // Every refusal comes before the engine is built (which may take a while).
    check_start(&opts, &state, &data).map_err(|e| CliError::input(e.to_string()))?;
    let ctx = reformc_backend_llvm::Context::create();
    let (mut engine, compiled) =
        setup::engine(spec, &s, seed, &ctx, &state.weights).map_err(cli_error)?;
    for note in engine.memory_notes() {
        println!("reformc: {note}");
    }
    if let Some(t) = compiled {
        println!(
            "reformc: training step compiled by the LLVM JIT in {:.1} s",
            t.as_secs_f64()
        );
    }
    let mut log = std::io::stdout();
    let summary =
        train(&opts, &mut state, &data, &mut engine, &model_id, &mut log).map_err(cli_error)?;
    println!(
        "reformc: trained {} steps ({} in all); checkpoint of step {} in {}",
        summary.losses.len(),
        state.step,
        state.step,
        args.out.display()
    );
    Ok(())
}

/// The run's settings as the flags give them.
fn settings(args: &TrainArgs) -> RunSettings {
    RunSettings {
        steps: args.steps,
        seq_len: args.seq_len,
        batch: args.batch,
        grad_accum: args.grad_accum,
        optimizer: args.optimizer.clone(),
        lr: args.lr,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        lr_decay: args.lr_decay.as_deref().and_then(Decay::parse),
        decay_steps: args.decay_steps,
        max_grad_norm: args.max_grad_norm,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        log_every: args.log_every,
        out: args.out.clone(),
        weights: args.weights.clone(),
        resume: args.resume.clone(),
        interp: args.interp,
        threads: args.threads,
        bf16: args.precision == "bf16",
        memory: StepMemory {
            budget: args.memory_budget,
            recompute: args.recompute_layers.parse().unwrap_or_default(),
            chunk_ff: args.chunk_ff,
            chunk_lm_head: args.chunk_lm_head,
        },
        naming: setup::Naming::Flags,
    }
}

/// The exit code of a run's failure: 2 for the user's input, 1 for reformc's.
fn cli_error(e: TrainError) -> CliError {
    match e {
        TrainError::Input(m) => CliError::input(m),
        TrainError::Internal(m) => CliError::internal(m),
    }
}

/// A new run from `--weights` (checked against the model and for
/// non-finite values) with the optimizer the flags describe.
fn fresh(
    s: &RunSettings,
    spec: &ModelSpec,
    file: Option<&WeightFile>,
) -> CliResult<(TrainState, u64)> {
    let (Some(file), Some(path)) = (file, &s.weights) else {
        return Err(CliError::input(
            "pass --weights model.safetensors (or --resume CKPT)",
        ));
    };
    let (expected, extra) = expected_tensors(spec);
    let weights = model::load_checked(file, expected, &extra)?;
    model::check_finite(&weights, path, false)?;
    Ok(setup::fresh(s, weights))
}

/// The run checkpoint `path` holds, continued with the flags; each setting
/// that differs from the checkpoint's run is a warning.
fn resumed(
    s: &RunSettings,
    path: &Path,
    model_id: &ModelId,
    data_len: usize,
) -> CliResult<(TrainState, u64)> {
    let ck = checkpoint::read(path).map_err(CliError::input)?;
    if let Some(w) = setup::unread_weights(s) {
        eprintln!("warning: {w}");
    }
    let r = setup::resume(s, ck, path, model_id, data_len).map_err(cli_error)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    let seed = r.seed;
    Ok((r.into_state(model_id).map_err(cli_error)?, seed))
}
