//! Counter-based random numbers (Philox4x32-10) for explicit random ops.
//!
//! A draw is a pure function of (seed, stream, index): the same rotations come
//! out whatever the thread count or evaluation order, and a recomputation in a
//! backward pass replays them exactly.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: four 32-bit words from a 128-bit counter and a 64-bit key.
///
/// The known-answer vectors below are Random123's published `philox4x32 10` cases
/// (counter, key, expected output), so this checks the generator against the
/// reference implementation rather than against itself.
///
/// ```
/// use reformc_interp::philox::philox4x32;
/// assert_eq!(
///     philox4x32([0, 0, 0, 0], [0, 0]),
///     [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
/// );
/// assert_eq!(
///     philox4x32([u32::MAX; 4], [u32::MAX; 2]),
///     [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
/// );
/// assert_eq!(
///     philox4x32(
///         [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
///         [0xa409_3822, 0x299f_31d0]
///     ),
///     [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
/// );
/// ```
pub fn philox4x32(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for _ in 0..10 {
        let p0 = u64::from(M0) * u64::from(ctr[0]);
        let p1 = u64::from(M1) * u64::from(ctr[2]);
        ctr = [
            (p1 >> 32) as u32 ^ ctr[1] ^ key[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ ctr[3] ^ key[1],
            p0 as u32,
        ];
        key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
    }
    ctr
}

/// `n` standard normal samples for (seed, stream), by Box-Muller over Philox output.
///
/// ```
/// use reformc_interp::philox::normals;
/// let a = normals(7, 3, 1000);
/// assert_eq!(a, normals(7, 3, 1000));
/// assert_ne!(a[..4], normals(7, 4, 4)[..]);
/// let mean = a.iter().sum::<f64>() / 1000.0;
/// assert!(mean.abs() < 0.1);
/// ```
pub fn normals(seed: u64, stream: u64, n: usize) -> Vec<f64> {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut out = Vec::with_capacity(n + 3);
    let mut block: u64 = 0;
    while out.len() < n {
        let r = philox4x32(
            [
                block as u32,
                (block >> 32) as u32,
                stream as u32,
                (stream >> 32) as u32,
            ],
            key,
        );
        for pair in [[r[0], r[1]], [r[2], r[3]]] {
            // Uniforms in (0, 1]: never 0, so the log is finite.
            let u1 = (f64::from(pair[0]) + 1.0) / 4_294_967_296.0;
            let u2 = f64::from(pair[1]) / 4_294_967_296.0;
            let radius = (-2.0 * u1.ln()).sqrt();
            let angle = 2.0 * std::f64::consts::PI * u2;
            out.push(radius * angle.cos());
            out.push(radius * angle.sin());
        }
        block += 1;
    }
    out.truncate(n);
    out
}

/// The integer threshold of a keep decision with drop probability `p`: a
/// Philox word `w` (uniform `w / 2^32`) is kept iff `w >= keep_threshold(p)`,
/// i.e. iff the uniform is `>= p` (rounded up to the 2^-32 grid). Integer
/// compares make every backend decide alike.
///
/// ```
/// use reformc_interp::philox::keep_threshold;
/// assert_eq!(keep_threshold(0.0), 0);
/// assert_eq!(keep_threshold(0.5), 1 << 31);
/// assert_eq!(keep_threshold(1.0), 1 << 32);
/// ```
pub fn keep_threshold(p: f64) -> u64 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0).ceil() as u64
}

/// The value of a kept element: `1/(1-p)`, or 0 when `p >= 1` (nothing is kept).
pub fn keep_scale(p: f64) -> f64 {
    if p >= 1.0 {
        0.0
    } else {
        1.0 / (1.0 - p)
    }
}

/// A dropout mask of `n` elements for (seed, stream): element `i` is word
/// `i % 4` of the Philox block `i / 4` (counter `[block, stream]`, key
/// `seed`), kept (value [`keep_scale`]) iff it is `>= keep_threshold(p)`,
/// else 0.
///
/// ```
/// use reformc_interp::philox::dropout_mask;
/// let m = dropout_mask(7, 3, 0.25, 4000);
/// assert_eq!(m, dropout_mask(7, 3, 0.25, 4000));
/// let zeros = m.iter().filter(|&&x| x == 0.0).count() as f64 / 4000.0;
/// assert!((zeros - 0.25).abs() < 0.03);
/// assert!(m.iter().all(|&x| x == 0.0 || x == 1.0 / 0.75));
/// ```
pub fn dropout_mask(seed: u64, stream: u64, p: f64, n: usize) -> Vec<f64> {
    let key = [seed as u32, (seed >> 32) as u32];
    let (threshold, scale) = (keep_threshold(p), keep_scale(p));
    (0..n.div_ceil(4) as u64)
        .flat_map(|block| {
            philox4x32(
                [
                    block as u32,
                    (block >> 32) as u32,
                    stream as u32,
                    (stream >> 32) as u32,
                ],
                key,
            )
        })
        .take(n)
        .map(|w| {
            if u64::from(w) >= threshold {
                scale
            } else {
                0.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{dropout_mask, keep_scale};

    /// The fraction of zeros is p within 4 standard deviations, every kept
    /// value is 1/(1-p), and p = 0 keeps everything unscaled.
    #[test]
    fn dropout_mask_drops_a_fraction_p() {
        let n = 100_000;
        for (seed, p) in [(1u64, 0.1), (2, 0.5), (3, 0.9)] {
            let m = dropout_mask(seed, 1 << 32, p, n);
            let zeros = m.iter().filter(|&&x| x == 0.0).count() as f64 / n as f64;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((zeros - p).abs() < 4.0 * sd, "p {p}: zeros {zeros}");
            assert!(m.iter().all(|&x| x == 0.0 || x == keep_scale(p)));
            let mean = m.iter().sum::<f64>() / n as f64;
            assert!((mean - 1.0).abs() < 0.05, "p {p}: mean {mean}");
        }
        assert!(dropout_mask(4, 0, 0.0, 1000).iter().all(|&x| x == 1.0));
        assert!(dropout_mask(4, 0, 1.0, 1000).iter().all(|&x| x == 0.0));
        assert_ne!(dropout_mask(4, 0, 0.5, 64), dropout_mask(4, 1, 0.5, 64));
        assert_ne!(dropout_mask(4, 0, 0.5, 64), dropout_mask(5, 0, 0.5, 64));
    }
}
