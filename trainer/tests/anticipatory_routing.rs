//! Anticipatory Routing: the spike detector fires on a spike and not on a smooth curve; when
//! active, expert ids are the ones the Δt-old router chooses; and a GRPO run saved with a
//! non-empty snapshot queue resumes bit-identically.

use candle_core::Tensor;
use datasets::chat::Mode;
use datasets::progress::NoProgress;
use datasets::prompts::PromptSource;
use datasets::store::MetricsWriter;
use datasets::store::Trajectory;
use datasets::tasks::Split;
use datasets::ByteTokenizer;
use model::train::{SeqInput, TrainModel, TrainOptions};
use model::{Config, ModelWeights};
use rollout::RolloutJob;
use std::sync::Arc;
use trainer::anticipatory::{
    router_param_names, AnticipatoryConfig, AnticipatoryState, RouterSnapshot, SpikeConfig, SpikeDetector, Trigger,
    STATE_FILE,
};
use trainer::grpo::{run_grpo, GrpoConfig, LocalRollouts, Rollouts, RoutingMode};
use trainer::optim::OptimConfig;
use trainer::Session;
use trainer::TrainIo;

/// Deterministic uniform noise in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f64> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// A decreasing loss with small bounded noise.
fn smooth_curve(n: usize) -> Vec<f64> {
    let e = noise(3, n);
    (0..n).map(|t| 2.0 + 3.0 * (-(t as f64) / 40.0).exp() + 0.02 * e[t]).collect()
}

/// Feed `curve` and return, per step, (spike, next step active).
fn drive(cfg: &AnticipatoryConfig, curve: &[f64]) -> Vec<(bool, bool)> {
    let mut st = AnticipatoryState::default();
    curve.iter().map(|&x| st.end_step(Some(x), cfg)).map(|o| (o.spike, o.active_next)).collect()
}

fn spike_cfg(hold: u64) -> AnticipatoryConfig {
    AnticipatoryConfig { trigger: Trigger::Spike, hold_steps: hold, ..Default::default() }
}

#[test]
fn detector_is_quiet_on_a_smooth_curve() {
    let cfg = spike_cfg(5);
    let out = drive(&cfg, &smooth_curve(300));
    assert!(out.iter().all(|&(s, a)| !s && !a), "a smooth decreasing curve must never trigger");
    // flat and noisy: bounded noise never exceeds mean + 3σ
    let flat: Vec<f64> = noise(9, 300).iter().map(|e| 1.0 + 0.05 * e).collect();
    assert!(drive(&cfg, &flat).iter().all(|&(s, _)| !s), "bounded noise on a flat curve must not trigger");
}

#[test]
fn detector_switches_on_at_a_spike_for_hold_steps() {
    let cfg = spike_cfg(5);
    let mut curve = smooth_curve(120);
    curve[60] *= 1.5;
    let out = drive(&cfg, &curve);
    let spikes: Vec<usize> = out.iter().enumerate().filter(|(_, o)| o.0).map(|(t, _)| t).collect();
    assert_eq!(spikes, vec![60], "exactly the synthetic spike is detected");
    // the spike at step 60 makes steps 61..=65 anticipatory: `active_next` of steps 60..=64
    for (t, &(_, next)) in out.iter().enumerate() {
        assert_eq!(next, (60..=64).contains(&t), "step {}: active = {next}", t + 1);
    }
    // release on recovery: step 61 is already below the pre-spike mean, so only step 61 is on
    let cfg = AnticipatoryConfig { release_on_recovery: true, ..spike_cfg(5) };
    let out = drive(&cfg, &curve);
    for (t, &(_, next)) in out.iter().enumerate() {
        assert_eq!(next, t == 60, "step {}: active = {next} with release_on_recovery", t + 1);
    }
    // a non-finite signal is a spike; nothing counts before min_history values
    let mut st = AnticipatoryState::default();
    assert!(!st.end_step(Some(100.0), &cfg).spike, "no history yet");
    assert!(st.end_step(Some(f64::NAN), &cfg).spike);
}

