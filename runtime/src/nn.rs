//! Row-wise kernels: layer norm, token embedding, axial position embedding.

use crate::error::{invalid, Error, Result};
use crate::gemm::check_len;
use crate::pool::{par_for, SharedMut};

/// Rows per parallel task for row-wise kernels (any split gives the same bits).
fn rows_per_task(width: usize) -> usize {
    (16384 / width.max(1)).max(1)
}

/// Sum with 16 fixed partial sums, combined pairwise: vectorizes on any ISA
/// and gives the same bits everywhere (the order depends only on the length).
#[inline(always)]
pub(crate) fn sum16(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(x);
    }
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

/// `y = (x - mean) / sqrt(var + eps) * w + b` over rows of `width` values
/// (biased variance), as `rc_layer_norm_f32`.
///
/// ```
/// let mut y = [0.0f32; 2];
/// reformc_runtime::layer_norm(&[1.0, 3.0], 1, 2, &[1.0, 1.0], &[0.0, 0.5], 0.0, &mut y).unwrap();
/// assert_eq!(y, [-1.0, 1.5]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    x: &[f32],
    rows: usize,
    width: usize,
    w: &[f32],
    b: &[f32],
    eps: f32,
    y: &mut [f32],
) -> Result<()> {
    check_len("x", x.len(), rows.checked_mul(width))?;
    check_len("y", y.len(), rows.checked_mul(width))?;
    check_len("w", w.len(), Some(width))?;
    check_len("b", b.len(), Some(width))?;
    if rows == 0 || width == 0 {
        return Ok(());
    }
    let per = rows_per_task(width);
    let shared = SharedMut::new(y);
    par_for(rows.div_ceil(per), |t| {
        let r0 = t * per;
        let nr = per.min(rows - r0);
        // SAFETY: task t alone writes rows r0..r0+nr.
        let ys = unsafe { shared.slice(r0 * width, nr * width) };
        for (xr, yr) in x[r0 * width..(r0 + nr) * width]
            .chunks_exact(width)
            .zip(ys.chunks_exact_mut(width))
        {
            ln_row(xr, w, b, eps, yr);
        }
    })
}

/// One row of [`layer_norm`] (`yr = LN(xr)`); also the prologue of the fused
/// dense kernel, so both give the same bits.
#[inline]
pub(crate) fn ln_row(xr: &[f32], w: &[f32], b: &[f32], eps: f32, yr: &mut [f32]) {
    crate::simd::ln_row(xr, w, b, eps, yr)
}

/// [`ln_row`]'s arithmetic, compiled per instruction set by `simd::ln_row`.
#[inline(always)]
pub(crate) fn ln_row_body(xr: &[f32], w: &[f32], b: &[f32], eps: f32, yr: &mut [f32]) {
    let n = xr.len() as f32;
    let mean = sum16(xr, |v| v) / n;
    let var = sum16(xr, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &v), &wi), &bi) in yr.iter_mut().zip(xr).zip(w).zip(b) {
        *o = (v - mean) * inv * wi + bi;
    }
}

/// `y[i] = table[ids[i]]` (`rc_embedding_f32`); an id outside `[0, vocab)` is
/// [`Error::OutOfRange`] (code 2) and leaves `y` untouched.
///
/// ```
/// let mut y = [0.0f32; 4];
/// reformc_runtime::embedding(&[1, 0], &[1.0, 2.0, 3.0, 4.0], 2, 2, &mut y).unwrap();
/// assert_eq!(y, [3.0, 4.0, 1.0, 2.0]);
/// assert_eq!(reformc_runtime::embedding(&[2], &[0.0; 4], 2, 2, &mut y[..2]).unwrap_err().code(), 2);
/// ```
pub fn embedding(
    ids: &[i64],
    table: &[f32],
    vocab: usize,
    width: usize,
    y: &mut [f32],
) -> Result<()> {
    check_len("table", table.len(), vocab.checked_mul(width))?;
    check_len("y", y.len(), ids.len().checked_mul(width))?;
    if let Some((i, id)) = ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id < 0 || id as u64 >= vocab as u64)
    {
        return Err(Error::OutOfRange(format!(
            "id {id} at index {i} is out of range for a table of {vocab} rows"
        )));
    }
    if width == 0 {
        return Ok(());
    }
    let per = rows_per_task(width);
    let shared = SharedMut::new(y);
    par_for(ids.len().div_ceil(per), |t| {
        let r0 = t * per;
        let nr = per.min(ids.len() - r0);
        // SAFETY: task t alone writes rows r0..r0+nr.
        let ys = unsafe { shared.slice(r0 * width, nr * width) };
        for (&id, yr) in ids[r0..r0 + nr].iter().zip(ys.chunks_exact_mut(width)) {
            let id = id as usize;
            yr.copy_from_slice(&table[id * width..(id + 1) * width]);
        }
    })
}

