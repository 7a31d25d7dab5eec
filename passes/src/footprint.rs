//! The resident memory a compiled executable needs, part by part: what
//! `reformc explain` reports as the static peak.
//!
//! The activations are the [`BufferPlan`] generated code follows (the one
//! plan, fusion included), replayed at concrete dims through a model of the
//! runtime's caching allocator (`runtime/src/alloc.rs`), whose cached blocks
//! stay resident. To that come the parts the plan does not hold:
//! - the weights, memory-mapped and every page read once per forward;
//! - the graph inputs (the ids the executable reads);
//! - the runtime kernels' scratch: full attention's logit blocks, LSH
//!   attention's per-head sort state, and each worker thread's dense-stack
//!   block scratch;
//! - the executable's fixed resident set (libc, runtime, code, stacks).
//!
//! ```
//! use reformc_passes::footprint::footprint;
//! let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[N]\n %1 = exp %0 : f32[N]\n %2 = softmax %1 {axis=0} : f32[N]\n output \"y\" = %2\n}").unwrap();
//! let env = [("N".to_string(), 1024u64)].into_iter().collect();
//! let f = footprint(&g, &env, 1).unwrap();
//! assert_eq!(f.inputs, 4096);
//! assert_eq!(f.activations, 8192); // %1 and %2 live together at the softmax
//! assert_eq!(f.total(), f.activations + f.allocator_cache + f.inputs + f.kernel_scratch + f.thread_scratch + f.fixed);
//! ```

use crate::buffer_plan::{BufferPlan, PlannedBuffer};
use crate::cost::{bytes_of, CostError};
use reformc_ir::{DType, DimEnv, Graph, OpKind};
use std::collections::BTreeMap;

/// Resident bytes of an executable before any model memory: libc, the
/// runtime and the generated code, the main stack and the `.npy` reader.
/// Measured on the 2-core AMD EPYC VM with `examples/tiny-reformer`'s
/// executable (1.7 MB file): `--help` alone peaks at 2.3 MiB; a run at
/// L = 256 peaks at 4.6-5.0 MiB, of which 0.95 MiB are its weights, inputs
/// and planned buffers and about 0.4 MiB per worker thread
/// ([`THREAD_BYTES`]), leaving about 3.5 MiB.
pub const EXE_BASE_BYTES: u64 = 3584 << 10;

/// Resident bytes each worker thread adds: its stack pages touched and the
/// dense kernel's block scratch (`BLOCK_BYTES`, 256 KiB, in
/// runtime/src/dense.rs, kept for the thread's lifetime) with the GEMM's
/// packed panels.
pub const THREAD_BYTES: u64 = 448 << 10;

/// The caching allocator keeps up to this fraction (1/SLACK_DIV in
/// runtime/src/alloc.rs) above its live peak.
const CACHE_SLACK_DIV: u64 = 4;

/// The allocator rounds every block up to this (MIN_ALIGN in runtime/src/alloc.rs).
const BLOCK_ALIGN: u64 = 64;

/// The resident memory of one run, by part (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Largest sum of live planned buffers (outputs included).
    pub activations: u64,
    /// Freed blocks the caching allocator still holds at the resident peak.
    pub allocator_cache: u64,
    /// Weights (memory-mapped, all read).
    pub weights: u64,
    /// Graph inputs the executable reads.
    pub inputs: u64,
    /// Largest transient scratch of one runtime kernel call.
    pub kernel_scratch: u64,
    /// Per-thread scratch and stacks ([`THREAD_BYTES`] per thread).
    pub thread_scratch: u64,
    /// The executable's own resident set ([`EXE_BASE_BYTES`]).
    pub fixed: u64,
}

impl Footprint {
    /// The static peak: every part added.
    pub fn total(&self) -> u64 {
        [
            self.activations,
            self.allocator_cache,
            self.weights,
            self.inputs,
            self.kernel_scratch,
            self.thread_scratch,
            self.fixed,
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add)
    }
}

