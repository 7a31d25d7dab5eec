//! `reformc.train`: `reformc train` in this process, over the same set-up
//! (`reformc_train::setup`) and loop (`reformc_train::run`), so that a run
//! gives the losses and checkpoints the CLI gives for the same settings.
//!
//! The loop runs with the GIL released; each progress line takes it back
//! to call the `log` function (or `print`), and every step checks for
//! signals first, so Ctrl-C stops the run with `KeyboardInterrupt` between
//! steps (the checkpoint file keeps the last checkpoint written).

use crate::engine::{self, Tensors};
use crate::error::{Error, Result};
use crate::MAX_THREADS;
use numpy::IntoPyArray;
use pyo3::exceptions::PyUserWarning;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use reformc_frontend::spec::ModelSpec;
use reformc_frontend::weights::{expected_tensors, WeightFile};
use reformc_tensor::Tensor;
use reformc_train::checkpoint::{self, ModelId};
use reformc_train::data::TokenStream;
use reformc_train::grad::StepMemory;
use reformc_train::optim::Decay;
use reformc_train::run::{check_start, train as train_loop, TrainError, TrainState};
use reformc_train::setup::{self, Naming, RunSettings};
use reformc_train::StepFn;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Trains a model on a token stream, as `reformc train`; returns
/// `{"losses", "checkpoints", "step", "out"}`.
#[pyfunction]
#[pyo3(signature = (
    model, data, *, steps, seq_len, out, weights=None, batch=1, grad_accum=1, optimizer=None,
    lr=None, warmup=None, weight_decay=None, seed=None, checkpoint_every=None,
    log_every=1, resume=None, interp=false, threads=0, dropout=true,
    lm_head_bias=false, log=None, memory_budget=None, recompute_layers="auto",
    chunk_ff=None, chunk_lm_head=None, precision="f32", lr_decay=None,
    decay_steps=None, max_grad_norm=None
))]
#[allow(clippy::too_many_arguments)] // One keyword per flag of `reformc train`.
pub fn train<'py>(
    py: Python<'py>,
    model: PathBuf,
    data: &Bound<'py, PyAny>,
    steps: u64,
    seq_len: u64,
    out: PathBuf,
    weights: Option<PathBuf>,
    batch: u64,
    grad_accum: u64,
    optimizer: Option<String>,
    lr: Option<f64>,
    warmup: Option<u64>,
    weight_decay: Option<f64>,
    seed: Option<u64>,
    checkpoint_every: Option<u64>,
    log_every: u64,
    resume: Option<PathBuf>,
    interp: bool,
    threads: usize,
    dropout: bool,
    lm_head_bias: bool,
    log: Option<Py<PyAny>>,
    memory_budget: Option<u64>,
    recompute_layers: &str,
    chunk_ff: Option<u64>,
    chunk_lm_head: Option<u64>,
    precision: &str,
    lr_decay: Option<&str>,
    decay_steps: Option<u64>,
    max_grad_norm: Option<f64>,
) -> PyResult<Bound<'py, PyDict>> {
    let lr_decay = match lr_decay {
        None => None,
        Some(d) => Some(
            Decay::parse(d)
                .ok_or_else(|| crate::invalid("lr_decay", d, &["constant", "linear", "cosine"]))?,
        ),
    };
    let bf16 = match precision {
        "f32" => false,
        "bf16" => true,
        other => return Err(crate::invalid("precision", other, &["f32", "bf16"]).into()),
    };
    if memory_budget == Some(0) {
        return Err(Error::input("memory_budget must be at least 1 (bytes)").into());
    }
    for (name, v) in [("chunk_ff", chunk_ff), ("chunk_lm_head", chunk_lm_head)] {
        if v == Some(0) {
            return Err(Error::input(format!("{name} must be at least 1 (positions)")).into());
        }
    }
    let recompute = recompute_layers
        .parse()
        .map_err(|e| Error::input(format!("recompute_layers: {e}")))?;
    if threads > MAX_THREADS {
        return Err(Error::input(format!(
            "threads: {threads} is not in 0..={MAX_THREADS} (0 = all cores)"
        ))
        .into());
    }
    let job = Job {
        settings: RunSettings {
            steps,
            seq_len,
            batch,
            grad_accum,
            optimizer,
            lr,
            warmup,
            weight_decay,
            lr_decay,
            decay_steps,
            max_grad_norm,
            seed,
            checkpoint_every,
            log_every,
            out,
            weights,
            resume,
            interp,
            threads,
            bf16,
            memory: StepMemory {
                budget: memory_budget,
                recompute,
                chunk_ff,
                chunk_lm_head,
            },
            naming: Naming::Keywords,
        },
        model,
        data: tokens_arg(data)?,
        dropout,
        lm_head_bias,
        log: match log {
            Some(f) => f,
            None => py.import("builtins")?.getattr("print")?.unbind(),
        },
    };
    // Reading the weights, compiling the step and the steps themselves take
    // a while: other threads run meanwhile.
    let done = py.detach(move || run(job))?;
    done.into_dict(py)
}