#[test]
fn detector_rule_is_mean_plus_k_std() {
    let c = SpikeConfig { window: 4, min_history: 4, k: 2.0, min_rise: 0.0, ..Default::default() };
    let mut d = SpikeDetector::default();
    for x in [1.0, 3.0, 1.0, 3.0] {
        d.push(x, &c);
    }
    // μ = 2, σ = 1: threshold 4
    assert_eq!(d.stats(), Some((2.0, 1.0)));
    assert!(!d.is_spike(4.0, &c));
    assert!(d.is_spike(4.000001, &c));
    // min_rise floors k·σ
    assert!(!d.is_spike(4.5, &SpikeConfig { min_rise: 3.0, ..c.clone() }));
    // the window keeps the last W values
    d.push(10.0, &c);
    assert_eq!(d.values().collect::<Vec<_>>(), vec![3.0, 1.0, 3.0, 10.0]);
}

#[test]
fn legacy_routing_flag_is_spike_triggered() {
    let c = GrpoConfig { routing: RoutingMode::Anticipatory { dt: 3 }, ..Default::default() };
    let (base, a) = c.routing_plan().unwrap();
    assert_eq!(base, RoutingMode::Free);
    assert_eq!((a.trigger, a.dt), (Trigger::Spike, 3));
    let clash = GrpoConfig {
        routing: RoutingMode::Anticipatory { dt: 3 },
        anticipatory: AnticipatoryConfig { trigger: Trigger::Always, dt: 1, ..Default::default() },
        ..Default::default()
    };
    assert!(clash.routing_plan().is_err());
    let off = GrpoConfig::default().routing_plan().unwrap();
    assert_eq!((off.0, off.1.trigger), (RoutingMode::Keep, Trigger::Off));
}

/// Overwrite the router of `model` with deterministic values (a stand-in for updates that
/// move the router a lot).
fn perturb_router(model: &TrainModel, seed: u64) {
    for name in router_param_names(&model.config, |n| model.vars().contains_key(n)) {
        let var = &model.vars()[&name];
        let dims = var.as_tensor().dims().to_vec();
        let n: usize = dims.iter().product();
        let data: Vec<f32> = noise(seed * 131 + n as u64, n).iter().map(|&x| x as f32).collect();
        var.set(&Tensor::from_vec(data, dims, model.device()).unwrap()).unwrap();
    }
}

fn batch() -> Vec<SeqInput> {
    ["Write HELLO in capitals: hello world", "2 + 2 = ?", "the quick brown fox jumps over"]
        .iter()
        .map(|s| SeqInput::new(s.bytes().map(u32::from).collect()))
        .collect()
}

#[test]
fn active_routing_uses_the_router_of_dt_updates_ago() {
    let w = ModelWeights::random(&Config::tiny(), 11).unwrap();
    let s = Session::new(&w, TrainOptions::default(), OptimConfig::default(), 0).unwrap();
    let cfg = AnticipatoryConfig { trigger: Trigger::Always, dt: 2, ..Default::default() };
    let mut st = AnticipatoryState::default();
    // updates 0, 1, 2 each record the router they are about to change, then change it
    let mut routers = Vec::new();
    for u in 0..3 {
        routers.push(RouterSnapshot::capture(&s.model).unwrap());
        st.record_update(&s.model, &cfg).unwrap();
        perturb_router(&s.model, u + 1);
    }
    assert!(!routers[1].tensors.is_empty(), "tiny has biased-top-k layers");
    assert_eq!(st.queue.len(), 2, "the queue keeps Δt snapshots");
    // before update 3 the routing router is R_{3−2} = R_1
    assert_eq!(st.routing_router(&cfg), Some(&routers[1]));
    let before = s.weights().unwrap();
    let got = st.routes(&s.model, &cfg, &batch()).unwrap();

    // the same batch through a model whose router is R_1 and whose backbone is current
    let mut old_router = before.clone();
    routers[1].apply_to_weights(&mut old_router).unwrap();
    let reference = TrainModel::from_weights(&old_router, candle_core::DType::F32, TrainOptions::default()).unwrap();
    let want = reference.forward(&batch()).unwrap().decisions;
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(!g.routes.is_empty());
        assert_eq!(g.routes, w.routes, "routing must be the Δt-old router's");
        assert!(g.topk.is_empty(), "only expert routing is anticipatory");
    }
    // ... and not the current router's (else the test proves nothing)
    let current = s.model.forward(&batch()).unwrap().decisions;
    assert!(got.iter().zip(&current).any(|(g, c)| g.routes != c.routes), "R_1 and R_3 route alike");
    // the session's router is restored bit for bit
    let after = s.weights().unwrap();
    for (name, t) in &before.tensors {
        let a = &after.tensors[name].data;
        assert!(t.data.iter().zip(a).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} changed");
    }
    // the training forward replays the anticipatory ids
    let forced: Vec<SeqInput> =
        batch().into_iter().zip(&got).map(|(s, d)| SeqInput { forced: Some(Arc::new(d.clone())), ..s }).collect();
    let used = s.model.forward(&forced).unwrap().decisions;
    for (u, g) in used.iter().zip(&got) {
        assert_eq!(u.routes, g.routes);
    }
}

