//! The cost model: FLOPs, bytes moved, output bytes and peak temporary bytes
//! of every op, with symbolic dims evaluated at target sizes.
//!
//! Sizes come from a [`DimEnv`] binding `B` (batch), `L` (sequence length) and
//! `P` (the padded length); [`dim_env`] builds one from a graph by applying its
//! `pad_to_multiple` rules to `L`. Counts are `u64` and saturate instead of
//! overflowing.
//!
//! Conventions (one multiply-add is 2 FLOPs; `e` is the element size):
//! - `linear`: `2·rows·in·out` (+ bias and activation per output element).
//! - `attention` (materialised): `4·B·H·Lq·Lk·d` for QKᵀ and PV plus `5·B·H·Lq·Lk`
//!   for masking and softmax; its temporary is the `B·H·Lq·Lk` logits block.
//!   Causal masking does not halve the count (every logit is computed).
//! - `attention {kv_chunk=N}` (chunked-exact): the same plus the online-softmax
//!   rescaling `B·H·Lq·⌈Lk/N⌉·(dv+3)`; its temporary is a `B·H·Lq·N` logits block and
//!   the running (max, sum) and output accumulators: O(L).
//! - `lsh_attention`: `4·B·H·r·P·c_kv·d` (c_kv = c·(1+before+after)) + softmax
//!   `5·B·H·r·P·c_kv` + sort `B·H·r·P·⌈log2(r·P)⌉` + round combination; temporaries
//!   are the sorted copies of QK/V, the index arrays, per-round outputs and one
//!   `c×c_kv` logits block per (batch, head): linear in P.
//! - `lsh_hash`: `2·B·H·r·P·d·S/2` for the rotation + `B·H·r·P·S` for the argmax.
//! - `local_attention`: like LSH without hashing or sorting, window `c·(1+before+after)`.
//!
//! ```
//! use reformc_passes::cost::{full_attention_cost, AttentionShape};
//! let s = AttentionShape { batch: 1, heads: 4, q_len: 1024, k_len: 1024, d_qk: 64, d_v: 64, elem_bytes: 4 };
//! let c = full_attention_cost(&s, false);
//! assert_eq!(c.temp_bytes, 4 * 1024 * 1024 * 4 + 1024 * 256 * 4); // logits + scaled keys
//! assert!(c.flops >= 4 * 4 * 1024 * 1024 * 64);
//! ```

use reformc_ir::{
    Activation, CostClass, DType, Dim, DimEnv, Graph, Node, OpKind, Reduction, TensorType, ValueId,
};
use std::fmt;

/// Cost of one op at concrete dims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCost {
    /// Floating-point (and comparable integer) operations.
    pub flops: u64,
    /// Bytes read and written to memory, assuming each operand is read once and
    /// temporaries that do not fit a cache-sized block are written and read once.
    pub bytes_moved: u64,
    /// Size of the result.
    pub output_bytes: u64,
    /// Peak bytes of the op's internal temporaries while it runs.
    pub temp_bytes: u64,
}

impl OpCost {
    /// Component-wise saturating sum.
    pub fn combine(self, o: OpCost) -> OpCost {
        OpCost {
            flops: self.flops.saturating_add(o.flops),
            bytes_moved: self.bytes_moved.saturating_add(o.bytes_moved),
            output_bytes: self.output_bytes.saturating_add(o.output_bytes),
            temp_bytes: self.temp_bytes.max(o.temp_bytes),
        }
    }
}

/// A value whose size cannot be evaluated (an unbound symbol) or an op the
/// cost model cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostError {
    /// `%N` (the arena index) and the op keyword.
    pub at: String,
    /// What could not be evaluated or read, and why.
    pub message: String,
}

impl fmt::Display for CostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

impl std::error::Error for CostError {}

/// Saturating product.
pub(crate) fn prod(xs: &[u64]) -> u64 {
    xs.iter().fold(1u64, |a, &b| a.saturating_mul(b))
}

fn log2_ceil(n: u64) -> u64 {
    if n <= 1 {
        0
    } else {
        64 - (n - 1).leading_zeros() as u64
    }
}

/// The length a `pad_to_multiple {multiple, min_len}` produces from `len`
/// (no padding at or below `min_len`): HF's rule, stated once in
/// `reformc_ir::hf_rules`.
///
/// ```
/// assert_eq!(reformc_passes::cost::pad_len(50, 16, 8), 64);
/// assert_eq!(reformc_passes::cost::pad_len(8, 16, 8), 8);
/// ```
pub use reformc_ir::hf_rules::padded_len as pad_len;

