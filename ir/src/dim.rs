//! Symbolic dimensions.
//!
//! A dimension is either a constant or a named symbol (`B`, `L`, `P`). Symbols
//! are bound at run time: from the shapes of graph inputs, or by the op that
//! defines a data-dependent length (for example `pad_to_multiple` binds the
//! padded length `P`). Shapes are never encoded in symbol names.

use std::collections::BTreeMap;
use std::fmt;

/// One dimension of a tensor shape.
///
/// ```
/// use reformc_ir::Dim;
/// let d: Dim = "L".parse().unwrap();
/// assert_eq!(d, Dim::sym("L"));
/// assert_eq!(Dim::Const(64).to_string(), "64");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// A dimension known at compile time.
    Const(u64),
    /// A dimension bound at run time, by name.
    Sym(String),
}

/// Values of symbolic dimensions, by name.
pub type DimEnv = BTreeMap<String, u64>;

impl Dim {
    /// A symbolic dimension.
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }

    /// The constant value, if this dimension is known at compile time.
    pub fn as_const(&self) -> Option<u64> {
        match self {
            Dim::Const(c) => Some(*c),
            Dim::Sym(_) => None,
        }
    }

    /// Evaluates the dimension under `env`; `None` when a symbol is unbound.
    ///
    /// ```
    /// use reformc_ir::{Dim, DimEnv};
    /// let mut env = DimEnv::new();
    /// env.insert("L".into(), 128);
    /// assert_eq!(Dim::sym("L").eval(&env), Some(128));
    /// assert_eq!(Dim::sym("B").eval(&env), None);
    /// ```
    pub fn eval(&self, env: &DimEnv) -> Option<u64> {
        match self {
            Dim::Const(c) => Some(*c),
            Dim::Sym(s) => env.get(s).copied(),
        }
    }

    /// True if `name` is a valid symbol: an ASCII letter followed by letters, digits or `_`.
    pub fn is_valid_symbol(name: &str) -> bool {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Const(c) => write!(f, "{c}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

impl std::str::FromStr for Dim {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(c) = s.parse::<u64>() {
            Ok(Dim::Const(c))
        } else if Dim::is_valid_symbol(s) {
            Ok(Dim::Sym(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a dimension (expected an integer or a symbol like `L`)"
            ))
        }
    }
}
