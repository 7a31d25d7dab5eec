//! reformc's GPU backend: the MLIR backend's tensor module, weights as
//! arguments, mapped to GPU kernels and lowered through NVVM to PTX.
//!
//! Two pass pipelines ([`pipeline`]) run on the module: the first bufferizes
//! it, turns every `linalg` op into parallel loops, tiles and maps them to
//! blocks and threads and outlines each as a kernel; the second lowers the
//! kernels through NVVM to PTX for one architecture ([`GpuArch`]) and the host
//! code to the LLVM dialect, with every launch a call of MLIR's GPU runtime
//! interface. Between them the kernels are merged into one module, so the PTX
//! is one file with one `.entry` per kernel ([`compile_ptx`]).
//!
//! [`jit_run`] compiles the host code with MLIR's ExecutionEngine and runs it
//! on the CUDA driver through `reformc-gpu-runtime`, which loads
//! `libcuda.so.1` at run time: no CUDA library is linked.
//!
//! ```
//! use reformc_backend_gpu::{compile_ptx, GpuOptions};
//! let g = reformc_ir::parse(
//!     "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = add %0, %0 : f32[N]\n  output \"y\" = %1\n}\n",
//! )
//! .unwrap();
//! let text = reformc_backend_mlir::emit_module(&g, &Default::default()).unwrap();
//! let k = compile_ptx(&text, &GpuOptions::default()).unwrap();
//! assert!(k.ptx.contains(".target sm_90"));
//! assert_eq!(k.entries.len(), 1);
//! ```

#![deny(missing_docs)]

pub mod aot;
mod arch;
mod collapse;
mod copies;
mod interchange;
mod jit;
mod libdevice;
mod merge;
pub mod pipeline;
mod ptx;
mod raw;
pub mod variants;

pub use arch::GpuArch;
pub use jit::{jit_run, GpuRun};
pub use libdevice::find_libdevice;
pub use merge::KERNELS;
pub use ptx::entries;
pub use reformc_gpu_runtime::{driver_path, DeviceInfo, DriverError};

use melior::{
    ir::{operation::OperationLike, Module},
    pass::PassManager,
    utility::parse_pass_pipeline,
    Context,
};
use std::ops::Not;
use std::path::PathBuf;

/// Options of the GPU backend.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// The architecture the PTX is for.
    pub arch: GpuArch,
    /// NVIDIA's `libdevice.10.bc`, linked into the kernels for `math`
    /// functions ([`find_libdevice`]); without it, a module whose kernels
    /// need one is refused ([`GpuError::Libdevice`]).
    pub libdevice: Option<PathBuf>,
}

/// The kernels of one module, as PTX.
#[derive(Clone, Debug)]
pub struct Kernels {
    /// The architecture they are for.
    pub arch: GpuArch,
    /// One PTX module, one `.entry` per kernel.
    pub ptx: String,
    /// The `.entry` names, in order.
    pub entries: Vec<String>,
}

/// Why the GPU backend could not compile or run a module.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// A pass pipeline failed, or its result is not what the backend expects
    /// (a bug in reformc; MLIR's diagnostics are in the message).
    #[error("GPU lowering: {0}")]
    Lowering(String),
    /// The kernels call libdevice functions and no libdevice was found.
    #[error("{0}")]
    Libdevice(String),
    /// The CUDA driver is missing, or refused the device.
    #[error("{0}")]
    Driver(#[from] DriverError),
    /// The PTX's architecture is newer than the device's.
    #[error("the kernels were compiled for {arch} but device {index} ({name}) is sm_{major}{minor}; compile with --gpu-arch sm_{major}{minor} or older")]
    Arch {
        /// The PTX's architecture.
        arch: GpuArch,
        /// The device's index.
        index: i32,
        /// The device's name.
        name: String,
        /// Its compute capability.
        major: i32,
        /// Its compute capability.
        minor: i32,
    },
    /// The arguments do not match `@forward`.
    #[error("{0}")]
    Args(String),
    /// The run failed on the device (the driver's message; whether it ran
    /// out of memory).
    #[error("GPU run failed: {0}")]
    Run(reformc_gpu_runtime::RunError),
}

/// Lowers `module_text` (from `reformc_backend_mlir::emit_module`, weights as
/// arguments) to PTX for `opts.arch`.
pub fn compile_ptx(module_text: &str, opts: &GpuOptions) -> Result<Kernels, GpuError> {
    let context = reformc_backend_mlir::context();
    let (_, kernels) = lower(&context, module_text, opts)?;
    Ok(kernels)
}