/// The footprint of `g` (after the pipeline) at the dims in `env` (see
/// [`crate::cost::dim_env`]) on `threads` worker threads.
///
/// Errors when a size cannot be evaluated (an unbound symbol).
pub fn footprint(g: &Graph, env: &DimEnv, threads: u64) -> Result<Footprint, CostError> {
    footprint_of(g, &BufferPlan::new(g), env, threads)
}

/// [`footprint`] of `g` with its plan already built.
pub fn footprint_of(
    g: &Graph,
    plan: &BufferPlan,
    env: &DimEnv,
    threads: u64,
) -> Result<Footprint, CostError> {
    let (activations, allocator_cache) = replay(plan, env)?;
    let (mut weights, mut inputs, mut kernel_scratch) = (0u64, 0u64, 0u64);
    for v in g.walk() {
        let node = g.node(v);
        let bytes =
            || bytes_of(&node.ty, env).ok_or_else(|| unbound(&format!("%{}", v.0), &node.ty));
        // Particular kinds, not a per-op property: `==` tests rather than a
        // match with a fallback arm ("no fallback arm", docs/architecture.md).
        let kind = node.op.kind;
        if kind == OpKind::Weight {
            weights = weights.saturating_add(bytes()?);
        } else if kind == OpKind::Input {
            inputs = inputs.saturating_add(bytes()?);
        } else if kind == OpKind::LshAttention {
            kernel_scratch = kernel_scratch.max(lsh_scratch(g, v, env, threads));
        } else if kind == OpKind::Attention {
            kernel_scratch = kernel_scratch.max(full_scratch(g, v, env, threads));
        } else if kind == OpKind::LmLoss || kind == OpKind::LmLossGrad {
            kernel_scratch = kernel_scratch.max(lm_loss_scratch(g, v, env));
        } else if kind == OpKind::LshAttentionGrad || kind == OpKind::LocalAttentionGrad {
            kernel_scratch = kernel_scratch.max(chunked_grad_scratch(g, v, env, threads));
        } else if kind == OpKind::FeedForwardGrad {
            kernel_scratch = kernel_scratch.max(feed_forward_scratch(g, v, env));
        }
    }
    Ok(Footprint {
        activations,
        allocator_cache,
        weights,
        inputs,
        kernel_scratch,
        thread_scratch: threads.max(1).saturating_mul(THREAD_BYTES),
        fixed: EXE_BASE_BYTES,
    })
}

fn unbound(at: &str, ty: &reformc_ir::TensorType) -> CostError {
    CostError {
        at: at.into(),
        message: format!("cannot size {ty}: a dimension symbol is unbound"),
    }
}

fn block(plan: &BufferPlan, b: &PlannedBuffer, env: &DimEnv) -> Result<u64, CostError> {
    let bytes = plan.bytes(b, env).ok_or_else(|| CostError {
        at: b.name.clone(),
        message: "cannot size a planned buffer: a dimension symbol is unbound".into(),
    })?;
    Ok(bytes
        .max(1)
        .div_ceil(BLOCK_ALIGN)
        .saturating_mul(BLOCK_ALIGN))
}

