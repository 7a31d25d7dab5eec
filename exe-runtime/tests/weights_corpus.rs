//! The runtime's weight loader (executables, the .so) against the malformed
//! safetensors corpus that the frontend's loader is tested on too
//! (tests/corpus/safetensors): each file refused in both weights modes,
//! with a message naming the file and the tensor; weights read into memory
//! survive the file being truncated.

use reformc_exe_runtime::model_rt::{
    code, last_error, rc_model_load_safetensors, rc_model_unload_weights, reformc_set_weights_mode,
    WEIGHTS_MMAP, WEIGHTS_READ,
};
use std::sync::Mutex;

/// The weights mode is process-wide: tests that set it take turns.
static MODE: Mutex<()> = Mutex::new(());
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
    let _turn = MODE.lock().unwrap_or_else(|e| e.into_inner());
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

#[test]
fn weights_read_into_memory_survive_truncating_the_file() {
    let _turn = MODE.lock().unwrap_or_else(|e| e.into_inner());
    let n = 4096usize;
    let header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        4 * n
    );
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend((0..n).flat_map(|i| (i as f32).to_le_bytes()));
    let path = std::env::temp_dir().join(format!(
        "rc_weights_read_{}.safetensors",
        std::process::id()
    ));
    std::fs::write(&path, &file).unwrap();
    let c = CString::new(path.display().to_string()).unwrap();
    let name = CString::new("w").unwrap();
    let names = [name.as_ptr()];
    let (ranks, shapes) = ([1i64], [n as i64]);
    let mut ptr: *const c_void = std::ptr::null();
    let mut handle: *mut c_void = std::ptr::null_mut();
    assert_eq!(reformc_set_weights_mode(WEIGHTS_READ), 0);
    // SAFETY: one name, rank and dim; one output pointer; `handle` is writable.
    let rc = unsafe {
        rc_model_load_safetensors(
            c.as_ptr(),
            1,
            names.as_ptr(),
            ranks.as_ptr(),
            shapes.as_ptr(),
            0,
            std::ptr::null(),
            &mut ptr,
            &mut handle,
        )
    };
    assert_eq!(reformc_set_weights_mode(WEIGHTS_MMAP), 0);
    assert_eq!(rc, 0, "{}", last_error());
    // With a mapping, touching the weights now would raise SIGBUS.
    std::fs::File::create(&path).unwrap();
    // SAFETY: the loader returned a pointer to n f32 values owned by `handle`.
    let w = unsafe { std::slice::from_raw_parts(ptr as *const f32, n) };
    assert!(w.iter().enumerate().all(|(i, &x)| x == i as f32));
    // SAFETY: `handle` came from the loader and is released once.
    unsafe { rc_model_unload_weights(handle) };
    std::fs::remove_file(&path).ok();
}
