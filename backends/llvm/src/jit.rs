//! In-process execution with MCJIT: the generated module's external calls are
//! mapped to the runtime functions linked into this process (the addresses
//! come from the runtime's `c_abi!` tables).

use crate::error::{BackendError, Result};
use crate::{abi, build_module, target, CompileOptions, Tensors, Variant, WeightsMode};
use inkwell::context::Context;
use inkwell::execution_engine::{ExecutionEngine, JitFunction};
use inkwell::OptimizationLevel;
use ndarray::{ArrayD, IxDyn};
use reformc_exe_runtime::model_rt::{self, ReformcTensor};
use reformc_ir::{DType, Graph, TensorType};
use reformc_tensor::Tensor;
use std::ffi::{c_char, c_void, CStr};
use std::time::{Duration, Instant};

/// The C library functions generated code calls (libm's for activations).
mod libc {
    use std::ffi::c_void;
    extern "C" {
        pub fn aligned_alloc(align: usize, size: usize) -> *mut c_void;
        pub fn free(p: *mut c_void);
        pub fn tanhf(x: f32) -> f32;
        pub fn tanh(x: f64) -> f64;
        pub fn erf(x: f64) -> f64;
        pub fn exp(x: f64) -> f64;
        pub fn log1p(x: f64) -> f64;
    }
}

/// `(name, address)` of each `libc::function`, named by the function.
macro_rules! symbols {
    ($($f:ident),* $(,)?) => {
        vec![$((stringify!($f), libc::$f as *const () as usize)),*]
    };
}

/// Addresses of every external function generated code may call: the
/// runtime's from its `c_abi!` tables (the declarations that also give
/// generated code their signatures), then the C library's (`abi::LIBC`).
fn symbol_table() -> Vec<(&'static str, usize)> {
    let mut table: Vec<(&'static str, usize)> = reformc_exe_runtime::SECTIONS
        .iter()
        .flat_map(|s| s.kernels)
        .map(|k| (k.name, k.address()))
        .collect();
    table.extend(symbols![aligned_alloc, free, tanhf, tanh, erf, exp, log1p]);
    table
}

/// Sets the runtime's worker thread count (0 = all cores).
pub fn set_threads(n: usize) -> Result<()> {
    // SAFETY: rc_set_threads takes a plain integer and is idempotent.
    let rc = unsafe { reformc_runtime::ffi::rc_set_threads(n as i64) };
    if rc != 0 {
        return Err(BackendError::Input(format!(
            "cannot use {n} threads (runtime code {rc})"
        )));
    }
    Ok(())
}

type RunFn = unsafe extern "C" fn(*const ReformcTensor, i64, *mut ReformcTensor, i64) -> i32;
type SetWeightsFn = unsafe extern "C" fn(*const *const c_void, i64) -> i32;

/// A graph compiled in memory, with its weights bound; run it many times.
pub struct JitModel<'ctx> {
    ee: ExecutionEngine<'ctx>,
    run_fn: JitFunction<'ctx, RunFn>,
    inputs: Vec<(String, TensorType)>,
    outputs: Vec<(String, TensorType)>,
    set_weights_fn: JitFunction<'ctx, SetWeightsFn>,
    /// The compiled weights by name and type, in binding order.
    weight_table: Vec<(String, TensorType)>,
    /// Weight data, kept alive while the model may run.
    weights: Vec<Vec<f32>>,
    /// The model's JSON signature.
    pub signature: String,
    /// Time to generate, optimise and JIT-compile the module.
    pub compile_time: Duration,
}

impl<'ctx> JitModel<'ctx> {
    /// Compiles `graph` for the host CPU and binds `weights` (float tensors by
    /// name; f64 ones are rounded to f32 like the interpreter converts them).
    pub fn new(ctx: &'ctx Context, graph: &Graph, weights: &Tensors) -> Result<Self> {
        JitModel::with_options(ctx, graph, weights, &CompileOptions::default())
    }

