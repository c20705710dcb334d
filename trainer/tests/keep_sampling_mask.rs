//! Keep Sampling Mask: the sampler's recorded log-probs and the GRPO loss's π_θ are the same
//! truncated, tempered distribution, so under top-p/top-k the on-policy importance ratio is 1
//! for every token and off-policy sequence masking fires only when the policy is stale.
//!
//! Per token with kept set `K` (algorithms.md §5.5):
//!
//! ```text
//! log μ(x)  = z_old,x / T − lse_K(z_old / T)      recorded by the sampler
//! log π_θ(x) = z_θ,x / T − lse_K(z_θ / T)          scored by the loss over the same K
//! OPSM masks sequence i when Â_i < 0 and mean_t (log μ − log π_θ) > δ
//! ```

use candle_core::{DType, Device, Tensor};
use datasets::chat::Mode;
use datasets::progress::NoProgress;
use datasets::prompts::PromptSource;
use datasets::store::{read_metrics, MetricsWriter, Trajectory};
use datasets::tasks::{Pcg, Split};
use datasets::{ByteTokenizer, Tokenizer};
use model::train::{SeqInput, TrainModel, TrainOptions};
use model::weights::SeededNormal;
use model::{Config, ModelWeights};
use rollout::sampling::sample;
use rollout::{RolloutJob, SamplingParams};
use trainer::grpo::{run_grpo, GrpoConfig, LocalRollouts, Rollouts};
use trainer::losses::{grpo_loss, token_logprobs, GrpoLossConfig, KlKind};
use trainer::optim::OptimConfig;
use trainer::Session;
use trainer::TrainIo;

const TEXTS: [&str; 3] = [
    "<think>12 + 30: add the tens, then the ones.</think> The answer is 42.",
    "def double(x):\n    return x * 2\n# double(21) == 42",
    "Rewrite in upper case: the quick brown fox jumps over the lazy dog",
];

/// (temperature, top-p, top-k) of the truncated sampling cases.
const CASES: [(f32, f32, usize); 4] = [(1.0, 0.9, 0), (1.0, 1.0, 20), (0.7, 0.9, 0), (1.3, 0.95, 16)];

/// The policy's logits `[N, V]` at every position of `TEXTS`, and the positions per text.
fn policy_logits(w: &ModelWeights) -> (Tensor, Vec<usize>) {
    let m =
        TrainModel::from_weights(w, DType::F32, TrainOptions { indexer_loss: false, ..Default::default() }).unwrap();
    let seqs: Vec<Vec<u32>> = TEXTS.iter().map(|t| ByteTokenizer.encode(t)).collect();
    let out = m.forward(&seqs.iter().cloned().map(SeqInput::new).collect::<Vec<_>>()).unwrap();
    let (b, s, d) = out.hidden.dims3().unwrap();
    let idx: Vec<u32> =
        seqs.iter().enumerate().flat_map(|(bi, q)| (0..q.len()).map(move |t| (bi * s + t) as u32)).collect();
    let idx = Tensor::from_vec(idx.clone(), idx.len(), &Device::Cpu).unwrap();
    let hidden = out.hidden.reshape((b * s, d)).unwrap().index_select(&idx, 0).unwrap();
    (m.logits(&hidden).unwrap(), seqs.iter().map(Vec::len).collect())
}

/// What the sampler records for one token per logit row.
struct Behaviour {
    targets: Vec<u32>,
    logprobs: Vec<f32>,
    kept: Vec<Option<Vec<u32>>>,
}

fn behaviour(logits: &Tensor, p: &SamplingParams, seed: u64) -> Behaviour {
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    let mut rng = Pcg::new(seed);
    let mut b = Behaviour { targets: vec![], logprobs: vec![], kept: vec![] };
    for row in &rows {
        let s = sample(row, p, &mut rng);
        b.targets.push(s.token);
        b.logprobs.push(s.logprob);
        b.kept.push(s.kept);
    }
    b
}

