//! GRPO on a built-in domain raises the eval accuracy of a tiny model that starts above 0
//! (fixed seeds), and Anticipatory Routing with Δt = 0 is bit-identical to normal routing.

use datasets::chat::Mode;
use datasets::progress::NoProgress;
use datasets::prompts::PromptSource;
use datasets::store::MetricsWriter;
use datasets::tasks::{self, Split};
use datasets::ByteTokenizer;
use model::train::TrainOptions;
use model::{Config, Engine, EngineOptions, ModelWeights};
use trainer::grpo::{run_grpo, GrpoConfig, LocalRollouts, RoutingMode};
use trainer::optim::OptimConfig;
use trainer::sft::{run_sft, SftConfig};
use trainer::Session;

const DOMAIN: &str = "math.linear";

fn accuracy(w: &ModelWeights) -> f64 {
    let ts = tasks::sample(DOMAIN, Split::Eval, 0, 64, Some(1)).unwrap();
    let e = Engine::new(w, EngineOptions::default()).unwrap();
    rollout::evaluate(&e, &ByteTokenizer, &ts, Mode::NonThink, 24, 0, &NoProgress).unwrap().accuracy
}

#[test]
fn grpo_raises_eval_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsWriter::new(dir.path(), "t").unwrap();
    let base = ModelWeights::random(&Config::tiny(), 0).unwrap();
    // a start above zero: a short SFT on the domain (difficulty 1)
    let mut s = Session::new(&base, TrainOptions::default(), OptimConfig::default(), 0).unwrap();
    let sft = SftConfig {
        steps: 60,
        batch: 8,
        max_len: 128,
        warmup: 3,
        modes: vec![Mode::NonThink],
        domains: DOMAIN.into(),
        difficulty: Some(1),
        ..Default::default()
    };
    run_sft(&mut s, &sft, &ByteTokenizer, &mut m, &NoProgress, None).unwrap();
    let start = s.weights().unwrap();
    let before = accuracy(&start);

    let mut g = Session::new(&start, TrainOptions::default(), OptimConfig::default(), 0).unwrap();
    let cfg =
        GrpoConfig { steps: 20, prompts_per_step: 8, group_size: 8, modes: vec![Mode::NonThink], ..Default::default() };
    let src = PromptSource::Builtin { domains: DOMAIN.into(), split: Split::Train, seed: 0, difficulty: Some(1) };
    let mut r = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
    let rep = run_grpo(&mut g, &cfg, &src, &mut r, "t", None, &mut m, &NoProgress, None).unwrap();
    let after = accuracy(&g.weights().unwrap());
    eprintln!(
        "{DOMAIN} (difficulty 1, 64 eval prompts, greedy): accuracy {before:.3} → {after:.3}; train reward {:.3} → {:.3}; {} sampled tokens",
        rep.mean_reward_first, rep.mean_reward_last, rep.sampled_tokens
    );
    assert!(before > 0.0, "the start must be above 0");
    assert!(after >= before + 2.0 / 64.0, "GRPO did not improve: {before} → {after}");
}

#[test]
fn anticipatory_routing_with_zero_delay_is_bit_identical() {
    let base = ModelWeights::random(&Config::tiny(), 5).unwrap();
    let run = |routing: RoutingMode| {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MetricsWriter::new(dir.path(), "t").unwrap();
        let mut s = Session::new(&base, TrainOptions::default(), OptimConfig::default(), 9).unwrap();
        let cfg = GrpoConfig {
            steps: 2,
            prompts_per_step: 2,
            group_size: 4,
            modes: vec![Mode::NonThink],
            dynamic_sampling: false,
            routing,
            ..Default::default()
        };
        // rewards of a random model are all 0; the length shaping (DAPO overlong penalty,
        // Kimi length reward) still differs within groups, so the policy moves (checked below)
        let src = PromptSource::Builtin { domains: "if.upper".into(), split: Split::Train, seed: 1, difficulty: None };
        let mut r = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
        run_grpo(&mut s, &cfg, &src, &mut r, "t", None, &mut m, &NoProgress, None).unwrap();
        s.weights().unwrap()
    };
    let free = run(RoutingMode::Free);
    let anticipatory = run(RoutingMode::Anticipatory { dt: 0 });
    let delayed = run(RoutingMode::Anticipatory { dt: 1 });
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
