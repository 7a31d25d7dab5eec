//! The CLI's `.npy` readers (src/cli/npy.rs, compiled in from the binary
//! crate): errors name the file, never a panic or an abort.
#![no_main]

// Siblings at the crate root, so that npy.rs's `super::error` resolves.
#[allow(dead_code)]
#[path = "../../src/cli/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "../../src/cli/npy.rs"]
mod npy;

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("reformc-fuzz-npy-cli-{}.npy", std::process::id()))
}

fn check<T>(r: Result<T, error::CliError>, path: &str) {
    if let Err(e) = r {
        assert!(e.message.starts_with(path), "{}", e.message);
        assert!(!e.message.contains('\n'), "{}", e.message);
        assert_eq!(e.code, 2, "{}", e.message);
    }
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(&path, data).unwrap();
    let shown = path.display().to_string();
    check(npy::read_int(&path, 2, "input ids"), &shown);
    check(npy::read_f32(&path, &[1, 2, 3], "rotations"), &shown);
    check(npy::read_float_any(&path), &shown);
});
