//! Weights inside the module (`--weights-mode embed`): each weight becomes an
//! `arith.constant dense_resource<key>` whose bytes live in the module's
//! `{-# dialect_resources: { builtin: { key: "0x..." } } #-}` section, so
//! that `@forward` takes only the runtime inputs.
//!
//! A blob is the hex text of a 4-byte little-endian alignment followed by the
//! elements, little-endian, in row-major order: the form MLIR's parser reads
//! and `mlir-opt`, the CPU pipeline and IREE accept.

use crate::MlirError;
use reformc_ir::{Graph, TensorType, ValueId};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One embedded weight: the resource key that names its blob.
pub(crate) struct Embedded<'w> {
    /// Resource key of each weight name (names read twice share one blob).
    pub keys: BTreeMap<String, String>,
    /// The blobs in key order: (key, tensor).
    pub blobs: Vec<(String, &'w Tensor)>,
}

/// `"f32[4, 8]"`: a tensor's dtype and shape as the error messages show them.
fn shown(t: &Tensor) -> String {
    let dims: Vec<String> = t.shape().iter().map(usize::to_string).collect();
    format!("{}[{}]", t.dtype(), dims.join(","))
}

/// Whether tensor `t` has exactly the type `ty` (numeric dimensions only).
fn matches(ty: &TensorType, t: &Tensor) -> bool {
    ty.dtype == t.dtype()
        && ty.rank() == t.shape().len()
        && ty
            .shape
            .iter()
            .zip(t.shape())
            .all(|(d, &n)| d.as_const() == Some(n as u64))
}

/// Checks that every weight of `graph` is in `weights` with the graph's dtype
/// and shape; the error names the first tensor that is not, expected against found.
pub(crate) fn check(graph: &Graph, weights: &BTreeMap<String, Tensor>) -> Result<(), MlirError> {
    for (name, v) in graph.weights() {
        let ty = graph.ty(v);
        if ty.shape.iter().any(|d| d.as_const().is_none()) {
            return Err(MlirError::Weights(format!(
                "weight `{name}` is {ty}: an embedded weight needs numeric dimensions"
            )));
        }
        match weights.get(name) {
            None => {
                return Err(MlirError::Weights(format!(
                    "weight `{name}` is missing (expected {ty})"
                )))
            }
            Some(t) if !matches(ty, t) => {
                return Err(MlirError::Weights(format!(
                    "weight `{name}`: expected {ty}, found {}",
                    shown(t)
                )))
            }
            Some(Tensor::Bool(_)) => {
                return Err(MlirError::Weights(format!(
                    "weight `{name}` is {ty}: boolean weights cannot be embedded"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A resource key for weight `name`: MLIR's bare identifiers allow letters,
/// digits, `_`, `$` and `.` and start with a letter or `_`, so any other
/// character becomes `_`; a clash gets a numeric suffix.
fn key_for(name: &str, taken: &BTreeMap<String, String>) -> String {
    let mut base: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !base.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        base.insert_str(0, "w_");
    }
    let used = |k: &str| taken.values().any(|t| t == k);
    if !used(&base) {
        return base;
    }
    (1..)
        .map(|i| format!("{base}_{i}"))
        .find(|k| !used(k))
        .unwrap_or(base)
}

/// Checks `weights` against `graph` and names a blob for each weight.
pub(crate) fn embed<'w>(
    graph: &Graph,
    weights: &'w BTreeMap<String, Tensor>,
) -> Result<Embedded<'w>, MlirError> {
    check(graph, weights)?;
    let mut keys = BTreeMap::new();
    let mut blobs = Vec::new();
    for (name, _) in graph.weights() {
        if keys.contains_key(name) {
            continue;
        }
        let key = key_for(name, &keys);
        keys.insert(name.to_string(), key.clone());
        // `check` saw every weight.
        if let Some(t) = weights.get(name) {
            blobs.push((key, t));
        }
    }
    Ok(Embedded { keys, blobs })
}

/// The `arith.constant` that reads weight `v`'s blob.
pub(crate) fn constant(g: &Graph, v: ValueId, key: &str) -> String {
    format!(
        "arith.constant dense_resource<{key}> : {}",
        crate::emit::tensor_ty(g.ty(v))
    )
}

/// Element bytes (little-endian) and alignment of a weight tensor.
fn element_bytes(t: &Tensor) -> (u32, Box<dyn Iterator<Item = u8> + '_>) {
    match t {
        Tensor::F32(a) => (4, Box::new(a.iter().flat_map(|x| x.to_le_bytes()))),
        Tensor::F64(a) => (8, Box::new(a.iter().flat_map(|x| x.to_le_bytes()))),
        Tensor::I64(a) => (8, Box::new(a.iter().flat_map(|x| x.to_le_bytes()))),
        Tensor::I32(a) => (4, Box::new(a.iter().flat_map(|x| x.to_le_bytes()))),
        // Refused by `check`; one byte each if it ever gets here.
        Tensor::Bool(a) => (1, Box::new(a.iter().map(|&b| u8::from(b)))),
    }
}

/// Appends `"0x<alignment><data>"` for `t` to `out`.
fn push_blob(out: &mut String, t: &Tensor) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let (align, bytes) = element_bytes(t);
    out.reserve(4 + 8 + 2 * t.shape().iter().product::<usize>() * align as usize);
    out.push_str("\"0x");
    for b in align.to_le_bytes().into_iter().chain(bytes) {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out.push('"');
}

/// Appends the `dialect_resources` section holding `blobs` (nothing when empty).
pub(crate) fn push_resources(out: &mut String, blobs: &[(String, &Tensor)]) {
    if blobs.is_empty() {
        return;
    }
    out.push_str("{-#\n  dialect_resources: {\n    builtin: {\n");
    for (i, (key, t)) in blobs.iter().enumerate() {
        let _ = write!(out, "      {key}: ");
        push_blob(out, t);
        out.push_str(if i + 1 < blobs.len() { ",\n" } else { "\n" });
    }
    out.push_str("    }\n  }\n#-}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, ArrayD, IxDyn};

    #[test]
    fn a_blob_is_the_alignment_then_little_endian_elements() {
        let mut s = String::new();
        push_blob(&mut s, &Tensor::F32(arr1(&[1.0f32, 2.0]).into_dyn()));
        assert_eq!(s, "\"0x040000000000803F00000040\"");
        let mut s = String::new();
        push_blob(&mut s, &Tensor::I64(arr1(&[-1i64]).into_dyn()));
        assert_eq!(s, "\"0x08000000FFFFFFFFFFFFFFFF\"");
    }

    #[test]
    fn blobs_are_row_major_even_for_a_transposed_view() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let t = Tensor::F32(a.reversed_axes());
        let mut s = String::new();
        push_blob(&mut s, &t);
        // [[1, 3], [2, 4]] row by row.
        assert_eq!(s, "\"0x040000000000803F000040400000004000008040\"");
    }

    #[test]
    fn keys_are_bare_identifiers_and_unique() {
        let mut taken = BTreeMap::new();
        assert_eq!(
            key_for("reformer.lm_head.weight", &taken),
            "reformer.lm_head.weight"
        );
        assert_eq!(key_for("0-w/x", &taken), "w_0_w_x");
        taken.insert("a-b".to_string(), "a_b".to_string());
        assert_eq!(key_for("a/b", &taken), "a_b_1");
    }
}
