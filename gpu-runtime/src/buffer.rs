//! Owned managed buffers and the memref descriptors that point at them: how
//! a host program hands tensors to lowered GPU code.

use crate::state::{alloc_managed, free_managed};
use std::ffi::c_void;

/// A managed buffer holding a copy of some bytes, freed on drop.
///
/// ```
/// let b = reformc_gpu_runtime::Managed::from_bytes(&[1u8, 2, 3]);
/// // Without a driver the bytes come from the C heap and an error is latched.
/// assert_eq!(b.len(), 3);
/// let _ = reformc_gpu_runtime::take_error();
/// ```
pub struct Managed {
    ptr: *mut c_void,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value; nothing else
// aliases it while the value lives.
unsafe impl Send for Managed {}

impl Managed {
    /// A managed copy of `bytes` ([`alloc_managed`]'s rules on failure).
    pub fn from_bytes(bytes: &[u8]) -> Managed {
        let ptr = alloc_managed(bytes.len());
        if !ptr.is_null() {
            // SAFETY: `ptr` holds at least `bytes.len()` bytes and does not
            // overlap `bytes` (fresh allocation).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.cast::<u8>(), bytes.len()) };
        }
        Managed {
            ptr,
            len: bytes.len(),
        }
    }

    /// The buffer's address.
    pub fn ptr(&self) -> *mut c_void {
        self.ptr
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A row-major memref descriptor of `shape` over this buffer.
    pub fn descriptor(&self, shape: &[usize]) -> Vec<i64> {
        descriptor(self.ptr as i64, shape)
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_managed` and is freed only here.
        unsafe { free_managed(self.ptr) };
    }
}

/// A memref descriptor as MLIR's C interface lays it out (all fields 8
/// bytes): allocated and aligned pointer, offset 0, `shape`, row-major strides.
///
/// ```
/// assert_eq!(reformc_gpu_runtime::descriptor(64, &[2, 3]), vec![64, 64, 0, 2, 3, 3, 1]);
/// ```
pub fn descriptor(ptr: i64, shape: &[usize]) -> Vec<i64> {
    let mut d = vec![ptr, ptr, 0];
    d.extend(shape.iter().map(|&s| s as i64));
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1] as i64;
    }
    d.extend(strides);
    d
}

/// Calls a packed `@forward` (`_mlir__mlir_ciface_forward`, which MLIR's
/// ExecutionEngine generates): `result` receives the result descriptors,
/// `args` are the arguments' descriptors in order.
///
/// # Safety
/// `forward` is the packed entry of a module whose results fill `result`'s
/// layout and whose arguments are described by `args`, each over a live
/// buffer of its shape.
pub unsafe fn call_packed(
    forward: unsafe extern "C" fn(*mut *mut c_void),
    result: &mut [i64],
    args: &mut [Vec<i64>],
) {
    let mut ptrs: Vec<*mut i64> = std::iter::once(result.as_mut_ptr())
        .chain(args.iter_mut().map(|d| d.as_mut_ptr()))
        .collect();
    let mut packed: Vec<*mut c_void> = ptrs
        .iter_mut()
        .map(|p| p as *mut *mut i64 as *mut c_void)
        .collect();
    // SAFETY: forwarded contract; `packed` points at one pointer per
    // result struct and argument descriptor, all alive for the call.
    unsafe { forward(packed.as_mut_ptr()) };
}
