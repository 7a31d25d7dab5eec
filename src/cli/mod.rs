//! The `reformc` command line: one module per command.

pub mod compile;
pub mod dump;
pub mod error;
pub mod explain;
pub mod feed;
pub mod gpu;
pub mod gpu_exe;
pub mod grad;
pub mod mlir;
pub mod model;
pub mod npy;
pub mod opt;
pub mod outputs;
pub mod passes;
pub mod progress;
pub mod run;
pub mod run_ir;
pub mod train;
