//! The GPU backend in the CLI: `compile --target gpu --emit ptx` (the
//! kernels as one PTX file) and `run --backend gpu` (compile and run on the
//! CUDA driver in one step).

use super::error::{CliError, CliResult};
use clap::Args;
use reformc_backend_gpu::{compile_ptx, find_libdevice, jit_run, GpuArch, GpuError, GpuOptions};
use reformc_backend_mlir::WeightsMode;
use reformc_ir::Graph;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The GPU flags `compile` and `run` share.
#[derive(Args, Debug, Clone)]
pub struct GpuFlags {
    /// For the GPU: the NVIDIA architecture of the PTX (sm_80 or sm_90).
    #[arg(long, default_value = "sm_90")]
    pub gpu_arch: String,
    /// For the GPU: NVIDIA's libdevice.10.bc, linked into kernels that call
    /// math functions (default: REFORMC_LIBDEVICE, the project's .venv-gpu
    /// that scripts/setup.sh fills, or a CUDA toolkit's).
    #[arg(long)]
    pub libdevice: Option<PathBuf>,
}

impl GpuFlags {
    /// The backend's options, libdevice found.
    pub fn options(&self) -> CliResult<GpuOptions> {
        let arch: GpuArch = self.gpu_arch.parse().map_err(CliError::input)?;
        let libdevice = find_libdevice(self.libdevice.as_deref()).map_err(CliError::input)?;
        Ok(GpuOptions { arch, libdevice })
    }
}

/// A backend error as the CLI reports it: what the machine lacks (driver,
/// device, libdevice) or the device refused is exit 2 with its message; a
/// lowering failure is a bug in reformc.
pub(super) fn cli_error(what: &Path, e: GpuError) -> CliError {
    match e {
        GpuError::Lowering(_) => {
            CliError::internal(format!("GPU backend ({}): {e}", what.display()))
        }
        _ => CliError::input(e.to_string()),
    }
}

/// `reformc compile --target gpu`: the kernels of the model as one PTX file
/// (`--emit ptx`), or an executable that runs it on the CUDA driver (`exe`).
pub fn compile(args: &super::compile::CompileArgs, t0: std::time::Instant) -> CliResult<()> {
    check_compile_flags(args)?;
    if matches!(args.emit.as_str(), "exe" | "lib") {
        return super::gpu_exe::compile(args, t0);
    }
    let opts = args.gpu.options()?;
    let inputs: super::outputs::Inputs<'_> = vec![
        ("the config", args.config.as_path()),
        ("--weights", args.weights.as_path()),
    ];
    super::outputs::guard("--output", &args.output, &inputs)?;
    args.passes.guard_outputs(&inputs)?;
    let (graph, weights) = super::mlir::graph_and_weights(args)?;
    let text = super::mlir::module_text(&graph, WeightsMode::Args, &weights, &args.config)?;
    let kernels = compile_ptx(&text, &opts).map_err(|e| cli_error(&args.config, e))?;
    reformc_tensor::outfile::write_atomic(&args.output, |w| w.write_all(kernels.ptx.as_bytes()))
        .map_err(|e| CliError::input(format!("{}: cannot write: {e}", args.output.display())))?;
    if !args.passes.quiet {
        println!(
            "reformc: {} GPU kernels for {} ({} bytes of PTX{}) in {:.2}s",
            kernels.entries.len(),
            kernels.arch,
            kernels.ptx.len(),
            opts.libdevice
                .as_ref()
                .map_or(String::new(), |p| format!(", libdevice {}", p.display())),
            t0.elapsed().as_secs_f64()
        );
        println!("reformc: wrote {}", args.output.display());
    }
    Ok(())
}

/// Flags of `compile` that have no meaning for the GPU, refused by name.
fn check_compile_flags(args: &super::compile::CompileArgs) -> CliResult<()> {
    if !matches!(args.emit.as_str(), "ptx" | "exe" | "lib") {
        return Err(CliError::input(format!(
            "--target gpu --emit {}: the GPU backend writes --emit ptx (the kernels), exe or lib",
            args.emit
        )));
    }
    let refused = [
        (args.train, "--train"),
        (
            args.precision != "f32",
            "--precision (the GPU backend computes in f32)",
        ),
        (args.memory_plan, "--memory-plan"),
        (args.profile, "--profile"),
        (args.name.is_some(), "--name"),
        (
            args.weights_mode.is_some(),
            "--weights-mode (kernels take the weights as arguments)",
        ),
    ];
    match refused.iter().find(|(set, _)| *set) {
        Some((_, flag)) => Err(CliError::input(format!(
            "{flag} applies to the CPU backend, not to --target gpu"
        ))),
        None => Ok(()),
    }
}

/// Runs `g` on GPU `device`: weights (as the graph declares them) then the
/// inputs taken by name from `inputs`; the outputs returned by name.
pub fn run_engine(
    g: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
    what: &Path,
    flags: &GpuFlags,
    device: i32,
    quiet: bool,
) -> CliResult<(BTreeMap<String, Tensor>, &'static str)> {
    let opts = flags.options()?;
    let text = super::mlir::module_text(g, WeightsMode::Args, weights, what)?;
    let weights = super::mlir::as_graph_dtypes(g, weights);
    let mut args = Vec::new();
    for (name, _) in g.weights() {
        args.push(
            weights.get(name).cloned().ok_or_else(|| {
                CliError::input(format!("{}: no weight `{name}`", what.display()))
            })?,
        );
    }
    for (name, _) in g.inputs() {
        args.push(inputs.get(name).cloned().ok_or_else(|| {
            CliError::input(format!(
                "{}: graph input `{name}` has no value (give it with its flag)",
                what.display()
            ))
        })?);
    }
    let outs: Vec<_> = g
        .outputs
        .iter()
        .map(|(_, v)| (g.ty(*v).dtype, g.ty(*v).rank()))
        .collect();
    let run = jit_run(&text, &opts, device, &args, &outs).map_err(|e| cli_error(what, e))?;
    if !quiet {
        eprintln!(
            "reformc: GPU {} ({}, {}): compile {:.2} s, forward {:.1} ms",
            run.device.index,
            run.device.name,
            opts.arch,
            run.compile.as_secs_f64(),
            run.run.as_secs_f64() * 1e3
        );
    }
    let named = g
        .outputs
        .iter()
        .map(|(n, _)| n.clone())
        .zip(run.outputs)
        .collect();
    Ok((named, "GPU"))
}
