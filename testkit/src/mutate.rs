//! Deterministic byte mutation of valid files, for the stable (non-libFuzzer)
//! fuzz tests: bit flips, truncation, insertion, deletion, duplication and
//! number edits that turn any digit run into a huge, negative or odd value.
//!
//! Dependency-free so that crates below the testkit (runtime, frontend) can
//! include it with `#[path]`.

/// The files of `root/tests/corpus/<dir>`, sorted: the `crash-*` files
/// (inputs fuzzing found to break a rule, kept as regression cases) when
/// `crashes`, the others otherwise.
pub fn corpus_files(root: &std::path::Path, dir: &str, crashes: bool) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(root.join("tests/corpus").join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("crash-")
                == crashes
        })
        .collect();
    v.sort();
    v
}

/// A small splitmix64 generator: reproducible runs without a dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Numbers that break size arithmetic: overflow, sign, zero, float syntax.
pub const ODD_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1000000000000",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "1e300",
    "NaN",
    "1.5",
    "",
];

const ODD_BYTES: &[u8] = b"\x00\xff\x7f\x80\"'[]{}(),:-.e9 \n";

/// Applies one to four random mutations to a copy of `seed`.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        mutate_once(&mut b, rng);
    }
    b
}

fn mutate_once(b: &mut Vec<u8>, rng: &mut Rng) {
    let at = rng.below(b.len() + 1);
    let last = at.min(b.len().saturating_sub(1));
    match rng.below(7) {
        0 if !b.is_empty() => b[last] ^= 1 << rng.below(8),
        1 if !b.is_empty() => b[last] = ODD_BYTES[rng.below(ODD_BYTES.len())],
        2 => b.truncate(at),
        3 => {
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            b.splice(at..at, bytes);
        }
        4 => {
            let end = (at + 1 + rng.below(16)).min(b.len());
            b.drain(at.min(end)..end);
        }
        5 => {
            let end = (at + 1 + rng.below(32)).min(b.len());
            let chunk = b[at.min(end)..end].to_vec();
            b.splice(at.min(end)..at.min(end), chunk);
        }
        _ => edit_number(b, rng),
    }
}

/// Replaces a random ASCII digit run with one of [`ODD_NUMBERS`].
fn edit_number(b: &mut Vec<u8>, rng: &mut Rng) {
    let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit()).collect();
    if digits.is_empty() {
        return;
    }
    let mut start = digits[rng.below(digits.len())];
    while start > 0 && b[start - 1].is_ascii_digit() {
        start -= 1;
    }
    let mut end = start;
    while end < b.len() && b[end].is_ascii_digit() {
        end += 1;
    }
    let n = ODD_NUMBERS[rng.below(ODD_NUMBERS.len())];
    b.splice(start..end, n.bytes());
}

/// Mutates an argument list: drops, duplicates, swaps, empties, joins with
/// `=` or replaces a value by an odd number.
pub fn mutate_args(seed: &[String], rng: &mut Rng) -> Vec<String> {
    let mut a = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(a.len());
        match rng.below(6) {
            0 if !a.is_empty() => {
                a.remove(i);
            }
            1 if !a.is_empty() => a.insert(i, a[i].clone()),
            2 if a.len() > 1 => {
                let j = rng.below(a.len());
                a.swap(i, j);
            }
            3 if i + 1 < a.len() => {
                let v = a.remove(i + 1);
                a[i] = format!("{}={v}", a[i]);
            }
            4 => a.insert(i, ODD_NUMBERS[rng.below(ODD_NUMBERS.len())].into()),
            _ => {
                let bytes = mutate(a.get(i).map_or(&b""[..], |s| s.as_bytes()), rng);
                let s = String::from_utf8_lossy(&bytes).into_owned();
                if i < a.len() {
                    a[i] = s;
                } else {
                    a.push(s);
                }
            }
        }
    }
    a
}
