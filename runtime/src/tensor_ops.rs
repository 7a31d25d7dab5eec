//! Generic tensor ops along one axis, for IR graphs that use them directly
//! (the Reformer lowering does not; hand-written and future training graphs
//! do): softmax, reductions, argmax, stable argsort, `take_along_axis` and a
//! plain matrix product. A tensor is viewed as `[outer, n, inner]` around the
//! axis; each lane (fixed outer and inner index) is processed on its own,
//! with the interpreter's arithmetic (`interp/src/tensor_ops.rs`).

use crate::error::{invalid, Error, Result};
use crate::gemm::{check_len, gemm_rows_a, kernel, AStrides, Epilogue, PackedB};
use crate::pool::{par_for, SharedMut};
use std::sync::Arc;

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
    if inner == 1 {
        return softmax_rows(x, outer, n, y);
    }
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

/// [`softmax`] along contiguous rows (the last axis): the vectorized row
/// helpers of the attention kernels (`exp` about 1 ulp, a fixed summation
/// order), a block of rows per task.
fn softmax_rows(x: &[f32], rows: usize, n: usize, y: &mut [f32]) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let per = (16384 / n).max(1);
    let out = SharedMut::new(y);
    par_for(rows.div_ceil(per), |t| {
        for r in t * per..((t + 1) * per).min(rows) {
            // SAFETY: row r of y belongs to this task only.
            let yr = unsafe { out.slice(r * n, n) };
            yr.copy_from_slice(&x[r * n..(r + 1) * n]);
            let m = crate::simd::max(yr);
            let s = crate::simd::exp_sub_sum(yr, m);
            crate::simd::div(yr, s);
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
    if inner >= REDUCE_ROWWISE_FROM {
        return reduce_rows(x, outer, n, inner, kind, y);
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

/// Lanes from which [`reduce`] walks whole rows: a lane per column reads
/// one element per cache line, a row at a time reads them in order.
const REDUCE_ROWWISE_FROM: usize = 8;

/// Columns per task of [`reduce_rows`].
const REDUCE_BLOCK: usize = 256;

/// [`reduce`] for `inner >= REDUCE_ROWWISE_FROM`: each task keeps a block of
/// lanes' accumulators and adds the rows in order, so every lane sums its
/// elements in the same order as the lane-wise loop (the same bits).
fn reduce_rows(
    x: &[f32],
    outer: usize,
    n: usize,
    inner: usize,
    kind: Reduction,
    y: &mut [f32],
) -> Result<()> {
    let blocks = inner.div_ceil(REDUCE_BLOCK);
    let out = SharedMut::new(y);
    par_for(outer * blocks, |t| {
        let (o, b) = (t / blocks, t % blocks);
        let (c0, c1) = (b * REDUCE_BLOCK, ((b + 1) * REDUCE_BLOCK).min(inner));
        let row = |j: usize| &x[(o * n + j) * inner + c0..(o * n + j) * inner + c1];
        let fold = |init: f32, f: &dyn Fn(f32, f32, usize) -> f32| {
            let mut acc = vec![init; c1 - c0];
            for j in 0..n {
                for (i, (a, &v)) in acc.iter_mut().zip(row(j)).enumerate() {
                    *a = f(*a, v, i);
                }
            }
            acc
        };
        let r: Vec<f32> = match kind {
            Reduction::Sum => fold(0.0, &|a, v, _| a + v),
            Reduction::Mean => fold(0.0, &|a, v, _| a + v)
                .into_iter()
                .map(|s| s / n as f32)
                .collect(),
            Reduction::Max => fold(f32::NEG_INFINITY, &|a, v, _| a.max(v)),
            Reduction::LogSumExp => {
                let m = fold(f32::NEG_INFINITY, &|a, v, _| a.max(v));
                let s = fold(0.0, &|a, v, i| a + (v - m[i]).exp());
                m.iter().zip(&s).map(|(m, s)| m + s.ln()).collect()
            }
        };
        // SAFETY: task t alone writes lanes c0..c1 of outer row o.
        unsafe { out.slice(o * inner + c0, c1 - c0) }.copy_from_slice(&r);
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
    if m == 0 || inner == 0 || elem == 0 {
        return Ok(());
    }
    // Tasks of whole output rows (`inner` elements); a row whose indices are
    // all equal (an index broadcast over the features) is one copy.
    let row = inner * elem;
    let per = (65536 / row).max(1);
    let shared = SharedMut::new(y);
    par_for(outer * m.div_ceil(per), |t| {
        let (o, j0) = (t / m.div_ceil(per), (t % m.div_ceil(per)) * per);
        let j1 = (j0 + per).min(m);
        let xo = &x[o * n * row..(o + 1) * n * row];
        // SAFETY: task t alone writes rows j0..j1 of outer block o.
        let yo = unsafe { shared.slice((o * m + j0) * row, (j1 - j0) * row) };
        for j in j0..j1 {
            let ids = &idx[(o * m + j) * inner..(o * m + j + 1) * inner];
            let yj = &mut yo[(j - j0) * row..(j - j0 + 1) * row];
            let first = ids[0] as usize;
            if ids.iter().all(|&i| i as usize == first) {
                yj.copy_from_slice(&xo[first * row..(first + 1) * row]);
                continue;
            }
            for (r, &i) in ids.iter().enumerate() {
                let src = (i as usize * inner + r) * elem;
                yj[r * elem..(r + 1) * elem].copy_from_slice(&xo[src..src + elem]);
            }
        }
    })
}

/// `y[o, idx[o, j, i], i, :] += x[o, j, i, :]` over zeros (`rc_scatter_add_f32`):
/// the transpose of [`gather`], `x` `[outer, m, inner, row]`, `idx` `[outer,
/// m, inner]`, `y` `[outer, n, inner, row]`. Tasks own stripes of the
/// `inner * row` columns of one outer block and walk the sources in order,
/// so every sum is taken in row-major source order whatever the threads.
///
/// ```
/// // Rows of 2 added into 3 rows: row 1 receives source rows 0 and 2.
/// let mut y = [9.0f32; 6];
/// let x = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0];
/// reformc_runtime::tensor_ops::scatter_add_f32(&x, 1, 3, 1, 2, &[1, 0, 1], 3, &mut y).unwrap();
/// assert_eq!(y, [10.0, 20.0, 101.0, 202.0, 0.0, 0.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn scatter_add_f32(
    x: &[f32],
    outer: usize,
    m: usize,
    inner: usize,
    row: usize,
    idx: &[i64],
    n: usize,
    y: &mut [f32],
) -> Result<()> {
    let width = inner * row;
    check_len(
        "x",
        x.len(),
        outer.checked_mul(m).and_then(|v| v.checked_mul(width)),
    )?;
    check_len(
        "idx",
        idx.len(),
        outer.checked_mul(m).and_then(|v| v.checked_mul(inner)),
    )?;
    check_len(
        "y",
        y.len(),
        outer.checked_mul(n).and_then(|v| v.checked_mul(width)),
    )?;
    if let Some(bad) = idx.iter().find(|&&i| i < 0 || i as usize >= n) {
        return Err(Error::OutOfRange(format!(
            "scatter_add index {bad} is out of range for an axis of length {n}"
        )));
    }
    y.fill(0.0);
    if width == 0 || m == 0 {
        return Ok(());
    }
    const STRIPE: usize = 64;
    let stripes = width.div_ceil(STRIPE);
    let shared = SharedMut::new(y);
    par_for(outer * stripes, |t| {
        let (o, c0) = (t / stripes, (t % stripes) * STRIPE);
        let c1 = (c0 + STRIPE).min(width);
        for j in 0..m {
            let src = &x[(o * m + j) * width..][..width];
            let ids = &idx[(o * m + j) * inner..][..inner];
            if inner == 1 {
                // One destination row per source row: a vector add of the stripe.
                let at = (o * n + ids[0] as usize) * width;
                // SAFETY: task t alone touches columns c0..c1 of outer block o.
                let dst = unsafe { shared.slice(at + c0, c1 - c0) };
                dst.iter_mut().zip(&src[c0..c1]).for_each(|(d, s)| *d += s);
                continue;
            }
            for c in c0..c1 {
                let dst = (o * n + ids[c / row] as usize) * width + c;
                // SAFETY: task t alone touches columns c0..c1 of outer block o.
                unsafe { shared.update(dst, |v| *v += src[c]) };
            }
        }
    })
}

/// `y[o, j, i, :] = x[o, i, j, :]` (`rc_swap_axes`): swaps two adjacent
/// axes of an `[outer, r, c, inner]` array of `elem`-byte elements, in
/// tiles of 32 × 32 blocks of `inner` elements, output rows spread over the
/// threads. A transpose that swaps two neighbouring axes is this.
///
/// ```
/// // [2, 3] -> [3, 2] of one-byte elements.
/// let mut y = [0u8; 6];
/// reformc_runtime::tensor_ops::swap_axes(&[1, 2, 3, 4, 5, 6], 1, 1, 2, 3, 1, &mut y).unwrap();
/// assert_eq!(y, [1, 4, 2, 5, 3, 6]);
/// ```
pub fn swap_axes(
    x: &[u8],
    elem: usize,
    outer: usize,
    r: usize,
    c: usize,
    inner: usize,
    y: &mut [u8],
) -> Result<()> {
    let w = inner.checked_mul(elem);
    let total = outer
        .checked_mul(r)
        .and_then(|v| v.checked_mul(c))
        .and_then(|v| v.checked_mul(w?));
    check_len("x", x.len(), total)?;
    check_len("y", y.len(), total)?;
    let w = inner * elem;
    if x.is_empty() {
        return Ok(());
    }
    let tiles = c.div_ceil(SWAP_TILE);
    let shared = SharedMut::new(y);
    par_for(outer * tiles, |t| {
        let (o, j0) = (t / tiles, (t % tiles) * SWAP_TILE);
        let j1 = (j0 + SWAP_TILE).min(c);
        let xo = &x[o * r * c * w..(o + 1) * r * c * w];
        // SAFETY: task t alone writes output rows j0..j1 of block o.
        let yo = unsafe { shared.slice((o * c + j0) * r * w, (j1 - j0) * r * w) };
        match w {
            4 => swap_tiles::<4>(xo, yo, r, c, j0..j1, 4),
            8 => swap_tiles::<8>(xo, yo, r, c, j0..j1, 8),
            _ => swap_tiles::<0>(xo, yo, r, c, j0..j1, w),
        }
    })
}

/// Rows and columns of a tile of [`swap_axes`].
const SWAP_TILE: usize = 32;

/// Output rows `js` of one block of [`swap_axes`]: blocks of `W` bytes (a
/// constant, so each copy is one move) or, with `W = 0`, of `w` bytes.
fn swap_tiles<const W: usize>(
    xo: &[u8],
    yo: &mut [u8],
    r: usize,
    c: usize,
    js: std::ops::Range<usize>,
    w: usize,
) {
    if W > 0 {
        // Whole elements as `[u8; W]` values: each copy is one load and one
        // store, and a tile's output row is one contiguous run.
        let (xc, _) = xo.as_chunks::<W>();
        let (yc, _) = yo.as_chunks_mut::<W>();
        for i0 in (0..r).step_by(SWAP_TILE) {
            let i1 = (i0 + SWAP_TILE).min(r);
            for j in js.clone() {
                let base = (j - js.start) * r;
                for (i, d) in (i0..i1).zip(&mut yc[base + i0..base + i1]) {
                    *d = xc[i * c + j];
                }
            }
        }
        return;
    }
    for i0 in (0..r).step_by(SWAP_TILE) {
        for j in js.clone() {
            for i in i0..(i0 + SWAP_TILE).min(r) {
                let (s, d) = ((i * c + j) * w, ((j - js.start) * r + i) * w);
                yo[d..d + w].copy_from_slice(&xo[s..s + w]);
            }
        }
    }
}

/// `y[m, n] = a[m, k] · b[k, n]` (`rc_matmul_f32`), all row-major.
///
/// ```
/// let mut y = [0.0f32; 1];
/// reformc_runtime::tensor_ops::matmul(&[1.0, 2.0], &[3.0, 4.0], 1, 2, 1, &mut y).unwrap();
/// assert_eq!(y, [11.0]);
/// ```
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, y: &mut [f32]) -> Result<()> {
    matmul_into(a, b, m, k, n, y, false)
}

/// [`matmul`], adding the product to `y` when `accumulate`.
pub(crate) fn matmul_into(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    matmul_into_t(a, b, m, k, n, Transposed::NONE, y, accumulate)
}

/// Which operands of a matrix product are stored transposed: `a` as
/// `[k, m]` instead of `[m, k]`, `b` as `[n, k]` instead of `[k, n]`. The
/// product reads them in place of a separate transpose, with the same bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transposed {
    /// `a` is stored `[k, m]`.
    pub a: bool,
    /// `b` is stored `[n, k]`.
    pub b: bool,
}

impl Transposed {
    /// Both operands in their plain layout.
    pub const NONE: Transposed = Transposed { a: false, b: false };
}

/// B's rows `k0..k0 + kc`, packed, from its plain or transposed layout.
fn pack_b_block(
    b: &[f32],
    k0: usize,
    kc: usize,
    k: usize,
    n: usize,
    tb: bool,
    nr: usize,
) -> Result<Arc<PackedB>> {
    pack_b_cols(b, (k0, kc), k, n, (0, n), tb, nr)
}

/// Columns `c0..c0 + cols` of B's rows `k0..k0 + kc` (B `[k, n]`, or `[n, k]`
/// when `tb`), packed.
fn pack_b_cols(
    b: &[f32],
    (k0, kc): (usize, usize),
    k: usize,
    n: usize,
    (c0, cols): (usize, usize),
    tb: bool,
    nr: usize,
) -> Result<Arc<PackedB>> {
    match tb {
        true => crate::prepack::from_nt(&b[c0 * k + k0..], cols, kc, k, nr),
        false => crate::prepack::from_kn(&b[k0 * n + c0..], kc, cols, n, nr),
    }
}

/// A's columns `k0..k0 + kc` and their layout: read in place from a plain
/// `a` (`[m, k]`) or a transposed one (`[k, m]`).
fn a_block(a: &[f32], k0: usize, k: usize, m: usize, ta: bool) -> (&[f32], AStrides) {
    match ta {
        true => (&a[k0 * m..], AStrides { row: 1, k: m }),
        false => (&a[k0..], AStrides { row: k, k: 1 }),
    }
}

/// [`matmul_into`] with operands stored as `t` says.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into_t(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    t: Transposed,
    y: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    check_len("a", a.len(), m.checked_mul(k))?;
    check_len("b", b.len(), k.checked_mul(n))?;
    check_len("y", y.len(), m.checked_mul(n))?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            y.iter_mut().for_each(|v| *v = 0.0);
        }
        return Ok(());
    }
    let kern = kernel();
    let p = Product { a, b, m, k, n, t };
    if k > 2 * MATMUL_KC && crate::pool::threads() > 1 && m.saturating_mul(n) <= LONG_SUM_ACC {
        return long_sum_by_columns(kern, p, y, accumulate);
    }
    by_rows(kern, p, y, accumulate)
}

