//! Token sampling: temperature, top-k, top-p with a per-sample seeded generator.
//!
//! The recorded log-probability is `log softmax(z / T)` at the sampled token — the
//! behaviour policy before truncation; when top-k/top-p truncate, the kept set is returned so
//! the trainer can apply the same mask to π_θ (Keep Sampling Mask).

use datasets::tasks::Pcg;
use serde::{Deserialize, Serialize};

/// Sampling settings of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    /// Budget of response tokens (generated + tool results).
    pub max_tokens: usize,
    /// Stop when the decoded response ends with one of these.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_tokens: 128, stop: vec![] }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams { temperature: 0.0, max_tokens, ..Default::default() }
    }
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.max_tokens == 0 {
            return Err("max_tokens must be positive".into());
        }
        Ok(())
    }
    fn truncates(&self) -> bool {
        self.temperature > 0.0 && (self.top_k > 0 || self.top_p < 1.0)
    }
}

/// One sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    /// Token ids kept by top-k/top-p (sorted), when sampling was truncated.
    pub kept: Option<Vec<u32>>,
}

/// log-softmax of `z / t` (t = 1 for greedy), f32 with a max shift.
pub fn log_softmax(z: &[f32], t: f32) -> Vec<f32> {
    let t = if t > 0.0 { t } else { 1.0 };
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let lse = z.iter().map(|&v| ((v - m) / t).exp()).sum::<f32>().ln();
    z.iter().map(|&v| (v - m) / t - lse).collect()
}

/// Sample from logits `z` with `p` and generator `rng`.
pub fn sample(z: &[f32], p: &SamplingParams, rng: &mut Pcg) -> Sampled {
    let lp = log_softmax(z, p.temperature);
    if p.temperature == 0.0 {
        let tok = z
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best })
            .0;
        return Sampled { token: tok as u32, logprob: lp[tok], kept: None };
    }
    let mut order: Vec<usize> = (0..z.len()).collect();
    let kept: Vec<usize> = if p.truncates() {
        order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
        if p.top_k > 0 {
            order.truncate(p.top_k.min(order.len()));
        }
        if p.top_p < 1.0 {
            let mut cum = 0f32;
            let mut n = 0;
            for &i in &order {
                cum += lp[i].exp();
                n += 1;
                if cum >= p.top_p {
                    break;
                }
            }
            order.truncate(n.max(1));
        }
        order
    } else {
        order
    };
    let weights: Vec<f32> = kept.iter().map(|&i| lp[i].exp()).collect();
    let total: f32 = weights.iter().sum();
    let mut u = rng.unit() as f32 * total;
    let mut tok = kept[kept.len() - 1];
    for (&i, &w) in kept.iter().zip(&weights) {
        if u < w {
            tok = i;
            break;
        }
        u -= w;
    }
    let kept_ids = p.truncates().then(|| {
        let mut v: Vec<u32> = kept.iter().map(|&i| i as u32).collect();
        v.sort_unstable();
        v
    });
    Sampled { token: tok as u32, logprob: lp[tok], kept: kept_ids }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_truncation() {
        let z = [0.0f32, 3.0, 1.0, 2.5];
        let g = sample(&z, &SamplingParams::greedy(4), &mut Pcg::new(1));
        assert_eq!(g.token, 1);
        let p = SamplingParams { top_k: 2, ..Default::default() };
        let mut rng = Pcg::new(7);
        for _ in 0..200 {
            let s = sample(&z, &p, &mut rng);
            assert!(s.token == 1 || s.token == 3);
            assert_eq!(s.kept.as_deref(), Some(&[1u32, 3][..]));
            assert!((s.logprob - log_softmax(&z, 1.0)[s.token as usize]).abs() < 1e-6);
        }
        let pp = SamplingParams { top_p: 0.5, ..Default::default() };
        assert_eq!(sample(&z, &pp, &mut rng).kept.as_deref(), Some(&[1u32][..]));
    }

    #[test]
    fn same_seed_same_samples_and_frequencies_follow_probabilities() {
        let z = [0.0f32, 1.0, 2.0];
        let p = SamplingParams::default();
        let a: Vec<u32> = (0..50).scan(Pcg::new(3), |r, _| Some(sample(&z, &p, r).token)).collect();
        let b: Vec<u32> = (0..50).scan(Pcg::new(3), |r, _| Some(sample(&z, &p, r).token)).collect();
        assert_eq!(a, b);
        let mut counts = [0usize; 3];
        let mut r = Pcg::new(9);
        for _ in 0..20000 {
            counts[sample(&z, &p, &mut r).token as usize] += 1;
        }
        let probs: Vec<f32> = log_softmax(&z, 1.0).iter().map(|l| l.exp()).collect();
        for i in 0..3 {
            assert!((counts[i] as f32 / 20000.0 - probs[i]).abs() < 0.015, "{counts:?}");
        }
    }
}
