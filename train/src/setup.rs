//! Setting up a training run, shared by `reformc train` and the Python
//! package's `reformc.train`: the settings as plain data ([`RunSettings`]),
//! their validation, the model's identity in checkpoints, the state a run
//! starts from (fresh weights or a checkpoint) and the step engine.
//!
//! Messages name each setting the way the caller's user spells it
//! ([`Naming`]): `--seq-len` on the command line, `seq_len` in Python.

use crate::checkpoint::{Checkpoint, ModelId};
use crate::grad::{ModelStep, StepMemory};
use crate::optim::{AdafactorConfig, AdamConfig, Decay, Optimizer, OptimizerConfig, Schedule};
use crate::run::{TrainError, TrainOptions, TrainState};
use reformc_frontend::spec::{HeadSpec, ModelSpec};
use reformc_frontend::weights::expected_tensors;
use reformc_tensor::{outfile, Tensor};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How messages name a setting: as a command-line flag or a Python keyword.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Naming {
    /// `--seq-len`, `--lr 0` (`reformc train`).
    #[default]
    Flags,
    /// `seq_len`, `lr=0` (`reformc.train`).
    Keywords,
}

impl Naming {
    /// The name of `setting` (a field of [`RunSettings`]).
    ///
    /// ```
    /// use reformc_train::setup::Naming;
    /// assert_eq!(Naming::Flags.name("seq_len"), "--seq-len");
    /// assert_eq!(Naming::Keywords.name("seq_len"), "seq_len");
    /// ```
    pub fn name(self, setting: &str) -> String {
        match self {
            Naming::Flags => format!("--{}", setting.replace('_', "-")),
            Naming::Keywords => setting.to_string(),
        }
    }

    /// `setting` given `value`, as the user wrote it.
    ///
    /// ```
    /// use reformc_train::setup::Naming;
    /// assert_eq!(Naming::Flags.given("lr", 0), "--lr 0");
    /// assert_eq!(Naming::Keywords.given("lr", 0), "lr=0");
    /// ```
    pub fn given(self, setting: &str, value: impl Display) -> String {
        match self {
            Naming::Flags => format!("{} {value}", self.name(setting)),
            Naming::Keywords => format!("{setting}={value}"),
        }
    }
}

/// The settings of a run: `reformc train`'s flags (or `reformc.train`'s
/// keywords), before any file is read. `None` means the default, or on a
/// resume the checkpoint's value.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSettings {
    /// Total number of steps (a resumed run continues up to it).
    pub steps: u64,
    /// Window length L.
    pub seq_len: u64,
    /// Windows per step B.
    pub batch: u64,
    /// Micro-batches of B windows whose gradients are averaged into one
    /// optimizer step (gradient accumulation; 1: none).
    pub grad_accum: u64,
    /// `adam` or `adafactor` (default adam; on a resume, the checkpoint's).
    pub optimizer: Option<String>,
    /// Learning rate (default: the optimizer's).
    pub lr: Option<f64>,
    /// Steps of linear learning-rate warm-up.
    pub warmup: Option<u64>,
    /// Decoupled weight decay.
    pub weight_decay: Option<f64>,
    /// The learning rate's decay after warm-up (default constant).
    pub lr_decay: Option<Decay>,
    /// Steps of the decay schedule, warm-up included (default: `steps`).
    pub decay_steps: Option<u64>,
    /// Clip the gradients to this global L2 norm (default: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Run seed (default 0; on a resume, the checkpoint's).
    pub seed: Option<u64>,
    /// A checkpoint every this many steps (the last step always has one).
    pub checkpoint_every: Option<u64>,
    /// A progress line every this many steps (0: only after the last step).
    pub log_every: u64,
    /// The checkpoint file.
    pub out: PathBuf,
    /// Initial weights, as the user gave them (not read on a resume).
    pub weights: Option<PathBuf>,
    /// The checkpoint to continue.
    pub resume: Option<PathBuf>,
    /// The reference interpreter instead of the LLVM JIT.
    pub interp: bool,
    /// Worker threads of the compiled step (0: all cores).
    pub threads: usize,
    /// Mixed precision: every matrix product of bf16-rounded operands,
    /// accumulated in f32 (`--precision bf16`; the LLVM JIT only).
    pub bf16: bool,
    /// Activation memory of the step: budget and layer recomputation.
    pub memory: StepMemory,
    /// How messages name the settings.
    pub naming: Naming,
}

