//! The compiler's safetensors loader (frontend/src/weights.rs): errors name
//! the file; what opens can be read tensor by tensor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reformc_frontend::weights::WeightFile;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!(
        "reformc-fuzz-st-{}.safetensors",
        std::process::id()
    ));
    std::fs::write(&path, data).unwrap();
    let shown = path.display().to_string();
    match WeightFile::open(&path) {
        Ok(w) => {
            let names: Vec<String> = w.names().iter().map(|s| s.to_string()).collect();
            for name in names {
                let _ = w.info(&name);
                let _ = w.bytes(&name);
                if let Err(e) = w.tensor_f32(&name) {
                    let msg = e.to_string();
                    assert!(msg.starts_with(&shown) && !msg.contains('\n'), "{msg}");
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&shown) && !msg.contains('\n'), "{msg}");
        }
    }
});
