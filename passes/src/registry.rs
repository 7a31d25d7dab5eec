//! The registry of passes by name, and the default pipeline as data.
//!
//! **To register a pass**, add one line to [`registry`] at its place in the
//! pipeline order (the list below is the one place that knows every pass), and
//! keep its name in [`DEFAULT_PIPELINE`] if it belongs to the default pipeline.
//! Names in [`DEFAULT_PIPELINE`] that are not registered yet are skipped by
//! [`crate::Pipeline::default_pipeline`], so the list can name passes before
//! they exist.
//!
//! ```
//! let names: Vec<&str> = reformc_passes::registry().iter().map(|p| p.name()).collect();
//! assert!(names.contains(&"attention"));
//! assert!(names.contains(&"memory-plan"));
//! ```

use crate::pass::Pass;

/// The default pipeline, in order (DESIGN.md §2). Unregistered names are
/// skipped by [`crate::Pipeline::default_pipeline`].
pub const DEFAULT_PIPELINE: &[&str] = &[
    "simplify",
    "attention",
    "reversible",
    "chunk",
    "memory-plan",
];

/// Every registered pass, in pipeline order.
///
/// | name | module | owner |
/// |---|---|---|
/// | `simplify` | `simplify.rs`, `eqsat/` (equality saturation) | registered |
/// | `attention` | `attention.rs` | registered |
/// | `reversible` | `reversible.rs` | registered |
/// | `chunk` | `chunk.rs` | registered |
/// | `lower-model` | `lower_model/` | registered (not in the default pipeline: training runs it after the default passes) |
/// | `cse`, `dce` | `cleanup.rs` | registered (not in the default pipeline: `simplify` does both) |
/// | `memory-plan` | `memory_plan.rs` | registered |
/// | `autodiff` | `autodiff/` | registered (training only: `grad`, `train`, `dump --train`) |
///
/// Epilogue fusion (bias, activation into `linear`) is part of `simplify`.
pub fn registry() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(crate::simplify::SimplifyPass::new()),
        Box::new(crate::attention::AttentionPass),
        Box::new(crate::reversible::ReversiblePass),
        Box::new(crate::chunk::ChunkPass),
        Box::new(crate::lower_model::LowerModelPass),
        Box::new(crate::cleanup::CsePass),
        Box::new(crate::cleanup::DcePass),
        Box::new(crate::memory_plan::MemoryPlanPass),
        Box::new(crate::autodiff::AutodiffPass),
    ]
}

/// The registered pass called `name`, if any.
///
/// ```
/// assert_eq!(reformc_passes::lookup("attention").unwrap().name(), "attention");
/// assert!(reformc_passes::lookup("nope").is_none());
/// ```
pub fn lookup(name: &str) -> Option<Box<dyn Pass>> {
    registry().into_iter().find(|p| p.name() == name)
}

/// Names of every registered pass, in pipeline order.
pub fn pass_names() -> Vec<&'static str> {
    registry().iter().map(|p| p.name()).collect()
}

/// `--list-passes`: one aligned line per registered pass, `name  summary`.
///
/// ```
/// let text = reformc_passes::list_passes();
/// assert!(text.lines().any(|l| l.starts_with("attention ")));
/// ```
pub fn list_passes() -> String {
    let passes = registry();
    let width = passes.iter().map(|p| p.name().len()).max().unwrap_or(0);
    passes
        .iter()
        .map(|p| format!("{:width$}  {}\n", p.name(), p.summary()))
        .collect()
}
