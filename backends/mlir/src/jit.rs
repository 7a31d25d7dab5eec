//! reformc's own MLIR CPU pipeline: the emitted module bufferized, lowered to
//! loops and the LLVM dialect by melior's pass manager, and run by MLIR's
//! ExecutionEngine. For now the runner takes and returns `f32` tensors only.

use crate::{emit, scalar, MlirError};
use melior::{
    ir::Module,
    pass::PassManager,
    utility::{parse_pass_pipeline, register_all_llvm_translations, register_all_passes},
    ExecutionEngine,
};
use reformc_ir::{DType, Graph};
use std::sync::{Arc, Mutex, Once};

/// The lowering from upstream dialects on tensors to the LLVM dialect
/// (DESIGN.md §8, with `math` functions that have no LLVM intrinsic, such as
/// `erf`, becoming libm calls).
pub const CPU_PIPELINE: &str = "builtin.module(one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map},convert-linalg-to-loops,convert-scf-to-cf,expand-strided-metadata,lower-affine,convert-math-to-libm,convert-to-llvm,reconcile-unrealized-casts)";

/// Where Debian's `libmlir-22-dev` puts the C runner utilities.
/// Each ends in NUL: the C API reads the path as a C string, past the slice's
/// length otherwise.
const RUNNER_UTILS: &[&str] = &[
    "/usr/lib/llvm-22/lib/libmlir_c_runner_utils.so\0",
    "/usr/lib/llvm-22/lib/libmlir_c_runner_utils.so.22.1\0",
];

/// A dense row-major `f32` tensor passed to or returned by [`jit_run_f32`].
#[derive(Clone, Debug, PartialEq)]
pub struct F32Tensor {
    /// Length of each axis.
    pub shape: Vec<usize>,
    /// The elements in row-major order (`shape.iter().product()` of them).
    pub data: Vec<f32>,
}

