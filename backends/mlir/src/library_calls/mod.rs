//! Library calls: reformc's own MLIR pipeline hands the contractions that the
//! emitter marked with a `library_call` attribute to reformc's runtime GEMM
//! (threaded, packed, AVX-512 or AVX2 micro-kernels), as IREE hands matmuls
//! to its microkernels.
//!
//! Upstream `convert-linalg-to-std` does the same rewrite, but for every
//! linalg op, marked or not (a `linalg.fill` or an unmarked
//! `linalg.generic` becomes a call to a function nobody provides). This
//! rewrite (`rewrite`) runs between bufferization and
//! `convert-linalg-to-loops` and touches only the marked ops: each becomes
//! `func.call @name(...)` on its memref operands cast to fully dynamic
//! strided layouts, declared `llvm.emit_c_interface`, so that the callee is
//! `_mlir_ciface_name(descriptor*...)`. `register` gives the
//! ExecutionEngine those callees.
//!
//! The marks are only attributes: a pipeline that ignores them (mlir-opt,
//! IREE, `REFORMC_MLIR_PIPELINE`) lowers the same ops to loops and computes
//! the same values (up to the order of rounding).

mod lsh_rotate;

pub use lsh_rotate::NAME as LSH_ROTATE;

use melior::{
    dialect::{func, memref},
    ir::{
        attribute::{FlatSymbolRefAttribute, StringAttribute, TypeAttribute},
        operation::{OperationLike, OperationMutLike, OperationRef, OperationRefMut},
        r#type::{FunctionType, MemRefType},
        Attribute, BlockLike, Identifier, Module, Operation, Type, ValueLike,
    },
    Context, ExecutionEngine,
};
use mlir_sys::MlirOperation;
use reformc_ir::Activation;
use std::sync::Mutex;

/// The `library_call` of an f32 `linear` whose input has rank `rank`, with
/// or without a bias, and activation `act`: `y[.., N] = act(x[.., K] · w[N,
/// K]ᵀ + b)`. One name per combination, because the C interface passes a
/// descriptor whose size depends on the rank and the callee takes no other
/// argument.
///
/// ```
/// use reformc_backend_mlir::library_calls::linear_name;
/// use reformc_ir::Activation;
/// assert_eq!(linear_name(3, true, Activation::Relu), "reformc_linear_f32_r3_b1_a1");
/// ```
pub fn linear_name(rank: usize, bias: bool, act: Activation) -> String {
    format!(
        "reformc_linear_f32_r{rank}_b{}_a{}",
        u8::from(bias),
        act.code()
    )
}

/// The ranks a batched matmul library call exists for.
const BMM_RANKS: std::ops::RangeInclusive<usize> = 3..=6;

/// The `library_call` of an f32 batched matmul of rank `rank` over
/// contiguous operands with the same batch axes (all but the last two):
/// `y[.., m, n] += a[.., m, k] · b[.., n, k]ᵀ` when `b_transposed`, else
/// `y[.., m, n] += a[.., m, k] · b[.., k, n]`.
///
/// ```
/// use reformc_backend_mlir::library_calls::bmm_name;
/// assert_eq!(bmm_name(5, true), "reformc_bmm_nt_f32_r5");
/// ```
pub fn bmm_name(rank: usize, b_transposed: bool) -> String {
    let t = if b_transposed { "nt" } else { "nn" };
    format!("reformc_bmm_{t}_f32_r{rank}")
}

/// Every name [`register`] provides.
fn known_names() -> impl Iterator<Item = String> {
    linear_table()
        .into_iter()
        .map(|(name, _)| name)
        .chain(BMM_RANKS.flat_map(|r| [bmm_name(r, true), bmm_name(r, false)]))
        .chain(std::iter::once(LSH_ROTATE.to_string()))
}

