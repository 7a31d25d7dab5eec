//! The training loop: sample windows, take a step, check the loss, update,
//! report, checkpoint.

use crate::checkpoint::{self, Checkpoint, ModelId, RunInfo};
use crate::data::TokenStream;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::step::StepFn;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to run: lengths, counts, where checkpoints go.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Total number of steps of the run; a resumed run continues to it.
    pub steps: u64,
    /// Window length L.
    pub seq_len: usize,
    /// Windows per micro-batch B.
    pub batch: usize,
    /// Micro-batches per optimizer step: their gradients and losses are
    /// averaged (gradient accumulation; 1: none).
    pub grad_accum: u64,
    /// The run seed (windows and hashing are keyed by (seed, step)).
    pub seed: u64,
    /// A progress line every this many steps (0: none; the last step always has one).
    pub log_every: u64,
    /// A checkpoint every this many steps (the last step always has one).
    pub checkpoint_every: Option<u64>,
    /// The checkpoint file.
    pub out: PathBuf,
}

/// What the loop changes: the weights, the optimizer and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// The weights by name (F32).
    pub weights: BTreeMap<String, Tensor>,
    /// The optimizer and its state.
    pub optimizer: Optimizer,
    /// Steps completed: the next step to run, 0-based.
    pub step: u64,
}

impl TrainState {
    /// The start of a run: `weights` and a fresh optimizer.
    pub fn fresh(weights: BTreeMap<String, Tensor>, optimizer: OptimizerConfig) -> TrainState {
        let optimizer = Optimizer::new(optimizer, &weights);
        TrainState {
            weights,
            optimizer,
            step: 0,
        }
    }

    /// The state a checkpoint (read from `path`) holds, refused (naming the
    /// file and the difference) when it belongs to another model than `model`.
    pub fn resume(ck: Checkpoint, path: &Path, model: &ModelId) -> Result<TrainState, String> {
        ck.check_model(path, model)?;
        let optimizer = ck
            .restore_optimizer()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TrainState {
            weights: ck.weights,
            optimizer,
            step: ck.step,
        })
    }
}

/// A failure of a run (its set-up or the loop), classified for the exit code.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainError {
    /// The user's input: data, flags, a diverging run (exit 2).
    Input(String),
    /// reformc's own failure: the engine, writing a checkpoint (exit 1).
    Internal(String),
}

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainError::Input(m) | TrainError::Internal(m) => f.write_str(m),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The loss of each step run, in order.
    pub losses: Vec<f64>,
    /// The steps (counts completed) at which checkpoints were written.
    pub checkpoints: Vec<u64>,
}

/// Runs steps `state.step .. opts.steps` on `data` with `engine`, writing
/// progress lines to `log` and checkpoints of `model` to `opts.out`.
///
/// A non-finite loss or gradient stops the run with an error naming the
/// step; the checkpoint file then still holds the last good checkpoint.
pub fn train(
    opts: &TrainOptions,
    state: &mut TrainState,
    data: &TokenStream,
    engine: &mut dyn StepFn,
    model: &ModelId,
    log: &mut dyn Write,
) -> Result<Summary, TrainError> {
    check_start(opts, state, data)?;
    let run = RunInfo {
        seed: opts.seed,
        seq_len: opts.seq_len as u64,
        batch: opts.batch as u64,
        grad_accum: opts.grad_accum,
        data_len: data.len() as u64,
    };
    let mut summary = Summary {
        losses: Vec::new(),
        checkpoints: Vec::new(),
    };
    let mut meter = Meter::new();
    let accum = opts.grad_accum.max(1);
    for s in state.step..opts.steps {
        let (loss, grads) = accumulated(opts, s, data, engine, &state.weights)?;
        if let Some(what) = non_finite(loss, &grads) {
            return Err(TrainError::Input(diverged(opts, s + 1, &what, &summary)));
        }
        let norm = state
            .optimizer
            .update(&mut state.weights, &grads, s + 1)
            .map_err(|e| TrainError::Internal(format!("step {}: {e}", s + 1)))?;
        state.step = s + 1;
        summary.losses.push(loss);
        meter.add(loss, norm, accum * (opts.batch * opts.seq_len) as u64);
        let last = state.step == opts.steps;
        if last || (opts.log_every > 0 && state.step.is_multiple_of(opts.log_every)) {
            let line = meter.line(
                state.step,
                opts.steps,
                state.optimizer.config().lr_at(state.step),
            );
            writeln!(log, "{line}").map_err(|e| TrainError::Internal(format!("progress: {e}")))?;
        }
        if last
            || opts
                .checkpoint_every
                .is_some_and(|n| n > 0 && state.step.is_multiple_of(n))
        {
            checkpoint::write(
                &opts.out,
                state.step,
                &run,
                model,
                &state.weights,
                &state.optimizer,
            )
            .map_err(TrainError::Internal)?;
            summary.checkpoints.push(state.step);
        }
    }
    Ok(summary)
}

