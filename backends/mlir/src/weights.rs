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

/// The embedded weights: the resource key that names each blob.
pub(crate) struct Embedded<'w> {
    /// The weights' data, by name.
    weights: &'w BTreeMap<String, Tensor>,
    /// Resource key of each weight name (names read twice share one blob).
    keys: BTreeMap<String, String>,
    /// The blobs in key order: (key, tensor).
    pub blobs: Vec<(String, &'w Tensor)>,
}

impl Embedded<'_> {
    /// The `arith.constant` defining weight `name` (value `v`): a
    /// `dense_resource` reading its blob, or, for a rank-0 weight, the value
    /// inline: IREE 3.13 crashes on a rank-0 `dense_resource` read by a
    /// `linalg.generic` ("ElementsAttr does not provide iteration facilities").
    pub(crate) fn constant(&self, g: &Graph, v: ValueId, name: &str) -> String {
        let ty = crate::emit::tensor_ty(g.ty(v));
        match (
            self.weights.get(name).and_then(scalar_literal),
            self.keys.get(name),
        ) {
            (Some(x), _) => format!("arith.constant dense<{x}> : {ty}"),
            (None, Some(key)) => format!("arith.constant dense_resource<{key}> : {ty}"),
            // `embed` named every weight of the graph.
            (None, None) => format!("arith.constant dense_resource<{name}> : {ty}"),
        }
    }
}

/// The exact MLIR literal of a rank-0 tensor's value (floats as their bits).
fn scalar_literal(t: &Tensor) -> Option<String> {
    if !t.shape().is_empty() {
        return None;
    }
    match t {
        Tensor::F32(a) => a.first().map(|x| format!("0x{:08X}", x.to_bits())),
        Tensor::F64(a) => a.first().map(|x| format!("0x{:016X}", x.to_bits())),
        Tensor::I64(a) => a.first().map(i64::to_string),
        Tensor::I32(a) => a.first().map(i32::to_string),
        Tensor::Bool(_) => None,
    }
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
        if keys.contains_key(name) || !weights.contains_key(name) {
            continue;
        }
        // `check` saw every weight; a rank-0 weight is written inline.
        let Some(t) = weights.get(name).filter(|t| scalar_literal(t).is_none()) else {
            continue;
        };
        let key = key_for(name, &keys);
        keys.insert(name.to_string(), key.clone());
        blobs.push((key, t));
    }
    Ok(Embedded {
        weights,
        keys,
        blobs,
    })
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
