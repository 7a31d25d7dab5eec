//! reformc's LLVM CPU backend.
//!
//! Compiles IR graphs (model ops as the frontend emits them, `seq_chunk`
//! regions, `attention {kv_chunk}`, elementwise and layout tensor ops) to LLVM
//! IR with inkwell. The generated code binds the symbolic dims `B`, `L` from
//! the input shapes and `P` by the padding rule at run time, validates its
//! inputs (error codes and messages, never an abort), allocates and frees
//! intermediate buffers by a static liveness plan, generates loops for the
//! cheap ops and calls the `reformc-runtime` kernels (`runtime/ABI.md`) for
//! the heavy ones.
//!
//! Artifacts: MCJIT in process ([`jit_run`], [`JitModel`]), object files,
//! LLVM/assembly text, standalone executables and shared libraries with a
//! `model.h` header ([`aot`]).

#![deny(missing_docs)]

pub mod abi;
pub mod aot;
mod codegen;
mod error;
pub mod jit;
pub mod runtime_lib;
pub mod signature;
pub mod target;

pub use codegen::DimLimit;
pub use error::{BackendError, Result};
pub use jit::{jit_run, jit_run_with, set_threads, JitModel};
/// The static buffer plan generated code follows; planned by `reformc_passes::buffer_plan`
/// (one planner, shared with `reformc explain`).
pub use reformc_passes::buffer_plan::{BufferPlan as MemoryPlan, FusionSummary, PlannedBuffer};
/// Largest thread count the compiled runtime accepts (`--threads`).
pub use reformc_runtime::pool::MAX_THREADS;

/// The LLVM context a [`build_module`] or [`JitModel`] lives in.
pub use inkwell::context::Context;
use inkwell::module::Module;
/// A function of a [`CompiledModule`]'s module.
pub use inkwell::values::FunctionValue;
use reformc_ir::{Graph, TensorType};
use std::collections::BTreeMap;

/// One graph compiled into a module. Several variants (same weights and
/// outputs, different inputs: e.g. seeded, rotations or replayed buckets for
/// LSH models) share one `reformc_model_run`, which picks the variant whose
/// input count, dtypes and ranks match.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Short name (`seeded`, `rotations`, `buckets`, `main`).
    pub name: String,
    /// The graph (verified).
    pub graph: Graph,
}

/// What a standalone executable needs to know about the model to validate
/// its command-line inputs like `reformc run` does (baked into the object).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExeInfo {
    /// Shown by `--help`.
    pub model_name: String,
    /// Name of the output (`logits`, `last_hidden_state`).
    pub output_name: String,
    /// Safetensors path used when `--weights` is not given (None: embedded or required).
    pub default_weights: Option<String>,
    /// Thread count when `--threads` is not given (0: all cores).
    pub default_threads: i64,
    /// Token ids must be in `[0, vocab_size)` (<= 0: unchecked).
    pub vocab_size: i64,
    /// Largest padded length accepted (<= 0: no limit).
    pub max_len: i64,
    /// Padding rule: pad to a multiple of `pad_multiple` when longer than `pad_min_len`.
    pub pad_multiple: i64,
    /// See `pad_multiple`.
    pub pad_min_len: i64,
    /// Number of LSH layers (0: `--lsh-*` and `--seed` do not apply).
    pub n_lsh: i64,
    /// Attention heads (for the shapes of `--lsh-*` files).
    pub heads: i64,
    /// Per-head width.
    pub head_dim: i64,
    /// Hash rounds.
    pub rounds: i64,
    /// Rotation half width S/2.
    pub rot_half: i64,
    /// Variants present: bit 0 seeded, bit 1 rotations, bit 2 buckets.
    pub variants: i32,
    /// LSH buckets per round without the padding bucket, for the range check
    /// of `--lsh-buckets` (<= 0: unchecked).
    pub n_buckets: i32,
    /// Set when the graphs are a training step (`reformc compile --train`):
    /// the executable then takes labels and writes gradients.
    pub step: Option<StepInfo>,
}

/// What a training-step executable needs beyond [`ExeInfo`]: where the
/// labels go among the inputs, how they are aligned, and the output names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepInfo {
    /// Causal LM: position t predicts label t+1 (the executable shifts the labels).
    pub causal: bool,
    /// Position of the `labels` input in the first variant's inputs (the
    /// last input of every variant).
    pub labels_index: i32,
    /// Every variant takes `seed` (the dropout masks' key), before its
    /// replayed hashing input if it has one.
    pub seed: bool,
    /// The step's outputs in order (`loss`, then `grad:<weight>` ...).
    pub output_names: Vec<String>,
}

