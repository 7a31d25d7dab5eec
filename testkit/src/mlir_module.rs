//! Checks of emitted MLIR modules shared by the MLIR backend's tests and the
//! CLI's: the upstream-dialect whitelist and `mlir-opt-22`'s verifier. The
//! tool is part of the set-up (`scripts/setup.sh`): a missing tool fails the
//! test instead of skipping the check.
//!
//! ```
//! use reformc_testkit::mlir_module::{check_upstream, op_dialects};
//! let m = "module {\n  func.func @f() {\n    %0 = arith.constant 1 : i64\n    func.return\n  }\n}\n";
//! assert_eq!(op_dialects(m), ["func", "arith", "func"]);
//! check_upstream(m);
//! ```

use std::io::Write;
use std::process::{Command, Stdio};

/// Dialects issue 10 allows in an emitted module.
pub const UPSTREAM: &[&str] = &[
    "func",
    "arith",
    "math",
    "tensor",
    "linalg",
    "scf",
    "index",
    "affine",
    "cf",
    "bufferization",
];

/// The dialect prefix of every op in `module` (`%x = dialect.op ...` or a
/// line starting with `dialect.op`), up to the resource section.
pub fn op_dialects(module: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in module.lines().map(str::trim) {
        if line.starts_with("{-#") {
            break;
        }
        let op = match line.split_once(" = ") {
            Some((lhs, rhs)) if lhs.starts_with('%') => rhs,
            _ => line,
        };
        let word = op.split([' ', '(', '{', '<']).next().unwrap_or("");
        if let Some((d, _)) = word.split_once('.') {
            if !d.is_empty() && d.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                out.push(d.to_string());
            }
        }
    }
    out
}

/// Panics unless `module` holds ops and all of them are in [`UPSTREAM`] dialects.
pub fn check_upstream(module: &str) {
    let dialects = op_dialects(module);
    assert!(!dialects.is_empty(), "no ops found in\n{module}");
    for d in &dialects {
        assert!(UPSTREAM.contains(&d.as_str()), "dialect `{d}` in\n{module}");
    }
}

/// Runs `mlir-opt-22` on `module` text: `Err` with its diagnostics when it
/// rejects the module. Panics when the tool cannot run.
pub fn mlir_opt(module: &str) -> Result<(), String> {
    let mut child = Command::new("mlir-opt-22")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("mlir-opt-22: {e} (run scripts/setup.sh)"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(module.as_bytes())
        .expect("write to mlir-opt-22");
    drop(stdin);
    let out = child.wait_with_output().expect("mlir-opt-22 runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// [`mlir_opt`] accepts `module` and [`check_upstream`] holds.
pub fn check_module_text(module: &str) {
    if let Err(e) = mlir_opt(module) {
        panic!("mlir-opt-22 rejects the module: {e}\n{module}");
    }
    check_upstream(module);
}
