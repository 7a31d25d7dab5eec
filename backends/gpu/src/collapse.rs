//! One dimension per parallel loop: every top-level `scf.parallel` of rank ≥ 2
//! over `[0, n₀) × … × [0, nₖ)` with unit steps and no reduction becomes one
//! loop over `[0, n₀·…·nₖ)` whose body recovers the indices by division.
//!
//! Mapped as they come, a loop's dimensions would go to the grid's x, y and z
//! (y and z are limited to 65535, less than a 64K-token length) and its first
//! dimension, often the batch of 1, to the threads. Collapsed, the threads of
//! a block walk the innermost dimension, so that their accesses are
//! contiguous, and the grid is `total / 128` blocks in x.

use melior::{
    ir::{operation::OperationLike, Module},
    Context,
};
use mlir_sys::*;

/// Collapses every eligible loop of `module`; returns how many.
pub(crate) fn collapse_parallel_loops(context: &Context, module: &Module) -> usize {
    let mut found = Vec::new();
    module
        .as_operation()
        .walk(melior::ir::operation::WalkOrder::PreOrder, |op| {
            let raw = op.to_raw();
            // SAFETY: `raw` is a live op of the module during the walk. Only
            // outermost loops are kept: the rewrites below destroy nested ones.
            if unsafe { name_of(raw) == "scf.parallel" && !nested(raw) } {
                found.push(raw);
            }
            melior::ir::operation::WalkResult::Advance
        });
    let mut n = 0;
    // SAFETY: as below; an interchange replaces only the op it is given.
    let found: Vec<MlirOperation> = found
        .into_iter()
        .map(|op| unsafe { crate::interchange::hoist_inner_parallel(context.to_raw(), op) })
        .collect();
    for op in found {
        // SAFETY: the ops were collected from the module, which is alive, and
        // collapsing one erases only that op (never another candidate: a
        // candidate is not nested in a parallel loop, so not in another one).
        if unsafe { eligible(op) } {
            unsafe { collapse(context.to_raw(), op) };
            n += 1;
        }
    }
    n
}

/// The op's name.
///
/// # Safety
/// `op` is a live operation.
pub(crate) unsafe fn name_of(op: MlirOperation) -> String {
    let s = mlirIdentifierStr(mlirOperationGetName(op));
    String::from_utf8_lossy(std::slice::from_raw_parts(s.data.cast::<u8>(), s.length)).into_owned()
}

/// The integer value of the `arith.constant` defining `v`, if it is one.
///
/// # Safety
/// `v` is a live value.
pub(crate) unsafe fn constant(v: MlirValue) -> Option<i64> {
    if !mlirValueIsAOpResult(v) {
        return None;
    }
    let def = mlirOpResultGetOwner(v);
    if name_of(def) != "arith.constant" {
        return None;
    }
    let a = mlirOperationGetAttributeByName(def, mlirStringRefCreateFromCString(c"value".as_ptr()));
    (!a.ptr.is_null() && mlirAttributeIsAInteger(a)).then(|| mlirIntegerAttrGetValueInt(a))
}

/// Rank ≥ 2, no results (reductions), zero lower bounds, unit steps, and not
/// inside another parallel loop.
///
/// # Safety
/// `op` is a live `scf.parallel`.
unsafe fn eligible(op: MlirOperation) -> bool {
    let operands = mlirOperationGetNumOperands(op) as usize;
    if mlirOperationGetNumResults(op) != 0 || !operands.is_multiple_of(3) || operands < 6 {
        return false;
    }
    let rank = operands / 3;
    !nested(op)
        && (0..rank).all(|i| {
            constant(mlirOperationGetOperand(op, i as isize)) == Some(0)
                && constant(mlirOperationGetOperand(op, (2 * rank + i) as isize)) == Some(1)
        })
}

/// Whether `op` is inside an `scf.parallel`.
///
/// # Safety
/// `op` is live.
unsafe fn nested(op: MlirOperation) -> bool {
    let mut parent = mlirOperationGetParentOperation(op);
    while !parent.ptr.is_null() {
        if name_of(parent) == "scf.parallel" {
            return true;
        }
        parent = mlirOperationGetParentOperation(parent);
    }
    false
}

