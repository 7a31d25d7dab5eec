//! The C ABI shared by generated code, the runtime library and users of the
//! produced artifacts (`model.h`): dtype codes, error codes, the tensor struct
//! layout and the external functions generated code calls.

use reformc_ir::DType;

/// Largest tensor rank the `reformc_tensor` struct can describe.
pub const MAX_RANK: usize = 8;

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
        DType::F32 => 1,
        DType::F64 => 2,
        DType::I64 => 3,
        DType::I32 => 4,
        DType::Bool => 5,
    }
}

/// The IR dtype of a `reformc_tensor.dtype` code.
pub fn dtype_of_code(code: i32) -> Option<DType> {
    DType::ALL.into_iter().find(|d| dtype_code(*d) == code)
}

/// Status codes returned by `reformc_model_run` and friends (0 = success).
pub mod err {
    /// Success.
    pub const OK: i32 = 0;
    /// A NULL pointer, a wrong number of inputs/outputs, inputs that match no compiled signature.
    pub const ARGUMENT: i32 = 1;
    /// An input has the wrong element type.
    pub const DTYPE: i32 = 2;
    /// An input has the wrong rank.
    pub const RANK: i32 = 3;
    /// An input has a wrong or inconsistent shape, non-contiguous strides, or exceeds a compiled limit.
    pub const SHAPE: i32 = 4;
    /// An input holds a value out of range (a token id, a division by zero).
    pub const VALUE: i32 = 5;
    /// `reformc_model_run` was called before weights were loaded.
    pub const NO_WEIGHTS: i32 = 6;
    /// The weights file cannot be opened, read or mapped.
    pub const WEIGHTS_IO: i32 = 7;
    /// The weights file is not a valid safetensors file (bad header, truncated data).
    pub const WEIGHTS_FORMAT: i32 = 8;
    /// The weights file does not match the compiled model (names, shapes, dtypes).
    pub const WEIGHTS_MISMATCH: i32 = 9;
    /// Memory allocation failed.
    pub const OUT_OF_MEMORY: i32 = 10;
    /// A runtime kernel reported an error (the message says which and why).
    pub const KERNEL: i32 = 11;

    /// Every code with its C name and meaning, for `model.h` and the signature.
    pub const ALL: &[(i32, &str, &str)] = &[
        (OK, "REFORMC_OK", "success"),
        (ARGUMENT, "REFORMC_ERR_ARGUMENT", "NULL pointer, wrong number of inputs/outputs, or inputs that match no compiled signature"),
        (DTYPE, "REFORMC_ERR_DTYPE", "an input has the wrong element type"),
        (RANK, "REFORMC_ERR_RANK", "an input has the wrong rank"),
        (SHAPE, "REFORMC_ERR_SHAPE", "an input has a wrong or inconsistent shape, non-contiguous strides, or exceeds a compiled limit"),
        (VALUE, "REFORMC_ERR_VALUE", "an input holds an out-of-range value"),
        (NO_WEIGHTS, "REFORMC_ERR_NO_WEIGHTS", "no weights are loaded"),
        (WEIGHTS_IO, "REFORMC_ERR_WEIGHTS_IO", "the weights file cannot be opened, read or mapped"),
        (WEIGHTS_FORMAT, "REFORMC_ERR_WEIGHTS_FORMAT", "the weights file is not valid safetensors (bad header, truncated)"),
        (WEIGHTS_MISMATCH, "REFORMC_ERR_WEIGHTS_MISMATCH", "the weights do not match the compiled model (names, shapes, dtypes)"),
        (OUT_OF_MEMORY, "REFORMC_ERR_OUT_OF_MEMORY", "memory allocation failed"),
        (KERNEL, "REFORMC_ERR_KERNEL", "a runtime kernel reported an error"),
    ];
}

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
