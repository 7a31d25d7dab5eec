//! The derivatives of the chunked attention kinds: fused LSH attention
//! (`rc_lsh_attention_grad_f32`) and local attention
//! (`rc_local_attention_grad_f32`), one kernel for both.
//!
//! LSH attention ([`super::lsh_attention`]) sorts each (batch, head)'s
//! round-offset buckets, attends chunk by chunk over a window of chunks and
//! combines the rounds with weights `c_r = softmax_r(lse_r)`. Local attention
//! ([`super::local_attention`]) is the same computation with the slots in
//! position order, one round, separate queries and keys, no key
//! normalisation and no self mask. Given the output `y` and its cotangent
//! `dy`, each query slot `t` (position `pos`, round `r`) sees
//! `dO_t = c_t dy_pos` and, because the round weights move with the logits
//! too, a per-slot shift `-c_t (dy_pos · y_pos)` (with `c = 1`, the usual
//! softmax term `-(dy · y)`): `dS = P ⊙ (dO Vᵀ - c_t (dy · y))` on unmasked
//! logits, 0 on masked ones (masks replace logits by constants). Then
//! `dQ = dS K`, `dK = dSᵀ Q`, `dV = Pᵀ dO`; LSH's key normalisation
//! `k = u / rms(u) / sqrt(d)` passes `dK` back to the shared query/key `u`,
//! local attention's key scale `k = u / div` passes `dK / div` to the keys.
//!
//! Per (batch, head), one after another:
//! 1. the rows gathered once into sorted slot order (queries, scaled keys,
//!    values, and the output gradients `c·dy`), in scratch from the
//!    runtime's buffer cache;
//! 2. with several rounds, the (max, sum) of every slot's logits (one product
//!    per chunk), then the round weights per position; one round has `c = 1`;
//! 3. per chunk: logits and probabilities again, then the four products of
//!    the gradient; `dQ` goes to the chunk's own slots, `dK` and `dV` are
//!    added to the slots of its window. Chunks run in groups of a fixed
//!    size, in phases whose groups share no key chunk ([`Plan::phases`]), so
//!    the sums' order (hence the bits) does not depend on the thread count;
//! 4. per position, the rounds' slots summed in round order, and the key
//!    gradient taken through the key scaling.
//!
//! Scratch: seven `[r·L, d]` slot arrays and O(r·L) scalars, reused for
//! every (batch, head), and one set of chunk tiles per task.

use super::full::Shape;
use super::{
    inv_len_norm, key_divisor, put_keys, put_values, softmax_row, valid_row, KeyScale, Rules,
};
use crate::alloc::CachedF32;
use crate::error::{try_zeroed, Result};
use crate::gemm::{check_len, gemm_a, kernel, AStrides, Epilogue, Kernel, PackedB};
use crate::pool::{try_par_for, SharedMut};
use crate::simd;

/// Rows ahead whose cache lines the per-slot and per-position loops ask
/// for: slots visit positions in bucket order, a permutation that no
/// hardware prefetcher follows.
const AHEAD: usize = 8;

/// Chunks per group of the backward pass: a constant (not the thread count)
/// so that the order of every sum is fixed.
const GROUP_CHUNKS: usize = 8;

/// The gradient of LSH attention with respect to the shared query/keys `qk`
/// and the values `v` (`rc_lsh_attention_grad_f32`), given the forward
/// output `y` and its cotangent `dy` (all `[B, L, H·d]`) and the buckets of
/// the forward pass; `out` is `[2, B, L, H·d]`: `d qk` then `d v`. Checks
/// and the `L ≤ chunk` case (full shared-QK attention) as in
/// [`super::lsh_attention`].
///
/// ```
/// use reformc_runtime::attention::{lsh_attention, lsh_attention_grad};
/// // B = 1, L = 4, H = 1, d = 2, one round, chunk 2: the first position
/// // sees only itself, so its value gets all of its cotangent.
/// let qk = [1.0f32, 0.0, 0.9, 0.1, -1.0, 0.0, -0.8, 0.2];
/// let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
/// let buckets = [0i64, 0, 1, 1];
/// let mut y = [0.0f32; 8];
/// lsh_attention(&qk, &v, &buckets, None, 1, 4, 1, 2, 1, 2, 0, 0, true, &mut y).unwrap();
/// let mut dy = [0.0f32; 8];
/// dy[0] = 1.0;
/// let mut g = [0.0f32; 16];
/// lsh_attention_grad(&qk, &v, &buckets, &y, &dy, None, 1, 4, 1, 2, 1, 2, 0, 0, true, &mut g).unwrap();
/// assert_eq!(&g[8..10], &[1.0, 0.0]); // d v of position 0
/// assert!(g[..8].iter().all(|&x| x == 0.0)); // a lone key has no logit gradient
/// ```
#[allow(clippy::too_many_arguments)]
pub fn lsh_attention_grad(
    qk: &[f32],
    v: &[f32],
    buckets: &[i64],
    y: &[f32],
    dy: &[f32],
    mask: Option<&[i64]>,
    batch: usize,
    len: usize,
    heads: usize,
    d: usize,
    rounds: usize,
    chunk: usize,
    before: usize,
    after: usize,
    causal: bool,
    out: &mut [f32],
) -> Result<()> {
    let shape = Shape {
        batch,
        lq: len,
        lk: len,
        heads,
        dqk: d,
        dv: d,
    };
    super::lsh::check_operands(shape, qk, v, buckets, mask, y, rounds, chunk)?;
    check_len("dy", dy.len(), Some(y.len()))?;
    check_len("out", out.len(), y.len().checked_mul(2))?;
    if batch == 0 || heads == 0 || d == 0 || len == 0 || rounds == 0 {
        out.iter_mut().for_each(|x| *x = 0.0);
        return Ok(());
    }
    let (dqk, dv) = out.split_at_mut(y.len());
    let cx = Ctx {
        q: qk,
        k: qk,
        norm: true,
        v,
        y,
        dy,
        len,
        width: heads * d,
        d,
        heads,
        plan: Plan::new(len, rounds, chunk, before, after)?,
        div: key_divisor(1.0 / (d as f64).sqrt()),
        rules: Rules {
            causal,
            self_mask: true,
        },
        kern: kernel(),
    };
    let grads = Grads {
        dq: dqk,
        dk: None,
        dv,
    };
    cx.run(mask, batch, Some(buckets), grads)
}

