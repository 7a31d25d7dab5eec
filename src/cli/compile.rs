//! `reformc compile`: a model to a standalone executable, an object file, a
//! shared library (+ `model.h`), or LLVM IR / assembly text, through the LLVM
//! CPU backend.

use super::error::{CliError, CliResult};
use super::passes::PassArgs;
use super::{model, outputs};
use clap::Args;
use reformc_backend_llvm::aot::{self, Emit};
use reformc_backend_llvm::target::TargetSpec;
use reformc_backend_llvm::{CompileOptions, DimLimit, ExeInfo, Variant, WeightsMode};
use reformc_frontend::lower::{LowerOptions, LshSource};
use reformc_frontend::spec::HeadSpec;
use reformc_ir::DType;
use reformc_passes::{Instrumentation, PassManager};
use reformc_tensor::Tensor;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(crate) mod train_step;

/// Arguments of `reformc compile`.
#[derive(Args, Debug)]
pub struct CompileArgs {
    /// Model description: a Hugging Face config.json or a reformc model file,
    /// or a Hugging Face model folder as save_pretrained writes it
    /// (with --emit mlir, also IR text: a `.ir` file).
    pub config: PathBuf,
    /// Weights (.safetensors, Hugging Face tensor names): checked now; memory-mapped
    /// from this path at run time (overridable with the executable's --weights), or
    /// baked in with --weights-mode=embed. F16, BF16, F64 and sharded checkpoints
    /// are converted: the executable then maps `<output>.safetensors` (F32).
    /// Defaults to the model folder's weights.
    #[arg(long = "weights", value_name = "WEIGHTS")]
    pub weights_flag: Option<PathBuf>,
    /// The weights path after resolution (`--weights`, or the model folder):
    /// set by [`super::model::resolve_required_paths`] before the command runs.
    #[arg(skip)]
    pub weights: PathBuf,
    /// Output path (for `lib`, the .so; model.h is written beside it).
    #[arg(short, long)]
    pub output: PathBuf,
    /// What to produce (`mlir`: one module in upstream MLIR dialects, with its
    /// signature in `<output>.json`).
    /// `staticlib`: one self-contained `.a` (model and runtime) with model.h;
    /// `obj`: the object, with the runtime archive libreformc_runtime.a and
    /// model.h beside it.
    /// `ptx` (with --target gpu): the GPU kernels, one PTX module with one
    /// `.entry` per kernel.
    #[arg(long, value_parser = ["exe", "obj", "lib", "staticlib", "llvm", "asm", "mlir", "ptx"], default_value = "exe")]
    pub emit: String,
    /// Where the code runs: `cpu` (the LLVM backend) or `gpu` (NVIDIA PTX
    /// from the MLIR backend's module; --emit ptx).
    #[arg(long, value_parser = ["cpu", "gpu"], default_value = "cpu")]
    pub target: String,
    #[command(flatten)]
    pub gpu: super::gpu::GpuFlags,
    /// How weights reach the model: `mmap` (loaded from the safetensors file at run
    /// time; the default) or `embed` (compiled into the artifact as constants).
    /// For --emit mlir: `embed` (dense_resource blobs; the default) or `args`
    /// (leading arguments of @forward, by safetensors name).
    #[arg(long, value_parser = ["mmap", "embed", "args"])]
    pub weights_mode: Option<String>,
    /// For --emit mlir: where LSH hashing decisions come from (inputs
    /// `lsh_rotations` or `lsh_buckets`, or drawn inside the module).
    /// Executables carry all three variants.
    #[arg(long, value_parser = ["seeded", "rotations", "buckets"])]
    pub lsh_source: Option<String>,
    /// CPU to generate code for: `portable` (the default: x86-64-v3, i.e. AVX2
    /// and FMA, so that artifacts run on any x86 machine of the last decade;
    /// the runtime's GEMM kernels still pick AVX-512 at run time where present),
    /// `host` (this machine, with all its features), or an LLVM CPU name.
    #[arg(long, default_value = "portable")]
    pub target_cpu: String,
    /// Default worker threads of the executable (0 = all cores; `--threads` overrides at run time).
    #[arg(long, default_value_t = 0,
          value_parser = clap::value_parser!(i64).range(0..=reformc_backend_llvm::MAX_THREADS))]
    pub threads: i64,
    /// Add `lm_head.bias` to the logits (HF 4.x behaviour; HF 5.x ignores it).
    #[arg(long)]
    pub lm_head_bias: bool,
    /// Export every C function as `PREFIX_*` instead of `reformc_*` (and
    /// declare them so in model.h), so that several models' libraries link
    /// into one program. For lib, staticlib, obj, llvm and asm.
    #[arg(long, value_name = "PREFIX")]
    pub name: Option<String>,
    /// Compile even when a weight is NaN or infinite (a warning instead of an
    /// error). Not baked into the artifact: the executable checks the weights
    /// it loads and has its own --allow-nonfinite-weights.
    #[arg(long)]
    pub allow_nonfinite_weights: bool,
    /// Print the static buffer plan (every intermediate buffer, when it is freed).
    #[arg(long)]
    pub memory_plan: bool,
    /// Compile the training step instead of the forward pass: the graph
    /// `reformc grad` runs (forward, loss, backward). The executable takes
    /// `--labels` and writes the gradients as safetensors (exe, lib or obj only).
    #[arg(long)]
    pub train: bool,
    /// Arithmetic precision of the compiled code: f32, or bf16 (matrix
    /// products of bf16-rounded weights and activations, accumulated in f32:
    /// AVX-512 BF16 `vdpbf16ps` where the CPU has it, rounded f32 operands
    /// elsewhere; everything else f32). The LLVM backend has no f64 code.
    #[arg(long, value_parser = ["f32", "f64", "bf16"], default_value = "f32")]
    pub precision: String,
    /// Time every op: the executable prints a table by op kind and the slowest
    /// ops to stderr after each run.
    #[arg(long)]
    pub profile: bool,
    /// The pass pipeline run before code generation (as for `reformc run`);
    /// `--seq-len` also resolves `num_buckets: null`, `-q` silences progress.
    #[command(flatten)]
    pub passes: PassArgs,
}