/// Replays the plan's allocations and frees, step by step (an op's result is
/// allocated, then the buffers dying there are freed), through the caching
/// allocator's policy: a freed block is cached by exact size unless the plan
/// releases it; a miss first evicts cached blocks, largest first, until the
/// live, cached and new blocks fit in 1.25× the live peak. Returns (live
/// peak, how far the peak of live and cached bytes together exceeds it).
fn replay(plan: &BufferPlan, env: &DimEnv) -> Result<(u64, u64), CostError> {
    let mut allocs: Vec<Vec<usize>> = vec![Vec::new(); plan.steps + 1];
    let mut frees: Vec<Vec<usize>> = vec![Vec::new(); plan.steps + 1];
    for (i, b) in plan.buffers.iter().enumerate() {
        allocs[b.alloc_step.min(plan.steps)].push(i);
        if let Some(f) = b.free_step {
            frees[f.min(plan.steps)].push(i);
        }
    }
    let mut cache: BTreeMap<u64, u64> = BTreeMap::new(); // size -> count
    let (mut live, mut cached, mut peak) = (0u64, 0u64, 0u64);
    let (mut live_peak, mut resident) = (0u64, 0u64);
    for step in 0..=plan.steps {
        for &i in &allocs[step] {
            let size = block(plan, &plan.buffers[i], env)?;
            if let Some(n) = cache.get_mut(&size).filter(|n| **n > 0) {
                *n -= 1;
                cached -= size;
            } else {
                peak = peak.max(live + size);
                let limit = peak + peak / CACHE_SLACK_DIV;
                while cached > 0 && live + size + cached > limit {
                    let Some((&s, n)) = cache.iter_mut().rev().find(|(_, n)| **n > 0) else {
                        break;
                    };
                    *n -= 1;
                    cached -= s;
                }
            }
            live += size;
            live_peak = live_peak.max(live);
            resident = resident.max(live + cached);
        }
        for &i in &frees[step] {
            let b = &plan.buffers[i];
            let size = block(plan, b, env)?;
            live = live.saturating_sub(size);
            if !b.released {
                *cache.entry(size).or_default() += 1;
                cached += size;
            }
        }
    }
    Ok((live_peak, resident.saturating_sub(live_peak)))
}

/// Scratch of one `attention` call (runtime/src/attention/full.rs): key
/// norms, key positions and valid-key lists, and per thread in flight a
/// block of logit rows (up to 2^20 logits) unless keys stream in `kv_chunk`s.
/// The fused loss's kernels: one `[chunk, V]` block of f32 logits (the
/// weight gradient reads it transposed in place).
fn lm_loss_scratch(g: &Graph, v: reformc_ir::ValueId, env: &DimEnv) -> u64 {
    let node = g.node(v);
    let rows = node.inputs.get(2).and_then(|&l| {
        g.ty(l)
            .shape
            .iter()
            .map(|d| d.eval(env))
            .product::<Option<u64>>()
    });
    let vocab = node
        .inputs
        .get(1)
        .and_then(|&w| g.ty(w).shape.first()?.eval(env));
    let (Some(rows), Some(vocab)) = (rows, vocab) else {
        return 0;
    };
    let chunk = (node.op.int("chunk").unwrap_or(1).max(1) as u64).min(rows.max(1));
    chunk.saturating_mul(vocab).saturating_mul(4)
}

/// The scratch of `rc_feed_forward_grad_f32`: one block's normalised rows,
/// hidden values, their gradient and the layer norm's output gradient, plus
/// the largest packed operand of its products (a block's hidden values).
fn feed_forward_scratch(g: &Graph, v: reformc_ir::ValueId, env: &DimEnv) -> u64 {
    let node = g.node(v);
    let dim = |i: usize, a: usize| {
        let t = g.ty(*node.inputs.get(i)?);
        t.shape.get(a)?.eval(env)
    };
    let rows = node.inputs.first().and_then(|&x| {
        let s = &g.ty(x).shape;
        s[..s.len().saturating_sub(1)]
            .iter()
            .map(|d| d.eval(env))
            .product::<Option<u64>>()
    });
    let (Some(rows), Some(f), Some(d)) = (rows, dim(3, 0), dim(3, 1)) else {
        return 0;
    };
    let chunk = node.op.int("chunk").unwrap_or(1).max(1) as u64;
    let c = chunk
        .max(reformc_ir::FEED_FORWARD_MIN_BLOCK_ROWS)
        .min(rows)
        .max(1);
    // The kernel's partial column sums: a row of F + D per 256 rows.
    let partials = c.div_ceil(256).saturating_mul(f + d);
    let floats = c
        .saturating_mul(2 * d + 3 * f)
        .saturating_add(d)
        .saturating_add(f.saturating_mul(d))
        .saturating_add(partials);
    floats.saturating_mul(4)
}

