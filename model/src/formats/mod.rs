//! Number formats of DeepSeek-V4 checkpoints and QAT simulations.
//!
//! * [`fp8`]: FP8 E4M3 ("fn": max 448, no infinities) with UE8M0 block scales — the
//!   non-expert projections (128×128 blocks), the KV fake-quant (1×64) and activation
//!   quantisation (1×128).
//! * [`mxfp4`]: E2M1 elements packed two per byte (element 2k in the low nibble) with one
//!   UE8M0 scale per 32 inputs — routed experts and the indexer QK fake-quant.
//!
//! Scales are powers of two stored as one unsigned byte `b` meaning `2^(b − 127)`.
//! Every exponent below is read from the fp32 bit pattern, exactly as the reference
//! kernels do, so that results are bit-identical to them (a float `log2` differs just
//! above powers of two).

pub mod fp8;
pub mod mxfp4;

/// Value of a UE8M0 scale byte: `2^(b − 127)`; `0xFF` is NaN; `0` is the subnormal `2^−127`.
#[inline]
pub fn e8m0_to_f32(b: u8) -> f32 {
    match b {
        0xFF => f32::NAN,
        0 => f32::from_bits(0x0040_0000),
        _ => f32::from_bits((b as u32) << 23),
    }
}

/// Exponent `e` of the smallest power of two `2^e >= x` for finite `x >= 0`, read from
/// the fp32 bits: exponent field − 127, plus one when the mantissa is non-zero. A zero or
/// subnormal `x` has exponent field 0 and so gives −127 (or −126), as in the kernels.
#[inline]
pub fn ceil_pow2_exponent(x: f32) -> i32 {
    let bits = x.to_bits();
    let field = ((bits >> 23) & 0xFF) as i32;
    let mantissa = bits & 0x7F_FFFF;
    field - 127 + i32::from(mantissa != 0)
}

/// Scale byte for exponent `e`, clamped to the representable range; NaN (`0xFF`) above it.
#[inline]
pub fn e8m0_from_exponent(e: i32) -> u8 {
    if e > 127 {
        0xFF
    } else {
        (e.max(-127) + 127) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_values() {
        assert_eq!(e8m0_to_f32(127), 1.0);
        assert_eq!(e8m0_to_f32(128), 2.0);
        assert_eq!(e8m0_to_f32(126), 0.5);
        assert_eq!(e8m0_to_f32(1), 2f32.powi(-126));
        assert_eq!(e8m0_to_f32(0), 2f32.powi(-127));
        assert!(e8m0_to_f32(255).is_nan());
    }

    #[test]
    fn ceil_exponent_from_bits() {
        assert_eq!(ceil_pow2_exponent(1.0), 0);
        assert_eq!(ceil_pow2_exponent(1.000_000_1), 1);
        assert_eq!(ceil_pow2_exponent(0.75), 0);
        assert_eq!(ceil_pow2_exponent(0.0), -127);
        assert_eq!(e8m0_from_exponent(-200), 0);
        assert_eq!(e8m0_from_exponent(128), 0xFF);
    }
}

/// `x` rounded to the nearest integer, ties to even, for `|x| < 2^22` — exactly
/// `f32::round_ties_even` there (except that a negative `x` rounding to zero gives +0; the
/// callers round magnitudes), but inline arithmetic (adding and removing 1.5·2^23 leaves the
/// sum in a binade of spacing 1, where the hardware's default rounding is ties-to-even), so the
/// quantisation loops vectorise instead of calling `rintf` per value on baseline x86-64.
#[inline(always)]
pub fn round_half_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    (x + MAGIC) - MAGIC
}

#[cfg(test)]
mod round_tests {
    #[test]
    fn small_rounding_is_round_ties_even() {
        let mut x = -4_194_303.5f32;
        while x < 4_194_304.0 {
            for v in [x, x + 0.25, x + 0.5, x + 0.75] {
                assert_eq!(super::round_half_even_small(v).to_bits(), v.round_ties_even().to_bits(), "{v}");
            }
            x += 9_999.75;
        }
        for v in [0.5f32, 1.5, 2.5, -1.5, -2.5, 11.5, 12.0, 7.499_999_5, 0.0, 1e-8] {
            assert_eq!(super::round_half_even_small(v), v.round_ties_even(), "{v}");
        }
    }
}
