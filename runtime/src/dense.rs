//! Fused dense stacks (`rc_dense_f32`): an optional layer-norm prologue, one
//! or two linears with bias/activation epilogues, and a store into, or an
//! accumulation onto, a destination whose rows may be strided.
//!
//! The stack runs in blocks of rows: a block's normalized rows and hidden
//! activations live in a per-thread scratch that stays in L2 and never exist
//! for the whole sequence. This is what lets generated code run a feed-forward
//! block (`y += W2·act(W1·LN(x) + b1) + b2`) or an attention projection on a
//! reversible half in place, with no `[rows, d_ff]` or `[rows, width]`
//! temporaries.
//!
//! Rounding is the unfused ops': the layer norm is [`crate::layer_norm`]'s
//! row code, each product is the GEMM's chain, and an accumulation adds the
//! finished `act(x·wᵀ + b)` to the destination (`y + z`, as the interpreter's
//! separate `add`). Blocks are independent, so results do not depend on the
//! thread count.

use crate::act::Activation;
use crate::error::{invalid, try_zeroed, with_scratch, Result};
use crate::gemm::{gemm, kernel, Epilogue, Kernel, PackedB};
use crate::nn::ln_row;
use crate::pool::{threads, try_par_for};
use std::cell::RefCell;
use std::sync::Arc;

/// Layer-norm parameters of the prologue (`[in]` each).
#[derive(Clone, Copy)]
pub struct Norm<'a> {
    /// Scale.
    pub w: &'a [f32],
    /// Shift.
    pub b: &'a [f32],
    /// Added to the variance.
    pub eps: f32,
}

/// One linear of the stack: `act(x·wᵀ + b)` with `w` of `[out, in]`.
#[derive(Clone, Copy)]
pub struct Layer<'a> {
    /// Weight, `[out, in]` row-major.
    pub w: &'a [f32],
    /// Output features.
    pub out: usize,
    /// Optional bias `[out]`.
    pub b: Option<&'a [f32]>,
    /// Activation after the bias.
    pub act: Activation,
}

/// A dense stack: `LN?` then one or two [`Layer`]s.
#[derive(Clone, Copy)]
pub struct Stack<'a> {
    /// Layer norm applied to each input row first, if any.
    pub norm: Option<Norm<'a>>,
    /// The first linear.
    pub first: Layer<'a>,
    /// The second linear (its input is the first's output), if any.
    pub second: Option<Layer<'a>>,
}

impl Stack<'_> {
    /// Output features of the whole stack.
    pub fn out(&self) -> usize {
        self.second.map_or(self.first.out, |l| l.out)
    }

    fn last_act(&self) -> Activation {
        self.second.map_or(self.first.act, |l| l.act)
    }
}

/// Where the stack's rows go and how.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// `y = stack(x)`.
    Store,
    /// `y = y + stack(x)`.
    Accumulate,
}

