//! reformc's reference interpreter.
//!
//! It defines the semantics of every IR op, in f32 and f64, and runs whole
//! models; every backend is tested against it. It favours clarity over speed,
//! but frees each intermediate tensor after its last use.

#![deny(missing_docs)]

pub mod attention;
mod eval;
pub mod feed_forward;
pub mod lm_loss;
pub mod nn;
pub mod philox;
mod tensor;
pub mod tensor_ops;

pub use eval::{check_type, run, InterpError, WeightSource};
pub use tensor::{FloatTensor, Real, Tensor};
