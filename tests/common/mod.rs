//! The shared fixture helpers (`reformc-testkit`).

#![allow(unused_imports)]

pub use reformc_testkit::*;

/// Builds the C program `src` into `prog` against the shared library `so`,
/// whose header lies in `dir` (as `reformc compile --emit lib` writes them),
/// with an rpath to `dir`; a compiler error fails the test with its output.
pub fn cc_against_library(
    src: &std::path::Path,
    dir: &std::path::Path,
    so: &std::path::Path,
    prog: &std::path::Path,
) {
    let cc = std::process::Command::new(reformc_backend_llvm::aot::cc())
        .args(["-std=c99", "-Wall", "-Werror", "-O2", "-o"])
        .arg(prog)
        .arg(src)
        .arg(format!("-I{}", dir.display()))
        .arg(so)
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
}
