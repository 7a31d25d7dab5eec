//! Decoding 16-bit floats (IEEE half and bfloat16) to `f32`.
//!
//! Checkpoints are often saved in F16 or BF16; reformc computes in F32 (or
//! F64), so it widens them at load. Both conversions are exact: every F16 and
//! BF16 value is representable in F32.

/// Widens an IEEE 754 binary16 value (given as its bits) to `f32`, exactly,
/// subnormals, infinities and NaN included.
///
/// ```
/// use reformc_frontend::half::f16_to_f32;
/// assert_eq!(f16_to_f32(0x3c00), 1.0);
/// assert_eq!(f16_to_f32(0xc000), -2.0);
/// assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24)); // the smallest subnormal
/// ```
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exp = u32::from((bits >> 10) & 0x1f);
    let man = u32::from(bits & 0x3ff);
    let magnitude = match (exp, man) {
        (0, 0) => 0,
        // Subnormal: man · 2^-24, exact in f32's normal range.
        (0, m) => return sign_of(bits) * (m as f32) * 2f32.powi(-24),
        (0x1f, 0) => 0xff << 23,
        // NaN: keep the payload (quiet bit included) in f32's mantissa.
        (0x1f, m) => (0xff << 23) | (m << 13),
        (e, m) => ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(sign | magnitude)
}

/// +1.0 or -1.0 from a binary16 sign bit.
fn sign_of(bits: u16) -> f32 {
    if bits >> 15 == 1 {
        -1.0
    } else {
        1.0
    }
}

/// Widens a bfloat16 value (given as its bits) to `f32`: bfloat16 is the top
/// half of an `f32`.
///
/// ```
/// use reformc_frontend::half::bf16_to_f32;
/// assert_eq!(bf16_to_f32(0x3f80), 1.0);
/// assert_eq!(bf16_to_f32(0xc0a0), -5.0);
/// ```
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_special_values() {
        assert_eq!(f16_to_f32(0x0000).to_bits(), 0);
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000, "negative zero");
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x7bff), 65504.0, "largest finite");
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14), "smallest normal");
        assert_eq!(
            f16_to_f32(0x03ff),
            1023.0 * 2f32.powi(-24),
            "largest subnormal"
        );
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }

    #[test]
    fn every_finite_f16_round_trips_through_f32() {
        // Rounding the widened value back to 16 bits must give the same bits:
        // checked against the definition value = (-1)^s · 2^(e-15) · (1 + m/1024).
        for bits in 0..=u16::MAX {
            let (e, m) = ((bits >> 10) & 0x1f, f64::from(bits & 0x3ff));
            if e == 0x1f {
                continue;
            }
            let magnitude = if e == 0 {
                m * 2f64.powi(-24)
            } else {
                (1.0 + m / 1024.0) * 2f64.powi(i32::from(e) - 15)
            };
            let want = if bits >> 15 == 1 {
                -magnitude
            } else {
                magnitude
            };
            assert_eq!(f64::from(f16_to_f32(bits)), want, "bits {bits:#06x}");
        }
    }

    #[test]
    fn bf16_is_the_high_half() {
        for x in [0.0f32, -1.5, 3.140625, f32::INFINITY, 1e-38] {
            let bits = (x.to_bits() >> 16) as u16;
            assert_eq!(bf16_to_f32(bits).to_bits(), x.to_bits() & 0xffff_0000);
        }
        assert!(bf16_to_f32(0x7fc0).is_nan());
    }
}
