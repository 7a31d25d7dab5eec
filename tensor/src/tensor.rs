//! Runtime values: dynamically typed n-d arrays, as the interpreter computes
//! them, the JIT returns them and the CLI reads and writes them.

use crate::DType;
use ndarray::{ArrayD, IxDyn};

/// One runtime tensor of any element type.
///
/// ```
/// use reformc_tensor::{DType, Tensor};
/// use ndarray::{ArrayD, IxDyn};
/// let t = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![1, 2]).unwrap());
/// assert_eq!(t.dtype(), DType::I64);
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

/// Evaluates one expression on the array of any [`Tensor`] variant, bound to
/// a name: `each!(t, a => a.shape())`. The expression is compiled once per
/// element type, so it may be generic over the element.
///
/// ```
/// use reformc_tensor::{each, DType, Tensor};
/// let t = Tensor::zeros(DType::I32, &[2, 3]);
/// assert_eq!(each!(&t, a => a.len()), 6);
/// ```
#[macro_export]
macro_rules! each {
    ($t:expr, $a:ident => $e:expr) => {
        match $t {
            $crate::Tensor::F32($a) => $e,
            $crate::Tensor::F64($a) => $e,
            $crate::Tensor::I64($a) => $e,
            $crate::Tensor::I32($a) => $e,
            $crate::Tensor::Bool($a) => $e,
        }
    };
}

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

impl From<ArrayD<f32>> for Tensor {
    fn from(a: ArrayD<f32>) -> Tensor {
        Tensor::F32(a)
    }
}
impl From<ArrayD<f64>> for Tensor {
    fn from(a: ArrayD<f64>) -> Tensor {
        Tensor::F64(a)
    }
}
impl From<ArrayD<i64>> for Tensor {
    fn from(a: ArrayD<i64>) -> Tensor {
        Tensor::I64(a)
    }
}
impl From<ArrayD<i32>> for Tensor {
    fn from(a: ArrayD<i32>) -> Tensor {
        Tensor::I32(a)
    }
}
impl From<ArrayD<bool>> for Tensor {
    fn from(a: ArrayD<bool>) -> Tensor {
        Tensor::Bool(a)
    }
}