/// The LSH-source variants a compiled artifact carries, named: all three
/// for a model with LSH layers, or the one `only` names; one `main` variant
/// for a model without.
pub(super) fn variant_sources(only: Option<&str>, n_lsh: usize) -> Vec<(&'static str, LshSource)> {
    let all = [
        ("seeded", LshSource::Seeded),
        ("rotations", LshSource::Rotations),
        ("buckets", LshSource::Buckets),
    ];
    match only {
        _ if n_lsh == 0 => vec![("main", LshSource::Seeded)],
        Some(name) => all.into_iter().filter(|(n, _)| *n == name).collect(),
        None => all.to_vec(),
    }
}

/// `passes`' pipeline on `graph` with no report: the variants after the
/// first, whose report would repeat the first's.
pub(super) fn optimize_quietly(
    passes: &PassArgs,
    spec: &reformc_frontend::spec::ModelSpec,
    graph: &mut reformc_ir::Graph,
) -> CliResult<()> {
    let pm = PassManager::new(
        passes.pipeline()?,
        Instrumentation {
            quiet: true,
            ..Instrumentation::default()
        },
    )
    .map_err(|e| CliError::input(e.to_string()))?;
    let mut opts = passes.options(spec);
    opts.seq_len = opts.seq_len.or(passes.seq_len);
    pm.run(graph, &opts, &mut std::io::sink())
        .map(|_| ())
        .map_err(|e| CliError::internal(e.to_string()))
}

fn to_bytes(t: &Tensor) -> Vec<u8> {
    match t {
        Tensor::F32(a) => a.iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => other
            .to_f64()
            .iter()
            .flat_map(|x| (*x as f32).to_le_bytes())
            .collect(),
    }
}

/// The static peak of one variant at B=1 and length `len` on `threads`
/// threads, by part (what `reformc explain` reports for the same length).
fn footprint_line(
    g: &reformc_ir::Graph,
    plan: &reformc_backend_llvm::MemoryPlan,
    len: u64,
    threads: u64,
) -> String {
    use reformc_passes::cost::fmt_bytes;
    let env = reformc_passes::cost::dim_env(g, 1, len);
    match reformc_passes::footprint::footprint_of(g, plan, &env, threads) {
        Ok(f) => format!(
            "static peak at B=1, L={len} on {threads} thread{}: {} (activations {}, allocator cache {}, weights {}, inputs {}, kernel scratch {}, thread scratch {}, executable {})",
            if threads == 1 { "" } else { "s" },
            fmt_bytes(f.total()),
            fmt_bytes(f.activations),
            fmt_bytes(f.allocator_cache),
            fmt_bytes(f.weights),
            fmt_bytes(f.inputs),
            fmt_bytes(f.kernel_scratch),
            fmt_bytes(f.thread_scratch),
            fmt_bytes(f.fixed),
        ),
        Err(e) => format!("static peak at B=1, L={len}: not computed ({e})"),
    }
}

