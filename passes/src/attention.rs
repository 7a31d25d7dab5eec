//! The `attention` pass: per layer, chooses among full (materialised softmax),
//! exact (chunked-exact: streaming softmax over key chunks), `lsh` and `local`.
//!
//! [`PassOptions::attention`] selects the mode:
//! - `None`: keep what the config asks (notes say what each layer uses);
//! - `full` / `exact`: LSH layers become exact shared-QK attention
//!   (`attention %qk, %qk, %v, %mask {key_norm, self_mask, scale=1/sqrt(d)}`,
//!   Hugging Face's short-sequence path), full layers are materialised (`full`)
//!   or streamed over key chunks (`exact`, attribute `kv_chunk`);
//! - `lsh`: shared-QK attention (queries and keys the same value, with key
//!   normalisation and the self mask) becomes `lsh_hash` + `lsh_attention`,
//!   rotations drawn by `random_normal %seed {stream=k}`; other full attention
//!   cannot become LSH and a note says why;
//! - `auto`: the cost model decides per layer at the target length (see
//!   [`choose`]).
//!
//! Local layers stay local in every mode: local attention is a different
//! function (a window of chunks), not an implementation of full attention.
//!
//! ```
//! use reformc_passes::{attention::AttentionPass, Pass, PassOptions};
//! let text = "graph {\n  %0 = input {name=\"x\"} : f32[B,L,8]\n  %1 = attention %0, %0, %0 {heads=2, key_norm, scale=0.5, self_mask} : f32[B,L,8]\n  output \"y\" = %1\n}\n";
//! let mut g = reformc_ir::parse(text).unwrap();
//! let opts = PassOptions { attention: Some("exact".into()), kv_chunk: Some(16), ..Default::default() };
//! let notes = AttentionPass.run(&mut g, &opts).unwrap();
//! assert!(reformc_ir::print(&g).contains("kv_chunk=16"));
//! assert!(notes[0].starts_with("layer 0: exact"));
//! ```

use crate::cost::{self, fmt_bytes, fmt_flops, AttentionShape, LshShape, OpCost};
use crate::memory_plan::{stages, Stage};
use crate::pass::{Pass, PassError, PassOptions};
use reformc_ir::{
    hf_rules, Attr, BlockId, CostClass, DType, Dim, DimEnv, Graph, Node, Op, OpKind, Rewriter,
    TensorType, ValueId,
};
use std::fmt;
use std::str::FromStr;

/// Key chunk of chunked-exact attention when [`PassOptions::kv_chunk`] is not given.
pub const DEFAULT_KV_CHUNK: u64 = 128;
/// Budget for one attention's temporaries when [`PassOptions::memory_budget`] is not given.
pub const DEFAULT_MEMORY_BUDGET: u64 = 1 << 30;
/// `auto` picks LSH only when it needs at most 1/16 of exact attention's FLOPs:
/// LSH is an approximation, worth it only when it is much cheaper.
pub const LSH_MIN_SPEEDUP: u64 = 16;
/// Chunk length of LSH layers the pass creates when
/// [`LshOverrides::chunk`](crate::LshOverrides::chunk) is not given (HF's
/// `lsh_attn_chunk_length` default).
pub const DEFAULT_LSH_CHUNK: u64 = 64;
/// Chunks before its own that each chunk of a new LSH layer also attends to
/// (HF's `lsh_num_chunks_before` default).
pub const DEFAULT_LSH_BEFORE: u64 = 1;
/// Chunks after its own that each chunk of a new LSH layer also attends to
/// (HF's `lsh_num_chunks_after` default).
pub const DEFAULT_LSH_AFTER: u64 = 0;
/// Hash rounds of a new LSH layer (HF's `num_hashes` default).
pub const DEFAULT_LSH_HASHES: u64 = 1;

/// `--attention=`: what the pass does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionMode {
    /// Keep what the config asks.
    Config,
    /// Let the cost model choose per layer at the target length (see [`choose`]).
    Auto,
    /// Materialise the softmax in every non-local layer; LSH layers become
    /// exact shared-QK attention.
    Full,
    /// Stream the softmax over key chunks in every non-local layer, LSH
    /// layers included (exact result, O(L) memory).
    Exact,
    /// Turn shared-QK attention with key normalisation, self mask and scale
    /// 1/sqrt(d) into LSH attention; other layers are kept, with a note.
    Lsh,
}

impl FromStr for AttentionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AttentionMode::Auto),
            "full" => Ok(AttentionMode::Full),
            "exact" => Ok(AttentionMode::Exact),
            "lsh" => Ok(AttentionMode::Lsh),
            "config" | "keep" => Ok(AttentionMode::Config),
            _ => Err(format!(
                "unknown attention mode `{s}` (expected auto, full, exact or lsh)"
            )),
        }
    }
}

impl AttentionMode {
    /// The mode [`PassOptions::attention`] asks for.
    pub fn of(opts: &PassOptions) -> Result<AttentionMode, String> {
        opts.attention
            .as_deref()
            .map_or(Ok(AttentionMode::Config), str::parse)
    }
}

