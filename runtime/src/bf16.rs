//! bf16 GEMM operands (`--precision bf16`): products of bf16-rounded
//! operands accumulated in f32, everything else in f32.
//!
//! The precision belongs to the calling thread (a compiled model's entry sets
//! it for the run with `rc_set_gemm_bf16`) and travels with the work it
//! hands to the pool ([`crate::pool`]). It is read when a right-hand side
//! is packed ([`crate::gemm::PackedB`]), so a packed operand carries its own
//! precision into whatever thread multiplies with it:
//! - on CPUs with AVX-512 BF16 the panel holds bf16 pairs and the
//!   micro-kernel is `vdpbf16ps` (two products per lane per instruction);
//! - elsewhere (or with `REFORMC_RT_BF16=emulate`) both operands are rounded
//!   to bf16 and multiplied by the f32 kernels: the same rounding of the
//!   operands, no speed-up.
//!
//! The attention tiles (`QKᵀ` and the weighted sum of values) pack their keys
//! and values the same way ([`crate::attention`]'s `put_key` / `put_value`),
//! so they follow the precision too; the hashing projection packs in f32
//! whatever the precision, since bucket decisions must not move beyond
//! near-ties.
//!
//! ```
//! use reformc_runtime::bf16;
//! assert_eq!(bf16::round(1.0 + 1.0 / 512.0), 1.0); // 8 bits of mantissa: ties to even
//! assert_eq!(bf16::round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
//! assert!(!bf16::enabled());
//! ```

use std::cell::Cell;

thread_local! {
    static BF16: Cell<bool> = const { Cell::new(false) };
}

/// Whether GEMMs packed on this thread use bf16 operands.
pub fn enabled() -> bool {
    BF16.with(Cell::get)
}

/// Sets this thread's GEMM precision; returns the previous setting.
pub fn set(on: bool) -> bool {
    BF16.with(|c| c.replace(on))
}

/// Runs `f` with this thread's GEMM precision set to `on`, then restores it.
pub(crate) fn with<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let before = set(on);
    let r = f();
    set(before);
    r
}

/// The bf16 nearest to `x` (ties to even), as its 16 bits; NaN stays NaN.
#[inline(always)]
pub fn bits(x: f32) -> u16 {
    let u = x.to_bits();
    if x.is_nan() {
        return ((u >> 16) | 0x40) as u16;
    }
    (u.wrapping_add(0x7FFF + ((u >> 16) & 1)) >> 16) as u16
}

/// [`bits`] without a branch, so that loops over it vectorise: the same
/// result for every input, NaN included.
#[inline(always)]
pub(crate) fn bits_select(x: f32) -> u32 {
    let u = x.to_bits();
    let nan = (u >> 16) | 0x40;
    let rounded = u.wrapping_add(0x7FFF + ((u >> 16) & 1)) >> 16;
    match u & 0x7FFF_FFFF > 0x7F80_0000 {
        true => nan & 0xFFFF,
        false => rounded,
    }
}

/// `x` rounded to bf16 (ties to even), as an f32.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    f32::from_bits((bits(x) as u32) << 16)
}

/// Two bf16 values in one 32-bit word, `lo` in the low half (the order
/// `vdpbf16ps` pairs them in).
#[inline(always)]
pub(crate) fn pair(lo: f32, hi: f32) -> u32 {
    bits(lo) as u32 | (bits(hi) as u32) << 16
}

/// `out[i]` = the pair word of `lo[i]` and `hi[i]` ([`pair`]; a zero high
/// half where `hi` is `None`: the odd last row of a `k` that is not even).
/// Two rows along k become one row of pair words in a single pass, compiled
/// for the GEMM kernel's vector width; [`bits_select`] gives [`bits`]'s
/// result on every input, so the words equal the scalar [`pair`]'s.
pub(crate) fn pair_rows_into(lo: &[f32], hi: Option<&[f32]>, out: &mut [f32]) {
    assert!(lo.len() == out.len() && hi.is_none_or(|h| h.len() == out.len()));
    crate::simd::vectorized(
        #[inline(always)]
        || match hi {
            Some(hi) => {
                for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                    *o = f32::from_bits(bits_select(l) | bits_select(h) << 16);
                }
            }
            None => {
                for (o, &l) in out.iter_mut().zip(lo) {
                    *o = f32::from_bits(bits_select(l));
                }
            }
        },
    )
}

