//! Bounded saturation runs and their report.
//!
//! Every run is bounded by a [`SaturationLimits`]; the defaults are
//!
//! | limit | default | scope |
//! |---|---|---|
//! | `node_limit` | 100,000 e-nodes | one e-graph (one body: the top level or one region) |
//! | `iter_limit` | 30 iterations | one phase on one e-graph |
//! | `time_limit` | 10 s | the whole saturation of one pass run (all bodies and phases share it) |
//! | `match_limit` | 1,000 matches | egg's `BackoffScheduler`: a rule matching more often than this in one iteration is banned for a while (the ban doubles each time) |
//!
//! Rules stop applying once an e-graph holds `node_limit` e-nodes, so an
//! e-graph exceeds the limit by at most one rewrite's nodes (egg itself
//! checks its limits only between rules). The time limit is checked between
//! rule applications, so a run can exceed it by one rule's search or apply;
//! extraction comes after it and is bounded by its own work budget
//! ([`super::extract`]).
//! A run reports why it stopped ([`StopReason`]) and what it did
//! ([`RunStats`]); a pass aggregates its runs into a [`SaturationReport`].
//! Node and iteration limits are deterministic; the time limit is not, so
//! callers that need reproducible output should size the other two so that
//! the clock never decides.

use super::analysis::{IrEGraph, TypeAnalysis};
use super::lang::IrNode;
use super::rule::IrRule;
use egg::{BackoffScheduler, Runner};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Bounds on equality saturation (see the module docs for the defaults).
///
/// ```
/// use reformc_passes::eqsat::SaturationLimits;
/// use std::time::Duration;
/// let l = SaturationLimits { node_limit: 5_000, ..Default::default() };
/// assert_eq!(l.iter_limit, 30);
/// assert_eq!(l.time_limit, Duration::from_secs(10));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaturationLimits {
    /// Most e-nodes in one e-graph.
    pub node_limit: usize,
    /// Most iterations of one phase on one e-graph.
    pub iter_limit: usize,
    /// Wall time for the whole saturation of one pass run.
    pub time_limit: Duration,
    /// Initial per-rule match limit of egg's backoff scheduler.
    pub match_limit: usize,
}

impl Default for SaturationLimits {
    fn default() -> Self {
        SaturationLimits {
            node_limit: 100_000,
            iter_limit: 30,
            time_limit: Duration::from_secs(10),
            match_limit: 1_000,
        }
    }
}

/// Why a saturation run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StopReason {
    /// An iteration found nothing new: every equality the rules know is in the e-graph.
    Saturated,
    /// The iteration limit was reached.
    IterationLimit,
    /// The e-graph grew past the node limit.
    NodeLimit,
    /// The time limit was reached.
    TimeLimit,
}

impl StopReason {
    /// The words progress lines and `--time-passes` print.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Saturated => "saturated",
            StopReason::IterationLimit => "iteration limit",
            StopReason::NodeLimit => "node limit",
            StopReason::TimeLimit => "time limit",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named group of rules saturated together; phases run one after another
/// on the same e-graph.
#[derive(Clone, Debug)]
pub struct Phase {
    /// The phase's name, as reported in [`RunStats::phase`] (`fold`, `arith`, ...).
    pub name: &'static str,
    /// The rules saturated together; a phase without rules is skipped.
    pub rules: Vec<IrRule>,
}

/// What one phase did on one e-graph.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStats {
    /// Which body: `top`, or a path like `top/12.g` (node 12's region `g`).
    pub body: String,
    /// The name of the phase that ran.
    pub phase: &'static str,
    /// Why the run stopped.
    pub stop_reason: StopReason,
    /// egg iterations run (0 when the deadline had passed before the phase began).
    pub iterations: usize,
    /// E-nodes in the e-graph when the run stopped.
    pub enodes: usize,
    /// E-classes in the e-graph when the run stopped.
    pub eclasses: usize,
    /// Time spent searching for matches, summed over the iterations.
    pub search_time: Duration,
    /// Time spent applying matches, summed over the iterations.
    pub apply_time: Duration,
    /// Time spent rebuilding the e-graph (restoring congruence), summed over
    /// the iterations.
    pub rebuild_time: Duration,
    /// Rewrites applied, by rule name.
    pub applied: BTreeMap<String, usize>,
}

/// What a saturating pass did, over all its e-graphs and phases.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SaturationReport {
    /// One entry per (body, phase) run, in the order they ran.
    pub runs: Vec<RunStats>,
    /// E-graphs built (one per body).
    pub egraphs: usize,
    /// E-nodes of every e-graph when extracted, summed.
    pub enodes: usize,
    /// E-classes of every e-graph when extracted, summed.
    pub eclasses: usize,
    /// The largest single e-graph, in e-nodes.
    pub max_enodes: usize,
    /// Time spent extracting (all e-graphs).
    pub extract_time: Duration,
    /// Wall time of the whole pass (conversion, saturation, extraction).
    pub total_time: Duration,
    /// E-graphs whose DAG-aware extraction exceeded its work budget and fell
    /// back to tree costs.
    pub tree_fallbacks: usize,
    /// E-graphs whose extraction cost more than the input, which was kept.
    pub kept_inputs: usize,
    /// Total cost of the extracted bodies (the cost function's units).
    pub cost: f64,
}

impl SaturationReport {
    /// The overall stop reason: the strongest limit any run hit (time, then
    /// node, then iteration limit), or `Saturated` when every run saturated.
    pub fn stop_reason(&self) -> StopReason {
        self.runs
            .iter()
            .map(|r| r.stop_reason)
            .max()
            .unwrap_or(StopReason::Saturated)
    }

