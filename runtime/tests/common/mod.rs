//! Shared helpers of the runtime's integration tests: deterministic random
//! data, conversions to the interpreter's arrays, comparisons.
#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};

/// A small xorshift generator: data from a proptest-chosen seed.
pub struct Data(u64);

impl Data {
    pub fn new(seed: u64) -> Self {
        Data(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-amp, amp)).collect()
    }
    /// A `[b, l]` keep-mask with some zeros (never all zeros in a row).
    pub fn mask(&mut self, b: usize, l: usize) -> Vec<i64> {
        let mut m: Vec<i64> = (0..b * l).map(|_| i64::from(self.below(4) != 0)).collect();
        for r in 0..b {
            if l > 0 {
                m[r * l] = 1;
            }
        }
        m
    }
}

pub fn arr(shape: &[usize], data: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()
}

pub fn arr_i(shape: &[usize], data: Vec<i64>) -> ArrayD<i64> {
    ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()
}

pub fn arr64(shape: &[usize], data: &[f32]) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(shape), data.iter().map(|&x| f64::from(x)).collect()).unwrap()
}

/// Largest |a - b|.
pub fn max_abs_diff(a: &[f32], b: impl IntoIterator<Item = f64>) -> f64 {
    a.iter()
        .zip(b)
        .fold(0.0, |m, (&x, y)| m.max((f64::from(x) - y).abs()))
}

/// Asserts |got - want| <= tol for every element (same length).
pub fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (tol {tol})"
        );
    }
}

/// Bit patterns, for exact comparisons (NaN-safe).
pub fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}
