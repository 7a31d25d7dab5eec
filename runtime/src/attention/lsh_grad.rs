//! The derivative of fused LSH attention (`rc_lsh_attention_grad_f32`).
//!
//! The forward pass ([`super::lsh_attention`]) sorts each (batch, head)'s
//! round-offset buckets, attends chunk by chunk over a window of chunks and
//! combines the rounds with weights `c_r = softmax_r(lse_r)`. Given the
//! output `y` and its cotangent `dy`, each query slot `t` (position `pos`,
//! round `r`) sees `dO_t = c_t dy_pos` and, because the round weights move
//! with the logits too, a per-slot shift `-c_t (dy_pos · y_pos)`:
//! `dS = P ⊙ (dO Vᵀ - c_t (dy · y))` on unmasked logits, 0 on masked ones
//! (masks replace logits by constants). Then `dQ = dS K`, `dK = dSᵀ Q`,
//! `dV = Pᵀ dO`, and the key normalisation `k = u / rms(u) / sqrt(d)` passes
//! `dK` back to the shared query/key `u`.
//!
//! Per (batch, head), one after another:
//! 1. with several rounds, the (max, sum) of every slot's logits (one product
//!    per chunk), then the round weights per position; one round has `c = 1`;
//! 2. per chunk: logits and probabilities again, then the four products;
//!    `dQ` goes to the chunk's own slots, `dK` and `dV` are added to the
//!    slots of its window. Chunks run in groups of a fixed size, even groups
//!    then odd ones, so that no two concurrent groups share a key slot and
//!    the sums' order (hence the bits) does not depend on the thread count;
//! 3. per position, the rounds' slots summed in round order, and the key
//!    gradient taken through the normalisation.
//!
//! Scratch: three `[r·L, d]` slot arrays and O(r·L) scalars per (batch,
//! head), and one set of chunk tiles per task.

use super::full::Shape;
use super::{inv_len_norm, key_divisor, product, softmax_row, valid_row, KeyScale, Rules};
use crate::bf16::Packing;
use crate::error::{invalid, try_zeroed, Error, Result};
use crate::gemm::{check_len, gemm_a, kernel, AStrides, Epilogue, Kernel, PackedB};
use crate::pool::{try_par_for, SharedMut};

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
    shape.check(qk, qk, v, mask, y)?;
    check_len("dy", dy.len(), Some(y.len()))?;
    check_len("out", out.len(), y.len().checked_mul(2))?;
    check_len(
        "buckets",
        buckets.len(),
        product(&[batch, heads, rounds, len], "buckets").ok(),
    )?;
    if chunk == 0 {
        return Err(invalid("chunk length must be positive"));
    }
    out.iter_mut().for_each(|x| *x = 0.0);
    if batch == 0 || heads == 0 || d == 0 || len == 0 || rounds == 0 {
        return Ok(());
    }
    let plan = Plan::new(len, rounds, chunk, before, after)?;
    let half = y.len();
    let (dqk, dv) = out.split_at_mut(half);
    let valid: Vec<Vec<u32>> = (0..batch).map(|b| valid_row(mask, b, len)).collect();
    let cx = Ctx {
        qk,
        v,
        y,
        dy,
        len,
        width: heads * d,
        d,
        heads,
        plan,
        div: key_divisor(1.0 / (d as f64).sqrt()),
        rules: Rules {
            causal,
            self_mask: true,
        },
        kern: kernel(),
    };
    let phases = plan.phases();
    for bh in 0..batch * heads {
        // Each slot's round-major index `r·L + pos`.
        let order = match plan.full {
            true => (0..len as u32).collect(),
            false => {
                let per = rounds * len;
                super::lsh::sort_slots(&buckets[bh * per..(bh + 1) * per])?
            }
        };
        cx.head(bh, &order, &valid[bh / heads], &phases, dqk, dv)?;
    }
    Ok(())
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
        let total = product(&[rounds, len], "rounds x length")?;
        if !total.is_multiple_of(chunk) {
            return Err(Error::ChunkMismatch(format!(
                "rounds x length = {total} is not a multiple of the chunk length {chunk}"
            )));
        }
        if total >= u32::MAX as usize {
            return Err(invalid("rounds x length must be below 2^32"));
        }
        let window = before
            .checked_add(after)
            .and_then(|w| w.checked_add(1))
            .filter(|&w| w.saturating_mul(chunk) <= 1 << 24)
            .ok_or_else(|| invalid(format!("window of {before}+1+{after} chunks is too large")))?;
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
            let js = g * GROUP_CHUNKS..((g + 1) * GROUP_CHUNKS).min(self.n_chunks);
            let touched: Vec<usize> = js
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
    qk: &'a [f32],
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

