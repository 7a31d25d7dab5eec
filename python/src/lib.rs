//! `reformc._reformc`: the extension module behind the `reformc` Python
//! package (python/reformc/__init__.py is the thin layer users import).
//!
//! A model is compiled once (`compile`: config and weights read and checked)
//! and run many times; each run releases the GIL while the LLVM JIT (or the
//! interpreter) works. `train` runs `reformc train`'s loop (train.rs).
//! Errors are `reformc.ReformcError` with the CLI's one-line message; pyo3
//! turns a panic into a Python exception, never an abort.

mod engine;
mod error;
mod jit_cache;
mod train;

use engine::{Call, Options};
use error::Error;
use ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use reformc_frontend::lower::LshSource;
use reformc_tensor::Tensor;
use std::path::PathBuf;

pyo3::create_exception!(
    reformc,
    ReformcError,
    PyValueError,
    "A reformc failure: bad input (config, weights, arrays, options) or an engine error; the message is the CLI's."
);

/// Largest sequence length and chunk option, as the CLI's flags allow (2^32).
const MAX_SEQ_LEN: u64 = 1 << 32;
/// Largest `batch` option.
const MAX_BATCH: u64 = 1 << 20;
/// Largest `memory_budget` in bytes (1 EiB).
const MAX_MEMORY_BUDGET: u64 = 1 << 60;
/// Largest `threads` option (the runtime's pool limit).
const MAX_THREADS: usize = 4096;

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        // Text from user files may hold control characters: escaped, the
        // message stays one line, as the CLI prints it.
        ReformcError::new_err(reformc_tensor::shown(&e.message))
    }
}

/// A model compiled for this process: call `run` (or the Python wrapper's
/// `__call__`) with token ids.
#[pyclass(module = "reformc._reformc", frozen)]
pub struct Model {
    inner: engine::Model,
}

/// Reads a config (HF `config.json` or reformc schema, or a folder holding
/// `config.json`) and its weights, checks them, and returns the model.
#[pyfunction]
#[pyo3(signature = (
    path, weights=None, *, seq_len=None, precision="f32", lm_head_bias=false,
    allow_nonfinite_weights=false, interp=false, threads=None, pipeline=None,
    attention=None, kv_chunk=None, batch=None, memory_budget=None, chunk_ff=None,
    chunk_lm_head=None, no_dropout=false, quiet=true, recompute_layers="auto"
))]
#[allow(clippy::too_many_arguments)] // One keyword per CLI flag.
fn compile(
    py: Python<'_>,
    path: PathBuf,
    weights: Option<PathBuf>,
    seq_len: Option<u64>,
    precision: &str,
    lm_head_bias: bool,
    allow_nonfinite_weights: bool,
    interp: bool,
    threads: Option<usize>,
    pipeline: Option<String>,
    attention: Option<String>,
    kv_chunk: Option<u64>,
    batch: Option<u64>,
    memory_budget: Option<u64>,
    chunk_ff: Option<u64>,
    chunk_lm_head: Option<u64>,
    no_dropout: bool,
    quiet: bool,
    recompute_layers: &str,
) -> PyResult<Model> {
    let recompute = recompute_layers.parse().map_err(|_| {
        invalid(
            "recompute_layers",
            recompute_layers,
            &["auto", "none", "all"],
        )
    })?;
    let (f64, bf16) = match precision {
        "f32" => (false, false),
        "f64" => (true, false),
        "bf16" => (false, true),
        other => return Err(invalid("precision", other, &["f32", "f64", "bf16"]).into()),
    };
    if bf16 && interp {
        return Err(Error::input(
            "precision=\"bf16\" runs on the LLVM JIT only (the interpreter computes in f32 or f64); drop interp=True",
        )
        .into());
    }
    if let Some(a) = attention.as_deref() {
        if !["auto", "full", "exact", "lsh"].contains(&a) {
            return Err(invalid("attention", a, &["auto", "full", "exact", "lsh"]).into());
        }
    }
    in_range("seq_len", seq_len, MAX_SEQ_LEN)?;
    in_range("kv_chunk", kv_chunk, MAX_SEQ_LEN)?;
    in_range("chunk_ff", chunk_ff, MAX_SEQ_LEN)?;
    in_range("chunk_lm_head", chunk_lm_head, MAX_SEQ_LEN)?;
    in_range("batch", batch, MAX_BATCH)?;
    in_range("memory_budget", memory_budget, MAX_MEMORY_BUDGET)?;
    if let Some(n) = threads.filter(|&n| n > MAX_THREADS) {
        return Err(Error::input(format!(
            "threads: {n} is not in 0..={MAX_THREADS} (0 = all cores)"
        ))
        .into());
    }
    let opts = Options {
        f64,
        bf16,
        lm_head_bias,
        allow_nonfinite_weights,
        interp,
        threads,
        pipeline,
        attention,
        kv_chunk,
        seq_len,
        batch,
        memory_budget,
        chunk_ff,
        chunk_lm_head,
        no_dropout,
        quiet,
        recompute,
    };
    let (config, weights) = engine::locate(&path, weights.as_deref())?;
    // Reading and checking the weights may take a while: other threads run meanwhile.
    let inner = py.detach(|| engine::Model::load(&config, &weights, opts))?;
    Ok(Model { inner })
}

