//! Op attributes: a small, printable, hashable value language.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};

/// One attribute value.
///
/// Floats compare and hash by bit pattern so that ops can be keys of hash maps
/// (and e-graph nodes) without surprises.
///
/// ```
/// use reformc_ir::Attr;
/// assert_eq!(Attr::Ints(vec![2, 4]).to_string(), "[2,4]");
/// assert_eq!(Attr::Float(1e-12).to_string(), "1e-12");
/// assert_eq!(Attr::Str("a\"b".into()).to_string(), "\"a\\\"b\"");
/// ```
#[derive(Clone, Debug)]
pub enum Attr {
    /// A present flag, printed as its bare name (`causal`).
    Unit,
    /// A signed integer, printed in decimal (`axis=2`).
    Int(i64),
    /// A float, printed in Rust's shortest round-tripping form, always with a
    /// `.`, an exponent, `inf` or `NaN` so that it parses back as a float.
    Float(f64),
    /// A string, printed double-quoted with `\"`, `\\` and `\n` escapes.
    Str(String),
    /// A list of integers, printed `[2,4]` (`[]` when empty).
    Ints(Vec<i64>),
}

impl PartialEq for Attr {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Attr::Unit, Attr::Unit) => true,
            (Attr::Int(a), Attr::Int(b)) => a == b,
            (Attr::Float(a), Attr::Float(b)) => a.to_bits() == b.to_bits(),
            (Attr::Str(a), Attr::Str(b)) => a == b,
            (Attr::Ints(a), Attr::Ints(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Attr {}

impl Hash for Attr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Attr::Unit => {}
            Attr::Int(v) => v.hash(state),
            Attr::Float(v) => v.to_bits().hash(state),
            Attr::Str(v) => v.hash(state),
            Attr::Ints(v) => v.hash(state),
        }
    }
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Unit => Ok(()),
            Attr::Int(v) => write!(f, "{v}"),
            // `{:?}` is Rust's shortest representation that parses back to the same bits.
            Attr::Float(v) => write!(f, "{v:?}"),
            Attr::Str(s) => write_quoted(f, s),
            Attr::Ints(v) => {
                f.write_str("[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Writes `s` as a double-quoted string with `\"`, `\\` and `\n` escapes.
pub(crate) fn write_quoted(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// The attributes of one op, sorted by name so that printing is deterministic.
pub type Attrs = BTreeMap<String, Attr>;
