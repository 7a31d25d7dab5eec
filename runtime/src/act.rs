//! Activation functions of `rc_linear_f32`'s epilogue (codes of runtime/ABI.md).

use crate::error::{invalid, Result};

/// The activation enum, names and ABI codes: the one definition, the IR's
/// (`reformc_ir::Activation`); the kernels add their formulas through [`Apply`].
pub use reformc_ir::Activation;

/// The activation with ABI code `code`, or the runtime's error.
///
/// ```
/// use reformc_runtime::{act::from_code, Activation};
/// assert_eq!(from_code(2).unwrap(), Activation::Gelu);
/// assert!(from_code(12).is_err());
/// ```
pub fn from_code(code: i32) -> Result<Activation> {
    Activation::from_code(code).ok_or_else(|| {
        invalid(format!(
            "unknown activation code {code} (0..={})",
            Activation::ALL.len() - 1
        ))
    })
}

/// The kernels' formulas for an [`Activation`]: a trait because the enum is
/// the IR's, and the formulas (f32 kernels, SIMD forms) belong to the runtime.
pub trait Apply {
    /// Applies the activation to one value, with the interpreter's formulas
    /// (computed in f64 and rounded, except relu, relu6, leaky_relu and tanh
    /// which stay in f32).
    fn apply(self, x: f32) -> f32;
    /// Applies the activation in place to every element of `xs`: vectorized
    /// f32 forms, within 2e-6 relative of [`Apply::apply`] (relu exactly).
    fn apply_slice(self, xs: &mut [f32]);
}

impl Apply for Activation {
    /// Applies the activation to one value, with the interpreter's formulas
    /// (computed in f64 and rounded, except relu, relu6, leaky_relu and tanh
    /// which stay in f32).
    ///
    /// ```
    /// use reformc_runtime::{act::Apply, Activation};
    /// assert_eq!(Activation::Relu.apply(-2.0), 0.0);
    /// assert!((Activation::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-6);
    /// ```
    #[inline]
    fn apply(self, x: f32) -> f32 {
        let xf = f64::from(x);
        let y = match self {
            Activation::None => return x,
            Activation::Relu => return if x > 0.0 { x } else { 0.0 },
            Activation::Tanh => return x.tanh(),
            Activation::Gelu => 0.5 * xf * (1.0 + libm::erf(xf / std::f64::consts::SQRT_2)),
            Activation::GeluNew => {
                0.5 * xf
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (xf + 0.044715 * xf.powi(3)))
                            .tanh())
            }
            Activation::GeluFast => {
                0.5 * xf * (1.0 + (xf * 0.797_884_560_8 * (1.0 + 0.044715 * xf * xf)).tanh())
            }
            Activation::Silu => xf / (1.0 + (-xf).exp()),
            Activation::Sigmoid => 1.0 / (1.0 + (-xf).exp()),
            Activation::Mish => {
                let sp = xf.max(0.0) + (-xf.abs()).exp().ln_1p();
                xf * sp.tanh()
            }
            Activation::Relu6 => return relu6(x),
            Activation::QuickGelu => xf / (1.0 + (-Activation::QUICK_GELU_SCALE * xf).exp()),
            Activation::LeakyRelu => return leaky_relu(x),
        };
        y as f32
    }

    fn apply_slice(self, xs: &mut [f32]) {
        match self {
            Activation::None => {}
            Activation::Relu => xs
                .iter_mut()
                .for_each(|x| *x = if *x > 0.0 { *x } else { 0.0 }),
            Activation::Gelu => crate::simd::gelu(xs),
            Activation::GeluNew => crate::simd::gelu_new(xs),
            Activation::GeluFast => crate::simd::gelu_fast(xs),
            Activation::Silu => crate::simd::silu(xs),
            Activation::Sigmoid => crate::simd::sigmoid(xs),
            Activation::Tanh => crate::simd::tanh(xs),
            Activation::Mish => crate::simd::mish(xs),
            Activation::Relu6 => xs.iter_mut().for_each(|x| *x = relu6(*x)),
            Activation::QuickGelu => crate::simd::quick_gelu(xs),
            Activation::LeakyRelu => xs.iter_mut().for_each(|x| *x = leaky_relu(*x)),
        }
    }
}

/// `relu6` in f32, exactly the interpreter's (a NaN gives 0, as `relu`).
#[inline]
fn relu6(x: f32) -> f32 {
    let top = Activation::RELU6_MAX as f32;
    if x > top {
        top
    } else if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// `leaky_relu` in f32: PyTorch multiplies by the slope rounded to f32.
#[inline]
fn leaky_relu(x: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        x * Activation::LEAKY_RELU_SLOPE as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interpreter's (reformc_ir's) activation of the same code.
    pub(crate) fn ir_twin(a: Activation) -> reformc_ir::Activation {
        reformc_ir::Activation::from_code(a.code()).expect("one definition")
    }

    #[test]
    fn codes_round_trip() {
        for (i, a) in Activation::ALL.iter().enumerate() {
            assert_eq!(*a as i32, i as i32);
            assert_eq!(from_code(i as i32).unwrap(), *a);
            assert_eq!(ir_twin(*a).name(), a.name());
        }
        assert!(from_code(-1).is_err());
    }

    #[test]
    fn matches_the_interpreter() {
        for a in Activation::ALL {
            for i in -40..40 {
                let x = i as f32 * 0.173;
                let want = reformc_interp::nn::activate(ir_twin(a), x);
                assert_eq!(a.apply(x).to_bits(), want.to_bits(), "{a:?}({x})");
            }
        }
    }
}
