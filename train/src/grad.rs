//! The gradient engine behind `reformc train`: the model's training-step
//! graph (forward, loss, reverse mode with reversible recomputation), run on
//! the reference interpreter or compiled once by the LLVM JIT, with the
//! updated weights rebound before each step.

use crate::labels::aligned;
use crate::step::StepFn;
use ndarray::{ArrayD, IxDyn};
use reformc_backend_llvm::{Context, JitModel};
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_frontend::spec::ModelSpec;
use reformc_ir::{DType, Graph};
use reformc_passes::autodiff::checkpoint::LayerRecompute;
use reformc_passes::autodiff::{GRAD_PREFIX, LABELS, LOSS};
use reformc_passes::lower_model::DropoutRates;
use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::time::Duration;

/// The passes of a training step after the default pipeline, in order.
pub const TRAIN_PASSES: &[&str] = &["lower-model", "autodiff"];

/// The default pipeline with [`TRAIN_PASSES`] inserted before `memory-plan`.
///
/// ```
/// let p = reformc_train::grad::train_pipeline();
/// let at = |n: &str| p.passes.iter().position(|x| x == n).unwrap();
/// assert!(at("lower-model") < at("autodiff") && at("autodiff") < at("memory-plan"));
/// ```
pub fn train_pipeline() -> Pipeline {
    with_train_passes(Pipeline::default_pipeline())
}

/// `p` with [`TRAIN_PASSES`] inserted before its `memory-plan` (or at its end).
pub fn with_train_passes(mut p: Pipeline) -> Pipeline {
    let at = p
        .passes
        .iter()
        .position(|n| n == "memory-plan")
        .unwrap_or(p.passes.len());
    for (i, name) in TRAIN_PASSES.iter().enumerate() {
        p.passes.insert(at + i, name.to_string());
    }
    p
}

/// Turns a forward graph into its training step in place: the
/// [`train_pipeline`] (default passes, `lower-model`, `autodiff`,
/// `memory-plan`), quietly. Returns what `autodiff` decided about
/// recomputing layers (empty when there was nothing to decide).
pub fn build_step(graph: &mut Graph, opts: &PassOptions) -> Result<Vec<String>, String> {
    let quiet = Instrumentation {
        quiet: true,
        ..Default::default()
    };
    let pm = PassManager::new(train_pipeline(), quiet).map_err(|e| e.to_string())?;
    let report = pm
        .run(graph, opts, &mut std::io::sink())
        .map_err(|e| e.to_string())?;
    Ok(report
        .records
        .into_iter()
        .filter(|r| r.name == "autodiff")
        .flat_map(|r| r.notes)
        .filter(|n| n.contains("recomput"))
        .collect())
}

/// How much activation memory a step may keep: the budget, the policy for
/// recomputing layers that are not reversible (`--memory-budget`,
/// `--recompute-layers`; see `reformc_passes::autodiff::checkpoint`), and
/// chunk sizes that override the config's (`--chunk-ff`, `--chunk-lm-head`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepMemory {
    /// Bytes the step's static activation peak should stay under.
    pub budget: Option<u64>,
    /// Which layers to recompute.
    pub recompute: LayerRecompute,
    /// Positions per feed-forward chunk (the chunked feed-forward and its
    /// blocked derivative), instead of the config's `chunk_size_feed_forward`.
    pub chunk_ff: Option<u64>,
    /// Positions per LM-head chunk, instead of the config's `chunk_size_lm_head`.
    pub chunk_lm_head: Option<u64>,
}

/// The dropout a training step of `spec` applies (`None` when all its
/// probabilities are 0; see [`ModelSpec::for_training`] for `--no-dropout`).
pub fn dropout_rates(spec: &ModelSpec) -> Option<DropoutRates> {
    let d = &spec.dropout;
    let rates = DropoutRates {
        hidden: d.hidden,
        lsh_attention: d.lsh_attention,
        local_attention: d.local_attention,
    };
    (!rates.is_zero()).then_some(rates)
}

