//! The command line of GPU executables (`reformc compile --target gpu
//! --emit exe`): the CPU executables' command line ([`crate::exe_main`]: the
//! same flags, input checks, output and exit statuses) over a model that runs
//! on the CUDA driver. The generated `main` passes a [`GpuExe`]; this module
//! makes the model functions the command line calls (load the weights into
//! managed memory once, run `@forward`) from it, plus `--device N`.

use crate::exe_main::{self, c_text, ExeInfo};
use crate::model_rt::{self, ReformcTensor};
use reformc_gpu_runtime as rt;
use std::ffi::{c_char, c_void};
use std::sync::{Mutex, OnceLock};

/// In C signatures: `void` (only generated code builds a [`GpuExe`]).
impl reformc_runtime::abi::CPointee for GpuExe {
    fn c_name() -> String {
        "void".into()
    }
}

/// What the generated `main` of a GPU executable describes (every integer
/// 8 bytes, so the C and Rust layouts agree without padding rules).
#[repr(C)]
pub struct GpuExe {
    /// Layout version ([`GPU_ABI_VERSION`]).
    pub abi_version: i64,
    /// The packed entry of each compiled variant
    /// (`_mlir__mlir_ciface_forward_<variant>`), by LSH source: seeded (or
    /// the one variant of a model without LSH layers), rotations, buckets;
    /// null where that variant was not compiled.
    pub forward: [Option<unsafe extern "C" fn(*mut *mut c_void)>; 3],
    /// The host code's static initialiser (loads the kernel module), or null.
    pub init: Option<unsafe extern "C" fn()>,
    /// Its finaliser, or null.
    pub deinit: Option<unsafe extern "C" fn()>,
    /// The weights in argument order, a line each: `name<TAB>d0,d1,...` (f32).
    pub weights: *const c_char,
    /// Each compiled variant's runtime inputs in argument order, a line
    /// each: `name<TAB>dtype code<TAB>rank` (null where `forward` is).
    pub inputs: [*const c_char; 3],
    /// Rank of the one f32 output.
    pub output_rank: i64,
    /// The PTX architecture (`sm_90`).
    pub gpu_arch: *const c_char,
    /// What [`ExeInfo`] of a CPU executable holds, field for field.
    pub model_name: *const c_char,
    /// See [`ExeInfo::output_name`].
    pub output_name: *const c_char,
    /// See [`ExeInfo::default_weights`].
    pub default_weights: *const c_char,
    /// The JSON signature `--signature` prints.
    pub signature: *const c_char,
    /// See [`ExeInfo::vocab_size`].
    pub vocab_size: i64,
    /// See [`ExeInfo::max_len`].
    pub max_len: i64,
    /// See [`ExeInfo::pad_multiple`].
    pub pad_multiple: i64,
    /// See [`ExeInfo::pad_min_len`].
    pub pad_min_len: i64,
    /// See [`ExeInfo::n_lsh`].
    pub n_lsh: i64,
    /// See [`ExeInfo::heads`].
    pub heads: i64,
    /// See [`ExeInfo::head_dim`].
    pub head_dim: i64,
    /// See [`ExeInfo::rounds`].
    pub rounds: i64,
    /// See [`ExeInfo::rot_half`]. ([`ExeInfo::variants`] comes from which
    /// `forward` entries are set.)
    pub rot_half: i64,
    /// See [`ExeInfo::n_buckets`].
    pub n_buckets: i64,
}

/// The layout of [`GpuExe`] this runtime reads.
pub const GPU_ABI_VERSION: i64 = 2;

/// The LSH source of each [`GpuExe::forward`] slot, for messages.
const SLOT_NAMES: [&str; 3] = ["seeded", "rotations", "buckets"];

/// One compiled variant: its entry and its runtime inputs.
struct Variant {
    forward: unsafe extern "C" fn(*mut *mut c_void),
    /// Name, dtype code and rank of each runtime input.
    inputs: Vec<(String, i32, usize)>,
}

/// The model's description and its weights on the device, for the model
/// functions below (the command line calls them without context).
struct Model {
    /// By [`GpuExe::forward`] slot.
    variants: [Option<Variant>; 3],
    init: Option<unsafe extern "C" fn()>,
    weights: Vec<(String, Vec<usize>)>,
    /// The input checks of [`GpuExe`], in its order.
    checks: [i64; 11],
    output_rank: usize,
    signature: String,
    /// The kernels' architecture (`sm_90`), checked against the device's.
    arch: String,
}