/// Per-slot state of one (batch, head).
struct Slots<'a> {
    /// Each slot's position.
    pos: &'a [u32],
    /// Each position's slots in round order (`[L, rounds]`).
    by_pos: &'a [u32],
    /// Each position's inverse RMS (the key normalisation).
    inv: &'a [f32],
    /// Each position's key `qk · inv / div` (`[L, d]`).
    keys: &'a [f32],
    /// Each slot's round weight `c` (1 with one round).
    weight: Vec<f32>,
    /// Each slot's shift `-c (dy · y)`.
    shift: Vec<f32>,
    /// Key validity by position.
    valid: &'a [u32],
}

/// The tiles of one task: a chunk's queries, its window's keys and values
/// packed three ways, logits and their gradient.
struct Tiles {
    q: Vec<f32>,
    dout: Vec<f32>,
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
    slots: Vec<usize>,
}

impl Tiles {
    fn new(plan: &Plan, d: usize, nr: usize) -> Result<Tiles> {
        let (c, n) = (plan.chunk, plan.keys());
        Ok(Tiles {
            q: try_zeroed(c * d, "query tile")?,
            dout: try_zeroed(c * d, "output gradient tile")?,
            kt: PackedB::zeroed_as(d, n, nr, Packing::F32)?,
            vt: PackedB::zeroed_as(d, n, nr, Packing::F32)?,
            k: PackedB::zeroed_as(n, d, nr, Packing::F32)?,
            qp: PackedB::zeroed_as(c, d, nr, Packing::F32)?,
            dop: PackedB::zeroed_as(c, d, nr, Packing::F32)?,
            s: try_zeroed(c * n, "logit tile")?,
            ds: try_zeroed(c * n, "logit gradient tile")?,
            part: try_zeroed(n * d, "key gradient tile")?,
            kpos: vec![0; n],
            keep: vec![0; n],
            slots: vec![0; n],
        })
    }
}

/// Packs `Rᵀ` (`k × n`, f32) from the `n` rows `row(j)` of `R`, each of length `k`.
fn pack_transposed<'a>(p: &mut PackedB, row: impl Fn(usize) -> &'a [f32]) {
    let (nr, k, n) = (p.nr, p.k, p.n);
    for panel in 0..n.div_ceil(nr) {
        let dst = &mut p.data[panel * k * nr..(panel + 1) * k * nr];
        for jj in 0..nr.min(n - panel * nr) {
            for (kk, &x) in row(panel * nr + jj)[..k].iter().enumerate() {
                dst[kk * nr + jj] = x;
            }
        }
    }
}

/// Packs the `k × n` matrix (f32) whose row `kk` is `row(kk)`.
fn pack_rows<'a>(p: &mut PackedB, row: impl Fn(usize) -> &'a [f32]) {
    let (nr, k, n) = (p.nr, p.k, p.n);
    for kk in 0..k {
        let r = row(kk);
        for panel in 0..n.div_ceil(nr) {
            let w = nr.min(n - panel * nr);
            p.data[panel * k * nr + kk * nr..][..w].copy_from_slice(&r[panel * nr..panel * nr + w]);
        }
    }
}

