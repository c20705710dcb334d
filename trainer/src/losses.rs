//! Losses: per-token log-probabilities (fused log-softmax + gather with an optional Keep
//! Sampling Mask), masked cross-entropy for SFT, and the GRPO family.
//!
//! Keep Sampling Mask (algorithms.md §5.5): with the kept set `K` of a truncated sample,
//!
//! ```text
//! log π_θ(x | K) = z_x / τ − lse_{i∈K}(z_i / τ)         ∂/∂z_i = ([i = x] − π_θ(i | K)) / τ, i ∈ K
//! ```
//!
//! and 0 outside `K`. The sampler records `log μ` with the same formula and normaliser
//! (`rollout::sampling::log_normaliser`), so at θ = θ_old the ratio `π_θ / μ` is 1 and
//! off-policy sequence masking measures only policy staleness.

use crate::error::{Result, TrainError};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Shape, Tensor};
use serde::{Deserialize, Serialize};

/// `log softmax(z / τ)[target]` row by row; with a mask row, the softmax runs over the kept
/// ids only (the sampler's truncated support). Backward: `(onehot − p) / τ`.
struct LogProbGather {
    tau: f32,
    /// Per row: kept ids (sorted) or none.
    masks: Option<std::sync::Arc<Vec<Option<Vec<u32>>>>>,
}

impl LogProbGather {
    /// Kept ids of row `r`, if masked.
    fn kept(&self, r: usize) -> Option<&[u32]> {
        self.masks.as_ref().and_then(|m| m.get(r).and_then(|x| x.as_deref()))
    }
    /// `lse_{i∈K}(z_i / τ)` of row `r` (the sampler's normaliser, see the module docs).
    fn log_normaliser(&self, z: &[f32], r: usize) -> f32 {
        rollout::sampling::log_normaliser(z, self.kept(r), self.tau)
    }
}

/// Checks that a kept set is a non-empty set of vocabulary ids containing the target.
fn check_kept(kept: &[u32], target: usize, v: usize, r: usize) -> candle_core::Result<()> {
    if let Some(&bad) = kept.iter().find(|&&i| i as usize >= v) {
        bail!("logprob-gather: row {r} keeps id {bad} outside vocab {v}");
    }
    if !kept.contains(&(target as u32)) {
        bail!("logprob-gather: row {r}: target {target} is not in its kept set ({} ids)", kept.len());
    }
    Ok(())
}

