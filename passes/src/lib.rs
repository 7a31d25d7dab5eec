//! reformc's passes: a pass manager with MLIR-style instrumentation,
//! bounded equality saturation, and the Reformer rewrites.

mod pass;

pub use pass::{Pass, PassError, PassOptions};
