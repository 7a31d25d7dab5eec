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
    /// With [`JitOptions::profile`], the time of each op over all runs as
    /// the runtime's profile table (by op kind, then the slowest ops).
    pub profile: Option<String>,
}

/// Options of [`jit_run_with_weights_opts`].
#[derive(Clone, Copy, Debug, Default)]
pub struct JitOptions {
    /// Time every leaf op (the clock read around it; the calls cost about a
    /// microsecond an op, which the table includes).
    pub profile: bool,
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
    let text = emit::Emitter::new(graph)
        .with_c_interface()
        .for_own_pipeline()
        .module()?;
    let sets = vec![&args[..]; runs.max(1)];
    let (mut outs, times) = run_text(&text, &sets, &result_types(graph), false, None, start)?;
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
    jit_run_with_weights_opts(graph, weights, input_sets, JitOptions::default())
}

/// [`jit_run_with_weights_each`] with options: with `profile`, the returned
/// times hold the per-op table.
///
/// ```
/// use ndarray::arr1;
/// use reformc_backend_mlir::{jit_run_with_weights_opts, JitOptions};
/// use reformc_tensor::Tensor;
/// let g = reformc_ir::parse(
///     "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = exp %0 : f32[N]\n  output \"y\" = %1\n}\n",
/// )
/// .unwrap();
/// let x = Tensor::F32(arr1(&[0.0f32, 1.0]).into_dyn());
/// let opts = JitOptions { profile: true };
/// let (_, times) = jit_run_with_weights_opts(&g, &Default::default(), &[vec![x]], opts).unwrap();
/// assert!(times.profile.unwrap().contains("exp %1"));
/// ```
pub fn jit_run_with_weights_opts(
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
    input_sets: &[Vec<Tensor>],
    opts: JitOptions,
) -> Result<(Vec<Vec<Tensor>>, JitTimes), MlirError> {
    let start = Instant::now();
    let sets = input_sets
        .iter()
        .map(|inputs| checked_args(graph, WeightsMode::Embed, inputs))
        .collect::<Result<Vec<_>, _>>()?;
    let mut emitter = emit::Emitter::new(graph)
        .with_weights(weights)
        .with_c_interface()
        .for_own_pipeline();
    if opts.profile {
        emitter = emitter.with_profile();
    }
    let (text, labels) = emitter.module_profiled()?;
    let labels = opts.profile.then_some(&labels[..]);
    let sets: Vec<&[Tensor]> = sets.iter().map(|s| &s[..]).collect();
    run_text(&text, &sets, &result_types(graph), false, labels, start)
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
    let (mut outs, _) = run_text(
        text,
        &[&args],
        &result_types(graph),
        true,
        None,
        Instant::now(),
    )?;
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
/// compilation is timed from `start`. `labels`: the module is profiled
/// ([`crate::profile`]) with these op labels.
pub(crate) fn run_text(
    text: &str,
    arg_sets: &[&[Tensor]],
    outs: &[(DType, usize)],
    request_wrappers: bool,
    labels: Option<&[String]>,
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
        let run = |module: &mut Module, pipeline: &str| {
            let pm = PassManager::new(&context);
            parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline)
                .map_err(|e| diag("pipeline", &e))?;
            pm.run(module).map_err(|e| diag("lowering", &e))
        };
        if crate::pipeline::overridden() {
            run(&mut module, &pipeline)?;
        } else {
            crate::pipeline::dump("input", &module);
            run(&mut module, crate::pipeline::CPU_BUFFERIZE)?;
            crate::library_calls::rewrite(&context, &mut module)
                .map_err(|e| diag("library calls", &e))?;
            crate::pipeline::dump("bufferized", &module);
            run(&mut module, crate::pipeline::CPU_LOWER)?;
        }
        let engine = crate::pipeline::engine(&module, &pipeline)
            .ok_or_else(|| diag("ExecutionEngine", &"creation failed"))?;
        crate::library_calls::register(&engine);
        crate::alloc::register(&engine);
        if let Some(labels) = labels {
            crate::profile::register(&engine);
            crate::profile::set_labels(labels);
        }
        // The engine generates machine code for the whole module on the
        // first lookup of any of its symbols, linking it against the symbols
        // registered above: looking `@forward` up here counts that in
        // `compile` rather than in the first run.
        if engine.lookup("forward").is_null() {
            return Err(diag("ExecutionEngine", &"no `forward` in the module"));
        }
        let mut times = JitTimes {
            compile: start.elapsed(),
            runs: Vec::new(),
            profile: None,
        };
        let mut results = Vec::with_capacity(arg_sets.len());
        let mut run_all = || {
            for args in arg_sets {
                let t = Instant::now();
                crate::library_calls::take_error();
                results.push(invoke(&engine, args, outs).map_err(|e| diag("run", &e))?);
                if let Some(e) = crate::library_calls::take_error() {
                    return Err(diag("run", &e));
                }
                times.runs.push(t.elapsed());
            }
            Ok(())
        };
        let ran = run_all();
        // The cached blocks go back whether or not every run succeeded.
        crate::alloc::release_cache();
        ran?;
        if labels.is_some() {
            times.profile =
                reformc_runtime::profile::report(reformc_runtime::profile::top_from_env());
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
    // SAFETY: the results of that call, owned by the caller (the pipeline's
    // deallocation makes them so), read once and then released to the
    // allocator they came from (the runtime's cache, or `malloc` under a
    // custom pipeline; `alloc::release` tells which).
    let out = unsafe { crate::memref::read_results(&result, outs) };
    unsafe { crate::memref::free_results(&result, outs, |p| crate::alloc::release(p)) };
    Ok(out)
}