/// How weights reach the compiled model.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightsMode {
    /// Loaded at run time (`reformc_model_load_weights` memory-maps a
    /// safetensors file; `reformc_model_set_weights` takes caller memory).
    Runtime,
    /// Baked into the object as constants, one little-endian f32 byte array
    /// per weight in [`weight_table`] order.
    Embedded(Vec<Vec<u8>>),
}

/// Choices for building a module.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Name used in the signature and `model.h`.
    pub model_name: String,
    /// CPU and features the code is tuned for (host by default).
    pub target: target::TargetSpec,
    /// Limits checked when symbols are bound (e.g. `P <= max_position_embeddings`).
    pub limits: Vec<DimLimit>,
    /// Tensor names a weights file may hold beyond the model's (e.g. `lm_head.bias`).
    pub allowed_extra_weights: Vec<String>,
    /// Baked-in default weights path (reported in the signature).
    pub default_weights: Option<String>,
    /// Time every op; executables print the table after a run, and
    /// [`reformc_runtime::profile::report`] reads it in-process.
    pub profile: bool,
    /// LSH buckets per round without the padding bucket: when set, the
    /// generated entry checks the ids of an `lsh_buckets` input against the
    /// range rule (`rc_check_lsh_buckets`) before any kernel sees them.
    pub lsh_buckets_per_round: Option<u64>,
    /// Replaces the `reformc_` of every exported function (and `model.h`'s
    /// declarations) with `PREFIX_`, so that several models link into one
    /// program; `None` keeps the `reformc_*` names.
    pub symbol_prefix: Option<String>,
    /// `--precision bf16`: every run multiplies GEMM operands rounded to bf16
    /// with f32 accumulation (the runtime's `rc_set_gemm_bf16` around the
    /// model's work); everything else stays f32.
    pub bf16: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            model_name: "model".into(),
            target: target::TargetSpec::host(),
            limits: vec![],
            allowed_extra_weights: vec![],
            default_weights: None,
            profile: false,
            lsh_buckets_per_round: None,
            symbol_prefix: None,
            bf16: false,
        }
    }
}

/// A module built from graph variants, not yet optimised.
pub struct CompiledModule<'ctx> {
    /// The LLVM module.
    pub module: Module<'ctx>,
    /// Weight table: name and type, in the order of `reformc_model_set_weights`.
    pub weights: Vec<(String, TensorType)>,
    /// The JSON `reformc_model_signature()` returns.
    pub signature: String,
    /// `model.h` text.
    pub header: String,
    /// The static buffer plan of each variant.
    pub plans: Vec<(String, MemoryPlan)>,
}

/// The weights of all variants (union by name, first-seen order); a name
/// used with two different types is an error.
pub fn weight_table(variants: &[Variant]) -> Result<Vec<(String, TensorType)>> {
    let mut out: Vec<(String, TensorType)> = Vec::new();
    for v in variants {
        for (name, id) in v.graph.weights() {
            let ty = v.graph.ty(id).clone();
            match out.iter().find(|(n, _)| n == name) {
                Some((_, t)) if *t != ty => {
                    return Err(BackendError::Input(format!(
                        "weight `{name}` has type {t} in one variant and {ty} in another"
                    )))
                }
                Some(_) => {}
                None => out.push((name.to_string(), ty)),
            }
        }
    }
    Ok(out)
}

