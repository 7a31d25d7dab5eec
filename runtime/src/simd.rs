//! Vectorizable row helpers for the softmax: max, `exp(x - m)` with its sum,
//! scaling. Each body is plain Rust with a fixed 16-lane reduction order and no
//! fused multiply-add, compiled once per instruction set and dispatched at run
//! time: the bits do not depend on the ISA or the thread count.

use crate::attention::{MASK_VALUE, SELF_MASK_VALUE};
use crate::gemm::kernel;
use crate::nn::{ln_grad_row_body, ln_grad_w_row_body, ln_row_body};

/// `exp(x)` for f32 by Cody-Waite reduction and a degree-6 polynomial (Cephes
/// `expf` coefficients, about 1 ulp); 0 below -87.3 (where f32 goes subnormal).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    let xc = x.clamp(-87.336_55, 88.3);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = (xc - n * C1) - n * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = (p * r * r + r) + 1.0;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if x < -87.336_55 {
        0.0
    } else {
        e * scale
    }
}

/// Hints the CPU to bring `xs` into the L2 cache (a no-op where unsupported).
#[inline(always)]
pub(crate) fn prefetch(xs: &[f32]) {
    prefetch_lines(xs.as_ptr().cast(), std::mem::size_of_val(xs));
}

/// Asks for the cache lines of the `bytes` bytes at `p`. Reads nothing and
/// forms no reference, so `p` may be memory that other threads write.
#[inline(always)]
pub(crate) fn prefetch_lines(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes).step_by(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is baseline on x86_64; a prefetch never faults, and
        // only its address is computed (wrapping, never dereferenced).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

#[inline(always)]
fn max_body(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a = if x > *a { x } else { *a };
    }
    acc.iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

#[inline(always)]
fn exp_sub_sum_body(xs: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = xs.chunks_exact_mut(16);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *x = exp_f32(*x - m);
            *a += *x;
        }
    }
    for (a, x) in acc.iter_mut().zip(chunks.into_remainder()) {
        *x = exp_f32(*x - m);
        *a += *x;
    }
    crate::nn::fold16(acc)
}

#[inline(always)]
fn div_body(xs: &mut [f32], d: f32) {
    xs.iter_mut().for_each(|x| *x /= d);
}

#[inline(always)]
fn mul_body(xs: &mut [f32], f: f32) {
    xs.iter_mut().for_each(|x| *x *= f);
}

#[inline(always)]
fn mask_body(
    row: &mut [f32],
    qpos: u32,
    kpos: &[u32],
    keep: &[u32],
    causal: bool,
    self_mask: bool,
) {
    let n = row.len();
    let (kpos, keep) = (&kpos[..n], &keep[..n]);
    for i in 0..n {
        let kp = kpos[i];
        let masked = (keep[i] == 0) | (causal & (qpos < kp));
        let x = if masked { MASK_VALUE } else { row[i] };
        row[i] = if self_mask & (qpos == kp) {
            SELF_MASK_VALUE
        } else {
            x
        };
    }
}

/// `erfc(a/√2)` for `a ≥ 0` (Numerical Recipes' `erfcc`, fractional error
/// below 1.2e-7). The exponent `-a²/2` is formed from `a` split into 12-bit
/// halves, so it is exact up to one rounding and `exp` keeps its accuracy.
#[inline(always)]
fn erfc_over_sqrt2(a: f32) -> f32 {
    let z = a * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77f32;
    p = p * t - 0.822_152_2;
    p = p * t + 1.488_515_9;
    p = p * t - 1.135_204;
    p = p * t + 0.278_868_07;
    p = p * t - 0.186_288_06;
    p = p * t + 0.096_784_18;
    p = p * t + 0.374_091_96;
    p = p * t + 1.000_023_7;
    p = p * t - 1.265_512_2;
    // a = ah + al with ah of 12 significant bits: ah²/2 is exact.
    let ah = f32::from_bits(a.to_bits() & 0xffff_f000);
    let r = p - 0.5 * ((a - ah) * (a + ah));
    t * exp_f32(-0.5 * (ah * ah)) * exp_f32(r)
}

