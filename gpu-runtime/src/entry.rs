//! The C entry points that lowered host code calls: MLIR's GPU runtime
//! interface (the `mgpu*` functions `gpu-to-llvm` emits calls to), the generic
//! allocation functions and `memrefCopy`. None of them unwinds: a failure is
//! latched ([`crate::take_error`]) and the caller checks after the run.

use crate::state::{alloc_managed, failed, free_managed, latch, ready};
use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

/// A kernel module whose image is loaded on first use: MLIR loads modules from
/// global constructors, which run before the program selects its device.
struct LazyModule {
    image: *const c_void,
    /// The `CUmodule`, as an address, or why it did not load.
    loaded: OnceLock<Result<usize, String>>,
}

impl LazyModule {
    fn get(&self) -> Result<usize, String> {
        self.loaded
            .get_or_init(|| {
                let d = ready().map_err(|e| e.to_string())?;
                let mut m = std::ptr::null_mut();
                // SAFETY: `image` is the NUL-terminated PTX (or a cubin) the
                // lowered module embeds as a constant global; it outlives the
                // module.
                let code = unsafe { (d.cuModuleLoadData)(&mut m, self.image) };
                d.check(code, "loading the kernels (cuModuleLoadData; a PTX the device's driver cannot compile, e.g. built for a newer --gpu-arch)")
                    .map_err(|e| e.to_string())?;
                Ok(m as usize)
            })
            .clone()
    }
}

/// Registers a kernel image; loading waits for its first kernel lookup.
#[no_mangle]
pub extern "C" fn mgpuModuleLoadJIT(data: *const c_void, _opt_level: i32) -> *mut c_void {
    Box::into_raw(Box::new(LazyModule {
        image: data,
        loaded: OnceLock::new(),
    }))
    .cast()
}

/// [`mgpuModuleLoadJIT`] for a binary image (cubin or fatbin).
#[no_mangle]
pub extern "C" fn mgpuModuleLoad(data: *const c_void, _size: u64) -> *mut c_void {
    mgpuModuleLoadJIT(data, 0)
}

/// Unloads a module registered by [`mgpuModuleLoadJIT`].
#[no_mangle]
pub extern "C" fn mgpuModuleUnload(module: *mut c_void) {
    if module.is_null() {
        return;
    }
    // SAFETY: `module` came from `Box::into_raw` in `mgpuModuleLoadJIT` and
    // is unloaded once (from the module's global destructor).
    let m = unsafe { Box::from_raw(module.cast::<LazyModule>()) };
    if let (Some(Ok(handle)), Ok(d)) = (m.loaded.get(), crate::state::driver()) {
        // SAFETY: a module loaded by `LazyModule::get`, unloaded once.
        let _ = unsafe { (d.cuModuleUnload)(*handle as *mut c_void) };
    }
}

/// The kernel `name` of `module`, loading the module first; null (with the
/// error latched) when either fails.
#[no_mangle]
pub extern "C" fn mgpuModuleGetFunction(module: *mut c_void, name: *const c_char) -> *mut c_void {
    if module.is_null() || name.is_null() {
        latch("a kernel lookup got no module".into());
        return std::ptr::null_mut();
    }
    // SAFETY: `module` is a live `LazyModule` (see `mgpuModuleLoadJIT`).
    let m = unsafe { &*module.cast::<LazyModule>() };
    // SAFETY: `name` is the NUL-terminated kernel name the lowering emitted.
    let kernel = unsafe { CStr::from_ptr(name) };
    let found = m.get().and_then(|handle| {
        let d = crate::state::driver().map_err(|e| e.to_string())?;
        let mut f = std::ptr::null_mut();
        // SAFETY: a loaded module and a NUL-terminated name.
        let code = unsafe { (d.cuModuleGetFunction)(&mut f, handle as *mut c_void, name) };
        d.check(code, &format!("kernel `{}`", kernel.to_string_lossy()))
            .map_err(|e| e.to_string())?;
        Ok(f)
    });
    found.unwrap_or_else(|e| {
        latch(e);
        std::ptr::null_mut()
    })
}

/// A new stream on the selected device; null (error latched) without one.
#[no_mangle]
pub extern "C" fn mgpuStreamCreate() -> *mut c_void {
    let made = ready().map_err(|e| e.to_string()).and_then(|d| {
        let mut s = std::ptr::null_mut();
        // SAFETY: the driver writes one stream handle; flags 0 is the default.
        d.check(unsafe { (d.cuStreamCreate)(&mut s, 0) }, "cuStreamCreate")
            .map_err(|e| e.to_string())?;
        Ok(s)
    });
    made.unwrap_or_else(|e| {
        latch(e);
        std::ptr::null_mut()
    })
}

/// Waits for `stream`; a kernel that failed reports here.
#[no_mangle]
pub extern "C" fn mgpuStreamSynchronize(stream: *mut c_void) {
    if stream.is_null() {
        return;
    }
    if let Ok(d) = crate::state::driver() {
        // SAFETY: a stream from `mgpuStreamCreate`.
        let code = unsafe { (d.cuStreamSynchronize)(stream) };
        if let Err(e) = d.check(code, "running a kernel (cuStreamSynchronize)") {
            latch(e.to_string());
        }
    }
}