/// Binds `B` and `L` and every symbol a `pad_to_multiple` op defines (`P`) by
/// applying the graph's padding rules, so that the whole graph can be sized.
///
/// ```
/// let g = reformc_ir::parse("graph {\n %0 = input {name=\"ids\"} : i64[B,L]\n %1 = pad_to_multiple %0 {axis=1, min_len=8, multiple=16, value=0} : i64[B,P]\n output \"p\" = %1\n}").unwrap();
/// let env = reformc_passes::cost::dim_env(&g, 2, 50);
/// assert_eq!((env["B"], env["L"], env["P"]), (2, 50, 64));
/// ```
pub fn dim_env(g: &Graph, batch: u64, seq_len: u64) -> DimEnv {
    let mut env = DimEnv::new();
    env.insert("B".into(), batch);
    env.insert("L".into(), seq_len);
    for v in g.walk() {
        let node = g.node(v);
        if node.op.kind == OpKind::Reshape {
            bind_reshape_symbol(g, node, &mut env);
            continue;
        }
        if node.op.kind != OpKind::PadToMultiple || node.inputs.is_empty() {
            continue;
        }
        let axis = node.op.usize("axis").unwrap_or(0);
        let (Some(Dim::Sym(out)), Some(d)) = (
            node.ty.shape.get(axis),
            g.ty(node.inputs[0]).shape.get(axis),
        ) else {
            continue;
        };
        if env.contains_key(out) {
            continue;
        }
        if let Some(len) = d.eval(&env) {
            let p = pad_len(
                len,
                node.op.int("multiple").unwrap_or(1).max(1) as u64,
                node.op.int("min_len").unwrap_or(0).max(0) as u64,
            );
            env.insert(out.clone(), p);
        }
    }
    env.entry("P".into()).or_insert(seq_len);
    env
}

/// Binds the one new symbol a `reshape` result may introduce (as
/// `lower-model`'s flattening does) to what the operand's element count
/// leaves for it, when every other dim is known.
///
/// ```
/// let g = reformc_ir::parse("graph {\n %0 = input {name=\"ids\"} : i64[B,L]\n %1 = reshape %0 : i64[N]\n output \"n\" = %1\n}").unwrap();
/// let env = reformc_passes::cost::dim_env(&g, 2, 50);
/// assert_eq!(env["N"], 100);
/// ```
fn bind_reshape_symbol(g: &Graph, node: &Node, env: &mut DimEnv) {
    let Some(x) = node.inputs.first() else { return };
    let Some(count) = g.ty(*x).num_elements(env) else {
        return;
    };
    let unbound: Vec<&String> = node
        .ty
        .shape
        .iter()
        .filter_map(|d| match d {
            Dim::Sym(s) if !env.contains_key(s) => Some(s),
            _ => None,
        })
        .collect();
    let [sym] = unbound[..] else { return };
    let known: u64 = node.ty.shape.iter().filter_map(|d| d.eval(env)).product();
    if known > 0 && count % known == 0 {
        env.insert(sym.clone(), count / known);
    }
}

/// Per-op sizing environments: ops inside a `seq_chunk` body see its chunk
/// symbol bound to the chunk length and run once per chunk.
///
/// ```
/// let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[B,L,8]\n %1 = seq_chunk %0 {axis=1, size=4} : f32[B,L,8] {\n  body(%2: f32[B,S,8]) {\n   %3 = exp %2 : f32[B,S,8]\n   yield %3\n  }\n }\n output \"y\" = %1\n}").unwrap();
/// let s = reformc_passes::cost::Sizing::new(&g, reformc_passes::cost::dim_env(&g, 1, 10));
/// let body_op = g.node(g.outputs[0].1).regions[0].body[0];
/// assert_eq!(s.env(body_op)["S"], 4);
/// assert_eq!(s.repeat(body_op), 3);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Sizing {
    envs: Vec<DimEnv>,
    env_of: std::collections::HashMap<ValueId, usize>,
    repeat: std::collections::HashMap<ValueId, u64>,
}

impl Sizing {
    /// Sizing of `g` with top-level dims `env`.
    pub fn new(g: &Graph, env: DimEnv) -> Sizing {
        let mut s = Sizing {
            envs: vec![env],
            ..Default::default()
        };
        s.block(g, &g.body, 0, 1);
        s
    }

