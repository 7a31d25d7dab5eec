//! reformc's values and the files that hold them, shared by every side of
//! the compiler: the IR (element types, safe output files), the frontend
//! (safetensors headers), the interpreter, the LLVM backend and the CLI
//! (the [`Tensor`] enum, `.npy` inputs and outputs), and the executable
//! runtime that generated programs link (the same `.npy` and safetensors
//! readers, so that `reformc run` and a compiled executable accept and refuse
//! exactly the same files).
//!
//! The crate sits below everything else: it depends on no other reformc
//! crate. Without its default `ndarray` feature it is std only, which is how
//! the executable runtime uses it:
//!
//! ```toml
//! reformc-tensor = { path = "../tensor", default-features = false }
//! ```
#![deny(missing_docs)]

mod dtype;
pub mod npy;
pub mod outfile;
pub mod safetensors;
pub mod safetensors_write;
mod text;

#[cfg(feature = "ndarray")]
pub mod array;
#[cfg(feature = "ndarray")]
mod tensor;

pub use dtype::DType;
#[cfg(feature = "ndarray")]
pub use tensor::Tensor;
pub use text::shown;