    /// Like [`JitModel::new`] with explicit options (limits, target CPU, names).
    pub fn with_options(
        ctx: &'ctx Context,
        graph: &Graph,
        weights: &Tensors,
        opts: &CompileOptions,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let variants = [Variant {
            name: "main".into(),
            graph: graph.clone(),
        }];
        let cm = build_module(ctx, &variants, opts, &WeightsMode::Runtime, None)?;
        let tm = target::machine(&opts.target)?;
        target::optimize(&cm.module, &tm)?;
        let ee = cm
            .module
            .create_jit_execution_engine(OptimizationLevel::Aggressive)
            .map_err(|e| BackendError::Llvm(format!("MCJIT: {e}")))?;
        let table = symbol_table();
        for f in cm.module.get_functions() {
            if f.count_basic_blocks() > 0 {
                continue;
            }
            let name = f.get_name().to_string_lossy().into_owned();
            if name.starts_with("llvm.") {
                continue;
            }
            let addr = table
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, a)| *a)
                .ok_or_else(|| {
                    BackendError::Internal(format!("no in-process address for `{name}`"))
                })?;
            ee.add_global_mapping(&f, addr);
        }
        // SAFETY: the generated functions have exactly these C signatures
        // (see codegen::Gen::dispatcher and weight_entries).
        let (run_fn, set_w) = unsafe {
            (
                ee.get_function::<RunFn>("reformc_model_run")
                    .map_err(|e| BackendError::Llvm(format!("reformc_model_run: {e}")))?,
                ee.get_function::<SetWeightsFn>("reformc_model_set_weights")
                    .map_err(|e| BackendError::Llvm(format!("reformc_model_set_weights: {e}")))?,
            )
        };
        let inputs = graph
            .inputs()
            .into_iter()
            .map(|(n, id)| (n.to_string(), graph.ty(id).clone()))
            .collect();
        let outputs = graph
            .outputs
            .iter()
            .map(|(n, id)| (n.clone(), graph.ty(*id).clone()))
            .collect();
        let mut model = JitModel {
            ee,
            run_fn,
            set_weights_fn: set_w,
            weight_table: cm.weights,
            inputs,
            outputs,
            weights: Vec::new(),
            signature: cm.signature,
            compile_time: t0.elapsed(),
        };
        model.set_weights(weights)?;
        Ok(model)
    }

    /// Binds new weight values (by name, float tensors of the compiled
    /// shapes; f64 rounded to f32): a training loop compiles its step once
    /// and rebinds the updated weights before each run.
    pub fn set_weights(&mut self, weights: &Tensors) -> Result<()> {
        let mut data: Vec<Vec<f32>> = Vec::with_capacity(self.weight_table.len());
        for (name, ty) in &self.weight_table {
            data.push(weight_data(name, ty, weights)?);
        }
        let ptrs: Vec<*const c_void> = data.iter().map(|v| v.as_ptr() as *const c_void).collect();
        // SAFETY: `ptrs` holds one f32 array per weight in table order; the
        // arrays move into `self.weights` below (a Vec's heap buffer does not
        // move with it), which the model keeps until the next binding.
        let rc = unsafe { self.set_weights_fn.call(ptrs.as_ptr(), ptrs.len() as i64) };
        self.weights = data;
        if rc != 0 {
            return Err(BackendError::Run {
                code: rc,
                message: last_error(),
            });
        }
        Ok(())
    }

    /// The underlying execution engine.
    pub fn engine(&self) -> &ExecutionEngine<'ctx> {
        &self.ee
    }

    /// Runs the model on named inputs (every graph input must be given).
    pub fn run(&self, inputs: &Tensors) -> Result<Tensors> {
        let mut keep: Vec<Tensor> = Vec::new();
        let mut structs: Vec<ReformcTensor> = Vec::new();
        for (name, _) in &self.inputs {
            let t = inputs
                .get(name)
                .ok_or_else(|| BackendError::Input(format!("no value for input `{name}`")))?;
            if t.shape().len() > abi::MAX_RANK {
                return Err(BackendError::Input(format!(
                    "input `{name}` has rank {} (at most {})",
                    t.shape().len(),
                    abi::MAX_RANK
                )));
            }
            keep.push(standard(t));
        }
        for t in &keep {
            structs.push(describe(t));
        }
        let mut outs: Vec<ReformcTensor> = (0..self.outputs.len())
            .map(|_| ReformcTensor::empty())
            .collect();
        // SAFETY: `structs` describe arrays owned by `keep` (row-major,
        // contiguous), alive for the call; `outs` has one slot per output.
        let rc = unsafe {
            self.run_fn.call(
                structs.as_ptr(),
                structs.len() as i64,
                outs.as_mut_ptr(),
                outs.len() as i64,
            )
        };
        if rc != 0 {
            return Err(BackendError::Run {
                code: rc,
                message: last_error(),
            });
        }
        let mut result = Tensors::new();
        for ((name, _), o) in self.outputs.iter().zip(outs.iter_mut()) {
            let t = take_output(o);
            result.insert(name.clone(), t?);
        }
        Ok(result)
    }
}

/// The f32 data of weight `name`, checked against its compiled type.
fn weight_data(name: &str, ty: &TensorType, weights: &Tensors) -> Result<Vec<f32>> {
    let t = weights
        .get(name)
        .ok_or_else(|| BackendError::Input(format!("no weight named `{name}`")))?;
    let want: Vec<usize> = ty
        .shape
        .iter()
        .map(|d| d.as_const().unwrap_or(0) as usize)
        .collect();
    if t.shape() != want.as_slice() {
        return Err(BackendError::Input(format!(
            "weight `{name}`: expected shape {want:?}, found {:?}",
            t.shape()
        )));
    }
    match t {
        Tensor::F32(a) => Ok(a.iter().copied().collect()),
        Tensor::F64(a) => Ok(a.iter().map(|&x| x as f32).collect()),
        other => Err(BackendError::Input(format!(
            "weight `{name}` is {}, expected a float tensor",
            other.dtype()
        ))),
    }
}

/// The current thread's model error message.
fn last_error() -> String {
    let p = model_rt::rc_model_last_error();
    if p.is_null() {
        return String::new();
    }
    // SAFETY: rc_model_last_error returns a NUL-terminated string owned by
    // the runtime's thread-local storage, valid until the next error call.
    unsafe { CStr::from_ptr(p as *const c_char) }
        .to_string_lossy()
        .into_owned()
}

