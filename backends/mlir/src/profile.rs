//! Per-op timing of reformc's own MLIR pipeline (`run --backend mlir
//! --profile`): the emitter brackets every leaf op with a call that reads the
//! clock and a call that records the time under the op's label, and this
//! module gives the ExecutionEngine those two functions. The totals land in
//! the runtime's profile ([`reformc_runtime::profile::report`]), the same
//! table the LLVM backend's `--profile` prints.
//!
//! The calls are plain `func.call`s to private declarations (upstream `func`
//! only); the labels stay on the Rust side, the module passes an index.

use melior::ExecutionEngine;
use std::ffi::CString;
use std::sync::Mutex;

/// The declarations a profiled module holds (module level).
pub(crate) const DECLARATIONS: &str = "  func.func private @reformc_prof_now() -> i64\n  func.func private @reformc_prof_add(i64, i64)\n";

/// The right-hand side that reads the clock (an `i64` of nanoseconds).
pub(crate) fn now_call() -> String {
    "func.call @reformc_prof_now() : () -> i64".to_string()
}

/// The call that records the time since `start` under label number `id`.
pub(crate) fn record_call(id: &str, start: &str) -> String {
    format!("func.call @reformc_prof_add({id}, {start}) : (i64, i64) -> ()")
}

/// The labels of the module being profiled, by index. A `CString`'s bytes do
/// not move when the list grows, and the runtime's profile keys its totals
/// by a label's address, so the list lives until the next profiled module.
static LABELS: Mutex<Vec<CString>> = Mutex::new(Vec::new());

/// Sets the labels of the module about to run (replacing any earlier list
/// after clearing the runtime's totals, which refer to it).
pub(crate) fn set_labels(labels: &[String]) {
    reformc_runtime::profile::reset();
    let mut l = LABELS.lock().unwrap_or_else(|p| p.into_inner());
    *l = labels
        .iter()
        .map(|s| CString::new(s.replace('\0', " ")).expect("NUL bytes replaced"))
        .collect();
}

extern "C" fn prof_now() -> i64 {
    reformc_runtime::profile::rc_prof_now()
}

extern "C" fn prof_add(id: i64, start: i64) {
    let labels = LABELS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(label) = usize::try_from(id).ok().and_then(|i| labels.get(i)) {
        // SAFETY: a NUL-terminated string that stays at its address until
        // the next `set_labels`, which first clears the totals keyed by it.
        unsafe { reformc_runtime::profile::rc_prof_add(label.as_ptr(), start) };
    }
}

/// Gives `engine` the two timing functions; call it before the engine's
/// first lookup.
pub(crate) fn register(engine: &ExecutionEngine) {
    // SAFETY: each function has the C signature of its declaration in
    // `DECLARATIONS` (`() -> i64`, `(i64, i64) -> ()`), which is how the
    // lowered calls invoke the symbol of that name.
    unsafe {
        engine.register_symbol("reformc_prof_now", prof_now as *mut ());
        engine.register_symbol("reformc_prof_add", prof_add as *mut ());
    }
}
