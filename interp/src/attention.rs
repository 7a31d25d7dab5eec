//! Semantics of the attention ops: full, local, LSH hashing and LSH attention.
//!
//! All take `[B, L, H*d]` tensors (heads interleaved as HF's `view(B, L, H, d)`),
//! masks `[B, L]` (nonzero = keep) and follow REFORMER.md §1-§2, including the
//! mask constants, the order in which masks apply and chunk wrap-around.

use crate::tensor::Real;
use ndarray::{s, Array2, Array3, ArrayD, ArrayView2, Axis, IxDyn};

/// Logit that masked (causal or padding) keys are replaced with.
pub const MASK_VALUE: f64 = -1e9;
/// Logit that a query's own position is replaced with (applied last).
pub const SELF_MASK_VALUE: f64 = -1e5;

/// Masking rules for one attention block.
#[derive(Clone, Copy, Debug)]
pub struct MaskRules {
    /// Replace the logits of keys at later positions than the query
    /// (`kpos > qpos`) with [`MASK_VALUE`].
    pub causal: bool,
    /// Replace the logit of the query's own position with [`SELF_MASK_VALUE`]
    /// (after the other masks), as shared-QK LSH attention does.
    pub self_mask: bool,
}

/// `[B, L, H*d]` -> `[B, H, L, d]` (owned, standard layout).
fn split_heads<T: Real>(x: &ArrayD<T>, heads: usize) -> Result<ndarray::Array4<T>, String> {
    let (b, l, w) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    if w % heads != 0 {
        return Err(format!("width {w} is not divisible by {heads} heads"));
    }
    let v = x
        .view()
        .into_shape_with_order((b, l, heads, w / heads))
        .map_err(|e| e.to_string())?;
    Ok(v.permuted_axes([0, 2, 1, 3])
        .as_standard_layout()
        .into_owned())
}

/// `[B, H, L, d]` -> `[B, L, H*d]`.
fn merge_heads<T: Real>(x: ndarray::Array4<T>) -> ArrayD<T> {
    let (b, h, l, d) = x.dim();
    let t = x
        .permuted_axes([0, 2, 1, 3])
        .as_standard_layout()
        .into_owned();
    t.into_shape_with_order(IxDyn(&[b, l, h * d]))
        .expect("same element count")
}

/// HF's `_len_norm`: x * rsqrt(mean(x²) + 1e-6), per row.
fn len_norm<T: Real>(x: &mut Array2<T>) {
    for mut row in x.rows_mut() {
        let inv = inv_rms(row.view());
        row.mapv_inplace(|v| v * inv);
    }
}

/// `(mean(x²) + 1e-6)^(-1/2)`, the key normalisation's factor.
fn inv_rms<T: Real>(x: ndarray::ArrayView1<T>) -> T {
    let ms = x.iter().fold(T::zero(), |a, &v| a + v * v) / T::of(x.len() as f64);
    T::one() / (ms + T::of(1e-6)).sqrt()
}

/// Key validity per position from an optional `[B, L]` mask row.
fn valid_row(mask: Option<&ArrayD<i64>>, b: usize, len: usize) -> Vec<bool> {
    match mask {
        Some(m) => (0..len).map(|i| m[[b, i]] != 0).collect(),
        None => vec![true; len],
    }
}

/// Log-sum-exp of a row kept as (max, sum of exp(x - max)): lse = max + ln(sum).
///
/// Keeping the parts apart is what makes f32 exact enough here: a query whose
/// window holds only itself has max = -1e5, where f32's spacing is 1/128, so
/// folding ln(sum) into it (as HF does) would round the softmax normaliser and
/// the round weights by up to 1% (REFORMER.md §1.8).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lse<T> {
    /// The row's largest (masked) logit.
    pub max: T,
    /// Sum over the row of `exp(x - max)`, at least 1 for a finite row.
    pub sum: T,
}

impl<T: Real> Lse<T> {
    /// The log-sum-exp as one number.
    pub fn value(self) -> T {
        self.max + self.sum.ln()
    }
}

/// Applies REFORMER.md §1.6's masks to one query's logits, in HF's order:
/// padding and causal keys are replaced with -1e9, then the query's own
/// position with -1e5 (last, so it always wins).
fn mask_row<T: Real>(
    mut row: ndarray::ArrayViewMut1<T>,
    qpos: usize,
    kpos: &[usize],
    kvalid: &[bool],
    rules: MaskRules,
) {
    for (j, x) in row.iter_mut().enumerate() {
        if let Some(m) = mask_value(qpos, kpos[j], kvalid[j], rules) {
            *x = T::of(m);
        }
    }
}

/// The value REFORMER.md §1.6's masks put in place of the logit of query
/// `qpos` for key `kpos` (its validity `kvalid`), if any: the self value at
/// the query's own position, else -1e9 for padding and causal keys.
fn mask_value(qpos: usize, kpos: usize, kvalid: bool, rules: MaskRules) -> Option<f64> {
    if rules.self_mask && qpos == kpos {
        Some(SELF_MASK_VALUE)
    } else if !kvalid || (rules.causal && qpos < kpos) {
        Some(MASK_VALUE)
    } else {
        None
    }
}

