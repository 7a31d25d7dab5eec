//! GPU executables: the lowered host code compiled to an object file (by
//! MLIR's ExecutionEngine, which also adds the packed `@forward` entry), and
//! the C `main` that hands it to the executable runtime
//! (`reformc_gpu_exe_main` in `libreformc_exe_runtime.a`). Linking is the
//! caller's (the CLI links like the CPU backend does).

use crate::{lower, GpuError, GpuOptions, Kernels};
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
/// `entries` are the functions the generated C calls (`forward`, or the
/// `forward_<variant>` of [`crate::variants::merge`]); each must have its
/// packed entry ([`crate::variants::packed_symbol`]).
pub fn host_object(
    module_text: &str,
    opts: &GpuOptions,
    out: &Path,
    entries: &[String],
) -> Result<HostObject, GpuError> {
    let context = reformc_backend_mlir::context();
    let (module, kernels) = lower(&context, module_text, opts)?;
    // Position-independent, for linking into executables and libraries.
    let engine = crate::jit::engine(&module, true)?;
    // Looking an entry up compiles the module, which the dump needs.
    for func in entries {
        if engine
            .lookup(&crate::variants::packed_symbol(func))
            .is_null()
        {
            return Err(GpuError::Lowering(format!(
                "the host code has no packed @{func}"
            )));
        }
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
    /// The compiled variants, at most one per [`Slot`].
    pub variants: Vec<VariantMeta>,
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
    /// length, padding rule, LSH shapes, bucket count (the LSH sources are
    /// the variants' slots).
    pub checks: [i64; 10],
}

/// Where a variant goes in the runtime's description: the LSH source it
/// takes (a model without LSH layers has one variant, in `Seeded`'s slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Hashing drawn from `seed` (an i64 scalar input), or no hashing.
    Seeded = 0,
    /// HF's rotations as an input (`lsh_rotations`).
    Rotations = 1,
    /// Recorded buckets as an input (`lsh_buckets`).
    Buckets = 2,
}