/// The operands of one product: `a` `[m, k]` and `b` `[k, n]`, stored as `t`
/// says.
#[derive(Clone, Copy)]
struct Product<'a> {
    a: &'a [f32],
    b: &'a [f32],
    m: usize,
    k: usize,
    n: usize,
    t: Transposed,
}

/// [`matmul_into_t`] threaded over blocks of rows of `y`, each block of the
/// summed dimension packed once and shared.
fn by_rows(kern: &crate::gemm::Kernel, p: Product, y: &mut [f32], accumulate: bool) -> Result<()> {
    let Product { a, b, m, k, n, t } = p;
    let first = match accumulate {
        true => Epilogue::ACCUMULATE,
        false => Epilogue::STORE,
    };
    // A long sum (a weight gradient sums over every position) in blocks of
    // MATMUL_KC: each block's packed B stays in cache while every row of A
    // passes over it, instead of all of B streaming from memory per row tile.
    let kc_max = match k <= 2 * MATMUL_KC {
        true => k,
        false => MATMUL_KC,
    };
    for (i, k0) in (0..k).step_by(kc_max).enumerate() {
        let kc = kc_max.min(k - k0);
        let packed = pack_b_block(b, k0, kc, k, n, t.b, kern.nr)?;
        let (ab, sa) = a_block(a, k0, k, m, t.a);
        let epi = match i {
            0 => first,
            _ => Epilogue::ACCUMULATE,
        };
        gemm_rows_a(kern, m, ab, sa, &packed, y, n, epi)?;
    }
    Ok(())
}

