//! reformc's own MLIR CPU pipeline: the emitted module bufferized, lowered to
//! loops and the LLVM dialect by melior's pass manager, and run by MLIR's
//! ExecutionEngine.

use crate::{emit, scalar, MlirError, WeightsMode};
use melior::{
    ir::Module,
    pass::PassManager,
    utility::{parse_pass_pipeline, register_all_llvm_translations},
    ExecutionEngine,
};
use reformc_ir::{DType, Graph};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::time::Instant;

pub use crate::pipeline::CPU_PIPELINE;

/// Compiles `graph` through [`CPU_PIPELINE`] and runs `@forward` on `args`
/// (weights then inputs, in the order of the function's arguments), returning
/// the outputs in graph order. Arguments and outputs may be `f32`, `f64`,
/// `i64`, `i32` or `bool`; each argument must have its argument's dtype and rank.
///
/// ```
/// use ndarray::{arr1, IxDyn};
/// use reformc_tensor::Tensor;
/// let g = reformc_ir::parse(
///     "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = add %0, %0 : f32[N]\n  output \"y\" = %1\n}\n",
/// )
/// .unwrap();
/// let x = Tensor::F32(arr1(&[1.0f32, 2.0, 3.0]).into_dyn());
/// let y = reformc_backend_mlir::jit_run(&g, &[x]).unwrap();
/// assert_eq!(y[0], Tensor::F32(arr1(&[2.0f32, 4.0, 6.0]).into_dyn()));
/// ```
pub fn jit_run(graph: &Graph, args: &[Tensor]) -> Result<Vec<Tensor>, MlirError> {
    jit_run_timed(graph, args, 1).map(|(out, _)| out)
}

/// Times of [`jit_run_timed`]: compilation (emission, pass pipeline,
/// ExecutionEngine), then each call of `@forward` (copying results out
/// included).
#[derive(Clone, Debug)]
pub struct JitTimes {
    /// From the graph to a callable `@forward`.
    pub compile: std::time::Duration,
    /// One per run.
    pub runs: Vec<std::time::Duration>,
}

/// [`jit_run`] that compiles once and runs `runs` (at least one) times,
/// returning the last run's outputs and the times (for benchmarks).
pub fn jit_run_timed(
    graph: &Graph,
    args: &[Tensor],
    runs: usize,
) -> Result<(Vec<Tensor>, JitTimes), MlirError> {
    let start = std::time::Instant::now();
    let args = checked_args(graph, WeightsMode::Args, args)?;
    let text = emit::Emitter::new(graph).with_c_interface().module()?;
    let sets = vec![&args[..]; runs.max(1)];
    let (mut outs, times) = run_text(&text, &sets, &result_types(graph), false, start)?;
    Ok((outs.pop().unwrap_or_default(), times))
}