/// Where the tokens come from.
enum Tokens {
    /// A `.npy` file.
    File(PathBuf),
    /// Ids already in memory.
    Ids(Vec<i64>),
}

/// `data`: a path (str or os.PathLike), else a 1-D integer array.
fn tokens_arg(data: &Bound<'_, PyAny>) -> PyResult<Tokens> {
    if let Ok(path) = data.extract::<PathBuf>() {
        return Ok(Tokens::File(path));
    }
    let what = "token ids [N]";
    let ids = crate::int_array(data, "data", what)?;
    engine::rank("data", what, ids.shape(), 1)?;
    Ok(Tokens::Ids(ids.iter().copied().collect()))
}

/// Everything a run needs, without the GIL.
struct Job {
    settings: RunSettings,
    model: PathBuf,
    data: Tokens,
    dropout: bool,
    lm_head_bias: bool,
    /// Called with each progress line.
    log: Py<PyAny>,
}

/// What a run did.
struct Done {
    losses: Vec<f64>,
    checkpoints: Vec<u64>,
    step: u64,
    out: PathBuf,
}

impl Done {
    /// The dict `reformc.train` returns.
    fn into_dict(self, py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("losses", self.losses.into_pyarray(py))?;
        d.set_item("checkpoints", self.checkpoints)?;
        d.set_item("step", self.step)?;
        d.set_item("out", self.out.display().to_string())?;
        Ok(d)
    }
}

/// The run, as `reformc train` makes it: every refusal before the step is built.
fn run(mut job: Job) -> PyResult<Done> {
    let (config, layout) = locate(&job.model, &mut job.settings)?;
    let s = &job.settings;
    check_out(s, &config, &job.data)?;
    setup::check(s).map_err(Error::input)?;
    let (spec, file, warnings) = engine::read_spec(&config, layout.as_deref(), job.lm_head_bias)?;
    warn(&warnings)?;
    let train_spec = spec
        .for_training(!job.dropout)
        .map_err(|e| Error::input(format!("{}: {e}", config.display())))?;
    let head_source = layout.as_deref().unwrap_or(&config);
    setup::require_lm_head(&train_spec, head_source, "train").map_err(Error::input)?;
    train_spec
        .check_length(s.seq_len)
        .map_err(|e| Error::input(format!("seq_len: {e}")))?;
    let data = read_tokens(job.data, spec.vocab_size, s.seq_len)?;
    let model_id = setup::model_identity(&spec);
    let (mut state, seed) = match &s.resume {
        Some(path) => resumed(s, path, &model_id, data.len())?,
        None => fresh(s, &train_spec, file.as_ref())?,
    };
    let opts = setup::options(s, seed);
    check_start(&opts, &state, &data).map_err(train_error)?;
    let ctx = reformc_backend_llvm::Context::create();
    let (mut step, compiled) =
        setup::engine(&train_spec, s, seed, &ctx, &state.weights).map_err(train_error)?;
    let mut log = PyLog::new(job.log, s.log_every == 0);
    for note in step.memory_notes() {
        log.emit(format!("reformc: {note}"))
            .map_err(|_| log.take_error())?;
    }
    if let Some(t) = compiled {
        let line = format!(
            "reformc: training step compiled by the LLVM JIT in {:.1} s",
            t.as_secs_f64()
        );
        log.emit(line).map_err(|_| log.take_error())?;
    }
    let mut watched = Watched {
        step: &mut step,
        interrupt: None,
    };
    let result = train_loop(&opts, &mut state, &data, &mut watched, &model_id, &mut log);
    // Ctrl-C, or an exception of the log function, ends the loop with a
    // placeholder error: the Python exception is the one to raise.
    if let Some(e) = watched.interrupt.take().or_else(|| log.error.take()) {
        return Err(e);
    }
    let summary = result.map_err(train_error)?;
    Ok(Done {
        losses: summary.losses,
        checkpoints: summary.checkpoints,
        step: state.step,
        out: s.out.clone(),
    })
}

/// The config and the file whose layout the model follows (the checkpoint
/// on a resume, else the weights). A fresh run needs weights: the model
/// folder's, or `weights=`; they become `settings.weights`.
fn locate(model: &Path, s: &mut RunSettings) -> Result<(PathBuf, Option<PathBuf>)> {
    if let Some(ck) = &s.resume {
        let (config, _) = reformc_frontend::checkpoint::model_paths(model, None)?;
        return Ok((config, Some(ck.clone())));
    }
    let (config, weights) = engine::locate(model, s.weights.as_deref())?;
    s.weights = Some(weights.clone());
    Ok((config, Some(weights)))
}

/// Refuses an `out` that cannot be written or is one of the inputs.
fn check_out(s: &RunSettings, config: &Path, data: &Tokens) -> Result<()> {
    let mut inputs: Vec<(&str, &Path)> = vec![("the config", config)];
    if let Tokens::File(p) = data {
        inputs.push(("data", p));
    }
    if let Some(w) = &s.weights {
        inputs.push(("weights", w));
    }
    setup::check_out(s, &inputs).map_err(Error::input)
}

