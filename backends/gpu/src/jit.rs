//! Running a module on the GPU: the lowered host code compiled by MLIR's
//! ExecutionEngine, its runtime calls resolved to `reformc-gpu-runtime`.

use crate::{lower, GpuError, GpuOptions};
use melior::ExecutionEngine;
use reformc_backend_mlir::memref;
use reformc_gpu_runtime as rt;
use reformc_ir::DType;
use reformc_tensor::Tensor;
use std::time::{Duration, Instant};

/// What [`jit_run`] returns.
#[derive(Debug)]
pub struct GpuRun {
    /// `@forward`'s results, in order.
    pub outputs: Vec<Tensor>,
    /// The device that ran them.
    pub device: rt::DeviceInfo,
    /// Lowering and compiling the host code.
    pub compile: Duration,
    /// The call of `@forward`, copies in and out included (the first call
    /// also loads the kernels, which the driver compiles from PTX).
    pub run: Duration,
}

/// Compiles `module_text` (weights as arguments) for `opts.arch` and runs
/// `@forward` on device `device` with `args` (weights then inputs, each of
/// its argument's dtype and rank); `outs` are the results' dtypes and ranks.
///
/// Fails with [`GpuError::Driver`] where there is no CUDA driver or no such
/// device, after compiling (so a machine without a GPU still checks that the
/// module lowers).
pub fn jit_run(
    module_text: &str,
    opts: &GpuOptions,
    device: i32,
    args: &[Tensor],
    outs: &[(DType, usize)],
) -> Result<GpuRun, GpuError> {
    let t0 = Instant::now();
    let context = reformc_backend_mlir::context();
    let (module, kernels) = lower(&context, module_text, opts)?;
    let engine = engine(&module, false)?;
    let compile = t0.elapsed();
    let info = rt::select_device(device)?;
    let (need, have) = (kernels.arch.capability(), info.capability);
    if have < need {
        return Err(GpuError::Arch {
            arch: kernels.arch,
            index: info.index,
            name: info.name,
            major: have.0,
            minor: have.1,
        });
    }
    let t1 = Instant::now();
    let outputs = call(&engine, args, outs)?;
    Ok(GpuRun {
        outputs,
        device: info,
        compile,
        run: t1.elapsed(),
    })
}

/// An ExecutionEngine for a module [`lower`] made, its calls of the GPU
/// runtime resolved to `reformc-gpu-runtime` in this process (`object_dump`:
/// keep the compiled object for [`crate::aot::host_object`]).
pub(crate) fn engine(
    module: &melior::ir::Module,
    object_dump: bool,
) -> Result<ExecutionEngine, GpuError> {
    let engine =
        reformc_backend_mlir::new_engine(module, 3, &[], object_dump).ok_or_else(|| {
            GpuError::Lowering("the lowered module does not translate to LLVM IR".into())
        })?;
    for (name, f) in rt::symbols() {
        // SAFETY: each symbol is the runtime's C function of that name, with
        // the signature the lowered code calls it with.
        unsafe { engine.register_symbol(name, f.cast()) };
    }
    Ok(engine)
}

/// A tensor's bytes in a managed buffer (freed on drop), and its shape.
fn staged(t: &Tensor) -> (rt::Managed, Vec<usize>) {
    let t = memref::standard(t);
    let bytes = t.shape().iter().product::<usize>() * t.dtype().size_bytes() as usize;
    // SAFETY: `t` is standard layout with `bytes` bytes at its data pointer.
    let data = unsafe { std::slice::from_raw_parts(memref::data_ptr(&t) as *const u8, bytes) };
    (rt::Managed::from_bytes(data), t.shape().to_vec())
}

/// Calls `@forward` through its C interface and copies the results out.
fn call(
    engine: &ExecutionEngine,
    args: &[Tensor],
    outs: &[(DType, usize)],
) -> Result<Vec<Tensor>, GpuError> {
    let staged: Vec<(rt::Managed, Vec<usize>)> = args.iter().map(staged).collect();
    if let Some(e) = rt::take_error() {
        return Err(GpuError::Run(e));
    }
    let mut descs: Vec<Vec<i64>> = staged.iter().map(|(b, s)| b.descriptor(s)).collect();
    // SAFETY: every descriptor points at a live managed buffer of its shape
    // (`staged`), which the call only reads. Invoking through the engine runs
    // the module's static initialiser first, which registers the kernels.
    let result = unsafe { memref::invoke(engine, &mut descs, outs) }
        .map_err(|e| GpuError::Lowering(format!("calling @forward: {e}")))?;
    let failed = rt::take_error();
    // SAFETY: the results of that call, synchronised (every launch waits for
    // its stream), owned by the caller, allocated by the runtime; read (when
    // the run succeeded) before they are freed.
    let out = match failed {
        None => unsafe { memref::read_results(&result, outs) },
        Some(_) => Vec::new(),
    };
    unsafe { memref::free_results(&result, outs, |p| rt::free_managed(p)) };
    match failed.or_else(rt::take_error) {
        Some(e) => Err(GpuError::Run(e)),
        None => Ok(out),
    }
}

extern "C" {
    /// The C library's `free`, which `memref.dealloc` lowers to on the CPU.
    fn free(ptr: *mut std::ffi::c_void);
}

/// Calls `@forward` of a module lowered for the CPU ([`crate::host_check`]):
/// arguments in place, results copied out and freed.
pub(crate) fn host_call(
    module: &melior::ir::Module,
    args: &[Tensor],
    outs: &[(DType, usize)],
) -> Result<Vec<Tensor>, GpuError> {
    let engine = reformc_backend_mlir::new_engine(module, 2, &[], false).ok_or_else(|| {
        GpuError::Lowering("the host module does not translate to LLVM IR".into())
    })?;
    // The strided copies call `memrefCopy`, which the GPU runtime has.
    for (name, f) in rt::symbols()
        .into_iter()
        .filter(|(n, _)| *n == "memrefCopy")
    {
        // SAFETY: the runtime's `memrefCopy`, with the C runner utilities'
        // signature that the lowered code calls.
        unsafe { engine.register_symbol(name, f.cast()) };
    }
    let args: Vec<Tensor> = args.iter().map(memref::standard).collect();
    let mut descs: Vec<Vec<i64>> = args.iter().map(memref::descriptor).collect();
    // SAFETY: as in `call`, with the arguments' own (standard-layout) data.
    let result = unsafe { memref::invoke(&engine, &mut descs, outs) }
        .map_err(|e| GpuError::Lowering(format!("calling @forward: {e}")))?;
    // SAFETY: the call's results, owned by the caller, `malloc`ed (this
    // module was lowered with the C heap), read once and then freed.
    let out = unsafe { memref::read_results(&result, outs) };
    unsafe { memref::free_results(&result, outs, |p| free(p)) };
    Ok(out)
}
