//! Token sampling: temperature, top-k, top-p with a per-sample seeded generator.
//!
//! The behaviour policy μ is the tempered softmax restricted to the kept set `K` and
//! renormalised (Keep Sampling Mask, algorithms.md §5.5):
//!
//! ```text
//! K     = top-k ∩ top-p ids of softmax(z / T)   (every id when neither truncates)
//! μ(x)  = exp(z_x / T) / Σ_{i∈K} exp(z_i / T)    x ∈ K
//! log μ(x) = z_x / T − lse_{i∈K}(z_i / T)         (recorded for the sampled token)
//! ```
//!
//! When top-k/top-p truncate, `K` is returned (sorted ids) so the trainer evaluates π_θ over
//! the same set, and the recorded value comes from [`behaviour_logprob`], whose normaliser
//! ([`log_normaliser`]: same support order, max shift, f32 sum) the trainer's log-prob op
//! also uses: the same logits give bit-identical log-probs, an on-policy ratio of exactly 1.
//! Untruncated, the recorded value is [`log_softmax`] at the token (equal to the trainer's up
//! to f32 rounding, ~1e-7). Greedy (T = 0) records the untruncated log-prob at T = 1
//! ([`logprob_temperature`]).

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
    /// `log μ(token)`: tempered, and renormalised over `kept` when sampling truncated.
    pub logprob: f32,
    /// Token ids kept by top-k/top-p (sorted), when sampling was truncated.
    pub kept: Option<Vec<u32>>,
}

/// log-softmax of `z / t` (t = 1 for greedy), f32 with a max shift.
pub fn log_softmax(z: &[f32], t: f32) -> Vec<f32> {
    let t = logprob_temperature(t);
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let lse = z.iter().map(|&v| ((v - m) / t).exp()).sum::<f32>().ln();
    z.iter().map(|&v| (v - m) / t - lse).collect()
}

/// The temperature the recorded log-probs are computed at: `t`, or 1 for greedy (`t = 0`).
/// The trainer must score π_θ at the same temperature.
pub fn logprob_temperature(t: f32) -> f32 {
    if t > 0.0 {
        t
    } else {
        1.0
    }
}

/// `lse_{i∈K}(z_i / t)` over the ids in `support` (every id when `None`; ids outside `z` are
/// skipped), with a max shift and an f32 sum in support order. `−∞` for an empty support.
pub fn log_normaliser(z: &[f32], support: Option<&[u32]>, t: f32) -> f32 {
    let t = logprob_temperature(t);
    let scaled = |i: &u32| z.get(*i as usize).map(|v| v / t);
    let vals: Vec<f32> = match support {
        Some(k) => k.iter().filter_map(scaled).collect(),
        None => z.iter().map(|v| v / t).collect(),
    };
    let m = vals.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if m == f32::NEG_INFINITY {
        return m;
    }
    let s: f32 = vals.iter().map(|v| (v - m).exp()).sum();
    m + s.ln()
}

/// `log μ(tok) = z_tok / t − lse_{i∈K}(z_i / t)`: the log-probability of `tok` under the
/// tempered softmax renormalised over `support` (the whole vocabulary when `None`).
/// The trainer's log-prob op computes the same expression with the same normaliser, so the
/// same logits give the same value bit for bit. Panics if `tok` is not an index of `z`.
pub fn behaviour_logprob(z: &[f32], support: Option<&[u32]>, tok: usize, t: f32) -> f32 {
    z[tok] / logprob_temperature(t) - log_normaliser(z, support, t)
}

/// The kept ids, by descending logit: top-k first, then the shortest prefix reaching `top_p`
/// of the untruncated probability mass `exp(lp)`, at least one id.
fn kept_ids(z: &[f32], lp: &[f32], p: &SamplingParams) -> Vec<usize> {
    let mut order: Vec<usize> = (0..z.len()).collect();
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
}