/// Both pipelines on `text`, in `context`: the lowered module (LLVM dialect
/// host code and one `gpu.binary`) and its kernels.
pub(crate) fn lower<'c>(
    context: &'c Context,
    text: &str,
    opts: &GpuOptions,
) -> Result<(Module<'c>, Kernels), GpuError> {
    if let Some(p) = &opts.libdevice {
        if !pipeline::option_safe(p) {
            return Err(GpuError::Libdevice(format!(
                "libdevice path {}: a path with spaces, commas, quotes or braces cannot be passed to MLIR's pass options; copy the file elsewhere",
                p.display()
            )));
        }
    }
    melior::utility::register_all_llvm_translations(context);
    reformc_backend_mlir::register_passes();
    reformc_backend_mlir::with_diagnostics(context, false, |said| {
        let diag = |what: &str| GpuError::Lowering(format!("{what}: {}", said()));
        let mut module = Module::parse(context, text).ok_or_else(|| diag("parsing the module"))?;
        to_loops(context, &mut module).map_err(&diag)?;
        run(context, &mut module, &pipeline::kernels()).map_err(|_| diag("mapping to kernels"))?;
        dump(&module, "3-kernels");
        merge::merge_kernels(context, &mut module)?;
        dump(&module, "4-merged");
        let nvvm = pipeline::nvvm(opts.arch, opts.libdevice.as_deref());
        run(context, &mut module, &nvvm).map_err(|_| diag("lowering to NVVM and PTX"))?;
        dump(&module, "5-nvvm");
        let ptx = ptx::extract(&module)?;
        let missing = ptx::unresolved_math(&ptx);
        if !missing.is_empty() {
            return Err(GpuError::Libdevice(format!(
                "the kernels call libdevice's {}, and no libdevice.10.bc was found: run scripts/setup.sh (installs it into .venv-gpu), or pass --libdevice PATH / set REFORMC_LIBDEVICE",
                missing.join(", ")
            )));
        }
        let entries = ptx::entries(&ptx);
        Ok((
            module,
            Kernels {
                arch: opts.arch,
                ptx,
                entries,
            },
        ))
    })
    .0
}

/// The module's `linalg` ops as buffers and one-dimensional parallel loops
/// ([`pipeline::buffers`], [`copies`], [`pipeline::loops`], then [`collapse`]
/// and [`interchange`]): the stages
/// that [`host_check`] also runs. `Err` names the stage that failed.
fn to_loops(context: &Context, module: &mut Module) -> Result<(), &'static str> {
    run(context, module, &pipeline::buffers()).map_err(|_| "bufferizing")?;
    copies::copies_to_generics(context, module);
    if module.as_operation().verify().not() {
        return Err("turning copies into linalg.generic");
    }
    run(context, module, &pipeline::loops()).map_err(|_| "lowering to loops")?;
    dump(module, "1-loops");
    collapse::collapse_parallel_loops(context, module);
    if module.as_operation().verify().not() {
        return Err("collapsing parallel loops");
    }
    dump(module, "2-collapsed");
    Ok(())
}

/// Runs `module_text` (weights as arguments) through the GPU backend's loop
/// stages (bufferization, parallel loops, their collapse and interchange) and
/// then on the CPU, each parallel loop a sequential one: a check, on a machine
/// without a GPU, that the rewrites the kernels are built from keep the
/// model's numbers. `args` and `outs` as for [`jit_run`].
pub fn host_check(
    module_text: &str,
    args: &[reformc_tensor::Tensor],
    outs: &[(reformc_ir::DType, usize)],
) -> Result<Vec<reformc_tensor::Tensor>, GpuError> {
    let context = reformc_backend_mlir::context();
    melior::utility::register_all_llvm_translations(&context);
    reformc_backend_mlir::register_passes();
    reformc_backend_mlir::with_diagnostics(&context, false, |said| {
        let diag = |what: &str| GpuError::Lowering(format!("{what}: {}", said()));
        let mut module =
            Module::parse(&context, module_text).ok_or_else(|| diag("parsing the module"))?;
        to_loops(&context, &mut module).map_err(&diag)?;
        run(&context, &mut module, &pipeline::host_loops_to_llvm())
            .map_err(|_| diag("lowering the loops for the CPU"))?;
        jit::host_call(&module, args, outs)
    })
    .0
}

/// With `REFORMC_GPU_DUMP_DIR` set, writes the module after each stage of
/// [`lower`] there as `<stage>.mlir` (for looking at what a model became).
fn dump(module: &Module, stage: &str) {
    if let Some(dir) = std::env::var_os("REFORMC_GPU_DUMP_DIR") {
        let path = std::path::Path::new(&dir).join(format!("{stage}.mlir"));
        if let Err(e) = std::fs::write(&path, module.as_operation().to_string()) {
            eprintln!(
                "warning: REFORMC_GPU_DUMP_DIR: cannot write {}: {e}",
                path.display()
            );
        }
    }
}

fn run(context: &Context, module: &mut Module, pipeline: &str) -> Result<(), ()> {
    let pm = PassManager::new(context);
    parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline).map_err(|_| ())?;
    pm.run(module).map_err(|_| ())
}
