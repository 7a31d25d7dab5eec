//! Bounded equality saturation over the IR with [`egg`].
//!
//! - [`lang`]: the egg language (op kind and attributes as the payload,
//!   operands as children).
//! - [`analysis`]: the type analysis (dtype and symbolic shape per e-class,
//!   by the IR's type rules).
//! - [`rule`]: rules as Rust matchers over e-nodes with attributes.
//! - [`runner`]: bounded runs ([`SaturationLimits`]) and the
//!   [`SaturationReport`] with the stop reason and statistics.
//! - [`extract`]: deterministic DAG-aware extraction with a caller-supplied
//!   [`CostFunction`].
//! - [`convert`]: IR to e-graph to IR, region by region.
//!
//! ```
//! use reformc_passes::eqsat::{saturate, OpCountCost, SaturationLimits};
//! let text = "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = exp %0 : f32[N]\n  %2 = exp %0 : f32[N]\n  %3 = add %1, %2 : f32[N]\n  output \"y\" = %3\n}\n";
//! let g = reformc_ir::parse(text).unwrap();
//! // No rules: hash-consing alone merges the two `exp`s (CSE).
//! let (out, report) = saturate(&g, &[], &SaturationLimits::default(), &OpCountCost).unwrap();
//! assert_eq!(reformc_ir::print(&out).matches("exp").count(), 1);
//! assert_eq!(report.egraphs, 1);
//! ```

pub mod analysis;
pub mod convert;
pub mod extract;
pub mod lang;
pub mod rule;
pub mod runner;

pub use extract::{CostFunction, OpCountCost, DEFAULT_DAG_BUDGET};
pub use runner::{Phase, RunStats, SaturationLimits, SaturationReport, StopReason};

use crate::scoped::Program;
use reformc_ir::Graph;

/// Saturates every body of `g` with `phases` (in order) within `limits`,
/// extracts the cheapest equivalent graph by `cost` and returns it with the
/// report. The input must verify; so does the output (checked).
pub fn saturate(
    g: &Graph,
    phases: &[Phase],
    limits: &SaturationLimits,
    cost: &dyn CostFunction,
) -> Result<(Graph, SaturationReport), String> {
    reformc_ir::verify(g).map_err(|e| format!("the input graph does not verify: {e}"))?;
    let program = Program::from_graph(g)?;
    let opt = convert::Optimizer {
        phases,
        limits,
        cost,
        dag_budget: DEFAULT_DAG_BUDGET,
    };
    let (program, report) = opt.optimize(&program)?;
    let out = program.to_graph();
    reformc_ir::verify(&out)
        .map_err(|e| format!("internal error: the optimized graph does not verify: {e}"))?;
    Ok((out, report))
}

/// IR to e-graph to IR with no rule: the identity up to CSE and DCE (the
/// output prints exactly like the input when the input has neither).
pub fn round_trip(g: &Graph) -> Result<Graph, String> {
    saturate(g, &[], &SaturationLimits::default(), &OpCountCost).map(|(g, _)| g)
}
