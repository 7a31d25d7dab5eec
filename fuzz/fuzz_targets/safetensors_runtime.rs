//! The safetensors header parser of executables and the frontend
//! (tensor/src/safetensors.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use reformc_tensor::safetensors::parse;

fuzz_target!(|data: &[u8]| {
    match parse(data, data.len() as u64) {
        Ok((entries, start)) => {
            assert!(start <= data.len() as u64);
            for e in entries {
                assert!(e.begin <= e.end && start + e.end <= data.len() as u64);
            }
        }
        Err(m) => assert!(!m.is_empty() && !m.contains('\n'), "{m}"),
    }
});
