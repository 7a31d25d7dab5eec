//! Writing safetensors files (gradients, checkpoints): std only, atomic.
//!
//! The header lists tensors in name order; the data section follows it,
//! 8-byte aligned (the header is padded with spaces, as the format allows).

use std::collections::BTreeMap;
use std::path::Path;

/// One tensor to write: its dtype string (`F32`, `F64`, `I64`, ...), shape
/// and little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Blob {
    /// safetensors dtype string.
    pub dtype: &'static str,
    /// Dims.
    pub shape: Vec<u64>,
    /// Little-endian element bytes, `shape.product() * size(dtype)` of them.
    pub bytes: Vec<u8>,
}

/// The bytes of a safetensors file holding `tensors` and `metadata`.
///
/// ```
/// use reformc_tensor::safetensors_write::{encode, Blob};
/// use std::collections::BTreeMap;
/// let mut t = BTreeMap::new();
/// t.insert("w".to_string(), Blob { dtype: "F32", shape: vec![2], bytes: vec![0; 8] });
/// let bytes = encode(&t, &BTreeMap::new());
/// let (entries, _) = reformc_tensor::safetensors::parse(&bytes, bytes.len() as u64).unwrap();
/// assert_eq!(entries[0].name, "w");
/// ```
pub fn encode(tensors: &BTreeMap<String, Blob>, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = String::from("{");
    let mut fields = Vec::new();
    if !metadata.is_empty() {
        let kv: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
            .collect();
        fields.push(format!("\"__metadata__\":{{{}}}", kv.join(",")));
    }
    let mut offset = 0usize;
    for (name, t) in tensors {
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        let end = offset + t.bytes.len();
        fields.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            json_str(name),
            t.dtype,
            shape.join(",")
        ));
        offset = end;
    }
    header.push_str(&fields.join(","));
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for t in tensors.values() {
        out.extend_from_slice(&t.bytes);
    }
    out
}

/// Writes [`encode`]'s bytes to `path` atomically (a complete new file, or
/// the old one untouched).
pub fn write(
    path: &Path,
    tensors: &BTreeMap<String, Blob>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), String> {
    let bytes = encode(tensors, metadata);
    crate::outfile::write_atomic(path, |w| w.write_all(&bytes))
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A [`crate::Tensor`] as a [`Blob`] (row-major, little-endian).
#[cfg(feature = "ndarray")]
pub fn blob(t: &crate::Tensor) -> Blob {
    use crate::Tensor;
    fn le<T: Copy, const N: usize>(a: &ndarray::ArrayD<T>, f: fn(T) -> [u8; N]) -> Vec<u8> {
        a.iter().flat_map(|&x| f(x)).collect()
    }
    let shape = t.shape().iter().map(|&d| d as u64).collect();
    let (dtype, bytes) = match t {
        Tensor::F32(a) => ("F32", le(a, f32::to_le_bytes)),
        Tensor::F64(a) => ("F64", le(a, f64::to_le_bytes)),
        Tensor::I64(a) => ("I64", le(a, i64::to_le_bytes)),
        Tensor::I32(a) => ("I32", le(a, i32::to_le_bytes)),
        Tensor::Bool(a) => ("BOOL", a.iter().map(|&b| u8::from(b)).collect()),
    };
    Blob {
        dtype,
        shape,
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_parses_back() {
        let mut t = BTreeMap::new();
        t.insert(
            "b".to_string(),
            Blob {
                dtype: "F64",
                shape: vec![1, 3],
                bytes: vec![1; 24],
            },
        );
        t.insert(
            "a\"q".to_string(),
            Blob {
                dtype: "I64",
                shape: vec![],
                bytes: vec![2; 8],
            },
        );
        let meta = BTreeMap::from([("step".to_string(), "7".to_string())]);
        let bytes = encode(&t, &meta);
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let (entries, data) = crate::safetensors::parse(&bytes, bytes.len() as u64).unwrap();
        assert_eq!(entries.len(), 2);
        let b = entries.iter().find(|e| e.name == "b").unwrap();
        assert_eq!((b.dtype.as_str(), b.shape.clone()), ("F64", vec![1, 3]));
        let at = (data + b.begin) as usize;
        assert_eq!(&bytes[at..at + 24], &[1u8; 24][..]);
    }
}