thread_local! {
    /// Per-thread block scratch (a task never runs nested in another).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Scratch bytes one block aims at (normalized rows + hidden + output rows).
const BLOCK_BYTES: usize = 256 * 1024;

/// Weight bytes a block's rows share at most: each block streams every packed
/// weight once, so a block of a few rows over large weights (the paper
/// model's 2 × 16 MiB feed-forward stack, 12 rows a block by scratch size
/// alone) runs at memory bandwidth, not at the GEMM's rate. 128 KiB a row
/// makes 64 floating-point operations per weight byte.
const WEIGHT_BYTES_PER_ROW: usize = 128 * 1024;

/// Rows per block of a stack with `per_row` scratch floats a row and
/// `weights` packed weight floats: enough for [`BLOCK_BYTES`] of scratch or
/// [`WEIGHT_BYTES_PER_ROW`], whichever is more, a whole number of register
/// tiles of `mr` rows, and no more than an even share of `rows` over the
/// pool's threads.
fn block_rows(rows: usize, per_row: usize, weights: usize, mr: usize, threads: usize) -> usize {
    let by_scratch = BLOCK_BYTES / 4 / per_row.max(1);
    let by_weights = (4 * weights).div_ceil(WEIGHT_BYTES_PER_ROW);
    let share = rows.div_ceil(threads.max(1));
    let want = by_scratch.max(by_weights).min(share);
    (want / mr).max(1) * mr
}

/// `y = stack(x)` (or `y += stack(x)`) for contiguous `x [rows, in]` and
/// `y [rows, out]`.
///
/// ```
/// use reformc_runtime::dense::{dense, Layer, Mode, Stack};
/// use reformc_runtime::Activation;
/// let layer = |w: &'static [f32], out| Layer { w, out, b: None, act: Activation::None };
/// // y += x · [[1, 1]]ᵀ · [[2]]ᵀ
/// let stack = Stack { norm: None, first: layer(&[1.0, 1.0], 1), second: Some(layer(&[2.0], 1)) };
/// let mut y = [10.0f32, 20.0];
/// dense(&stack, &[1.0, 2.0, 3.0, 4.0], 2, 2, &mut y, Mode::Accumulate).unwrap();
/// assert_eq!(y, [16.0, 34.0]);
/// ```
pub fn dense(
    stack: &Stack,
    x: &[f32],
    rows: usize,
    inp: usize,
    y: &mut [f32],
    mode: Mode,
) -> Result<()> {
    check(stack, inp, mode)?;
    let out = stack.out();
    if rows.checked_mul(inp) != Some(x.len()) || rows.checked_mul(out) != Some(y.len()) {
        return Err(invalid(format!(
            "x has {} and y {} elements; expected {rows} rows of {inp} and of {out}",
            x.len(),
            y.len()
        )));
    }
    // SAFETY: x and y are distinct slices of exactly rows×in and rows×out values.
    unsafe { dense_raw(stack, x.as_ptr(), inp, rows, inp, y.as_mut_ptr(), out, mode) }
}

/// Validates sizes and the mode of a stack (see [`dense_raw`]).
pub(crate) fn check(stack: &Stack, inp: usize, mode: Mode) -> Result<()> {
    if let Some(n) = stack.norm {
        if n.w.len() != inp || n.b.len() != inp {
            return Err(invalid(format!(
                "layer-norm parameters have {} and {} values, expected {inp}",
                n.w.len(),
                n.b.len()
            )));
        }
    }
    let mut width = inp;
    for (i, l) in std::iter::once(stack.first).chain(stack.second).enumerate() {
        if Some(l.w.len()) != l.out.checked_mul(width) {
            return Err(invalid(format!(
                "weight {} has {} values, expected {} x {width}",
                i + 1,
                l.w.len(),
                l.out
            )));
        }
        if l.b.is_some_and(|b| b.len() != l.out) {
            return Err(invalid(format!(
                "bias {} must have {} values",
                i + 1,
                l.out
            )));
        }
        width = l.out;
    }
    if mode == Mode::Accumulate && stack.last_act() != Activation::None {
        return Err(invalid(
            "accumulating needs no activation on the last linear".to_string(),
        ));
    }
    Ok(())
}

/// A weight packed for the kernel and its bias padded to whole panels.
struct Packed {
    b: Arc<PackedB>,
    bias: Option<Vec<f32>>,
    act: Activation,
}

impl Packed {
    fn new(kern: &Kernel, l: &Layer, inp: usize) -> Result<Packed> {
        let b = crate::prepack::from_nt(l.w, l.out, inp, inp, kern.nr)?;
        let bias = match l.b {
            Some(v) => {
                let mut p = try_zeroed(b.panels() * kern.nr, "bias")?;
                p[..l.out].copy_from_slice(v);
                Some(p)
            }
            None => None,
        };
        Ok(Packed {
            b,
            bias,
            act: l.act,
        })
    }

    fn epilogue(&self) -> Epilogue<'_> {
        Epilogue {
            accumulate: false,
            bias: self.bias.as_deref(),
            act: self.act,
        }
    }
}

