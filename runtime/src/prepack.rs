//! Weights packed once per process: a cache of packed right-hand sides for
//! memory the loader declares read-only for its lifetime (a memory-mapped
//! weights file).
//!
//! Every GEMM packs its right-hand side into the kernel's panel layout
//! ([`PackedB`]); for a weight that work is the same on every run, and with
//! `--precision bf16` the packed panels are half the size of the f32 weight.
//! So a weight that lies in a [registered](register) region is packed on first
//! use and kept when its panels are bf16 (f32 panels would only double the
//! weight, see [`cached_or`]); later GEMMs on the same bytes, in the same layout and
//! precision, share the packed copy. Where the region is a private read-only
//! file mapping (`droppable`), the f32 pages a weight was packed from are then
//! handed back to the kernel (`MADV_DONTNEED`): they are clean copies of the
//! file, so a later read (an embedding table that is also the LM head, say)
//! faults the same bytes back in. The process then holds each weight once, as
//! packed panels: bf16 halves the weights' resident memory.
//!
//! Only registered memory is cached, so activations and user-provided weight
//! buffers (which the caller may change between runs) are packed per call, as
//! before. [`unregister`] evicts every entry packed from a region before its
//! memory goes away, so a later mapping at the same address never meets a
//! stale entry.
//!
//! ```
//! use reformc_runtime::prepack;
//! let w = vec![1.0f32; 64];
//! // Read-only for as long as it is registered; not a file mapping.
//! prepack::register(w.as_ptr().cast(), w.len() * 4, false);
//! assert_eq!(prepack::cached(), 0);
//! prepack::unregister(w.as_ptr().cast(), w.len() * 4);
//! ```

use crate::bf16::{self, Packing};
use crate::error::Result;
use crate::gemm::{kernel, PackedB, Panels};
use crate::mapped::MappedF32;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

extern "C" {
    fn madvise(addr: *mut c_void, len: usize, advice: i32) -> i32;
}

/// Linux's `MADV_DONTNEED`.
const MADV_DONTNEED: i32 = 4;

/// Bytes Linux maps around a file page fault (`fault_around_bytes`, 64 KiB
/// by default).
const FAULT_AROUND: usize = 64 << 10;

/// A registered byte range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    start: usize,
    end: usize,
    /// Pages may be dropped after packing: a private, read-only file mapping.
    droppable: bool,
}

/// Which layout a weight is read in.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Layout {
    /// `[n, k]` rows (a `linear` weight): [`PackedB::from_nt`].
    Nt,
    /// `[k, n]` rows: [`PackedB::from_kn`].
    Kn,
}

/// Everything the packed panels depend on.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    addr: usize,
    layout: Layout,
    rows: usize,
    cols: usize,
    ld: usize,
    nr: usize,
    packing: Packing,
}

#[derive(Default)]
struct State {
    regions: Vec<Region>,
    packed: HashMap<Key, Arc<PackedB>>,
    /// Bytes the packed copies hold.
    bytes: usize,
}

impl State {
    /// Bytes the registered regions span: the budget of the packed copies,
    /// so that a weight read in several layouts (the forward's and the
    /// backward's) never makes the cache larger than the weights.
    fn budget(&self) -> usize {
        self.regions.iter().map(|r| r.end - r.start).sum()
    }
}