#[test]
fn state_round_trips_through_a_file() {
    let w = ModelWeights::random(&Config::tiny(), 2).unwrap();
    let s = Session::new(&w, TrainOptions::default(), OptimConfig::default(), 0).unwrap();
    let cfg = AnticipatoryConfig { trigger: Trigger::Spike, dt: 3, hold_steps: 4, ..Default::default() };
    let mut st = AnticipatoryState::default();
    for (u, x) in smooth_curve(30).into_iter().enumerate() {
        st.record_update(&s.model, &cfg).unwrap();
        perturb_router(&s.model, u as u64 + 7);
        st.end_step(Some(if u == 27 { x * 3.0 } else { x }), &cfg);
    }
    assert!(st.remaining > 0 && st.spikes == 1 && st.queue.len() == 3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);
    st.save(&path).unwrap();
    let back = AnticipatoryState::load(&path).unwrap();
    assert_eq!(back, st);
    assert_eq!(back.baseline.to_bits(), st.baseline.to_bits());
    back.check_against(&s.model).unwrap();
    // an empty state too
    AnticipatoryState::default().save(&path).unwrap();
    assert_eq!(AnticipatoryState::load(&path).unwrap(), AnticipatoryState::default());
    // a file of another kind is a typed error, not a panic
    std::fs::write(&path, b"not safetensors").unwrap();
    assert!(matches!(AnticipatoryState::load(&path), Err(trainer::TrainError::Checkpoint { .. })));
}

fn grpo_cfg(steps: u64, anticipatory: AnticipatoryConfig) -> GrpoConfig {
    GrpoConfig {
        steps,
        prompts_per_step: 2,
        group_size: 4,
        // 8 rows in minibatches of 4: two optimizer updates per step
        minibatch: 4,
        modes: vec![Mode::NonThink],
        dynamic_sampling: false,
        routing: RoutingMode::Free,
        anticipatory,
        checkpoint_every: 1,
        ..Default::default()
    }
}

/// Rollouts that fail once the run reaches `crash_at` (a killed process).
struct Crashing<'a> {
    inner: LocalRollouts<'a>,
    crash_at: u64,
}

impl Rollouts for Crashing<'_> {
    fn sample(&mut self, job: &RolloutJob, policy: &ModelWeights) -> trainer::Result<Vec<Trajectory>> {
        if job.step >= self.crash_at {
            return Err(trainer::TrainError::Input("simulated crash".into()));
        }
        self.inner.sample(job, policy)
    }
}

/// GRPO with `s` (checkpoints under `ckpt` every step when given) until `crash_at`, if any.
fn grpo(s: &mut Session, cfg: &GrpoConfig, ckpt: Option<&std::path::Path>, crash_at: Option<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsWriter::new(dir.path(), "t").unwrap();
    // a random model scores 0; the length shaping still moves the policy
    let src = PromptSource::Builtin {
        domains: "if.upper".into(),
        split: Split::Train,
        seed: 1,
        difficulty: Default::default(),
    };
    let inner = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
    let mut r = Crashing { inner, crash_at: crash_at.unwrap_or(u64::MAX) };
    let out = run_grpo(s, cfg, &src, &mut r, None, &mut TrainIo::new("t", &mut m, &NoProgress, ckpt));
    match crash_at {
        Some(_) => assert!(out.is_err(), "the run should have crashed"),
        None => {
            out.unwrap();
        }
    }
}