/// Axial position embedding (`rc_axial_pos_f32`):
/// `y[i] = concat(w0[p / n1, 0, :], w1[0, p % n1, :])` for `p = pos[i]`, where
/// `w0` is `[n0, 1, d0]` and `w1` is `[1, n1, d1]`. A position outside
/// `[0, n0·n1)` is [`Error::OutOfRange`] (code 2).
///
/// ```
/// let (w0, w1) = ([1.0f32, 2.0], [10.0f32, 20.0, 30.0]); // n0 = 2, d0 = 1; n1 = 3, d1 = 1
/// let mut y = [0.0f32; 4];
/// reformc_runtime::axial_pos(&[4, 2], &w0, 2, 1, &w1, 3, 1, &mut y).unwrap();
/// assert_eq!(y, [2.0, 20.0, 1.0, 30.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn axial_pos(
    pos: &[i64],
    w0: &[f32],
    n0: usize,
    d0: usize,
    w1: &[f32],
    n1: usize,
    d1: usize,
    y: &mut [f32],
) -> Result<()> {
    check_len("w0", w0.len(), n0.checked_mul(d0))?;
    check_len("w1", w1.len(), n1.checked_mul(d1))?;
    let width = d0
        .checked_add(d1)
        .ok_or_else(|| invalid("d0 + d1 overflows"))?;
    check_len("y", y.len(), pos.len().checked_mul(width))?;
    let cells = n0
        .checked_mul(n1)
        .ok_or_else(|| invalid("n0 * n1 overflows"))?;
    if let Some((i, p)) = pos
        .iter()
        .enumerate()
        .find(|(_, &p)| p < 0 || p as u64 >= cells as u64)
    {
        return Err(Error::OutOfRange(format!(
            "position {p} at index {i} is outside the axial grid {n0}x{n1} (= {cells} positions)"
        )));
    }
    if width == 0 {
        return Ok(());
    }
    let per = rows_per_task(width);
    let shared = SharedMut::new(y);
    par_for(pos.len().div_ceil(per), |t| {
        let r0 = t * per;
        let nr = per.min(pos.len() - r0);
        // SAFETY: task t alone writes rows r0..r0+nr.
        let ys = unsafe { shared.slice(r0 * width, nr * width) };
        for (&p, yr) in pos[r0..r0 + nr].iter().zip(ys.chunks_exact_mut(width)) {
            let p = p as usize;
            let (i0, i1) = (p / n1, p % n1);
            yr[..d0].copy_from_slice(&w0[i0 * d0..(i0 + 1) * d0]);
            yr[d0..].copy_from_slice(&w1[i1 * d1..(i1 + 1) * d1]);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum16_matches_exact_sum_of_small_integers() {
        for n in [0usize, 1, 15, 16, 17, 100] {
            let xs: Vec<f32> = (0..n).map(|i| i as f32).collect();
            assert_eq!(sum16(&xs, |v| v), (n * n.saturating_sub(1) / 2) as f32);
        }
    }

    #[test]
    fn layer_norm_constant_row_gives_bias() {
        let mut y = [9.0f32; 3];
        layer_norm(&[2.0; 3], 1, 3, &[1.0; 3], &[0.5, 0.25, 0.0], 1e-12, &mut y).unwrap();
        assert_eq!(y, [0.5, 0.25, 0.0]);
    }

    #[test]
    fn out_of_range_positions_are_errors() {
        let mut y = [0.0f32; 2];
        let e = axial_pos(&[6], &[0.0; 2], 2, 1, &[0.0; 3], 3, 1, &mut y).unwrap_err();
        assert_eq!(e.code(), 2);
        let e = embedding(&[-1], &[0.0; 4], 2, 2, &mut y).unwrap_err();
        assert_eq!(e.code(), 2);
    }
}
