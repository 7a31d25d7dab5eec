//! The C ABI shared by generated code, the runtime library and users of the
//! produced artifacts (`model.h`): dtype codes, error codes, the tensor struct
//! layout and the external functions generated code calls.

use reformc_exe_runtime::model_rt::dtype;
use reformc_ir::{Activation, DType};

/// Largest tensor rank the `reformc_tensor` struct can describe (the
/// runtime's definition: generated code and the runtime share the struct).
pub const MAX_RANK: usize = reformc_exe_runtime::model_rt::MAX_RANK;

/// Version of the generated model ABI (bumped on incompatible changes).
pub const ABI_VERSION: i32 = 1;

/// The `reformc_tensor.dtype` code of an IR dtype.
///
/// ```
/// use reformc_backend_llvm::abi::dtype_code;
/// assert_eq!(dtype_code(reformc_ir::DType::F32), 1);
/// assert_eq!(dtype_code(reformc_ir::DType::I64), 3);
/// ```
pub fn dtype_code(d: DType) -> i32 {
    match d {
        DType::F32 => dtype::F32,
        DType::F64 => dtype::F64,
        DType::I64 => dtype::I64,
        DType::I32 => dtype::I32,
        DType::Bool => dtype::BOOL,
    }
}

/// The IR dtype of a `reformc_tensor.dtype` code.
pub fn dtype_of_code(code: i32) -> Option<DType> {
    DType::ALL.into_iter().find(|d| dtype_code(*d) == code)
}

/// Status codes returned by `reformc_model_run` and friends (0 = success):
/// the runtime's, which generated code and the runtime report alike.
pub use reformc_exe_runtime::model_rt::code as err;

/// Activation code of `rc_linear_f32`/`rc_dense_f32`: [`Activation::code`],
/// the one definition the runtime compiles too (ir/src/activation.rs).
///
/// ```
/// use reformc_backend_llvm::abi::activation_code;
/// use reformc_ir::Activation;
/// assert_eq!(activation_code(Activation::None), 0);
/// assert_eq!(activation_code(Activation::Gelu), 2);
/// ```
pub fn activation_code(a: Activation) -> i32 {
    a.code()
}

/// Attention flag bits of `rc_attention_f32`.
pub mod flags {
    /// Keys after the query are masked.
    pub const CAUSAL: i32 = 1;
    /// Keys are normalised (HF's shared-QK key normalisation).
    pub const KEY_NORM: i32 = 2;
    /// A token's own key gets the finite self penalty.
    pub const SELF_MASK: i32 = 4;
}

/// A parameter or return type of an external function, in C terms: the
/// runtime's own, from its `c_abi!` declarations.
pub(crate) use reformc_runtime::abi::CType as CTy;

use CTy::*;

/// The C library functions generated code may call (libm's for activations):
/// (name, return type, parameters). Every other external is the runtime's and
/// is declared from its `c_abi!` tables ([`runtime_fn`]).
pub(crate) const LIBC: &[(&str, CTy, &[CTy])] = &[
    ("aligned_alloc", Ptr, &[I64, I64]),
    ("free", Void, &[Ptr]),
    ("tanhf", F32, &[F32]),
    ("tanh", F64, &[F64]),
    ("erf", F64, &[F64]),
    ("exp", F64, &[F64]),
    // mish's softplus, as Rust's `f64::ln_1p` (the interpreter's) computes it.
    ("log1p", F64, &[F64]),
];

/// The runtime function named `name`: kernels, buffer cache, profiler, model
/// runtime and executable main, as the runtime declares them (one
/// declaration each, which also generates the function itself).
///
/// ```
/// let k = reformc_backend_llvm::abi::runtime_fn("rc_matmul_f32").unwrap();
/// assert_eq!(k.params.len(), 6);
/// assert!(reformc_backend_llvm::abi::runtime_fn("memcpy").is_none());
/// ```
pub fn runtime_fn(name: &str) -> Option<&'static reformc_runtime::abi::Kernel> {
    reformc_exe_runtime::SECTIONS
        .iter()
        .find_map(|s| s.kernel(name))
}

