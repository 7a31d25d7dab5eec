//! reformc's CPU kernel library.
//!
//! Generated code (the LLVM backend) calls these kernels through the C ABI of
//! `runtime/ABI.md` (see [`ffi`]); the executable runtime
//! (`reformc-exe-runtime`: model loading, argument parsing, `.npy` I/O) is
//! the static library generated programs link, and it re-links this one.
//! Rust callers and the tests use the safe wrappers re-exported here. Semantics are the reference interpreter's
//! (`reformc_interp::attention`, `reformc_interp::nn`); speed comes from
//! register-blocked SIMD GEMM chosen at run time ([`gemm`]), fused chunked
//! attention that only ever holds per-chunk tiles ([`attention`]) and a thread
//! pool whose results do not depend on the thread count ([`pool`]).
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

// Kernels and their C ABI (runtime/ABI.md), declared once each (abi::c_abi!).
pub mod abi;
pub mod act;
pub mod alloc;
pub mod amx;
pub mod attention;
pub mod bf16;
pub mod dense;
pub mod error;
pub mod feed_forward;
pub mod ffi;
pub mod gemm;
pub mod lm_loss;
pub mod mapped;
pub mod nn;
pub mod philox;
pub mod pool;
pub mod prepack;
pub mod profile;
mod simd;
pub mod tensor_ops;

pub use act::Activation;
pub use error::{last_error, Error, Result};
pub use gemm::linear;
pub use nn::{axial_pos, embedding, layer_norm, layer_norm_grad};
pub use philox::{dropout_mask, random_normal};
pub use pool::{set_threads, threads};