/// How one layer's attention is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionKind {
    /// Materialised softmax over all keys.
    Full,
    /// Streaming softmax over key chunks (`attention {kv_chunk}`), exact.
    Exact,
    /// Reformer LSH attention.
    Lsh,
    /// Chunked local attention.
    Local,
}

impl AttentionKind {
    /// `full`, `exact`, `lsh` or `local`.
    pub fn name(self) -> &'static str {
        match self {
            AttentionKind::Full => "full",
            AttentionKind::Exact => "exact",
            AttentionKind::Lsh => "lsh",
            AttentionKind::Local => "local",
        }
    }
}

impl fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// LSH parameters of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LshParams {
    /// Chunk length in positions: after sorting by bucket, queries attend in
    /// chunks of this size.
    pub chunk: u64,
    /// Chunks before its own that each chunk also attends to.
    pub before: u64,
    /// Chunks after its own that each chunk also attends to.
    pub after: u64,
    /// Hash rounds; each round buckets and attends on its own, and the rounds'
    /// outputs are combined.
    pub n_hashes: u64,
    /// Bucket factors; empty when not known (recorded buckets).
    pub buckets: Vec<u64>,
}

/// One attention in the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionSite {
    /// Layer index (the op's `layer` attribute, else its weights', else the
    /// order of appearance).
    pub layer: usize,
    /// The `attention`, `lsh_attention` or `local_attention` op.
    pub value: ValueId,
    /// How the op computes attention now.
    pub kind: AttentionKind,
    /// Queries and keys are one value (LSH's precondition).
    pub shared_qk: bool,
    /// Shared QK with key normalisation, self mask and scale 1/sqrt(d): the
    /// function LSH attention approximates.
    pub lsh_compatible: bool,
    /// The `kv_chunk` attribute of chunked-exact attention; `None` otherwise.
    pub kv_chunk: Option<u64>,
    /// The parameters of an LSH layer; `None` for other kinds. Bucket factors
    /// are read from the feeding `lsh_hash`.
    pub lsh: Option<LshParams>,
    /// `(chunk, before, after)` of a local layer; `None` for other kinds.
    pub local: Option<(u64, u64, u64)>,
}

/// What the pass decided for one layer, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerDecision {
    /// Layer index, as in [`AttentionSite::layer`].
    pub layer: usize,
    /// The attention op the decision is about.
    pub value: ValueId,
    /// How the layer computes attention before the pass.
    pub from: AttentionKind,
    /// How it computes attention after the pass.
    pub to: AttentionKind,
    /// One sentence (no layer prefix).
    pub reason: String,
    /// Key chunk the layer ends up with when `to` is
    /// [`AttentionKind::Exact`]; `None` for full and LSH.
    pub kv_chunk: Option<u64>,
    /// LSH parameters when `to` is [`AttentionKind::Lsh`]: the layer's own if
    /// it already was LSH, else the defaults and overrides with bucket factors
    /// chosen for the target length. `None` for the other kinds.
    pub lsh: Option<LshParams>,
    /// `(chunk, before, after)` of a local layer, which always stays local.
    pub local: Option<(u64, u64, u64)>,
    /// Costs of the candidates at the target dims, when they were evaluated.
    pub costs: Vec<(AttentionKind, OpCost)>,
}

impl LayerDecision {
    /// `layer 3: lsh (why)`.
    pub fn note(&self) -> String {
        format!("layer {}: {} ({})", self.layer, self.to, self.reason)
    }
}

/// Longest sequence the graph's position embeddings allow (axial grid or
/// learned table rows), if the graph has them.
pub fn max_positions(g: &Graph) -> Option<u64> {
    for v in g.walk() {
        let node = g.node(v);
        if node.op.kind == OpKind::AxialPosEmbedding && node.inputs.len() == 3 {
            let n0 = g.ty(node.inputs[1]).shape.first().and_then(Dim::as_const);
            let n1 = g.ty(node.inputs[2]).shape.get(1).and_then(Dim::as_const);
            if let (Some(a), Some(b)) = (n0, n1) {
                return Some(a * b);
            }
        }
        // A learned table read at positions `iota` has one row per position.
        if node.op.kind == OpKind::Embedding
            && node.inputs.len() == 2
            && g.node(node.inputs[0]).op.kind == OpKind::Iota
        {
            if let Some(rows) = g.ty(node.inputs[1]).shape.first().and_then(Dim::as_const) {
                return Some(rows);
            }
        }
    }
    None
}

fn err(message: String) -> PassError {
    PassError {
        pass: "attention".into(),
        message,
    }
}

fn int_attr(node: &Node, name: &str) -> u64 {
    node.op.int(name).unwrap_or(0).max(0) as u64
}

fn head_dim(g: &Graph, x: ValueId, heads: u64) -> Option<u64> {
    g.ty(x)
        .shape
        .last()
        .and_then(Dim::as_const)
        .filter(|w| heads > 0 && w % heads == 0)
        .map(|w| w / heads)
}

