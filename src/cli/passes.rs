//! Pass flags shared by `dump`, `run` and `explain`, and running the pipeline.

use super::error::{CliError, CliResult};
use clap::Args;
use reformc_frontend::spec::ModelSpec;
use reformc_ir::Graph;
use reformc_passes::{
    Instrumentation, PassManager, PassOptions, Pipeline, PipelineError, PipelineReport,
};
use std::path::PathBuf;

/// Largest `--seq-len`, and of the chunk flags (a chunk longer than the
/// sequence is one chunk): 2^32 positions, far beyond any position table.
pub const MAX_SEQ_LEN: u64 = 1 << 32;
/// Largest `--batch`.
pub const MAX_BATCH: u64 = 1 << 20;
/// Largest `--memory-budget` in bytes (1 EiB): budgets pass through signed
/// 64-bit arithmetic in the passes.
pub const MAX_MEMORY_BUDGET: u64 = 1 << 60;

/// Flags that choose and observe the pass pipeline (MLIR-style instrumentation).
#[derive(Args, Debug, Clone, Default)]
pub struct PassArgs {
    /// Comma-separated pass pipeline (default: reformc's default pipeline; `none` runs no pass).
    #[arg(long, value_name = "PASSES")]
    pub pipeline: Option<String>,
    /// Print the IR after every pass (on stderr).
    #[arg(long)]
    pub print_after_all: bool,
    /// Print the IR after this pass (repeatable).
    #[arg(long, value_name = "NAME")]
    pub print_after: Vec<String>,
    /// Print the IR only after passes that changed it.
    #[arg(long)]
    pub print_changed: bool,
    /// Write the input IR and the IR after each pass, one numbered file per pass, into DIR.
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,
    /// Skip this pass (repeatable).
    #[arg(long, value_name = "NAME")]
    pub disable_pass: Vec<String>,
    /// Stop the pipeline after this pass.
    #[arg(long, value_name = "NAME")]
    pub stop_after: Option<String>,
    /// Print wall time per pass (and saturation statistics) after the pipeline.
    #[arg(long)]
    pub time_passes: bool,
    /// Attention per layer: what the config asks (default), or auto|full|exact|lsh.
    #[arg(long, value_parser = ["auto", "full", "exact", "lsh"])]
    pub attention: Option<String>,
    /// Key chunk of exact (streaming) attention.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SEQ_LEN))]
    pub kv_chunk: Option<u64>,
    /// Target sequence length for the cost model (and `num_buckets: null`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SEQ_LEN))]
    pub seq_len: Option<u64>,
    /// Target batch size for the cost model.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_BATCH))]
    pub batch: Option<u64>,
    /// Memory budget in bytes for attention and chunking decisions.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_MEMORY_BUDGET))]
    pub memory_budget: Option<u64>,
    /// Chunk the feed-forward along the sequence in chunks of N positions (default: the config's `chunk_size_feed_forward`, else the memory budget decides).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_SEQ_LEN))]
    pub chunk_ff: Option<u64>,
    /// Chunk the LM head along the sequence in chunks of N positions (default: the config's `chunk_size_lm_head`, else the memory budget decides).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_SEQ_LEN))]
    pub chunk_lm_head: Option<u64>,
    /// No progress lines or pass notes on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Set by `grad` and `dump --train`: the pipeline gains the training
    /// passes (`lower-model`, `autodiff`) before `memory-plan`.
    #[arg(skip)]
    pub train: bool,
    /// Training step only: leave out the dropout the config asks for (e.g.
    /// to compare with Hugging Face, which cannot be matched under dropout).
    #[arg(long)]
    pub no_dropout: bool,
    /// Training step only: layers that are not reversible recomputed in the backward pass instead of keeping their activations (auto: the fewest leading layers that fit --memory-budget at --seq-len, none without a budget; reversible layers always recompute).
    #[arg(long, default_value = "auto", value_parser = ["auto", "none", "all"])]
    pub recompute_layers: String,
    /// Training step only: differentiate the tensor-op decomposition of every model op instead of using the fused derivative kernels (`layer_norm_grad`); slower, the reference the fused kernels are tested against.
    #[arg(long)]
    pub lowered_grads: bool,
}

impl PassArgs {
    /// The pipeline these flags name.
    pub fn pipeline(&self) -> CliResult<Pipeline> {
        let p = self.forward_pipeline()?;
        Ok(if self.train {
            reformc_train::grad::with_train_passes(p)
        } else {
            p
        })
    }

