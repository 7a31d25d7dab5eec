//! Generic tensor ops along one axis, for IR graphs that use them directly
//! (the Reformer lowering does not; hand-written and future training graphs
//! do): softmax, reductions, argmax, stable argsort, `take_along_axis` and a
//! plain matrix product. A tensor is viewed as `[outer, n, inner]` around the
//! axis; each lane (fixed outer and inner index) is processed on its own,
//! with the interpreter's arithmetic (`interp/src/tensor_ops.rs`).

use crate::error::{invalid, Error, Result};
use crate::gemm::{check_len, gemm_rows, gemm_rows_lda, kernel, Epilogue, PackedB};
use crate::pool::{par_for, SharedMut};

/// A reduction of `reduce {kind}`: the IR's enum, whose discriminants are
/// the ABI codes (0 sum, 1 mean, 2 max, 3 logsumexp).
pub use reformc_ir::Reduction;

/// The reduction with ABI code `code`, or the runtime's error.
///
/// ```
/// use reformc_runtime::tensor_ops::{reduction_of_code, Reduction};
/// assert_eq!(reduction_of_code(3).unwrap(), Reduction::LogSumExp);
/// assert!(reduction_of_code(4).is_err());
/// ```
pub fn reduction_of_code(code: i32) -> Result<Reduction> {
    Reduction::from_code(code).ok_or_else(|| {
        invalid(format!(
            "unknown reduce kind {code} (0..={})",
            Reduction::ALL.len() - 1
        ))
    })
}

/// Lanes of an `[outer, n, inner]` view: `f(lane index, element offsets)`.
fn lanes(
    outer: usize,
    n: usize,
    inner: usize,
    f: impl Fn(usize, &dyn Fn(usize) -> usize) + Sync,
) -> Result<()> {
    let total = outer * inner;
    // About 16K elements per task.
    let per = (16384 / n.max(1)).max(1);
    par_for(total.div_ceil(per), |t| {
        for lane in t * per..((t + 1) * per).min(total) {
            let (o, i) = (lane / inner, lane % inner);
            let base = o * n * inner + i;
            f(lane, &|j| base + j * inner);
        }
    })
}

fn check(len: usize, outer: usize, n: usize, inner: usize, name: &str) -> Result<()> {
    check_len(
        name,
        len,
        outer.checked_mul(n).and_then(|x| x.checked_mul(inner)),
    )
}

/// Softmax of every lane along the axis (`rc_softmax_f32`).
///
/// ```
/// let mut y = [0.0f32; 4];
/// reformc_runtime::tensor_ops::softmax(&[0.0, 0.0, 1.0, 1.0], 2, 2, 1, &mut y).unwrap();
/// assert_eq!(y, [0.5; 4]);
/// ```
pub fn softmax(x: &[f32], outer: usize, n: usize, inner: usize, y: &mut [f32]) -> Result<()> {
    check(x.len(), outer, n, inner, "x")?;
    check(y.len(), outer, n, inner, "y")?;
    let out = SharedMut::new(y);
    lanes(outer, n, inner, |_, at| {
        let m = (0..n).fold(f32::NEG_INFINITY, |m, j| m.max(x[at(j)]));
        let mut s = 0.0f32;
        for j in 0..n {
            let e = (x[at(j)] - m).exp();
            // SAFETY: element at(j) belongs to this lane only.
            unsafe { out.slice(at(j), 1)[0] = e };
            s += e;
        }
        for j in 0..n {
            // SAFETY: as above.
            unsafe { out.slice(at(j), 1)[0] /= s };
        }
    })
}

/// One reduction per lane into `y[outer, inner]` (`rc_reduce_f32`).
///
/// ```
/// use reformc_runtime::tensor_ops::{reduce, Reduction};
/// let mut y = [0.0f32; 2];
/// reduce(&[1.0, 2.0, 3.0, 4.0], 1, 2, 2, Reduction::Sum, &mut y).unwrap();
/// assert_eq!(y, [4.0, 6.0]);
/// ```
pub fn reduce(
    x: &[f32],
    outer: usize,
    n: usize,
    inner: usize,
    kind: Reduction,
    y: &mut [f32],
) -> Result<()> {
    check(x.len(), outer, n, inner, "x")?;
    check(y.len(), outer, 1, inner, "y")?;
    if kind == Reduction::Mean && n == 0 {
        return Err(invalid("mean over an empty axis".to_string()));
    }
    let out = SharedMut::new(y);
    lanes(outer, n, inner, |lane, at| {
        let max = || (0..n).fold(f32::NEG_INFINITY, |m, j| m.max(x[at(j)]));
        let sum = || (0..n).fold(0.0f32, |s, j| s + x[at(j)]);
        let r = match kind {
            Reduction::Sum => sum(),
            Reduction::Mean => sum() / n as f32,
            Reduction::Max => max(),
            Reduction::LogSumExp => {
                let m = max();
                m + (0..n).fold(0.0f32, |s, j| s + (x[at(j)] - m).exp()).ln()
            }
        };
        // SAFETY: output element `lane` belongs to this lane only.
        unsafe { out.slice(lane, 1)[0] = r };
    })
}

