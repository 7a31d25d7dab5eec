//! IREE from the project-local venv (`.venv-iree/`, made by
//! `scripts/setup.sh`): compiles an emitted MLIR module for the CPU
//! (`llvm-cpu`) or for Vulkan (SPIR-V; Mesa's software `llvmpipe` device
//! here) and runs `@forward` on `.npy` inputs.
//!
//! A missing IREE is a test failure that says how to install it, never a skip.

use crate::Scratch;
use ndarray::ArrayD;
use ndarray_npy::ReadNpyExt;
use reformc_interp::Tensor;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where IREE runs a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// IREE's `llvm-cpu` backend for this machine, run on `local-task`.
    Cpu,
    /// IREE's Vulkan/SPIR-V backend with the `vp_android_baseline_2022`
    /// profile (targets that assume a subgroup size return partial sums on
    /// llvmpipe, DESIGN.md §8), run on `--device=vulkan`.
    Vulkan,
}

impl Device {
    /// `iree-compile` flags selecting the target.
    pub fn compile_flags(self) -> &'static [&'static str] {
        match self {
            Device::Cpu => &[
                "--iree-hal-target-device=local",
                "--iree-hal-local-target-device-backends=llvm-cpu",
                "--iree-llvmcpu-target-cpu=host",
            ],
            Device::Vulkan => &[
                "--iree-hal-target-device=vulkan",
                "--iree-vulkan-target=vp_android_baseline_2022",
            ],
        }
    }

    /// `iree-run-module`'s `--device`.
    pub fn runtime(self) -> &'static str {
        match self {
            Device::Cpu => "local-task",
            Device::Vulkan => "vulkan",
        }
    }
}

/// The IREE tools of the project's venv.
pub struct Iree {
    bin: PathBuf,
}

/// What to do when IREE or Vulkan is missing.
const INSTALL: &str = "run `bash scripts/setup.sh` (it installs iree-base-compiler and \
iree-base-runtime 3.13 into .venv-iree/ and Debian's mesa-vulkan-drivers, libvulkan1 and vulkan-tools)";

impl Iree {
    /// The tools in `$REFORMC_IREE_BIN` when set, else in `<workspace>/.venv-iree/bin`;
    /// panics with the install command when `iree-compile` or `iree-run-module` is absent.
    pub fn find() -> Iree {
        let bin = std::env::var_os("REFORMC_IREE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::root().join(".venv-iree/bin"));
        for tool in ["iree-compile", "iree-run-module"] {
            assert!(
                bin.join(tool).is_file(),
                "IREE is missing: no {} ({INSTALL})",
                bin.join(tool).display()
            );
        }
        Iree { bin }
    }

    fn tool(&self, name: &str) -> Command {
        Command::new(self.bin.join(name))
    }

    /// `iree-compile` of `module` for `device` into `vmfb`; the error is the tool's stderr.
    pub fn compile(&self, module: &Path, device: Device, vmfb: &Path) -> Result<(), String> {
        let out = self
            .tool("iree-compile")
            .arg(module)
            .args(device.compile_flags())
            .arg("-o")
            .arg(vmfb)
            .output()
            .map_err(|e| format!("iree-compile: {e} ({INSTALL})"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "iree-compile {} for {device:?} failed: {}",
                module.display(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `iree-run-module` of `@forward` in `vmfb` on `device` with the `.npy`
    /// `inputs` in argument order, writing `outputs` (one `.npy` per result).
    pub fn run(
        &self,
        vmfb: &Path,
        device: Device,
        inputs: &[PathBuf],
        outputs: &[PathBuf],
    ) -> Result<(), String> {
        let mut cmd = self.tool("iree-run-module");
        cmd.arg(format!("--device={}", device.runtime()))
            .arg(format!("--module={}", vmfb.display()))
            .arg("--function=forward");
        for i in inputs {
            cmd.arg(format!("--input=@{}", i.display()));
        }
        for o in outputs {
            cmd.arg(format!("--output=@{}", o.display()));
        }
        let out = cmd
            .output()
            .map_err(|e| format!("iree-run-module: {e} ({INSTALL})"))?;
        if out.status.success() {
            Ok(())
        } else {
            let hint = if device == Device::Vulkan {
                format!(
                    " (no Vulkan device? {INSTALL}; `vulkaninfo --summary` should list llvmpipe)"
                )
            } else {
                String::new()
            };
            Err(format!(
                "iree-run-module on {}: {}{hint}",
                device.runtime(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Compiles module text `mlir` for `device` and runs it on `args`; returns
    /// `n_outputs` results (f32, f64, i64 or i32, as the module returns them).
    pub fn run_module(
        &self,
        mlir: &str,
        device: Device,
        args: &[Tensor],
        n_outputs: usize,
    ) -> Result<Vec<Tensor>, String> {
        let dir = Scratch::new("iree");
        let module = dir.write("m.mlir", mlir.as_bytes());
        let vmfb = dir.path("m.vmfb");
        self.compile(&module, device, &vmfb)?;
        let inputs: Vec<PathBuf> = args
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let p = dir.path(&format!("in{i}.npy"));
                write_tensor(&p, t).map(|_| p)
            })
            .collect::<Result<_, _>>()?;
        let outputs: Vec<PathBuf> = (0..n_outputs)
            .map(|i| dir.path(&format!("out{i}.npy")))
            .collect();
        self.run(&vmfb, device, &inputs, &outputs)?;
        outputs.iter().map(|p| read_tensor(p)).collect()
    }
}

/// Writes `t` as `.npy` in its own dtype, with the header exactly as numpy
/// writes it: IREE's reader wants the dict's trailing `, }`, which
/// `ndarray-npy` does not write (booleans are refused).
pub fn write_tensor(p: &Path, t: &Tensor) -> Result<(), String> {
    let (descr, data): (&str, Vec<u8>) = match t {
        Tensor::F32(a) => ("<f4", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::F64(a) => ("<f8", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::I64(a) => ("<i8", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::I32(a) => ("<i4", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::Bool(_) => {
            return Err(format!("{}: boolean inputs are not supported", p.display()))
        }
    };
    let dims: Vec<String> = t.shape().iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + newline: a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(p, bytes).map_err(|e| format!("{}: {e}", p.display()))
}

/// Reads an `.npy` of f32, f64, i64 or i32 as the matching tensor.
pub fn read_tensor(p: &Path) -> Result<Tensor, String> {
    let open = || File::open(p).map_err(|e| format!("{}: {e}", p.display()));
    if let Ok(a) = ArrayD::<f32>::read_npy(open()?) {
        return Ok(Tensor::F32(a));
    }
    if let Ok(a) = ArrayD::<f64>::read_npy(open()?) {
        return Ok(Tensor::F64(a));
    }
    if let Ok(a) = ArrayD::<i64>::read_npy(open()?) {
        return Ok(Tensor::I64(a));
    }
    ArrayD::<i32>::read_npy(open()?)
        .map(Tensor::I32)
        .map_err(|e| format!("{}: not an f32/f64/i64/i32 .npy: {e}", p.display()))
}
