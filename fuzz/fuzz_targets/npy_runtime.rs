//! The `.npy` reader of executables and `reformc run` (tensor/src/npy.rs): no panic, no abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reformc_tensor::npy::{parse, NpyData};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(a) => {
            let n = match &a.data {
                NpyData::F32(v) => v.len(),
                NpyData::F64(v) => v.len(),
                NpyData::Int(v) => v.len(),
            };
            assert_eq!(
                Some(n),
                a.shape.iter().try_fold(1usize, |p, &d| p.checked_mul(d))
            );
        }
        Err(e) => assert!(!e.is_empty() && !e.contains('\n'), "{e}"),
    }
});
