//! The CLI's `.npy` readers (`reformc_tensor::array`): errors name the file,
//! never a panic or an abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reformc_tensor::array;
use std::path::PathBuf;

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("reformc-fuzz-npy-cli-{}.npy", std::process::id()))
}

fn check<T>(r: Result<T, String>, path: &str) {
    if let Err(m) = r {
        assert!(m.starts_with(path), "{m}");
        assert!(!m.contains('\n'), "{m}");
    }
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(&path, data).unwrap();
    let shown = path.display().to_string();
    check(array::read_int(&path, 2, "input ids"), &shown);
    check(array::read_f32(&path, &[1, 2, 3], "rotations"), &shown);
    check(array::read_float_any(&path), &shown);
});
