//! Errors of the runtime kernels: a code for the C ABI plus a message kept per
//! thread for `rc_last_error`.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::fmt;

/// Why a kernel refused to run. Each kind has a stable nonzero C status code
/// ([`Error::code`]); runtime/ABI.md lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Code 1: a null pointer where data is required, a negative size, sizes
    /// whose product overflows, a slice of the wrong length, an unknown
    /// activation code or flag.
    InvalidArgument(String),
    /// Code 2: an index (token id, position) outside its table.
    OutOfRange(String),
    /// Code 3: a sequence length that the chunking cannot split (not a
    /// multiple of the chunk length).
    ChunkMismatch(String),
    /// Code 4: a buffer could not be allocated.
    OutOfMemory(String),
    /// Code 5: a bug inside the runtime (a caught panic); never expected.
    Internal(String),
}

impl Error {
    /// The C status code of this error (never 0).
    pub fn code(&self) -> i32 {
        match self {
            Error::InvalidArgument(_) => 1,
            Error::OutOfRange(_) => 2,
            Error::ChunkMismatch(_) => 3,
            Error::OutOfMemory(_) => 4,
            Error::Internal(_) => 5,
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidArgument(m)
            | Error::OutOfRange(m)
            | Error::ChunkMismatch(m)
            | Error::OutOfMemory(m)
            | Error::Internal(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

/// Result of a runtime kernel.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for an [`Error::InvalidArgument`].
pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `err` as this thread's last error (what `rc_last_error` returns).
pub(crate) fn set_last_error(err: &Error) {
    // Interior NULs cannot occur in our messages, but never fail here.
    let text = CString::new(err.message().replace('\0', " ")).unwrap_or_default();
    // try_with: during thread teardown the message is dropped instead of panicking.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = text);
}

/// Pointer to this thread's last error message (empty if none), valid until
/// the next failing runtime call on the same thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// This thread's last error message as a Rust string (empty if none).
pub fn last_error() -> String {
    LAST_ERROR
        .try_with(|e| e.borrow().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A zero-filled vector of `n` elements, or [`Error::OutOfMemory`] instead of
/// aborting the process when the allocation fails.
pub(crate) fn try_zeroed<T: Clone + Default>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| out_of_memory::<T>(n, what))?;
    v.resize(n, T::default());
    Ok(v)
}

fn out_of_memory<T>(n: usize, what: &str) -> Error {
    Error::OutOfMemory(format!(
        "cannot allocate {what}: {n} elements of {} bytes",
        std::mem::size_of::<T>()
    ))
}

/// A per-thread, grow-only f32 scratch of a kernel.
pub(crate) type Scratch = std::thread::LocalKey<RefCell<Vec<f32>>>;

/// Runs `f` on the first `n` values of this thread's `scratch`, grown (never
/// shrunk) to at least `n` values; [`Error::OutOfMemory`] when it cannot
/// grow. Values left by an earlier use are not cleared: `f` must write what
/// it reads. A kernel's tasks reuse one buffer per thread instead of
/// allocating (and the system zeroing) a fresh one per task.
pub(crate) fn with_scratch<R>(
    scratch: &'static Scratch,
    n: usize,
    what: &str,
    f: impl FnOnce(&mut [f32]) -> R,
) -> Result<R> {
    scratch.with(|cell| {
        let mut v = cell.borrow_mut();
        if v.len() < n {
            let more = n - v.len();
            v.try_reserve_exact(more)
                .map_err(|_| out_of_memory::<f32>(n, what))?;
            v.resize(n, 0.0);
        }
        Ok(f(&mut v[..n]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_nonzero() {
        let all = [
            invalid("a"),
            Error::OutOfRange("b".into()),
            Error::ChunkMismatch("c".into()),
            Error::OutOfMemory("d".into()),
            Error::Internal("e".into()),
        ];
        let mut codes: Vec<i32> = all.iter().map(Error::code).collect();
        codes.dedup();
        assert_eq!(codes, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn last_error_is_per_thread() {
        set_last_error(&invalid("main thread"));
        std::thread::spawn(|| assert_eq!(last_error(), ""))
            .join()
            .unwrap();
        assert_eq!(last_error(), "main thread");
    }

    #[test]
    fn huge_allocation_is_an_error_not_an_abort() {
        let e = try_zeroed::<f32>(usize::MAX / 2, "test").unwrap_err();
        assert_eq!(e.code(), 4);
    }
}