impl Default for RunSettings {
    /// The CLI's defaults; `steps` and `seq_len` have none (0 is refused).
    fn default() -> Self {
        RunSettings {
            steps: 0,
            seq_len: 0,
            batch: 1,
            grad_accum: 1,
            optimizer: None,
            lr: None,
            warmup: None,
            weight_decay: None,
            lr_decay: None,
            decay_steps: None,
            max_grad_norm: None,
            seed: None,
            checkpoint_every: None,
            log_every: 1,
            out: PathBuf::new(),
            weights: None,
            resume: None,
            interp: false,
            threads: 0,
            bf16: false,
            memory: StepMemory::default(),
            naming: Naming::Flags,
        }
    }
}

/// Refuses counts and rates that cannot make a run, and a run with no
/// initial weights.
///
/// ```
/// use reformc_train::setup::{check, RunSettings};
/// let s = RunSettings { steps: 0, seq_len: 32, resume: Some("c.safetensors".into()), ..Default::default() };
/// assert_eq!(check(&s).unwrap_err(), "--steps must be at least 1");
/// ```
pub fn check(s: &RunSettings) -> Result<(), String> {
    let positive = [
        ("steps", s.steps),
        ("seq_len", s.seq_len),
        ("batch", s.batch),
        ("grad_accum", s.grad_accum),
        ("checkpoint_every", s.checkpoint_every.unwrap_or(1)),
    ];
    if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(format!("{} must be at least 1", s.naming.name(name)));
    }
    if s.weights.is_none() && s.resume.is_none() {
        return Err(no_weights(s.naming).into());
    }
    if let Some(o) = s.optimizer.as_deref().filter(|o| !OPTIMIZERS.contains(o)) {
        // The CLI's parser refuses it first, in its own words.
        return Err(format!(
            "{}: invalid value '{o}' (possible values: {})",
            s.naming.name("optimizer"),
            OPTIMIZERS.join(", ")
        ));
    }
    check_rates(s)
}

/// The optimizers a run can use, as the CLI and checkpoints spell them.
pub const OPTIMIZERS: [&str; 2] = ["adam", "adafactor"];

/// The refusal of a run without initial weights.
fn no_weights(naming: Naming) -> &'static str {
    match naming {
        Naming::Flags => "train needs initial weights: pass --weights model.safetensors (or a Hugging Face model folder as the model), or --resume a checkpoint",
        Naming::Keywords => "train needs initial weights: pass weights=\"model.safetensors\" (or a Hugging Face model folder as the model), or resume=\"checkpoint.safetensors\"",
    }
}

/// Refuses a learning rate that is not positive, a weight decay below 0.
fn check_rates(s: &RunSettings) -> Result<(), String> {
    if let Some(lr) = s.lr.filter(|x| !(x.is_finite() && *x > 0.0)) {
        return Err(format!(
            "{}: the learning rate must be a positive finite number",
            s.naming.given("lr", lr)
        ));
    }
    if let Some(wd) = s.weight_decay.filter(|x| !(x.is_finite() && *x >= 0.0)) {
        return Err(format!(
            "{}: must be a finite number >= 0",
            s.naming.given("weight_decay", wd)
        ));
    }
    if let Some(n) = s.max_grad_norm.filter(|x| !(x.is_finite() && *x > 0.0)) {
        return Err(format!(
            "{}: the norm to clip gradients to must be a positive finite number",
            s.naming.given("max_grad_norm", n)
        ));
    }
    if let Some(d) = s.decay_steps {
        if !matches!(s.lr_decay, Some(Decay::Linear | Decay::Cosine)) {
            return Err(format!(
                "{} needs {} linear or cosine (the step at which the decay ends)",
                s.naming.given("decay_steps", d),
                s.naming.name("lr_decay")
            ));
        }
        if d <= s.warmup.unwrap_or(0) {
            return Err(format!(
                "{}: the decay must end after the warm-up ({})",
                s.naming.given("decay_steps", d),
                s.naming.given("warmup", s.warmup.unwrap_or(0))
            ));
        }
    }
    Ok(())
}

