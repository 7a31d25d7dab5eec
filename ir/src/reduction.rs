//! The reductions of `reduce {kind}`: the one definition of their names (the
//! IR's text format) and their ABI codes (the `kind` argument of the runtime's
//! `rc_reduce_f32`).
//!
//! The interpreter, the cost model, the LLVM backend and the runtime kernels
//! all match on this enum, so a new reduction is a compile error in each until
//! it has a formula.

/// A reduction over axes; the discriminant is its ABI code.
///
/// ```
/// use reformc_ir::Reduction;
/// assert_eq!(Reduction::from_name("logsumexp"), Some(Reduction::LogSumExp));
/// assert_eq!(Reduction::LogSumExp.name(), "logsumexp");
/// assert_eq!(Reduction::Mean.code(), 1);
/// assert_eq!(Reduction::from_code(2), Some(Reduction::Max));
/// assert_eq!(Reduction::from_name("prod"), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reduction {
    /// 0: `sum`.
    Sum = 0,
    /// 1: `mean`, the arithmetic mean.
    Mean = 1,
    /// 2: `max` (`-inf` for an empty lane).
    Max = 2,
    /// 3: `logsumexp`, `max + ln Σ exp(x - max)`.
    LogSumExp = 3,
}

impl Reduction {
    /// Every reduction, in code order (`ALL[c]` has code `c`).
    pub const ALL: [Reduction; 4] = [
        Reduction::Sum,
        Reduction::Mean,
        Reduction::Max,
        Reduction::LogSumExp,
    ];

    /// The name in the IR's text format.
    pub const fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "sum",
            Reduction::Mean => "mean",
            Reduction::Max => "max",
            Reduction::LogSumExp => "logsumexp",
        }
    }

    /// The reduction named `name` in the text format.
    pub fn from_name(name: &str) -> Option<Reduction> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The ABI code passed to the runtime's reduction kernel.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The reduction with ABI code `code`.
    pub fn from_code(code: i32) -> Option<Reduction> {
        usize::try_from(code)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// Every name, comma-separated (for error messages).
    ///
    /// ```
    /// assert_eq!(reformc_ir::Reduction::names(), "sum, mean, max, logsumexp");
    /// ```
    pub fn names() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|r| r.name()).collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::Reduction;

    #[test]
    fn names_and_codes_round_trip() {
        for (i, r) in Reduction::ALL.into_iter().enumerate() {
            assert_eq!(r.code(), i as i32);
            assert_eq!(Reduction::from_code(r.code()), Some(r));
            assert_eq!(Reduction::from_name(r.name()), Some(r));
        }
        assert_eq!(Reduction::from_code(-1), None);
        assert_eq!(Reduction::from_code(4), None);
        assert_eq!(Reduction::from_name(""), None);
    }
}