    fn block(&mut self, g: &Graph, block: &[ValueId], e: usize, rep: u64) {
        for &v in block {
            let Some(node) = g.nodes.get(v.index()) else {
                continue;
            };
            self.env_of.insert(v, e);
            self.repeat.insert(v, rep);
            for r in &node.regions {
                let (mut inner, mut inner_rep) = (e, rep);
                if node.op.kind == OpKind::SeqChunk {
                    let axis = node.op.usize("axis").unwrap_or(0);
                    let size = node.op.int("size").unwrap_or(1).max(1) as u64;
                    let n = node
                        .inputs
                        .first()
                        .and_then(|x| g.ty(*x).shape.get(axis))
                        .and_then(|d| d.eval(&self.envs[e]));
                    if let Some(Dim::Sym(sym)) =
                        r.args.first().and_then(|a| g.ty(*a).shape.get(axis))
                    {
                        let mut env = self.envs[e].clone();
                        env.insert(sym.clone(), n.map_or(size, |n| n.min(size)));
                        self.envs.push(env);
                        inner = self.envs.len() - 1;
                    }
                    inner_rep = rep.saturating_mul(n.map_or(1, |n| n.div_ceil(size).max(1)));
                }
                for a in &r.args {
                    self.env_of.insert(*a, inner);
                    self.repeat.insert(*a, inner_rep);
                }
                self.block(g, &r.body, inner, inner_rep);
            }
        }
    }

    /// The dims `v` is sized with.
    pub fn env(&self, v: ValueId) -> &DimEnv {
        &self.envs[self.env_of.get(&v).copied().unwrap_or(0)]
    }

    /// How many times the op defining `v` runs in one forward pass.
    pub fn repeat(&self, v: ValueId) -> u64 {
        self.repeat.get(&v).copied().unwrap_or(1)
    }
}

/// Number of elements of `ty` under `env`.
pub fn elements(ty: &TensorType, env: &DimEnv) -> Option<u64> {
    ty.shape
        .iter()
        .map(|d| d.eval(env))
        .collect::<Option<Vec<u64>>>()
        .map(|s| prod(&s))
}

/// Bytes of a value of type `ty` under `env`.
pub fn bytes_of(ty: &TensorType, env: &DimEnv) -> Option<u64> {
    elements(ty, env).map(|n| n.saturating_mul(ty.dtype.size_bytes()))
}

/// The shape of one multi-head attention call, per-head widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch size `B`.
    pub batch: u64,
    /// Number of heads `H`.
    pub heads: u64,
    /// Number of query positions `Lq`.
    pub q_len: u64,
    /// Number of key (and value) positions `Lk`.
    pub k_len: u64,
    /// Per-head width of queries and keys.
    pub d_qk: u64,
    /// Per-head width of values.
    pub d_v: u64,
    /// Bytes per element.
    pub elem_bytes: u64,
}

impl AttentionShape {
    fn io_bytes(&self) -> u64 {
        let (b, h, e) = (self.batch, self.heads, self.elem_bytes);
        prod(&[b, self.q_len, h, self.d_qk, e])
            .saturating_add(prod(&[b, self.k_len, h, self.d_qk + self.d_v, e]))
            .saturating_add(prod(&[b, self.q_len, h, self.d_v, e]))
    }

    fn logits(&self) -> u64 {
        prod(&[self.batch, self.heads, self.q_len, self.k_len])
    }

    /// Bytes of the materialised `B·H·Lq·Lk` logits.
    pub fn logits_bytes(&self) -> u64 {
        self.logits().saturating_mul(self.elem_bytes)
    }

    fn key_prep(&self, key_norm: bool) -> (u64, u64) {
        // Scaled (and normalised) keys are a copy: 1 (or 4) flops per element.
        let n = prod(&[self.batch, self.k_len, self.heads, self.d_qk]);
        (
            n.saturating_mul(if key_norm { 4 } else { 1 }),
            n.saturating_mul(self.elem_bytes),
        )
    }
}

/// Materialised softmax attention: the full `B·H·Lq·Lk` logits exist.
pub fn full_attention_cost(s: &AttentionShape, key_norm: bool) -> OpCost {
    let n = s.logits();
    let (kf, kb) = s.key_prep(key_norm);
    let flops = prod(&[n, 2, s.d_qk + s.d_v])
        .saturating_add(n.saturating_mul(5))
        .saturating_add(kf);
    let logits = n.saturating_mul(s.elem_bytes);
    OpCost {
        flops,
        bytes_moved: s.io_bytes().saturating_add(logits.saturating_mul(2)),
        output_bytes: prod(&[s.batch, s.q_len, s.heads, s.d_v, s.elem_bytes]),
        temp_bytes: logits.saturating_add(kb),
    }
}

