//! reformc's MLIR backend: a graph of tensor ops as one MLIR module in
//! upstream dialects only (`func`, `arith`, `math`, `tensor`, `linalg`).
//!
//! The module is built as text (melior has no `linalg.generic` builder, see
//! DESIGN.md §8) and checked by parsing it back with melior and running
//! MLIR's verifier on it ([`verify_module`]).
//!
//! ```
//! use reformc_backend_mlir::{emit_module, verify_module, EmitOptions};
//! let g = reformc_ir::parse(
//!     "graph {\n  %0 = input {name=\"x\"} : f32[B,8]\n  %1 = exp %0 : f32[B,8]\n  output \"y\" = %1\n}\n",
//! )
//! .unwrap();
//! let text = emit_module(&g, &EmitOptions::default()).unwrap();
//! assert!(text.contains("math.exp"));
//! verify_module(&text).unwrap();
//! ```

#![deny(missing_docs)]

mod alloc;
mod emit;
mod jit;
pub mod library_calls;
pub mod memref;
mod pipeline;
mod profile;
mod scalar;
mod signature;
mod weights;

pub use jit::{
    jit_run, jit_run_emitted, jit_run_timed, jit_run_with_weights, jit_run_with_weights_each,
    jit_run_with_weights_opts, jit_run_with_weights_timed, JitOptions, JitTimes, CPU_PIPELINE,
};
pub use pipeline::new_engine;
pub use signature::signature_json;

use melior::{
    dialect::DialectRegistry,
    ir::{operation::OperationLike, Module},
    utility::register_all_dialects,
    Context,
};
use reformc_ir::{Graph, OpKind, ValueId};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// How weights reach the module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightsMode {
    /// Every weight is a leading argument of `@forward`, named (in the
    /// `reformc.name` argument attribute) by its safetensors name.
    #[default]
    Args,
    /// Weights inside the module: each an `arith.constant dense_resource<key>`
    /// whose bytes are in the module's `dialect_resources` section, so that
    /// `@forward` takes only the runtime inputs ([`emit_module_with_weights`]).
    Embed,
}

/// Options of [`emit_module`].
#[derive(Clone, Debug, Default)]
pub struct EmitOptions {
    /// How weights reach the module.
    pub weights_mode: WeightsMode,
}

/// Why a graph could not be emitted as MLIR, or a module did not verify.
#[derive(Debug, thiserror::Error)]
pub enum MlirError {
    /// The graph holds an op that has no MLIR lowering yet.
    #[error("the MLIR backend has no lowering for op `{op}` (value %{value})")]
    Unsupported {
        /// The op's keyword.
        op: OpKind,
        /// The value it defines.
        value: u32,
    },
    /// An op's attributes or types are not what the lowering needs.
    #[error("cannot lower `{op}` (value %{value}): {reason}")]
    Invalid {
        /// The op's keyword.
        op: OpKind,
        /// The value it defines.
        value: u32,
        /// What is wrong.
        reason: String,
    },
    /// A feature of the interface that this backend does not have yet.
    #[error("not implemented in the MLIR backend: {0}")]
    NotImplemented(String),
    /// The weights given to embed do not match the graph's (a missing tensor,
    /// or another dtype or shape): the message names the tensor.
    #[error("{0}")]
    Weights(String),
    /// The emitted text did not parse or verify (a bug in the lowering).
    #[error("MLIR module does not verify: {0}")]
    Verify(String),
}

impl MlirError {
    pub(crate) fn invalid(g: &Graph, v: ValueId, reason: impl Into<String>) -> MlirError {
        MlirError::Invalid {
            op: g.node(v).op.kind,
            value: v.0,
            reason: reason.into(),
        }
    }
}

/// The text of one MLIR module computing `graph`: `func.func @forward` whose
/// arguments are the weights (in graph order) then the runtime inputs, and
/// whose results are the graph's outputs. Symbolic dimensions become dynamic
/// (`?`) dimensions, read from the arguments with `tensor.dim`.
///
/// Every op kind is handled by one exhaustive `match`. An op the lowering
/// cannot take as given (attributes or types it does not handle) gives
/// [`MlirError::Invalid`] naming it, and an op without a lowering (today only
/// a region argument outside its region) [`MlirError::Unsupported`]: never
/// invalid MLIR.
///
/// ```
/// use reformc_backend_mlir::{emit_module, EmitOptions, MlirError};
/// // An embedding table whose row count is only known at run time.
/// let g = reformc_ir::parse(
///     "graph {\n  %0 = input {name=\"ids\"} : i64[B,L]\n  %1 = input {name=\"table\"} : f32[V,8]\n  %2 = embedding %0, %1 : f32[B,L,8]\n  output \"y\" = %2\n}\n",
/// )
/// .unwrap();
/// let err = emit_module(&g, &EmitOptions::default()).unwrap_err();
/// assert!(matches!(err, MlirError::Invalid { .. }));
/// assert!(err.to_string().contains("embedding"));
/// ```
pub fn emit_module(graph: &Graph, opts: &EmitOptions) -> Result<String, MlirError> {
    emit_module_with_weights(graph, opts, &BTreeMap::new())
}