/// What runs a [`ModelStep`].
enum Engine<'ctx> {
    /// The reference interpreter (`reformc_interp`).
    Interp,
    /// The step compiled by the LLVM JIT.
    Jit(Box<JitModel<'ctx>>),
}

/// One training step of a model: forward, loss and backward.
pub struct ModelStep<'ctx> {
    graph: Graph,
    causal: bool,
    seed: u64,
    shape: [usize; 2],
    engine: Engine<'ctx>,
    notes: Vec<String>,
}

impl std::fmt::Debug for ModelStep<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStep")
            .field("ops", &self.graph.body.len())
            .field("shape", &self.shape)
            .field("engine", &self.engine_name())
            .finish()
    }
}

impl<'ctx> ModelStep<'ctx> {
    /// Prepares the step of `spec` for batches `[batch, seq_len]` in f32,
    /// hashing with seeds derived from (`seed`, step); it runs on the
    /// interpreter until [`ModelStep::compile`].
    pub fn new(
        spec: &ModelSpec,
        seq_len: u64,
        batch: u64,
        seed: u64,
    ) -> Result<ModelStep<'ctx>, String> {
        Self::with_memory(spec, seq_len, batch, seed, StepMemory::default())
    }

    /// [`ModelStep::new`] under `memory`'s budget and recompute policy.
    pub fn with_memory(
        spec: &ModelSpec,
        seq_len: u64,
        batch: u64,
        seed: u64,
        memory: StepMemory,
    ) -> Result<ModelStep<'ctx>, String> {
        let opts = LowerOptions {
            dtype: DType::F32,
            lsh_source: LshSource::Seeded,
            seq_len: Some(seq_len),
        };
        let mut graph = lower(spec, &opts)?.graph;
        let pass_opts = PassOptions {
            seq_len: Some(seq_len),
            batch: Some(batch),
            chunk_size_feed_forward: memory.chunk_ff.or(spec.chunk_size_feed_forward),
            chunk_size_lm_head: memory.chunk_lm_head.or(spec.chunk_size_lm_head),
            dropout: dropout_rates(spec),
            memory_budget: memory.budget,
            recompute: memory.recompute,
            ..Default::default()
        };
        let notes = build_step(&mut graph, &pass_opts)?;
        Ok(ModelStep {
            graph,
            causal: spec.causal,
            seed,
            shape: [batch as usize, seq_len as usize],
            engine: Engine::Interp,
            notes,
        })
    }

    /// Compiles the step with the LLVM JIT in `ctx` (weights of the model's
    /// names and shapes are needed to bind; each step rebinds its own) and
    /// runs every later step on it; returns the compile time.
    pub fn compile(
        &mut self,
        ctx: &'ctx Context,
        weights: &BTreeMap<String, Tensor>,
    ) -> Result<Duration, String> {
        self.compile_with(ctx, weights, false)
    }

    /// [`ModelStep::compile`], with every matrix product of bf16-rounded
    /// operands accumulated in f32 when `bf16` (mixed precision).
    pub fn compile_with(
        &mut self,
        ctx: &'ctx Context,
        weights: &BTreeMap<String, Tensor>,
        bf16: bool,
    ) -> Result<Duration, String> {
        let opts = reformc_backend_llvm::CompileOptions {
            bf16,
            ..Default::default()
        };
        let jit =
            JitModel::with_options(ctx, &self.graph, weights, &opts).map_err(|e| e.to_string())?;
        let t = jit.compile_time;
        self.engine = Engine::Jit(Box::new(jit));
        Ok(t)
    }

    /// What the `autodiff` pass decided about recomputing layers (see
    /// [`StepMemory`]); empty for reversible models and without a budget.
    pub fn memory_notes(&self) -> &[String] {
        &self.notes
    }

    /// `interpreter` or `LLVM JIT`.
    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            Engine::Interp => "interpreter",
            Engine::Jit(_) => "LLVM JIT",
        }
    }

    /// The training-step graph this engine runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
}

