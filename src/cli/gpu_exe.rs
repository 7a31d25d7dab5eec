//! `reformc compile --target gpu --emit exe|lib`: a standalone executable, or
//! a shared library with `model.h`, that runs the model on the CUDA driver.
//! The host code (with the PTX inside) is compiled to an object by the GPU
//! backend; a generated C file describes the model to the runtime (a `main`
//! calling `reformc_gpu_exe_main`, or the library's exported functions
//! calling the `reformc_gpu_model_*` entries), and the C compiler links both
//! with the runtime archive CPU artifacts link.

use super::error::{CliError, CliResult};
use reformc_backend_gpu::aot::{exe_main_c, host_object, lib_c, ExeMeta};
use reformc_backend_mlir::{signature_json, EmitOptions, WeightsMode};
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
    let (m, lowered, weights) = super::mlir::lowered_model(args)?;
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
    // The runtime's variant bits: seeded 1, rotations 2, buckets 4.
    let variant = match args.lsh_source.as_deref() {
        Some("rotations") => 2,
        Some("buckets") => 4,
        _ => 1,
    };
    let g = &lowered.graph;
    let text = super::mlir::module_text(g, WeightsMode::Args, &weights, &args.config)?;
    let spec = &m.spec;
    let factors = &lowered.bucket_factors;
    let n_lsh = spec.num_lsh_layers() as i64;
    let (pad_multiple, pad_min_len) = spec.padding();
    let meta = ExeMeta {
        weights: weight_list(g)?,
        inputs: g
            .inputs()
            .into_iter()
            .map(|(n, v)| {
                let t = g.ty(v);
                (
                    n.to_string(),
                    reformc_backend_llvm::abi::dtype_code(t.dtype),
                    t.rank(),
                )
            })
            .collect(),
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
    let (obj, src) = (scratch.0.join("host.o"), scratch.0.join("model.c"));
    let host =
        host_object(&text, &opts, &obj).map_err(|e| super::gpu::cli_error(&args.config, e))?;
    let lib = args.emit == "lib";
    let c = if lib {
        lib_c(&meta, host.has_init)
    } else {
        exe_main_c(&meta, host.has_init)
    };
    std::fs::write(&src, c).map_err(|e| CliError::internal(format!("{}: {e}", src.display())))?;
    let runtime =
        reformc_backend_llvm::runtime_lib::find().map_err(|e| CliError::internal(e.to_string()))?;
    let mut written = vec![args.output.clone()];
    if lib {
        let mut exports: Vec<String> = reformc_backend_llvm::aot::EXPORTS
            .iter()
            .map(|s| s.to_string())
            .collect();
        exports.push("reformc_model_set_device".into());
        reformc_backend_llvm::aot::link_shared_objects(
            &[&src, &obj],
            &runtime,
            &args.output,
            &scratch.0,
            &exports,
        )
        .map_err(|e| CliError::internal(e.to_string()))?;
        let header = reformc_backend_llvm::aot::header_path(&args.output);
        let variant = reformc_backend_llvm::Variant {
            name: args.lsh_source.clone().unwrap_or_else(|| "seeded".into()),
            graph: g.clone(),
        };
        let limits = [reformc_backend_llvm::DimLimit {
            symbol: "P".into(),
            max: super::model::max_len(spec),
            what: "padded sequence length (max_position_embeddings / axial position grid)".into(),
        }];
        let text = reformc_backend_llvm::signature::foreign_model_h(
            &meta.model_name,
            std::slice::from_ref(&variant),
            &limits,
            GPU_DECLARATIONS,
        )
        .map_err(|e| CliError::internal(e.to_string()))?;
        reformc_tensor::outfile::write_atomic(&header, |w| w.write_all(text.as_bytes()))
            .map_err(|e| CliError::input(format!("{}: cannot write: {e}", header.display())))?;
        written.push(header);
    } else {
        reformc_backend_llvm::aot::link_exe_objects(&[&src, &obj], &runtime, &args.output)
            .map_err(|e| CliError::internal(e.to_string()))?;
    }
    if !args.passes.quiet {
        println!(
            "reformc: GPU {} with {} kernels for {} in {:.2}s (host code compiled for this machine's CPU)",
            if lib { "library" } else { "executable" },
            host.kernels.entries.len(),
            opts.arch,
            t0.elapsed().as_secs_f64()
        );
        for w in written {
            println!("reformc: wrote {}", w.display());
        }
    }
    Ok(())
}

/// What a GPU library's `model.h` adds to the CPU library's ABI.
const GPU_DECLARATIONS: &str = r#"/* GPU library: the model runs on an NVIDIA GPU through the CUDA driver,
 * loaded at run time (libcuda.so.1; no CUDA library is linked). Weights are
 * copied into device (managed) memory once, from the file
 * (reformc_model_load_weights) or from your arrays
 * (reformc_model_set_weights, which copies them: they may be freed when it
 * returns). Inputs: input_ids, attention_mask,
 * then the one hashing input the library was compiled with.
 *
 * Selects the CUDA device (default 0) before the first load. Returns 0, or a
 * REFORMC_ERR_* code with the reason in reformc_model_last_error(): no
 * driver, no such device, or a device older than the kernels' architecture. */
int32_t reformc_model_set_device(int32_t device);
"#;

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