/// The stack on strided rows: row `r` of `x` is `x[r*ldx .. r*ldx+in]`, row
/// `r` of `y` is `y[r*ldy .. r*ldy+out]`.
///
/// # Safety
/// `check(stack, inp, mode)` must hold; every row of `x` and `y` must be
/// valid for reads (x) and reads and writes (y); and no element of a row of
/// `y` may be an element of a row of `x` (rows may interleave, as the two
/// halves of a reversible state do). Nothing else may access `y` meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dense_raw(
    stack: &Stack,
    x: *const f32,
    ldx: usize,
    rows: usize,
    inp: usize,
    y: *mut f32,
    ldy: usize,
    mode: Mode,
) -> Result<()> {
    let out = stack.out();
    if rows == 0 || out == 0 {
        return Ok(());
    }
    let kern = kernel();
    let first = Packed::new(kern, &stack.first, inp)?;
    let second = match stack.second {
        Some(l) => Some(Packed::new(kern, &l, stack.first.out)?),
        None => None,
    };
    let hidden = second.as_ref().map_or(0, |_| stack.first.out);
    let per_row = inp + hidden + out;
    let weights = stack.first.w.len() + stack.second.map_or(0, |l| l.w.len());
    let block = block_rows(rows, per_row, weights, kern.mr, threads());
    let (xa, ya) = (x as usize, y as usize);
    let task = |t: usize| {
        let r0 = t * block;
        let n = block.min(rows - r0);
        with_scratch(&SCRATCH, n * per_row, "dense block", |s| {
            let (a, rest) = s.split_at_mut(n * inp);
            let (h, z) = rest.split_at_mut(n * hidden);
            let z = &mut z[..n * out];
            // SAFETY: rows r0.. of x are readable (contract) and no task writes them.
            unsafe { input_rows(stack.norm, xa as *const f32, ldx, r0, inp, a) };
            match &second {
                Some(p2) => {
                    let hd = stack.first.out;
                    gemm(kern, n, a, inp, &first.b, h, hd, first.epilogue());
                    gemm(kern, n, h, hd, &p2.b, z, out, p2.epilogue());
                }
                None => gemm(kern, n, a, inp, &first.b, z, out, first.epilogue()),
            }
            for (i, zr) in z.chunks_exact(out).enumerate() {
                if mode == Mode::Accumulate && i + ROWS_AHEAD < n {
                    let ahead = (ya as *const f32).wrapping_add((r0 + i + ROWS_AHEAD) * ldy);
                    crate::simd::prefetch_lines(ahead.cast(), 4 * out);
                }
                // SAFETY: row r0+i of y belongs to this task alone and shares no
                // element with any row of x (contract).
                let yr = unsafe {
                    std::slice::from_raw_parts_mut((ya as *mut f32).add((r0 + i) * ldy), out)
                };
                match mode {
                    Mode::Store => yr.copy_from_slice(zr),
                    Mode::Accumulate => {
                        for (o, &v) in yr.iter_mut().zip(zr) {
                            *o += v;
                        }
                    }
                }
            }
        })
    };
    try_par_for(rows.div_ceil(block), task)
}

/// Rows of `x` that [`input_rows`] asks the caches for ahead of the one it
/// normalizes (and of `y` ahead of the one a stack accumulates onto): the
/// hardware prefetcher stops at each 4 KiB page, which a few rows of the
/// model's width already span. On the Xeon the rows of `x` made the bench
/// model's bf16 forward about 5% faster (16K: 211 → 200 ms, 64K: 887 → 845
/// ms); those of `y` were within the noise.
const ROWS_AHEAD: usize = 4;

/// Fills `a` (whole rows of `inp`) with rows `r0..` of `x`, layer-normalized
/// when `norm` is given.
///
/// # Safety
/// Those rows of `x` (row stride `ldx`) must be readable and not written
/// meanwhile.
unsafe fn input_rows(
    norm: Option<Norm>,
    x: *const f32,
    ldx: usize,
    r0: usize,
    inp: usize,
    a: &mut [f32],
) {
    let rows = a.len() / inp.max(1);
    for (i, ar) in a.chunks_exact_mut(inp).enumerate() {
        if i + ROWS_AHEAD < rows {
            let ahead = x.wrapping_add((r0 + i + ROWS_AHEAD) * ldx);
            crate::simd::prefetch_lines(ahead.cast(), 4 * inp);
        }
        // SAFETY: the caller's contract covers row r0+i.
        let xr = unsafe { std::slice::from_raw_parts(x.add((r0 + i) * ldx), inp) };
        match norm {
            Some(nm) => ln_row(xr, nm.w, nm.b, nm.eps, ar),
            None => ar.copy_from_slice(xr),
        }
    }
}

/// Two one-layer stacks over the same rows and the same optional layer norm,
/// such as an attention's query/key and value projections.
#[derive(Clone, Copy)]
pub struct Pair<'a> {
    /// Layer norm applied to each input row first, if any.
    pub norm: Option<Norm<'a>>,
    /// The linear whose output is `y1`.
    pub first: Layer<'a>,
    /// The linear whose output is `y2`.
    pub second: Layer<'a>,
}