/// Runs the command.
pub fn run(args: &CompileArgs) -> CliResult<()> {
    let t0 = Instant::now();
    if args.target == "gpu" {
        return super::gpu::compile(args, t0);
    }
    if args.emit == "ptx" {
        return Err(CliError::input("--emit ptx is GPU code: add --target gpu"));
    }
    train_step::check_flags(args)?;
    if args.emit == "mlir" {
        if args.name.is_some() {
            return Err(CliError::input(
                "--name applies to --emit lib, staticlib, obj, llvm and asm; an MLIR module's functions are named in its signature",
            ));
        }
        return super::mlir::compile(args, t0);
    }
    let weights_mode = match args.weights_mode.as_deref() {
        None | Some("mmap") => "mmap",
        Some("embed") => "embed",
        Some(other) => {
            return Err(CliError::input(format!(
                "--weights-mode {other} applies to --emit mlir; --emit {} takes mmap or embed",
                args.emit
            )))
        }
    };
    if args.lsh_source.is_some() {
        return Err(CliError::input(format!(
            "--lsh-source applies to --emit mlir; --emit {} carries all three LSH sources (seeded, rotations, buckets), chosen at run time",
            args.emit
        )));
    }
    if super::opt::is_ir(&args.config) {
        // The executable's ABI (vocabulary, padding, length variants) comes from the model config.
        return Err(CliError::input(format!(
            "{}: compile needs a model config (Hugging Face config.json or a reformc model file); IR text is accepted by `run` and `opt`",
            args.config.display()
        )));
    }
    let emit: Emit = args.emit.parse().map_err(CliError::input)?;
    check_name(args.name.as_deref(), emit)?;
    guard_outputs(args, emit)?;
    let m = model::load(&args.config, Some(&args.weights), args.lm_head_bias)?;
    let spec = &m.spec;
    if args.train {
        train_step::check_model(spec, &args.weights)?;
    }
    // `--train`: the pipeline gains `lower-model` and `autodiff`, as for `reformc grad`.
    let mut passes = args.passes.clone();
    passes.train = args.train;
    let n_lsh = spec.num_lsh_layers();
    let sources = variant_sources(None, n_lsh);
    let seq_len = args.passes.seq_len;
    let mut variants = Vec::new();
    let mut factors = Vec::new();
    let mut weights = None;
    for (i, (name, source)) in sources.iter().enumerate() {
        let mut lowered = m.lower(&LowerOptions {
            dtype: DType::F32,
            lsh_source: *source,
            seq_len,
        })?;
        factors = lowered.bucket_factors.clone();
        if i == 0 {
            // Checks names, shapes and dtypes of the weight file against the graph now.
            let w = m.weight_tensors(&lowered)?;
            model::check_finite(&w, &args.weights, args.allow_nonfinite_weights)?;
            weights = Some(w);
            passes.optimize(&mut lowered.graph, spec, seq_len)?;
        } else {
            optimize_quietly(&passes, spec, &mut lowered.graph)?;
        }
        variants.push((name.to_string(), lowered));
    }
    let weights = weights.ok_or_else(|| CliError::internal("no variant"))?;
    let graphs: Vec<Variant> = variants
        .iter()
        .map(|(n, l)| Variant {
            name: n.clone(),
            graph: l.graph.clone(),
        })
        .collect();
    let table = reformc_backend_llvm::weight_table(&graphs)
        .map_err(|e| CliError::internal(e.to_string()))?;
    let embed = weights_mode == "embed";
    let mode = if embed {
        let data: CliResult<Vec<Vec<u8>>> = table
            .iter()
            .map(|(n, _)| {
                weights
                    .get(n)
                    .map(to_bytes)
                    .ok_or_else(|| CliError::internal(format!("weight `{n}` was not loaded")))
            })
            .collect();
        WeightsMode::Embedded(data?)
    } else {
        WeightsMode::Runtime
    };
    // The file itself: `--weights` (or the model) may name a folder.
    let mapped = match (&m.weights, embed) {
        (Some(file), false) if !file.is_plain_f32() => converted_weights(args, file, &weights)?,
        (Some(file), _) => file.path().to_path_buf(),
        (None, _) => args.weights.clone(),
    };
    let weights_path = std::fs::canonicalize(&mapped)
        .unwrap_or(mapped)
        .display()
        .to_string();
    let max = model::max_len(spec);
    let model_name = reformc_frontend::checkpoint::model_name(&args.config);
    let uses_bias = table.iter().any(|(n, _)| n == "lm_head.bias");
    let opts = CompileOptions {
        model_name: model_name.clone(),
        target: target_spec(&args.target_cpu),
        limits: vec![DimLimit {
            symbol: "P".into(),
            max,
            what: "padded sequence length (max_position_embeddings / axial position grid)".into(),
        }],
        allowed_extra_weights: if uses_bias {
            vec![]
        } else {
            vec!["lm_head.bias".into()]
        },
        default_weights: (!embed).then(|| weights_path.clone()),
        profile: args.profile,
        lsh_buckets_per_round: (n_lsh > 0).then(|| factors.iter().product()),
        symbol_prefix: args.name.clone(),
        bf16: args.precision == "bf16",
    };
    let (pad_multiple, pad_min_len) = spec.padding();
    let (pad_multiple, pad_min_len) = (pad_multiple as i64, pad_min_len as i64);
    let info = ExeInfo {
        model_name: model_name.clone(),
        output_name: match spec.head {
            _ if args.train => "loss and gradients".into(),
            HeadSpec::None => "last_hidden_state".into(),
            HeadSpec::Classification { .. } => "classification logits".into(),
            HeadSpec::QuestionAnswering => "start/end logits".into(),
            HeadSpec::LmHead { .. } => "logits".into(),
        },
        default_weights: (!embed).then_some(weights_path),
        default_threads: args.threads,
        vocab_size: spec.vocab_size as i64,
        max_len: max as i64,
        pad_multiple,
        pad_min_len,
        n_lsh: n_lsh as i64,
        heads: spec.num_heads as i64,
        head_dim: spec.head_dim as i64,
        rounds: spec.lsh.n_hashes as i64,
        rot_half: factors.iter().sum::<u64>() as i64 / 2,
        variants: if n_lsh > 0 { 0b111 } else { 0b001 },
        n_buckets: i32::try_from(factors.iter().product::<u64>()).unwrap_or(0),
        step: if args.train {
            Some(train_step::step_info(&graphs, spec.causal)?)
        } else {
            None
        },
    };
    let prep = t0.elapsed();
    let progress = super::progress::Progress::new(args.passes.quiet);
    progress.phase(&format!(
        "reformc: generating code for {} variant(s) (codegen, LLVM -O3, emit, link)",
        graphs.len()
    ));
    let report = aot::compile(&graphs, &opts, &mode, emit, &args.output, Some(&info));
    progress.clear();
    let report = report.map_err(|e| match e {
        reformc_backend_llvm::BackendError::Unsupported(_)
        | reformc_backend_llvm::BackendError::Input(_) => CliError::input(e.to_string()),
        other => CliError::internal(other.to_string()),
    })?;
    if args.memory_plan {
        let len = seq_len.unwrap_or(max);
        let threads = match args.threads {
            t if t > 0 => t as u64,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        };
        for ((name, plan), v) in report.plans.iter().zip(&graphs) {
            println!(
                "memory plan of variant `{name}` ({} buffers; fused: {}):",
                plan.buffers.len(),
                plan.fusion
            );
            print!("{}", plan.to_text());
            println!("{}", footprint_line(&v.graph, plan, len, threads));
        }
    }
    if !args.passes.quiet {
        let mut phases = vec![format!("frontend {:.2}s", prep.as_secs_f64())];
        phases.extend(
            report
                .phases
                .iter()
                .map(|(p, d)| format!("{p} {:.2}s", d.as_secs_f64())),
        );
        // Every symbol sized from B and L (padding, chunk counts), as `explain` does.
        let env = graphs.first().map_or_else(reformc_ir::DimEnv::new, |v| {
            reformc_passes::cost::dim_env(&v.graph, 1, max)
        });
        let peak = report
            .plans
            .first()
            .and_then(|(_, p)| p.peak_bytes(&env))
            .map(|b| format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64))
            .unwrap_or_else(|| "?".into());
        println!(
            "reformc: compiled `{model_name}` ({} variant{}, {} weights{}, target {}) in {:.2}s [{}]; buffer plan peak at B=1, L={max}: {peak}",
            graphs.len(),
            if graphs.len() == 1 { "" } else { "s" },
            table.len(),
            if embed { " embedded" } else { "" },
            opts.target.cpu,
            t0.elapsed().as_secs_f64(),
            phases.join(", ")
        );
        for w in &report.written {
            println!("reformc: wrote {}", w.display());
        }
        if let Some(note) = train_step::labels_note(args, emit, spec.causal) {
            println!("reformc: {note}");
        }
        if let Some(line) = link_hint(emit, &args.output) {
            println!("reformc: link a C program with: {line}");
        }
    }
    Ok(())
}

