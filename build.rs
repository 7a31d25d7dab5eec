//! Embeds the runtime archive (`libreformc_exe_runtime.a`) that compiled
//! artifacts link into the `reformc` binary, so that an installed binary
//! (`cargo install --path .`) works from any directory, with no build tree.
//!
//! Release builds embed by default; `REFORMC_EMBED_RUNTIME=1` embeds in any
//! profile and `=0` never (the binary then finds the archive in the build
//! tree, as development builds do). The archive is built by a nested cargo
//! in its own target directory with the release profile: cargo cannot hand a
//! dependency's static library to a build script, and the kernels must be
//! optimised whatever profile builds the compiler.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(reformc_embedded_runtime)");
    println!("cargo:rerun-if-env-changed=REFORMC_EMBED_RUNTIME");
    let profile = std::env::var("PROFILE").unwrap_or_default();
    let wanted = match std::env::var("REFORMC_EMBED_RUNTIME").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => profile == "release",
    };
    if !wanted {
        return;
    }
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    for dep in ["exe-runtime", "gpu-runtime", "runtime", "ir", "tensor"] {
        println!("cargo:rerun-if-changed={}", root.join(dep).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    let archive = build_runtime(&root);
    let bytes = std::fs::read(&archive)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", archive.display())));
    println!("cargo:rustc-cfg=reformc_embedded_runtime");
    println!(
        "cargo:rustc-env=REFORMC_EMBEDDED_RUNTIME={}",
        archive.display()
    );
    println!(
        "cargo:rustc-env=REFORMC_EMBEDDED_RUNTIME_HASH={:016x}",
        fnv1a(&bytes)
    );
}

/// Builds the archive with the release profile and returns its path.
fn build_runtime(root: &Path) -> PathBuf {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out.join("runtime-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--lib", "-p", "reformc-exe-runtime"])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    let (target, host) = (std::env::var("TARGET"), std::env::var("HOST"));
    let cross = matches!((&target, &host), (Ok(t), Ok(h)) if t != h);
    if cross {
        cmd.arg("--target")
            .arg(target.as_deref().unwrap_or_default());
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo: {e}")));
    if !status.success() {
        fail("building the runtime archive (cargo build -p reformc-exe-runtime --release) failed; its errors are above. Set REFORMC_EMBED_RUNTIME=0 to build without embedding it");
    }
    let dir = match (cross, target) {
        (true, Ok(t)) => target_dir.join(t).join("release"),
        _ => target_dir.join("release"),
    };
    dir.join("libreformc_exe_runtime.a")
}

/// 64-bit FNV-1a: names the cached copy per build.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn fail(msg: &str) -> ! {
    eprintln!("reformc build script: {msg}");
    std::process::exit(1)
}
