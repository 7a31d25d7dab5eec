//! The C ABI shared by generated code, the runtime library and users of the
//! produced artifacts (`model.h`): dtype codes, error codes, the tensor struct
//! layout and the external functions generated code calls.

use reformc_ir::DType;
use reformc_runtime::model_rt::dtype;

/// Largest tensor rank the `reformc_tensor` struct can describe (the
/// runtime's definition: generated code and the runtime share the struct).
pub const MAX_RANK: usize = reformc_runtime::model_rt::MAX_RANK;

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
pub use reformc_runtime::model_rt::code as err;

/// Activation code of `rc_linear_f32` for a `linear {activation}` name.
///
/// ```
/// assert_eq!(reformc_backend_llvm::abi::activation_code(None), Some(0));
/// assert_eq!(reformc_backend_llvm::abi::activation_code(Some("gelu")), Some(2));
/// assert_eq!(reformc_backend_llvm::abi::activation_code(Some("swish")), None);
/// ```
pub fn activation_code(name: Option<&str>) -> Option<i32> {
    Some(match name {
        None => 0,
        Some("relu") => 1,
        Some("gelu") => 2,
        Some("gelu_new") => 3,
        Some("gelu_fast") => 4,
        Some("silu") => 5,
        Some("tanh") => 6,
        Some("sigmoid") => 7,
        Some(_) => return None,
    })
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

/// A parameter or return type of an external function, in C terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CTy {
    Void,
    I32,
    I64,
    F32,
    F64,
    Ptr,
}

use CTy::*;

/// External functions generated code may call: the runtime kernels of
/// `runtime/ABI.md`, the model-runtime helpers of `runtime/src/model_rt.rs`
/// and a few libc/libm functions. (name, return type, parameters).
pub(crate) const EXTERNS: &[(&str, CTy, &[CTy])] = &[
    // Kernels (runtime/ABI.md).
    (
        "rc_linear_f32",
        I32,
        &[Ptr, I64, I64, Ptr, I64, Ptr, I32, Ptr],
    ),
    (
        "rc_dense_f32",
        I32,
        &[
            Ptr, I64, I64, I64, Ptr, Ptr, F32, Ptr, Ptr, I64, I32, Ptr, Ptr, I64, I32, Ptr, I64,
            I32,
        ],
    ),
    ("rc_softmax_f32", I32, &[Ptr, I64, I64, I64, Ptr]),
    ("rc_reduce_f32", I32, &[Ptr, I64, I64, I64, I32, Ptr]),
    ("rc_arg_f32", I32, &[Ptr, I64, I64, I64, I32, Ptr]),
    ("rc_gather", I32, &[Ptr, I64, I64, I64, I64, Ptr, I64, Ptr]),
    ("rc_matmul_f32", I32, &[Ptr, Ptr, I64, I64, I64, Ptr]),
    (
        "rc_layer_norm_f32",
        I32,
        &[Ptr, I64, I64, Ptr, Ptr, F32, Ptr],
    ),
    ("rc_embedding_f32", I32, &[Ptr, I64, Ptr, I64, I64, Ptr]),
    (
        "rc_axial_pos_f32",
        I32,
        &[Ptr, I64, Ptr, I64, I64, Ptr, I64, I64, Ptr],
    ),
    (
        "rc_attention_f32",
        I32,
        &[
            Ptr, Ptr, Ptr, Ptr, I64, I64, I64, I64, I64, I64, F32, I32, I64, Ptr,
        ],
    ),
    (
        "rc_local_attention_f32",
        I32,
        &[
            Ptr, Ptr, Ptr, Ptr, I64, I64, I64, I64, I64, F32, I64, I64, I64, I32, Ptr,
        ],
    ),
    (
        "rc_lsh_hash_f32",
        I32,
        &[Ptr, Ptr, Ptr, I64, I64, I64, I64, I64, Ptr, I64, Ptr],
    ),
    (
        "rc_lsh_attention_f32",
        I32,
        &[
            Ptr, Ptr, Ptr, Ptr, I64, I64, I64, I64, I64, I64, I64, I64, I32, Ptr,
        ],
    ),
    ("rc_random_normal_f32", I32, &[I64, I64, I64, Ptr]),
    ("rc_check_lsh_buckets", I32, &[Ptr, I64, I64, I64, I64]),
    // Model runtime (runtime/src/model_rt.rs).
    ("rc_model_clear_error", Void, &[]),
    ("rc_model_last_error", Ptr, &[]),
    ("rc_model_error", I32, &[I32, Ptr]),
    (
        "rc_model_error_input",
        I32,
        &[I32, Ptr, Ptr, Ptr, I64, I64, Ptr],
    ),
    ("rc_model_error_limit", I32, &[I32, Ptr, I64, I64]),
    ("rc_model_error_mismatch", I32, &[I32, Ptr, I64, I64]),
    ("rc_model_error_kernel", I32, &[I32, Ptr, I32]),
    ("rc_model_error_alloc", I32, &[I32, Ptr, I64]),
    ("rc_model_error_signature", I32, &[I32, Ptr, Ptr, I64]),
    (
        "rc_model_load_safetensors",
        I32,
        &[Ptr, I64, Ptr, Ptr, Ptr, I64, Ptr, Ptr, Ptr],
    ),
    ("rc_model_unload_weights", Void, &[Ptr]),
    ("rc_alloc", Ptr, &[I64, I64]),
    ("rc_free", Void, &[Ptr, I64]),
    ("rc_release_cache", Void, &[]),
    ("rc_prof_now", I64, &[]),
    ("rc_prof_add", Void, &[Ptr, I64]),
    ("rc_free_release", Void, &[Ptr, I64]),
    (
        "rc_add_rows_f32",
        Void,
        &[Ptr, I64, Ptr, I64, Ptr, I64, I64, I64],
    ),
    ("reformc_exe_main", I32, &[I32, Ptr, Ptr]),
    // libc / libm.
    ("aligned_alloc", Ptr, &[I64, I64]),
    ("free", Void, &[Ptr]),
    ("tanhf", F32, &[F32]),
    ("tanh", F64, &[F64]),
    ("erf", F64, &[F64]),
    ("exp", F64, &[F64]),
];

/// Looks up an external function's C signature.
pub(crate) fn extern_sig(name: &str) -> Option<(CTy, &'static [CTy])> {
    EXTERNS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, r, p)| (*r, *p))
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
typedef struct reformc_tensor {
  int32_t dtype;                     /* REFORMC_F32, REFORMC_I64, ... */
  int32_t rank;                      /* 0 .. REFORMC_MAX_RANK */
  int64_t shape[REFORMC_MAX_RANK];   /* first `rank` entries used */
  int64_t strides[REFORMC_MAX_RANK]; /* in elements, first `rank` entries used */
  void* data;                        /* row-major elements */
  int32_t owns_data;                 /* 1: release with reformc_tensor_release */
  int32_t reserved;                  /* 0 */
} reformc_tensor;"#;

#[cfg(test)]
mod tests {
    use super::*;
    use reformc_runtime::model_rt::{dtype_name, dtype_size};

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
