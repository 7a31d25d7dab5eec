//! Finding NVIDIA's libdevice (`libdevice.10.bc`), the bitcode library of
//! math functions (`__nv_expf`, `__nv_log`, ...) that NVVM lowers `math` ops
//! to. It ships with the CUDA toolkit and in PyPI's `nvidia-cuda-nvcc-cu12`
//! wheel, which `scripts/setup-gpu.sh` installs into the project's `.venv-gpu`.

use std::path::{Path, PathBuf};

/// Where libdevice is looked for when neither `--libdevice` nor
/// `REFORMC_LIBDEVICE` names it: the project's GPU venv (relative to the
/// working directory and to the reformc executable's checkout), then the
/// usual CUDA toolkit places.
fn candidates() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        // target/release/reformc → the checkout.
        roots.extend(exe.ancestors().nth(3).map(Path::to_path_buf));
    }
    roots.extend(std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from));
    let mut v = Vec::new();
    for r in roots {
        for py in ["python3.11", "python3.12", "python3.13", "python3.10"] {
            v.push(r.join(format!(
                ".venv-gpu/lib/{py}/site-packages/nvidia/cuda_nvcc/nvvm/libdevice/libdevice.10.bc"
            )));
        }
    }
    v.push("/usr/local/cuda/nvvm/libdevice/libdevice.10.bc".into());
    v.push("/usr/lib/nvidia-cuda-toolkit/libdevice/libdevice.10.bc".into());
    v
}

/// libdevice: `explicit` (a flag) if given, else `REFORMC_LIBDEVICE`, else
/// the first of the usual places that exists. `Err` names a given path that
/// does not exist.
///
/// ```
/// use reformc_backend_gpu::find_libdevice;
/// let e = find_libdevice(Some(std::path::Path::new("/nonexistent/libdevice.10.bc"))).unwrap_err();
/// assert!(e.contains("/nonexistent/libdevice.10.bc"));
/// ```
pub fn find_libdevice(explicit: Option<&Path>) -> Result<Option<PathBuf>, String> {
    let given = explicit
        .map(|p| (p.to_path_buf(), "--libdevice"))
        .or_else(|| std::env::var_os("REFORMC_LIBDEVICE").map(|p| (p.into(), "REFORMC_LIBDEVICE")));
    if let Some((p, from)) = given {
        if !p.is_file() {
            return Err(format!(
                "{from} {}: no such file (expected NVIDIA's libdevice.10.bc)",
                p.display()
            ));
        }
        return Ok(Some(p));
    }
    Ok(candidates().into_iter().find(|p| p.is_file()))
}