/// Chunked-exact attention (streaming softmax over key chunks of `kv_chunk`).
pub fn exact_attention_cost(s: &AttentionShape, key_norm: bool, kv_chunk: u64) -> OpCost {
    let kv = kv_chunk.clamp(1, s.k_len.max(1));
    let full = full_attention_cost(s, key_norm);
    let chunks = s.k_len.div_ceil(kv);
    let rescale = prod(&[s.batch, s.heads, s.q_len, chunks, s.d_v + 3]);
    let (_, kb) = s.key_prep(key_norm);
    let block = prod(&[s.batch, s.heads, s.q_len, kv, s.elem_bytes]);
    let acc = prod(&[s.batch, s.heads, s.q_len, s.d_v + 2, s.elem_bytes]);
    OpCost {
        flops: full.flops.saturating_add(rescale),
        bytes_moved: s.io_bytes().saturating_add(acc.saturating_mul(2)),
        output_bytes: full.output_bytes,
        temp_bytes: block.saturating_add(acc).saturating_add(kb),
    }
}

/// LSH attention parameters for [`lsh_attention_cost`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LshShape {
    /// Chunk length `c` in positions; at `Lk ≤ c` the cost is that of full
    /// shared-QK attention.
    pub chunk: u64,
    /// Chunks before its own that each chunk attends to.
    pub before: u64,
    /// Chunks after its own that each chunk attends to.
    pub after: u64,
    /// Hash rounds `r` (0 counts as 1): every round sorts and attends over all
    /// positions, so the cost grows linearly with it.
    pub n_hashes: u64,
}

/// Reformer LSH attention given buckets (sort, chunked attention, unsort,
/// round combination). At `L ≤ chunk` it is full shared-QK attention.
pub fn lsh_attention_cost(s: &AttentionShape, p: &LshShape) -> OpCost {
    if s.k_len <= p.chunk {
        return full_attention_cost(s, true);
    }
    let (b, h, len, d, dv, e) = (s.batch, s.heads, s.k_len, s.d_qk, s.d_v, s.elem_bytes);
    let r = p.n_hashes.max(1);
    let ckv = p.chunk.saturating_mul(1 + p.before + p.after);
    let slots = prod(&[b, h, r, len]);
    let attn = prod(&[slots, ckv, 2, d + dv]).saturating_add(prod(&[slots, ckv, 5]));
    let sort = slots.saturating_mul(log2_ceil(r.saturating_mul(len)));
    let combine = prod(&[slots, 2 * dv + 4]);
    let (kf, kb) = s.key_prep(true);
    let sorted = prod(&[slots, 2 * d + dv, e]);
    let indices = prod(&[slots, 3, 8]);
    let rounds = prod(&[slots, dv + 2, e]);
    let block = prod(&[b, h, p.chunk, ckv, e]);
    OpCost {
        flops: attn
            .saturating_add(sort)
            .saturating_add(combine)
            .saturating_add(kf),
        bytes_moved: s
            .io_bytes()
            .saturating_add(prod(&[b, h, r, len, 8]))
            .saturating_add(sorted.saturating_add(rounds).saturating_mul(2)),
        output_bytes: prod(&[b, len, h, dv, e]),
        temp_bytes: sorted
            .saturating_add(indices)
            .saturating_add(rounds)
            .saturating_add(block)
            .saturating_add(kb),
    }
}

/// Angular LSH hashing: rotations `[H,d,r,S/2]`, argmax over `concat(rot, -rot)`.
pub fn lsh_hash_cost(s: &AttentionShape, n_hashes: u64, rot_half: u64) -> OpCost {
    let (b, h, len, d, e) = (s.batch, s.heads, s.k_len, s.d_qk, s.elem_bytes);
    let rows = prod(&[b, h, n_hashes.max(1), len]);
    let rotated = prod(&[rows, rot_half]);
    OpCost {
        flops: prod(&[rotated, d, 2]).saturating_add(rotated.saturating_mul(2)),
        bytes_moved: prod(&[b, len, h, d, e])
            .saturating_add(prod(&[h, d, n_hashes, rot_half, e]))
            .saturating_add(rows.saturating_mul(8)),
        output_bytes: rows.saturating_mul(8),
        temp_bytes: rotated.saturating_mul(e),
    }
}

/// Chunked local attention with a window of `chunk·(1+before+after)` keys.
pub fn local_attention_cost(s: &AttentionShape, chunk: u64, before: u64, after: u64) -> OpCost {
    if s.q_len <= chunk {
        return full_attention_cost(s, false);
    }
    let (b, h, e) = (s.batch, s.heads, s.elem_bytes);
    let w = chunk.saturating_mul(1 + before + after);
    let n = prod(&[b, h, s.q_len, w]);
    let (kf, kb) = s.key_prep(false);
    OpCost {
        flops: prod(&[n, 2, s.d_qk + s.d_v])
            .saturating_add(n.saturating_mul(5))
            .saturating_add(kf),
        bytes_moved: s.io_bytes(),
        output_bytes: prod(&[b, s.q_len, h, s.d_v, e]),
        temp_bytes: prod(&[b, h, chunk, w, e]).saturating_add(kb),
    }
}

