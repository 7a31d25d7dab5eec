//! Ahead-of-time artifacts: LLVM IR and assembly text, object files,
//! standalone executables and shared libraries (+ `model.h`), linked with
//! the system C compiler (`cc`) against the runtime's static library.

use crate::error::{BackendError, Result};
use crate::{
    build_module, runtime_lib, target, CompileOptions, CompiledModule, ExeInfo, MemoryPlan,
    Variant, WeightsMode,
};
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::targets::{FileType, TargetMachine};
use reformc_ir::outfile::{self, AtomicOutput};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// A standalone executable (`./model --input ids.npy --output logits.npy`).
    Exe,
    /// A relocatable object file defining the `reformc_model_*` functions,
    /// with the runtime archive it links against ([`RUNTIME_ARCHIVE`]) and
    /// `model.h` beside it.
    Obj,
    /// One self-contained static archive (model code and runtime kernels)
    /// plus `model.h` beside it.
    Staticlib,
    /// A shared library plus `model.h` beside it.
    Lib,
    /// Optimised LLVM IR text.
    Llvm,
    /// Assembly text.
    Asm,
}

impl std::str::FromStr for Emit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Emit, String> {
        Ok(match s {
            "exe" => Emit::Exe,
            "obj" => Emit::Obj,
            "lib" => Emit::Lib,
            "staticlib" => Emit::Staticlib,
            "llvm" => Emit::Llvm,
            "asm" => Emit::Asm,
            other => {
                return Err(format!(
                    "unknown artifact `{other}` (expected exe, obj, lib, staticlib, llvm or asm)"
                ))
            }
        })
    }
}

/// Libraries the runtime's static library needs besides libc (from
/// `rustc --print native-static-libs`); `--as-needed` drops the unused ones.
pub const NATIVE_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// Exported symbols of a shared library (everything else is hidden).
pub const EXPORTS: &[&str] = &[
    "reformc_model_run",
    "reformc_model_load_weights",
    "reformc_model_set_weights",
    "reformc_model_unload_weights",
    "reformc_model_signature",
    "reformc_model_last_error",
    "reformc_model_allow_nonfinite_weights",
    "reformc_tensor_init",
    "reformc_tensor_release",
    "reformc_set_weights_mode",
];

