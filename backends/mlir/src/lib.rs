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

mod emit;
mod jit;
mod pipeline;
mod scalar;

pub use jit::{jit_run, jit_run_timed, JitTimes, CPU_PIPELINE};

use melior::{
    dialect::DialectRegistry,
    ir::{operation::OperationLike, Module},
    utility::register_all_dialects,
    Context,
};
use reformc_ir::{Graph, OpKind, ValueId};
use std::sync::{Arc, Mutex};

/// How weights reach the module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightsMode {
    /// Every weight is a leading argument of `@forward`, named (in the
    /// `reformc.name` argument attribute) by its safetensors name.
    #[default]
    Args,
    /// Weights inside the module as `dense_resource` blobs (not implemented yet:
    /// [`emit_module`] returns [`MlirError::NotImplemented`]).
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
/// Every op kind is handled by one exhaustive `match`; an op without a lowering
/// gives [`MlirError::Unsupported`] naming it.
///
/// ```
/// use reformc_backend_mlir::{emit_module, EmitOptions, MlirError};
/// let g = reformc_ir::parse(
///     "graph {\n  %0 = input {name=\"x\"} : f32[B,L]\n  %1 = argsort %0 {axis=1} : i64[B,L]\n  output \"y\" = %1\n}\n",
/// )
/// .unwrap();
/// let err = emit_module(&g, &EmitOptions::default()).unwrap_err();
/// assert!(matches!(err, MlirError::Unsupported { .. }));
/// assert!(err.to_string().contains("argsort"));
/// ```
pub fn emit_module(graph: &Graph, opts: &EmitOptions) -> Result<String, MlirError> {
    match opts.weights_mode {
        WeightsMode::Args => emit::Emitter::new(graph).module(),
        WeightsMode::Embed => Err(MlirError::NotImplemented(
            "--weights-mode embed (use args)".into(),
        )),
    }
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
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&messages);
    let handler = context.attach_diagnostic_handler(move |diagnostic| {
        if let Ok(mut m) = sink.lock() {
            m.push(format!("{} {}", diagnostic.location(), diagnostic));
        }
        true
    });
    let ok = match Module::parse(&context, text) {
        Some(module) => module.as_operation().verify(),
        None => false,
    };
    context.detach_diagnostic_handler(handler);
    if ok {
        return Ok(());
    }
    let text = messages.lock().map(|m| m.join("; ")).unwrap_or_default();
    Err(MlirError::Verify(if text.is_empty() {
        "no diagnostics".into()
    } else {
        text
    }))
}
