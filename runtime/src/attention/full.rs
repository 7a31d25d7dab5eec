//! Full multi-head attention (`rc_attention_f32`): materialized softmax per
//! query block, or streaming (online) softmax over key chunks.

use super::{
    flags, inv_len_norm, key_divisor, mask_row, product, put_key, put_value, softmax_row,
    valid_row, KeyScale, Rules, Tile,
};
use crate::error::{invalid, Result};
use crate::gemm::{check_len, gemm, Epilogue};
use crate::pool::{par_for, try_par_for, SharedMut};
use crate::simd;

/// Keys per packed tile of the materialized path.
const KEY_TILE: usize = 256;
/// Logit floats a materialized query block may hold (4 MiB).
const BLOCK_LOGITS: usize = 1 << 20;

/// Full attention over `[B, Lq, H·dqk]` queries and `[B, Lk, H·dqk]` keys with
/// `[B, Lk, H·dv]` values into `[B, Lq, H·dv]` (`rc_attention_f32`).
///
/// Keys are (optionally length-normalized, then) divided by `1/scale`; `mask`
/// is `[B, Lk]` (nonzero = keep); `flag_bits` are [`flags`]. `kv_chunk = 0`
/// materializes each query block's logits over all keys; `kv_chunk > 0`
/// streams over key chunks of that size with a running (max, sum). Both are
/// exact (the interpreter's `attention` and `attention_chunked`).
///
/// ```
/// use reformc_runtime::attention::{attention, flags};
/// // One head, d = 1: the causal first query sees only key 0.
/// let (q, k, v) = ([1.0f32, 1.0], [1.0f32, 1.0], [3.0f32, 5.0]);
/// let mut out = [0.0f32; 2];
/// attention(&q, &k, &v, None, 1, 2, 2, 1, 1, 1, 1.0, flags::CAUSAL, 0, &mut out).unwrap();
/// assert_eq!(out[0], 3.0);
/// assert!((out[1] - 4.0).abs() < 1e-6);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[i64]>,
    batch: usize,
    lq: usize,
    lk: usize,
    heads: usize,
    dqk: usize,
    dv: usize,
    scale: f32,
    flag_bits: i32,
    kv_chunk: usize,
    out: &mut [f32],
) -> Result<()> {
    if flag_bits & !flags::ALL != 0 {
        return Err(invalid(format!("unknown attention flags {flag_bits:#x}")));
    }
    if !(scale.is_finite() && scale != 0.0) {
        return Err(invalid(format!("scale {scale} must be finite and nonzero")));
    }
    let rules = Rules {
        causal: flag_bits & flags::CAUSAL != 0,
        self_mask: flag_bits & flags::SELF_MASK != 0,
    };
    let key_norm = flag_bits & flags::KEY_NORM != 0;
    let shape = Shape {
        batch,
        lq,
        lk,
        heads,
        dqk,
        dv,
    };
    shape.check(q, k, v, mask, out)?;
    attention_impl(
        q,
        k,
        v,
        mask,
        shape,
        key_divisor(f64::from(scale)),
        key_norm,
        rules,
        kv_chunk,
        out,
    )
}

/// Sizes of a full attention call.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub batch: usize,
    pub lq: usize,
    pub lk: usize,
    pub heads: usize,
    pub dqk: usize,
    pub dv: usize,
}

impl Shape {
    pub fn check(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[i64]>,
        out: &[f32],
    ) -> Result<()> {
        let Shape {
            batch,
            lq,
            lk,
            heads,
            dqk,
            dv,
        } = *self;
        if lq >= u32::MAX as usize || lk >= u32::MAX as usize {
            return Err(invalid("sequence lengths must be below 2^32"));
        }
        check_len("q", q.len(), product(&[batch, lq, heads, dqk], "q").ok())?;
        check_len("k", k.len(), product(&[batch, lk, heads, dqk], "k").ok())?;
        check_len("v", v.len(), product(&[batch, lk, heads, dv], "v").ok())?;
        check_len(
            "out",
            out.len(),
            product(&[batch, lq, heads, dv], "out").ok(),
        )?;
        if let Some(m) = mask {
            check_len("mask", m.len(), product(&[batch, lk], "mask").ok())?;
        }
        Ok(())
    }
}