/// Rows of B per block in [`long_sum_by_columns`]: a task's columns of a
/// block (512 × 256 values, 512 KiB) stay in L2 while every row of A passes.
/// On the Zen 4 VM 512 ran the bench model's weight gradients as fast as 256
/// or faster (up to 8% for `[512, L]·[L, 320]`); where a sum is split does
/// not change its bits.
const LONG_SUM_KC: usize = 512;

/// Fewest rows a swapped long sum may have (see [`swapped`]). Measured on
/// the Zen 4 VM (2026-12-07) in the 12-layer training step at L = 16K
/// (`--profile`, three interleaved runs each way): `[512, L]·[L, 256]` ran at
/// 128-140 GFLOP/s as written and 138-145 swapped, `[512, L]·[L, 320]` at
/// 114-137 and 151-155, but `[256, L]·[L, 128]` fell from 150-157 to 107-115
/// swapped into a product of 128 rows (a product of 128 rows runs at about
/// 115 as written too: each task's packed columns then serve few rows).
/// `kernel_bench wgrad` showed larger gains (`[512, L]·[L, 256]` 154 → 190
/// GFLOP/s) with its operands partly in cache.
const SWAP_MIN_ROWS: usize = 256;

/// Accumulator floats [`long_sum_by_columns`] may hold (4 MiB, freed when
/// the product ends): a weight gradient's `[in, out]` up to 1024 × 1024.
const LONG_SUM_ACC: usize = 1 << 20;