/// Turns every `linalg.generic` carrying a `library_call` that
/// [`register`] provides into a call (see the module doc); returns how many.
/// Run it on a bufferized module (the generics on memrefs, with no results).
/// A mark this module does not know is left alone: the op is lowered to
/// loops like any other.
pub(crate) fn rewrite(context: &Context, module: &mut Module) -> Result<usize, String> {
    let known: std::collections::HashSet<String> = known_names().collect();
    let mut marked = Vec::new();
    module
        .as_operation()
        .walk(melior::ir::operation::WalkOrder::PostOrder, |op| {
            if op.name().as_string_ref().as_str() == Ok("linalg.generic") {
                if let Some(name) = known_call(&op, &known) {
                    marked.push((op.to_raw(), name));
                }
            }
            melior::ir::operation::WalkResult::Advance
        });
    let mut declared: Vec<(String, Vec<Type>)> = Vec::new();
    for (raw, name) in &marked {
        // SAFETY: `raw` is an op of `module` found by the walk above; nothing
        // was erased since, except other marked ops, which do not contain it
        // (a generic's region holds scalar ops only).
        let types = unsafe { call_in_place(context, *raw, name)? };
        if !declared.iter().any(|(n, _)| n == name) {
            declared.push((name.clone(), types));
        }
    }
    for (name, types) in &declared {
        module
            .body()
            .append_operation(declaration(context, name, types));
    }
    Ok(marked.len())
}

/// The op's `library_call` when it is one of `known` (what `register`
/// provides).
fn known_call(
    op: &melior::ir::OperationRef,
    known: &std::collections::HashSet<String>,
) -> Option<String> {
    let attr = op.attribute("library_call").ok()?;
    let name = StringAttribute::try_from(attr).ok()?.value().to_string();
    known.contains(&name).then_some(name)
}

/// Replaces the bufferized generic `raw` by a call to `name` on its operands,
/// each cast to a fully dynamic strided memref; returns those operand types.
///
/// # Safety
/// `raw` is a live op in a block of a module of `context`.
unsafe fn call_in_place<'c>(
    context: &'c Context,
    raw: MlirOperation,
    name: &str,
) -> Result<Vec<Type<'c>>, String> {
    // SAFETY: a live op (the contract); `anchor` is only used as a position
    // while `op` is alive, before it is detached.
    let (mut op, anchor) = unsafe { (OperationRefMut::from_raw(raw), OperationRef::from_raw(raw)) };
    if op.result_count() != 0 {
        return Err(format!(
            "library call `{name}`: the marked op still has tensor results (not bufferized)"
        ));
    }
    let block = op
        .block()
        .ok_or("library call: the marked op is in no block")?;
    let location = op.location();
    let mut args = Vec::new();
    let mut types = Vec::new();
    for v in op.operands() {
        let ty = MemRefType::try_from(v.r#type())
            .map_err(|_| format!("library call `{name}`: an operand is not a memref"))?;
        let strided = dynamic_strided(context, &ty)?;
        let cast = block.insert_operation_before(anchor, memref::cast(v, strided, location));
        args.push(cast.result(0).map_err(|e| e.to_string())?.into());
        types.push(strided.into());
    }
    let callee = FlatSymbolRefAttribute::new(context, name);
    block.insert_operation_before(anchor, func::call(context, callee, &args, &[], location));
    op.remove_from_parent();
    // SAFETY: the op was just detached from its block, so nothing owns it
    // and nothing refers to it (it has no results); this drop destroys it.
    drop(unsafe { Operation::from_raw(raw) });
    Ok(types)
}

/// `memref<?x..x?xT, strided<[?, ..], offset: ?>>` of `ty`'s rank and
/// element type: the layout `convert-linalg-to-std` passes, so that one
/// callee takes any view.
fn dynamic_strided<'c>(
    context: &'c Context,
    ty: &MemRefType<'c>,
) -> Result<MemRefType<'c>, String> {
    use melior::ir::ShapedTypeLike;
    let rank = ty.rank();
    let elt = ty.element().to_string();
    let text = format!(
        "memref<{}{elt}, strided<[{}], offset: ?>>",
        "?x".repeat(rank),
        vec!["?"; rank].join(", ")
    );
    Type::parse(context, &text)
        .and_then(|t| MemRefType::try_from(t).ok())
        .ok_or_else(|| format!("library call: cannot build the type `{text}`"))
}

