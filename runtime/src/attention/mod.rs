//! Attention kernels: full (materialized or streaming over key chunks), chunked
//! local, and fused LSH attention, plus LSH hashing and the chunked kinds'
//! derivatives.
//!
//! Inputs are `[B, L, H·d]` with heads interleaved (HF's `view(B, L, H, d)`),
//! masks `[B, L]` with nonzero = keep. Semantics, mask constants and their order
//! are the interpreter's (`reformc_interp::attention`, REFORMER.md §1-§2).
//! Work is split into tasks that each own whole output rows of one head, and
//! each task computes its rows in a fixed order: results are bitwise identical
//! at any thread count. Only per-tile buffers (a query block, the packed keys
//! and values of its window, its logits) exist at any time.

mod bucket_range;
mod chunked_grad;
mod full;
mod hash;
mod local;
mod lsh;

pub use bucket_range::{check_bucket_ids, check_bucket_range};
pub use chunked_grad::{local_attention_grad, lsh_attention_grad};
pub use full::attention;
pub use hash::{lsh_hash, lsh_rotate, RotateStrides};
pub use local::local_attention;
pub use lsh::lsh_attention;

use crate::bf16::{self, Packing};
use crate::error::{invalid, try_zeroed, Result};
use crate::gemm::{gemm, kernel, Epilogue, Kernel, PackedB};
use crate::simd;

/// Logit that masked (causal or padding) keys are replaced with.
pub const MASK_VALUE: f32 = -1e9;
/// Logit that a query's own position is replaced with (applied last).
pub const SELF_MASK_VALUE: f32 = -1e5;

/// Attention flag bits of the ABI.
pub mod flags {
    /// Keys after the query are masked.
    pub const CAUSAL: i32 = 1;
    /// Keys are length-normalized (`k · rsqrt(mean(k²) + 1e-6)`) before scaling.
    pub const KEY_NORM: i32 = 2;
    /// A query's own position gets the logit -1e5 (applied last).
    pub const SELF_MASK: i32 = 4;
    /// Every defined bit.
    pub const ALL: i32 = CAUSAL | KEY_NORM | SELF_MASK;
}

/// Masking rules of one attention block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Mask keys after the query (by original position).
    pub causal: bool,
    /// Replace the logit of the query's own position with -1e5, last.
    pub self_mask: bool,
}

/// The divisor the interpreter applies to keys for a logit scale (HF divides by
/// sqrt(d); dividing by `1/scale` keeps its rounding).
pub(crate) fn key_divisor(scale: f64) -> f32 {
    (1.0 / scale) as f32
}

/// How keys are scaled: `x / div`, computed as `x · (1/div)` when `div` is a
/// power of two (the same correctly rounded value, without a division).
#[derive(Clone, Copy)]
pub(crate) struct KeyScale {
    div: f32,
    recip: Option<f32>,
}

impl KeyScale {
    pub fn new(div: f32) -> Self {
        let exact = div.is_normal() && div.to_bits() & 0x007f_ffff == 0 && (1.0 / div).is_normal();
        KeyScale {
            div,
            recip: exact.then(|| 1.0 / div),
        }
    }

    /// `(x · factor) / div` (no factor when not normalizing): the interpreter's
    /// `len_norm` then division, with its rounding.
    #[inline(always)]
    pub fn apply(self, x: f32, factor: Option<f32>) -> f32 {
        let y = match factor {
            Some(f) => x * f,
            None => x,
        };
        match self.recip {
            Some(r) => y * r,
            None => y / self.div,
        }
    }
}

/// HF's `_len_norm` factor `1 / sqrt(mean(x²) + 1e-6)`, summed in the
/// interpreter's order so that normalized keys are bit-identical.
#[inline]
pub(crate) fn inv_len_norm(x: &[f32]) -> f32 {
    let ms = x.iter().fold(0.0f32, |a, &v| a + v * v) / x.len() as f32;
    1.0 / (ms + 1e-6f32).sqrt()
}

/// Chunk indices a query chunk attends to: earlier chunks first, then its own,
/// then later ones, wrapping around (duplicates when `n` is small).
#[cfg(test)]
fn adjacent_chunks(j: usize, n: usize, before: usize, after: usize) -> impl Iterator<Item = usize> {
    window_keys(j, n, before)
        .take(before + 1 + after)
        .map(move |u| u % n)
}

/// Unwrapped window indices `u` of query chunk `j` (chunk id = `u mod n`):
/// consecutive integers, shared by neighbouring query chunks, so `u mod
/// capacity` names a cache slot that no other chunk of the same window uses.
fn window_keys(j: usize, n: usize, before: usize) -> impl Iterator<Item = usize> {
    (j + n * (before + 1) - before)..
}

