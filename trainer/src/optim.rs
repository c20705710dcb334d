//! Optimizers: Muon with the DeepSeek-V4 hybrid Newton–Schulz schedule for matrices, AdamW
//! for embeddings, the head, RMSNorm weights, mHC gating factors/biases, attention sinks and
//! compressor position biases. State lives in plain f32 arrays (saved with checkpoints, so a
//! resumed run is bit-identical).
//!
//! Muon (V4, report Algorithm 1): `M ← μM + G; O = NS(μM + G) · sqrt(max(n, m)) · γ;
//! W ← W(1 − ηλ) − ηO`, with NS = 8 × (3.4445, −4.7750, 2.0315) + 2 × (2, −1.5, 0.5) and γ set
//! so the update RMS is 0.18. Every expert matrix is its own Muon parameter.
//!
//! The router bias (`ffn.gate.bias`) gets no gradient: it follows the auxiliary-loss-free
//! balancing rule `b_e += γ_b · sign(mean load − load_e)` applied by the trainers.

use crate::error::{Result, TrainError};
use model::kernels::{gemm, Mat};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The V4 hybrid schedule.
pub const HYBRID_NS: [(f32, f32, f32); 10] = [
    (3.4445, -4.7750, 2.0315),
    (3.4445, -4.7750, 2.0315),
    (3.4445, -4.7750, 2.0315),
    (3.4445, -4.7750, 2.0315),
    (3.4445, -4.7750, 2.0315),
    (3.4445, -4.7750, 2.0315),
    (3.4445, -4.7750, 2.0315),
    (3.4445, -4.7750, 2.0315),
    (2.0, -1.5, 0.5),
    (2.0, -1.5, 0.5),
];

/// Newton–Schulz orthogonalisation of a row-major `[rows, cols]` matrix (f32, the Gram
/// matrix taken on the smaller side), Frobenius-normalised with eps 1e-7.
pub fn newton_schulz(g: &[f32], rows: usize, cols: usize, schedule: &[(f32, f32, f32)]) -> Vec<f32> {
    let transposed = rows > cols;
    let (m, n) = if transposed { (cols, rows) } else { (rows, cols) };
    let mut x: Vec<f32> = if transposed { transpose(g, rows, cols) } else { g.to_vec() };
    let norm = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt() as f32;
    let s = 1.0 / (norm + 1e-7);
    x.iter_mut().for_each(|v| *v *= s);
    let mut a = vec![0f32; m * m];
    let mut a2 = vec![0f32; m * m];
    let mut b = vec![0f32; m * m];
    let mut bx = vec![0f32; m * n];
    for &(ca, cb, cc) in schedule {
        // A = X Xᵀ
        gemm(Mat::new(&x, m, n), Mat::new(&x, m, n).t(), &mut a, false, true);
        // A² (A is symmetric)
        gemm(Mat::new(&a, m, m), Mat::new(&a, m, m), &mut a2, false, true);
        // B = b A + c A²
        for ((bi, p), q) in b.iter_mut().zip(&a).zip(&a2) {
            *bi = cb * p + cc * q;
        }
        // X ← a X + B X
        gemm(Mat::new(&b, m, m), Mat::new(&x, m, n), &mut bx, false, true);
        for (xi, bi) in x.iter_mut().zip(&bx) {
            *xi = ca * *xi + bi;
        }
    }
    if transposed {
        transpose(&x, m, n)
    } else {
        x
    }
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

/// Which optimizer a parameter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Muon,
    Adamw,
    /// Not updated by gradient (router bias: balancing rule; frozen params).
    None,
}

/// Optimizer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub muon_lr: f32,
    pub adamw_lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    /// Target update RMS of Muon (0.18 in V4).
    pub update_rms: f32,
    pub muon_weight_decay: f32,
    pub adamw_weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global gradient-norm clip (0 = off).
    pub clip_norm: f32,
    /// `(pattern, group)` overrides; a pattern is a substring of the parameter name, or
    /// `*suffix` / `prefix*`; later entries win.
    pub overrides: Vec<(String, Group)>,
    /// Speed of the router-bias balancing rule.
    pub bias_update_speed: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            muon_lr: 0.02,
            adamw_lr: 3e-3,
            momentum: 0.95,
            nesterov: true,
            update_rms: 0.18,
            muon_weight_decay: 0.1,
            adamw_weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            clip_norm: 1.0,
            overrides: vec![],
            bias_update_speed: 1e-3,
        }
    }
}