/// `y1 = first(LN?(x))` and `y2 = second(LN?(x))` for contiguous `x [rows,
/// in]`, `y1 [rows, out1]` and `y2 [rows, out2]`.
///
/// Each block of rows is normalized once and multiplied by both weights, and
/// each product is stored straight into its destination: the same bits as
/// two [`dense`] calls with half the layer-norm work and no block copies.
///
/// ```
/// use reformc_runtime::dense::{dense_pair, Layer, Pair};
/// use reformc_runtime::Activation;
/// let layer = |w: &'static [f32], out| Layer { w, out, b: None, act: Activation::None };
/// let pair = Pair { norm: None, first: layer(&[1.0, 1.0], 1), second: layer(&[1.0, -1.0], 1) };
/// let (mut y1, mut y2) = ([0.0f32; 2], [0.0f32; 2]);
/// dense_pair(&pair, &[1.0, 2.0, 3.0, 5.0], 2, 2, &mut y1, &mut y2).unwrap();
/// assert_eq!((y1, y2), ([3.0, 8.0], [-1.0, -2.0]));
/// ```
pub fn dense_pair(
    pair: &Pair,
    x: &[f32],
    rows: usize,
    inp: usize,
    y1: &mut [f32],
    y2: &mut [f32],
) -> Result<()> {
    check_pair(pair, inp)?;
    let (o1, o2) = (pair.first.out, pair.second.out);
    let fits = |len: usize, cols: usize| rows.checked_mul(cols) == Some(len);
    if !fits(x.len(), inp) || !fits(y1.len(), o1) || !fits(y2.len(), o2) {
        return Err(invalid(format!(
            "x, y1 and y2 have {}, {} and {} elements; expected {rows} rows of {inp}, {o1} and {o2}",
            x.len(),
            y1.len(),
            y2.len()
        )));
    }
    let (p1, p2) = (y1.as_mut_ptr(), y2.as_mut_ptr());
    // SAFETY: x, y1 and y2 are distinct slices of exactly the checked sizes.
    unsafe { dense_pair_raw(pair, x.as_ptr(), inp, rows, inp, [(p1, o1), (p2, o2)]) }
}

/// Validates the sizes of a pair's layers (see [`dense_pair_raw`]).
pub(crate) fn check_pair(pair: &Pair, inp: usize) -> Result<()> {
    for layer in [pair.first, pair.second] {
        let stack = Stack {
            norm: pair.norm,
            first: layer,
            second: None,
        };
        check(&stack, inp, Mode::Store)?;
    }
    Ok(())
}

/// The pair on strided rows: row `r` of `x` is `x[r*ldx ..][..in]`, row `r`
/// of destination `i` is `ys[i].0[r*ys[i].1 ..][..out_i]`.
///
/// # Safety
/// `check_pair(pair, inp)` must hold; every row of `x` must be readable and
/// every row of both destinations writable; the extents of `x` and of the two
/// destinations (first row to last) must not overlap; nothing else may access
/// the destinations meanwhile.
pub(crate) unsafe fn dense_pair_raw(
    pair: &Pair,
    x: *const f32,
    ldx: usize,
    rows: usize,
    inp: usize,
    ys: [(*mut f32, usize); 2],
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let kern = kernel();
    let layers = [pair.first, pair.second];
    let packed = [
        Packed::new(kern, &layers[0], inp)?,
        Packed::new(kern, &layers[1], inp)?,
    ];
    let per_row = inp + layers.iter().map(|l| l.out).sum::<usize>();
    let weights = layers.iter().map(|l| l.w.len()).sum();
    let block = block_rows(rows, per_row, weights, kern.mr, threads());
    let xa = x as usize;
    let dst = ys.map(|(p, ld)| (p as usize, ld));
    let task = |t: usize| {
        let r0 = t * block;
        let n = block.min(rows - r0);
        with_scratch(&SCRATCH, n * inp, "dense pair block", |a| {
            // SAFETY: rows r0.. of x are readable (contract) and no task writes them.
            unsafe { input_rows(pair.norm, xa as *const f32, ldx, r0, inp, a) };
            for ((p, l), &(ya, ldy)) in packed.iter().zip(&layers).zip(&dst) {
                if l.out == 0 {
                    continue;
                }
                // SAFETY: rows r0..r0+n of this destination (and the gaps
                // between them) belong to this task alone, and its extent
                // shares no element with x's or the other destination's
                // (contract).
                let c = unsafe {
                    std::slice::from_raw_parts_mut(
                        (ya as *mut f32).add(r0 * ldy),
                        (n - 1) * ldy + l.out,
                    )
                };
                gemm(kern, n, a, inp, &p.b, c, ldy, p.epilogue());
            }
        })
    };
    try_par_for(rows.div_ceil(block), task)
}