/// Logistic sigmoid, accurate in relative terms on both tails.
#[inline(always)]
fn sigmoid_f32(x: f32) -> f32 {
    let e = exp_f32(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

#[inline(always)]
fn gelu_body(xs: &mut [f32]) {
    for x in xs {
        let v = *x;
        let e = erfc_over_sqrt2(v.abs());
        // x·Φ(x) = x·(1 - erfc(z)/2) for x ≥ 0, x·erfc(-z)/2 below: no cancellation.
        *x = if v >= 0.0 {
            v * (1.0 - 0.5 * e)
        } else {
            0.5 * v * e
        };
    }
}

#[inline(always)]
fn gelu_new_body(xs: &mut [f32]) {
    // 0.5·x·(1 + tanh(y)) = x·σ(2y).
    const C: f32 = 0.797_884_6; // sqrt(2/π)
    for x in xs {
        let v = *x;
        *x = v * sigmoid_f32(2.0 * C * (v + 0.044715 * v * v * v));
    }
}

#[inline(always)]
fn gelu_fast_body(xs: &mut [f32]) {
    for x in xs {
        let v = *x;
        *x = v * sigmoid_f32(2.0 * (v * 0.797_884_6 * (1.0 + 0.044715 * v * v)));
    }
}

#[inline(always)]
fn silu_body(xs: &mut [f32]) {
    for x in xs {
        *x *= sigmoid_f32(*x);
    }
}

#[inline(always)]
fn quick_gelu_body(xs: &mut [f32]) {
    const K: f32 = 1.702; // Activation::QUICK_GELU_SCALE
    for x in xs {
        *x *= sigmoid_f32(K * *x);
    }
}

#[inline(always)]
fn mish_body(xs: &mut [f32]) {
    // tanh(ln(1 + e^x)) = n / (n + 2) with n = e^x (e^x + 2); written with
    // e = e^-|x| so that nothing overflows: for x >= 0 it is
    // (1 + 2e) / (1 + 2e + 2e²), below zero (e² + 2e) / (e² + 2e + 2).
    for x in xs {
        let v = *x;
        let e = exp_f32(-v.abs());
        let t = if v >= 0.0 {
            let n = 1.0 + 2.0 * e;
            n / (n + 2.0 * e * e)
        } else {
            let n = e * (e + 2.0);
            n / (n + 2.0)
        };
        *x = v * t;
    }
}

#[inline(always)]
fn tanh_body(xs: &mut [f32]) {
    for x in xs {
        let v = *x;
        let a = v.abs();
        // Below 0.4: Taylor series to x¹¹ (next term < 7e-8 relative); above:
        // 1 - 2/(e^{2a} + 1), which cancels by at most a factor 1.6 there.
        let a2 = a * a;
        let mut p = -1382.0f32 / 155_925.0;
        p = p * a2 + 62.0 / 2835.0;
        p = p * a2 - 17.0 / 315.0;
        p = p * a2 + 2.0 / 15.0;
        p = p * a2 - 1.0 / 3.0;
        let small = a + a * a2 * p;
        let large = 1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0);
        let t = if a < 0.4 { small } else { large };
        *x = if v < 0.0 { -t } else { t };
    }
}

#[inline(always)]
fn sigmoid_body(xs: &mut [f32]) {
    for x in xs {
        *x = sigmoid_f32(*x);
    }
}

macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        #[inline]
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn narrow($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                match kernel().isa {
                    // SAFETY: the kernel choice was made from the detected CPU features.
                    "avx512" => return unsafe { wide($($arg),*) },
                    // SAFETY: as above.
                    "avx2+fma" => return unsafe { narrow($($arg),*) },
                    _ => {}
                }
            }
            $body($($arg),*)
        }
    };
}

/// Runs `f` compiled for the vector instructions the GEMM kernel uses
/// (AVX-512 or AVX2+FMA), where `f` is inlined into the trampoline (a
/// closure called once is): the row loops around the kernels (copies,
/// scalings, masked updates) otherwise get the crate's SSE2 baseline. Each
/// element's arithmetic is the same IEEE operation either way (Rust does not
/// contract `a * b + c` into a fused multiply-add), so the results are too.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn narrow<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match kernel().isa {
            // SAFETY: the kernel choice was made from the detected CPU features.
            "avx512" => return unsafe { wide(f) },
            // SAFETY: as above.
            "avx2+fma" => return unsafe { narrow(f) },
            _ => {}
        }
    }
    f()
}

/// `Σ a[i]·b[i]` in 16 interleaved partial sums (lane `i % 16`), added
/// pairwise at the end: a fixed order (the same bits on every machine and
/// thread count) that vectorizes, where a sequential sum waits on each add.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    crate::nn::fold16(acc)
}

