//! The NVIDIA architectures reformc emits PTX for.

/// A GPU architecture (`--gpu-arch`).
///
/// ```
/// use reformc_backend_gpu::GpuArch;
/// let a: GpuArch = "sm_80".parse().unwrap();
/// assert_eq!(a.chip(), "sm_80");
/// assert!("sm_75".parse::<GpuArch>().unwrap_err().contains("sm_80, sm_90"));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuArch {
    /// Ampere (A100): compute capability 8.0.
    Sm80,
    /// Hopper (H100, H200): compute capability 9.0.
    #[default]
    Sm90,
}

impl GpuArch {
    /// Every supported architecture.
    pub const ALL: [GpuArch; 2] = [GpuArch::Sm80, GpuArch::Sm90];

    /// The PTX `.target` name, as `ptxas -arch` takes it.
    pub fn chip(self) -> &'static str {
        match self {
            GpuArch::Sm80 => "sm_80",
            GpuArch::Sm90 => "sm_90",
        }
    }

    /// The PTX ISA version asked of LLVM: the lowest that has the target
    /// (7.0 for sm_80, 7.8 for sm_90), so that older drivers can JIT it.
    pub fn ptx_features(self) -> &'static str {
        match self {
            GpuArch::Sm80 => "+ptx70",
            GpuArch::Sm90 => "+ptx78",
        }
    }

    /// The compute capability, as the driver reports a device's.
    pub fn capability(self) -> (i32, i32) {
        match self {
            GpuArch::Sm80 => (8, 0),
            GpuArch::Sm90 => (9, 0),
        }
    }
}

impl std::str::FromStr for GpuArch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        GpuArch::ALL
            .into_iter()
            .find(|a| a.chip() == s)
            .ok_or_else(|| format!("--gpu-arch {s}: reformc emits PTX for sm_80, sm_90"))
    }
}

impl std::fmt::Display for GpuArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.chip())
    }
}
