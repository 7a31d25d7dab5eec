//! reformc's passes: a pass manager with MLIR-style instrumentation,
//! bounded equality saturation, and the Reformer rewrites.

#![deny(missing_docs)]

pub mod attention;
pub mod buffer_plan;
pub mod cost;
pub mod explain;
pub mod footprint;
pub mod fusion;
pub mod lower_model;
pub mod manager;
pub mod memory_plan;
mod pass;

// Equality saturation and the Reformer rewrites (eqsat/, simplify, reversible, chunk).
pub mod chunk;
pub mod cleanup;
pub mod eqsat;
pub mod registry;
pub mod reversible;
/// The rebuild form of graph editing, now in the IR crate beside [`reformc_ir::Rewriter`].
pub use reformc_ir::scoped;
pub mod simplify;
#[cfg(test)]
mod testing;

pub use manager::{
    Instrumentation, PassEvent, PassManager, PassRecord, Pipeline, PipelineError, PipelineReport,
    Progress,
};
pub use pass::{LshOverrides, Pass, PassError, PassOptions, PassOutcome, PassStats};
pub use registry::{list_passes, lookup, pass_names, registry, DEFAULT_PIPELINE};