/// A long sum with a small result (a weight gradient `xᵀ·dy` sums over every
/// position into `[in, out]`) on the pool's threads, split by columns of `y`:
/// each task owns a whole number of B's panels, packs its columns of each
/// block of [`LONG_SUM_KC`] rows of B itself and runs every row of A over them
/// into an accumulator of its own, copied into `y` at the end. Nothing is
/// shared between tasks, so a product is one fork-join instead of two per
/// block (the row-split path packs each block, then splits the rows), and
/// each element of `y` adds the products in k order as there (a split sum
/// continues from the stored partial sum): the same bits.
///
/// A transposed A with more rows than B has columns (`[512, L]·[L, 256]`)
/// runs as `yᵀ = Bᵀ·Aᵀ` instead (see [`swapped`]).
fn long_sum_by_columns(
    kern: &crate::gemm::Kernel,
    p: Product,
    y: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let (q, swap) = swapped(p);
    let Product { a, b, m, k, n, t } = q;
    // Where the accumulator's (row r, column c0 + c) of q's result lies in y.
    let at = |r: usize, c: usize| match swap {
        false => r * n + c,
        true => c * m + r,
    };
    let nr = kern.nr;
    let panels = n.div_ceil(nr);
    let tasks = crate::pool::threads().min(panels).max(1);
    let per = panels.div_ceil(tasks);
    let cols_of = |ti: usize| ((ti * per * nr).min(n), ((ti + 1) * per * nr).min(n));
    let done: Vec<std::sync::OnceLock<Vec<f32>>> =
        (0..tasks).map(|_| std::sync::OnceLock::new()).collect();
    let y_in: &[f32] = y;
    crate::pool::try_par_for(tasks, |ti| {
        let (c0, c1) = cols_of(ti);
        let cols = c1 - c0;
        if cols == 0 {
            return Ok(());
        }
        let mut acc = crate::error::try_zeroed(m * cols, "long-sum accumulator")?;
        if accumulate {
            for (r, dst) in acc.chunks_exact_mut(cols).enumerate() {
                for (c, v) in (c0..c1).zip(dst) {
                    *v = y_in[at(r, c)];
                }
            }
        }
        for (i, k0) in (0..k).step_by(LONG_SUM_KC).enumerate() {
            let kc = LONG_SUM_KC.min(k - k0);
            let packed = pack_b_cols(b, (k0, kc), k, n, (c0, cols), t.b, nr)?;
            let (ab, sa) = a_block(a, k0, k, m, t.a);
            let epi = match i == 0 && !accumulate {
                true => Epilogue::STORE,
                false => Epilogue::ACCUMULATE,
            };
            crate::gemm::gemm_a(kern, m, ab, sa, &packed, &mut acc, cols, epi);
        }
        let _ = done[ti].set(acc);
        Ok(())
    })?;
    for (ti, slot) in done.into_iter().enumerate() {
        let (c0, c1) = cols_of(ti);
        if let Some(acc) = slot.into_inner() {
            for (r, src) in acc.chunks_exact(c1 - c0).enumerate() {
                for (c, &v) in (c0..c1).zip(src) {
                    y[at(r, c)] = v;
                }
            }
        }
    }
    Ok(())
}

