//! Runtime values of the interpreter: dynamically typed n-d arrays.

use ndarray::{ArrayD, IxDyn, LinalgScalar, ScalarOperand};
use num_traits::{Float, FromPrimitive, NumAssign, ToPrimitive};
use reformc_ir::DType;
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

/// One runtime tensor of any IR dtype.
///
/// ```
/// use reformc_interp::Tensor;
/// use ndarray::{ArrayD, IxDyn};
/// let t = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![1, 2]).unwrap());
/// assert_eq!(t.dtype(), reformc_ir::DType::I64);
/// assert_eq!(t.shape(), &[2]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    /// A tensor of IR dtype `f32`.
    F32(ArrayD<f32>),
    /// A tensor of IR dtype `f64`.
    F64(ArrayD<f64>),
    /// A tensor of IR dtype `i64`.
    I64(ArrayD<i64>),
    /// A tensor of IR dtype `i32`.
    I32(ArrayD<i32>),
    /// A tensor of IR dtype `bool`.
    Bool(ArrayD<bool>),
}

macro_rules! each {
    ($t:expr, $a:ident => $e:expr) => {
        match $t {
            Tensor::F32($a) => $e,
            Tensor::F64($a) => $e,
            Tensor::I64($a) => $e,
            Tensor::I32($a) => $e,
            Tensor::Bool($a) => $e,
        }
    };
}
pub(crate) use each;

impl Tensor {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::F32,
            Tensor::F64(_) => DType::F64,
            Tensor::I64(_) => DType::I64,
            Tensor::I32(_) => DType::I32,
            Tensor::Bool(_) => DType::Bool,
        }
    }

    /// The concrete shape.
    pub fn shape(&self) -> &[usize] {
        each!(self, a => a.shape())
    }

    /// A zero-filled tensor.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        let s = IxDyn(shape);
        match dtype {
            DType::F32 => Tensor::F32(ArrayD::zeros(s)),
            DType::F64 => Tensor::F64(ArrayD::zeros(s)),
            DType::I64 => Tensor::I64(ArrayD::zeros(s)),
            DType::I32 => Tensor::I32(ArrayD::zeros(s)),
            DType::Bool => Tensor::Bool(ArrayD::from_elem(s, false)),
        }
    }

    /// Every element as f64 (bool as 0/1).
    pub fn to_f64(&self) -> ArrayD<f64> {
        match self {
            Tensor::F32(a) => a.mapv(f64::from),
            Tensor::F64(a) => a.clone(),
            Tensor::I64(a) => a.mapv(|x| x as f64),
            Tensor::I32(a) => a.mapv(f64::from),
            Tensor::Bool(a) => a.mapv(|x| if x { 1.0 } else { 0.0 }),
        }
    }

    /// Every element as i64 (floats truncated toward zero, bool as 0/1).
    pub fn to_i64(&self) -> ArrayD<i64> {
        match self {
            Tensor::F32(a) => a.mapv(|x| x as i64),
            Tensor::F64(a) => a.mapv(|x| x as i64),
            Tensor::I64(a) => a.clone(),
            Tensor::I32(a) => a.mapv(i64::from),
            Tensor::Bool(a) => a.mapv(i64::from),
        }
    }

    /// Converts to another dtype (numpy `astype` semantics; nonzero is true).
    pub fn cast(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        match dtype {
            DType::F32 => Tensor::F32(match self {
                Tensor::F64(a) => a.mapv(|x| x as f32),
                other => other.to_f64().mapv(|x| x as f32),
            }),
            DType::F64 => Tensor::F64(self.to_f64()),
            DType::I64 => Tensor::I64(self.to_i64()),
            DType::I32 => Tensor::I32(self.to_i64().mapv(|x| x as i32)),
            DType::Bool => Tensor::Bool(self.to_f64().mapv(|x| x != 0.0)),
        }
    }

    /// The f32 array, if this is one.
    pub fn as_f32(&self) -> Option<&ArrayD<f32>> {
        match self {
            Tensor::F32(a) => Some(a),
            _ => None,
        }
    }

    /// The f64 array, if this is one.
    pub fn as_f64(&self) -> Option<&ArrayD<f64>> {
        match self {
            Tensor::F64(a) => Some(a),
            _ => None,
        }
    }
}

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
