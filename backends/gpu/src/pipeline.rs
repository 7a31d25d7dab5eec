//! The two pass pipelines of the GPU backend. Between them the kernels that
//! outlining made, one `gpu.module` each, are merged into one
//! ([`crate::merge`]).

use crate::GpuArch;
use std::path::Path;

/// Threads per block along the loop dimension mapped to threads: each
/// parallel loop's first dimension is tiled by this, the tile's points become
/// a block's threads and the tiles the grid.
pub const BLOCK_THREADS: usize = 128;

/// From the MLIR backend's tensor module to buffers: bufferization with
/// buffers freed at the end of the block that owns them (the CPU pipeline
/// also moves each free up to the buffer's last use, with
/// `optimize-allocation-liveness`; not tried here without a GPU). [`crate::copies`]
/// then makes every `memref.copy` a `linalg.generic`.
pub fn buffers() -> String {
    [
        "builtin.module(",
        "func.func(llvm-request-c-wrappers),",
        "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map},",
        "func.func(ownership-based-buffer-deallocation),",
        "canonicalize,",
        "func.func(buffer-deallocation-simplification),",
        "bufferization-lower-deallocations,",
        "canonicalize,",
        "convert-bufferization-to-memref)",
    ]
    .concat()
}

/// Every linalg op a `scf.parallel` over its parallel dimensions (its
/// reduction dimensions `scf.for` loops inside). [`crate::collapse`] then
/// makes each parallel loop one-dimensional.
pub fn loops() -> String {
    ["builtin.module(", "convert-linalg-to-parallel-loops)"].concat()
}

/// From parallel loops to host code launching outlined GPU kernels: each
/// parallel loop tiled by [`BLOCK_THREADS`] and mapped to blocks and threads,
/// then outlined. What does not map (sequential `scf.for`/`scf.while` loops,
/// loops with reduction results, strided copies) stays on the host and reads
/// the same managed buffers.
pub fn kernels() -> String {
    [
        "builtin.module(",
        &format!("func.func(scf-parallel-loop-tiling{{parallel-loop-tile-sizes={BLOCK_THREADS} no-min-max-bounds}}),"),
        "func.func(gpu-map-parallel-loops),",
        "func.func(convert-parallel-loops-to-gpu),",
        "canonicalize,",
        "gpu-kernel-outlining)",
    ]
    .concat()
}

/// From outlined kernels to the LLVM dialect: kernels through NVVM to PTX for
/// `arch` (math functions linked from `libdevice` when given), host code with
/// every `memref.alloc` a call of the runtime's generic allocator (managed
/// memory) and launches as calls of MLIR's GPU runtime interface.
pub fn nvvm(arch: GpuArch, libdevice: Option<&Path>) -> String {
    let link = libdevice.map_or(String::new(), |p| format!(" l={}", p.display()));
    [
        "builtin.module(",
        "convert-scf-to-cf,",
        "convert-func-to-llvm,",
        "expand-strided-metadata,",
        &format!(
            "nvvm-attach-target{{chip={} features={} O=3{link}}},",
            arch.chip(),
            arch.ptx_features()
        ),
        "lower-affine,",
        "convert-arith-to-llvm,",
        "convert-index-to-llvm,",
        "finalize-memref-to-llvm{use-generic-functions},",
        "canonicalize,",
        "cse,",
        "gpu.module(convert-gpu-to-nvvm,canonicalize,cse,reconcile-unrealized-casts),",
        "gpu-to-llvm,",
        "gpu-module-to-binary{format=isa},",
        // After the kernels are compiled: their math went to libdevice.
        "convert-math-to-llvm,",
        "canonicalize,",
        "cse,",
        "reconcile-unrealized-casts)",
    ]
    .concat()
}

/// Whether `path` can stand in a pass option (MLIR's option parser splits on
/// spaces, commas and braces).
pub(crate) fn option_safe(path: &Path) -> bool {
    path.to_str()
        .is_some_and(|s| !s.contains([' ', ',', '{', '}', '"', '\'']))
}

/// The CPU lowering of [`host_check`](crate::host_check)'s module, after
/// [`loops`] and the GPU backend's loop rewrites: the parallel loops run as
/// sequential loops, buffers from the C heap.
pub fn host_loops_to_llvm() -> String {
    [
        "builtin.module(",
        "convert-scf-to-cf,",
        "expand-strided-metadata,",
        "lower-affine,",
        "convert-math-to-libm,",
        // `convert-to-llvm` leaves a `memref.reshape` unconverted.
        "finalize-memref-to-llvm,",
        "convert-to-llvm,",
        "reconcile-unrealized-casts)",
    ]
    .concat()
}