/// One compiled variant of a GPU executable or library.
#[derive(Clone, Debug)]
pub struct VariantMeta {
    /// Which input it hashes from.
    pub slot: Slot,
    /// Its function in the host code (`forward` or `forward_<variant>`).
    pub func: String,
    /// The runtime inputs in argument order: name, dtype code (as
    /// `reformc_tensor.dtype`) and rank.
    pub inputs: Vec<(String, i32, usize)>,
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

/// The C source of the executable's `main` (see the module docs): the
/// model description ([`description_c`]) and `main`.
///
/// ```
/// use reformc_backend_gpu::aot::{exe_main_c, ExeMeta, Slot, VariantMeta};
/// let variant = VariantMeta { slot: Slot::Buckets, func: "forward_buckets".into(), inputs: vec![] };
/// let meta = ExeMeta { model_name: "m\"x".into(), variants: vec![variant], ..ExeMeta::default() };
/// let c = exe_main_c(&meta, true);
/// assert!(c.contains("reformc_gpu_exe_main(argc, argv, &EXE)"));
/// assert!(c.contains("\"m\\042x\""));
/// assert!(c.contains("{NULL, NULL, _mlir__mlir_ciface_forward_buckets}"));
/// ```
pub fn exe_main_c(meta: &ExeMeta, has_init: bool) -> String {
    format!(
        "/* Generated by reformc: the main of a GPU executable. */\n{}\
extern int reformc_gpu_exe_main(int, char **, const struct gpu_exe *);\n\
int main(int argc, char **argv) {{ return reformc_gpu_exe_main(argc, argv, &EXE); }}\n",
        description_c(meta, has_init)
    )
}

/// The C source of a GPU library: the model description and the exported
/// functions of `model.h`, each calling the runtime's GPU entry with it,
/// plus `reformc_model_set_device`. The other exported functions
/// (`reformc_tensor_init`, ...) are the runtime archive's.
pub fn lib_c(meta: &ExeMeta, has_init: bool) -> String {
    format!(
        "/* Generated by reformc: the exported functions of a GPU library. */\n{}\
extern int32_t reformc_gpu_model_load_weights(const struct gpu_exe *, const char *);\n\
extern int32_t reformc_gpu_model_run(const struct gpu_exe *, const void *, int64_t, void *, int64_t);\n\
extern int32_t reformc_gpu_model_set_weights(const struct gpu_exe *, const void *const *, int64_t);\n\
extern void reformc_gpu_model_unload_weights(void);\n\
extern const char *reformc_gpu_model_signature(const struct gpu_exe *);\n\
extern int32_t reformc_gpu_model_set_device(const struct gpu_exe *, int32_t);\n\
extern const char *rc_model_last_error(void);\n\
int32_t reformc_model_load_weights(const char *path) {{ return reformc_gpu_model_load_weights(&EXE, path); }}\n\
int32_t reformc_model_run(const void *inputs, int64_t n_inputs, void *outputs, int64_t n_outputs) {{\n\
  return reformc_gpu_model_run(&EXE, inputs, n_inputs, outputs, n_outputs);\n}}\n\
int32_t reformc_model_set_weights(const void *const *ptrs, int64_t n) {{ return reformc_gpu_model_set_weights(&EXE, ptrs, n); }}\n\
void reformc_model_unload_weights(void) {{ reformc_gpu_model_unload_weights(); }}\n\
const char *reformc_model_signature(void) {{ return reformc_gpu_model_signature(&EXE); }}\n\
const char *reformc_model_last_error(void) {{ return rc_model_last_error(); }}\n\
int32_t reformc_model_set_device(int32_t device) {{ return reformc_gpu_model_set_device(&EXE, device); }}\n",
        description_c(meta, has_init)
    )
}

/// The declarations and the `EXE` constant that describe the model to the
/// runtime (the runtime's `GpuExe`).
fn description_c(meta: &ExeMeta, has_init: bool) -> String {
    let weights: String = meta
        .weights
        .iter()
        .map(|(n, s)| {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("{n}\t{}\n", dims.join(","))
        })
        .collect();
    let mut forwards = ["NULL".to_string(), "NULL".into(), "NULL".into()];
    let mut inputs = ["NULL".to_string(), "NULL".into(), "NULL".into()];
    let mut decls = String::new();
    for v in &meta.variants {
        let symbol = crate::variants::packed_symbol(&v.func);
        decls.push_str(&format!("extern void {symbol}(void **);\n"));
        forwards[v.slot as usize] = symbol;
        let list: String = v
            .inputs
            .iter()
            .map(|(n, d, r)| format!("{n}\t{d}\t{r}\n"))
            .collect();
        inputs[v.slot as usize] = c_string(&list);
    }
    let (init, fini) = if has_init {
        decls.push_str(&format!(
            "extern void rc_host_init(void) __asm__(\"{INIT}\");\nextern void rc_host_deinit(void) __asm__(\"{FINI}\");\n"
        ));
        ("rc_host_init", "rc_host_deinit")
    } else {
        ("NULL", "NULL")
    };
    let checks: Vec<String> = meta.checks.iter().map(|c| c.to_string()).collect();
    format!(
        "#include <stddef.h>\n#include <stdint.h>\n{decls}\
struct gpu_exe {{\n  int64_t abi_version;\n  void (*forward[3])(void **);\n  void (*init)(void);\n  void (*deinit)(void);\n\
  const char *weights;\n  const char *inputs[3];\n  int64_t output_rank;\n  const char *gpu_arch;\n\
  const char *model_name;\n  const char *output_name;\n  const char *default_weights;\n  const char *signature;\n\
  int64_t checks[10];\n}};\n\
static const struct gpu_exe EXE = {{\n  2, {{{}}}, {init}, {fini},\n  {},\n  {{{}}},\n  {},\n  {},\n  {},\n  {},\n  {},\n  {},\n  {{{}}}\n}};\n",
        forwards.join(", "),
        c_string(&weights),
        inputs.join(", "),
        meta.output_rank,
        c_string(meta.arch.chip()),
        c_string(&meta.model_name),
        c_string(&meta.output_name),
        meta.default_weights.as_deref().map_or("NULL".to_string(), c_string),
        c_string(&meta.signature),
        checks.join(", ")
    )
}