/// Key validity (1 keep, 0 masked) per position of batch row `b`.
pub(crate) fn valid_row(mask: Option<&[i64]>, b: usize, len: usize) -> Vec<u32> {
    match mask {
        Some(m) => m[b * len..(b + 1) * len]
            .iter()
            .map(|&v| u32::from(v != 0))
            .collect(),
        None => vec![1; len],
    }
}

/// Applies the masks of REFORMER.md §1.6 to one row of logits (by original
/// positions): masked keys become -1e9, then the query's own position -1e5.
#[inline]
pub(crate) fn mask_row(row: &mut [f32], qpos: u32, kpos: &[u32], keep: &[u32], rules: Rules) {
    simd::mask(row, qpos, kpos, keep, rules.causal, rules.self_mask);
}

/// Masks one row of logits and turns it into `exp(x - max)` (divided by the
/// sum when `normalize`). Returns the row's log-sum-exp as `(max, sum)`.
#[inline]
pub(crate) fn softmax_row(
    row: &mut [f32],
    qpos: u32,
    kpos: &[u32],
    keep: &[u32],
    rules: Rules,
    normalize: bool,
) -> (f32, f32) {
    mask_row(row, qpos, kpos, keep, rules);
    let max = simd::max(row);
    let sum = simd::exp_sub_sum(row, max);
    if normalize {
        simd::div(row, sum);
    }
    (max, sum)
}

/// Product of sizes, or an error on overflow.
pub(crate) fn product(dims: &[usize], name: &str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| invalid(format!("size of {name} overflows")))
}

/// Packed keys and values of one window of keys (full attention's key tiles).
pub(crate) struct Tile {
    pub kern: &'static Kernel,
    /// Packed keysᵀ (`dk × nk`).
    pub k: PackedB,
    /// Packed values (`nk × dv`).
    pub v: PackedB,
    /// Logits / probabilities `[m, nk]`.
    pub s: Vec<f32>,
    /// Outputs `[m, dv]`.
    pub o: Vec<f32>,
}

impl Tile {
    /// Buffers for at most `m` queries and `n` keys.
    pub fn new(m: usize, n: usize, dk: usize, dv: usize) -> Result<Self> {
        let kern = kernel();
        let packing = bf16::packing(kern.isa);
        Ok(Tile {
            kern,
            k: PackedB::zeroed_as(dk, n, kern.nr, packing)?,
            v: PackedB::zeroed_as(n, dv, kern.nr, packing)?,
            s: try_zeroed(m * n, "logit tile")?,
            o: try_zeroed(m * dv, "output tile")?,
        })
    }

    /// Sets the number of keys of the current window (at most the capacity).
    /// Packed padding columns may hold stale values: they only reach the
    /// discarded columns of edge tiles.
    pub fn set_keys(&mut self, nk: usize) {
        self.k.n = nk;
        self.v.k = nk;
    }

    /// `s[m, nk] = q · keysᵀ` for `m` queries read from `q` with row stride `ldq`.
    pub fn logits(&mut self, m: usize, q: &[f32], ldq: usize) {
        let n = self.k.n;
        gemm(
            self.kern,
            m,
            q,
            ldq,
            &self.k,
            &mut self.s,
            n,
            Epilogue::STORE,
        );
    }

    /// `o[m, dv] (+)= s · values`.
    pub fn weighted_values(&mut self, m: usize, accumulate: bool) {
        let (n, dv) = (self.k.n, self.v.n);
        let epi = if accumulate {
            Epilogue::ACCUMULATE
        } else {
            Epilogue::STORE
        };
        gemm(self.kern, m, &self.s, n, &self.v, &mut self.o, dv, epi);
    }
}

/// Writes key `slot` of a packed keysᵀ matrix: `scale.apply(x, factor)`, as
/// the matrix's packing holds values (f32, bf16-rounded, or bf16 pairs of
/// consecutive key dimensions).
#[inline]
pub(crate) fn put_key(
    p: &mut PackedB,
    slot: usize,
    key: &[f32],
    factor: Option<f32>,
    scale: KeyScale,
) {
    let (nr, rows, packing) = (p.nr, p.stored_k(), p.packing);
    let step = packing.row_step(nr);
    let dst = &mut p.data[(slot / nr) * rows * nr + packing.offset(rows, nr, 0, slot % nr)..];
    match packing {
        Packing::F32 => {
            for (t, &x) in key.iter().enumerate() {
                dst[t * step] = scale.apply(x, factor);
            }
        }
        Packing::Rounded => {
            for (t, &x) in key.iter().enumerate() {
                dst[t * step] = bf16::round(scale.apply(x, factor));
            }
        }
        Packing::Pairs | Packing::Tiles => put_key_pairs(dst, step, rows, key, factor, scale),
    }
}

/// Key dimensions scaled and rounded per block of [`pair_block`].
const KEY_BLOCK: usize = 64;