/// The loss and gradients of optimizer step `s` (0-based): one step of
/// `engine` on its windows, or with gradient accumulation the mean of
/// `opts.grad_accum` micro-steps, micro-step `m` drawing its windows and its
/// hashing and dropout keys as step `s·n + m` would (so n = 1 is the plain
/// step, bit for bit). The gradients are summed in f32 in micro-step order
/// (one f32 copy of the weights' size, as PyTorch accumulates `.grad`), then
/// divided by n in f64; the losses are summed in f64.
fn accumulated(
    opts: &TrainOptions,
    s: u64,
    data: &TokenStream,
    engine: &mut dyn StepFn,
    weights: &BTreeMap<String, Tensor>,
) -> Result<(f64, BTreeMap<String, Tensor>), TrainError> {
    let n = opts.grad_accum.max(1);
    let micro = |engine: &mut dyn StepFn, k: u64| {
        let ids = data.batch(opts.seed, k, opts.batch, opts.seq_len);
        engine
            .step(weights, &ids, k)
            .map_err(|e| TrainError::Internal(format!("step {}: {e}", s + 1)))
    };
    if n == 1 {
        return micro(engine, s);
    }
    let mut loss = 0.0;
    let mut sums: BTreeMap<String, ndarray::ArrayD<f32>> = BTreeMap::new();
    for m in 0..n {
        let (l, grads) = micro(engine, s * n + m)?;
        loss += l;
        for (name, g) in grads {
            let bad = || {
                TrainError::Internal(format!(
                    "step {}: the gradient of `{name}` is not an F32 tensor of one shape",
                    s + 1
                ))
            };
            let Tensor::F32(g) = g else {
                return Err(bad());
            };
            match sums.get_mut(&name) {
                Some(acc) if acc.shape() == g.shape() => *acc += &g,
                Some(_) => return Err(bad()),
                None => {
                    sums.insert(name, g);
                }
            }
        }
    }
    let grads = sums
        .into_iter()
        .map(|(name, sum)| {
            let mean = sum.mapv(|x| (f64::from(x) / n as f64) as f32);
            (name, Tensor::F32(mean))
        })
        .collect();
    Ok((loss / n as f64, grads))
}

/// Refuses a run that cannot start: no window fits the data, empty
/// batches, or a state already at (or past) the last step.
pub fn check_start(
    opts: &TrainOptions,
    state: &TrainState,
    data: &TokenStream,
) -> Result<(), TrainError> {
    data.check_window(opts.seq_len)
        .map_err(|e| TrainError::Input(format!("--data: {e}")))?;
    if opts.batch == 0 {
        return Err(TrainError::Input("--batch must be at least 1".into()));
    }
    if state.step >= opts.steps {
        return Err(TrainError::Input(format!(
            "nothing to do: {} steps are done and --steps is {}",
            state.step, opts.steps
        )));
    }
    Ok(())
}

/// Says why a loss or gradient is unusable: `the loss is NaN`, or the first
/// non-finite gradient element.
fn non_finite(loss: f64, grads: &BTreeMap<String, Tensor>) -> Option<String> {
    if !loss.is_finite() {
        return Some(format!("the loss is {loss}"));
    }
    grads.iter().find_map(|(name, g)| {
        let v = g.to_f64();
        let (i, x) = v.iter().enumerate().find(|(_, x)| !x.is_finite())?;
        Some(format!("the gradient of `{name}` is {x} at flat index {i}"))
    })
}

/// The one-line error of a diverged run, saying what the checkpoint holds.
fn diverged(opts: &TrainOptions, step: u64, what: &str, summary: &Summary) -> String {
    let kept = match summary.checkpoints.last() {
        Some(k) => format!("{} keeps the checkpoint of step {k}", opts.out.display()),
        None => "no checkpoint was written".to_string(),
    };
    format!(
        "step {step}/{}: {what}; training stopped ({kept}; try a lower --lr, more --warmup or --max-grad-norm)",
        opts.steps
    )
}

/// Accumulates the losses and tokens between two progress lines.
struct Meter {
    since: Instant,
    loss_sum: f64,
    norm_sum: f64,
    steps: u64,
    tokens: u64,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            since: Instant::now(),
            loss_sum: 0.0,
            norm_sum: 0.0,
            steps: 0,
            tokens: 0,
        }
    }

    fn add(&mut self, loss: f64, grad_norm: f64, tokens: u64) {
        self.loss_sum += loss;
        self.norm_sum += grad_norm;
        self.steps += 1;
        self.tokens += tokens;
    }

    /// `step 12/100  loss 3.4512  tokens/s 812  peak 143 MiB  grad-norm 1.2345  lr 1.000e-3`:
    /// the mean loss, throughput and gradient norm (before clipping) since
    /// the previous line, and the learning rate of the step; then starts over.
    fn line(&mut self, step: u64, steps: u64, lr: f64) -> String {
        let secs = self.since.elapsed().as_secs_f64().max(1e-9);
        let rate = self.tokens as f64 / secs;
        let n = self.steps.max(1) as f64;
        let (loss, norm) = (self.loss_sum / n, self.norm_sum / n);
        let peak = peak_mib().map_or("?".to_string(), |m| m.to_string());
        *self = Meter::new();
        format!("step {step}/{steps}  loss {loss:.4}  tokens/s {rate:.0}  peak {peak} MiB  grad-norm {norm:.4}  lr {lr:.3e}")
    }
}

/// The process's peak resident memory (VmHWM of /proc/self/status) in MiB.
pub fn peak_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests;