/// The [`AttentionShape`] of an attention-like node (`attention`,
/// `local_attention`, `lsh_attention`, `lsh_hash`) at `env`.
pub fn attention_shape(g: &Graph, node: &Node, env: &DimEnv) -> Option<AttentionShape> {
    let heads = node.op.int("heads")?.max(1) as u64;
    let q = g.ty(*node.inputs.first()?);
    let (k, v) = match node.op.kind.facts().cost {
        CostClass::Attention | CostClass::LocalAttention => {
            (g.ty(*node.inputs.get(1)?), g.ty(*node.inputs.get(2)?))
        }
        CostClass::LshAttention => (q, g.ty(*node.inputs.get(1)?)),
        CostClass::LshHash => (q, q),
        CostClass::Free
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
        | CostClass::Sort => return None,
    };
    let dim = |t: &TensorType, i: usize| t.shape.get(i).and_then(|d| d.eval(env));
    Some(AttentionShape {
        batch: dim(q, 0)?,
        heads,
        q_len: dim(q, 1)?,
        k_len: dim(k, 1)?,
        d_qk: dim(q, 2)? / heads,
        d_v: dim(v, 2)? / heads,
        elem_bytes: q.dtype.size_bytes(),
    })
}

/// Cost of the op defining `v`, its symbolic dims evaluated at `env`.
///
/// Ops inside regions are costed on their own; a `reversible_block`'s own cost
/// is its two residual additions.
///
/// ```
/// use reformc_passes::cost::{dim_env, op_cost};
/// let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[B,L,8]\n %1 = weight {name=\"w\"} : f32[16,8]\n %2 = linear %0, %1 : f32[B,L,16]\n output \"y\" = %2\n}").unwrap();
/// let env = dim_env(&g, 2, 10);
/// let c = op_cost(&g, g.outputs[0].1, &env).unwrap();
/// assert_eq!(c.flops, 2 * 20 * 8 * 16);
/// assert_eq!(c.output_bytes, 2 * 10 * 16 * 4);
/// ```
pub fn op_cost(g: &Graph, v: ValueId, env: &DimEnv) -> Result<OpCost, CostError> {
    if v.index() >= g.nodes.len() {
        return Err(CostError {
            at: format!("%{}", v.0),
            message: "refers to no node".into(),
        });
    }
    let node = g.node(v);
    let at = || format!("%{} = {}", v.0, node.op.kind);
    let size = |t: &TensorType| {
        bytes_of(t, env).ok_or_else(|| CostError {
            at: at(),
            message: format!(
                "cannot size {t}: a dimension symbol is unbound (bound: {})",
                bound_list(env)
            ),
        })
    };
    let out_bytes = size(&node.ty)?;
    let out_elems = out_bytes / node.ty.dtype.size_bytes().max(1);
    let mut in_bytes = 0u64;
    for i in &node.inputs {
        if i.index() >= g.nodes.len() {
            return Err(CostError {
                at: at(),
                message: format!("operand %{} refers to no node", i.0),
            });
        }
        in_bytes = in_bytes.saturating_add(size(g.ty(*i))?);
    }
    let simple = |flops_per_elem: u64| OpCost {
        flops: out_elems.saturating_mul(flops_per_elem),
        bytes_moved: in_bytes.saturating_add(out_bytes),
        output_bytes: out_bytes,
        temp_bytes: 0,
    };
    let copy = OpCost {
        flops: 0,
        bytes_moved: out_bytes.saturating_mul(2),
        output_bytes: out_bytes,
        temp_bytes: 0,
    };
    let attn_shape = || {
        attention_shape(g, node, env).ok_or_else(|| CostError {
            at: at(),
            message: "cannot read the attention shape (heads or dims)".into(),
        })
    };
    Ok(match node.op.kind.facts().cost {
        CostClass::Free => OpCost {
            output_bytes: out_bytes,
            ..OpCost::default()
        },
        CostClass::Generate(per) => OpCost {
            flops: out_elems.saturating_mul(u64::from(per)),
            bytes_moved: out_bytes,
            output_bytes: out_bytes,
            temp_bytes: 0,
        },
        CostClass::PerElement(per) => simple(u64::from(per)),
        CostClass::Copy => copy,
        CostClass::Lookup => {
            let idx = node
                .inputs
                .first()
                .map(|i| size(g.ty(*i)))
                .transpose()?
                .unwrap_or(0);
            OpCost {
                flops: 0,
                bytes_moved: idx.saturating_add(out_bytes.saturating_mul(2)),
                output_bytes: out_bytes,
                temp_bytes: 0,
            }
        }
        CostClass::Scatter => {
            // Zero-fill the result, read indices and sources, and
            // read-modify-write one result element per source element.
            let (idx, src) = match node.inputs.get(1..3) {
                Some([i, s]) => (size(g.ty(*i))?, size(g.ty(*s))?),
                _ => (0, 0),
            };
            let src_elems = src / node.ty.dtype.size_bytes().max(1);
            OpCost {
                flops: src_elems,
                bytes_moved: out_bytes
                    .saturating_add(idx)
                    .saturating_add(src.saturating_mul(3)),
                output_bytes: out_bytes,
                temp_bytes: 0,
            }
        }
        CostClass::Linear => {
            let w = g.ty(node.inputs[1]);
            let (o, i) = match (
                w.shape.first().and_then(|d| d.eval(env)),
                w.shape.get(1).and_then(|d| d.eval(env)),
            ) {
                (Some(o), Some(i)) => (o, i),
                _ => {
                    return Err(CostError {
                        at: at(),
                        message: format!("weight {w} has no constant [out,in] shape"),
                    })
                }
            };
            let rows = out_elems / o.max(1);
            let extra = u64::from(node.inputs.len() > 2)
                + if node.op.activation() != Ok(Activation::None) {
                    4
                } else {
                    0
                };
            OpCost {
                flops: prod(&[2, rows, i, o]).saturating_add(out_elems.saturating_mul(extra)),
                bytes_moved: in_bytes.saturating_add(out_bytes),
                output_bytes: out_bytes,
                temp_bytes: 0,
            }
        }
        CostClass::Attention => {
            let s = attn_shape()?;
            match node.op.int("kv_chunk") {
                Some(kv) if kv >= 1 => {
                    exact_attention_cost(&s, node.op.flag("key_norm"), kv as u64)
                }
                _ => full_attention_cost(&s, node.op.flag("key_norm")),
            }
        }
        CostClass::LocalAttention => {
            let s = attn_shape()?;
            let a = |n: &str| node.op.int(n).unwrap_or(0).max(0) as u64;
            local_attention_cost(&s, a("chunk").max(1), a("before"), a("after"))
        }
        CostClass::LshAttention => {
            let s = attn_shape()?;
            let a = |n: &str| node.op.int(n).unwrap_or(0).max(0) as u64;
            let rounds = g
                .ty(node.inputs[2])
                .shape
                .get(2)
                .and_then(|d| d.eval(env))
                .unwrap_or(1);
            lsh_attention_cost(
                &s,
                &LshShape {
                    chunk: a("chunk").max(1),
                    before: a("before"),
                    after: a("after"),
                    n_hashes: rounds,
                },
            )
        }
        CostClass::LshHash => {
            let s = attn_shape()?;
            let half = node
                .op
                .ints("buckets")
                .unwrap_or(&[])
                .iter()
                .map(|f| (*f).max(0) as u64)
                .sum::<u64>()
                / 2;
            lsh_hash_cost(&s, node.op.int("n_hashes").unwrap_or(1).max(1) as u64, half)
        }
        CostClass::LmLoss => lm_loss_cost(g, node, env, in_bytes, out_bytes),
        CostClass::FeedForward => {
            // Operand 3 is w1 `[F, D]`; the forward is two `rows x D x F` products.
            let w1 = node.inputs.get(3).map(|&w| g.ty(w));
            let dim = |t: &TensorType, i: usize| t.shape.get(i).and_then(|d| d.eval(env));
            let (f, d) = match w1.map(|w| (dim(w, 0), dim(w, 1))) {
                Some((Some(f), Some(d))) => (f, d),
                _ => {
                    return Err(CostError {
                        at: at(),
                        message: "feed_forward's w1 (operand 3) has no constant [F, D] shape"
                            .into(),
                    })
                }
            };
            let x_bytes = size(g.ty(node.inputs[0]))?;
            let rows = x_bytes / node.ty.dtype.size_bytes().max(1) / d.max(1);
            // Products of `rows x D x F`: the forward's two; a gradient group's
            // five (the hidden values and `dy·w2` recomputed, `dn`: with `x`;
            // `dw1`, `dw2`: with their weights; the sums are not products).
            let products = match (node.op.kind, node.op.str("wrt")) {
                (OpKind::FeedForward, _) => 2,
                (_, Some("x")) => 3,
                (_, Some("w1" | "w2")) => 1,
                _ => 0,
            };
            OpCost {
                flops: prod(&[2, rows, d, f, products]),
                bytes_moved: in_bytes.saturating_add(out_bytes),
                output_bytes: out_bytes,
                temp_bytes: 0,
            }
        }
        CostClass::Matmul => {
            let a = g.ty(node.inputs[0]);
            let k = a.shape.last().and_then(|d| d.eval(env)).unwrap_or(1);
            OpCost {
                flops: prod(&[2, out_elems, k]),
                bytes_moved: in_bytes.saturating_add(out_bytes),
                output_bytes: out_bytes,
                temp_bytes: 0,
            }
        }
        CostClass::Reduce => {
            let n = elements(g.ty(node.inputs[0]), env).unwrap_or(0);
            // Operations per input element of each reduction.
            let per = match node.op.reduction() {
                Ok(Reduction::LogSumExp) => 3,
                Ok(Reduction::Sum | Reduction::Mean | Reduction::Max) | Err(_) => 1,
            };
            OpCost {
                flops: n.saturating_mul(per),
                bytes_moved: in_bytes.saturating_add(out_bytes),
                output_bytes: out_bytes,
                temp_bytes: 0,
            }
        }
        CostClass::Sort => {
            let axis = node.op.usize("axis").unwrap_or(0);
            let n = g
                .ty(node.inputs[0])
                .shape
                .get(axis)
                .and_then(|d| d.eval(env))
                .unwrap_or(1);
            OpCost {
                flops: out_elems.saturating_mul(log2_ceil(n)),
                bytes_moved: in_bytes.saturating_add(out_bytes),
                output_bytes: out_bytes,
                temp_bytes: out_bytes,
            }
        }
    })
}