fn matches(pattern: &str, name: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix('*') {
        name.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        name.starts_with(prefix)
    } else {
        name.contains(pattern)
    }
}

/// The default rule: AdamW for embeddings, head, norms, mHC gates/biases (and the head's
/// mHC projection), sinks and `ape`; none for the router bias (balanced without gradients)
/// and for the MTP block(s) (`mtp.*`: the trainers have no MTP loss, so they are carried over
/// unchanged, as the checkpoint metadata says); Muon for other matrices.
pub fn default_group(name: &str, shape: &[usize]) -> Group {
    if name.ends_with("ffn.gate.bias") || name.starts_with("mtp.") {
        return Group::None;
    }
    let adamw = name == "embed.weight"
        || name == "head.weight"
        || name.ends_with("norm.weight")
        || name.ends_with("_base")
        || name.ends_with("_scale")
        || name.contains("hc_head_")
        || name.ends_with("attn_sink")
        || name.ends_with(".ape");
    if adamw || shape.len() != 2 {
        Group::Adamw
    } else {
        Group::Muon
    }
}

/// The group of `name` under `cfg` (default rule, then overrides in order).
pub fn group_of(cfg: &OptimConfig, name: &str, shape: &[usize]) -> Group {
    let mut g = default_group(name, shape);
    for (p, og) in &cfg.overrides {
        if matches(p, name) {
            g = *og;
        }
    }
    if g == Group::Muon && shape.len() != 2 {
        g = Group::Adamw;
    }
    g
}

/// State of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamState {
    pub group: Group,
    pub shape: Vec<usize>,
    /// Muon momentum or Adam first moment.
    pub m: Vec<f32>,
    /// Adam second moment (empty for Muon).
    pub v: Vec<f32>,
}

/// Muon + AdamW over named f32 parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer {
    pub cfg: OptimConfig,
    pub step: u64,
    pub params: BTreeMap<String, ParamState>,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub clipped: bool,
}

impl Optimizer {
    /// Assign every parameter (name → shape) to its group.
    pub fn new(cfg: OptimConfig, shapes: &BTreeMap<String, Vec<usize>>) -> Self {
        let params = shapes
            .iter()
            .map(|(n, s)| {
                let group = group_of(&cfg, n, s);
                let numel: usize = s.iter().product();
                let v = if group == Group::Adamw { vec![0.0; numel] } else { vec![] };
                let m = if group == Group::None { vec![] } else { vec![0.0; numel] };
                (n.clone(), ParamState { group, shape: s.clone(), m, v })
            })
            .collect();
        Optimizer { cfg, step: 0, params }
    }

    /// Summary line per group (printed at start of training).
    pub fn describe(&self) -> String {
        let mut by: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for p in self.params.values() {
            let k = match p.group {
                Group::Muon => "muon",
                Group::Adamw => "adamw",
                Group::None => "no-grad",
            };
            let e = by.entry(k).or_default();
            e.0 += 1;
            e.1 += p.shape.iter().product::<usize>();
        }
        by.iter().map(|(k, (n, c))| format!("{k}: {n} tensors, {c} params")).collect::<Vec<_>>().join("; ")
    }

