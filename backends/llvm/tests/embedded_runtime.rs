//! An executable linked against a runtime archive embedded in the program
//! (as the release `reformc` binary carries one): the archive is written to
//! the per-user cache once, reused, and the executable computes the fixture's
//! numbers. A test binary of its own: registering the archive is process-wide.

mod common;

use common::{fixture, max_abs_diff, scratch, Case, CompileCase};
use reformc_backend_llvm::runtime_lib::{self, EmbeddedRuntime, RuntimeSource};

#[test]
fn executable_links_against_the_embedded_archive_from_the_cache() {
    let dir = scratch("embedded-runtime");
    // Safe in this single-threaded set-up: no other test runs in this binary.
    std::env::remove_var(runtime_lib::ENV_OVERRIDE);
    std::env::set_var("XDG_CACHE_HOME", dir.join("cache"));
    let built = runtime_lib::find().expect("cargo built the runtime archive");
    let bytes: &'static [u8] = std::fs::read(&built).unwrap().leak();
    assert!(runtime_lib::embed(EmbeddedRuntime {
        bytes,
        hash: "embedded-test",
    }));
    assert_eq!(
        runtime_lib::source().unwrap(),
        RuntimeSource::Embedded(bytes.len(), "embedded-test")
    );
    let case = Case::load(&fixture("causal_mixed_r2"));
    let exe = case.compile_exe(&dir);
    let cached = dir.join("cache/reformc/libreformc_exe_runtime-embedded-test.a");
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);
    let got = case.run_exe(&exe, &dir, &[]);
    assert!(max_abs_diff(&got, &case.reference_f64()) <= 1e-4);
    assert_eq!(
        runtime_lib::find().unwrap(),
        cached,
        "the cached copy is reused"
    );
}