impl Model {
    /// How many inputs a run takes: input_ids, attention_mask and, with
    /// LSH layers, the hashing input (every variant takes as many).
    fn input_count(&self) -> usize {
        let n = self.variants.iter().flatten().map(|v| v.inputs.len());
        n.max().unwrap_or(0).max(2)
    }

    /// The variant `given`'s hashing input (the third) selects, as a CPU
    /// library matches its signatures: an i64 scalar is the seed, an f32
    /// array the rotations, an i64 array the buckets; without a third input,
    /// the first slot (a model without LSH layers).
    fn select(&self, given: &[ReformcTensor]) -> Result<&Variant, (i32, String)> {
        use model_rt::{code, dtype};
        let slot = match given.get(2) {
            None => 0,
            Some(t) if t.dtype == dtype::I64 && t.rank == 0 => 0,
            Some(t) if t.dtype == dtype::F32 => 1,
            Some(t) if t.dtype == dtype::I64 => 2,
            Some(t) => {
                return Err((
                    code::DTYPE,
                    format!(
                        "the hashing input (the third): expected an i64 seed [], f32 lsh_rotations or i64 lsh_buckets, found dtype code {}",
                        t.dtype
                    ),
                ))
            }
        };
        self.variants[slot].as_ref().ok_or_else(|| {
            let compiled: Vec<&str> = (0..3)
                .filter(|&i| self.variants[i].is_some())
                .map(|i| SLOT_NAMES[i])
                .collect();
            (
                code::ARGUMENT,
                format!(
                    "this model was compiled without the {} variant (compiled: {}); recompile without --lsh-source to carry all three",
                    SLOT_NAMES[slot],
                    compiled.join(", ")
                ),
            )
        })
    }
}

/// [`ExeInfo::variants`]' bits (1 seeded, 2 rotations, 4 buckets) of the
/// variants `g` carries.
fn variant_bits(g: &GpuExe) -> i64 {
    (0..3)
        .filter(|&i| g.forward[i].is_some())
        .map(|i| 1i64 << i)
        .sum()
}

/// A [`GpuExe::inputs`] list: `name<TAB>dtype<TAB>rank` lines.
fn input_list(text: &str) -> Result<Vec<(String, i32, usize)>, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            match f[..] {
                [name, dtype, rank] => Ok((
                    name.to_string(),
                    dtype.parse().map_err(|_| "bad input list")?,
                    rank.parse().map_err(|_| "bad input list")?,
                )),
                _ => Err("bad input list"),
            }
        })
        .collect::<Result<Vec<_>, &str>>()
        .map_err(str::to_string)
}

static MODEL: OnceLock<Model> = OnceLock::new();
/// A tensor in managed memory and its shape.
type Staged = (rt::Managed, Vec<usize>);
/// The weights in managed memory, in argument order.
static WEIGHTS: Mutex<Vec<Staged>> = Mutex::new(Vec::new());

fn model() -> &'static Model {
    MODEL
        .get()
        .expect("reformc_gpu_exe_main sets the model first")
}

/// `--device N`, taken out of `argv` (the shared parser does not know it).
fn take_device(argv: &mut Vec<String>) -> Result<i32, String> {
    let Some(at) = argv
        .iter()
        .position(|a| a == "--device" || a.starts_with("--device="))
    else {
        return Ok(0);
    };
    let flag = argv.remove(at);
    let value = match flag.split_once('=') {
        Some((_, v)) => v.to_string(),
        None if at < argv.len() => argv.remove(at),
        None => return Err("--device needs a value".into()),
    };
    value
        .parse::<i32>()
        .ok()
        .filter(|d| *d >= 0)
        .ok_or_else(|| {
            format!(
                "--device: `{}` is not a device index",
                reformc_tensor::shown(&value)
            )
        })
}

/// Loads the driver and selects `device`, checking it against the kernels'
/// architecture (`sm_XY` needs compute capability X.Y or newer).
fn open_device(device: i32) -> Result<(), String> {
    let arch = model().arch.as_str();
    let info = rt::select_device(device).map_err(|e| e.to_string())?;
    let digits: Vec<i32> = arch
        .trim_start_matches("sm_")
        .chars()
        .filter_map(|c| c.to_digit(10).map(|d| d as i32))
        .collect();
    let need = match digits[..] {
        [major, minor] => (major, minor),
        _ => {
            return Err(format!(
                "this executable names an unknown architecture `{arch}`"
            ))
        }
    };
    if info.capability < need {
        return Err(format!(
            "this executable's kernels are for {arch} but device {device} ({}) is sm_{}{}; compile with --gpu-arch sm_{}{} or older",
            info.name, info.capability.0, info.capability.1, info.capability.0, info.capability.1
        ));
    }
    Ok(())
}