/// Every attention op in `g` (regions included), in execution order.
pub fn sites(g: &Graph) -> Vec<AttentionSite> {
    let stage = stages(g);
    let mut out = Vec::new();
    for v in g.walk() {
        let node = g.node(v);
        // The attention ops are the kinds with an attention cost formula.
        let kind = match node.op.kind.facts().cost {
            CostClass::Attention if node.op.int("kv_chunk").is_some() => AttentionKind::Exact,
            CostClass::Attention => AttentionKind::Full,
            CostClass::LshAttention => AttentionKind::Lsh,
            CostClass::LocalAttention => AttentionKind::Local,
            CostClass::LshHash
            | CostClass::Free
            | CostClass::Generate(_)
            | CostClass::PerElement(_)
            | CostClass::Copy
            | CostClass::Lookup
            | CostClass::Scatter
            | CostClass::Linear
            | CostClass::FeedForward
            | CostClass::Matmul
            | CostClass::LmLoss
            | CostClass::Reduce
            | CostClass::Sort => continue,
        };
        let ordinal = out.len();
        // The frontend's `layer` attribute, else the layer of the weights the
        // op depends on, else the order of appearance.
        let layer = match (node.op.layer(), stage.get(&v)) {
            (Some(i), _) => usize::try_from(i).unwrap_or(usize::MAX),
            (None, Some(Stage::Layer(i))) => *i as usize,
            _ => ordinal,
        };
        let heads = int_attr(node, "heads").max(1);
        let shared_qk = match kind {
            AttentionKind::Full | AttentionKind::Exact => node.inputs.first() == node.inputs.get(1),
            AttentionKind::Lsh => true,
            AttentionKind::Local => false,
        };
        let scale_ok = node
            .inputs
            .first()
            .and_then(|q| head_dim(g, *q, heads))
            .is_some_and(|d| {
                let want = 1.0 / (d as f64).sqrt();
                node.op
                    .float("scale")
                    .is_some_and(|s| (s - want).abs() <= 1e-12 * want)
            });
        let lsh_compatible = node.op.kind == OpKind::LshAttention
            || (shared_qk && node.op.flag("key_norm") && node.op.flag("self_mask") && scale_ok);
        let lsh = (node.op.kind == OpKind::LshAttention).then(|| {
            let buckets = node.inputs.get(2).map(|b| g.node(*b));
            let n_hashes = node
                .inputs
                .get(2)
                .and_then(|b| g.ty(*b).shape.get(2))
                .and_then(Dim::as_const)
                .unwrap_or(1);
            let factors = buckets
                .filter(|b| b.op.kind == OpKind::LshHash)
                .and_then(|b| b.op.ints("buckets"))
                .map(|f| f.iter().map(|x| (*x).max(0) as u64).collect())
                .unwrap_or_default();
            LshParams {
                chunk: int_attr(node, "chunk"),
                before: int_attr(node, "before"),
                after: int_attr(node, "after"),
                n_hashes,
                buckets: factors,
            }
        });
        let local = (node.op.kind == OpKind::LocalAttention).then(|| {
            (
                int_attr(node, "chunk"),
                int_attr(node, "before"),
                int_attr(node, "after"),
            )
        });
        out.push(AttentionSite {
            layer,
            value: v,
            kind,
            shared_qk,
            lsh_compatible,
            kv_chunk: node.op.int("kv_chunk").map(|k| k.max(1) as u64),
            lsh,
            local,
        });
    }
    out
}

/// Target dims for decisions: `B`, `L`, `P` with `P` from the graph's padding
/// rule, or the length LSH padding (to a multiple of `lsh_chunk`) would give.
fn target_env(g: &Graph, opts: &PassOptions, lsh_chunk: Option<u64>) -> Option<DimEnv> {
    let seq = opts.seq_len?;
    let mut env = cost::dim_env(g, opts.batch_or_default(), seq);
    if let Some(c) = lsh_chunk {
        let (multiple, min_len) = padding_rule(g);
        let (m, min) = hf_rules::with_chunk((multiple, min_len), c);
        env.insert("P".into(), cost::pad_len(seq, m, min));
    }
    Some(env)
}

/// The graph's (multiple, min_len) of its first `pad_to_multiple`, or (1, 0).
fn padding_rule(g: &Graph) -> (u64, u64) {
    g.walk()
        .into_iter()
        .map(|v| g.node(v))
        .find(|n| n.op.kind == OpKind::PadToMultiple)
        .map(|n| {
            (
                n.op.int("multiple").unwrap_or(1).max(1) as u64,
                n.op.int("min_len").unwrap_or(0).max(0) as u64,
            )
        })
        .unwrap_or((1, 0))
}

struct Ctx {
    mode: AttentionMode,
    budget: u64,
    kv_chunk: u64,
    lsh: LshParams,
    env: Option<DimEnv>,
    max_pos: Option<u64>,
}

