//! Every kernel against the reference interpreter on random shapes and data.

mod common;

use common::*;
use proptest::prelude::*;
use reformc_interp::attention::{self as ia, MaskRules};
use reformc_interp::nn as inn;
use reformc_runtime::attention::{self as ra, flags};
use reformc_runtime::{Activation, Error};

fn cfg(cases: u32) -> ProptestConfig {
    // PROPTEST_CASES overrides the count (for long local runs).
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cfg(64))]

    #[test]
    fn linear_matches(rows in 1usize..40, inp in 1usize..70, out in 1usize..90,
                      bias in any::<bool>(), act in 0i32..8, seed in any::<u64>()) {
        let mut r = Data::new(seed);
        let (x, w, b) = (r.vec(rows * inp, 2.0), r.vec(out * inp, 1.0), r.vec(out, 1.0));
        let act = Activation::from_code(act).unwrap();
        // The interpreter's twin of the same code (one definition, two crates).
        let ir_act = inn::Activation::from_code(act.code()).unwrap();
        let mut y = vec![0.0f32; rows * out];
        reformc_runtime::linear(&x, rows, inp, &w, out, bias.then_some(&b[..]), act, &mut y).unwrap();
        // The interpreter's `nn::linear` panics for in = 1 with rows, out > 1 (its
        // dot returns a column-major array); build that reference by hand.
        let want = if inp == 1 && rows > 1 && out > 1 {
            ndarray::Array2::from_shape_fn((rows, out), |(i, j)| {
                let y = x[i] * w[j] + if bias { b[j] } else { 0.0 };
                inn::activate(ir_act, y)
            }).into_dyn()
        } else {
            inn::linear(
                &arr(&[rows, inp], x.clone()),
                &arr(&[out, inp], w.clone()),
                bias.then(|| arr(&[out], b.clone())).as_ref(),
                ir_act,
            ).unwrap()
        };
        for i in 0..rows {
            for j in 0..out {
                // Relative to the size of the terms summed (outputs may cancel to ~0).
                let scale: f32 = (0..inp).map(|t| (x[i * inp + t] * w[j * inp + t]).abs()).sum::<f32>()
                    + if bias { b[j].abs() } else { 0.0 };
                let (g, e) = (y[i * out + j], want[[i, j]]);
                prop_assert!((g - e).abs() <= 1e-5 * scale.max(e.abs()).max(1e-3),
                    "({i},{j}) {act:?}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn layer_norm_matches(rows in 1usize..20, width in 1usize..300, seed in any::<u64>()) {
        let mut r = Data::new(seed);
        let (x, w, b) = (r.vec(rows * width, 3.0), r.vec(width, 1.5), r.vec(width, 1.0));
        let mut y = vec![0.0f32; rows * width];
        reformc_runtime::layer_norm(&x, rows, width, &w, &b, 1e-12, &mut y).unwrap();
        let want = inn::layer_norm(&arr(&[rows, width], x), &arr(&[width], w), &arr(&[width], b), f64::from(1e-12f32));
        for (g, e) in y.iter().zip(want.iter()) {
            prop_assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "{g} vs {e}");
        }
    }

    #[test]
    fn embedding_and_axial_are_exact(n in 0usize..50, vocab in 1usize..30, width in 1usize..20,
                                    n0 in 1usize..6, n1 in 1usize..6, d0 in 0usize..5, d1 in 1usize..5,
                                    seed in any::<u64>()) {
        let mut r = Data::new(seed);
        let ids: Vec<i64> = (0..n).map(|_| r.below(vocab as u64) as i64).collect();
        let table = r.vec(vocab * width, 1.0);
        let mut y = vec![0.0f32; n * width];
        reformc_runtime::embedding(&ids, &table, vocab, width, &mut y).unwrap();
        let want = inn::embedding(&arr_i(&[n], ids.clone()), &arr(&[vocab, width], table)).unwrap();
        prop_assert_eq!(bits(&y), bits(want.as_slice().unwrap()));

        let pos: Vec<i64> = (0..n).map(|_| r.below((n0 * n1) as u64) as i64).collect();
        let (w0, w1) = (r.vec(n0 * d0, 1.0), r.vec(n1 * d1, 1.0));
        let mut y = vec![0.0f32; n * (d0 + d1)];
        reformc_runtime::axial_pos(&pos, &w0, n0, d0, &w1, n1, d1, &mut y).unwrap();
        let want = inn::axial_pos_embedding(&arr_i(&[n], pos), &arr(&[n0, 1, d0], w0), &arr(&[1, n1, d1], w1)).unwrap();
        prop_assert_eq!(bits(&y), bits(want.as_slice().unwrap()));
    }

    #[test]
    fn random_normal_is_bit_compatible(seed in any::<i64>(), stream in any::<i64>(), n in 0usize..9000) {
        let mut y = vec![0.0f32; n];
        reformc_runtime::random_normal(seed as u64, stream as u64, &mut y).unwrap();
        let want: Vec<f32> = reformc_interp::philox::normals(seed as u64, stream as u64, n)
            .iter().map(|&x| x as f32).collect();
        prop_assert_eq!(bits(&y), bits(&want));
    }

    #[test]
    fn dropout_mask_is_bit_compatible(seed in any::<i64>(), stream in any::<i64>(), n in 0usize..40000,
                                      p in prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0]) {
        let mut y = vec![0.0f32; n];
        reformc_runtime::dropout_mask(seed as u64, stream as u64, p, &mut y).unwrap();
        let want: Vec<f32> = reformc_interp::philox::dropout_mask(seed as u64, stream as u64, p, n)
            .iter().map(|&x| x as f32).collect();
        prop_assert_eq!(bits(&y), bits(&want));
    }

    #[test]
    fn attention_matches(b in 1usize..3, lq in 1usize..20, lk in 0usize..20, h in 1usize..3,
                         dqk in 1usize..9, dv in 1usize..9, masked in any::<bool>(),
                         fl in 0i32..8, kv in 0usize..24, scale in 0.05f32..1.0,
                         seed in any::<u64>()) {
        let mut r = Data::new(seed);
        let (q, k, v) = (r.vec(b * lq * h * dqk, 2.0), r.vec(b * lk * h * dqk, 2.0), r.vec(b * lk * h * dv, 2.0));
        let mask = masked.then(|| r.mask(b, lk));
        let mut out = vec![0.0f32; b * lq * h * dv];
        ra::attention(&q, &k, &v, mask.as_deref(), b, lq, lk, h, dqk, dv, scale, fl, kv, &mut out).unwrap();
        if lk == 0 {
            prop_assert!(out.iter().all(|&x| x == 0.0));
            return Ok(());
        }
        let rules = MaskRules { causal: fl & flags::CAUSAL != 0, self_mask: fl & flags::SELF_MASK != 0 };
        let key_norm = fl & flags::KEY_NORM != 0;
        let m = mask.map(|m| arr_i(&[b, lk], m));
        let (q4, k4, v4) = (arr64(&[b, lq, h * dqk], &q), arr64(&[b, lk, h * dqk], &k), arr64(&[b, lk, h * dv], &v));
        let want = if kv == 0 {
            ia::attention(&q4, &k4, &v4, m.as_ref(), h, f64::from(scale), key_norm, rules)
        } else {
            ia::attention_chunked(&q4, &k4, &v4, m.as_ref(), h, f64::from(scale), key_norm, rules, kv)
        }.unwrap();
        assert_close(&out, want.as_slice().unwrap(), 1e-4, "attention vs f64 interpreter");
        // And the interpreter in f32 (same key rounding).
        let want32 = ia::attention(&arr(&[b, lq, h * dqk], q), &arr(&[b, lk, h * dqk], k),
                                   &arr(&[b, lk, h * dv], v), m.as_ref(), h, f64::from(scale), key_norm, rules).unwrap();
        prop_assert!(max_abs_diff(&out, want32.iter().map(|&x| f64::from(x))) <= 1e-4);
    }

    #[test]
    fn local_attention_matches(b in 1usize..3, n in 1usize..5, chunk in 1usize..6, h in 1usize..3,
                               dqk in 1usize..7, dv in 1usize..7, before in 0usize..3, after in 0usize..3,
                               causal in any::<bool>(), masked in any::<bool>(), extra in 0usize..3,
                               scale in 0.05f32..1.0, seed in any::<u64>()) {
        // extra > 0 makes L not a multiple of the chunk (an error unless L <= chunk).
        let len = n * chunk + extra;
        let mut r = Data::new(seed);
        let (q, k, v) = (r.vec(b * len * h * dqk, 2.0), r.vec(b * len * h * dqk, 2.0), r.vec(b * len * h * dv, 2.0));
        let mask = masked.then(|| r.mask(b, len));
        let mut out = vec![0.0f32; b * len * h * dv];
        let got = ra::local_attention(&q, &k, &v, mask.as_deref(), b, len, h, dqk, dv, scale, chunk, before, after, causal, &mut out);
        let m = mask.map(|m| arr_i(&[b, len], m));
        let want = ia::local_attention(&arr64(&[b, len, h * dqk], &q), &arr64(&[b, len, h * dqk], &k),
                                       &arr64(&[b, len, h * dv], &v), m.as_ref(), h, f64::from(scale),
                                       chunk, before, after, causal);
        match want {
            Ok(want) => {
                got.unwrap();
                assert_close(&out, want.as_slice().unwrap(), 1e-4, "local attention");
            }
            Err(_) => prop_assert!(matches!(got, Err(Error::ChunkMismatch(_))), "{got:?}"),
        }
    }

    #[test]
    fn lsh_attention_matches(b in 1usize..3, h in 1usize..3, d in 1usize..9, chunk in 1usize..6,
                             rounds in 1usize..9, n in 1usize..6, short in any::<bool>(), nb in 1usize..6,
                             before in 0usize..3, after in 0usize..3, causal in any::<bool>(),
                             masked in any::<bool>(), seed in any::<u64>()) {
        // L > chunk with r·L a multiple of the chunk, or L <= chunk (full path).
        let len = if short { 1 + n % chunk } else {
            let step = chunk / gcd(chunk, rounds);
            (chunk / step + 1 + n) * step
        };
        let mut r = Data::new(seed);
        let (qk, v) = (r.vec(b * len * h * d, 2.0), r.vec(b * len * h * d, 2.0));
        let mask = masked.then(|| r.mask(b, len));
        let buckets: Vec<i64> = (0..b * h * rounds * len)
            .map(|i| (r.below(nb as u64) + ((i / len) % rounds * nb) as u64) as i64)
            .collect();
        let mut out = vec![0.0f32; b * len * h * d];
        ra::lsh_attention(&qk, &v, &buckets, mask.as_deref(), b, len, h, d, rounds, chunk, before, after, causal, &mut out).unwrap();
        let m = mask.map(|m| arr_i(&[b, len], m));
        let bk = arr_i(&[b, h, rounds, len], buckets);
        let want = ia::lsh_attention(&arr64(&[b, len, h * d], &qk), &arr64(&[b, len, h * d], &v), &bk,
                                     m.as_ref(), h, chunk, before, after, causal).unwrap();
        assert_close(&out, want.as_slice().unwrap(), 1e-4, "lsh attention vs f64 interpreter");
        let want32 = ia::lsh_attention(&arr(&[b, len, h * d], qk), &arr(&[b, len, h * d], v), &bk,
                                       m.as_ref(), h, chunk, before, after, causal).unwrap();
        prop_assert!(max_abs_diff(&out, want32.iter().map(|&x| f64::from(x))) <= 1e-4);
    }

    #[test]
    fn lsh_hash_matches(b in 1usize..3, len in 1usize..40, h in 1usize..3, d in 1usize..9,
                        rounds in 1usize..5, fsel in 0usize..7, masked in any::<bool>(), seed in any::<u64>()) {
        let factors: &[usize] = [&[2usize][..], &[4], &[8], &[6], &[2, 4], &[4, 2], &[2, 2, 2]][fsel];
        let half: usize = factors.iter().map(|f| f / 2).sum();
        let mut r = Data::new(seed);
        let qk = r.vec(b * len * h * d, 2.0);
        let rot = r.vec(h * d * rounds * half, 1.5);
        let mask = masked.then(|| r.mask(b, len));
        let mut out = vec![0i64; b * h * rounds * len];
        ra::lsh_hash(&qk, &rot, mask.as_deref(), b, len, h, d, rounds, factors, &mut out).unwrap();
        let m = mask.as_ref().map(|m| arr_i(&[b, len], m.clone()));
        let want = ia::lsh_hash(&arr(&[b, len, h * d], qk.clone()), &arr(&[h, d, rounds, half], rot.clone()),
                                m.as_ref(), h, factors).unwrap();
        for (idx, (&g, &e)) in out.iter().zip(want.iter()).enumerate() {
            if g == e {
                continue;
            }
            // Only a near-tie (within f32 rounding of the rotation) may differ.
            let (i, rho, hh, bb) = (idx % len, (idx / len) % rounds, (idx / len / rounds) % h, idx / len / rounds / h);
            prop_assert!(mask.as_ref().is_none_or(|m| m[bb * len + i] != 0), "padding bucket differs");
            let rotated: Vec<(f64, f64)> = (0..half).map(|s| {
                (0..d).fold((0.0, 0.0), |(acc, mag), t| {
                    let x = f64::from(qk[(bb * len + i) * h * d + hh * d + t]);
                    let w = f64::from(rot[((hh * d + t) * rounds + rho) * half + s]);
                    (acc + x * w, mag + (x * w).abs())
                })
            }).collect();
            let value = |code: usize, off: usize, f: usize| {
                let (val, _) = rotated[off + code % (f / 2)];
                if code < f / 2 { val } else { -val }
            };
            let mag = rotated.iter().map(|r| r.1).fold(0.0, f64::max);
            let (mut gb, mut eb, mut off) = ((g as usize) % factors.iter().product::<usize>(),
                                             (e as usize) % factors.iter().product::<usize>(), 0);
            for &f in factors {
                let (gc, ec) = (gb % f, eb % f);
                prop_assert!((value(gc, off, f) - value(ec, off, f)).abs() <= 1e-5 * mag.max(1e-30),
                    "bucket {g} vs {e} is not a near-tie");
                gb /= f;
                eb /= f;
                off += f / 2;
            }
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[test]
fn lsh_attention_length_not_multiple_of_chunk_is_code_3() {
    // L = 10 > chunk = 4, one round: 10 % 4 != 0 (the interpreter errors too).
    let (qk, v, bk) = (vec![0.5f32; 10], vec![1.0f32; 10], vec![0i64; 10]);
    let mut out = vec![0.0f32; 10];
    let e =
        ra::lsh_attention(&qk, &v, &bk, None, 1, 10, 1, 1, 1, 4, 1, 0, true, &mut out).unwrap_err();
    assert_eq!(e.code(), 3);
    let interp = ia::lsh_attention(
        &arr(&[1, 10, 1], qk),
        &arr(&[1, 10, 1], v),
        &arr_i(&[1, 1, 1, 10], bk),
        None,
        1,
        4,
        1,
        0,
        true,
    );
    assert!(interp.is_err());
}

#[test]
fn lsh_attention_rounds_can_straddle_chunks() {
    // r·L = 2·6 = 12 is a multiple of chunk 4 although L = 6 is not (interpreter semantics).
    let mut r = Data::new(7);
    let (qk, v) = (r.vec(6 * 3, 1.0), r.vec(6 * 3, 1.0));
    let bk: Vec<i64> = (0..12).map(|t| (t % 3 + (t / 6) * 3) as i64).collect();
    let mut out = vec![0.0f32; 18];
    ra::lsh_attention(&qk, &v, &bk, None, 1, 6, 1, 3, 2, 4, 1, 0, false, &mut out).unwrap();
    let want = ia::lsh_attention(
        &arr64(&[1, 6, 3], &qk),
        &arr64(&[1, 6, 3], &v),
        &arr_i(&[1, 1, 2, 6], bk),
        None,
        1,
        4,
        1,
        0,
        false,
    )
    .unwrap();
    assert_close(&out, want.as_slice().unwrap(), 1e-5, "straddling rounds");
}

#[test]
fn lsh_hash_then_attention_at_model_like_shape() {
    // B = 2, L = 256, H = 2, d = 16, r = 4, buckets [4, 2] (factorized), chunk 16, padding.
    let (b, len, h, d, rounds, chunk) = (2, 256, 2, 16, 4, 16);
    let factors = [4usize, 2];
    let mut r = Data::new(11);
    let qk = r.vec(b * len * h * d, 1.0);
    let v = r.vec(b * len * h * d, 1.0);
    let rot = r.vec(h * d * rounds * 3, 1.0);
    let mut mask = vec![1i64; b * len];
    mask[len + 250..].iter_mut().for_each(|m| *m = 0);
    let mut buckets = vec![0i64; b * h * rounds * len];
    ra::lsh_hash(
        &qk,
        &rot,
        Some(&mask),
        b,
        len,
        h,
        d,
        rounds,
        &factors,
        &mut buckets,
    )
    .unwrap();
    assert!(buckets.iter().all(|&x| (0..4 * 9).contains(&x)));
    let mut out = vec![0.0f32; b * len * h * d];
    ra::lsh_attention(
        &qk,
        &v,
        &buckets,
        Some(&mask),
        b,
        len,
        h,
        d,
        rounds,
        chunk,
        1,
        0,
        true,
        &mut out,
    )
    .unwrap();
    let m = arr_i(&[b, len], mask);
    let want = ia::lsh_attention(
        &arr64(&[b, len, h * d], &qk),
        &arr64(&[b, len, h * d], &v),
        &arr_i(&[b, h, rounds, len], buckets),
        Some(&m),
        h,
        chunk,
        1,
        0,
        true,
    )
    .unwrap();
    assert_close(&out, want.as_slice().unwrap(), 1e-5, "model-like LSH");
}

proptest! {
    #![proptest_config(cfg(48))]

    /// softmax, the four reductions, argmax, argsort and gather along a random
    /// axis of a random 3-d tensor, and matmul, against the interpreter's ops.
    #[test]
    fn tensor_ops_match(d0 in 1usize..5, d1 in 1usize..9, d2 in 1usize..7, axis in 0usize..3,
                        seed in any::<u64>()) {
        use reformc_interp::tensor_ops as it;
        use reformc_runtime::tensor_ops as rt;
        let mut r = Data::new(seed);
        let dims = [d0, d1, d2];
        let x = r.vec(d0 * d1 * d2, 3.0);
        let xa = arr(&dims, x.clone());
        let (outer, n, inner) = (dims[..axis].iter().product(), dims[axis], dims[axis + 1..].iter().product());
        let close = |g: &[f32], e: &ndarray::ArrayD<f32>| g.iter().zip(e.iter())
            .all(|(g, e)| (g - e).abs() <= 1e-5 * e.abs().max(1.0));
        let mut y = vec![0.0f32; x.len()];
        rt::softmax(&x, outer, n, inner, &mut y).unwrap();
        prop_assert!(close(&y, &it::softmax(&xa, axis)), "softmax");
        for kind in reformc_ir::Reduction::ALL {
            let mut y = vec![0.0f32; outer * inner];
            rt::reduce(&x, outer, n, inner, rt::reduction_of_code(kind.code()).unwrap(), &mut y).unwrap();
            prop_assert!(close(&y, &it::reduce(&xa, kind, &[axis], false)), "{kind:?}");
        }
        let t = reformc_interp::Tensor::F32(xa.clone());
        let mut am = vec![0i64; outer * inner];
        rt::argmax(&x, outer, n, inner, &mut am).unwrap();
        prop_assert_eq!(am, it::argmax(&t, axis).iter().copied().collect::<Vec<_>>());
        let mut order = vec![0i64; x.len()];
        rt::argsort(&x, outer, n, inner, &mut order).unwrap();
        let want = it::argsort(&t, axis);
        prop_assert_eq!(&order, &want.iter().copied().collect::<Vec<_>>());
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![0u8; bytes.len()];
        rt::gather(&bytes, 4, outer, n, inner, &order, n, &mut out).unwrap();
        let sorted: Vec<f32> = out.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let want = it::gather(&t, &want, axis).unwrap().to_f64();
        prop_assert!(sorted.iter().zip(want.iter()).all(|(g, e)| f64::from(*g) == *e), "gather");
        // matmul [d0, d1] x [d1, d2]
        let (a, b) = (r.vec(d0 * d1, 1.0), r.vec(d1 * d2, 1.0));
        let mut c = vec![0.0f32; d0 * d2];
        rt::matmul(&a, &b, d0, d1, d2, &mut c).unwrap();
        let want = it::matmul(&arr(&[d0, d1], a), &arr(&[d1, d2], b)).unwrap();
        prop_assert!(close(&c, &want), "matmul");
    }
}
