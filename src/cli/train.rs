//! `reformc train`: a training loop on a token stream, with checkpoints and
//! exact resume (the loop itself is `reformc_train::run`).

use super::error::{CliError, CliResult};
use super::{model, outputs};
use clap::Args;
use reformc_frontend::spec::ModelSpec;
use reformc_frontend::weights::{expected_tensors, WeightFile};
use reformc_tensor::Tensor;
use reformc_train::checkpoint::{self, Checkpoint, ModelId};
use reformc_train::data::TokenStream;
use reformc_train::grad::ModelStep;
use reformc_train::optim::{AdafactorConfig, AdamConfig, OptimizerConfig};
use reformc_train::run::{check_start, train, TrainError, TrainOptions, TrainState};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    /// Windows per step B.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
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
    /// Train without dropout even when the config asks for it.
    #[arg(long)]
    pub no_dropout: bool,
}

/// Runs the command.
pub fn run(args: &TrainArgs) -> CliResult<()> {
    let mut inputs: outputs::Inputs = vec![("the config", &args.config), ("--data", &args.data)];
    if let Some(w) = &args.weights {
        inputs.push(("--weights", w));
    }
    // --out may be the --resume file: it is read whole before anything is written.
    outputs::guard("--out", &args.out, &inputs)?;
    check_flags(args)?;
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
    super::compile::train_step::require_lm_head(
        spec,
        layout.map(PathBuf::as_path).unwrap_or(&args.config),
        "train",
    )?;
    spec.check_length(args.seq_len)
        .map_err(|e| CliError::input(format!("--seq-len: {e}")))?;
    let data = TokenStream::read(&args.data, spec.vocab_size).map_err(CliError::input)?;
    data.check_window(args.seq_len as usize)
        .map_err(|e| CliError::input(format!("{}: --data: {e}", args.data.display())))?;
    let model_id = model_identity(&m.spec);
    let (mut state, seed) = match &args.resume {
        Some(path) => resumed(args, path, &model_id, data.len())?,
        None => fresh(args, spec, m.weights.as_ref())?,
    };
    let opts = TrainOptions {
        steps: args.steps,
        seq_len: args.seq_len as usize,
        batch: args.batch as usize,
        seed,
        log_every: args.log_every,
        checkpoint_every: args.checkpoint_every,
        out: args.out.clone(),
    };
    // Every refusal comes before the engine is built (which may take a while).
    check_start(&opts, &state, &data).map_err(|e| CliError::input(e.to_string()))?;
    let ctx = reformc_backend_llvm::Context::create();
    let mut engine = ModelStep::new(spec, args.seq_len, args.batch, seed)
        .map_err(|e| CliError::internal(format!("cannot build the training step: {e}")))?;
    if !args.interp {
        if args.threads > 0 {
            reformc_backend_llvm::set_threads(args.threads)
                .map_err(|e| CliError::input(format!("--threads {}: {e}", args.threads)))?;
        }
        let t = engine
            .compile(&ctx, &state.weights)
            .map_err(|e| CliError::internal(format!("cannot compile the training step: {e}")))?;
        println!(
            "reformc: training step compiled by the LLVM JIT in {:.1} s",
            t.as_secs_f64()
        );
    }
    let mut log = std::io::stdout();
    let summary =
        train(&opts, &mut state, &data, &mut engine, &model_id, &mut log).map_err(|e| match e {
            TrainError::Input(m) => CliError::input(m),
            TrainError::Internal(m) => CliError::internal(m),
        })?;
    println!(
        "reformc: trained {} steps ({} in all); checkpoint of step {} in {}",
        summary.losses.len(),
        state.step,
        state.step,
        args.out.display()
    );
    Ok(())
}

/// Refuses counts and rates that cannot make a run.
fn check_flags(args: &TrainArgs) -> CliResult<()> {
    let positive = [
        ("--steps", args.steps),
        ("--seq-len", args.seq_len),
        ("--batch", args.batch),
        ("--checkpoint-every", args.checkpoint_every.unwrap_or(1)),
    ];
    if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(CliError::input(format!("{flag} must be at least 1")));
    }
    if args.weights.is_none() && args.resume.is_none() {
        return Err(CliError::input(
            "train needs initial weights: pass --weights model.safetensors (or a Hugging Face model folder as the model), or --resume a checkpoint",
        ));
    }
    if let Some(lr) = args.lr.filter(|x| !(x.is_finite() && *x > 0.0)) {
        return Err(CliError::input(format!(
            "--lr {lr}: the learning rate must be a positive finite number"
        )));
    }
    if let Some(wd) = args.weight_decay.filter(|x| !(x.is_finite() && *x >= 0.0)) {
        return Err(CliError::input(format!(
            "--weight-decay {wd}: must be a finite number >= 0"
        )));
    }
    Ok(())
}