/// Noise added to the output head of a stale policy, relative to the head's own scale: far
/// enough that every sequence drifts by more than δ = 0.1 per token.
const STALE: f64 = 4.0;

/// The policy some updates later: the output head moved by noise of `rel` × its own scale.
fn perturbed(w: &ModelWeights, rel: f64, seed: u64) -> ModelWeights {
    let mut out = w.clone();
    let head = out.tensors.get_mut("head.weight").expect("output head");
    let sd = (head.data.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / head.data.len() as f64).sqrt();
    let mut rng = SeededNormal::new(seed);
    for x in head.data.iter_mut() {
        *x += (rng.normal() * sd * rel) as f32;
    }
    out
}

fn params(t: f32, top_p: f32, top_k: usize) -> SamplingParams {
    SamplingParams { temperature: t, top_p, top_k, ..Default::default() }
}

fn opsm() -> GrpoLossConfig {
    GrpoLossConfig { kl: KlKind::None, opsm_delta: Some(0.1), ..Default::default() }
}

#[test]
fn on_policy_ratio_is_one_for_every_token_under_top_p_and_top_k() {
    let w = ModelWeights::random(&Config::tiny(), 21).unwrap();
    let (logits, lens) = policy_logits(&w);
    for (t, top_p, top_k) in CASES {
        let p = params(t, top_p, top_k);
        let b = behaviour(&logits, &p, 3);
        assert!(b.kept.iter().all(Option::is_some), "truncated sampling records a kept set per token");
        let new = token_logprobs(&logits, &b.targets, t, Some(b.kept.clone())).unwrap();
        let nv: Vec<f32> = new.to_vec1().unwrap();
        let worst = nv.iter().zip(&b.logprobs).map(|(n, o)| ((n - o).exp() - 1.0).abs()).fold(0f32, f32::max);
        eprintln!("T {t} top-p {top_p} top-k {top_k}: {} tokens, max |ratio − 1| = {worst:.1e}", nv.len());
        assert!(worst < 1e-5, "T {t} top-p {top_p} top-k {top_k}: max |ratio − 1| = {worst}");
        // the truncation matters: scored over the full vocabulary the ratio would be Z_K ≠ 1
        let full: Vec<f32> = token_logprobs(&logits, &b.targets, t, None).unwrap().to_vec1().unwrap();
        let gap = nv.iter().zip(&full).map(|(k, f)| k - f).fold(0f32, f32::max);
        assert!(gap > 0.01, "T {t} top-p {top_p} top-k {top_k}: kept sets hold almost all mass ({gap})");
        // GRPO: nothing clipped and no sequence masked, even with negative advantages
        let (_, st) = grpo_loss(&new, &b.logprobs, None, &lens, &vec![-1.0; lens.len()], &opsm()).unwrap();
        assert_eq!(st.masked_sequences, 0);
        assert_eq!(st.clip_fraction, 0.0);
        assert!((st.ratio_mean - 1.0).abs() < 1e-5, "ratio mean {}", st.ratio_mean);
    }
}

#[test]
fn a_stale_policy_trips_off_policy_sequence_masking() {
    let w = ModelWeights::random(&Config::tiny(), 21).unwrap();
    let (sampled_with, lens) = policy_logits(&w);
    let (current, _) = policy_logits(&perturbed(&w, STALE, 22));
    for (t, top_p, top_k) in CASES {
        let b = behaviour(&sampled_with, &params(t, top_p, top_k), 4);
        let new = token_logprobs(&current, &b.targets, t, Some(b.kept.clone())).unwrap();
        let nv: Vec<f32> = new.to_vec1().unwrap();
        let mut off = 0;
        for &l in &lens {
            let drift = (off..off + l).map(|k| (b.logprobs[k] - nv[k]) as f64).sum::<f64>() / l as f64;
            eprintln!("T {t} top-p {top_p} top-k {top_k}: mean log μ − log π_θ = {drift:.3} over {l} tokens");
            off += l;
        }
        let (_, st) = grpo_loss(&new, &b.logprobs, None, &lens, &vec![-1.0; lens.len()], &opsm()).unwrap();
        assert_eq!(st.masked_sequences, lens.len(), "T {t} top-p {top_p} top-k {top_k}: stale sequences kept");
        // only negative-advantage sequences are masked
        let (_, st) = grpo_loss(&new, &b.logprobs, None, &lens, &vec![1.0; lens.len()], &opsm()).unwrap();
        assert_eq!(st.masked_sequences, 0);
    }
}

