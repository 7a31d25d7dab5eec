//! Semantics of `feed_forward` and its gradient `feed_forward_grad`: the
//! unchunked reference that generated code's chunked kernels are tested
//! against.

use crate::nn::{layer_norm, layer_norm_grad, linear};
use crate::tensor::Real;
use crate::tensor_ops::act_grad;
use ndarray::{Array2, ArrayD, ArrayView2, Axis, IxDyn};
use reformc_ir::Activation;

/// The weights and attributes of one feed-forward: `linear(act(linear(
/// layer_norm(x, ln_w, ln_b), w1, b1)), w2, b2)`.
pub struct FeedForward<'a, T> {
    /// Layer-norm scale and shift, `[D]` each.
    pub ln_w: &'a ArrayD<T>,
    /// See `ln_w`.
    pub ln_b: &'a ArrayD<T>,
    /// First linear, `[F, D]`, and its bias `[F]`.
    pub w1: &'a ArrayD<T>,
    /// See `w1`.
    pub b1: &'a ArrayD<T>,
    /// Second linear, `[D, F]`, and its bias `[D]`.
    pub w2: &'a ArrayD<T>,
    /// See `w2`.
    pub b2: &'a ArrayD<T>,
    /// Layer-norm epsilon.
    pub eps: f64,
    /// Activation after the first linear.
    pub act: Activation,
}

impl<T: Real> FeedForward<'_, T> {
    /// The first linear's output before the activation, and the normalised input.
    fn hidden(&self, x: &ArrayD<T>) -> Result<(ArrayD<T>, ArrayD<T>), String> {
        let ln = layer_norm(x, self.ln_w, self.ln_b, self.eps);
        let h = linear(&ln, self.w1, Some(self.b1), Activation::None)?;
        Ok((ln, h))
    }

    /// `feed_forward(x)` for `x` `[..., D]`.
    ///
    /// ```
    /// use ndarray::{arr1, arr2};
    /// use reformc_interp::feed_forward::FeedForward;
    /// use reformc_ir::Activation;
    /// let (w, b) = (arr1(&[1.0f64, 1.0]).into_dyn(), arr1(&[0.0f64, 0.0]).into_dyn());
    /// let eye = arr2(&[[1.0f64, 0.0], [0.0, 1.0]]).into_dyn();
    /// let ff = FeedForward {
    ///     ln_w: &w, ln_b: &b, w1: &eye, b1: &b, w2: &eye, b2: &b, eps: 0.0, act: Activation::Relu,
    /// };
    /// // layer_norm([1, 3]) = [-1, 1]; relu keeps [0, 1].
    /// let y = ff.forward(&arr2(&[[1.0, 3.0]]).into_dyn()).unwrap();
    /// assert_eq!(y.into_raw_vec_and_offset().0, vec![0.0, 1.0]);
    /// ```
    pub fn forward(&self, x: &ArrayD<T>) -> Result<ArrayD<T>, String> {
        let (_, h) = self.hidden(x)?;
        let a = h.mapv(|v| crate::nn::activate(self.act, v));
        linear(&a, self.w2, Some(self.b2), Activation::None)
    }

    /// The gradient of `sum(dy * forward(x))` with respect to the operand
    /// `wrt` names (`x`, `ln_w`, `ln_b`, `w1`, `b1`, `w2` or `b2`).
    pub fn grad(&self, x: &ArrayD<T>, dy: &ArrayD<T>, wrt: &str) -> Result<ArrayD<T>, String> {
        let d = *x.shape().last().ok_or("x must have rank >= 1")?;
        let dy2 = rows(dy, d)?;
        let (ln, h) = self.hidden(x)?;
        let f = *h.shape().last().expect("rank >= 1");
        let a = h.mapv(|v| crate::nn::activate(self.act, v));
        match wrt {
            "b2" => return Ok(dy2.sum_axis(Axis(0)).into_dyn()),
            "w2" => return Ok(dy2.t().dot(&rows(&a, f)?).into_dyn()),
            _ => {}
        }
        let da = dy2
            .dot(&matrix(self.w2)?)
            .into_shape_with_order(IxDyn(h.shape()))
            .map_err(|e| e.to_string())?;
        let dh = act_grad(self.act, &h.as_standard_layout().into_owned(), &da)?;
        let dh2 = rows(&dh, f)?;
        match wrt {
            "b1" => return Ok(dh2.sum_axis(Axis(0)).into_dyn()),
            "w1" => return Ok(dh2.t().dot(&rows(&ln, d)?).into_dyn()),
            _ => {}
        }
        let dln: Array2<T> = dh2.dot(&matrix(self.w1)?);
        let dln = dln
            .into_shape_with_order(IxDyn(x.shape()))
            .map_err(|e| e.to_string())?;
        match wrt {
            "ln_b" => Ok(rows(&dln, d)?.sum_axis(Axis(0)).into_dyn()),
            "ln_w" => Ok(layer_norm_grad(x, self.ln_w, &dln, self.eps, false)),
            "x" => Ok(layer_norm_grad(x, self.ln_w, &dln, self.eps, true)),
            other => Err(format!("wrt names no operand of feed_forward: \"{other}\"")),
        }
    }
}

/// `x` `[..., width]` as `[rows, width]`.
fn rows<T: Real>(x: &ArrayD<T>, width: usize) -> Result<Array2<T>, String> {
    let n = x.len() / width.max(1);
    x.as_standard_layout()
        .into_owned()
        .into_shape_with_order((n, width))
        .map_err(|e| e.to_string())
}

/// A 2-D weight.
fn matrix<T: Real>(w: &ArrayD<T>) -> Result<ArrayView2<'_, T>, String> {
    w.view()
        .into_dimensionality()
        .map_err(|_| format!("weight must be 2-D, found {:?}", w.shape()))
}