/// Softmax attention of `q` `[nq,d]` over `k` `[nk,d]` / `v` `[nk,dv]` with the
/// masks of REFORMER.md §1.6 (by original positions). Returns the outputs and
/// the log-sum-exp of each query's logits.
pub fn attend_block<T: Real>(
    q: ArrayView2<T>,
    k: ArrayView2<T>,
    v: ArrayView2<T>,
    qpos: &[usize],
    kpos: &[usize],
    kvalid: &[bool],
    rules: MaskRules,
) -> (Array2<T>, Vec<Lse<T>>) {
    let mut logits = q.dot(&k.t());
    let mut lse = Vec::with_capacity(qpos.len());
    for (i, mut row) in logits.rows_mut().into_iter().enumerate() {
        mask_row(row.view_mut(), qpos[i], kpos, kvalid, rules);
        let max = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        row.mapv_inplace(|x| (x - max).exp());
        let sum = row.iter().fold(T::zero(), |a, &x| a + x);
        row.mapv_inplace(|x| x / sum);
        lse.push(Lse { max, sum });
    }
    (logits.dot(&v), lse)
}

/// Full multi-head attention (`attention` op).
#[allow(clippy::too_many_arguments)]
pub fn attention<T: Real>(
    q: &ArrayD<T>,
    k: &ArrayD<T>,
    v: &ArrayD<T>,
    mask: Option<&ArrayD<i64>>,
    heads: usize,
    scale: f64,
    key_norm: bool,
    rules: MaskRules,
) -> Result<ArrayD<T>, String> {
    let (q4, k4, v4) = (
        split_heads(q, heads)?,
        split_heads(k, heads)?,
        split_heads(v, heads)?,
    );
    let (b, h, lq, _) = q4.dim();
    let (lk, dv) = (k4.dim().2, v4.dim().3);
    let mut out = ndarray::Array4::zeros((b, h, lq, dv));
    let qpos: Vec<usize> = (0..lq).collect();
    let kpos: Vec<usize> = (0..lk).collect();
    for bi in 0..b {
        let valid = valid_row(mask, bi, lk);
        for hi in 0..h {
            let keys = scaled_keys(k4.slice(s![bi, hi, .., ..]), scale, key_norm);
            let (o, _) = attend_block(
                q4.slice(s![bi, hi, .., ..]),
                keys.view(),
                v4.slice(s![bi, hi, .., ..]),
                &qpos,
                &kpos,
                &valid,
                rules,
            );
            out.slice_mut(s![bi, hi, .., ..]).assign(&o);
        }
    }
    Ok(merge_heads(out))
}

/// Chunked-exact multi-head attention (`attention {kv_chunk=N}`): the same
/// result as [`attention`], computed as a streaming (online) softmax over key
/// chunks of `kv_chunk` keys, so that only a `[Lq, kv_chunk]` block of logits
/// exists at a time.
///
/// Each query keeps its log-sum-exp as (running max, running sum) and an
/// unnormalised output; a new chunk with a larger maximum rescales both by
/// `exp(old_max - new_max)`. Masks are applied per chunk exactly as
/// [`attend_block`] applies them, so masked logits (-1e9) and the self logit
/// (-1e5) give the same weights as the materialised softmax.
///
/// ```
/// use reformc_interp::attention::{attention, attention_chunked, MaskRules};
/// use ndarray::{ArrayD, IxDyn};
/// let x = ArrayD::from_shape_fn(IxDyn(&[1, 5, 4]), |i| ((i[1] * 4 + i[2]) as f64 * 0.37).sin());
/// let rules = MaskRules { causal: true, self_mask: true };
/// let full = attention(&x, &x, &x, None, 2, 0.5, true, rules).unwrap();
/// let streamed = attention_chunked(&x, &x, &x, None, 2, 0.5, true, rules, 2).unwrap();
/// assert!((&full - &streamed).iter().all(|d| d.abs() < 1e-12));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn attention_chunked<T: Real>(
    q: &ArrayD<T>,
    k: &ArrayD<T>,
    v: &ArrayD<T>,
    mask: Option<&ArrayD<i64>>,
    heads: usize,
    scale: f64,
    key_norm: bool,
    rules: MaskRules,
    kv_chunk: usize,
) -> Result<ArrayD<T>, String> {
    if kv_chunk == 0 {
        return Err("kv_chunk must be at least 1".into());
    }
    let (q4, k4, v4) = (
        split_heads(q, heads)?,
        split_heads(k, heads)?,
        split_heads(v, heads)?,
    );
    let (b, h, lq, _) = q4.dim();
    let (lk, dv) = (k4.dim().2, v4.dim().3);
    let mut out = ndarray::Array4::zeros((b, h, lq, dv));
    let qpos: Vec<usize> = (0..lq).collect();
    for bi in 0..b {
        let valid = valid_row(mask, bi, lk);
        for hi in 0..h {
            let keys = scaled_keys(k4.slice(s![bi, hi, .., ..]), scale, key_norm);
            let qh = q4.slice(s![bi, hi, .., ..]);
            let vh = v4.slice(s![bi, hi, .., ..]);
            let mut acc = Array2::<T>::zeros((lq, dv));
            let mut run: Vec<Lse<T>> = vec![
                Lse {
                    max: T::neg_infinity(),
                    sum: T::zero()
                };
                lq
            ];
            for start in (0..lk).step_by(kv_chunk) {
                let end = (start + kv_chunk).min(lk);
                let mut logits = qh.dot(&keys.slice(s![start..end, ..]).t());
                let kpos: Vec<usize> = (start..end).collect();
                for (i, mut row) in logits.rows_mut().into_iter().enumerate() {
                    mask_row(row.view_mut(), qpos[i], &kpos, &valid[start..end], rules);
                    let chunk_max = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
                    let new_max = run[i].max.max(chunk_max);
                    // exp(-inf - finite) = 0 for the first chunk: nothing to rescale.
                    let rescale = if run[i].max == T::neg_infinity() {
                        T::zero()
                    } else {
                        (run[i].max - new_max).exp()
                    };
                    row.mapv_inplace(|x| (x - new_max).exp());
                    let chunk_sum = row.iter().fold(T::zero(), |a, &x| a + x);
                    run[i] = Lse {
                        max: new_max,
                        sum: run[i].sum * rescale + chunk_sum,
                    };
                    acc.row_mut(i).mapv_inplace(|x| x * rescale);
                }
                acc += &logits.dot(&vh.slice(s![start..end, ..]));
            }
            for (i, mut row) in acc.rows_mut().into_iter().enumerate() {
                let sum = run[i].sum;
                row.mapv_inplace(|x| x / sum);
            }
            out.slice_mut(s![bi, hi, .., ..]).assign(&acc);
        }
    }
    Ok(merge_heads(out))
}