    /// The pipeline `--pipeline` names (or the default one), without the training passes.
    fn forward_pipeline(&self) -> CliResult<Pipeline> {
        match self.pipeline.as_deref() {
            None => Ok(Pipeline::default_pipeline()),
            Some("none") | Some("") => {
                Pipeline::new::<&str>(&[]).map_err(|e| CliError::input(format!("--pipeline: {e}")))
            }
            Some(text) => {
                Pipeline::parse(text).map_err(|e| CliError::input(format!("--pipeline: {e}")))
            }
        }
    }

    /// Options every pass sees; chunk sizes default to the model's config.
    pub fn options(&self, spec: &ModelSpec) -> PassOptions {
        let opts = self.options_without_model();
        // A training step applies the config's dropout (never inference).
        let dropout = match self.train && !self.no_dropout {
            true => reformc_train::grad::dropout_rates(spec),
            false => None,
        };
        PassOptions {
            chunk_size_feed_forward: opts
                .chunk_size_feed_forward
                .or(spec.chunk_size_feed_forward),
            chunk_size_lm_head: opts.chunk_size_lm_head.or(spec.chunk_size_lm_head),
            dropout,
            ..opts
        }
    }

    /// Options every pass sees, from the flags alone (for IR read from text).
    pub fn options_without_model(&self) -> PassOptions {
        PassOptions {
            seq_len: self.seq_len,
            batch: self.batch,
            memory_budget: self.memory_budget,
            attention: self.attention.clone(),
            kv_chunk: self.kv_chunk,
            chunk_size_feed_forward: self.chunk_ff,
            chunk_size_lm_head: self.chunk_lm_head,
            recompute: self.recompute_layers.parse().unwrap_or_default(),
            lowered_grads: self.lowered_grads,
            ..PassOptions::default()
        }
    }

    fn instrumentation(&self) -> Instrumentation {
        Instrumentation {
            print_after_all: self.print_after_all,
            print_after: self.print_after.iter().cloned().collect(),
            print_changed: self.print_changed,
            dump_dir: self.dump_dir.clone(),
            disable: self.disable_pass.iter().cloned().collect(),
            stop_after: self.stop_after.clone(),
            time_passes: self.time_passes,
            quiet: self.quiet,
        }
    }

    /// Creates `--dump-dir` and checks that its dumps overwrite none of `inputs`.
    pub fn guard_outputs(&self, inputs: &super::outputs::Inputs<'_>) -> CliResult<()> {
        match &self.dump_dir {
            Some(dir) => super::outputs::guard_dump_dir(dir, inputs),
            None => Ok(()),
        }
    }

    /// Runs the pipeline on `g`; IR dumps and the timing table go to stderr,
    /// progress lines and notes too unless `--quiet`.
    pub fn optimize(
        &self,
        g: &mut Graph,
        spec: &ModelSpec,
        seq_len: Option<u64>,
    ) -> CliResult<PipelineReport> {
        let mut opts = self.options(spec);
        opts.seq_len = opts.seq_len.or(seq_len);
        self.run_pipeline(g, &opts, None)
    }

    /// Runs the pipeline on `g` with `opts` as given (no model config to
    /// default from, as for `reformc opt`); output as [`PassArgs::optimize`].
    /// When the graph is the user's IR file `user_ir`, a pass refusing it is
    /// the user's error (exit 2, naming the file); IR that stops verifying
    /// after a pass stays a bug in reformc.
    pub fn run_pipeline(
        &self,
        g: &mut Graph,
        opts: &PassOptions,
        user_ir: Option<&std::path::Path>,
    ) -> CliResult<PipelineReport> {
        let pm = PassManager::new(self.pipeline()?, self.instrumentation())
            .map_err(|e| CliError::input(e.to_string()))?;
        let mut stderr = std::io::stderr();
        let mut progress = |p: &reformc_passes::Progress<'_>| p.eprint();
        pm.run_with(g, opts, &mut stderr, &mut progress, &mut |_| {})
            .map_err(|e| match (&e, user_ir) {
                (PipelineError::Pass(p), Some(file))
                    if !p.message.contains("does not verify after this pass") =>
                {
                    CliError::input(format!("{}: {e}", file.display()))
                }
                _ => CliError::internal(e.to_string()),
            })
    }
}