/// A new op `name` of `results` types; the caller inserts it.
///
/// # Safety
/// Operands and attributes belong to `ctx`; `regions` are owned and moved in.
pub(crate) unsafe fn create(
    ctx: MlirContext,
    name: &str,
    loc: MlirLocation,
    operands: &[MlirValue],
    results: &[MlirType],
    attrs: &[(&std::ffi::CStr, MlirAttribute)],
    regions: &[MlirRegion],
) -> MlirOperation {
    let mut state = mlirOperationStateGet(
        MlirStringRef {
            data: name.as_ptr().cast(),
            length: name.len(),
        },
        loc,
    );
    mlirOperationStateAddOperands(&mut state, operands.len() as isize, operands.as_ptr());
    mlirOperationStateAddResults(&mut state, results.len() as isize, results.as_ptr());
    let named: Vec<MlirNamedAttribute> = attrs
        .iter()
        .map(|(n, a)| MlirNamedAttribute {
            name: mlirIdentifierGet(ctx, mlirStringRefCreateFromCString(n.as_ptr())),
            attribute: *a,
        })
        .collect();
    mlirOperationStateAddAttributes(&mut state, named.len() as isize, named.as_ptr());
    mlirOperationStateAddOwnedRegions(&mut state, regions.len() as isize, regions.as_ptr());
    mlirOperationCreate(&mut state)
}

/// Rewrites one eligible loop (see the module docs) and erases it.
///
/// # Safety
/// `op` is a live, [`eligible`] `scf.parallel` in a block.
unsafe fn collapse(ctx: MlirContext, op: MlirOperation) {
    let rank = mlirOperationGetNumOperands(op) as usize / 3;
    let loc = mlirOperationGetLocation(op);
    let index = mlirIndexTypeGet(ctx);
    let block = mlirOperationGetBlock(op);
    let before = |new: MlirOperation| {
        mlirBlockInsertOwnedOperationBefore(block, op, new);
        mlirOperationGetResult(new, 0)
    };
    let cst = |v: i64| {
        let attr = mlirIntegerAttrGet(index, v);
        create(
            ctx,
            "arith.constant",
            loc,
            &[],
            &[index],
            &[(c"value", attr)],
            &[],
        )
    };
    let ubs: Vec<MlirValue> = (0..rank)
        .map(|i| mlirOperationGetOperand(op, (rank + i) as isize))
        .collect();
    let (zero, one) = (before(cst(0)), before(cst(1)));
    let mut total = ubs[0];
    for &ub in &ubs[1..] {
        total = before(create(
            ctx,
            "arith.muli",
            loc,
            &[total, ub],
            &[index],
            &[],
            &[],
        ));
    }
    let region = mlirRegionCreate();
    let body = mlirBlockCreate(1, &index, &loc);
    mlirRegionAppendOwnedBlock(region, body);
    let append = |new: MlirOperation| {
        mlirBlockAppendOwnedOperation(body, new);
        mlirOperationGetResult(new, 0)
    };
    // Row-major: the last dimension varies fastest.
    let mut rest = mlirBlockGetArgument(body, 0);
    let mut ivs = vec![rest; rank];
    for k in (1..rank).rev() {
        ivs[k] = append(create(
            ctx,
            "arith.remui",
            loc,
            &[rest, ubs[k]],
            &[index],
            &[],
            &[],
        ));
        rest = append(create(
            ctx,
            "arith.divui",
            loc,
            &[rest, ubs[k]],
            &[index],
            &[],
            &[],
        ));
    }
    ivs[0] = rest;
    let old_body = mlirRegionGetFirstBlock(mlirOperationGetRegion(op, 0));
    for (k, iv) in ivs.iter().enumerate() {
        mlirValueReplaceAllUsesOfWith(mlirBlockGetArgument(old_body, k as isize), *iv);
    }
    let mut ops = Vec::new();
    let mut o = mlirBlockGetFirstOperation(old_body);
    while !o.ptr.is_null() {
        ops.push(o);
        o = mlirOperationGetNextInBlock(o);
    }
    for o in ops {
        mlirOperationRemoveFromParent(o);
        mlirBlockAppendOwnedOperation(body, o);
    }
    let segments = mlirDenseI32ArrayGet(ctx, 4, [1, 1, 1, 0].as_ptr());
    let new = create(
        ctx,
        "scf.parallel",
        loc,
        &[zero, total, one],
        &[],
        &[(c"operandSegmentSizes", segments)],
        &[region],
    );
    mlirBlockInsertOwnedOperationBefore(block, op, new);
    mlirOperationRemoveFromParent(op);
    mlirOperationDestroy(op);
}
