//! Angular LSH bucket ids (`rc_lsh_hash_f32`).

use super::product;
use crate::error::{invalid, with_scratch, Error, Result};
use crate::gemm::{check_len, gemm, kernel, Epilogue, PackedB};
use crate::pool::{try_par_for, SharedMut};
use std::cell::RefCell;

/// Positions per hashing task.
const BLOCK: usize = 256;

/// LSH buckets with round offsets, `out[B, H, r, L]` (`rc_lsh_hash_f32`):
/// `rot` is `[H, d, r, S/2]` with `S/2 = Σ factors/2`; per round, the rotated
/// vector is cut into one piece per factor, `b_t = argmax(concat(piece,
/// -piece))` (first maximum wins), `bucket = Σ b_t·Π_{s<t} f_s`. If `mask`
/// (`[B, L]`) has any zero anywhere, masked positions get bucket `nb = Π f`
/// in every round and round offsets use `nb + 1`; otherwise `nb`.
///
/// ```
/// use reformc_runtime::attention::lsh_hash;
/// // B = 1, L = 2, H = 1, d = 1, r = 1, factors [2]: rot = [1] -> piece = [x].
/// let mut out = [0i64; 2];
/// lsh_hash(&[0.5, -0.5], &[1.0], None, 1, 2, 1, 1, 1, &[2], &mut out).unwrap();
/// assert_eq!(out, [0, 1]);
/// lsh_hash(&[0.5, -0.5], &[1.0], Some(&[1, 0]), 1, 2, 1, 1, 1, &[2], &mut out).unwrap();
/// assert_eq!(out, [0, 2]); // the padded position takes the padding bucket nb = 2
/// ```
#[allow(clippy::too_many_arguments)]
pub fn lsh_hash(
    qk: &[f32],
    rot: &[f32],
    mask: Option<&[i64]>,
    batch: usize,
    len: usize,
    heads: usize,
    d: usize,
    rounds: usize,
    factors: &[usize],
    out: &mut [i64],
) -> Result<()> {
    if factors.is_empty() {
        return Err(invalid("at least one bucket factor is needed"));
    }
    if let Some(f) = factors.iter().find(|&&f| f == 0) {
        return Err(invalid(format!("bucket factor {f} must be positive")));
    }
    let nb = product(factors, "number of buckets")?;
    let half: usize = factors.iter().map(|f| f / 2).sum();
    check_len("qk", qk.len(), product(&[batch, len, heads, d], "qk").ok())?;
    check_len(
        "rot",
        rot.len(),
        product(&[heads, d, rounds, half], "rot").ok(),
    )?;
    check_len(
        "out",
        out.len(),
        product(&[batch, heads, rounds, len], "out").ok(),
    )?;
    if let Some(m) = mask {
        check_len("mask", m.len(), product(&[batch, len], "mask").ok())?;
    }
    // A NaN rotation would send every position to bucket 0 silently.
    if let Some((i, x)) = rot.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::OutOfRange(format!(
            "LSH rotations: non-finite value {x} at flat index {i} of this layer's [H, d, r, S/2] rotations"
        )));
    }
    let padding = mask.is_some_and(|m| m.contains(&0));
    let nb_total = if padding { nb + 1 } else { nb };
    if product(&[nb_total, rounds.max(1)], "bucket ids")? > i64::MAX as usize {
        return Err(invalid("bucket ids overflow int64"));
    }
    if batch == 0 || len == 0 || heads == 0 || rounds == 0 {
        return Ok(());
    }
    let kern = kernel();
    let width = product(&[rounds, half], "rotation width")?;
    // Per head, the rotations [d, r·S/2] packed as the right-hand side,
    // always in f32: bucket decisions must not depend on `--precision bf16`
    // beyond near-ties (see `crate::bf16`).
    let packed: Vec<PackedB> = crate::bf16::with(false, || {
        (0..heads)
            .map(|h| {
                PackedB::from_kn(
                    &rot[h * d * width..(h + 1) * d * width],
                    d,
                    width,
                    width,
                    kern.nr,
                )
            })
            .collect::<Result<_>>()
    })?;
    let blocks = len.div_ceil(BLOCK);
    let shared = SharedMut::new(out);
    // One block of positions of one (batch, head): rotate, then take each
    // round's argmaxes.
    let hash_block = |task: usize, rotated: &mut [f32]| {
        let (bh, blk) = (task / blocks, task % blocks);
        let (b, h) = (bh / heads, bh % heads);
        let i0 = blk * BLOCK;
        let m = BLOCK.min(len - i0);
        if width > 0 {
            let a = &qk[(b * len + i0) * heads * d + h * d..];
            gemm(
                kern,
                m,
                a,
                heads * d,
                &packed[h],
                rotated,
                width,
                Epilogue::STORE,
            );
        }
        for r in 0..rounds {
            // SAFETY: task (b, h, blk) alone writes out[b, h, r, i0..i0+m].
            let dst = unsafe { shared.slice(((b * heads + h) * rounds + r) * len + i0, m) };
            for (i, o) in dst.iter_mut().enumerate() {
                let masked = mask.is_some_and(|mk| mk[b * len + i0 + i] == 0);
                let bucket = if masked {
                    nb
                } else {
                    bucket_of(&rotated[i * width + r * half..][..half], factors)
                };
                *o = (bucket + r * nb_total) as i64;
            }
        }
    };
    // The GEMM overwrites every value it reads back, so a reused scratch
    // needs no clearing; a fresh zeroed megabyte per task cost page faults
    // and memset in whole models.
    let need = BLOCK.min(len) * width;
    try_par_for(batch * heads * blocks, |task| {
        with_scratch(&ROTATED, need, "rotated block", |r| hash_block(task, r))
    })
}