/// `reformc_model_load_weights` of a GPU model: every weight of the file,
/// checked against the compiled list (f32, shape), copied to managed memory.
unsafe extern "C" fn gpu_load_weights(path: *const c_char) -> i32 {
    let path = c_text(path);
    match load_weights(std::path::Path::new(&path)) {
        Ok(w) => {
            *WEIGHTS.lock().unwrap_or_else(|p| p.into_inner()) = w;
            model_rt::set_error(0, "")
        }
        Err((code, e)) => model_rt::set_error(code, &format!("{path}: {e}")),
    }
}

/// The weights of the file at `path` in managed memory; `Err` is a status
/// code and a message.
fn load_weights(path: &std::path::Path) -> Result<Vec<Staged>, (i32, String)> {
    use model_rt::code;
    let bytes = std::fs::read(path).map_err(|e| (code::WEIGHTS_IO, e.to_string()))?;
    let (entries, start) = reformc_tensor::safetensors::parse(&bytes, bytes.len() as u64)
        .map_err(|e| (code::WEIGHTS_FORMAT, e))?;
    let mut out = Vec::new();
    for (name, shape) in &model().weights {
        let e = entries.iter().find(|e| &e.name == name).ok_or_else(|| {
            (
                code::WEIGHTS_MISMATCH,
                format!("no tensor `{name}` (the model needs it)"),
            )
        })?;
        let dims: Vec<usize> = e.shape.iter().map(|&d| d as usize).collect();
        if e.dtype != "F32" || &dims != shape {
            return Err((
                code::WEIGHTS_MISMATCH,
                format!(
                    "tensor `{name}`: expected F32 {shape:?}, found {} {dims:?}",
                    e.dtype
                ),
            ));
        }
        let (b, n) = ((start + e.begin) as usize, (start + e.end) as usize);
        out.push((rt::Managed::from_bytes(&bytes[b..n]), dims));
    }
    staged(out)
}

/// `out`, or the device's first error while staging it (status code and
/// message).
fn staged(out: Vec<Staged>) -> Result<Vec<Staged>, (i32, String)> {
    match rt::take_error() {
        Some(e) => Err((run_error_code(&e), e.message)),
        None => Ok(out),
    }
}

/// The caller's `n` f32 arrays (`ptrs`, in the model's weight order) copied
/// into managed memory; `Err` is a status code and a message.
///
/// # Safety
/// `ptrs` is null or holds `n` pointers, each null or to as many f32 values
/// as its weight has.
unsafe fn stage_arrays(ptrs: *const *const c_void, n: i64) -> Result<Vec<Staged>, (i32, String)> {
    let want = &model().weights;
    let bad = || {
        (
            model_rt::code::ARGUMENT,
            format!(
                "expected {} non-NULL pointers in the signature's weight order",
                want.len()
            ),
        )
    };
    if n != want.len() as i64 || (ptrs.is_null() && n > 0) {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(want.len());
    for (i, (_, shape)) in want.iter().enumerate() {
        // SAFETY: `ptrs` holds n = want.len() pointers (checked; contract).
        let p = unsafe { *ptrs.add(i) };
        if p.is_null() {
            return Err(bad());
        }
        let bytes = shape.iter().product::<usize>() * std::mem::size_of::<f32>();
        // SAFETY: p points to the weight's f32 values (contract).
        let host = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), bytes) };
        out.push((rt::Managed::from_bytes(host), shape.clone()));
    }
    staged(out)
}

/// The status code of a failure on the device.
fn run_error_code(e: &rt::RunError) -> i32 {
    if e.out_of_memory {
        model_rt::code::OUT_OF_MEMORY
    } else {
        model_rt::code::KERNEL
    }
}

