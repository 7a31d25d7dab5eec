//! The fused LM head and cross-entropy (`lm_loss`) and its gradient
//! (`lm_loss_grad`), row by row: the reference the backends' chunked
//! kernels are checked against.
//!
//! Each row's negative log-likelihood is taken in the element type and
//! summed in f64 (then rounded), as the runtime kernel does.

use crate::tensor::Real;
use ndarray::{Array2, ArrayD, ArrayView2, IxDyn};

/// The label that marks an ignored row.
pub const IGNORE: i64 = -100;

/// `sum over rows r with labels[r] != -100 of logsumexp(z_r) - z_r[labels[r]]`,
/// `z_r = w @ h_r`, as a scalar.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let h = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![1.0f64, 0.0]).unwrap();
/// let w = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![1.0f64, -1.0]).unwrap();
/// let labels = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0i64, -100]).unwrap();
/// let total = reformc_interp::lm_loss::lm_loss(&h, &w, &labels).unwrap();
/// let want = (1f64.exp() + (-1f64).exp()).ln() - 1.0;
/// assert!((total[[]] - want).abs() < 1e-12);
/// ```
pub fn lm_loss<T: Real>(
    h: &ArrayD<T>,
    w: &ArrayD<T>,
    labels: &ArrayD<i64>,
) -> Result<ArrayD<T>, String> {
    let (h2, w2) = (rows(h)?, matrix(w)?);
    let h2 = h2.view();
    let mut total = 0.0f64;
    for (r, &label) in labels.iter().enumerate() {
        let Some(l) = checked(label, r, w2.nrows())? else {
            continue;
        };
        let z = logits(&h2, &w2, r);
        let lse = logsumexp(&z);
        total += (lse - z[l]).to_f64().unwrap_or(f64::NAN);
    }
    Ok(ArrayD::from_elem(IxDyn(&[]), T::of(total)))
}

/// `dy` times the gradient of [`lm_loss`] with respect to `h` (`wrt_h`) or `w`.
pub fn lm_loss_grad<T: Real>(
    h: &ArrayD<T>,
    w: &ArrayD<T>,
    labels: &ArrayD<i64>,
    dy: T,
    wrt_h: bool,
) -> Result<ArrayD<T>, String> {
    let (h2, w2) = (rows(h)?, matrix(w)?);
    let h2 = h2.view();
    let (v, d) = w2.dim();
    let mut dh = Array2::<T>::zeros(h2.dim());
    let mut dw = Array2::<T>::zeros((v, d));
    for (r, &label) in labels.iter().enumerate() {
        let Some(l) = checked(label, r, v)? else {
            continue;
        };
        let z = logits(&h2, &w2, r);
        let lse = logsumexp(&z);
        for (j, &zj) in z.iter().enumerate() {
            let onehot = if j == l { T::one() } else { T::zero() };
            let g = dy * ((zj - lse).exp() - onehot);
            for k in 0..d {
                if wrt_h {
                    dh[[r, k]] += g * w2[[j, k]];
                } else {
                    dw[[j, k]] += g * h2[[r, k]];
                }
            }
        }
    }
    let (out, shape) = match wrt_h {
        true => (dh, h.shape()),
        false => (dw, w.shape()),
    };
    out.into_shape_with_order(IxDyn(shape))
        .map_err(|e| e.to_string())
}

/// `h` as `[rows, D]` (row-major whatever its layout).
fn rows<T: Real>(h: &ArrayD<T>) -> Result<Array2<T>, String> {
    let d = *h.shape().last().ok_or("lm_loss: h must have rank >= 1")?;
    let n = h.len() / d.max(1);
    h.as_standard_layout()
        .into_owned()
        .into_shape_with_order((n, d))
        .map_err(|e| format!("lm_loss: h: {e}"))
}

fn matrix<T: Real>(w: &ArrayD<T>) -> Result<ArrayView2<'_, T>, String> {
    w.view()
        .into_dimensionality()
        .map_err(|e| format!("lm_loss: w must be [V, D]: {e}"))
}

/// The label of row `r` as an index, `None` for an ignored row.
fn checked(label: i64, r: usize, v: usize) -> Result<Option<usize>, String> {
    match label {
        IGNORE => Ok(None),
        l if (0..v as i64).contains(&l) => Ok(Some(l as usize)),
        l => Err(format!(
            "lm_loss: label {l} of row {r} is outside [0, {v}) (and not -100)"
        )),
    }
}

fn logits<T: Real>(h: &ArrayView2<'_, T>, w: &ArrayView2<'_, T>, r: usize) -> Vec<T> {
    let hr = h.row(r);
    w.rows().into_iter().map(|wj| wj.dot(&hr)).collect()
}

fn logsumexp<T: Real>(z: &[T]) -> T {
    let m = z.iter().copied().fold(T::neg_infinity(), T::max);
    let s = z.iter().fold(T::zero(), |acc, &x| acc + (x - m).exp());
    m + s.ln()
}