fn scaled_keys<T: Real>(k: ArrayView2<T>, scale: f64, key_norm: bool) -> Array2<T> {
    let mut keys = k.to_owned();
    if key_norm {
        len_norm(&mut keys);
    }
    // HF divides by sqrt(d); dividing by 1/scale keeps its rounding.
    let div = T::of(1.0 / scale);
    keys.mapv_inplace(|x| x / div);
    keys
}

/// Chunk indices a query chunk attends to: earlier chunks first, then its own,
/// then later ones, wrapping around (REFORMER.md §1.5).
fn adjacent_chunks(j: usize, n: usize, before: usize, after: usize) -> Vec<usize> {
    (0..before + 1 + after)
        .map(|o| (j + n * (before + 1) + o - before) % n)
        .collect()
}

/// Chunked local attention (`local_attention` op).
#[allow(clippy::too_many_arguments)]
pub fn local_attention<T: Real>(
    q: &ArrayD<T>,
    k: &ArrayD<T>,
    v: &ArrayD<T>,
    mask: Option<&ArrayD<i64>>,
    heads: usize,
    scale: f64,
    chunk: usize,
    before: usize,
    after: usize,
    causal: bool,
) -> Result<ArrayD<T>, String> {
    let rules = MaskRules {
        causal,
        self_mask: false,
    };
    let len = q.shape()[1];
    if len <= chunk {
        return attention(q, k, v, mask, heads, scale, false, rules);
    }
    if !len.is_multiple_of(chunk) {
        return Err(format!(
            "length {len} is not a multiple of the chunk length {chunk}"
        ));
    }
    let (q4, k4, v4) = (
        split_heads(q, heads)?,
        split_heads(k, heads)?,
        split_heads(v, heads)?,
    );
    let (b, h, _, _) = q4.dim();
    let dv = v4.dim().3;
    let n = len / chunk;
    let mut out = ndarray::Array4::zeros((b, h, len, dv));
    for bi in 0..b {
        let valid = valid_row(mask, bi, len);
        for hi in 0..h {
            let keys = scaled_keys(k4.slice(s![bi, hi, .., ..]), scale, false);
            for j in 0..n {
                let kpos: Vec<usize> = adjacent_chunks(j, n, before, after)
                    .into_iter()
                    .flat_map(|c| c * chunk..(c + 1) * chunk)
                    .collect();
                let qpos: Vec<usize> = (j * chunk..(j + 1) * chunk).collect();
                let kk = keys.select(Axis(0), &kpos);
                let vv = v4.slice(s![bi, hi, .., ..]).select(Axis(0), &kpos);
                let kvalid: Vec<bool> = kpos.iter().map(|&p| valid[p]).collect();
                let (o, _) = attend_block(
                    q4.slice(s![bi, hi, j * chunk..(j + 1) * chunk, ..]),
                    kk.view(),
                    vv.view(),
                    &qpos,
                    &kpos,
                    &kvalid,
                    rules,
                );
                out.slice_mut(s![bi, hi, j * chunk..(j + 1) * chunk, ..])
                    .assign(&o);
            }
        }
    }
    Ok(merge_heads(out))
}

