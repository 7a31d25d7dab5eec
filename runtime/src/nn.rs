//! Row-wise kernels: layer norm, token embedding, axial position embedding.

use crate::error::{invalid, Error, Result};
use crate::gemm::check_len;
use crate::pool::{par_for, SharedMut};

/// Rows per parallel task for row-wise kernels (any split gives the same bits).
fn rows_per_task(width: usize) -> usize {
    (16384 / width.max(1)).max(1)
}

/// Runs `f(rows, out_rows)` in parallel over blocks of whole rows of `out`
/// (`n` rows of `width`): `rows` is the block's row range, `out_rows` its
/// rows of `out`.
fn par_rows(
    n: usize,
    width: usize,
    out: &mut [f32],
    f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Send + Sync,
) -> Result<()> {
    let per = rows_per_task(width);
    let shared = SharedMut::new(out);
    par_for(n.div_ceil(per), |t| {
        let r0 = t * per;
        let nr = per.min(n - r0);
        // SAFETY: task t alone writes rows r0..r0+nr.
        let ys = unsafe { shared.slice(r0 * width, nr * width) };
        f(r0..r0 + nr, ys)
    })
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
    fold16(acc)
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
    par_rows(rows, width, y, |r, ys| {
        for (xr, yr) in x[r.start * width..r.end * width]
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
    let (mean, inv) = row_stats(xr, eps);
    for (((o, &v), &wi), &bi) in yr.iter_mut().zip(xr).zip(w).zip(b) {
        *o = (v - mean) * inv * wi + bi;
    }
}

/// Rows per block of [`layer_norm_grad`]'s weight gradient: a fixed count,
/// so the blocks' partial sums, and hence the bits, do not depend on the
/// thread count.
const GRAD_BLOCK_ROWS: usize = 256;

/// The gradient of `sum(dy * LN(x))` (`rc_layer_norm_grad_f32`) over rows of
/// `width` values: with respect to `x` when `wrt_x` (`out` `[rows, width]`,
/// `r (g - mean(g) - x̂ mean(g x̂))` per row, `g = dy w`), else with respect
/// to `w` (`out` `[width]`, the sum over rows of `dy x̂`). Each row's mean,
/// variance and `x̂` are computed as [`layer_norm`] computes them.
///
/// ```
/// let x = [1.0f32, 3.0];
/// let mut dw = [0.0f32; 2];
/// reformc_runtime::layer_norm_grad(&x, 1, 2, &[1.0, 1.0], &[1.0, 1.0], 0.0, false, &mut dw).unwrap();
/// assert_eq!(dw, [-1.0, 1.0]); // dy x̂, x̂ = [-1, 1]
/// let mut dx = [9.0f32; 2];
/// reformc_runtime::layer_norm_grad(&x, 1, 2, &[1.0, 1.0], &[1.0, 1.0], 0.0, true, &mut dx).unwrap();
/// assert_eq!(dx, [0.0, 0.0]); // a constant dy has no gradient through the normalisation
/// ```
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_grad(
    x: &[f32],
    rows: usize,
    width: usize,
    w: &[f32],
    dy: &[f32],
    eps: f32,
    wrt_x: bool,
    out: &mut [f32],
) -> Result<()> {
    check_len("x", x.len(), rows.checked_mul(width))?;
    check_len("dy", dy.len(), rows.checked_mul(width))?;
    check_len("w", w.len(), Some(width))?;
    let want = if wrt_x {
        rows.checked_mul(width)
    } else {
        Some(width)
    };
    check_len("out", out.len(), want)?;
    if width == 0 {
        return Ok(());
    }
    if wrt_x {
        return par_rows(rows, width, out, |r, dx| {
            let span = r.start * width..r.end * width;
            for ((xr, dyr), dxr) in x[span.clone()]
                .chunks_exact(width)
                .zip(dy[span].chunks_exact(width))
                .zip(dx.chunks_exact_mut(width))
            {
                crate::simd::ln_grad_row(xr, w, dyr, eps, dxr);
            }
        });
    }
    let blocks = rows.div_ceil(GRAD_BLOCK_ROWS);
    let mut partial =
        crate::error::try_zeroed::<f32>(blocks * width, "layer_norm_grad partial sums")?;
    let shared = SharedMut::new(&mut partial);
    par_for(blocks, |t| {
        let r0 = t * GRAD_BLOCK_ROWS;
        let nr = GRAD_BLOCK_ROWS.min(rows - r0);
        // SAFETY: task t alone writes partial row t.
        let acc = unsafe { shared.slice(t * width, width) };
        let span = r0 * width..(r0 + nr) * width;
        for (xr, dyr) in x[span.clone()]
            .chunks_exact(width)
            .zip(dy[span].chunks_exact(width))
        {
            crate::simd::ln_grad_w_row(xr, dyr, eps, acc);
        }
    })?;
    out.iter_mut().for_each(|o| *o = 0.0);
    for p in partial.chunks_exact(width) {
        out.iter_mut().zip(p).for_each(|(o, &v)| *o += v);
    }
    Ok(())
}

/// A row's mean and inverse standard deviation (biased variance) in f32,
/// for [`ln_row_body`] and the gradient rows alike.
#[inline(always)]
fn row_stats(xr: &[f32], eps: f32) -> (f32, f32) {
    let n = xr.len() as f32;
    let mean = sum16(xr, |v| v) / n;
    let var = sum16(xr, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// One row of [`layer_norm_grad`] with respect to `x`, compiled per
/// instruction set by `simd::ln_grad_row`.
#[inline(always)]
pub(crate) fn ln_grad_row_body(xr: &[f32], w: &[f32], dyr: &[f32], eps: f32, dxr: &mut [f32]) {
    let n = xr.len() as f32;
    let (mean, inv) = row_stats(xr, eps);
    // g = dy w and g x̂, summed in 16 lanes.
    let (mut sg, mut sgx) = ([0.0f32; 16], [0.0f32; 16]);
    let mut lanes = |xc: &[f32], dc: &[f32], wc: &[f32]| {
        for i in 0..xc.len() {
            let g = dc[i] * wc[i];
            sg[i] += g;
            sgx[i] += g * ((xc[i] - mean) * inv);
        }
    };
    let full = xr.len() / 16 * 16;
    for at in (0..full).step_by(16) {
        lanes(&xr[at..at + 16], &dyr[at..at + 16], &w[at..at + 16]);
    }
    lanes(&xr[full..], &dyr[full..], &w[full..]);
    let (mg, mgx) = (fold16(sg) / n, fold16(sgx) / n);
    for (((o, &v), &d), &wi) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
        *o = inv * (d * wi - mg - (v - mean) * inv * mgx);
    }
}

/// One row's contribution `acc += dy x̂` to [`layer_norm_grad`]'s weight
/// gradient, compiled per instruction set by `simd::ln_grad_w_row`.
#[inline(always)]
pub(crate) fn ln_grad_w_row_body(xr: &[f32], dyr: &[f32], eps: f32, acc: &mut [f32]) {
    let (mean, inv) = row_stats(xr, eps);
    for ((a, &v), &d) in acc.iter_mut().zip(xr).zip(dyr) {
        *a += d * ((v - mean) * inv);
    }
}

/// The pairwise sum of 16 partial sums (as [`sum16`] combines them).
#[inline(always)]
pub(crate) fn fold16(mut acc: [f32; 16]) -> f32 {
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
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
    par_rows(ids.len(), width, y, |r, ys| {
        for (&id, yr) in ids[r].iter().zip(ys.chunks_exact_mut(width)) {
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
    par_rows(pos.len(), width, y, |r, ys| {
        for (&p, yr) in pos[r].iter().zip(ys.chunks_exact_mut(width)) {
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

    /// `layer_norm_grad` in f64, for rows of `width`.
    fn ln_grad_f64(
        x: &[f32],
        width: usize,
        w: &[f32],
        dy: &[f32],
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut dx, mut dw) = (vec![0.0f64; x.len()], vec![0.0f64; width]);
        for (r, (xr, dr)) in x.chunks(width).zip(dy.chunks(width)).enumerate() {
            let n = width as f64;
            let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (var + eps).sqrt();
            let xh: Vec<f64> = xr.iter().map(|&v| (v as f64 - mean) * inv).collect();
            let g: Vec<f64> = dr
                .iter()
                .zip(w)
                .map(|(&d, &wi)| d as f64 * wi as f64)
                .collect();
            let mg = g.iter().sum::<f64>() / n;
            let mgx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / n;
            for i in 0..width {
                dx[r * width + i] = inv * (g[i] - mg - xh[i] * mgx);
                dw[i] += dr[i] as f64 * xh[i];
            }
        }
        (dx, dw)
    }

    #[test]
    fn layer_norm_grad_matches_f64_and_not_the_thread_count() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (rows, width) in [(1usize, 1usize), (3, 5), (600, 17), (1000, 256)] {
            let x: Vec<f32> = (0..rows * width).map(|_| 3.0 * next() + 0.5).collect();
            let dy: Vec<f32> = (0..rows * width).map(|_| next()).collect();
            let w: Vec<f32> = (0..width).map(|_| next()).collect();
            let (want_dx, want_dw) = ln_grad_f64(&x, width, &w, &dy, 1e-5);
            let mut dx = vec![0.0f32; rows * width];
            layer_norm_grad(&x, rows, width, &w, &dy, 1e-5, true, &mut dx).unwrap();
            let mut by_threads = vec![];
            for threads in [1, 3] {
                crate::pool::set_threads(threads).unwrap();
                let mut dw = vec![5.0f32; width];
                layer_norm_grad(&x, rows, width, &w, &dy, 1e-5, false, &mut dw).unwrap();
                by_threads.push(dw);
            }
            crate::pool::set_threads(0).unwrap();
            assert_eq!(
                by_threads[0], by_threads[1],
                "{rows}x{width}: dw depends on the threads"
            );
            let close = |got: &[f32], want: &[f64], what: &str| {
                let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
                for (i, (&g, &e)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (g as f64 - e).abs() <= 1e-5 * scale,
                        "{rows}x{width} {what}[{i}]: {g} vs {e}"
                    );
                }
            };
            close(&dx, &want_dx, "dx");
            close(&by_threads[0], &want_dw, "dw");
        }
        let mut short = [0.0f32; 2];
        assert!(layer_norm_grad(
            &[0.0; 4],
            2,
            2,
            &[1.0; 2],
            &[0.0; 3],
            0.0,
            true,
            &mut [0.0; 4]
        )
        .is_err());
        assert!(
            layer_norm_grad(&[0.0; 4], 2, 2, &[1.0; 2], &[0.0; 4], 0.0, true, &mut short).is_err()
        );
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