/// The scratch of `rc_lsh_attention_grad_f32` and
/// `rc_local_attention_grad_f32` (one round): seven `[r·P, d]` slot arrays
/// (sorted queries, keys, values and output gradients; the three
/// gradients) and four words per slot, reused for every (batch, head); per
/// task, one chunk's tiles (logits and their gradient, the window packed
/// three ways, the chunk's queries and output gradients packed).
fn chunked_grad_scratch(g: &Graph, v: reformc_ir::ValueId, env: &DimEnv, threads: u64) -> u64 {
    let node = g.node(v);
    let heads = node.op.int("heads").unwrap_or(1).max(1) as u64;
    let attr = |n: &str| node.op.int(n).unwrap_or(0).max(0) as u64;
    let dim = |i: usize, a: usize| {
        node.inputs
            .get(i)
            .and_then(|&x| g.ty(x).shape.get(a))
            .and_then(|d| d.eval(env))
    };
    let rounds = match node.op.kind {
        OpKind::LocalAttentionGrad => Some(1),
        _ => dim(2, 2),
    };
    let (Some(len), Some(width), Some(rounds)) = (dim(0, 1), dim(0, 2), rounds) else {
        return 0;
    };
    let d = width / heads;
    // `P ≤ chunk` is one chunk of every position (a window of one chunk).
    let (chunk, total, window) = match len <= attr("chunk") {
        true => (len, len, 1),
        false => (
            attr("chunk").max(1),
            rounds.saturating_mul(len),
            attr("before") + 1 + attr("after"),
        ),
    };
    let keys = chunk.saturating_mul(window);
    let slots = total
        .saturating_mul(7 * d + 4)
        .saturating_add(len)
        .saturating_mul(4);
    let tile = keys
        .saturating_mul(4 * d + 2 * chunk)
        .saturating_add(2 * chunk * d)
        .saturating_mul(4);
    slots.saturating_add(threads.max(1).saturating_mul(tile))
}

fn full_scratch(g: &Graph, v: reformc_ir::ValueId, env: &DimEnv, threads: u64) -> u64 {
    let node = g.node(v);
    let heads = node.op.int("heads").unwrap_or(1).max(1) as u64;
    let dim = |x: Option<&reformc_ir::ValueId>, i: usize| {
        x.and_then(|&x| g.ty(x).shape.get(i))
            .and_then(|d| d.eval(env))
    };
    let (Some(b), Some(lq), Some(lk)) = (
        dim(node.inputs.first(), 0),
        dim(node.inputs.first(), 1),
        dim(node.inputs.get(1), 1),
    ) else {
        return 0;
    };
    let norms = if node.op.flag("key_norm") {
        b.saturating_mul(heads).saturating_mul(lk)
    } else {
        0
    };
    let lists = lk.saturating_add(b.saturating_mul(lk));
    let block = match node.op.int("kv_chunk").unwrap_or(0) {
        0 => ((1u64 << 20) / lk.max(1)).clamp(1, 64).min(lq),
        _ => 0,
    };
    let tasks = b
        .saturating_mul(heads)
        .saturating_mul(lq.div_ceil(64).max(1));
    let logits = threads
        .max(1)
        .min(tasks)
        .saturating_mul(block)
        .saturating_mul(lk);
    norms
        .saturating_add(lists)
        .saturating_add(logits)
        .saturating_mul(4)
}

