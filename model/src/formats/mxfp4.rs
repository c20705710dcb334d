//! MXFP4: E2M1 elements (codes 0..7 = {0, .5, 1, 1.5, 2, 3, 4, 6}, 8..15 the negatives),
//! one UE8M0 scale per 32 consecutive inputs along the reduction (K) dimension, packed two
//! codes per byte with element `2k` in the low nibble (PyTorch `float4_e2m1fn_x2`, the V4
//! checkpoint layout).
//!
//! Two scale rules are supported:
//! * [`ScaleRule::DeepSeekCeil`] — what the V4 kernels (`fp4_act_quant`), the indexer QAT and
//!   the golden checkpoint writer use: `amax ≥ 6·2^−126`, `X = 2^ceil(log2(amax·fp32(1/6)))`.
//!   Never saturates. This is the rule v4post writes and fake-quantises with, so the trainer's
//!   QAT weights are exactly the values the FP4 sampler decodes.
//! * [`ScaleRule::OcpFloor`] — OCP MX v1.0: `floor(log2 amax) − 2`, may saturate to ±6X.

use super::{ceil_pow2_exponent, e8m0_from_exponent, e8m0_to_f32};

/// Elements per scale block.
pub const BLOCK: usize = 32;
/// Largest E2M1 magnitude.
pub const E2M1_MAX: f32 = 6.0;

/// Value of each 4-bit code.
pub const E2M1_LUT: [f32; 16] =
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// How the shared block scale is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRule {
    DeepSeekCeil,
    OcpFloor,
}

/// Encode an already-scaled value to its E2M1 code: round half to even on the code,
/// saturate to ±6, keep the sign of values that round to zero (code 8 = −0).
#[inline]
pub fn e2m1_encode(v: f32) -> u8 {
    let sign = if v.is_sign_negative() { 8u8 } else { 0 };
    let a = v.abs();
    // Midpoints between grid values; a tie goes to the even code.
    let idx = if a.is_nan() || a <= 0.25 {
        0
    } else if a < 0.75 {
        1
    } else if a <= 1.25 {
        2
    } else if a < 1.75 {
        3
    } else if a <= 2.5 {
        4
    } else if a < 3.5 {
        5
    } else if a <= 5.0 {
        6
    } else {
        7
    };
    sign | idx
}

/// Round a scaled value onto the E2M1 grid (same rule as [`e2m1_encode`]).
#[inline]
pub fn e2m1_round(v: f32) -> f32 {
    E2M1_LUT[e2m1_encode(v) as usize]
}

/// Scale byte of a block with absolute maximum `amax` under `rule`.
pub fn scale_byte(amax: f32, rule: ScaleRule) -> u8 {
    if amax.is_nan() || amax.is_infinite() {
        return 0xFF;
    }
    match rule {
        ScaleRule::DeepSeekCeil => {
            let a = amax.max(6.0 * 2f32.powi(-126));
            e8m0_from_exponent(ceil_pow2_exponent(a * (1.0f32 / E2M1_MAX)))
        }
        ScaleRule::OcpFloor => {
            // floor(log2 amax) from the exponent field (subnormals and zero read as −127).
            let field = ((amax.to_bits() >> 23) & 0xFF) as i32;
            e8m0_from_exponent(field - 127 - 2)
        }
    }
}

/// Quantise one block (≤ 32 values): returns the scale byte and one code per element.
pub fn quantize_block(x: &[f32], rule: ScaleRule) -> (u8, Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| if v.is_nan() { f32::NAN } else { m.max(v.abs()) });
    let b = scale_byte(amax, rule);
    let s = e8m0_to_f32(b);
    let codes = x.iter().map(|v| e2m1_encode((*v / s).clamp(-E2M1_MAX, E2M1_MAX))).collect();
    (b, codes)
}

/// In-place FP4 fake quantisation in blocks of 32 (reference `fp4_act_quant(..., inplace=True)`),
/// DeepSeek scale rule. Also the QAT weight simulation, applied along each weight row.
pub fn fake_quant(x: &mut [f32]) {
    use rayon::prelude::*;
    // 32-blocks are independent: large inputs (every expert matrix under QAT) in parallel,
    // split at multiples of the block so the blocks are the same as serially
    if x.len() >= 1 << 16 {
        x.par_chunks_mut(BLOCK * 1024).for_each(fake_quant_blocks);
    } else {
        fake_quant_blocks(x);
    }
}

