//! Hoisting a parallel loop out of a reduction loop:
//! `scf.parallel (i) { scf.for k { scf.parallel (j) { S } } }` becomes
//! `scf.parallel (i, j) { scf.for k { S } }`.
//!
//! `convert-linalg-to-parallel-loops` emits the first form for a linalg op
//! whose reduction dimension comes before a parallel one (the MLIR backend
//! orders `linear` so, `[.., k, n]`, for the CPU's vectorisers). Only
//! perfectly nested parallel loops map to the GPU, so in that form every
//! output row would be one thread. The swap is sound for loops that come from
//! linalg: an iteration `(k, j)` writes only the output element that `j`
//! (with `i`) indexes and reads the inputs and that element, so iterations of
//! different `j` never touch the same memory and the order of `k` is kept for
//! each `j`.

use crate::raw::{body, create, name_of, ops_of};
use mlir_sys::*;

/// Whether `v` is an argument of `block`.
///
/// # Safety
/// Both are live.
unsafe fn is_arg_of(v: MlirValue, block: MlirBlock) -> bool {
    (0..mlirBlockGetNumArguments(block)).any(|i| mlirValueEqual(mlirBlockGetArgument(block, i), v))
}

/// `p` with an inner parallel loop hoisted (module docs), or `p` unchanged
/// when it does not have that shape. Returns the loop that replaces `p`.
///
/// # Safety
/// `p` is a live `scf.parallel` in a block.
pub(crate) unsafe fn hoist_inner_parallel(ctx: MlirContext, p: MlirOperation) -> MlirOperation {
    let Some((f, q)) = shape(p) else {
        return p;
    };
    let loc = mlirOperationGetLocation(p);
    let index = mlirIndexTypeGet(ctx);
    let (m, n) = (
        mlirOperationGetNumOperands(p) as usize / 3,
        mlirOperationGetNumOperands(q) as usize / 3,
    );
    let operand = |op: MlirOperation, i: usize| mlirOperationGetOperand(op, i as isize);
    let mut operands = Vec::new();
    for part in 0..3 {
        operands.extend((0..m).map(|i| operand(p, part * m + i)));
        operands.extend((0..n).map(|i| operand(q, part * n + i)));
    }
    let arg_types = vec![index; m + n];
    let locs = vec![loc; m + n];
    let new_region = mlirRegionCreate();
    let new_body = mlirBlockCreate((m + n) as isize, arg_types.as_ptr(), locs.as_ptr());
    mlirRegionAppendOwnedBlock(new_region, new_body);
    let for_region = mlirRegionCreate();
    let for_body = mlirBlockCreate(1, &index, &loc);
    mlirRegionAppendOwnedBlock(for_region, for_body);
    let new_for = create(
        ctx,
        "scf.for",
        loc,
        &[operand(f, 0), operand(f, 1), operand(f, 2)],
        &[],
        &[],
        &[for_region],
    );
    mlirBlockAppendOwnedOperation(new_body, new_for);
    mlirBlockAppendOwnedOperation(new_body, create(ctx, "scf.reduce", loc, &[], &[], &[], &[]));
    // Q's body, but its terminator, runs inside the new `scf.for`.
    let q_ops = ops_of(body(q));
    for &o in &q_ops[..q_ops.len() - 1] {
        mlirOperationRemoveFromParent(o);
        mlirBlockAppendOwnedOperation(for_body, o);
    }
    mlirBlockAppendOwnedOperation(for_body, create(ctx, "scf.yield", loc, &[], &[], &[], &[]));
    let replace = |block: MlirBlock, offset: usize, count: usize, with: MlirBlock| {
        for i in 0..count {
            mlirValueReplaceAllUsesOfWith(
                mlirBlockGetArgument(block, i as isize),
                mlirBlockGetArgument(with, (offset + i) as isize),
            );
        }
    };
    replace(body(p), 0, m, new_body);
    replace(body(q), m, n, new_body);
    replace(body(f), 0, 1, for_body);
    let total = (m + n) as i32;
    let segments = mlirDenseI32ArrayGet(ctx, 4, [total, total, total, 0].as_ptr());
    let new = create(
        ctx,
        "scf.parallel",
        loc,
        &operands,
        &[],
        &[(c"operandSegmentSizes", segments)],
        &[new_region],
    );
    mlirBlockInsertOwnedOperationBefore(mlirOperationGetBlock(p), p, new);
    mlirOperationRemoveFromParent(p);
    mlirOperationDestroy(p);
    new
}

/// `(F, Q)` when `p` is `scf.parallel { F: scf.for { Q: scf.parallel } }`
/// with nothing else in either body, no loop-carried values, and Q's bounds
/// not computed from P's or F's indices.
///
/// # Safety
/// `p` is a live `scf.parallel`.
unsafe fn shape(p: MlirOperation) -> Option<(MlirOperation, MlirOperation)> {
    if mlirOperationGetNumResults(p) != 0 {
        return None;
    }
    let p_ops = ops_of(body(p));
    let [f, _reduce] = p_ops[..] else { return None };
    if name_of(f) != "scf.for" || mlirOperationGetNumResults(f) != 0 {
        return None;
    }
    let f_ops = ops_of(body(f));
    let [q, _yield] = f_ops[..] else { return None };
    if name_of(q) != "scf.parallel" || mlirOperationGetNumResults(q) != 0 {
        return None;
    }
    let inner_bounds_outside = (0..mlirOperationGetNumOperands(q)).all(|i| {
        let v = mlirOperationGetOperand(q, i);
        !is_arg_of(v, body(p)) && !is_arg_of(v, body(f))
    });
    inner_bounds_outside.then_some((f, q))
}
