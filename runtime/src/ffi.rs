//! The C ABI of `runtime/ABI.md`: `#[no_mangle] extern "C"` entry points.
//!
//! Each function validates its arguments (null pointers, negative sizes,
//! overflowing products, outputs overlapping inputs), builds slices, calls the
//! safe kernel and turns errors into status codes (0 = ok, see [`Error::code`])
//! with the message kept for [`rc_last_error`]. Panics are caught: nothing
//! unwinds into C and nothing aborts.

use crate::attention;
use crate::error::{invalid, last_error_ptr, set_last_error, Error, Result};
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, mapping its error (or a panic) to a status code and the message.
fn guard(f: impl FnOnce() -> Result<()>) -> i32 {
    let err = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Error::Internal(format!("internal error: {what}"))
        }
    };
    set_last_error(&err);
    err.code()
}

/// The context pointer of [`rc_parallel_for`], shared by its tasks.
#[derive(Clone, Copy)]
struct SendPtr(*mut c_void);
// SAFETY: the generated body only reads the context (its captured values)
// and writes disjoint ranges of the buffers it points to; the context
// outlives the parallel loop (rc_parallel_for returns after every task).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

fn size(n: i64, name: &str) -> Result<usize> {
    usize::try_from(n).map_err(|_| invalid(format!("{name} = {n} is negative")))
}

fn count(dims: &[usize], name: &str) -> Result<usize> {
    attention::product(dims, name)
}

/// Each `(value, name)` as a size; the first negative one is the error.
fn sizes<const N: usize>(values: [(i64, &str); N]) -> Result<[usize; N]> {
    let mut out = [0; N];
    for (o, (x, name)) in out.iter_mut().zip(values) {
        *o = size(x, name)?;
    }
    Ok(out)
}

/// The span of an optional buffer of `dims`: empty when `p` is NULL.
fn opt_span<T>(p: *const T, dims: &[usize], name: &'static str) -> Result<Span> {
    let n = if p.is_null() { 0 } else { count(dims, name)? };
    span(p, n, name)
}

/// Elements from the first to the last element of `rows` rows of `cols`
/// values, `ld` apart (0 for no rows).
fn rows_extent(rows: usize, ld: usize, cols: usize, name: &'static str) -> Result<usize> {
    match rows {
        0 => Ok(0),
        _ => count(&[rows - 1, ld], name)?
            .checked_add(cols)
            .ok_or_else(|| invalid(format!("{name} is too large"))),
    }
}

/// A raw buffer the caller handed in: where it is and how many bytes it spans.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    bytes: usize,
    name: &'static str,
}

fn span<T>(p: *const T, n: usize, name: &'static str) -> Result<Span> {
    let bytes = n
        .checked_mul(std::mem::size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| invalid(format!("{name} is too large")))?;
    if n > 0 && p.is_null() {
        return Err(invalid(format!("{name} is NULL")));
    }
    if n > 0 && !p.is_aligned() {
        return Err(invalid(format!("{name} is not aligned")));
    }
    Ok(Span {
        start: p as usize,
        bytes,
        name,
    })
}

/// Errors if the output overlaps any input (the kernels need distinct buffers).
fn no_overlap(out: Span, inputs: &[Span]) -> Result<()> {
    for i in inputs {
        if out.bytes > 0
            && i.bytes > 0
            && out.start < i.start + i.bytes
            && i.start < out.start + out.bytes
        {
            return Err(invalid(format!("{} overlaps {}", out.name, i.name)));
        }
    }
    Ok(())
}

/// [`view`] of an optional buffer (`None` when `p` is NULL).
///
/// # Safety
/// As [`view`].
unsafe fn opt_view<'a, T>(p: *const T, s: Span) -> Option<&'a [T]> {
    // SAFETY: the caller's contract, for a non-NULL pointer.
    (!p.is_null()).then(|| unsafe { view(p, s) })
}

/// # Safety
/// `s` was checked by [`span`]; the caller guarantees it points to that many
/// readable elements that nobody writes during the call.
unsafe fn view<'a, T>(p: *const T, s: Span) -> &'a [T] {
    if s.bytes == 0 {
        return &[];
    }
    // SAFETY: non-null, aligned, size bounded by isize::MAX (checked in `span`);
    // validity of the memory is the caller's contract.
    unsafe { std::slice::from_raw_parts(p, s.bytes / std::mem::size_of::<T>()) }
}

/// # Safety
/// As [`view`], for writable memory that no other slice of this call overlaps.
unsafe fn view_mut<'a, T>(p: *mut T, s: Span) -> &'a mut [T] {
    if s.bytes == 0 {
        return &mut [];
    }
    // SAFETY: as in `view`; `no_overlap` ruled out aliasing with the inputs.
    unsafe { std::slice::from_raw_parts_mut(p, s.bytes / std::mem::size_of::<T>()) }
}

/// The body of `rc_arg_f32` / `rc_arg_i64`: argmax (`sort` = 0, into
/// `y[outer, inner]`) or stable argsort (`sort` = 1, into `y[outer, n, inner]`)
/// along the middle axis of `x[outer, n, inner]`, for any key type.
///
/// # Safety
/// `x` and `y` must point to that many readable / writable elements (the
/// spans are checked for null, size overflow and overlap, not for validity).
unsafe fn arg_keys<T: crate::tensor_ops::SortKey>(
    x: *const T,
    outer: i64,
    n: i64,
    inner: i64,
    sort: i32,
    y: *mut i64,
) -> i32 {
    guard(|| {
        let [o, n, i] = sizes([(outer, "outer"), (n, "n"), (inner, "inner")])?;
        let sx = span(x, count(&[o, n, i], "x")?, "x")?;
        let ny = if sort != 0 {
            count(&[o, n, i], "y")?
        } else {
            count(&[o, i], "y")?
        };
        let sy = span(y, ny, "y")?;
        no_overlap(sy, &[sx])?;
        // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
        let (x, y) = unsafe { (view(x, sx), view_mut(y, sy)) };
        if sort != 0 {
            crate::tensor_ops::argsort(x, o, n, i, y)
        } else {
            crate::tensor_ops::argmax(x, o, n, i, y)
        }
    })
}