/// Checks the caller's tensors against the model, as the CPU library's
/// generated checks do: dtypes, ranks, the mask's and the hashing input's
/// shapes, token ids within the vocabulary, the length limit, bucket ids in
/// range. `Err` is a status code and a message.
///
/// # Safety
/// Each tensor is readable and its data (when not null) holds its shape's
/// elements.
unsafe fn check_inputs(
    m: &Model,
    v: &Variant,
    given: &[ReformcTensor],
) -> Result<(), (i32, String)> {
    use model_rt::code;
    let shape = |t: &ReformcTensor| -> Vec<usize> {
        let r = t.rank.clamp(0, model_rt::MAX_RANK as i32) as usize;
        t.shape[..r].iter().map(|&d| d.max(0) as usize).collect()
    };
    let by_name = |name: &str| match name {
        "input_ids" => 0,
        "attention_mask" => 1,
        _ => 2,
    };
    for (name, dtype, rank) in &v.inputs {
        let t = &given[by_name(name)];
        if t.dtype != *dtype {
            return Err((
                code::DTYPE,
                format!(
                    "input `{name}`: expected dtype code {dtype}, found {}",
                    t.dtype
                ),
            ));
        }
        if t.rank as usize != *rank {
            return Err((
                code::RANK,
                format!("input `{name}`: expected rank {rank}, found {}", t.rank),
            ));
        }
        if t.data.is_null() && name != "attention_mask" {
            return Err((code::ARGUMENT, format!("input `{name}`: data is NULL")));
        }
    }
    let ids_shape = shape(&given[0]);
    let (batch, len) = (ids_shape[0], ids_shape[1]);
    if batch == 0 || len == 0 {
        return Err((code::SHAPE, format!("input_ids: empty shape {ids_shape:?}")));
    }
    let [vocab, max_len, pad_multiple, pad_min_len, n_lsh, heads, head_dim, rounds, rot_half, _, n_buckets] =
        m.checks;
    // SAFETY: ids hold batch*len i64 values (checked dtype and rank).
    let ids = unsafe { std::slice::from_raw_parts(given[0].data as *const i64, batch * len) };
    if let Some(&id) = ids.iter().find(|&&v| v < 0 || (vocab > 0 && v >= vocab)) {
        return Err((
            code::VALUE,
            format!("input_ids: token id {id} is out of range (0 <= id < {vocab})"),
        ));
    }
    let padded = reformc_ir::hf_rules::padded_len(
        len as u64,
        pad_multiple.max(1) as u64,
        pad_min_len.max(0) as u64,
    ) as usize;
    if max_len > 0 && padded as i64 > max_len {
        return Err((
            code::SHAPE,
            format!(
                "sequence length {len} (padded {padded}) exceeds the compiled maximum {max_len}"
            ),
        ));
    }
    if !given[1].data.is_null() && shape(&given[1]) != ids_shape {
        return Err((
            code::SHAPE,
            format!(
                "attention_mask: expected shape {ids_shape:?}, found {:?}",
                shape(&given[1])
            ),
        ));
    }
    let (l, h, d, r, half) = (
        n_lsh as usize,
        heads as usize,
        head_dim as usize,
        rounds as usize,
        rot_half as usize,
    );
    if let Some((name, _, _)) = v.inputs.iter().find(|(n, _, _)| by_name(n) == 2) {
        let want = match name.as_str() {
            "lsh_rotations" => vec![l, h, d, r, half],
            "lsh_buckets" => vec![l, batch, h, r, padded],
            _ => vec![],
        };
        if shape(&given[2]) != want {
            return Err((
                code::SHAPE,
                format!(
                    "{name}: expected shape {want:?}, found {:?}",
                    shape(&given[2])
                ),
            ));
        }
        if name == "lsh_buckets" && n_buckets > 0 {
            let n: usize = want.iter().product();
            // SAFETY: the buckets hold `n` i64 values (checked shape and dtype).
            let b = unsafe { std::slice::from_raw_parts(given[2].data as *const i64, n) };
            // The padding bucket counts when the sequence is padded or masked.
            let nb = n_buckets + 1;
            if let Some(&v) = b.iter().find(|&&v| v < 0 || v >= nb) {
                return Err((
                    code::VALUE,
                    format!("lsh_buckets: bucket id {v} is out of range (0 <= id < {nb})"),
                ));
            }
        }
    }
    Ok(())
}

/// The bytes and shape of a command-line tensor (`data` may be null for an
/// absent mask: all ones of the ids' shape).
///
/// # Safety
/// `t` describes a live contiguous array of its dtype and shape, or has null data.
unsafe fn tensor_bytes<'t>(
    t: &'t ReformcTensor,
    ones_like: &[usize],
) -> (std::borrow::Cow<'t, [u8]>, Vec<usize>) {
    let rank = t.rank.clamp(0, model_rt::MAX_RANK as i32) as usize;
    let shape: Vec<usize> = t.shape[..rank].iter().map(|&d| d.max(0) as usize).collect();
    if t.data.is_null() {
        let n: usize = ones_like.iter().product();
        let ones: Vec<u8> = (0..n).flat_map(|_| 1i64.to_le_bytes()).collect();
        return (ones.into(), ones_like.to_vec());
    }
    let n = shape.iter().product::<usize>() * model_rt::dtype_size(t.dtype);
    // SAFETY: the caller promises `n` readable bytes at `data`, alive while
    // `t` is borrowed.
    let bytes = unsafe { std::slice::from_raw_parts(t.data as *const u8, n) };
    (bytes.into(), shape)
}