#[pymethods]
impl Model {
    /// Runs the model on token ids `[B, L]` (any integer dtype); returns the
    /// logits `[B, L, V]` (or the last hidden state of a bare model), float32
    /// (float64 with `precision="f64"`). `attention_mask` `[B, L]` (0 =
    /// padding), `lsh_rotations` `[n_lsh_layers, H, d, r, S/2]` or
    /// `lsh_buckets` `[n_lsh_layers, B, H, r*L_padded]`, and `seed` mean what
    /// `reformc run`'s flags of those names mean.
    #[pyo3(signature = (input_ids, attention_mask=None, lsh_rotations=None, lsh_buckets=None, seed=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        input_ids: &Bound<'py, PyAny>,
        attention_mask: Option<&Bound<'py, PyAny>>,
        lsh_rotations: Option<&Bound<'py, PyAny>>,
        lsh_buckets: Option<&Bound<'py, PyAny>>,
        seed: Option<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let call = call(
            input_ids,
            attention_mask,
            lsh_rotations,
            lsh_buckets,
            seed,
            None,
        )?;
        let (out, _engine) = py.detach(|| self.inner.run(&call))?;
        to_numpy(py, out)
    }

    /// One training step, as `reformc grad`: `(loss, {weight name: gradient})`.
    /// `labels` `[B, L]` default to the token ids; -100 marks an ignored position.
    #[pyo3(signature = (input_ids, labels=None, attention_mask=None, lsh_rotations=None, lsh_buckets=None, seed=None))]
    #[allow(clippy::too_many_arguments)] // The arguments of `__call__`, plus labels.
    fn grad<'py>(
        &self,
        py: Python<'py>,
        input_ids: &Bound<'py, PyAny>,
        labels: Option<&Bound<'py, PyAny>>,
        attention_mask: Option<&Bound<'py, PyAny>>,
        lsh_rotations: Option<&Bound<'py, PyAny>>,
        lsh_buckets: Option<&Bound<'py, PyAny>>,
        seed: Option<i64>,
    ) -> PyResult<(f64, Bound<'py, PyDict>)> {
        let call = call(
            input_ids,
            attention_mask,
            lsh_rotations,
            lsh_buckets,
            seed,
            labels,
        )?;
        let (loss, grads) = py.detach(|| self.inner.grad(&call))?;
        let dict = PyDict::new(py);
        for (name, t) in grads {
            dict.set_item(name, to_numpy(py, t)?)?;
        }
        Ok((loss, dict))
    }

    /// The text `reformc explain` prints: per layer, the attention chosen and
    /// why, chunk sizes, FLOPs and static peak memory (JSON with `json=True`).
    #[pyo3(signature = (seq_len=None, *, threads=0, train=false, json=false))]
    fn explain(
        &self,
        py: Python<'_>,
        seq_len: Option<u64>,
        threads: u64,
        train: bool,
        json: bool,
    ) -> PyResult<String> {
        in_range("seq_len", seq_len, MAX_SEQ_LEN)?;
        if threads > MAX_THREADS as u64 {
            return Err(Error::input(format!(
                "threads: {threads} is not in 0..={MAX_THREADS} (0 = all cores)"
            ))
            .into());
        }
        Ok(py.detach(|| self.inner.explain(seq_len, threads, train, json))?)
    }

    /// The IR `reformc dump` prints, after the pass pipeline: `format` is
    /// `text` or `dot`, `lsh_source` `seeded`, `rotations` or `buckets`,
    /// `train=True` the training step.
    #[pyo3(signature = (*, format="text", lsh_source="seeded", seq_len=None, train=false))]
    fn dump(
        &self,
        py: Python<'_>,
        format: &str,
        lsh_source: &str,
        seq_len: Option<u64>,
        train: bool,
    ) -> PyResult<String> {
        let dot = match format {
            "text" => false,
            "dot" => true,
            other => return Err(invalid("format", other, &["text", "dot"]).into()),
        };
        let source = match lsh_source {
            "seeded" => LshSource::Seeded,
            "rotations" => LshSource::Rotations,
            "buckets" => LshSource::Buckets,
            other => {
                let accepted = ["seeded", "rotations", "buckets"];
                return Err(invalid("lsh_source", other, &accepted).into());
            }
        };
        in_range("seq_len", seq_len, MAX_SEQ_LEN)?;
        Ok(py.detach(|| self.inner.dump(source, seq_len, train, dot))?)
    }

    /// The model's JSON signature (variants and their inputs, outputs,
    /// weights, limits), as `reformc compile --emit lib` writes it and the
    /// compiled code's `reformc_model_signature()` returns it.
    #[getter]
    fn signature(&self, py: Python<'_>) -> PyResult<String> {
        Ok(py.detach(|| self.inner.signature())?)
    }

    /// How many modules the LLVM JIT has compiled for this model: one per
    /// (hashing source, length) it has run at, kept for later calls.
    #[getter]
    fn jit_compilations(&self) -> usize {
        self.inner.jit_compilations()
    }

    /// The config file the model was read from.
    #[getter]
    fn config(&self) -> PathBuf {
        self.inner.config.clone()
    }

    /// The weight file the model was read from.
    #[getter]
    fn weights(&self) -> PathBuf {
        self.inner.weights_path.clone()
    }

    /// `reformc.Model("config.json", weights="model.safetensors")`.
    fn __repr__(&self) -> String {
        format!(
            "reformc.Model({:?}, weights={:?})",
            self.inner.config.display().to_string(),
            self.inner.weights_path.display().to_string()
        )
    }
}

