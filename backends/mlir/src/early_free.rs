//! Early frees: moves each `memref.dealloc` of a bufferized module up to just
//! after the last use of its buffer, for reformc's own pipeline.
//!
//! `ownership-based-buffer-deallocation` frees a buffer at the end of the
//! block that owns it (MLIR's documented design: it analyses no liveness). In
//! reformc's modules nearly every tensor lives in the one block of
//! `@forward`, so every buffer of every layer stayed allocated until the
//! function returned: 1.6 GB at L = 16384 for the 6-layer bench model, and no
//! block could be reused by a later layer. This rewrite, [`free_early`], runs
//! after the deallocation pipeline and moves, within its block, every
//! unconditional `memref.dealloc` (and every `scf.if` that only deallocates,
//! the form dynamic ownership lowers to) to just after the last op that uses
//! the buffer or anything that may alias it.
//!
//! Aliasing is over-approximated: a memref result of any op may alias each
//! of its memref operands; the memref block arguments of an op's regions and
//! the memref operands of their terminators may alias the op's operands and
//! results. A use inside a nested region counts as a use by the op of the
//! block that holds it. A buffer with a use outside the dealloc's block is
//! left where it is.

use mlir_sys::{
    mlirBlockGetArgument, mlirBlockGetFirstOperation, mlirBlockGetNextInRegion,
    mlirBlockGetNumArguments, mlirIdentifierStr, mlirOperationGetBlock, mlirOperationGetName,
    mlirOperationGetNextInBlock, mlirOperationGetNumOperands, mlirOperationGetNumRegions,
    mlirOperationGetNumResults, mlirOperationGetOperand, mlirOperationGetParentOperation,
    mlirOperationGetRegion, mlirOperationGetResult, mlirOperationMoveAfter,
    mlirRegionGetFirstBlock, mlirTypeIsAMemRef, mlirValueGetType, MlirBlock, MlirOperation,
    MlirValue,
};
use std::collections::HashMap;

/// Key of a value, op or block: its handle's address.
type Key = usize;

fn vkey(v: MlirValue) -> Key {
    v.ptr as usize
}

fn okey(o: MlirOperation) -> Key {
    o.ptr as usize
}

fn bkey(b: MlirBlock) -> Key {
    b.ptr as usize
}

/// Union-find over values.
#[derive(Default)]
struct Classes {
    parent: HashMap<Key, Key>,
}

impl Classes {
    fn find(&mut self, x: Key) -> Key {
        let p = *self.parent.entry(x).or_insert(x);
        if p == x {
            return x;
        }
        let root = self.find(p);
        self.parent.insert(x, root);
        root
    }

    fn union(&mut self, a: Key, b: Key) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent.insert(ra, rb);
        }
    }
}

/// What the rewrite knows about one op.
struct OpInfo {
    raw: MlirOperation,
    name: String,
    block: Key,
    /// Index in its block.
    pos: usize,
    operands: Vec<MlirValue>,
}

/// The module's ops, values and blocks as the rewrite needs them.
#[derive(Default)]
struct Facts {
    ops: Vec<OpInfo>,
    /// Op key -> index in `ops`.
    index: HashMap<Key, usize>,
    classes: Classes,
    /// Value key -> the ops that use it.
    users: HashMap<Key, Vec<usize>>,
    /// Value key -> index of its defining op (absent for block arguments).
    defs: HashMap<Key, usize>,
}

/// Moves deallocations up to the last use of their buffers (see the module
/// doc); returns how many moved.
///
/// # Safety
/// `module_op` is the operation of a live, bufferized module that nothing
/// else accesses during the call.
pub(crate) unsafe fn free_early(module_op: MlirOperation) -> usize {
    let mut facts = Facts::default();
    // SAFETY: a live module (the contract); the walk only reads it.
    unsafe { collect(module_op, &mut facts) };
    let moves = plan(&mut facts);
    for &(dealloc, after) in &moves {
        // SAFETY: both ops are live and in the same block (`plan` checked),
        // and `after` comes before `dealloc`.
        unsafe { mlirOperationMoveAfter(facts.ops[dealloc].raw, facts.ops[after].raw) };
    }
    moves.len()
}