/// [`jit_run`] with the weights embedded in the module (`--weights-mode
/// embed`): `inputs` are the runtime inputs only, in graph order.
///
/// ```
/// use ndarray::arr1;
/// use reformc_tensor::Tensor;
/// let g = reformc_ir::parse(
///     "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = weight {name=\"w\"} : f32[3]\n  %2 = mul %0, %1 : f32[N]\n  output \"y\" = %2\n}\n",
/// )
/// .unwrap();
/// let mut w = std::collections::BTreeMap::new();
/// w.insert("w".to_string(), Tensor::F32(arr1(&[1.0f32, 2.0, 3.0]).into_dyn()));
/// let x = Tensor::F32(arr1(&[1.0f32, 1.0, 2.0]).into_dyn());
/// let y = reformc_backend_mlir::jit_run_with_weights(&g, &w, &[x]).unwrap();
/// assert_eq!(y[0], Tensor::F32(arr1(&[1.0f32, 2.0, 6.0]).into_dyn()));
/// ```
pub fn jit_run_with_weights(
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, MlirError> {
    jit_run_with_weights_timed(graph, weights, inputs).map(|(o, _)| o)
}

/// [`jit_run_with_weights`] that also returns how long compiling (emission,
/// the pipeline and the ExecutionEngine) and the one run took.
pub fn jit_run_with_weights_timed(
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
    inputs: &[Tensor],
) -> Result<(Vec<Tensor>, JitTimes), MlirError> {
    let (mut outs, times) = jit_run_with_weights_each(graph, weights, &[inputs.to_vec()])?;
    Ok((outs.pop().unwrap_or_default(), times))
}

/// [`jit_run_with_weights`] on several input lists (each may have other
/// batch and length values), compiling the module once: the outputs of each
/// list in order, and the times (one run per list).
pub fn jit_run_with_weights_each(
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
    input_sets: &[Vec<Tensor>],
) -> Result<(Vec<Vec<Tensor>>, JitTimes), MlirError> {
    let start = Instant::now();
    let sets = input_sets
        .iter()
        .map(|inputs| checked_args(graph, WeightsMode::Embed, inputs))
        .collect::<Result<Vec<_>, _>>()?;
    let text = emit::Emitter::new(graph)
        .with_weights(weights)
        .with_c_interface()
        .module()?;
    let sets: Vec<&[Tensor]> = sets.iter().map(|s| &s[..]).collect();
    run_text(&text, &sets, &result_types(graph), false, start)
}

/// Runs a module already emitted for `graph` in `mode` (the text
/// [`crate::emit_module_with_weights`] returned, possibly saved and read
/// back): `args` are the weights then the inputs with `args`, the inputs
/// alone with `embed`. The C interface the engine calls is requested here
/// (`llvm-request-c-wrappers`), so the text needs no `llvm` attribute.
pub fn jit_run_emitted(
    graph: &Graph,
    mode: WeightsMode,
    text: &str,
    args: &[Tensor],
) -> Result<Vec<Tensor>, MlirError> {
    let args = checked_args(graph, mode, args)?;
    let (mut outs, _) = run_text(text, &[&args], &result_types(graph), true, Instant::now())?;
    Ok(outs.pop().unwrap_or_default())
}

/// `args` in standard layout, once checked against the arguments of
/// `@forward` in `mode` (count, dtype and rank of each).
fn checked_args(
    graph: &Graph,
    mode: WeightsMode,
    args: &[Tensor],
) -> Result<Vec<Tensor>, MlirError> {
    let arg_values: Vec<_> = match mode {
        WeightsMode::Args => graph.weights().into_iter().chain(graph.inputs()).collect(),
        WeightsMode::Embed => graph.inputs(),
    };
    if arg_values.len() != args.len() {
        return Err(MlirError::NotImplemented(format!(
            "jit_run: {} arguments given, the graph takes {}",
            args.len(),
            arg_values.len()
        )));
    }
    // Standard layout, so that a descriptor's strides are the row-major ones.
    let args: Vec<Tensor> = args.iter().map(crate::memref::standard).collect();
    for ((name, v), a) in arg_values.iter().zip(&args) {
        let t = graph.ty(*v);
        if t.dtype != a.dtype() || t.rank() != a.shape().len() {
            return Err(MlirError::NotImplemented(format!(
                "jit_run: argument `{name}` must be {} of rank {}, found {} of rank {}",
                scalar::elt(t.dtype),
                t.rank(),
                scalar::elt(a.dtype()),
                a.shape().len()
            )));
        }
    }
    Ok(args)
}

/// Dtype and rank of each result of `@forward`.
fn result_types(graph: &Graph) -> Vec<(DType, usize)> {
    graph
        .outputs
        .iter()
        .map(|(_, v)| (graph.ty(*v).dtype, graph.ty(*v).rank()))
        .collect()
}

/// Lowers module `text` through [`CPU_PIPELINE`] (after
/// `llvm-request-c-wrappers` when `request_wrappers`) once and calls
/// `@forward` on each argument list, returning each call's outputs;
/// compilation is timed from `start`.
fn run_text(
    text: &str,
    arg_sets: &[&[Tensor]],
    outs: &[(DType, usize)],
    request_wrappers: bool,
    start: Instant,
) -> Result<(Vec<Vec<Tensor>>, JitTimes), MlirError> {
    let context = crate::context();
    register_all_llvm_translations(&context);
    crate::register_passes();
    crate::with_diagnostics(&context, false, |said| {
        let diag = |what: &str, e: &dyn std::fmt::Display| {
            MlirError::Verify(format!("{what}: {e} {}", said()))
        };
        let pipeline = crate::pipeline::pipeline();
        let text = crate::pipeline::prepare(text.to_string(), &pipeline);
        let mut module = Module::parse(&context, &text).ok_or_else(|| diag("parse", &"failed"))?;
        if request_wrappers {
            let pm = PassManager::new(&context);
            parse_pass_pipeline(
                pm.as_operation_pass_manager(),
                "builtin.module(func.func(llvm-request-c-wrappers))",
            )
            .map_err(|e| diag("pipeline", &e))?;
            pm.run(&mut module).map_err(|e| diag("c wrappers", &e))?;
        }
        let pm = PassManager::new(&context);
        parse_pass_pipeline(pm.as_operation_pass_manager(), &pipeline)
            .map_err(|e| diag("pipeline", &e))?;
        pm.run(&mut module).map_err(|e| diag("lowering", &e))?;
        let engine = crate::pipeline::engine(&module, &pipeline)
            .ok_or_else(|| diag("ExecutionEngine", &"creation failed"))?;
        let mut times = JitTimes {
            compile: start.elapsed(),
            runs: Vec::new(),
        };
        let mut results = Vec::with_capacity(arg_sets.len());
        for args in arg_sets {
            let t = Instant::now();
            results.push(invoke(&engine, args, outs).map_err(|e| diag("run", &e))?);
            times.runs.push(t.elapsed());
        }
        Ok((results, times))
    })
    .0
}

/// Calls `_mlir_ciface_forward(results*, args*...)` (the C API adds the
/// `_mlir_ciface_` prefix) and copies the results out.
fn invoke(
    engine: &ExecutionEngine,
    args: &[Tensor],
    outs: &[(DType, usize)],
) -> Result<Vec<Tensor>, melior::Error> {
    let mut descs: Vec<Vec<i64>> = args.iter().map(crate::memref::descriptor).collect();
    // SAFETY: the engine's `@forward` takes `args` (standard layout, alive
    // for the call; it only reads them) and returns `outs`.
    let result = unsafe { crate::memref::invoke(engine, &mut descs, outs)? };
    // SAFETY: the results of that call, owned by the caller (CPU_PIPELINE's
    // deallocation makes them so), read once and then freed with `free`,
    // which `memref.alloc` pairs with.
    let out = unsafe { crate::memref::read_results(&result, outs) };
    unsafe { crate::memref::free_results(&result, outs, |p| crate::pipeline::free(p)) };
    Ok(out)
}