/// [`put_key`] for bf16 pairs: each block of dimensions is scaled and
/// rounded in vector lanes, then stored one word per pair down the panel
/// (pair rows `step` words apart).
#[inline]
fn put_key_pairs(
    dst: &mut [f32],
    step: usize,
    rows: usize,
    key: &[f32],
    factor: Option<f32>,
    scale: KeyScale,
) {
    let mut words = [0u32; KEY_BLOCK / 2];
    for (b, block) in key.chunks(KEY_BLOCK).enumerate() {
        let words = &mut words[..block.len().div_ceil(2)];
        pair_block(block, factor, scale, words);
        for (r, &w) in (b * KEY_BLOCK / 2..rows).zip(words.iter()) {
            dst[r * step] = f32::from_bits(w);
        }
    }
}

/// Up to [`KEY_BLOCK`] key values scaled and rounded to bf16 in vector lanes,
/// as pair words (`words` is `ceil(len / 2)` long; an odd length ends in a
/// zero half).
#[inline]
fn pair_block(block: &[f32], factor: Option<f32>, scale: KeyScale, words: &mut [u32]) {
    let mut halves = [0u32; KEY_BLOCK];
    for (h, &x) in halves.iter_mut().zip(block) {
        *h = bf16::bits_select(scale.apply(x, factor));
    }
    for (w, pair) in words.iter_mut().zip(halves.chunks_exact(2)) {
        *w = pair[0] | pair[1] << 16;
    }
}

/// Keys packed per group by [`put_keys`]: one cache line of f32 slots.
const KEY_GROUP: usize = 16;

/// Writes keys `0..n` of a packed keysᵀ matrix, key `t` being `key(t) =
/// (values, factor)` scaled as [`put_key`] does, with the same words. bf16
/// pairs are converted a group of keys at a time, in vector lanes, into a
/// small block and stored one panel row per group (a run of consecutive
/// slots) instead of one scattered word per key and row.
pub(crate) fn put_keys<'a>(
    p: &mut PackedB,
    n: usize,
    key: impl Fn(usize) -> (&'a [f32], Option<f32>),
    scale: KeyScale,
) {
    let (nr, rows, packing) = (p.nr, p.stored_k(), p.packing);
    let mut block = match packing.is_pairs() {
        true => vec![0u32; KEY_GROUP * rows],
        false => Vec::new(),
    };
    for g0 in (0..n).step_by(KEY_GROUP) {
        let gn = KEY_GROUP.min(n - g0);
        let col = g0 % nr;
        if p.packing == Packing::F32
            && gn == KEY_GROUP
            && col + gn <= nr
            && put16(p, g0, &key, scale)
        {
            continue;
        }
        // Otherwise f32 keys go one at a time (a block in memory gains
        // nothing: 2.5% slower on the paper model at 8K).
        if gn > packing.run(nr, col) || !packing.is_pairs() {
            // Also a group across a panel boundary (NR not a multiple of
            // the group) or a tile's column group.
            for t in g0..g0 + gn {
                let (k, f) = key(t);
                put_key(p, t, k, f, scale);
            }
            continue;
        }
        let base = (g0 / nr) * rows * nr + packing.offset(rows, nr, 0, col);
        let step = packing.row_step(nr);
        // Whole blocks of 16 pair rows transposed in registers; the rows
        // after them (and every row without AVX-512) through the block.
        let done = match gn == KEY_GROUP {
            true => put16_pairs(&mut p.data[base..], step, rows, g0, &key, scale),
            false => 0,
        };
        for (g, words) in block.chunks_exact_mut(rows.max(1)).take(gn).enumerate() {
            let (k, f) = key(g0 + g);
            pair_words(&k[2 * done..], f, scale, &mut words[done..]);
        }
        for r in done..rows {
            let dst = &mut p.data[base + r * step..][..gn];
            for (g, d) in dst.iter_mut().enumerate() {
                *d = f32::from_bits(block[g * rows + r]);
            }
        }
    }
}

/// Pair rows `0..16 b` (`b` whole blocks of 16) of sixteen keys `g0..g0 + 16`
/// written as [`put_key`] writes them (the same scaling and rounding, so
/// the same words) to `dst`, pair rows `step` words apart: each block's 32
/// dimensions of a key become 16 pair words in registers, and the 16 × 16
/// words are transposed so that each pair row gets one 64-byte store (with
/// [`Packing::Tiles`], one contiguous 1 KiB tile). Returns the pair rows
/// written: `16 b`, or 0 without AVX-512 BW or for keys shorter than
/// `2 × rows` values.
fn put16_pairs<'a>(
    dst: &mut [f32],
    step: usize,
    rows: usize,
    g0: usize,
    key: &impl Fn(usize) -> (&'a [f32], Option<f32>),
    scale: KeyScale,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        let keys: [(&[f32], Option<f32>); KEY_GROUP] = std::array::from_fn(|g| key(g0 + g));
        let full = rows / 16 * 16;
        if full == 0 || keys.iter().any(|k| k.0.len() < 2 * full) {
            return 0;
        }
        assert!(dst.len() >= (full - 1) * step + KEY_GROUP);
        for r0 in (0..full).step_by(16) {
            // SAFETY: AVX-512F/BW were detected; every key holds 2 full
            // values (checked) and `dst` 16 words at each of the pair rows
            // below `full`, `step` apart (asserted).
            unsafe { x86::put16_pairs_block(dst.as_mut_ptr(), step, &keys, scale, r0) };
        }
        return full;
    }
    let _ = (dst, step, rows, g0, key, scale);
    0
}