/// `reformc_model_run` of a GPU model: inputs `[ids, mask, hashing]` as the
/// command line passes them, mapped by name onto `@forward`'s inputs; one
/// f32 output, copied to host memory the caller owns.
unsafe extern "C" fn gpu_run(
    inputs: *const ReformcTensor,
    n_inputs: i64,
    outputs: *mut ReformcTensor,
    n_outputs: i64,
) -> i32 {
    let m = model();
    let want = m.input_count();
    if inputs.is_null() || outputs.is_null() || n_inputs != want as i64 || n_outputs != 1 {
        return model_rt::set_error(
            model_rt::code::ARGUMENT,
            &format!(
                "the model takes {want} inputs (input_ids, attention_mask{}) and 1 output; got {n_inputs} and {n_outputs}",
                if want > 2 { ", the hashing input" } else { "" }
            ),
        );
    }
    // SAFETY: the command line passes `n_inputs` tensors and one output slot.
    let given = unsafe { std::slice::from_raw_parts(inputs, n_inputs as usize) };
    let v = match m.select(given) {
        Ok(v) => v,
        Err((code, e)) => return model_rt::set_error(code, &e),
    };
    // SAFETY: the caller's tensors are readable (the ABI's contract).
    if let Err((code, e)) = unsafe { check_inputs(m, v, given) } {
        return model_rt::set_error(code, &e);
    }
    let ids_shape: Vec<usize> = given[0].shape[..2].iter().map(|&d| d as usize).collect();
    let mut staged = Vec::new();
    for (name, _, _) in &v.inputs {
        let t = match name.as_str() {
            "input_ids" => &given[0],
            "attention_mask" => &given[1],
            _ => &given[2],
        };
        // SAFETY: the command line's tensors are live arrays (or a null mask).
        let (bytes, shape) = unsafe { tensor_bytes(t, &ids_shape) };
        staged.push((rt::Managed::from_bytes(&bytes), shape));
    }
    static INIT: std::sync::Once = std::sync::Once::new();
    if let Some(init) = m.init {
        // SAFETY: the host code's initialiser, run once before `@forward`.
        INIT.call_once(|| unsafe { init() });
    }
    let weights = WEIGHTS.lock().unwrap_or_else(|p| p.into_inner());
    let mut descs: Vec<Vec<i64>> = weights
        .iter()
        .chain(staged.iter())
        .map(|(b, s)| b.descriptor(s))
        .collect();
    let mut result = vec![0i64; 3 + 2 * m.output_rank];
    // SAFETY: `forward` is the module's packed entry; the descriptors match
    // its arguments (weights then inputs, as compiled) over live buffers.
    unsafe { rt::call_packed(v.forward, &mut result, &mut descs) };
    drop(weights);
    let failed = rt::take_error();
    let out = if failed.is_none() {
        // SAFETY: the result descriptor the call filled, synchronised.
        Some(unsafe { copy_out(&result, m.output_rank) })
    } else {
        None
    };
    if result[0] != 0 {
        // SAFETY: the result buffer the call handed over, freed once.
        unsafe { rt::free_managed(result[0] as *mut c_void) };
    }
    match (failed, out) {
        (Some(e), _) => model_rt::set_error(run_error_code(&e), &e.message),
        (None, Some(Err(e))) => model_rt::set_error(model_rt::code::OUT_OF_MEMORY, &e),
        (None, Some(Ok(t))) => {
            // SAFETY: one writable output slot.
            unsafe { *outputs = t };
            model_rt::set_error(0, "")
        }
        (None, None) => model_rt::set_error(model_rt::code::KERNEL, "no output"),
    }
}

extern "C" {
    fn malloc(size: usize) -> *mut c_void;
}