/// The schedule of a run of `s` over `base` (the checkpoint's on a resume):
/// each setting given replaces the base's; a decay without an end given
/// ends at the base's end, else at the run's last step.
fn schedule(s: &RunSettings, base: &Schedule) -> Schedule {
    let decay = s.lr_decay.unwrap_or(base.decay);
    let decay_steps = match decay {
        Decay::Constant => 0,
        _ => s
            .decay_steps
            .or((base.decay_steps > 0).then_some(base.decay_steps))
            .unwrap_or(s.steps),
    };
    Schedule {
        decay,
        decay_steps,
        max_grad_norm: s.max_grad_norm.or(base.max_grad_norm),
    }
}

/// Refuses a checkpoint file `s.out` that cannot be written (missing or
/// read-only directory) or that is one of `inputs` (name, path); the
/// resume file may be `s.out`: it is read whole before anything is written.
pub fn check_out(s: &RunSettings, inputs: &[(&str, &Path)]) -> Result<(), String> {
    let name = s.naming.name("out");
    outfile::check_dir(&name, &s.out)?;
    match outfile::first_clash(&name, &s.out, inputs.iter().copied()) {
        Some(m) => Err(m),
        None => Ok(()),
    }
}

/// Refuses a model without an LM head: only the LM loss can be trained.
/// `source` is the file that decided the head (the weights, or the config),
/// `what` the command (`train`, `grad`, ...).
pub fn require_lm_head(spec: &ModelSpec, source: &Path, what: &str) -> Result<(), String> {
    let why = match spec.head {
        HeadSpec::LmHead { .. } => return Ok(()),
        HeadSpec::None => "the model has no LM head, so there is no loss to differentiate",
        HeadSpec::Classification { .. } => {
            "the model has a sequence-classification head (ReformerForSequenceClassification); reformc trains LM heads only (its loss is the LM cross-entropy), task heads run for inference (`reformc run`, `reformc compile`)"
        }
        HeadSpec::QuestionAnswering => {
            "the model has a question-answering head (ReformerForQuestionAnswering); reformc trains LM heads only (its loss is the LM cross-entropy), task heads run for inference (`reformc run`, `reformc compile`)"
        }
    };
    Err(format!(
        "{}: {what}: {why} (expected ReformerModelWithLMHead or ReformerForMaskedLM weights)",
        source.display()
    ))
}

/// The model's identity in checkpoints: its resolved spec (as read, before
/// any training-only change such as dropping dropout) and its weight list.
pub fn model_identity(spec: &ModelSpec) -> ModelId {
    let (tensors, _) = expected_tensors(spec);
    let shapes = tensors
        .into_iter()
        .map(|(n, s)| (n, s.into_iter().map(|d| d as usize).collect()))
        .collect();
    ModelId::from_shapes(format!("{spec:?}"), shapes)
}