/// `dst[i] = bits(src[i])`: with AVX-512 BF16, 16 values per
/// `vcvtneps2bf16` (the same rounding, except that it flushes subnormals).
pub(crate) fn to_bits_row(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if hardware() {
        // SAFETY: `hardware()` checked the CPU features the function needs.
        unsafe { to_bits_row_avx512(src, dst) };
        return;
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = bits(x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn to_bits_row_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let mut s = src.chunks_exact(16);
    let mut d = dst.chunks_exact_mut(16);
    for (sc, dc) in (&mut s).zip(&mut d) {
        // SAFETY: both chunks hold 16 elements.
        unsafe {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(sc.as_ptr()));
            _mm256_storeu_si256(
                dc.as_mut_ptr().cast(),
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
        }
    }
    for (o, &x) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *o = bits(x);
    }
}

/// How a packed right-hand side holds its values.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Packing {
    /// f32 values: the plain fp32 GEMM.
    F32,
    /// f32 values rounded to bf16; A is rounded when multiplied.
    Rounded,
    /// bf16 pairs along k (one 32-bit word per column and pair of rows) for
    /// the AVX-512 BF16 kernel; A is converted to pairs when multiplied.
    Pairs,
    /// The words of [`Packing::Pairs`] for AMX tiles ([`crate::amx`]): each
    /// panel stored as column groups of [`TILE_COLS`], one after another,
    /// each group's pair rows [`TILE_COLS`] words long, so that a B tile
    /// (16 pair rows of one group) is 1 KiB of contiguous memory. With
    /// pair rows a panel wide (256 bytes apart) the tile loads bounded the
    /// AMX micro-kernel.
    Tiles,
}

/// Columns of one group of a [`Packing::Tiles`] panel: one tile's width.
pub(crate) const TILE_COLS: usize = 16;

impl Packing {
    /// Rows of a panel packed from `k` rows of B: `k`, or `ceil(k/2)` pairs.
    pub(crate) fn stored_rows(self, k: usize) -> usize {
        match self {
            Packing::Pairs | Packing::Tiles => k.div_ceil(2),
            Packing::F32 | Packing::Rounded => k,
        }
    }

    /// Whether values are stored as bf16 pair words.
    pub(crate) fn is_pairs(self) -> bool {
        matches!(self, Packing::Pairs | Packing::Tiles)
    }

    /// Where stored row `r`, column `j` of a panel `nr` wide and `rows`
    /// stored rows long lies, counted from the panel's start (with tiles:
    /// past `j`'s earlier groups of `rows × 16` words).
    #[inline(always)]
    pub(crate) fn offset(self, rows: usize, nr: usize, r: usize, j: usize) -> usize {
        match self {
            Packing::Tiles => (j / TILE_COLS) * rows * TILE_COLS + r * TILE_COLS + j % TILE_COLS,
            _ => r * nr + j,
        }
    }

    /// From one stored row of a column to the next.
    #[inline(always)]
    pub(crate) fn row_step(self, nr: usize) -> usize {
        match self {
            Packing::Tiles => TILE_COLS,
            _ => nr,
        }
    }

    /// The columns `j..` of a stored row that lie next to each other: to
    /// the end of the panel (`nr` wide), or of `j`'s column group.
    #[inline(always)]
    pub(crate) fn run(self, nr: usize, j: usize) -> usize {
        match self {
            Packing::Tiles => TILE_COLS - j % TILE_COLS,
            _ => nr - j % nr,
        }
    }

    /// Columns `0..len` of stored row `r` of a matrix of panels `nr` wide
    /// and `rows` stored rows long, as runs of contiguous words: `(first
    /// column, length, index from the matrix's start)`.
    #[inline(always)]
    pub(crate) fn row_runs(
        self,
        rows: usize,
        nr: usize,
        r: usize,
        len: usize,
    ) -> impl Iterator<Item = (usize, usize, usize)> {
        let run = self.run(nr, 0);
        (0..len).step_by(run.max(1)).map(move |j| {
            let at = (j / nr) * rows * nr + self.offset(rows, nr, r, j % nr);
            (j, run.min(len - j), at)
        })
    }
}

/// The packing this thread's precision asks for, with a kernel of
/// `isa` (pairs need AVX-512 BF16 and the AVX-512 kernels' panels; tiles,
/// AMX on the hardware or the model as well).
pub(crate) fn packing(isa: &str) -> Packing {
    if !enabled() {
        return Packing::F32;
    }
    match hardware() && isa == "avx512" {
        true if crate::amx::mode().0 != crate::amx::Mode::Off => Packing::Tiles,
        true => Packing::Pairs,
        false => Packing::Rounded,
    }
}