/// `func.func private @name(types) attributes {llvm.emit_c_interface}`.
fn declaration<'c>(context: &'c Context, name: &str, types: &[Type<'c>]) -> Operation<'c> {
    let location = melior::ir::Location::unknown(context);
    let fn_type = FunctionType::new(context, types, &[]);
    func::func(
        context,
        StringAttribute::new(context, name),
        TypeAttribute::new(fn_type.into()),
        melior::ir::Region::new(),
        &[
            (
                Identifier::new(context, "sym_visibility"),
                StringAttribute::new(context, "private").into(),
            ),
            (
                Identifier::new(context, "llvm.emit_c_interface"),
                Attribute::unit(context),
            ),
        ],
        location,
    )
}

/// The first error a callee met in this process since the last
/// [`take_error`] (the C interface has no way to return one).
static ERROR: Mutex<Option<String>> = Mutex::new(None);

fn record(message: String) {
    let mut e = ERROR.lock().unwrap_or_else(|p| p.into_inner());
    e.get_or_insert(message);
}

/// The error a library call met during the last run, if any (cleared).
pub(crate) fn take_error() -> Option<String> {
    ERROR.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Gives `engine` the callees of every name [`rewrite`] may emit. Call it
/// before the engine's first lookup (which compiles the module).
pub(crate) fn register(engine: &ExecutionEngine) {
    let bmm: [(usize, *mut (), *mut ()); 4] = [
        (
            3,
            bmm_call::<3, true> as *mut (),
            bmm_call::<3, false> as *mut (),
        ),
        (
            4,
            bmm_call::<4, true> as *mut (),
            bmm_call::<4, false> as *mut (),
        ),
        (
            5,
            bmm_call::<5, true> as *mut (),
            bmm_call::<5, false> as *mut (),
        ),
        (
            6,
            bmm_call::<6, true> as *mut (),
            bmm_call::<6, false> as *mut (),
        ),
    ];
    debug_assert!(bmm.iter().map(|(r, _, _)| *r).eq(BMM_RANKS));
    let calls = linear_table()
        .into_iter()
        .chain(
            bmm.into_iter()
                .flat_map(|(r, nt, nn)| [(bmm_name(r, true), nt), (bmm_name(r, false), nn)]),
        )
        .chain([(LSH_ROTATE.to_string(), lsh_rotate::call as *mut ())]);
    for (name, f) in calls {
        // SAFETY: `f` is the callee of `name` (`linear_nb` / `linear_b` or
        // `bmm_call` for its rank and variant, or `lsh_rotate::call`), whose C signature is the one
        // `llvm.emit_c_interface` gives `_mlir_ciface_<name>`: one pointer
        // to a memref descriptor per operand.
        unsafe { engine.register_symbol(&format!("_mlir_ciface_{name}"), f) };
    }
}

/// A strided memref descriptor of rank `R` as the C interface passes it:
/// allocated and aligned pointers, offset, sizes, strides (in elements).
#[repr(C)]
struct Descriptor<const R: usize> {
    allocated: *mut f32,
    aligned: *mut f32,
    offset: i64,
    sizes: [i64; R],
    strides: [i64; R],
}

impl<const R: usize> Descriptor<R> {
    /// The address of the element at `idx` (its leading axes; fewer indices
    /// address the start of a sub-box). Only the arithmetic: reading it is
    /// sound where `idx` is in range (the callees' contract).
    fn at(&self, idx: &[i64]) -> *mut f32 {
        let off: i64 = idx.iter().zip(&self.strides).map(|(i, s)| i * s).sum();
        self.aligned.wrapping_offset((self.offset + off) as isize)
    }
}

/// The index of row-major position `flat` in a box of `sizes`, written to
/// the leading `sizes.len()` entries of `idx`.
fn unflatten(mut flat: i64, sizes: &[i64], idx: &mut [i64]) {
    for i in (0..sizes.len()).rev() {
        idx[i] = flat % sizes[i];
        flat /= sizes[i];
    }
}

/// A 2-D view of a descriptor's elements: `rows` rows of `cols` contiguous
/// elements, `ld` apart, starting at `base`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rows {
    base: *mut f32,
    rows: usize,
    cols: usize,
    ld: usize,
}

impl Rows {
    /// The descriptor as rows (its leading axes merged), when its last axis is
    /// contiguous and its leading axes merge into one stride.
    fn of<const R: usize>(d: &Descriptor<R>) -> Option<Rows> {
        let size = |i: usize| usize::try_from(d.sizes[i]).ok();
        let stride = |i: usize| usize::try_from(d.strides[i]).ok();
        let cols = size(R - 1)?;
        let rows = (0..R - 1).try_fold(1usize, |n, i| n.checked_mul(size(i)?))?;
        if cols > 1 && stride(R - 1)? != 1 {
            return None;
        }
        // Merge the leading axes from the innermost outwards: an axis of size
        // 1 never moves; the innermost other one gives the row stride, and
        // each further one must step over the rows merged so far exactly.
        let mut ld: Option<usize> = None;
        let mut span = 1usize;
        for i in (0..R - 1).rev() {
            let s = size(i)?;
            if s == 1 || rows == 0 {
                continue;
            }
            match ld {
                None => ld = Some(stride(i)?),
                Some(l) if stride(i)? != l.checked_mul(span)? => return None,
                Some(_) => {}
            }
            span = span.checked_mul(s)?;
        }
        let ld = ld.unwrap_or(cols.max(1));
        if rows > 1 && ld < cols {
            return None;
        }
        let offset = usize::try_from(d.offset).ok()?;
        // SAFETY (of the arithmetic only): the offset lies inside the
        // descriptor's buffer, as the memref's contract says.
        let base = d.aligned.wrapping_add(offset);
        Some(Rows {
            base,
            rows,
            cols,
            ld,
        })
    }

    /// The address range `[start, end)` of the rows' elements.
    fn range(&self) -> (usize, usize) {
        let start = self.base as usize;
        let len = match self.rows {
            0 => 0,
            n => (n - 1) * self.ld + self.cols,
        };
        (start, start + len * 4)
    }

    fn len(&self) -> usize {
        let (s, e) = self.range();
        (e - s) / 4
    }
}

/// Every linear callee by name: ranks 2..=5, without and with a bias, every
/// activation code.
fn linear_table() -> Vec<(String, *mut ())> {
    macro_rules! acts {
        ($r:literal: $($a:literal)*) => {
            [$(
                (linear_name($r, false, act_of($a)), linear_nb::<$r, $a> as *mut ()),
                (linear_name($r, true, act_of($a)), linear_b::<$r, $a> as *mut ()),
            )*]
        };
    }
    let mut t = Vec::new();
    t.extend(acts!(2: 0 1 2 3 4 5 6 7 8 9 10 11));
    t.extend(acts!(3: 0 1 2 3 4 5 6 7 8 9 10 11));
    t.extend(acts!(4: 0 1 2 3 4 5 6 7 8 9 10 11));
    t.extend(acts!(5: 0 1 2 3 4 5 6 7 8 9 10 11));
    debug_assert_eq!(t.len(), 4 * 2 * Activation::ALL.len());
    t
}

/// The activation of code `c` (every code the table lists exists).
fn act_of(c: i32) -> Activation {
    Activation::from_code(c).expect("a listed activation code")
}

/// `_mlir_ciface_reformc_linear_f32_r{R}_b0_a{ACT}(x, w, y)`:
/// `y = act(x · wᵀ)` ([`linear_name`]).
///
/// # Safety
/// Each pointer is a valid descriptor of the rank in its type, over a live
/// f32 buffer that holds every element its sizes and strides reach, as the
/// lowered `func.call` passes them; `y`'s buffer is not read or written by
/// anyone else during the call.
unsafe extern "C" fn linear_nb<const R: usize, const ACT: i32>(
    x: *const Descriptor<R>,
    w: *const Descriptor<2>,
    y: *const Descriptor<R>,
) {
    // SAFETY: the caller passes valid descriptors (the contract above).
    let (x, w, y) = unsafe { (&*x, &*w, &*y) };
    if let Err(e) = linear_rows(x, w, None, act_of(ACT), y) {
        record(format!("{}: {e}", linear_name(R, false, act_of(ACT))));
    }
}

/// `_mlir_ciface_reformc_linear_f32_r{R}_b1_a{ACT}(x, w, b, y)`:
/// `y = act(x · wᵀ + b)` ([`linear_name`]).
///
/// # Safety
/// As [`linear_nb`].
unsafe extern "C" fn linear_b<const R: usize, const ACT: i32>(
    x: *const Descriptor<R>,
    w: *const Descriptor<2>,
    b: *const Descriptor<1>,
    y: *const Descriptor<R>,
) {
    // SAFETY: the caller passes valid descriptors (the contract above).
    let (x, w, b, y) = unsafe { (&*x, &*w, &*b, &*y) };
    // SAFETY: `b` is a valid 1-D descriptor (the contract).
    let bias = unsafe { gather_1d(b) };
    if let Err(e) = linear_rows(x, w, Some(&bias), act_of(ACT), y) {
        record(format!("{}: {e}", linear_name(R, true, act_of(ACT))));
    }
}

/// A 1-D descriptor's elements, in order.
///
/// # Safety
/// `d` is valid over a live buffer (as [`linear_nb`]'s contract).
unsafe fn gather_1d(d: &Descriptor<1>) -> Vec<f32> {
    (0..d.sizes[0].max(0))
        // SAFETY: an in-range index of the descriptor (the contract).
        .map(|i| unsafe { *d.at(&[i]) })
        .collect()
}

/// The body of the linear callees: the runtime kernel on views it accepts,
/// a plain loop on any other (any layout is correct, some are slow).
fn linear_rows<const R: usize>(
    x: &Descriptor<R>,
    w: &Descriptor<2>,
    bias: Option<&[f32]>,
    act: Activation,
    y: &Descriptor<R>,
) -> Result<(), String> {
    let (xr, wr, yr) = (Rows::of(x), Rows::of(w), Rows::of(y));
    let (n, k) = (w.sizes[0].max(0) as usize, w.sizes[1].max(0) as usize);
    if bias.is_some_and(|b| b.len() != n) {
        return Err(format!(
            "the bias has {} values, the weight {n} rows",
            bias.map_or(0, |b| b.len())
        ));
    }
    match (xr, wr, yr) {
        (Some(xr), Some(wr), Some(yr))
            if wr.ld == k && xr.cols == k && yr.cols == n && xr.rows == yr.rows =>
        {
            let (ys, ye) = yr.range();
            let disjoint = |(s, e): (usize, usize)| e <= ys || s >= ye;
            if !disjoint(xr.range()) || !disjoint(wr.range()) {
                return Err("the result overlaps an operand".to_string());
            }
            // SAFETY: each view lies inside its live buffer (the caller's
            // contract), y shares no element with x or w (checked), and no
            // one else touches y during the call.
            let (xs, ws, ysl) = unsafe {
                (
                    std::slice::from_raw_parts(xr.base, xr.len()),
                    std::slice::from_raw_parts(wr.base, wr.len()),
                    std::slice::from_raw_parts_mut(yr.base, yr.len()),
                )
            };
            reformc_runtime::gemm::linear_strided(
                xs, xr.ld, xr.rows, k, ws, n, bias, act, ysl, yr.ld,
            )
            .map_err(|e| e.to_string())
        }
        _ => {
            // SAFETY: as for the kernel: every index the loop forms is one
            // the descriptors' sizes allow.
            unsafe { linear_loop(x, w, bias, act, y) };
            Ok(())
        }
    }
}

/// `y = act(x · wᵀ + b)` element by element through the descriptors'
/// strides.
///
/// # Safety
/// As [`linear_nb`].
unsafe fn linear_loop<const R: usize>(
    x: &Descriptor<R>,
    w: &Descriptor<2>,
    bias: Option<&[f32]>,
    act: Activation,
    y: &Descriptor<R>,
) {
    use reformc_runtime::act::Apply;
    let (n, k) = (w.sizes[0], w.sizes[1]);
    let rows: i64 = y.sizes[..R - 1].iter().product();
    let mut idx = [0i64; R];
    for r in 0..rows.max(0) {
        unflatten(r, &y.sizes[..R - 1], &mut idx);
        for j in 0..n {
            let mut acc = bias.map_or(0.0, |b| b[j as usize]);
            for kk in 0..k {
                idx[R - 1] = kk;
                // SAFETY: in-range indices of x and w (the contract).
                acc += unsafe { *x.at(&idx) * *w.at(&[j, kk]) };
            }
            idx[R - 1] = j;
            // SAFETY: an in-range index of y (the contract).
            unsafe { *y.at(&idx) = act.apply(acc) };
        }
    }
}

/// The address and length of the descriptor's elements when they lie
/// contiguous in row-major order (axes of size 1 may have any stride).
fn contiguous<const R: usize>(d: &Descriptor<R>) -> Option<(*mut f32, usize)> {
    if !dense_from(d, 0) {
        return None;
    }
    let len = d
        .sizes
        .iter()
        .try_fold(1usize, |n, &s| n.checked_mul(usize::try_from(s).ok()?))?;
    Some((d.at(&[]), len))
}

/// `_mlir_ciface_reformc_bmm_{nt|nn}_f32_r{R}(a, b, y)` ([`bmm_name`]):
/// batched `y += a · b(ᵀ)` through the runtime's batched GEMM.
///
/// # Safety
/// As [`linear_nb`].
unsafe extern "C" fn bmm_call<const R: usize, const NT: bool>(
    a: *const Descriptor<R>,
    b: *const Descriptor<R>,
    y: *const Descriptor<R>,
) {
    // SAFETY: the caller passes valid descriptors (the contract above).
    let (a, b, y) = unsafe { (&*a, &*b, &*y) };
    if let Err(e) = bmm_views::<R, NT>(a, b, y) {
        record(format!("{}: {e}", bmm_name(R, NT)));
    }
}

/// The body of [`bmm_call`]: the runtime kernel on contiguous operands, a
/// plain loop on any other layout.
fn bmm_views<const R: usize, const NT: bool>(
    a: &Descriptor<R>,
    b: &Descriptor<R>,
    y: &Descriptor<R>,
) -> Result<(), String> {
    let batch = R - 2;
    let (m, k) = (a.sizes[R - 2], a.sizes[R - 1]);
    let n = y.sizes[R - 1];
    let b_shape = if NT { [n, k] } else { [k, n] };
    if a.sizes[..batch] != y.sizes[..batch]
        || b.sizes[..batch] != y.sizes[..batch]
        || b.sizes[batch..] != b_shape
        || y.sizes[R - 2] != m
    {
        return Err(format!(
            "operand shapes {:?}, {:?} -> {:?} do not form a batched product",
            a.sizes, b.sizes, y.sizes
        ));
    }
    let to = |v: i64| usize::try_from(v).map_err(|_| format!("negative size {v}"));
    let (m, k, n) = (to(m)?, to(k)?, to(n)?);
    // The outer batch axes `..p` are walked here; over axes `p..` every
    // operand is dense, one kernel call per outer index (a window block's
    // keys are dense per head but not across heads).
    let Some(p) = (0..=batch).find(|&p| dense_from(a, p) && dense_from(b, p) && dense_from(y, p))
    else {
        // SAFETY: every index the loop forms is one the sizes allow.
        unsafe { bmm_loop::<R, NT>(a, b, y) };
        return Ok(());
    };
    let nb: i64 = y.sizes[p..batch].iter().product();
    let nb = to(nb)?;
    let outer: i64 = y.sizes[..p].iter().product();
    let t = reformc_runtime::tensor_ops::Transposed { a: false, b: NT };
    let mut idx = [0i64; R];
    for flat in 0..outer.max(0) {
        unflatten(flat, &y.sizes[..p], &mut idx);
        let at = |d: &Descriptor<R>, len: usize| (d.at(&idx[..p]), len);
        let (av, bv, yv) = (at(a, nb * m * k), at(b, nb * k * n), at(y, nb * m * n));
        let apart = |(p, len): (*mut f32, usize)| {
            let (s, e) = (p as usize, p as usize + 4 * len);
            e <= yv.0 as usize || s >= yv.0 as usize + 4 * yv.1
        };
        if !apart(av) || !apart(bv) {
            return Err("the result overlaps an operand".to_string());
        }
        // SAFETY: each view is elements its descriptor reaches from this
        // outer index (dense over the inner axes), inside a live buffer (the
        // caller's contract); y's shares no element with a's or b's (checked)
        // and no one else touches it during the call.
        let (av, bv, yv) = unsafe {
            (
                std::slice::from_raw_parts(av.0, av.1),
                std::slice::from_raw_parts(bv.0, bv.1),
                std::slice::from_raw_parts_mut(yv.0, yv.1),
            )
        };
        reformc_runtime::tensor_ops::matmul_batch_t_acc(av, bv, nb, m, k, n, t, yv)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether the descriptor's axes `p..` are dense in row-major order (axes
/// of size 1 may have any stride), its offset and strides non-negative.
fn dense_from<const R: usize>(d: &Descriptor<R>, p: usize) -> bool {
    let mut want = 1i64;
    for i in (p..R).rev() {
        if d.sizes[i] != 1 && d.strides[i] != want {
            return false;
        }
        want = want.saturating_mul(d.sizes[i].max(0));
    }
    d.offset >= 0 && d.strides[..p].iter().all(|&s| s >= 0)
}

/// `y += a · b(ᵀ)` element by element through the descriptors' strides.
///
/// # Safety
/// As [`linear_nb`].
unsafe fn bmm_loop<const R: usize, const NT: bool>(
    a: &Descriptor<R>,
    b: &Descriptor<R>,
    y: &Descriptor<R>,
) {
    let k = a.sizes[R - 1];
    let total: i64 = y.sizes.iter().product();
    let mut yi = [0i64; R];
    for flat in 0..total.max(0) {
        unflatten(flat, &y.sizes, &mut yi);
        let (mut ai, mut bi) = (yi, yi);
        // SAFETY: an in-range index of y (the contract).
        let mut acc = unsafe { *y.at(&yi) };
        for kk in 0..k {
            ai[R - 1] = kk;
            if NT {
                (bi[R - 2], bi[R - 1]) = (yi[R - 1], kk);
            } else {
                (bi[R - 2], bi[R - 1]) = (kk, yi[R - 1]);
            }
            // SAFETY: in-range indices of a and b (the contract).
            acc += unsafe { *a.at(&ai) * *b.at(&bi) };
        }
        // SAFETY: as the read above.
        unsafe { *y.at(&yi) = acc };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc<const R: usize>(
        data: &mut [f32],
        offset: i64,
        sizes: [i64; R],
        strides: [i64; R],
    ) -> Descriptor<R> {
        Descriptor {
            allocated: data.as_mut_ptr(),
            aligned: data.as_mut_ptr(),
            offset,
            sizes,
            strides,
        }
    }

    #[test]
    fn rows_merge_contiguous_leading_axes() {
        let mut buf = vec![0f32; 64];
        let d = desc(&mut buf, 4, [2, 3, 5], [15, 5, 1]);
        let r = Rows::of(&d).unwrap();
        assert_eq!((r.rows, r.cols, r.ld), (6, 5, 5));
        // A column block of a wider matrix: rows 8 apart.
        let d = desc(&mut buf, 0, [2, 3, 5], [24, 8, 1]);
        assert_eq!(Rows::of(&d).map(|r| (r.rows, r.ld)), Some((6, 8)));
        // Leading axes that do not merge, or a strided last axis.
        assert_eq!(Rows::of(&desc(&mut buf, 0, [2, 3, 5], [30, 5, 1])), None);
        assert_eq!(Rows::of(&desc(&mut buf, 0, [3, 5], [1, 3])), None);
        // Axes of size 1 never move.
        let d = desc(&mut buf, 0, [1, 4, 5], [999, 5, 1]);
        assert_eq!(Rows::of(&d).map(|r| (r.rows, r.ld)), Some((4, 5)));
    }

    /// The batched product, contiguous (kernel) and with a strided result
    /// (loop), against a plain sum; both transpositions of b.
    #[test]
    fn bmm_call_matches_a_plain_sum() {
        let (nb, m, k, n) = (3usize, 4usize, 5usize, 6usize);
        let mut a: Vec<f32> = (0..nb * m * k)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let mut b: Vec<f32> = (0..nb * k * n)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let (a0, b0) = (a.clone(), b.clone());
        for nt in [true, false] {
            let bv = |bi: usize, kk: usize, j: usize| match nt {
                true => b0[bi * n * k + j * k + kk],
                false => b0[bi * k * n + kk * n + j],
            };
            let want = |bi: usize, i: usize, j: usize| -> f64 {
                0.5 + (0..k)
                    .map(|kk| a0[bi * m * k + i * k + kk] as f64 * bv(bi, kk, j) as f64)
                    .sum::<f64>()
            };
            let b_sizes = if nt {
                [nb as i64, n as i64, k as i64]
            } else {
                [nb as i64, k as i64, n as i64]
            };
            let b_strides = [b_sizes[1] * b_sizes[2], b_sizes[2], 1];
            let ad = desc(&mut a, 0, [3, 4, 5], [20, 5, 1]);
            let bd = desc(&mut b, 0, b_sizes, b_strides);
            let mut y = vec![0.5f32; nb * m * n];
            let yd = desc(&mut y, 0, [3, 4, 6], [24, 6, 1]);
            // y stored [nb, n, m]: not contiguous as [nb, m, n].
            let mut yt = vec![0.5f32; nb * m * n];
            let ytd = desc(&mut yt, 0, [3, 4, 6], [24, 1, 4]);
            // SAFETY: descriptors over live buffers of their extents.
            unsafe {
                match nt {
                    true => {
                        bmm_call::<3, true>(&ad, &bd, &yd);
                        bmm_call::<3, true>(&ad, &bd, &ytd);
                    }
                    false => {
                        bmm_call::<3, false>(&ad, &bd, &yd);
                        bmm_call::<3, false>(&ad, &bd, &ytd);
                    }
                }
            }
            assert_eq!(take_error(), None);
            for bi in 0..nb {
                for i in 0..m {
                    for j in 0..n {
                        let w = want(bi, i, j);
                        assert!((y[bi * 24 + i * 6 + j] as f64 - w).abs() < 1e-5, "nt={nt}");
                        assert!((yt[bi * 24 + j * 4 + i] as f64 - w).abs() < 1e-5, "nt={nt}");
                    }
                }
            }
        }
    }

    /// A batched product whose shapes do not fit is an error, not a guess.
    #[test]
    fn bmm_call_rejects_mismatched_batches() {
        let mut buf = vec![0f32; 64];
        let a = desc(&mut buf, 0, [2, 2, 2], [4, 2, 1]);
        let b = desc(&mut buf, 0, [3, 2, 2], [4, 2, 1]);
        let y = desc(&mut buf, 0, [2, 2, 2], [4, 2, 1]);
        assert!(bmm_views::<3, true>(&a, &b, &y).is_err());
    }

    /// The kernel path and the loop path against a plain f64 sum, on a
    /// contiguous view and on a transposed (loop-only) one.
    #[test]
    fn linear_call_matches_a_plain_sum() {
        let (b, l, k, n) = (2usize, 3usize, 7usize, 5usize);
        let mut x: Vec<f32> = (0..b * l * k)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let mut w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let mut bias: Vec<f32> = (0..n).map(|j| j as f32 - 2.0).collect();
        let (x0, w0, b0) = (x.clone(), w.clone(), bias.clone());
        // relu(x · wᵀ + b), or without the bias.
        let want = |with_bias: bool, bi: usize, li: usize, j: usize| -> f64 {
            let dot: f64 = (0..k)
                .map(|kk| x0[(bi * l + li) * k + kk] as f64 * w0[j * k + kk] as f64)
                .sum();
            let v = dot + if with_bias { b0[j] as f64 } else { 0.0 };
            v.max(0.0)
        };
        let (xd, wd) = (
            desc(&mut x, 0, [2, 3, 7], [21, 7, 1]),
            desc(&mut w, 0, [5, 7], [7, 1]),
        );
        let bd = desc(&mut bias, 0, [5], [1]);
        let relu = Activation::Relu.code();
        assert_eq!(relu, 1, "the code the calls below name");
        for with_bias in [false, true] {
            // Contiguous (the kernel) and y transposed in its buffer ([B, N,
            // L] storage: the loop); y starts as garbage, which is ignored.
            let mut y = vec![f32::NAN; b * l * n];
            let mut yt = vec![f32::NAN; b * l * n];
            let yd = desc(&mut y, 0, [2, 3, 5], [15, 5, 1]);
            let ytd = desc(&mut yt, 0, [2, 3, 5], [15, 1, 3]);
            for out in [&yd, &ytd] {
                // SAFETY: descriptors over live buffers of their extents.
                unsafe {
                    match with_bias {
                        true => linear_b::<3, 1>(&xd, &wd, &bd, out),
                        false => linear_nb::<3, 1>(&xd, &wd, out),
                    }
                }
            }
            assert_eq!(take_error(), None);
            for bi in 0..b {
                for li in 0..l {
                    for j in 0..n {
                        let e = want(with_bias, bi, li, j);
                        let (g, gt) = (y[bi * 15 + li * 5 + j], yt[bi * 15 + j * 3 + li]);
                        assert!((g as f64 - e).abs() < 1e-5, "{g} vs {e}");
                        assert!((gt as f64 - e).abs() < 1e-5, "{gt} vs {e}");
                    }
                }
            }
        }
    }

    /// Every (rank, bias, activation) name resolves to a callee, once.
    #[test]
    fn the_linear_table_names_every_variant_once() {
        let t = linear_table();
        let mut names: Vec<&String> = t.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), t.len());
        for act in Activation::ALL {
            for rank in 2..=5 {
                assert!(known_names().any(|n| n == linear_name(rank, true, act)));
            }
        }
    }
}
