//! Fused LSH attention (`rc_lsh_attention_f32`), REFORMER.md §1.4-§1.8.
//!
//! Per (batch, head): counting sort of the round-offset buckets
//! (stable, so ties keep round-major order like the interpreter's sort), then
//! for each chunk of `c` sorted slots: gather its queries, pack the normalized
//! keys and the values of its window (own chunk plus `before`/`after`
//! neighbours, wrapping around, duplicated when there are few chunks) into
//! small tiles, logits with masks by original position, softmax kept as
//! (max, sum), unnormalized outputs, and an immediate merge into the output
//! rows of the positions (unsort) with a running round combination:
//! `out = Σ_r exp(max_r - M)·O'_r / Σ_r exp(max_r - M)·sum_r` where
//! `O'_r = Σ exp(s - max_r)·v`. Nothing of size (r·L, c_kv) or a gathered copy
//! of all keys ever exists; besides the output, a task holds O(r·L) integers.
//!
//! Parallelism is over (batch, head) × groups of chunks: when `L` is a
//! multiple of the chunk length, a round's chunks hold every position once,
//! so groups of them run concurrently, one round after another; the merge
//! order per position (round by round) and hence the bits do not depend on
//! the split or the thread count.

use super::full::{attention_impl, Shape};
use super::{
    inv_len_norm, key_divisor, product, put_keys, put_values, softmax_row, valid_row, KeyScale,
    Rules, Windows,
};
use crate::error::{invalid, Error, Result};
use crate::gemm::check_len;
use crate::pool::{try_par_for, SharedMut};
use crate::simd;
use std::sync::OnceLock;

/// LSH attention given bucket ids `[B, H, r, L]` (with round offsets, as
/// [`super::lsh_hash`] makes them) over shared query/keys `qk` and values `v`,
/// both `[B, L, H·d]`, into `out` `[B, L, H·d]` (`rc_lsh_attention_f32`).
/// `L ≤ chunk` is full shared-QK attention (key normalization and self mask);
/// otherwise `r·L` must be a multiple of `chunk` ([`Error::ChunkMismatch`]).
///
/// ```
/// use reformc_runtime::attention::lsh_attention;
/// // B = 1, L = 4, H = 1, d = 2, one round, chunk 2, two buckets.
/// let qk = [1.0f32, 0.0, 0.9, 0.1, -1.0, 0.0, -0.8, 0.2];
/// let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
/// let buckets = [0i64, 0, 1, 1];
/// let mut out = [0.0f32; 8];
/// lsh_attention(&qk, &v, &buckets, None, 1, 4, 1, 2, 1, 2, 0, 0, true, &mut out).unwrap();
/// assert_eq!(&out[..2], &[1.0, 2.0]); // the first position sees only itself
/// ```
#[allow(clippy::too_many_arguments)]
pub fn lsh_attention(
    qk: &[f32],
    v: &[f32],
    buckets: &[i64],
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
    check_operands(shape, qk, v, buckets, mask, out, rounds, chunk)?;
    let rules = Rules {
        causal,
        self_mask: true,
    };
    let div = key_divisor(1.0 / (d as f64).sqrt());
    if len <= chunk {
        return attention_impl(qk, qk, v, mask, shape, div, true, rules, 0, out);
    }
    let (total, _) = sorted_slots(len, rounds, chunk, before, after)?;
    if batch == 0 || heads == 0 {
        return Ok(());
    }
    if rounds == 0 || d == 0 {
        out.iter_mut().for_each(|x| *x = 0.0);
        return Ok(());
    }
    let width = heads * d;
    let n_chunks = total / chunk;
    let valid: Vec<Vec<u32>> = (0..batch).map(|b| valid_row(mask, b, len)).collect();
    let ctx = Ctx {
        qk,
        v,
        valid: &valid,
        len,
        width,
        d,
        heads,
        chunk,
        n_chunks,
        before,
        after,
        scale: KeyScale::new(div),
        rules,
        single: rounds == 1,
    };
    let bhs = batch * heads;
    // Per (batch, head): the key norms and the sorted slots' positions.
    let prep: Vec<OnceLock<(Vec<f32>, Vec<u32>)>> = (0..bhs).map(|_| OnceLock::new()).collect();
    try_par_for(bhs, |bh| {
        let h = bh % heads;
        let b = bh / heads;
        let inv = (0..len)
            .map(|i| inv_len_norm(&qk[ctx.row(b, h, i)]))
            .collect();
        let perm = sort_slots(&buckets[bh * total..(bh + 1) * total])?;
        let spos = perm.iter().map(|&t| t % len as u32).collect();
        let _ = prep[bh].set((inv, spos));
        Ok(())
    })?;
    // One round needs no running (max, sum) per position.
    let states = if ctx.single { 0 } else { bhs * len };
    let mut state = crate::error::try_zeroed::<(f32, f32)>(states, "round state")?;
    state.iter_mut().for_each(|s| s.0 = f32::NEG_INFINITY);
    let st = SharedMut::new(&mut state);
    let shared = SharedMut::new(out);
    let prep = |bh: usize| prep[bh].get().ok_or_else(|| invalid("lsh: sort missing"));
    if len.is_multiple_of(chunk) {
        // A round's chunks hold each position once, so they can run in
        // parallel; rounds run in order, as the combination needs.
        let per_round = len / chunk;
        let groups = (2 * crate::pool::threads())
            .div_ceil(bhs)
            .clamp(1, per_round);
        let per_group = per_round.div_ceil(groups);
        for r in 0..rounds {
            try_par_for(bhs * groups, |t| {
                let (bh, gi) = (t / groups, t % groups);
                let j0 = r * per_round + gi * per_group;
                let j1 = (j0 + per_group).min((r + 1) * per_round);
                ctx.run_chunks(bh, prep(bh)?, j0..j1, &shared, &st)
            })?;
        }
    } else {
        // Chunks straddle rounds: one task per (batch, head), in chunk order.
        try_par_for(bhs, |bh| {
            ctx.run_chunks(bh, prep(bh)?, 0..n_chunks, &shared, &st)
        })?;
    }
    if ctx.single {
        return Ok(()); // each row was divided by its sum as it was written
    }
    try_par_for(bhs, |bh| {
        let (b, h) = (bh / heads, bh % heads);
        for pos in 0..len {
            // SAFETY: task bh alone touches head h of batch b (and its states).
            let (dst, s) = unsafe {
                (
                    shared.slice(ctx.row(b, h, pos).start, d),
                    st.slice(bh * len + pos, 1),
                )
            };
            dst.iter_mut().for_each(|x| *x /= s[0].1);
        }
        Ok(())
    })
}

