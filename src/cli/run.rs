//! `reformc run`: run a model on token ids and write its output as `.npy`.

use super::error::{CliError, CliResult};
use super::feed::{self, FeedArgs};
use super::passes::PassArgs;
use super::{npy, outputs};
use clap::Args;
use reformc_ir::DType;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Arguments of `reformc run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model description: a Hugging Face config.json or a reformc model file,
    /// or a Hugging Face model folder (config.json + model.safetensors, or a
    /// sharded model.safetensors.index.json), as save_pretrained writes it,
    /// or IR text (`.ir`).
    pub config: PathBuf,
    /// Weights: .safetensors (F32, F16, BF16 or F64), a sharded checkpoint's
    /// model.safetensors.index.json, or a folder holding either; Hugging Face
    /// tensor names. Defaults to the model folder's weights.
    #[arg(long = "weights", value_name = "WEIGHTS")]
    pub weights_flag: Option<PathBuf>,
    /// The weights path after resolution (`--weights`, or the model folder):
    /// set by [`super::model::resolve_required_paths`] before the command runs.
    #[arg(skip)]
    pub weights: PathBuf,
    /// Token ids: int64 or int32 .npy of shape [B, L].
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the output (.npy): logits [B, L, V], or the last hidden state [B, L, 2D] of a bare model.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Attention mask: int .npy [B, L], 0 = padding (HF semantics).
    #[arg(long)]
    pub attention_mask: Option<PathBuf>,
    /// LSH rotations: float32 .npy [n_lsh_layers, H, d, r, S/2] in layer order (HF's draws).
    #[arg(long, conflicts_with = "lsh_buckets")]
    pub lsh_rotations: Option<PathBuf>,
    /// Recorded LSH buckets: int64 .npy [n_lsh_layers, B, H, r*L_padded], as HF's _hash_vectors returns them.
    #[arg(long)]
    pub lsh_buckets: Option<PathBuf>,
    /// Seed of the counter-based generator drawing LSH rotations when no file is given.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Use the reference interpreter instead of the LLVM JIT (the default engine;
    /// f64 runs always use the interpreter: the runtime kernels are f32).
    #[arg(long, conflicts_with = "backend")]
    pub interp: bool,
    /// The compiled engine: `llvm` (reformc's LLVM JIT, the default) or `mlir`
    /// (the module `compile --emit mlir` writes, weights embedded, through
    /// reformc's MLIR CPU pipeline and MLIR's ExecutionEngine).
    /// `gpu`: the MLIR module's kernels on an NVIDIA GPU (PTX for
    /// --gpu-arch, loaded by the CUDA driver at run time).
    #[arg(long, value_parser = ["llvm", "mlir", "gpu"])]
    pub backend: Option<String>,
    /// With --backend gpu: the CUDA device index.
    #[arg(long, default_value_t = 0)]
    pub device: i32,
    #[command(flatten)]
    pub gpu: super::gpu::GpuFlags,
    /// Time every op of the JIT-compiled model and print a table by op kind and
    /// the slowest ops to stderr.
    #[arg(long)]
    pub profile: bool,
    /// Print how long each phase took to stderr (load and check the model and
    /// inputs, passes, JIT compile, run, write the output), as the compiled
    /// executable's --time does.
    #[arg(long)]
    pub time: bool,
    /// Arithmetic precision of the run; the output .npy has this dtype
    /// (f32 for bf16: matrix products of bf16-rounded operands, accumulated
    /// and stored in f32; LLVM JIT only).
    #[arg(long, value_parser = ["f32", "f64", "bf16"], default_value = "f32")]
    pub precision: String,
    /// Add `lm_head.bias` to the logits (HF 4.x behaviour; HF 5.x ignores it).
    #[arg(long)]
    pub lm_head_bias: bool,
    /// Run even when a weight is NaN or infinite (a warning instead of an error).
    #[arg(long)]
    pub allow_nonfinite_weights: bool,
    /// Reference outputs (.npy) to report the max absolute difference against.
    #[arg(long = "compare")]
    pub compare: Vec<PathBuf>,
    #[command(flatten)]
    pub passes: PassArgs,
}

/// Runs the command.
pub fn run(args: &RunArgs) -> CliResult<()> {
    if super::opt::is_ir(&args.config) {
        return super::run_ir::run(args);
    }
    let mut clock = PhaseClock::new(args.time, args.passes.quiet);
    clock.show("reformc: loading the model, weights and inputs");
    let inputs = inputs(args);
    outputs::guard("--output", &args.output, &inputs)?;
    args.passes.guard_outputs(&inputs)?;
    let mut feed = feed::prepare(&FeedArgs {
        config: &args.config,
        weights: &args.weights,
        input: &args.input,
        attention_mask: args.attention_mask.as_deref(),
        lsh_rotations: args.lsh_rotations.as_deref(),
        lsh_buckets: args.lsh_buckets.as_deref(),
        seed: args.seed,
        precision: &args.precision,
        lm_head_bias: args.lm_head_bias,
        allow_nonfinite_weights: args.allow_nonfinite_weights,
    })?;
    clock.lap("load");
    // Pass notes go to stderr line by line: no status line over them.
    clock.progress.clear();
    let (spec, seq_len) = (&feed.model.spec, Some(feed.shape[1] as u64));
    let (inputs, weights) = (&feed.inputs, &feed.weights);
    // Passes run once every input is read and checked, so bad input fails fast and alone.
    args.passes
        .optimize(&mut feed.lowered.graph, spec, seq_len)?;
    clock.lap("passes");
    let (outputs, engine) = engine(args, &feed.lowered.graph, inputs, weights, &mut clock)?;
    let what = spec.head.output_description();
    clock.progress.clear();
    write_outputs(args, outputs, engine, what)?;
    clock.lap("write output");
    clock.report();
    Ok(())
}

/// Wall-clock time per phase of a command, printed by `--time` as one line,
/// and the terminal status line naming the phase under way.
pub(super) struct PhaseClock {
    /// `None` when timing is off: laps are then free and nothing is printed.
    start: Option<std::time::Instant>,
    last: std::time::Instant,
    laps: Vec<(&'static str, std::time::Duration)>,
    /// The status line (silent off a terminal and with `-q`).
    pub(super) progress: super::progress::Progress,
}

impl PhaseClock {
    /// A clock that records laps when `on`, with a status line unless `quiet`.
    pub(super) fn new(on: bool, quiet: bool) -> Self {
        let now = std::time::Instant::now();
        PhaseClock {
            start: on.then_some(now),
            last: now,
            laps: Vec::new(),
            progress: super::progress::Progress::new(quiet),
        }
    }

    /// Shows `what` on the status line (the phase now starting).
    pub(super) fn show(&self, what: &str) {
        self.progress.phase(what);
    }

    /// Ends the phase `name`: the time since the previous lap.
    pub(super) fn lap(&mut self, name: &'static str) {
        if self.start.is_some() {
            let now = std::time::Instant::now();
            self.laps.push((name, now - self.last));
            self.last = now;
        }
    }

    /// Prints `time: load 1.2 ms, ..., total 9.9 ms` to stderr, if timing is on.
    pub(super) fn report(&self) {
        self.progress.clear();
        let Some(start) = self.start else { return };
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let parts: Vec<String> = self
            .laps
            .iter()
            .map(|(n, d)| format!("{n} {:.3} ms", ms(*d)))
            .collect();
        eprintln!(
            "time: {}, total {:.3} ms",
            parts.join(", "),
            ms(start.elapsed())
        );
    }
}

/// Writes the first output to `--output`, says what was written, and reports
/// the difference to each `--compare` reference.
pub(super) fn write_outputs(
    args: &RunArgs,
    outputs: BTreeMap<String, Tensor>,
    engine: &str,
    what: &str,
) -> CliResult<()> {
    let (name, out) = outputs
        .into_iter()
        .next()
        .ok_or_else(|| CliError::internal("the graph has no output"))?;
    match &out {
        Tensor::F32(a) => npy::write(&args.output, a)?,
        Tensor::F64(a) => npy::write(&args.output, a)?,
        other => {
            return Err(CliError::internal(format!(
                "unexpected output dtype {}",
                other.dtype()
            )))
        }
    }
    println!(
        "reformc: wrote {what} `{name}` {:?} {} to {} ({engine})",
        out.shape(),
        out.dtype(),
        args.output.display()
    );
    let got = out.to_f64();
    for reference in &args.compare {
        let want = npy::read_float_any(reference)?;
        if want.shape() != got.shape() {
            return Err(CliError::input(format!(
                "{}: shape {:?} does not match the output's {:?}",
                reference.display(),
                want.shape(),
                got.shape()
            )));
        }
        let diff = (&got - &want).mapv(f64::abs).fold(0.0f64, |a, &b| a.max(b));
        println!(
            "reformc: max |output - {}| = {diff:.3e}",
            reference.display()
        );
    }
    Ok(())
}

/// Every file `run` reads, by flag: no output may be one of them.
pub(super) fn inputs(args: &RunArgs) -> outputs::Inputs<'_> {
    let optional = [
        ("--attention-mask", &args.attention_mask),
        ("--lsh-rotations", &args.lsh_rotations),
        ("--lsh-buckets", &args.lsh_buckets),
    ];
    let mut v = feed::input_files((&args.config, &args.weights, &args.input), &optional);
    v.extend(args.compare.iter().map(|p| ("--compare", p.as_path())));
    v
}

/// The engine `--backend` names: the MLIR CPU pipeline for `mlir`, otherwise
/// [`run_engine`]'s choice.
pub(super) fn engine(
    args: &RunArgs,
    graph: &reformc_ir::Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
    clock: &mut PhaseClock,
) -> CliResult<(BTreeMap<String, Tensor>, &'static str)> {
    let backend = args.backend.as_deref();
    if args.precision == "bf16" && (args.interp || matches!(backend, Some("mlir" | "gpu"))) {
        return Err(CliError::input(
            "--precision bf16 runs on the LLVM JIT only (the interpreter and the MLIR and GPU backends compute in f32 or f64); drop --interp / --backend",
        ));
    }
    if backend == Some("gpu") {
        if args.profile {
            eprintln!("warning: --profile times the LLVM JIT only; the GPU run is not profiled");
        }
        let out = super::gpu::run_engine(
            graph,
            inputs,
            weights,
            &args.config,
            &args.gpu,
            args.device,
            args.passes.quiet,
        );
        clock.lap("run");
        return out;
    }
    if backend != Some("mlir") {
        let flags = EngineFlags {
            interp: args.interp,
            profile: args.profile,
            bf16: args.precision == "bf16",
        };
        return run_engine_timed(flags, graph, inputs, weights, clock);
    }
    if args.time {
        eprintln!(
            "warning: --time with --backend mlir counts compiling and running as one phase, `run`"
        );
    }
    let out = super::mlir::run_engine(
        graph,
        inputs,
        weights,
        &args.config,
        super::mlir::RunFlags {
            quiet: args.passes.quiet,
            profile: args.profile,
        },
    );
    clock.lap("run");
    out
}

/// How [`run_engine`] runs a graph.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct EngineFlags {
    /// The reference interpreter instead of the LLVM JIT.
    pub interp: bool,
    /// Time every op of the JIT-compiled graph.
    pub profile: bool,
    /// bf16 matrix products (`--precision bf16`; the JIT only).
    pub bf16: bool,
}

/// The engine switch: the LLVM JIT by default, the reference interpreter with
/// `--interp` or for f64 graphs (the runtime kernels are f32 only).
pub(super) fn run_engine(
    flags: EngineFlags,
    graph: &reformc_ir::Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
) -> CliResult<(BTreeMap<String, Tensor>, &'static str)> {
    run_engine_timed(
        flags,
        graph,
        inputs,
        weights,
        &mut PhaseClock::new(false, true),
    )
}

/// [`run_engine`], recording the JIT's `compile` and `run` phases (or the
/// interpreter's `run`) on `clock`.
fn run_engine_timed(
    EngineFlags {
        interp,
        profile,
        bf16,
    }: EngineFlags,
    graph: &reformc_ir::Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
    clock: &mut PhaseClock,
) -> CliResult<(BTreeMap<String, Tensor>, &'static str)> {
    let f64_graph = graph
        .outputs
        .iter()
        .any(|(_, v)| graph.ty(*v).dtype == DType::F64);
    if interp || f64_graph {
        if profile {
            eprintln!(
                "warning: --profile times the LLVM JIT only; the interpreter is not profiled"
            );
        }
        clock.show("reformc: running (interpreter)");
        let out = reformc_interp::run(graph, inputs, weights)
            .map_err(|e| CliError::internal(format!("interpreter: {e}")))?;
        clock.lap("run");
        return Ok((out, "interpreter"));
    }
    let mut jit = || {
        let opts = reformc_backend_llvm::CompileOptions {
            profile,
            bf16,
            ..Default::default()
        };
        let ctx = reformc_backend_llvm::Context::create();
        if profile {
            // The totals are per process: concurrent profiled runs share them.
            reformc_runtime::profile::reset();
        }
        clock.show("reformc: JIT compiling");
        let model = reformc_backend_llvm::JitModel::with_options(&ctx, graph, weights, &opts)?;
        clock.lap("compile");
        clock.show("reformc: running");
        let out = model.run(inputs)?;
        clock.lap("run");
        clock.progress.clear();
        if let Some(table) = profile
            .then(|| reformc_runtime::profile::report(reformc_runtime::profile::top_from_env()))
            .flatten()
        {
            eprint!("{table}");
        }
        Ok::<_, reformc_backend_llvm::BackendError>(out)
    };
    match jit() {
        Ok(out) => Ok((out, "LLVM JIT")),
        Err(reformc_backend_llvm::BackendError::Unsupported(m)) => {
            let precision = if bf16 {
                " (in f32: the interpreter has no bf16)"
            } else {
                ""
            };
            eprintln!("warning: LLVM JIT: {m}; running the interpreter instead{precision}");
            let out = reformc_interp::run(graph, inputs, weights)
                .map_err(|e| CliError::internal(format!("interpreter: {e}")))?;
            Ok((out, "interpreter"))
        }
        // Codes 1-9 are bad inputs or weights (model.h REFORMC_ERR_*).
        Err(reformc_backend_llvm::BackendError::Run { code, message })
            if (1..=9).contains(&code) =>
        {
            Err(CliError::input(message))
        }
        Err(e) => Err(CliError::internal(format!("LLVM JIT: {e}"))),
    }
}
