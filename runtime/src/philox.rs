//! Counter-based normal random numbers (Philox4x32-10 + Box-Muller), the same
//! values as `reformc_interp::philox::normals`, rounded to f32.

use crate::pool::{par_for, SharedMut};
use crate::Result;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: four 32-bit words from a 128-bit counter and a 64-bit key.
fn philox4x32(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
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

/// The four normals of counter block `block` (what `normals` emits at 4·block..4·block+4).
fn block_normals(seed: u64, stream: u64, block: u64) -> [f64; 4] {
    let key = [seed as u32, (seed >> 32) as u32];
    let r = philox4x32(
        [
            block as u32,
            (block >> 32) as u32,
            stream as u32,
            (stream >> 32) as u32,
        ],
        key,
    );
    let mut out = [0.0; 4];
    for (i, pair) in [[r[0], r[1]], [r[2], r[3]]].into_iter().enumerate() {
        let u1 = (f64::from(pair[0]) + 1.0) / 4_294_967_296.0;
        let u2 = f64::from(pair[1]) / 4_294_967_296.0;
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        out[2 * i] = radius * angle.cos();
        out[2 * i + 1] = radius * angle.sin();
    }
    out
}

/// Fills `out` with standard normals for (seed, stream) (`rc_random_normal_f32`);
/// a pure function of (seed, stream, index), computed in parallel.
///
/// ```
/// let mut a = [0.0f32; 10];
/// reformc_runtime::random_normal(7, 3, &mut a).unwrap();
/// let want: Vec<f32> = reformc_interp::philox::normals(7, 3, 10).iter().map(|&x| x as f32).collect();
/// assert_eq!(a.to_vec(), want);
/// ```
pub fn random_normal(seed: u64, stream: u64, out: &mut [f32]) -> Result<()> {
    const PER: usize = 4096; // values per task, a multiple of 4
    let n = out.len();
    let shared = SharedMut::new(out);
    par_for(n.div_ceil(PER), |t| {
        let start = t * PER;
        // SAFETY: task t alone writes values start..start+len.
        let dst = unsafe { shared.slice(start, PER.min(n - start)) };
        for (i, quad) in dst.chunks_mut(4).enumerate() {
            let v = block_normals(seed, stream, ((start / 4) + i) as u64);
            for (o, x) in quad.iter_mut().zip(v) {
                *o = x as f32;
            }
        }
    })
}

/// Fills `out` with a dropout mask for (seed, stream) and drop probability
/// `p` (`rc_dropout_mask_f32`): element `i` is `1/(1-p)` (rounded to f32)
/// when word `i % 4` of Philox block `i / 4` is `>= ceil(p * 2^32)`, else 0;
/// the same values as `reformc_interp::philox::dropout_mask`, in parallel.
///
/// ```
/// let mut a = [0.0f32; 10];
/// reformc_runtime::dropout_mask(7, 3, 0.5, &mut a).unwrap();
/// let want: Vec<f32> = reformc_interp::philox::dropout_mask(7, 3, 0.5, 10).iter().map(|&x| x as f32).collect();
/// assert_eq!(a.to_vec(), want);
/// ```
pub fn dropout_mask(seed: u64, stream: u64, p: f64, out: &mut [f32]) -> Result<()> {
    const PER: usize = 16384; // values per task, a multiple of 4
    let p = p.clamp(0.0, 1.0);
    let threshold = (p * 4_294_967_296.0).ceil() as u64;
    let scale = if p >= 1.0 {
        0.0
    } else {
        (1.0 / (1.0 - p)) as f32
    };
    let key = [seed as u32, (seed >> 32) as u32];
    let n = out.len();
    let shared = SharedMut::new(out);
    par_for(n.div_ceil(PER), |t| {
        let start = t * PER;
        // SAFETY: task t alone writes values start..start+len.
        let dst = unsafe { shared.slice(start, PER.min(n - start)) };
        for (i, quad) in dst.chunks_mut(4).enumerate() {
            let block = ((start / 4) + i) as u64;
            let ctr = [
                block as u32,
                (block >> 32) as u32,
                stream as u32,
                (stream >> 32) as u32,
            ];
            for (o, w) in quad.iter_mut().zip(philox4x32(ctr, key)) {
                *o = if u64::from(w) >= threshold {
                    scale
                } else {
                    0.0
                };
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::philox4x32;

    /// Random123's published `philox4x32 10` known answers (counter, key, output).
    #[test]
    fn matches_random123_known_answers() {
        let cases: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            (
                [0; 4],
                [0; 2],
                [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
            ),
            (
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0],
                [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
            ),
        ];
        for (ctr, key, want) in cases {
            assert_eq!(philox4x32(ctr, key), want);
        }
    }
}