/// Sixteen f32 keys `g0..g0 + 16` of one panel written as [`put_key`] writes
/// them (the same scaling, so the same words), transposed in registers 16
/// dimensions at a time: each panel row gets one 64-byte store instead of
/// sixteen scattered ones. False (nothing written) without AVX-512.
fn put16<'a>(
    p: &mut PackedB,
    g0: usize,
    key: &impl Fn(usize) -> (&'a [f32], Option<f32>),
    scale: KeyScale,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let (nr, rows) = (p.nr, p.stored_k());
        let keys: [(&[f32], Option<f32>); KEY_GROUP] = std::array::from_fn(|g| key(g0 + g));
        if keys.iter().any(|k| k.0.len() < rows) {
            return false;
        }
        let base = (g0 / nr) * rows * nr + g0 % nr;
        let full = rows / 16 * 16;
        let dst = &mut p.data[base..];
        assert!(rows == 0 || dst.len() >= (rows - 1) * nr + KEY_GROUP);
        for d0 in (0..full).step_by(16) {
            // SAFETY: AVX-512F was detected; every key holds `rows` values
            // (checked) and `dst` holds `rows` panel rows of at least 16
            // values from `base` (asserted).
            unsafe { x86::put16_block(dst.as_mut_ptr(), nr, &keys, scale, d0) };
        }
        for (g, (k, f)) in keys.iter().enumerate() {
            for d in full..rows {
                dst[d * nr + g] = scale.apply(k[d], *f);
            }
        }
        return true;
    }
    let _ = (p, g0, key, scale);
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{KeyScale, KEY_GROUP};
    use std::arch::x86_64::*;

    /// `x` scaled as [`KeyScale::apply`] does, lane by lane (the same IEEE
    /// operations in the same order, so the same values).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn scaled(mut x: __m512, factor: Option<f32>, scale: KeyScale) -> __m512 {
        if let Some(f) = factor {
            x = _mm512_mul_ps(x, _mm512_set1_ps(f));
        }
        match scale.recip {
            Some(rc) => _mm512_mul_ps(x, _mm512_set1_ps(rc)),
            None => _mm512_div_ps(x, _mm512_set1_ps(scale.div)),
        }
    }

    /// `bf16::bits_select` lane by lane: the bf16 nearest each value (ties
    /// to even), NaNs quieted, in the low 16 bits of each lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn bf16_bits(x: __m512) -> __m512i {
        let u = _mm512_castps_si512(x);
        let hi = _mm512_srli_epi32::<16>(u);
        let bias = _mm512_add_epi32(
            _mm512_set1_epi32(0x7FFF),
            _mm512_and_si512(hi, _mm512_set1_epi32(1)),
        );
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(u, bias));
        let nan = _mm512_and_si512(
            _mm512_or_si512(hi, _mm512_set1_epi32(0x40)),
            _mm512_set1_epi32(0xFFFF),
        );
        let abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFF_FFFF));
        let is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
        _mm512_mask_blend_epi32(is_nan, rounded, nan)
    }

    /// Pair rows `r0..r0 + 16` of 16 keys (dimensions `2 r0..2 r0 + 32`):
    /// row `r0 + r` at `dst + (r0 + r) * step` gets each key's pair word `r`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and BW; every key must hold `2 r0 + 32`
    /// values and `dst` 16 words at each of those rows.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn put16_pairs_block(
        dst: *mut f32,
        step: usize,
        keys: &[(&[f32], Option<f32>); KEY_GROUP],
        scale: KeyScale,
        r0: usize,
    ) {
        // The low halves of the 32 lanes of (lo, hi), in order: 32 bf16 = 16 pair words.
        let evens = _mm512_set_epi16(
            62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28, 26, 24, 22, 20,
            18, 16, 14, 12, 10, 8, 6, 4, 2, 0,
        );
        // Loops, not `array::from_fn`: its closure does not inherit this
        // function's target features, and ran as a call per key.
        let mut words = [_mm512_setzero_ps(); 16];
        for (w, &(k, f)) in words.iter_mut().zip(keys) {
            // SAFETY: the key holds 2 r0 + 32 values (contract).
            let (lo, hi) = unsafe {
                let p = k.as_ptr().add(2 * r0);
                (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
            };
            let (lo, hi) = (
                bf16_bits(scaled(lo, f, scale)),
                bf16_bits(scaled(hi, f, scale)),
            );
            *w = _mm512_castsi512_ps(_mm512_permutex2var_epi16(lo, evens, hi));
        }
        let rows = transpose16(&words);
        for (r, x) in rows.into_iter().enumerate() {
            // SAFETY: pair row r0 + r holds 16 words from dst (contract).
            unsafe { _mm512_storeu_ps(dst.add((r0 + r) * step), x) };
        }
    }

    /// The 16 × 16 transpose of 32-bit lanes: lane `c` of result `r` is lane
    /// `r` of `x[c]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
        // Within each 128-bit lane L: u[4q + j] holds column 4L + j of rows
        // 4q..4q + 4.
        let mut u = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            let (a, b, c, d) = (r[4 * q], r[4 * q + 1], r[4 * q + 2], r[4 * q + 3]);
            let (t0, t1) = (_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
            let (t2, t3) = (_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
            u[4 * q] = _mm512_shuffle_ps::<0x44>(t0, t2);
            u[4 * q + 1] = _mm512_shuffle_ps::<0xEE>(t0, t2);
            u[4 * q + 2] = _mm512_shuffle_ps::<0x44>(t1, t3);
            u[4 * q + 3] = _mm512_shuffle_ps::<0xEE>(t1, t3);
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for j in 0..4 {
            // Lanes 0 and 2 (v), 1 and 3 (w) of rows 0..8 and 8..16.
            let v = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
            let w = _mm512_shuffle_f32x4::<0xDD>(u[j], u[4 + j]);
            let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
            let w2 = _mm512_shuffle_f32x4::<0xDD>(u[8 + j], u[12 + j]);
            out[j] = _mm512_shuffle_f32x4::<0x88>(v, v2);
            out[4 + j] = _mm512_shuffle_f32x4::<0x88>(w, w2);
            out[8 + j] = _mm512_shuffle_f32x4::<0xDD>(v, v2);
            out[12 + j] = _mm512_shuffle_f32x4::<0xDD>(w, w2);
        }
        out
    }

    /// Dimensions `d0..d0 + 16` of 16 keys, scaled, stored transposed: row
    /// `d0 + d` at `dst + (d0 + d) * nr` gets the keys' value `d`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; every key must hold `d0 + 16` values
    /// and `dst` 16 values at each of those rows.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn put16_block(
        dst: *mut f32,
        nr: usize,
        keys: &[(&[f32], Option<f32>); KEY_GROUP],
        scale: KeyScale,
        d0: usize,
    ) {
        let mut r = [_mm512_setzero_ps(); 16];
        for (x, &(k, f)) in r.iter_mut().zip(keys) {
            // SAFETY: the key holds d0 + 16 values (contract).
            *x = scaled(unsafe { _mm512_loadu_ps(k.as_ptr().add(d0)) }, f, scale);
        }
        for (c, x) in transpose16(&r).into_iter().enumerate() {
            // SAFETY: row d0 + c of the panel holds 16 values from dst (contract).
            unsafe { _mm512_storeu_ps(dst.add((d0 + c) * nr), x) };
        }
    }
}