/// Converts a call's arguments (numpy arrays, as the Python layer passes
/// them) to the engine's element types.
fn call(
    input_ids: &Bound<'_, PyAny>,
    attention_mask: Option<&Bound<'_, PyAny>>,
    lsh_rotations: Option<&Bound<'_, PyAny>>,
    lsh_buckets: Option<&Bound<'_, PyAny>>,
    seed: Option<i64>,
    labels: Option<&Bound<'_, PyAny>>,
) -> PyResult<Call> {
    Ok(Call {
        ids: int_array(input_ids, "input_ids", "token ids [B, L]")?,
        mask: attention_mask
            .map(|m| int_array(m, "attention_mask", "attention mask [B, L]"))
            .transpose()?,
        rotations: lsh_rotations
            .map(|r| {
                float_array(
                    r,
                    "lsh_rotations",
                    "LSH rotations [n_lsh_layers, H, d, r, S/2]",
                )
            })
            .transpose()?,
        buckets: lsh_buckets
            .map(|b| {
                int_array(
                    b,
                    "lsh_buckets",
                    "LSH buckets [n_lsh_layers, B, H, r*L_padded]",
                )
            })
            .transpose()?,
        seed: seed.unwrap_or(0),
        labels: labels
            .map(|l| int_array(l, "labels", "labels [B, L]"))
            .transpose()?,
    })
}

/// The numpy array `obj`, or the error naming argument `arg`.
fn untyped<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
    arg: &str,
    what: &str,
) -> PyResult<&'a Bound<'py, PyUntypedArray>> {
    obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj
            .get_type()
            .name()
            .map_or_else(|_| "?".to_string(), |n| n.to_string());
        Error::input(format!(
            "{arg}: {what}: expected a numpy array (or an object with __array__ or __dlpack__), found {ty}"
        ))
        .into()
    })
}