/// What [`compile`] did, with timings.
#[derive(Clone, Debug)]
pub struct CompileReport {
    /// Files written.
    pub written: Vec<PathBuf>,
    /// (phase, seconds): codegen, optimise, emit, link.
    pub phases: Vec<(&'static str, Duration)>,
    /// The static buffer plan of each variant.
    pub plans: Vec<(String, MemoryPlan)>,
    /// The model's JSON signature.
    pub signature: String,
    /// The runtime static library linked in (exe, lib).
    pub runtime_lib: Option<PathBuf>,
}

/// Builds, optimises (`default<O3>`) and writes `emit` to `out`.
///
/// `exe` is required for [`Emit::Exe`] (the executable's command line needs
/// the model's shapes); other artifacts ignore it.
pub fn compile(
    variants: &[Variant],
    opts: &CompileOptions,
    weights: &WeightsMode,
    emit: Emit,
    out: &Path,
    exe: Option<&ExeInfo>,
) -> Result<CompileReport> {
    // Before the expensive work: a missing directory is the caller's error,
    // not a linker failure printed with its whole command line.
    outfile::check_dir("output", out).map_err(BackendError::Input)?;
    let ctx = Context::create();
    let t0 = Instant::now();
    let exe_info = if emit == Emit::Exe {
        Some(exe.ok_or_else(|| {
            BackendError::Input("an executable needs the model description (ExeInfo)".into())
        })?)
    } else {
        None
    };
    let cm = build_module(&ctx, variants, opts, weights, exe_info)?;
    let mut phases = vec![("codegen", t0.elapsed())];
    let t1 = Instant::now();
    let tm = target::machine(&opts.target)?;
    target::optimize(&cm.module, &tm)?;
    phases.push(("optimize", t1.elapsed()));
    let t2 = Instant::now();
    let mut written = Vec::new();
    let mut runtime_lib = None;
    match emit {
        Emit::Llvm => {
            let tmp = AtomicOutput::new(out);
            cm.module
                .print_to_file(tmp.path())
                .map_err(|e| BackendError::Io(format!("{}: {e}", out.display())))?;
            commit(tmp, out)?;
            written.push(out.to_path_buf());
            phases.push(("emit", t2.elapsed()));
        }
        Emit::Asm | Emit::Obj => {
            let ft = if emit == Emit::Asm {
                FileType::Assembly
            } else {
                FileType::Object
            };
            let tmp = AtomicOutput::new(out);
            tm.write_to_file(&cm.module, ft, tmp.path())
                .map_err(|e| BackendError::Io(format!("{}: {e}", out.display())))?;
            commit(tmp, out)?;
            written.push(out.to_path_buf());
            if emit == Emit::Obj {
                // An object alone cannot link: its kernels live in the runtime.
                let rt = runtime_lib::find()?;
                let beside = out.with_file_name(RUNTIME_ARCHIVE);
                copy_atomically(&rt, &beside)?;
                written.push(beside);
                written.push(write_header(&cm.header, header_path(out), exe)?);
                runtime_lib = Some(rt);
            }
            phases.push(("emit", t2.elapsed()));
        }
        Emit::Staticlib => {
            let (_tmp, obj) = temp_object(&tm, &cm.module, "reformc_model.o")?;
            phases.push(("emit", t2.elapsed()));
            let t3 = Instant::now();
            let rt = runtime_lib::find()?;
            let archive = AtomicOutput::new(out);
            std::fs::copy(&rt, archive.path())
                .map_err(|e| BackendError::Io(format!("{}: {e}", rt.display())))?;
            append_to_archive(archive.path(), &obj)?;
            let header = write_header(&cm.header, header_path(out), exe)?;
            commit(archive, out)?;
            written.push(out.to_path_buf());
            written.push(header);
            runtime_lib = Some(rt);
            phases.push(("archive", t3.elapsed()));
        }
        Emit::Exe | Emit::Lib => {
            let (tmp, obj) = temp_object(&tm, &cm.module, "model.o")?;
            phases.push(("emit", t2.elapsed()));
            let t3 = Instant::now();
            let rt = runtime_lib::find()?;
            // Linked to a temporary beside `out`, renamed only once complete.
            let linked = AtomicOutput::new(out);
            if emit == Emit::Exe {
                link_exe(&obj, &rt, linked.path())?;
                commit(linked, out)?;
                written.push(out.to_path_buf());
            } else {
                let exports: Vec<String> = EXPORTS
                    .iter()
                    .map(|e| match &opts.symbol_prefix {
                        Some(p) => crate::abi::prefixed(e, p),
                        None => e.to_string(),
                    })
                    .collect();
                link_shared(&obj, &rt, linked.path(), &tmp.path, &exports)?;
                let header = write_header(&cm.header, header_path(out), exe)?;
                commit(linked, out)?;
                written.push(out.to_path_buf());
                written.push(header);
            }
            runtime_lib = Some(rt);
            phases.push(("link", t3.elapsed()));
        }
    }
    Ok(CompileReport {
        written,
        phases,
        plans: cm.plans.clone(),
        signature: cm.signature.clone(),
        runtime_lib,
    })
}

/// Writes `module` as an object file `name` in a fresh temporary directory
/// (removed when the returned guard drops).
fn temp_object(tm: &TargetMachine, module: &Module, name: &str) -> Result<(TempDir, PathBuf)> {
    let tmp = TempDir::new()?;
    let obj = tmp.path.join(name);
    tm.write_to_file(module, FileType::Object, &obj)
        .map_err(|e| BackendError::Io(format!("{}: {e}", obj.display())))?;
    Ok((tmp, obj))
}

/// Writes `model.h` (with the training step's note for a `--train` artifact)
/// atomically; returns its path.
fn write_header(header: &str, path: PathBuf, exe: Option<&ExeInfo>) -> Result<PathBuf> {
    let h = AtomicOutput::new(&path);
    let text = match exe.and_then(|e| e.step.as_ref()) {
        Some(step) => crate::signature::with_step_note(header, step),
        None => header.to_string(),
    };
    std::fs::write(h.path(), text)
        .map_err(|e| BackendError::Io(format!("{}: {e}", path.display())))?;
    commit(h, &path)?;
    Ok(path)
}

/// The name of the runtime archive `--emit obj` writes beside the object.
pub const RUNTIME_ARCHIVE: &str = "libreformc_runtime.a";

/// Copies `from` to `to` through a temporary beside `to`.
fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    let tmp = AtomicOutput::new(to);
    std::fs::copy(from, tmp.path())
        .map_err(|e| BackendError::Io(format!("{}: {e}", from.display())))?;
    commit(tmp, to)
}

/// The archiver: `$AR`, else the first of `llvm-ar-22`, `llvm-ar`, `ar` on
/// the PATH. LLVM's comes first: GNU ar rebuilds the symbol index of rustc's
/// archive members incompletely (a third of the runtime's symbols go missing).
pub fn ar() -> String {
    if let Some(a) = std::env::var("AR").ok().filter(|s| !s.is_empty()) {
        return a;
    }
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    ["llvm-ar-22", "llvm-ar", "ar"]
        .into_iter()
        .find(|n| on_path(n))
        .unwrap_or("ar")
        .to_string()
}