    /// One update with learning-rate multiplier `lr_scale` (schedules). `params` and `grads`
    /// are name → flat f32 data; parameters without a gradient are left alone.
    pub fn update<G: AsRef<[f32]> + Sync>(
        &mut self,
        params: &mut BTreeMap<String, Vec<f32>>,
        grads: &BTreeMap<String, G>,
        lr_scale: f32,
    ) -> Result<StepStats> {
        self.step += 1;
        let t = self.step as i32;
        // Σ g² in f64, 64 Ki-value chunks summed in parallel (then in chunk order)
        let trained: Vec<&[f32]> = grads
            .iter()
            .filter(|(n, _)| self.params.get(*n).is_some_and(|p| p.group != Group::None))
            .map(|(_, g)| g.as_ref())
            .collect();
        let partial: Vec<f64> = trained.par_iter().flat_map_iter(|g| g.chunks(1 << 16)).map(sum_of_squares).collect();
        let sq: f64 = partial.iter().sum();
        let norm = sq.sqrt() as f32;
        if !norm.is_finite() {
            return Err(TrainError::NonFinite("gradient norm".into()));
        }
        let clip = if self.cfg.clip_norm > 0.0 && norm > self.cfg.clip_norm { self.cfg.clip_norm / norm } else { 1.0 };
        let c = &self.cfg;
        // every parameter's update is independent: validate, then update in parallel (Muon's
        // Newton–Schulz iterations dominate the step on small models)
        let mut ws: std::collections::HashMap<&String, &mut Vec<f32>> = params.iter_mut().collect();
        let mut jobs = Vec::new();
        for (name, st) in self.params.iter_mut() {
            let (Some(g), Some(w)) = (grads.get(name).map(AsRef::as_ref), ws.remove(name)) else {
                continue;
            };
            if g.len() != w.len() {
                return Err(TrainError::Shape(format!(
                    "gradient of `{name}` has {} values, parameter {}",
                    g.len(),
                    w.len()
                )));
            }
            jobs.push((st, g, w));
        }
        jobs.par_iter_mut().for_each(|(st, g, w)| match st.group {
            Group::None => {}
            Group::Adamw => {
                let lr = c.adamw_lr * lr_scale;
                let (b1, b2, eps, wd) = (c.beta1, c.beta2, c.eps, c.adamw_weight_decay);
                let (b1c, b2c) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
                // zipped slices and local constants, so the loop vectorises
                let mv = st.m.iter_mut().zip(st.v.iter_mut());
                for ((wi, &gi), (mi, vi)) in w.iter_mut().zip(g.iter()).zip(mv) {
                    let gi = gi * clip;
                    *mi = b1 * *mi + (1.0 - b1) * gi;
                    *vi = b2 * *vi + (1.0 - b2) * gi * gi;
                    let upd = (*mi / b1c) / ((*vi / b2c).sqrt() + eps);
                    *wi -= lr * (upd + wd * *wi);
                }
            }
            Group::Muon => {
                let lr = c.muon_lr * lr_scale;
                let (rows, cols) = (st.shape[0], st.shape[1]);
                let mu = c.momentum;
                for (mi, &gi) in st.m.iter_mut().zip(g.iter()) {
                    *mi = mu * *mi + gi * clip;
                }
                let u: Vec<f32> = if c.nesterov {
                    st.m.iter().zip(g.iter()).map(|(m, gi)| c.momentum * m + gi * clip).collect()
                } else {
                    st.m.clone()
                };
                let o = newton_schulz(&u, rows, cols, &HYBRID_NS);
                let scale = (rows.max(cols) as f32).sqrt() * c.update_rms;
                let decay = 1.0 - lr * c.muon_weight_decay;
                for (wi, &oi) in w.iter_mut().zip(o.iter()) {
                    *wi = *wi * decay - lr * scale * oi;
                }
            }
        });
        Ok(StepStats { grad_norm: norm, clipped: clip < 1.0 })
    }
}

/// `Σ v²` in f64 over eight independent lanes (so it vectorises), lanes summed in order.
fn sum_of_squares(c: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut it = c.chunks_exact(8);
    for ch in &mut it {
        for (l, &v) in lanes.iter_mut().zip(ch) {
            *l += (v as f64) * (v as f64);
        }
    }
    let tail: f64 = it.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
    lanes.iter().sum::<f64>() + tail
}

