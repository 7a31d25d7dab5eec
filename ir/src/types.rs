//! Tensor types: a dtype and a shape of symbolic dimensions.

use crate::{DType, Dim, DimEnv};
use std::fmt;

/// The type of an IR value, printed `f32[B,L,256]` (a scalar is `i64[]`).
///
/// ```
/// use reformc_ir::{DType, Dim, TensorType};
/// let t = TensorType::new(DType::F32, vec![Dim::sym("B"), Dim::sym("L"), Dim::Const(256)]);
/// assert_eq!(t.to_string(), "f32[B,L,256]");
/// assert_eq!(t.rank(), 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// The element type.
    pub dtype: DType,
    /// The dimensions, outermost first; empty for a scalar.
    pub shape: Vec<Dim>,
}

impl TensorType {
    /// A tensor type from its parts.
    pub fn new(dtype: DType, shape: Vec<Dim>) -> Self {
        TensorType { dtype, shape }
    }

    /// A rank-0 tensor.
    pub fn scalar(dtype: DType) -> Self {
        TensorType {
            dtype,
            shape: vec![],
        }
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The same shape with another dtype.
    pub fn with_dtype(&self, dtype: DType) -> Self {
        TensorType {
            dtype,
            shape: self.shape.clone(),
        }
    }

    /// Concrete shape under `env`, if every symbol is bound.
    pub fn eval_shape(&self, env: &DimEnv) -> Option<Vec<u64>> {
        self.shape.iter().map(|d| d.eval(env)).collect()
    }

    /// Number of elements under `env`.
    pub fn num_elements(&self, env: &DimEnv) -> Option<u64> {
        self.eval_shape(env).map(|s| s.iter().product())
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}
