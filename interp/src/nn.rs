//! Semantics of the dense model ops: embeddings, layer norm, linear, activations.

use crate::tensor::Real;
use ndarray::{s, Array2, ArrayD, ArrayView2, Axis, Dimension, Ix2, IxDyn};
pub use reformc_ir::Activation;

/// Rows of `table` [V, D] selected by `ids` (any shape); result `ids.shape + [D]`.
///
/// ```
/// use ndarray::{arr1, arr2};
/// let table = arr2(&[[1.0f32, 2.0], [3.0, 4.0]]).into_dyn();
/// let out = reformc_interp::nn::embedding(&arr1(&[1i64, 0]).into_dyn(), &table).unwrap();
/// assert_eq!(out.into_raw_vec_and_offset().0, vec![3.0, 4.0, 1.0, 2.0]);
/// ```
pub fn embedding<T: Real>(ids: &ArrayD<i64>, table: &ArrayD<T>) -> Result<ArrayD<T>, String> {
    let table = table
        .view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| "table must be 2-D".to_string())?;
    let (vocab, width) = table.dim();
    let mut shape = ids.shape().to_vec();
    shape.push(width);
    let mut out = Vec::with_capacity(ids.len() * width);
    for (index, &id) in ids.indexed_iter() {
        if id < 0 || id as usize >= vocab {
            return Err(format!(
                "id {id} at {:?} is out of range for a table of {vocab} rows",
                index.slice()
            ));
        }
        out.extend(table.row(id as usize).iter().copied());
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("shape matches"))
}

/// Axial position embedding of positions `pos` `[N]`: `concat(w0[p / n1, 0], w1[0, p % n1])`.
pub fn axial_pos_embedding<T: Real>(
    pos: &ArrayD<i64>,
    w0: &ArrayD<T>,
    w1: &ArrayD<T>,
) -> Result<ArrayD<T>, String> {
    let (n0, d0) = (w0.shape()[0], w0.shape()[2]);
    let (n1, d1) = (w1.shape()[1], w1.shape()[2]);
    let mut out = Vec::with_capacity(pos.len() * (d0 + d1));
    for &p in pos {
        if p < 0 || p as usize >= n0 * n1 {
            return Err(format!(
                "position {p} is outside the axial grid {n0}x{n1} (= {} positions)",
                n0 * n1
            ));
        }
        let p = p as usize;
        out.extend(w0.slice(s![p / n1, 0, ..]).iter().copied());
        out.extend(w1.slice(s![0, p % n1, ..]).iter().copied());
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&[pos.len(), d0 + d1]), out).expect("shape matches"))
}

/// Layer normalisation over the last axis (biased variance, like PyTorch).
pub fn layer_norm<T: Real>(x: &ArrayD<T>, w: &ArrayD<T>, b: &ArrayD<T>, eps: f64) -> ArrayD<T> {
    let width = *x.shape().last().expect("rank >= 1");
    let mut out = x.as_standard_layout().into_owned();
    let n = T::of(width as f64);
    let eps = T::of(eps);
    for mut row in out
        .as_slice_mut()
        .expect("standard layout")
        .chunks_mut(width)
    {
        let mean = row.iter().fold(T::zero(), |a, &v| a + v) / n;
        let var = row
            .iter()
            .fold(T::zero(), |a, &v| a + (v - mean) * (v - mean))
            / n;
        let inv = T::one() / (var + eps).sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            *v = (*v - mean) * inv * w[[i]] + b[[i]];
        }
        let _ = &mut row;
    }
    out
}