/// Angular LSH bucket ids with round offsets (`lsh_hash` op), `[B, H, r, L]`.
///
/// A mask with any zero (anywhere in the batch, as in HF) adds a padding bucket
/// `nb` that every masked position falls into, and offsets use `nb + 1`.
pub fn lsh_hash<T: Real>(
    qk: &ArrayD<T>,
    rot: &ArrayD<T>,
    mask: Option<&ArrayD<i64>>,
    heads: usize,
    factors: &[usize],
) -> Result<ArrayD<i64>, String> {
    let x = split_heads(qk, heads)?;
    let (b, h, len, d) = x.dim();
    let rounds = rot.shape()[2];
    let half = rot.shape()[3];
    let rot = rot
        .view()
        .into_dimensionality::<ndarray::Ix4>()
        .map_err(|e| e.to_string())?;
    let nb: usize = factors.iter().product();
    let padding = mask.is_some_and(|m| m.iter().any(|&v| v == 0));
    let nb_total = if padding { nb + 1 } else { nb };
    let mut out = ndarray::Array4::<i64>::zeros((b, h, rounds, len));
    for hi in 0..h {
        for r in 0..rounds {
            // [d, S/2] rotation of this head and round.
            let rm = rot.slice(s![hi, .., r, ..]);
            debug_assert_eq!(rm.dim(), (d, half));
            for bi in 0..b {
                let rotated = x.slice(s![bi, hi, .., ..]).dot(&rm);
                for i in 0..len {
                    let masked = mask.is_some_and(|m| m[[bi, i]] == 0);
                    let bucket = if masked {
                        nb
                    } else {
                        bucket_of(rotated.row(i).as_slice().expect("row"), factors)
                    };
                    out[[bi, hi, r, i]] = (bucket + r * nb_total) as i64;
                }
            }
        }
    }
    Ok(out.into_dyn())
}

/// argmax(concat(piece, -piece)) per factor, first factor least significant.
fn bucket_of<T: Real>(rotated: &[T], factors: &[usize]) -> usize {
    let (mut bucket, mut product, mut offset) = (0, 1, 0);
    for &f in factors {
        let piece = &rotated[offset..offset + f / 2];
        let mut best = (0, T::neg_infinity());
        for (i, &v) in piece
            .iter()
            .chain(piece.iter().map(|v| -*v).collect::<Vec<_>>().iter())
            .enumerate()
        {
            if v > best.1 {
                best = (i, v);
            }
        }
        bucket += product * best.0;
        product *= f;
        offset += f / 2;
    }
    bucket
}

/// Reformer LSH attention given bucket ids (`lsh_attention` op), REFORMER.md §1.4-§1.8.
#[allow(clippy::too_many_arguments)]
pub fn lsh_attention<T: Real>(
    qk: &ArrayD<T>,
    v: &ArrayD<T>,
    buckets: &ArrayD<i64>,
    mask: Option<&ArrayD<i64>>,
    heads: usize,
    chunk: usize,
    before: usize,
    after: usize,
    causal: bool,
) -> Result<ArrayD<T>, String> {
    let LshSetup {
        len,
        d,
        scale,
        rules,
        rounds: _,
    } = LshSetup::new(qk, buckets, heads, chunk, causal)?;
    if len <= chunk {
        return attention(qk, qk, v, mask, heads, scale, true, rules);
    }
    let (x4, v4) = (split_heads(qk, heads)?, split_heads(v, heads)?);
    let (b, h, _, _) = x4.dim();
    let mut out = ndarray::Array4::zeros((b, h, len, d));
    for bi in 0..b {
        let valid = valid_row(mask, bi, len);
        for hi in 0..h {
            let bk = buckets.slice(s![bi, hi, .., ..]);
            let keys = scaled_keys(x4.slice(s![bi, hi, .., ..]), scale, true);
            let o = lsh_head(
                x4.slice(s![bi, hi, .., ..]),
                keys.view(),
                v4.slice(s![bi, hi, .., ..]),
                bk,
                &valid,
                chunk,
                before,
                after,
                rules,
            )?;
            out.slice_mut(s![bi, hi, .., ..]).assign(&o);
        }
    }
    Ok(merge_heads(out))
}

/// What [`lsh_attention`] and [`lsh_attention_grad`] derive from their
/// operands: the length, head width, key scale `1/sqrt(d)`, masks (self mask
/// always) and rounds, checked (`r·L` a multiple of the chunk when `L > chunk`).
struct LshSetup {
    len: usize,
    d: usize,
    scale: f64,
    rules: MaskRules,
    rounds: usize,
}

impl LshSetup {
    fn new<T: Real>(
        qk: &ArrayD<T>,
        buckets: &ArrayD<i64>,
        heads: usize,
        chunk: usize,
        causal: bool,
    ) -> Result<LshSetup, String> {
        let (len, d) = (qk.shape()[1], qk.shape()[2] / heads);
        let rounds = buckets.shape()[2];
        if len > chunk && !(rounds * len).is_multiple_of(chunk) {
            return Err(format!(
                "rounds x length = {} is not a multiple of the chunk length {chunk}",
                rounds * len
            ));
        }
        Ok(LshSetup {
            len,
            d,
            scale: 1.0 / (d as f64).sqrt(),
            rules: MaskRules {
                causal,
                self_mask: true,
            },
            rounds,
        })
    }
}

/// The slots' order of one (batch, head)'s buckets `[r, L]`: round-major
/// indices `r·L + pos` sorted by bucket, stably (ties keep round-major index
/// order, HF's sort key).
fn bucket_order(buckets: ndarray::ArrayView2<i64>) -> Vec<usize> {
    let flat: Vec<i64> = buckets.iter().copied().collect();
    let mut perm: Vec<usize> = (0..flat.len()).collect();
    perm.sort_by_key(|&t| flat[t]);
    perm
}