/// One key's bf16 pair words as [`put_key`] writes them, into `words`
/// (`ceil(len / 2)` long).
fn pair_words(key: &[f32], factor: Option<f32>, scale: KeyScale, words: &mut [u32]) {
    for (block, out) in key.chunks(KEY_BLOCK).zip(words.chunks_mut(KEY_BLOCK / 2)) {
        pair_block(block, factor, scale, out);
    }
}

/// Writes values `0..n` of a packed values matrix, value `t` being
/// `value(t)`, with the words of [`put_value`]. With bf16 pairs each pair of
/// slots becomes one row of words in one pass (no read-modify-write); an odd
/// `n` leaves the last row's high halves zero.
pub(crate) fn put_values<'a>(p: &mut PackedB, n: usize, value: impl Fn(usize) -> &'a [f32]) {
    if !p.packing.is_pairs() {
        for t in 0..n {
            put_value(p, t, value(t));
        }
        return;
    }
    let (nr, rows, packing) = (p.nr, p.stored_k(), p.packing);
    for t in (0..n).step_by(2) {
        let lo = value(t);
        let hi = (t + 1 < n).then(|| value(t + 1));
        for (j, len, at) in packing.row_runs(rows, nr, t / 2, lo.len()) {
            let (dst, part) = (&mut p.data[at..at + len], &lo[j..j + len]);
            match hi {
                Some(hi) => {
                    let hi = &hi[j..j + len];
                    for ((d, &a), &b) in dst.iter_mut().zip(part).zip(hi) {
                        *d = f32::from_bits(bf16::bits_select(a) | bf16::bits_select(b) << 16);
                    }
                }
                None => {
                    for (d, &a) in dst.iter_mut().zip(part) {
                        *d = f32::from_bits(bf16::bits_select(a));
                    }
                }
            }
        }
    }
}

