//! GRPO on a built-in domain raises the eval accuracy of a tiny model that starts above 0
//! (mean over fixed seeds), and Anticipatory Routing with Δt = 0 is bit-identical to normal routing.

use datasets::chat::Mode;
use datasets::progress::NoProgress;
use datasets::prompts::PromptSource;
use datasets::store::MetricsWriter;
use datasets::tasks::{self, Split};
use datasets::ByteTokenizer;
use model::train::TrainOptions;
use model::{Config, Engine, EngineOptions, ModelWeights};
use trainer::anticipatory::{AnticipatoryConfig, Trigger};
use trainer::grpo::{run_grpo, GrpoConfig, LocalRollouts, RoutingMode};
use trainer::optim::OptimConfig;
use trainer::sft::{run_sft, SftConfig};
use trainer::Session;
use trainer::TrainIo;

const DOMAIN: &str = "math.linear";
const EVAL_N: usize = 256;

fn accuracy(w: &ModelWeights) -> f64 {
    let ts = tasks::sample(DOMAIN, Split::Eval, 0, EVAL_N, Some(1)).unwrap();
    let e = Engine::new(w, EngineOptions::default()).unwrap();
    // the mode's response budget, as in GRPO's rollouts and the pipeline's evaluation
    let budget = GrpoConfig::default().shaping.non_think.max_len;
    rollout::evaluate(&e, &ByteTokenizer, &ts, Mode::NonThink, budget, 0, &NoProgress).unwrap().accuracy
}

/// SFT a tiny random model on the domain to a start above 0, then GRPO; returns the eval
/// accuracy before and after GRPO and the mean train reward of every step.
fn sft_then_grpo(seed: u64, grpo_steps: u64) -> (f64, f64, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsWriter::new(dir.path(), "t").unwrap();
    let base = ModelWeights::random(&Config::tiny(), seed).unwrap();
    // a start above zero: a short SFT on the domain (difficulty 1)
    let mut s = Session::new(&base, TrainOptions::default(), OptimConfig::default(), seed).unwrap();
    let sft = SftConfig {
        steps: 60,
        batch: 8,
        max_len: 128,
        warmup: 3,
        modes: vec![Mode::NonThink],
        domains: DOMAIN.into(),
        difficulty: Some(1).into(),
        ..Default::default()
    };
    run_sft(&mut s, &sft, &ByteTokenizer, &mut TrainIo::quiet(&mut m)).unwrap();
    let start = s.weights().unwrap();
    let before = accuracy(&start);

    // the demo pipeline's expert rates (0.02 overshot on some seeds; with the longer
    // Non-think budget, 0.01 collapsed one seed of four into long wrong answers)
    let optim = OptimConfig { muon_lr: 0.004, adamw_lr: 4e-4, ..Default::default() };
    let mut g = Session::new(&start, TrainOptions::default(), optim, seed).unwrap();
    let cfg = GrpoConfig {
        steps: grpo_steps,
        prompts_per_step: 8,
        group_size: 8,
        modes: vec![Mode::NonThink],
        ..Default::default()
    };
    let src = PromptSource::Builtin { domains: DOMAIN.into(), split: Split::Train, seed, difficulty: Some(1).into() };
    let mut r = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
    let rep = run_grpo(&mut g, &cfg, &src, &mut r, None, &mut TrainIo::quiet(&mut m)).unwrap();
    let after = accuracy(&g.weights().unwrap());
    eprintln!(
        "seed {seed}: {DOMAIN} (difficulty 1, {EVAL_N} eval prompts, greedy): accuracy {before:.3} → {after:.3}; train reward {:.3} → {:.3}; {} sampled tokens",
        rep.mean_reward_first, rep.mean_reward_last, rep.sampled_tokens
    );
    (before, after, rep.step_rewards)
}

/// Least-squares slope of `y` against its index.
fn slope(y: &[f64]) -> f64 {
    let n = y.len() as f64;
    let (mx, my) = ((n - 1.0) / 2.0, y.iter().sum::<f64>() / n);
    let sxy: f64 = y.iter().enumerate().map(|(i, v)| (i as f64 - mx) * (v - my)).sum();
    let sxx: f64 = (0..y.len()).map(|i| (i as f64 - mx).powi(2)).sum();
    sxy / sxx
}