/// True when the CPU has AVX-512 BF16 and `REFORMC_RT_BF16` is not `emulate`.
pub fn hardware() -> bool {
    static HW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HW.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let cpu = std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        cpu && std::env::var("REFORMC_RT_BF16").as_deref() != Ok("emulate")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_and_keeps_specials() {
        assert_eq!(round(0.0), 0.0);
        assert_eq!(round(-2.5), -2.5);
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::MAX), f32::INFINITY, "past the largest bf16");
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: even (1) wins.
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        for i in 0..10_000u32 {
            let x = f32::from_bits(0x3f80_0000 + i * 977);
            let r = round(x);
            assert!((r - x).abs() <= x.abs() / 256.0, "{x} -> {r}");
        }
    }

    #[test]
    fn the_branchless_rounding_equals_the_plain_one_on_every_class() {
        let specials = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001), // signalling NaN
            f32::from_bits(0x0000_8000), // subnormal, a tie
            f32::from_bits(0x0001_7FFF),
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        for x in specials {
            assert_eq!(bits_select(x), bits(x) as u32, "{:#x}", x.to_bits());
        }
        // Every exponent, and mantissas around each rounding boundary.
        for hi in (0..=0xFFFFu32).step_by(7) {
            for lo in [0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF] {
                let x = f32::from_bits(hi << 16 | lo);
                assert_eq!(bits_select(x), bits(x) as u32, "{:#x}", x.to_bits());
            }
        }
    }

    #[test]
    fn tile_groups_hold_each_stored_row_of_sixteen_columns_together() {
        let (rows, nr) = (10, 64);
        assert_eq!(Packing::Pairs.offset(rows, nr, 2, 17), 2 * 64 + 17);
        assert_eq!(Packing::Tiles.offset(rows, nr, 2, 17), 10 * 16 + 2 * 16 + 1);
        // Every packing places the panel's words one to one in rows × nr.
        for p in [Packing::F32, Packing::Pairs, Packing::Tiles] {
            let mut seen = vec![false; rows * nr];
            for r in 0..rows {
                for j in 0..nr {
                    let o = p.offset(rows, nr, r, j);
                    assert!(!seen[o], "{p:?} ({r}, {j})");
                    seen[o] = true;
                    if j % nr + 1 < nr && p.run(nr, j) > 1 {
                        assert_eq!(p.offset(rows, nr, r, j + 1), o + 1, "{p:?} run at {j}");
                    }
                    if r + 1 < rows {
                        assert_eq!(p.offset(rows, nr, r + 1, j), o + p.row_step(nr));
                    }
                }
            }
            assert!(seen.iter().all(|&s| s));
        }
        assert_eq!(Packing::Tiles.run(64, 17), 15);
        assert_eq!(Packing::Pairs.run(64, 17), 47);
        // Runs of a row across two panels: every column once, where
        // `offset` puts it.
        for p in [Packing::F32, Packing::Pairs, Packing::Tiles] {
            let mut next = 0;
            for (j, len, at) in p.row_runs(rows, nr, 3, nr + 21) {
                assert_eq!(j, next, "{p:?}");
                for c in 0..len {
                    let (panel, jj) = ((j + c) / nr, (j + c) % nr);
                    assert_eq!(at + c, panel * rows * nr + p.offset(rows, nr, 3, jj));
                }
                next = j + len;
            }
            assert_eq!(next, nr + 21);
        }
    }

    #[test]
    fn the_setting_is_per_thread() {
        assert!(!enabled());
        with(true, || {
            assert!(enabled());
            std::thread::spawn(|| assert!(!enabled())).join().unwrap();
        });
        assert!(!enabled());
    }

    /// `act(x·wᵀ + b)` in f64 from the bf16-rounded operands, and the sum of
    /// |products| per element (the scale of f32 accumulation error).
    fn reference(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        rows: usize,
        k: usize,
        out: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0; rows * out];
        let mut mag = vec![0.0; rows * out];
        for i in 0..rows {
            for j in 0..out {
                for kk in 0..k {
                    let p = round(x[i * k + kk]) as f64 * round(w[j * k + kk]) as f64;
                    y[i * out + j] += p;
                    mag[i * out + j] += p.abs();
                }
                y[i * out + j] += b[j] as f64;
            }
        }
        (y, mag)
    }

    fn check(got: &[f32], want: &[f64], mag: &[f64], what: &str) {
        for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * m + 1e-6,
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn bf16_products_are_sums_of_rounded_operands_in_f32() {
        use crate::gemm::{gemm_a, kernel, AStrides, Epilogue, PackedB};
        // Odd k (a half pair), rows and columns that are not whole tiles.
        let (rows, k, out) = (37, 75, 70);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
            .collect();
        let w: Vec<f32> = (0..out * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 11.0)
            .collect();
        let bias: Vec<f32> = (0..out).map(|j| j as f32 / 7.0).collect();
        let (want, mag) = reference(&x, &w, &bias, rows, k, out);
        // Through `linear`, with this thread's precision set: pairs on
        // AVX-512 BF16 hardware, rounded f32 operands elsewhere.
        let linear = |on: bool| {
            let mut y = vec![0.0f32; rows * out];
            let act = crate::Activation::None;
            with(on, || {
                crate::linear(&x, rows, k, &w, out, Some(&bias), act, &mut y)
            })
            .unwrap();
            y
        };
        let (y, f32_bits) = (linear(true), linear(false));
        check(&y, &want, &mag, "linear");
        assert_ne!(y, f32_bits, "bf16 operands change the result");
        // Each packing explicitly, where the CPU has it.
        let kern = kernel();
        let mut kinds = vec![Packing::Rounded];
        match hardware() && kern.isa == "avx512" {
            true => kinds.push(Packing::Pairs),
            false => eprintln!(
                "bf16 pairs not checked: this CPU has no AVX-512 BF16 (or REFORMC_RT_BF16=emulate)"
            ),
        }
        for packing in kinds {
            let b = PackedB::from_fn(k, out, kern.nr, packing, |kk, j| w[j * k + kk]).unwrap();
            let mut padded = bias.clone();
            padded.resize(b.panels() * kern.nr, 0.0);
            let epi = Epilogue {
                accumulate: false,
                bias: Some(&padded),
                act: crate::Activation::None,
            };
            let mut y = vec![0.0f32; rows * out];
            gemm_a(
                kern,
                rows,
                &x,
                AStrides { row: k, k: 1 },
                &b,
                &mut y,
                out,
                epi,
            );
            check(&y, &want, &mag, &format!("{packing:?}"));
        }
    }

    #[test]
    fn hashing_stays_f32_under_bf16() {
        // B 1, L 300, H 2, d 24, 2 rounds, factors [4, 8]: S/2 = 6 per round.
        let (len, heads, d, rounds, half) = (300, 2, 24, 2, 6);
        let noise = |i: usize| ((i as u64 * 2_654_435_761) % 10_007) as f32 / 10_007.0 - 0.5;
        let qk: Vec<f32> = (0..len * heads * d).map(noise).collect();
        let rot: Vec<f32> = (0..heads * d * rounds * half)
            .map(|i| noise(i + 77))
            .collect();
        let hash = || {
            let mut out = vec![0i64; heads * rounds * len];
            crate::attention::lsh_hash(
                &qk,
                &rot,
                None,
                1,
                len,
                heads,
                d,
                rounds,
                &[4, 8],
                &mut out,
            )
            .unwrap();
            out
        };
        assert_eq!(with(true, hash), hash());
    }

    /// Timing, not a check: `cargo test --release -p reformc-runtime --lib
    /// -- --ignored linear_timing --nocapture`.
    #[test]
    #[ignore]
    fn linear_timing() {
        let (rows, k, out) = (4096, 1024, 1024);
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 13) as f32 / 13.0).collect();
        let w: Vec<f32> = (0..out * k).map(|i| (i % 7) as f32 / 7.0).collect();
        let mut y = vec![0.0f32; rows * out];
        for on in [false, true, false, true] {
            let t = std::time::Instant::now();
            with(on, || {
                crate::linear(&x, rows, k, &w, out, None, crate::Activation::None, &mut y)
            })
            .unwrap();
            let s = t.elapsed().as_secs_f64();
            eprintln!(
                "bf16 {on}: {:.1} ms, {:.0} GFLOP/s",
                s * 1e3,
                2.0 * (rows * k * out) as f64 / s / 1e9
            );
        }
    }
}