/// Adds `obj` to the archive `archive` and rebuilds its symbol index.
fn append_to_archive(archive: &Path, obj: &Path) -> Result<()> {
    let ar = ar();
    let out = Command::new(&ar)
        .arg("rs")
        .arg(archive)
        .arg(obj)
        .output()
        .map_err(|e| BackendError::Io(format!("cannot run the archiver `{ar}`: {e}")))?;
    if !out.status.success() {
        return Err(BackendError::Io(format!(
            "{ar} rs {} {} failed: {}",
            archive.display(),
            obj.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The command line that links a C program against a static artifact.
///
/// ```
/// use reformc_backend_llvm::aot::link_line;
/// assert!(link_line(&["libtiny.a"]).starts_with("cc main.c libtiny.a -lgcc_s"));
/// ```
pub fn link_line(archives: &[&str]) -> String {
    let mut parts = vec!["cc".to_string(), "main.c".to_string()];
    parts.extend(archives.iter().map(|s| s.to_string()));
    parts.extend(NATIVE_LIBS.iter().map(|s| s.to_string()));
    parts.join(" ")
}

/// Where `--emit lib` writes the C header of the library `out`: `model.h` beside it.
pub fn header_path(out: &Path) -> PathBuf {
    out.with_file_name("model.h")
}

fn commit(tmp: AtomicOutput, out: &Path) -> Result<()> {
    tmp.commit()
        .map_err(|e| BackendError::Io(format!("{}: cannot write: {e}", out.display())))
}

/// The `model.h` text for `variants` (as [`compile`] writes it for `lib`).
pub fn header(
    variants: &[Variant],
    opts: &CompileOptions,
    weights: &WeightsMode,
) -> Result<String> {
    let ctx = Context::create();
    let cm: CompiledModule = build_module(&ctx, variants, opts, weights, None)?;
    Ok(cm.header)
}

/// A temporary directory removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<TempDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "reformc-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| BackendError::Io(format!("{}: {e}", path.display())))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The C compiler used for linking: `$CC` or `cc`.
pub fn cc() -> String {
    std::env::var("CC")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "cc".to_string())
}

fn run_cc(args: &[String], what: &str) -> Result<()> {
    let cc = cc();
    let out = Command::new(&cc).args(args).output().map_err(|e| {
        BackendError::Io(format!(
            "cannot run the C compiler `{cc}` to link {what}: {e}"
        ))
    })?;
    if !out.status.success() {
        return Err(BackendError::Io(format!(
            "linking {what} failed ({cc} {}):\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Links an executable: generated object (with `main`) + runtime static library.
pub fn link_exe(obj: &Path, runtime: &Path, out: &Path) -> Result<()> {
    link_exe_objects(&[obj], runtime, out)
}

/// Links an executable from several inputs the C compiler takes (objects or
/// C sources, one with `main`) and the runtime static library.
pub fn link_exe_objects(inputs: &[&Path], runtime: &Path, out: &Path) -> Result<()> {
    let mut args: Vec<String> = vec!["-o".into(), out.display().to_string()];
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    args.extend([
        runtime.display().to_string(),
        "-Wl,--gc-sections".into(),
        "-Wl,--as-needed".into(),
        "-Wl,--strip-debug".into(),
    ]);
    args.extend(NATIVE_LIBS.iter().map(|s| s.to_string()));
    run_cc(&args, &out.display().to_string())
}

/// Links a shared library exporting only `exports` ([`EXPORTS`], prefixed
/// or not).
pub fn link_shared(
    obj: &Path,
    runtime: &Path,
    out: &Path,
    tmp: &Path,
    exports: &[String],
) -> Result<()> {
    link_shared_objects(&[obj], runtime, out, tmp, exports)
}

/// [`link_shared`] of several inputs the C compiler takes (objects or C
/// sources compiled position-independent).
pub fn link_shared_objects(
    inputs: &[&Path],
    runtime: &Path,
    out: &Path,
    tmp: &Path,
    exports: &[String],
) -> Result<()> {
    let script = tmp.join("exports.map");
    let mut text = String::from("{\n  global:\n");
    for e in exports {
        text.push_str(&format!("    {e};\n"));
    }
    text.push_str("  local: *;\n};\n");
    std::fs::write(&script, text)
        .map_err(|e| BackendError::Io(format!("{}: {e}", script.display())))?;
    let mut args: Vec<String> = vec![
        "-shared".into(),
        "-fPIC".into(),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    args.extend([
        runtime.display().to_string(),
        format!("-Wl,--version-script={}", script.display()),
        "-Wl,--gc-sections".into(),
        "-Wl,--as-needed".into(),
        "-Wl,--strip-debug".into(),
    ]);
    args.extend(NATIVE_LIBS.iter().map(|s| s.to_string()));
    run_cc(&args, &out.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_names_parse() {
        assert_eq!("exe".parse::<Emit>(), Ok(Emit::Exe));
        assert_eq!("llvm".parse::<Emit>(), Ok(Emit::Llvm));
        assert!("ptx".parse::<Emit>().unwrap_err().contains("expected exe"));
    }
}