crate::c_abi! {
    section = "Kernels (runtime/src/ffi.rs): 0 = ok, else a status code and the message in rc_last_error()";

    /// Sets the number of worker threads (`n = 0`: all cores). Idempotent.
    ///
    /// # Safety
    /// Always safe to call; `unsafe` only for uniformity with the other entry points.
    unsafe fn rc_set_threads(n: i64) -> i32 {
        // Executables set their threads first: the allocator policy then
        // holds for every allocation of the run.
        crate::alloc::allocator_policy();
        guard(|| crate::pool::set_threads(n))
    }

    /// Runs `body(ctx, lo, hi)` for consecutive ranges `[lo, hi)` covering
    /// `0..n`, each at least `grain` long (but the last), spread over the
    /// pool's threads: the parallel loops of generated code, whose body is an
    /// outlined function of type `void (void* ctx, int64_t lo, int64_t hi)`
    /// reading its captured values from `ctx`. Ranges are disjoint, so a body
    /// that writes only the elements of its own range is race-free.
    ///
    /// # Safety
    /// `body` must be such a function, callable from any thread at once for
    /// disjoint ranges with this `ctx`, which must stay valid for the call.
    unsafe fn rc_parallel_for(body: *const c_void, ctx: *mut c_void, n: i64, grain: i64) -> i32 {
        guard(|| {
            let n = size(n, "n")?;
            let grain = size(grain, "grain")?.max(1);
            if body.is_null() {
                return Err(invalid("body is NULL"));
            }
            // SAFETY: the caller passes a function of exactly this type (above).
            let f: extern "C" fn(*mut c_void, i64, i64) = unsafe { std::mem::transmute(body) };
            crate::pool::par_ranges(n, grain, SendPtr(ctx), move |c, lo, hi| {
                f(c.0, lo as i64, hi as i64)
            })
        })
    }

    /// The message of this thread's most recent failed call (empty if none):
    /// NUL-terminated, never NULL, valid until the next failing call on this thread.
    ///
    /// # Safety
    /// Always safe to call.
    unsafe fn rc_last_error() -> *const c_char {
        last_error_ptr()
    }

    /// `y[rows, out] = act(x[rows, in] · w[out, in]ᵀ + b[out])`; `b` may be NULL.
    ///
    /// # Safety
    /// Pointers must reference buffers of the sizes in runtime/ABI.md; `y` must not
    /// overlap the inputs (checked).
    unsafe fn rc_linear_f32(
        x: *const f32,
        rows: i64,
        in_: i64,
        w: *const f32,
        out: i64,
        b: *const f32,
        act: i32,
        y: *mut f32,
    ) -> i32 {
        guard(|| {
            let [rows, inp, out] = sizes([(rows, "rows"), (in_, "in"), (out, "out")])?;
        let act = crate::act::from_code(act)?;
            let sx = span(x, count(&[rows, inp], "x")?, "x")?;
            let sw = span(w, count(&[out, inp], "w")?, "w")?;
            let sb = span(b, if b.is_null() { 0 } else { out }, "b")?;
            let sy = span(y, count(&[rows, out], "y")?, "y")?;
            no_overlap(sy, &[sx, sw, sb])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (x, w, y) = unsafe { (view(x, sx), view(w, sw), view_mut(y, sy)) };
            // SAFETY: as above (NULL bias means no bias).
            let b = (!b.is_null()).then(|| unsafe { view(b, sb) });
            crate::linear(x, rows, inp, w, out, b, act, y)
        })
    }

    /// The fused dense stack of [`crate::dense`]: `y (+)= L2(L1(LN(x)))` on
    /// strided rows. `ln_w`/`ln_b` NULL: no layer norm; `w2` NULL: one linear
    /// (`out` must equal `hidden`); `b1`/`b2` may be NULL. Row `r` of `x` is
    /// `x[r*ldx ..][..in]`, of `y` is `y[r*ldy ..][..out]`; `accumulate` nonzero
    /// adds to `y` (the last activation must then be 0). `y`'s rows may interleave
    /// with `x`'s (two halves of one buffer) but must share no element with them.
    ///
    /// # Safety
    /// As [`rc_linear_f32`], with the strided extents above.
    unsafe fn rc_dense_f32(
        x: *const f32,
        ldx: i64,
        rows: i64,
        in_: i64,
        ln_w: *const f32,
        ln_b: *const f32,
        eps: f32,
        w1: *const f32,
        b1: *const f32,
        hidden: i64,
        act1: i32,
        w2: *const f32,
        b2: *const f32,
        out: i64,
        act2: i32,
        y: *mut f32,
        ldy: i64,
        accumulate: i32,
    ) -> i32 {
        guard(|| {
            let [rows, inp] = sizes([(rows, "rows"), (in_, "in")])?;
            let [hidden, out] = sizes([(hidden, "hidden"), (out, "out")])?;
            let [ldx, ldy] = sizes([(ldx, "ldx"), (ldy, "ldy")])?;
            if ldx < inp || ldy < out {
                return Err(invalid(format!(
                    "row strides ldx = {ldx}, ldy = {ldy} are below the row lengths {inp}, {out}"
                )));
            }
            if w2.is_null() && out != hidden {
                return Err(invalid(format!(
                    "one linear: out ({out}) must equal hidden ({hidden})"
                )));
            }
            let extent = |ld, cols, name| rows_extent(rows, ld, cols, name);
            let sx = span(x, extent(ldx, inp, "x")?, "x")?;
            let sy = span(y, extent(ldy, out, "y")?, "y")?;
            let has_ln = !ln_w.is_null() || !ln_b.is_null();
            let sg = span(ln_w, if has_ln { inp } else { 0 }, "ln_w")?;
            let sbeta = span(ln_b, if has_ln { inp } else { 0 }, "ln_b")?;
            let sw1 = span(w1, count(&[hidden, inp], "w1")?, "w1")?;
            let sb1 = span(b1, if b1.is_null() { 0 } else { hidden }, "b1")?;
            let two = !w2.is_null();
            let sw2 = span(w2, if two { count(&[out, hidden], "w2")? } else { 0 }, "w2")?;
            let sb2 = span(b2, if two && !b2.is_null() { out } else { 0 }, "b2")?;
            no_overlap(sy, &[sg, sbeta, sw1, sb1, sw2, sb2])?;
            // Element offsets from the lower of the two (`span` checked f32 alignment).
            let base = sx.start.min(sy.start);
            let at = |s: Span| (s.start - base) / std::mem::size_of::<f32>();
            if !crate::dense::rows_disjoint((at(sx), ldx, inp), (at(sy), ldy, out), rows) {
                return Err(invalid("y overlaps x".to_string()));
            }
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (g, beta, w1s) = unsafe { (view(ln_w, sg), view(ln_b, sbeta), view(w1, sw1)) };
            // SAFETY: as above (NULL means absent).
            let (b1s, w2s, b2s) = unsafe { (view(b1, sb1), view(w2, sw2), view(b2, sb2)) };
            let opt = |s: &'static [f32], present: bool| present.then_some(s);
            let stack = crate::dense::Stack {
                norm: has_ln.then_some(crate::dense::Norm { w: g, b: beta, eps }),
                first: crate::dense::Layer {
                    w: w1s,
                    out: hidden,
                    b: opt(b1s, !b1.is_null()),
                act: crate::act::from_code(act1)?,
                },
                second: if two {
                    Some(crate::dense::Layer {
                        w: w2s,
                        out,
                        b: opt(b2s, !b2.is_null()),
                    act: crate::act::from_code(act2)?,
                    })
                } else {
                    None
                },
            };
            let mode = if accumulate != 0 {
                crate::dense::Mode::Accumulate
            } else {
                crate::dense::Mode::Store
            };
            crate::dense::check(&stack, inp, mode)?;
            // SAFETY: extents checked by `span`; rows of y share no element with rows of
            // x (checked just above) nor with the parameters (no_overlap).
            unsafe { crate::dense::dense_raw(&stack, x, ldx, rows, inp, y, ldy, mode) }
        })
    }

    /// Two one-layer dense stacks over the same rows and the same optional
    /// layer norm (see [`crate::dense::dense_pair`]): `y1 = act1(LN(x)·w1ᵀ +
    /// b1)` with `w1` `[out1, in]`, and `y2` likewise; each row block is
    /// normalized once. `ln_w`/`ln_b` NULL: no layer norm; `b1`/`b2` may be
    /// NULL. Row `r` of `x` is `x[r*ldx ..][..in]`, of `y1` is
    /// `y1[r*ldy1 ..][..out1]`, of `y2` likewise. The extents of `y1`, `y2`
    /// and every input must not overlap.
    ///
    /// # Safety
    /// As [`rc_linear_f32`], with the strided extents above.
    unsafe fn rc_dense_pair_f32(
        x: *const f32,
        ldx: i64,
        rows: i64,
        in_: i64,
        ln_w: *const f32,
        ln_b: *const f32,
        eps: f32,
        w1: *const f32,
        b1: *const f32,
        out1: i64,
        act1: i32,
        y1: *mut f32,
        ldy1: i64,
        w2: *const f32,
        b2: *const f32,
        out2: i64,
        act2: i32,
        y2: *mut f32,
        ldy2: i64,
    ) -> i32 {
        guard(|| {
            let [rows, inp, ldx] = sizes([(rows, "rows"), (in_, "in"), (ldx, "ldx")])?;
            let [out1, ldy1] = sizes([(out1, "out1"), (ldy1, "ldy1")])?;
            let [out2, ldy2] = sizes([(out2, "out2"), (ldy2, "ldy2")])?;
            if ldx < inp || ldy1 < out1 || ldy2 < out2 {
                return Err(invalid(format!(
                    "row strides ldx = {ldx}, ldy1 = {ldy1}, ldy2 = {ldy2} are below the row \
                     lengths {inp}, {out1}, {out2}"
                )));
            }
            let extent = |ld, cols, name| rows_extent(rows, ld, cols, name);
            let sx = span(x, extent(ldx, inp, "x")?, "x")?;
            let sy1 = span(y1, extent(ldy1, out1, "y1")?, "y1")?;
            let sy2 = span(y2, extent(ldy2, out2, "y2")?, "y2")?;
            let has_ln = !ln_w.is_null() || !ln_b.is_null();
            let sg = span(ln_w, if has_ln { inp } else { 0 }, "ln_w")?;
            let sbeta = span(ln_b, if has_ln { inp } else { 0 }, "ln_b")?;
            let sw1 = span(w1, count(&[out1, inp], "w1")?, "w1")?;
            let sb1 = opt_span(b1, &[out1], "b1")?;
            let sw2 = span(w2, count(&[out2, inp], "w2")?, "w2")?;
            let sb2 = opt_span(b2, &[out2], "b2")?;
            let inputs = [sx, sg, sbeta, sw1, sb1, sw2, sb2];
            no_overlap(sy1, &inputs)?;
            no_overlap(sy2, &inputs)?;
            no_overlap(sy2, &[sy1])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (g, beta) = unsafe { (view(ln_w, sg), view(ln_b, sbeta)) };
            // SAFETY: as above (NULL biases are empty views, read as absent below).
            let (w1s, b1s, w2s, b2s) =
                unsafe { (view(w1, sw1), view(b1, sb1), view(w2, sw2), view(b2, sb2)) };
            let layer = |w, out, b: &'static [f32], present: bool, act| {
                Ok::<_, crate::Error>(crate::dense::Layer {
                    w,
                    out,
                    b: present.then_some(b),
                    act: crate::act::from_code(act)?,
                })
            };
            let pair = crate::dense::Pair {
                norm: has_ln.then_some(crate::dense::Norm { w: g, b: beta, eps }),
                first: layer(w1s, out1, b1s, !b1.is_null(), act1)?,
                second: layer(w2s, out2, b2s, !b2.is_null(), act2)?,
            };
            crate::dense::check_pair(&pair, inp)?;
            // SAFETY: extents checked by `span`; the destinations' extents share no
            // element with each other or with any input (no_overlap).
            unsafe {
                crate::dense::dense_pair_raw(&pair, x, ldx, rows, inp, [(y1, ldy1), (y2, ldy2)])
            }
        })
    }

    /// `y = LN(x)` over rows of `width` (biased variance), `w`, `b` of `[width]`.
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_layer_norm_f32(
        x: *const f32,
        rows: i64,
        width: i64,
        w: *const f32,
        b: *const f32,
        eps: f32,
        y: *mut f32,
    ) -> i32 {
        guard(|| {
            let [rows, width] = sizes([(rows, "rows"), (width, "width")])?;
            let sx = span(x, count(&[rows, width], "x")?, "x")?;
            let sw = span(w, width, "w")?;
            let sb = span(b, width, "b")?;
            let sy = span(y, count(&[rows, width], "y")?, "y")?;
            no_overlap(sy, &[sx, sw, sb])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (x, w, b, y) = unsafe { (view(x, sx), view(w, sw), view(b, sb), view_mut(y, sy)) };
            crate::layer_norm(x, rows, width, w, b, eps, y)
        })
    }

    /// The gradient of `sum(dy * LN(x))` over rows of `width`: with respect to
    /// `x` (`wrt_w` 0: `out` `[rows, width]`) or `w` (`wrt_w` 1: `out` `[width]`,
    /// summed over rows in blocks of a fixed size, so the bits do not depend on
    /// the thread count).
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_layer_norm_grad_f32(
        x: *const f32,
        rows: i64,
        width: i64,
        w: *const f32,
        dy: *const f32,
        eps: f32,
        wrt_w: i32,
        out: *mut f32,
    ) -> i32 {
        guard(|| {
            let [rows, width] = sizes([(rows, "rows"), (width, "width")])?;
            let wrt_x = match wrt_w {
                0 => true,
                1 => false,
                _ => {
                    let why = format!("wrt_w must be 0 or 1, found {wrt_w}");
                    return Err(Error::InvalidArgument(why));
                }
            };
            let n = count(&[rows, width], "x")?;
            let sx = span(x, n, "x")?;
            let sw = span(w, width, "w")?;
            let sd = span(dy, n, "dy")?;
            let so = span(out, if wrt_x { n } else { width }, "out")?;
            no_overlap(so, &[sx, sw, sd])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (x, w, dy, out) =
                unsafe { (view(x, sx), view(w, sw), view(dy, sd), view_mut(out, so)) };
            crate::layer_norm_grad(x, rows, width, w, dy, eps, wrt_x, out)
        })
    }

    /// The gradients of `sum(dy · feed_forward(x))` for `x` and `dy` `[rows,
    /// d]` (see [`crate::feed_forward`]): `ln_w`, `ln_b` `[d]`, `w1` `[f, d]`,
    /// `b1` `[f]`, `act1` an activation code, `w2` `[d, f]`, `b2` `[d]`, blocks
    /// of at least `chunk` rows. Each output (`y`, the forward's output, and
    /// `dx` `[rows, d]`, `dln_w`, `dln_b` `[d]`, `dw1` `[f, d]`, `db1` `[f]`,
    /// `dw2` `[d, f]`, `db2` `[d]`) may be NULL (not computed); no two outputs
    /// or an output and an input may overlap.
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_feed_forward_grad_f32(
        x: *const f32,
        dy: *const f32,
        rows: i64,
        d: i64,
        f: i64,
        ln_w: *const f32,
        ln_b: *const f32,
        eps: f32,
        w1: *const f32,
        b1: *const f32,
        act1: i32,
        w2: *const f32,
        b2: *const f32,
        chunk: i64,
        y: *mut f32,
        dx: *mut f32,
        dln_w: *mut f32,
        dln_b: *mut f32,
        dw1: *mut f32,
        db1: *mut f32,
        dw2: *mut f32,
        db2: *mut f32,
    ) -> i32 {
        guard(|| {
            let [rows, d, f] = sizes([(rows, "rows"), (d, "d"), (f, "f")])?;
            let [chunk] = sizes([(chunk, "chunk")])?;
            let act = crate::act::from_code(act1)?;
            let rd = count(&[rows, d], "x")?;
            let fd = count(&[f, d], "w1")?;
            let ins = [
                span(x, rd, "x")?,
                span(dy, rd, "dy")?,
                span(ln_w, d, "ln_w")?,
                span(ln_b, d, "ln_b")?,
                span(w1, fd, "w1")?,
                span(b1, f, "b1")?,
                span(w2, fd, "w2")?,
                span(b2, d, "b2")?,
            ];
            let outs = [
                opt_span(y, &[rows, d], "y")?,
                opt_span(dx, &[rows, d], "dx")?,
                opt_span(dln_w, &[d], "dln_w")?,
                opt_span(dln_b, &[d], "dln_b")?,
                opt_span(dw1, &[f, d], "dw1")?,
                opt_span(db1, &[f], "db1")?,
                opt_span(dw2, &[d, f], "dw2")?,
                opt_span(db2, &[d], "db2")?,
            ];
            for (i, o) in outs.iter().enumerate() {
                no_overlap(*o, &ins)?;
                no_overlap(*o, &outs[i + 1..])?;
            }
            // SAFETY: spans checked above (the outputs distinct from the inputs
            // and from each other); sizes are the ABI's contract with the caller.
            let (p, x, dy, out) = unsafe {
                let v = |i: usize, p: *const f32| view(p, ins[i]);
                let o = |i: usize, p: *mut f32| (!p.is_null()).then(|| view_mut(p, outs[i]));
                let p = crate::feed_forward::Params {
                    ln_w: v(2, ln_w),
                    ln_b: v(3, ln_b),
                    eps,
                    w1: v(4, w1),
                    b1: v(5, b1),
                    act,
                    w2: v(6, w2),
                    b2: v(7, b2),
                };
                let out = crate::feed_forward::Grads {
                    y: o(0, y),
                    x: o(1, dx),
                    ln_w: o(2, dln_w),
                    ln_b: o(3, dln_b),
                    w1: o(4, dw1),
                    b1: o(5, db1),
                    w2: o(6, dw2),
                    b2: o(7, db2),
                };
                (p, v(0, x), v(1, dy), out)
            };
            crate::feed_forward::feed_forward_grad(x, dy, rows, d, f, &p, chunk, out)
        })
    }

    /// `y[n, width] = table[ids[i]]`; status 2 if an id is outside `[0, vocab)`.
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_embedding_f32(
        ids: *const i64,
        n: i64,
        table: *const f32,
        vocab: i64,
        width: i64,
        y: *mut f32,
    ) -> i32 {
        guard(|| {
            let [n, vocab, width] = sizes([(n, "n"), (vocab, "vocab"), (width, "width")])?;
            let si = span(ids, n, "ids")?;
            let st = span(table, count(&[vocab, width], "table")?, "table")?;
            let sy = span(y, count(&[n, width], "y")?, "y")?;
            no_overlap(sy, &[si, st])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (ids, table, y) = unsafe { (view(ids, si), view(table, st), view_mut(y, sy)) };
            crate::embedding(ids, table, vocab, width, y)
        })
    }

    /// `y[n, d0+d1] = concat(w0[p / n1, 0, :], w1[0, p % n1, :])` for `p = pos[i]`.
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_axial_pos_f32(
        pos: *const i64,
        n: i64,
        w0: *const f32,
        n0: i64,
        d0: i64,
        w1: *const f32,
        n1: i64,
        d1: i64,
        y: *mut f32,
    ) -> i32 {
        guard(|| {
            let n = size(n, "n")?;
            let [n0, d0, n1, d1] = sizes([(n0, "n0"), (d0, "d0"), (n1, "n1"), (d1, "d1")])?;
            let width = d0
                .checked_add(d1)
                .ok_or_else(|| invalid("d0 + d1 overflows"))?;
            let sp = span(pos, n, "pos")?;
            let s0 = span(w0, count(&[n0, d0], "w0")?, "w0")?;
            let s1 = span(w1, count(&[n1, d1], "w1")?, "w1")?;
            let sy = span(y, count(&[n, width], "y")?, "y")?;
            no_overlap(sy, &[sp, s0, s1])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (pos, w0, w1, y) =
                unsafe { (view(pos, sp), view(w0, s0), view(w1, s1), view_mut(y, sy)) };
            crate::axial_pos(pos, w0, n0, d0, w1, n1, d1, y)
        })
    }

    /// Full attention over `[B, L, H·d]` tensors (see [`attention::attention`]);
    /// `mask[B, Lk]` (nonzero keeps a key) or NULL. `kv_chunk` 0: materialized
    /// softmax; > 0: streaming over key chunks of that size (exact).
    ///
    /// # Safety
    /// As [`rc_linear_f32`]; `mask` may be NULL.
    unsafe fn rc_attention_f32(
        q: *const f32,
        k: *const f32,
        v: *const f32,
        mask: *const i64,
        batch: i64,
        lq: i64,
        lk: i64,
        heads: i64,
        dqk: i64,
        dv: i64,
        scale: f32,
        flags: i32,
        kv_chunk: i64,
        out: *mut f32,
    ) -> i32 {
        guard(|| {
            let [b, lq, lk] = sizes([(batch, "batch"), (lq, "lq"), (lk, "lk")])?;
            let [h, dqk, dv] = sizes([(heads, "heads"), (dqk, "dqk"), (dv, "dv")])?;
            let kv_chunk = size(kv_chunk, "kv_chunk")?;
            let sq = span(q, count(&[b, lq, h, dqk], "q")?, "q")?;
            let sk = span(k, count(&[b, lk, h, dqk], "k")?, "k")?;
            let sv = span(v, count(&[b, lk, h, dv], "v")?, "v")?;
            let sm = opt_span(mask, &[b, lk], "mask")?;
            let so = span(out, count(&[b, lq, h, dv], "out")?, "out")?;
            no_overlap(so, &[sq, sk, sv, sm])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (q, k, v, o) = unsafe { (view(q, sq), view(k, sk), view(v, sv), view_mut(out, so)) };
            // SAFETY: as above.
            let m = unsafe { opt_view(mask, sm) };
            attention::attention(q, k, v, m, b, lq, lk, h, dqk, dv, scale, flags, kv_chunk, o)
        })
    }

    /// Chunked local attention, Hugging Face `LocalSelfAttention` semantics
    /// (`len <= chunk`: full attention; see [`attention::local_attention`]).
    ///
    /// # Safety
    /// As [`rc_linear_f32`]; `mask` may be NULL.
    unsafe fn rc_local_attention_f32(
        q: *const f32,
        k: *const f32,
        v: *const f32,
        mask: *const i64,
        batch: i64,
        len: i64,
        heads: i64,
        dqk: i64,
        dv: i64,
        scale: f32,
        chunk: i64,
        before: i64,
        after: i64,
        causal: i32,
        out: *mut f32,
    ) -> i32 {
        guard(|| {
            let [b, l, h] = sizes([(batch, "batch"), (len, "len"), (heads, "heads")])?;
            let [dqk, dv] = sizes([(dqk, "dqk"), (dv, "dv")])?;
            let [c, nb, na] = sizes([(chunk, "chunk"), (before, "before"), (after, "after")])?;
            let sq = span(q, count(&[b, l, h, dqk], "q")?, "q")?;
            let sk = span(k, count(&[b, l, h, dqk], "k")?, "k")?;
            let sv = span(v, count(&[b, l, h, dv], "v")?, "v")?;
            let sm = opt_span(mask, &[b, l], "mask")?;
            let so = span(out, count(&[b, l, h, dv], "out")?, "out")?;
            no_overlap(so, &[sq, sk, sv, sm])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (q, k, v, o) = unsafe { (view(q, sq), view(k, sk), view(v, sv), view_mut(out, so)) };
            // SAFETY: as above.
            let m = unsafe { opt_view(mask, sm) };
            attention::local_attention(
                q,
                k,
                v,
                m,
                b,
                l,
                h,
                dqk,
                dv,
                scale,
                c,
                nb,
                na,
                causal != 0,
                o,
            )
        })
    }

    /// LSH bucket ids with round offsets, `out[B, H, r, L]`, from rotations
    /// `rot[H, d, r, S/2]` and `nfactors` bucket factors (see [`attention::lsh_hash`]).
    ///
    /// # Safety
    /// As [`rc_linear_f32`]; `mask` may be NULL.
    unsafe fn rc_lsh_hash_f32(
        qk: *const f32,
        rot: *const f32,
        mask: *const i64,
        batch: i64,
        len: i64,
        heads: i64,
        d: i64,
        rounds: i64,
        factors: *const i64,
        nfactors: i64,
        out: *mut i64,
    ) -> i32 {
        guard(|| {
            let [b, l, h] = sizes([(batch, "batch"), (len, "len"), (heads, "heads")])?;
            let [d, r, nf] = sizes([(d, "d"), (rounds, "rounds"), (nfactors, "nfactors")])?;
            let sf = span(factors, nf, "factors")?;
            // SAFETY: span checked; the caller passes nfactors values.
            let fs: Vec<usize> = unsafe { view(factors, sf) }
                .iter()
                .map(|&f| size(f, "bucket factor"))
                .collect::<Result<_>>()?;
            let half = fs.iter().try_fold(0usize, |a, f| a.checked_add(f / 2));
            let half = half.ok_or_else(|| invalid("rotation width overflows"))?;
            let sq = span(qk, count(&[b, l, h, d], "qk")?, "qk")?;
            let sr = span(rot, count(&[h, d, r, half], "rot")?, "rot")?;
            let sm = opt_span(mask, &[b, l], "mask")?;
            let so = span(out, count(&[b, h, r, l], "out")?, "out")?;
            no_overlap(so, &[sq, sr, sm, sf])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (qk, rot, o) = unsafe { (view(qk, sq), view(rot, sr), view_mut(out, so)) };
            // SAFETY: as above.
            let m = unsafe { opt_view(mask, sm) };
            attention::lsh_hash(qk, rot, m, b, l, h, d, r, &fs, o)
        })
    }

    /// Fused LSH attention given buckets `[B, H, r, L]`: sort, chunked attention
    /// with neighbours, unsort, round combination, never materializing
    /// `(B, H, r·L, c_kv)`; `len <= chunk`: the full shared-QK path (see
    /// [`attention::lsh_attention`]).
    ///
    /// # Safety
    /// As [`rc_linear_f32`]; `mask` may be NULL.
    unsafe fn rc_lsh_attention_f32(
        qk: *const f32,
        v: *const f32,
        buckets: *const i64,
        mask: *const i64,
        batch: i64,
        len: i64,
        heads: i64,
        d: i64,
        rounds: i64,
        chunk: i64,
        before: i64,
        after: i64,
        causal: i32,
        out: *mut f32,
    ) -> i32 {
        guard(|| {
            let [b, l, h] = sizes([(batch, "batch"), (len, "len"), (heads, "heads")])?;
            let [d, r, c] = sizes([(d, "d"), (rounds, "rounds"), (chunk, "chunk")])?;
            let [nb, na] = sizes([(before, "before"), (after, "after")])?;
            let sq = span(qk, count(&[b, l, h, d], "qk")?, "qk")?;
            let sv = span(v, count(&[b, l, h, d], "v")?, "v")?;
            let sb = span(buckets, count(&[b, h, r, l], "buckets")?, "buckets")?;
            let sm = opt_span(mask, &[b, l], "mask")?;
            let so = span(out, count(&[b, l, h, d], "out")?, "out")?;
            no_overlap(so, &[sq, sv, sb, sm])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (qk, v, bk, o) = unsafe {
                (
                    view(qk, sq),
                    view(v, sv),
                    view(buckets, sb),
                    view_mut(out, so),
                )
            };
            // SAFETY: as above.
            let m = unsafe { opt_view(mask, sm) };
            attention::lsh_attention(qk, v, bk, m, b, l, h, d, r, c, nb, na, causal != 0, o)
        })
    }

    /// The gradient of `rc_lsh_attention_f32` with respect to `qk` and `v`:
    /// `out[2, B, L, H·d]` holds `d qk` then `d v`, given the forward output
    /// `y` and its cotangent `dy` (see [`attention::lsh_attention_grad`]).
    ///
    /// # Safety
    /// As [`rc_linear_f32`]; `mask` may be NULL.
    unsafe fn rc_lsh_attention_grad_f32(
        qk: *const f32,
        v: *const f32,
        buckets: *const i64,
        y: *const f32,
        dy: *const f32,
        mask: *const i64,
        batch: i64,
        len: i64,
        heads: i64,
        d: i64,
        rounds: i64,
        chunk: i64,
        before: i64,
        after: i64,
        causal: i32,
        out: *mut f32,
    ) -> i32 {
        guard(|| {
            let [b, l, h] = sizes([(batch, "batch"), (len, "len"), (heads, "heads")])?;
            let [d, r, c] = sizes([(d, "d"), (rounds, "rounds"), (chunk, "chunk")])?;
            let [nb, na] = sizes([(before, "before"), (after, "after")])?;
            let n = count(&[b, l, h, d], "qk")?;
            let sq = span(qk, n, "qk")?;
            let sv = span(v, n, "v")?;
            let sb = span(buckets, count(&[b, h, r, l], "buckets")?, "buckets")?;
            let sy = span(y, n, "y")?;
            let sd = span(dy, n, "dy")?;
            let sm = opt_span(mask, &[b, l], "mask")?;
            let so = span(out, count(&[2, n], "out")?, "out")?;
            no_overlap(so, &[sq, sv, sb, sy, sd, sm])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (qk, v, bk, y, dy, o) = unsafe {
                (
                    view(qk, sq),
                    view(v, sv),
                    view(buckets, sb),
                    view(y, sy),
                    view(dy, sd),
                    view_mut(out, so),
                )
            };
            // SAFETY: as above.
            let m = unsafe { opt_view(mask, sm) };
            attention::lsh_attention_grad(
                qk,
                v,
                bk,
                y,
                dy,
                m,
                b,
                l,
                h,
                d,
                r,
                c,
                nb,
                na,
                causal != 0,
                o,
            )
        })
    }

    /// The gradient of `rc_local_attention_f32` (queries, keys and values of
    /// one width `d` per head) with respect to `q`, `k` and `v`:
    /// `out[3, B, L, H·d]` holds `d q`, `d k` then `d v`, given the forward
    /// output `y` and its cotangent `dy` (see [`attention::local_attention_grad`]).
    ///
    /// # Safety
    /// As [`rc_linear_f32`]; `mask` may be NULL.
    unsafe fn rc_local_attention_grad_f32(
        q: *const f32,
        k: *const f32,
        v: *const f32,
        y: *const f32,
        dy: *const f32,
        mask: *const i64,
        batch: i64,
        len: i64,
        heads: i64,
        d: i64,
        scale: f32,
        chunk: i64,
        before: i64,
        after: i64,
        causal: i32,
        out: *mut f32,
    ) -> i32 {
        guard(|| {
            let [b, l, h] = sizes([(batch, "batch"), (len, "len"), (heads, "heads")])?;
            let [d, c] = sizes([(d, "d"), (chunk, "chunk")])?;
            let [nb, na] = sizes([(before, "before"), (after, "after")])?;
            let n = count(&[b, l, h, d], "q")?;
            let sq = span(q, n, "q")?;
            let sk = span(k, n, "k")?;
            let sv = span(v, n, "v")?;
            let sy = span(y, n, "y")?;
            let sd = span(dy, n, "dy")?;
            let sm = opt_span(mask, &[b, l], "mask")?;
            let so = span(out, count(&[3, n], "out")?, "out")?;
            no_overlap(so, &[sq, sk, sv, sy, sd, sm])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (q, k, v, y, dy, o) = unsafe {
                (
                    view(q, sq),
                    view(k, sk),
                    view(v, sv),
                    view(y, sy),
                    view(dy, sd),
                    view_mut(out, so),
                )
            };
            // SAFETY: as above.
            let m = unsafe { opt_view(mask, sm) };
            attention::local_attention_grad(
                q,
                k,
                v,
                y,
                dy,
                m,
                b,
                l,
                h,
                d,
                scale,
                c,
                nb,
                na,
                causal != 0,
                o,
            )
        })
    }

    /// Softmax along the middle axis of `x[outer, n, inner]` into `y` (same shape).
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_softmax_f32(
        x: *const f32,
        outer: i64,
        n: i64,
        inner: i64,
        y: *mut f32,
    ) -> i32 {
        guard(|| {
            let [o, n, i] = sizes([(outer, "outer"), (n, "n"), (inner, "inner")])?;
            let sx = span(x, count(&[o, n, i], "x")?, "x")?;
            let sy = span(y, count(&[o, n, i], "y")?, "y")?;
            no_overlap(sy, &[sx])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (x, y) = unsafe { (view(x, sx), view_mut(y, sy)) };
            crate::tensor_ops::softmax(x, o, n, i, y)
        })
    }

    /// Reduces the middle axis of `x[outer, n, inner]` into `y[outer, inner]`;
    /// `kind` 0 sum, 1 mean, 2 max, 3 logsumexp.
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_reduce_f32(
        x: *const f32,
        outer: i64,
        n: i64,
        inner: i64,
        kind: i32,
        y: *mut f32,
    ) -> i32 {
        guard(|| {
            let [o, n, i] = sizes([(outer, "outer"), (n, "n"), (inner, "inner")])?;
            let kind = crate::tensor_ops::reduction_of_code(kind)?;
            let sx = span(x, count(&[o, n, i], "x")?, "x")?;
            let sy = span(y, count(&[o, i], "y")?, "y")?;
            no_overlap(sy, &[sx])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (x, y) = unsafe { (view(x, sx), view_mut(y, sy)) };
            crate::tensor_ops::reduce(x, o, n, i, kind, y)
        })
    }

    /// Argmax (`sort` = 0, into `y[outer, inner]`) or stable argsort (`sort` = 1,
    /// into `y[outer, n, inner]`) along the middle axis of `x[outer, n, inner]`.
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_arg_f32(
        x: *const f32,
        outer: i64,
        n: i64,
        inner: i64,
        sort: i32,
        y: *mut i64,
    ) -> i32 {
        // SAFETY: the caller upholds this function's contract, which is arg_keys'.
        unsafe { arg_keys(x, outer, n, inner, sort, y) }
    }

    /// As [`rc_arg_f32`] on i64 keys (the LSH lowering's bucket and sort keys).
    ///
    /// Argmax (`sort` = 0, into `y[outer, inner]`) or stable argsort (`sort` = 1,
    /// into `y[outer, n, inner]`) along the middle axis of `x[outer, n, inner]`.
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_arg_i64(
        x: *const i64,
        outer: i64,
        n: i64,
        inner: i64,
        sort: i32,
        y: *mut i64,
    ) -> i32 {
        // SAFETY: the caller upholds this function's contract, which is arg_keys'.
        unsafe { arg_keys(x, outer, n, inner, sort, y) }
    }

    /// `y[o, j, i, :] = x[o, i, j, :]`: swaps two adjacent axes of an
    /// `[outer, r, c, inner]` array of `elem`-byte elements (a transpose).
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_swap_axes(
        x: *const u8,
        elem: i64,
        outer: i64,
        r: i64,
        c: i64,
        inner: i64,
        y: *mut u8,
    ) -> i32 {
        guard(|| {
            let [e, o, r, c, i] = sizes([
                (elem, "elem"),
                (outer, "outer"),
                (r, "r"),
                (c, "c"),
                (inner, "inner"),
            ])?;
            let n = count(&[o, r, c, i, e], "x")?;
            let sx = span(x, n, "x")?;
            let sy = span(y, n, "y")?;
            no_overlap(sy, &[sx])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (x, y) = unsafe { (view(x, sx), view_mut(y, sy)) };
            crate::tensor_ops::swap_axes(x, e, o, r, c, i, y)
        })
    }

    /// `y[o, idx[o, j, i], i, :] += x[o, j, i, :]` over zeros (the transpose
    /// of `rc_gather` for f32 rows of `row` elements); `x` is `[outer, m,
    /// inner, row]`, `idx` `[outer, m, inner]`, `y` `[outer, n, inner, row]`.
    /// Sums are taken in source order whatever the thread count. Status 2 if
    /// an index is outside `[0, n)`.
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_scatter_add_f32(
        x: *const f32,
        outer: i64,
        m: i64,
        inner: i64,
        row: i64,
        idx: *const i64,
        n: i64,
        y: *mut f32,
    ) -> i32 {
        guard(|| {
            let [o, m, i, r, n] = sizes([
                (outer, "outer"),
                (m, "m"),
                (inner, "inner"),
                (row, "row"),
                (n, "n"),
            ])?;
            let sx = span(x, count(&[o, m, i, r], "x")?, "x")?;
            let si = span(idx, count(&[o, m, i], "idx")?, "idx")?;
            let sy = span(y, count(&[o, n, i, r], "y")?, "y")?;
            no_overlap(sy, &[sx, si])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (x, idx, y) = unsafe { (view(x, sx), view(idx, si), view_mut(y, sy)) };
            crate::tensor_ops::scatter_add_f32(x, o, m, i, r, idx, n, y)
        })
    }

    /// The LM head fused with the cross-entropy (`lm_loss`): `*total` = the
    /// sum over rows `r` with `labels[r] != -100` of `logsumexp(z_r) -
    /// z_r[labels[r]]`, `z_r = w · h_r`, computed `chunk` rows at a time
    /// (`h` `[rows, d]`, `w` `[v, d]`, `labels` `[rows]`). Status 2 if a label
    /// is outside `[0, v)` and not -100.
    ///
    /// # Safety
    /// As [`rc_linear_f32`]; `total` points to one writable float.
    unsafe fn rc_lm_loss_f32(
        h: *const f32,
        rows: i64,
        d: i64,
        w: *const f32,
        v: i64,
        labels: *const i64,
        chunk: i64,
        total: *mut f32,
    ) -> i32 {
        guard(|| {
            let [rows, d, v, chunk] =
                sizes([(rows, "rows"), (d, "d"), (v, "v"), (chunk, "chunk")])?;
            let sh = span(h, count(&[rows, d], "h")?, "h")?;
            let sw = span(w, count(&[v, d], "w")?, "w")?;
            let sl = span(labels, rows, "labels")?;
            let st = span(total, 1, "total")?;
            no_overlap(st, &[sh, sw, sl])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (h, w, labels, total) =
                unsafe { (view(h, sh), view(w, sw), view(labels, sl), view_mut(total, st)) };
            let shape = crate::lm_loss::Shape { rows, d, v, chunk };
            total[0] = crate::lm_loss::lm_loss(h, w, labels, shape)?;
            Ok(())
        })
    }

    /// `*dy` times the gradients of `rc_lm_loss_f32`'s total with respect to
    /// `h` (into `dh`, `[rows, d]`) and `w` (into `dw`, `[v, d]`), either
    /// NULL when not wanted, recomputing the logits `chunk` rows at a time
    /// (once for both). Status 2 as there.
    ///
    /// # Safety
    /// As [`rc_lm_loss_f32`]; `dy` points to one float.
    unsafe fn rc_lm_loss_grad_f32(
        h: *const f32,
        rows: i64,
        d: i64,
        w: *const f32,
        v: i64,
        labels: *const i64,
        chunk: i64,
        dy: *const f32,
        dh: *mut f32,
        dw: *mut f32,
    ) -> i32 {
        guard(|| {
            let [rows, d, v, chunk] =
                sizes([(rows, "rows"), (d, "d"), (v, "v"), (chunk, "chunk")])?;
            let sh = span(h, count(&[rows, d], "h")?, "h")?;
            let sw = span(w, count(&[v, d], "w")?, "w")?;
            let sl = span(labels, rows, "labels")?;
            let sd = span(dy, 1, "dy")?;
            let sdh = opt_span(dh, &[rows, d], "dh")?;
            let sdw = opt_span(dw, &[v, d], "dw")?;
            no_overlap(sdh, &[sh, sw, sl, sd, sdw])?;
            no_overlap(sdw, &[sh, sw, sl, sd])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (h, w, labels, dy) = unsafe { (view(h, sh), view(w, sw), view(labels, sl), view(dy, sd)) };
            // SAFETY: as above, for the outputs that are not NULL.
            let (dh, dw) = unsafe {
                let out = |p: *mut f32, s| (!p.is_null()).then(|| view_mut(p, s));
                (out(dh, sdh), out(dw, sdw))
            };
            let shape = crate::lm_loss::Shape { rows, d, v, chunk };
            crate::lm_loss::lm_loss_grads(h, w, labels, shape, dy[0], dh, dw)
        })
    }

    /// `y[o, j, i] = x[o, idx[o, j, i], i]` (`take_along_axis`) for elements of
    /// `elem` bytes; `x` is `[outer, n, inner]`, `idx` and `y` are `[outer, m,
    /// inner]`. Status 2 if an index is outside `[0, n)`.
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_gather(
        x: *const u8,
        elem: i64,
        outer: i64,
        n: i64,
        inner: i64,
        idx: *const i64,
        m: i64,
        y: *mut u8,
    ) -> i32 {
        guard(|| {
            let [e, o, n, i, m] = sizes([
                (elem, "elem"),
                (outer, "outer"),
                (n, "n"),
                (inner, "inner"),
                (m, "m"),
            ])?;
            let sx = span(x, count(&[o, n, i, e], "x")?, "x")?;
            let si = span(idx, count(&[o, m, i], "idx")?, "idx")?;
            let sy = span(y, count(&[o, m, i, e], "y")?, "y")?;
            no_overlap(sy, &[sx, si])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (x, idx, y) = unsafe { (view(x, sx), view(idx, si), view_mut(y, sy)) };
            crate::tensor_ops::gather(x, e, o, n, i, idx, m, y)
        })
    }

    /// `y[i] = a[i] · b[i]` for `nb` pairs of row-major matrices `a[i]`
    /// `[m, k]` and `b[i]` `[k, n]` stored one after the other, the pairs
    /// spread over the threads (attention over many small chunks).
    ///
    /// # Safety
    /// As [`rc_linear_f32`], with `nb` matrices in each buffer.
    unsafe fn rc_matmul_batch_f32(
        a: *const f32,
        b: *const f32,
        nb: i64,
        m: i64,
        k: i64,
        n: i64,
        y: *mut f32,
    ) -> i32 {
        // SAFETY: the same contract, with neither operand transposed.
        unsafe { rc_matmul_batch_t_f32(a, b, nb, m, k, n, 0, 0, y) }
    }

    /// [`rc_matmul_batch_f32`] with either operand stored transposed: when
    /// `ta` is nonzero each `a[i]` is `[k, m]`, when `tb` is nonzero each
    /// `b[i]` is `[n, k]` (a transpose the product reads in place).
    ///
    /// # Safety
    /// As [`rc_matmul_batch_f32`].
    unsafe fn rc_matmul_batch_t_f32(
        a: *const f32,
        b: *const f32,
        nb: i64,
        m: i64,
        k: i64,
        n: i64,
        ta: i32,
        tb: i32,
        y: *mut f32,
    ) -> i32 {
        guard(|| {
            let [nb, m, k, n] = sizes([(nb, "nb"), (m, "m"), (k, "k"), (n, "n")])?;
            let sa = span(a, count(&[nb, m, k], "a")?, "a")?;
            let sb = span(b, count(&[nb, k, n], "b")?, "b")?;
            let sy = span(y, count(&[nb, m, n], "y")?, "y")?;
            no_overlap(sy, &[sa, sb])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (a, b, y) = unsafe { (view(a, sa), view(b, sb), view_mut(y, sy)) };
            let t = crate::tensor_ops::Transposed { a: ta != 0, b: tb != 0 };
            crate::tensor_ops::matmul_batch_t(a, b, nb, m, k, n, t, y)
        })
    }

    /// Sets the calling thread's GEMM precision: `on` nonzero multiplies
    /// bf16-rounded operands with f32 accumulation (`--precision bf16`; see
    /// the runtime's `bf16` module), zero restores fp32. Returns the previous
    /// setting (1 or 0). The work the thread hands to the pool inherits it.
    ///
    /// # Safety
    /// None beyond the C ABI: no pointers.
    unsafe fn rc_set_gemm_bf16(on: i32) -> i32 {
        i32::from(crate::bf16::set(on != 0))
    }

    /// `y[m, n] = a[m, k] · b[k, n]`, row-major.
    ///
    /// # Safety
    /// As [`rc_linear_f32`].
    unsafe fn rc_matmul_f32(
        a: *const f32,
        b: *const f32,
        m: i64,
        k: i64,
        n: i64,
        y: *mut f32,
    ) -> i32 {
        guard(|| {
            let [m, k, n] = sizes([(m, "m"), (k, "k"), (n, "n")])?;
            let sa = span(a, count(&[m, k], "a")?, "a")?;
            let sb = span(b, count(&[k, n], "b")?, "b")?;
            let sy = span(y, count(&[m, n], "y")?, "y")?;
            no_overlap(sy, &[sa, sb])?;
            // SAFETY: spans checked above; sizes are the ABI's contract with the caller.
            let (a, b, y) = unsafe { (view(a, sa), view(b, sb), view_mut(y, sy)) };
            crate::tensor_ops::matmul(a, b, m, k, n, y)
        })
    }

    /// `n` standard normals from Philox4x32-10 keyed by (seed, stream), the
    /// interpreter's `philox::normals` rounded to f32 (seed and stream are taken
    /// as their 64-bit patterns).
    ///
    /// # Safety
    /// `out` must point to `n` writable floats.
    unsafe fn rc_random_normal_f32(
        seed: i64,
        stream: i64,
        n: i64,
        out: *mut f32,
    ) -> i32 {
        guard(|| {
            let n = size(n, "n")?;
            let so = span(out, n, "out")?;
            // SAFETY: span checked above; size is the ABI's contract with the caller.
            let o = unsafe { view_mut(out, so) };
            crate::random_normal(seed as u64, stream as u64, o)
        })
    }

    /// A dropout mask of `n` floats keyed by (seed, stream) with drop
    /// probability `p` in [0, 1]: `1/(1-p)` where kept, else 0; the
    /// interpreter's `philox::dropout_mask` rounded to f32.
    ///
    /// # Safety
    /// `out` must point to `n` writable floats.
    unsafe fn rc_dropout_mask_f32(
        seed: i64,
        stream: i64,
        p: f64,
        n: i64,
        out: *mut f32,
    ) -> i32 {
        guard(|| {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid(format!(
                    "dropout probability p = {p} is not in [0, 1]"
                )));
            }
            let n = size(n, "n")?;
            let so = span(out, n, "out")?;
            // SAFETY: span checked above; size is the ABI's contract with the caller.
            let o = unsafe { view_mut(out, so) };
            crate::dropout_mask(seed as u64, stream as u64, p, o)
        })
    }

    /// Checks replayed LSH bucket ids `[rows, rounds, len]` against the range rule
    /// of [`attention::check_bucket_range`] with `nb` buckets per round (or `nb + 1`
    /// with the padding bucket): code 2 names the first id outside it.
    ///
    /// # Safety
    /// `ids` must point to `rows * rounds * len` readable int64 values.
    unsafe fn rc_check_lsh_buckets(
        ids: *const i64,
        rows: i64,
        rounds: i64,
        len: i64,
        nb: i64,
    ) -> i32 {
        guard(|| {
            let [rows, rounds, len, nb] =
                sizes([(rows, "rows"), (rounds, "rounds"), (len, "len"), (nb, "nb")])?;
            let si = span(ids, count(&[rows, rounds, len], "ids")?, "ids")?;
            // SAFETY: span checked above; size is the ABI's contract with the caller.
            let ids = unsafe { view(ids, si) };
            attention::check_bucket_range(ids, rounds, len, nb as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: rc_last_error returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(rc_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn null_and_negative_arguments_are_errors_with_messages() {
        let (mut y, w, x) = ([0.0f32; 4], [0.0f32; 4], [0.0f32; 4]);
        // SAFETY: pointers are valid for 2x2 (or NULL where the case says so).
        let mut linear = |x: *const f32, rows, act| unsafe {
            rc_linear_f32(
                x,
                rows,
                2,
                w.as_ptr(),
                2,
                std::ptr::null(),
                act,
                y.as_mut_ptr(),
            )
        };
        assert_eq!(linear(std::ptr::null(), 2, 0), 1);
        assert!(last().contains("x is NULL"), "{}", last());
        assert_eq!(linear(x.as_ptr(), -2, 0), 1);
        assert!(last().contains("negative"), "{}", last());
        assert_eq!(linear(x.as_ptr(), 2, 12), 1);
        assert!(last().contains("activation"));
        // SAFETY: takes a plain integer.
        assert_eq!(unsafe { rc_set_threads(-3) }, 1);
    }

    #[test]
    fn overlapping_output_is_rejected() {
        let mut buf = [1.0f32; 4];
        let p = buf.as_mut_ptr();
        // SAFETY: both views are of `buf`; the call must refuse before touching memory.
        let rc =
            unsafe { rc_layer_norm_f32(p, 2, 2, [1.0; 2].as_ptr(), [0.0; 2].as_ptr(), 1e-5, p) };
        assert_eq!(rc, 1);
        assert!(last().contains("overlaps"));
    }

    #[test]
    fn embedding_out_of_range_is_code_2() {
        let mut y = [0.0f32; 2];
        // SAFETY: valid buffers of the stated sizes.
        let rc = unsafe {
            rc_embedding_f32([3i64].as_ptr(), 1, [0.0; 4].as_ptr(), 2, 2, y.as_mut_ptr())
        };
        assert_eq!(rc, 2);
        assert!(last().contains("out of range"));
    }

    #[test]
    fn empty_calls_succeed_with_null_pointers() {
        // SAFETY: zero-sized buffers are never read.
        unsafe {
            assert_eq!(rc_random_normal_f32(1, 2, 0, std::ptr::null_mut()), 0);
            assert_eq!(
                rc_linear_f32(
                    std::ptr::null(),
                    0,
                    4,
                    [0.0; 8].as_ptr(),
                    2,
                    std::ptr::null(),
                    1,
                    std::ptr::null_mut()
                ),
                0
            );
        }
    }

    #[test]
    fn panics_become_internal_errors() {
        assert_eq!(guard(|| panic!("boom")), 5);
        assert!(last().contains("boom"));
    }
}
