//! FP8 E4M3 ("fn" variant: bias 7, max 448, subnormals down to 2^-9, no infinities,
//! `S.1111.111` is NaN) with UE8M0 power-of-two block scales.
//!
//! Block rule (reference `act_quant` and the checkpoint writer):
//! `amax = max(|x|, clamp_min)`, `X = 2^ceil(log2(amax · fp32(1/448)))` from the fp32 bits,
//! `q = RNE_e4m3(clamp(x / X, −448, 448))`, `dequant = q · X`.

use super::{ceil_pow2_exponent, e8m0_from_exponent, e8m0_to_f32};

/// Largest finite E4M3 magnitude.
pub const E4M3_MAX: f32 = 448.0;
/// `clamp_min` the reference uses for activation and KV blocks.
pub const ACT_AMAX_FLOOR: f32 = 1e-4;

/// Decode one E4M3 byte.
#[inline]
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = (b >> 3) & 0x0F;
    let m = (b & 0x07) as f32;
    if e == 0x0F && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    let mag = if e == 0 {
        m * (1.0 / 512.0) // subnormal: m · 2^-9
    } else {
        (1.0 + m / 8.0) * f32::from_bits(((e as u32 + 127 - 7) & 0xFF) << 23)
    };
    sign * mag
}

/// Encode `v` to E4M3 with round-to-nearest-even and saturation to ±448.
/// The sign of zero is kept (−0 → 0x80); NaN maps to 0x7F.
#[inline]
pub fn e4m3_from_f32(v: f32) -> u8 {
    if v.is_nan() {
        return 0x7F;
    }
    let sign: u8 = if v.is_sign_negative() { 0x80 } else { 0 };
    let a = v.abs().min(E4M3_MAX);
    if a == 0.0 {
        return sign;
    }
    // Quantum of the binade that contains `a` (subnormal range has a fixed quantum 2^-9).
    let field = ((a.to_bits() >> 23) & 0xFF) as i32;
    let e = field - 127; // floor(log2 a) for normal a
    let quantum_exp = if e < -6 { -9 } else { e - 3 };
    let quantum = 2f32.powi(quantum_exp);
    // exact division by a power of two; the quotient is below 16
    let units = super::round_half_even_small(a / quantum);
    let r = units * quantum;
    if r == 0.0 {
        return sign;
    }
    let rfield = ((r.to_bits() >> 23) & 0xFF) as i32 - 127;
    if rfield < -6 {
        // subnormal: value = m · 2^-9, m in 1..=7
        sign | (r * 512.0) as u8
    } else {
        let exp_bits = (rfield + 7) as u8;
        let mant = ((r / 2f32.powi(rfield) - 1.0) * 8.0) as u8;
        sign | (exp_bits << 3) | mant
    }
}

/// Round `v` to the nearest E4M3 value (RNE, saturating), without the byte round trip.
#[inline]
pub fn e4m3_round(v: f32) -> f32 {
    e4m3_to_f32(e4m3_from_f32(v))
}

/// Scale byte for a block with absolute maximum `amax` (already clamped by the caller).
#[inline]
pub fn block_scale_byte(amax: f32) -> u8 {
    if amax.is_nan() {
        return 0xFF;
    }
    e8m0_from_exponent(ceil_pow2_exponent(amax * (1.0f32 / E4M3_MAX)))
}

/// A 2-D FP8 tensor with block scales, as stored in the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Blocks {
    pub rows: usize,
    pub cols: usize,
    pub block_rows: usize,
    pub block_cols: usize,
    /// E4M3 bytes, row-major `[rows, cols]`.
    pub data: Vec<u8>,
    /// UE8M0 bytes, row-major `[ceil(rows/br), ceil(cols/bc)]`.
    pub scales: Vec<u8>,
}

impl Fp8Blocks {
    pub fn scale_cols(&self) -> usize {
        self.cols.div_ceil(self.block_cols)
    }

    /// Dequantise to f32 (`w[r,c] = e4m3(data[r,c]) · scale[r/br, c/bc]`).
    pub fn dequantize(&self) -> Vec<f32> {
        let scales: Vec<f32> = self.scales.iter().map(|&b| e8m0_to_f32(b)).collect();
        self.dequantize_with(&scales)
    }

