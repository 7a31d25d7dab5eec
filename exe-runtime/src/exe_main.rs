//! The command line of executables produced by `reformc compile --emit=exe`
//! (owned by the LLVM backend): the generated `main` calls
//! [`reformc_exe_main`] with a description of the compiled model.
//!
//! `./model --input ids.npy --output logits.npy [--attention-mask M.npy]
//! [--threads N] [--lsh-rotations R.npy | --lsh-buckets K.npy] [--seed N]
//! [--weights PATH] [--weights-mode mmap|read] [--time] [--signature] [--help]`, with the same meanings
//! and input checks as `reformc run`. Exit status: 0 success, 2 bad input
//! (files, flags, shapes, weights), 1 internal failure.

use crate::model_rt::{self, ReformcTensor};
use reformc_tensor::npy::{self, NpyData};
use reformc_tensor::{outfile, shown};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// In C signatures: `void` (only generated code builds an [`ExeInfo`]).
impl reformc_runtime::abi::CPointee for ExeInfo {
    fn c_name() -> String {
        "void".into()
    }
}

/// What the generated code tells the command line about the model
/// (mirrors the `__reformc_exe_info` constant the LLVM backend emits).
#[repr(C)]
pub struct ExeInfo {
    /// Generated ABI version (1).
    pub abi_version: i32,
    /// 1 when weights are compiled into the executable.
    pub weights_embedded: i32,
    /// `reformc_model_run`.
    pub run:
        Option<unsafe extern "C" fn(*const ReformcTensor, i64, *mut ReformcTensor, i64) -> i32>,
    /// `reformc_model_load_weights`.
    pub load_weights: Option<unsafe extern "C" fn(*const c_char) -> i32>,
    /// `reformc_model_signature`.
    pub signature: Option<unsafe extern "C" fn() -> *const c_char>,
    /// `reformc_model_last_error`.
    pub last_error: Option<unsafe extern "C" fn() -> *const c_char>,
    /// Safetensors path baked in at compile time (NULL: none).
    pub default_weights: *const c_char,
    /// Model name for `--help`.
    pub model_name: *const c_char,
    /// Output name (`logits`).
    pub output_name: *const c_char,
    /// Threads when `--threads` is absent (0 = all cores).
    pub default_threads: i64,
    /// Ids must be below this (<= 0: unchecked).
    pub vocab_size: i64,
    /// Largest padded length (<= 0: unlimited).
    pub max_len: i64,
    /// Padding multiple (HF eval padding).
    pub pad_multiple: i64,
    /// Only lengths above this are padded.
    pub pad_min_len: i64,
    /// Number of LSH layers.
    pub n_lsh: i64,
    /// Heads.
    pub heads: i64,
    /// Per-head width.
    pub head_dim: i64,
    /// Hash rounds.
    pub rounds: i64,
    /// S/2.
    pub rot_half: i64,
    /// Compiled variants: bit 0 seeded, 1 rotations, 2 buckets.
    pub variants: i32,
    /// LSH buckets per round, without the padding bucket (<= 0: unchecked).
    pub n_buckets: i32,
    /// 1 for a training step (`reformc compile --train`): see [`crate::exe_step`].
    pub train: i32,
    /// Training step of a causal LM: labels are shifted (position t predicts t+1).
    pub causal: i32,
    /// Training step: position of the `labels` input in the first variant
    /// (-1: none); `labels` is the last input of every variant.
    pub labels_index: i32,
    /// Training step: the output names, newline-separated (NULL otherwise).
    pub output_names: *const c_char,
    /// Training step that draws dropout masks: every variant takes `seed`
    /// (their key), before its replayed hashing input if it has one.
    pub step_seed: i32,
}

extern "C" {
    /// runtime/ABI.md.
    fn rc_set_threads(n: i64) -> i32;
}

/// A failure: message and exit status.
pub(crate) struct Fail(pub(crate) String, pub(crate) i32);

pub(crate) fn input_err(m: impl Into<String>) -> Fail {
    Fail(m.into(), 2)
}

