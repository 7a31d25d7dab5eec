//! The buffers of reformc's own MLIR pipeline come from a cache of freed
//! blocks instead of straight from `malloc`:
//! `finalize-memref-to-llvm{use-generic-functions=true}` makes every
//! `memref.alloc` and `memref.dealloc` call MLIR's generic allocation
//! functions, and [`register`] gives the ExecutionEngine these in their place.
//!
//! Why: each layer allocates the same tensor sizes again, and glibc serves
//! blocks of several MiB with fresh `mmap`s and unmaps them on `free`, so
//! every one page-faults and zeroes its memory again. Here a freed block
//! waits for the next request of exactly its size (a layer's sizes repeat in
//! the next), until [`release_cache`] after the engine's last run. The cache
//! never holds more blocks of a size than were live at once, so it adds at
//! most the blocks of sizes that stop recurring. (The runtime's own cache,
//! `rc_alloc`, is bounded for the LLVM backend's planned allocation order;
//! on this order it evicted blocks that the next layer wanted.)
//!
//! `memref.dealloc` passes no size, so the live blocks' sizes are kept here
//! by address.

use melior::ExecutionEngine;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

/// The blocks: the (size, alignment) of each live one by address, and the
/// free ones by (size, alignment).
#[derive(Default)]
struct Blocks {
    live: HashMap<usize, (usize, usize)>,
    free: HashMap<(usize, usize), Vec<usize>>,
}

static BLOCKS: Mutex<Option<Blocks>> = Mutex::new(None);

fn blocks() -> std::sync::MutexGuard<'static, Option<Blocks>> {
    BLOCKS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Blocks are aligned to at least this (a cache line).
const MIN_ALIGN: usize = 64;

extern "C" {
    fn aligned_alloc(align: usize, size: usize) -> *mut c_void;
}

/// A block of at least `size` bytes aligned to `align` (0 or a power of
/// two), a cached one of the same size and alignment when there is one
/// (NULL when out of memory or `align` is not a power of two).
fn alloc(size: i64, align: i64) -> *mut c_void {
    let Ok(align) = usize::try_from(align) else {
        return std::ptr::null_mut();
    };
    if align != 0 && !align.is_power_of_two() {
        return std::ptr::null_mut();
    }
    let align = align.max(MIN_ALIGN);
    let Some(size) = usize::try_from(size.max(1))
        .ok()
        .and_then(|s| s.checked_add(align - 1))
        .map(|s| s & !(align - 1))
    else {
        return std::ptr::null_mut();
    };
    let mut guard = blocks();
    let b = guard.get_or_insert_with(Blocks::default);
    let p = match b.free.get_mut(&(size, align)).and_then(|v| v.pop()) {
        Some(p) => p,
        // SAFETY: `align` is a power of two and `size` a multiple of it.
        None => (unsafe { aligned_alloc(align, size) }) as usize,
    };
    if p != 0 {
        b.live.insert(p, (size, align));
    }
    p as *mut c_void
}

extern "C" fn generic_alloc(size: i64) -> *mut c_void {
    alloc(size, 0)
}

extern "C" fn generic_aligned_alloc(align: i64, size: i64) -> *mut c_void {
    alloc(size, align)
}

/// `memref.dealloc`: the block waits in the cache for its size.
extern "C" fn generic_free(p: *mut c_void) {
    let mut guard = blocks();
    let b = guard.get_or_insert_with(Blocks::default);
    match b.live.remove(&(p as usize)) {
        Some(key) => b.free.entry(key).or_default().push(p as usize),
        // Not one of ours (NULL, or a block a custom pipeline got from
        // malloc): libc's.
        None => {
            drop(guard);
            // SAFETY: a block from malloc that the compiled code frees, or NULL.
            unsafe { crate::pipeline::free(p) };
        }
    }
}

/// Frees a block the compiled code handed to the caller (a result) with
/// `free`: a block of the cache (from `aligned_alloc`) and one a custom
/// pipeline got from `malloc` alike, the cache first forgetting its own.
///
/// # Safety
/// `p` is a block the compiled code allocated and no longer uses.
pub(crate) unsafe fn release(p: *mut c_void) {
    if let Some(b) = blocks().as_mut() {
        b.live.remove(&(p as usize));
    }
    // SAFETY: a live block from aligned_alloc or malloc (the contract),
    // released once.
    unsafe { crate::pipeline::free(p) };
}

/// Gives `engine` the generic allocation functions; call it before the
/// engine's first lookup.
pub(crate) fn register(engine: &ExecutionEngine) {
    // SAFETY: each function has the C signature MLIR's memref lowering gives
    // the symbol of that name (`(i64) -> ptr`, `(i64, i64) -> ptr`,
    // `(ptr) -> ()`).
    unsafe {
        engine.register_symbol("_mlir_memref_to_llvm_alloc", generic_alloc as *mut ());
        engine.register_symbol(
            "_mlir_memref_to_llvm_aligned_alloc",
            generic_aligned_alloc as *mut (),
        );
        engine.register_symbol("_mlir_memref_to_llvm_free", generic_free as *mut ());
    }
}

/// Gives the cached blocks back to the system (after the last run of an
/// engine; blocks still live are not affected).
pub(crate) fn release_cache() {
    let cached: Vec<usize> = match blocks().as_mut() {
        Some(b) => b.free.drain().flat_map(|(_, v)| v).collect(),
        None => Vec::new(),
    };
    for p in cached {
        // SAFETY: a cached block from aligned_alloc, not in use.
        unsafe { crate::pipeline::free(p as *mut c_void) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_through_the_cache() {
        let a = generic_aligned_alloc(64, 1000);
        assert!(!a.is_null() && (a as usize).is_multiple_of(64));
        generic_free(a);
        // The same size again is served from the cache: the same block.
        let b = generic_alloc(1000);
        assert_eq!(a, b);
        // SAFETY: a live block of ours, not used again.
        unsafe { release(b) };
        assert!(blocks()
            .as_ref()
            .is_some_and(|m| !m.live.contains_key(&(b as usize))));
        // A larger alignment is honoured; one that is not a power of two
        // is refused.
        let c = generic_aligned_alloc(4096, 10);
        assert!(!c.is_null() && (c as usize).is_multiple_of(4096));
        generic_free(c);
        assert!(generic_aligned_alloc(48, 10).is_null());
        release_cache();
    }
}
