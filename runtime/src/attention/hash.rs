//! Angular LSH bucket ids (`rc_lsh_hash_f32`).

use super::product;
use crate::error::{invalid, Error, Result};
use crate::gemm::{check_len, gemm, kernel, Epilogue, PackedB};
use crate::pool::{try_par_for, SharedMut};

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
    try_par_for(batch * heads * blocks, |task| {
        let (bh, blk) = (task / blocks, task % blocks);
        let (b, h) = (bh / heads, bh % heads);
        let i0 = blk * BLOCK;
        let m = BLOCK.min(len - i0);
        let mut rotated = crate::error::try_zeroed(m * width.max(1), "rotated block")?;
        if width > 0 {
            let a = &qk[(b * len + i0) * heads * d + h * d..];
            gemm(
                kern,
                m,
                a,
                heads * d,
                &packed[h],
                &mut rotated,
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
        Ok(())
    })
}

/// argmax(concat(piece, -piece)) per factor (first maximum wins), first factor
/// least significant.
fn bucket_of(rotated: &[f32], factors: &[usize]) -> usize {
    let (mut bucket, mut scale, mut offset) = (0, 1, 0);
    for &f in factors {
        let piece = &rotated[offset..offset + f / 2];
        let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
        for (i, &v) in piece.iter().enumerate() {
            if v > best_v {
                (best, best_v) = (i, v);
            }
        }
        for (i, &v) in piece.iter().enumerate() {
            if -v > best_v {
                (best, best_v) = (piece.len() + i, -v);
            }
        }
        bucket += scale * best;
        scale *= f;
        offset += f / 2;
    }
    bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_of_factorised_is_first_factor_least_significant() {
        assert_eq!(bucket_of(&[0.5, -1.0, 0.2], &[2, 4]), 2 * 2);
        assert_eq!(bucket_of(&[-0.5, -1.0, 0.2], &[2, 4]), 1 + 2 * 2);
    }

    #[test]
    fn ties_go_to_the_first_maximum() {
        assert_eq!(bucket_of(&[1.0, 1.0], &[4]), 0);
        assert_eq!(bucket_of(&[-1.0, -1.0], &[4]), 2);
        assert_eq!(bucket_of(&[0.0, 0.0], &[4]), 0);
    }
}