/// The gradient of local attention ([`super::local_attention`], the same
/// attributes; queries, keys and values all `[B, L, H·d]`) with respect to
/// `q`, `k` and `v` (`rc_local_attention_grad_f32`), given the forward
/// output `y` and its cotangent `dy`; `out` is `[3, B, L, H·d]`: `d q`,
/// `d k`, then `d v`. `L ≤ chunk` is full attention; otherwise `L` must be
/// a multiple of `chunk` ([`Error::ChunkMismatch`], code 3).
///
/// ```
/// use reformc_runtime::attention::{local_attention, local_attention_grad};
/// // B = 1, L = 4, H = 1, d = 1, chunk 2, causal, no look-back: the first
/// // position sees only itself, so its value gets all of its cotangent.
/// let x = [0.5f32, -1.0, 0.25, 2.0];
/// let mut y = [0.0f32; 4];
/// local_attention(&x, &x, &x, None, 1, 4, 1, 1, 1, 1.0, 2, 0, 0, true, &mut y).unwrap();
/// let dy = [1.0f32, 0.0, 0.0, 0.0];
/// let mut g = [0.0f32; 12];
/// local_attention_grad(&x, &x, &x, &y, &dy, None, 1, 4, 1, 1, 1.0, 2, 0, 0, true, &mut g).unwrap();
/// assert_eq!(g[8], 1.0); // d v of position 0
/// assert_eq!(&g[..8], &[0.0; 8]); // one key alone: no logit gradient
/// ```
#[allow(clippy::too_many_arguments)]
pub fn local_attention_grad(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    y: &[f32],
    dy: &[f32],
    mask: Option<&[i64]>,
    batch: usize,
    len: usize,
    heads: usize,
    d: usize,
    scale: f32,
    chunk: usize,
    before: usize,
    after: usize,
    causal: bool,
    out: &mut [f32],
) -> Result<()> {
    let shape = Shape {
        batch,
        lq: len,
        lk: len,
        heads,
        dqk: d,
        dv: d,
    };
    super::local::check_operands(scale, shape, (q, k, v), mask, y, chunk)?;
    check_len("dy", dy.len(), Some(y.len()))?;
    check_len("out", out.len(), y.len().checked_mul(3))?;
    if batch == 0 || heads == 0 || d == 0 || len == 0 {
        out.iter_mut().for_each(|x| *x = 0.0);
        return Ok(());
    }
    let (dq, rest) = out.split_at_mut(y.len());
    let (dk, dv) = rest.split_at_mut(y.len());
    let cx = Ctx {
        q,
        k,
        norm: false,
        v,
        y,
        dy,
        len,
        width: heads * d,
        d,
        heads,
        plan: Plan::new(len, 1, chunk, before, after)?,
        div: key_divisor(f64::from(scale)),
        rules: Rules {
            causal,
            self_mask: false,
        },
        kern: kernel(),
    };
    let grads = Grads {
        dq,
        dk: Some(dk),
        dv,
    };
    cx.run(mask, batch, None, grads)
}

/// Where [`Ctx::run`] writes, each `[B, L, H·d]`: the query gradient (with
/// LSH, the shared query/key gradient), the key gradient where keys are
/// separate, and the value gradient.
struct Grads<'a> {
    dq: &'a mut [f32],
    dk: Option<&'a mut [f32]>,
    dv: &'a mut [f32],
}

/// How the sorted slots of one (batch, head) split into chunks and windows.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// `L ≤ chunk`: one chunk of every position in order, no rounds.
    full: bool,
    /// Slots per chunk.
    chunk: usize,
    /// Chunks over all slots.
    n_chunks: usize,
    /// Slots in all (`r·L`, or `L` when `full`).
    total: usize,
    /// Rounds combined (1 when `full`).
    rounds: usize,
    before: usize,
    /// Chunks per window (`before + 1 + after`, or 1 when `full`).
    window: usize,
}

impl Plan {
    fn new(len: usize, rounds: usize, chunk: usize, before: usize, after: usize) -> Result<Plan> {
        if len <= chunk {
            return Ok(Plan {
                full: true,
                chunk: len,
                n_chunks: 1,
                total: len,
                rounds: 1,
                before: 0,
                window: 1,
            });
        }
        let (total, window) = super::lsh::sorted_slots(len, rounds, chunk, before, after)?;
        Ok(Plan {
            full: false,
            chunk,
            n_chunks: total / chunk,
            total,
            rounds,
            before,
            window,
        })
    }