/// The operand checks both LSH kernels make (the forward's `out`, or the
/// backward's `y`, has the activations' shape): lengths, `[B, H, r, L]`
/// buckets, a positive chunk.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_operands(
    shape: Shape,
    qk: &[f32],
    v: &[f32],
    buckets: &[i64],
    mask: Option<&[i64]>,
    out: &[f32],
    rounds: usize,
    chunk: usize,
) -> Result<()> {
    shape.check(qk, qk, v, mask, out)?;
    let dims = [shape.batch, shape.heads, rounds, shape.lq];
    check_len("buckets", buckets.len(), product(&dims, "buckets").ok())?;
    if chunk == 0 {
        return Err(invalid("chunk length must be positive"));
    }
    Ok(())
}

/// For `L > chunk`: the sorted slots `r·L` (a multiple of `chunk`, below
/// 2^32) and the window's chunk count `before + 1 + after` (at most 2^24
/// keys), or the error.
pub(super) fn sorted_slots(
    len: usize,
    rounds: usize,
    chunk: usize,
    before: usize,
    after: usize,
) -> Result<(usize, usize)> {
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
    Ok((total, window))
}

/// What every chunk task of one call reads.
struct Ctx<'a> {
    qk: &'a [f32],
    v: &'a [f32],
    valid: &'a [Vec<u32>],
    len: usize,
    width: usize,
    d: usize,
    heads: usize,
    chunk: usize,
    n_chunks: usize,
    before: usize,
    after: usize,
    scale: KeyScale,
    rules: Rules,
    /// One round: a row is final when its chunk is done, so it is divided by
    /// its sum as it is written instead of in a pass of its own.
    single: bool,
}

