//! Rotary embeddings as V4 uses them: interleaved pairs `(x[2i], x[2i+1])` on the **last**
//! `rope_head_dim` dims; base `rope_theta` without YaRN for window-only layers, base
//! `compress_rope_theta` with YaRN for compressed layers (window q/k included).
//!
//! Arithmetic follows the reference step by step in f32 (frequencies, the `t · f` product,
//! the YaRN ramp) so angles agree to the last bit with it.

use crate::config::Config;

/// Per-pair inverse frequencies of one layer type.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFreqs {
    pub freqs: Vec<f32>,
}

impl RopeFreqs {
    /// `yarn = false`: plain `base^(-2i/d)`; `yarn = true`: YaRN-interpolated frequencies.
    pub fn new(dim: usize, base: f32, yarn: Option<(usize, f32, f32, f32)>) -> Self {
        let half = dim / 2;
        let mut freqs: Vec<f32> = (0..half).map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32)).collect();
        if let Some((original_seq_len, factor, beta_fast, beta_slow)) = yarn {
            if original_seq_len > 0 {
                // Correction range in f64, as the reference does it in Python floats.
                let corr = |rot: f64| -> f64 {
                    dim as f64 * (original_seq_len as f64 / (rot * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * (base as f64).ln())
                };
                let low = corr(beta_fast as f64).floor().max(0.0);
                let high = corr(beta_slow as f64).ceil().min(dim as f64 - 1.0);
                let (low, mut high) = (low as f32, high as f32);
                if low == high {
                    high += 0.001;
                }
                for (i, f) in freqs.iter_mut().enumerate() {
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let smooth = 1.0 - ramp;
                    *f = *f / factor * (1.0 - smooth) + *f * smooth;
                }
            }
        }
        RopeFreqs { freqs }
    }

    /// Frequencies of layer `layer` of `cfg`.
    pub fn for_layer(cfg: &Config, layer: usize) -> Self {
        if cfg.ratio(layer) > 0 {
            RopeFreqs::new(
                cfg.rope_head_dim,
                cfg.compress_rope_theta,
                Some((cfg.original_seq_len, cfg.rope_factor, cfg.beta_fast, cfg.beta_slow)),
            )
        } else {
            RopeFreqs::new(cfg.rope_head_dim, cfg.rope_theta, None)
        }
    }

    /// `(cos, sin)` of every pair at position `pos`.
    pub fn cos_sin(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        let t = pos as f32;
        self.freqs.iter().map(|f| (t * f).cos()).zip(self.freqs.iter().map(|f| (t * f).sin())).unzip()
    }
}

/// Rotate the last `2·cos.len()` dims of `x` in place (inverse = conjugate rotation).
#[inline]
pub fn apply(x: &mut [f32], cos: &[f32], sin: &[f32], inverse: bool) {
    let rd = 2 * cos.len();
    let start = x.len() - rd;
    let tail = &mut x[start..];
    for i in 0..cos.len() {
        let (a, b) = (tail[2 * i], tail[2 * i + 1]);
        let s = if inverse { -sin[i] } else { sin[i] };
        tail[2 * i] = a * cos[i] - b * s;
        tail[2 * i + 1] = a * s + b * cos[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_undoes_rotation() {
        let f = RopeFreqs::new(8, 10000.0, None);
        let (c, s) = f.cos_sin(37);
        let orig: Vec<f32> = (0..12).map(|i| i as f32 * 0.3 - 1.0).collect();
        let mut x = orig.clone();
        apply(&mut x, &c, &s, false);
        assert_eq!(&x[..4], &orig[..4], "non-rope dims untouched");
        apply(&mut x, &c, &s, true);
        for (a, b) in x.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn yarn_keeps_high_frequencies_and_scales_low_ones() {
        let plain = RopeFreqs::new(64, 160000.0, None);
        let yarn = RopeFreqs::new(64, 160000.0, Some((65536, 16.0, 32.0, 1.0)));
        assert_eq!(plain.freqs[0], yarn.freqs[0]);
        let last = plain.freqs.len() - 1;
        assert!((yarn.freqs[last] - plain.freqs[last] / 16.0).abs() < 1e-12);
    }
}
