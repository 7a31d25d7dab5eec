//! A small, careful `.npy` reader and writer, std only: the one reader of
//! `reformc run` (through [`crate::array`]) and of executables produced by
//! the LLVM backend (`reformc_exe_runtime::exe_main`).
//!
//! Reads format versions 1-3, little-endian `f4`, `f8`, `i8`, `i4`, `i2`,
//! `i1`, `u1` and `b1`, in C or Fortran order (Fortran arrays come back in C
//! order). Reading is bounded: only regular files are read, the header may
//! not exceed [`MAX_HEADER`] bytes, and the data size the header promises
//! (checked multiplication) is compared with the file's real size before
//! anything is allocated. Errors are messages, never panics.

use crate::shown;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Largest header accepted, in bytes. numpy itself refuses headers above
/// 10,000 bytes unless told otherwise; this leaves room for wide shapes while
/// keeping a header read from an endless or hostile file small.
pub const MAX_HEADER: usize = 1 << 16;

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

/// What a header promises: dtype, order, shape and where the data starts.
struct Header {
    descr: String,
    kind: char,
    itemsize: usize,
    fortran: bool,
    shape: Vec<usize>,
    /// Bytes of data the shape and dtype need (checked product).
    need: usize,
    /// Offset of the first data byte.
    start: usize,
}

const NOT_A_FILE: &str = "not a regular file (a .npy input must be a file of known size)";

/// Reads a file, bounded by what its header promises and its size holds.
pub fn read(path: &Path) -> Result<NpyArray, String> {
    // Checked before opening too: opening a FIFO blocks until a writer comes.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(NOT_A_FILE.into());
    }
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err(NOT_A_FILE.into());
    }
    let len = meta.len();
    let mut prefix = Vec::new();
    (&mut f)
        .take((12 + MAX_HEADER) as u64)
        .read_to_end(&mut prefix)
        .map_err(|e| format!("cannot read: {e}"))?;
    let h = parse_header(&prefix)?;
    check_size(&h, len.saturating_sub(h.start as u64))?;
    // The file holds at least `need` data bytes, so this allocation is bounded by its size.
    let mut data = vec![0u8; h.need];
    f.seek(SeekFrom::Start(h.start as u64))
        .and_then(|_| f.read_exact(&mut data))
        .map_err(|e| format!("cannot read the data: {e}"))?;
    Ok(decode(h, &data))
}

/// Parses the bytes of an `.npy` file.
///
/// ```
/// use reformc_tensor::npy::{parse, to_bytes_f32, NpyData};
/// let bytes = to_bytes_f32(&[2, 1], &[1.5, -2.0]);
/// let a = parse(&bytes).unwrap();
/// assert_eq!(a.shape, vec![2, 1]);
/// assert_eq!(a.data, NpyData::F32(vec![1.5, -2.0]));
/// assert!(parse(&bytes[..bytes.len() - 1]).unwrap_err().contains("truncated"));
/// ```
pub fn parse(bytes: &[u8]) -> Result<NpyArray, String> {
    let h = parse_header(bytes)?;
    let data = &bytes[h.start..];
    check_size(&h, data.len() as u64)?;
    let data = &data[..h.need];
    Ok(decode(h, data))
}

fn check_size(h: &Header, avail: u64) -> Result<(), String> {
    if avail < h.need as u64 {
        let numel = h.need / h.itemsize;
        return Err(format!(
            "truncated .npy data: {avail} bytes for {numel} elements of {} ({} bytes) in shape {:?}",
            h.descr, h.need, h.shape
        ));
    }
    Ok(())
}

fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let k1 = format!("'{key}'");
    let k2 = format!("\"{key}\"");
    let pos = header.find(&k1).or_else(|| header.find(&k2))?;
    let rest = &header[pos + k1.len()..];
    let colon = rest.find(':')?;
    Some(rest[colon + 1..].trim_start())
}

/// The header text and the offset of the data, from the magic and length fields.
fn header_text(bytes: &[u8]) -> Result<(&str, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (hlen, start) = match bytes[6] {
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
    if hlen > MAX_HEADER {
        return Err(format!(
            "the .npy header claims {hlen} bytes, more than the {MAX_HEADER} allowed"
        ));
    }
    let end = start
        .checked_add(hlen)
        .filter(|e| *e <= bytes.len())
        .ok_or("truncated .npy header")?;
    let text =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| "the .npy header is not text")?;
    Ok((text, end))
}

fn parse_descr(header: &str) -> Result<String, String> {
    let descr = header_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    let quote = descr.chars().next().ok_or("bad 'descr'")?;
    if quote != '\'' && quote != '"' {
        return Err("unsupported dtype descriptor (structured arrays are not supported)".into());
    }
    let close = descr[1..].find(quote).ok_or("bad 'descr'")?;
    Ok(descr[1..1 + close].to_string())
}

fn parse_shape(header: &str) -> Result<Vec<usize>, String> {
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
            .map_err(|_| format!("bad dimension `{}` in the .npy header", shown(p)))?;
        shape.push(d);
    }
    Ok(shape)
}

fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    let (header, start) = header_text(bytes)?;
    let descr = parse_descr(header)?;
    let fortran = header_value(header, "fortran_order")
        .ok_or("the .npy header has no 'fortran_order'")?
        .starts_with("True");
    let shape = parse_shape(header)?;
    let (itemsize, kind): (usize, char) = match descr.as_str() {
        "<f4" => (4, 'f'),
        "<f8" => (8, 'f'),
        "<i8" => (8, 'i'),
        "<i4" => (4, 'i'),
        "<i2" => (2, 'i'),
        "|i1" | "<i1" => (1, 'i'),
        "|u1" | "<u1" => (1, 'u'),
        "|b1" => (1, 'u'),
        other => {
            return Err(format!(
            "unsupported dtype `{}` (little-endian float32/64, int8-64, uint8 or bool expected)",
            shown(other)
        ))
        }
    };
    let need = shape
        .iter()
        .try_fold(itemsize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| {
            format!("the .npy shape {shape:?} is too large (its byte count overflows)")
        })?;
    Ok(Header {
        descr,
        kind,
        itemsize,
        fortran,
        shape,
        need,
        start,
    })
}

/// Decodes `data` (exactly `h.need` bytes) into C-order elements.
fn decode(h: Header, data: &[u8]) -> NpyArray {
    let le8 = |b: &[u8]| [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
    let mut out = match (h.kind, h.itemsize) {
        ('f', 4) => NpyData::F32(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        ('f', _) => NpyData::F64(
            data.chunks_exact(8)
                .map(|b| f64::from_le_bytes(le8(b)))
                .collect(),
        ),
        ('i', 8) => NpyData::Int(
            data.chunks_exact(8)
                .map(|b| i64::from_le_bytes(le8(b)))
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
    if h.fortran && h.shape.len() > 1 {
        out = match out {
            NpyData::F32(v) => NpyData::F32(fortran_to_c(&v, &h.shape)),
            NpyData::F64(v) => NpyData::F64(fortran_to_c(&v, &h.shape)),
            NpyData::Int(v) => NpyData::Int(fortran_to_c(&v, &h.shape)),
        };
    }
    NpyArray {
        shape: h.shape,
        descr: h.descr,
        data: out,
    }
}

/// Reorders column-major (Fortran) elements of `shape` into row-major order.
///
/// Walks the C-order index like an odometer, keeping the element's Fortran
/// offset up to date, so the cost is one pass plus a carry per wrap.
fn fortran_to_c<T: Copy>(v: &[T], shape: &[usize]) -> Vec<T> {
    let mut fstride = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let mut idx = vec![0usize; shape.len()];
    let mut off = 0usize;
    let mut out = Vec::with_capacity(v.len());
    for _ in 0..v.len() {
        out.push(v[off]);
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            off += fstride[k];
            if idx[k] < shape[k] {
                break;
            }
            off -= fstride[k] * shape[k];
            idx[k] = 0;
        }
    }
    out
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
/// reformc_tensor::npy::write_streamed(&p, "<f4", &[2], &[1.5f32, -2.0], |x, o| {
///     o.extend_from_slice(&x.to_le_bytes())
/// })
/// .unwrap();
/// let bytes = std::fs::read(&p).unwrap();
/// assert_eq!(bytes, reformc_tensor::npy::to_bytes_f32(&[2], &[1.5, -2.0]));
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
        // The same values stored column-major read back in C order.
        let mut f = to_bytes_i64(&[2, 3], &[0, 3, 1, 4, 2, 5]);
        let text = String::from_utf8_lossy(&f[10..74]).replace("False", "True ");
        f[10..74].copy_from_slice(text.as_bytes());
        assert_eq!(parse(&f).unwrap(), a);
        let mut g = b.clone();
        let text = String::from_utf8_lossy(&g[10..74]).replace("<i8", ">i8");
        g[10..74].copy_from_slice(text.as_bytes());
        assert!(parse(&g).unwrap_err().contains("unsupported dtype"));
        // A huge claimed shape with little data is a clean error.
        let h = header_bytes("<f4", &[1 << 40, 1 << 30]);
        assert!(parse(&h).is_err());
        let h = header_bytes("<i8", &[usize::MAX / 2, 3]);
        assert!(parse(&h).unwrap_err().contains("too large"));
    }

    #[test]
    fn fortran_order_of_rank_three() {
        let (d0, d1, d2) = (2usize, 3usize, 4usize);
        let c: Vec<f32> = (0..24).map(|x| x as f32).collect();
        // Element [i, j, k] sits at i + d0*j + d0*d1*k in Fortran order.
        let mut f = vec![0f32; 24];
        for i in 0..d0 {
            for j in 0..d1 {
                for k in 0..d2 {
                    f[i + d0 * j + d0 * d1 * k] = c[(i * d1 + j) * d2 + k];
                }
            }
        }
        assert_eq!(fortran_to_c(&f, &[d0, d1, d2]), c);
    }

    #[test]
    fn reads_are_bounded() {
        let e = read(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = std::env::temp_dir().join(format!("rc_npy_bounded_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A header that promises 8 TB over a file of a few bytes: no allocation.
        let p = dir.join("huge.npy");
        std::fs::write(&p, header_bytes("<i8", &[1, 1_000_000_000_000])).unwrap();
        assert!(read(&p).unwrap_err().contains("truncated .npy data"));
        let mut big = b"\x93NUMPY\x02\x00".to_vec();
        big.extend_from_slice(&(u32::MAX).to_le_bytes());
        let p = dir.join("bighdr.npy");
        std::fs::write(&p, &big).unwrap();
        assert!(read(&p).unwrap_err().contains("more than the"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