/// `p` as [`long_sum_by_columns`] runs it, and whether that is `yᵀ = Bᵀ·Aᵀ`:
/// when A is read transposed (`xᵀ`, x `[L, m]`), B is not, and `m > n ≥`
/// [`SWAP_MIN_ROWS`]. Each element is then the same chain of fused
/// multiply-adds in k order with the two factors swapped, and
/// `fma(a, b, c) = fma(b, a, c)`: the same bits.
fn swapped(p: Product) -> (Product, bool) {
    match p.t.a && !p.t.b && p.m > p.n && p.n >= SWAP_MIN_ROWS {
        true => (
            Product {
                a: p.b,
                b: p.a,
                m: p.n,
                n: p.m,
                ..p
            },
            true,
        ),
        false => (p, false),
    }
}

/// `y[i] = a[i] · b[i]` for `nb` pairs of contiguous row-major matrices
/// (`rc_matmul_batch_f32`): pairs in parallel, each product on one thread,
/// with the same bits as [`matmul`] on each pair when `k` is one block.
///
/// ```
/// // Two pairs of [1, 2] · [2, 1].
/// let (a, b) = ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]);
/// let mut y = [0.0f32; 2];
/// reformc_runtime::tensor_ops::matmul_batch(&a, &b, 2, 1, 2, 1, &mut y).unwrap();
/// assert_eq!(y, [1.0 * 5.0 + 2.0 * 6.0, 3.0 * 7.0 + 4.0 * 8.0]);
/// ```
pub fn matmul_batch(
    a: &[f32],
    b: &[f32],
    nb: usize,
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
) -> Result<()> {
    matmul_batch_t(a, b, nb, m, k, n, Transposed::NONE, y)
}

