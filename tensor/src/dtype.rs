//! Element types of tensors and IR values (re-exported as `reformc_ir::DType`).

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor value.
///
/// ```
/// use reformc_tensor::DType;
/// assert_eq!("f32".parse::<DType>().unwrap(), DType::F32);
/// assert_eq!(DType::I64.to_string(), "i64");
/// assert!(DType::F64.is_float());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit IEEE 754 float (`f32`), the usual activation and weight type.
    F32,
    /// 64-bit IEEE 754 float (`f64`).
    F64,
    /// 64-bit signed integer (`i64`): token ids, indices, bucket ids, sizes
    /// and seeds.
    I64,
    /// 32-bit signed integer (`i32`).
    I32,
    /// Boolean (`bool`), one byte per element: comparison results, masks and
    /// `select` conditions.
    Bool,
}

impl DType {
    /// All element types, in a fixed order.
    pub const ALL: [DType; 5] = [DType::F32, DType::F64, DType::I64, DType::I32, DType::Bool];

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// True for the integer types (bool excluded).
    pub fn is_int(self) -> bool {
        matches!(self, DType::I64 | DType::I32)
    }

    /// Size of one element in bytes.
    pub fn size_bytes(self) -> u64 {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::Bool => 1,
        }
    }

    /// The keyword used by the text format.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                format!("unknown dtype `{s}` (expected one of f32, f64, i64, i32, bool)")
            })
    }
}