/// An element type argmax and argsort order: f32 by IEEE total order (NaNs
/// last), integers by value; the interpreter compares in f64, which orders
/// every index-sized integer the same way.
pub trait SortKey: Copy + Send + Sync {
    /// Total order used by argsort.
    fn order(&self, other: &Self) -> std::cmp::Ordering;
    /// Whether `self` replaces `best`, the running maximum of argmax (None
    /// before the lane's first element).
    fn beats(&self, best: Option<&Self>) -> bool;
}

impl SortKey for f32 {
    fn order(&self, other: &Self) -> std::cmp::Ordering {
        self.total_cmp(other)
    }
    fn beats(&self, best: Option<&Self>) -> bool {
        match best {
            // A NaN first element wins, as in the interpreter.
            None => true,
            Some(b) => *self > *b,
        }
    }
}

impl SortKey for i64 {
    fn order(&self, other: &Self) -> std::cmp::Ordering {
        self.cmp(other)
    }
    fn beats(&self, best: Option<&Self>) -> bool {
        best.is_none_or(|b| self > b)
    }
}

/// Index of the first maximum of each lane into `y[outer, inner]`
/// (`rc_arg_f32` / `rc_arg_i64`; a NaN first element wins, as in the interpreter).
///
/// ```
/// let mut y = [0i64; 1];
/// reformc_runtime::tensor_ops::argmax(&[1.0f32, 3.0, 3.0], 1, 3, 1, &mut y).unwrap();
/// assert_eq!(y, [1]);
/// reformc_runtime::tensor_ops::argmax(&[5i64, -2, 7, 7], 1, 4, 1, &mut y).unwrap();
/// assert_eq!(y, [2]);
/// ```
pub fn argmax<T: SortKey>(
    x: &[T],
    outer: usize,
    n: usize,
    inner: usize,
    y: &mut [i64],
) -> Result<()> {
    check(x.len(), outer, n, inner, "x")?;
    check(y.len(), outer, 1, inner, "y")?;
    let out = SharedMut::new(y);
    lanes(outer, n, inner, |lane, at| {
        let mut best: Option<(usize, T)> = None;
        for j in 0..n {
            let e = x[at(j)];
            if e.beats(best.as_ref().map(|b| &b.1)) {
                best = Some((j, e));
            }
        }
        let arg = best.map_or(0, |b| b.0) as i64;
        // SAFETY: output element `lane` belongs to this lane only.
        unsafe { out.slice(lane, 1)[0] = arg };
    })
}

/// Stable ascending sort permutation of each lane (`rc_arg_f32` /
/// `rc_arg_i64`; f32 in total order, so NaNs sort last and -0 before +0).
///
/// ```
/// let mut y = [0i64; 3];
/// reformc_runtime::tensor_ops::argsort(&[2.0f32, 1.0, 2.0], 1, 3, 1, &mut y).unwrap();
/// assert_eq!(y, [1, 0, 2]);
/// reformc_runtime::tensor_ops::argsort(&[4i64, -1, 4], 1, 3, 1, &mut y).unwrap();
/// assert_eq!(y, [1, 0, 2]);
/// ```
pub fn argsort<T: SortKey>(
    x: &[T],
    outer: usize,
    n: usize,
    inner: usize,
    y: &mut [i64],
) -> Result<()> {
    check(x.len(), outer, n, inner, "x")?;
    check(y.len(), outer, n, inner, "y")?;
    let out = SharedMut::new(y);
    lanes(outer, n, inner, |_, at| {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| x[at(a)].order(&x[at(b)]));
        for (j, i) in idx.into_iter().enumerate() {
            // SAFETY: element at(j) belongs to this lane only.
            unsafe { out.slice(at(j), 1)[0] = i as i64 };
        }
    })
}

