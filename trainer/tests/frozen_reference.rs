//! The frozen KL reference runs in the decode engine with packed experts, and scores exactly
//! the distribution the policy is scored on: at the first step of a GRPO run that starts from
//! the reference's own weights, the KL penalty is zero (the logged mean of the k2 estimator
//! ½(log π − log π_ref)² over every token), with top-p truncation (Keep Sampling Mask) on;
//! a reference from other weights gives a clearly positive KL.

use datasets::chat::Mode;
use datasets::progress::NoProgress;
use datasets::prompts::PromptSource;
use datasets::store::{read_metrics, MetricsWriter};
use datasets::tasks::Split;
use datasets::ByteTokenizer;
use model::train::TrainOptions;
use model::{Config, ModelWeights};
use trainer::grpo::{run_grpo, GrpoConfig, LocalRollouts};
use trainer::losses::{GrpoLossConfig, KlKind};
use trainer::optim::OptimConfig;
use trainer::reference::FrozenReference;
use trainer::Session;
use trainer::TrainIo;

/// First-step `grpo/kl` (mean k2 = ½(log π − log π_ref)² over tokens) with `reference`.
fn first_step_kl(base: &ModelWeights, reference: &FrozenReference) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut metrics = MetricsWriter::new(dir.path(), "t").unwrap();
    let mut s = Session::new(base, TrainOptions::default(), OptimConfig::default(), 9).unwrap();
    let cfg = GrpoConfig {
        steps: 1,
        prompts_per_step: 2,
        group_size: 3,
        top_p: 0.9,
        modes: vec![Mode::NonThink],
        dynamic_sampling: false,
        loss: GrpoLossConfig { kl: KlKind::K2, beta: 0.05, ..Default::default() },
        ..Default::default()
    };
    assert!(cfg.keep_sampling_mask);
    let src = PromptSource::Builtin {
        domains: "if.upper".into(),
        split: Split::Train,
        seed: 1,
        difficulty: Default::default(),
    };
    let mut r = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
    run_grpo(&mut s, &cfg, &src, &mut r, Some(reference), &mut TrainIo::quiet(&mut metrics)).unwrap();
    let rows = read_metrics(dir.path()).unwrap();
    rows.iter()
        .find(|m| m.name == "grpo/kl" && m.step == 1 && m.domain.is_none() && m.mode.is_none())
        .expect("grpo/kl logged")
        .value
}

#[test]
fn the_reference_of_the_starting_weights_has_zero_kl_at_the_first_step() {
    let base = ModelWeights::random(&Config::tiny(), 5).unwrap();
    let reference = FrozenReference::new(&base).unwrap();
    let kl = first_step_kl(&base, &reference);
    eprintln!("first-step KL (k2) against itself: {kl:.3e}");
    // engine (packed FP4 experts) vs train graph (FP4 fake-quant): same numbers to ~1e-5
    assert!(kl.abs() < 1e-8, "KL {kl}");
    let other = FrozenReference::new(&ModelWeights::random(&Config::tiny(), 6).unwrap()).unwrap();
    let kl_other = first_step_kl(&base, &other);
    eprintln!("first-step KL (k2) against other weights: {kl_other:.3e}");
    assert!(kl_other > 1e-3, "KL {kl_other}");
}

#[test]
fn the_reference_keeps_routed_experts_packed() {
    let base = ModelWeights::random(&Config::tiny(), 5).unwrap();
    let (experts, _) = FrozenReference::new(&base).unwrap().weight_bytes();
    let f32_bytes: usize =
        base.tensors.iter().filter(|(n, _)| ModelWeights::is_routed_expert(n)).map(|(_, t)| 4 * t.data.len()).sum();
    // MXFP4: 4 bits per value + one byte per 32 values = 17/128 of f32
    assert_eq!(experts * 128, f32_bytes * 17, "experts held as {experts} bytes vs {f32_bytes} in f32");
}
