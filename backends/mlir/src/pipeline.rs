//! The pass pipeline and ExecutionEngine set-up of reformc's own MLIR CPU
//! pipeline ([`crate::jit_run`]), and the freeing of the buffers the compiled
//! `@forward` hands back.

use melior::{ir::Module, ExecutionEngine};

/// The lowering from upstream dialects on tensors to the LLVM dialect
/// (DESIGN.md §8, with `math` functions that have no LLVM intrinsic, such as
/// `erf`, becoming libm calls).
///
/// After bufferization, `ownership-based-buffer-deallocation` frees every
/// buffer at its last use (each `tensor.empty` is a `memref.alloc`, also once
/// per `scf.for` iteration of a `seq_chunk`), and makes every result of the
/// public `@forward` a buffer that the caller owns (a result that would alias
/// an argument or another result is cloned), so that the runner can free it
/// after copying it out ([`free_results`]).
pub const CPU_PIPELINE: &str = concat!(
    "builtin.module(",
    "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map},",
    "func.func(ownership-based-buffer-deallocation),",
    "canonicalize,",
    "func.func(buffer-deallocation-simplification),",
    "bufferization-lower-deallocations,",
    "canonicalize,",
    "convert-bufferization-to-memref,",
    "convert-linalg-to-loops,",
    "convert-scf-to-cf,",
    "expand-strided-metadata,",
    "lower-affine,",
    "convert-math-to-libm,",
    "convert-to-llvm,",
    "reconcile-unrealized-casts)"
);

/// The pipeline [`crate::jit_run`] runs: [`CPU_PIPELINE`], or for experiments
/// the text of the environment variable `REFORMC_MLIR_PIPELINE` when set (as
/// `examples/pipeline_bench.rs` uses it to compare pipelines without
/// rebuilding).
pub(crate) fn pipeline() -> String {
    std::env::var("REFORMC_MLIR_PIPELINE").unwrap_or_else(|_| CPU_PIPELINE.to_string())
}

/// A transform-dialect script that [`prepare`] appends to the module the JIT
/// compiles (never to the module users get): every contraction generic whose
/// loops are (batch, m, reduction k, n), as `linear` emits them, is tiled by
/// 8 rows of m and its loops interchanged to (batch, k, m, n), so that each
/// row of the right operand is read once per 8 output rows from the L1 cache
/// instead of once per row. The script is a private nested module, erased
/// after interpretation by `symbol-dce`.
const TRANSFORMS: &str = r#"
  module @reformc_transforms attributes {sym_visibility = "private", transform.with_named_sequence} {
    transform.named_sequence @match_c4(%op: !transform.any_op {transform.readonly}) -> !transform.any_op {
      %0 = transform.match.structured failures(propagate) %op : (!transform.any_op) -> !transform.any_op {
      ^bb0(%s: !transform.any_op):
        %r = transform.match.structured.rank %s : (!transform.any_op) -> !transform.param<i64>
        %c = transform.param.constant 4 : i64 -> !transform.param<i64>
        transform.match.param.cmpi eq %r, %c : !transform.param<i64>
        transform.match.structured.dim %s[2] {reduction} : !transform.any_op
        transform.match.structured.dim %s[0, 1, 3] {parallel} : !transform.any_op
        transform.match.structured.body %s {contraction = ["arith.mulf", "arith.addf"]} : !transform.any_op
        transform.match.structured.yield %s : !transform.any_op
      }
      transform.yield %0 : !transform.any_op
    }
    transform.named_sequence @tile_c4(%op: !transform.any_op {transform.consumed}) {
      %t, %l0, %l1 = transform.structured.tile_using_for %op tile_sizes [1, 8] : (!transform.any_op) -> (!transform.any_op, !transform.any_op, !transform.any_op)
      %i = transform.structured.interchange %t iterator_interchange = [0, 2, 1, 3] : (!transform.any_op) -> !transform.any_op
      transform.yield
    }
    transform.named_sequence @__transform_main(%root: !transform.any_op {transform.consumed}) {
      %r = transform.foreach_match in %root @match_c4 -> @tile_c4 : (!transform.any_op) -> !transform.any_op
      transform.yield
    }
  }
"#;

/// The module text the JIT compiles with `pipeline`: `text` with
/// [`TRANSFORMS`] appended inside it when the pipeline interprets transforms.
pub(crate) fn prepare(text: String, pipeline: &str) -> String {
    match text.rfind('}') {
        Some(end) if pipeline.contains("transform-interpreter") => {
            format!("{}{TRANSFORMS}{}", &text[..end], &text[end..])
        }
        _ => text,
    }
}

/// LLVM's optimisation level for the JIT-compiled code.
const OPT_LEVEL: usize = 3;

/// Where Debian's `libmlir-22-dev` puts the C runner utilities.
/// Each ends in NUL: the C API reads the path as a C string, past the slice's
/// length otherwise.
const RUNNER_UTILS: &[&str] = &[
    "/usr/lib/llvm-22/lib/libmlir_c_runner_utils.so\0",
    "/usr/lib/llvm-22/lib/libmlir_c_runner_utils.so.22.1\0",
];