impl Ctx {
    fn new(g: &Graph, opts: &PassOptions) -> Result<Ctx, PassError> {
        let mode = AttentionMode::of(opts).map_err(err)?;
        let o = &opts.lsh;
        let chunk = o.chunk.unwrap_or(DEFAULT_LSH_CHUNK);
        if chunk == 0 || o.n_hashes == Some(0) {
            return Err(err("LSH chunk and hash rounds must be at least 1".into()));
        }
        if let Some(b) = &o.buckets {
            if b.is_empty() || b.iter().any(|f| *f < 2 || f % 2 != 0) {
                return Err(err(format!(
                    "LSH bucket factors must be even and at least 2, found {b:?}"
                )));
            }
        }
        let kv_chunk = opts.kv_chunk.unwrap_or(DEFAULT_KV_CHUNK);
        if kv_chunk == 0 {
            return Err(err("kv_chunk must be at least 1".into()));
        }
        let creates_lsh = matches!(mode, AttentionMode::Lsh | AttentionMode::Auto);
        let env = target_env(g, opts, creates_lsh.then_some(chunk));
        if mode == AttentionMode::Auto && env.is_none() {
            return Err(err(
                "--attention=auto needs a target sequence length (--seq-len) for the cost model"
                    .into(),
            ));
        }
        let lsh = LshParams {
            chunk,
            before: o.before.unwrap_or(DEFAULT_LSH_BEFORE),
            after: o.after.unwrap_or(DEFAULT_LSH_AFTER),
            n_hashes: o.n_hashes.unwrap_or(DEFAULT_LSH_HASHES),
            buckets: o.buckets.clone().unwrap_or_default(),
        };
        Ok(Ctx {
            mode,
            budget: opts.memory_budget.unwrap_or(DEFAULT_MEMORY_BUDGET),
            kv_chunk,
            lsh,
            env,
            max_pos: max_positions(g),
        })
    }

    /// Bucket factors for a new LSH layer at the target length.
    fn buckets(&self) -> Result<Vec<u64>, PassError> {
        if !self.lsh.buckets.is_empty() {
            return Ok(self.lsh.buckets.clone());
        }
        let p = self.env.as_ref().and_then(|e| e.get("P").copied()).ok_or_else(|| {
            err("turning attention into LSH needs a target sequence length (--seq-len) to choose the bucket count, or explicit bucket factors".into())
        })?;
        Ok(hf_rules::auto_buckets(
            p,
            self.lsh.chunk,
            self.max_pos.unwrap_or(p),
        ))
    }
}

/// Decides, without changing `g`, what the pass does to each attention.
pub fn plan(g: &Graph, opts: &PassOptions) -> Result<Vec<LayerDecision>, PassError> {
    let ctx = Ctx::new(g, opts)?;
    sites(g).into_iter().map(|s| decide(g, &ctx, &s)).collect()
}

fn decision(site: &AttentionSite, to: AttentionKind, reason: String) -> LayerDecision {
    LayerDecision {
        layer: site.layer,
        value: site.value,
        from: site.kind,
        to,
        reason,
        kv_chunk: site.kv_chunk,
        lsh: site.lsh.clone(),
        local: site.local,
        costs: vec![],
    }
}

fn decide(g: &Graph, ctx: &Ctx, site: &AttentionSite) -> Result<LayerDecision, PassError> {
    use AttentionKind::*;
    let from = site.kind;
    if from == Local {
        let why = if ctx.mode == AttentionMode::Config {
            "as configured".to_string()
        } else {
            "local attention is a different function (a window of chunks), not an implementation of full attention: kept".to_string()
        };
        return Ok(decision(site, Local, why));
    }
    let exact = |mut d: LayerDecision| {
        d.kv_chunk = Some(ctx.kv_chunk);
        d.lsh = None;
        d
    };
    let full = |mut d: LayerDecision| {
        d.kv_chunk = None;
        d.lsh = None;
        d
    };
    match ctx.mode {
        AttentionMode::Config => Ok(decision(site, from, "as configured".into())),
        AttentionMode::Full | AttentionMode::Exact => {
            let to = if ctx.mode == AttentionMode::Full {
                Full
            } else {
                Exact
            };
            let reason = match (from, to) {
                (Lsh, Full) => "was lsh; --attention=full: exact shared-QK attention with key normalisation and self mask (HF's short-sequence path)".to_string(),
                (Lsh, _) => format!("was lsh; --attention=exact: shared-QK attention streamed over key chunks of {}", ctx.kv_chunk),
                (_, Full) => "--attention=full: materialised softmax".to_string(),
                _ => format!("--attention=exact: streaming softmax over key chunks of {}, O(L) memory", ctx.kv_chunk),
            };
            let d = decision(site, to, reason);
            Ok(if to == Full { full(d) } else { exact(d) })
        }
        AttentionMode::Lsh => {
            if from == Lsh {
                return Ok(decision(site, Lsh, "already lsh".into()));
            }
            if !site.shared_qk {
                return Ok(decision(site, from, "cannot use lsh: queries and keys come from different projections, and LSH attention needs one shared query/key projection (the hash buckets keys by the queries' directions); kept".into()));
            }
            if !site.lsh_compatible {
                return Ok(decision(site, from, "cannot use lsh: shared QK but without key normalisation, self mask and scale 1/sqrt(d), so LSH attention would compute another function; kept".into()));
            }
            let mut d = decision(site, Lsh, String::new());
            let mut p = ctx.lsh.clone();
            p.buckets = ctx.buckets()?;
            d.reason = format!("shared QK; --attention=lsh: chunk {}, {} before, {} after, {} hash round(s), buckets {:?}", p.chunk, p.before, p.after, p.n_hashes, p.buckets);
            d.lsh = Some(p);
            d.kv_chunk = None;
            Ok(d)
        }
        AttentionMode::Auto => auto(g, ctx, site),
    }
}

