//! Target selection (host CPU by default), target machines and the O3 pipeline.

use crate::error::{BackendError, Result};
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;
use std::sync::Once;

/// The CPU generated code is tuned for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    /// LLVM CPU name (`skylake-avx512`, `znver4`, `x86-64-v3`, ...).
    pub cpu: String,
    /// LLVM feature string (`+avx2,+fma,...`); empty: implied by `cpu`.
    pub features: String,
}

impl TargetSpec {
    /// The machine reformc runs on, with all its features (AVX-512 where present).
    pub fn host() -> TargetSpec {
        init();
        TargetSpec {
            cpu: TargetMachine::get_host_cpu_name().to_string(),
            features: TargetMachine::get_host_cpu_features().to_string(),
        }
    }

    /// A named CPU (`host` means [`TargetSpec::host`]); features implied by the CPU.
    pub fn named(cpu: &str) -> TargetSpec {
        if cpu == "host" || cpu == "native" {
            return TargetSpec::host();
        }
        TargetSpec {
            cpu: cpu.to_string(),
            features: String::new(),
        }
    }

    /// `target-cpu` / `target-features` function attributes (MCJIT honours
    /// these; without them it generates generic x86-64 code).
    pub fn function_attributes(&self) -> Vec<(String, String)> {
        let mut v = vec![("target-cpu".to_string(), self.cpu.clone())];
        if !self.features.is_empty() {
            v.push(("target-features".to_string(), self.features.clone()));
        }
        v
    }

    /// True when the features or CPU name promise AVX-512F.
    pub fn has_avx512(&self) -> bool {
        self.features.split(',').any(|f| f == "+avx512f")
            || self.cpu.contains("avx512")
            || self.cpu.starts_with("znver4")
            || self.cpu.starts_with("sapphirerapids")
            || self.cpu.starts_with("icelake")
    }
}

/// x86-64 CPU names LLVM 22 knows (`llc -mcpu=help`), 32-bit-only ones left
/// out: LLVM aborts the process on an unknown or 32-bit CPU, so names are
/// checked here first.
pub const KNOWN_CPUS: &[&str] = &[
    "alderlake",
    "amdfam10",
    "arrowlake",
    "arrowlake-s",
    "arrowlake_s",
    "athlon-fx",
    "athlon64",
    "athlon64-sse3",
    "atom",
    "atom_sse4_2",
    "atom_sse4_2_movbe",
    "barcelona",
    "bdver1",
    "bdver2",
    "bdver3",
    "bdver4",
    "bonnell",
    "broadwell",
    "btver1",
    "btver2",
    "cannonlake",
    "cascadelake",
    "clearwaterforest",
    "cooperlake",
    "core-avx-i",
    "core-avx2",
    "core2",
    "core_2_duo_sse4_1",
    "core_2_duo_ssse3",
    "core_2nd_gen_avx",
    "core_3rd_gen_avx",
    "core_4th_gen_avx",
    "core_4th_gen_avx_tsx",
    "core_5th_gen_avx",
    "core_5th_gen_avx_tsx",
    "core_aes_pclmulqdq",
    "core_i7_sse4_2",
    "corei7",
    "corei7-avx",
    "diamondrapids",
    "emeraldrapids",
    "generic",
    "goldmont",
    "goldmont-plus",
    "goldmont_plus",
    "gracemont",
    "grandridge",
    "graniterapids",
    "graniterapids-d",
    "graniterapids_d",
    "haswell",
    "icelake-client",
    "icelake-server",
    "icelake_client",
    "icelake_server",
    "ivybridge",
    "k8",
    "k8-sse3",
    "knl",
    "knm",
    "lunarlake",
    "meteorlake",
    "mic_avx512",
    "nehalem",
    "nocona",
    "novalake",
    "opteron",
    "opteron-sse3",
    "pantherlake",
    "penryn",
    "raptorlake",
    "rocketlake",
    "sandybridge",
    "sapphirerapids",
    "sierraforest",
    "silvermont",
    "skx",
    "skylake",
    "skylake-avx512",
    "skylake_avx512",
    "slm",
    "tigerlake",
    "tremont",
    "westmere",
    "wildcatlake",
    "x86-64",
    "x86-64-v2",
    "x86-64-v3",
    "x86-64-v4",
    "znver1",
    "znver2",
    "znver3",
    "znver4",
    "znver5",
];

/// Checks that LLVM can generate 64-bit code for `cpu` (the host's name always passes).
///
/// ```
/// use reformc_backend_llvm::target::check_cpu;
/// assert!(check_cpu("x86-64-v3").is_ok());
/// assert!(check_cpu("i686").unwrap_err().to_string().contains("x86-64-v3"));
/// ```
pub fn check_cpu(cpu: &str) -> Result<()> {
    init();
    if KNOWN_CPUS.contains(&cpu) || cpu == TargetMachine::get_host_cpu_name().to_string() {
        return Ok(());
    }
    Err(BackendError::Input(format!(
        "unknown or 32-bit CPU `{cpu}` for --target-cpu (use host, x86-64, x86-64-v2, x86-64-v3, x86-64-v4, skylake-avx512, znver4, ...; see `llc -march=x86-64 -mcpu=help`)"
    )))
}

static INIT: Once = Once::new();

/// Initialises the x86 target once per process.
pub fn init() {
    INIT.call_once(|| {
        Target::initialize_x86(&InitializationConfig::default());
    });
}

/// A target machine for `spec` on the default (host) triple, position independent.
pub fn machine(spec: &TargetSpec) -> Result<TargetMachine> {
    check_cpu(&spec.cpu)?;
    let triple: TargetTriple = TargetMachine::get_default_triple();
    let target = Target::from_triple(&triple)
        .map_err(|e| BackendError::Llvm(format!("target {triple}: {e}")))?;
    target
        .create_target_machine(
            &triple,
            &spec.cpu,
            &spec.features,
            OptimizationLevel::Aggressive,
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| {
            BackendError::Llvm(format!(
                "cannot create a target machine for CPU `{}` (is it a valid x86 CPU name?)",
                spec.cpu
            ))
        })
}

/// Runs LLVM's `default<O3>` pipeline on `module`.
pub fn optimize(module: &Module, tm: &TargetMachine) -> Result<()> {
    module.set_triple(&tm.get_triple());
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    module
        .run_passes("default<O3>", tm, PassBuilderOptions::create())
        .map_err(|e| BackendError::Llvm(format!("optimisation pipeline: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_spec_has_a_cpu_and_attributes() {
        let h = TargetSpec::host();
        assert!(!h.cpu.is_empty());
        let attrs = h.function_attributes();
        assert_eq!(attrs[0].0, "target-cpu");
        assert!(machine(&h).is_ok());
        assert!(machine(&TargetSpec::named("x86-64-v3")).is_ok());
        assert!(machine(&TargetSpec::named("pentium4")).is_err());
        assert!(machine(&TargetSpec::named("no-such-cpu")).is_err());
    }
}