/// `--target-cpu`: `portable` is x86-64-v3 on x86-64 (AVX2, FMA; Haswell,
/// Zen 1 and later), and the host elsewhere.
fn target_spec(cpu: &str) -> TargetSpec {
    match cpu {
        "portable" if cfg!(target_arch = "x86_64") => TargetSpec::named("x86-64-v3"),
        "portable" => TargetSpec::host(),
        other => TargetSpec::named(other),
    }
}

/// `--name` must make C identifiers, and applies to linkable artifacts only.
fn check_name(name: Option<&str>, emit: Emit) -> CliResult<()> {
    let Some(name) = name else { return Ok(()) };
    if !reformc_backend_llvm::abi::valid_prefix(name) {
        return Err(CliError::input(format!(
            "--name {name:?}: expected a C identifier prefix (a letter or `_`, then letters, digits or `_`; at most 64)"
        )));
    }
    if emit == Emit::Exe {
        return Err(CliError::input(
            "--name applies to --emit lib, staticlib, obj, llvm and asm (an executable exports nothing)",
        ));
    }
    Ok(())
}

/// How to link a static artifact into a C program (`-I` names model.h's folder).
fn link_hint(emit: Emit, out: &Path) -> Option<String> {
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let include = format!("-I{}", dir.display());
    let line = match emit {
        Emit::Staticlib => aot::link_line(&[&include, &out.display().to_string()]),
        Emit::Obj => aot::link_line(&[
            &include,
            &out.display().to_string(),
            &out.with_file_name(aot::RUNTIME_ARCHIVE)
                .display()
                .to_string(),
        ]),
        _ => return None,
    };
    Some(line)
}