    /// Dequantise with scales already decoded to f32 (row-major
    /// `[ceil(rows/br), ceil(cols/bc)]`; checkpoints may store them as F32 or UE8M0).
    /// Edge blocks are partial: block `(i, j)` covers rows `i·br..min((i+1)·br, rows)`.
    pub fn dequantize_with(&self, scales: &[f32]) -> Vec<f32> {
        let sc = self.scale_cols();
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            let srow = (r / self.block_rows) * sc;
            for c in 0..self.cols {
                out.push(e4m3_to_f32(self.data[r * self.cols + c]) * scales[srow + c / self.block_cols]);
            }
        }
        out
    }
}

/// Quantise a row-major `[rows, cols]` matrix with `block_rows × block_cols` blocks
/// (partial edge blocks allowed) and the given amax floor.
pub fn quantize_blocks(
    w: &[f32],
    rows: usize,
    cols: usize,
    block_rows: usize,
    block_cols: usize,
    clamp_min: f32,
) -> Fp8Blocks {
    assert_eq!(w.len(), rows * cols, "quantize_blocks: data does not match shape");
    let br_n = rows.div_ceil(block_rows);
    let bc_n = cols.div_ceil(block_cols);
    let mut scales = vec![0u8; br_n * bc_n];
    let mut data = vec![0u8; rows * cols];
    for bi in 0..br_n {
        for bj in 0..bc_n {
            let (r0, r1) = (bi * block_rows, ((bi + 1) * block_rows).min(rows));
            let (c0, c1) = (bj * block_cols, ((bj + 1) * block_cols).min(cols));
            let mut amax = 0f32;
            for r in r0..r1 {
                for c in c0..c1 {
                    amax = amax.max(w[r * cols + c].abs());
                }
            }
            let sb = block_scale_byte(amax.max(clamp_min));
            scales[bi * bc_n + bj] = sb;
            let s = e8m0_to_f32(sb);
            for r in r0..r1 {
                for c in c0..c1 {
                    let q = (w[r * cols + c] / s).clamp(-E4M3_MAX, E4M3_MAX);
                    data[r * cols + c] = e4m3_from_f32(q);
                }
            }
        }
    }
    Fp8Blocks { rows, cols, block_rows, block_cols, data, scales }
}

/// In-place FP8 fake quantisation of one contiguous block (reference `act_quant(..., inplace=True)`):
/// scale from the block amax (floored at [`ACT_AMAX_FLOOR`]), round to E4M3, multiply back.
pub fn fake_quant_block(x: &mut [f32]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(ACT_AMAX_FLOOR);
    let s = e8m0_to_f32(block_scale_byte(amax));
    for v in x.iter_mut() {
        *v = e4m3_round((*v / s).clamp(-E4M3_MAX, E4M3_MAX)) * s;
    }
}

/// FP8 fake quantisation of a vector in consecutive blocks of `block` elements.
pub fn fake_quant(x: &mut [f32], block: usize) {
    for chunk in x.chunks_mut(block) {
        fake_quant_block(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_bytes_round_trip() {
        for b in 0u8..=255 {
            let v = e4m3_to_f32(b);
            if v.is_nan() {
                assert!(b & 0x7F == 0x7F);
                continue;
            }
            assert_eq!(e4m3_from_f32(v), b, "byte {b:#04x} value {v}");
        }
    }

    #[test]
    fn rounding_and_saturation() {
        assert_eq!(e4m3_round(1.0625), 1.0); // tie → even mantissa
        assert_eq!(e4m3_round(1.1875), 1.25); // tie → even mantissa (1.25 = m 2)
        assert_eq!(e4m3_round(500.0), 448.0);
        assert_eq!(e4m3_round(-1e9), -448.0);
        assert_eq!(e4m3_round(2f32.powi(-10)), 0.0); // half of the smallest subnormal → even (0)
        assert_eq!(e4m3_round(3.0 * 2f32.powi(-10)), 2f32.powi(-8)); // 1.5 quanta → 2
        assert_eq!(e4m3_from_f32(-0.0), 0x80);
    }
}
