//! The runtime's weight loader (executables and the .so) refuses NaN and
//! infinite weights with REFORMC_ERR_VALUE, naming the tensor, flat index and
//! value; `reformc_model_allow_nonfinite_weights(1)` turns that into a
//! successful load with the same text as a warning. One test: the setting is
//! process-wide.

use reformc_exe_runtime::model_rt::{
    code, last_error, rc_model_load_safetensors, rc_model_unload_weights,
    reformc_model_allow_nonfinite_weights,
};
use std::ffi::{c_void, CString};
use std::ptr::null_mut;

/// A safetensors file with one F32 tensor `w` of `values`.
fn file(values: &[f32]) -> Vec<u8> {
    let header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{}]}}}}"#,
        values.len(),
        4 * values.len()
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(values.iter().flat_map(|x| x.to_le_bytes()));
    out
}

/// Loads `bytes` through the C entry point; returns the code and the message.
fn load(bytes: &[u8], name: &str) -> (i32, String) {
    let path =
        std::env::temp_dir().join(format!("reformc-nonfinite-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let c_path = CString::new(path.display().to_string()).unwrap();
    let w = CString::new("w").unwrap();
    let names = [w.as_ptr()];
    let ranks = [1i64];
    let shapes = [4i64];
    let mut ptrs = [std::ptr::null::<c_void>()];
    let mut handle: *mut c_void = null_mut();
    reformc_exe_runtime::model_rt::set_error(0, "");
    // SAFETY: every array holds what the arguments promise.
    let rc = unsafe {
        rc_model_load_safetensors(
            c_path.as_ptr(),
            1,
            names.as_ptr(),
            ranks.as_ptr(),
            shapes.as_ptr(),
            0,
            std::ptr::null(),
            ptrs.as_mut_ptr(),
            &mut handle,
        )
    };
    // SAFETY: the handle is NULL or came from the successful load above.
    unsafe { rc_model_unload_weights(handle) };
    let _ = std::fs::remove_file(&path);
    (rc, last_error())
}

#[test]
fn nonfinite_weights_are_refused_unless_allowed() {
    let (rc, msg) = load(&file(&[1.0, 2.0, 3.0, 4.0]), "ok");
    assert_eq!((rc, msg.as_str()), (0, ""));
    for (value, shown) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
    ] {
        let bytes = file(&[1.0, 2.0, value, 4.0]);
        let (rc, msg) = load(&bytes, "bad");
        assert_eq!(rc, code::VALUE, "{msg}");
        for needle in ["tensor `w`", shown, "flat index 2"] {
            assert!(msg.contains(needle), "{needle:?} in {msg}");
        }
        reformc_model_allow_nonfinite_weights(1);
        let (rc, msg) = load(&bytes, "allowed");
        reformc_model_allow_nonfinite_weights(0);
        assert_eq!(rc, 0, "{msg}");
        assert!(
            msg.contains("warning") && msg.contains("flat index 2"),
            "{msg}"
        );
    }
}

/// Rotations reach the hashing kernel through the C ABI unchecked by the
/// caller: the kernel refuses a NaN with an out-of-range error (code 2, which
/// `reformc_model_run` reports as REFORMC_ERR_VALUE).
#[test]
fn the_hashing_kernel_refuses_nonfinite_rotations() {
    let qk = [0.5f32, -0.5];
    let mut out = [0i64; 2];
    let args = |rot: &[f32], out: &mut [i64]| {
        reformc_runtime::attention::lsh_hash(&qk, rot, None, 1, 2, 1, 1, 1, &[2], out)
    };
    assert!(args(&[1.0], &mut out).is_ok());
    let e = args(&[f32::NAN], &mut out).unwrap_err();
    assert_eq!(e.code(), 2);
    assert!(
        e.to_string()
            .contains("non-finite value NaN at flat index 0"),
        "{e}"
    );
}