/// The gradient of `sum(dy * layer_norm(x, w, b))` with respect to `x`
/// (`wrt_x`) or `w` (`layer_norm_grad`), each row's statistics computed as
/// [`layer_norm`] computes them; `w`'s gradient sums rows in order.
///
/// ```
/// use ndarray::{arr1, arr2};
/// use reformc_interp::nn::layer_norm_grad;
/// let x = arr2(&[[1.0f64, 3.0]]).into_dyn();
/// let w = arr1(&[1.0f64, 1.0]).into_dyn();
/// let dy = arr2(&[[1.0f64, 1.0]]).into_dyn();
/// // A constant dy sums to a constant output change: no gradient for x.
/// let dx = layer_norm_grad(&x, &w, &dy, 0.0, true);
/// assert!(dx.iter().all(|v| v.abs() < 1e-12));
/// // x̂ = [-1, 1], so dw = dy x̂ = [-1, 1].
/// let dw = layer_norm_grad(&x, &w, &dy, 0.0, false);
/// assert_eq!(dw.as_slice().unwrap(), &[-1.0, 1.0]);
/// ```
pub fn layer_norm_grad<T: Real>(
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    dy: &ArrayD<T>,
    eps: f64,
    wrt_x: bool,
) -> ArrayD<T> {
    let width = *x.shape().last().expect("rank >= 1");
    let n = T::of(width as f64);
    let eps = T::of(eps);
    let xs = x.as_standard_layout();
    let dys = dy.as_standard_layout();
    let mut dx = ArrayD::<T>::zeros(x.shape());
    let mut dw = ArrayD::<T>::zeros(w.shape());
    let rows = xs
        .as_slice()
        .expect("standard layout")
        .chunks(width.max(1))
        .zip(
            dys.as_slice()
                .expect("standard layout")
                .chunks(width.max(1)),
        );
    let dxs = dx.as_slice_mut().expect("standard layout");
    for (r, (xr, dyr)) in rows.enumerate() {
        let mean = xr.iter().fold(T::zero(), |a, &v| a + v) / n;
        let var = xr
            .iter()
            .fold(T::zero(), |a, &v| a + (v - mean) * (v - mean))
            / n;
        let inv = T::one() / (var + eps).sqrt();
        if !wrt_x {
            for (i, (&v, &d)) in xr.iter().zip(dyr).enumerate() {
                dw[[i]] += d * ((v - mean) * inv);
            }
            continue;
        }
        let (mut sg, mut sgx) = (T::zero(), T::zero());
        for (i, (&v, &d)) in xr.iter().zip(dyr).enumerate() {
            let g = d * w[[i]];
            sg += g;
            sgx += g * ((v - mean) * inv);
        }
        let (mg, mgx) = (sg / n, sgx / n);
        for (i, (&v, &d)) in xr.iter().zip(dyr).enumerate() {
            let xh = (v - mean) * inv;
            dxs[r * width + i] = inv * (d * w[[i]] - mg - xh * mgx);
        }
    }
    if wrt_x {
        dx
    } else {
        dw
    }
}

/// `x` [..., in] times `w`ᵀ ([out, in]) plus an optional bias, then an optional activation.
pub fn linear<T: Real>(
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    b: Option<&ArrayD<T>>,
    activation: Activation,
) -> Result<ArrayD<T>, String> {
    let shape = x.shape().to_vec();
    let k = *shape.last().expect("rank >= 1");
    let rows = x.len() / k.max(1);
    let x2 = x.as_standard_layout();
    let x2: ArrayView2<T> = x2
        .view()
        .into_shape_with_order((rows, k))
        .map_err(|e| e.to_string())?;
    let w2 = w
        .view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| "weight must be 2-D".to_string())?;
    let mut y: Array2<T> = x2.dot(&w2.t());
    if let Some(b) = b {
        y += &b
            .view()
            .into_dimensionality::<ndarray::Ix1>()
            .map_err(|_| "bias must be 1-D".to_string())?;
    }
    if activation != Activation::None {
        y.mapv_inplace(|v| activate(activation, v));
    }
    let mut out_shape = shape;
    *out_shape.last_mut().expect("rank >= 1") = w2.dim().0;
    Ok(y.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&out_shape))
        .expect("rows * out elements"))
}