/// Writes value `slot` of a packed values matrix. With bf16 pairs, slot `2i`
/// is the low half of word row `i` (and clears the high half, so that an odd
/// number of keys leaves no stale value behind) and slot `2i + 1` the high
/// half: slots must be written in increasing order, as every caller does.
#[inline]
pub(crate) fn put_value(p: &mut PackedB, slot: usize, value: &[f32]) {
    let (nr, rows, packing) = (p.nr, p.stored_k(), p.packing);
    let row = if packing.is_pairs() { slot / 2 } else { slot };
    for (j, len, at) in packing.row_runs(rows, nr, row, value.len()) {
        let (dst, part) = (&mut p.data[at..at + len], &value[j..j + len]);
        match packing {
            Packing::F32 => dst.copy_from_slice(part),
            Packing::Rounded => {
                for (d, &x) in dst.iter_mut().zip(part) {
                    *d = bf16::round(x);
                }
            }
            Packing::Pairs | Packing::Tiles => put_pair_halves(dst, part, slot % 2),
        }
    }
}

/// `values` rounded to bf16 into the low (`half` 0, clearing the high one)
/// or high (`half` 1) halves of the pair words `dst`.
#[inline]
fn put_pair_halves(dst: &mut [f32], values: &[f32], half: usize) {
    let dst = dst.iter_mut().zip(values);
    match half {
        0 => dst.for_each(|(d, &x)| *d = f32::from_bits(bf16::bits_select(x))),
        _ => dst.for_each(|(d, &x)| {
            *d = f32::from_bits((d.to_bits() & 0xFFFF) | bf16::bits_select(x) << 16)
        }),
    }
}

/// Chunked attention of query chunks over windows of key chunks, with each key
/// chunk's packed keys and values built once and reused by every window that
/// contains it (a ring of `before + 1 + after` slots).
pub(crate) struct Windows {
    kern: &'static Kernel,
    chunk: usize,
    n_chunks: usize,
    before: usize,
    width: usize,
    /// Per slot: chunk id held (usize::MAX = none), packed keysᵀ, packed values.
    slots: Vec<(usize, PackedB, PackedB)>,
    /// Slot of each window position of the current query chunk.
    current: Vec<usize>,
    /// Logits / probabilities `[chunk, window]`.
    pub s: Vec<f32>,
    /// Outputs `[chunk, dv]`.
    pub o: Vec<f32>,
    /// Original position and validity of each window key.
    pub kpos: Vec<u32>,
    pub keep: Vec<u32>,
    dv: usize,
}

impl Windows {
    pub fn new(
        chunk: usize,
        n_chunks: usize,
        before: usize,
        after: usize,
        dk: usize,
        dv: usize,
    ) -> Result<Self> {
        let kern = kernel();
        let packing = bf16::packing(kern.isa);
        let width = before + 1 + after;
        let slots = (0..width)
            .map(|_| {
                Ok((
                    usize::MAX,
                    PackedB::zeroed_as(dk, chunk, kern.nr, packing)?,
                    PackedB::zeroed_as(chunk, dv, kern.nr, packing)?,
                ))
            })
            .collect::<Result<_>>()?;
        let keys = width * chunk;
        Ok(Windows {
            kern,
            chunk,
            n_chunks,
            before,
            width,
            slots,
            current: vec![0; width],
            s: try_zeroed(chunk * keys, "logit tile")?,
            o: try_zeroed(chunk * dv, "output tile")?,
            kpos: vec![0; keys],
            keep: vec![0; keys],
            dv,
        })
    }

    /// Keys in a window.
    pub fn keys(&self) -> usize {
        self.width * self.chunk
    }

    /// Makes the window of query chunk `j` current. `fill(id, keys, values)`
    /// packs chunk `id` into a slot (only when the slot does not hold it);
    /// `meta(id, kpos, keep)` writes the chunk's key positions and validity.
    pub fn load(
        &mut self,
        j: usize,
        mut fill: impl FnMut(usize, &mut PackedB, &mut PackedB),
        mut meta: impl FnMut(usize, &mut [u32], &mut [u32]),
    ) {
        let c = self.chunk;
        for (o, u) in window_keys(j, self.n_chunks, self.before)
            .take(self.width)
            .enumerate()
        {
            let (id, slot) = (u % self.n_chunks, u % self.width);
            let (tag, k, v) = &mut self.slots[slot];
            if *tag != id {
                fill(id, k, v);
                *tag = id;
            }
            self.current[o] = slot;
            meta(
                id,
                &mut self.kpos[o * c..(o + 1) * c],
                &mut self.keep[o * c..(o + 1) * c],
            );
        }
    }

