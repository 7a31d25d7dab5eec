//! The runtime's weight loader (executables, the .so) against the malformed
//! safetensors corpus that the frontend's loader is tested on too
//! (tests/corpus/safetensors): each file refused in both weights modes,
//! with a message naming the file and the tensor.

use reformc_runtime::model_rt::{
    code, last_error, rc_model_load_safetensors, reformc_set_weights_mode, WEIGHTS_MMAP,
    WEIGHTS_READ,
};
use std::ffi::{c_void, CString};
use std::path::Path;

/// Loads `path` expecting no tensors; returns the code and message.
fn load(path: &Path) -> (i32, String) {
    let c = CString::new(path.display().to_string()).unwrap();
    let mut handle: *mut c_void = std::ptr::null_mut();
    // SAFETY: n = 0 and n_extra = 0: no arrays are read; `handle` is writable.
    let rc = unsafe {
        rc_model_load_safetensors(
            c.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
            0,
            std::ptr::null(),
            std::ptr::null_mut(),
            &mut handle,
        )
    };
    (rc, last_error())
}

#[test]
fn malformed_corpus_is_refused_in_both_modes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/safetensors");
    let list = std::fs::read_to_string(dir.join("expect.txt")).unwrap();
    let mut n = 0;
    for mode in [WEIGHTS_MMAP, WEIGHTS_READ] {
        assert_eq!(reformc_set_weights_mode(mode), 0);
        for (file, needle) in list.lines().filter_map(|l| l.split_once('\t')) {
            let p = dir.join(file);
            let (rc, e) = load(&p);
            assert_eq!(rc, code::WEIGHTS_FORMAT, "{file}: {e}");
            assert!(e.starts_with(&p.display().to_string()), "{e}");
            assert!(
                needle.split('|').any(|x| e.contains(x)),
                "{file}: {needle}: {e}"
            );
            n += 1;
        }
    }
    assert_eq!(reformc_set_weights_mode(WEIGHTS_MMAP), 0);
    assert!(n >= 30, "only {n} corpus loads");
    assert_eq!(reformc_set_weights_mode(2), code::ARGUMENT);
}

#[test]
fn special_files_are_refused() {
    for p in ["/dev/zero", "/dev/urandom"] {
        let (rc, e) = load(Path::new(p));
        assert_eq!(rc, code::WEIGHTS_IO, "{e}");
        assert!(e.starts_with(&format!("{p}: not a regular file")), "{e}");
    }
}