/// Records every op nested in `op` (not `op` itself), in pre-order.
///
/// # Safety
/// `op` is a live operation.
unsafe fn collect(op: MlirOperation, facts: &mut Facts) {
    // SAFETY (whole body): every handle comes from the C API's accessors on
    // live IR, used only to read it.
    unsafe {
        for r in 0..mlirOperationGetNumRegions(op) {
            let mut block = mlirRegionGetFirstBlock(mlirOperationGetRegion(op, r));
            while !block.ptr.is_null() {
                for a in 0..mlirBlockGetNumArguments(block) {
                    let arg = mlirBlockGetArgument(block, a);
                    // Region arguments may alias the op's operands and results.
                    if is_memref(arg) {
                        for v in memrefs_of(op) {
                            facts.classes.union(vkey(arg), vkey(v));
                        }
                    }
                }
                let mut child = mlirBlockGetFirstOperation(block);
                let mut pos = 0;
                let mut last = child;
                while !child.ptr.is_null() {
                    record(child, block, pos, facts);
                    collect(child, facts);
                    last = child;
                    child = mlirOperationGetNextInBlock(child);
                    pos += 1;
                }
                // The terminator's operands may flow out as the op's results.
                if !last.ptr.is_null() {
                    for i in 0..mlirOperationGetNumOperands(last) {
                        let v = mlirOperationGetOperand(last, i);
                        if is_memref(v) {
                            for w in memrefs_of(op) {
                                facts.classes.union(vkey(v), vkey(w));
                            }
                        }
                    }
                }
                block = mlirBlockGetNextInRegion(block);
            }
        }
    }
}

/// Adds one op: its operands, uses, definitions and result aliases.
///
/// # Safety
/// `op` is a live operation in `block`.
unsafe fn record(op: MlirOperation, block: MlirBlock, pos: usize, facts: &mut Facts) {
    let i = facts.ops.len();
    // SAFETY (whole body): accessors on live IR (the contract).
    unsafe {
        let name = identifier(mlirOperationGetName(op));
        let operands: Vec<MlirValue> = (0..mlirOperationGetNumOperands(op))
            .map(|k| mlirOperationGetOperand(op, k))
            .collect();
        for &v in &operands {
            facts.users.entry(vkey(v)).or_default().push(i);
        }
        for r in 0..mlirOperationGetNumResults(op) {
            let res = mlirOperationGetResult(op, r);
            facts.defs.insert(vkey(res), i);
            if is_memref(res) {
                for &v in operands.iter().filter(|v| is_memref(**v)) {
                    facts.classes.union(vkey(res), vkey(v));
                }
            }
        }
        facts.index.insert(okey(op), i);
        facts.ops.push(OpInfo {
            raw: op,
            name,
            block: bkey(block),
            pos,
            operands,
        });
    }
}

/// The memref operands and results of `op`.
///
/// # Safety
/// `op` is a live operation.
unsafe fn memrefs_of(op: MlirOperation) -> Vec<MlirValue> {
    // SAFETY: accessors on live IR (the contract).
    unsafe {
        let operands = (0..mlirOperationGetNumOperands(op)).map(|k| mlirOperationGetOperand(op, k));
        let results = (0..mlirOperationGetNumResults(op)).map(|k| mlirOperationGetResult(op, k));
        operands.chain(results).filter(|v| is_memref(*v)).collect()
    }
}

fn is_memref(v: MlirValue) -> bool {
    // SAFETY: `v` is a live value (every caller passes one from live IR).
    unsafe { mlirTypeIsAMemRef(mlirValueGetType(v)) }
}