/// The model's identity in checkpoints: its resolved spec and weight list.
fn model_identity(spec: &ModelSpec) -> ModelId {
    let (tensors, _) = expected_tensors(spec);
    let shapes = tensors
        .into_iter()
        .map(|(n, s)| (n, s.into_iter().map(|d| d as usize).collect()))
        .collect();
    ModelId::from_shapes(format!("{spec:?}"), shapes)
}

/// A new run from `--weights` with the optimizer the flags describe.
fn fresh(
    args: &TrainArgs,
    spec: &ModelSpec,
    file: Option<&WeightFile>,
) -> CliResult<(TrainState, u64)> {
    let (Some(file), Some(path)) = (file, &args.weights) else {
        return Err(CliError::input(
            "pass --weights model.safetensors (or --resume CKPT)",
        ));
    };
    let weights = load_weights(file, spec)?;
    model::check_finite(&weights, path, false)?;
    let kind = args.optimizer.as_deref().unwrap_or("adam");
    let config = optimizer_config(kind, args, None);
    Ok((TrainState::fresh(weights, config), args.seed.unwrap_or(0)))
}

/// Checks `file` against the tensors `spec` needs (names, shapes, F32) and loads them.
fn load_weights(file: &WeightFile, spec: &ModelSpec) -> CliResult<BTreeMap<String, Tensor>> {
    let (expected, extra) = expected_tensors(spec);
    super::model::load_checked(file, expected, &extra)
}

/// The run a checkpoint holds, continued with the flags: the optimizer must
/// be the same kind; other differences (seed, lengths, data, rates) are
/// allowed with a warning, since the run then differs from an uninterrupted one.
fn resumed(
    args: &TrainArgs,
    path: &std::path::Path,
    model_id: &ModelId,
    data_len: usize,
) -> CliResult<(TrainState, u64)> {
    let ck = checkpoint::read(path).map_err(CliError::input)?;
    if let Some(w) = &args.weights {
        eprintln!(
            "warning: --weights {} is not read: with --resume the weights come from the checkpoint",
            w.display()
        );
    }
    ck.check_model(path, model_id).map_err(CliError::input)?;
    let kind = ck.optimizer.kind();
    if let Some(flag) = args.optimizer.as_deref().filter(|f| *f != kind) {
        return Err(CliError::input(format!(
            "{}: the checkpoint's optimizer is {kind}; --optimizer {flag} cannot continue its state (omit --optimizer, or start a new run from --weights)",
            path.display()
        )));
    }
    let config = optimizer_config(kind, args, Some(&ck.optimizer));
    let seed = args.seed.unwrap_or(ck.run.seed);
    warn_changes(args, &ck, &config, seed, data_len);
    let mut state = TrainState::resume(ck, path, model_id).map_err(CliError::input)?;
    let optimizer_state = state.optimizer.state().clone();
    state.optimizer = reformc_train::optim::Optimizer::new(config, &state.weights);
    state
        .optimizer
        .load_state(optimizer_state)
        .map_err(CliError::internal)?;
    Ok((state, seed))
}

/// Warns about each setting that differs from the checkpoint's run.
fn warn_changes(
    args: &TrainArgs,
    ck: &Checkpoint,
    config: &OptimizerConfig,
    seed: u64,
    data_len: usize,
) {
    let r = &ck.run;
    let changes = [
        ("--seed", r.seed.to_string(), seed.to_string()),
        ("--seq-len", r.seq_len.to_string(), args.seq_len.to_string()),
        ("--batch", r.batch.to_string(), args.batch.to_string()),
        (
            "the --data length",
            r.data_len.to_string(),
            data_len.to_string(),
        ),
        (
            "the optimizer settings",
            format!("{:?}", ck.optimizer),
            format!("{config:?}"),
        ),
    ];
    for (what, was, now) in changes.iter().filter(|(_, a, b)| a != b) {
        eprintln!(
            "warning: {what} differs from the checkpoint's ({was} there, {now} now): the resumed run will not reproduce an uninterrupted one"
        );
    }
}

/// The optimizer of `kind`: `base` (the checkpoint's) or the defaults, with
/// the rates the flags give.
fn optimizer_config(
    kind: &str,
    args: &TrainArgs,
    base: Option<&OptimizerConfig>,
) -> OptimizerConfig {
    match (kind, base.cloned()) {
        ("adafactor", base) => {
            let mut c = match base {
                Some(OptimizerConfig::Adafactor(c)) => c,
                _ => AdafactorConfig::default(),
            };
            c.lr = args.lr.or(c.lr);
            c.warmup = args.warmup.unwrap_or(c.warmup);
            c.weight_decay = args.weight_decay.unwrap_or(c.weight_decay);
            OptimizerConfig::Adafactor(c)
        }
        (_, base) => {
            let mut c = match base {
                Some(OptimizerConfig::Adam(c)) => c,
                _ => AdamConfig::default(),
            };
            c.lr = args.lr.unwrap_or(c.lr);
            c.warmup = args.warmup.unwrap_or(c.warmup);
            c.weight_decay = args.weight_decay.unwrap_or(c.weight_decay);
            OptimizerConfig::Adam(c)
        }
    }
}
