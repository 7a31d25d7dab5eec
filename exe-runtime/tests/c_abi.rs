//! The model runtime's C functions called as generated code calls them:
//! refusals are status codes with one-line messages, never crashes.

#[test]
fn tensor_init_refuses_unknown_dtypes() {
    use reformc_exe_runtime::model_rt::{code, reformc_tensor_init, ReformcTensor};
    let mut t = ReformcTensor::empty();
    let shape = [2i64, 3];
    for dtype in [0, 6, 77, -1] {
        // SAFETY: `t` is writable and `shape` holds 2 dims.
        let rc =
            unsafe { reformc_tensor_init(&mut t, dtype, 2, shape.as_ptr(), std::ptr::null_mut()) };
        assert_eq!(rc, code::DTYPE, "dtype {dtype}");
        let m = reformc_exe_runtime::model_rt::last_error();
        assert!(m.contains(&format!("unknown dtype code {dtype}")), "{m}");
    }
    for dtype in 1..=5 {
        // SAFETY: as above.
        let rc =
            unsafe { reformc_tensor_init(&mut t, dtype, 2, shape.as_ptr(), std::ptr::null_mut()) };
        assert_eq!(rc, 0, "dtype {dtype}");
    }
}

#[test]
fn signature_errors_read_no_inputs_past_the_largest_signature() {
    use reformc_exe_runtime::model_rt::{code, rc_model_error_signature};
    let expected = std::ffi::CString::new("2 or 3 inputs").unwrap();
    // What the generated dispatcher passes for a count above every variant's:
    // NULL inputs, so nothing past the caller's array is read.
    // SAFETY: `expected` is NUL-terminated; NULL inputs are never read.
    let rc = unsafe {
        rc_model_error_signature(code::ARGUMENT, expected.as_ptr(), std::ptr::null(), 1 << 40)
    };
    assert_eq!(rc, code::ARGUMENT);
    let m = reformc_exe_runtime::model_rt::last_error();
    assert!(m.contains("more than any compiled signature takes"), "{m}");
}