/// Where a strided `[B, L, H, d]` operand of [`lsh_rotate`] lies in its
/// slice: the element strides of its first three axes (the last is
/// contiguous).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotateStrides {
    /// Between batch rows.
    pub batch: usize,
    /// Between positions.
    pub pos: usize,
    /// Between heads.
    pub head: usize,
}

/// The rotation product of [`lsh_hash`] alone:
/// `out[b, h, r, t, j] = Σ_k x[b, t, h, k] rot[h, k, r, j]`, each sum over
/// `k` in order from zero with fused multiply-adds, as the hashing computes
/// it (so bucket decisions from it are the same). `x` is `[B, L, H, d]` at
/// `strides` (its last axis contiguous), `rot` a contiguous `[H, d, r, half]`,
/// `out` a contiguous `[B, H, r, L, half]`; one task per (batch, head,
/// round).
///
/// ```
/// use reformc_runtime::attention::{lsh_rotate, RotateStrides};
/// // B = 1, L = 2, H = 1, d = 2, r = 1, half = 1: out[t] = x[t] . rot.
/// let x = [1.0, 2.0, 3.0, 4.0];
/// let s = RotateStrides { batch: 4, pos: 2, head: 2 };
/// let mut out = [0.0; 2];
/// lsh_rotate(&x, s, &[10.0, 1.0], 1, 2, 1, 2, 1, 1, &mut out).unwrap();
/// assert_eq!(out, [12.0, 34.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn lsh_rotate(
    x: &[f32],
    strides: RotateStrides,
    rot: &[f32],
    batch: usize,
    len: usize,
    heads: usize,
    d: usize,
    rounds: usize,
    half: usize,
    out: &mut [f32],
) -> Result<()> {
    check_len(
        "rot",
        rot.len(),
        product(&[heads, d, rounds, half], "rot").ok(),
    )?;
    check_len(
        "out",
        out.len(),
        product(&[batch, heads, rounds, len, half], "out").ok(),
    )?;
    if [batch, len, heads, d, rounds, half].contains(&0) {
        return Ok(());
    }
    let span =
        (batch - 1) * strides.batch + (len - 1) * strides.pos + (heads - 1) * strides.head + d;
    if x.len() < span || strides.pos < d {
        return Err(invalid(format!(
            "x: {} values at strides {strides:?} cannot hold [{batch}, {len}, {heads}, {d}]",
            x.len()
        )));
    }
    let kern = kernel();
    let width = rounds * half;
    let packed: Vec<PackedB> = crate::bf16::with(false, || {
        (0..heads * rounds)
            .map(|hr| {
                let (h, r) = (hr / rounds, hr % rounds);
                let b = &rot[h * d * width + r * half..];
                PackedB::from_kn(b, d, half, width, kern.nr)
            })
            .collect::<Result<_>>()
    })?;
    let shared = SharedMut::new(out);
    try_par_for(batch * heads * rounds, |task| {
        let (b, hr) = (task / (heads * rounds), task % (heads * rounds));
        let h = hr / rounds;
        let a = &x[b * strides.batch + h * strides.head..];
        // SAFETY: task (b, h, r) alone writes out[b, h, r].
        let c = unsafe { shared.slice(task * len * half, len * half) };
        gemm(
            kern,
            len,
            a,
            strides.pos,
            &packed[hr],
            c,
            half,
            Epilogue::STORE,
        );
        Ok(())
    })
}