/// `auto`'s rule for one layer at the target dims (DESIGN.md §4):
/// 1. `lsh` when queries and keys are shared (with key normalisation and self
///    mask), the padded length exceeds the LSH chunk, and exact attention needs
///    at least [`LSH_MIN_SPEEDUP`]× LSH's FLOPs;
/// 2. else `full` when its `B·H·L²` logits (`full_logits_bytes`) fit the memory
///    budget (full and exact need the same FLOPs; full avoids the online rescaling);
/// 3. else `exact` (O(L) memory, same result).
pub fn choose(
    full_logits_bytes: u64,
    exact: &OpCost,
    lsh: Option<&OpCost>,
    budget: u64,
) -> AttentionKind {
    if let Some(l) = lsh {
        if exact.flops >= l.flops.saturating_mul(LSH_MIN_SPEEDUP) {
            return AttentionKind::Lsh;
        }
    }
    if full_logits_bytes <= budget {
        AttentionKind::Full
    } else {
        AttentionKind::Exact
    }
}

fn auto(g: &Graph, ctx: &Ctx, site: &AttentionSite) -> Result<LayerDecision, PassError> {
    use AttentionKind::*;
    let env = ctx
        .env
        .as_ref()
        .ok_or_else(|| err("auto needs a target length".into()))?;
    let node = g.node(site.value);
    let mut shape = cost::attention_shape(g, node, env).ok_or_else(|| {
        err(format!(
            "layer {}: cannot evaluate the attention's shape at the target dims",
            site.layer
        ))
    })?;
    let p = env.get("P").copied().unwrap_or(shape.k_len);
    shape.q_len = p;
    shape.k_len = p;
    let key_norm = site.lsh_compatible;
    let full_c = cost::full_attention_cost(&shape, key_norm);
    let exact_c = cost::exact_attention_cost(&shape, key_norm, ctx.kv_chunk);
    // An LSH layer keeps its parameters; a new one gets the defaults/overrides.
    let params = match &site.lsh {
        Some(p) => p.clone(),
        None => {
            let mut p = ctx.lsh.clone();
            if site.lsh_compatible {
                p.buckets = ctx.buckets()?;
            }
            p
        }
    };
    let lsh_c = (site.lsh_compatible && p > params.chunk).then(|| lsh_cost(&shape, &params));
    let logits_bytes = shape.logits_bytes();
    let to = choose(logits_bytes, &exact_c, lsh_c.as_ref(), ctx.budget);
    let logits = format!("{} of logits at L={p}", fmt_bytes(logits_bytes));
    let mut reason = match to {
        Lsh => {
            let l = lsh_c.as_ref().expect("lsh chosen only with a cost");
            let fits = if logits_bytes > ctx.budget { format!("full attention would need {logits}, over the {} budget", fmt_bytes(ctx.budget)) } else { format!("full attention would need {logits}") };
            format!("shared QK; {fits}; lsh {} vs {} exact, {}x fewer FLOPs (approximate)", fmt_flops(l.flops), fmt_flops(exact_c.flops), exact_c.flops / l.flops.max(1))
        }
        Full => format!("{logits} fit the {} budget; {} (exact would add online-softmax rescaling)", fmt_bytes(ctx.budget), fmt_flops(full_c.flops)),
        _ => format!("full attention would need {logits}, over the {} budget; exact streams key chunks of {} ({} of temporaries), {}", fmt_bytes(ctx.budget), ctx.kv_chunk, fmt_bytes(exact_c.temp_bytes), fmt_flops(exact_c.flops)),
    };
    if to != Lsh {
        match (&lsh_c, site.shared_qk, site.lsh_compatible) {
            (Some(l), _, _) => reason.push_str(&format!(
                "; lsh would save only {:.1}x (needs {LSH_MIN_SPEEDUP}x)",
                exact_c.flops as f64 / l.flops.max(1) as f64
            )),
            (None, true, true) => {
                reason.push_str(&format!("; lsh needs L > chunk {}", params.chunk))
            }
            (None, false, _) => {
                reason.push_str("; lsh impossible: queries and keys are not shared")
            }
            (None, true, false) => {
                reason.push_str("; lsh impossible: no key normalisation/self mask")
            }
        }
    }
    if site.kind != to {
        reason = format!("was {}; {reason}", site.kind);
    }
    let mut d = decision(site, to, reason);
    d.costs = vec![(Full, full_c), (Exact, exact_c)];
    if let Some(l) = lsh_c {
        d.costs.push((Lsh, l));
    }
    match to {
        Lsh => {
            d.lsh = Some(params);
            d.kv_chunk = None;
        }
        Exact => {
            d.kv_chunk = Some(ctx.kv_chunk);
            d.lsh = None;
        }
        _ => {
            d.kv_chunk = None;
            d.lsh = None;
        }
    }
    Ok(d)
}

