//! The C entry points agree with the safe wrappers and report errors as codes.

mod common;

use common::*;
use reformc_runtime::ffi::*;
use std::ffi::CStr;
use std::ptr::{null, null_mut};

fn last() -> String {
    // SAFETY: rc_last_error never returns NULL and the string is NUL-terminated.
    unsafe { CStr::from_ptr(rc_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn linear_through_the_c_abi_equals_the_safe_wrapper() {
    let mut r = Data::new(1);
    let (rows, inp, out) = (33, 17, 45);
    let (x, w, b) = (
        r.vec(rows * inp, 1.0),
        r.vec(out * inp, 1.0),
        r.vec(out, 1.0),
    );
    for act in 0..8 {
        let mut y = vec![0.0f32; rows * out];
        // SAFETY: buffers have the sizes the ABI requires.
        let rc = unsafe {
            rc_linear_f32(
                x.as_ptr(),
                rows as i64,
                inp as i64,
                w.as_ptr(),
                out as i64,
                b.as_ptr(),
                act,
                y.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "{}", last());
        let mut want = vec![0.0f32; rows * out];
        let a = reformc_runtime::Activation::from_code(act).unwrap();
        reformc_runtime::linear(&x, rows, inp, &w, out, Some(&b), a, &mut want).unwrap();
        assert_eq!(bits(&y), bits(&want));
    }
}

#[test]
fn every_entry_point_runs_and_matches_its_wrapper() {
    let mut r = Data::new(2);
    let (b, l, h, d, rounds, chunk) = (2usize, 48usize, 2usize, 8usize, 2usize, 8usize);
    let qk = r.vec(b * l * h * d, 1.0);
    let v = r.vec(b * l * h * d, 1.0);
    let mask = r.mask(b, l);
    let rot = r.vec(h * d * rounds * 4, 1.0);
    let factors = [8i64];
    let (bi, li, hi, di, ri) = (b as i64, l as i64, h as i64, d as i64, rounds as i64);
    // SAFETY (whole block): every buffer has the size the ABI requires for these arguments.
    unsafe {
        assert_eq!(rc_set_threads(2), 0);
        let mut buckets = vec![0i64; b * h * rounds * l];
        let rc = rc_lsh_hash_f32(
            qk.as_ptr(),
            rot.as_ptr(),
            mask.as_ptr(),
            bi,
            li,
            hi,
            di,
            ri,
            factors.as_ptr(),
            1,
            buckets.as_mut_ptr(),
        );
        assert_eq!(rc, 0, "{}", last());
        let mut want_b = vec![0i64; buckets.len()];
        reformc_runtime::attention::lsh_hash(
            &qk,
            &rot,
            Some(&mask),
            b,
            l,
            h,
            d,
            rounds,
            &[8],
            &mut want_b,
        )
        .unwrap();
        assert_eq!(buckets, want_b);

        let mut out = vec![0.0f32; qk.len()];
        let rc = rc_lsh_attention_f32(
            qk.as_ptr(),
            v.as_ptr(),
            buckets.as_ptr(),
            mask.as_ptr(),
            bi,
            li,
            hi,
            di,
            ri,
            chunk as i64,
            1,
            0,
            1,
            out.as_mut_ptr(),
        );
        assert_eq!(rc, 0, "{}", last());
        let mut want = vec![0.0f32; qk.len()];
        reformc_runtime::attention::lsh_attention(
            &qk,
            &v,
            &buckets,
            Some(&mask),
            b,
            l,
            h,
            d,
            rounds,
            chunk,
            1,
            0,
            true,
            &mut want,
        )
        .unwrap();
        assert_eq!(bits(&out), bits(&want));

        let rc = rc_local_attention_f32(
            qk.as_ptr(),
            qk.as_ptr(),
            v.as_ptr(),
            null(),
            bi,
            li,
            hi,
            di,
            di,
            0.3,
            chunk as i64,
            1,
            0,
            0,
            out.as_mut_ptr(),
        );
        assert_eq!(rc, 0, "{}", last());
        reformc_runtime::attention::local_attention(
            &qk, &qk, &v, None, b, l, h, d, d, 0.3, chunk, 1, 0, false, &mut want,
        )
        .unwrap();
        assert_eq!(bits(&out), bits(&want));

        let rc = rc_attention_f32(
            qk.as_ptr(),
            qk.as_ptr(),
            v.as_ptr(),
            mask.as_ptr(),
            bi,
            li,
            li,
            hi,
            di,
            di,
            0.3,
            7,
            16,
            out.as_mut_ptr(),
        );
        assert_eq!(rc, 0, "{}", last());
        reformc_runtime::attention::attention(
            &qk,
            &qk,
            &v,
            Some(&mask),
            b,
            l,
            l,
            h,
            d,
            d,
            0.3,
            7,
            16,
            &mut want,
        )
        .unwrap();
        assert_eq!(bits(&out), bits(&want));

        let mut y = vec![0.0f32; b * l * d];
        let rc = rc_layer_norm_f32(
            qk.as_ptr(),
            (b * l) as i64,
            di,
            v.as_ptr(),
            v[d..].as_ptr(),
            1e-5,
            y.as_mut_ptr(),
        );
        assert_eq!(rc, 0, "{}", last());

        let ids: Vec<i64> = (0..10).map(|i| i % 4).collect();
        let mut e = vec![0.0f32; 10 * d];
        assert_eq!(
            rc_embedding_f32(ids.as_ptr(), 10, qk.as_ptr(), 4, di, e.as_mut_ptr()),
            0
        );
        assert_eq!(e[d..2 * d], qk[d..2 * d]);
        assert_eq!(
            rc_axial_pos_f32(
                ids.as_ptr(),
                10,
                qk.as_ptr(),
                2,
                3,
                v.as_ptr(),
                2,
                5,
                e.as_mut_ptr()
            ),
            0
        );
        assert_eq!(e[8..11], qk[0..3]); // position 1 -> w0[0], w1[1]
        assert_eq!(e[11..16], v[5..10]);

        let mut n = vec![0.0f32; 7];
        assert_eq!(rc_random_normal_f32(-1, 9, 7, n.as_mut_ptr()), 0);
        let want: Vec<f32> = reformc_interp::philox::normals(u64::MAX, 9, 7)
            .iter()
            .map(|&x| x as f32)
            .collect();
        assert_eq!(n, want);
    }
}

#[test]
fn errors_are_codes_and_messages_never_aborts() {
    let x = [1.0f32; 64];
    let mut y = [0.0f32; 64];
    // SAFETY: every pointer is valid for the sizes passed, or NULL where the case says so.
    unsafe {
        // Unknown flags / negative chunk.
        assert_eq!(
            rc_attention_f32(
                x.as_ptr(),
                x.as_ptr(),
                x.as_ptr(),
                null(),
                1,
                4,
                4,
                1,
                4,
                4,
                1.0,
                8,
                0,
                y.as_mut_ptr()
            ),
            1
        );
        assert!(last().contains("flags"), "{}", last());
        assert_eq!(
            rc_attention_f32(
                x.as_ptr(),
                x.as_ptr(),
                x.as_ptr(),
                null(),
                1,
                4,
                4,
                1,
                4,
                4,
                1.0,
                0,
                -1,
                y.as_mut_ptr()
            ),
            1
        );
        // L not a multiple of the chunk: code 3 (local and LSH).
        assert_eq!(
            rc_local_attention_f32(
                x.as_ptr(),
                x.as_ptr(),
                x.as_ptr(),
                null(),
                1,
                10,
                1,
                2,
                2,
                1.0,
                4,
                1,
                0,
                1,
                y.as_mut_ptr()
            ),
            3
        );
        assert!(last().contains("multiple"), "{}", last());
        let bk = [0i64; 10];
        assert_eq!(
            rc_lsh_attention_f32(
                x.as_ptr(),
                x.as_ptr(),
                bk.as_ptr(),
                null(),
                1,
                10,
                1,
                2,
                1,
                4,
                1,
                0,
                1,
                y.as_mut_ptr()
            ),
            3
        );
        // NULL required buffer; NULL output with a nonzero size.
        assert_eq!(
            rc_lsh_attention_f32(
                x.as_ptr(),
                x.as_ptr(),
                null(),
                null(),
                1,
                8,
                1,
                2,
                1,
                4,
                1,
                0,
                1,
                y.as_mut_ptr()
            ),
            1
        );
        assert!(last().contains("buckets is NULL"), "{}", last());
        assert_eq!(rc_random_normal_f32(0, 0, 4, null_mut()), 1);
        // Zero factor, overflowing sizes.
        let mut o = [0i64; 8];
        assert_eq!(
            rc_lsh_hash_f32(
                x.as_ptr(),
                x.as_ptr(),
                null(),
                1,
                4,
                1,
                2,
                1,
                [0i64].as_ptr(),
                1,
                o.as_mut_ptr()
            ),
            1
        );
        assert_eq!(
            rc_linear_f32(
                x.as_ptr(),
                i64::MAX,
                i64::MAX,
                x.as_ptr(),
                2,
                null(),
                0,
                y.as_mut_ptr()
            ),
            1
        );
        assert!(
            last().contains("overflow") || last().contains("too large"),
            "{}",
            last()
        );
        // Axial position outside the grid: code 2.
        assert_eq!(
            rc_axial_pos_f32(
                [9i64].as_ptr(),
                1,
                x.as_ptr(),
                2,
                1,
                x.as_ptr(),
                3,
                1,
                y.as_mut_ptr()
            ),
            2
        );
    }
}

#[test]
fn dense_on_interleaved_halves_equals_the_safe_wrapper_and_checks_overlap() {
    use reformc_runtime::dense::{Layer, Mode, Norm, Stack};
    let mut r = Data::new(5);
    let (rows, w, hid) = (37usize, 12usize, 20usize);
    let state0 = r.vec(rows * 2 * w, 1.0);
    let (g, b) = (r.vec(w, 1.0), r.vec(w, 1.0));
    let (w1, w2) = (r.vec(hid * w, 1.0), r.vec(w * hid, 1.0));
    let (ri, wi, hi, ld) = (rows as i64, w as i64, hid as i64, 2 * w as i64);
    let mut state = state0.clone();
    let p = state.as_mut_ptr();
    // rc_dense_f32 of `rows` x rows (stride ldx, w wide) through LN, w1 (relu) and,
    // if given, w2 (out wide) into y rows (stride ldy).
    let dense = |x: *const f32, ldx: i64, w2: Option<&[f32]>, out: i64, y: *mut f32, ldy, acc| {
        let w2 = w2.map_or(null(), |w| w.as_ptr());
        let (gp, bp, w1p) = (g.as_ptr(), b.as_ptr(), w1.as_ptr());
        // SAFETY: every caller passes extents valid for these sizes.
        unsafe {
            rc_dense_f32(
                x,
                ldx,
                ri,
                wi,
                gp,
                bp,
                1e-5,
                w1p,
                null(),
                hi,
                1,
                w2,
                null(),
                out,
                0,
                y,
                ldy,
                acc,
            )
        }
    };
    // SAFETY: state holds rows x 2w values; the halves share no element.
    let rc = dense(p, ld, Some(&w2), wi, unsafe { p.add(w) }, ld, 1);
    assert_eq!(rc, 0, "{}", last());
    let lo: Vec<f32> = state0.chunks(2 * w).flat_map(|r| r[..w].to_vec()).collect();
    let mut hi_want: Vec<f32> = state0.chunks(2 * w).flat_map(|r| r[w..].to_vec()).collect();
    use reformc_runtime::Activation::{None as Identity, Relu};
    let stack = Stack {
        norm: Some(Norm {
            w: &g,
            b: &b,
            eps: 1e-5,
        }),
        first: Layer {
            w: &w1,
            out: hid,
            b: None,
            act: Relu,
        },
        second: Some(Layer {
            w: &w2,
            out: w,
            b: None,
            act: Identity,
        }),
    };
    reformc_runtime::dense::dense(&stack, &lo, rows, w, &mut hi_want, Mode::Accumulate).unwrap();
    let hi_got: Vec<f32> = state.chunks(2 * w).flat_map(|r| r[w..].to_vec()).collect();
    assert_eq!(bits(&hi_got), bits(&hi_want));
    // SAFETY (errors): every pointer is valid for the extents passed.
    unsafe {
        // Overlapping columns of the same rows.
        let rc = dense(p, ld, Some(&w2), wi, p.add(w - 1), ld, 1);
        assert_eq!(rc, 1);
        assert!(last().contains("overlaps"), "{}", last());
        // A row stride below the row length.
        let rc = dense(p, wi - 1, Some(&w2), wi, p.add(w), ld, 1);
        assert_eq!(rc, 1);
        assert!(last().contains("ldx"), "{}", last());
        // One linear whose width is not the output's.
        let mut y = vec![0.0f32; rows * w];
        let rc = dense(p, ld, None, wi, y.as_mut_ptr(), wi, 0);
        assert_eq!(rc, 1);
        assert!(last().contains("must equal hidden"), "{}", last());
        // Accumulating after an activation.
        let mut h = vec![0.0f32; rows * hid];
        let rc = dense(p, ld, None, hi, h.as_mut_ptr(), hi, 1);
        assert_eq!(rc, 1);
        assert!(last().contains("no activation"), "{}", last());
    }
}

#[test]
fn dense_pair_equals_the_safe_wrapper_and_checks_overlap() {
    use reformc_runtime::dense::{Layer, Norm, Pair};
    use reformc_runtime::Activation::{None as Identity, Relu};
    let mut r = Data::new(6);
    let (rows, w, o1, o2) = (29usize, 12usize, 7usize, 9usize);
    let state = r.vec(rows * 2 * w, 1.0);
    let (g, b) = (r.vec(w, 1.0), r.vec(w, 1.0));
    let (w1, b1, w2) = (r.vec(o1 * w, 1.0), r.vec(o1, 1.0), r.vec(o2 * w, 1.0));
    let (ri, wi, ld) = (rows as i64, w as i64, 2 * w as i64);
    // rc_dense_pair_f32 of the high halves of `state` (LN, w1 + b1 with relu, w2)
    // into y1 (o1 wide, row stride ld1) and y2 (o2 wide, contiguous).
    let pair = |x: *const f32, y1: *mut f32, ld1: i64, y2: *mut f32| {
        // SAFETY: every caller passes extents valid for these sizes.
        unsafe {
            rc_dense_pair_f32(
                x,
                ld,
                ri,
                wi,
                g.as_ptr(),
                b.as_ptr(),
                1e-5,
                w1.as_ptr(),
                b1.as_ptr(),
                o1 as i64,
                1,
                y1,
                ld1,
                w2.as_ptr(),
                null(),
                o2 as i64,
                0,
                y2,
                o2 as i64,
            )
        }
    };
    let (mut y1, mut y2) = (vec![0.0f32; rows * (o1 + 2)], vec![0.0f32; rows * o2]);
    // SAFETY: state holds rows x 2w values; x starts at the high half.
    let x = unsafe { state.as_ptr().add(w) };
    let rc = pair(x, y1.as_mut_ptr(), o1 as i64 + 2, y2.as_mut_ptr());
    assert_eq!(rc, 0, "{}", last());
    let hi: Vec<f32> = state.chunks(2 * w).flat_map(|r| r[w..].to_vec()).collect();
    let want = Pair {
        norm: Some(Norm {
            w: &g,
            b: &b,
            eps: 1e-5,
        }),
        first: Layer {
            w: &w1,
            out: o1,
            b: Some(&b1),
            act: Relu,
        },
        second: Layer {
            w: &w2,
            out: o2,
            b: None,
            act: Identity,
        },
    };
    let (mut want1, mut want2) = (vec![0.0f32; rows * o1], vec![0.0f32; rows * o2]);
    reformc_runtime::dense::dense_pair(&want, &hi, rows, w, &mut want1, &mut want2).unwrap();
    let got1: Vec<f32> = y1.chunks(o1 + 2).flat_map(|r| r[..o1].to_vec()).collect();
    assert_eq!(bits(&got1), bits(&want1));
    assert_eq!(bits(&y2), bits(&want2));
    let mut big = vec![0.0f32; rows * (o1 + o2)];
    let p = big.as_mut_ptr();
    // SAFETY (errors): every pointer is valid for the extents passed.
    unsafe {
        // The two destinations interleave (columns of one buffer).
        let rc = pair(x, p, (o1 + o2) as i64, p.add(o1));
        assert_eq!(rc, 1);
        assert!(last().contains("y2 overlaps y1"), "{}", last());
        // A destination over the input (refused before anything is written).
        let mut s2 = state.clone();
        let xs = s2.as_mut_ptr().add(w);
        let rc = pair(xs, xs, o1 as i64, y2.as_mut_ptr());
        assert_eq!(rc, 1);
        assert!(last().contains("y1 overlaps x"), "{}", last());
        // A destination stride below its row length.
        let rc = pair(x, y1.as_mut_ptr(), o1 as i64 - 1, y2.as_mut_ptr());
        assert_eq!(rc, 1);
        assert!(last().contains("ldy1"), "{}", last());
    }
}
