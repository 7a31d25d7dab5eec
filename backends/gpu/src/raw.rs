//! Small helpers over MLIR's C API for the GPU backend's rewrites, which
//! build and move ops where melior has no builder for them.

use melior::ir::{operation::OperationLike, Module};
use mlir_sys::*;

/// Every op named `name` in `module`, outermost first (pre-order), collected
/// before any is changed.
pub(crate) fn ops_named(module: &Module, name: &str) -> Vec<MlirOperation> {
    let mut found = Vec::new();
    module
        .as_operation()
        .walk(melior::ir::operation::WalkOrder::PreOrder, |op| {
            let raw = op.to_raw();
            // SAFETY: a live op of the module during the walk.
            if unsafe { name_of(raw) } == name {
                found.push(raw);
            }
            melior::ir::operation::WalkResult::Advance
        });
    found
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

/// The ops of `block`, in order.
///
/// # Safety
/// `block` is live.
pub(crate) unsafe fn ops_of(block: MlirBlock) -> Vec<MlirOperation> {
    let mut v = Vec::new();
    let mut o = mlirBlockGetFirstOperation(block);
    while !o.ptr.is_null() {
        v.push(o);
        o = mlirOperationGetNextInBlock(o);
    }
    v
}

/// The single block of `op`'s first region.
///
/// # Safety
/// `op` is live and has a region with a block.
pub(crate) unsafe fn body(op: MlirOperation) -> MlirBlock {
    mlirRegionGetFirstBlock(mlirOperationGetRegion(op, 0))
}