/// The f32 result of descriptor `d` as a contiguous tensor in C heap memory
/// (released by `reformc_tensor_release`).
///
/// # Safety
/// `d` describes a live f32 buffer of rank `rank`.
unsafe fn copy_out(d: &[i64], rank: usize) -> Result<ReformcTensor, String> {
    let shape: Vec<usize> = d[3..3 + rank].iter().map(|&s| s.max(0) as usize).collect();
    let bytes = shape.iter().product::<usize>() * 4;
    // SAFETY: plain allocation, checked below.
    let p = unsafe { malloc(bytes.max(1)) };
    if p.is_null() {
        return Err(format!("out of host memory for the output ({bytes} bytes)"));
    }
    // SAFETY: `d` is a live f32 memref of `shape` (the contract) and `p` a
    // dense buffer of the same shape.
    unsafe { rt::copy_strided(4, d, &rt::descriptor(p as i64, &shape)) };
    let mut t = exe_main::tensor(model_rt::dtype::F32, &shape, p);
    t.owns_data = 1;
    Ok(t)
}

unsafe extern "C" fn gpu_signature() -> *const c_char {
    static TEXT: OnceLock<std::ffi::CString> = OnceLock::new();
    TEXT.get_or_init(|| std::ffi::CString::new(model().signature.clone()).unwrap_or_default())
        .as_ptr()
}

/// Sets the model from `exe` (once per process) for the library entries.
///
/// # Safety
/// `exe` is null or points to the generated description.
unsafe fn ensure_model(exe: *const GpuExe) -> Result<(), i32> {
    if MODEL.get().is_some() {
        return Ok(());
    }
    if exe.is_null() {
        return Err(model_rt::set_error(
            model_rt::code::ARGUMENT,
            "no model description",
        ));
    }
    // SAFETY: see the contract.
    let g = unsafe { &*exe };
    let m = describe(g).map_err(|e| model_rt::set_error(model_rt::code::ARGUMENT, &e))?;
    let _ = MODEL.set(m);
    Ok(())
}

/// Device 0 (checked against the kernels' architecture) unless the library's
/// caller selected one.
fn ensure_device() -> Result<(), i32> {
    if rt::device_info().is_some() {
        return Ok(());
    }
    open_device(0).map_err(|e| model_rt::set_error(model_rt::code::KERNEL, &e))
}

/// The [`ExeInfo`] the shared command line runs, from `g`.
fn exe_info(g: &GpuExe) -> ExeInfo {
    ExeInfo {
        abi_version: 1,
        weights_embedded: 0,
        run: Some(gpu_run),
        load_weights: Some(gpu_load_weights),
        signature: Some(gpu_signature),
        last_error: Some(model_rt::rc_model_last_error),
        default_weights: g.default_weights,
        model_name: g.model_name,
        output_name: g.output_name,
        default_threads: 0,
        vocab_size: g.vocab_size,
        max_len: g.max_len,
        pad_multiple: g.pad_multiple,
        pad_min_len: g.pad_min_len,
        n_lsh: g.n_lsh,
        heads: g.heads,
        head_dim: g.head_dim,
        rounds: g.rounds,
        rot_half: g.rot_half,
        variants: variant_bits(g) as i32,
        n_buckets: g.n_buckets as i32,
        train: 0,
        causal: 0,
        labels_index: -1,
        output_names: std::ptr::null(),
        step_seed: 0,
    }
}

/// The compiled model from `g`'s text fields.
fn describe(g: &GpuExe) -> Result<Model, String> {
    if g.abi_version != GPU_ABI_VERSION {
        return Err(format!(
            "the model description has layout version {} but this runtime reads version {GPU_ABI_VERSION}: rebuild it with this reformc",
            g.abi_version
        ));
    }
    let weights = c_text(g.weights)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, dims) = l.split_once('\t').ok_or("bad weight list")?;
            let dims = dims
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.parse::<usize>().map_err(|_| "bad weight list"))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((name.to_string(), dims))
        })
        .collect::<Result<Vec<_>, &str>>()?;
    let mut variants: [Option<Variant>; 3] = [None, None, None];
    for (slot, (forward, inputs)) in g.forward.iter().zip(g.inputs).enumerate() {
        if let Some(forward) = *forward {
            let inputs = input_list(&c_text(inputs))?;
            variants[slot] = Some(Variant { forward, inputs });
        }
    }
    if variants.iter().all(Option::is_none) {
        return Err("the executable has no compiled variant".into());
    }
    Ok(Model {
        init: g.init,
        weights,
        variants,
        checks: [
            g.vocab_size,
            g.max_len,
            g.pad_multiple,
            g.pad_min_len,
            g.n_lsh,
            g.heads,
            g.head_dim,
            g.rounds,
            g.rot_half,
            variant_bits(g),
            g.n_buckets,
        ],
        output_rank: g.output_rank.max(0) as usize,
        signature: c_text(g.signature),
        arch: c_text(g.gpu_arch),
    })
}