impl Ctx<'_> {
    /// Head `h`'s values of position `pos` of batch `b` in a `[B, L, H·d]` tensor.
    fn row(&self, b: usize, h: usize, pos: usize) -> std::ops::Range<usize> {
        let start = (b * self.len + pos) * self.width + h * self.d;
        start..start + self.d
    }

    /// Attention of the sorted chunks `js` of (batch, head) `bh`, merged into
    /// the output rows and running (max, sum) states of their positions.
    /// Callers run concurrently only on chunks whose positions are distinct.
    fn run_chunks(
        &self,
        bh: usize,
        (inv, spos): &(Vec<f32>, Vec<u32>),
        js: std::ops::Range<usize>,
        out: &SharedMut<f32>,
        states: &SharedMut<(f32, f32)>,
    ) -> Result<()> {
        let (b, h, d, chunk) = (bh / self.heads, bh % self.heads, self.d, self.chunk);
        let (qk, v) = (self.qk, self.v);
        let valid = &self.valid[b];
        let row = |pos: usize| self.row(b, h, pos);
        let mut win = Windows::new(chunk, self.n_chunks, self.before, self.after, d, d)?;
        let keys = win.keys();
        let mut q = crate::error::try_zeroed(chunk * d, "query tile")?;
        let mut lse = Vec::with_capacity(chunk);
        let end = js.end;
        for j in js {
            if j + 1 < end {
                // Prefetch the next chunk's new keys, its queries and output rows.
                let next_keys = (j + 1 + self.after) % self.n_chunks;
                for t in 0..chunk {
                    let pos = spos[next_keys * chunk + t] as usize;
                    simd::prefetch(&qk[row(pos)]);
                    simd::prefetch(&v[row(pos)]);
                    let qpos = spos[(j + 1) * chunk + t] as usize;
                    simd::prefetch(&qk[row(qpos)]);
                    // The output rows (and round states) the next chunk updates.
                    out.prefetch(row(qpos).start, d);
                    if !self.single {
                        states.prefetch(bh * self.len + qpos, 1);
                    }
                }
            }
            win.load(
                j,
                |id, kp, vp| {
                    let slots = &spos[id * chunk..(id + 1) * chunk];
                    put_keys(
                        kp,
                        chunk,
                        |t| {
                            let pos = slots[t] as usize;
                            (&qk[row(pos)], Some(inv[pos]))
                        },
                        self.scale,
                    );
                    put_values(vp, chunk, |t| &v[row(slots[t] as usize)]);
                },
                |id, kpos, keep| {
                    for t in 0..chunk {
                        let pos = spos[id * chunk + t];
                        kpos[t] = pos;
                        keep[t] = valid[pos as usize];
                    }
                },
            );
            let qslots = &spos[j * chunk..(j + 1) * chunk];
            for (dst, &pos) in q.chunks_exact_mut(d).zip(qslots) {
                dst.copy_from_slice(&qk[row(pos as usize)]);
            }
            win.logits(&q, d);
            lse.clear();
            for (i, &qpos) in qslots.iter().enumerate() {
                let srow = &mut win.s[i * keys..(i + 1) * keys];
                lse.push(softmax_row(
                    srow, qpos, &win.kpos, &win.keep, self.rules, false,
                ));
            }
            win.weighted_values();
            let o_all = &win.o;
            simd::vectorized(
                #[inline(always)]
                || {
                    for (i, &pos) in qslots.iter().enumerate() {
                        let pos = pos as usize;
                        let o = &o_all[i * d..(i + 1) * d];
                        let (mx, sum) = lse[i];
                        // SAFETY: only the task holding this chunk touches head h of
                        // position pos now (positions are distinct across concurrent chunks).
                        let dst = unsafe { out.slice(row(pos).start, d) };
                        if self.single {
                            dst.iter_mut().zip(o).for_each(|(a, &x)| *a = x / sum);
                            continue;
                        }
                        // SAFETY: as for `dst` (with several rounds there is a state per position).
                        let state = unsafe { &mut states.slice(bh * self.len + pos, 1)[0] };
                        // Running round combination with (max, sum) kept apart.
                        if state.0 == f32::NEG_INFINITY {
                            dst.copy_from_slice(o);
                            *state = (mx, sum);
                        } else if mx <= state.0 {
                            let f = (mx - state.0).exp();
                            state.1 += f * sum;
                            dst.iter_mut().zip(o).for_each(|(a, &x)| *a += f * x);
                        } else {
                            let f = (state.0 - mx).exp();
                            *state = (mx, state.1 * f + sum);
                            dst.iter_mut().zip(o).for_each(|(a, &x)| *a = *a * f + x);
                        }
                    }
                },
            );
        }
        Ok(())
    }
}

pub(super) fn sort_slots(buckets: &[i64]) -> Result<Vec<u32>> {
    let n = buckets.len();
    let (lo, hi) = buckets
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &b| (lo.min(b), hi.max(b)));
    if n == 0 {
        return Ok(Vec::new());
    }
    let span = (i128::from(hi) - i128::from(lo) + 1) as u128;
    let mut perm = crate::error::try_zeroed::<u32>(n, "sort permutation")?;
    if span > (4 * n + 4096) as u128 {
        perm.iter_mut().enumerate().for_each(|(t, p)| *p = t as u32);
        perm.sort_by_key(|&t| buckets[t as usize]);
        return Ok(perm);
    }
    let mut start = crate::error::try_zeroed::<u32>(span as usize + 1, "bucket counts")?;
    for &b in buckets {
        start[(b - lo) as usize + 1] += 1;
    }
    for i in 1..start.len() {
        start[i] += start[i - 1];
    }
    for (t, &b) in buckets.iter().enumerate() {
        let at = &mut start[(b - lo) as usize];
        perm[*at as usize] = t as u32;
        *at += 1;
    }
    Ok(perm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_sort_is_stable_and_matches_comparison_sort() {
        let b: Vec<i64> = (0..500).map(|i| (i * 7919 % 13) as i64).collect();
        let mut want: Vec<u32> = (0..500).collect();
        want.sort_by_key(|&t| b[t as usize]);
        assert_eq!(sort_slots(&b).unwrap(), want);
        // A huge span takes the comparison path.
        let wide = [5i64, i64::MIN, 5, i64::MAX, -3];
        assert_eq!(sort_slots(&wide).unwrap(), vec![1, 4, 0, 2, 3]);
    }
}
