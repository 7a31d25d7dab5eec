//! `reformc explain`: per layer, the attention chosen and why, chunk sizes,
//! FLOPs and the static peak memory of each stage before and after the passes,
//! as an aligned text table or JSON.
//!
//! ```
//! use reformc_passes::{explain::explain, PassOptions, Pipeline};
//! let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[B,L,8]\n %1 = attention %0, %0, %0 {heads=2, key_norm, scale=0.5, self_mask} : f32[B,L,8]\n output \"y\" = %1\n}").unwrap();
//! let opts = PassOptions { seq_len: Some(256), attention: Some("exact".into()), ..Default::default() };
//! let e = explain(&g, &opts, &Pipeline::default_pipeline()).unwrap();
//! assert_eq!(e.layers[0].attention, "exact");
//! assert!(e.peak_bytes < e.peak_bytes_before);
//! let json = e.to_json();
//! assert_eq!(json["layers"][0]["attention"], "exact");
//! assert_eq!(json["seq_len"], 256);
//! assert!(e.to_table().contains("exact"));
//! ```

use crate::attention::{self, AttentionKind, AttentionSite, LayerDecision};
use crate::cost::{dim_env, fmt_bytes, fmt_flops, op_cost, CostError};
use crate::footprint::{footprint, Footprint};
use crate::manager::{Instrumentation, PassEvent, PassManager, Pipeline, PipelineError};
use crate::memory_plan::{plan_memory, MemoryPlan, Stage, DEFAULT_SEQ_LEN};
use crate::pass::PassOptions;
use reformc_ir::Graph;
use serde_json::{json, Value};
use std::fmt;

/// Why explain failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExplainError {
    /// The pipeline could not be built or run, or the attention pass could
    /// not plan its decisions.
    Pipeline(PipelineError),
    /// The cost model could not size the graph before or after a pass.
    Cost(CostError),
    /// A FLOP count or byte size at these target dims does not fit in 64 bits.
    Overflow {
        /// Target batch size.
        batch: u64,
        /// Target sequence length.
        seq_len: u64,
    },
}

impl fmt::Display for ExplainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExplainError::Pipeline(e) => e.fmt(f),
            ExplainError::Cost(e) => write!(f, "cost model: {e}"),
            ExplainError::Overflow { batch, seq_len } => write!(
                f,
                "--seq-len {seq_len} / --batch {batch}: the model's FLOPs or memory at this size do not fit in 64 bits (use a smaller --seq-len or --batch)"
            ),
        }
    }
}

impl std::error::Error for ExplainError {}

impl From<PipelineError> for ExplainError {
    fn from(e: PipelineError) -> Self {
        ExplainError::Pipeline(e)
    }
}

impl From<CostError> for ExplainError {
    fn from(e: CostError) -> Self {
        ExplainError::Cost(e)
    }
}

/// One layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerExplain {
    /// Layer index (as in [`Stage::Layer`]).
    pub index: usize,
    /// `full`, `exact`, `lsh` or `local` after the passes (`none` if the layer has no attention).
    pub attention: String,
    /// What the input graph (the config) used.
    pub requested: String,
    /// Why the layer has the attention it has: the attention pass's reason,
    /// or why there was no decision (no attention, or the pass did not run).
    pub reason: String,
    /// LSH or local chunk length after the passes.
    pub chunk: Option<u64>,
    /// LSH or local chunks before its own that each chunk attends to.
    pub before: Option<u64>,
    /// LSH or local chunks after its own that each chunk attends to.
    pub after: Option<u64>,
    /// Key chunk of chunked-exact attention after the passes.
    pub kv_chunk: Option<u64>,
    /// Hash rounds of LSH attention after the passes.
    pub n_hashes: Option<u64>,
    /// LSH bucket factors after the passes; empty when not LSH or not known.
    pub buckets: Vec<u64>,
    /// FLOPs of the whole layer after the passes.
    pub flops: u64,
    /// FLOPs of the whole layer before the passes.
    pub flops_before: u64,
    /// FLOPs of the attention op alone, after the passes.
    pub attention_flops: u64,
    /// Peak temporary bytes of the attention op alone, after the passes.
    pub attention_temp_bytes: u64,
    /// Peak live bytes while the layer runs, after the passes, in the
    /// unfused liveness model ([`crate::memory_plan`]): a per-layer view,
    /// not what the executable holds (see [`Explanation::footprint`]).
    pub peak_bytes: u64,
    /// The same before the passes.
    pub peak_bytes_before: u64,
}