fn fake_quant_blocks(x: &mut [f32]) {
    for chunk in x.chunks_mut(BLOCK) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = e8m0_to_f32(scale_byte(amax, ScaleRule::DeepSeekCeil));
        for v in chunk.iter_mut() {
            *v = e2m1_round_fast((*v / s).clamp(-E2M1_MAX, E2M1_MAX)) * s;
        }
    }
}

/// Branch-free E2M1 rounding of a value already clamped to [−6, 6]: the grid has spacing
/// 0.5 below 2, 1 below 4 and 2 above, and rounding half to even on the quotient by the
/// spacing is rounding half to even on the code (the code's low bit is the quotient's), so
/// this equals [`e2m1_round`] and vectorises.
#[inline(always)]
pub fn e2m1_round_fast(v: f32) -> f32 {
    let a = v.abs();
    let step = if a < 2.0 {
        0.5
    } else if a < 4.0 {
        1.0
    } else {
        2.0
    };
    (super::round_half_even_small(a / step) * step).min(E2M1_MAX).copysign(v)
}

/// Pack codes two per byte, element `2k` in the low nibble.
pub fn pack_codes(codes: &[u8]) -> Vec<u8> {
    codes.chunks(2).map(|p| (p[0] & 0x0F) | (p.get(1).copied().unwrap_or(0) << 4)).collect()
}

/// Unpack bytes into codes (low nibble first).
pub fn unpack_codes(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|b| [b & 0x0F, b >> 4]).collect()
}

/// A packed MXFP4 weight matrix `[rows, cols]` (cols = inputs, a multiple of 32).
#[derive(Debug, Clone, PartialEq)]
pub struct Mxfp4Matrix {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols/2]`, element `2k` in the low nibble.
    pub packed: Vec<u8>,
    /// `[rows, cols/32]` UE8M0 bytes.
    pub scales: Vec<u8>,
}

impl Mxfp4Matrix {
    /// Quantise a row-major f32 matrix along its rows.
    pub fn quantize(w: &[f32], rows: usize, cols: usize, rule: ScaleRule) -> Self {
        assert_eq!(w.len(), rows * cols, "Mxfp4Matrix::quantize: data does not match shape");
        assert_eq!(cols % BLOCK, 0, "MXFP4 needs the input dimension to be a multiple of 32");
        let mut packed = Vec::with_capacity(rows * cols / 2);
        let mut scales = Vec::with_capacity(rows * cols / BLOCK);
        for block in w.chunks(BLOCK) {
            let (b, codes) = quantize_block(block, rule);
            scales.push(b);
            packed.extend(pack_codes(&codes));
        }
        Mxfp4Matrix { rows, cols, packed, scales }
    }

    /// Exact f32 values.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for (i, byte) in self.packed.iter().enumerate() {
            let s = e8m0_to_f32(self.scales[(2 * i) / BLOCK]);
            out.push(E2M1_LUT[(byte & 0x0F) as usize] * s);
            out.push(E2M1_LUT[(byte >> 4) as usize] * s);
        }
        out
    }

    /// Bytes held in memory (packed codes + scales).
    pub fn bytes(&self) -> usize {
        self.packed.len() + self.scales.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_even_codes() {
        let cases = [(0.25, 0.0), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0), (3.5, 4.0), (5.0, 4.0)];
        for (x, want) in cases {
            assert_eq!(e2m1_round(x), want, "{x}");
            assert_eq!(e2m1_round(-x), -want, "-{x}");
        }
        assert_eq!(e2m1_encode(-0.1), 8);
        assert_eq!(e2m1_round(7.9), 6.0);
    }

    #[test]
    fn fast_rounding_equals_the_code_table() {
        let mut x = -6.5f32;
        while x <= 6.5 {
            let c = x.clamp(-6.0, 6.0);
            assert_eq!(e2m1_round_fast(c).to_bits(), e2m1_round(c).to_bits(), "{x}");
            x += 1.0 / 64.0;
        }
        for x in [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.1, -0.0, 0.0, 1e-30] {
            assert_eq!(e2m1_round_fast(x).to_bits(), e2m1_round(x).to_bits(), "{x}");
        }
    }

    #[test]
    fn fake_quant_is_idempotent() {
        let mut x: Vec<f32> = (0..64).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.173).collect();
        fake_quant(&mut x);
        let once = x.clone();
        fake_quant(&mut x);
        assert_eq!(once, x);
    }

    #[test]
    fn pack_unpack_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(pack_codes(&unpack_codes(&all)), all);
    }
}
