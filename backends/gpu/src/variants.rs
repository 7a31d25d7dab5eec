//! Several variants of one model in one GPU module: the MLIR backend emits a
//! module per LSH source (seeded, rotations, buckets), each with one
//! `@forward`; a GPU executable or library carries all of them, as a CPU one
//! does, so their functions are renamed `@forward_<variant>` and put side by
//! side in one module. Kernel outlining then names each kernel after its
//! function (`@forward_buckets_kernel_3`), so the merged kernel module and
//! the PTX hold every variant's kernels under distinct names.

use crate::GpuError;

/// The function a variant's `@forward` becomes in a merged module.
///
/// ```
/// assert_eq!(reformc_backend_gpu::variants::entry("buckets"), "forward_buckets");
/// ```
pub fn entry(variant: &str) -> String {
    format!("forward_{variant}")
}

/// The packed C entry MLIR's ExecutionEngine adds for function `func`
/// (`_mlir_` + the C wrapper `_mlir_ciface_<func>`): what a generated `main`
/// calls.
///
/// ```
/// assert_eq!(
///     reformc_backend_gpu::variants::packed_symbol("forward_seeded"),
///     "_mlir__mlir_ciface_forward_seeded"
/// );
/// ```
pub fn packed_symbol(func: &str) -> String {
    format!("_mlir__mlir_ciface_{func}")
}

/// One module holding each `(variant, module text)`'s `@forward` as
/// `@forward_<variant>` ([`entry`]). Each text must be what
/// `reformc_backend_mlir::emit_module` writes with weights as arguments: a
/// `module { ... }` whose only symbol is `@forward` (no resources, no other
/// functions); anything else is refused rather than merged wrongly.
///
/// ```
/// use reformc_backend_gpu::variants::merge;
/// let one = "module {\n  func.func @forward(%a: tensor<4xf32>) -> tensor<4xf32> {\n    return %a : tensor<4xf32>\n  }\n}\n";
/// let merged = merge(&[("seeded", one), ("buckets", one)]).unwrap();
/// assert!(merged.contains("@forward_seeded(") && merged.contains("@forward_buckets("));
/// assert!(!merged.contains("@forward("));
/// ```
pub fn merge(modules: &[(&str, &str)]) -> Result<String, GpuError> {
    let mut out = String::from("module {\n");
    for (variant, text) in modules {
        if variant.is_empty()
            || !variant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(bad(variant, "a variant name is a non-empty identifier"));
        }
        out.push_str(&body(variant, text)?.replacen(
            "@forward(",
            &format!("@{}(", entry(variant)),
            1,
        ));
    }
    out.push_str("}\n");
    Ok(out)
}

/// The lines between `module {` and its closing `}` of one variant's text,
/// after checking that `@forward` is its only symbol.
fn body<'t>(variant: &str, text: &'t str) -> Result<&'t str, GpuError> {
    let inner = text
        .trim_end()
        .strip_prefix("module {\n")
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| bad(variant, "the text is not one `module { ... }`"))?;
    if inner.contains("{-#") {
        return Err(bad(
            variant,
            "the module carries resources (embedded weights)",
        ));
    }
    let symbols = inner.matches('@').count();
    if symbols != 1 || inner.matches("func.func @forward(").count() != 1 {
        return Err(bad(
            variant,
            "`@forward` must be the module's only symbol (weights as arguments)",
        ));
    }
    Ok(inner)
}

fn bad(variant: &str, why: &str) -> GpuError {
    GpuError::Lowering(format!("merging variant `{variant}`: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "module {\n  func.func @forward(%a: tensor<?xf32>) -> tensor<?xf32> {\n    %c0 = arith.constant 0 : index\n    %n = tensor.dim %a, %c0 : tensor<?xf32>\n    %e = tensor.empty(%n) : tensor<?xf32>\n    %r = linalg.generic {indexing_maps = [affine_map<(i) -> (i)>, affine_map<(i) -> (i)>], iterator_types = [\"parallel\"]} ins(%a : tensor<?xf32>) outs(%e : tensor<?xf32>) {\n    ^bb0(%x: f32, %y: f32):\n      %z = arith.addf %x, %x : f32\n      linalg.yield %z : f32\n    } -> tensor<?xf32>\n    return %r : tensor<?xf32>\n  }\n}\n";

    #[test]
    fn merged_variants_lower_to_one_kernel_module_with_distinct_entries() {
        let text = merge(&[("seeded", ONE), ("rotations", ONE), ("buckets", ONE)]).unwrap();
        let k = crate::compile_ptx(&text, &crate::GpuOptions::default()).unwrap();
        let mut prefixes: Vec<&str> = k
            .entries
            .iter()
            .map(|e| e.split("_kernel").next().unwrap())
            .collect();
        prefixes.dedup();
        assert_eq!(
            prefixes,
            ["forward_seeded", "forward_rotations", "forward_buckets"],
            "{:?}",
            k.entries
        );
    }

    #[test]
    fn anything_but_a_lone_forward_is_refused() {
        let two = ONE.replace("\n}\n", "\n  func.func private @helper()\n}\n");
        let embedded = format!("{ONE}{{-#\n  dialect_resources: {{}}\n#-}}\n");
        for (text, needle) in [
            (two.as_str(), "only symbol"),
            ("func.func @forward() { return }", "not one `module"),
            (ONE.replace("@forward", "@main").as_str(), "only symbol"),
        ] {
            let err = merge(&[("seeded", text)]).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("`seeded`"), "{err}");
        }
        assert!(merge(&[("seeded", &embedded)]).is_err());
        let err = merge(&[("a-b", ONE)]).unwrap_err().to_string();
        assert!(err.contains("identifier"), "{err}");
    }
}
