//! reformc's passes: a pass manager with MLIR-style instrumentation,
//! bounded equality saturation, and the Reformer rewrites.

pub mod attention;
pub mod cost;
pub mod explain;
pub mod manager;
pub mod memory_plan;
mod pass;
pub mod registry;

pub use manager::{Instrumentation, PassEvent, PassManager, PassRecord, Pipeline, PipelineError, PipelineReport, Progress};
pub use pass::{LshOverrides, Pass, PassError, PassOptions, PassOutcome, PassStats};
pub use registry::{list_passes, lookup, pass_names, registry, DEFAULT_PIPELINE};