fn bit_equal(a: &ModelWeights, b: &ModelWeights) -> bool {
    a.tensors.iter().all(|(n, t)| t.data.iter().zip(&b.tensors[n].data).all(|(x, y)| x.to_bits() == y.to_bits()))
}

/// Run `total` steps uninterrupted, and the same run killed after `split` steps (one
/// checkpoint per step); returns the uninterrupted session and the last checkpoint.
fn uninterrupted_and_checkpoint(
    w: &ModelWeights,
    ar: &AnticipatoryConfig,
    split: u64,
    total: u64,
    root: &std::path::Path,
) -> (Session, std::path::PathBuf) {
    let cfg = grpo_cfg(total, ar.clone());
    let mut a = Session::new(w, TrainOptions::default(), OptimConfig::default(), 4).unwrap();
    grpo(&mut a, &cfg, None, None);
    let mut b = Session::new(w, TrainOptions::default(), OptimConfig::default(), 4).unwrap();
    grpo(&mut b, &cfg, Some(root), Some(split));
    assert_eq!(b.counters.step, split);
    let st = b.anticipatory.as_ref().expect("state kept");
    assert_eq!(st.queue.len() as u64, ar.dt, "the queue must be non-empty (full) at the checkpoint");
    assert_eq!(st.detector.values().count() as u64, split, "one detector value per step");
    let dir = Session::latest(root).expect("a checkpoint");
    assert!(dir.join(STATE_FILE).exists());
    (a, dir)
}

fn resume(dir: &std::path::Path, ar: &AnticipatoryConfig, total: u64) -> Session {
    let mut c = Session::load(dir, TrainOptions::default(), OptimConfig::default()).unwrap();
    grpo(&mut c, &grpo_cfg(total, ar.clone()), None, None);
    c
}

#[test]
fn resumed_run_with_a_snapshot_queue_is_bit_identical() {
    let w = ModelWeights::random(&Config::tiny(), 5).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // always on, Δt = 2 updates (one step): the resumed step-2 routing needs the saved queue
    let ar = AnticipatoryConfig { trigger: Trigger::Always, dt: 2, ..Default::default() };
    let (a, dir) = uninterrupted_and_checkpoint(&w, &ar, 1, 3, &tmp.path().join("always"));
    let c = resume(&dir, &ar, 3);
    assert!(bit_equal(&a.weights().unwrap(), &c.weights().unwrap()), "resumed weights differ");
    assert_eq!(a.opt, c.opt);
    assert_eq!(a.counters, c.counters);
    assert_eq!(a.anticipatory, c.anticipatory);
    // control: the same checkpoint without the queue does not resume exactly
    std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
    let lost = resume(&dir, &ar, 3);
    assert!(!bit_equal(&a.weights().unwrap(), &lost.weights().unwrap()), "the saved queue made no difference");

    // spike-triggered with an eager detector: the window and activation are restored too
    let eager = AnticipatoryConfig {
        trigger: Trigger::Spike,
        dt: 1,
        hold_steps: 1,
        detector: SpikeConfig { window: 2, min_history: 1, k: 0.0, min_rise: 0.0, ..Default::default() },
        ..Default::default()
    };
    let (a, dir) = uninterrupted_and_checkpoint(&w, &eager, 2, 4, &tmp.path().join("spike"));
    let spikes = a.anticipatory.as_ref().map_or(0, |s| s.spikes);
    assert!(spikes > 0, "the eager detector never fired: the spike path is not exercised");
    let c = resume(&dir, &eager, 4);
    assert!(bit_equal(&a.weights().unwrap(), &c.weights().unwrap()), "resumed weights differ (spike trigger)");
    assert_eq!(a.opt, c.opt);
    assert_eq!(a.anticipatory, c.anticipatory);
}
