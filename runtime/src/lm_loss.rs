//! The LM head fused with the cross-entropy (`lm_loss`) and its gradient
//! (`lm_loss_grad`), `chunk` rows at a time: only `[chunk, V]` logits exist
//! at once, never `[rows, V]`.
//!
//! Rows whose label is -100 are ignored. Each row's negative log-likelihood
//! is computed in f32 and summed in f64, as the interpreter does.

use crate::error::{try_zeroed, Error, Result};
use crate::gemm::linear;
use crate::tensor_ops::matmul_into;
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
    for_chunks(h, w, labels, s, |_, z, picked| {
        for (row, l) in z.chunks_exact(s.v).zip(picked) {
            if let Some(l) = *l {
                total += f64::from(logsumexp(row) - row[l]);
            }
        }
        Ok(())
    })?;
    Ok(total as f32)
}

/// `dy` times the gradient of [`lm_loss`] with respect to `h` (`[rows, d]`,
/// `wrt_h`) or `w` (`[v, d]`), written to `out`.
pub fn lm_loss_grad(
    h: &[f32],
    w: &[f32],
    labels: &[i64],
    s: Shape,
    dy: f32,
    wrt_h: bool,
    out: &mut [f32],
) -> Result<()> {
    let want = if wrt_h { s.rows * s.d } else { s.v * s.d };
    if out.len() != want {
        return Err(Error::InvalidArgument(format!(
            "lm_loss_grad: out has {} elements, expected {want}",
            out.len()
        )));
    }
    if !wrt_h {
        // dw accumulates over the chunks; dh is written chunk by chunk.
        out.iter_mut().for_each(|x| *x = 0.0);
    }
    let mut transposed: Vec<f32> = match wrt_h {
        true => Vec::new(),
        false => try_zeroed(s.chunk.min(s.rows.max(1)) * s.v, "lm_loss_grad scratch")?,
    };
    for_chunks(h, w, labels, s, |r0, z, picked| {
        let c = picked.len();
        for (row, l) in z.chunks_exact_mut(s.v).zip(picked) {
            softmax_minus_onehot(row, *l, dy);
        }
        if wrt_h {
            // dh = G · w: [c, v] x [v, d].
            let dh = &mut out[r0 * s.d..(r0 + c) * s.d];
            return matmul_into(z, w, c, s.v, s.d, dh, false);
        }
        // dw += Gᵀ · h_chunk: [v, c] x [c, d].
        let gt = &mut transposed[..s.v * c];
        for (i, row) in z.chunks_exact(s.v).enumerate() {
            for (j, &g) in row.iter().enumerate() {
                gt[j * c + i] = g;
            }
        }
        let hc = &h[r0 * s.d..(r0 + c) * s.d];
        matmul_into(gt, hc, s.v, c, s.d, out, true)
    })
}

/// Calls `f(first row, logits [c, v], labels as indices)` for each chunk of
/// rows, after checking the sizes and every label.
fn for_chunks(
    h: &[f32],
    w: &[f32],
    labels: &[i64],
    s: Shape,
    mut f: impl FnMut(usize, &mut [f32], &[Option<usize>]) -> Result<()>,
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
        f(r0, zc, &picked)?;
    }
    Ok(())
}

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

fn logsumexp(z: &[f32]) -> f32 {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s = z.iter().fold(0.0f32, |acc, &x| acc + (x - m).exp());
    m + s.ln()
}

/// `row <- dy * (softmax(row) - onehot(label))`, zeros for an ignored row.
fn softmax_minus_onehot(row: &mut [f32], label: Option<usize>, dy: f32) {
    let Some(l) = label else {
        row.iter_mut().for_each(|x| *x = 0.0);
        return;
    };
    let lse = logsumexp(row);
    for (j, x) in row.iter_mut().enumerate() {
        let onehot = if j == l { 1.0 } else { 0.0 };
        *x = dy * ((*x - lse).exp() - onehot);
    }
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
            let mut gh = vec![0.0; rows * d];
            lm_loss_grad(&h, &w, &labels, s, 2.0, true, &mut gh).unwrap();
            let mut gw = vec![0.0; v * d];
            lm_loss_grad(&h, &w, &labels, s, 2.0, false, &mut gw).unwrap();
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