/// One activation function (relu, relu6, leaky_relu and tanh in `T`, the
/// others computed in f64 and rounded).
///
/// ```
/// use reformc_interp::nn::{activate, Activation};
/// assert_eq!(activate(Activation::Relu, -1.0f64), 0.0);
/// assert!((activate(Activation::Gelu, 1.0f64) - 0.8413447460685429).abs() < 1e-12);
/// ```
pub fn activate<T: Real>(f: Activation, x: T) -> T {
    let xf = x.to_f64().expect("float");
    let y = match f {
        Activation::None => return x,
        Activation::Relu => return if x > T::zero() { x } else { T::zero() },
        Activation::Gelu => 0.5 * xf * (1.0 + libm::erf(xf / std::f64::consts::SQRT_2)),
        Activation::GeluNew => {
            0.5 * xf
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (xf + 0.044715 * xf.powi(3))).tanh())
        }
        Activation::GeluFast => {
            0.5 * xf * (1.0 + (xf * 0.797_884_560_8 * (1.0 + 0.044715 * xf * xf)).tanh())
        }
        Activation::Silu => xf / (1.0 + (-xf).exp()),
        Activation::Tanh => return x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-xf).exp()),
        Activation::Mish => xf * softplus(xf).tanh(),
        // Clamps stay in `T`, as PyTorch's hardtanh does.
        Activation::Relu6 => {
            let top = T::of(Activation::RELU6_MAX);
            return if x > top {
                top
            } else if x > T::zero() {
                x
            } else {
                T::zero()
            };
        }
        Activation::QuickGelu => xf / (1.0 + (-Activation::QUICK_GELU_SCALE * xf).exp()),
        // PyTorch multiplies in the element type by the slope rounded to it.
        Activation::LeakyRelu => {
            return if x > T::zero() {
                x
            } else {
                x * T::of(Activation::LEAKY_RELU_SLOPE)
            }
        }
    };
    T::of(y)
}

/// `ln(1 + e^x)` without overflow: `max(x, 0) + ln(1 + e^-|x|)`.
///
/// ```
/// assert_eq!(reformc_interp::nn::softplus(0.0), std::f64::consts::LN_2);
/// assert_eq!(reformc_interp::nn::softplus(1000.0), 1000.0);
/// ```
pub fn softplus(x: f64) -> f64 {
    Activation::softplus(x)
}

/// The derivative `act'(x)` of one activation function, computed in f64 and
/// rounded like [`activate`]. At the kinks it takes PyTorch autograd's value
/// (`relu'(0) = 0`, `relu6'` is 0 at 0 and at 6, `leaky_relu'(0)` is the
/// slope); `gelu` is differentiated in its erf form, `gelu_new`
/// and `gelu_fast` in their tanh forms, the identity has derivative 1.
///
/// ```
/// use reformc_interp::nn::{activate_grad, Activation};
/// assert_eq!(activate_grad(Activation::Relu, 0.0f64), 0.0);
/// assert_eq!(activate_grad(Activation::Relu, 2.0f64), 1.0);
/// assert_eq!(activate_grad(Activation::Sigmoid, 0.0f64), 0.25);
/// // gelu'(0) = Φ(0) = 1/2.
/// assert_eq!(activate_grad(Activation::Gelu, 0.0f64), 0.5);
/// ```
pub fn activate_grad<T: Real>(f: Activation, x: T) -> T {
    T::of(f.derivative(x.to_f64().expect("float")))
}

/// Splits the last axis of `x` into halves.
pub fn split_halves<T: Real>(x: &ArrayD<T>) -> (ArrayD<T>, ArrayD<T>) {
    let last = Axis(x.ndim() - 1);
    let half = x.len_of(last) / 2;
    let a = x.slice_axis(last, (..half).into()).to_owned();
    let b = x.slice_axis(last, (half..).into()).to_owned();
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ndarray's dot may return a column-major product (e.g. for a 1-wide
    /// contraction); the result must still reshape.
    #[test]
    fn linear_with_one_input_feature() {
        let x = ArrayD::from_shape_vec(IxDyn(&[3, 1]), vec![1.0f64, 2.0, 3.0]).unwrap();
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![10.0f64, 100.0]).unwrap();
        let y = linear(&x, &w, None, Activation::None).unwrap();
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(
            y.iter().copied().collect::<Vec<_>>(),
            vec![10.0, 100.0, 20.0, 200.0, 30.0, 300.0]
        );
    }
}
