//! Fused LSH attention (`rc_lsh_attention_f32`), REFORMER.md §1.4-§1.8.
//!
//! Per (batch, head), one task: counting sort of the round-offset buckets
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

use super::full::{attention_impl, Shape};
use super::{
    inv_len_norm, key_divisor, product, put_key, put_value, softmax_row, valid_row, KeyScale,
    Rules, Windows,
};
use crate::error::{invalid, Error, Result};
use crate::gemm::check_len;
use crate::pool::{try_par_for, SharedMut};
use crate::simd;

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
    shape.check(qk, qk, v, mask, out)?;
    check_len(
        "buckets",
        buckets.len(),
        product(&[batch, heads, rounds, len], "buckets").ok(),
    )?;
    if chunk == 0 {
        return Err(invalid("chunk length must be positive"));
    }
    let rules = Rules {
        causal,
        self_mask: true,
    };
    let div = key_divisor(1.0 / (d as f64).sqrt());
    if len <= chunk {
        return attention_impl(qk, qk, v, mask, shape, div, true, rules, 0, out);
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
    before
        .checked_add(after)
        .and_then(|w| w.checked_add(1))
        .and_then(|w| w.checked_mul(chunk))
        .filter(|&w| w <= 1 << 24)
        .ok_or_else(|| invalid(format!("window of {before}+1+{after} chunks is too large")))?;
    if batch == 0 || heads == 0 {
        return Ok(());
    }
    if rounds == 0 || d == 0 {
        out.iter_mut().for_each(|x| *x = 0.0);
        return Ok(());
    }
    let width = heads * d;
    let n_chunks = total / chunk;
    let scale = KeyScale::new(div);
    let valid: Vec<Vec<u32>> = (0..batch).map(|b| valid_row(mask, b, len)).collect();
    let shared = SharedMut::new(out);
    try_par_for(batch * heads, |bh| {
        let (b, h) = (bh / heads, bh % heads);
        // Elements of position `pos`, head h, batch b in a [B, L, H·d] tensor.
        let row = |pos: usize| {
            let start = (b * len + pos) * width + h * d;
            start..start + d
        };
        let valid = &valid[b];
        // Length-normalization factor of every position, once.
        let inv: Vec<f32> = (0..len).map(|i| inv_len_norm(&qk[row(i)])).collect();
        let perm = sort_slots(&buckets[bh * total..(bh + 1) * total])?;
        let spos: Vec<u32> = perm.iter().map(|&t| t % len as u32).collect();
        let mut win = Windows::new(chunk, n_chunks, before, after, d, d)?;
        let keys = win.keys();
        let mut q = crate::error::try_zeroed(chunk * d, "query tile")?;
        // Running round combination per position: (max, weight sum).
        let mut run = crate::error::try_zeroed::<(f32, f32)>(len, "round state")?;
        run.iter_mut().for_each(|s| s.0 = f32::NEG_INFINITY);
        let mut lse = Vec::with_capacity(chunk);
        for j in 0..n_chunks {
            // Random rows miss the cache: ask for the next chunk's rows now.
            if j + 1 < n_chunks {
                let next_keys = (j + 1 + after) % n_chunks;
                for t in 0..chunk {
                    let pos = spos[next_keys * chunk + t] as usize;
                    simd::prefetch(&qk[row(pos)]);
                    simd::prefetch(&v[row(pos)]);
                    let qpos = spos[(j + 1) * chunk + t] as usize;
                    simd::prefetch(&qk[row(qpos)]);
                    // SAFETY: a read-only view of this task's own rows, dropped at once.
                    simd::prefetch(unsafe { shared.slice(row(qpos).start, d) });
                }
            }
            win.load(
                j,
                |id, kp, vp| {
                    for t in 0..chunk {
                        let pos = spos[id * chunk + t] as usize;
                        put_key(kp, t, &qk[row(pos)], Some(inv[pos]), scale);
                        put_value(vp, t, &v[row(pos)]);
                    }
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
                lse.push(softmax_row(srow, qpos, &win.kpos, &win.keep, rules, false));
            }
            win.weighted_values();
            for (i, &pos) in qslots.iter().enumerate() {
                let pos = pos as usize;
                let o = &win.o[i * d..(i + 1) * d];
                let (mx, sum) = lse[i];
                // SAFETY: task (b, h) alone writes head h of batch b's rows; one row at a time.
                let dst = unsafe { shared.slice(row(pos).start, d) };
                let state = &mut run[pos];
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
        }
        for (pos, state) in run.iter().enumerate() {
            // SAFETY: as above.
            let dst = unsafe { shared.slice(row(pos).start, d) };
            dst.iter_mut().for_each(|x| *x /= state.1);
        }
        Ok(())
    })
}

/// Stable sort of slot indices `t` by `buckets[t]`: a counting sort when the
/// ids span a small range (always, for ids from [`super::lsh_hash`]), else a
/// comparison sort. Ties keep increasing `t` (round-major) order.
fn sort_slots(buckets: &[i64]) -> Result<Vec<u32>> {
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