/// [`matmul_batch`] with operands stored as `t` says
/// (`rc_matmul_batch_t_f32`): the same bits as a transpose followed by
/// [`matmul_batch`].
///
/// ```
/// use reformc_runtime::tensor_ops::{matmul_batch_t, Transposed};
/// // [1, 2]ᵀ stored as a column: aᵀ = [[1], [2]] is [k=2, m=1].
/// let mut y = [0.0f32; 1];
/// let t = Transposed { a: true, b: false };
/// matmul_batch_t(&[1.0, 2.0], &[5.0, 6.0], 1, 1, 2, 1, t, &mut y).unwrap();
/// assert_eq!(y, [17.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn matmul_batch_t(
    a: &[f32],
    b: &[f32],
    nb: usize,
    m: usize,
    k: usize,
    n: usize,
    t: Transposed,
    y: &mut [f32],
) -> Result<()> {
    matmul_batch_into(a, b, nb, m, k, n, t, y, false)
}

/// [`matmul_batch_t`] adding onto `y`: `y[i] += a[i] · b[i]`, each sum
/// continuing from `y`'s value in k order (a zeroed `y` gives the same bits
/// as [`matmul_batch_t`]).
///
/// ```
/// use reformc_runtime::tensor_ops::{matmul_batch_t_acc, Transposed};
/// let mut y = [1.0f32, 2.0];
/// // Two pairs of [1, 2] · [2, 1].
/// matmul_batch_t_acc(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], 2, 1, 2, 1, Transposed::NONE, &mut y).unwrap();
/// assert_eq!(y, [18.0, 55.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn matmul_batch_t_acc(
    a: &[f32],
    b: &[f32],
    nb: usize,
    m: usize,
    k: usize,
    n: usize,
    t: Transposed,
    y: &mut [f32],
) -> Result<()> {
    matmul_batch_into(a, b, nb, m, k, n, t, y, true)
}

