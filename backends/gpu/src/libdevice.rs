//! Finding NVIDIA's libdevice (`libdevice.10.bc`), the bitcode library of
//! math functions (`__nv_expf`, `__nv_log`, ...) that NVVM lowers `math` ops
//! to. It ships with the CUDA toolkit and in PyPI's `nvidia-cuda-nvcc-cu12`
//! wheel, which `scripts/setup.sh` installs into the project's `.venv-gpu`.

use std::path::{Path, PathBuf};

/// Where libdevice is looked for when neither `--libdevice` nor
/// `REFORMC_LIBDEVICE` names it: a `.venv-gpu` (as `scripts/setup.sh` makes)
/// in the working directory, beside the reformc executable or the crate being
/// tested, or in any folder above them; then the usual CUDA toolkit places.
fn candidates() -> Vec<PathBuf> {
    let mut starts: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
    starts.extend(std::env::current_exe().ok());
    starts.extend(std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from));
    let mut v = Vec::new();
    for start in &starts {
        for dir in start.ancestors() {
            let lib = dir.join(".venv-gpu/lib");
            let Ok(pythons) = std::fs::read_dir(&lib) else {
                continue;
            };
            for py in pythons.flatten() {
                v.push(
                    py.path()
                        .join("site-packages/nvidia/cuda_nvcc/nvvm/libdevice/libdevice.10.bc"),
                );
            }
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
        .or_else(|| {
            std::env::var_os("REFORMC_LIBDEVICE")
                .filter(|p| !p.is_empty())
                .map(|p| (p.into(), "REFORMC_LIBDEVICE"))
        });
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