/// Looks up an external function's C signature: the runtime's, else libc's.
pub(crate) fn extern_sig(name: &str) -> Option<(CTy, Vec<CTy>)> {
    if let Some(k) = runtime_fn(name) {
        return Some((k.ret.ty, k.param_types()));
    }
    LIBC.iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, r, p)| (*r, p.to_vec()))
}

/// Field indices of `reformc_tensor` (see [`TENSOR_STRUCT_C`]).
pub(crate) mod field {
    pub const DTYPE: u32 = 0;
    pub const RANK: u32 = 1;
    pub const SHAPE: u32 = 2;
    pub const STRIDES: u32 = 3;
    pub const DATA: u32 = 4;
    pub const OWNS_DATA: u32 = 5;
}

/// The C declaration of the tensor struct, as `model.h` prints it.
pub const TENSOR_STRUCT_C: &str = r#"/* A dense tensor: element type, shape, strides and data (onnx-mlir OMTensor style).
 *
 * Ownership:
 *  - inputs are borrowed: reformc_model_run reads `data` during the call only;
 *    the caller keeps ownership;
 *  - outputs are owned by the caller after a successful call: reformc_model_run
 *    allocates `data` (64-byte aligned, with aligned_alloc) and sets
 *    owns_data = 1; release it with reformc_tensor_release (or free(data)).
 *    On failure every output has data = NULL and owns_data = 0.
 * Strides count elements (not bytes); inputs must be row-major contiguous
 * (strides all 0 is accepted as "contiguous"); outputs are row-major contiguous. */
#ifndef REFORMC_TENSOR_DEFINED
#define REFORMC_TENSOR_DEFINED
typedef struct reformc_tensor {
  int32_t dtype;                     /* REFORMC_F32, REFORMC_I64, ... */
  int32_t rank;                      /* 0 .. REFORMC_MAX_RANK */
  int64_t shape[REFORMC_MAX_RANK];   /* first `rank` entries used */
  int64_t strides[REFORMC_MAX_RANK]; /* in elements, first `rank` entries used */
  void* data;                        /* row-major elements */
  int32_t owns_data;                 /* 1: release with reformc_tensor_release */
  int32_t reserved;                  /* 0 */
} reformc_tensor;
#endif"#;

/// The exported name `name` (one of [`crate::aot::EXPORTS`]) with its
/// `reformc_` replaced by `prefix_`.
///
/// ```
/// use reformc_backend_llvm::abi::prefixed;
/// assert_eq!(prefixed("reformc_model_run", "tiny"), "tiny_model_run");
/// assert_eq!(prefixed("reformc_tensor_init", "tiny"), "tiny_tensor_init");
/// ```
pub fn prefixed(name: &str, prefix: &str) -> String {
    match name.strip_prefix("reformc_") {
        Some(rest) => format!("{prefix}_{rest}"),
        None => name.to_string(),
    }
}

/// Whether `prefix` can start C identifiers: an ASCII letter or `_`, then
/// letters, digits and `_`, at most 64 characters.
///
/// ```
/// use reformc_backend_llvm::abi::valid_prefix;
/// assert!(valid_prefix("tiny_v2"));
/// assert!(!valid_prefix("2tiny") && !valid_prefix("a-b") && !valid_prefix(""));
/// ```
pub fn valid_prefix(prefix: &str) -> bool {
    let mut chars = prefix.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && prefix.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use reformc_exe_runtime::model_rt::{dtype_name, dtype_size};

    /// Generated code, `model.h` and the runtime name and size every dtype
    /// code alike, and every code maps back to its dtype.
    #[test]
    fn dtype_codes_agree_with_the_runtime() {
        for d in DType::ALL {
            let code = dtype_code(d);
            assert_eq!(dtype_name(code), d.name(), "{d}");
            assert_eq!(dtype_size(code) as u64, d.size_bytes(), "{d}");
            assert_eq!(dtype_of_code(code), Some(d));
        }
        assert_eq!(dtype_of_code(0), None);
    }
}
