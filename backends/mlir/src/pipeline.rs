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

/// LLVM's optimisation level for the JIT-compiled code.
const OPT_LEVEL: usize = 3;

/// Where Debian's `libmlir-22-dev` puts the C runner utilities.
/// Each ends in NUL: the C API reads the path as a C string, past the slice's
/// length otherwise.
const RUNNER_UTILS: &[&str] = &[
    "/usr/lib/llvm-22/lib/libmlir_c_runner_utils.so\0",
    "/usr/lib/llvm-22/lib/libmlir_c_runner_utils.so.22.1\0",
];

/// An ExecutionEngine for a module lowered by [`CPU_PIPELINE`]. Strided
/// copies (`memref.copy` of a slice) call `memrefCopy` from MLIR's C runner
/// utilities; they are loaded when MLIR's library directory has them.
pub(crate) fn engine(module: &Module) -> ExecutionEngine {
    let libs: Vec<&str> = RUNNER_UTILS
        .iter()
        .copied()
        .filter(|p| std::path::Path::new(p.trim_end_matches('\0')).exists())
        .take(1)
        .collect();
    ExecutionEngine::new(module, OPT_LEVEL, &libs, false, false)
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