/// The text of an identifier.
///
/// # Safety
/// `id` is a live identifier.
unsafe fn identifier(id: mlir_sys::MlirIdentifier) -> String {
    // SAFETY: the identifier's text lives as long as its context.
    unsafe {
        let s = mlirIdentifierStr(id);
        let bytes = std::slice::from_raw_parts(s.data.cast::<u8>(), s.length);
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// The (dealloc, new predecessor) pairs: each deallocating op with the op it
/// can move after, when that is earlier than where it is.
fn plan(facts: &mut Facts) -> Vec<(usize, usize)> {
    let mut moves = Vec::new();
    for d in 0..facts.ops.len() {
        let Some(freed) = freed_values(facts, d) else {
            continue;
        };
        if let Some(after) = last_use(facts, d, &freed) {
            if after + 1 < facts.ops[d].pos {
                let block = facts.ops[d].block;
                let target = facts
                    .ops
                    .iter()
                    .position(|o| o.block == block && o.pos == after)
                    .expect("positions of a block are dense");
                moves.push((d, target));
            }
        }
    }
    moves
}

/// The buffers op `d` frees when it only frees: a `memref.dealloc`, or an
/// `scf.if` without results whose then-block holds only deallocations (and
/// its `scf.yield`) and whose else-block is empty. Also the other values it
/// reads (the condition), which must be defined before it moves.
fn freed_values(facts: &Facts, d: usize) -> Option<Vec<MlirValue>> {
    let op = &facts.ops[d];
    match op.name.as_str() {
        "memref.dealloc" => Some(op.operands.clone()),
        "scf.if" => {
            // SAFETY: a live op recorded by `collect`.
            if unsafe { mlirOperationGetNumResults(op.raw) } != 0 {
                return None;
            }
            let inner: Vec<&OpInfo> = facts
                .ops
                .iter()
                // SAFETY: live ops recorded by `collect`.
                .filter(|o| unsafe { okey(mlirOperationGetParentOperation(o.raw)) } == okey(op.raw))
                .collect();
            let only_frees = inner
                .iter()
                .all(|o| o.name == "memref.dealloc" || o.name == "scf.yield");
            if !only_frees || inner.iter().all(|o| o.name != "memref.dealloc") {
                return None;
            }
            let mut vals = op.operands.clone();
            vals.extend(
                inner
                    .iter()
                    .filter(|o| o.name == "memref.dealloc")
                    .flat_map(|o| o.operands.clone()),
            );
            Some(vals)
        }
        _ => None,
    }
}

/// The position in `d`'s block after which `d` may go: after every use of
/// anything that may alias what it frees and after the definitions of its
/// operands; None when some use is outside the block (or is the block's own
/// terminator, whose op is then the last use).
fn last_use(facts: &mut Facts, d: usize, vals: &[MlirValue]) -> Option<usize> {
    let block = facts.ops[d].block;
    let mut last: Option<usize> = None;
    let mut bump = |p: usize| last = Some(last.map_or(p, |l: usize| l.max(p)));
    for &v in vals {
        if let Some(&def) = facts.defs.get(&vkey(v)) {
            if facts.ops[def].block == block {
                bump(facts.ops[def].pos);
            }
        }
    }
    let roots: Vec<Key> = vals
        .iter()
        .filter(|v| is_memref(**v))
        .map(|v| facts.classes.find(vkey(*v)))
        .collect();
    let members: Vec<Key> = facts
        .users
        .keys()
        .copied()
        .collect::<Vec<_>>()
        .into_iter()
        .filter(|k| roots.contains(&facts.classes.find(*k)))
        .collect();
    for m in members {
        for &u in &facts.users[&m] {
            if u == d || is_inside(facts, u, d) {
                continue;
            }
            bump(ancestor_in(facts, u, block)?);
        }
    }
    last
}

/// Whether op `u` is nested (at any depth) inside op `d`.
fn is_inside(facts: &Facts, u: usize, d: usize) -> bool {
    let target = okey(facts.ops[d].raw);
    // SAFETY: live ops recorded by `collect`; parents of live ops are live.
    let mut p = unsafe { mlirOperationGetParentOperation(facts.ops[u].raw) };
    while !p.ptr.is_null() {
        if okey(p) == target {
            return true;
        }
        // SAFETY: as above.
        p = unsafe { mlirOperationGetParentOperation(p) };
    }
    false
}

/// The position, in `block`, of op `u` or of the op of `block` that holds it.
fn ancestor_in(facts: &Facts, u: usize, block: Key) -> Option<usize> {
    let mut op = facts.ops[u].raw;
    loop {
        let i = *facts.index.get(&okey(op))?;
        if facts.ops[i].block == block {
            return Some(facts.ops[i].pos);
        }
        // SAFETY: a live op recorded by `collect`.
        op = unsafe { mlirOperationGetParentOperation(op) };
        if op.ptr.is_null() {
            return None;
        }
        // SAFETY: as above.
        if unsafe { mlirOperationGetBlock(op).ptr.is_null() } {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use melior::ir::{operation::OperationLike, Module};

    /// The module after [`super::free_early`], and how many deallocs moved.
    fn rewritten(text: &str) -> (String, usize) {
        let context = crate::context();
        let module = Module::parse(&context, text).expect("test module parses");
        // SAFETY: a live module that only this test touches.
        let moved = unsafe { super::free_early(module.as_operation().to_raw()) };
        assert!(
            module.as_operation().verify(),
            "the rewritten module verifies"
        );
        (module.as_operation().to_string(), moved)
    }

    /// The line index of the first line containing `what`.
    fn line_of(text: &str, what: &str) -> usize {
        text.lines()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("`{what}` not in\n{text}"))
    }

    #[test]
    fn a_dealloc_moves_to_just_after_the_last_use_of_any_alias() {
        let (text, moved) = rewritten(
            "func.func @f(%n: index) -> f32 {
  %c0 = arith.constant 0 : index
  %a = memref.alloc(%n) : memref<?xf32>
  %v = memref.cast %a : memref<?xf32> to memref<?xf32, strided<[1], offset: ?>>
  %x = memref.load %v[%c0] : memref<?xf32, strided<[1], offset: ?>>
  %b = memref.alloc(%n) : memref<?xf32>
  %y = memref.load %b[%c0] : memref<?xf32>
  %s = arith.addf %x, %y : f32
  memref.dealloc %a : memref<?xf32>
  memref.dealloc %b : memref<?xf32>
  return %s : f32
}",
        );
        assert_eq!(moved, 2);
        let load_x = line_of(&text, "memref.load %cast");
        assert_eq!(line_of(&text, "memref.dealloc %alloc :"), load_x + 1);
        let load_y = line_of(&text, "memref.load %alloc_0");
        assert_eq!(line_of(&text, "memref.dealloc %alloc_0"), load_y + 1);
    }

    #[test]
    fn a_use_in_a_nested_loop_or_through_a_region_result_keeps_the_buffer() {
        let (text, _) = rewritten(
            "func.func @f(%n: index, %c: i1) -> f32 {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %z = arith.constant 0.0 : f32
  %a = memref.alloc(%n) : memref<?xf32>
  %b = memref.alloc(%n) : memref<?xf32>
  %r = scf.for %i = %c0 to %n step %c1 iter_args(%acc = %z) -> (f32) {
    %x = memref.load %a[%i] : memref<?xf32>
    %t = arith.addf %acc, %x : f32
    scf.yield %t : f32
  }
  %m = scf.if %c -> (memref<?xf32>) {
    scf.yield %b : memref<?xf32>
  } else {
    scf.yield %b : memref<?xf32>
  }
  %w = arith.mulf %r, %r : f32
  %y = memref.load %m[%c0] : memref<?xf32>
  %s = arith.addf %w, %y : f32
  memref.dealloc %a : memref<?xf32>
  memref.dealloc %b : memref<?xf32>
  return %s : f32
}",
        );
        // %a: just after the loop that reads it (before the scf.if), not
        // inside it.
        let after_loop = line_of(&text, "%1 = scf.if") - 1;
        assert_eq!(
            line_of(&text, "memref.dealloc %alloc :"),
            after_loop,
            "{text}"
        );
        // %b: after the load through the scf.if result that may alias it.
        let load_m = line_of(&text, "memref.load %1");
        assert_eq!(line_of(&text, "memref.dealloc %alloc_0"), load_m + 1);
    }

    #[test]
    fn a_conditional_dealloc_moves_and_a_returned_alias_holds_nothing_back() {
        let (text, moved) = rewritten(
            "func.func @f(%n: index, %c: i1) -> memref<?xf32> {
  %c0 = arith.constant 0 : index
  %a = memref.alloc(%n) : memref<?xf32>
  %b = memref.alloc(%n) : memref<?xf32>
  %v = memref.cast %a : memref<?xf32> to memref<?xf32>
  %x = memref.load %b[%c0] : memref<?xf32>
  memref.store %x, %v[%c0] : memref<?xf32>
  scf.if %c {
    memref.dealloc %b : memref<?xf32>
  }
  return %v : memref<?xf32>
}",
        );
        assert_eq!(moved, 1, "{text}");
        let load_b = line_of(&text, "memref.load %alloc_0");
        assert_eq!(line_of(&text, "scf.if"), load_b + 1, "{text}");
    }

    #[test]
    fn a_use_by_the_terminator_keeps_the_dealloc_last() {
        let (_, moved) = rewritten(
            "func.func @f(%n: index) -> memref<?xf32> {
  %a = memref.alloc(%n) : memref<?xf32>
  %v = memref.cast %a : memref<?xf32> to memref<?xf32>
  %b = memref.alloc(%n) : memref<?xf32>
  memref.dealloc %a : memref<?xf32>
  return %v : memref<?xf32>
}",
        );
        assert_eq!(moved, 0);
    }
}