/// One model stage (inputs, embeddings, layer i, head).
#[derive(Clone, Debug, PartialEq)]
pub struct StageExplain {
    /// The stage's name (`inputs`, `embeddings`, `layer 3`, `head`).
    pub stage: String,
    /// FLOPs of the stage after the passes.
    pub flops: u64,
    /// FLOPs of the stage before the passes.
    pub flops_before: u64,
    /// Peak live bytes during the stage, after the passes, in the unfused
    /// liveness model ([`crate::memory_plan`]).
    pub peak_bytes: u64,
    /// The same before the passes.
    pub peak_bytes_before: u64,
}

/// The state after one pass of the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct PassExplain {
    /// The pass's name.
    pub name: String,
    /// Whether the pass was disabled (`--disable-pass`) and did not run.
    pub skipped: bool,
    /// Whether the pass changed the IR.
    pub changed: bool,
    /// Static peak of the compiled plan ([`Footprint::total`]) after the pass.
    pub peak_bytes: u64,
    /// FLOPs of the whole graph after the pass.
    pub flops: u64,
    /// The notes the pass reported.
    pub notes: Vec<String>,
}

/// Everything explain reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// Target batch size `B`.
    pub batch: u64,
    /// Target sequence length `L` ([`DEFAULT_SEQ_LEN`] when none was given).
    pub seq_len: u64,
    /// `P` before the passes.
    pub padded_len_before: u64,
    /// `P` after the passes (the LSH rewrite may change padding).
    pub padded_len: u64,
    /// The `--attention` mode asked for (`config` when none).
    pub attention_mode: String,
    /// Names of the pipeline's passes, in order.
    pub pipeline: Vec<String>,
    /// One entry per layer, by index.
    pub layers: Vec<LayerExplain>,
    /// One entry per stage, in model order.
    pub stages: Vec<StageExplain>,
    /// The state after each pass that ran or was skipped, in order.
    pub passes: Vec<PassExplain>,
    /// Worker threads the footprint assumes.
    pub threads: u64,
    /// The resident memory of the compiled executable after the passes, by
    /// part: the backend's buffer plan (fusion included) and what the
    /// runtime adds ([`crate::footprint`]).
    pub footprint: Footprint,
    /// Static peak after the passes: [`Footprint::total`] of `footprint`.
    pub peak_bytes: u64,
    /// Static peak of the same plan for the graph before the passes.
    pub peak_bytes_before: u64,
    /// Planned activation bytes (live peak) after the passes.
    pub activation_peak_bytes: u64,
    /// Planned activation bytes (live peak) before the passes.
    pub activation_peak_bytes_before: u64,
    /// Resident weight bytes after the passes.
    pub weight_bytes: u64,
    /// FLOPs of the whole graph after the passes.
    pub flops: u64,
    /// FLOPs of the whole graph before the passes.
    pub flops_before: u64,
    /// Notes other than per-layer decisions, each prefixed with its pass name,
    /// after a note on the assumed length if none was given.
    pub notes: Vec<String>,
}

fn kind_of(site: Option<&AttentionSite>) -> String {
    site.map_or("none".into(), |s| s.kind.name().into())
}

fn stage_peak(plan: &MemoryPlan, stage: Stage) -> (u64, u64) {
    plan.stage(stage)
        .map_or((0, 0), |s| (s.peak_live_bytes, s.flops))
}

/// Runs `pipeline` on a copy of `g` at the target dims of `opts` (a missing
/// `seq_len` means [`DEFAULT_SEQ_LEN`], with a note) and explains the result,
/// for an executable running on one thread.
pub fn explain(
    g: &Graph,
    opts: &PassOptions,
    pipeline: &Pipeline,
) -> Result<Explanation, ExplainError> {
    explain_on(g, opts, pipeline, 1)
}