/// A position's round weights `softmax_r(lse_r)` = `exp(max_r - M) sum_r / Z`,
/// without ever forming `lse_r` (see [`Lse`]).
fn round_weights<T: Real>(lses: &[Lse<T>]) -> Vec<T> {
    let m = lses.iter().fold(T::neg_infinity(), |a, l| a.max(l.max));
    let w: Vec<T> = lses.iter().map(|l| (l.max - m).exp() * l.sum).collect();
    let z = w.iter().fold(T::zero(), |a, &b| a + b);
    w.iter().map(|&wr| wr / z).collect()
}

/// LSH attention of one (batch, head): sort by (bucket, round-major index),
/// chunked attention with neighbours, unsort, combine rounds stably.
#[allow(clippy::too_many_arguments)]
fn lsh_head<T: Real>(
    q: ArrayView2<T>,
    keys: ArrayView2<T>,
    v: ArrayView2<T>,
    buckets: ndarray::ArrayView2<i64>,
    valid: &[bool],
    chunk: usize,
    before: usize,
    after: usize,
    rules: MaskRules,
) -> Result<Array2<T>, String> {
    let (rounds, len) = buckets.dim();
    let total = rounds * len;
    let perm = bucket_order(buckets);
    let mut inv = vec![0; total];
    for (slot, &t) in perm.iter().enumerate() {
        inv[t] = slot;
    }
    let spos: Vec<usize> = perm.iter().map(|t| t % len).collect();
    let n_chunks = total / chunk;
    let dv = v.ncols();
    let mut o_sorted = Array2::<T>::zeros((total, dv));
    let mut lse_sorted = vec![
        Lse {
            max: T::zero(),
            sum: T::one()
        };
        total
    ];
    let sq = q.select(Axis(0), &spos);
    let sk = keys.select(Axis(0), &spos);
    let sv = v.select(Axis(0), &spos);
    for j in 0..n_chunks {
        let kslots: Vec<usize> = adjacent_chunks(j, n_chunks, before, after)
            .into_iter()
            .flat_map(|c| c * chunk..(c + 1) * chunk)
            .collect();
        let kpos: Vec<usize> = kslots.iter().map(|&s| spos[s]).collect();
        let kvalid: Vec<bool> = kpos.iter().map(|&p| valid[p]).collect();
        let qs = j * chunk..(j + 1) * chunk;
        let (o, lse) = attend_block(
            sq.slice(s![qs.clone(), ..]),
            sk.select(Axis(0), &kslots).view(),
            sv.select(Axis(0), &kslots).view(),
            &spos[qs.clone()],
            &kpos,
            &kvalid,
            rules,
        );
        o_sorted.slice_mut(s![qs.clone(), ..]).assign(&o);
        lse_sorted[qs].copy_from_slice(&lse);
    }
    let mut out = Array2::<T>::zeros((len, dv));
    let mut per_round = Array3::<T>::zeros((rounds, len, dv));
    for (t, &slot) in inv.iter().enumerate() {
        per_round
            .slice_mut(s![t / len, t % len, ..])
            .assign(&o_sorted.row(slot));
    }
    for i in 0..len {
        let lses: Vec<Lse<T>> = (0..rounds).map(|r| lse_sorted[inv[r * len + i]]).collect();
        for (r, wr) in round_weights(&lses).iter().enumerate() {
            let scaled = per_round.slice(s![r, i, ..]).mapv(|x| x * *wr);
            let mut row = out.row_mut(i);
            row += &scaled;
        }
    }
    Ok(out)
}