/// The optimizer of `kind`: `base` (the checkpoint's) or the defaults, with
/// the rates `s` gives.
///
/// ```
/// use reformc_train::optim::OptimizerConfig;
/// use reformc_train::setup::{optimizer_config, RunSettings};
/// let s = RunSettings { lr: Some(0.01), ..Default::default() };
/// let OptimizerConfig::Adam(c) = optimizer_config("adam", &s, None) else { panic!() };
/// assert_eq!((c.lr, c.beta1), (0.01, 0.9));
/// ```
pub fn optimizer_config(
    kind: &str,
    s: &RunSettings,
    base: Option<&OptimizerConfig>,
) -> OptimizerConfig {
    match (kind, base.cloned()) {
        ("adafactor", base) => {
            let mut c = match base {
                Some(OptimizerConfig::Adafactor(c)) => c,
                _ => AdafactorConfig::default(),
            };
            c.lr = s.lr.or(c.lr);
            c.warmup = s.warmup.unwrap_or(c.warmup);
            c.weight_decay = s.weight_decay.unwrap_or(c.weight_decay);
            c.schedule = schedule(s, &c.schedule);
            OptimizerConfig::Adafactor(c)
        }
        (_, base) => {
            let mut c = match base {
                Some(OptimizerConfig::Adam(c)) => c,
                _ => AdamConfig::default(),
            };
            c.lr = s.lr.unwrap_or(c.lr);
            c.warmup = s.warmup.unwrap_or(c.warmup);
            c.weight_decay = s.weight_decay.unwrap_or(c.weight_decay);
            c.schedule = schedule(s, &c.schedule);
            OptimizerConfig::Adam(c)
        }
    }
}

/// A new run from `weights` (already checked against the model: names,
/// shapes, F32, finite) with the optimizer `s` describes; also the run seed.
pub fn fresh(s: &RunSettings, weights: BTreeMap<String, Tensor>) -> (TrainState, u64) {
    let kind = s.optimizer.as_deref().unwrap_or("adam");
    let config = optimizer_config(kind, s, None);
    (TrainState::fresh(weights, config), s.seed.unwrap_or(0))
}

/// The warning that `s.weights` is not read on a resume, if both are given.
pub fn unread_weights(s: &RunSettings) -> Option<String> {
    let w = s.weights.as_ref().filter(|_| s.resume.is_some())?;
    Some(format!(
        "{} is not read: with {} the weights come from the checkpoint",
        s.naming.given("weights", w.display()),
        s.naming.name("resume")
    ))
}

/// A checkpoint opened to be continued with the settings: checked, with the
/// optimizer and seed the run will use and what differs from its own run.
#[derive(Clone, Debug)]
pub struct Resume {
    /// The run seed: the settings', else the checkpoint's.
    pub seed: u64,
    /// One line per setting that differs from the checkpoint's run.
    pub warnings: Vec<String>,
    checkpoint: Checkpoint,
    config: OptimizerConfig,
    path: PathBuf,
}

/// Checks checkpoint `ck` (read from `path`, e.g. by [`checkpoint::read`])
/// to continue it as a run of model `model_id` on data of `data_len` tokens:
/// the model and the optimizer must be the same; other differences (seed,
/// lengths, data, rates) are allowed with a warning, since the run then
/// differs from an uninterrupted one.
pub fn resume(
    s: &RunSettings,
    ck: Checkpoint,
    path: &Path,
    model_id: &ModelId,
    data_len: usize,
) -> Result<Resume, TrainError> {
    ck.check_model(path, model_id).map_err(TrainError::Input)?;
    let kind = ck.optimizer.kind();
    if let Some(o) = s.optimizer.as_deref().filter(|o| *o != kind) {
        return Err(TrainError::Input(format!(
            "{}: the checkpoint's optimizer is {kind}; {} cannot continue its state (omit {}, or start a new run from {})",
            path.display(),
            s.naming.given("optimizer", o),
            s.naming.name("optimizer"),
            s.naming.name("weights"),
        )));
    }
    let config = optimizer_config(kind, s, Some(&ck.optimizer));
    let seed = s.seed.unwrap_or(ck.run.seed);
    let warnings = changes(s, &ck, &config, seed, data_len);
    Ok(Resume {
        seed,
        warnings,
        checkpoint: ck,
        config,
        path: path.to_path_buf(),
    })
}