    /// The chunk at offset `o` of chunk `j`'s window (REFORMER.md §1.5).
    fn window_chunk(&self, j: usize, o: usize) -> usize {
        (j + self.n_chunks * (self.before + 1) + o - self.before) % self.n_chunks
    }

    /// Keys (slots) in a window.
    fn keys(&self) -> usize {
        self.window * self.chunk
    }

    /// Groups of [`GROUP_CHUNKS`] chunks, in phases: groups of one phase
    /// touch no common chunk (their windows' chunks, wrap-around included),
    /// so they may run at once. The assignment depends only on the plan.
    fn phases(&self) -> Vec<Vec<usize>> {
        let groups = self.n_chunks.div_ceil(GROUP_CHUNKS);
        let mut phases: Vec<(Vec<bool>, Vec<usize>)> = Vec::new();
        for g in 0..groups {
            let touched: Vec<usize> = self
                .group(g)
                .flat_map(|j| (0..self.window).map(move |o| self.window_chunk(j, o)))
                .collect();
            let free = |claimed: &Vec<bool>| touched.iter().all(|&u| !claimed[u]);
            let at = match phases.iter().position(|(claimed, _)| free(claimed)) {
                Some(at) => at,
                None => {
                    phases.push((vec![false; self.n_chunks], Vec::new()));
                    phases.len() - 1
                }
            };
            touched.iter().for_each(|&u| phases[at].0[u] = true);
            phases[at].1.push(g);
        }
        phases.into_iter().map(|(_, members)| members).collect()
    }

    /// The chunks of group `g`.
    fn group(&self, g: usize) -> std::ops::Range<usize> {
        g * GROUP_CHUNKS..((g + 1) * GROUP_CHUNKS).min(self.n_chunks)
    }
}

/// What every task of one call reads.
struct Ctx<'a> {
    /// Queries (LSH: the shared query/keys).
    q: &'a [f32],
    /// Keys before scaling (LSH: the shared query/keys again).
    k: &'a [f32],
    /// Whether keys are length-normalised before scaling (LSH).
    norm: bool,
    v: &'a [f32],
    y: &'a [f32],
    dy: &'a [f32],
    len: usize,
    width: usize,
    d: usize,
    heads: usize,
    plan: Plan,
    div: f32,
    rules: Rules,
    kern: &'static Kernel,
}

/// One (batch, head)'s rows in sorted slot order and its per-slot state;
/// allocated once per call and refilled for every (batch, head).
struct Head {
    /// Each slot's position.
    pos: Vec<u32>,
    /// Each position's slots in round order (`[L, rounds]`).
    by_pos: Vec<u32>,
    /// Each position's inverse RMS (the key normalisation).
    inv: Vec<f32>,
    /// Queries (`qk` rows), normalised scaled keys, values and output
    /// gradients `c·dy` by slot (`[r·L, d]` each).
    q: CachedF32,
    k: CachedF32,
    v: CachedF32,
    dout: CachedF32,
    /// Each slot's round weight `c` (1 with one round).
    weight: Vec<f32>,
    /// Each slot's shift `-c (dy · y)`.
    shift: Vec<f32>,
    /// Gradients by slot (`[r·L, d]` each).
    dq: CachedF32,
    dk: CachedF32,
    dv: CachedF32,
}

impl Head {
    fn new(plan: &Plan, len: usize, d: usize) -> Result<Head> {
        let rows = |what| CachedF32::zeroed(plan.total * d, what);
        Ok(Head {
            pos: vec![0; plan.total],
            by_pos: vec![0; len * plan.rounds],
            inv: vec![0.0; len],
            q: rows("sorted queries")?,
            k: rows("sorted keys")?,
            v: rows("sorted values")?,
            dout: rows("sorted output gradients")?,
            weight: vec![1.0; plan.total],
            shift: vec![0.0; plan.total],
            dq: rows("query gradient slots")?,
            dk: rows("key gradient slots")?,
            dv: rows("value gradient slots")?,
        })
    }
}

/// The tiles of one task: logits and their gradient, a window's keys and
/// values packed three ways, a chunk's queries and output gradients packed.
struct Tiles {
    kt: PackedB,
    vt: PackedB,
    k: PackedB,
    qp: PackedB,
    dop: PackedB,
    s: Vec<f32>,
    ds: Vec<f32>,
    part: Vec<f32>,
    kpos: Vec<u32>,
    keep: Vec<u32>,
}

impl Tiles {
    /// Tiles packed as this thread's precision asks (bf16 pairs under
    /// `--precision bf16`, as the forward's attention tiles are), so the
    /// gradient's five products per chunk are the forward's kind of product.
    fn new(plan: &Plan, d: usize, nr: usize) -> Result<Tiles> {
        let (c, n) = (plan.chunk, plan.keys());
        let packing = crate::bf16::packing(kernel().isa);
        Ok(Tiles {
            kt: PackedB::zeroed_as(d, n, nr, packing)?,
            vt: PackedB::zeroed_as(d, n, nr, packing)?,
            k: PackedB::zeroed_as(n, d, nr, packing)?,
            qp: PackedB::zeroed_as(c, d, nr, packing)?,
            dop: PackedB::zeroed_as(c, d, nr, packing)?,
            s: try_zeroed(c * n, "logit tile")?,
            ds: try_zeroed(c * n, "logit gradient tile")?,
            part: try_zeroed(n * d, "key gradient tile")?,
            kpos: vec![0; n],
            keep: vec![0; n],
        })
    }
}

