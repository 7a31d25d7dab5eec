//! Results are bitwise identical at 1 and 2 threads (and 3, which splits work
//! unevenly). One test function: the thread count is process-wide.

mod common;

use common::*;
use reformc_runtime::attention as ra;
use reformc_runtime::{set_threads, Activation};

/// Runs `f` at 1, 2 and 3 threads and checks the outputs are identical bits.
fn same_at_any_thread_count<T: PartialEq + std::fmt::Debug>(what: &str, f: impl Fn() -> T) {
    set_threads(1).unwrap();
    let one = f();
    for n in [2, 3] {
        set_threads(n).unwrap();
        assert_eq!(one, f(), "{what}: 1 vs {n} threads");
    }
}

#[test]
fn every_kernel_is_deterministic_across_thread_counts() {
    let mut r = Data::new(3);
    let (rows, inp, out) = (1000, 96, 200);
    let (x, w, b) = (
        r.vec(rows * inp, 1.0),
        r.vec(out * inp, 1.0),
        r.vec(out, 1.0),
    );
    for act in [Activation::None, Activation::Relu, Activation::Gelu] {
        same_at_any_thread_count("linear", || {
            let mut y = vec![0.0f32; rows * out];
            reformc_runtime::linear(&x, rows, inp, &w, out, Some(&b), act, &mut y).unwrap();
            bits(&y)
        });
    }
    same_at_any_thread_count("layer_norm", || {
        let mut y = vec![0.0f32; rows * inp];
        reformc_runtime::layer_norm(&x, rows, inp, &w[..inp], &b[..inp], 1e-5, &mut y).unwrap();
        bits(&y)
    });
    same_at_any_thread_count("random_normal", || {
        let mut y = vec![0.0f32; 50_001];
        reformc_runtime::random_normal(5, 6, &mut y).unwrap();
        bits(&y)
    });

    let (bt, len, h, d) = (2, 384, 2, 24);
    let qk = r.vec(bt * len * h * d, 1.5);
    let v = r.vec(bt * len * h * d, 1.5);
    let mask = r.mask(bt, len);
    for kv in [0, 50] {
        same_at_any_thread_count("attention", || {
            let mut o = vec![0.0f32; qk.len()];
            ra::attention(
                &qk,
                &qk,
                &v,
                Some(&mask),
                bt,
                len,
                len,
                h,
                d,
                d,
                0.2,
                7,
                kv,
                &mut o,
            )
            .unwrap();
            bits(&o)
        });
    }
    same_at_any_thread_count("local_attention", || {
        let mut o = vec![0.0f32; qk.len()];
        ra::local_attention(
            &qk,
            &qk,
            &v,
            Some(&mask),
            bt,
            len,
            h,
            d,
            d,
            0.2,
            32,
            1,
            1,
            true,
            &mut o,
        )
        .unwrap();
        bits(&o)
    });
    let rounds = 4;
    let rot = r.vec(h * d * rounds * 4, 1.0);
    same_at_any_thread_count("lsh_hash", || {
        let mut o = vec![0i64; bt * h * rounds * len];
        ra::lsh_hash(
            &qk,
            &rot,
            Some(&mask),
            bt,
            len,
            h,
            d,
            rounds,
            &[4, 4],
            &mut o,
        )
        .unwrap();
        o
    });
    let mut buckets = vec![0i64; bt * h * rounds * len];
    ra::lsh_hash(
        &qk,
        &rot,
        Some(&mask),
        bt,
        len,
        h,
        d,
        rounds,
        &[4, 4],
        &mut buckets,
    )
    .unwrap();
    same_at_any_thread_count("lsh_attention", || {
        let mut o = vec![0.0f32; qk.len()];
        ra::lsh_attention(
            &qk,
            &v,
            &buckets,
            Some(&mask),
            bt,
            len,
            h,
            d,
            rounds,
            32,
            1,
            0,
            true,
            &mut o,
        )
        .unwrap();
        bits(&o)
    });
    // One (batch, head): each round's chunks are split across the threads.
    let (len1, d1) = (512, 16);
    let (qk1, v1, rot1) = (
        r.vec(len1 * d1, 1.0),
        r.vec(len1 * d1, 1.0),
        r.vec(d1 * rounds * 4, 1.0),
    );
    let mut b1 = vec![0i64; rounds * len1];
    ra::lsh_hash(&qk1, &rot1, None, 1, len1, 1, d1, rounds, &[4, 4], &mut b1).unwrap();
    same_at_any_thread_count("lsh_attention, one head", || {
        let mut o = vec![0.0f32; qk1.len()];
        ra::lsh_attention(
            &qk1, &v1, &b1, None, 1, len1, 1, d1, rounds, 32, 1, 0, true, &mut o,
        )
        .unwrap();
        bits(&o)
    });
    set_threads(0).unwrap();
}
