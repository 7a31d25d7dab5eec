//! `reformc compile --target gpu --emit exe|lib`: a standalone executable, or
//! a shared library with `model.h`, that runs the model on the CUDA driver.
//! The host code (with the PTX inside) is compiled to an object by the GPU
//! backend; a generated C file describes the model to the runtime (a `main`
//! calling `reformc_gpu_exe_main`, or the library's exported functions
//! calling the `reformc_gpu_model_*` entries), and the C compiler links both
//! with the runtime archive CPU artifacts link.

use super::error::{CliError, CliResult};
use reformc_backend_gpu::aot::{exe_main_c, host_object, lib_c, ExeMeta, Slot, VariantMeta};
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
    let spec = &m.spec;
    let variants = variant_graphs(args, &m, &lowered.graph)?;
    let mut texts = Vec::new();
    for (name, _, g) in &variants {
        texts.push((
            *name,
            super::mlir::module_text(g, WeightsMode::Args, &weights, &args.config)?,
        ));
    }
    let pairs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let text = reformc_backend_gpu::variants::merge(&pairs)
        .map_err(|e| super::gpu::cli_error(&args.config, e))?;
    let g = &lowered.graph;
    let factors = &lowered.bucket_factors;
    let n_lsh = spec.num_lsh_layers() as i64;
    let (pad_multiple, pad_min_len) = spec.padding();
    let metas: Vec<VariantMeta> = variants
        .iter()
        .map(|(name, slot, g)| VariantMeta {
            slot: *slot,
            func: reformc_backend_gpu::variants::entry(name),
            inputs: input_list(g),
        })
        .collect();
    let meta = ExeMeta {
        weights: weight_list(g)?,
        variants: metas,
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
        signature: signature(&variants),
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
            factors.iter().product::<u64>().min(i32::MAX as u64) as i64,
        ],
    };
    let scratch = Scratch::new()?;
    let (obj, src) = (scratch.0.join("host.o"), scratch.0.join("model.c"));
    let funcs: Vec<String> = meta.variants.iter().map(|v| v.func.clone()).collect();
    let host = host_object(&text, &opts, &obj, &funcs)
        .map_err(|e| super::gpu::cli_error(&args.config, e))?;
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
        let header_variants: Vec<reformc_backend_llvm::Variant> = variants
            .iter()
            .map(|(name, _, g)| reformc_backend_llvm::Variant {
                name: name.to_string(),
                graph: g.clone(),
            })
            .collect();
        let limits = [reformc_backend_llvm::DimLimit {
            symbol: "P".into(),
            max: super::model::max_len(spec),
            what: "padded sequence length (max_position_embeddings / axial position grid)".into(),
        }];
        let text = reformc_backend_llvm::signature::foreign_model_h(
            &meta.model_name,
            &header_variants,
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
            "reformc: GPU {} ({}) with {} kernels for {} in {:.2}s (host code compiled for this machine's CPU)",
            if lib { "library" } else { "executable" },
            variant_names(&variants),
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
 * returns). Inputs: input_ids, attention_mask, then the hashing input of
 * one of the variants listed above (the seed, the rotations or the
 * buckets): reformc_model_run picks the variant by that input, as a CPU
 * library does.
 *
 * Selects the CUDA device (default 0) before the first load. Returns 0, or a
 * REFORMC_ERR_* code with the reason in reformc_model_last_error(): no
 * driver, no such device, or a device older than the kernels' architecture. */
int32_t reformc_model_set_device(int32_t device);
"#;

/// One compiled variant: its name, its slot in the runtime's description and
/// its optimised graph.
type VariantGraph = (&'static str, Slot, Graph);

/// The variants a GPU executable or library carries: every LSH source (or
/// the one `--lsh-source` names), as a CPU executable does; `first` is the
/// graph [`super::mlir::lowered_model`] made for the first of them.
fn variant_graphs(
    args: &super::compile::CompileArgs,
    m: &super::model::Model,
    first: &Graph,
) -> CliResult<Vec<VariantGraph>> {
    let sources =
        super::compile::variant_sources(args.lsh_source.as_deref(), m.spec.num_lsh_layers());
    let mut out = Vec::new();
    for (i, (name, source)) in sources.into_iter().enumerate() {
        let slot = match source {
            LshSource::Seeded => Slot::Seeded,
            LshSource::Rotations => Slot::Rotations,
            LshSource::Buckets => Slot::Buckets,
        };
        let graph = if i == 0 {
            first.clone()
        } else {
            let mut lowered = m.lower(&LowerOptions {
                dtype: DType::F32,
                lsh_source: source,
                seq_len: args.passes.seq_len,
            })?;
            super::compile::optimize_quietly(&args.passes, &m.spec, &mut lowered.graph)?;
            lowered.graph
        };
        out.push((name, slot, graph));
    }
    Ok(out)
}

/// `seeded, rotations, buckets` (or the one variant's name).
fn variant_names(variants: &[VariantGraph]) -> String {
    let names: Vec<&str> = variants.iter().map(|(n, _, _)| *n).collect();
    names.join(", ")
}

/// A graph's runtime inputs: name, dtype code, rank.
fn input_list(g: &Graph) -> Vec<(String, i32, usize)> {
    g.inputs()
        .into_iter()
        .map(|(n, v)| {
            let t = g.ty(v);
            (
                n.to_string(),
                reformc_backend_llvm::abi::dtype_code(t.dtype),
                t.rank(),
            )
        })
        .collect()
}

/// What `--signature` and `reformc_model_signature` print: the first
/// variant's MLIR signature (weights as arguments, then its inputs) with
/// `entry` its function, plus `variants`, each compiled variant's name,
/// function and runtime inputs.
fn signature(variants: &[VariantGraph]) -> String {
    let opts = EmitOptions {
        weights_mode: WeightsMode::Args,
    };
    let parse = |g: &Graph| -> serde_json::Value {
        serde_json::from_str(&signature_json(g, &opts)).unwrap_or_default()
    };
    let mut doc = variants
        .first()
        .map(|(_, _, g)| parse(g))
        .unwrap_or_default();
    let listed: Vec<serde_json::Value> = variants
        .iter()
        .map(|(name, _, g)| {
            let sig = parse(g);
            let inputs: Vec<&serde_json::Value> = sig["inputs"]
                .as_array()
                .map(|a| a.iter().filter(|i| i["kind"] == "input").collect())
                .unwrap_or_default();
            serde_json::json!({
                "name": name,
                "entry": reformc_backend_gpu::variants::entry(name),
                "inputs": inputs,
            })
        })
        .collect();
    if let (Some(obj), Some((first, _, _))) = (doc.as_object_mut(), variants.first()) {
        obj.insert(
            "entry".into(),
            reformc_backend_gpu::variants::entry(first).into(),
        );
        obj.insert("variants".into(), listed.into());
    }
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
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