/// The parsed command line (forward and step executables share it).
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) input: Option<PathBuf>,
    pub(crate) output: Option<PathBuf>,
    /// Step executables: `--labels`.
    pub(crate) labels: Option<PathBuf>,
    /// Step executables: `--loss-output`.
    pub(crate) loss_output: Option<PathBuf>,
    mask: Option<PathBuf>,
    threads: Option<i64>,
    rotations: Option<PathBuf>,
    buckets: Option<PathBuf>,
    seed: i64,
    weights: Option<PathBuf>,
    allow_nonfinite: bool,
    /// Read the weights into memory instead of mapping them.
    weights_read: bool,
    pub(crate) time: bool,
    /// `--repeat N`: run the model N times (0 when not given: once).
    pub(crate) repeat: usize,
    signature: bool,
    help: bool,
}

fn usage(prog: &str, model: &str, output: &str) -> String {
    let lines = [
        format!("{prog}: the reformc-compiled model `{model}`"),
        String::new(),
        format!("usage: {prog} --input IDS.npy --output OUT.npy [options]"),
        String::new(),
        "  --input PATH            token ids: int64 or int32 .npy [B, L]".into(),
        format!("  --output PATH           where to write {output} (.npy, float32)"),
        "  --attention-mask PATH   int .npy [B, L], 0 = padding (default: all ones)".into(),
        "  --threads N             worker threads (0 = all cores)".into(),
        "  --lsh-rotations PATH    float32 .npy [n_lsh_layers, H, d, r, S/2] (HF's draws)".into(),
        "  --lsh-buckets PATH      int .npy [n_lsh_layers, B, H, r*L_padded] (recorded buckets)"
            .into(),
        "  --seed N                seed of the generator drawing LSH rotations (default 0)".into(),
        "  --weights PATH          safetensors weights (default: the file named at compile time)"
            .into(),
        "  --allow-nonfinite-weights  load weights holding NaN or Inf (a warning, not an error)"
            .into(),
        "  --weights-mode MODE     mmap (default) or read: copy the weights into memory, so that"
            .into(),
        "                          changing the file meanwhile cannot crash the run (SIGBUS)"
            .into(),
        "  --time                  print timings to stderr".into(),
        REPEAT_HELP.into(),
        REPEAT_HELP_MORE.into(),
        "  --signature             print the model's JSON signature and exit".into(),
        "  --help                  this text".into(),
    ];
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn parse_args(argv: &[String]) -> Result<Args, Fail> {
    let mut a = Args::default();
    let mut i = 1;
    while i < argv.len() {
        let arg = &argv[i];
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let value = |i: &mut usize| -> Result<String, Fail> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            *i += 1;
            argv.get(*i)
                .cloned()
                .ok_or_else(|| input_err(format!("{} needs a value", shown(&flag))))
        };
        match flag.as_str() {
            "--input" => a.input = Some(value(&mut i)?.into()),
            "--output" => a.output = Some(value(&mut i)?.into()),
            "--labels" => a.labels = Some(value(&mut i)?.into()),
            "--loss-output" => a.loss_output = Some(value(&mut i)?.into()),
            "--attention-mask" => a.mask = Some(value(&mut i)?.into()),
            "--lsh-rotations" => a.rotations = Some(value(&mut i)?.into()),
            "--lsh-buckets" => a.buckets = Some(value(&mut i)?.into()),
            "--weights" => a.weights = Some(value(&mut i)?.into()),
            "--threads" => {
                let v = value(&mut i)?;
                let max = reformc_runtime::pool::MAX_THREADS;
                let n: i64 = v
                    .parse()
                    .ok()
                    .filter(|n| (0..=max).contains(n))
                    .ok_or_else(|| {
                        input_err(format!(
                            "--threads: `{}` is not a thread count (expected 0..={max}; 0 = all cores)",
                            shown(&v)
                        ))
                    })?;
                a.threads = Some(n);
            }
            "--seed" => {
                let v = value(&mut i)?;
                a.seed = v
                    .parse()
                    .map_err(|_| input_err(format!("--seed: `{}` is not an integer", shown(&v))))?;
            }
            "--allow-nonfinite-weights" => a.allow_nonfinite = true,
            "--weights-mode" => {
                let v = value(&mut i)?;
                a.weights_read = match v.as_str() {
                    "read" => true,
                    "mmap" => false,
                    _ => {
                        return Err(input_err(format!(
                            "--weights-mode: `{}` is not a mode (expected mmap or read)",
                            shown(&v)
                        )))
                    }
                };
            }
            "--time" => a.time = true,
            "--repeat" => {
                let v = value(&mut i)?;
                a.repeat = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_REPEAT).contains(n))
                    .ok_or_else(|| {
                        input_err(format!(
                            "--repeat: `{}` is not a run count (expected 1..={MAX_REPEAT})",
                            shown(&v)
                        ))
                    })?;
            }
            "--signature" => a.signature = true,
            "--help" | "-h" => a.help = true,
            other => {
                return Err(input_err(format!(
                    "unknown argument `{}` (see --help)",
                    shown(other)
                )))
            }
        }
        i += 1;
    }
    if a.rotations.is_some() && a.buckets.is_some() {
        return Err(input_err(
            "--lsh-rotations and --lsh-buckets exclude each other",
        ));
    }
    Ok(a)
}

