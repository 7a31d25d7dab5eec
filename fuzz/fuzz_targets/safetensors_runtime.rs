//! The executable's safetensors header parser (runtime/src/model_rt.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use reformc_runtime::model_rt::{code, parse_safetensors};

fuzz_target!(|data: &[u8]| {
    match parse_safetensors(data, data.len() as u64) {
        Ok((entries, start)) => {
            assert!(start <= data.len() as u64);
            for e in entries {
                assert!(e.begin <= e.end && start + e.end <= data.len() as u64);
            }
        }
        Err((c, m)) => assert!(c == code::WEIGHTS_FORMAT && !m.contains('\n'), "{c} {m}"),
    }
});
