//! The JSON signature a compiled model reports (`reformc_model_signature`)
//! and the C header (`model.h`) shipped with shared libraries.

use crate::abi;
use crate::{ExeInfo, MemoryPlan, StepInfo, Variant};
use reformc_ir::{Dim, DimEnv, TensorType};
use serde_json::{json, Value};

fn shape_json(t: &TensorType) -> Value {
    Value::Array(
        t.shape
            .iter()
            .map(|d| match d {
                Dim::Const(c) => json!(c),
                Dim::Sym(s) => json!(s),
            })
            .collect(),
    )
}

fn tensor_json(name: &str, t: &TensorType) -> Value {
    json!({"name": name, "dtype": t.dtype.name(), "shape": shape_json(t)})
}

/// The input list of each variant as text: `(input_ids i64[B,L], ...)`.
pub(crate) fn expected_inputs(variants: &[Variant]) -> String {
    variants
        .iter()
        .map(|v| {
            let items: Vec<String> = v
                .graph
                .inputs()
                .iter()
                .map(|(n, id)| format!("{n} {}", v.graph.ty(*id)))
                .collect();
            format!("({})", items.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Everything the signature describes.
pub(crate) struct SignatureParts<'a> {
    pub model_name: &'a str,
    pub variants: &'a [Variant],
    pub weights: &'a [(String, TensorType)],
    pub allowed_extra: &'a [String],
    pub embedded: bool,
    pub default_weights: Option<&'a str>,
    pub limits: &'a [crate::DimLimit],
    pub plans: &'a [(String, MemoryPlan)],
    pub exe: Option<&'a ExeInfo>,
    pub target_cpu: &'a str,
}

/// The JSON text of `reformc_model_signature()`.
pub(crate) fn signature_json(p: &SignatureParts) -> String {
    let variants: Vec<Value> = p
        .variants
        .iter()
        .map(|v| {
            let inputs: Vec<Value> = v
                .graph
                .inputs()
                .iter()
                .map(|(n, id)| tensor_json(n, v.graph.ty(*id)))
                .collect();
            json!({"name": v.name, "inputs": inputs})
        })
        .collect();
    let outputs: Vec<Value> = p
        .variants
        .first()
        .map(|v| {
            v.graph
                .outputs
                .iter()
                .map(|(n, id)| tensor_json(n, v.graph.ty(*id)))
                .collect()
        })
        .unwrap_or_default();
    let weights: Vec<Value> = p.weights.iter().map(|(n, t)| tensor_json(n, t)).collect();
    let dtypes: serde_json::Map<String, Value> = reformc_ir::DType::ALL
        .iter()
        .map(|d| (d.name().to_string(), json!(abi::dtype_code(*d))))
        .collect();
    let errors: serde_json::Map<String, Value> = abi::err::ALL
        .iter()
        .map(|(c, n, _)| (n.to_string(), json!(c)))
        .collect();
    let limits: Vec<Value> = p
        .limits
        .iter()
        .map(|l| json!({"symbol": l.symbol, "max": l.max, "what": l.what}))
        .collect();
    let plans: Vec<Value> = p
        .plans
        .iter()
        .map(|(name, plan)| {
            let mut env = DimEnv::new();
            env.insert("B".into(), 1);
            for l in p.limits {
                env.insert(l.symbol.clone(), l.max);
                if l.symbol == "P" {
                    env.insert("L".into(), l.max);
                }
            }
            json!({
                "variant": name,
                "buffers": plan.buffers.len(),
                "peak_bytes_at_B1_max_len": plan.peak_bytes(&env),
            })
        })
        .collect();
    let exe = p.exe.map(|e| {
        json!({
            "vocab_size": e.vocab_size,
            "max_len": e.max_len,
            "pad_multiple": e.pad_multiple,
            "pad_min_len": e.pad_min_len,
            "n_lsh_layers": e.n_lsh,
            "heads": e.heads,
            "head_dim": e.head_dim,
            "rounds": e.rounds,
            "rotation_half_width": e.rot_half,
            "default_threads": e.default_threads,
        })
    });
    let v = json!({
        "reformc_abi": abi::ABI_VERSION,
        "model": p.model_name,
        "target_cpu": p.target_cpu,
        "dtype_codes": dtypes,
        "error_codes": errors,
        "variants": variants,
        "outputs": outputs,
        "weights": {
            "mode": if p.embedded { "embedded" } else { "mmap" },
            "default_path": p.default_weights,
            "allowed_extra": p.allowed_extra,
            "tensors": weights,
        },
        "limits": limits,
        "model_info": exe,
        "memory_plan": plans,
    });
    v.to_string()
}

/// `header` (a [`model_h`] text) with the training step's outputs and label
/// alignment described at the end of its leading comment.
/// `model.h` for exports renamed by [`crate::abi::prefixed`]: every
/// exported name and the include guard carry the prefix; the shared
/// definitions (`reformc_tensor`, `REFORMC_*` constants) stay, guarded, so
/// that several models' headers can be included together.
pub(crate) fn with_prefix(header: &str, prefix: &str) -> String {
    let mut names: Vec<&str> = crate::aot::EXPORTS.to_vec();
    // Longer names first: none is then rewritten inside another.
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = header.replace(
        "REFORMC_MODEL_H",
        &format!("{}_MODEL_H", prefix.to_uppercase()),
    );
    for n in names {
        out = out.replace(n, &crate::abi::prefixed(n, prefix));
    }
    out
}

pub(crate) fn with_step_note(header: &str, step: &StepInfo) -> String {
    let mut note = String::from(
        " * Training step: outputs the mean cross-entropy `loss` and one `grad:<weight>`\n * per weight. `labels` (i64 [B, L], -100 = ignored) is aligned with the logits:\n",
    );
    if step.causal {
        note.push_str(
            " * this causal LM predicts token t+1 at position t, so pass the ids shifted,\n",
        );
        note.push_str(" * labels[:, t] = ids[:, t+1] and -100 at the last position (the step\n");
        note.push_str(
            " * executable's --labels and `reformc grad` shift for you; this ABI does not).\n",
        );
    } else {
        note.push_str(" * labels[:, t] is the target at position t (no shift).\n");
    }
    match header.find(" *\n * Thread safety") {
        Some(at) => format!("{}{note}{}", &header[..at], &header[at..]),
        None => header.to_string(),
    }
}

/// The C header documenting the ABI of a compiled model (`model.h`).
pub(crate) fn model_h(p: &SignatureParts) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "/* model.h: C ABI of the reformc-compiled model `{}` (ABI version {}).\n *\n",
        p.model_name,
        abi::ABI_VERSION
    ));
    s.push_str(" * Inputs (positional; reformc_model_run picks the variant whose count,\n * dtypes and ranks match):\n");
    for v in p.variants {
        let items: Vec<String> = v
            .graph
            .inputs()
            .iter()
            .map(|(n, id)| format!("{n} {}", v.graph.ty(*id)))
            .collect();
        s.push_str(&format!(" *   {:<10} {}\n", v.name, items.join(", ")));
    }
    if let Some(v) = p.variants.first() {
        s.push_str(" * Outputs:\n");
        for (n, id) in &v.graph.outputs {
            s.push_str(&format!(" *   {n} {}\n", v.graph.ty(*id)));
        }
    }
    s.push_str(" * Symbolic dims: B (batch) and L (length) are taken from input_ids; P is L\n");
    s.push_str(" * padded to the chunk multiple (Hugging Face's eval padding rule).\n");
    for l in p.limits {
        s.push_str(&format!(
            " * Limit: {} <= {} ({}).\n",
            l.symbol, l.max, l.what
        ));
    }
    s.push_str(" * attention_mask may have data == NULL: no padding (all ones).\n");
    s.push_str(&format!(
        " * Weights: {} tensors ({}); see reformc_model_signature() for names and shapes.\n",
        p.weights.len(),
        if p.embedded {
            "embedded in the library"
        } else {
            "memory-mapped from a safetensors file by reformc_model_load_weights"
        }
    ));
    s.push_str(
        " *\n * Thread safety: reformc_model_run may run concurrently from several threads;\n",
    );
    s.push_str(
        " * loading/unloading weights must not overlap with runs. Errors are per thread.\n */\n",
    );
    s.push_str("#ifndef REFORMC_MODEL_H\n#define REFORMC_MODEL_H\n\n#include <stdint.h>\n\n");
    s.push_str("#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n");
    s.push_str(&format!(
        "#define REFORMC_ABI_VERSION {}\n",
        abi::ABI_VERSION
    ));
    s.push_str(&format!("#define REFORMC_MAX_RANK {}\n\n", abi::MAX_RANK));
    s.push_str("/* Element types (reformc_tensor.dtype). */\n");
    for d in reformc_ir::DType::ALL {
        s.push_str(&format!(
            "#define REFORMC_{} {}\n",
            d.name().to_uppercase(),
            abi::dtype_code(d)
        ));
    }
    s.push_str("\n/* Status codes: 0 = success; details from reformc_model_last_error(). */\n");
    for (c, n, what) in abi::err::ALL {
        s.push_str(&format!("#define {n} {c} /* {what} */\n"));
    }
    s.push('\n');
    s.push_str(abi::TENSOR_STRUCT_C);
    s.push_str("\n\n");
    s.push_str(
        r#"/* Runs the model: `inputs` (n_inputs of them, borrowed) -> `outputs`
 * (n_outputs slots the caller provides; filled with owned tensors). The
 * counts are checked before either array is touched: an n_inputs that no
 * compiled signature takes is REFORMC_ERR_ARGUMENT, with no input read.
 * Returns 0 or a REFORMC_ERR_* code; never aborts on bad input. */
int32_t reformc_model_run(const reformc_tensor* inputs, int64_t n_inputs,
                          reformc_tensor* outputs, int64_t n_outputs);

/* Memory-maps a safetensors file (or reads it, see reformc_set_weights_mode)
 * and checks every tensor's name, dtype and shape and the file size against
 * the compiled signature. On failure the previously loaded weights (if any)
 * stay in place. */
int32_t reformc_model_load_weights(const char* safetensors_path);

/* allow != 0: reformc_model_load_weights accepts NaN or infinite weights and
 * returns 0, with reformc_model_last_error() naming the first one; by default
 * (0) such a file is refused with REFORMC_ERR_VALUE. Process-wide. */
void reformc_model_allow_nonfinite_weights(int32_t allow);

/* How later reformc_model_load_weights calls bring the file into memory, for
 * the whole process: REFORMC_WEIGHTS_MMAP (the default: no copy, but
 * truncating or rewriting the file while it is loaded raises SIGBUS) or
 * REFORMC_WEIGHTS_READ (one copy in memory, immune to later changes of the
 * file). Returns 0, or REFORMC_ERR_ARGUMENT for another value. */
#define REFORMC_WEIGHTS_MMAP 0
#define REFORMC_WEIGHTS_READ 1
int32_t reformc_set_weights_mode(int32_t mode);

/* Uses caller-owned f32 arrays as weights (signature order, n = number of
 * weights); they must stay valid while the model runs. */
int32_t reformc_model_set_weights(const void* const* ptrs, int64_t n);

/* Unmaps loaded weights (embedded weights come back into use). */
void reformc_model_unload_weights(void);

/* JSON: variants (inputs), outputs, weights, limits, error codes, memory plan. */
const char* reformc_model_signature(void);

/* The last error message of this thread (empty string if none); never NULL. */
const char* reformc_model_last_error(void);

/* Fills a tensor header with row-major contiguous strides (does not copy data;
 * owns_data = 0). Returns 0, REFORMC_ERR_DTYPE for an unknown dtype code, or
 * REFORMC_ERR_ARGUMENT for a bad rank/shape. */
int32_t reformc_tensor_init(reformc_tensor* t, int32_t dtype, int32_t rank,
                            const int64_t* shape, void* data);

/* Frees an output's data if it owns it and clears the struct. NULL is ignored. */
void reformc_tensor_release(reformc_tensor* t);

#ifdef __cplusplus
}
#endif

#endif /* REFORMC_MODEL_H */
"#,
    );
    s
}

/// `model.h` for a library whose model functions come from elsewhere (the
/// GPU backend's): the same ABI text for `variants` (inputs and outputs),
/// their weights (loaded from a file, not embedded) and `limits`, with
/// `extra` declarations added before the header's end.
pub fn foreign_model_h(
    model_name: &str,
    variants: &[Variant],
    limits: &[crate::DimLimit],
    extra: &str,
) -> crate::Result<String> {
    let weights = crate::weight_table(variants)?;
    let parts = SignatureParts {
        model_name,
        variants,
        weights: &weights,
        allowed_extra: &[],
        embedded: false,
        default_weights: None,
        limits,
        plans: &[],
        exe: None,
        target_cpu: "",
    };
    let h = model_h(&parts);
    let end = "#ifdef __cplusplus\n}\n#endif";
    Ok(match h.rfind(end) {
        Some(at) => format!("{}{extra}\n{}", &h[..at], &h[at..]),
        None => h,
    })
}