/// Builds the module for `variants`: one internal function per variant, the
/// dispatcher `reformc_model_run`, weights entry points, the signature and,
/// when `exe` is given, a C `main` that runs the runtime's command line.
pub fn build_module<'ctx>(
    ctx: &'ctx Context,
    variants: &[Variant],
    opts: &CompileOptions,
    weights_mode: &WeightsMode,
    exe: Option<&ExeInfo>,
) -> Result<CompiledModule<'ctx>> {
    if variants.is_empty() {
        return Err(BackendError::Input("no graph to compile".into()));
    }
    for v in variants {
        reformc_ir::verify(&v.graph).map_err(|e| {
            BackendError::Input(format!("variant `{}` does not verify: {e}", v.name))
        })?;
    }
    let n_out = variants[0].graph.outputs.len();
    let out_types: Vec<_> = variants[0]
        .graph
        .outputs
        .iter()
        .map(|(n, id)| (n.clone(), variants[0].graph.ty(*id).clone()))
        .collect();
    for v in &variants[1..] {
        let t: Vec<_> = v
            .graph
            .outputs
            .iter()
            .map(|(n, id)| (n.clone(), v.graph.ty(*id).clone()))
            .collect();
        if t != out_types {
            return Err(BackendError::Input(format!(
                "variant `{}` has different outputs",
                v.name
            )));
        }
    }
    let weights = weight_table(variants)?;
    if let WeightsMode::Embedded(data) = weights_mode {
        if data.len() != weights.len() {
            return Err(BackendError::Input(format!(
                "{} embedded weight arrays for {} weights",
                data.len(),
                weights.len()
            )));
        }
        for ((name, ty), bytes) in weights.iter().zip(data) {
            let n: u64 = ty.shape.iter().map(|d| d.as_const().unwrap_or(0)).product();
            if bytes.len() as u64 != n * ty.dtype.size_bytes() {
                return Err(BackendError::Input(format!(
                    "embedded weight `{name}`: {} bytes for {ty}",
                    bytes.len()
                )));
            }
        }
    }
    let g = codegen::Gen::new(
        ctx,
        &opts.model_name,
        &weights,
        opts.target.function_attributes(),
        opts.limits.clone(),
        opts.profile,
        opts.lsh_buckets_per_round,
        opts.bf16,
    );
    let mut funcs = Vec::new();
    let mut plans = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let f = g.variant(&format!("__reformc_run_{i}_{}", v.name), &v.graph)?;
        let types = v
            .graph
            .inputs()
            .iter()
            .map(|(_, id)| v.graph.ty(*id).clone())
            .collect();
        funcs.push((f, types));
        plans.push((v.name.clone(), MemoryPlan::new(&v.graph)));
    }
    g.finish_outlines();
    let expected = signature::expected_inputs(variants);
    g.dispatcher(
        &funcs,
        n_out,
        &format!("reformc_model_run: the inputs match no compiled signature; expected {expected}"),
    )?;
    let embedded = match weights_mode {
        WeightsMode::Embedded(d) => Some(d.as_slice()),
        WeightsMode::Runtime => None,
    };
    g.weight_entries(&weights, &opts.allowed_extra_weights, embedded)?;
    let parts = signature::SignatureParts {
        model_name: &opts.model_name,
        variants,
        weights: &weights,
        allowed_extra: &opts.allowed_extra_weights,
        embedded: embedded.is_some(),
        default_weights: opts.default_weights.as_deref(),
        limits: &opts.limits,
        plans: &plans,
        exe,
        target_cpu: &opts.target.cpu,
    };
    let signature = signature::signature_json(&parts);
    let mut header = signature::model_h(&parts);
    g.info_entries(&signature)?;
    if let Some(info) = exe {
        g.exe_main(info, embedded.is_some())?;
    }
    if let Some(prefix) = &opts.symbol_prefix {
        g.prefix_exports(prefix)?;
        header = signature::with_prefix(&header, prefix);
    }
    g.module
        .verify()
        .map_err(|e| BackendError::Llvm(format!("the generated module does not verify: {e}")))?;
    Ok(CompiledModule {
        module: g.module,
        weights,
        signature,
        header,
        plans,
    })
}

/// Named tensors, as the interpreter and the JIT take and return them.
pub type Tensors = BTreeMap<String, reformc_tensor::Tensor>;

#[cfg(test)]
mod tests {
    use super::*;
    use reformc_ir::{DType, Dim};

    const TINY: &str = "graph {\n  %0 = input {name=\"x\"} : f32[B,4]\n  %1 = weight {name=\"w\"} : f32[3,4]\n  %2 = linear %0, %1 {activation=\"relu\"} : f32[B,3]\n  output \"y\" = %2\n}\n";

    fn variant(text: &str) -> Variant {
        Variant {
            name: "main".into(),
            graph: reformc_ir::parse(text).unwrap(),
        }
    }

    #[test]
    fn module_has_the_entry_points_and_a_json_signature() {
        let ctx = Context::create();
        let cm = build_module(
            &ctx,
            &[variant(TINY)],
            &CompileOptions::default(),
            &WeightsMode::Runtime,
            None,
        )
        .unwrap();
        for f in [
            "reformc_model_run",
            "reformc_model_load_weights",
            "reformc_model_set_weights",
            "reformc_model_unload_weights",
            "reformc_model_signature",
            "reformc_model_last_error",
        ] {
            assert!(cm.module.get_function(f).is_some(), "{f}");
        }
        assert!(cm.module.get_function("main").is_none());
        let sig: serde_json::Value = serde_json::from_str(&cm.signature).unwrap();
        assert_eq!(sig["variants"][0]["inputs"][0]["shape"][0], "B");
        assert_eq!(sig["weights"]["tensors"][0]["name"], "w");
        assert_eq!(sig["error_codes"]["REFORMC_ERR_SHAPE"], 4);
        assert!(cm.header.contains("int32_t reformc_model_run("));
        assert_eq!(
            cm.weights,
            vec![(
                "w".to_string(),
                TensorType::new(DType::F32, vec![Dim::Const(3), Dim::Const(4)])
            )]
        );
    }