/// True when rows of two strided matrices share no element: `a` has `ca`
/// columns at offset `oa` (elements) with stride `la`, `b` likewise; both with
/// `rows` rows.
pub(crate) fn rows_disjoint(
    (oa, la, ca): (usize, usize, usize),
    (ob, lb, cb): (usize, usize, usize),
    rows: usize,
) -> bool {
    if rows == 0 || ca == 0 || cb == 0 {
        return true;
    }
    let end = |o: usize, l: usize, c: usize| o + (rows - 1) * l + c;
    if end(oa, la, ca) <= ob || end(ob, lb, cb) <= oa {
        return true; // spans apart
    }
    // Interleaved rows of one buffer: same stride, column ranges apart mod the stride.
    if la != lb {
        return false;
    }
    let (lo, lo_c, hi, hi_c) = if oa <= ob {
        (oa, ca, ob, cb)
    } else {
        (ob, cb, oa, ca)
    };
    // Rows of `hi` start `d` elements after rows of `lo`, `d % la` columns in.
    let d = (hi - lo) % la;
    d >= lo_c && d + hi_c <= la
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_grow_with_the_weights_and_share_the_rows() {
        // The bench model's feed-forward stack: scratch decides (64 rows).
        assert_eq!(block_rows(16384, 256 + 512 + 256, 2 * 256 * 512, 6, 2), 60);
        // The paper model's: 2 x 16 MiB of weights need 256 rows a block.
        assert_eq!(
            block_rows(8192, 1024 + 4096 + 1024, 2 * 4096 * 1024, 12, 2),
            252
        );
        // Few rows: an even share per thread, in whole register tiles.
        assert_eq!(block_rows(50, 1024, 1024, 6, 2), 24);
        assert_eq!(block_rows(5, 1024, 1024, 6, 2), 6);
    }

    /// Standard normals from the runtime's own Philox stream `seed`.
    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut v = vec![0.0; n];
        crate::random_normal(0xd0, seed, &mut v).unwrap();
        v
    }

    /// The unfused reference: layer_norm, linear, linear, add.
    fn reference(
        st: &Stack,
        x: &[f32],
        rows: usize,
        inp: usize,
        y0: &[f32],
        mode: Mode,
    ) -> Vec<f32> {
        let mut a = x.to_vec();
        if let Some(n) = st.norm {
            crate::layer_norm(x, rows, inp, n.w, n.b, n.eps, &mut a).unwrap();
        }
        let mut width = inp;
        for l in std::iter::once(st.first).chain(st.second) {
            let mut o = vec![0.0; rows * l.out];
            crate::linear(&a, rows, width, l.w, l.out, l.b, l.act, &mut o).unwrap();
            a = o;
            width = l.out;
        }
        match mode {
            Mode::Store => a,
            Mode::Accumulate => a.iter().zip(y0).map(|(z, y)| y + z).collect(),
        }
    }

    #[test]
    fn matches_the_unfused_ops_bit_for_bit() {
        for (rows, inp, hid, out, norm, two, mode) in [
            (1, 3, 5, 2, true, true, Mode::Accumulate),
            (131, 17, 40, 9, true, true, Mode::Store),
            (200, 64, 70, 64, false, true, Mode::Accumulate),
            (77, 33, 65, 65, true, false, Mode::Store),
            (500, 8, 3, 3, false, false, Mode::Accumulate),
        ] {
            let (w1, b1, w2, b2) = (
                rand(hid * inp, 1),
                rand(hid, 2),
                rand(out * hid, 3),
                rand(out, 4),
            );
            let (g, be) = (rand(inp, 5), rand(inp, 6));
            let st = Stack {
                norm: norm.then_some(Norm {
                    w: &g,
                    b: &be,
                    eps: 1e-5,
                }),
                first: Layer {
                    w: &w1,
                    out: hid,
                    b: Some(&b1),
                    act: if two {
                        Activation::Relu
                    } else {
                        Activation::None
                    },
                },
                second: two.then_some(Layer {
                    w: &w2,
                    out,
                    b: Some(&b2),
                    act: Activation::None,
                }),
            };
            let width = st.out();
            let x = rand(rows * inp, 7);
            let y0 = rand(rows * width, 8);
            let mut y = y0.clone();
            dense(&st, &x, rows, inp, &mut y, mode).unwrap();
            assert_eq!(y, reference(&st, &x, rows, inp, &y0, mode), "{rows}x{inp}");
        }
    }

    #[test]
    fn runs_on_interleaved_halves_of_one_buffer() {
        // state [rows, 2w]: hi += FF(LN(lo)), as a reversible block's g does in place.
        let (rows, w, hid) = (61, 16, 24);
        let state0 = rand(rows * 2 * w, 9);
        let (w1, w2, g, b) = (
            rand(hid * w, 10),
            rand(w * hid, 11),
            rand(w, 12),
            rand(w, 13),
        );
        let st = Stack {
            norm: Some(Norm {
                w: &g,
                b: &b,
                eps: 1e-12,
            }),
            first: Layer {
                w: &w1,
                out: hid,
                b: None,
                act: Activation::Relu,
            },
            second: Some(Layer {
                w: &w2,
                out: w,
                b: None,
                act: Activation::None,
            }),
        };
        let mut state = state0.clone();
        let p = state.as_mut_ptr();
        assert!(rows_disjoint((0, 2 * w, w), (w, 2 * w, w), rows));
        // SAFETY: lo and hi rows interleave but share no element.
        unsafe { dense_raw(&st, p, 2 * w, rows, w, p.add(w), 2 * w, Mode::Accumulate).unwrap() };
        let lo: Vec<f32> = state0.chunks(2 * w).flat_map(|r| r[..w].to_vec()).collect();
        let hi0: Vec<f32> = state0.chunks(2 * w).flat_map(|r| r[w..].to_vec()).collect();
        let want = reference(&st, &lo, rows, w, &hi0, Mode::Accumulate);
        for (r, row) in state.chunks(2 * w).enumerate() {
            assert_eq!(&row[..w], &lo[r * w..(r + 1) * w], "lo row {r} untouched");
            assert_eq!(&row[w..], &want[r * w..(r + 1) * w], "hi row {r}");
        }
    }

    /// A pair gives the bits of its two stacks run one after the other, on
    /// contiguous and on strided rows, at any thread count.
    #[test]
    fn pair_matches_two_stacks_bit_for_bit() {
        for (rows, inp, o1, o2, norm, ldx) in [
            (1, 3, 5, 2, true, 3),
            (131, 17, 40, 9, true, 20),
            (300, 64, 64, 64, true, 128),
            (77, 33, 65, 1, false, 33),
        ] {
            let (w1, b1, w2) = (rand(o1 * inp, 1), rand(o1, 2), rand(o2 * inp, 3));
            let (g, be) = (rand(inp, 5), rand(inp, 6));
            let norm = norm.then_some(Norm {
                w: &g,
                b: &be,
                eps: 1e-5,
            });
            let first = Layer {
                w: &w1,
                out: o1,
                b: Some(&b1),
                act: Activation::Gelu,
            };
            let second = Layer {
                w: &w2,
                out: o2,
                b: None,
                act: Activation::None,
            };
            let xs = rand(rows * ldx, 7);
            let x: Vec<f32> = xs.chunks(ldx).flat_map(|r| r[..inp].to_vec()).collect();
            let want = |l: Layer| {
                let st = Stack {
                    norm,
                    first: l,
                    second: None,
                };
                let mut y = vec![0.0; rows * l.out];
                dense(&st, &x, rows, inp, &mut y, Mode::Store).unwrap();
                y
            };
            let (want1, want2) = (want(first), want(second));
            let pair = Pair {
                norm,
                first,
                second,
            };
            for threads in [1, 3, 0] {
                let _ = crate::pool::set_threads(threads);
                let (mut y1, mut y2) = (vec![0.0; rows * o1], vec![0.0; rows * o2]);
                dense_pair(&pair, &x, rows, inp, &mut y1, &mut y2).unwrap();
                assert_eq!(
                    (&y1, &y2),
                    (&want1, &want2),
                    "{rows}x{inp}, {threads} threads"
                );
                // Strided input and a strided first destination.
                let ld1 = o1 + 3;
                let mut y1s = vec![-1.0; rows * ld1];
                let (p1, p2) = (y1s.as_mut_ptr(), y2.as_mut_ptr());
                // SAFETY: xs holds rows of ldx, y1s rows of ld1, y2 rows of o2; all distinct.
                unsafe {
                    dense_pair_raw(&pair, xs.as_ptr(), ldx, rows, inp, [(p1, ld1), (p2, o2)])
                        .unwrap()
                };
                for (r, row) in y1s.chunks(ld1).enumerate() {
                    assert_eq!(&row[..o1], &want1[r * o1..(r + 1) * o1], "row {r}");
                    assert!(row[o1..].iter().all(|&v| v == -1.0), "gap of row {r} kept");
                }
            }
        }
    }

    #[test]
    fn pair_rejects_bad_sizes() {
        let w = [1.0f32; 4];
        let layer = |out| Layer {
            w: &w,
            out,
            b: None,
            act: Activation::None,
        };
        let pair = Pair {
            norm: None,
            first: layer(2),
            second: layer(2),
        };
        let (mut y1, mut y2) = ([0.0; 2], [0.0; 1]);
        assert!(dense_pair(&pair, &[1.0, 2.0], 1, 2, &mut y1, &mut y2).is_err());
        let bad = Pair {
            second: layer(3),
            ..pair
        };
        let mut y3 = [0.0; 3];
        assert!(dense_pair(&bad, &[1.0, 2.0], 1, 2, &mut y1, &mut y3).is_err());
    }

    #[test]
    fn rejects_activation_before_accumulate_and_bad_sizes() {
        let w = [1.0f32; 4];
        let relu = Layer {
            w: &w,
            out: 2,
            b: None,
            act: Activation::Relu,
        };
        let st = Stack {
            norm: None,
            first: relu,
            second: None,
        };
        let mut y = [0.0; 2];
        assert!(dense(&st, &[1.0, 2.0], 1, 2, &mut y, Mode::Accumulate).is_err());
        assert!(dense(&st, &[1.0, 2.0, 3.0], 1, 3, &mut y, Mode::Store).is_err());
    }

    proptest::proptest! {
        /// `rows_disjoint` never says "disjoint" when an element of one strided
        /// matrix is an element of the other (checked by brute force).
        #[test]
        fn rows_disjoint_is_exact(
            oa in 0usize..40, la in 1usize..20, ca in 0usize..20,
            ob in 0usize..40, lb in 1usize..20, cb in 0usize..20, rows in 0usize..6,
        ) {
            let (ca, cb) = (ca.min(la), cb.min(lb));
            let cells = |o: usize, l: usize, c: usize| -> std::collections::HashSet<usize> {
                (0..rows).flat_map(|r| (0..c).map(move |j| o + r * l + j)).collect()
            };
            let truth = cells(oa, la, ca).is_disjoint(&cells(ob, lb, cb));
            let said = rows_disjoint((oa, la, ca), (ob, lb, cb), rows);
            // Sound always. Exact for the case generated code needs (two column
            // ranges of the same rows: offsets less than a row apart); beyond
            // that it may refuse matrices whose rows happen not to coincide.
            if said {
                proptest::prop_assert!(truth);
            } else if la == lb && oa.abs_diff(ob) < la {
                proptest::prop_assert!(!truth, "{oa} {la} {ca} / {ob} {lb} {cb} x {rows}");
            }
        }
    }

    #[test]
    fn disjointness_of_strided_rows() {
        assert!(rows_disjoint((0, 8, 4), (4, 8, 4), 10));
        assert!(!rows_disjoint((0, 8, 5), (4, 8, 4), 10));
        assert!(!rows_disjoint((0, 8, 4), (4, 9, 4), 10));
        assert!(rows_disjoint((0, 4, 4), (40, 4, 4), 10));
        assert!(!rows_disjoint((0, 4, 4), (36, 4, 4), 10));
        assert!(rows_disjoint((4, 8, 4), (0, 8, 4), 3));
    }
}
