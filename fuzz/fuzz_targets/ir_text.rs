//! IR text: errors carry a position; what parses prints and reparses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reformc_ir::{parse, print, verify};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(g) => {
            let _ = verify(&g);
            let printed = print(&g);
            let again = parse(&printed).expect("printed text parses");
            assert_eq!(print(&again), printed);
        }
        Err(e) => assert!(e.line >= 1 && e.col >= 1 && !e.message.is_empty()),
    }
});
