//! Per-op timing for code compiled with `--profile`: generated code reads
//! the clock before each leaf op (`rc_prof_now`) and records the elapsed
//! time under the op's label after it (`rc_prof_add`); [`report`] turns the
//! totals into a table by op kind and by op (the slowest first).
//!
//! Labels are the generated code's constant strings (`"lsh_attention %36"`:
//! the op kind, a space, the value), so recording is a lookup by address.

use std::collections::HashMap;
use std::ffi::{c_char, CStr};
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Label (copied at its first record), calls and nanoseconds per label address.
type Totals = HashMap<usize, (String, u64, u64)>;
static TOTALS: Mutex<Option<Totals>> = Mutex::new(None);

fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

crate::c_abi! {
    section = "Per-op timing of --profile code (runtime/src/profile.rs)";

    /// Nanoseconds on a monotonic clock (the start of an op).
    safe fn rc_prof_now() -> i64 {
        epoch().elapsed().as_nanos() as i64
    }

    /// Adds the time since `start` (from [`rc_prof_now`]) to `label`'s total.
    ///
    /// # Safety
    /// `label` is a NUL-terminated string that stays at its address while code
    /// that records under it runs (generated code passes its constant strings);
    /// NULL is ignored. The text is copied at the first record.
    unsafe fn rc_prof_add(label: *const c_char, start: i64) {
        if label.is_null() {
            return;
        }
        let ns = (rc_prof_now() - start).max(0) as u64;
        let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        let e = t
            .get_or_insert_with(HashMap::new)
            .entry(label as usize)
            .or_insert_with(|| {
                // SAFETY: the caller passes a NUL-terminated string (checked non-NULL).
                let s = unsafe { CStr::from_ptr(label) };
                (s.to_string_lossy().into_owned(), 0, 0)
            });
        e.1 += 1;
        e.2 += ns;
    }
}

/// Forgets every total.
pub fn reset() {
    *TOTALS.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// How many of the slowest ops a `--profile` table lists:
/// `REFORMC_PROFILE_TOP` when it is a number, else 25.
///
/// ```
/// assert!(reformc_runtime::profile::top_from_env() > 0);
/// ```
pub fn top_from_env() -> usize {
    std::env::var("REFORMC_PROFILE_TOP")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(25)
}

/// The totals as a table (by op kind, then the `top` slowest ops), or None
/// when nothing was recorded (code compiled without `--profile`).
///
/// ```
/// use reformc_runtime::profile::{rc_prof_add, rc_prof_now, report, reset};
/// static LABEL: &[u8] = b"linear %7\0";
/// reset();
/// // SAFETY: LABEL is a 'static NUL-terminated string.
/// unsafe { rc_prof_add(LABEL.as_ptr().cast(), rc_prof_now()) };
/// let table = report(5).unwrap();
/// assert!(table.contains("linear") && table.contains("%7"));
/// ```
pub fn report(top: usize) -> Option<String> {
    let totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
    let mut ops: Vec<(String, u64, u64)> = totals.into_values().collect();
    ops.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    let total: u64 = ops.iter().map(|o| o.2).sum::<u64>().max(1);
    let mut kinds: Vec<(String, u64, u64)> = Vec::new();
    for (label, calls, ns) in &ops {
        let kind = label.split(' ').next().unwrap_or("").to_string();
        match kinds.iter_mut().find(|k| k.0 == kind) {
            Some(k) => {
                k.1 += calls;
                k.2 += ns;
            }
            None => kinds.push((kind, *calls, *ns)),
        }
    }
    kinds.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    let mut s = String::new();
    let _ = writeln!(s, "profile: {:.3} ms in ops", total as f64 / 1e6);
    let _ = writeln!(s, "{}", kernels());
    let mut table = |title: &str, rows: &[(String, u64, u64)]| {
        let _ = writeln!(s, "{title:<34} {:>7} {:>11} {:>6}", "calls", "ms", "%");
        for (name, calls, ns) in rows {
            let pct = 100.0 * *ns as f64 / total as f64;
            let _ = writeln!(
                s,
                "{name:<34} {calls:>7} {:>11.3} {pct:>5.1}%",
                *ns as f64 / 1e6
            );
        }
    };
    table("by op kind", &kinds);
    table(
        &format!("slowest ops (top {top})"),
        &ops[..top.min(ops.len())],
    );
    Some(s)
}

/// Which micro-kernels ran: the GEMM kernel, and for bf16 products with
/// row-major A (when any ran) the tile unit or vector kernel.
fn kernels() -> String {
    let bf16 = match crate::amx::decided() {
        None => String::new(),
        Some(crate::amx::Mode::Hardware) => "; bf16 products on AMX tiles".into(),
        Some(crate::amx::Mode::Model) => "; bf16 products on the AMX tile model".into(),
        Some(crate::amx::Mode::Off) => "; bf16 products on AVX-512 BF16".into(),
    };
    format!("kernels: {:?}{bf16}", crate::gemm::kernel())
}