/// Rollouts through the FP4 decode engine, with the sampler's weights optionally stale.
struct Sampler<'a> {
    inner: LocalRollouts<'a>,
    stale: bool,
}

impl Rollouts for Sampler<'_> {
    fn sample(&mut self, job: &RolloutJob, policy: &ModelWeights) -> trainer::Result<Vec<Trajectory>> {
        if self.stale {
            self.inner.sample(job, &perturbed(policy, STALE, 23))
        } else {
            self.inner.sample(job, policy)
        }
    }
}

/// One GRPO step (one minibatch, one epoch: the update is scored before the weights move);
/// returns the step's (clip fraction, masked sequences, grad norm).
fn one_grpo_step(sampling: &SamplingParams, stale: bool) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut metrics = MetricsWriter::new(dir.path(), "t").unwrap();
    let base = ModelWeights::random(&Config::tiny(), 5).unwrap();
    let mut s = Session::new(&base, TrainOptions::default(), OptimConfig::default(), 9).unwrap();
    let cfg = GrpoConfig {
        steps: 1,
        prompts_per_step: 2,
        group_size: 4,
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        top_k: sampling.top_k,
        modes: vec![Mode::NonThink],
        dynamic_sampling: false,
        loss: GrpoLossConfig { kl: KlKind::None, opsm_delta: Some(0.1), ..Default::default() },
        ..Default::default()
    };
    assert!(cfg.keep_sampling_mask);
    // a random model scores 0; the length shaping still gives in-group advantages
    let src = PromptSource::Builtin {
        domains: "if.upper".into(),
        split: Split::Train,
        seed: 1,
        difficulty: Default::default(),
    };
    let inner = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
    let mut r = Sampler { inner, stale };
    run_grpo(&mut s, &cfg, &src, &mut r, None, &mut TrainIo::quiet(&mut metrics)).unwrap();
    let rows = read_metrics(dir.path()).unwrap();
    let get = |name: &str| {
        rows.iter()
            .find(|m| m.name == name && m.step == 1 && m.domain.is_none() && m.mode.is_none())
            .unwrap_or_else(|| panic!("metric {name} not logged"))
            .value
    };
    (get("grpo/clip_fraction"), get("grpo/masked_sequences"), get("train/grad_norm"))
}

/// End to end through `run_grpo`: engine rollouts with top-p/top-k, the trainer's Keep
/// Sampling Mask. On-policy, the ratios are 1 up to engine ↔ trainer numerics: nothing is
/// clipped or masked (with full-vocabulary behaviour log-probs, top-k 20 of 320 ids gave
/// ratios 1/Z_K ≫ 1 + ε_high). A stale sampler is masked.
#[test]
fn grpo_step_is_on_policy_with_truncated_sampling_and_masks_a_stale_sampler() {
    for p in [params(0.8, 0.9, 0), params(1.0, 1.0, 20)] {
        let (clip, masked, gnorm) = one_grpo_step(&p, false);
        eprintln!("on-policy T {} top-p {} top-k {}: clip {clip}, masked {masked}", p.temperature, p.top_p, p.top_k);
        assert!(gnorm > 0.0, "no update: the step proves nothing");
        assert_eq!(clip, 0.0);
        assert_eq!(masked, 0.0);
        let (_, masked, _) = one_grpo_step(&p, true);
        eprintln!("stale sampler: masked {masked}");
        assert!(masked > 0.0, "a stale sampler's negative-advantage sequences must be masked");
    }
}
