//! The runtime's thread pool (a rayon pool that `rc_set_threads` resizes).
//!
//! Kernels split their work into tasks whose results do not depend on which
//! thread runs them or how many threads there are: every output element is
//! computed by one task with a fixed reduction order, so results are bitwise
//! identical at any thread count.

use crate::error::{invalid, Error, Result};
use rayon::prelude::*;
use std::sync::{Arc, RwLock};

/// Largest thread count `set_threads` accepts.
pub const MAX_THREADS: i64 = 4096;

static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn build(n: usize) -> Result<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("reformc-rt-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Internal(format!("cannot start {n} threads: {e}")))
}

/// Sets the number of worker threads (0 = all cores; at most [`MAX_THREADS`]).
/// Calling it again with the same count keeps the existing pool.
///
/// ```
/// reformc_runtime::set_threads(2).unwrap();
/// assert_eq!(reformc_runtime::threads(), 2);
/// ```
pub fn set_threads(n: i64) -> Result<()> {
    if !(0..=MAX_THREADS).contains(&n) {
        return Err(invalid(format!(
            "thread count {n} is outside 0..={MAX_THREADS}"
        )));
    }
    let n = if n == 0 { all_cores() } else { n as usize };
    let mut guard = POOL.write().unwrap_or_else(|p| p.into_inner());
    if guard.as_ref().is_some_and(|p| p.current_num_threads() == n) {
        return Ok(());
    }
    *guard = Some(build(n)?);
    Ok(())
}

/// The number of worker threads kernels use now.
pub fn threads() -> usize {
    pool().map_or(1, |p| p.current_num_threads())
}

fn pool() -> Result<Arc<rayon::ThreadPool>> {
    if let Some(p) = POOL.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return Ok(p.clone());
    }
    let mut guard = POOL.write().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(build(all_cores())?);
    }
    Ok(guard.as_ref().expect("just set").clone())
}

/// Runs `f(i)` for every `i in 0..n` on the pool (serially when `n <= 1`).
pub(crate) fn par_for<F>(n: usize, f: F) -> Result<()>
where
    F: Fn(usize) + Send + Sync,
{
    if n <= 1 {
        (0..n).for_each(f);
        return Ok(());
    }
    // The caller's GEMM precision holds in every task (see `crate::bf16`).
    let bf16 = crate::bf16::enabled();
    pool()?.install(|| {
        (0..n)
            .into_par_iter()
            .for_each(|i| crate::bf16::with(bf16, || f(i)))
    });
    Ok(())
}

/// Runs `f(ctx, lo, hi)` over ranges of at least `grain` covering `0..n`,
/// about four per thread (serially when there is one range).
pub(crate) fn par_ranges<C, F>(n: usize, grain: usize, ctx: C, f: F) -> Result<()>
where
    C: Copy + Send + Sync,
    F: Fn(C, usize, usize) + Send + Sync,
{
    if n == 0 {
        return Ok(());
    }
    let threads = threads();
    let per = n.div_ceil(threads * 4).max(grain);
    let tasks = n.div_ceil(per);
    par_for(tasks, |t| f(ctx, t * per, ((t + 1) * per).min(n)))
}

/// Like [`par_for`] for tasks that can fail: every task runs, and the error of
/// the lowest-numbered failing task is returned (so the reported error does
/// not depend on scheduling).
pub(crate) fn try_par_for<F>(n: usize, f: F) -> Result<()>
where
    F: Fn(usize) -> Result<()> + Send + Sync,
{
    let bf16 = crate::bf16::enabled();
    let run = || -> Vec<(usize, Error)> {
        (0..n)
            .into_par_iter()
            .filter_map(|i| crate::bf16::with(bf16, || f(i)).err().map(|e| (i, e)))
            .collect()
    };
    let errors = if n <= 1 { run() } else { pool()?.install(run) };
    match errors.into_iter().min_by_key(|(i, _)| *i) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// A raw pointer to an output buffer that tasks write disjoint parts of.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: the pointer is only used to write elements that exactly one task owns
// (each user documents its partition), and the buffer outlives the parallel loop.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above; concurrent tasks never touch the same element.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Wraps a buffer that the caller will only write through disjoint ranges.
    pub(crate) fn new(buf: &mut [T]) -> Self {
        SharedMut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// `*self[i] = f(*self[i])` for one element, through the raw pointer
    /// (no slice is formed, so tasks may own interleaved elements).
    ///
    /// # Safety
    /// No other thread may access element `i` meanwhile.
    pub(crate) unsafe fn update(&self, i: usize, f: impl FnOnce(&mut T)) {
        assert!(i < self.len, "index in bounds");
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        f(unsafe { &mut *self.ptr.add(i) })
    }

    /// Asks for the cache lines of elements `start..start + len` (in bounds)
    /// ahead of a write; forms no reference, so it needs no exclusivity.
    pub(crate) fn prefetch(&self, start: usize, len: usize) {
        assert!(
            start <= self.len && len <= self.len - start,
            "range in bounds"
        );
        let first = self.ptr.wrapping_add(start).cast::<u8>();
        crate::simd::prefetch_lines(first, len * std::mem::size_of::<T>());
    }

    /// The sub-slice `start..start + len`.
    ///
    /// # Safety
    /// No other live reference (in any thread) may overlap this range.
    #[allow(clippy::mut_from_ref)] // the point of this type; exclusivity is the caller's contract
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(
            start <= self.len && len <= self.len - start,
            "range in bounds"
        );
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn par_for_runs_every_task_once() {
        let hits: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        par_for(100, |i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn try_par_for_reports_the_first_failing_task() {
        let r = try_par_for(50, |i| {
            if i % 7 == 3 {
                Err(invalid(format!("task {i}")))
            } else {
                Ok(())
            }
        });
        assert_eq!(r.unwrap_err().message(), "task 3");
    }

    #[test]
    fn negative_thread_count_is_rejected() {
        assert_eq!(set_threads(-1).unwrap_err().code(), 1);
        assert_eq!(set_threads(MAX_THREADS + 1).unwrap_err().code(), 1);
    }
}