reformc_runtime::c_abi! {
    section = "GPU executables and libraries (exe-runtime/src/gpu_main.rs)";

    /// `reformc_model_load_weights` of a GPU library (its generated C file
    /// passes the model description): the F32 safetensors file, checked
    /// against the model's weights, copied once into managed memory on the
    /// selected device (device 0 unless `reformc_gpu_model_set_device` chose).
    ///
    /// # Safety
    /// `exe` points to the generated description; `path` is a C string.
    unsafe fn reformc_gpu_model_load_weights(exe: *const GpuExe, path: *const c_char) -> i32 {
        // SAFETY: forwarded contract.
        if let Err(code) = unsafe { ensure_model(exe) }.and_then(|_| ensure_device()) {
            return code;
        }
        // SAFETY: forwarded contract.
        unsafe { gpu_load_weights(path) }
    }

    /// `reformc_model_set_weights` of a GPU library: `n` f32 arrays in the
    /// signature's weight order, each copied into managed memory on the
    /// selected device (the caller may free them on return); on failure the
    /// weights loaded before stay.
    ///
    /// # Safety
    /// `exe` points to the generated description; `ptrs` is null or holds
    /// `n` pointers, each null or to as many f32 values as its weight has.
    unsafe fn reformc_gpu_model_set_weights(
        exe: *const GpuExe,
        ptrs: *const *const c_void,
        n: i64,
    ) -> i32 {
        // SAFETY: forwarded contract.
        if let Err(code) = unsafe { ensure_model(exe) }.and_then(|_| ensure_device()) {
            return code;
        }
        // SAFETY: forwarded contract.
        match unsafe { stage_arrays(ptrs, n) } {
            Ok(w) => {
                *WEIGHTS.lock().unwrap_or_else(|p| p.into_inner()) = w;
                model_rt::set_error(0, "")
            }
            Err((code, e)) => model_rt::set_error(code, &format!("reformc_model_set_weights: {e}")),
        }
    }

    /// `reformc_model_run` of a GPU library: inputs (input_ids, attention_mask,
    /// then the hashing input the library was compiled with) checked as the
    /// CPU library checks them, run on the device, one owned f32 output.
    ///
    /// # Safety
    /// As `reformc_model_run`; `exe` points to the generated description.
    unsafe fn reformc_gpu_model_run(
        exe: *const GpuExe,
        inputs: *const ReformcTensor,
        n_inputs: i64,
        outputs: *mut ReformcTensor,
        n_outputs: i64,
    ) -> i32 {
        // SAFETY: forwarded contract.
        if let Err(code) = unsafe { ensure_model(exe) }.and_then(|_| ensure_device()) {
            return code;
        }
        if WEIGHTS.lock().unwrap_or_else(|p| p.into_inner()).is_empty() && !model().weights.is_empty() {
            return model_rt::set_error(model_rt::code::NO_WEIGHTS, "no weights loaded: call reformc_model_load_weights first");
        }
        // SAFETY: forwarded contract.
        unsafe { gpu_run(inputs, n_inputs, outputs, n_outputs) }
    }

    /// Frees the weights in device memory.
    ///
    /// # Safety
    /// No run may be in progress.
    unsafe fn reformc_gpu_model_unload_weights() {
        WEIGHTS.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The model's JSON signature (the MLIR backend's, weights as arguments).
    ///
    /// # Safety
    /// `exe` points to the generated description.
    unsafe fn reformc_gpu_model_signature(exe: *const GpuExe) -> *const c_char {
        // SAFETY: forwarded contract.
        if unsafe { ensure_model(exe) }.is_err() {
            return c"".as_ptr();
        }
        // SAFETY: no precondition.
        unsafe { gpu_signature() }
    }

    /// Selects the CUDA device later loads and runs use (before the first
    /// load; a process uses one device). Returns 0, or a status code with the
    /// reason in `reformc_model_last_error` (no driver, no such device, a
    /// device older than the kernels' architecture).
    ///
    /// # Safety
    /// `exe` points to the generated description.
    unsafe fn reformc_gpu_model_set_device(exe: *const GpuExe, device: i32) -> i32 {
        // SAFETY: forwarded contract.
        if let Err(code) = unsafe { ensure_model(exe) } {
            return code;
        }
        match open_device(device) {
            Ok(()) => model_rt::set_error(0, ""),
            Err(e) => model_rt::set_error(model_rt::code::ARGUMENT, &e),
        }
    }

    /// Entry point of GPU executables: `--device N` (default 0) then the
    /// command line of CPU executables, with the weights loaded into CUDA
    /// managed memory once and `@forward` run on the selected device.
    /// Returns the process exit status; never panics across the C boundary.
    ///
    /// # Safety
    /// `argv` holds `argc` NUL-terminated strings; `exe` points to the
    /// generated constant description.
    unsafe fn reformc_gpu_exe_main(
        argc: i32,
        argv: *const *const c_char,
        exe: *const GpuExe,
    ) -> i32 {
        // SAFETY: forwarded contract.
        let mut args = unsafe { exe_main::argv_strings(argc, argv) };
        if exe.is_null() {
            eprintln!("error: no model description");
            return 1;
        }
        // SAFETY: `exe` points to the generated constant.
        let g = unsafe { &*exe };
        let device = match take_device(&mut args) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        };
        // SAFETY: `exe` points to the generated constant.
        if unsafe { ensure_model(exe) }.is_err() {
            eprintln!("error: {}", model_rt::last_error());
            return 1;
        }
        let info = exe_info(g);
        let asks_only = args.iter().any(|a| matches!(a.as_str(), "--help" | "-h" | "--signature"));
        if !asks_only {
            if let Err(e) = open_device(device) {
                eprintln!("error: {e}");
                return 2;
            }
        }
        let status = exe_main::main_with(&args, &info);
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("  --device N              the CUDA device to run on (default 0)");
        }
        if let (Some(deinit), false) = (g.deinit, asks_only) {
            // SAFETY: the host code's finaliser, after the last run.
            unsafe { deinit() };
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exe_main::tensor;
    use model_rt::dtype;

    unsafe extern "C" fn entry(_: *mut *mut c_void) {}

    /// A model carrying the variants of `slots`.
    fn model(slots: [bool; 3]) -> Model {
        let inputs = |hash: &str| vec![("input_ids".to_string(), 3, 2), (hash.to_string(), 3, 0)];
        let variant = |i: usize| {
            slots[i].then(|| Variant {
                forward: entry,
                inputs: inputs(SLOT_NAMES[i]),
            })
        };
        Model {
            variants: [variant(0), variant(1), variant(2)],
            init: None,
            weights: vec![],
            checks: [0; 11],
            output_rank: 3,
            signature: String::new(),
            arch: "sm_90".into(),
        }
    }

    /// The slot `select` picked (by the input list it returned).
    fn picked(m: &Model, given: &[ReformcTensor]) -> Result<&'static str, (i32, String)> {
        let v = m.select(given)?;
        let name = v.inputs[1].0.clone();
        Ok(SLOT_NAMES.iter().find(|n| **n == name).copied().unwrap())
    }

    #[test]
    fn the_hashing_input_selects_the_variant() {
        let all = model([true, true, true]);
        let none = std::ptr::null();
        let ids = tensor(dtype::I64, &[1, 4], none);
        let with = |t: ReformcTensor| vec![ids, ids, t];
        assert_eq!(
            picked(&all, &with(tensor(dtype::I64, &[], none))),
            Ok("seeded")
        );
        assert_eq!(
            picked(&all, &with(tensor(dtype::F32, &[1, 2, 3, 4, 5], none))),
            Ok("rotations")
        );
        assert_eq!(
            picked(&all, &with(tensor(dtype::I64, &[1, 1, 2, 1, 8], none))),
            Ok("buckets")
        );
        assert_eq!(picked(&all, &[ids, ids]), Ok("seeded"));
        assert_eq!(all.input_count(), 2);
        let err = picked(&all, &with(tensor(dtype::F64, &[], none))).unwrap_err();
        assert_eq!(err.0, model_rt::code::DTYPE, "{}", err.1);
        let only = model([false, false, true]);
        let err = picked(&only, &with(tensor(dtype::I64, &[], none))).unwrap_err();
        assert!(
            err.0 == model_rt::code::ARGUMENT
                && err
                    .1
                    .contains("without the seeded variant (compiled: buckets)"),
            "{}",
            err.1
        );
    }

    #[test]
    fn input_lists_parse_or_say_why_not() {
        assert_eq!(
            input_list("input_ids\t3\t2\nseed\t3\t0\n").unwrap(),
            vec![("input_ids".to_string(), 3, 2), ("seed".to_string(), 3, 0)]
        );
        assert!(input_list("input_ids\t3\n").is_err());
        assert!(input_list("input_ids\tx\t2\n").is_err());
    }
}