/// [`explain`] for an executable running on `threads` worker threads (the
/// runtime's per-thread scratch is part of the footprint).
pub fn explain_on(
    g: &Graph,
    opts: &PassOptions,
    pipeline: &Pipeline,
    threads: u64,
) -> Result<Explanation, ExplainError> {
    let mut notes = Vec::new();
    let mut opts = opts.clone();
    if opts.seq_len.is_none() {
        notes.push(format!(
            "no target length given: assumed L={DEFAULT_SEQ_LEN}"
        ));
        opts.seq_len = Some(DEFAULT_SEQ_LEN);
    }
    let (batch, seq) = (
        opts.batch_or_default(),
        opts.seq_len.unwrap_or(DEFAULT_SEQ_LEN),
    );
    let env_before = dim_env(g, batch, seq);
    let before = plan_memory(g, &env_before)?;
    let fp_before = footprint(g, &env_before, threads)?;
    let sites_before = attention::sites(g);

    let pm = PassManager::new(
        pipeline.clone(),
        Instrumentation {
            quiet: true,
            ..Default::default()
        },
    )?;
    let mut work = g.clone();
    let mut decisions: Vec<LayerDecision> = Vec::new();
    let mut passes: Vec<PassExplain> = Vec::new();
    let mut failure: Option<ExplainError> = None;
    let mut observe = |e: PassEvent<'_>| match e {
        PassEvent::Before {
            name: "attention",
            graph,
            ..
        } => match attention::plan(graph, &opts) {
            Ok(d) => decisions = d,
            Err(e) => failure = failure.take().or(Some(ExplainError::Pipeline(e.into()))),
        },
        PassEvent::Before { .. } => {}
        PassEvent::After {
            name,
            graph,
            record,
            ..
        } => {
            let env = dim_env(graph, batch, seq);
            match plan_memory(graph, &env).and_then(|p| Ok((p, footprint(graph, &env, threads)?))) {
                Ok((p, fp)) => passes.push(PassExplain {
                    name: name.into(),
                    skipped: record.skipped,
                    changed: record.changed,
                    peak_bytes: fp.total(),
                    flops: p.flops,
                    notes: record.notes.clone(),
                }),
                Err(e) => failure = failure.take().or(Some(e.into())),
            }
        }
    };
    pm.run_with(
        &mut work,
        &opts,
        &mut std::io::sink(),
        &mut |_| {},
        &mut observe,
    )?;
    if let Some(e) = failure {
        return Err(e);
    }
    let env_after = dim_env(&work, batch, seq);
    let after = plan_memory(&work, &env_after)?;
    let fp = footprint(&work, &env_after, threads)?;
    let sites_after = attention::sites(&work);
    let ran_attention = passes.iter().any(|p| p.name == "attention" && !p.skipped);

    let mut layer_ids: Vec<usize> = before
        .stages
        .iter()
        .chain(&after.stages)
        .filter_map(|s| {
            if let Stage::Layer(i) = s.stage {
                Some(i as usize)
            } else {
                None
            }
        })
        .collect();
    layer_ids.extend(sites_after.iter().map(|s| s.layer));
    layer_ids.sort_unstable();
    layer_ids.dedup();
    let mut layers = Vec::new();
    for i in layer_ids {
        let sb = sites_before.iter().find(|s| s.layer == i);
        let sa = sites_after.iter().find(|s| s.layer == i);
        let d = decisions.iter().find(|d| d.layer == i);
        let reason = match (d, ran_attention) {
            (Some(d), _) => d.reason.clone(),
            (None, true) => "no attention in this layer".into(),
            (None, false) => "the attention pass did not run: as configured".into(),
        };
        let (chunk, before_c, after_c, n_hashes, buckets) = match sa {
            Some(AttentionSite { lsh: Some(p), .. }) => (
                Some(p.chunk),
                Some(p.before),
                Some(p.after),
                Some(p.n_hashes),
                p.buckets.clone(),
            ),
            Some(AttentionSite {
                local: Some((c, b, a)),
                ..
            }) => (Some(*c), Some(*b), Some(*a), None, vec![]),
            _ => (None, None, None, None, vec![]),
        };
        let att = match sa {
            Some(s) => op_cost(&work, s.value, &env_after)?,
            None => Default::default(),
        };
        let (peak_b, flops_b) = stage_peak(&before, Stage::Layer(i as u32));
        let (peak_a, flops_a) = stage_peak(&after, Stage::Layer(i as u32));
        layers.push(LayerExplain {
            index: i,
            attention: kind_of(sa),
            requested: kind_of(sb),
            reason,
            chunk,
            before: before_c,
            after: after_c,
            kv_chunk: sa.and_then(|s| s.kv_chunk),
            n_hashes,
            buckets,
            flops: flops_a,
            flops_before: flops_b,
            attention_flops: att.flops,
            attention_temp_bytes: att.temp_bytes,
            peak_bytes: peak_a,
            peak_bytes_before: peak_b,
        });
    }
    let mut stage_ids: Vec<Stage> = before
        .stages
        .iter()
        .chain(&after.stages)
        .map(|s| s.stage)
        .collect();
    stage_ids.sort();
    stage_ids.dedup();
    let stages = stage_ids
        .into_iter()
        .map(|s| {
            let (pb, fb) = stage_peak(&before, s);
            let (pa, fa) = stage_peak(&after, s);
            StageExplain {
                stage: s.to_string(),
                flops: fa,
                flops_before: fb,
                peak_bytes: pa,
                peak_bytes_before: pb,
            }
        })
        .collect();
    for p in &passes {
        notes.extend(
            p.notes
                .iter()
                .filter(|n| !n.starts_with("layer "))
                .map(|n| format!("{}: {n}", p.name)),
        );
    }
    let _ = sites_before;
    let e = Explanation {
        batch,
        seq_len: seq,
        padded_len_before: env_before.get("P").copied().unwrap_or(seq),
        padded_len: env_after.get("P").copied().unwrap_or(seq),
        attention_mode: opts.attention.clone().unwrap_or_else(|| "config".into()),
        pipeline: pipeline.passes.clone(),
        layers,
        stages,
        passes,
        threads,
        footprint: fp,
        peak_bytes: fp.total(),
        peak_bytes_before: fp_before.total(),
        activation_peak_bytes: fp.activations,
        activation_peak_bytes_before: fp_before.activations,
        weight_bytes: fp.weights,
        flops: after.flops,
        flops_before: before.flops,
        notes,
    };
    if e.saturated() {
        return Err(ExplainError::Overflow {
            batch,
            seq_len: seq,
        });
    }
    Ok(e)
}

