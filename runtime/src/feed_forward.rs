//! The feed-forward's backward pass (`rc_feed_forward_grad_f32`) on blocks
//! of rows, so that its `[rows, F]` values never exist whole.
//!
//! Per block: recompute the normalised rows `n = LN(x)` and the hidden
//! values `h = n·w1ᵀ + b1`, then
//! `dw2 += dyᵀ·act(h)`, `db2 += Σ dy`, `dh = (dy·w2) ⊙ act'(h)`,
//! `db1 += Σ dh`, `dw1 += dhᵀ·n`, `dn = dh·w1`, and the layer norm's
//! gradients from `dn`. The weight gradients continue the GEMM's
//! multiply-add chain block after block (see [`crate::gemm`]), and the
//! column sums add rows in order, so no result depends on the thread count.
//! Only the outputs asked for are computed: `dx` alone skips `dw2`, the
//! biases' sums skip their products. The forward's output `y = act(h)·w2ᵀ +
//! b2` may be asked for too: a reversible block's backward recomputes it
//! from the same rows (`x2 = y2 - g(y1)`), and computing it here shares the
//! hidden values instead of computing them twice.

use crate::act::{Activation, Apply};
use crate::error::{invalid, try_zeroed, Result};
use crate::gemm::check_len;
use crate::nn::{layer_norm, layer_norm_grad};
use crate::pool::SharedMut;
use crate::tensor_ops::{matmul_into_t, Transposed};

/// Rows per block at least (see [`reformc_ir::FEED_FORWARD_MIN_BLOCK_ROWS`]).
pub const MIN_BLOCK_ROWS: usize = reformc_ir::FEED_FORWARD_MIN_BLOCK_ROWS as usize;

/// The feed-forward's parameters (`w1` `[F, D]`, `w2` `[D, F]`).
#[derive(Clone, Copy)]
pub struct Params<'a> {
    /// Layer-norm scale `[D]` (its shift does not enter the gradients).
    pub ln_w: &'a [f32],
    /// Layer-norm shift `[D]`.
    pub ln_b: &'a [f32],
    /// Layer-norm epsilon.
    pub eps: f32,
    /// First linear `[F, D]`.
    pub w1: &'a [f32],
    /// Its bias `[F]`.
    pub b1: &'a [f32],
    /// Activation after the first linear.
    pub act: Activation,
    /// Second linear `[D, F]`.
    pub w2: &'a [f32],
    /// Its bias `[D]` (read for the forward's output only).
    pub b2: &'a [f32],
}

/// The gradients (and the forward's output) to compute; `None` skips one.
#[derive(Default)]
pub struct Grads<'a> {
    /// The forward's output `[rows, D]`.
    pub y: Option<&'a mut [f32]>,
    /// `[rows, D]`.
    pub x: Option<&'a mut [f32]>,
    /// `[D]`.
    pub ln_w: Option<&'a mut [f32]>,
    /// `[D]`.
    pub ln_b: Option<&'a mut [f32]>,
    /// `[F, D]`.
    pub w1: Option<&'a mut [f32]>,
    /// `[F]`.
    pub b1: Option<&'a mut [f32]>,
    /// `[D, F]`.
    pub w2: Option<&'a mut [f32]>,
    /// `[D]`.
    pub b2: Option<&'a mut [f32]>,
}

impl Grads<'_> {
    /// Whether `dh` (and so `dy·w2`) is needed.
    fn need_dh(&self) -> bool {
        self.x.is_some()
            || self.ln_w.is_some()
            || self.ln_b.is_some()
            || self.w1.is_some()
            || self.b1.is_some()
    }

    /// Whether `dn` (the layer norm's output gradient) is needed.
    fn need_dn(&self) -> bool {
        self.x.is_some() || self.ln_w.is_some() || self.ln_b.is_some()
    }
}

/// Rows per block for a forward chunk of `chunk` rows: at least
/// [`MIN_BLOCK_ROWS`], at most `rows`.
///
/// ```
/// use reformc_runtime::feed_forward::block_rows;
/// assert_eq!(block_rows(64, 16384), 1024);
/// assert_eq!(block_rows(4096, 16384), 4096);
/// assert_eq!(block_rows(64, 100), 100);
/// ```
pub fn block_rows(chunk: usize, rows: usize) -> usize {
    chunk.max(MIN_BLOCK_ROWS).min(rows).max(1)
}