/// Parses an executable's command line (`argv[0]` is the program) without
/// acting on it: the entry for fuzzing. On error returns the message and the
/// exit status the executable would give.
pub fn check_args(argv: &[String]) -> Result<(), (String, i32)> {
    parse_args(argv).map(|_| ()).map_err(|Fail(m, c)| (m, c))
}

pub(crate) fn read_int(
    path: &Path,
    rank: usize,
    what: &str,
) -> Result<(Vec<usize>, Vec<i64>), Fail> {
    let a = npy::read(path).map_err(|e| input_err(format!("{}: {what}: {e}", path.display())))?;
    let data = match a.data {
        NpyData::Int(v) if matches!(a.descr.as_str(), "<i8" | "<i4") => v,
        _ => {
            return Err(input_err(format!(
                "{}: {what}: expected an int64 or int32 array, found dtype {}",
                path.display(),
                a.descr
            )))
        }
    };
    if a.shape.len() != rank {
        return Err(input_err(format!(
            "{}: {what}: expected a rank-{rank} array, found shape {:?}",
            path.display(),
            a.shape
        )));
    }
    Ok((a.shape, data))
}

pub(crate) fn tensor(dtype: i32, shape: &[usize], data: *const c_void) -> ReformcTensor {
    let mut t = ReformcTensor::empty();
    t.dtype = dtype;
    t.rank = shape.len() as i32;
    let mut stride = 1i64;
    for (a, &d) in shape.iter().enumerate().rev() {
        t.shape[a] = d as i64;
        t.strides[a] = stride;
        stride *= d as i64;
    }
    t.data = data as *mut c_void;
    t
}

pub(crate) fn c_text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the generated code passes NUL-terminated constants.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn model_error(info: &ExeInfo) -> String {
    match info.last_error {
        // SAFETY: the generated function returns a valid NUL-terminated string.
        Some(f) => c_text(unsafe { f() }),
        None => "unknown error".into(),
    }
}