impl Explanation {
    /// True when a figure hit `u64::MAX`: the cost model saturates instead of
    /// wrapping, so that value means "overflowed", never a real count.
    fn saturated(&self) -> bool {
        let layers = self.layers.iter().flat_map(|l| {
            [
                l.flops,
                l.flops_before,
                l.attention_flops,
                l.attention_temp_bytes,
                l.peak_bytes,
                l.peak_bytes_before,
            ]
        });
        let stages = self
            .stages
            .iter()
            .flat_map(|s| [s.flops, s.flops_before, s.peak_bytes, s.peak_bytes_before]);
        let passes = self.passes.iter().flat_map(|p| [p.peak_bytes, p.flops]);
        let totals = [
            self.padded_len,
            self.padded_len_before,
            self.peak_bytes,
            self.peak_bytes_before,
            self.activation_peak_bytes,
            self.activation_peak_bytes_before,
            self.weight_bytes,
            self.flops,
            self.flops_before,
        ];
        totals
            .into_iter()
            .chain(layers)
            .chain(stages)
            .chain(passes)
            .any(|x| x == u64::MAX)
    }
}

/// Rows of cells as an aligned table; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn opt(x: Option<u64>) -> String {
    x.map_or("-".into(), |v| v.to_string())
}

impl LayerExplain {
    /// `c=64 1/0 r=2 nb=[32,64]`, `c=16 1/0`, `kv=128` or `-`.
    pub fn chunks(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.chunk {
            parts.push(format!("c={c} {}/{}", opt(self.before), opt(self.after)));
        }
        if let Some(r) = self.n_hashes {
            parts.push(format!("r={r}"));
        }
        if !self.buckets.is_empty() {
            parts.push(format!("nb={:?}", self.buckets).replace(' ', ""));
        }
        if let Some(k) = self.kv_chunk {
            parts.push(format!("kv={k}"));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

impl Explanation {
    /// The aligned text table `reformc explain` prints.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "B={} L={}{} attention={} pipeline: {}\n\n",
            self.batch,
            self.seq_len,
            if self.padded_len != self.seq_len {
                format!(" (padded to {})", self.padded_len)
            } else {
                String::new()
            },
            self.attention_mode,
            if self.pipeline.is_empty() {
                "(empty)".into()
            } else {
                self.pipeline.join(", ")
            }
        );
        let mut rows = vec![vec![
            "layer".to_string(),
            "attention".into(),
            "was".into(),
            "chunks".into(),
            "FLOPs".into(),
            "unfused peak before".into(),
            "unfused peak after".into(),
            "why".into(),
        ]];
        for l in &self.layers {
            rows.push(vec![
                l.index.to_string(),
                l.attention.clone(),
                l.requested.clone(),
                l.chunks(),
                fmt_flops(l.flops),
                fmt_bytes(l.peak_bytes_before),
                fmt_bytes(l.peak_bytes),
                l.reason.clone(),
            ]);
        }
        s.push_str(&table(&rows));
        s.push('\n');
        let mut rows = vec![vec![
            "stage".to_string(),
            "FLOPs before".into(),
            "FLOPs after".into(),
            "unfused peak before".into(),
            "unfused peak after".into(),
        ]];
        for st in &self.stages {
            rows.push(vec![
                st.stage.clone(),
                fmt_flops(st.flops_before),
                fmt_flops(st.flops),
                fmt_bytes(st.peak_bytes_before),
                fmt_bytes(st.peak_bytes),
            ]);
        }
        s.push_str(&table(&rows));
        s.push('\n');
        let mut rows = vec![vec![
            "after pass".to_string(),
            "static peak".into(),
            "FLOPs".into(),
            "changed".into(),
        ]];
        for p in &self.passes {
            let changed = if p.skipped {
                "disabled"
            } else if p.changed {
                "yes"
            } else {
                "no"
            };
            rows.push(vec![
                p.name.clone(),
                fmt_bytes(p.peak_bytes),
                fmt_flops(p.flops),
                changed.into(),
            ]);
        }
        s.push_str(&table(&rows));
        let f = &self.footprint;
        s.push_str(&format!(
            "\nstatic peak of the compiled plan on {} thread{}: {} -> {}; FLOPs: {} -> {}\n",
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            fmt_bytes(self.peak_bytes_before),
            fmt_bytes(self.peak_bytes),
            fmt_flops(self.flops_before),
            fmt_flops(self.flops)
        ));
        s.push_str(&format!(
            "  activations {} (before the passes {}), allocator cache {}, weights {}, inputs {}, kernel scratch {}, thread scratch {}, executable {}\n",
            fmt_bytes(f.activations),
            fmt_bytes(self.activation_peak_bytes_before),
            fmt_bytes(f.allocator_cache),
            fmt_bytes(f.weights),
            fmt_bytes(f.inputs),
            fmt_bytes(f.kernel_scratch),
            fmt_bytes(f.thread_scratch),
            fmt_bytes(f.fixed),
        ));
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    }

    /// The JSON `reformc explain --json` prints (numbers in FLOPs and bytes).
    pub fn to_json(&self) -> Value {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                json!({
                    "index": l.index, "attention": l.attention, "requested": l.requested, "reason": l.reason,
                    "chunk": l.chunk, "before": l.before, "after": l.after, "kv_chunk": l.kv_chunk,
                    "n_hashes": l.n_hashes, "buckets": l.buckets,
                    "flops": l.flops, "flops_before": l.flops_before,
                    "attention_flops": l.attention_flops, "attention_temp_bytes": l.attention_temp_bytes,
                    "peak_bytes": l.peak_bytes, "peak_bytes_before": l.peak_bytes_before,
                })
            })
            .collect();
        let stages: Vec<Value> = self
            .stages
            .iter()
            .map(|s| json!({"stage": s.stage, "flops": s.flops, "flops_before": s.flops_before, "peak_bytes": s.peak_bytes, "peak_bytes_before": s.peak_bytes_before}))
            .collect();
        let passes: Vec<Value> = self
            .passes
            .iter()
            .map(|p| json!({"name": p.name, "skipped": p.skipped, "changed": p.changed, "peak_bytes": p.peak_bytes, "flops": p.flops, "notes": p.notes}))
            .collect();
        json!({
            "batch": self.batch, "seq_len": self.seq_len, "padded_len": self.padded_len, "padded_len_before": self.padded_len_before,
            "attention_mode": self.attention_mode, "pipeline": self.pipeline,
            "peak_bytes": self.peak_bytes, "peak_bytes_before": self.peak_bytes_before,
            "activation_peak_bytes": self.activation_peak_bytes, "activation_peak_bytes_before": self.activation_peak_bytes_before,
            "weight_bytes": self.weight_bytes, "flops": self.flops, "flops_before": self.flops_before,
            "threads": self.threads,
            "footprint": {
                "activations": self.footprint.activations, "allocator_cache": self.footprint.allocator_cache,
                "weights": self.footprint.weights, "inputs": self.footprint.inputs,
                "kernel_scratch": self.footprint.kernel_scratch, "thread_scratch": self.footprint.thread_scratch,
                "executable": self.footprint.fixed,
            },
            "layers": layers, "stages": stages, "passes": passes, "notes": self.notes,
        })
    }
}

impl AttentionKind {
    /// Parses `full`, `exact`, `lsh`, `local`.
    pub fn from_name(s: &str) -> Option<AttentionKind> {
        [
            AttentionKind::Full,
            AttentionKind::Exact,
            AttentionKind::Lsh,
            AttentionKind::Local,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}
