//! Buffer copies as parallel loops: every `memref.copy` that bufferization
//! leaves (padding the inputs, concatenations, slices of the sorted
//! sequence) becomes a `linalg.generic` that copies element by element, so
//! that it lowers to a kernel like any other op. Left as they are, the copies
//! would run on the host and move managed pages between the GPU and the CPU
//! for every activation they touch.

use crate::raw::{create, ops_named};
use melior::{ir::Module, Context};
use mlir_sys::*;

/// Rewrites every `memref.copy` of `module`; returns how many.
pub(crate) fn copies_to_generics(context: &Context, module: &Module) -> usize {
    let found = ops_named(module, "memref.copy");
    for &op in &found {
        // SAFETY: each op is a live `memref.copy` (a copy holds no other
        // copy, so replacing one leaves the others alive).
        unsafe { to_generic(context.to_raw(), op) };
    }
    found.len()
}

/// Parses an attribute that reformc spells itself.
///
/// # Safety
/// `ctx` is live.
unsafe fn attr(ctx: MlirContext, text: &str) -> MlirAttribute {
    mlirAttributeParseGet(
        ctx,
        MlirStringRef {
            data: text.as_ptr().cast(),
            length: text.len(),
        },
    )
}

/// Replaces one `memref.copy %src, %dst` by the equivalent `linalg.generic`.
///
/// # Safety
/// `op` is a live `memref.copy` in a block.
unsafe fn to_generic(ctx: MlirContext, op: MlirOperation) {
    let (src, dst) = (
        mlirOperationGetOperand(op, 0),
        mlirOperationGetOperand(op, 1),
    );
    let ty = mlirValueGetType(src);
    let rank = mlirShapedTypeGetRank(ty) as usize;
    let elt = mlirShapedTypeGetElementType(ty);
    let dims: Vec<String> = (0..rank).map(|i| format!("d{i}")).collect();
    let map = format!("affine_map<({0}) -> ({0})>", dims.join(", "));
    let maps = attr(ctx, &format!("[{map}, {map}]"));
    let iters = vec!["#linalg.iterator_type<parallel>"; rank].join(", ");
    let iters = attr(ctx, &format!("[{iters}]"));
    let loc = mlirOperationGetLocation(op);
    let region = mlirRegionCreate();
    let types = [elt, elt];
    let locs = [loc, loc];
    let body = mlirBlockCreate(2, types.as_ptr(), locs.as_ptr());
    mlirRegionAppendOwnedBlock(region, body);
    let value = mlirBlockGetArgument(body, 0);
    mlirBlockAppendOwnedOperation(
        body,
        create(ctx, "linalg.yield", loc, &[value], &[], &[], &[]),
    );
    let segments = mlirDenseI32ArrayGet(ctx, 2, [1, 1].as_ptr());
    let generic = create(
        ctx,
        "linalg.generic",
        loc,
        &[src, dst],
        &[],
        &[
            (c"indexing_maps", maps),
            (c"iterator_types", iters),
            (c"operandSegmentSizes", segments),
        ],
        &[region],
    );
    mlirBlockInsertOwnedOperationBefore(mlirOperationGetBlock(op), op, generic);
    mlirOperationRemoveFromParent(op);
    mlirOperationDestroy(op);
}