/// Runs `f(item, tiles)` for every item of `items`, spread over at most
/// the pool's thread count of tasks, each with its own tiles.
fn for_each_with_tiles(
    items: &[usize],
    plan: &Plan,
    d: usize,
    nr: usize,
    f: impl Fn(usize, &mut Tiles) + Sync,
) -> Result<()> {
    let tasks = crate::pool::threads().clamp(1, items.len().max(1));
    try_par_for(tasks, |task| {
        let mut t = Tiles::new(plan, d, nr)?;
        for &item in items.iter().skip(task).step_by(tasks) {
            f(item, &mut t);
        }
        Ok(())
    })
}

/// Runs `f(slot range)` over `0..n` in blocks, in parallel.
fn for_each_block(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) -> Result<()> {
    const BLOCK: usize = 1024;
    try_par_for(n.div_ceil(BLOCK), |i| {
        f(i * BLOCK..((i + 1) * BLOCK).min(n));
        Ok(())
    })
}

impl Ctx<'_> {
    /// Every (batch, head)'s gradient into `g`, with LSH's `buckets` (their
    /// sort order), or the slots in position order without them.
    fn run(
        &self,
        mask: Option<&[i64]>,
        batch: usize,
        buckets: Option<&[i64]>,
        mut g: Grads,
    ) -> Result<()> {
        let (len, rounds) = (self.len, self.plan.rounds);
        let valid: Vec<Vec<u32>> = (0..batch).map(|b| valid_row(mask, b, len)).collect();
        let phases = self.plan.phases();
        let mut hd = Head::new(&self.plan, len, self.d)?;
        for bh in 0..batch * self.heads {
            // Each slot's round-major index `r·L + pos`.
            let order = match (self.plan.full, buckets) {
                (false, Some(bk)) => {
                    let per = rounds * len;
                    super::lsh::sort_slots(&bk[bh * per..(bh + 1) * per])?
                }
                _ => (0..len as u32).collect(),
            };
            self.head(
                bh,
                &order,
                &valid[bh / self.heads],
                &phases,
                &mut hd,
                &mut g,
            )?;
        }
        Ok(())
    }

    /// Head `h`'s values of position `pos` of batch `b` in a `[B, L, H·d]` tensor.
    fn row(&self, b: usize, h: usize, pos: usize) -> std::ops::Range<usize> {
        let start = (b * self.len + pos) * self.width + h * self.d;
        start..start + self.d
    }

    /// The gradient of (batch, head) `bh`, written into its rows of `g`;
    /// `order` holds each sorted slot's round-major index `r·L + pos`.
    fn head(
        &self,
        bh: usize,
        order: &[u32],
        valid: &[u32],
        phases: &[Vec<usize>],
        hd: &mut Head,
        g: &mut Grads,
    ) -> Result<()> {
        let (b, h, d, plan, len) = (
            bh / self.heads,
            bh % self.heads,
            self.d,
            self.plan,
            self.len,
        );
        for (slot, &t) in order.iter().enumerate() {
            let (r, p) = (t as usize / len, t as usize % len);
            hd.pos[slot] = p as u32;
            hd.by_pos[p * plan.rounds + r.min(plan.rounds - 1)] = slot as u32;
        }
        if self.norm {
            let inv = SharedMut::new(&mut hd.inv);
            for_each_block(len, |positions| {
                // SAFETY: this block alone writes the norms of `positions`.
                let mine = unsafe { inv.slice(positions.start, positions.len()) };
                for (p, o) in positions.zip(mine) {
                    *o = inv_len_norm(&self.k[self.row(b, h, p)]);
                }
            })?;
        }
        self.gather(b, h, hd)?;
        if plan.rounds > 1 {
            self.round_weights(hd, valid)?;
        }
        self.output_gradients(b, h, hd)?;
        zero(&mut hd.dk)?;
        zero(&mut hd.dv)?;
        let Head {
            dq, dk, dv: dvs, ..
        } = hd;
        let (sq, sk, sv) = (SharedMut::new(dq), SharedMut::new(dk), SharedMut::new(dvs));
        let hd = &*hd;
        for phase in phases {
            for_each_with_tiles(phase, &plan, d, self.kern.nr, |g, t| {
                for j in plan.group(g) {
                    self.chunk(j, hd, valid, t, (&sq, &sk, &sv));
                }
            })?;
        }
        self.to_positions(b, h, hd, g)
    }

    /// Asks for the rows, in each of `arrays` (`[B, L, H·d]`), of the
    /// position [`AHEAD`] slots after `slot` when that is before `end`.
    fn prefetch_ahead(
        &self,
        (b, h): (usize, usize),
        pos: &[u32],
        (slot, end): (usize, usize),
        arrays: &[&[f32]],
    ) {
        if slot + AHEAD < end {
            let ahead = self.row(b, h, pos[slot + AHEAD] as usize);
            for a in arrays {
                simd::prefetch(&a[ahead.clone()]);
            }
        }
    }

    /// Fills the sorted queries, keys and values of (batch `b`, head `h`).
    fn gather(&self, b: usize, h: usize, hd: &mut Head) -> Result<()> {
        let d = self.d;
        let scale = KeyScale::new(self.div);
        let (pos, inv) = (&hd.pos, &hd.inv);
        let (q, k, v) = (
            SharedMut::new(&mut hd.q),
            SharedMut::new(&mut hd.k),
            SharedMut::new(&mut hd.v),
        );
        for_each_block(pos.len(), |slots| {
            let n = slots.len();
            // SAFETY: this block alone writes rows `slots` of the three arrays.
            let (qs, ks, vs) = unsafe {
                (
                    q.slice(slots.start * d, n * d),
                    k.slice(slots.start * d, n * d),
                    v.slice(slots.start * d, n * d),
                )
            };
            simd::vectorized(
                #[inline(always)]
                || {
                    let end = slots.end;
                    for (i, slot) in slots.enumerate() {
                        self.prefetch_ahead((b, h), pos, (slot, end), &[self.q, self.k, self.v]);
                        let p = pos[slot] as usize;
                        let r = self.row(b, h, p);
                        qs[i * d..(i + 1) * d].copy_from_slice(&self.q[r.clone()]);
                        vs[i * d..(i + 1) * d].copy_from_slice(&self.v[r.clone()]);
                        let factor = self.norm.then(|| inv[p]);
                        for (o, &x) in ks[i * d..(i + 1) * d].iter_mut().zip(&self.k[r]) {
                            *o = scale.apply(x, factor);
                        }
                    }
                },
            )
        })
    }

    /// Each slot's output gradient `c·dy` and shift `-c (dy · y)`.
    fn output_gradients(&self, b: usize, h: usize, hd: &mut Head) -> Result<()> {
        let d = self.d;
        let (pos, weight) = (&hd.pos, &hd.weight);
        let (dout, shift) = (SharedMut::new(&mut hd.dout), SharedMut::new(&mut hd.shift));
        for_each_block(pos.len(), |slots| {
            let n = slots.len();
            // SAFETY: this block alone writes rows `slots`.
            let (ds, sh) = unsafe {
                (
                    dout.slice(slots.start * d, n * d),
                    shift.slice(slots.start, n),
                )
            };
            simd::vectorized(
                #[inline(always)]
                || {
                    let end = slots.end;
                    for (i, slot) in slots.enumerate() {
                        self.prefetch_ahead((b, h), pos, (slot, end), &[self.dy, self.y]);
                        let r = self.row(b, h, pos[slot] as usize);
                        let c = weight[slot];
                        sh[i] = -c * simd::dot(&self.dy[r.clone()], &self.y[r.clone()]);
                        for (o, &g) in ds[i * d..(i + 1) * d].iter_mut().zip(&self.dy[r]) {
                            *o = c * g;
                        }
                    }
                },
            )
        })
    }

    /// Each slot's round weight `softmax_r(lse_r)` over its position's
    /// slots, from every chunk's (max, sum) (several rounds only).
    fn round_weights(&self, hd: &mut Head, valid: &[u32]) -> Result<()> {
        let (d, plan) = (self.d, self.plan);
        let mut lse = vec![(0.0f32, 0.0f32); plan.total];
        let shared = SharedMut::new(&mut lse);
        let chunks: Vec<usize> = (0..plan.n_chunks).collect();
        let view = &*hd;
        for_each_with_tiles(&chunks, &plan, d, self.kern.nr, |j, t| {
            // SAFETY: chunk j's slots belong to this call of the closure alone.
            let dst = unsafe { shared.slice(j * plan.chunk, plan.chunk) };
            self.probabilities(j, view, valid, t, Some(dst));
        })?;
        for slots in hd.by_pos.chunks_exact(plan.rounds) {
            let m = slots
                .iter()
                .fold(f32::NEG_INFINITY, |a, &t| a.max(lse[t as usize].0));
            let w: Vec<f32> = slots
                .iter()
                .map(|&t| (lse[t as usize].0 - m).exp() * lse[t as usize].1)
                .collect();
            let z: f32 = w.iter().sum();
            for (&t, wr) in slots.iter().zip(w) {
                hd.weight[t as usize] = wr / z;
            }
        }
        Ok(())
    }

    /// Chunk `j`'s probabilities in `t.s`, its keys' positions and validity
    /// in `t`; each query's (max, sum) into `stats` when given.
    fn probabilities(
        &self,
        j: usize,
        hd: &Head,
        valid: &[u32],
        t: &mut Tiles,
        mut stats: Option<&mut [(f32, f32)]>,
    ) {
        let (d, plan) = (self.d, self.plan);
        let (c, n) = (plan.chunk, plan.keys());
        for o in 0..plan.window {
            let u = plan.window_chunk(j, o);
            for i in 0..c {
                let p = hd.pos[u * c + i];
                t.kpos[o * c + i] = p;
                t.keep[o * c + i] = valid[p as usize];
            }
        }
        let keys = &hd.k;
        let key = |jj| (window_row(&plan, keys, d, j, jj), None);
        put_keys(&mut t.kt, n, key, KeyScale::new(1.0));
        let q = &hd.q[j * c * d..(j + 1) * c * d];
        gemm_a(
            self.kern,
            c,
            q,
            AStrides { row: d, k: 1 },
            &t.kt,
            &mut t.s,
            n,
            Epilogue::STORE,
        );
        for i in 0..c {
            let row = &mut t.s[i * n..(i + 1) * n];
            let st = softmax_row(row, hd.pos[j * c + i], &t.kpos, &t.keep, self.rules, true);
            if let Some(out) = stats.as_deref_mut() {
                out[i] = st;
            }
        }
    }

    /// Chunk `j`'s contributions: `dQ` into its own slots, `dK` and `dV`
    /// added into its window's slots.
    fn chunk(
        &self,
        j: usize,
        hd: &Head,
        valid: &[u32],
        t: &mut Tiles,
        (dq, dk, dv): (&SharedMut<f32>, &SharedMut<f32>, &SharedMut<f32>),
    ) {
        let (d, plan) = (self.d, self.plan);
        let (c, n) = (plan.chunk, plan.keys());
        self.probabilities(j, hd, valid, t, None);
        let rows = j * c * d..(j + 1) * c * d;
        let (q, dout) = (&hd.q[rows.clone()], &hd.dout[rows]);
        let a = AStrides { row: d, k: 1 };
        let values = &hd.v;
        let value = |jj| (window_row(&plan, values, d, j, jj), None);
        put_keys(&mut t.vt, n, value, KeyScale::new(1.0));
        gemm_a(self.kern, c, dout, a, &t.vt, &mut t.ds, n, Epilogue::STORE);
        let (rules, kpos, keep) = (self.rules, &t.kpos, &t.keep);
        simd::vectorized(
            #[inline(always)]
            || {
                for i in 0..c {
                    let slot = j * c + i;
                    let (qpos, shift) = (hd.pos[slot], hd.shift[slot]);
                    let (p, g) = (&t.s[i * n..(i + 1) * n], &mut t.ds[i * n..(i + 1) * n]);
                    let keys = p.iter().zip(kpos.iter()).zip(keep.iter());
                    for (gv, ((&pv, &kp), &kv)) in g.iter_mut().zip(keys) {
                        let masked = (kv == 0)
                            | (rules.causal & (kp > qpos))
                            | (rules.self_mask & (kp == qpos));
                        *gv = if masked { 0.0 } else { pv * (*gv + shift) };
                    }
                }
            },
        );
        let keys = &hd.k;
        put_values(&mut t.k, n, |kk| window_row(&plan, keys, d, j, kk));
        // SAFETY: chunk j's slots belong to this task alone (its group).
        let dq_rows = unsafe { dq.slice(j * c * d, c * d) };
        gemm_a(
            self.kern,
            c,
            &t.ds,
            AStrides { row: n, k: 1 },
            &t.k,
            dq_rows,
            d,
            Epilogue::STORE,
        );
        put_values(&mut t.qp, c, |kk| &q[kk * d..(kk + 1) * d]);
        put_values(&mut t.dop, c, |kk| &dout[kk * d..(kk + 1) * d]);
        // dSᵀ and Pᵀ read in place: row i of the transpose is column i.
        let at = AStrides { row: 1, k: n };
        gemm_a(
            self.kern,
            n,
            &t.ds,
            at,
            &t.qp,
            &mut t.part,
            d,
            Epilogue::STORE,
        );
        add_window(dk, &plan, j, &t.part, d);
        gemm_a(
            self.kern,
            n,
            &t.s,
            at,
            &t.dop,
            &mut t.part,
            d,
            Epilogue::STORE,
        );
        add_window(dv, &plan, j, &t.part, d);
    }

    /// Writes every position's gradients: its slots summed in round order,
    /// the key gradient taken through the key scaling. LSH's normalisation
    /// `k = u · inv / div` with `inv = (mean(u²) + 1e-6)^(-1/2)` adds
    /// `du = (inv / div) (g - inv² (g · u) u / d)` to the shared query/key's
    /// gradient; local attention's `k = u / div` gives `du = g / div`.
    fn to_positions(&self, b: usize, h: usize, hd: &Head, g: &mut Grads) -> Result<()> {
        let (d, rounds, len) = (self.d, self.plan.rounds, self.len);
        let (oq, ov) = (SharedMut::new(&mut *g.dq), SharedMut::new(&mut *g.dv));
        let ok = g.dk.as_deref_mut().map(SharedMut::new);
        for_each_block(len, |positions| {
            simd::vectorized(
                #[inline(always)]
                || {
                    let mut gk = vec![0.0f32; d];
                    let end = positions.end;
                    for p in positions {
                        if p + AHEAD < end {
                            for &t in &hd.by_pos[(p + AHEAD) * rounds..(p + AHEAD + 1) * rounds] {
                                let s = t as usize * d..(t as usize + 1) * d;
                                simd::prefetch(&hd.dq[s.clone()]);
                                simd::prefetch(&hd.dk[s.clone()]);
                                simd::prefetch(&hd.dv[s]);
                            }
                        }
                        let r = self.row(b, h, p);
                        // SAFETY: this block alone handles position p of this head.
                        let (q_out, v_out) =
                            unsafe { (oq.slice(r.start, d), ov.slice(r.start, d)) };
                        q_out.iter_mut().for_each(|x| *x = 0.0);
                        v_out.iter_mut().for_each(|x| *x = 0.0);
                        gk.iter_mut().for_each(|x| *x = 0.0);
                        for &t in &hd.by_pos[p * rounds..(p + 1) * rounds] {
                            let s = t as usize * d..(t as usize + 1) * d;
                            add_to(q_out, &hd.dq[s.clone()]);
                            add_to(&mut gk, &hd.dk[s.clone()]);
                            add_to(v_out, &hd.dv[s]);
                        }
                        if let Some(ok) = &ok {
                            // SAFETY: as above.
                            let k_out = unsafe { ok.slice(r.start, d) };
                            for (o, &x) in k_out.iter_mut().zip(&gk) {
                                *o = x / self.div;
                            }
                            continue;
                        }
                        let u = &self.k[r];
                        let inv = hd.inv[p];
                        let gu = simd::dot(&gk, u);
                        let k = inv * inv * gu / d as f32;
                        for ((o, &g), &x) in q_out.iter_mut().zip(&gk).zip(u) {
                            *o += inv / self.div * (g - k * x);
                        }
                    }
                },
            )
        })
    }
}