/// [`attention`] after validation, with the key divisor given directly.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_impl(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[i64]>,
    shape: Shape,
    div: f32,
    key_norm: bool,
    rules: Rules,
    kv_chunk: usize,
    out: &mut [f32],
) -> Result<()> {
    let Shape {
        batch,
        lq,
        lk,
        heads,
        dqk,
        dv,
    } = shape;
    if batch == 0 || lq == 0 || heads == 0 || dv == 0 {
        return Ok(());
    }
    let (wq, wv) = (heads * dqk, heads * dv);
    if lk == 0 {
        // No keys: an empty weighted sum (the interpreter's result too).
        out.iter_mut().for_each(|x| *x = 0.0);
        return Ok(());
    }
    // Length-normalization factors of every key, once per (batch, head, key).
    let norms: Vec<f32> = if key_norm {
        let mut n = crate::error::try_zeroed(batch * heads * lk, "key norms")?;
        let shared = SharedMut::new(&mut n);
        par_for(batch * heads, |bh| {
            let (b, h) = (bh / heads, bh % heads);
            // SAFETY: task bh alone writes norms bh·lk..(bh+1)·lk.
            let dst = unsafe { shared.slice(bh * lk, lk) };
            for (j, f) in dst.iter_mut().enumerate() {
                *f = inv_len_norm(&k[(b * lk + j) * wq + h * dqk..][..dqk]);
            }
        })?;
        n
    } else {
        Vec::new()
    };
    let kpos: Vec<u32> = (0..lk as u32).collect();
    let block = if kv_chunk == 0 {
        (BLOCK_LOGITS / lk).clamp(1, 64)
    } else {
        64
    }
    .min(lq);
    let key_tile = if kv_chunk == 0 {
        KEY_TILE.min(lk)
    } else {
        kv_chunk.min(lk)
    };
    let nblocks = lq.div_ceil(block);
    let valid: Vec<Vec<u32>> = (0..batch).map(|b| valid_row(mask, b, lk)).collect();
    let shared = SharedMut::new(out);
    try_par_for(batch * heads * nblocks, |task| {
        let (bh, qb) = (task / nblocks, task % nblocks);
        let (b, h) = (bh / heads, bh % heads);
        let q0 = qb * block;
        let m = block.min(lq - q0);
        let valid = &valid[b];
        let mut tile = Tile::new(block, key_tile, dqk, dv)?;
        let mut s_full = Vec::new();
        if kv_chunk == 0 {
            s_full = crate::error::try_zeroed(block * lk, "logit block")?;
        }
        let qs = &q[(b * lq + q0) * wq + h * dqk..];
        let scale = KeyScale::new(div);
        let pack = |tile: &mut Tile, j0: usize, nk: usize| {
            tile.set_keys(nk);
            for j in 0..nk {
                let key = &k[(b * lk + j0 + j) * wq + h * dqk..][..dqk];
                let f = key_norm.then(|| norms[bh * lk + j0 + j]);
                put_key(&mut tile.k, j, key, f, scale);
                put_value(&mut tile.v, j, &v[(b * lk + j0 + j) * wv + h * dv..][..dv]);
            }
        };
        if kv_chunk == 0 {
            // Logits of the whole block, one key tile at a time.
            for j0 in (0..lk).step_by(key_tile) {
                let nk = key_tile.min(lk - j0);
                pack(&mut tile, j0, nk);
                gemm(
                    tile.kern,
                    m,
                    qs,
                    wq,
                    &tile.k,
                    &mut s_full[j0..],
                    lk,
                    Epilogue::STORE,
                );
            }
            for i in 0..m {
                let row = &mut s_full[i * lk..(i + 1) * lk];
                softmax_row(row, (q0 + i) as u32, &kpos, valid, rules, true);
            }
            for j0 in (0..lk).step_by(key_tile) {
                let nk = key_tile.min(lk - j0);
                pack(&mut tile, j0, nk);
                let epi = if j0 == 0 {
                    Epilogue::STORE
                } else {
                    Epilogue::ACCUMULATE
                };
                gemm(
                    tile.kern,
                    m,
                    &s_full[j0..],
                    lk,
                    &tile.v,
                    &mut tile.o,
                    dv,
                    epi,
                );
            }
        } else {
            // Online softmax: running (max, sum) per query, outputs rescaled.
            let mut run = vec![(f32::NEG_INFINITY, 0.0f32); m];
            tile.o[..m * dv].iter_mut().for_each(|x| *x = 0.0);
            for j0 in (0..lk).step_by(key_tile) {
                let nk = key_tile.min(lk - j0);
                pack(&mut tile, j0, nk);
                tile.logits(m, qs, wq);
                for (i, state) in run.iter_mut().enumerate() {
                    let row = &mut tile.s[i * nk..(i + 1) * nk];
                    mask_row(
                        row,
                        (q0 + i) as u32,
                        &kpos[j0..j0 + nk],
                        &valid[j0..],
                        rules,
                    );
                    let new_max = state.0.max(simd::max(row));
                    let rescale = if state.0 == f32::NEG_INFINITY {
                        0.0
                    } else {
                        (state.0 - new_max).exp()
                    };
                    let chunk_sum = simd::exp_sub_sum(row, new_max);
                    *state = (new_max, state.1 * rescale + chunk_sum);
                    simd::mul(&mut tile.o[i * dv..(i + 1) * dv], rescale);
                }
                tile.weighted_values(m, true);
            }
            for (i, state) in run.iter().enumerate() {
                simd::div(&mut tile.o[i * dv..(i + 1) * dv], state.1);
            }
        }
        for i in 0..m {
            // SAFETY: task (b, h, qb) alone writes head h of query rows q0..q0+m of batch b.
            let dst = unsafe { shared.slice((b * lq + q0 + i) * wv + h * dv, dv) };
            dst.copy_from_slice(&tile.o[i * dv..(i + 1) * dv]);
        }
        Ok(())
    })
}
