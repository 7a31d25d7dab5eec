//! The LM head fused with the cross-entropy (`lm_loss`) and its gradient
//! (`lm_loss_grad`), `chunk` rows at a time: only `[chunk, V]` logits exist
//! at once, never `[rows, V]`.
//!
//! Rows whose label is -100 are ignored. Each row's negative log-likelihood
//! is computed in f32 and summed in f64, as the interpreter does.

use crate::error::{try_zeroed, Error, Result};
use crate::gemm::linear;
use crate::pool::{par_for, SharedMut};
use crate::simd;
use crate::tensor_ops::{matmul_into, matmul_into_t, Transposed};
use crate::Activation;

/// The label that marks an ignored row.
pub const IGNORE: i64 = -100;

/// The shapes of one call: `h` `[rows, d]`, `w` `[v, d]`, `labels` `[rows]`.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Rows of `h` (positions).
    pub rows: usize,
    /// Width of a row of `h` and of `w`.
    pub d: usize,
    /// Vocabulary size (rows of `w`).
    pub v: usize,
    /// Rows per chunk (at least 1).
    pub chunk: usize,
}

/// `sum over rows r with labels[r] != -100 of logsumexp(z_r) - z_r[labels[r]]`
/// with `z_r = w · h_r`.
///
/// ```
/// use reformc_runtime::lm_loss::{lm_loss, Shape};
/// let s = Shape { rows: 2, d: 1, v: 2, chunk: 1 };
/// let total = lm_loss(&[1.0, 0.0], &[1.0, -1.0], &[0, -100], s).unwrap();
/// let want = (1f32.exp() + (-1f32).exp()).ln() - 1.0;
/// assert!((total - want).abs() < 1e-6);
/// ```
pub fn lm_loss(h: &[f32], w: &[f32], labels: &[i64], s: Shape) -> Result<f32> {
    let mut total = 0.0f64;
    let mut nll = Vec::new();
    for_chunks(h, w, labels, s, |_, z, picked| {
        nll.clear();
        nll.resize(picked.len(), 0.0f32);
        let out = SharedMut::new(&mut nll);
        par_row_blocks(picked.len(), |rows| {
            // SAFETY: this block alone writes the losses of rows `rows`.
            let mine = unsafe { out.slice(rows.start, rows.len()) };
            for (i, o) in rows.clone().zip(mine) {
                // SAFETY: as above, for the block's rows of the logits.
                let row = unsafe { z.slice(i * s.v, s.v) };
                if let Some(l) = picked[i] {
                    let zl = row[l];
                    *o = logsumexp_in_place(row) - zl;
                }
            }
        })?;
        // In row order, in f64: the sum does not depend on the thread count.
        total += nll
            .iter()
            .zip(picked)
            .filter(|(_, l)| l.is_some())
            .map(|(&x, _)| f64::from(x))
            .sum::<f64>();
        Ok(())
    })?;
    Ok(total as f32)
}

/// `dy` times the gradients of [`lm_loss`] with respect to `h` (into `dh`,
/// `[rows, d]`) and `w` (into `dw`, `[v, d]`), either or both, from one
/// computation of the logits per chunk.
///
/// ```
/// use reformc_runtime::lm_loss::{lm_loss_grads, Shape};
/// // One row, d = 1, v = 2: z = [1, -1], label 0.
/// let s = Shape { rows: 1, d: 1, v: 2, chunk: 4 };
/// let (mut dh, mut dw) = ([0.0f32; 1], [0.0f32; 2]);
/// lm_loss_grads(&[1.0], &[1.0, -1.0], &[0], s, 1.0, Some(&mut dh), Some(&mut dw)).unwrap();
/// let p1 = 1.0 / (1.0 + 2f32.exp()); // softmax(z)[1]
/// assert!((dw[1] - p1).abs() < 1e-6 && (dw[0] + p1).abs() < 1e-6);
/// assert!((dh[0] + 2.0 * p1).abs() < 1e-6);
/// ```
pub fn lm_loss_grads(
    h: &[f32],
    w: &[f32],
    labels: &[i64],
    s: Shape,
    dy: f32,
    mut dh: Option<&mut [f32]>,
    mut dw: Option<&mut [f32]>,
) -> Result<()> {
    let sizes = [("dh", &dh, s.rows * s.d), ("dw", &dw, s.v * s.d)];
    for (what, out, want) in sizes {
        if let Some(o) = out.as_deref().filter(|o| o.len() != want) {
            return Err(Error::InvalidArgument(format!(
                "lm_loss_grad: {what} has {} elements, expected {want}",
                o.len()
            )));
        }
    }
    if let Some(dw) = dw.as_deref_mut() {
        // dw accumulates over the chunks; dh is written chunk by chunk.
        dw.iter_mut().for_each(|x| *x = 0.0);
    }
    for_chunks(h, w, labels, s, |r0, z, picked| {
        let c = picked.len();
        par_row_blocks(c, |rows| {
            for i in rows {
                // SAFETY: this block alone owns the logits of rows `rows`.
                let row = unsafe { z.slice(i * s.v, s.v) };
                softmax_minus_onehot(row, picked[i], dy);
            }
        })?;
        // SAFETY: every block above has finished; nothing else holds the logits.
        let g = unsafe { z.slice(0, c * s.v) };
        if let Some(dh) = dh.as_deref_mut() {
            // dh = G · w: [c, v] x [v, d].
            matmul_into(g, w, c, s.v, s.d, &mut dh[r0 * s.d..(r0 + c) * s.d], false)?;
        }
        if let Some(dw) = dw.as_deref_mut() {
            // dw += Gᵀ · h_chunk: [v, c] x [c, d], G read transposed in place.
            let hc = &h[r0 * s.d..(r0 + c) * s.d];
            let t = Transposed { a: true, b: false };
            matmul_into_t(g, hc, s.v, c, s.d, t, dw, true)?;
        }
        Ok(())
    })
}

