//! The `Pass` trait and the options every pass sees.

use reformc_ir::Graph;
use std::fmt;

/// Options shared by every pass of a pipeline (target sizes, budgets, choices).
#[derive(Clone, Debug, Default)]
pub struct PassOptions {
    /// Target sequence length the cost model evaluates symbolic `L`/`P` at.
    pub seq_len: Option<u64>,
    /// Target batch size (`B`), default 1.
    pub batch: Option<u64>,
    /// Memory budget in bytes for chunking decisions.
    pub memory_budget: Option<u64>,
    /// `--attention=auto|full|exact|lsh` (None: what the config asks).
    pub attention: Option<String>,
}

/// A failed pass: its name and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassError {
    pub pass: String,
    pub message: String,
}

impl fmt::Display for PassError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pass `{}`: {}", self.pass, self.message)
    }
}

impl std::error::Error for PassError {}

/// One transformation of the graph, MLIR style: a name, a one-line summary, a run.
pub trait Pass {
    /// The name used by `--print-after=NAME`, `--disable-pass=NAME` and pipelines.
    fn name(&self) -> &'static str;
    /// One line on what the pass does (`--list-passes`).
    fn summary(&self) -> &'static str;
    /// Rewrites `g` in place. Returns notes for the user (decisions and why).
    fn run(&self, g: &mut Graph, opts: &PassOptions) -> Result<Vec<String>, PassError>;
}