fn bound_list(env: &DimEnv) -> String {
    if env.is_empty() {
        return "none".into();
    }
    env.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Costs of every op of a graph (regions included) and their total.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphCost {
    /// Per op, in [`Graph::walk`] order, for one execution of the op.
    pub ops: Vec<(ValueId, OpCost)>,
    /// Sum of FLOPs and bytes (ops in `seq_chunk` bodies counted once per
    /// chunk), the largest temporary.
    pub total: OpCost,
}

/// Costs every op of `g` at `env`.
///
/// ```
/// let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[B,L,8]\n %1 = exp %0 : f32[B,L,8]\n output \"y\" = %1\n}").unwrap();
/// let c = reformc_passes::cost::graph_cost(&g, &reformc_passes::cost::dim_env(&g, 1, 4)).unwrap();
/// assert_eq!(c.total.flops, 4 * 32);
/// ```
pub fn graph_cost(g: &Graph, env: &DimEnv) -> Result<GraphCost, CostError> {
    let sizing = Sizing::new(g, env.clone());
    let mut out = GraphCost::default();
    for v in g.walk() {
        let c = op_cost(g, v, sizing.env(v))?;
        let n = sizing.repeat(v);
        out.total = out.total.combine(OpCost {
            flops: c.flops.saturating_mul(n),
            bytes_moved: c.bytes_moved.saturating_mul(n),
            output_bytes: c.output_bytes.saturating_mul(n),
            temp_bytes: c.temp_bytes,
        });
        out.ops.push((v, c));
    }
    Ok(out)
}

/// Formats a byte count with binary units (`16.0 GiB`).
///
/// ```
/// assert_eq!(reformc_passes::cost::fmt_bytes(16 << 30), "16.0 GiB");
/// assert_eq!(reformc_passes::cost::fmt_bytes(1536), "1.5 KiB");
/// assert_eq!(reformc_passes::cost::fmt_bytes(12), "12 B");
/// ```
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut x = n as f64 / 1024.0;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    format!("{x:.1} {}", UNITS[u])
}