impl Ctx<'_> {
    /// Head `h`'s values of position `pos` of batch `b` in a `[B, L, H·d]` tensor.
    fn row(&self, b: usize, h: usize, pos: usize) -> std::ops::Range<usize> {
        let start = (b * self.len + pos) * self.width + h * self.d;
        start..start + self.d
    }

    /// The gradient of (batch, head) `bh`, added into `dqk` and `dv`;
    /// `order` holds each sorted slot's round-major index `r·L + pos`.
    fn head(
        &self,
        bh: usize,
        order: &[u32],
        valid: &[u32],
        phases: &[Vec<usize>],
        dqk: &mut [f32],
        dv: &mut [f32],
    ) -> Result<()> {
        let (b, h, d, plan, len) = (
            bh / self.heads,
            bh % self.heads,
            self.d,
            self.plan,
            self.len,
        );
        let pos: Vec<u32> = order.iter().map(|&t| t % len as u32).collect();
        // Each position's slots in round order.
        let mut by_pos = vec![0u32; len * plan.rounds];
        for (slot, &t) in order.iter().enumerate() {
            let (r, p) = (t as usize / len, t as usize % len);
            by_pos[p * plan.rounds + r.min(plan.rounds - 1)] = slot as u32;
        }
        let inv: Vec<f32> = (0..len)
            .map(|i| inv_len_norm(&self.qk[self.row(b, h, i)]))
            .collect();
        let mut keys = try_zeroed::<f32>(len * d, "normalised keys")?;
        for (p, k) in keys.chunks_exact_mut(d).enumerate() {
            let scale = KeyScale::new(self.div);
            for (o, &x) in k.iter_mut().zip(&self.qk[self.row(b, h, p)]) {
                *o = scale.apply(x, Some(inv[p]));
            }
        }
        let mut st = Slots {
            pos: &pos,
            by_pos: &by_pos,
            inv: &inv,
            keys: &keys,
            weight: vec![1.0; plan.total],
            shift: Vec::new(),
            valid,
        };
        if plan.rounds > 1 {
            st.weight = self.round_weights(b, h, &st)?;
        }
        st.shift = pos
            .iter()
            .zip(&st.weight)
            .map(|(&p, &c)| {
                let r = self.row(b, h, p as usize);
                let dot: f32 = self.dy[r.clone()]
                    .iter()
                    .zip(&self.y[r])
                    .map(|(a, b)| a * b)
                    .sum();
                -c * dot
            })
            .collect();
        let mut dq = try_zeroed::<f32>(plan.total * d, "query gradient slots")?;
        let mut dk = try_zeroed::<f32>(plan.total * d, "key gradient slots")?;
        let mut dvs = try_zeroed::<f32>(plan.total * d, "value gradient slots")?;
        let (sq, sk, sv) = (
            SharedMut::new(&mut dq),
            SharedMut::new(&mut dk),
            SharedMut::new(&mut dvs),
        );
        for phase in phases {
            try_par_for(phase.len(), |i| {
                let mut t = Tiles::new(&plan, d, self.kern.nr)?;
                for j in plan.group(phase[i]) {
                    self.chunk(b, h, j, &st, &mut t, (&sq, &sk, &sv));
                }
                Ok(())
            })?;
        }
        self.to_positions(b, h, &st, (&dq, &dk, &dvs), dqk, dv)
    }

    /// Each slot's round weight `softmax_r(lse_r)` over its position's
    /// slots, from every chunk's (max, sum) (several rounds only).
    fn round_weights(&self, b: usize, h: usize, st: &Slots) -> Result<Vec<f32>> {
        let (d, plan) = (self.d, self.plan);
        let mut lse = vec![(0.0f32, 0.0f32); plan.total];
        let shared = SharedMut::new(&mut lse);
        let groups = plan.n_chunks.div_ceil(GROUP_CHUNKS);
        try_par_for(groups, |g| {
            let mut t = Tiles::new(&plan, d, self.kern.nr)?;
            for j in plan.group(g) {
                let stats = self.probabilities(b, h, j, st, &mut t);
                // SAFETY: chunk j's slots belong to this task alone.
                let dst = unsafe { shared.slice(j * plan.chunk, plan.chunk) };
                dst.copy_from_slice(&stats);
            }
            Ok(())
        })?;
        let mut weight = vec![0.0f32; plan.total];
        for slots in st.by_pos.chunks_exact(plan.rounds) {
            let m = slots
                .iter()
                .fold(f32::NEG_INFINITY, |a, &t| a.max(lse[t as usize].0));
            let w: Vec<f32> = slots
                .iter()
                .map(|&t| (lse[t as usize].0 - m).exp() * lse[t as usize].1)
                .collect();
            let z: f32 = w.iter().sum();
            for (&t, wr) in slots.iter().zip(w) {
                weight[t as usize] = wr / z;
            }
        }
        Ok(weight)
    }

    /// Chunk `j`'s logits as probabilities in `t.s` (rows of `t.q`'s
    /// queries), its keys' positions and validity in `t`; returns each
    /// query's (max, sum).
    fn probabilities(
        &self,
        b: usize,
        h: usize,
        j: usize,
        st: &Slots,
        t: &mut Tiles,
    ) -> Vec<(f32, f32)> {
        let (d, plan) = (self.d, self.plan);
        let (c, n) = (plan.chunk, plan.keys());
        for o in 0..plan.window {
            let u = plan.window_chunk(j, o);
            for i in 0..c {
                let slot = u * c + i;
                let p = st.pos[slot];
                t.slots[o * c + i] = slot;
                t.kpos[o * c + i] = p;
                t.keep[o * c + i] = st.valid[p as usize];
            }
        }
        let (kpos, keys) = (&t.kpos, st.keys);
        pack_transposed(&mut t.kt, |jj| &keys[kpos[jj] as usize * d..][..d]);
        for i in 0..c {
            let p = st.pos[j * c + i] as usize;
            t.q[i * d..(i + 1) * d].copy_from_slice(&self.qk[self.row(b, h, p)]);
        }
        let a = AStrides { row: d, k: 1 };
        gemm_a(self.kern, c, &t.q, a, &t.kt, &mut t.s, n, Epilogue::STORE);
        (0..c)
            .map(|i| {
                let qpos = st.pos[j * c + i];
                let row = &mut t.s[i * n..(i + 1) * n];
                softmax_row(row, qpos, &t.kpos, &t.keep, self.rules, true)
            })
            .collect()
    }

    /// Chunk `j`'s contributions: `dQ` into its own slots, `dK` and `dV`
    /// added into its window's slots.
    fn chunk(
        &self,
        b: usize,
        h: usize,
        j: usize,
        st: &Slots,
        t: &mut Tiles,
        (dq, dk, dv): (&SharedMut<f32>, &SharedMut<f32>, &SharedMut<f32>),
    ) {
        let (d, plan) = (self.d, self.plan);
        let (c, n) = (plan.chunk, plan.keys());
        self.probabilities(b, h, j, st, t);
        for i in 0..c {
            let slot = j * c + i;
            let r = self.row(b, h, st.pos[slot] as usize);
            let w = st.weight[slot];
            for (o, &g) in t.dout[i * d..(i + 1) * d].iter_mut().zip(&self.dy[r]) {
                *o = w * g;
            }
        }
        let (v, kpos) = (self.v, &t.kpos);
        pack_transposed(&mut t.vt, |jj| &v[self.row(b, h, kpos[jj] as usize)]);
        let a = AStrides { row: d, k: 1 };
        gemm_a(
            self.kern,
            c,
            &t.dout,
            a,
            &t.vt,
            &mut t.ds,
            n,
            Epilogue::STORE,
        );
        for i in 0..c {
            let slot = j * c + i;
            let (qpos, shift) = (st.pos[slot], st.shift[slot]);
            let (p, g) = (&t.s[i * n..(i + 1) * n], &mut t.ds[i * n..(i + 1) * n]);
            for jj in 0..n {
                let kp = t.kpos[jj];
                let masked = t.keep[jj] == 0
                    || (self.rules.causal && kp > qpos)
                    || (self.rules.self_mask && kp == qpos);
                g[jj] = if masked { 0.0 } else { p[jj] * (g[jj] + shift) };
            }
        }
        let keys = st.keys;
        pack_rows(&mut t.k, |kk| &keys[kpos[kk] as usize * d..][..d]);
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
        let (q, dout) = (&t.q, &t.dout);
        pack_rows(&mut t.qp, |kk| &q[kk * d..(kk + 1) * d]);
        pack_rows(&mut t.dop, |kk| &dout[kk * d..(kk + 1) * d]);
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
        add_rows(dk, &t.slots, &t.part, d);
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
        add_rows(dv, &t.slots, &t.part, d);
    }

    /// Adds every slot's gradients to its position's rows, rounds in order;
    /// the key gradient goes through the normalisation
    /// `k = u · inv / div` with `inv = (mean(u²) + 1e-6)^(-1/2)`:
    /// `du = (inv / div) (g - inv² (g · u) u / d)`.
    fn to_positions(
        &self,
        b: usize,
        h: usize,
        st: &Slots,
        (dq, dk, dvs): (&[f32], &[f32], &[f32]),
        dqk: &mut [f32],
        dv: &mut [f32],
    ) -> Result<()> {
        let (d, plan, len) = (self.d, self.plan, self.len);
        let per_pos = st.by_pos;
        let (oq, ov) = (SharedMut::new(dqk), SharedMut::new(dv));
        let per = (4096 / d.max(1)).max(1);
        try_par_for(len.div_ceil(per), |task| {
            let mut gk = vec![0.0f32; d];
            for p in task * per..((task + 1) * per).min(len) {
                let r = self.row(b, h, p);
                // SAFETY: task `task` alone handles positions p of its range.
                let (q_out, v_out) = unsafe { (oq.slice(r.start, d), ov.slice(r.start, d)) };
                gk.iter_mut().for_each(|x| *x = 0.0);
                for &t in &per_pos[p * plan.rounds..(p + 1) * plan.rounds] {
                    let s = t as usize * d..(t as usize + 1) * d;
                    q_out
                        .iter_mut()
                        .zip(&dq[s.clone()])
                        .for_each(|(o, x)| *o += x);
                    gk.iter_mut().zip(&dk[s.clone()]).for_each(|(o, x)| *o += x);
                    v_out.iter_mut().zip(&dvs[s]).for_each(|(o, x)| *o += x);
                }
                let u = &self.qk[r];
                let inv = st.inv[p];
                let gu: f32 = gk.iter().zip(u).map(|(a, b)| a * b).sum();
                let k = inv * inv * gu / d as f32;
                for ((o, &g), &x) in q_out.iter_mut().zip(&gk).zip(u) {
                    *o += inv / self.div * (g - k * x);
                }
            }
            Ok(())
        })
    }
}