/// Where a converted copy of the weights goes: beside the output, named after it.
pub(super) fn converted_weights_path(output: &Path) -> PathBuf {
    if output.extension().is_some_and(|e| e == "safetensors") {
        output.with_extension("weights.safetensors")
    } else {
        output.with_extension("safetensors")
    }
}

/// Compiled code maps one F32 safetensors file at run time: a sharded, F16,
/// BF16 or F64 checkpoint is written once, converted, beside the output, and
/// that file becomes the artifact's default weights.
fn converted_weights(
    args: &CompileArgs,
    file: &reformc_frontend::weights::WeightFile,
    weights: &std::collections::BTreeMap<String, Tensor>,
) -> CliResult<PathBuf> {
    use reformc_tensor::safetensors_write::{blob, write};
    let path = converted_weights_path(&args.output);
    let inputs: outputs::Inputs<'_> = vec![
        ("the config", args.config.as_path()),
        ("--weights", args.weights.as_path()),
        ("--weights (resolved)", file.path()),
    ];
    outputs::guard("the converted weights", &path, &inputs)?;
    let blobs = weights.iter().map(|(n, t)| (n.clone(), blob(t))).collect();
    write(&path, &blobs, &std::collections::BTreeMap::new()).map_err(CliError::internal)?;
    println!(
        "reformc: {} is not one F32 safetensors file: wrote its weights as F32 to {} (the artifact's default --weights)",
        file.path().display(),
        path.display()
    );
    Ok(path)
}

/// The output, and the `model.h` written beside a library, overwrite no input.
fn guard_outputs(args: &CompileArgs, emit: Emit) -> CliResult<()> {
    let inputs: outputs::Inputs<'_> = vec![
        ("the config", args.config.as_path()),
        ("--weights", args.weights.as_path()),
    ];
    outputs::guard("--output", &args.output, &inputs)?;
    let mut beside = Vec::new();
    if matches!(emit, Emit::Lib | Emit::Staticlib | Emit::Obj) {
        beside.push(("the header", aot::header_path(&args.output)));
    }
    if emit == Emit::Obj {
        beside.push((
            "the runtime archive",
            args.output.with_file_name(aot::RUNTIME_ARCHIVE),
        ));
    }
    for (what, path) in beside {
        if args.output.file_name() == path.file_name() {
            return Err(CliError::input(format!(
                "--output `{}`: --emit {} writes {what} `{}` beside it: name the output otherwise",
                args.output.display(),
                args.emit,
                path.display()
            )));
        }
        outputs::guard(&format!("{what} beside --output"), &path, &inputs)?;
    }
    args.passes.guard_outputs(&inputs)
}