    /// `s = q · keysᵀ` of the current window for the chunk's queries (`ldq` apart).
    pub fn logits(&mut self, q: &[f32], ldq: usize) {
        let (c, keys) = (self.chunk, self.keys());
        for (o, &slot) in self.current.iter().enumerate() {
            let kp = &self.slots[slot].1;
            gemm(
                self.kern,
                c,
                q,
                ldq,
                kp,
                &mut self.s[o * c..],
                keys,
                Epilogue::STORE,
            );
        }
    }

    /// `o = s · values` of the current window (one multiply-add chain over the
    /// window's keys in order, continued through `o` from chunk to chunk).
    pub fn weighted_values(&mut self) {
        let (c, keys, dv) = (self.chunk, self.keys(), self.dv);
        for (o, &slot) in self.current.iter().enumerate() {
            let epi = if o == 0 {
                Epilogue::STORE
            } else {
                Epilogue::ACCUMULATE
            };
            let vp = &self.slots[slot].2;
            gemm(
                self.kern,
                c,
                &self.s[o * c..],
                keys,
                vp,
                &mut self.o,
                dv,
                epi,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `put_keys` writes the words of `put_key` one key at a time, whether
    /// its groups are transposed in registers or not: every scaling (a factor
    /// or none, an exact reciprocal or a division), a dimension tail, groups
    /// in a second panel and a partial last group (and, where the kernel's
    /// panels are narrower than a group, groups across a panel boundary).
    #[test]
    fn put_keys_writes_the_words_of_put_key() {
        let nr = kernel().nr;
        for (d, n, div) in [(64, 2 * nr, 8.0f32), (70, nr + 21, 3.0), (16, 40, 1.0)] {
            let keys: Vec<f32> = (0..n * d)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let factor = |t: usize| (!t.is_multiple_of(3)).then_some(1.0 + t as f32 / 9.0);
            let key = |t: usize| (&keys[t * d..(t + 1) * d], factor(t));
            let scale = KeyScale::new(div);
            let mut want = PackedB::zeroed_as(d, n, nr, Packing::F32).unwrap();
            for t in 0..n {
                let (k, f) = key(t);
                put_key(&mut want, t, k, f, scale);
            }
            let mut got = PackedB::zeroed_as(d, n, nr, Packing::F32).unwrap();
            put_keys(&mut got, n, key, scale);
            let bits = |p: &PackedB| p.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "d {d}, n {n}, div {div}");
        }
    }

    #[test]
    fn adjacent_chunks_wrap_around() {
        let v = |j, n, b, a| adjacent_chunks(j, n, b, a).collect::<Vec<_>>();
        assert_eq!(v(0, 4, 1, 0), vec![3, 0]);
        assert_eq!(v(2, 4, 2, 1), vec![0, 1, 2, 3]);
        assert_eq!(v(3, 4, 0, 1), vec![3, 0]);
        assert_eq!(v(0, 1, 1, 1), vec![0, 0, 0]);
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + 0.37) * (1.7 + seed as f32)).sin() * 1.5)
            .collect()
    }

    /// `Σ_t round(a[i, t]) · round(b[t, j])` in f64 (`b` given as `[k, n]`).
    fn rounded_product(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let r = |x: f32| f64::from(bf16::round(x));
        (0..m * n)
            .map(|ij| {
                (0..k)
                    .map(|t| r(a[ij / n * k + t]) * r(b[t * n + ij % n]))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn batched_packing_writes_the_words_of_the_one_key_packing() {
        let kern = kernel();
        // Odd sizes, more keys than a group, several panels, a factor and a
        // NaN; every packing the kernels use.
        let mut pairs = Vec::new();
        for packing in [
            Packing::F32,
            Packing::Rounded,
            Packing::Pairs,
            Packing::Tiles,
        ] {
            // A divisor (3) and an exact reciprocal (1/8); 130 dimensions
            // are four whole blocks of 16 pair rows and one more row.
            for (n, dk, dv, div) in [
                (37, 9, 20, 3.0),
                (kern.nr + 19, 130, 7, 3.0),
                (2 * kern.nr, 64, 16, 8.0),
                (1, 1, 1, 3.0),
            ] {
                let mut keys = values(n * dk, 4);
                keys[n * dk / 2] = f32::NAN;
                keys[n * dk - 1] = f32::from_bits(0x0000_8001); // subnormal
                let vals = values(n * dv, 5);
                let scale = KeyScale::new(div);
                let factor = |t: usize| (!t.is_multiple_of(3)).then_some(0.5 + t as f32 / 64.0);
                let stale = |k, m| {
                    let mut p = PackedB::zeroed_as(k, m, kern.nr, packing).unwrap();
                    p.data.fill(f32::from_bits(0x7FC0_1234));
                    p
                };
                let (mut k1, mut k2) = (stale(dk, n), stale(dk, n));
                let (mut v1, mut v2) = (stale(n, dv), stale(n, dv));
                for t in 0..n {
                    put_key(&mut k1, t, &keys[t * dk..][..dk], factor(t), scale);
                    put_value(&mut v1, t, &vals[t * dv..][..dv]);
                }
                put_keys(&mut k2, n, |t| (&keys[t * dk..][..dk], factor(t)), scale);
                put_values(&mut v2, n, |t| &vals[t * dv..][..dv]);
                let bits = |p: &PackedB| p.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&k1), bits(&k2), "keys {packing:?} n={n} dk={dk}");
                assert_eq!(bits(&v1), bits(&v2), "values {packing:?} n={n} dv={dv}");
                match packing {
                    Packing::Pairs => pairs.push((k1, v1)),
                    // The tile layout holds the pair layout's words, each
                    // where `Packing::offset` says.
                    Packing::Tiles => {
                        let (pk, pv) = pairs.remove(0);
                        assert_eq!(relaid(&pk, Packing::Tiles), bits(&k1), "keys n={n}");
                        assert_eq!(relaid(&pv, Packing::Tiles), bits(&v1), "values n={n}");
                    }
                    _ => {}
                }
            }
        }
    }

    /// The words of `p` placed as `to` places them.
    fn relaid(p: &PackedB, to: Packing) -> Vec<u32> {
        let (nr, rows) = (p.nr, p.stored_k());
        let mut out = vec![0u32; p.data.len()];
        for (panel, words) in p.data.chunks_exact(rows * nr).enumerate() {
            for r in 0..rows {
                for j in 0..nr {
                    let w = words[p.packing.offset(rows, nr, r, j)].to_bits();
                    out[panel * rows * nr + to.offset(rows, nr, r, j)] = w;
                }
            }
        }
        out
    }

    #[test]
    fn bf16_tiles_multiply_rounded_queries_keys_probabilities_and_values() {
        // An odd key count after a window of NaN keys: a pair's unused half
        // must not carry a stale value into the products.
        let (m, dk, dv, cap, nk) = (5, 9, 20, 8, 7);
        bf16::with(true, || {
            let mut tile = Tile::new(m, cap, dk, dv).unwrap();
            let scale = KeyScale::new(1.0);
            for j in 0..cap {
                put_key(&mut tile.k, j, &[f32::NAN; 9], None, scale);
                put_value(&mut tile.v, j, &[f32::NAN; 20]);
            }
            tile.set_keys(nk);
            let (q, keys, vals) = (values(m * dk, 1), values(nk * dk, 2), values(nk * dv, 3));
            for j in 0..nk {
                put_key(&mut tile.k, j, &keys[j * dk..][..dk], None, scale);
                put_value(&mut tile.v, j, &vals[j * dv..][..dv]);
            }
            tile.logits(m, &q, dk);
            let keys_t: Vec<f32> = (0..dk * nk).map(|i| keys[i % nk * dk + i / nk]).collect();
            let want = rounded_product(&q, &keys_t, m, dk, nk);
            let exact: Vec<f64> = (0..m * nk)
                .map(|ij| {
                    let (i, j) = (ij / nk, ij % nk);
                    (0..dk)
                        .map(|t| f64::from(q[i * dk + t]) * f64::from(keys[j * dk + t]))
                        .sum()
                })
                .collect();
            let mut off_exact = 0.0f64;
            for (ij, &w) in want.iter().enumerate() {
                let got = f64::from(tile.s[ij]); // [m, nk]
                assert!((got - w).abs() < 1e-5, "logit {ij}: {got} vs {w}");
                off_exact = off_exact.max((got - exact[ij]).abs());
            }
            assert!(off_exact > 1e-4, "the operands were not rounded to bf16");
            // Probabilities (any values) times values.
            let probs = values(m * nk, 4);
            tile.s[..m * nk].copy_from_slice(&probs);
            tile.weighted_values(m, false);
            let want = rounded_product(&probs, &vals, m, nk, dv);
            for (ij, &w) in want.iter().enumerate() {
                assert!((f64::from(tile.o[ij]) - w).abs() < 1e-5, "output {ij}");
            }
        });
    }

    #[test]
    fn self_only_row_gets_weight_one() {
        let mut row = [3.0f32, 1.0, 2.0];
        let (m, s) = softmax_row(
            &mut row,
            0,
            &[0, 1, 2],
            &[1; 3],
            Rules {
                causal: true,
                self_mask: true,
            },
            true,
        );
        assert_eq!((m, s), (SELF_MASK_VALUE, 1.0));
        assert_eq!(row, [1.0, 0.0, 0.0]);
    }
}
