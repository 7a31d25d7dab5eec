//! Chunked local attention (`rc_local_attention_f32`, HF `LocalSelfAttention`).

use super::full::{attention_impl, Shape};
use super::{key_divisor, put_keys, put_values, softmax_row, KeyScale, Rules, Windows};
use crate::error::{invalid, Error, Result};
use crate::pool::{try_par_for, SharedMut};

/// Local attention over `[B, L, H·dqk]` queries/keys and `[B, L, H·dv]` values
/// (`rc_local_attention_f32`): query chunk `j` attends to chunks
/// `j-before ..= j+after` (wrapping around), keys divided by `1/scale`, padding
/// and (if `causal`) causal masks by original position, no self mask.
/// `L ≤ chunk` is full attention; otherwise `L` must be a multiple of `chunk`
/// ([`Error::ChunkMismatch`], code 3).
///
/// ```
/// use reformc_runtime::attention::local_attention;
/// let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.1).collect(); // B = 1, L = 8, H = 1, d = 1
/// let mut out = vec![0.0f32; 8];
/// local_attention(&x, &x, &x, None, 1, 8, 1, 1, 1, 1.0, 4, 1, 0, true, &mut out).unwrap();
/// assert_eq!(out[0], 0.0); // the first query sees only itself
/// let e = local_attention(&x[..6], &x[..6], &x[..6], None, 1, 6, 1, 1, 1, 1.0, 4, 1, 0, true, &mut out[..6]);
/// assert_eq!(e.unwrap_err().code(), 3);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn local_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[i64]>,
    batch: usize,
    len: usize,
    heads: usize,
    dqk: usize,
    dv: usize,
    scale: f32,
    chunk: usize,
    before: usize,
    after: usize,
    causal: bool,
    out: &mut [f32],
) -> Result<()> {
    let shape = Shape {
        batch,
        lq: len,
        lk: len,
        heads,
        dqk,
        dv,
    };
    check_operands(scale, shape, (q, k, v), mask, out, chunk)?;
    let rules = Rules {
        causal,
        self_mask: false,
    };
    let div = key_divisor(f64::from(scale));
    if len <= chunk {
        return attention_impl(q, k, v, mask, shape, div, false, rules, 0, out);
    }
    before
        .checked_add(after)
        .and_then(|w| w.checked_add(1))
        .and_then(|w| w.checked_mul(chunk))
        .filter(|&w| w <= 1 << 24)
        .ok_or_else(|| invalid(format!("window of {before}+1+{after} chunks is too large")))?;
    if batch == 0 || heads == 0 || dv == 0 {
        return Ok(());
    }
    let (wq, wv) = (heads * dqk, heads * dv);
    let n = len / chunk;
    // Chunks per task: a task's key tiles serve the windows of all its chunks.
    let group = 16.min(n);
    let groups = n.div_ceil(group);
    let scale = KeyScale::new(div);
    let shared = SharedMut::new(out);
    try_par_for(batch * heads * groups, |task| {
        let (bh, g) = (task / groups, task % groups);
        let (b, h) = (bh / heads, bh % heads);
        let mut win = Windows::new(chunk, n, before, after, dqk, dv)?;
        let keys = win.keys();
        for j in g * group..n.min((g + 1) * group) {
            win.load(
                j,
                |id, kp, vp| {
                    let row = |t: usize| b * len + id * chunk + t;
                    put_keys(
                        kp,
                        chunk,
                        |t| (&k[row(t) * wq + h * dqk..][..dqk], None),
                        scale,
                    );
                    put_values(vp, chunk, |t| &v[row(t) * wv + h * dv..][..dv]);
                },
                |id, kpos, keep| {
                    for t in 0..chunk {
                        let pos = id * chunk + t;
                        kpos[t] = pos as u32;
                        keep[t] = u32::from(mask.is_none_or(|m| m[b * len + pos] != 0));
                    }
                },
            );
            let q0 = j * chunk;
            win.logits(&q[(b * len + q0) * wq + h * dqk..], wq);
            for i in 0..chunk {
                let row = &mut win.s[i * keys..(i + 1) * keys];
                softmax_row(row, (q0 + i) as u32, &win.kpos, &win.keep, rules, true);
            }
            win.weighted_values();
            for i in 0..chunk {
                // SAFETY: task (b, h, g) alone writes head h of the rows of its chunks.
                let dst = unsafe { shared.slice((b * len + q0 + i) * wv + h * dv, dv) };
                dst.copy_from_slice(&win.o[i * dv..(i + 1) * dv]);
            }
        }
        Ok(())
    })
}

/// The operand checks both local attention kernels make (the forward's
/// `out`, or the backward's `y`, has the output's shape): a finite nonzero
/// scale, the lengths, and for `L > chunk` a length that is a multiple of
/// the chunk ([`Error::ChunkMismatch`]).
pub(super) fn check_operands(
    scale: f32,
    shape: Shape,
    (q, k, v): (&[f32], &[f32], &[f32]),
    mask: Option<&[i64]>,
    out: &[f32],
    chunk: usize,
) -> Result<()> {
    if !(scale.is_finite() && scale != 0.0) {
        return Err(invalid(format!("scale {scale} must be finite and nonzero")));
    }
    shape.check(q, k, v, mask, out)?;
    let len = shape.lq;
    if len > chunk && (chunk == 0 || !len.is_multiple_of(chunk)) {
        return Err(Error::ChunkMismatch(format!(
            "length {len} is not a multiple of the chunk length {chunk}"
        )));
    }
    Ok(())
}