/// Warmup then cosine decay to `min_ratio` of the base rate.
pub fn lr_schedule(step: u64, warmup: u64, total: u64, min_ratio: f32) -> f32 {
    let warm = if warmup > 0 { ((step + 1) as f32 / warmup as f32).min(1.0) } else { 1.0 };
    let progress = if total > warmup {
        ((step.saturating_sub(warmup)) as f32 / (total - warmup) as f32).clamp(0.0, 1.0)
    } else {
        0.0
    };
    warm * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_the_v4_split() {
        let g = |n: &str, s: &[usize]| default_group(n, s);
        assert_eq!(g("embed.weight", &[320, 64]), Group::Adamw);
        assert_eq!(g("head.weight", &[320, 64]), Group::Adamw);
        assert_eq!(g("layers.0.attn_norm.weight", &[64]), Group::Adamw);
        assert_eq!(g("layers.0.hc_attn_base", &[24]), Group::Adamw);
        assert_eq!(g("layers.0.hc_attn_scale", &[3]), Group::Adamw);
        assert_eq!(g("layers.0.hc_attn_fn", &[24, 256]), Group::Muon);
        assert_eq!(g("hc_head_fn", &[4, 256]), Group::Adamw);
        assert_eq!(g("layers.0.ffn.experts.3.w1.weight", &[32, 64]), Group::Muon);
        assert_eq!(g("layers.2.ffn.gate.bias", &[4]), Group::None);
        let cfg = OptimConfig { overrides: vec![("*hc_attn_fn".into(), Group::Adamw)], ..Default::default() };
        assert_eq!(group_of(&cfg, "layers.0.hc_attn_fn", &[24, 256]), Group::Adamw);
    }

    #[test]
    fn decoupled_decay_uses_base_lr() {
        // A zero momentum + zero gradient gives NS(0) = 0, so only the decay acts.
        let shapes: BTreeMap<String, Vec<usize>> = [("w".to_string(), vec![2, 3])].into();
        let cfg = OptimConfig { muon_lr: 0.1, muon_weight_decay: 0.5, clip_norm: 0.0, ..Default::default() };
        let mut opt = Optimizer::new(cfg, &shapes);
        let mut p: BTreeMap<String, Vec<f32>> = [("w".to_string(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])].into();
        let g: BTreeMap<String, Vec<f32>> = [("w".to_string(), vec![0.0; 6])].into();
        opt.update(&mut p, &g, 1.0).unwrap();
        for (a, b) in p["w"].iter().zip([1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]) {
            assert!((a - b * 0.95).abs() < 1e-6);
        }
    }

    #[test]
    fn sum_of_squares_is_the_plain_f64_sum() {
        for n in [0usize, 1, 7, 8, 9, 1000, 1003] {
            let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
            let want: f64 = v.iter().map(|&x| (x as f64) * (x as f64)).sum();
            assert!((sum_of_squares(&v) - want).abs() <= 1e-12 * want.max(1.0), "n = {n}");
        }
    }

    #[test]
    fn update_rms_is_the_target() {
        // For a full-rank random gradient NS gives a near-orthogonal matrix; the update RMS
        // is then ≈ γ = 0.18 (exactly for an exact polar factor).
        let (r, c) = (16, 64);
        let g: Vec<f32> = (0..r * c).map(|i| (i * 7919 % 1009) as f32 / 1009.0 - 0.5).collect();
        let o = newton_schulz(&g, r, c, &HYBRID_NS);
        let scale = (r.max(c) as f32).sqrt() * 0.18;
        let rms = (o.iter().map(|v| (v * scale).powi(2)).sum::<f32>() / o.len() as f32).sqrt();
        assert!((rms - 0.18).abs() < 0.005, "rms {rms}");
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((lr_schedule(0, 10, 100, 0.1) - 0.1).abs() < 1e-6);
        assert!((lr_schedule(9, 10, 100, 0.1) - 1.0).abs() < 1e-6);
        assert!((lr_schedule(100, 10, 100, 0.1) - 0.1).abs() < 1e-6);
        assert!(lr_schedule(55, 10, 100, 0.1) < 0.6);
    }
}