/// `y[o, j, i] = x[o, idx[o, j, i], i]` for `j < m` (`take_along_axis`;
/// `rc_gather`) on elements of `elem` bytes. An index outside `[0, n)` is
/// [`Error::OutOfRange`] and nothing is written.
///
/// ```
/// let x: Vec<u8> = [10.0f32, 20.0, 30.0].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let mut y = [0u8; 8];
/// reformc_runtime::tensor_ops::gather(&x, 4, 1, 3, 1, &[2, 0], 2, &mut y).unwrap();
/// assert_eq!(y[..4], 30.0f32.to_le_bytes());
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gather(
    x: &[u8],
    elem: usize,
    outer: usize,
    n: usize,
    inner: usize,
    idx: &[i64],
    m: usize,
    y: &mut [u8],
) -> Result<()> {
    let count = |k: usize| outer.checked_mul(k).and_then(|v| v.checked_mul(inner));
    check_len("x", x.len(), count(n).and_then(|v| v.checked_mul(elem)))?;
    check_len("idx", idx.len(), count(m))?;
    check_len("y", y.len(), count(m).and_then(|v| v.checked_mul(elem)))?;
    if let Some(bad) = idx.iter().find(|&&i| i < 0 || i as usize >= n) {
        return Err(Error::OutOfRange(format!(
            "gather index {bad} is out of range for an axis of length {n}"
        )));
    }
    for (t, &i) in idx.iter().enumerate() {
        let (o, rest) = (t / (m * inner), t % (m * inner));
        let src = (o * n + i as usize) * inner + rest % inner;
        y[t * elem..(t + 1) * elem].copy_from_slice(&x[src * elem..(src + 1) * elem]);
    }
    Ok(())
}

/// `y[m, n] = a[m, k] · b[k, n]` (`rc_matmul_f32`), all row-major.
///
/// ```
/// let mut y = [0.0f32; 1];
/// reformc_runtime::tensor_ops::matmul(&[1.0, 2.0], &[3.0, 4.0], 1, 2, 1, &mut y).unwrap();
/// assert_eq!(y, [11.0]);
/// ```
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, y: &mut [f32]) -> Result<()> {
    check_len("a", a.len(), m.checked_mul(k))?;
    check_len("b", b.len(), k.checked_mul(n))?;
    check_len("y", y.len(), m.checked_mul(n))?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        y.iter_mut().for_each(|v| *v = 0.0);
        return Ok(());
    }
    let kern = kernel();
    if k <= 2 * MATMUL_KC {
        let packed = PackedB::from_kn(b, k, n, n, kern.nr)?;
        return gemm_rows(kern, m, a, &packed, y, Epilogue::STORE);
    }
    // A long sum (a weight gradient sums over every position) in blocks of
    // MATMUL_KC: each block's packed B stays in cache while every row of A
    // passes over it, instead of all of B streaming from memory per row tile.
    for (i, k0) in (0..k).step_by(MATMUL_KC).enumerate() {
        let kc = MATMUL_KC.min(k - k0);
        let packed = PackedB::from_kn(&b[k0 * n..(k0 + kc) * n], kc, n, n, kern.nr)?;
        let epi = match i {
            0 => Epilogue::STORE,
            _ => Epilogue::ACCUMULATE,
        };
        gemm_rows_lda(kern, m, &a[k0..], k, &packed, y, epi)?;
    }
    Ok(())
}

/// The block of the summed dimension in [`matmul`] when it is long: 256
/// rows of a B 512 wide are 512 KiB packed.
const MATMUL_KC: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_sum_in_blocks_matches_the_plain_product() {
        // k spans three blocks (the last one partial), m and n not multiples of a tile.
        let (m, k, n) = (13, 2 * MATMUL_KC + 77, 21);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 23) as f32 - 11.0) / 8.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 19) as f32 - 9.0) / 4.0).collect();
        let mut y = vec![0.0f32; m * n];
        matmul(&a, &b, m, k, n, &mut y).unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|t| f64::from(a[i * k + t]) * f64::from(b[t * n + j]))
                    .sum();
                let got = f64::from(y[i * n + j]);
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "[{i},{j}] {got} vs {want}");
            }
        }
    }

    #[test]
    fn reductions_along_a_middle_axis() {
        // x[2, 3, 2]
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut y = [0.0f32; 4];
        reduce(&x, 2, 3, 2, Reduction::Max, &mut y).unwrap();
        assert_eq!(y, [4.0, 5.0, 10.0, 11.0]);
        reduce(&x, 2, 3, 2, Reduction::Mean, &mut y).unwrap();
        assert_eq!(y, [2.0, 3.0, 8.0, 9.0]);
        reduce(&x, 2, 3, 2, Reduction::LogSumExp, &mut y).unwrap();
        let want = 4.0 + (1.0f32 + (-2.0f32).exp() + (-4.0f32).exp()).ln();
        assert!((y[0] - want).abs() < 1e-6);
        assert!(reduction_of_code(4).is_err());
    }

    #[test]
    fn gather_rejects_out_of_range_indices() {
        let mut y = [0u8; 4];
        let e = gather(&[0u8; 8], 4, 1, 2, 1, &[2], 1, &mut y).unwrap_err();
        assert_eq!(e.code(), 2);
    }
}
