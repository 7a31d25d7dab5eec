//! One dimension per parallel loop: every top-level `scf.parallel` of rank ≥ 2
//! over `[0, n₀) × … × [0, nₖ)` with unit steps and no reduction becomes one
//! loop over `[0, n₀·…·nₖ)` whose body recovers the indices by division.
//!
//! Mapped as they come, a loop's dimensions would go to the grid's x, y and z
//! (y and z are limited to 65535, less than a 64K-token length) and its first
//! dimension, often the batch of 1, to the threads. Collapsed, the threads of
//! a block walk the innermost dimension, so that their accesses are
//! contiguous, and the grid is `total / 128` blocks in x.

use crate::raw::{constant, create, name_of, ops_named, ops_of};
use melior::{ir::Module, Context};
use mlir_sys::*;

/// Collapses every eligible loop of `module`; returns how many.
pub(crate) fn collapse_parallel_loops(context: &Context, module: &Module) -> usize {
    // Only outermost loops: the rewrites below destroy nested ones.
    let found: Vec<MlirOperation> = ops_named(module, "scf.parallel")
        .into_iter()
        // SAFETY: nothing has changed since the walk, so every op is live.
        .filter(|&op| unsafe { !nested(op) })
        .collect();
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
    for o in ops_of(old_body) {
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

#[cfg(test)]
mod tests {
    /// The module `text` (tensor-level linalg) after the GPU backend's loop
    /// stages, printed.
    pub(crate) fn loops(text: &str) -> String {
        let context = reformc_backend_mlir::context();
        reformc_backend_mlir::register_passes();
        let mut module = melior::ir::Module::parse(&context, text).expect("test module parses");
        crate::to_loops(&context, &mut module).expect("loop stages run");
        module.as_operation().to_string()
    }

    const ELEMENTWISE_3D: &str = "module {\n  func.func @forward(%a: tensor<?x?x8xf32>) -> tensor<?x?x8xf32> {\n    %c0 = arith.constant 0 : index\n    %c1 = arith.constant 1 : index\n    %d0 = tensor.dim %a, %c0 : tensor<?x?x8xf32>\n    %d1 = tensor.dim %a, %c1 : tensor<?x?x8xf32>\n    %e = tensor.empty(%d0, %d1) : tensor<?x?x8xf32>\n    %r = linalg.generic {indexing_maps = [affine_map<(i, j, k) -> (i, j, k)>, affine_map<(i, j, k) -> (i, j, k)>], iterator_types = [\"parallel\", \"parallel\", \"parallel\"]} ins(%a : tensor<?x?x8xf32>) outs(%e : tensor<?x?x8xf32>) {\n    ^bb0(%x: f32, %y: f32):\n      %z = arith.addf %x, %x : f32\n      linalg.yield %z : f32\n    } -> tensor<?x?x8xf32>\n    return %r : tensor<?x?x8xf32>\n  }\n}\n";

    #[test]
    fn a_three_dimensional_loop_becomes_one_dimension_indexed_by_division() {
        let out = loops(ELEMENTWISE_3D);
        let parallels: Vec<&str> = out.lines().filter(|l| l.contains("scf.parallel")).collect();
        assert_eq!(parallels.len(), 1, "{out}");
        // One induction variable, over the product of the three extents.
        assert_eq!(parallels[0].matches("%arg").count(), 1, "{out}");
        assert!(out.contains("arith.muli"), "{out}");
        // Row-major: the last extent (8) is the fastest index.
        assert_eq!(out.matches("arith.remui").count(), 2, "{out}");
        assert_eq!(out.matches("arith.divui").count(), 2, "{out}");
    }

    #[test]
    fn a_reduction_loop_with_an_inner_parallel_loop_is_interchanged_then_collapsed() {
        // y[i, n] += x[i, k] * w[k, n], with k before n (as `linear` is emitted).
        let text = "module {\n  func.func @forward(%x: tensor<?x4xf32>, %w: tensor<4x3xf32>, %o: tensor<?x3xf32>) -> tensor<?x3xf32> {\n    %r = linalg.generic {indexing_maps = [affine_map<(i, k, n) -> (i, k)>, affine_map<(i, k, n) -> (k, n)>, affine_map<(i, k, n) -> (i, n)>], iterator_types = [\"parallel\", \"reduction\", \"parallel\"]} ins(%x, %w : tensor<?x4xf32>, tensor<4x3xf32>) outs(%o : tensor<?x3xf32>) {\n    ^bb0(%a: f32, %b: f32, %c: f32):\n      %p = arith.mulf %a, %b : f32\n      %s = arith.addf %c, %p : f32\n      linalg.yield %s : f32\n    } -> tensor<?x3xf32>\n    return %r : tensor<?x3xf32>\n  }\n}\n";
        let out = loops(text);
        let (p, f) = (
            out.find("scf.parallel").unwrap(),
            out.find("scf.for").unwrap(),
        );
        assert!(
            p < f,
            "the reduction loop is inside the parallel one: {out}"
        );
        // Nothing parallel is left inside the reduction loop (the one other
        // parallel loop, after it, copies the output bufferization made).
        let inside_for = &out[f..f + out[f..].find("scf.reduce").unwrap()];
        assert!(!inside_for.contains("scf.parallel"), "{out}");
        assert!(
            out[p..f].contains("arith.remui"),
            "collapsed to one dimension: {out}"
        );
    }

    #[test]
    fn copies_become_generics_then_loops() {
        let text = "module {\n  func.func @forward(%a: tensor<?x8xf32>) -> tensor<?x16xf32> {\n    %c0 = arith.constant 0 : index\n    %d0 = tensor.dim %a, %c0 : tensor<?x8xf32>\n    %e = tensor.empty(%d0) : tensor<?x16xf32>\n    %r = tensor.insert_slice %a into %e[0, 4] [%d0, 8] [1, 1] : tensor<?x8xf32> into tensor<?x16xf32>\n    return %r : tensor<?x16xf32>\n  }\n}\n";
        let out = loops(text);
        assert!(!out.contains("memref.copy"), "{out}");
        assert!(out.contains("scf.parallel"), "{out}");
    }
}