/// Sample from logits `z` with `p` and generator `rng`; the recorded log-prob is the
/// behaviour policy's (module docs).
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
    let kept: Vec<usize> = if p.truncates() { kept_ids(z, &lp, p) } else { (0..z.len()).collect() };
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
    let logprob = match &kept_ids {
        Some(k) => behaviour_logprob(z, Some(k), tok, p.temperature),
        None => lp[tok],
    };
    Sampled { token: tok as u32, logprob, kept: kept_ids }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `log μ(tok)` in f64 from the definition: softmax(z / t) over `kept`, renormalised.
    fn reference(z: &[f32], kept: &[u32], tok: u32, t: f64) -> f64 {
        let lse = kept.iter().map(|&i| (z[i as usize] as f64 / t).exp()).sum::<f64>().ln();
        z[tok as usize] as f64 / t - lse
    }

    #[test]
    fn greedy_and_truncation() {
        let z = [0.0f32, 3.0, 1.0, 2.5];
        let g = sample(&z, &SamplingParams::greedy(4), &mut Pcg::new(1));
        assert_eq!(g.token, 1);
        assert!((g.logprob - log_softmax(&z, 1.0)[1]).abs() < 1e-6, "greedy: untruncated, T = 1");
        let p = SamplingParams { top_k: 2, ..Default::default() };
        let mut rng = Pcg::new(7);
        for _ in 0..200 {
            let s = sample(&z, &p, &mut rng);
            assert!(s.token == 1 || s.token == 3);
            assert_eq!(s.kept.as_deref(), Some(&[1u32, 3][..]));
            // renormalised over the kept set, not the full-vocabulary log-prob
            assert!((s.logprob as f64 - reference(&z, &[1, 3], s.token, 1.0)).abs() < 1e-6);
        }
        let pp = SamplingParams { top_p: 0.5, ..Default::default() };
        let s = sample(&z, &pp, &mut rng);
        assert_eq!(s.kept.as_deref(), Some(&[1u32][..]));
        assert_eq!(s.logprob, 0.0, "a single kept id has probability 1");
    }

    #[test]
    fn truncated_logprobs_are_the_renormalised_tempered_distribution() {
        let z: Vec<f32> = (0..40).map(|i| ((i * 37 % 17) as f32) * 0.4 - 2.0).collect();
        for (t, top_p, top_k) in [(1.0f32, 0.9f32, 0usize), (0.7, 1.0, 5), (1.3, 0.8, 12), (1.0, 1.0, 0)] {
            let p = SamplingParams { temperature: t, top_p, top_k, ..Default::default() };
            let mut rng = Pcg::new(5);
            let mut counts = vec![0usize; z.len()];
            let n = 20000;
            let mut kept = vec![];
            for _ in 0..n {
                let s = sample(&z, &p, &mut rng);
                kept = s.kept.clone().unwrap_or_else(|| (0..z.len() as u32).collect());
                assert_eq!(s.kept.is_some(), top_p < 1.0 || top_k > 0);
                assert!(kept.binary_search(&s.token).is_ok());
                let want = reference(&z, &kept, s.token, t as f64);
                assert!((s.logprob as f64 - want).abs() < 1e-6, "T {t} p {top_p} k {top_k}: {} vs {want}", s.logprob);
                if let Some(k) = s.kept.as_deref() {
                    // what the trainer computes over the same kept set, bit for bit
                    assert_eq!(s.logprob, behaviour_logprob(&z, Some(k), s.token as usize, t));
                }
                counts[s.token as usize] += 1;
            }
            // μ sums to 1 over the kept set, and the sampler draws from it
            let mass: f64 = kept.iter().map(|&i| reference(&z, &kept, i, t as f64).exp()).sum();
            assert!((mass - 1.0).abs() < 1e-9);
            for &i in &kept {
                let f = counts[i as usize] as f64 / n as f64;
                assert!((f - reference(&z, &kept, i, t as f64).exp()).abs() < 0.015, "id {i}: {f}");
            }
        }
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
