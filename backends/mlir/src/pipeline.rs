//! The pass pipeline and ExecutionEngine set-up of reformc's own MLIR CPU
//! pipeline ([`crate::jit_run`]), and the freeing of the buffers the compiled
//! `@forward` hands back.

use melior::{ir::Module, ExecutionEngine};

/// The passes of [`CPU_BUFFERIZE`], comma-separated.
macro_rules! bufferize_passes {
    () => {
        concat!(
            "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map},",
            "func.func(ownership-based-buffer-deallocation),",
            "cse,",
            "canonicalize,",
            "func.func(buffer-deallocation-simplification),",
            "bufferization-lower-deallocations,",
            "canonicalize,",
            "convert-bufferization-to-memref,",
            "func.func(optimize-allocation-liveness)"
        )
    };
}

/// The passes of [`CPU_PIPELINE`] after bufferization, comma-separated.
macro_rules! lower_passes {
    () => {
        concat!(lower_to_memref_passes!(), ",", lower_to_llvm_passes!())
    };
}

/// Linalg to loops and memref views to plain memrefs.
macro_rules! lower_to_memref_passes {
    () => {
        concat!(
            "convert-linalg-to-loops,",
            "convert-scf-to-cf,",
            "expand-strided-metadata,",
            "lower-affine"
        )
    };
}

/// Everything left to the LLVM dialect.
macro_rules! lower_to_llvm_passes {
    () => {
        concat!(
            "convert-math-to-libm,",
            // Before `convert-to-llvm`, which leaves a `memref.reshape` (a
            // `linear`'s result back to its rows' shape) unconverted.
            "finalize-memref-to-llvm,",
            "convert-to-llvm,",
            "reconcile-unrealized-casts"
        )
    };
}

/// The lowering from upstream dialects on tensors to the LLVM dialect
/// (DESIGN.md §8, with `math` functions that have no LLVM intrinsic, such as
/// `erf`, becoming libm calls).
///
/// After bufferization, `ownership-based-buffer-deallocation` frees every
/// buffer (each `tensor.empty` is a `memref.alloc`, also once per `scf.for`
/// iteration of a `seq_chunk`) at the end of the block that owns it, and
/// makes every result of the public `@forward` a buffer that the caller owns
/// (a result that would alias an argument or another result is cloned), so
/// that the runner can free it after copying it out
/// (`memref::free_results`). `optimize-allocation-liveness` then moves each
/// free up to just after the buffer's last use: nearly every tensor lives in
/// `@forward`'s one block, so without it every buffer of every layer stayed
/// allocated until the function returned (1.6 GB live at L = 16384 on the
/// bench model, 160 MB with it).
pub const CPU_PIPELINE: &str = concat!(
    "builtin.module(",
    bufferize_passes!(),
    ",",
    lower_passes!(),
    ")"
);

/// The first half of [`CPU_PIPELINE`], up to memrefs: between the two halves
/// reformc's pipeline turns the contractions marked with a `library_call`
/// into calls of the runtime's kernels ([`crate::library_calls`]).
pub const CPU_BUFFERIZE: &str = concat!("builtin.module(", bufferize_passes!(), ")");

/// The second half of the JIT's pipeline: memrefs and linalg to the LLVM
/// dialect, as [`CPU_PIPELINE`] does but with `memref.alloc` and
/// `memref.dealloc` calling MLIR's generic allocation functions, which the
/// JIT binds to the runtime's caching allocator ([`crate::alloc`]).
pub const CPU_LOWER: &str = concat!(
    "builtin.module(",
    lower_to_memref_passes!(),
    ",finalize-memref-to-llvm{use-generic-functions=true},",
    lower_to_llvm_passes!(),
    ")"
);

/// Whether `REFORMC_MLIR_PIPELINE` replaces [`CPU_PIPELINE`] (then the
/// pipeline runs in one piece, without library calls).
pub(crate) fn overridden() -> bool {
    std::env::var_os("REFORMC_MLIR_PIPELINE").is_some()
}

