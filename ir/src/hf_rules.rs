//! Hugging Face's sequence-length rules for Reformer, stated once.
//!
//! The frontend resolves a model's padding and `num_buckets: null` with
//! these, the passes size graphs and re-choose buckets with them, and
//! generated executables check input lengths with them: std only and no
//! `crate::` paths, so that `reformc_runtime` compiles this very file (as it
//! does `outfile.rs`) without depending on a compiler crate.
//!
//! Examples live in the unit tests below (this file is compiled into two
//! crates, so a doc example could name only one of them).

/// Greatest common divisor (`gcd(a, 0) = a`).
pub fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Least common multiple, saturating; `lcm(a, 0) = 0` as in HF's `np.lcm`.
pub fn lcm(a: u64, b: u64) -> u64 {
    if a == 0 || b == 0 {
        return 0;
    }
    (a / gcd(a, b)).saturating_mul(b)
}

/// HF's eval padding as `(multiple, min_len)`: sequences longer than the
/// smallest chunk length are padded to a multiple of the lcm of all chunk
/// lengths in use (REFORMER.md §6.3). `(1, 0)` (never pad) without chunks.
pub fn padding_rule(chunks: impl IntoIterator<Item = u64>) -> (u64, u64) {
    chunks.into_iter().fold((1, 0), with_chunk)
}

/// The padding rule once one more chunked layer of chunk length `chunk`
/// joins a model whose rule is `(multiple, min_len)` (see [`padding_rule`]).
pub fn with_chunk((multiple, min_len): (u64, u64), chunk: u64) -> (u64, u64) {
    if multiple <= 1 && min_len == 0 {
        (chunk, chunk)
    } else {
        (
            lcm(multiple.max(1), chunk),
            if min_len == 0 {
                chunk
            } else {
                min_len.min(chunk)
            },
        )
    }
}

/// The length an input of length `len` runs at under the padding rule
/// `(multiple, min_len)`: unchanged at or below `min_len` or when already a
/// multiple, else rounded up to the next multiple (saturating).
pub fn padded_len(len: u64, multiple: u64, min_len: u64) -> u64 {
    if multiple <= 1 || len <= min_len || len.is_multiple_of(multiple) {
        len
    } else {
        len.div_ceil(multiple).saturating_mul(multiple)
    }
}

/// HF's automatic bucket count (`num_buckets: null`, `_set_num_buckets`) for
/// padded length `len`: `nb = 2^p` with `p = bit_length(2·(len/chunk)) - 1`,
/// factorised into two powers of two when
/// `nb > 2·max(floor(sqrt(max_positions/chunk)), chunk)` (REFORMER.md §1.3).
/// Below one chunk HF never hashes; any valid count (`[2]`) will do.
pub fn auto_buckets(len: u64, chunk: u64, max_positions: u64) -> Vec<u64> {
    let chunk = chunk.max(1);
    let chunks = len / chunk;
    if chunks == 0 {
        return vec![2];
    }
    let p = 63 - chunks.saturating_mul(2).leading_zeros();
    let nb = 1u64 << p;
    let limit = 2 * (((max_positions / chunk) as f64).sqrt() as u64).max(chunk);
    if nb > limit {
        vec![1 << (p / 2), 1 << (p - p / 2)]
    } else {
        vec![nb]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_hf() {
        // Worked by hand from HF's `_set_num_buckets`: 2^(bit_length(2·chunks) - 1),
        // split into two factors above 2·max(sqrt(max_pos/chunk), chunk).
        assert_eq!(auto_buckets(128, 8, 4096), vec![32]);
        assert_eq!(auto_buckets(512, 64, 65536), vec![16]);
        assert_eq!(auto_buckets(65536, 64, 65536), vec![32, 64]);
        assert_eq!(auto_buckets(32, 64, 4096), vec![2]);
        assert_eq!(auto_buckets(1000, 64, 4096), vec![16]);
    }

    #[test]
    fn padding_pads_past_the_smallest_chunk_to_the_lcm() {
        let rule = padding_rule([64, 32]);
        assert_eq!(rule, (64, 32));
        assert_eq!(padded_len(50, rule.0, rule.1), 64);
        assert_eq!(padded_len(30, rule.0, rule.1), 30);
        assert_eq!(padded_len(128, rule.0, rule.1), 128);
        assert_eq!(padding_rule([]), (1, 0));
        assert_eq!(padded_len(50, 1, 0), 50);
        assert_eq!(with_chunk((16, 8), 12), (48, 8));
        assert_eq!(padding_rule([8, 16, 8]), (16, 8));
        assert_eq!(padded_len(u64::MAX - 1, 64, 0), u64::MAX);
    }
}