dispatch!(
    /// One layer-norm row, `yr = (xr - mean) / sqrt(var + eps) * w + b`.
    ln_row, ln_row_body, (xr: &[f32], w: &[f32], b: &[f32], eps: f32, yr: &mut [f32]) -> ()
);
dispatch!(
    /// One row of the layer norm's gradient with respect to its input.
    ln_grad_row, ln_grad_row_body, (xr: &[f32], w: &[f32], dyr: &[f32], eps: f32, dxr: &mut [f32]) -> ()
);
dispatch!(
    /// One row's `acc += dy x̂` towards the layer norm's weight gradient.
    ln_grad_w_row, ln_grad_w_row_body, (xr: &[f32], dyr: &[f32], eps: f32, acc: &mut [f32]) -> ()
);
dispatch!(
    /// The maximum of `xs` (-inf for an empty slice; NaNs are skipped).
    max, max_body, (xs: &[f32]) -> f32
);
dispatch!(
    /// `x = exp(x - m)` in place; returns the sum of the new values.
    exp_sub_sum, exp_sub_sum_body, (xs: &mut [f32], m: f32) -> f32
);
dispatch!(
    /// Masks of REFORMER.md §1.6 on one row of logits by original positions: a
    /// key with `keep == 0`, or after the query when `causal`, becomes -1e9; then
    /// the query's own position becomes -1e5 when `self_mask`.
    mask, mask_body,
    (row: &mut [f32], qpos: u32, kpos: &[u32], keep: &[u32], causal: bool, self_mask: bool) -> ()
);
dispatch!(
    /// gelu (erf form) in place.
    gelu, gelu_body, (xs: &mut [f32]) -> ()
);
dispatch!(
    /// gelu_new (tanh form) in place.
    gelu_new, gelu_new_body, (xs: &mut [f32]) -> ()
);
dispatch!(
    /// gelu_fast in place.
    gelu_fast, gelu_fast_body, (xs: &mut [f32]) -> ()
);
dispatch!(
    /// silu in place.
    silu, silu_body, (xs: &mut [f32]) -> ()
);
dispatch!(
    /// quick_gelu, x·σ(1.702·x), in place.
    quick_gelu, quick_gelu_body, (xs: &mut [f32]) -> ()
);
dispatch!(
    /// mish, x·tanh(softplus(x)), in place.
    mish, mish_body, (xs: &mut [f32]) -> ()
);
dispatch!(
    /// tanh in place.
    tanh, tanh_body, (xs: &mut [f32]) -> ()
);
dispatch!(
    /// sigmoid in place.
    sigmoid, sigmoid_body, (xs: &mut [f32]) -> ()
);
dispatch!(
    /// `x /= d` in place.
    div, div_body, (xs: &mut [f32], d: f32) -> ()
);
dispatch!(
    /// `x *= f` in place.
    mul, mul_body, (xs: &mut [f32], f: f32) -> ()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-1e9), 0.0);
        assert_eq!(exp_f32(-1e5 + 1e5), 1.0);
    }

    #[test]
    fn vector_activations_are_close_to_the_interpreter() {
        use crate::act::{Activation, Apply};
        let xs: Vec<f32> = (-2000..2000)
            .map(|i| i as f32 * 0.0075)
            .chain([0.0, -0.0, 1e-30, -1e-30])
            .collect();
        for act in [
            Activation::Gelu,
            Activation::GeluNew,
            Activation::GeluFast,
            Activation::Silu,
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Mish,
            Activation::QuickGelu,
            Activation::Relu6,
            Activation::LeakyRelu,
        ] {
            let mut got = xs.clone();
            act.apply_slice(&mut got);
            for (&x, &g) in xs.iter().zip(&got) {
                let ir_act = act;
                let want = reformc_interp::nn::activate(ir_act, f64::from(x));
                let err = (f64::from(g) - want).abs();
                // Relative 2e-6, and 1e-12 absolute for the far negative tail, where the
                // reference's f64 `1 + erf` cancels and an f32 argument of σ(-20..) carries
                // a relative error of |arg|·6e-8.
                assert!(
                    err <= 2e-6 * want.abs() + 1e-12,
                    "{act:?}({x}) = {g}, want {want}"
                );
            }
        }
    }

    #[test]
    fn dot_sums_in_lanes() {
        for n in [0usize, 1, 15, 16, 17, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).cos()).collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let got = vectorized(|| dot(&a, &b));
            assert!(
                (f64::from(got) - want).abs() < 1e-5,
                "n = {n}: {got} vs {want}"
            );
            assert_eq!(
                got.to_bits(),
                dot(&a, &b).to_bits(),
                "the same bits in every build"
            );
        }
    }

    #[test]
    fn row_helpers() {
        let mut xs: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin()).collect();
        let m = max(&xs);
        assert_eq!(m, xs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)));
        let want: f64 = xs.iter().map(|&x| ((x - m) as f64).exp()).sum();
        let s = exp_sub_sum(&mut xs, m);
        assert!((s as f64 - want).abs() < 1e-5);
        div(&mut xs, s);
        assert!((xs.iter().map(|&x| x as f64).sum::<f64>() - 1.0).abs() < 1e-6);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
