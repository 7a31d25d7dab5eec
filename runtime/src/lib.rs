//! reformc's CPU kernel runtime.
//!
//! Generated code (the LLVM backend) calls these kernels through the C ABI of
//! `runtime/ABI.md` (see [`ffi`]); Rust callers and the tests use the safe
//! wrappers re-exported here. Semantics are the reference interpreter's
//! (`reformc_interp::attention`, `reformc_interp::nn`); speed comes from
//! register-blocked SIMD GEMM chosen at run time ([`gemm`]), fused chunked
//! attention that only ever holds per-chunk tiles ([`attention`]) and a thread
//! pool whose results do not depend on the thread count ([`pool`]).
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

// Kernels and their C ABI (runtime/ABI.md).
pub mod act;
pub mod alloc;
pub mod attention;
pub mod dense;
pub mod error;
pub mod ffi;
pub mod gemm;
pub mod nn;
pub mod philox;
pub mod pool;
pub mod profile;
mod simd;
pub mod tensor_ops;

// Model runtime, .npy I/O and executables' command line: owned by the LLVM backend.
pub mod exe_main;
/// Hugging Face's length rules (padding, automatic buckets): the one
/// implementation of `reformc_ir::hf_rules`, compiled in here for the same reason.
#[path = "../../ir/src/hf_rules.rs"]
pub mod hf_rules;
pub mod model_rt;
pub mod npy;
/// Safe output files: the one implementation of `reformc_ir::outfile`, compiled
/// in here too because generated executables link only this std-only crate.
#[path = "../../ir/src/outfile.rs"]
pub mod outfile;

pub use act::Activation;
pub use error::{last_error, Error, Result};
pub use gemm::linear;
pub use nn::{axial_pos, embedding, layer_norm};
pub use philox::random_normal;
pub use pool::{set_threads, threads};
