//! The `Pass` trait and the options every pass sees.

use reformc_ir::Graph;
use std::fmt;
use std::time::Duration;

/// Options shared by every pass of a pipeline (target sizes, budgets, choices).
///
/// Every field has a documented default, so `PassOptions::default()` is a
/// valid configuration:
///
/// ```
/// use reformc_passes::PassOptions;
/// let opts = PassOptions { seq_len: Some(4096), attention: Some("auto".into()), ..Default::default() };
/// assert_eq!(opts.batch_or_default(), 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct PassOptions {
    /// Target sequence length the cost model evaluates symbolic `L`/`P` at.
    pub seq_len: Option<u64>,
    /// Target batch size (`B`), default 1.
    pub batch: Option<u64>,
    /// Memory budget in bytes for chunking decisions.
    pub memory_budget: Option<u64>,
    /// Chunk length (positions) of feed-forward branches for the `chunk`
    /// pass (HF `chunk_size_feed_forward`). `None` or 0: derived from
    /// `memory_budget` when set, else no chunking.
    pub chunk_size_feed_forward: Option<u64>,
    /// Chunk length of the LM head for the `chunk` pass (HF
    /// `chunk_size_lm_head`), with the same defaults.
    pub chunk_size_lm_head: Option<u64>,
    /// `--attention=auto|full|exact|lsh` (None: what the config asks).
    pub attention: Option<String>,
    /// Key chunk of chunked-exact attention (`attention {kv_chunk=N}`);
    /// default [`crate::attention::DEFAULT_KV_CHUNK`].
    pub kv_chunk: Option<u64>,
    /// Parameters of LSH layers the `attention` pass creates (defaults: HF's).
    pub lsh: LshOverrides,
    /// Dropout probabilities of a training step, applied by `lower-model`
    /// (`None` or all 0: no dropout; inference pipelines never set it).
    pub dropout: Option<crate::lower_model::DropoutRates>,
    /// Which layers that are not reversible the `autodiff` pass recomputes
    /// in the backward pass instead of keeping their activations (default
    /// `Auto`: as few as fit `memory_budget`; none without a budget).
    pub recompute: crate::autodiff::checkpoint::LayerRecompute,
    /// `lower-model` lowers every model op, so that `autodiff` differentiates
    /// their tensor-op decompositions (`--lowered-grads`; the reference the
    /// fused derivative kernels are tested against). By default it keeps the
    /// ops with a fused derivative ([`crate::lower_model::keeps_for_grad`]).
    pub lowered_grads: bool,
}

impl PassOptions {
    /// `batch`, or 1.
    pub fn batch_or_default(&self) -> u64 {
        self.batch.unwrap_or(1)
    }
}

/// LSH parameters for layers that the `attention` pass turns into LSH
/// attention; `None` takes Hugging Face's default (chunk 64, 1 chunk before,
/// 0 after, 1 hash round, bucket count by HF's automatic rule at the target
/// length).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LshOverrides {
    /// Chunk length in positions (HF `lsh_attn_chunk_length`); at least 1.
    pub chunk: Option<u64>,
    /// Chunks before its own that each chunk also attends to (HF
    /// `lsh_num_chunks_before`).
    pub before: Option<u64>,
    /// Chunks after its own that each chunk also attends to (HF
    /// `lsh_num_chunks_after`).
    pub after: Option<u64>,
    /// Hash rounds (HF `num_hashes`); at least 1.
    pub n_hashes: Option<u64>,
    /// Bucket factors (each even); their product is the bucket count.
    pub buckets: Option<Vec<u64>>,
}

/// A failed pass: its name and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassError {
    /// Name of the pass that failed (`input` when the input IR does not
    /// verify). The pass manager fills it in when a pass leaves it empty.
    pub pass: String,
    /// Why it failed.
    pub message: String,
}

impl fmt::Display for PassError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pass `{}`: {}", self.pass, self.message)
    }
}

impl std::error::Error for PassError {}

/// Measurements a pass may report besides its notes (shown by
/// `--time-passes` and in progress lines).
///
/// ```
/// use reformc_passes::PassStats;
/// use std::time::Duration;
/// let s = PassStats { nodes: Some(14_003), stop_reason: Some("saturated".into()), ..Default::default() }
///     .with_phase("search", Duration::from_millis(800))
///     .with_counter("iterations", 7);
/// assert_eq!(s.phases[0].0, "search");
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassStats {
    /// A size the pass wants shown instead of the IR's op count (e-graph nodes, say).
    pub nodes: Option<u64>,
    /// Why an iterative pass stopped (`saturated`, `node limit`, `time limit`).
    pub stop_reason: Option<String>,
    /// Wall time of named phases (egg: search / apply / rebuild).
    pub phases: Vec<(String, Duration)>,
    /// Named counts (iterations, rewrites applied, ...).
    pub counters: Vec<(String, u64)>,
}

impl PassStats {
    /// Adds a timed phase (builder style).
    pub fn with_phase(mut self, name: &str, time: Duration) -> Self {
        self.phases.push((name.to_string(), time));
        self
    }

    /// Adds a counter (builder style).
    pub fn with_counter(mut self, name: &str, value: u64) -> Self {
        self.counters.push((name.to_string(), value));
        self
    }
}

/// What a pass run returns: notes for the user and optional statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassOutcome {
    /// Notes for the user (decisions and why), as [`Pass::run`] returns them.
    pub notes: Vec<String>,
    /// Measurements for `--time-passes` and progress lines.
    pub stats: PassStats,
}

/// One transformation of the graph, MLIR style: a name, a one-line summary, a run.
pub trait Pass {
    /// The name used by `--print-after=NAME`, `--disable-pass=NAME` and pipelines.
    fn name(&self) -> &'static str;
    /// One line on what the pass does (`--list-passes`).
    fn summary(&self) -> &'static str;
    /// Rewrites `g` in place. Returns notes for the user (decisions and why).
    fn run(&self, g: &mut Graph, opts: &PassOptions) -> Result<Vec<String>, PassError>;
    /// Like [`Pass::run`], also returning [`PassStats`]. The pass manager calls
    /// this one; override it to report statistics (the default has none).
    fn run_with_stats(&self, g: &mut Graph, opts: &PassOptions) -> Result<PassOutcome, PassError> {
        Ok(PassOutcome {
            notes: self.run(g, opts)?,
            stats: PassStats::default(),
        })
    }
}