/// LSH attention plus hashing at `shape`.
fn lsh_cost(shape: &AttentionShape, p: &LshParams) -> OpCost {
    let half = p.buckets.iter().sum::<u64>().max(2) / 2;
    let a = cost::lsh_attention_cost(
        shape,
        &LshShape {
            chunk: p.chunk,
            before: p.before,
            after: p.after,
            n_hashes: p.n_hashes,
        },
    );
    let h = cost::lsh_hash_cost(shape, p.n_hashes, half);
    OpCost {
        flops: a.flops.saturating_add(h.flops),
        bytes_moved: a.bytes_moved.saturating_add(h.bytes_moved),
        output_bytes: a.output_bytes,
        temp_bytes: a.temp_bytes.max(h.temp_bytes),
    }
}

/// Applies `decisions` to `g`; returns notes on anything beyond the decisions
/// (padding changes, added inputs).
pub fn apply(g: &mut Graph, decisions: &[LayerDecision]) -> Result<Vec<String>, PassError> {
    let mut notes = Vec::new();
    let mut orphans: Vec<ValueId> = Vec::new();
    let mut next_stream = g
        .walk()
        .into_iter()
        .filter(|v| g.node(*v).op.kind == OpKind::RandomNormal)
        .filter_map(|v| g.node(v).op.int("stream"))
        .max()
        .map_or(0, |s| s + 1);
    let mut lsh_chunks = Vec::new();
    let mut rw = Rewriter::new(g);
    for d in decisions {
        let v = d.value;
        let node = rw.graph().node(v).clone();
        // The rewritten op stays in its layer.
        let layer = node.op.layer();
        match (d.from, d.to) {
            (a, b) if a == b && a != AttentionKind::Lsh && a != AttentionKind::Local => {
                // full <-> full, exact <-> exact with possibly another kv_chunk.
                set_kv_chunk(
                    rw.op_mut(v),
                    d.kv_chunk.filter(|_| b == AttentionKind::Exact),
                );
            }
            (
                AttentionKind::Full | AttentionKind::Exact,
                AttentionKind::Full | AttentionKind::Exact,
            ) => set_kv_chunk(
                rw.op_mut(v),
                d.kv_chunk.filter(|_| d.to == AttentionKind::Exact),
            ),
            (AttentionKind::Lsh, AttentionKind::Full | AttentionKind::Exact) => {
                let heads = int_attr(&node, "heads").max(1);
                let qk = node.inputs[0];
                let hd = head_dim(rw.graph(), qk, heads).ok_or_else(|| {
                    err(format!(
                        "layer {}: query/key width is not a constant multiple of heads={heads}",
                        d.layer
                    ))
                })?;
                let mut op = Op::new(OpKind::Attention)
                    .with("heads", Attr::Int(heads as i64))
                    .with("scale", Attr::Float(1.0 / (hd as f64).sqrt()))
                    .with_flag("causal", node.op.flag("causal"))
                    .with_flag("key_norm", true)
                    .with_flag("self_mask", true)
                    .with_layer(layer);
                if d.to == AttentionKind::Exact {
                    op = op.with(
                        "kv_chunk",
                        Attr::Int(d.kv_chunk.unwrap_or(DEFAULT_KV_CHUNK) as i64),
                    );
                }
                let mut inputs = vec![qk, qk, node.inputs[1]];
                inputs.extend(node.inputs.get(3).copied());
                orphans.push(node.inputs[2]);
                *rw.op_mut(v) = op;
                rw.set_inputs(v, inputs).map_err(|e| err(e.to_string()))?;
            }
            (AttentionKind::Full | AttentionKind::Exact, AttentionKind::Lsh) => {
                let p = d
                    .lsh
                    .clone()
                    .ok_or_else(|| err(format!("layer {}: no LSH parameters", d.layer)))?;
                let heads = int_attr(&node, "heads").max(1);
                let qk = node.inputs[0];
                let qty = rw.graph().ty(qk).clone();
                let hd = head_dim(rw.graph(), qk, heads).ok_or_else(|| {
                    err(format!(
                        "layer {}: query/key width is not a constant multiple of heads={heads}",
                        d.layer
                    ))
                })?;
                let seed = seed_input(&mut rw, &mut notes)?;
                let half = p.buckets.iter().sum::<u64>() / 2;
                let rot_ty = TensorType::new(
                    qty.dtype,
                    vec![
                        Dim::Const(heads),
                        Dim::Const(hd),
                        Dim::Const(p.n_hashes),
                        Dim::Const(half),
                    ],
                );
                let not_placed = |e: reformc_ir::RewriteError| {
                    err(format!(
                        "layer {}: the attention op is in no block ({e})",
                        d.layer
                    ))
                };
                let rot_op = Op::new(OpKind::RandomNormal).with("stream", Attr::Int(next_stream));
                let rot = rw
                    .insert_before(v, Node::new(rot_op, vec![seed], rot_ty))
                    .map_err(not_placed)?;
                next_stream += 1;
                let mask = node.inputs.get(3).copied();
                let mut hash_inputs = vec![qk, rot];
                hash_inputs.extend(mask);
                let hash_op = Op::new(OpKind::LshHash)
                    .with("heads", Attr::Int(heads as i64))
                    .with("n_hashes", Attr::Int(p.n_hashes as i64))
                    .with(
                        "buckets",
                        Attr::Ints(p.buckets.iter().map(|f| *f as i64).collect()),
                    )
                    .with_layer(layer);
                let bty = TensorType::new(
                    DType::I64,
                    vec![
                        qty.shape[0].clone(),
                        Dim::Const(heads),
                        Dim::Const(p.n_hashes),
                        qty.shape[1].clone(),
                    ],
                );
                let hash = rw
                    .insert_before(v, Node::new(hash_op, hash_inputs, bty))
                    .map_err(not_placed)?;
                let op = Op::new(OpKind::LshAttention)
                    .with("heads", Attr::Int(heads as i64))
                    .with("chunk", Attr::Int(p.chunk as i64))
                    .with("before", Attr::Int(p.before as i64))
                    .with("after", Attr::Int(p.after as i64))
                    .with_flag("causal", node.op.flag("causal"))
                    .with_layer(layer);
                let mut inputs = vec![qk, node.inputs[2], hash];
                inputs.extend(mask);
                *rw.op_mut(v) = op;
                rw.set_inputs(v, inputs).map_err(|e| err(e.to_string()))?;
                lsh_chunks.push(p.chunk);
            }
            _ => {}
        }
    }
    rw.remove_dead(orphans);
    for c in lsh_chunks {
        if let Some(n) = update_padding(&mut rw, c) {
            notes.push(n);
        }
    }
    Ok(notes)
}