/// Destroys a stream from [`mgpuStreamCreate`].
#[no_mangle]
pub extern "C" fn mgpuStreamDestroy(stream: *mut c_void) {
    if let (false, Ok(d)) = (stream.is_null(), crate::state::driver()) {
        // SAFETY: a stream from `mgpuStreamCreate`, destroyed once.
        let _ = unsafe { (d.cuStreamDestroy_v2)(stream) };
    }
}

/// The largest grid CUDA launches: 2³¹-1 blocks in x, 65535 in y and z.
const GRID_LIMIT: [i64; 3] = [i32::MAX as i64, 65535, 65535];

/// Launches `function` on `stream`. Skipped after an earlier error, and for
/// an empty grid (a loop with no iterations); a grid beyond CUDA's limits is
/// an error naming it.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn mgpuLaunchKernel(
    function: *mut c_void,
    gx: i64,
    gy: i64,
    gz: i64,
    bx: i64,
    by: i64,
    bz: i64,
    smem: i32,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    _param_count: i64,
) {
    if failed() || function.is_null() {
        return;
    }
    let (grid, block) = ([gx, gy, gz], [bx, by, bz]);
    if grid.contains(&0) || block.contains(&0) {
        return;
    }
    if grid.iter().zip(GRID_LIMIT).any(|(&g, l)| g < 0 || g > l) || bx * by * bz > 1024 {
        latch(format!(
            "kernel launch of grid {grid:?} × block {block:?} exceeds CUDA's limits (grid 2147483647 × 65535 × 65535, 1024 threads a block)"
        ));
        return;
    }
    let Ok(d) = crate::state::driver() else {
        return;
    };
    // SAFETY: `function` is a kernel from `mgpuModuleGetFunction`; `params`
    // points at one pointer per kernel parameter, built by the lowered launch
    // for exactly this kernel's signature; dimensions are in range (checked).
    let code = unsafe {
        (d.cuLaunchKernel)(
            function,
            gx as u32,
            gy as u32,
            gz as u32,
            bx as u32,
            by as u32,
            bz as u32,
            smem.max(0) as u32,
            stream,
            params,
            extra,
        )
    };
    if let Err(e) = d.check(code, "cuLaunchKernel") {
        latch(e.to_string());
    }
}

/// `memref.alloc` on the host: managed memory (see the crate docs).
#[no_mangle]
pub extern "C" fn _mlir_memref_to_llvm_alloc(size: u64) -> *mut c_void {
    alloc_managed(size as usize)
}

/// Aligned `memref.alloc`: managed memory is aligned to at least 256 bytes,
/// more than any alignment the lowering asks for.
#[no_mangle]
pub extern "C" fn _mlir_memref_to_llvm_aligned_alloc(_alignment: u64, size: u64) -> *mut c_void {
    alloc_managed(size as usize)
}

/// `memref.dealloc` on the host.
#[no_mangle]
pub extern "C" fn _mlir_memref_to_llvm_free(ptr: *mut c_void) {
    // SAFETY: the lowered code frees each buffer from
    // `_mlir_memref_to_llvm_alloc` once, at its last use.
    unsafe { free_managed(ptr) }
}

/// A strided `memref.copy` on the host, with MLIR's C runner utilities'
/// signature: element size, then source and target as unranked memrefs.
///
/// # Safety
/// Both arguments point at unranked memref descriptors of one rank whose
/// ranked descriptors describe valid buffers of `elem_size`-byte elements.
#[no_mangle]
pub unsafe extern "C" fn memrefCopy(
    elem_size: i64,
    src: *const crate::copy::Unranked,
    dst: *const crate::copy::Unranked,
) {
    // SAFETY: forwarded contract.
    unsafe { crate::copy::copy(elem_size as usize, &*src, &*dst) }
}

/// Every entry point by its C name and address, for a JIT that resolves the
/// lowered code's calls against this process (MLIR's ExecutionEngine).
pub fn symbols() -> Vec<(&'static str, *mut c_void)> {
    vec![
        ("mgpuModuleLoadJIT", mgpuModuleLoadJIT as *mut c_void),
        ("mgpuModuleLoad", mgpuModuleLoad as *mut c_void),
        ("mgpuModuleUnload", mgpuModuleUnload as *mut c_void),
        (
            "mgpuModuleGetFunction",
            mgpuModuleGetFunction as *mut c_void,
        ),
        ("mgpuStreamCreate", mgpuStreamCreate as *mut c_void),
        (
            "mgpuStreamSynchronize",
            mgpuStreamSynchronize as *mut c_void,
        ),
        ("mgpuStreamDestroy", mgpuStreamDestroy as *mut c_void),
        ("mgpuLaunchKernel", mgpuLaunchKernel as *mut c_void),
        (
            "_mlir_memref_to_llvm_alloc",
            _mlir_memref_to_llvm_alloc as *mut c_void,
        ),
        (
            "_mlir_memref_to_llvm_aligned_alloc",
            _mlir_memref_to_llvm_aligned_alloc as *mut c_void,
        ),
        (
            "_mlir_memref_to_llvm_free",
            _mlir_memref_to_llvm_free as *mut c_void,
        ),
        ("memrefCopy", memrefCopy as *mut c_void),
    ]
}