fn packed_bytes(p: &PackedB) -> usize {
    p.data.len() * std::mem::size_of::<f32>()
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(Mutex::default);

/// Number of registered regions: GEMMs skip the lock while there are none
/// (the JIT, tests, user-provided weights).
static REGIONS: AtomicUsize = AtomicUsize::new(0);

fn state() -> std::sync::MutexGuard<'static, State> {
    // A panic while holding the lock leaves the map consistent (every update
    // is one insert or retain), so a poisoned lock is still usable.
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Declares `len` bytes at `ptr` read-only until [`unregister`]: GEMMs may
/// keep packed copies of weights read from them. `droppable` says the range
/// is a private, read-only mapping of a file, whose pages may be dropped once
/// packed (and read again from the file if needed).
///
/// The caller must not write to the range while it is registered; the
/// generated code never writes to weights.
pub fn register(ptr: *const c_void, len: usize, droppable: bool) {
    if ptr.is_null() || len == 0 {
        return;
    }
    let start = ptr as usize;
    let mut s = state();
    s.regions.push(Region {
        start,
        end: start.saturating_add(len),
        droppable,
    });
    REGIONS.store(s.regions.len(), Ordering::Release);
}

/// Forgets the region registered at `ptr` and every weight packed from it.
/// Call before the memory is unmapped or freed.
pub fn unregister(ptr: *const c_void, len: usize) {
    let (start, end) = (ptr as usize, (ptr as usize).saturating_add(len));
    let mut s = state();
    s.regions.retain(|r| r.start != start || r.end != end);
    REGIONS.store(s.regions.len(), Ordering::Release);
    s.packed.retain(|k, _| k.addr < start || k.addr >= end);
    s.bytes = s.packed.values().map(|p| packed_bytes(p)).sum();
}

/// Number of packed weights the cache holds (for tests and diagnostics).
pub fn cached() -> usize {
    state().packed.len()
}

/// Bytes the cached packed weights hold; never more than the registered
/// regions span.
pub fn cached_bytes() -> usize {
    state().bytes
}

/// Bytes a `rows × cols` matrix with row stride `ld` spans from its first
/// element, in f32 elements (0 when empty).
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    match rows.min(cols) {
        0 => 0,
        _ => (rows - 1) * ld + cols,
    }
}

/// `w` packed as [`PackedB::from_nt`] does (`n × k` rows, stride `ldw`),
/// from the cache when `w` lies in a registered region.
pub(crate) fn from_nt(
    w: &[f32],
    n: usize,
    k: usize,
    ldw: usize,
    nr: usize,
) -> Result<Arc<PackedB>> {
    let key = key(w, Layout::Nt, n, k, ldw, nr);
    cached_or(w, key, span(n, k, ldw), || {
        PackedB::from_nt(w, n, k, ldw, nr)
    })
}

/// `b` packed as [`PackedB::from_kn`] does (`k × n` rows, stride `ldb`),
/// from the cache when `b` lies in a registered region.
pub(crate) fn from_kn(
    b: &[f32],
    k: usize,
    n: usize,
    ldb: usize,
    nr: usize,
) -> Result<Arc<PackedB>> {
    let key = key(b, Layout::Kn, k, n, ldb, nr);
    cached_or(b, key, span(k, n, ldb), || {
        PackedB::from_kn(b, k, n, ldb, nr)
    })
}

fn key(w: &[f32], layout: Layout, rows: usize, cols: usize, ld: usize, nr: usize) -> Key {
    Key {
        addr: w.as_ptr() as usize,
        layout,
        rows,
        cols,
        ld,
        nr,
        packing: bf16::packing(kernel().isa),
    }
}

/// The cached entry for `key`, or `pack()`'s result, kept when the `elems`
/// values read from `w` lie in a registered region.
fn cached_or(
    w: &[f32],
    key: Key,
    elems: usize,
    pack: impl FnOnce() -> Result<PackedB>,
) -> Result<Arc<PackedB>> {
    let bytes = elems.min(w.len()) * 4;
    // f32 panels are as large as the weight: keeping them would hold each
    // weight twice whenever the mapping's pages come back (the page cache
    // maps whole large folios on a fault, so reading a bias or a layer-norm
    // scale remaps megabytes of its neighbours). Only bf16 panels, half the
    // weight, are kept.
    if REGIONS.load(Ordering::Acquire) == 0 || key.packing == Packing::F32 {
        return Ok(Arc::new(pack()?));
    }
    let region = {
        let s = state();
        let region = s
            .regions
            .iter()
            .find(|r| bytes > 0 && r.start <= key.addr && key.addr + bytes <= r.end)
            .copied();
        if region.is_some() {
            if let Some(p) = s.packed.get(&key) {
                return Ok(p.clone());
            }
        }
        region
    };
    // Packed outside the lock: other threads' GEMMs go on meanwhile. Two
    // threads packing the same weight both succeed; the first copy is kept.
    let mut packed = pack()?;
    let fits = |s: &State, p: &PackedB| s.bytes + packed_bytes(p) <= s.budget();
    let Some(region) = region.filter(|_| fits(&state(), &packed)) else {
        return Ok(Arc::new(packed));
    };
    // Kept for the life of the region: moved out of the malloc heap, where
    // it would pin the holes that activations reuse (see crate::mapped).
    packed.data = Panels::Mapped(MappedF32::copy_of(&packed.data)?);
    let packed = Arc::new(packed);
    let kept = {
        let mut s = state();
        match s.packed.get(&key) {
            Some(p) => p.clone(),
            None if fits(&s, &packed) => {
                s.bytes += packed_bytes(&packed);
                s.packed.insert(key, packed.clone());
                packed
            }
            // Over budget: used for this call only, and the source stays.
            None => return Ok(packed),
        }
    };
    if region.droppable {
        // Reading the weight faulted in its neighbours' pages too (the
        // kernel maps up to 64 KiB around a file fault), also those of
        // weights packed and dropped before: drop them with it. A neighbour
        // read later faults its bytes back from the page cache.
        let start = key.addr.saturating_sub(FAULT_AROUND).max(region.start);
        let end = (key.addr + bytes + FAULT_AROUND).min(region.end);
        drop_pages(start, end - start);
    }
    Ok(kept)
}