fn set_kv_chunk(op: &mut Op, kv: Option<u64>) {
    match kv {
        Some(k) => {
            op.attrs.insert("kv_chunk".into(), Attr::Int(k as i64));
        }
        None => {
            op.attrs.remove("kv_chunk");
        }
    }
}

/// The `seed` input (i64[]), added at the top of the graph when missing.
fn seed_input(rw: &mut Rewriter<'_>, notes: &mut Vec<String>) -> Result<ValueId, PassError> {
    let g = rw.graph();
    if let Some((_, v)) = g.inputs().into_iter().find(|(n, _)| *n == "seed") {
        if *g.ty(v) != TensorType::scalar(DType::I64) {
            return Err(err(format!(
                "the graph's `seed` input is {}, expected i64[]",
                g.ty(v)
            )));
        }
        return Ok(v);
    }
    let seed = Node::new(
        Op::new(OpKind::Input).with("name", Attr::Str("seed".into())),
        vec![],
        TensorType::scalar(DType::I64),
    );
    let v = rw
        .insert_at(BlockId::Top, 0, seed)
        .map_err(|e| err(e.to_string()))?;
    notes.push(
        "added input `seed` (i64[]): LSH rotations are drawn by random_normal keyed by it".into(),
    );
    Ok(v)
}

/// Makes every `pad_to_multiple` pad to a multiple of `chunk` too (HF pads to
/// the lcm of the chunk lengths when longer than the smallest chunk). Returns
/// a note when the rule changed.
fn update_padding(rw: &mut Rewriter<'_>, chunk: u64) -> Option<String> {
    let g = rw.graph();
    let pads: Vec<ValueId> = g
        .walk()
        .into_iter()
        .filter(|v| g.node(*v).op.kind == OpKind::PadToMultiple)
        .collect();
    let mut note = None;
    for v in pads {
        let op = rw.op_mut(v);
        let (m, min) = (
            op.int("multiple").unwrap_or(1).max(1) as u64,
            op.int("min_len").unwrap_or(0).max(0) as u64,
        );
        let (m2, min2) = hf_rules::with_chunk((m, min), chunk);
        if m % chunk == 0 && (m > 1) {
            continue;
        }
        op.attrs.insert("multiple".into(), Attr::Int(m2 as i64));
        op.attrs.insert("min_len".into(), Attr::Int(min2 as i64));
        note = Some(format!("padding: sequences longer than {min2} are now padded to a multiple of {m2} (was {m}) for LSH chunks of {chunk}; padded keys are masked and padded outputs cut off"));
    }
    note
}

/// The `attention` pass (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionPass;

