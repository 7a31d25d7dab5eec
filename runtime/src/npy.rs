//! A small, careful `.npy` reader and writer for executables produced by the
//! LLVM backend (owned by the backend; see `exe_main`).
//!
//! Reads format versions 1-3, little-endian `f4`, `f8`, `i8`, `i4`, `i2`,
//! `i1`, `u1` and `b1`, C order only; every size is checked against the file
//! length before anything is allocated. Errors are messages, never panics.

use std::path::Path;

/// Element data of an array.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// float32.
    F32(Vec<f32>),
    /// float64.
    F64(Vec<f64>),
    /// Any integer or bool type, widened.
    Int(Vec<i64>),
}

/// A decoded array.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Dims.
    pub shape: Vec<usize>,
    /// numpy dtype descriptor as found (`<i8`, `<f4`, ...).
    pub descr: String,
    /// Elements in C order.
    pub data: NpyData,
}

/// Reads a file.
pub fn read(path: &Path) -> Result<NpyArray, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot open: {e}"))?;
    parse(&bytes)
}

fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let k1 = format!("'{key}'");
    let k2 = format!("\"{key}\"");
    let pos = header.find(&k1).or_else(|| header.find(&k2))?;
    let rest = &header[pos + k1.len()..];
    let colon = rest.find(':')?;
    Some(rest[colon + 1..].trim_start())
}

/// Parses the bytes of an `.npy` file.
///
/// ```
/// use reformc_runtime::npy::{parse, to_bytes_f32, NpyData};
/// let bytes = to_bytes_f32(&[2, 1], &[1.5, -2.0]);
/// let a = parse(&bytes).unwrap();
/// assert_eq!(a.shape, vec![2, 1]);
/// assert_eq!(a.data, NpyData::F32(vec![1.5, -2.0]));
/// assert!(parse(&bytes[..bytes.len() - 1]).unwrap_err().contains("truncated"));
/// ```
pub fn parse(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let end = start
        .checked_add(hlen)
        .filter(|e| *e <= bytes.len())
        .ok_or("truncated .npy header")?;
    let header =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| "the .npy header is not text")?;
    let descr = header_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    let quote = descr.chars().next().ok_or("bad 'descr'")?;
    if quote != '\'' && quote != '"' {
        return Err("unsupported dtype descriptor (structured arrays are not supported)".into());
    }
    let close = descr[1..].find(quote).ok_or("bad 'descr'")?;
    let descr = descr[1..1 + close].to_string();
    let fortran =
        header_value(header, "fortran_order").ok_or("the .npy header has no 'fortran_order'")?;
    if fortran.starts_with("True") {
        return Err(
            "Fortran-ordered arrays are not supported (save with np.ascontiguousarray)".into(),
        );
    }
    let shape_txt = header_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    if !shape_txt.starts_with('(') {
        return Err("bad 'shape' in the .npy header".into());
    }
    let close = shape_txt
        .find(')')
        .ok_or("bad 'shape' in the .npy header")?;
    let mut shape = Vec::new();
    for part in shape_txt[1..close].split(',') {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        let d: usize = p
            .trim_end_matches('L')
            .parse()
            .map_err(|_| format!("bad dimension `{p}` in the .npy header"))?;
        shape.push(d);
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("the .npy shape is too large")?;
    let (size, kind) = match descr.as_str() {
        "<f4" => (4, 'f'),
        "<f8" => (8, 'f'),
        "<i8" => (8, 'i'),
        "<i4" => (4, 'i'),
        "<i2" => (2, 'i'),
        "|i1" | "<i1" => (1, 'i'),
        "|u1" | "<u1" => (1, 'u'),
        "|b1" => (1, 'u'),
        other => return Err(format!("unsupported dtype `{other}` (little-endian float32/64, int8-64, uint8 or bool expected)")),
    };
    let need = numel
        .checked_mul(size)
        .ok_or("the .npy shape is too large")?;
    let data = &bytes[end..];
    if data.len() < need {
        return Err(format!(
            "truncated .npy data: {} bytes for {numel} elements of {descr} ({need} bytes)",
            data.len()
        ));
    }
    let data = &data[..need];
    let out = match (kind, size) {
        ('f', 4) => NpyData::F32(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        ('f', _) => NpyData::F64(
            data.chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
        ),
        ('i', 8) => NpyData::Int(
            data.chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
        ),
        ('i', 4) => NpyData::Int(
            data.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
        ),
        ('i', 2) => NpyData::Int(
            data.chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as i64)
                .collect(),
        ),
        ('i', _) => NpyData::Int(data.iter().map(|&b| b as i8 as i64).collect()),
        _ => NpyData::Int(data.iter().map(|&b| b as i64).collect()),
    };
    Ok(NpyArray {
        shape,
        descr,
        data: out,
    })
}

fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad so that the data starts at a multiple of 64 bytes, newline-terminated.
    let total = 10 + h.len() + 1;
    let pad = (64 - total % 64) % 64;
    h.push_str(&" ".repeat(pad));
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out
}

/// The bytes of a float32 `.npy` file.
pub fn to_bytes_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = header_bytes("<f4", shape);
    out.reserve(data.len() * 4);
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The bytes of a float64 `.npy` file.
pub fn to_bytes_f64(shape: &[usize], data: &[f64]) -> Vec<u8> {
    let mut out = header_bytes("<f8", shape);
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The bytes of an int64 `.npy` file.
pub fn to_bytes_i64(shape: &[usize], data: &[i64]) -> Vec<u8> {
    let mut out = header_bytes("<i8", shape);
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Streams a `.npy` file of `data` to `path` a block at a time, so that
/// writing a large output costs no second copy of it in memory. `descr` is
/// the dtype string (`<f4`, `<f8`, `<i8`); `le` appends one value's bytes.
///
/// ```
/// let p = std::env::temp_dir().join(format!("rc_npy_doc_{}.npy", std::process::id()));
/// reformc_runtime::npy::write_streamed(&p, "<f4", &[2], &[1.5f32, -2.0], |x, o| {
///     o.extend_from_slice(&x.to_le_bytes())
/// })
/// .unwrap();
/// let bytes = std::fs::read(&p).unwrap();
/// assert_eq!(bytes, reformc_runtime::npy::to_bytes_f32(&[2], &[1.5, -2.0]));
/// # std::fs::remove_file(p).ok();
/// ```
pub fn write_streamed<T: Copy>(
    path: &Path,
    descr: &str,
    shape: &[usize],
    data: &[T],
    le: impl Fn(T, &mut Vec<u8>),
) -> Result<(), String> {
    crate::outfile::write_atomic(path, |f| {
        let mut buf = header_bytes(descr, shape);
        for block in data.chunks(1 << 16) {
            for &x in block {
                le(x, &mut buf);
            }
            f.write_all(&buf)?;
            buf.clear();
        }
        f.write_all(&buf)
    })
    .map_err(|e| format!("cannot write: {e}"))
}

/// Writes `bytes` to `path` atomically (a complete file or the old one).
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    crate::outfile::write_atomic(path, |f| f.write_all(bytes))
        .map_err(|e| format!("cannot write: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejections() {
        let b = to_bytes_i64(&[2, 3], &[0, 1, 2, 3, 4, 5]);
        assert_eq!((b.len() - 48) % 64, 0); // header padded to a multiple of 64 bytes
        let a = parse(&b).unwrap();
        assert_eq!((a.shape.clone(), a.descr.as_str()), (vec![2, 3], "<i8"));
        assert_eq!(a.data, NpyData::Int(vec![0, 1, 2, 3, 4, 5]));
        let s = parse(&to_bytes_f64(&[], &[2.5])).unwrap();
        assert_eq!((s.shape.len(), s.data), (0, NpyData::F64(vec![2.5])));
        assert!(parse(b"hello world").unwrap_err().contains("magic"));
        let mut f = b.clone();
        let text = String::from_utf8_lossy(&f[10..74]).replace("False", "True ");
        f[10..74].copy_from_slice(text.as_bytes());
        assert!(parse(&f).unwrap_err().contains("Fortran"));
        let mut g = b.clone();
        let text = String::from_utf8_lossy(&g[10..74]).replace("<i8", ">i8");
        g[10..74].copy_from_slice(text.as_bytes());
        assert!(parse(&g).unwrap_err().contains("unsupported dtype"));
        // A huge claimed shape with little data is a clean error.
        let h = header_bytes("<f4", &[1 << 40, 1 << 30]);
        assert!(parse(&h).is_err());
    }
}