/// The pipeline [`crate::jit_run`] runs: [`CPU_PIPELINE`], or for experiments
/// the text of the environment variable `REFORMC_MLIR_PIPELINE` when set (as
/// `examples/pipeline_bench.rs` uses it to compare pipelines without
/// rebuilding).
pub(crate) fn pipeline() -> String {
    std::env::var("REFORMC_MLIR_PIPELINE").unwrap_or_else(|_| CPU_PIPELINE.to_string())
}

/// The module text the JIT compiles with `pipeline`: `text`, with the
/// transform-dialect script of the file named by `REFORMC_MLIR_TRANSFORMS`
/// appended inside the module when the pipeline interprets transforms (for
/// experiments, like `REFORMC_MLIR_PIPELINE`; the scripts tried are in
/// `examples/pipelines/`, each a private nested module that `symbol-dce`
/// erases after interpretation). The module users get never holds a script.
pub(crate) fn prepare(text: String, pipeline: &str) -> String {
    let script = std::env::var("REFORMC_MLIR_TRANSFORMS")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok());
    match (text.rfind('}'), script) {
        (Some(end), Some(script)) if pipeline.contains("transform-interpreter") => {
            format!("{}{script}{}", &text[..end], &text[end..])
        }
        _ => text,
    }
}

/// Writes `module` to `$REFORMC_MLIR_DUMP/forward.{stage}.mlir` when that
/// variable names a folder (to read what reformc's own pipeline compiles:
/// `input` as emitted, `bufferized` after bufferization and the library
/// calls). A write that fails is reported on stderr and the run goes on.
pub(crate) fn dump(stage: &str, module: &Module) {
    let Some(dir) = std::env::var_os("REFORMC_MLIR_DUMP") else {
        return;
    };
    let path = std::path::Path::new(&dir).join(format!("forward.{stage}.mlir"));
    let text = module.as_operation().to_string();
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!(
            "reformc: REFORMC_MLIR_DUMP: cannot write {}: {e}",
            path.display()
        );
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
///
/// `None` when MLIR could not create the engine (the lowered module does not
/// translate to LLVM IR, e.g. an op a custom pipeline left unlowered): melior
/// hands back a null engine then, which would crash on the first call.
pub(crate) fn engine(module: &Module, pipeline: &str) -> Option<ExecutionEngine> {
    let first = |paths: &[&'static str]| {
        paths
            .iter()
            .copied()
            .find(|p| std::path::Path::new(p.trim_end_matches('\0')).exists())
    };
    let libs: Vec<&str> = first(RUNNER_UTILS).into_iter().collect();
    let engine = new_engine(module, OPT_LEVEL, &libs, false)?;
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
    Some(engine)
}

/// `ExecutionEngine::new`, or `None` where MLIR could not create the engine
/// (the module does not translate to LLVM IR, e.g. an op a pipeline left
/// unlowered): melior hands back a null engine then, whose first use
/// (registering a symbol, a lookup) crashes. `libs` end in NUL.
pub fn new_engine(
    module: &Module,
    opt_level: usize,
    libs: &[&str],
    object_dump: bool,
) -> Option<ExecutionEngine> {
    let engine = ExecutionEngine::new(module, opt_level, libs, object_dump, object_dump);
    // SAFETY: melior 0.27.8 (pinned) wraps exactly one `MlirExecutionEngine`,
    // a pointer (checked by the size assertion below); copying it out only
    // reads it.
    let raw: *const std::ffi::c_void = unsafe { std::mem::transmute_copy(&engine) };
    // Dropping a null engine is a no-op in MLIR's C API (`delete nullptr`).
    (!raw.is_null()).then_some(engine)
}

const _: () = assert!(
    std::mem::size_of::<ExecutionEngine>() == std::mem::size_of::<*const std::ffi::c_void>()
);

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
    /// The C library's `free`, which `memref.dealloc` lowers to (results of
    /// `@forward` are freed with it).
    pub(crate) fn free(ptr: *mut std::ffi::c_void);
}