    /// Iterations over all runs.
    pub fn iterations(&self) -> usize {
        self.runs.iter().map(|r| r.iterations).sum()
    }

    /// Search, apply and rebuild time over all runs.
    pub fn search_time(&self) -> Duration {
        self.runs.iter().map(|r| r.search_time).sum()
    }

    /// See [`SaturationReport::search_time`].
    pub fn apply_time(&self) -> Duration {
        self.runs.iter().map(|r| r.apply_time).sum()
    }

    /// See [`SaturationReport::search_time`].
    pub fn rebuild_time(&self) -> Duration {
        self.runs.iter().map(|r| r.rebuild_time).sum()
    }

    /// Rewrites applied, by rule, over all runs.
    pub fn applied(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in &self.runs {
            for (k, v) in &r.applied {
                *m.entry(k.clone()).or_default() += v;
            }
        }
        m
    }

    /// Runs that stopped on a limit: `(body, phase, reason)`.
    pub fn limits_hit(&self) -> Vec<(&str, &'static str, StopReason)> {
        self.runs
            .iter()
            .filter(|r| r.stop_reason != StopReason::Saturated)
            .map(|r| (r.body.as_str(), r.phase, r.stop_reason))
            .collect()
    }
}

impl fmt::Display for SaturationReport {
    /// One line: `saturated: 12 e-graphs, 1,234 e-nodes (max 456), 789 e-classes, 34 iterations; search 1.2ms apply ... ; 5 rewrites`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let applied: usize = self.applied().values().sum();
        write!(
            f,
            "{}: {} e-graphs, {} e-nodes (max {}), {} e-classes, {} iterations; search {:.1?}, apply {:.1?}, rebuild {:.1?}, extract {:.1?}, total {:.1?}; {} rewrites applied",
            self.stop_reason(),
            self.egraphs,
            self.enodes,
            self.max_enodes,
            self.eclasses,
            self.iterations(),
            self.search_time(),
            self.apply_time(),
            self.rebuild_time(),
            self.extract_time,
            self.total_time,
            applied
        )?;
        if self.kept_inputs > 0 {
            write!(
                f,
                "; {} bodies kept as they were (extraction was no cheaper)",
                self.kept_inputs
            )?;
        }
        if self.tree_fallbacks > 0 {
            write!(
                f,
                "; {} extractions fell back to tree costs",
                self.tree_fallbacks
            )?;
        }
        Ok(())
    }
}

/// Runs `phases` one after another on `eg` within `limits` (the time limit
/// as an absolute `deadline`). Fails when a rule produced an ill-typed node
/// or merged classes of different types.
pub fn run_phases(
    mut eg: IrEGraph,
    phases: &[Phase],
    limits: &SaturationLimits,
    deadline: Instant,
    body: &str,
) -> Result<(IrEGraph, Vec<RunStats>), String> {
    let mut stats = Vec::new();
    for phase in phases {
        if phase.rules.is_empty() {
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            stats.push(RunStats {
                body: body.to_string(),
                phase: phase.name,
                stop_reason: StopReason::TimeLimit,
                iterations: 0,
                enodes: eg.total_size(),
                eclasses: eg.number_of_classes(),
                search_time: Duration::ZERO,
                apply_time: Duration::ZERO,
                rebuild_time: Duration::ZERO,
                applied: BTreeMap::new(),
            });
            continue;
        }
        // One past the limit, so that egg (which stops on `size > node_limit`) sees it.
        let rewrites: Vec<_> = phase
            .rules
            .iter()
            .map(|r| r.rewrite_with_cap(limits.node_limit.saturating_add(1)))
            .collect();
        let runner: Runner<IrNode, TypeAnalysis, ()> = Runner::new(TypeAnalysis::default())
            .with_egraph(eg)
            .with_node_limit(limits.node_limit)
            .with_iter_limit(limits.iter_limit)
            .with_time_limit(deadline - now)
            .with_scheduler(
                BackoffScheduler::default().with_initial_match_limit(limits.match_limit.max(1)),
            )
            .with_hook(|r| {
                if r.egraph.analysis.errors.is_empty() {
                    Ok(())
                } else {
                    Err("type error".into())
                }
            })
            .run(&rewrites);
        let stop_reason = match &runner.stop_reason {
            Some(egg::StopReason::Saturated) | None => StopReason::Saturated,
            Some(egg::StopReason::IterationLimit(_)) => StopReason::IterationLimit,
            Some(egg::StopReason::NodeLimit(_)) => StopReason::NodeLimit,
            Some(egg::StopReason::TimeLimit(_)) => StopReason::TimeLimit,
            Some(egg::StopReason::Other(_)) => StopReason::Saturated,
        };
        let secs = |f: fn(&egg::Iteration<()>) -> f64| {
            Duration::from_secs_f64(runner.iterations.iter().map(f).sum::<f64>().max(0.0))
        };
        let mut applied = BTreeMap::new();
        for it in &runner.iterations {
            for (name, n) in &it.applied {
                *applied.entry(name.to_string()).or_default() += n;
            }
        }
        stats.push(RunStats {
            body: body.to_string(),
            phase: phase.name,
            stop_reason,
            iterations: runner.iterations.len(),
            enodes: runner.egraph.total_size(),
            eclasses: runner.egraph.number_of_classes(),
            search_time: secs(|i| i.search_time),
            apply_time: secs(|i| i.apply_time),
            rebuild_time: secs(|i| i.rebuild_time),
            applied,
        });
        eg = runner.egraph;
        if !eg.analysis.errors.is_empty() {
            return Err(eg.analysis.errors.join("; "));
        }
    }
    Ok((eg, stats))
}