/// Adds row `i` of `part` (`[slots.len(), d]`) to row `slots[i]` of `dst`.
fn add_rows(dst: &SharedMut<f32>, slots: &[usize], part: &[f32], d: usize) {
    for (i, &slot) in slots.iter().enumerate() {
        // SAFETY: the caller's group owns every slot of this window now.
        let row = unsafe { dst.slice(slot * d, d) };
        row.iter_mut()
            .zip(&part[i * d..(i + 1) * d])
            .for_each(|(o, x)| *o += x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * k).sin()).collect()
    }

    #[test]
    fn the_bits_do_not_depend_on_the_thread_count() {
        // 2 rounds, 24 chunks of 4 (3 groups of 8), a window of 3 chunks.
        let (b, l, h, d, r) = (1usize, 48usize, 2usize, 5usize, 2usize);
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
        let mut runs = vec![];
        for threads in [1, 3] {
            crate::pool::set_threads(threads).unwrap();
            let mut g = vec![0.0f32; 2 * n];
            lsh_attention_grad(
                &qk, &v, &buckets, &y, &dy, None, b, l, h, d, r, 4, 1, 1, true, &mut g,
            )
            .unwrap();
            runs.push(g);
        }
        crate::pool::set_threads(0).unwrap();
        assert_eq!(runs[0], runs[1]);
        assert!(runs[0].iter().all(|x| x.is_finite()) && runs[0].iter().any(|&x| x != 0.0));
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
