//! `reformc compile --target gpu --emit exe`: a standalone executable that
//! runs the model on the CUDA driver. The host code (with the PTX inside) is
//! compiled to an object by the GPU backend, a generated C `main` describes
//! the model to the executable runtime (`reformc_gpu_exe_main`), and the C
//! compiler links both with the runtime archive CPU executables link.

use super::error::{CliError, CliResult};
use reformc_backend_gpu::aot::{exe_main_c, host_object, ExeMeta};
use reformc_backend_mlir::{signature_json, EmitOptions, WeightsMode};
use reformc_frontend::lower::{LowerOptions, LshSource};
use reformc_frontend::spec::HeadSpec;
use reformc_ir::{DType, Graph};
use std::path::PathBuf;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> CliResult<Scratch> {
        let p = std::env::temp_dir().join(format!("reformc-gpu-exe-{}", std::process::id()));
        std::fs::create_dir_all(&p)
            .map_err(|e| CliError::internal(format!("{}: {e}", p.display())))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The LSH source of `--lsh-source` and its bit in the runtime's variant set
/// (seeded 1, rotations 2, buckets 4).
fn lsh_source(flag: Option<&str>) -> (LshSource, i64) {
    match flag {
        Some("rotations") => (LshSource::Rotations, 2),
        Some("buckets") => (LshSource::Buckets, 4),
        _ => (LshSource::Seeded, 1),
    }
}

/// Runs the command (see the module docs).
pub fn compile(args: &super::compile::CompileArgs, t0: std::time::Instant) -> CliResult<()> {
    if super::opt::is_ir(&args.config) {
        return Err(CliError::input(format!(
            "{}: a GPU executable needs a model config (its command line checks inputs against the model); IR text compiles with --emit ptx",
            args.config.display()
        )));
    }
    let inputs: super::outputs::Inputs<'_> = vec![
        ("the config", args.config.as_path()),
        ("--weights", args.weights.as_path()),
    ];
    super::outputs::guard("--output", &args.output, &inputs)?;
    let opts = args.gpu.options()?;
    let m = super::model::load(&args.config, Some(&args.weights), args.lm_head_bias)?;
    let weights_file = match &m.weights {
        Some(f) if f.is_plain_f32() => f.path().to_path_buf(),
        Some(f) => {
            return Err(CliError::input(format!(
                "{}: a GPU executable loads one F32 safetensors file; convert this checkpoint first (for example `reformc compile --emit exe` writes an F32 copy beside its output)",
                f.path().display()
            )))
        }
        None => args.weights.clone(),
    };
    let (source, variant) = lsh_source(args.lsh_source.as_deref());
    let mut lowered = m.lower(&LowerOptions {
        dtype: DType::F32,
        lsh_source: source,
        seq_len: args.passes.seq_len,
    })?;
    let weights = m.weight_tensors(&lowered)?;
    super::model::check_finite(&weights, &args.weights, args.allow_nonfinite_weights)?;
    args.passes
        .optimize(&mut lowered.graph, &m.spec, args.passes.seq_len)?;
    let g = &lowered.graph;
    let text = super::mlir::module_text(g, WeightsMode::Args, &weights, &args.config)?;
    let spec = &m.spec;
    let factors = &lowered.bucket_factors;
    let n_lsh = spec.num_lsh_layers() as i64;
    let (pad_multiple, pad_min_len) = spec.padding();
    let meta = ExeMeta {
        weights: weight_list(g)?,
        inputs: g.inputs().into_iter().map(|(n, _)| n.to_string()).collect(),
        output_rank: output_rank(g)?,
        arch: opts.arch,
        model_name: reformc_frontend::checkpoint::model_name(&args.config),
        output_name: match spec.head {
            HeadSpec::None => "last_hidden_state".into(),
            HeadSpec::Classification { .. } => "classification logits".into(),
            HeadSpec::QuestionAnswering => "start/end logits".into(),
            HeadSpec::LmHead { .. } => "logits".into(),
        },
        default_weights: Some(
            std::fs::canonicalize(&weights_file)
                .unwrap_or(weights_file)
                .display()
                .to_string(),
        ),
        signature: signature_json(
            g,
            &EmitOptions {
                weights_mode: WeightsMode::Args,
            },
        ),
        checks: [
            spec.vocab_size as i64,
            super::model::max_len(spec) as i64,
            pad_multiple as i64,
            pad_min_len as i64,
            n_lsh,
            spec.num_heads as i64,
            spec.head_dim as i64,
            spec.lsh.n_hashes as i64,
            factors.iter().sum::<u64>() as i64 / 2,
            if n_lsh > 0 { variant } else { 1 },
            factors.iter().product::<u64>().min(i32::MAX as u64) as i64,
        ],
    };
    let scratch = Scratch::new()?;
    let (obj, main_c) = (scratch.0.join("host.o"), scratch.0.join("main.c"));
    let host =
        host_object(&text, &opts, &obj).map_err(|e| super::gpu::cli_error(&args.config, e))?;
    std::fs::write(&main_c, exe_main_c(&meta, host.has_init))
        .map_err(|e| CliError::internal(format!("{}: {e}", main_c.display())))?;
    let runtime =
        reformc_backend_llvm::runtime_lib::find().map_err(|e| CliError::internal(e.to_string()))?;
    reformc_backend_llvm::aot::link_exe_objects(&[&main_c, &obj], &runtime, &args.output)
        .map_err(|e| CliError::internal(e.to_string()))?;
    if !args.passes.quiet {
        println!(
            "reformc: GPU executable with {} kernels for {} in {:.2}s (host code compiled for this machine's CPU)",
            host.kernels.entries.len(),
            opts.arch,
            t0.elapsed().as_secs_f64()
        );
        println!("reformc: wrote {}", args.output.display());
    }
    Ok(())
}

/// The weights in argument order with their (static) shapes.
fn weight_list(g: &Graph) -> CliResult<Vec<(String, Vec<usize>)>> {
    g.weights()
        .into_iter()
        .map(|(name, v)| {
            let dims: Option<Vec<usize>> = g
                .ty(v)
                .shape
                .iter()
                .map(|d| d.as_const().map(|x| x as usize))
                .collect();
            dims.map(|d| (name.to_string(), d))
                .ok_or_else(|| CliError::internal(format!("weight `{name}` has a symbolic shape")))
        })
        .collect()
}

/// The rank of the graph's one f32 output.
fn output_rank(g: &Graph) -> CliResult<usize> {
    match g.outputs.as_slice() {
        [(_, v)] if g.ty(*v).dtype == DType::F32 => Ok(g.ty(*v).rank()),
        _ => Err(CliError::input(
            "a GPU executable writes one f32 output; this model has several (use run --backend gpu)",
        )),
    }
}
