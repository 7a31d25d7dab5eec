//! The C ABI shared by generated code, the runtime library and users of the
//! produced artifacts (`model.h`): dtype codes, error codes, the tensor struct
//! layout and the external functions generated code calls.

use reformc_ir::{Activation, DType};
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

/// Checks that the three hand-written copies of every kernel signature agree
/// on argument and return types, not only on names: `abi::EXTERNS` (what
/// generated code declares), the runtime's `extern "C"` definitions (what it
/// links) and `runtime/ABI.md` (what users read).
#[cfg(test)]
mod signature_tests {
    use super::{CTy, EXTERNS};
    use std::collections::BTreeMap;

    const RUST: [&str; 5] = [
        include_str!("../../../runtime/src/ffi.rs"),
        include_str!("../../../runtime/src/exe_main.rs"),
        include_str!("../../../runtime/src/model_rt.rs"),
        include_str!("../../../runtime/src/alloc.rs"),
        include_str!("../../../runtime/src/profile.rs"),
    ];
    const DOC: &str = include_str!("../../../runtime/ABI.md");

    type Sig = (CTy, Vec<CTy>);

    fn rust_ty(t: &str) -> CTy {
        match t.trim() {
            "" | "()" => CTy::Void,
            "i32" | "c_int" => CTy::I32,
            "i64" => CTy::I64,
            "f32" => CTy::F32,
            "f64" => CTy::F64,
            t if t.starts_with('*') || t.starts_with("Option<") => CTy::Ptr,
            t => panic!("unmapped Rust type `{t}`"),
        }
    }

    fn c_ty(t: &str) -> CTy {
        let t = t.trim();
        if t.contains('*') {
            return CTy::Ptr;
        }
        let ty = t.split_whitespace().find(|w| *w != "const").unwrap_or("");
        match ty {
            "void" => CTy::Void,
            "int32_t" | "int" => CTy::I32,
            "int64_t" => CTy::I64,
            "float" => CTy::F32,
            "double" => CTy::F64,
            t => panic!("unmapped C type `{t}`"),
        }
    }

    /// The text between the parenthesis at `open` and its match.
    fn params(src: &str, open: usize) -> &str {
        let mut depth = 0;
        for (i, c) in src[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return &src[open + 1..open + i];
                    }
                }
                _ => {}
            }
        }
        panic!("unbalanced parameters")
    }

    fn split_top(s: &str) -> Vec<&str> {
        let (mut out, mut depth, mut start) = (vec![], 0, 0);
        for (i, c) in s.char_indices() {
            match c {
                '(' | '<' => depth += 1,
                ')' | '>' if !s[..i].ends_with('-') => depth -= 1,
                ',' if depth == 0 => {
                    out.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(&s[start..]);
        out.into_iter().filter(|a| !a.trim().is_empty()).collect()
    }

    fn rust_sigs() -> BTreeMap<String, Sig> {
        let mut m = BTreeMap::new();
        for src in RUST {
            for (at, _) in src.match_indices("extern \"C\" fn ") {
                let name_at = at + "extern \"C\" fn ".len();
                let open = name_at + src[name_at..].find('(').unwrap();
                let name = src[name_at..open].to_string();
                let ps = params(src, open);
                let args = split_top(ps)
                    .iter()
                    .map(|a| rust_ty(a.split_once(':').map_or("", |(_, t)| t)))
                    .collect();
                let rest = &src[open + ps.len() + 2..];
                let head = &rest[..rest.find('{').unwrap()];
                let ret = rust_ty(head.trim().strip_prefix("->").unwrap_or(""));
                m.insert(name, (ret, args));
            }
        }
        m
    }

    fn doc_sigs() -> BTreeMap<String, Sig> {
        let mut m = BTreeMap::new();
        for (at, _) in DOC.match_indices([' ', '*']) {
            let line_start = DOC[..at].rfind('\n').map_or(0, |i| i + 1);
            let ret = &DOC[line_start..=at];
            let name_at = at + 1;
            if !DOC[name_at..].starts_with("rc_") && !DOC[name_at..].starts_with("reformc_") {
                continue;
            }
            let Some(open) = DOC[name_at..].find('(').map(|o| name_at + o) else {
                continue;
            };
            let name = &DOC[name_at..open];
            if ret.trim_start().starts_with("//")
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            let args = split_top(params(DOC, open))
                .iter()
                .filter(|a| a.trim() != "void")
                .map(|a| {
                    // Drop the parameter name: the type is what precedes it.
                    let a = a.trim();
                    let cut = a.rfind([' ', '*']).map_or(0, |i| i + 1);
                    c_ty(&a[..cut])
                })
                .collect();
            m.insert(name.to_string(), (c_ty(ret), args));
        }
        m
    }

    #[test]
    fn externs_runtime_and_abi_doc_agree_on_types() {
        let (rust, doc) = (rust_sigs(), doc_sigs());
        let ours = EXTERNS
            .iter()
            .filter(|(n, _, _)| n.starts_with("rc_") || n.starts_with("reformc_"));
        let mut checked = 0;
        for (name, ret, args) in ours {
            checked += 1;
            let want: Sig = (*ret, args.to_vec());
            let r = rust
                .get(*name)
                .unwrap_or_else(|| panic!("{name}: no extern \"C\" definition in the runtime"));
            assert_eq!(r, &want, "{name}: runtime definition vs abi::EXTERNS");
            let d = doc
                .get(*name)
                .unwrap_or_else(|| panic!("{name}: not declared in runtime/ABI.md"));
            assert_eq!(d, &want, "{name}: runtime/ABI.md vs abi::EXTERNS");
        }
        // libc functions (memcpy, ...) are the only externs not checked here.
        assert!(checked >= 30, "only {checked} runtime functions checked");
    }
}

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