/// The gradient of `sum(dy * y)`, `y = lsh_attention(qk, v, buckets, mask)`,
/// with respect to `qk` and `v`, stacked as `[2, B, L, H·d]`
/// (`lsh_attention_grad`); `y` is the forward output. Each query slot's
/// probabilities are recomputed as [`lsh_attention`] computes them; with
/// round weights `c = softmax_r(lse_r)`, `dS = P ⊙ (c dy Vᵀ - c (dy · y))`
/// on unmasked logits (masks replace logits by constants, so they pass no
/// gradient), `dQ = dS K`, `dK = dSᵀ Q`, `dV = Pᵀ (c dy)`, and the key
/// normalisation passes `dK` on to `qk`.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use reformc_interp::attention::{lsh_attention, lsh_attention_grad};
/// let qk = ArrayD::from_shape_fn(IxDyn(&[1, 4, 2]), |i| (i[1] as f64 + 0.3 * i[2] as f64).sin());
/// let v = ArrayD::from_shape_fn(IxDyn(&[1, 4, 2]), |i| i[1] as f64 + 0.5 * i[2] as f64);
/// let buckets = ArrayD::from_shape_vec(IxDyn(&[1, 1, 1, 4]), vec![0i64, 0, 1, 1]).unwrap();
/// let y = lsh_attention(&qk, &v, &buckets, None, 1, 2, 0, 0, true).unwrap();
/// let mut dy = ArrayD::zeros(IxDyn(&[1, 4, 2]));
/// dy[[0, 0, 0]] = 1.0;
/// let g = lsh_attention_grad(&qk, &v, &buckets, &y, &dy, None, 1, 2, 0, 0, true).unwrap();
/// assert_eq!(g.shape(), &[2, 1, 4, 2]);
/// assert_eq!(g[[1, 0, 0, 0]], 1.0); // position 0 sees only its own value
/// ```
#[allow(clippy::too_many_arguments)]
pub fn lsh_attention_grad<T: Real>(
    qk: &ArrayD<T>,
    v: &ArrayD<T>,
    buckets: &ArrayD<i64>,
    y: &ArrayD<T>,
    dy: &ArrayD<T>,
    mask: Option<&ArrayD<i64>>,
    heads: usize,
    chunk: usize,
    before: usize,
    after: usize,
    causal: bool,
) -> Result<ArrayD<T>, String> {
    let LshSetup {
        len,
        d,
        scale,
        rules,
        rounds,
    } = LshSetup::new(qk, buckets, heads, chunk, causal)?;
    let full = len <= chunk;
    let rounds = if full { 1 } else { rounds };
    let x4 = split_heads(qk, heads)?;
    let (v4, y4, dy4) = (
        split_heads(v, heads)?,
        split_heads(y, heads)?,
        split_heads(dy, heads)?,
    );
    let (b, h, _, _) = x4.dim();
    let mut dq4 = ndarray::Array4::<T>::zeros((b, h, len, d));
    let mut dv4 = ndarray::Array4::<T>::zeros((b, h, len, d));
    for bi in 0..b {
        let valid = valid_row(mask, bi, len);
        for hi in 0..h {
            let order: Vec<usize> = match full {
                true => (0..len).collect(),
                false => bucket_order(buckets.slice(s![bi, hi, .., ..])),
            };
            let head = ChunkedHead {
                u: x4.slice(s![bi, hi, .., ..]),
                keys: scaled_keys(x4.slice(s![bi, hi, .., ..]), scale, true),
                form: KeyForm::Normalised,
                v: v4.slice(s![bi, hi, .., ..]),
                y: y4.slice(s![bi, hi, .., ..]),
                dy: dy4.slice(s![bi, hi, .., ..]),
                order: &order,
                valid: &valid,
                chunk: if full { len } else { chunk },
                window: if full { (0, 0) } else { (before, after) },
                rounds,
                rules,
            };
            // The shared query/keys' gradient: as queries, then as keys.
            let (dq, dk, dv) = head.grad();
            dq4.slice_mut(s![bi, hi, .., ..]).assign(&(dq + &dk));
            dv4.slice_mut(s![bi, hi, .., ..]).assign(&dv);
        }
    }
    let (dq, dv) = (merge_heads(dq4), merge_heads(dv4));
    ndarray::stack(Axis(0), &[dq.view(), dv.view()]).map_err(|e| e.to_string())
}

/// The gradient of `sum(dy * y)`, `y = local_attention(q, k, v, mask)`
/// (queries, keys and values of one width), with respect to `q`, `k` and
/// `v`, stacked as `[3, B, L, H·d]` (`local_attention_grad`); `y` is the
/// forward output. The same computation as [`lsh_attention_grad`] with the
/// slots in position order and one round: `dS = P ⊙ (dy Vᵀ - dy · y)` on
/// unmasked logits, `dQ = dS K`, `dK = dSᵀ Q / div` (keys are divided by
/// `div = 1/scale`), `dV = Pᵀ dy`.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use reformc_interp::attention::{local_attention, local_attention_grad};
/// let x = ArrayD::from_shape_fn(IxDyn(&[1, 4, 2]), |i| (i[1] as f64 + 0.3 * i[2] as f64).sin());
/// let y = local_attention(&x, &x, &x, None, 1, 0.5, 2, 0, 0, true).unwrap();
/// let mut dy = ArrayD::zeros(IxDyn(&[1, 4, 2]));
/// dy[[0, 0, 0]] = 1.0;
/// let g = local_attention_grad(&x, &x, &x, &y, &dy, None, 1, 0.5, 2, 0, 0, true).unwrap();
/// assert_eq!(g.shape(), &[3, 1, 4, 2]);
/// assert_eq!(g[[2, 0, 0, 0]], 1.0); // position 0 sees only its own value
/// ```
#[allow(clippy::too_many_arguments)]
pub fn local_attention_grad<T: Real>(
    q: &ArrayD<T>,
    k: &ArrayD<T>,
    v: &ArrayD<T>,
    y: &ArrayD<T>,
    dy: &ArrayD<T>,
    mask: Option<&ArrayD<i64>>,
    heads: usize,
    scale: f64,
    chunk: usize,
    before: usize,
    after: usize,
    causal: bool,
) -> Result<ArrayD<T>, String> {
    let len = q.shape()[1];
    let full = len <= chunk;
    if !full && !len.is_multiple_of(chunk) {
        return Err(format!(
            "length {len} is not a multiple of the chunk length {chunk}"
        ));
    }
    let [q4, k4, v4, y4, dy4] = [q, k, v, y, dy].map(|x| split_heads(x, heads));
    let (q4, k4, v4, y4, dy4) = (q4?, k4?, v4?, y4?, dy4?);
    let (b, h, _, d) = q4.dim();
    let order: Vec<usize> = (0..len).collect();
    let mut grads = [(); 3].map(|_| ndarray::Array4::<T>::zeros((b, h, len, d)));
    for bi in 0..b {
        let valid = valid_row(mask, bi, len);
        for hi in 0..h {
            let head = ChunkedHead {
                u: q4.slice(s![bi, hi, .., ..]),
                keys: scaled_keys(k4.slice(s![bi, hi, .., ..]), scale, false),
                form: KeyForm::Divided(1.0 / scale),
                v: v4.slice(s![bi, hi, .., ..]),
                y: y4.slice(s![bi, hi, .., ..]),
                dy: dy4.slice(s![bi, hi, .., ..]),
                order: &order,
                valid: &valid,
                chunk: if full { len } else { chunk },
                window: if full { (0, 0) } else { (before, after) },
                rounds: 1,
                rules: MaskRules {
                    causal,
                    self_mask: false,
                },
            };
            let (dq, dk, dv) = head.grad();
            for (g, part) in grads.iter_mut().zip([dq, dk, dv]) {
                g.slice_mut(s![bi, hi, .., ..]).assign(&part);
            }
        }
    }
    let merged = grads.map(merge_heads);
    let views: Vec<_> = merged.iter().map(|g| g.view()).collect();
    ndarray::stack(Axis(0), &views).map_err(|e| e.to_string())
}