/// [`emit_module`] with the weights' data, which `embed` mode puts into the
/// module as `dense_resource` blobs (`args` mode only checks them). Every
/// weight of `graph` must be in `weights` with the graph's dtype and shape;
/// otherwise [`MlirError::Weights`] names the tensor, expected against found.
///
/// ```
/// use ndarray::arr1;
/// use reformc_backend_mlir::{emit_module_with_weights, verify_module, EmitOptions, WeightsMode};
/// use reformc_tensor::Tensor;
/// let g = reformc_ir::parse(
///     "graph {\n  %0 = input {name=\"x\"} : f32[N,2]\n  %1 = weight {name=\"b\"} : f32[2]\n  %2 = add %0, %1 : f32[N,2]\n  output \"y\" = %2\n}\n",
/// )
/// .unwrap();
/// let opts = EmitOptions { weights_mode: WeightsMode::Embed };
/// let mut w = std::collections::BTreeMap::new();
/// w.insert("b".to_string(), Tensor::F32(arr1(&[1.0f32, 2.0]).into_dyn()));
/// let text = emit_module_with_weights(&g, &opts, &w).unwrap();
/// assert!(text.contains("dense_resource<b>"));
/// assert!(text.contains("b: \"0x040000000000803F00000040\""));
/// verify_module(&text).unwrap();
/// w.insert("b".to_string(), Tensor::F32(arr1(&[1.0f32]).into_dyn()));
/// let err = emit_module_with_weights(&g, &opts, &w).unwrap_err();
/// assert_eq!(err.to_string(), "weight `b`: expected f32[2], found f32[1]");
/// ```
pub fn emit_module_with_weights(
    graph: &Graph,
    opts: &EmitOptions,
    weights: &BTreeMap<String, Tensor>,
) -> Result<String, MlirError> {
    match opts.weights_mode {
        WeightsMode::Args => {
            if !weights.is_empty() {
                weights::check(graph, weights)?;
            }
            emit::Emitter::new(graph).module()
        }
        WeightsMode::Embed => emit::Emitter::new(graph).with_weights(weights).module(),
    }
}

/// Registers MLIR's passes for pipeline parsing, once per process:
/// registering twice double-frees inside MLIR (DESIGN.md §8), so every
/// pipeline of reformc goes through this.
pub fn register_passes() {
    static PASSES: std::sync::Once = std::sync::Once::new();
    PASSES.call_once(melior::utility::register_all_passes);
}

/// Creates an MLIR context with every upstream dialect registered and loaded.
pub fn context() -> Context {
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    context
}

/// Parses `text` with melior and runs MLIR's verifier on it; the error carries
/// MLIR's diagnostics.
///
/// ```
/// use reformc_backend_mlir::verify_module;
/// assert!(verify_module("module {}").is_ok());
/// assert!(verify_module("module { %0 = arith.addf }").is_err());
/// ```
pub fn verify_module(text: &str) -> Result<(), MlirError> {
    let context = context();
    let (ok, messages) =
        with_diagnostics(&context, true, |_| match Module::parse(&context, text) {
            Some(module) => module.as_operation().verify(),
            None => false,
        });
    if ok {
        return Ok(());
    }
    Err(MlirError::Verify(if messages.is_empty() {
        "no diagnostics".into()
    } else {
        messages
    }))
}

/// Runs `f` with every diagnostic `context` emits meanwhile collected (each
/// with its location when `locations`), and returns `f`'s result and the
/// diagnostics joined by `; `. `f` receives a function that returns the
/// diagnostics collected so far (for an error made inside `f`).
///
/// ```
/// let context = reformc_backend_mlir::context();
/// let (module, said) = reformc_backend_mlir::with_diagnostics(&context, false, |_| {
///     melior::ir::Module::parse(&context, "module { %0 = arith.addf }")
/// });
/// assert!(module.is_none());
/// assert!(!said.is_empty());
/// ```
pub fn with_diagnostics<T>(
    context: &Context,
    locations: bool,
    f: impl FnOnce(&dyn Fn() -> String) -> T,
) -> (T, String) {
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&messages);
    let handler = context.attach_diagnostic_handler(move |d| {
        if let Ok(mut m) = sink.lock() {
            m.push(if locations {
                format!("{} {}", d.location(), d)
            } else {
                d.to_string()
            });
        }
        true
    });
    let said = || messages.lock().map(|m| m.join("; ")).unwrap_or_default();
    let out = f(&said);
    context.detach_diagnostic_handler(handler);
    let text = said();
    (out, text)
}