/// Zeroes `xs` in parallel blocks.
fn zero(xs: &mut [f32]) -> Result<()> {
    let shared = SharedMut::new(xs);
    let n = xs.len();
    for_each_block(n, |r| {
        // SAFETY: this block alone writes `r`.
        unsafe { shared.slice(r.start, r.len()) }.fill(0.0)
    })
}

/// `dst += src`, element by element.
fn add_to(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(o, x)| *o += x);
}

/// Row `jj` of chunk `j`'s window in sorted rows `rows` (`[r·L, d]`).
fn window_row<'a>(plan: &Plan, rows: &'a [f32], d: usize, j: usize, jj: usize) -> &'a [f32] {
    let slot = plan.window_chunk(j, jj / plan.chunk) * plan.chunk + jj % plan.chunk;
    &rows[slot * d..(slot + 1) * d]
}

/// Adds the window rows `part` (`[keys, d]`) of chunk `j` to their slots' rows of `dst`.
fn add_window(dst: &SharedMut<f32>, plan: &Plan, j: usize, part: &[f32], d: usize) {
    let c = plan.chunk;
    for o in 0..plan.window {
        let u = plan.window_chunk(j, o);
        // SAFETY: the caller's group owns every slot of this window now.
        let rows = unsafe { dst.slice(u * c * d, c * d) };
        let src = &part[o * c * d..(o + 1) * c * d];
        simd::vectorized(
            #[inline(always)]
            || rows.iter_mut().zip(src).for_each(|(x, y)| *x += y),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * k).sin()).collect()
    }

    /// LSH attention's gradient on a small case (B=1, L=48, H=2, head width
    /// `d`, 2 rounds, 24 chunks of 4 in 3 groups of 8, a window of 3 chunks;
    /// 6 buckets per round) on `threads` threads, in bf16 when `bf16`.
    fn small_lsh_grad(d: usize, threads: i64, bf16: bool) -> Vec<f32> {
        let (b, l, h, r) = (1usize, 48usize, 2usize, 2usize);
        let n = b * l * h * d;
        let (qk, v, dy) = (data(n, 0.37), data(n, 0.11), data(n, 0.07));
        let buckets: Vec<i64> = (0..b * h * r * l)
            .map(|i| 6 * ((i / l) % r) as i64 + ((i * 7919) % 6) as i64)
            .collect();
        let mut y = vec![0.0f32; n];
        crate::attention::lsh_attention(
            &qk, &v, &buckets, None, b, l, h, d, r, 4, 1, 1, true, &mut y,
        )
        .unwrap();
        crate::pool::set_threads(threads).unwrap();
        let mut g = vec![0.0f32; 2 * n];
        crate::bf16::with(bf16, || {
            lsh_attention_grad(
                &qk, &v, &buckets, &y, &dy, None, b, l, h, d, r, 4, 1, 1, true, &mut g,
            )
        })
        .unwrap();
        crate::pool::set_threads(0).unwrap();
        g
    }

    #[test]
    fn bf16_tiles_stay_near_f32_and_do_not_depend_on_the_thread_count() {
        // Under bf16 (`--precision bf16`) the five products per chunk take
        // bf16 operands, as the forward's tiles do: within bf16's rounding
        // of the f32 gradient, and still the same bits on any thread count.
        for d in [8usize, 5] {
            let grad = |bf16: bool, threads: i64| small_lsh_grad(d, threads, bf16);
            let (f32s, bf1, bf3) = (grad(false, 1), grad(true, 1), grad(true, 3));
            assert_eq!(bf1, bf3, "d = {d}");
            assert_ne!(bf1, f32s, "d = {d}: bf16 changes the products");
            let err: f64 = bf1
                .iter()
                .zip(&f32s)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let norm: f64 = f32s.iter().map(|&b| f64::from(b).powi(2)).sum();
            assert!(
                (err / norm).sqrt() < 2e-2,
                "d = {d}: {}",
                (err / norm).sqrt()
            );
        }
    }

    #[test]
    fn the_bits_do_not_depend_on_the_thread_count() {
        let runs = [small_lsh_grad(5, 1, false), small_lsh_grad(5, 3, false)];
        assert_eq!(runs[0], runs[1]);
        assert!(runs[0].iter().all(|x| x.is_finite()) && runs[0].iter().any(|&x| x != 0.0));
    }

    #[test]
    fn local_bits_do_not_depend_on_the_thread_count() {
        // 12 chunks of 4 (2 groups), a window of 3 chunks, a padded key.
        let (b, l, h, d) = (1usize, 48usize, 2usize, 3usize);
        let n = b * l * h * d;
        let (q, k, v, dy) = (data(n, 0.37), data(n, 0.23), data(n, 0.11), data(n, 0.07));
        let mut mask = vec![1i64; l];
        mask[5] = 0;
        let mut y = vec![0.0f32; n];
        let args = (b, l, h, d, 0.5f32, 4usize, 1usize, 1usize);
        crate::attention::local_attention(
            &q,
            &k,
            &v,
            Some(&mask),
            b,
            l,
            h,
            d,
            d,
            0.5,
            4,
            1,
            1,
            false,
            &mut y,
        )
        .unwrap();
        let mut runs = vec![];
        for threads in [1, 3] {
            crate::pool::set_threads(threads).unwrap();
            let mut g = vec![0.0f32; 3 * n];
            let (b, l, h, d, s, c, nb, na) = args;
            local_attention_grad(
                &q,
                &k,
                &v,
                &y,
                &dy,
                Some(&mask),
                b,
                l,
                h,
                d,
                s,
                c,
                nb,
                na,
                false,
                &mut g,
            )
            .unwrap();
            runs.push(g);
        }
        crate::pool::set_threads(0).unwrap();
        assert_eq!(runs[0], runs[1]);
        // The padded key gets no key gradient (its logits are replaced).
        for hh in 0..h {
            let at = n + (5 * h + hh) * d;
            assert_eq!(&runs[0][at..at + d], &[0.0; 3][..d]);
        }
        assert!(runs[0].iter().all(|x| x.is_finite()) && runs[0].iter().any(|&x| x != 0.0));
    }

    #[test]
    fn local_gradient_matches_central_differences() {
        // sum(dy · y) is linear in v and smooth in q and k: compare each
        // input's gradient with central differences (f32, so loosely).
        let (l, d) = (8usize, 2usize);
        let n = l * d;
        let inputs = [data(n, 0.9), data(n, 0.5), data(n, 0.3)];
        let dy = data(n, 0.77);
        let loss = |x: &[Vec<f32>; 3]| -> f64 {
            let mut y = vec![0.0f32; n];
            crate::attention::local_attention(
                &x[0], &x[1], &x[2], None, 1, l, 1, d, d, 0.7, 2, 1, 0, true, &mut y,
            )
            .unwrap();
            y.iter().zip(&dy).map(|(a, b)| f64::from(a * b)).sum()
        };
        let mut y = vec![0.0f32; n];
        crate::attention::local_attention(
            &inputs[0], &inputs[1], &inputs[2], None, 1, l, 1, d, d, 0.7, 2, 1, 0, true, &mut y,
        )
        .unwrap();
        let mut g = vec![0.0f32; 3 * n];
        local_attention_grad(
            &inputs[0], &inputs[1], &inputs[2], &y, &dy, None, 1, l, 1, d, 0.7, 2, 1, 0, true,
            &mut g,
        )
        .unwrap();
        let eps = 1e-2f32;
        for (which, input) in inputs.iter().enumerate() {
            for i in 0..n {
                let (mut up, mut down) = (inputs.clone(), inputs.clone());
                up[which][i] = input[i] + eps;
                down[which][i] = input[i] - eps;
                let fd = (loss(&up) - loss(&down)) / (2.0 * f64::from(eps));
                let got = f64::from(g[which * n + i]);
                assert!((fd - got).abs() < 2e-3, "input {which}[{i}]: {got} vs {fd}");
            }
        }
    }

    #[test]
    fn phases_never_share_a_chunk_between_concurrent_groups() {
        for (len, chunk, before, after) in
            [(48, 4, 1, 1), (136, 4, 2, 0), (40, 4, 0, 3), (36, 4, 1, 0)]
        {
            let plan = Plan::new(len, 1, chunk, before, after).unwrap();
            let phases = plan.phases();
            let mut all: Vec<usize> = phases.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..plan.n_chunks.div_ceil(GROUP_CHUNKS)).collect::<Vec<_>>()
            );
            for phase in &phases {
                let mut seen = vec![false; plan.n_chunks];
                for &g in phase {
                    let mut mine: Vec<usize> = plan
                        .group(g)
                        .flat_map(|j| (0..plan.window).map(move |o| plan.window_chunk(j, o)))
                        .collect();
                    mine.sort_unstable();
                    mine.dedup();
                    for u in mine {
                        assert!(!seen[u], "chunk {u} shared within a phase");
                        seen[u] = true;
                    }
                }
            }
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let z = vec![0.0f32; 10];
        let mut g = vec![0.0f32; 20];
        // r·L = 5 is not a multiple of chunk 2.
        let e = lsh_attention_grad(
            &z, &z, &[0; 5], &z, &z, None, 1, 5, 1, 2, 1, 2, 0, 0, true, &mut g,
        )
        .unwrap_err();
        assert_eq!(e.code(), 3);
        let e = lsh_attention_grad(
            &z,
            &z,
            &[0; 5],
            &z,
            &z,
            None,
            1,
            5,
            1,
            2,
            1,
            2,
            0,
            0,
            true,
            &mut g[..19],
        )
        .unwrap_err();
        assert_eq!(e.code(), 1);
    }
}