/// Calls `f(first row, logits [c, v], labels as indices)` for each chunk of
/// rows, after checking the sizes and every label. The logits are shared:
/// `f` hands disjoint rows to its tasks.
fn for_chunks(
    h: &[f32],
    w: &[f32],
    labels: &[i64],
    s: Shape,
    mut f: impl FnMut(usize, &SharedMut<f32>, &[Option<usize>]) -> Result<()>,
) -> Result<()> {
    check(h, w, labels, s)?;
    let chunk = s.chunk.clamp(1, s.rows.max(1));
    let mut z: Vec<f32> = try_zeroed(chunk * s.v, "lm_loss logits chunk")?;
    let mut picked = Vec::with_capacity(chunk);
    for r0 in (0..s.rows).step_by(chunk) {
        let c = chunk.min(s.rows - r0);
        let hc = &h[r0 * s.d..(r0 + c) * s.d];
        let zc = &mut z[..c * s.v];
        linear(hc, c, s.d, w, s.v, None, Activation::None, zc)?;
        picked.clear();
        for (i, &l) in labels[r0..r0 + c].iter().enumerate() {
            picked.push(index(l, r0 + i, s.v)?);
        }
        f(r0, &SharedMut::new(zc), &picked)?;
    }
    Ok(())
}

/// Runs `f` on blocks of [`ROWS_PER_TASK`] of `n` rows, in parallel.
fn par_row_blocks(n: usize, f: impl Fn(std::ops::Range<usize>) + Send + Sync) -> Result<()> {
    par_for(n.div_ceil(ROWS_PER_TASK), |t| {
        f(t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n))
    })
}

/// Rows of logits one task normalizes (64 rows of a 320-word vocabulary
/// are 80 KiB).
const ROWS_PER_TASK: usize = 64;

fn check(h: &[f32], w: &[f32], labels: &[i64], s: Shape) -> Result<()> {
    let sizes = [
        ("h", h.len(), s.rows.checked_mul(s.d)),
        ("w", w.len(), s.v.checked_mul(s.d)),
        ("labels", labels.len(), Some(s.rows)),
    ];
    for (what, got, want) in sizes {
        if Some(got) != want {
            return Err(Error::InvalidArgument(format!(
                "lm_loss: {what} has {got} elements, expected {want:?}"
            )));
        }
    }
    Ok(())
}

/// The label of row `r` as an index, `None` for an ignored row.
fn index(label: i64, r: usize, v: usize) -> Result<Option<usize>> {
    match label {
        IGNORE => Ok(None),
        l if (0..v as i64).contains(&l) => Ok(Some(l as usize)),
        l => Err(Error::OutOfRange(format!(
            "lm_loss: label {l} of row {r} is outside [0, {v}) (and not -100)"
        ))),
    }
}

/// `logsumexp(z)`, leaving `z` as `exp(z - max z)`.
fn logsumexp_in_place(z: &mut [f32]) -> f32 {
    let m = simd::max(z);
    m + simd::exp_sub_sum(z, m).ln()
}