thread_local! {
    /// Per-thread rotated block (hashing tasks never nest).
    static ROTATED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// argmax(concat(piece, -piece)) per factor (first maximum wins), first factor
/// least significant.
fn bucket_of(rotated: &[f32], factors: &[usize]) -> usize {
    let (mut bucket, mut scale, mut offset) = (0, 1, 0);
    for &f in factors {
        let piece = &rotated[offset..offset + f / 2];
        bucket += scale * argmax_signed(piece);
        scale *= f;
        offset += f / 2;
    }
    bucket
}

/// Lanes of the vectorised maxima in [`argmax_signed`].
const LANES: usize = 16;

/// Pieces up to this long are scanned one value at a time: the bench
/// model's pieces of 8 and 16 (factors [16, 32]) are shorter than the
/// vector form's fixed cost of folding its lanes and searching for the
/// winner. On the Xeon the scan took its hashing at 16K from 3.0 to 2.2 ms
/// (1 hash) and 9.7 to 5.7 ms (4 hashes); scanning pieces of 32 as well
/// made the 64K hashing slower.
const SHORT: usize = 16;

/// The definition of [`argmax_signed`]: one scan of `concat(piece,
/// -piece)`, replacing the best on a strictly greater value.
fn argmax_scan(piece: &[f32]) -> usize {
    let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
    let signed = piece.iter().copied().chain(piece.iter().map(|&v| -v));
    for (i, v) in signed.enumerate() {
        if v > best_v {
            (best, best_v) = (i, v);
        }
    }
    best
}

/// The index of the first maximum of `concat(piece, -piece)`, NaN never
/// winning: what a scan that replaces its best on a strictly greater value
/// (starting from index 0 at -∞) returns.
///
/// Two maxima (of `v` and of `-v`) in independent lanes, which the compiler
/// turns into vector max instructions, then a scan for the first value equal
/// to the winner: the first element equal to the maximum is the one the
/// strict scan keeps, since everything before it is smaller. Signed zeros
/// compare equal, so which zero a lane keeps does not matter. Hashing does
/// this for every position, head and round (4 × 8 × 8192 rows of 256 at the
/// paper model's size), where the one-by-one scan cost more than the rotation
/// product itself.
fn argmax_signed(piece: &[f32]) -> usize {
    match piece.len() <= SHORT {
        true => argmax_scan(piece),
        false => argmax_lanes(piece),
    }
}

/// [`argmax_signed`] in vector lanes (see there).
fn argmax_lanes(piece: &[f32]) -> usize {
    let (mut hi, mut lo) = ([f32::NEG_INFINITY; LANES], [f32::NEG_INFINITY; LANES]);
    let mut chunks = piece.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
            lo[l] = if -c[l] > lo[l] { -c[l] } else { lo[l] };
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        hi[l] = if v > hi[l] { v } else { hi[l] };
        lo[l] = if -v > lo[l] { -v } else { lo[l] };
    }
    let fold = |x: [f32; LANES]| {
        x.into_iter()
            .fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m })
    };
    let (max, max_neg) = (fold(hi), fold(lo));
    if max_neg > max {
        piece.len() + piece.iter().position(|&v| -v == max_neg).unwrap_or(0)
    } else if max > f32::NEG_INFINITY {
        piece.iter().position(|&v| v == max).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rotation product on a strided view equals sequential fused
    /// multiply-adds from zero bit for bit (plain ones under the scalar
    /// kernel, `REFORMC_RT_KERNEL=scalar`), for every (b, h, r), with several
    /// rounds (each a column block of the rotations).
    #[test]
    fn lsh_rotate_is_sequential_fma_on_strided_views() {
        let (batch, len, heads, d, rounds, half) = (2, 37, 3, 64, 2, 12);
        // x lies in a wider [B, L, H, d + 5] buffer: strided rows.
        let row = heads * (d + 5);
        let st = RotateStrides {
            batch: len * row,
            pos: row,
            head: d + 5,
        };
        let val = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 97.0;
        let x: Vec<f32> = (0..batch * len * row).map(val).collect();
        let rot: Vec<f32> = (0..heads * d * rounds * half)
            .map(|i| val(i + 11) / 3.0)
            .collect();
        let mut out = vec![f32::NAN; batch * heads * rounds * len * half];
        let fused = kernel().isa != "scalar";
        lsh_rotate(&x, st, &rot, batch, len, heads, d, rounds, half, &mut out).unwrap();
        for b in 0..batch {
            for h in 0..heads {
                for r in 0..rounds {
                    for t in 0..len {
                        for j in 0..half {
                            let mut acc = 0.0f32;
                            for k in 0..d {
                                let xv = x[b * st.batch + t * st.pos + h * st.head + k];
                                let rv = rot[((h * d + k) * rounds + r) * half + j];
                                acc = match fused {
                                    true => xv.mul_add(rv, acc),
                                    false => acc + xv * rv,
                                };
                            }
                            let got = out[(((b * heads + h) * rounds + r) * len + t) * half + j];
                            assert_eq!(got.to_bits(), acc.to_bits(), "b{b} h{h} r{r} t{t} j{j}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn lsh_rotate_rejects_a_view_too_short() {
        let st = RotateStrides {
            batch: 8,
            pos: 4,
            head: 2,
        };
        let mut out = [0.0; 2];
        let e = lsh_rotate(&[0.0; 5], st, &[1.0; 2], 1, 2, 1, 2, 1, 1, &mut out);
        assert!(e.is_err());
    }

    #[test]
    fn bucket_of_factorised_is_first_factor_least_significant() {
        assert_eq!(bucket_of(&[0.5, -1.0, 0.2], &[2, 4]), 2 * 2);
        assert_eq!(bucket_of(&[-0.5, -1.0, 0.2], &[2, 4]), 1 + 2 * 2);
    }

    #[test]
    fn vector_argmax_equals_the_scan() {
        let specials = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
        ];
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for len in [1, 2, 15, 16, 17, 33, 64, 256] {
            for _ in 0..400 {
                // Few distinct values, so ties and specials are common.
                let piece: Vec<f32> = (0..len)
                    .map(|_| match next() % 4 {
                        0 => specials[next() % specials.len()],
                        _ => (next() % 5) as f32 - 2.0,
                    })
                    .collect();
                assert_eq!(argmax_lanes(&piece), argmax_scan(&piece), "{piece:?}");
            }
        }
        for argmax in [argmax_lanes, argmax_signed] {
            assert_eq!(argmax(&[f32::NAN; 20]), 0);
            assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 3);
        }
    }

    #[test]
    fn ties_go_to_the_first_maximum() {
        assert_eq!(bucket_of(&[1.0, 1.0], &[4]), 0);
        assert_eq!(bucket_of(&[-1.0, -1.0], &[4]), 2);
        assert_eq!(bucket_of(&[0.0, 0.0], &[4]), 0);
    }
}