/// How [`ChunkedHead`]'s keys derive from their input rows, hence how the
/// key gradient passes back to them.
#[derive(Clone, Copy)]
enum KeyForm {
    /// LSH: the queries `u`, length-normalised and divided by `sqrt(d)`.
    Normalised,
    /// Local attention: separate keys divided by `div` (`1/scale`).
    Divided(f64),
}

/// One (batch, head) of [`lsh_attention_grad`] or [`local_attention_grad`]:
/// the sorted slots (`order[slot] = r·L + pos`) and the rows they read.
struct ChunkedHead<'a, T> {
    /// Queries (LSH: the shared query/keys).
    u: ArrayView2<'a, T>,
    /// Keys as the logits use them (scaled, and normalised with LSH).
    keys: Array2<T>,
    form: KeyForm,
    v: ArrayView2<'a, T>,
    y: ArrayView2<'a, T>,
    dy: ArrayView2<'a, T>,
    order: &'a [usize],
    valid: &'a [bool],
    chunk: usize,
    window: (usize, usize),
    rounds: usize,
    rules: MaskRules,
}

impl<T: Real> ChunkedHead<'_, T> {
    fn len(&self) -> usize {
        self.u.nrows()
    }

    fn pos(&self, slot: usize) -> usize {
        self.order[slot] % self.len()
    }

    /// Chunk `j`'s key slots and its queries' probabilities `[chunk, keys]`,
    /// with each query's (max, sum) and which logits the masks replaced.
    #[allow(clippy::type_complexity)]
    fn probabilities(&self, j: usize) -> (Vec<usize>, Array2<T>, Vec<Lse<T>>, Vec<Vec<bool>>) {
        let n = self.order.len() / self.chunk;
        let kslots: Vec<usize> = adjacent_chunks(j, n, self.window.0, self.window.1)
            .into_iter()
            .flat_map(|c| c * self.chunk..(c + 1) * self.chunk)
            .collect();
        let kpos: Vec<usize> = kslots.iter().map(|&t| self.pos(t)).collect();
        let kvalid: Vec<bool> = kpos.iter().map(|&p| self.valid[p]).collect();
        let mut p = Array2::<T>::zeros((self.chunk, kslots.len()));
        let (mut lse, mut masked) = (vec![], vec![]);
        for i in 0..self.chunk {
            let qpos = self.pos(j * self.chunk + i);
            let mut row = p.row_mut(i);
            for (jj, &kp) in kpos.iter().enumerate() {
                row[jj] = self.u.row(qpos).dot(&self.keys.row(kp));
            }
            mask_row(row.view_mut(), qpos, &kpos, &kvalid, self.rules);
            let max = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
            row.mapv_inplace(|x| (x - max).exp());
            let sum = row.iter().fold(T::zero(), |a, &x| a + x);
            row.mapv_inplace(|x| x / sum);
            lse.push(Lse { max, sum });
            masked.push(
                kpos.iter()
                    .zip(&kvalid)
                    .map(|(&kp, &ok)| mask_value(qpos, kp, ok, self.rules).is_some())
                    .collect(),
            );
        }
        (kslots, p, lse, masked)
    }

    /// Each slot's round weight `softmax_r(lse_r)` over its position's slots.
    fn round_weights(&self) -> Vec<T> {
        let total = self.order.len();
        if self.rounds == 1 {
            return vec![T::one(); total];
        }
        let mut lse = vec![
            Lse {
                max: T::zero(),
                sum: T::one()
            };
            total
        ];
        for j in 0..total / self.chunk {
            let (_, _, l, _) = self.probabilities(j);
            lse[j * self.chunk..(j + 1) * self.chunk].copy_from_slice(&l);
        }
        let mut slots = vec![vec![0usize; self.rounds]; self.len()];
        for (slot, &t) in self.order.iter().enumerate() {
            slots[t % self.len()][t / self.len()] = slot;
        }
        let mut weight = vec![T::zero(); total];
        for s in &slots {
            let lses: Vec<Lse<T>> = s.iter().map(|&t| lse[t]).collect();
            for (&t, wr) in s.iter().zip(round_weights(&lses)) {
                weight[t] = wr;
            }
        }
        weight
    }

    /// The gradients with respect to the queries, the keys' input rows
    /// (taken back through [`KeyForm`]; with LSH those rows are the queries
    /// again, and the caller adds the two) and the values.
    fn grad(&self) -> (Array2<T>, Array2<T>, Array2<T>) {
        let (len, d) = self.u.dim();
        let weight = self.round_weights();
        let (mut dq, mut dk, mut dv) = (
            Array2::<T>::zeros((len, d)),
            Array2::<T>::zeros((len, d)),
            Array2::<T>::zeros((len, d)),
        );
        for j in 0..self.order.len() / self.chunk {
            let (kslots, p, _, masked) = self.probabilities(j);
            for i in 0..self.chunk {
                let slot = j * self.chunk + i;
                let qpos = self.pos(slot);
                let c = weight[slot];
                let dout = self.dy.row(qpos).mapv(|x| x * c);
                let shift = -c * self.dy.row(qpos).dot(&self.y.row(qpos));
                for (jj, &ks) in kslots.iter().enumerate() {
                    let kp = self.pos(ks);
                    let pij = p[[i, jj]];
                    dv.row_mut(kp).scaled_add(pij, &dout);
                    if masked[i][jj] {
                        continue;
                    }
                    let ds = pij * (dout.dot(&self.v.row(kp)) + shift);
                    dq.row_mut(qpos).scaled_add(ds, &self.keys.row(kp));
                    dk.row_mut(kp).scaled_add(ds, &self.u.row(qpos));
                }
            }
        }
        match self.form {
            KeyForm::Normalised => (dq, self.through_norm(&dk), dv),
            KeyForm::Divided(div) => (dq, dk.mapv(|g| g / T::of(div)), dv),
        }
    }

    /// A gradient `g` with respect to the keys `k = u · inv / div` (`div =
    /// 1/scale`, `inv = (mean(u²) + 1e-6)^(-1/2)`) taken back to `u`:
    /// `du = inv / div · (g - inv² (g · u) u / d)`.
    fn through_norm(&self, g: &Array2<T>) -> Array2<T> {
        let d = self.u.ncols();
        let div = T::of((d as f64).sqrt());
        let mut out = Array2::<T>::zeros(self.u.dim());
        for (mut o, (gr, ur)) in out
            .rows_mut()
            .into_iter()
            .zip(g.rows().into_iter().zip(self.u.rows()))
        {
            let inv = inv_rms(ur);
            let k = inv * inv * gr.dot(&ur) / T::of(d as f64);
            for ((o, &g), &u) in o.iter_mut().zip(gr).zip(ur) {
                *o = inv / div * (g - k * u);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_attention_equals_materialised_softmax() {
        let x = ArrayD::from_shape_fn(IxDyn(&[2, 7, 6]), |i| {
            ((i[0] * 42 + i[1] * 6 + i[2]) as f64 * 0.713).sin() * 3.0
        });
        let v = ArrayD::from_shape_fn(IxDyn(&[2, 7, 4]), |i| {
            ((i[0] * 28 + i[1] * 4 + i[2]) as f64 * 0.291).cos()
        });
        let mut mask = ArrayD::from_elem(IxDyn(&[2, 7]), 1i64);
        mask[[1, 6]] = 0;
        for (causal, self_mask, key_norm) in [
            (false, false, false),
            (true, true, true),
            (true, false, false),
            (false, true, true),
        ] {
            let rules = MaskRules { causal, self_mask };
            let full = attention(&x, &x, &v, Some(&mask), 2, 0.25, key_norm, rules).unwrap();
            for kv in [1, 2, 3, 7, 9] {
                let got = attention_chunked(&x, &x, &v, Some(&mask), 2, 0.25, key_norm, rules, kv)
                    .unwrap();
                let err = (&full - &got).iter().fold(0.0f64, |a, d| a.max(d.abs()));
                assert!(err < 1e-12, "kv_chunk={kv} causal={causal}: {err}");
            }
        }
    }

    #[test]
    fn adjacent_chunks_wrap_around() {
        assert_eq!(adjacent_chunks(0, 4, 1, 0), vec![3, 0]);
        assert_eq!(adjacent_chunks(2, 4, 2, 1), vec![0, 1, 2, 3]);
        assert_eq!(adjacent_chunks(3, 4, 0, 1), vec![3, 0]);
    }

    #[test]
    fn bucket_of_factorised_is_first_factor_least_significant() {
        // factors [2, 4]: piece 1 = [0.5] -> concat [0.5, -0.5] -> 0; piece 2 = [-1, 0.2] -> concat [-1, 0.2, 1, -0.2] -> 2.
        assert_eq!(bucket_of(&[0.5f64, -1.0, 0.2], &[2, 4]), 2 * 2);
        assert_eq!(bucket_of(&[-0.5f64, -1.0, 0.2], &[2, 4]), 1 + 2 * 2);
    }

    #[test]
    fn first_token_under_causal_mask_attends_to_itself() {
        let q = Array2::from_shape_vec((2, 1), vec![1.0f64, 1.0]).unwrap();
        let v = Array2::from_shape_vec((2, 1), vec![3.0f64, 5.0]).unwrap();
        let (o, lse) = attend_block(
            q.view(),
            q.view(),
            v.view(),
            &[0, 1],
            &[0, 1],
            &[true, true],
            MaskRules {
                causal: true,
                self_mask: true,
            },
        );
        assert_eq!(o[[0, 0]], 3.0);
        assert_eq!(lse[0].value(), SELF_MASK_VALUE);
        // token 1 sees token 0 (logit 1) and itself (-1e5): almost all weight on token 0.
        assert!((o[[1, 0]] - 3.0).abs() < 1e-12);
    }
}