/// The LSH seed of step `step` of a run seeded `seed` (SplitMix64 of both):
/// a resumed run hashes exactly as the uninterrupted one.
///
/// ```
/// use reformc_train::grad::step_seed;
/// assert_eq!(step_seed(1, 5), step_seed(1, 5));
/// assert_ne!(step_seed(1, 5), step_seed(1, 6));
/// ```
pub fn step_seed(seed: u64, step: u64) -> i64 {
    let mut z = seed ^ step.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

impl StepFn for ModelStep<'_> {
    fn step(
        &mut self,
        weights: &BTreeMap<String, Tensor>,
        ids: &Tensor,
        step: u64,
    ) -> Result<(f64, BTreeMap<String, Tensor>), String> {
        let Tensor::I64(ids) = ids else {
            return Err("token ids must be i64".into());
        };
        if ids.shape() != self.shape {
            return Err(format!(
                "token ids have shape {:?}, the step was built for {:?}",
                ids.shape(),
                self.shape
            ));
        }
        let mut inputs = BTreeMap::new();
        inputs.insert(LABELS.to_string(), Tensor::I64(aligned(ids, self.causal)));
        inputs.insert("input_ids".to_string(), Tensor::I64(ids.clone()));
        inputs.insert(
            "attention_mask".to_string(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&self.shape), 1)),
        );
        let seed = step_seed(self.seed, step);
        inputs.insert(
            "seed".to_string(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[]), seed)),
        );
        let mut out = match &mut self.engine {
            Engine::Interp => {
                reformc_interp::run(&self.graph, &inputs, weights).map_err(|e| e.to_string())
            }
            Engine::Jit(jit) => jit
                .set_weights(weights)
                .and_then(|()| jit.run(&inputs))
                .map_err(|e| e.to_string()),
        }?;
        split_step_outputs(&mut out)
    }
}

/// A step graph's outputs as (loss, gradient by weight name): `loss` and
/// each `grad:<weight>`; other outputs are left in `out`.
pub fn split_step_outputs(
    out: &mut BTreeMap<String, Tensor>,
) -> Result<(f64, BTreeMap<String, Tensor>), String> {
    let loss = out
        .remove(LOSS)
        .ok_or("the step graph has no loss output")?
        .to_f64();
    let loss = loss.iter().next().copied().unwrap_or(f64::NAN);
    let names: Vec<String> = out
        .keys()
        .filter(|n| n.starts_with(GRAD_PREFIX))
        .cloned()
        .collect();
    let grads = names
        .into_iter()
        .filter_map(|n| {
            let t = out.remove(&n)?;
            Some((n[GRAD_PREFIX.len()..].to_string(), t))
        })
        .collect();
    Ok((loss, grads))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reformc_frontend::config::{parse_model_config, read_config_text};

    fn spec() -> ModelSpec {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/causal_mixed_r2/config.json");
        parse_model_config(&read_config_text(&path).unwrap(), &path)
            .unwrap()
            .0
    }

    #[test]
    fn the_memory_settings_chunk_sizes_reach_the_step() {
        let count = |memory: StepMemory, op: &str| {
            let step = ModelStep::with_memory(&spec(), 32, 1, 0, memory).unwrap();
            reformc_ir::print(step.graph()).matches(op).count()
        };
        assert_eq!(count(StepMemory::default(), "feed_forward_grad "), 0);
        let ff = StepMemory {
            chunk_ff: Some(8),
            ..StepMemory::default()
        };
        // Seven gradients for each of the fixture's four layers.
        assert_eq!(count(ff, "feed_forward_grad "), 28);
        let head = StepMemory {
            chunk_lm_head: Some(8),
            ..StepMemory::default()
        };
        assert!(count(head, "lm_loss_grad ") > 0);
        assert_eq!(count(StepMemory::default(), "lm_loss_grad "), 0);
    }
}