/// [`matmul_batch_t`] storing into or adding onto `y`.
#[allow(clippy::too_many_arguments)]
fn matmul_batch_into(
    a: &[f32],
    b: &[f32],
    nb: usize,
    m: usize,
    k: usize,
    n: usize,
    t: Transposed,
    y: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let (mk, kn, mn) = (m * k, k * n, m * n);
    check_len("a", a.len(), nb.checked_mul(mk))?;
    check_len("b", b.len(), nb.checked_mul(kn))?;
    check_len("y", y.len(), nb.checked_mul(mn))?;
    if nb <= 1 || k > 2 * MATMUL_KC || mn == 0 || k == 0 {
        for i in 0..nb {
            matmul_into_t(
                &a[i * mk..(i + 1) * mk],
                &b[i * kn..(i + 1) * kn],
                m,
                k,
                n,
                t,
                &mut y[i * mn..(i + 1) * mn],
                accumulate,
            )?;
        }
        return Ok(());
    }
    let kern = kernel();
    let failed = std::sync::Mutex::new(None);
    let shared = SharedMut::new(y);
    par_for(nb, |i| {
        let (ai, bi) = (&a[i * mk..(i + 1) * mk], &b[i * kn..(i + 1) * kn]);
        match pack_b_block(bi, 0, k, k, n, t.b, kern.nr) {
            Ok(packed) => {
                let (ab, sa) = a_block(ai, 0, k, m, t.a);
                // SAFETY: task i alone writes matrix i of y.
                let yi = unsafe { shared.slice(i * mn, mn) };
                let epi = match accumulate {
                    true => Epilogue::ACCUMULATE,
                    false => Epilogue::STORE,
                };
                crate::gemm::gemm_a(kern, m, ab, sa, &packed, yi, n, epi);
            }
            Err(e) => *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e),
        }
    })?;
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The block of the summed dimension in [`matmul`] when it is long: 256
/// rows of a B 512 wide are 512 KiB packed.
const MATMUL_KC: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    /// `nb` matrices `[r, c]` transposed to `[c, r]`.
    fn transpose_each(x: &[f32], nb: usize, r: usize, c: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; x.len()];
        for b in 0..nb {
            for i in 0..r {
                for j in 0..c {
                    y[b * r * c + j * r + i] = x[b * r * c + i * c + j];
                }
            }
        }
        y
    }

    #[test]
    fn softmax_along_rows_matches_f64_to_a_few_ulps() {
        let (rows, n) = (37, 130);
        let x: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 29 % 113) as f32 - 56.0) / 3.0)
            .collect();
        let mut y = vec![0.0f32; rows * n];
        softmax(&x, rows, n, 1, &mut y).unwrap();
        for r in 0..rows {
            let row = &x[r * n..(r + 1) * n];
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            for (j, &v) in row.iter().enumerate() {
                let want = (v as f64 - m).exp() / s;
                let got = y[r * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want + 1e-12,
                    "row {r} col {j}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn transposed_operands_give_the_bits_of_a_transpose_then_a_product() {
        // k both within one block and over several (the weight-gradient case),
        // one pair and several (the parallel path).
        for &(nb, m, k, n) in &[
            (1, 5, 7, 3),
            (3, 9, 33, 17),
            (1, 20, 700, 24),
            (2, 6, 530, 10),
        ] {
            let a: Vec<f32> = (0..nb * m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..nb * k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0)
                .collect();
            let mut want = vec![0.0f32; nb * m * n];
            matmul_batch(&a, &b, nb, m, k, n, &mut want).unwrap();
            let (at, bt) = (transpose_each(&a, nb, m, k), transpose_each(&b, nb, k, n));
            for (ta, tb) in [(true, false), (false, true), (true, true)] {
                let t = Transposed { a: ta, b: tb };
                let (xa, xb) = (if ta { &at } else { &a }, if tb { &bt } else { &b });
                let mut got = vec![f32::NAN; nb * m * n];
                matmul_batch_t(xa, xb, nb, m, k, n, t, &mut got).unwrap();
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{t:?} nb={nb} m={m} k={k} n={n}");
            }
        }
    }

    /// The lane-wise reduction (the loop before the row-wise path).
    fn lane_reduce(x: &[f32], outer: usize, n: usize, inner: usize, kind: Reduction) -> Vec<f32> {
        let mut y = vec![0.0f32; outer * inner];
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| x[(o * n + j) * inner + i];
                let max = (0..n).fold(f32::NEG_INFINITY, |m, j| m.max(at(j)));
                let sum = (0..n).fold(0.0f32, |s, j| s + at(j));
                y[o * inner + i] = match kind {
                    Reduction::Sum => sum,
                    Reduction::Mean => sum / n as f32,
                    Reduction::Max => max,
                    Reduction::LogSumExp => {
                        max + (0..n).fold(0.0f32, |s, j| s + (at(j) - max).exp()).ln()
                    }
                };
            }
        }
        y
    }

    #[test]
    fn row_wise_reductions_give_the_lane_wise_bits() {
        // inner spans two blocks of columns (the second partial).
        let (outer, n, inner) = (3, 37, REDUCE_BLOCK + 9);
        let x: Vec<f32> = (0..outer * n * inner)
            .map(|i| ((i * 13 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for kind in [
            Reduction::Sum,
            Reduction::Mean,
            Reduction::Max,
            Reduction::LogSumExp,
        ] {
            let mut y = vec![0.0f32; outer * inner];
            reduce(&x, outer, n, inner, kind, &mut y).unwrap();
            let want = lane_reduce(&x, outer, n, inner, kind);
            assert!(
                y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn gather_copies_rows_and_single_elements() {
        // x[2, 3, 4] (i32 elements), gather along the middle axis: row 0 of
        // each outer block uses one index for the whole row, row 1 mixes.
        let x: Vec<u8> = (0..24i32).flat_map(|v| v.to_le_bytes()).collect();
        let idx = [2, 2, 2, 2, 0, 1, 2, 0, 1, 1, 1, 1, 2, 0, 0, 1];
        let mut y = vec![0u8; 16 * 4];
        gather(&x, 4, 2, 3, 4, &idx, 2, &mut y).unwrap();
        let got: Vec<i32> = y
            .chunks(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        // y[o, j, i] = x[o, idx[o, j, i], i]
        let want: Vec<i32> = (0..16)
            .map(|t| {
                let (o, i) = (t / 8, t % 4);
                (o * 12 + idx[t] as usize * 4 + i) as i32
            })
            .collect();
        assert_eq!(got, want);
        assert!(gather(&x, 4, 2, 3, 4, &[3; 16], 2, &mut y).is_err());
    }

    #[test]
    fn a_batch_of_products_gives_each_product_s_bits() {
        let (nb, m, k, n) = (7, 9, 33, 17);
        let a: Vec<f32> = (0..nb * m * k)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 8.0)
            .collect();
        let b: Vec<f32> = (0..nb * k * n)
            .map(|i| ((i * 5 % 19) as f32 - 9.0) / 4.0)
            .collect();
        let mut y = vec![0.0f32; nb * m * n];
        matmul_batch(&a, &b, nb, m, k, n, &mut y).unwrap();
        for i in 0..nb {
            let mut want = vec![0.0f32; m * n];
            matmul(
                &a[i * m * k..][..m * k],
                &b[i * k * n..][..k * n],
                m,
                k,
                n,
                &mut want,
            )
            .unwrap();
            assert_eq!(y[i * m * n..][..m * n], want[..], "pair {i}");
        }
    }

    #[test]
    fn swapping_axes_moves_every_block() {
        // [outer, r, c, inner] with r and c across tile edges; 4-, 8- and 12-byte blocks.
        for (elem, inner) in [(4, 1), (8, 1), (4, 3)] {
            let (outer, r, c) = (2, SWAP_TILE + 3, SWAP_TILE * 2 + 1);
            let w = elem * inner;
            let x: Vec<u8> = (0..outer * r * c * w)
                .map(|i| (i * 31 % 251) as u8)
                .collect();
            let mut y = vec![0u8; x.len()];
            swap_axes(&x, elem, outer, r, c, inner, &mut y).unwrap();
            for o in 0..outer {
                for i in 0..r {
                    for j in 0..c {
                        let s = ((o * r + i) * c + j) * w;
                        let d = ((o * c + j) * r + i) * w;
                        assert_eq!(y[d..d + w], x[s..s + w], "[{o}, {i}, {j}] w={w}");
                    }
                }
            }
        }
        assert!(swap_axes(&[0; 5], 1, 1, 2, 3, 1, &mut [0; 6]).is_err());
    }

    #[test]
    fn a_long_sum_in_blocks_matches_the_plain_product() {
        // k spans three blocks (the last one partial), m and n not multiples of a tile.
        let (m, k, n) = (13, 2 * MATMUL_KC + 77, 21);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 8.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 19) as f32 - 9.0) / 4.0)
            .collect();
        let mut y = vec![0.0f32; m * n];
        matmul(&a, &b, m, k, n, &mut y).unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|t| f64::from(a[i * k + t]) * f64::from(b[t * n + j]))
                    .sum();
                let got = f64::from(y[i * n + j]);
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "[{i},{j}] {got} vs {want}"
                );
            }
        }
    }

    /// The long sum split by columns gives the row split's bits: A read
    /// transposed (a weight gradient) or not, B plain or transposed, stored or
    /// accumulated, with a partial panel and a partial block.
    #[test]
    fn a_long_sum_by_columns_has_the_bits_of_the_row_split() {
        let kern = kernel();
        // The last shape runs swapped (yᵀ = Bᵀ·Aᵀ) where A is transposed.
        let (short, wide) = (37, 2 * kern.nr + 5);
        let tall = (SWAP_MIN_ROWS + 37, SWAP_MIN_ROWS + 5);
        for (m, n) in [(short, wide), (wide, short), tall] {
            long_sum_bits(kern, m, 3 * LONG_SUM_KC + 11, n);
        }
        let p = |m, n, a| Product {
            a: &[],
            b: &[],
            m,
            k: 0,
            n,
            t: Transposed { a, b: false },
        };
        assert!(swapped(p(tall.0, tall.1, true)).1);
        assert!(!swapped(p(tall.0, tall.1, false)).1);
        assert!(!swapped(p(wide, short, true)).1);
    }

    fn long_sum_bits(kern: &crate::gemm::Kernel, m: usize, k: usize, n: usize) {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 8.3)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 19) as f32 - 9.0) / 4.1)
            .collect();
        let y0: Vec<f32> = (0..m * n).map(|i| (i % 13) as f32 - 6.5).collect();
        let cases = [(true, false), (false, false), (false, true), (true, true)];
        // Both precisions: bf16 products pair k within blocks of even length.
        for (bf16, (ta, tb)) in [false, true]
            .into_iter()
            .flat_map(|h| cases.map(|c| (h, c)))
        {
            let t = Transposed { a: ta, b: tb };
            for accumulate in [false, true] {
                let (mut want, mut got) = (y0.clone(), y0.clone());
                let p = Product {
                    a: &a,
                    b: &b,
                    m,
                    k,
                    n,
                    t,
                };
                crate::bf16::with(bf16, || {
                    by_rows(kern, p, &mut want, accumulate).unwrap();
                    long_sum_by_columns(kern, p, &mut got, accumulate).unwrap();
                });
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "[{m}, {k}]·[{k}, {n}], {t:?}, accumulate {accumulate}, bf16 {bf16}"
                );
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