/// Hands the whole pages inside `[addr, addr + bytes)` back to the kernel.
///
/// Only called on ranges of a droppable region: a private read-only file
/// mapping, whose pages are never written, so the next read faults in the
/// same bytes from the file.
pub fn drop_pages(addr: usize, bytes: usize) {
    let page = 4096usize;
    let start = addr.next_multiple_of(page);
    let end = (addr + bytes) & !(page - 1);
    if end > start {
        // SAFETY: the range lies inside a mapping the caller owns and
        // declared a clean, read-only file mapping; MADV_DONTNEED there only
        // drops clean page-cache references, never contents, and a failure
        // leaves the pages resident, which is harmless.
        unsafe { madvise(start as *mut c_void, end - start, MADV_DONTNEED) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The cache and its budget are process-wide: the tests that register
    // regions run one at a time, and count only entries of their own buffers.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entries_in(w: &[f32]) -> usize {
        let (a, b) = (w.as_ptr() as usize, w.as_ptr() as usize + w.len() * 4);
        state()
            .packed
            .keys()
            .filter(|k| a <= k.addr && k.addr < b)
            .count()
    }

    /// `f` with bf16 GEMMs, the precision whose panels are kept.
    fn bf16<R>(f: impl FnOnce() -> R) -> R {
        bf16::with(true, f)
    }

    #[test]
    fn registered_weights_are_packed_once_and_equal_a_fresh_packing() {
        let _s = serial();
        let nr = kernel().nr;
        let (n, k) = (nr + 3, 37);
        // The region spans room for both layouts' padded panels.
        let all: Vec<f32> = (0..8 * n * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w = &all[..n * k];
        register(all.as_ptr().cast(), all.len() * 4, false);
        bf16(|| {
            let a = from_nt(w, n, k, k, nr).unwrap();
            let b = from_nt(w, n, k, k, nr).unwrap();
            assert!(
                Arc::ptr_eq(&a, &b),
                "the second use shares the first packing"
            );
            let fresh = PackedB::from_nt(w, n, k, k, nr).unwrap();
            assert_eq!(a.data[..], fresh.data[..]);
            // Another layout of the same bytes is its own entry.
            let c = from_kn(w, k, n, n, nr).unwrap();
            assert_eq!(
                c.data[..],
                PackedB::from_kn(w, k, n, n, nr).unwrap().data[..]
            );
        });
        assert_eq!(entries_in(&all), 2);
        unregister(all.as_ptr().cast(), all.len() * 4);
        assert_eq!(
            entries_in(&all),
            0,
            "unregistering evicts the region's entries"
        );
    }

    #[test]
    fn unregistered_memory_is_packed_per_call() {
        let nr = kernel().nr;
        let w = vec![0.5f32; 4 * 8];
        let (a, b) = bf16(|| (from_nt(&w, 4, 8, 8, nr), from_nt(&w, 4, 8, 8, nr)));
        assert!(!Arc::ptr_eq(&a.unwrap(), &b.unwrap()));
        assert_eq!(entries_in(&w), 0);
    }

    #[test]
    fn f32_panels_are_never_kept() {
        let _s = serial();
        let nr = kernel().nr;
        let (n, k) = (nr, 10);
        let all: Vec<f32> = (0..2 * n * k).map(|i| 1.0 + i as f32 / 7.0).collect();
        let w = &all[..n * k];
        register(all.as_ptr().cast(), all.len() * 4, false);
        let f = from_nt(w, n, k, k, nr).unwrap();
        assert_eq!(f.packing, Packing::F32);
        assert_eq!(entries_in(&all), 0);
        let h = bf16(|| from_nt(w, n, k, k, nr)).unwrap();
        assert_ne!(h.packing, Packing::F32);
        assert_eq!(entries_in(&all), 1);
        unregister(all.as_ptr().cast(), all.len() * 4);
    }

    #[test]
    fn the_cache_never_holds_more_than_the_regions_span() {
        let _s = serial();
        let nr = kernel().nr;
        // Whole panels, so that sizes add up exactly.
        let (n, k) = (2 * nr, 16);
        let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        let span = w.len() * 4;
        register(w.as_ptr().cast(), span, false);
        // Distinct keys of the same bytes: bf16 pairs take half the region
        // each (two fit), bf16-rounded f32 values all of it (one fits).
        let (mut held, mut refused) = (0, 0);
        for variant in 0..4 {
            let before = entries_in(&w);
            let p = bf16(|| match variant {
                0 => from_nt(&w, n, k, k, nr),
                1 => from_kn(&w, k, n, n, nr),
                2 => from_nt(&w, n, k - 2, k, nr),
                _ => from_kn(&w, k - 2, n, n, nr),
            })
            .unwrap();
            let size = p.data.len() * 4;
            match held + size <= span {
                true => {
                    held += size;
                    assert_eq!(entries_in(&w), before + 1, "variant {variant} kept");
                }
                false => {
                    refused += 1;
                    assert_eq!(entries_in(&w), before, "variant {variant} over budget");
                }
            }
        }
        assert!(refused > 0, "the budget was reached");
        unregister(w.as_ptr().cast(), span);
    }

    #[test]
    fn dropped_pages_of_a_file_mapping_read_back_the_same() {
        use std::io::Write;
        extern "C" {
            fn mmap(a: *mut c_void, l: usize, p: i32, f: i32, fd: i32, o: i64) -> *mut c_void;
            fn munmap(a: *mut c_void, l: usize) -> i32;
        }
        use std::os::fd::AsRawFd;
        let _s = serial();
        let vals: Vec<f32> = (0..4 * 4096).map(|i| i as f32).collect();
        let path = std::env::temp_dir().join(format!("prepack-{}.bin", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        for v in &vals {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
        drop(f);
        let f = std::fs::File::open(&path).unwrap();
        let len = vals.len() * 4;
        // SAFETY: a read-only private mapping of a regular file of `len` bytes.
        let p = unsafe { mmap(std::ptr::null_mut(), len, 1, 2, f.as_raw_fd(), 0) };
        assert!(!p.is_null() && p as isize != -1);
        // SAFETY: the mapping covers `len` bytes, read-only, until munmap.
        let w = unsafe { std::slice::from_raw_parts(p as *const f32, vals.len()) };
        register(p, len, true);
        let nr = kernel().nr;
        let (packed, fresh) = bf16(|| {
            let p = from_nt(w, 64, 256, 256, nr).unwrap();
            (p, PackedB::from_nt(&vals, 64, 256, 256, nr).unwrap())
        });
        assert_eq!(entries_in(w), 1);
        assert_eq!(packed.data[..], fresh.data[..]);
        assert_eq!(w, &vals[..], "pages read back from the file after the drop");
        unregister(p, len);
        // SAFETY: unmapping the mapping made above, once; `w` is not used after.
        unsafe { munmap(p, len) };
        std::fs::remove_file(&path).ok();
    }
}
