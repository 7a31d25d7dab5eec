//! The bounded safetensors header parser both weight loaders share: the
//! frontend's (`reformc_frontend::weights`) and generated executables'
//! (`reformc_exe_runtime::model_rt`), so that they accept and refuse exactly
//! the same files. Std only, with its own small JSON reader: the executable
//! runtime links no JSON library.

/// One safetensors entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Tensor name.
    pub name: String,
    /// dtype string (`F32`, `F16`, ...).
    pub dtype: String,
    /// Dims.
    pub shape: Vec<u64>,
    /// Byte range relative to the data section.
    pub begin: u64,
    /// End of the byte range.
    pub end: u64,
}

fn dtype_size(d: &str) -> Option<u64> {
    Some(match d {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// Largest header accepted, in bytes (the `safetensors` crate's limit).
pub const MAX_HEADER: u64 = 100_000_000;

/// Parses and checks a safetensors header against a file of `file_len`
/// bytes. Returns the entries (in header order) and the offset of the data
/// section.
///
/// These are the rules of both weight loaders (the frontend applies them
/// too, through this function): the header length is at most
/// [`MAX_HEADER`] and fits in the file; the header is a UTF-8
/// JSON object starting with `{`; `__metadata__`, if present, maps strings
/// to strings; no tensor name appears twice; each entry has a known dtype,
/// a shape of non-negative integers and `data_offsets` `[begin, end]` whose
/// span is exactly the dtype size times the element count (checked
/// arithmetic); sorted by `begin`, the tensors tile the data section
/// exactly: the first starts at 0, each starts where the previous ends (no
/// overlap, no aliasing, no gap) and the last ends at the end of the file.
///
/// ```
/// let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
/// let mut file = (header.len() as u64).to_le_bytes().to_vec();
/// file.extend_from_slice(header);
/// file.extend_from_slice(&[0u8; 8]);
/// let (entries, start) = reformc_tensor::safetensors::parse(&file, file.len() as u64).unwrap();
/// assert_eq!((entries[0].name.as_str(), entries[0].shape.clone(), start), ("w", vec![2], 8 + header.len() as u64));
/// let err = reformc_tensor::safetensors::parse(&file[..20], file.len() as u64 - 4).unwrap_err();
/// assert!(err.contains("truncated"), "{err}");
/// ```
pub fn parse(bytes: &[u8], file_len: u64) -> Result<(Vec<Entry>, u64), String> {
    // Tensor names are the file's text: escaped, the message stays one line.
    parse_raw(bytes, file_len).map_err(|m| crate::shown(&m))
}

fn parse_raw(bytes: &[u8], file_len: u64) -> Result<(Vec<Entry>, u64), String> {
    let (items, data_start) = header(bytes, file_len)?;
    let mut entries: Vec<Entry> = Vec::new();
    for (name, v) in items {
        if name == "__metadata__" {
            metadata(&v)?;
            continue;
        }
        if entries.iter().any(|e| e.name == name) {
            return Err(format!(
                "tensor `{name}` appears twice in the header (duplicate names are ambiguous)"
            ));
        }
        entries.push(entry(name, &v)?);
    }
    layout(&entries, file_len - data_start)?;
    Ok((entries, data_start))
}

/// The header's top-level items and the offset of the data section.
fn header(bytes: &[u8], file_len: u64) -> Result<(Vec<(String, json::Value)>, u64), String> {
    if bytes.len() < 8 || file_len < 8 {
        return Err(format!(
            "not a safetensors file: {file_len} bytes (the 8-byte header length is missing)"
        ));
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER || n > file_len - 8 || 8 + n > bytes.len() as u64 {
        return Err(format!(
            "not a safetensors file or truncated: the header claims {n} bytes, the file has {file_len} (at most {MAX_HEADER} allowed)"
        ));
    }
    let header = &bytes[8..8 + n as usize];
    if header.first() != Some(&b'{') {
        return Err("the safetensors header does not start with `{`".into());
    }
    let text = std::str::from_utf8(header)
        .map_err(|_| "the safetensors header is not UTF-8".to_string())?;
    let value = json::parse(text).map_err(|e| format!("bad safetensors header: {e}"))?;
    let json::Value::Object(items) = value else {
        return Err("the safetensors header is not a JSON object".into());
    };
    Ok((items, 8 + n))
}

/// `__metadata__` maps strings to strings.
fn metadata(v: &json::Value) -> Result<(), String> {
    match v {
        json::Value::Object(kv) if kv.iter().all(|(_, x)| matches!(x, json::Value::Str(_))) => {
            Ok(())
        }
        _ => Err("`__metadata__` must be an object of strings".into()),
    }
}

/// One tensor's entry: dtype, shape and offsets, consistent with each other.
fn entry(name: String, v: &json::Value) -> Result<Entry, String> {
    let bad = |what: &str| format!("tensor `{name}`: {what}");
    let json::Value::Object(fields) = v else {
        return Err(bad("entry is not an object"));
    };
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v);
    let Some(json::Value::Str(dtype)) = get("dtype") else {
        return Err(bad("missing dtype"));
    };
    let size = dtype_size(dtype).ok_or_else(|| bad(&format!("unknown dtype {dtype:?}")))?;
    let Some(json::Value::Array(shape)) = get("shape") else {
        return Err(bad("missing shape"));
    };
    let shape: Option<Vec<u64>> = shape.iter().map(json::Value::as_u64).collect();
    let shape = shape.ok_or_else(|| bad("shape entries must be non-negative integers"))?;
    let Some(json::Value::Array(off)) = get("data_offsets") else {
        return Err(bad("missing data_offsets"));
    };
    let (begin, end) = match off.as_slice() {
        [a, b] => (
            a.as_u64().ok_or_else(|| bad("bad data_offsets"))?,
            b.as_u64().ok_or_else(|| bad("bad data_offsets"))?,
        ),
        _ => return Err(bad("data_offsets must be [begin, end]")),
    };
    if begin > end {
        return Err(bad("data_offsets begin after end"));
    }
    let want = shape.iter().try_fold(size, |a, &d| a.checked_mul(d));
    if want != Some(end - begin) {
        return Err(bad(&format!(
            "data_offsets [{begin}, {end}] span {} bytes but {dtype}{shape:?} needs {}",
            end - begin,
            want.map_or("more than 2^64".to_string(), |w| w.to_string())
        )));
    }
    Ok(Entry {
        name,
        dtype: dtype.clone(),
        shape,
        begin,
        end,
    })
}

/// The tensors, sorted by offset, tile the data section exactly.
fn layout(entries: &[Entry], data_len: u64) -> Result<(), String> {
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by_key(|e| (e.begin, e.end));
    let mut at = 0u64;
    let mut prev: Option<&Entry> = None;
    for e in order {
        if e.end > data_len {
            return Err(format!(
                "truncated file: tensor `{}` needs bytes {}..{} of the data section, which has only {data_len} bytes",
                e.name, e.begin, e.end
            ));
        }
        if e.begin != at {
            let after = prev.map_or("the start of the data section".to_string(), |p| {
                format!("tensor `{}` ({}..{})", p.name, p.begin, p.end)
            });
            let what = if e.begin < at {
                "overlaps"
            } else {
                "leaves a gap after"
            };
            return Err(format!(
                "tensor `{}`: data_offsets [{}, {}] {what} {after} (tensors must tile the data section in order)",
                e.name, e.begin, e.end
            ));
        }
        at = e.end;
        prev = Some(e);
    }
    if at != data_len {
        return Err(format!(
            "the data section is {data_len} bytes but the tensors cover {at} (trailing bytes?)"
        ));
    }
    Ok(())
}

/// A small JSON reader for safetensors headers (objects keep key order).
pub mod json {
    /// A JSON value.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Value {
        /// `null`.
        Null,
        /// `true` / `false`.
        Bool(bool),
        /// A number (kept as text to read integers exactly).
        Num(String),
        /// A string.
        Str(String),
        /// An array.
        Array(Vec<Value>),
        /// An object, in key order.
        Object(Vec<(String, Value)>),
    }

    impl Value {
        /// The value as a non-negative integer.
        pub fn as_u64(&self) -> Option<u64> {
            match self {
                Value::Num(s) => s.parse().ok(),
                _ => None,
            }
        }
    }

    /// Parses one JSON document (nesting depth at most 64).
    ///
    /// ```
    /// use reformc_tensor::safetensors::json::{parse, Value};
    /// assert_eq!(parse(r#"{"a": [1, "x\n"]}"#).unwrap(), Value::Object(vec![("a".into(), Value::Array(vec![Value::Num("1".into()), Value::Str("x\n".into())]))]));
    /// assert!(parse("{\"a\": }").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Value, String> {
        let mut p = P {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at byte {}", p.i));
        }
        Ok(v)
    }

    struct P<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl P<'_> {
        fn ws(&mut self) {
            while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            }
        }

        fn peek(&self) -> Option<u8> {
            self.s.get(self.i).copied()
        }

        fn expect(&mut self, c: u8) -> Result<(), String> {
            self.ws();
            if self.peek() == Some(c) {
                self.i += 1;
                Ok(())
            } else {
                Err(format!("expected `{}` at byte {}", c as char, self.i))
            }
        }

        fn value(&mut self, depth: usize) -> Result<Value, String> {
            if depth > 64 {
                return Err("nesting too deep".into());
            }
            self.ws();
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(Value::Object(items));
                    }
                    loop {
                        self.ws();
                        let k = self.string()?;
                        self.expect(b':')?;
                        let v = self.value(depth + 1)?;
                        items.push((k, v));
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(Value::Object(items));
                            }
                            _ => return Err(format!("expected `,` or `}}` at byte {}", self.i)),
                        }
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return Ok(Value::Array(items));
                    }
                    loop {
                        items.push(self.value(depth + 1)?);
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(Value::Array(items));
                            }
                            _ => return Err(format!("expected `,` or `]` at byte {}", self.i)),
                        }
                    }
                }
                Some(b'"') => Ok(Value::Str(self.string()?)),
                Some(b't') if self.s[self.i..].starts_with(b"true") => {
                    self.i += 4;
                    Ok(Value::Bool(true))
                }
                Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                    self.i += 5;
                    Ok(Value::Bool(false))
                }
                Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                    self.i += 4;
                    Ok(Value::Null)
                }
                Some(c) if c == b'-' || c.is_ascii_digit() => {
                    let start = self.i;
                    while self.i < self.s.len()
                        && matches!(
                            self.s[self.i],
                            b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                        )
                    {
                        self.i += 1;
                    }
                    let t =
                        std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                    if t.parse::<f64>().is_err() {
                        return Err(format!("bad number `{t}`"));
                    }
                    Ok(Value::Num(t.to_string()))
                }
                Some(c) => Err(format!("unexpected `{}` at byte {}", c as char, self.i)),
                None => Err("unexpected end of input".into()),
            }
        }

        fn string(&mut self) -> Result<String, String> {
            if self.peek() != Some(b'"') {
                return Err(format!("expected a string at byte {}", self.i));
            }
            self.i += 1;
            let mut out: Vec<u8> = Vec::new();
            loop {
                let c = self.peek().ok_or("unterminated string")?;
                self.i += 1;
                match c {
                    b'"' => break,
                    b'\\' => {
                        let e = self.peek().ok_or("unterminated escape")?;
                        self.i += 1;
                        match e {
                            b'"' => out.push(b'"'),
                            b'\\' => out.push(b'\\'),
                            b'/' => out.push(b'/'),
                            b'b' => out.push(8),
                            b'f' => out.push(12),
                            b'n' => out.push(b'\n'),
                            b'r' => out.push(b'\r'),
                            b't' => out.push(b'\t'),
                            b'u' => {
                                let hex =
                                    self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
                                let hex = std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                                let cp = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                                self.i += 4;
                                let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            }
                            _ => return Err(format!("bad escape at byte {}", self.i)),
                        }
                    }
                    // JSON forbids raw control characters in strings (RFC 8259 7).
                    c if c < 0x20 => {
                        return Err(format!(
                            "raw control character {c:#04x} in a string at byte {}",
                            self.i - 1
                        ))
                    }
                    c => out.push(c),
                }
            }
            String::from_utf8(out).map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend(std::iter::repeat_n(0u8, data));
        f
    }

    #[test]
    fn header_checks() {
        let h = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[2],"data_offsets":[16,20]}}"#;
        let f = file(h, 20);
        let (e, start) = parse(&f, f.len() as u64).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(start, 8 + h.len() as u64);
        let short = &f[..f.len() - 3];
        assert!(parse(short, short.len() as u64)
            .unwrap_err()
            .contains("truncated"));
        let bad = file(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(parse(&bad, bad.len() as u64)
            .unwrap_err()
            .contains("needs 12"));
        let dup = file(
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
            2,
        );
        assert!(parse(&dup, dup.len() as u64).unwrap_err().contains("twice"));
    }

    #[test]
    fn names_with_control_characters_stay_on_one_line() {
        let f = file(
            r#"{"a\nb":{"dtype":"XX","shape":[],"data_offsets":[0,0]}}"#,
            0,
        );
        let e = parse(&f, f.len() as u64).unwrap_err();
        assert!(e.contains("a\\nb") && !e.contains('\n'), "{e}");
    }
}