impl Pass for AttentionPass {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn summary(&self) -> &'static str {
        "chooses per layer among full (materialised), exact (streaming softmax over key chunks), lsh and local (--attention=auto|full|exact|lsh)"
    }

    fn run(&self, g: &mut Graph, opts: &PassOptions) -> Result<Vec<String>, PassError> {
        let decisions = plan(g, opts)?;
        let extra = apply(g, &decisions)?;
        let mut notes: Vec<String> = decisions.iter().map(LayerDecision::note).collect();
        notes.extend(extra);
        Ok(notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<AttentionMode>(), Ok(AttentionMode::Auto));
        assert!("fast"
            .parse::<AttentionMode>()
            .unwrap_err()
            .contains("expected auto, full, exact or lsh"));
        let opts = PassOptions {
            attention: Some("fast".into()),
            ..Default::default()
        };
        let mut g = Graph::new();
        assert!(AttentionPass.run(&mut g, &opts).is_err());
    }

    #[test]
    fn padding_rule_follows_hf() {
        assert_eq!(hf_rules::with_chunk((1, 0), 64), (64, 64));
        assert_eq!(hf_rules::with_chunk((16, 8), 64), (64, 8));
        assert_eq!(hf_rules::with_chunk((48, 16), 32), (96, 16));
    }

    #[test]
    fn rewritten_attention_keeps_its_layer() {
        let text = "graph {\n  %0 = input {name=\"x\"} : f32[B,L,8]\n  %1 = attention %0, %0, %0 {heads=2, key_norm, layer=5, scale=0.5, self_mask} : f32[B,L,8]\n  output \"y\" = %1\n}\n";
        let mut g = reformc_ir::parse(text).unwrap();
        let to = |mode: &str| PassOptions {
            attention: Some(mode.into()),
            seq_len: Some(1024),
            ..Default::default()
        };
        let notes = AttentionPass.run(&mut g, &to("lsh")).unwrap();
        assert!(notes[0].starts_with("layer 5: lsh"), "{notes:?}");
        reformc_ir::verify(&g).unwrap();
        let layers: Vec<(OpKind, Option<u64>)> = g
            .walk()
            .into_iter()
            .map(|v| (g.node(v).op.kind, g.node(v).op.layer()))
            .filter(|(k, _)| matches!(k, OpKind::LshHash | OpKind::LshAttention))
            .collect();
        assert_eq!(
            layers,
            vec![(OpKind::LshHash, Some(5)), (OpKind::LshAttention, Some(5))]
        );
        AttentionPass.run(&mut g, &to("full")).unwrap();
        reformc_ir::verify(&g).unwrap();
        let printed = reformc_ir::print(&g);
        // Back to full: the hash and its rotations are gone, the layer stays.
        assert!(
            !printed.contains("lsh_hash") && !printed.contains("random_normal"),
            "{printed}"
        );
        assert!(printed.contains("layer=5"), "{printed}");
    }

    #[test]
    fn choose_prefers_lsh_only_when_much_cheaper() {
        let c = |flops, temp_bytes| OpCost {
            flops,
            temp_bytes,
            ..Default::default()
        };
        assert_eq!(
            choose(10, &c(1600, 1), Some(&c(100, 1)), 100),
            AttentionKind::Lsh
        );
        assert_eq!(
            choose(10, &c(1500, 1), Some(&c(100, 1)), 100),
            AttentionKind::Full
        );
        assert_eq!(choose(1000, &c(1500, 1), None, 100), AttentionKind::Exact);
    }

    #[test]
    fn non_shared_attention_cannot_become_lsh() {
        let text = "graph {\n  %0 = input {name=\"x\"} : f32[B,L,8]\n  %1 = input {name=\"y\"} : f32[B,L,8]\n  %2 = attention %0, %1, %1 {heads=2, scale=0.5} : f32[B,L,8]\n  output \"y\" = %2\n}\n";
        let mut g = reformc_ir::parse(text).unwrap();
        let opts = PassOptions {
            attention: Some("lsh".into()),
            seq_len: Some(1024),
            ..Default::default()
        };
        let notes = AttentionPass.run(&mut g, &opts).unwrap();
        assert!(
            notes[0].contains("cannot use lsh: queries and keys come from different projections"),
            "{notes:?}"
        );
        assert_eq!(reformc_ir::print(&g), text);
    }

    #[test]
    fn lsh_without_length_or_buckets_is_an_error() {
        let text = "graph {\n  %0 = input {name=\"x\"} : f32[B,L,8]\n  %1 = attention %0, %0, %0 {heads=2, key_norm, scale=0.5, self_mask} : f32[B,L,8]\n  output \"y\" = %1\n}\n";
        let mut g = reformc_ir::parse(text).unwrap();
        let opts = PassOptions {
            attention: Some("lsh".into()),
            ..Default::default()
        };
        let e = AttentionPass.run(&mut g, &opts).unwrap_err();
        assert!(e.message.contains("--seq-len"), "{e}");
        let opts = PassOptions {
            attention: Some("lsh".into()),
            lsh: crate::LshOverrides {
                buckets: Some(vec![4]),
                chunk: Some(4),
                ..Default::default()
            },
            ..Default::default()
        };
        let notes = AttentionPass.run(&mut g, &opts).unwrap();
        let text = reformc_ir::print(&g);
        assert!(text.contains("input {name=\"seed\"} : i64[]"), "{text}");
        assert!(
            text.contains("lsh_hash") && text.contains("lsh_attention"),
            "{text}"
        );
        assert!(
            notes.iter().any(|n| n.contains("added input `seed`")),
            "{notes:?}"
        );
        reformc_ir::verify(&g).unwrap();
    }
}