/// MLIR's async runtime (thread pool, tokens, groups), which `async` ops
/// lowered to the LLVM dialect call.
const ASYNC_RUNTIME: &[&str] = &[
    "/usr/lib/llvm-22/lib/libmlir_async_runtime.so\0",
    "/usr/lib/llvm-22/lib/libmlir_async_runtime.so.22.1\0",
];

/// An ExecutionEngine for a module lowered by [`CPU_PIPELINE`]. Strided
/// copies (`memref.copy` of a slice) call `memrefCopy` from MLIR's C runner
/// utilities; they are loaded when MLIR's library directory has them.
pub(crate) fn engine(module: &Module, pipeline: &str) -> ExecutionEngine {
    let first = |paths: &[&'static str]| {
        paths
            .iter()
            .copied()
            .find(|p| std::path::Path::new(p.trim_end_matches('\0')).exists())
    };
    let libs: Vec<&str> = first(RUNNER_UTILS).into_iter().collect();
    let engine = ExecutionEngine::new(module, OPT_LEVEL, &libs, false, false);
    if pipeline.contains("async") {
        if let Some(handle) = first(ASYNC_RUNTIME).and_then(async_runtime) {
            for name in ASYNC_SYMBOLS {
                // SAFETY: `handle` is a library that stays loaded; `name` ends
                // in NUL.
                let f = unsafe { dlsym(handle as *mut _, name.as_ptr().cast()) };
                if !f.is_null() {
                    // SAFETY: the symbol is the runtime's function of that
                    // name, which the lowered async ops call with its C
                    // signature.
                    unsafe { engine.register_symbol(name.trim_end_matches('\0'), f.cast()) };
                }
            }
        }
    }
    engine
}

/// The functions of MLIR's async runtime that lowered `async` ops call.
const ASYNC_SYMBOLS: &[&str] = &[
    "mlirAsyncRuntimeAddRef\0",
    "mlirAsyncRuntimeDropRef\0",
    "mlirAsyncRuntimeCreateToken\0",
    "mlirAsyncRuntimeCreateValue\0",
    "mlirAsyncRuntimeCreateGroup\0",
    "mlirAsyncRuntimeEmplaceToken\0",
    "mlirAsyncRuntimeEmplaceValue\0",
    "mlirAsyncRuntimeSetTokenError\0",
    "mlirAsyncRuntimeSetValueError\0",
    "mlirAsyncRuntimeIsTokenError\0",
    "mlirAsyncRuntimeIsValueError\0",
    "mlirAsyncRuntimeIsGroupError\0",
    "mlirAsyncRuntimeAwaitToken\0",
    "mlirAsyncRuntimeAwaitValue\0",
    "mlirAsyncRuntimeAwaitAllInGroup\0",
    "mlirAsyncRuntimeExecute\0",
    "mlirAsyncRuntimeGetValueStorage\0",
    "mlirAsyncRuntimeAddTokenToGroup\0",
    "mlirAsyncRuntimeAwaitTokenAndExecute\0",
    "mlirAsyncRuntimeAwaitValueAndExecute\0",
    "mlirAsyncRuntimeAwaitAllInGroupAndExecute\0",
    // Spelled so in MLIR's runtime.
    "mlirAsyncRuntimGetNumWorkerThreads\0",
    "mlirAsyncRuntimePrintCurrentThreadId\0",
];

extern "C" {
    fn dlopen(file: *const std::ffi::c_char, mode: i32) -> *mut std::ffi::c_void;
    fn dlsym(handle: *mut std::ffi::c_void, name: *const std::ffi::c_char)
        -> *mut std::ffi::c_void;
}

/// MLIR's async runtime, loaded once for the process and never unloaded, as
/// an address. Not through the ExecutionEngine's shared libraries: each
/// engine's destruction calls the library's `__mlir_execution_engine_destroy`,
/// which resets the runtime's default instance, and the next engine's first
/// `async` op then dereferences null.
fn async_runtime(path: &'static str) -> Option<usize> {
    static HANDLE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // RTLD_NOW.
    // SAFETY: `path` ends in NUL.
    let h = *HANDLE.get_or_init(|| unsafe { dlopen(path.as_ptr().cast(), 2) } as usize);
    (h != 0).then_some(h)
}

extern "C" {
    /// The C library's `free`, which `memref.dealloc` lowers to.
    fn free(ptr: *mut std::ffi::c_void);
}

/// Frees the buffers of the result descriptors of one call of `@forward`
/// (each `[allocated, aligned, offset, sizes.., strides..]`), once per
/// distinct allocated pointer.
///
/// # Safety
/// Every descriptor must come from a call of a function lowered by
/// [`CPU_PIPELINE`], whose results the caller owns (allocated by `malloc`),
/// and must not be read afterwards.
pub(crate) unsafe fn free_results(descs: &[&[i64]]) {
    let mut seen: Vec<i64> = Vec::new();
    for d in descs {
        let p = d[0];
        if p != 0 && !seen.contains(&p) {
            seen.push(p);
            // SAFETY: see the function's contract.
            unsafe { free(p as *mut std::ffi::c_void) };
        }
    }
}