/// Scratch floats of one block of `c` rows: `n`, `h`, `act(h)` or `dh`,
/// `dn`, the layer-norm weight's block sum and the sub-blocks' partial
/// column sums (the memory plan's `feed_forward_scratch` counts the same).
fn scratch_len(c: usize, d: usize, f: usize) -> Option<usize> {
    let subs = c.div_ceil(SUB_ROWS);
    c.checked_mul(d)?
        .checked_mul(2)?
        .checked_add(c.checked_mul(f)?.checked_mul(2)?)?
        .checked_add(d)?
        .checked_add(subs.checked_mul(f.checked_add(d)?)?)
}

/// The gradients of `sum(dy · feed_forward(x))` that `out` asks for, for
/// `x` and `dy` `[rows, d]`, on blocks of [`block_rows`]`(chunk, rows)`.
///
/// ```
/// use reformc_runtime::feed_forward::{feed_forward_grad, Grads, Params};
/// use reformc_runtime::Activation;
/// let (ones, zeros) = ([1.0f32; 2], [0.0f32; 2]);
/// let eye = [1.0f32, 0.0, 0.0, 1.0];
/// let p = Params { ln_w: &ones, ln_b: &zeros, eps: 0.0, w1: &eye, b1: &zeros, act: Activation::None, w2: &eye, b2: &zeros };
/// let mut db2 = [0.0f32; 2];
/// let out = Grads { b2: Some(&mut db2), ..Grads::default() };
/// feed_forward_grad(&[1.0, 3.0, 5.0, 9.0], &[1.0, 2.0, 3.0, 4.0], 2, 2, 2, &p, 1, out).unwrap();
/// assert_eq!(db2, [4.0, 6.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn feed_forward_grad(
    x: &[f32],
    dy: &[f32],
    rows: usize,
    d: usize,
    f: usize,
    p: &Params,
    chunk: usize,
    mut out: Grads,
) -> Result<()> {
    check_sizes(x, dy, rows, d, f, p, &out)?;
    zero_sums(&mut out);
    if rows == 0 || d == 0 || f == 0 {
        if let Some(dx) = out.x.as_deref_mut() {
            dx.fill(0.0);
        }
        if let (Some(y), true) = (out.y.as_deref_mut(), d > 0) {
            y.chunks_exact_mut(d).for_each(|r| r.copy_from_slice(p.b2));
        }
        return Ok(());
    }
    let c = block_rows(chunk, rows);
    let len = scratch_len(c, d, f).ok_or_else(|| invalid("block scratch overflows"))?;
    let mut scratch = try_zeroed::<f32>(len, "feed-forward gradient blocks")?;
    for r0 in (0..rows).step_by(c) {
        let cr = c.min(rows - r0);
        let span = r0 * d..(r0 + cr) * d;
        block(
            &x[span.clone()],
            &dy[span],
            cr,
            d,
            f,
            p,
            r0,
            &mut out,
            &mut scratch,
        )?;
    }
    Ok(())
}

/// Checks every length against `rows`, `d` and `f`.
fn check_sizes(
    x: &[f32],
    dy: &[f32],
    rows: usize,
    d: usize,
    f: usize,
    p: &Params,
    out: &Grads,
) -> Result<()> {
    let rd = rows.checked_mul(d);
    let fd = f.checked_mul(d);
    check_len("x", x.len(), rd)?;
    check_len("dy", dy.len(), rd)?;
    for (name, len, want) in [
        ("ln_w", p.ln_w.len(), Some(d)),
        ("ln_b", p.ln_b.len(), Some(d)),
        ("w1", p.w1.len(), fd),
        ("b1", p.b1.len(), Some(f)),
        ("w2", p.w2.len(), fd),
        ("b2", p.b2.len(), Some(d)),
    ] {
        check_len(name, len, want)?;
    }
    let outs = [
        ("y", out.y.as_deref().map(<[f32]>::len), rd),
        ("dx", out.x.as_deref().map(<[f32]>::len), rd),
        ("d ln_w", out.ln_w.as_deref().map(<[f32]>::len), Some(d)),
        ("d ln_b", out.ln_b.as_deref().map(<[f32]>::len), Some(d)),
        ("d w1", out.w1.as_deref().map(<[f32]>::len), fd),
        ("d b1", out.b1.as_deref().map(<[f32]>::len), Some(f)),
        ("d w2", out.w2.as_deref().map(<[f32]>::len), fd),
        ("d b2", out.b2.as_deref().map(<[f32]>::len), Some(d)),
    ];
    for (name, len, want) in outs {
        if let Some(len) = len {
            check_len(name, len, want)?;
        }
    }
    Ok(())
}