/// Formats a FLOP count with decimal units (`2.2 TFLOP`).
///
/// ```
/// assert_eq!(reformc_passes::cost::fmt_flops(45_000_000), "45.0 MFLOP");
/// assert_eq!(reformc_passes::cost::fmt_flops(2_200_000_000_000), "2.2 TFLOP");
/// ```
pub fn fmt_flops(n: u64) -> String {
    const UNITS: [&str; 6] = ["kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP"];
    if n < 1000 {
        return format!("{n} FLOP");
    }
    let mut x = n as f64 / 1000.0;
    let mut u = 0;
    while x >= 1000.0 && u + 1 < UNITS.len() {
        x /= 1000.0;
        u += 1;
    }
    format!("{x:.1} {}", UNITS[u])
}

/// Bytes per element of a dtype (re-exported for callers that only have a dtype).
pub fn elem_bytes(d: DType) -> u64 {
    d.size_bytes()
}

/// `lm_loss` and `lm_loss_grad`: per row, the `D x V` product of the logits,
/// a softmax over V, and for a gradient a `V x D` product. The two
/// gradients run as one call that computes the logits once (the LLVM
/// backend groups them, `Fusion::grouped`), so `wrt="h"` counts the logits
/// and `wrt="w"` does not. The kernel keeps one chunk of `[chunk, V]` logits
/// as scratch.
fn lm_loss_cost(g: &Graph, node: &Node, env: &DimEnv, in_bytes: u64, out_bytes: u64) -> OpCost {
    let h = g.ty(node.inputs[0]);
    let w = g.ty(node.inputs[1]);
    let dim = |t: &TensorType, i: usize| t.shape.get(i).and_then(|d| d.eval(env)).unwrap_or(1);
    let d = dim(h, h.rank().saturating_sub(1));
    let rows = elements(h, env).unwrap_or(0) / d.max(1);
    let v = dim(w, 0);
    let products: u64 = match (node.op.kind, node.op.str("wrt")) {
        (OpKind::LmLossGrad, Some("w")) => 1,
        (OpKind::LmLossGrad, _) => 2,
        _ => 1,
    };
    let chunk = (node.op.int("chunk").unwrap_or(1).max(1) as u64).min(rows.max(1));
    let scratch = prod(&[chunk, v, h.dtype.size_bytes()]);
    OpCost {
        flops: prod(&[2, products, rows, d, v]).saturating_add(prod(&[5, rows, v])),
        bytes_moved: in_bytes.saturating_add(out_bytes),
        output_bytes: out_bytes,
        temp_bytes: scratch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(l: u64) -> AttentionShape {
        AttentionShape {
            batch: 1,
            heads: 4,
            q_len: l,
            k_len: l,
            d_qk: 64,
            d_v: 64,
            elem_bytes: 4,
        }
    }

    #[test]
    fn full_attention_is_quadratic_and_lsh_linear() {
        let lsh = LshShape {
            chunk: 64,
            before: 1,
            after: 0,
            n_hashes: 2,
        };
        let (f1, f2) = (
            full_attention_cost(&shape(4096), false),
            full_attention_cost(&shape(8192), false),
        );
        let ratio = f2.flops as f64 / f1.flops as f64;
        assert!((ratio - 4.0).abs() < 0.01, "full FLOPs ratio {ratio}");
        assert_eq!(
            f2.temp_bytes - 8192 * 256 * 4,
            4 * (f1.temp_bytes - 4096 * 256 * 4)
        );
        let (l1, l2) = (
            lsh_attention_cost(&shape(4096), &lsh),
            lsh_attention_cost(&shape(8192), &lsh),
        );
        let ratio = l2.flops as f64 / l1.flops as f64;
        assert!(ratio > 1.95 && ratio < 2.1, "lsh FLOPs ratio {ratio}");
        let ratio = l2.temp_bytes as f64 / l1.temp_bytes as f64;
        assert!(ratio > 1.9 && ratio < 2.01, "lsh temp ratio {ratio}");
        let (e1, e2) = (
            exact_attention_cost(&shape(4096), false, 128),
            exact_attention_cost(&shape(8192), false, 128),
        );
        assert!(
            e2.temp_bytes <= 2 * e1.temp_bytes,
            "exact attention memory is O(L)"
        );
        assert!(e1.flops >= f1.flops);
    }

    #[test]
    fn lsh_at_short_length_is_full_attention() {
        let lsh = LshShape {
            chunk: 64,
            before: 1,
            after: 0,
            n_hashes: 2,
        };
        assert_eq!(
            lsh_attention_cost(&shape(64), &lsh),
            full_attention_cost(&shape(64), true)
        );
    }

    #[test]
    fn unbound_symbol_is_an_error_not_a_panic() {
        let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[N]\n %1 = exp %0 : f32[N]\n output \"y\" = %1\n}").unwrap();
        let err = op_cost(&g, g.outputs[0].1, &DimEnv::new()).unwrap_err();
        assert!(err.message.contains("unbound"), "{err}");
        assert!(op_cost(&g, ValueId(99), &DimEnv::new()).is_err());
    }

    #[test]
    fn padding_rule_binds_p() {
        assert_eq!(pad_len(65536, 64, 64), 65536);
        assert_eq!(pad_len(100, 64, 64), 128);
        assert_eq!(pad_len(100, 1, 0), 100);
    }
}