/// `row <- dy * (softmax(row) - onehot(label))`, zeros for an ignored row.
fn softmax_minus_onehot(row: &mut [f32], label: Option<usize>, dy: f32) {
    let Some(l) = label else {
        row.iter_mut().for_each(|x| *x = 0.0);
        return;
    };
    let m = simd::max(row);
    let sum = simd::exp_sub_sum(row, m);
    simd::mul(row, dy / sum);
    row[l] -= dy;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row-by-row reference in f64.
    fn reference(h: &[f32], w: &[f32], labels: &[i64], s: Shape) -> (f64, Vec<f64>, Vec<f64>) {
        let (mut total, mut dh, mut dw) = (0.0, vec![0.0; s.rows * s.d], vec![0.0; s.v * s.d]);
        for r in 0..s.rows {
            let z: Vec<f64> = (0..s.v)
                .map(|j| {
                    (0..s.d)
                        .map(|k| f64::from(w[j * s.d + k]) * f64::from(h[r * s.d + k]))
                        .sum()
                })
                .collect();
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let Ok(l) = usize::try_from(labels[r]) else {
                continue;
            };
            total += lse - z[l];
            for j in 0..s.v {
                let g = (z[j] - lse).exp() - if j == l { 1.0 } else { 0.0 };
                for k in 0..s.d {
                    dh[r * s.d + k] += g * f64::from(w[j * s.d + k]);
                    dw[j * s.d + k] += g * f64::from(h[r * s.d + k]);
                }
            }
        }
        (total, dh, dw)
    }

    #[test]
    fn chunks_of_every_size_match_the_reference() {
        let (rows, d, v) = (7, 5, 11);
        let h: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0)
            .collect();
        let w: Vec<f32> = (0..v * d)
            .map(|i| ((i * 23 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let labels = [3, -100, 0, 10, 7, -100, 1];
        for chunk in [1, 2, 3, 7, 100] {
            let s = Shape { rows, d, v, chunk };
            let (total, dh, dw) = reference(&h, &w, &labels, s);
            let got = lm_loss(&h, &w, &labels, s).unwrap();
            assert!(
                (f64::from(got) - total).abs() < 1e-4 * total.abs(),
                "{got} vs {total}"
            );
            let (mut gh, mut gw) = (vec![0.0; rows * d], vec![0.0; v * d]);
            lm_loss_grads(&h, &w, &labels, s, 2.0, Some(&mut gh), Some(&mut gw)).unwrap();
            // Each alone writes the same values as both at once.
            let (mut oh, mut ow) = (vec![0.0; rows * d], vec![0.0; v * d]);
            lm_loss_grads(&h, &w, &labels, s, 2.0, Some(&mut oh), None).unwrap();
            lm_loss_grads(&h, &w, &labels, s, 2.0, None, Some(&mut ow)).unwrap();
            assert_eq!((&oh, &ow), (&gh, &gw));
            for (a, b) in gh.iter().zip(&dh).chain(gw.iter().zip(&dw)) {
                assert!(
                    (f64::from(*a) - 2.0 * b).abs() < 1e-4,
                    "chunk {chunk}: {a} vs {}",
                    2.0 * b
                );
            }
        }
    }

    #[test]
    fn the_bits_do_not_depend_on_the_thread_count() {
        // Chunks of 128 rows: two blocks of rows per task and a partial one.
        let (rows, d, v) = (300, 8, 37);
        let h: Vec<f32> = (0..rows * d).map(|i| ((i as f32) * 0.37).sin()).collect();
        let w: Vec<f32> = (0..v * d).map(|i| ((i as f32) * 0.11).cos()).collect();
        let labels: Vec<i64> = (0..rows)
            .map(|r| {
                if r % 7 == 3 {
                    IGNORE
                } else {
                    (r * 5 % v) as i64
                }
            })
            .collect();
        let s = Shape {
            rows,
            d,
            v,
            chunk: 128,
        };
        let mut runs = vec![];
        for threads in [1, 3] {
            crate::pool::set_threads(threads).unwrap();
            let (mut dh, mut dw) = (vec![0.0f32; rows * d], vec![0.0f32; v * d]);
            let total = lm_loss(&h, &w, &labels, s).unwrap();
            lm_loss_grads(&h, &w, &labels, s, 0.5, Some(&mut dh), Some(&mut dw)).unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            runs.push((total.to_bits(), bits(&dh), bits(&dw)));
        }
        crate::pool::set_threads(0).unwrap();
        assert_eq!(runs[0], runs[1]);
    }

    #[test]
    fn a_label_out_of_range_is_an_error() {
        let s = Shape {
            rows: 1,
            d: 1,
            v: 2,
            chunk: 4,
        };
        let e = lm_loss(&[1.0], &[1.0, 2.0], &[2], s).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.message().contains("label 2 of row 0"), "{}", e.message());
    }
}
