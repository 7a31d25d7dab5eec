//! reformc's GPU host runtime.
//!
//! Code that reformc's GPU pipeline lowers to the LLVM dialect calls a small
//! set of C functions: MLIR's GPU runtime interface (`mgpuModuleLoadJIT`,
//! `mgpuLaunchKernel`, streams), the generic allocation functions of
//! `finalize-memref-to-llvm{use-generic-functions}` and `memrefCopy`. This
//! crate implements them on top of the CUDA driver API, which it loads with
//! `dlopen` on first use: nothing links against CUDA, and a machine without a
//! driver gets an error ([`DriverError`]) instead of a crash.
//!
//! Every buffer the lowered code allocates is CUDA managed memory, so that the
//! host parts of the program (strided copies, the few loops that stay on the
//! host) and the kernels read the same pointers.
//!
//! Errors inside the C entry points cannot unwind into generated code: the
//! first one is latched ([`take_error`]) and later launches are skipped.
//!
//! ```
//! // On a machine without a CUDA driver, the first use says so.
//! if reformc_gpu_runtime::driver_path().is_none() {
//!     let e = reformc_gpu_runtime::select_device(0).unwrap_err();
//!     assert!(e.to_string().contains("no CUDA driver found"));
//! }
//! ```

#![deny(missing_docs)]

mod buffer;
mod copy;
pub use copy::copy_strided;
mod driver;
mod entry;
mod state;

pub use buffer::{call_packed, descriptor, Managed};
pub use driver::{driver_path, DriverError};
pub use entry::symbols;
pub use state::{
    alloc_managed, device_info, free_managed, select_device, take_error, DeviceInfo, RunError,
};