/// The token stream, checked against the vocabulary and the window length.
fn read_tokens(data: Tokens, vocab: u64, seq_len: u64) -> Result<TokenStream> {
    let (stream, name) = match data {
        Tokens::File(p) => (
            TokenStream::read_as(&p, vocab, "data"),
            format!("{}: data", p.display()),
        ),
        Tokens::Ids(ids) => (
            TokenStream::new(ids, vocab).map_err(|e| format!("data: {e}")),
            "data".to_string(),
        ),
    };
    let stream = stream.map_err(Error::input)?;
    stream
        .check_window(seq_len as usize)
        .map_err(|e| Error::input(format!("{name}: {e}")))?;
    Ok(stream)
}

/// A new run from `settings.weights` (checked against the model, finite).
fn fresh(
    s: &RunSettings,
    spec: &ModelSpec,
    file: Option<&WeightFile>,
) -> Result<(TrainState, u64)> {
    let (Some(file), Some(path)) = (file, &s.weights) else {
        return Err(Error::internal("the weight file was not opened"));
    };
    let (expected, extra) = expected_tensors(spec);
    let weights = engine::load_expected(file, expected, &extra)?;
    check_finite(&weights, path)?;
    Ok(setup::fresh(s, weights))
}

/// Refuses a NaN or infinite initial weight: every loss would be NaN.
fn check_finite(weights: &Tensors, path: &Path) -> Result<()> {
    match weights
        .iter()
        .find_map(|(name, t)| engine::nonfinite(name, t, path))
    {
        Some(m) => Err(Error::input(format!(
            "{m}: training needs finite initial weights"
        ))),
        None => Ok(()),
    }
}

/// The run checkpoint `path` holds, continued with the settings; each
/// setting that differs from the checkpoint's run is a Python warning.
fn resumed(
    s: &RunSettings,
    path: &Path,
    model_id: &ModelId,
    data_len: usize,
) -> PyResult<(TrainState, u64)> {
    let ck = checkpoint::read(path).map_err(Error::input)?;
    warn(&setup::unread_weights(s).into_iter().collect::<Vec<_>>())?;
    let r = setup::resume(s, ck, path, model_id, data_len).map_err(train_error)?;
    warn(&r.warnings)?;
    let seed = r.seed;
    Ok((r.into_state(model_id).map_err(train_error)?, seed))
}

/// Issues each of `lines` as a `UserWarning` (an error where the warning
/// filters say so).
fn warn(lines: &[String]) -> PyResult<()> {
    if lines.is_empty() {
        return Ok(());
    }
    Python::attach(|py| {
        let category = py.get_type::<PyUserWarning>();
        for line in lines {
            // A message with a NUL byte (from a file name) loses it.
            let text = CString::new(line.replace('\0', "")).unwrap_or_default();
            PyErr::warn(py, &category, &text, 1)?;
        }
        Ok(())
    })
}

/// A failure of the set-up or the loop as `ReformcError`.
fn train_error(e: TrainError) -> Error {
    match e {
        TrainError::Input(m) => Error::input(m),
        TrainError::Internal(m) => Error::internal(m),
    }
}

/// The loop's progress writer: each complete line goes to the Python
/// function (unless `silent`), with the GIL taken for the call only.
struct PyLog {
    target: Py<PyAny>,
    silent: bool,
    line: Vec<u8>,
    /// The exception that stopped the run (Ctrl-C, or the function's own).
    error: Option<PyErr>,
}

impl PyLog {
    fn new(target: Py<PyAny>, silent: bool) -> PyLog {
        PyLog {
            target,
            silent,
            line: Vec::new(),
            error: None,
        }
    }

    /// Calls the function with `line` after checking for signals; an
    /// exception is kept for the caller to raise.
    fn emit(&mut self, line: String) -> std::io::Result<()> {
        let result = Python::attach(|py| {
            py.check_signals()?;
            if !self.silent {
                self.target.call1(py, (line,))?;
            }
            Ok::<(), PyErr>(())
        });
        result.map_err(|e| {
            self.error = Some(e);
            std::io::Error::other("stopped by a Python exception")
        })
    }

    /// The exception [`PyLog::emit`] kept.
    fn take_error(&mut self) -> PyErr {
        self.error
            .take()
            .unwrap_or_else(|| Error::internal("progress: the log function failed").into())
    }
}

impl Write for PyLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
                self.emit(line)?;
            } else {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The step engine, checking for signals (Ctrl-C) before each step:
/// progress lines may be rare, steps are not.
struct Watched<'a, S> {
    step: &'a mut S,
    interrupt: Option<PyErr>,
}

impl<S: StepFn> StepFn for Watched<'_, S> {
    fn step(
        &mut self,
        weights: &BTreeMap<String, Tensor>,
        ids: &Tensor,
        step: u64,
    ) -> std::result::Result<(f64, BTreeMap<String, Tensor>), String> {
        if let Err(e) = Python::attach(|py| py.check_signals()) {
            self.interrupt = Some(e);
            return Err("interrupted".into());
        }
        self.step.step(weights, ids, step)
    }
}
