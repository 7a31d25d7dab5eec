//! Small builders the decompositions share: ops whose result type the IR's
//! type rules derive, reshapes, constants and fresh symbols.

use reformc_ir::{infer_type, Attr, DType, Dim, Graph, Op, OpKind, TensorType, ValueId};
use std::cell::RefCell;
use std::collections::BTreeSet;

thread_local! {
    /// Symbols of the graph being lowered, which fresh symbols must avoid.
    static RESERVED: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
}

/// Runs `f` with `symbols` reserved: [`fresh_sym`] never returns one of them.
pub(super) fn with_reserved_symbols<R>(symbols: BTreeSet<String>, f: impl FnOnce() -> R) -> R {
    let saved = RESERVED.with(|r| std::mem::replace(&mut *r.borrow_mut(), symbols));
    let out = f();
    RESERVED.with(|r| *r.borrow_mut() = saved);
    out
}

/// A symbol for a length a reshape introduces, derived from the id the next
/// node of `g` gets (`N17`) so that it is unique in the new graph, and kept
/// apart from the symbols of the graph being lowered. The interpreter binds
/// it when it checks the reshape's result.
pub(crate) fn fresh_sym(g: &Graph, stem: &str) -> Dim {
    let mut name = format!("{stem}{}", g.len());
    let taken = |n: &str| {
        RESERVED.with(|r| r.borrow().contains(n))
            || g.nodes
                .iter()
                .any(|node| node.ty.shape.iter().any(|d| *d == Dim::sym(n)))
    };
    while taken(&name) {
        name.push('_');
    }
    Dim::Sym(name)
}

/// Appends `op` applied to `inputs`, its result type derived by the IR's type
/// rules (an error when the rules do not derive one).
pub(crate) fn emit(g: &mut Graph, op: Op, inputs: &[ValueId]) -> Result<ValueId, String> {
    let types: Vec<&TensorType> = inputs.iter().map(|v| g.ty(*v)).collect();
    let ty = infer_type(&op, &types)
        .map_err(|e| format!("`{op}`: {e}"))?
        .ok_or_else(|| format!("`{op}` needs a declared result type"))?;
    Ok(g.add(op, inputs.to_vec(), ty))
}

/// `kind(inputs)` for an op without attributes.
pub(crate) fn op(g: &mut Graph, kind: OpKind, inputs: &[ValueId]) -> Result<ValueId, String> {
    emit(g, Op::new(kind), inputs)
}

/// `x` reshaped to `shape` (same dtype).
pub(crate) fn reshape(g: &mut Graph, x: ValueId, shape: Vec<Dim>) -> ValueId {
    let ty = TensorType::new(g.ty(x).dtype, shape);
    g.add(Op::new(OpKind::Reshape), vec![x], ty)
}

/// `transpose(x) {perm}`.
pub(crate) fn transpose(g: &mut Graph, x: ValueId, perm: &[i64]) -> Result<ValueId, String> {
    let op = Op::new(OpKind::Transpose).with("perm", Attr::Ints(perm.to_vec()));
    emit(g, op, &[x])
}

/// A scalar constant of `dtype` holding `value` (a float literal for float
/// dtypes, an integer otherwise).
pub(crate) fn constant(g: &mut Graph, dtype: DType, value: f64) -> ValueId {
    let attr = if dtype.is_float() {
        Attr::Float(value)
    } else {
        Attr::Int(value as i64)
    };
    g.add(
        Op::new(OpKind::Constant).with("value", attr),
        vec![],
        TensorType::scalar(dtype),
    )
}

/// `x <kind> constant(value)` with the constant of `x`'s dtype.
pub(crate) fn with_scalar(
    g: &mut Graph,
    kind: OpKind,
    x: ValueId,
    value: f64,
) -> Result<ValueId, String> {
    let c = constant(g, g.ty(x).dtype, value);
    op(g, kind, &[x, c])
}

/// `reduce(x) {kind, axes=[axis], keepdim}`.
pub(crate) fn reduce_keep(
    g: &mut Graph,
    kind: &str,
    x: ValueId,
    axis: usize,
) -> Result<ValueId, String> {
    let op = Op::new(OpKind::Reduce)
        .with("kind", Attr::Str(kind.into()))
        .with("axes", Attr::Ints(vec![axis as i64]))
        .with_flag("keepdim", true);
    emit(g, op, &[x])
}

/// `iota(x) {axis}`: `0..n` for `n` the length of `x`'s axis.
pub(crate) fn iota(g: &mut Graph, x: ValueId, axis: usize) -> Result<ValueId, String> {
    emit(
        g,
        Op::new(OpKind::Iota).with("axis", Attr::Int(axis as i64)),
        &[x],
    )
}

/// `x` cast to `i64` (unchanged when it already is).
pub(crate) fn to_i64(g: &mut Graph, x: ValueId) -> ValueId {
    let ty = g.ty(x).clone();
    if ty.dtype == DType::I64 {
        return x;
    }
    g.add(Op::new(OpKind::Cast), vec![x], ty.with_dtype(DType::I64))
}

/// The constant value of a dim, or an error naming `what`.
pub(crate) fn const_dim(d: &Dim, what: &str) -> Result<u64, String> {
    d.as_const()
        .ok_or_else(|| format!("{what} must be a constant, found `{d}`"))
}
