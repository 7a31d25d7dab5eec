//! GPU executables: the lowered host code compiled to an object file (by
//! MLIR's ExecutionEngine, which also adds the packed `@forward` entry), and
//! the C `main` that hands it to the executable runtime
//! (`reformc_gpu_exe_main` in `libreformc_exe_runtime.a`). Linking is the
//! caller's (the CLI links like the CPU backend does).

use crate::{lower, GpuError, GpuOptions, Kernels};
use melior::ExecutionEngine;
use std::path::Path;

/// The host code's static initialiser and finaliser as ORC names them (the
/// LLVM module MLIR translates is `LLVMDialectModule`); they load and unload
/// the kernel module.
const INIT: &str = "__orc_init_func.LLVMDialectModule";
const FINI: &str = "__orc_deinit_func.LLVMDialectModule";

/// What [`host_object`] wrote.
#[derive(Clone, Debug)]
pub struct HostObject {
    /// The kernels embedded in it.
    pub kernels: Kernels,
    /// Whether it has the static initialiser (a module that launches no
    /// kernel has none).
    pub has_init: bool,
}

/// Lowers `module_text` (weights as arguments) and writes its host code, with
/// the PTX embedded, as an object file at `out`. The object is compiled for
/// this machine's CPU (MLIR's ExecutionEngine offers no other target); it
/// calls the GPU runtime's functions, which the executable runtime provides.
pub fn host_object(
    module_text: &str,
    opts: &GpuOptions,
    out: &Path,
) -> Result<HostObject, GpuError> {
    let context = reformc_backend_mlir::context();
    let (module, kernels) = lower(&context, module_text, opts)?;
    let engine = ExecutionEngine::new(&module, 3, &[], true, true);
    for (name, f) in reformc_gpu_runtime::symbols() {
        // SAFETY: each symbol is the runtime's C function of that name; the
        // engine only resolves the object's references with them.
        unsafe { engine.register_symbol(name, f.cast()) };
    }
    // Looking the entry up compiles the module, which the dump needs.
    if engine.lookup("_mlir__mlir_ciface_forward").is_null() {
        return Err(GpuError::Lowering(
            "the host code has no packed @forward".into(),
        ));
    }
    let path = out
        .to_str()
        .ok_or_else(|| GpuError::Lowering(format!("{}: not a UTF-8 path", out.display())))?;
    engine.dump_to_object_file(path);
    let bytes = std::fs::read(out)
        .map_err(|e| GpuError::Lowering(format!("the host object was not written ({e})")))?;
    let has_init = bytes.windows(INIT.len()).any(|w| w == INIT.as_bytes());
    Ok(HostObject { kernels, has_init })
}

/// What a GPU executable's `main` tells the runtime about the model (the
/// fields of the runtime's `GpuExe`).
#[derive(Clone, Debug, Default)]
pub struct ExeMeta {
    /// The weights in argument order: name and shape (f32).
    pub weights: Vec<(String, Vec<usize>)>,
    /// The runtime inputs in argument order.
    pub inputs: Vec<String>,
    /// Rank of the one f32 output.
    pub output_rank: usize,
    /// The PTX's architecture.
    pub arch: crate::GpuArch,
    /// Shown by `--help`.
    pub model_name: String,
    /// `logits` or `last_hidden_state`.
    pub output_name: String,
    /// Weights loaded when `--weights` is not given.
    pub default_weights: Option<String>,
    /// What `--signature` prints.
    pub signature: String,
    /// Input checks, as for CPU executables: vocabulary size, longest padded
    /// length, padding rule, LSH shapes, the LSH source bit, bucket count.
    pub checks: [i64; 11],
}

/// `s` as a C string literal (octal escapes: never read past by the
/// following characters).
fn c_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' | b'\\' | b'?' => out.push_str(&format!("\\{:03o}", b)),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{:03o}", b)),
        }
    }
    out.push('"');
    out
}

/// The C source of the executable's `main` (see the module docs).
///
/// ```
/// use reformc_backend_gpu::aot::{exe_main_c, ExeMeta};
/// let c = exe_main_c(&ExeMeta { model_name: "m\"x".into(), ..ExeMeta::default() }, true);
/// assert!(c.contains("reformc_gpu_exe_main(argc, argv, &EXE)"));
/// assert!(c.contains("\"m\\042x\""));
/// ```
pub fn exe_main_c(meta: &ExeMeta, has_init: bool) -> String {
    let weights: String = meta
        .weights
        .iter()
        .map(|(n, s)| {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("{n}\t{}\n", dims.join(","))
        })
        .collect();
    let inputs: String = meta.inputs.iter().map(|n| format!("{n}\n")).collect();
    let (init, fini, decls) = if has_init {
        (
            "rc_host_init",
            "rc_host_deinit",
            format!(
                "extern void rc_host_init(void) __asm__(\"{INIT}\");\nextern void rc_host_deinit(void) __asm__(\"{FINI}\");\n"
            ),
        )
    } else {
        ("NULL", "NULL", String::new())
    };
    let checks: Vec<String> = meta.checks.iter().map(|c| c.to_string()).collect();
    format!(
        "/* Generated by reformc: the main of a GPU executable. */\n\
#include <stddef.h>\n#include <stdint.h>\n\
extern void _mlir__mlir_ciface_forward(void **);\n{decls}\
struct gpu_exe {{\n  int64_t abi_version;\n  void (*forward)(void **);\n  void (*init)(void);\n  void (*deinit)(void);\n\
  const char *weights;\n  const char *inputs;\n  int64_t output_rank;\n  const char *gpu_arch;\n\
  const char *model_name;\n  const char *output_name;\n  const char *default_weights;\n  const char *signature;\n\
  int64_t checks[11];\n}};\n\
extern int reformc_gpu_exe_main(int, char **, const struct gpu_exe *);\n\
static const struct gpu_exe EXE = {{\n  1, _mlir__mlir_ciface_forward, {init}, {fini},\n  {},\n  {},\n  {},\n  {},\n  {},\n  {},\n  {},\n  {},\n  {{{}}}\n}};\n\
int main(int argc, char **argv) {{ return reformc_gpu_exe_main(argc, argv, &EXE); }}\n",
        c_string(&weights),
        c_string(&inputs),
        meta.output_rank,
        c_string(meta.arch.chip()),
        c_string(&meta.model_name),
        c_string(&meta.output_name),
        meta.default_weights.as_deref().map_or("NULL".to_string(), c_string),
        c_string(&meta.signature),
        checks.join(", ")
    )
}