/// Refuses the output `path` of `flag` before any work when its directory
/// cannot take it or it is one of the inputs (`weights`: the file that will
/// be loaded).
fn guard_output(
    flag: &str,
    output: &Path,
    args: &Args,
    weights: Option<&Path>,
) -> Result<(), Fail> {
    outfile::check_dir(flag, output).map_err(input_err)?;
    let weights_flag = if args.weights.is_some() {
        "--weights"
    } else {
        "the weights named at compile time"
    };
    let inputs = [
        ("--input", args.input.as_deref()),
        ("--attention-mask", args.mask.as_deref()),
        ("--lsh-rotations", args.rotations.as_deref()),
        ("--lsh-buckets", args.buckets.as_deref()),
        ("--labels", args.labels.as_deref()),
        (weights_flag, weights),
    ];
    for (input_flag, path) in inputs {
        if let Some(p) = path.filter(|p| outfile::same_file(output, p)) {
            return Err(input_err(format!(
                "{flag} `{}` is the same file as {input_flag} `{}`: refusing to overwrite an input",
                output.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

/// The hashing input of a run.
pub(crate) enum Hash {
    /// No LSH layer.
    None,
    /// Rotations drawn from `--seed`.
    Seed,
    /// `--lsh-rotations` data and shape.
    Rot(Vec<f32>, Vec<usize>),
    /// `--lsh-buckets` data and shape.
    Buckets(Vec<i64>, Vec<usize>),
}

/// Everything read and checked before a run: the weights are loaded, the
/// inputs in memory.
pub(crate) struct Prepared {
    /// `[B, L]` of the token ids.
    pub ishape: Vec<usize>,
    /// Token ids.
    pub ids: Vec<i64>,
    /// Attention mask (None: all ones).
    pub mask: Option<Vec<i64>>,
    /// `--seed`, as the seeded variant takes it.
    pub seed: [i64; 1],
    /// The hashing input.
    pub hashing: Hash,
    /// Time to load the weights.
    pub load_time: std::time::Duration,
    /// Time to read the inputs.
    pub read_time: std::time::Duration,
}

impl Prepared {
    /// The model's positional inputs: ids, mask, then the hashing input;
    /// with `seed_too`, the seed also where the hashing input is another
    /// (a training step's dropout masks are keyed by it).
    pub(crate) fn tensors(&self, seed_too: bool) -> Vec<ReformcTensor> {
        let mut inputs = vec![
            tensor(3, &self.ishape, self.ids.as_ptr() as *const c_void),
            tensor(
                3,
                &self.ishape,
                self.mask
                    .as_ref()
                    .map_or(std::ptr::null(), |m| m.as_ptr() as *const c_void),
            ),
        ];
        let seed = tensor(3, &[], self.seed.as_ptr() as *const c_void);
        if seed_too && !matches!(self.hashing, Hash::Seed) {
            inputs.push(seed);
        }
        match &self.hashing {
            Hash::None => {}
            Hash::Seed => inputs.push(seed),
            Hash::Rot(v, s) => inputs.push(tensor(1, s, v.as_ptr() as *const c_void)),
            Hash::Buckets(v, s) => inputs.push(tensor(3, s, v.as_ptr() as *const c_void)),
        }
        inputs
    }
}

fn run(argv: &[String], info: &ExeInfo) -> Result<(), Fail> {
    let t_start = Instant::now();
    let prog = argv
        .first()
        .map(String::as_str)
        .unwrap_or("model")
        .to_string();
    let output_name = c_text(info.output_name);
    let args = parse_args(argv)?;
    let step = info.train != 0;
    if args.help {
        if step {
            print!(
                "{}",
                crate::exe_step::usage(&prog, &c_text(info.model_name))
            );
        } else {
            print!("{}", usage(&prog, &c_text(info.model_name), &output_name));
        }
        return Ok(());
    }
    if args.signature {
        if let Some(f) = info.signature {
            // SAFETY: the generated function returns a static NUL-terminated string.
            println!("{}", c_text(unsafe { f() }));
        }
        return Ok(());
    }
    if info.abi_version != 1 {
        return Err(Fail(
            format!("unsupported model ABI version {}", info.abi_version),
            1,
        ));
    }
    if step {
        return crate::exe_step::run(&prog, &args, info, t_start);
    }
    if args.labels.is_some() || args.loss_output.is_some() {
        return Err(input_err(
            "--labels and --loss-output apply to training-step executables (`reformc compile --train`); this one runs the forward pass",
        ));
    }
    let output = args
        .output
        .clone()
        .ok_or_else(|| input_err("--output OUT.npy is required (see --help)"))?;
    let p = prepare(&args, info, &[("--output", &output)])?;
    let inputs = p.tensors(false);
    let mut out = ReformcTensor::empty();
    let runs = timed_runs(&args, |last| {
        if last {
            return run_model(info, &inputs, std::slice::from_mut(&mut out));
        }
        let mut spare = ReformcTensor::empty();
        run_model(info, &inputs, std::slice::from_mut(&mut spare))?;
        // SAFETY: `spare` was filled by reformc_model_run; released once.
        unsafe { model_rt::reformc_tensor_release(&mut spare) };
        Ok(())
    })?;
    let t_write = Instant::now();
    let shape = out_shape(&out);
    let n: usize = shape.iter().product();
    let written = match out.dtype {
        1 => {
            // SAFETY: the model wrote n f32 values at out.data.
            let s = unsafe { std::slice::from_raw_parts(out.data as *const f32, n) };
            npy::write_streamed(&output, "<f4", &shape, s, |x, o| {
                o.extend_from_slice(&x.to_le_bytes())
            })
        }
        2 => {
            // SAFETY: the model wrote n f64 values at out.data.
            let s = unsafe { std::slice::from_raw_parts(out.data as *const f64, n) };
            npy::write_streamed(&output, "<f8", &shape, s, |x, o| {
                o.extend_from_slice(&x.to_le_bytes())
            })
        }
        3 => {
            // SAFETY: the model wrote n i64 values at out.data.
            let s = unsafe { std::slice::from_raw_parts(out.data as *const i64, n) };
            npy::write_streamed(&output, "<i8", &shape, s, |x, o| {
                o.extend_from_slice(&x.to_le_bytes())
            })
        }
        other => Err(format!("unexpected output dtype code {other}")),
    };
    // SAFETY: `out` was filled by reformc_model_run; released once.
    unsafe { model_rt::reformc_tensor_release(&mut out) };
    written.map_err(|e| Fail(format!("{}: {e}", output.display()), 1))?;
    let write_time = t_write.elapsed();
    println!(
        "{prog}: wrote {output_name} {shape:?} f32 to {}",
        output.display()
    );
    if args.time {
        report_times(&p, &runs, write_time, t_start);
    }
    print_profile();
    Ok(())
}

/// The largest `--repeat`.
const MAX_REPEAT: usize = 100_000;
pub(crate) const REPEAT_HELP: &str =
    "  --repeat N              run the model N times, writing the last run's result; with";
pub(crate) const REPEAT_HELP_MORE: &str =
    "                          --time, `run` is the median of runs 2..N (run 1 warms up)";

/// Runs `run(last)` `--repeat` times (once by default; `last` on the final
/// run), timing each; a failing run stops the loop.
pub(crate) fn timed_runs(
    args: &Args,
    mut run: impl FnMut(bool) -> Result<(), Fail>,
) -> Result<Vec<std::time::Duration>, Fail> {
    let n = args.repeat.max(1);
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        run(i + 1 == n)?;
        times.push(t.elapsed());
    }
    Ok(times)
}

/// Compiled with `reformc compile --profile`: the per-op table, to stderr.
pub(crate) fn print_profile() {
    if let Some(table) = reformc_runtime::profile::report(reformc_runtime::profile::top_from_env())
    {
        eprint!("{table}");
    }
}

/// The `--time` line, then (compiled with `reformc compile --profile`) the per-op table.
pub(crate) fn report_times(
    p: &Prepared,
    runs: &[std::time::Duration],
    write_time: std::time::Duration,
    t_start: Instant,
) {
    let ms = |d: &std::time::Duration| d.as_secs_f64() * 1e3;
    let (run, each) = match runs {
        [one] => (ms(one), String::new()),
        [_, rest @ ..] => {
            let mut warm: Vec<f64> = rest.iter().map(ms).collect();
            warm.sort_by(f64::total_cmp);
            let all: Vec<String> = runs.iter().map(|d| format!("{:.3}", ms(d))).collect();
            (
                warm[warm.len() / 2],
                format!(
                    " (median of runs 2-{}; runs {} ms)",
                    runs.len(),
                    all.join(", ")
                ),
            )
        }
        [] => (0.0, String::new()),
    };
    eprintln!(
        "time: load weights {:.3} ms, read inputs {:.3} ms, run {run:.3} ms{each}, write output {:.3} ms, total {:.3} ms",
        p.load_time.as_secs_f64() * 1e3,
        p.read_time.as_secs_f64() * 1e3,
        write_time.as_secs_f64() * 1e3,
        t_start.elapsed().as_secs_f64() * 1e3
    );
}

/// The shape of an output the model filled.
pub(crate) fn out_shape(out: &ReformcTensor) -> Vec<usize> {
    let rank = (out.rank.max(0) as usize).min(model_rt::MAX_RANK);
    out.shape[..rank]
        .iter()
        .map(|&x| x.max(0) as usize)
        .collect()
}

/// Calls `reformc_model_run`; a failure carries the model's message (exit 2
/// for bad input, codes 1-9).
pub(crate) fn run_model(
    info: &ExeInfo,
    inputs: &[ReformcTensor],
    outputs: &mut [ReformcTensor],
) -> Result<(), Fail> {
    let Some(run_fn) = info.run else {
        return Err(Fail("the model has no entry points".into(), 1));
    };
    // SAFETY: `inputs` describe live, contiguous arrays of the stated types;
    // `outputs` are writable slots.
    let rc = unsafe {
        run_fn(
            inputs.as_ptr(),
            inputs.len() as i64,
            outputs.as_mut_ptr(),
            outputs.len() as i64,
        )
    };
    if rc != 0 {
        let status = if (1..=9).contains(&rc) { 2 } else { 1 };
        return Err(Fail(model_error(info), status));
    }
    Ok(())
}

/// Sets the threads, loads the weights, then reads and checks the token ids,
/// the mask and the hashing input, as `reformc run` does. `outputs` (flag,
/// path) are refused first when they are inputs or cannot be written.
pub(crate) fn prepare(
    args: &Args,
    info: &ExeInfo,
    outputs: &[(&str, &Path)],
) -> Result<Prepared, Fail> {
    let Some(load) = info.load_weights else {
        return Err(Fail("the model has no entry points".into(), 1));
    };
    let input = args
        .input
        .clone()
        .ok_or_else(|| input_err("--input IDS.npy is required (see --help)"))?;
    let threads = args.threads.unwrap_or(info.default_threads);
    // SAFETY: rc_set_threads takes a plain integer.
    if unsafe { rc_set_threads(threads) } != 0 {
        return Err(input_err(format!(
            "--threads: cannot use {threads} threads"
        )));
    }
    // Weights: --weights, else the compiled-in path, else embedded.
    let t_w = Instant::now();
    let weights = args.weights.clone().or_else(|| {
        (!info.default_weights.is_null() && info.weights_embedded == 0)
            .then(|| PathBuf::from(c_text(info.default_weights)))
    });
    for (flag, path) in outputs {
        guard_output(flag, path, args, weights.as_deref())?;
    }
    model_rt::reformc_model_allow_nonfinite_weights(i32::from(args.allow_nonfinite));
    if args.weights_read {
        model_rt::reformc_set_weights_mode(model_rt::WEIGHTS_READ);
    }
    match &weights {
        Some(p) => {
            let c = CString::new(p.display().to_string())
                .map_err(|_| input_err("--weights: the path contains a NUL byte"))?;
            // SAFETY: `c` is NUL-terminated and outlives the call.
            let rc = unsafe { load(c.as_ptr()) };
            if rc != 0 {
                return Err(input_err(format!(
                    "cannot load weights: {}{}",
                    model_error(info),
                    if args.weights.is_none() {
                        " (this is the path given at compile time; pass --weights PATH)"
                    } else {
                        ""
                    }
                )));
            }
            let warning = model_error(info);
            if !warning.is_empty() {
                eprintln!("{warning}");
            }
        }
        None if info.weights_embedded != 0 => {}
        None => return Err(input_err("no weights: pass --weights model.safetensors")),
    }
    let load_time = t_w.elapsed();
    let t_r = Instant::now();
    let (ishape, ids) = read_int(&input, 2, "token ids [B, L]")?;
    if ids.is_empty() {
        return Err(input_err(format!(
            "{}: token ids: expected a non-empty [B, L] array, found shape {ishape:?}",
            input.display()
        )));
    }
    let (batch, len) = (ishape[0], ishape[1]);
    if info.vocab_size > 0 {
        if let Some((i, &id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &v)| v < 0 || v >= info.vocab_size)
        {
            return Err(input_err(format!(
                "{}: token id {id} at [{}, {}] is out of range: the vocabulary has {} entries (expected 0 <= id < {})",
                input.display(),
                i / len,
                i % len,
                info.vocab_size,
                info.vocab_size
            )));
        }
    }
    let padded = reformc_ir::hf_rules::padded_len(
        len as u64,
        info.pad_multiple.max(1) as u64,
        info.pad_min_len.max(0) as u64,
    )
    .min(i64::MAX as u64) as i64;
    if info.max_len > 0 && padded > info.max_len {
        let p = if padded != len as i64 {
            format!(" (padded to {padded})")
        } else {
            String::new()
        };
        return Err(input_err(format!(
            "{}: sequence length {len}{p} exceeds the compiled maximum {}",
            input.display(),
            info.max_len
        )));
    }
    let mask = match &args.mask {
        Some(p) => {
            let (s, m) = read_int(p, 2, "attention mask [B, L]")?;
            if s != ishape {
                return Err(input_err(format!(
                    "{}: attention mask: expected shape {ishape:?} (that of the token ids), found {s:?}",
                    p.display()
                )));
            }
            Some(m)
        }
        None => None,
    };
    // Hashing inputs.
    let n_lsh = info.n_lsh.max(0) as usize;
    let (h, d, r, half) = (
        info.heads.max(0) as usize,
        info.head_dim.max(0) as usize,
        info.rounds.max(0) as usize,
        info.rot_half.max(0) as usize,
    );
    let hashing = if n_lsh == 0 {
        if args.rotations.is_some() || args.buckets.is_some() {
            return Err(input_err(
                "this model has no LSH layer: --lsh-rotations/--lsh-buckets do not apply",
            ));
        }
        Hash::None
    } else if let Some(p) = &args.buckets {
        if info.variants & 4 == 0 {
            return Err(input_err(
                "this executable was compiled without the replayed-buckets variant",
            ));
        }
        let want = [n_lsh, batch, h, r * padded as usize];
        let (s, b) = read_int(p, 4, "LSH buckets [n_lsh_layers, B, H, r*L_padded]")?;
        if s != want {
            return Err(input_err(format!(
                "{}: LSH buckets: expected shape {want:?} ([n_lsh_layers, B, H, r*L_padded] with L_padded={padded}), found {s:?}",
                p.display()
            )));
        }
        // HF adds a padding bucket when the mask (given, or made by padding) pads.
        let pads = padded > len as i64 || mask.as_ref().is_some_and(|m| m.contains(&0));
        if info.n_buckets > 0 {
            let nb = i64::from(info.n_buckets) + i64::from(pads);
            reformc_runtime::attention::check_bucket_ids(&b, r, padded as usize, nb as u64)
                .map_err(|e| input_err(format!("{}: LSH buckets: {e}", p.display())))?;
        }
        Hash::Buckets(b, vec![n_lsh, batch, h, r, padded as usize])
    } else if let Some(p) = &args.rotations {
        if info.variants & 2 == 0 {
            return Err(input_err(
                "this executable was compiled without the rotations variant",
            ));
        }
        let want = vec![n_lsh, h, d, r, half];
        let a =
            npy::read(p).map_err(|e| input_err(format!("{}: LSH rotations: {e}", p.display())))?;
        let NpyData::F32(v) = a.data else {
            return Err(input_err(format!(
                "{}: LSH rotations [n_lsh_layers, H, d, r, S/2]: expected a float32 array of shape {want:?}, found dtype {}",
                p.display(),
                a.descr
            )));
        };
        if a.shape != want {
            return Err(input_err(format!(
                "{}: LSH rotations [n_lsh_layers, H, d, r, S/2]: expected shape {want:?}, found {:?}",
                p.display(),
                a.shape
            )));
        }
        if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(input_err(format!(
                "{}: LSH rotations: non-finite value {x} at flat index {i} (expected finite float32 values)",
                p.display()
            )));
        }
        Hash::Rot(v, want)
    } else {
        if info.variants & 1 == 0 {
            return Err(input_err(
                "this executable needs --lsh-rotations or --lsh-buckets",
            ));
        }
        Hash::Seed
    };
    let read_time = t_r.elapsed();
    Ok(Prepared {
        ishape,
        ids,
        mask,
        seed: [args.seed],
        hashing,
        load_time,
        read_time,
    })
}

reformc_runtime::c_abi! {
    section = "Executables (exe-runtime/src/exe_main.rs)";

    /// Entry point of generated executables: parses the command line, loads
    /// weights, reads and checks the `.npy` inputs, runs the model, writes the
    /// output. Returns the process exit status; never panics across the C boundary.
    ///
    /// # Safety
    /// `argv` holds `argc` NUL-terminated strings; `info` points to the model's
    /// constant description.
    unsafe fn reformc_exe_main(
        argc: i32,
        argv: *const *const c_char,
        info: *const ExeInfo,
    ) -> i32 {
        // SAFETY: forwarded contract.
        let args = unsafe { argv_strings(argc, argv) };
        if info.is_null() {
            eprintln!("error: no model description");
            return 1;
        }
        // SAFETY: `info` points to the generated constant.
        main_with(&args, unsafe { &*info })
    }
}

/// The `argc` strings of `argv`.
///
/// # Safety
/// `argv` is null or holds `argc` NUL-terminated strings.
pub(crate) unsafe fn argv_strings(argc: i32, argv: *const *const c_char) -> Vec<String> {
    if argv.is_null() {
        return Vec::new();
    }
    (0..argc.max(0) as usize)
        // SAFETY: argv holds argc pointers to C strings.
        .map(|i| c_text(unsafe { *argv.add(i) }))
        .collect()
}

/// Runs the command line `args` over the model `info` describes, printing
/// the error; returns the exit status (also for GPU executables, whose
/// [`ExeInfo`] [`crate::gpu_main`] makes).
pub(crate) fn main_with(args: &[String], info: &ExeInfo) -> i32 {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(args, info)));
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(Fail(msg, status))) => {
            eprintln!("error: {msg}");
            status
        }
        Err(_) => {
            eprintln!("error: internal failure (panic) in the model runtime");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flags_parse_in_both_forms() {
        let a = parse_args(&argv(&[
            "m",
            "--input",
            "a.npy",
            "--output=b.npy",
            "--threads",
            "2",
            "--seed=-3",
        ]))
        .unwrap_or_else(|f| panic!("{}", f.0));
        assert_eq!(a.input.unwrap(), PathBuf::from("a.npy"));
        assert_eq!(a.output.unwrap(), PathBuf::from("b.npy"));
        assert_eq!((a.threads, a.seed), (Some(2), -3));
        assert!(parse_args(&argv(&["m", "--bogus"])).is_err());
        assert!(parse_args(&argv(&["m", "--threads", "x"])).is_err());
        assert!(parse_args(&argv(&["m", "--input"])).is_err());
        assert!(parse_args(&argv(&["m", "--weights-mode=read"])).is_ok_and(|a| a.weights_read));
        assert!(parse_args(&argv(&["m", "--weights-mode", "embed"])).is_err());
        assert!(parse_args(&argv(&["m", "--lsh-rotations", "a", "--lsh-buckets", "b"])).is_err());
    }
}