/// One seed is one noisy draw: a 64-prompt greedy eval moves by several prompts when the
/// float summation order changes (another CPU's GEMM kernels), and a single 30-step run can go
/// down. The claim tested is the average over four fixed seeds on 256 eval prompts, after 45
/// steps: at 30 the mean gain sat at the +0.01 bound, and a rounding-level change of the expert
/// op (2026-12-07) moved it to +0.002 while the train reward still rose on every seed.
/// The train-reward trend is the least-squares slope of the seed-mean reward over all steps:
/// one step's mean over 64 samples moves by ±0.04 at these rewards, and a comparison of the
/// first and last five steps (used before) uses a fifth of the data; after the switch to the
/// AVX-512 GEMM kernels it read 0.117 → 0.117 while the eval accuracy rose by +0.036.
#[test]
fn grpo_raises_eval_accuracy() {
    let runs: Vec<_> = (0..4).map(|seed| sft_then_grpo(seed, 45)).collect();
    let n = runs.len() as f64;
    let (before, after) = (runs.iter().map(|r| r.0).sum::<f64>() / n, runs.iter().map(|r| r.1).sum::<f64>() / n);
    let steps = runs.iter().map(|r| r.2.len()).min().unwrap_or(0);
    let per_step: Vec<f64> = (0..steps).map(|i| runs.iter().map(|r| r.2[i]).sum::<f64>() / n).collect();
    let trend = slope(&per_step) * (steps.max(1) - 1) as f64;
    eprintln!(
        "mean over seeds: accuracy {before:.3} → {after:.3}; train reward per step {:?}; fitted change over {steps} steps {trend:+.4}",
        per_step.iter().map(|v| (v * 1000.0).round() / 1000.0).collect::<Vec<_>>()
    );
    assert!(runs.iter().all(|r| r.0 > 0.0), "every start must be above 0");
    assert!(steps >= 40, "GRPO ran {steps} steps");
    assert!(after >= before + 0.01, "GRPO did not raise mean eval accuracy: {before:.3} → {after:.3}");
    assert!(trend > 0.0, "GRPO did not raise the mean train reward: fitted change {trend:+.4} over {steps} steps");
}

#[test]
fn anticipatory_routing_with_zero_delay_is_bit_identical() {
    let base = ModelWeights::random(&Config::tiny(), 5).unwrap();
    // `None`: normal (free) routing; `Some(dt)`: anticipatory on every step with a Δt-old router
    let run = |anticipatory: Option<u64>| {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MetricsWriter::new(dir.path(), "t").unwrap();
        let mut s = Session::new(&base, TrainOptions::default(), OptimConfig::default(), 9).unwrap();
        let cfg = GrpoConfig {
            steps: 2,
            prompts_per_step: 2,
            group_size: 4,
            modes: vec![Mode::NonThink],
            dynamic_sampling: false,
            routing: RoutingMode::Free,
            anticipatory: anticipatory
                .map(|dt| AnticipatoryConfig { trigger: Trigger::Always, dt, ..Default::default() })
                .unwrap_or_default(),
            ..Default::default()
        };
        // rewards of a random model are all 0; the length shaping (DAPO overlong penalty,
        // Kimi length reward) still differs within groups, so the policy moves (checked below)
        let src = PromptSource::Builtin {
            domains: "if.upper".into(),
            split: Split::Train,
            seed: 1,
            difficulty: Default::default(),
        };
        let mut r = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
        run_grpo(&mut s, &cfg, &src, &mut r, None, &mut TrainIo::quiet(&mut m)).unwrap();
        s.weights().unwrap()
    };
    let free = run(None);
    let anticipatory = run(Some(0));
    let delayed = run(Some(1));
    let mut moved = false;
    for (name, t) in &free.tensors {
        let a = &anticipatory.tensors[name].data;
        assert!(t.data.iter().zip(a).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs with Δt = 0");
        moved |= t.data.iter().zip(&base.tensors[name].data).any(|(x, y)| x != y);
    }
    assert!(moved, "the policy did not change: the test would prove nothing");
    // a real delay changes the routing of the second step
    let differs = free.tensors.iter().any(|(n, t)| t.data.iter().zip(&delayed.tensors[n].data).any(|(x, y)| x != y));
    assert!(differs, "Δt = 1 should differ from Δt = 0");
}

/// Dynamic sampling re-samples the prompts whose groups carry no signal at most
/// `max_refill_rounds` times per step (the pipeline's `refill_rounds`): a random model scores
/// 0 on every prompt, so every round is used, and with 0 rounds a step samples once.
#[test]
fn dynamic_sampling_refills_at_most_max_refill_rounds() {
    struct Counting<'a> {
        inner: LocalRollouts<'a>,
        jobs: usize,
    }
    impl trainer::grpo::Rollouts for Counting<'_> {
        fn sample(
            &mut self,
            job: &rollout::RolloutJob,
            policy: &ModelWeights,
        ) -> trainer::Result<Vec<datasets::store::Trajectory>> {
            self.jobs += 1;
            self.inner.sample(job, policy)
        }
    }
    let base = ModelWeights::random(&Config::tiny(), 7).unwrap();
    let jobs = |rounds: usize| {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MetricsWriter::new(dir.path(), "t").unwrap();
        let mut s = Session::new(&base, TrainOptions::default(), OptimConfig::default(), 3).unwrap();
        let cfg = GrpoConfig {
            steps: 2,
            prompts_per_step: 2,
            group_size: 2,
            modes: vec![Mode::NonThink],
            max_refill_rounds: rounds,
            ..Default::default()
        };
        assert!(cfg.dynamic_sampling);
        let src = PromptSource::Builtin {
            domains: "if.upper".into(),
            split: Split::Train,
            seed: 1,
            difficulty: Default::default(),
        };
        let inner = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
        let mut r = Counting { inner, jobs: 0 };
        let rep = run_grpo(&mut s, &cfg, &src, &mut r, None, &mut TrainIo::quiet(&mut m)).unwrap();
        assert_eq!(rep.mean_reward_last, 0.0, "a random model should score 0 (else the count proves nothing)");
        r.jobs
    };
    assert_eq!(jobs(0), 2, "no refills: one sampling round per step");
    assert_eq!(jobs(2), 6, "two refills: three rounds per step when no group has signal");
}