impl Resume {
    /// The state to continue from: the checkpoint's weights, step and
    /// optimizer state, under the optimizer settings of the resumed run.
    pub fn into_state(self, model_id: &ModelId) -> Result<TrainState, TrainError> {
        let mut state =
            TrainState::resume(self.checkpoint, &self.path, model_id).map_err(TrainError::Input)?;
        let optimizer_state = state.optimizer.state().clone();
        state.optimizer = Optimizer::new(self.config, &state.weights);
        state
            .optimizer
            .load_state(optimizer_state)
            .map_err(TrainError::Internal)?;
        Ok(state)
    }
}

/// One line for each setting that differs from the run of checkpoint `ck`
/// (the run then does not reproduce an uninterrupted one).
pub fn changes(
    s: &RunSettings,
    ck: &Checkpoint,
    config: &OptimizerConfig,
    seed: u64,
    data_len: usize,
) -> Vec<String> {
    let r = &ck.run;
    let n = |setting| s.naming.name(setting);
    let changes = [
        (n("seed"), r.seed.to_string(), seed.to_string()),
        (n("seq_len"), r.seq_len.to_string(), s.seq_len.to_string()),
        (n("batch"), r.batch.to_string(), s.batch.to_string()),
        (
            n("grad_accum"),
            r.grad_accum.to_string(),
            s.grad_accum.to_string(),
        ),
        (
            format!("the {} length", n("data")),
            r.data_len.to_string(),
            data_len.to_string(),
        ),
        (
            "the optimizer settings".to_string(),
            format!("{:?}", ck.optimizer),
            format!("{config:?}"),
        ),
    ];
    changes
        .iter()
        .filter(|(_, was, now)| was != now)
        .map(|(what, was, now)| {
            format!("{what} differs from the checkpoint's ({was} there, {now} now): the resumed run will not reproduce an uninterrupted one")
        })
        .collect()
}

/// The loop's options for a run of `s` seeded `seed`.
pub fn options(s: &RunSettings, seed: u64) -> TrainOptions {
    TrainOptions {
        steps: s.steps,
        seq_len: s.seq_len as usize,
        batch: s.batch as usize,
        grad_accum: s.grad_accum,
        seed,
        log_every: s.log_every,
        checkpoint_every: s.checkpoint_every,
        out: s.out.clone(),
    }
}

/// The training step of `spec` (its training form: dropout as the run uses
/// it) for the run seeded `seed`: compiled by the LLVM JIT in `ctx` with
/// `s.threads` workers, unless `s.interp`. Also the compile time.
pub fn engine<'ctx>(
    spec: &ModelSpec,
    s: &RunSettings,
    seed: u64,
    ctx: &'ctx reformc_backend_llvm::Context,
    weights: &BTreeMap<String, Tensor>,
) -> Result<(ModelStep<'ctx>, Option<Duration>), TrainError> {
    if s.interp && s.bf16 {
        return Err(TrainError::Input(format!(
            "{}: bf16 products run on the LLVM JIT only (the interpreter computes in f32); drop {}",
            s.naming.given("precision", "bf16"),
            s.naming.name("interp")
        )));
    }
    let mut step = ModelStep::with_memory(spec, s.seq_len, s.batch, seed, s.memory)
        .map_err(|e| TrainError::Internal(format!("cannot build the training step: {e}")))?;
    if s.interp {
        return Ok((step, None));
    }
    if s.threads > 0 {
        reformc_backend_llvm::set_threads(s.threads).map_err(|e| {
            TrainError::Input(format!("{}: {e}", s.naming.given("threads", s.threads)))
        })?;
    }
    let t = step
        .compile_with(ctx, weights, s.bf16)
        .map_err(|e| TrainError::Internal(format!("cannot compile the training step: {e}")))?;
    Ok((step, Some(t)))
}

#[cfg(test)]
mod tests;