/// Copies array `a` of element type `T` into a C-order `ArrayD<U>`, if
/// `a` has that element type; `None` otherwise. Any strides (C or Fortran
/// order, views) are read in logical order.
fn convert<T, U>(
    a: &Bound<'_, PyUntypedArray>,
    f: impl Fn(T) -> Option<U>,
) -> Option<Option<ArrayD<U>>>
where
    T: numpy::Element + Copy,
{
    let typed = a.cast::<PyArrayDyn<T>>().ok()?;
    let ro = typed.try_readonly().ok()?;
    let view = ro.as_array();
    let data: Option<Vec<U>> = view.iter().map(|&x| f(x)).collect();
    // One element per position of the shape, in logical order: the shape
    // always fits; a failure would read as a value out of range.
    Some(data.and_then(|d| ArrayD::from_shape_vec(IxDyn(view.shape()), d).ok()))
}

/// An integer array of any integer dtype as int64.
fn int_array(obj: &Bound<'_, PyAny>, arg: &str, what: &str) -> PyResult<ArrayD<i64>> {
    let a = untyped(obj, arg, what)?;
    let converted = convert::<i64, i64>(a, Some)
        .or_else(|| convert::<i32, i64>(a, |x| Some(x.into())))
        .or_else(|| convert::<i16, i64>(a, |x| Some(x.into())))
        .or_else(|| convert::<i8, i64>(a, |x| Some(x.into())))
        .or_else(|| convert::<u8, i64>(a, |x| Some(x.into())))
        .or_else(|| convert::<u16, i64>(a, |x| Some(x.into())))
        .or_else(|| convert::<u32, i64>(a, |x| Some(x.into())))
        .or_else(|| convert::<u64, i64>(a, |x| i64::try_from(x).ok()));
    match converted {
        Some(Some(array)) => Ok(array),
        Some(None) => Err(Error::input(format!(
            "{arg}: {what}: a uint64 value does not fit in int64"
        ))
        .into()),
        None => Err(Error::input(format!(
            "{arg}: {what}: expected an integer array (int64, int32, ...), found dtype {}",
            a.dtype()
        ))
        .into()),
    }
}

/// A float array (float32, or float64 rounded to float32).
fn float_array(obj: &Bound<'_, PyAny>, arg: &str, what: &str) -> PyResult<ArrayD<f32>> {
    let a = untyped(obj, arg, what)?;
    let converted = convert::<f32, f32>(a, Some)
        // Rounding is what saving the rotations as float32 .npy would do.
        .or_else(|| convert::<f64, f32>(a, |x| Some(x as f32)));
    match converted {
        Some(Some(array)) => Ok(array),
        _ => Err(Error::input(format!(
            "{arg}: {what}: expected a float32 array, found dtype {}",
            a.dtype()
        ))
        .into()),
    }
}

/// Hands an output to numpy without copying: the array's buffer becomes the
/// numpy array's.
fn to_numpy<'py>(py: Python<'py>, t: Tensor) -> PyResult<Bound<'py, PyAny>> {
    Ok(match t {
        Tensor::F32(a) => a.into_pyarray(py).into_any(),
        Tensor::F64(a) => a.into_pyarray(py).into_any(),
        Tensor::I64(a) => a.into_pyarray(py).into_any(),
        Tensor::I32(a) => a.into_pyarray(py).into_any(),
        Tensor::Bool(a) => a.into_pyarray(py).into_any(),
    })
}

/// The error for a value outside a choice's accepted ones.
fn invalid(arg: &str, value: &str, accepted: &[&str]) -> Error {
    Error::input(format!(
        "{arg}: invalid value '{value}' (possible values: {})",
        accepted.join(", ")
    ))
}

/// Refuses a length or size option outside `1..=max`, as the CLI's flags do.
fn in_range(arg: &str, value: Option<u64>, max: u64) -> PyResult<()> {
    match value {
        Some(v) if v == 0 || v > max => {
            Err(Error::input(format!("{arg}: {v} is not in 1..={max}")).into())
        }
        _ => Ok(()),
    }
}

/// The module: `compile`, `Model`, `train` and `ReformcError`.
#[pymodule]
fn _reformc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    m.add_class::<Model>()?;
    m.add("ReformcError", m.py().get_type::<ReformcError>())?;
    Ok(())
}