impl CustomOp2 for LogProbGather {
    fn name(&self) -> &'static str {
        "logprob-gather"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(z), CpuStorage::U32(t)) = (s1, s2) else {
            bail!("logprob-gather: expects f32 logits and u32 targets")
        };
        let (Some((z0, z1)), Some((t0, t1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            bail!("logprob-gather: contiguous inputs")
        };
        let (z, t) = (&z[z0..z1], &t[t0..t1]);
        let dims = l1.shape().dims();
        let v = *dims.last().unwrap_or(&1);
        let n = t.len();
        if z.len() != n * v {
            bail!("logprob-gather: {} logits for {n} targets of vocab {v}", z.len());
        }
        let mut out = Vec::with_capacity(n);
        for r in 0..n {
            let row = &z[r * v..(r + 1) * v];
            let tok = t[r] as usize;
            if tok >= v {
                bail!("logprob-gather: target {tok} outside vocab {v}");
            }
            if let Some(k) = self.kept(r) {
                check_kept(k, tok, v, r)?;
            }
            out.push(row[tok] / self.tau - self.log_normaliser(row, r));
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
    fn bwd(
        &self,
        z: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = z.dims().to_vec();
        let v = *dims.last().unwrap_or(&1);
        let zv: Vec<f32> = z.flatten_all()?.to_vec1()?;
        let tv: Vec<u32> = t.flatten_all()?.to_vec1()?;
        let gv: Vec<f32> = grad.flatten_all()?.to_vec1()?;
        let n = tv.len();
        let mut out = vec![0f32; n * v];
        for r in 0..n {
            let row = &zv[r * v..(r + 1) * v];
            let lse = self.log_normaliser(row, r);
            let g = gv[r] / self.tau;
            let o = &mut out[r * v..(r + 1) * v];
            match self.kept(r) {
                Some(k) => {
                    for &i in k {
                        if let Some(x) = o.get_mut(i as usize) {
                            *x = -g * (row[i as usize] / self.tau - lse).exp();
                        }
                    }
                }
                None => {
                    for (x, zi) in o.iter_mut().zip(row) {
                        *x = -g * (zi / self.tau - lse).exp();
                    }
                }
            }
            o[tv[r] as usize] += g;
        }
        Ok((Some(Tensor::from_vec(out, dims, z.device())?), None))
    }
}

/// Log-probabilities `[N]` of `targets` under `logits [N, V]` at temperature `tau` (≤ 0 means
/// 1, as in the sampler), with optional per-row kept sets (Keep Sampling Mask): a row's
/// softmax then runs over its kept ids, which must contain its target.
pub fn token_logprobs(
    logits: &Tensor,
    targets: &[u32],
    tau: f32,
    masks: Option<Vec<Option<Vec<u32>>>>,
) -> Result<Tensor> {
    let n = targets.len();
    if logits.dim(0)? != n {
        return Err(TrainError::Shape(format!("{} logit rows for {n} targets", logits.dim(0)?)));
    }
    if let Some(m) = masks.as_ref().filter(|m| m.len() != n) {
        return Err(TrainError::Shape(format!("{} kept sets for {n} targets", m.len())));
    }
    let t = Tensor::from_slice(targets, n, logits.device())?;
    let op = LogProbGather { tau: rollout::sampling::logprob_temperature(tau), masks: masks.map(std::sync::Arc::new) };
    Ok(logits.contiguous()?.apply_op2(&t, op)?)
}

/// Masked mean negative log-likelihood (SFT).
pub fn sft_loss(logprobs: &Tensor, weights: &[f32]) -> Result<Tensor> {
    let total: f32 = weights.iter().sum();
    if total <= 0.0 {
        return Err(TrainError::Input("SFT batch has no trainable tokens".into()));
    }
    let w = Tensor::from_slice(weights, weights.len(), logprobs.device())?;
    Ok(((logprobs * w)?.sum_all()? / -(total as f64))?)
}

/// KL estimator of the penalty towards the reference policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlKind {
    None,
    /// `log π − log π_ref`
    K1,
    /// `½ (log π − log π_ref)²`
    K2,
    /// `π_ref/π − log(π_ref/π) − 1`
    K3,
    /// DeepSeek-V3.2 unbiased: `(π/π_old) · k3`.
    K3Is,
}

/// How token losses become the batch loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// DAPO: mean over all tokens.
    TokenMean,
    /// GRPO: mean over sequences of each sequence's token mean.
    SeqMeanTokenMean,
    /// Dr. GRPO: mean over sequences of token sums divided by a constant length.
    SeqMeanTokenSum,
}

/// GRPO-family loss settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoLossConfig {
    pub clip_low: f32,
    pub clip_high: f32,
    pub kl: KlKind,
    pub beta: f32,
    pub aggregation: Aggregation,
    /// Normaliser of `seq-mean-token-sum`.
    pub norm_len: f32,
    /// Off-policy sequence masking threshold δ (None = off).
    pub opsm_delta: Option<f32>,
}

impl Default for GrpoLossConfig {
    fn default() -> Self {
        GrpoLossConfig {
            clip_low: 0.2,
            clip_high: 0.28,
            kl: KlKind::K3Is,
            beta: 0.0,
            aggregation: Aggregation::TokenMean,
            norm_len: 128.0,
            opsm_delta: Some(0.1),
        }
    }
}

/// Diagnostics of one GRPO loss evaluation.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GrpoStats {
    pub clip_fraction: f32,
    pub kl_mean: f32,
    pub ratio_mean: f32,
    pub masked_sequences: usize,
}

/// Per-sequence advantages: `(R − mean)/(std + eps)` with the unbiased std, or Dr. GRPO's
/// `R − mean` when `use_std` is false. All-equal rewards give zeros.
pub fn advantages(rewards: &[f32], use_std: bool, eps: f32) -> Vec<f32> {
    let n = rewards.len();
    if n == 0 {
        return vec![];
    }
    let mean = rewards.iter().sum::<f32>() / n as f32;
    if !use_std {
        return rewards.iter().map(|r| r - mean).collect();
    }
    let var = if n > 1 { rewards.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / (n - 1) as f32 } else { 0.0 };
    let sd = var.sqrt();
    rewards.iter().map(|r| (r - mean) / (sd + eps)).collect()
}