/// Scratch of one `lsh_attention` call (runtime/src/attention/lsh.rs): the
/// valid-position lists, per (batch, head) the key norms and sorted
/// positions, then either the sort permutations in flight (one per thread)
/// or the per-position round state.
fn lsh_scratch(g: &Graph, v: reformc_ir::ValueId, env: &DimEnv, threads: u64) -> u64 {
    let node = g.node(v);
    let heads = node.op.int("heads").unwrap_or(1).max(1) as u64;
    let q = node.inputs.first().map(|&x| g.ty(x));
    let dim = |t: Option<&reformc_ir::TensorType>, i: usize| {
        t.and_then(|t| t.shape.get(i)).and_then(|d| d.eval(env))
    };
    let (Some(b), Some(len)) = (dim(q, 0), dim(q, 1)) else {
        return 0;
    };
    // The buckets operand: i64 [B, H, r·P].
    let total = node
        .inputs
        .iter()
        .map(|&x| g.ty(x))
        .find(|t| t.dtype == DType::I64 && t.shape.len() == 3)
        .and_then(|t| dim(Some(t), 2))
        .unwrap_or(len);
    let bh = b.saturating_mul(heads);
    let valid = b.saturating_mul(len).saturating_mul(4);
    let prep = bh
        .saturating_mul(len.saturating_add(total))
        .saturating_mul(4);
    let perm = threads
        .max(1)
        .min(bh)
        .saturating_mul(total)
        .saturating_mul(4);
    let state = bh.saturating_mul(len).saturating_mul(8);
    valid.saturating_add(prep).saturating_add(perm.max(state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reformc_ir::Dim;

    /// A plan of f32 buffers `(elements, alloc step, free step, released)`.
    fn plan(bufs: &[(u64, usize, Option<usize>, bool)]) -> BufferPlan {
        BufferPlan {
            buffers: bufs
                .iter()
                .enumerate()
                .map(|(i, &(n, a, f, released))| PlannedBuffer {
                    name: format!("%{i}"),
                    op: "exp".into(),
                    dtype: DType::F32,
                    shape: vec![Dim::Const(n)],
                    alloc_step: a,
                    free_step: f,
                    released,
                })
                .collect(),
            steps: bufs.iter().map(|b| b.1).max().unwrap_or(0) + 1,
            ..BufferPlan::default()
        }
    }

    #[test]
    fn a_freed_block_of_the_same_size_is_reused() {
        // 100 floats round up to a 448-byte block; the second takes the first's.
        let p = plan(&[(100, 0, Some(0), false), (100, 1, Some(1), false)]);
        assert_eq!(replay(&p, &DimEnv::new()).unwrap(), (448, 0));
    }

    #[test]
    fn cached_blocks_stay_resident_within_the_slack() {
        // 1024 B cached while a 256 B block is live: 1280 B fits 1.25 × 1024.
        let p = plan(&[(256, 0, Some(0), false), (64, 1, Some(1), false)]);
        assert_eq!(replay(&p, &DimEnv::new()).unwrap(), (1024, 256));
        // Released to the system instead: nothing cached.
        let p = plan(&[(256, 0, Some(0), true), (64, 1, Some(1), false)]);
        assert_eq!(replay(&p, &DimEnv::new()).unwrap(), (1024, 0));
    }

    #[test]
    fn a_miss_evicts_what_does_not_fit_the_slack() {
        // 1024 B cached, then 2048 B live: 3072 B > 1.25 × 2048, so it goes.
        let p = plan(&[(256, 0, Some(0), false), (512, 1, None, false)]);
        assert_eq!(replay(&p, &DimEnv::new()).unwrap(), (2048, 0));
    }

    #[test]
    fn parts_add_up_and_threads_count() {
        let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f32[N]\n %1 = weight {name=\"w\"} : f32[N]\n %2 = mul %0, %1 : f32[N]\n output \"y\" = %2\n}").unwrap();
        let env: DimEnv = [("N".to_string(), 256u64)].into_iter().collect();
        let one = footprint(&g, &env, 1).unwrap();
        assert_eq!(
            (one.weights, one.inputs, one.activations),
            (1024, 1024, 1024)
        );
        let four = footprint(&g, &env, 4).unwrap();
        assert_eq!(four.total() - one.total(), 3 * THREAD_BYTES);
        assert!(footprint(&g, &DimEnv::new(), 1).is_err());
    }
}
