//! The compiled executable's argument parser (exe-runtime/src/exe_main.rs):
//! NUL-separated arguments; every error is exit 2 with one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reformc_exe_runtime::exe_main::check_args;

fuzz_target!(|data: &[u8]| {
    let mut argv = vec!["model".to_string()];
    argv.extend(
        data.split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned()),
    );
    if let Err((m, c)) = check_args(&argv) {
        assert_eq!(c, 2, "{m}");
        assert!(!m.is_empty() && !m.contains('\n'), "{m}");
    }
});