fn standard(t: &Tensor) -> Tensor {
    match t {
        Tensor::F32(a) => Tensor::F32(a.as_standard_layout().into_owned()),
        Tensor::F64(a) => Tensor::F64(a.as_standard_layout().into_owned()),
        Tensor::I64(a) => Tensor::I64(a.as_standard_layout().into_owned()),
        Tensor::I32(a) => Tensor::I32(a.as_standard_layout().into_owned()),
        Tensor::Bool(a) => Tensor::Bool(a.as_standard_layout().into_owned()),
    }
}

fn describe(t: &Tensor) -> ReformcTensor {
    let mut r = ReformcTensor::empty();
    r.dtype = abi::dtype_code(t.dtype());
    r.rank = t.shape().len() as i32;
    let mut stride = 1i64;
    for (a, &n) in t.shape().iter().enumerate().rev() {
        r.shape[a] = n as i64;
        r.strides[a] = stride;
        stride *= n as i64;
    }
    r.data = match t {
        Tensor::F32(a) => a.as_ptr() as *mut c_void,
        Tensor::F64(a) => a.as_ptr() as *mut c_void,
        Tensor::I64(a) => a.as_ptr() as *mut c_void,
        Tensor::I32(a) => a.as_ptr() as *mut c_void,
        Tensor::Bool(a) => a.as_ptr() as *mut c_void,
    };
    r
}

/// Copies an output into an ndarray and releases the model's buffer.
fn take_output(o: &mut ReformcTensor) -> Result<Tensor> {
    let rank = usize::try_from(o.rank)
        .ok()
        .filter(|r| *r <= abi::MAX_RANK)
        .ok_or_else(|| BackendError::Internal(format!("output rank {}", o.rank)))?;
    let shape: Vec<usize> = o.shape[..rank].iter().map(|&d| d.max(0) as usize).collect();
    let n: usize = shape.iter().product();
    let dtype = abi::dtype_of_code(o.dtype)
        .ok_or_else(|| BackendError::Internal(format!("output dtype code {}", o.dtype)))?;
    if o.data.is_null() && n > 0 {
        return Err(BackendError::Internal("output data is NULL".into()));
    }
    fn copy<T: Copy>(p: *const c_void, n: usize, shape: &[usize]) -> ArrayD<T> {
        let v = if n == 0 {
            Vec::new()
        } else {
            // SAFETY: the model wrote n contiguous elements of T at p.
            unsafe { std::slice::from_raw_parts(p as *const T, n) }.to_vec()
        };
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("element count matches the shape")
    }
    let t = match dtype {
        DType::F32 => Tensor::F32(copy(o.data, n, &shape)),
        DType::F64 => Tensor::F64(copy(o.data, n, &shape)),
        DType::I64 => Tensor::I64(copy(o.data, n, &shape)),
        DType::I32 => Tensor::I32(copy(o.data, n, &shape)),
        DType::Bool => Tensor::Bool(copy::<u8>(o.data, n, &shape).mapv(|b| b != 0)),
    };
    // SAFETY: `o` was filled by reformc_model_run; release frees owned data once.
    unsafe { model_rt::reformc_tensor_release(o) };
    Ok(t)
}

/// Compiles `graph` in memory and runs it once: the LLVM engine of `reformc run`.
///
/// Inputs and weights are named tensors; outputs come back the same way.
pub fn jit_run(graph: &Graph, inputs: &Tensors, weights: &Tensors) -> Result<Tensors> {
    jit_run_with(graph, inputs, weights, &CompileOptions::default()).map(|(out, _)| out)
}

/// [`jit_run`] with options; with `opts.profile`, also the per-op timing
/// table of this run (by op kind, then the slowest ops).
pub fn jit_run_with(
    graph: &Graph,
    inputs: &Tensors,
    weights: &Tensors,
    opts: &CompileOptions,
) -> Result<(Tensors, Option<String>)> {
    let ctx = Context::create();
    if opts.profile {
        // The totals are per process: concurrent profiled runs share them.
        reformc_runtime::profile::reset();
    }
    let model = JitModel::with_options(&ctx, graph, weights, opts)?;
    let out = model.run(inputs)?;
    let table = opts
        .profile
        .then(|| reformc_runtime::profile::report(reformc_runtime::profile::top_from_env()))
        .flatten();
    Ok((out, table))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_external_has_exactly_one_address() {
        let table = super::symbol_table();
        let runtime = reformc_exe_runtime::SECTIONS.iter().flat_map(|s| s.kernels);
        let names: Vec<&str> = runtime
            .map(|k| k.name)
            .chain(crate::abi::LIBC.iter().map(|(n, _, _)| *n))
            .collect();
        for name in &names {
            let n = table.iter().filter(|(t, a)| t == name && *a != 0).count();
            assert_eq!(n, 1, "`{name}`");
        }
        assert_eq!(table.len(), names.len(), "no extra names");
    }
}