/// GRPO loss over response tokens of several sequences.
///
/// `new_lp` holds the policy log-probs of every counted token (concatenated per sequence in
/// order); `seq_lens[i]` tokens belong to sequence `i`; `old_lp` are the sampler's, `ref_lp`
/// the reference policy's (needed for the KL term), `adv[i]` the sequence advantage.
pub fn grpo_loss(
    new_lp: &Tensor,
    old_lp: &[f32],
    ref_lp: Option<&[f32]>,
    seq_lens: &[usize],
    adv: &[f32],
    cfg: &GrpoLossConfig,
) -> Result<(Tensor, GrpoStats)> {
    let n: usize = seq_lens.iter().sum();
    if new_lp.dims() != [n] || old_lp.len() != n || adv.len() != seq_lens.len() {
        return Err(TrainError::Shape(format!(
            "grpo_loss: {n} tokens, new {:?}, old {}, {} advantages for {} sequences",
            new_lp.dims(),
            old_lp.len(),
            adv.len(),
            seq_lens.len()
        )));
    }
    if n == 0 {
        return Err(TrainError::Input("grpo_loss: no tokens".into()));
    }
    let dev = new_lp.device();
    let newv: Vec<f32> = new_lp.to_vec1()?;
    // Off-policy sequence masking on detached values.
    let mut seq_mask = vec![1f32; seq_lens.len()];
    let mut off = 0;
    let mut masked = 0;
    for (i, &l) in seq_lens.iter().enumerate() {
        if let Some(delta) = cfg.opsm_delta {
            let mean: f32 = (off..off + l).map(|k| old_lp[k] - newv[k]).sum::<f32>() / l.max(1) as f32;
            if adv[i] < 0.0 && mean > delta {
                seq_mask[i] = 0.0;
                masked += 1;
            }
        }
        off += l;
    }
    let tok_adv: Vec<f32> = seq_lens.iter().zip(adv).flat_map(|(&l, &a)| std::iter::repeat_n(a, l)).collect();
    let a = Tensor::from_vec(tok_adv.clone(), n, dev)?;
    let old = Tensor::from_slice(old_lp, n, dev)?;
    let ratio = (new_lp - &old)?.exp()?;
    let surr1 = (&ratio * &a)?;
    let surr2 = (ratio.clamp(1.0 - cfg.clip_low as f64, 1.0 + cfg.clip_high as f64)? * &a)?;
    let obj = surr1.minimum(&surr2)?;
    let use_kl = cfg.kl != KlKind::None && cfg.beta != 0.0;
    let (obj, kl_mean) = if !use_kl {
        (obj, 0.0)
    } else {
        let r = ref_lp.ok_or_else(|| TrainError::Input("KL penalty needs reference log-probs".into()))?;
        if r.len() != n {
            return Err(TrainError::Shape(format!("{} reference log-probs for {n} tokens", r.len())));
        }
        let rf = Tensor::from_slice(r, n, dev)?;
        let d = (&rf - new_lp)?; // log(π_ref/π)
        let k3 = ((d.exp()? - &d)? - 1.0)?;
        let kl = match cfg.kl {
            KlKind::K1 => d.neg()?,
            KlKind::K2 => (d.sqr()? * 0.5)?,
            KlKind::K3 => k3,
            KlKind::K3Is | KlKind::None => (&ratio * k3)?,
        };
        let km = kl.mean_all()?.to_scalar::<f32>()?;
        ((obj - (kl * cfg.beta as f64)?)?, km)
    };
    let token_mask: Vec<f32> = seq_lens.iter().zip(&seq_mask).flat_map(|(&l, &m)| std::iter::repeat_n(m, l)).collect();
    let tok_loss = (obj.neg()? * Tensor::from_vec(token_mask, n, dev)?)?;
    let weights: Vec<f32> = match cfg.aggregation {
        Aggregation::TokenMean => vec![1.0 / n as f32; n],
        Aggregation::SeqMeanTokenMean => {
            seq_lens.iter().flat_map(|&l| std::iter::repeat_n(1.0 / (seq_lens.len() as f32 * l as f32), l)).collect()
        }
        Aggregation::SeqMeanTokenSum => vec![1.0 / (seq_lens.len() as f32 * cfg.norm_len); n],
    };
    let loss = (tok_loss * Tensor::from_vec(weights, n, dev)?)?.sum_all()?;
    let rv: Vec<f32> = ratio.to_vec1()?;
    let clipped = rv
        .iter()
        .zip(&tok_adv)
        .filter(|(r, a)| (**a > 0.0 && **r > 1.0 + cfg.clip_high) || (**a < 0.0 && **r < 1.0 - cfg.clip_low))
        .count();
    let stats = GrpoStats {
        clip_fraction: clipped as f32 / n as f32,
        kl_mean,
        ratio_mean: rv.iter().sum::<f32>() / n as f32,
        masked_sequences: masked,
    };
    Ok((loss, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn advantage_vectors() {
        let a = advantages(&[1.0, 0.0, 0.0, 1.0], true, 0.0);
        for (x, y) in a.iter().zip([0.8660254f32, -0.8660254, -0.8660254, 0.8660254]) {
            assert!((x - y).abs() < 1e-6);
        }
        assert_eq!(advantages(&[1.0, 0.0, 0.0, 1.0], false, 0.0), vec![0.5, -0.5, -0.5, 0.5]);
        assert_eq!(advantages(&[2.0, 2.0], true, 1e-6), vec![0.0, 0.0]);
    }

    #[test]
    fn clip_branches_and_aggregation() {
        let dev = Device::Cpu;
        // A = +1, r = 1.3 → 1.28 (no grad); A = +1, r = 0.7 → 0.7; A = −1, r = 0.7 → −0.8; A = −1, r = 1.3 → −1.3
        let cfg = GrpoLossConfig {
            kl: KlKind::None,
            aggregation: Aggregation::TokenMean,
            opsm_delta: None,
            ..Default::default()
        };
        for (r, a, want, dwant) in
            [(1.3f32, 1.0f32, 1.28f32, 0.0f32), (0.7, 1.0, 0.7, 1.0), (0.7, -1.0, -0.8, 0.0), (1.3, -1.0, -1.3, -1.0)]
        {
            let new = Var::new(&[r.ln()], &dev).unwrap();
            let (loss, _) = grpo_loss(new.as_tensor(), &[0.0], None, &[1], &[a], &cfg).unwrap();
            assert!((loss.to_scalar::<f32>().unwrap() + want).abs() < 1e-5);
            let g = loss.backward().unwrap();
            // d(−obj)/d(log r) = −dobj/dr · r
            let gr = g.get(new.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
            assert!((gr + dwant * r).abs() < 1e-5, "r {r} a {a}: {gr}");
        }
        // aggregation: per-token losses [1,1] and [2,2,2,2] (ratio 1, advantages −1 and −2)
        let new = Tensor::zeros(6, candle_core::DType::F32, &dev).unwrap();
        let lens = [2, 4];
        let adv = [-1.0, -2.0];
        let agg = |a| {
            grpo_loss(
                &new,
                &[0.0; 6],
                None,
                &lens,
                &adv,
                &GrpoLossConfig {
                    aggregation: a,
                    norm_len: 4.0,
                    kl: KlKind::None,
                    opsm_delta: None,
                    ..Default::default()
                },
            )
            .unwrap()
            .0
            .to_scalar::<f32>()
            .unwrap()
        };
        assert!((agg(Aggregation::SeqMeanTokenMean) - 1.5).abs() < 1e-6);
        assert!((agg(Aggregation::TokenMean) - 10.0 / 6.0).abs() < 1e-6);
        assert!((agg(Aggregation::SeqMeanTokenSum) - 1.25).abs() < 1e-6);
    }

    #[test]
    fn opsm_masks_only_negative_advantage_off_policy_sequences() {
        let dev = Device::Cpu;
        let cfg = GrpoLossConfig { kl: KlKind::None, opsm_delta: Some(0.1), ..Default::default() };
        let new = Tensor::new(&[-0.3f32, -0.1, 0.0], &dev).unwrap();
        let (_, s) = grpo_loss(&new, &[0.0; 3], None, &[3], &[-1.0], &cfg).unwrap();
        assert_eq!(s.masked_sequences, 1);
        let (_, s) = grpo_loss(&new, &[0.0; 3], None, &[3], &[1.0], &cfg).unwrap();
        assert_eq!(s.masked_sequences, 0);
        let new = Tensor::new(&[-0.2f32, -0.1, 0.0], &dev).unwrap(); // mean exactly 0.1: kept
        let (_, s) = grpo_loss(&new, &[0.0; 3], None, &[3], &[-1.0], &cfg).unwrap();
        assert_eq!(s.masked_sequences, 0);
    }

    #[test]
    fn grpo_loss_gradient_matches_finite_differences() {
        // every aggregation and KL estimator; points away from the clip kinks
        let dev = Device::Cpu;
        let new0 = [-0.9f32, -1.4, -0.3, -2.0, -0.7, -1.1, -0.5];
        let old = [-1.0f32, -1.3, -0.35, -1.9, -0.72, -1.0, -0.45];
        let reference = [-1.1f32, -1.2, -0.4, -2.1, -0.6, -1.05, -0.5];
        let lens = [3usize, 4];
        let adv = [0.8f32, -1.2];
        for aggregation in [Aggregation::TokenMean, Aggregation::SeqMeanTokenSum, Aggregation::SeqMeanTokenMean] {
            for kl in [KlKind::K1, KlKind::K2, KlKind::K3, KlKind::K3Is] {
                let cfg = GrpoLossConfig { aggregation, kl, beta: 0.05, opsm_delta: None, ..Default::default() };
                let v = Var::from_vec(new0.to_vec(), 7, &dev).unwrap();
                let (loss, _) = grpo_loss(v.as_tensor(), &old, Some(&reference), &lens, &adv, &cfg).unwrap();
                let g: Vec<f32> = loss.backward().unwrap().get(v.as_tensor()).unwrap().to_vec1().unwrap();
                let f = |x: &[f32]| -> f64 {
                    let t = Tensor::from_vec(x.to_vec(), 7, &dev).unwrap();
                    grpo_loss(&t, &old, Some(&reference), &lens, &adv, &cfg).unwrap().0.to_scalar::<f32>().unwrap()
                        as f64
                };
                for i in 0..7 {
                    let h = 1e-3f32;
                    let (mut a, mut b) = (new0.to_vec(), new0.to_vec());
                    a[i] += h;
                    b[i] -= h;
                    let fd = (f(&a) - f(&b)) / (2.0 * h as f64);
                    assert!((fd - g[i] as f64).abs() < 2e-3, "{aggregation:?}/{kl:?} token {i}: fd {fd} vs {}", g[i]);
                }
            }
        }
    }

    #[test]
    fn kept_sets_are_checked_and_scored_as_the_sampler_records() {
        let dev = Device::Cpu;
        let z = [0.3f32, -1.2, 2.0, 0.7, 1.1];
        let t = Tensor::new(&z, &dev).unwrap().reshape((1, 5)).unwrap();
        let kept = vec![0u32, 2, 4];
        let lp: Vec<f32> = token_logprobs(&t, &[4], 0.8, Some(vec![Some(kept.clone())])).unwrap().to_vec1().unwrap();
        assert_eq!(lp[0], rollout::sampling::behaviour_logprob(&z, Some(&kept), 4, 0.8), "bit for bit");
        assert!(token_logprobs(&t, &[3], 0.8, Some(vec![Some(kept)])).is_err(), "target outside its kept set");
        assert!(token_logprobs(&t, &[2], 0.8, Some(vec![Some(vec![2, 9])])).is_err(), "kept id outside the vocab");
        assert!(token_logprobs(&t, &[2], 0.8, Some(vec![])).is_err(), "one kept set per row");
    }

    #[test]
    fn logprob_gather_gradient_matches_finite_differences_with_and_without_mask() {
        let dev = Device::Cpu;
        let z0: Vec<f32> = (0..12).map(|i| ((i * 7 % 5) as f32) * 0.3 - 0.4).collect();
        for masks in [None, Some(vec![Some(vec![0u32, 2, 3]), None])] {
            for tau in [1.0f32, 2.0] {
                let z = Var::from_vec(z0.clone(), (2, 6), &dev).unwrap();
                let lp = token_logprobs(z.as_tensor(), &[2, 5], tau, masks.clone()).unwrap();
                let w = Tensor::new(&[0.7f32, -1.3], &dev).unwrap();
                let g = (lp * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let gz = g.get(z.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let f = |zz: &[f32]| -> f64 {
                    let t = Tensor::from_vec(zz.to_vec(), (2, 6), &dev).unwrap();
                    let lp: Vec<f32> = token_logprobs(&t, &[2, 5], tau, masks.clone()).unwrap().to_vec1().unwrap();
                    (lp[0] * 0.7 - lp[1] * 1.3) as f64
                };
                for i in 0..12 {
                    let mut a = z0.clone();
                    a[i] += 1e-2;
                    let mut b = z0.clone();
                    b[i] -= 1e-2;
                    let fd = (f(&a) - f(&b)) / 2e-2;
                    assert!((fd as f32 - gz[i]).abs() < 2e-3, "i {i} tau {tau}: {fd} vs {}", gz[i]);
                }
            }
        }
    }
}