/// Compiles `graph` through [`CPU_PIPELINE`] and runs `@forward` on `args`
/// (weights then inputs, in the order of the function's arguments), returning
/// the outputs in graph order. Every argument and output must be `f32`.
///
/// ```
/// use reformc_backend_mlir::{jit_run_f32, F32Tensor};
/// let g = reformc_ir::parse(
///     "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = add %0, %0 : f32[N]\n  output \"y\" = %1\n}\n",
/// )
/// .unwrap();
/// let x = F32Tensor { shape: vec![3], data: vec![1.0, 2.0, 3.0] };
/// let y = jit_run_f32(&g, &[x]).unwrap();
/// assert_eq!(y[0].data, vec![2.0, 4.0, 6.0]);
/// ```
pub fn jit_run_f32(graph: &Graph, args: &[F32Tensor]) -> Result<Vec<F32Tensor>, MlirError> {
    let arg_values: Vec<_> = graph.weights().into_iter().chain(graph.inputs()).collect();
    if arg_values.len() != args.len() {
        return Err(MlirError::NotImplemented(format!(
            "jit_run_f32: {} arguments given, the graph takes {}",
            args.len(),
            arg_values.len()
        )));
    }
    for ((name, v), a) in arg_values.iter().zip(args) {
        let t = graph.ty(*v);
        let n: usize = a.shape.iter().product();
        if t.dtype != DType::F32 || t.rank() != a.shape.len() || n != a.data.len() {
            return Err(MlirError::NotImplemented(format!(
                "jit_run_f32: argument `{name}` must be f32 of rank {} with as many elements as its shape",
                t.rank()
            )));
        }
    }
    let ranks = graph
        .outputs
        .iter()
        .map(|(name, v)| match graph.ty(*v).dtype {
            DType::F32 => Ok(graph.ty(*v).rank()),
            d => Err(MlirError::NotImplemented(format!(
                "jit_run_f32: output `{name}` is {}",
                scalar::elt(d)
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let text = emit::Emitter::new(graph).with_c_interface().module()?;
    let context = crate::context();
    register_all_llvm_translations(&context);
    static PASSES: Once = Once::new();
    // Registering twice double-frees inside MLIR (DESIGN.md §8).
    PASSES.call_once(register_all_passes);
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&messages);
    let handler = context.attach_diagnostic_handler(move |d| {
        if let Ok(mut m) = sink.lock() {
            m.push(d.to_string());
        }
        true
    });
    let diag = |what: &str, e: &dyn std::fmt::Display| {
        let m = messages.lock().map(|m| m.join("; ")).unwrap_or_default();
        MlirError::Verify(format!("{what}: {e} {m}"))
    };
    let mut module = Module::parse(&context, &text).ok_or_else(|| diag("parse", &"failed"))?;
    let pm = PassManager::new(&context);
    parse_pass_pipeline(pm.as_operation_pass_manager(), CPU_PIPELINE)
        .map_err(|e| diag("pipeline", &e))?;
    pm.run(&mut module).map_err(|e| diag("lowering", &e))?;
    // Strided copies (`memref.copy` of a slice) call `memrefCopy` from MLIR's
    // C runner utilities; load them when MLIR's library directory has them.
    let libs: Vec<&str> = RUNNER_UTILS
        .iter()
        .copied()
        .filter(|p| std::path::Path::new(p.trim_end_matches('\0')).exists())
        .take(1)
        .collect();
    let engine = ExecutionEngine::new(&module, 2, &libs, false, false);
    let out = invoke(&engine, args, &ranks).map_err(|e| diag("run", &e));
    context.detach_diagnostic_handler(handler);
    out
}

/// A memref descriptor as the C interface lays it out, all fields 8 bytes:
/// allocated pointer, aligned pointer, offset, sizes, strides.
fn descriptor(t: &F32Tensor) -> Vec<i64> {
    let ptr = t.data.as_ptr() as i64;
    let mut d = vec![ptr, ptr, 0];
    d.extend(t.shape.iter().map(|&s| s as i64));
    let mut strides = vec![1i64; t.shape.len()];
    for i in (0..t.shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * t.shape[i + 1] as i64;
    }
    d.extend(strides);
    d
}

/// Calls `_mlir_ciface_forward(results*, args*...)` (the C API adds the
/// `_mlir_ciface_` prefix) and copies the results out.
fn invoke(
    engine: &ExecutionEngine,
    args: &[F32Tensor],
    ranks: &[usize],
) -> Result<Vec<F32Tensor>, melior::Error> {
    let mut descs: Vec<Vec<i64>> = args.iter().map(descriptor).collect();
    let mut result = vec![0i64; ranks.iter().map(|r| 3 + 2 * r).sum()];
    let mut ptrs: Vec<*mut i64> = std::iter::once(result.as_mut_ptr())
        .chain(descs.iter_mut().map(|d| d.as_mut_ptr()))
        .collect();
    let mut packed: Vec<*mut ()> = ptrs
        .iter_mut()
        .map(|p| p as *mut *mut i64 as *mut ())
        .collect();
    // SAFETY: `_mlir_ciface_forward` takes a pointer to its result struct (the
    // output descriptors, laid out like `result`) and one pointer to each
    // argument's descriptor; `packed` points at those pointers, and every
    // descriptor's data (`args`) outlives the call. The function only reads
    // the arguments' data.
    unsafe { engine.invoke_packed("forward", &mut packed)? };
    let mut out = Vec::new();
    let mut at = 0;
    for &r in ranks {
        let d = &result[at..at + 3 + 2 * r];
        at += 3 + 2 * r;
        out.push(read(d, r));
    }
    Ok(out)
}

/// Copies a strided `f32` memref out of a returned descriptor.
fn read(d: &[i64], rank: usize) -> F32Tensor {
    let base = d[1] as *const f32;
    let offset = d[2] as isize;
    let shape: Vec<usize> = d[3..3 + rank].iter().map(|&s| s as usize).collect();
    let strides = &d[3 + rank..3 + 2 * rank];
    let n: usize = shape.iter().product();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    for _ in 0..n {
        let lin: isize = idx
            .iter()
            .zip(strides)
            .map(|(&i, &s)| i as isize * s as isize)
            .sum();
        // SAFETY: the memref returned by the compiled function holds `shape`
        // elements at `offset + sum(index * stride)` from its aligned pointer;
        // its buffer is never freed (the JIT's malloc'd results leak by design
        // in this test runner, since a result may alias an argument).
        data.push(unsafe { *base.offset(offset + lin) });
        for k in (0..rank).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    F32Tensor { shape, data }
}
