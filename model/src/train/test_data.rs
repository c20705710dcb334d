//! Shared test inputs of the fused-op tests.

use candle_core::Tensor;

/// `n` deterministic values in `[−amp, amp]`, varied by `seed`.
pub fn data(n: usize, seed: usize, amp: f64) -> Vec<f64> {
    (0..n).map(|i| (((i * 7919 + seed * 104729) % 1009) as f64 / 1009.0 - 0.5) * 2.0 * amp).collect()
}

/// Largest `|a − b|` of two f64 tensors.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}
