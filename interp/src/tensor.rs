//! The interpreter's numeric traits over [`Tensor`] (the values themselves are
//! `reformc_tensor::Tensor`, shared with the backends and the CLI).

use ndarray::{ArrayD, LinalgScalar, ScalarOperand};
use num_traits::{Float, FromPrimitive, NumAssign, ToPrimitive};
pub use reformc_tensor::{each, Tensor};
use std::fmt::Debug;

/// Floating-point element types the interpreter computes in (f32 and f64).
pub trait Real:
    Float
    + NumAssign
    + FromPrimitive
    + ToPrimitive
    + LinalgScalar
    + ScalarOperand
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Converts from f64 (rounding for f32).
    fn of(x: f64) -> Self {
        Self::from_f64(x).expect("every f64 converts to a float")
    }
}

impl Real for f32 {}
impl Real for f64 {}

/// Access to the float payload of a tensor as `ArrayD<T>`.
pub trait FloatTensor: Real {
    /// Borrows the array if the tensor's dtype is `Self`.
    fn borrow(t: &Tensor) -> Option<&ArrayD<Self>>;
    /// Wraps an array.
    fn wrap(a: ArrayD<Self>) -> Tensor;
}

impl FloatTensor for f32 {
    fn borrow(t: &Tensor) -> Option<&ArrayD<f32>> {
        t.as_f32()
    }
    fn wrap(a: ArrayD<f32>) -> Tensor {
        Tensor::F32(a)
    }
}

impl FloatTensor for f64 {
    fn borrow(t: &Tensor) -> Option<&ArrayD<f64>> {
        t.as_f64()
    }
    fn wrap(a: ArrayD<f64>) -> Tensor {
        Tensor::F64(a)
    }
}