    /// The LLVM spelling of a C ABI type.
    fn llvm_name(t: abi::CTy) -> &'static str {
        match t {
            abi::CTy::Void => "void",
            abi::CTy::I32 => "i32",
            abi::CTy::I64 => "i64",
            abi::CTy::F32 => "float",
            abi::CTy::F64 => "double",
            abi::CTy::Ptr => "ptr",
        }
    }

    /// Every function a generated module declares has exactly the type of its
    /// one declaration (the runtime's `c_abi!` blocks, or `abi::LIBC`), and
    /// the module, every call included, passes the LLVM verifier: a call whose
    /// arguments disagree with the declaration cannot be generated.
    #[test]
    fn declared_externals_are_typed_by_the_runtime_declarations() {
        let text = "graph {\n  %0 = input {name=\"x\"} : f32[B,4]\n  %1 = weight {name=\"w\"} : f32[3,4]\n  %2 = linear %0, %1 {activation=\"gelu\"} : f32[B,3]\n  %3 = softmax %2 {axis=1} : f32[B,3]\n  %4 = tanh %3 : f32[B,3]\n  output \"y\" = %4\n}\n";
        let ctx = Context::create();
        let opts = CompileOptions::default();
        let cm = build_module(&ctx, &[variant(text)], &opts, &WeightsMode::Runtime, None).unwrap();
        cm.module.verify().unwrap();
        let mut runtime = 0;
        for f in cm.module.get_functions() {
            let name = f.get_name().to_string_lossy().into_owned();
            if f.count_basic_blocks() > 0 || name.starts_with("llvm.") {
                continue;
            }
            let (ret, params) = abi::extern_sig(&name).unwrap_or_else(|| panic!("`{name}`"));
            let params: Vec<&str> = params.into_iter().map(llvm_name).collect();
            let want = format!("{} ({})", llvm_name(ret), params.join(", "));
            assert_eq!(f.get_type().print_to_string().to_string(), want, "`{name}`");
            runtime += usize::from(abi::runtime_fn(&name).is_some());
        }
        assert!(runtime >= 5, "only {runtime} runtime functions declared");
    }

    #[test]
    fn embedded_weights_and_exe_main() {
        let ctx = Context::create();
        let info = ExeInfo {
            model_name: "tiny".into(),
            output_name: "y".into(),
            ..ExeInfo::default()
        };
        let cm = build_module(
            &ctx,
            &[variant(TINY)],
            &CompileOptions::default(),
            &WeightsMode::Embedded(vec![vec![0u8; 48]]),
            Some(&info),
        )
        .unwrap();
        assert!(cm.module.get_function("main").is_some());
        let text = cm.module.print_to_string().to_string();
        assert!(text.contains("@__reformc_weights_ready = internal global i32 1"));
        // A wrong byte count is an error, not a crash.
        let ctx2 = Context::create();
        let err = build_module(
            &ctx2,
            &[variant(TINY)],
            &CompileOptions::default(),
            &WeightsMode::Embedded(vec![vec![0u8; 47]]),
            None,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("47 bytes"), "{err}");
    }

    #[test]
    fn weight_tables_must_agree_across_variants() {
        let other = TINY
            .replace("f32[3,4]", "f32[3,5]")
            .replace("f32[B,4]", "f32[B,5]");
        let err = weight_table(&[variant(TINY), variant(&other)]).unwrap_err();
        assert!(
            err.to_string().contains("weight `w` has type f32[3,4]"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_ops_and_dtypes_are_errors() {
        let ctx = Context::create();
        // argmax has lowerings for f32 and i64 keys only.
        let text = "graph {\n  %0 = input {name=\"x\"} : i32[B,4]\n  %1 = argmax %0 {axis=1} : i64[B]\n  output \"y\" = %1\n}\n";
        let err = build_module(
            &ctx,
            &[variant(text)],
            &CompileOptions::default(),
            &WeightsMode::Runtime,
            None,
        )
        .err()
        .unwrap();
        assert!(matches!(err, BackendError::Unsupported(_)), "{err}");
        let f64_graph = TINY.replace("f32", "f64");
        let err = build_module(
            &ctx,
            &[variant(&f64_graph)],
            &CompileOptions::default(),
            &WeightsMode::Runtime,
            None,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("f32"), "{err}");
    }

    #[test]
    fn tensor_struct_layout_matches_the_runtime() {
        use reformc_exe_runtime::model_rt::ReformcTensor;
        assert_eq!(std::mem::size_of::<ReformcTensor>(), 152);
        let ctx = Context::create();
        target::init();
        let tm = target::machine(&target::TargetSpec::named("x86-64")).unwrap();
        let td = tm.get_target_data();
        let t = codegen::Types::new(&ctx).tensor;
        assert_eq!(td.get_store_size(&t), 152);
        assert_eq!(td.offset_of_element(&t, abi::field::DATA), Some(136));
        assert_eq!(std::mem::offset_of!(ReformcTensor, data), 136);
    }
}
