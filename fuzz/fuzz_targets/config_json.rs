//! Config JSON (HF and reformc schema): errors are one line naming the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reformc_frontend::config::parse_model_config;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // The loader reads with read_to_string, so non-UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = parse_model_config(text, Path::new("fuzz.json")) {
        let msg = e.to_string();
        assert!(msg.starts_with("fuzz.json: "), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
});