/// Zeroes the sums the blocks add to.
fn zero_sums(out: &mut Grads) {
    for s in [
        &mut out.ln_w,
        &mut out.ln_b,
        &mut out.w1,
        &mut out.b1,
        &mut out.w2,
        &mut out.b2,
    ]
    .into_iter()
    .flatten()
    {
        s.fill(0.0);
    }
}

/// `acc[j] += Σ_r m[r, j]` over the rows of `m` in order.
fn add_column_sums(acc: &mut [f32], m: &[f32]) {
    for row in m.chunks_exact(acc.len()) {
        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
}

/// Rows of one task of a block's elementwise passes, and of one partial
/// column sum: fixed, so that the sums do not depend on the thread count.
const SUB_ROWS: usize = 256;

/// Runs `f(task, rows)` for the sub-blocks of [`SUB_ROWS`] rows of a block
/// of `c` rows, in parallel.
fn par_sub_blocks(c: usize, f: impl Fn(usize, std::ops::Range<usize>) + Send + Sync) -> Result<()> {
    crate::pool::par_for(c.div_ceil(SUB_ROWS), |i| {
        f(i, i * SUB_ROWS..((i + 1) * SUB_ROWS).min(c))
    })
}

/// One block of `c` rows starting at row `r0`.
#[allow(clippy::too_many_arguments)]
fn block(
    x: &[f32],
    dy: &[f32],
    c: usize,
    d: usize,
    f: usize,
    p: &Params,
    r0: usize,
    out: &mut Grads,
    scratch: &mut [f32],
) -> Result<()> {
    let subs = c.div_ceil(SUB_ROWS);
    let (n, rest) = scratch.split_at_mut(c * d);
    let (h, rest) = rest.split_at_mut(c * f);
    let (t, rest) = rest.split_at_mut(c * f);
    let (dn, rest) = rest.split_at_mut(c * d);
    let (dw_ln, rest) = rest.split_at_mut(d);
    let (parts_f, rest) = rest.split_at_mut(subs * f);
    let parts_d = &mut rest[..subs * d];
    layer_norm(x, c, d, p.ln_w, p.ln_b, p.eps, n)?;
    crate::gemm::linear(n, c, d, p.w1, f, Some(p.b1), Activation::None, h)?;
    let acc = true; // sums were zeroed: adding to 0 gives the stored bits
    if out.w2.is_some() || out.y.is_some() {
        let ts = SharedMut::new(t);
        par_sub_blocks(c, |_, r| {
            // SAFETY: task `r` alone writes rows `r` of t.
            let tr = unsafe { ts.slice(r.start * f, r.len() * f) };
            tr.copy_from_slice(&h[r.start * f..r.end * f]);
            p.act.apply_slice(tr);
        })?;
    }
    if let Some(y) = out.y.as_deref_mut() {
        let rows = &mut y[r0 * d..(r0 + c) * d];
        crate::gemm::linear(t, c, f, p.w2, d, Some(p.b2), Activation::None, rows)?;
    }
    if let Some(dw2) = out.w2.as_deref_mut() {
        let ta = Transposed { a: true, b: false };
        matmul_into_t(dy, t, d, c, f, ta, dw2, acc)?;
    }
    if let Some(db2) = out.b2.as_deref_mut() {
        column_sums(dy, c, d, parts_d)?;
        add_column_sums(db2, parts_d);
    }
    if !out.need_dh() {
        return Ok(());
    }
    // t = dy·w2, then dh = t ⊙ act'(h) in place, with db1's partial sums.
    matmul_into_t(dy, p.w2, c, d, f, Transposed::NONE, t, false)?;
    let (ts, ps) = (SharedMut::new(t), SharedMut::new(parts_f));
    par_sub_blocks(c, |i, r| {
        // SAFETY: task `i` alone writes rows `r` of t and partial row i.
        let (tr, part) = unsafe { (ts.slice(r.start * f, r.len() * f), ps.slice(i * f, f)) };
        act_grad_in_place(p.act, &h[r.start * f..r.end * f], tr);
        part.fill(0.0);
        add_column_sums(part, tr);
    })?;
    if let Some(db1) = out.b1.as_deref_mut() {
        add_column_sums(db1, parts_f);
    }
    if let Some(dw1) = out.w1.as_deref_mut() {
        matmul_into_t(t, n, f, c, d, Transposed { a: true, b: false }, dw1, acc)?;
    }
    if !out.need_dn() {
        return Ok(());
    }
    matmul_into_t(t, p.w1, c, f, d, Transposed::NONE, dn, false)?;
    if let Some(db) = out.ln_b.as_deref_mut() {
        column_sums(dn, c, d, parts_d)?;
        add_column_sums(db, parts_d);
    }
    if let Some(dw) = out.ln_w.as_deref_mut() {
        layer_norm_grad(x, c, d, p.ln_w, dn, p.eps, false, dw_ln)?;
        dw.iter_mut().zip(dw_ln.iter()).for_each(|(a, v)| *a += v);
    }
    if let Some(dx) = out.x.as_deref_mut() {
        let rows = &mut dx[r0 * d..(r0 + c) * d];
        layer_norm_grad(x, c, d, p.ln_w, dn, p.eps, true, rows)?;
    }
    Ok(())
}

/// The column sums of each sub-block of `m` (`c` rows of `w`) into `parts`
/// (a row each), in parallel.
fn column_sums(m: &[f32], c: usize, w: usize, parts: &mut [f32]) -> Result<()> {
    let ps = SharedMut::new(parts);
    par_sub_blocks(c, |i, r| {
        // SAFETY: task `i` alone writes partial row i.
        let part = unsafe { ps.slice(i * w, w) };
        part.fill(0.0);
        add_column_sums(part, &m[r.start * w..r.end * w]);
    })
}

/// `g = g · act'(h)` elementwise, the product taken in f64 and rounded once
/// (the interpreter's `act_grad`); relu's derivative is a selection.
fn act_grad_in_place(act: Activation, h: &[f32], g: &mut [f32]) {
    match act {
        Activation::None => {}
        Activation::Relu => g
            .iter_mut()
            .zip(h)
            .for_each(|(g, &h)| *g = if h > 0.0 { *g } else { 0.0 }),
        _ => g.iter_mut().zip(h).for_each(|(g, &h)| {
            *g = (f64::from(*g) * act.derivative(f64::from(h))) as f32;
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};
    use reformc_interp::feed_forward::FeedForward;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (v % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    struct Case {
        rows: usize,
        d: usize,
        f: usize,
        act: Activation,
        x: Vec<f32>,
        dy: Vec<f32>,
        w: [Vec<f32>; 6],
    }

    const NAMES: [&str; 7] = ["x", "ln_w", "ln_b", "w1", "b1", "w2", "b2"];

    impl Case {
        fn new(rows: usize, d: usize, f: usize, act: Activation) -> Case {
            Case {
                rows,
                d,
                f,
                act,
                x: values(rows * d, 1),
                dy: values(rows * d, 2),
                w: [
                    values(d, 3).iter().map(|v| 1.0 + v / 2.0).collect(),
                    values(d, 4),
                    values(f * d, 5),
                    values(f, 6),
                    values(d * f, 7),
                    values(d, 8),
                ],
            }
        }

        fn params(&self) -> Params<'_> {
            Params {
                ln_w: &self.w[0],
                ln_b: &self.w[1],
                eps: 1e-5,
                w1: &self.w[2],
                b1: &self.w[3],
                act: self.act,
                w2: &self.w[4],
                b2: &self.w[5],
            }
        }

        fn lens(&self) -> [usize; 7] {
            let (r, d, f) = (self.rows, self.d, self.f);
            [r * d, d, d, f * d, f, d * f, d]
        }

        /// Every gradient, computed by the kernel with blocks for `chunk`.
        fn run(&self, chunk: usize) -> Vec<Vec<f32>> {
            let mut g: Vec<Vec<f32>> = self.lens().iter().map(|&n| vec![f32::NAN; n]).collect();
            let [x, lw, lb, w1, b1, w2, b2] = &mut g[..] else {
                unreachable!()
            };
            let out = Grads {
                y: None,
                x: Some(x),
                ln_w: Some(lw),
                ln_b: Some(lb),
                w1: Some(w1),
                b1: Some(b1),
                w2: Some(w2),
                b2: Some(b2),
            };
            feed_forward_grad(
                &self.x,
                &self.dy,
                self.rows,
                self.d,
                self.f,
                &self.params(),
                chunk,
                out,
            )
            .unwrap();
            g
        }

        /// The interpreter's f64 gradient with respect to operand `wrt`.
        fn reference(&self, wrt: &str) -> Vec<f64> {
            let arr = |v: &[f32], s: &[usize]| {
                ArrayD::from_shape_vec(IxDyn(s), v.iter().map(|&x| f64::from(x)).collect()).unwrap()
            };
            let (d, f) = (self.d, self.f);
            let w: Vec<ArrayD<f64>> = [vec![d], vec![d], vec![f, d], vec![f], vec![d, f], vec![d]]
                .iter()
                .zip(&self.w)
                .map(|(s, v)| arr(v, s))
                .collect();
            let ff = FeedForward {
                ln_w: &w[0],
                ln_b: &w[1],
                w1: &w[2],
                b1: &w[3],
                w2: &w[4],
                b2: &w[5],
                eps: 1e-5,
                act: self.act,
            };
            let x = arr(&self.x, &[self.rows, d]);
            let dy = arr(&self.dy, &[self.rows, d]);
            ff.grad(&x, &dy, wrt).unwrap().into_raw_vec_and_offset().0
        }
    }

    #[test]
    fn matches_the_interpreter() {
        for act in [Activation::Relu, Activation::Gelu, Activation::None] {
            let case = Case::new(2500, 24, 40, act);
            let got = case.run(64);
            for (i, name) in NAMES.iter().enumerate() {
                let want = case.reference(name);
                let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
                let err = got[i]
                    .iter()
                    .zip(&want)
                    .fold(0f64, |m, (&g, &w)| m.max((f64::from(g) - w).abs()));
                assert!(
                    err / scale < 2e-5,
                    "{act:?} d{name}: error {err} (scale {scale})"
                );
            }
        }
    }

    #[test]
    fn the_forward_output_is_the_fused_dense_stack() {
        for act in [Activation::Relu, Activation::Gelu] {
            let case = Case::new(1300, 16, 24, act);
            let mut y = vec![f32::NAN; 1300 * 16];
            let out = Grads {
                y: Some(&mut y),
                ..Grads::default()
            };
            let p = case.params();
            feed_forward_grad(&case.x, &case.dy, 1300, 16, 24, &p, 64, out).unwrap();
            let layer = |w, out, b, act| crate::dense::Layer {
                w,
                out,
                b: Some(b),
                act,
            };
            let stack = crate::dense::Stack {
                norm: Some(crate::dense::Norm {
                    w: p.ln_w,
                    b: p.ln_b,
                    eps: p.eps,
                }),
                first: layer(p.w1, 24, p.b1, act),
                second: Some(layer(p.w2, 16, p.b2, Activation::None)),
            };
            let mut want = vec![0.0f32; 1300 * 16];
            crate::dense::dense(
                &stack,
                &case.x,
                1300,
                16,
                &mut want,
                crate::dense::Mode::Store,
            )
            .unwrap();
            assert_eq!(y, want, "{act:?}");
        }
    }

    #[test]
    fn blocks_and_threads_do_not_change_the_bits() {
        let case = Case::new(2100, 16, 24, Activation::Gelu);
        let one = case.run(1);
        assert_eq!(one, case.run(MIN_BLOCK_ROWS), "chunk below the minimum");
        let _ = crate::pool::set_threads(1);
        let single = case.run(1);
        let _ = crate::pool::set_threads(3);
        let three = case.run(1);
        let _ = crate::pool::set_threads(0);
        assert_eq!(single, three);
        // Whole rows as one block: the same sums, added in another grouping.
        let whole = case.run(4096);
        let close = whole
            .iter()
            .flatten()
            .zip(one.iter().flatten())
            .all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()));
        assert!(close);
    }

    #[test]
    fn only_the_requested_gradients_are_written() {
        let case = Case::new(50, 8, 12, Activation::Relu);
        let all = case.run(16);
        let mut db1 = vec![f32::NAN; 12];
        let out = Grads {
            b1: Some(&mut db1),
            ..Grads::default()
        };
        feed_forward_grad(&case.x, &case.dy, 50, 8, 12, &case.params(), 16, out).unwrap();
        assert_eq!(db1, all[4]);
    }

    #[test]
    fn bad_sizes_are_refused() {
        let case = Case::new(4, 8, 12, Activation::Relu);
        let mut dx = vec![0.0f32; 31];
        let out = Grads {
            x: Some(&mut dx),
            ..Grads::default()
        };
        let e = feed_forward_grad(&case.x, &case.dy, 4, 8, 12, &case.params(), 16, out);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("dx has 31 elements, expected 32"));
        let e = feed_forward_grad(
            &case.x,
            &case.dy,
            4,
            8,
            11,
            &case.params(),
            16,
            Grads::default(),
        );
        assert!(e.is_err());
    }
}
