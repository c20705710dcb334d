//! GRPO and its variants for building domain experts.
//!
//! Per step: take prompts, sample a group of `G` responses each with the current policy
//! (through a [`Rollouts`] backend: in-process or distributed workers), score them, shape
//! rewards by length per reasoning mode, drop groups with no reward variance and refill
//! (dynamic sampling), compute group-relative advantages, then take `epochs × minibatches`
//! gradient steps of the clipped surrogate with importance correction against the sampler's
//! log-probabilities (optionally with Keep Routing, Keep Sampling Mask, a KL penalty to a
//! frozen reference, off-policy sequence masking, Anticipatory Routing).
//!
//! Anticipatory Routing ([`crate::anticipatory`]): while active (after a spike of the step's
//! mean loss, or always), each minibatch is first routed by the current backbone with the
//! router of Δt optimizer updates ago and the training forward replays those expert ids
//! (they replace Keep Routing's recorded ids for that step; the reference model, if any,
//! sees the same ids). The spike detector sees one value per GRPO step; activation lasts
//! `hold_steps` GRPO steps.

use crate::anticipatory::{AnticipatoryConfig, AnticipatoryState, SpikeSignal, StepOutcome, Trigger};
pub use crate::backends::{LocalRollouts, Rollouts};
use crate::error::{Result, TrainError};
use crate::losses::{advantages, grpo_loss, token_logprobs, Aggregation, GrpoLossConfig, KlKind};
use crate::optim::lr_schedule;
use crate::reference::{counted_tokens, FrozenReference};
use crate::session::Session;
use crate::step::{backward_and_step, last_step, TrainIo};
use candle_core::Tensor;
use datasets::chat::Mode;
use datasets::prompts::PromptSource;
use datasets::store::Trajectory;
use datasets::tasks::fnv1a;
use model::train::{SeqInput, TrainModel};
use model::Decisions;
use rewards::shaping::LengthShaping;
use rollout::{RolloutJob, SamplingParams};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Where expert routing decisions in the training forward come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RoutingMode {
    /// Recomputed by the training forward.
    Free,
    /// Replay the sampler's expert ids (Keep Routing).
    Keep,
    /// Legacy spelling of `Free` plus [`GrpoConfig::anticipatory`] with `trigger = spike` and
    /// this `dt` (Anticipatory Routing switched on by loss spikes, not always on).
    Anticipatory { dt: u64 },
}

/// A named preset of GRPO loss and sampling choices: the one list of variants (the CLI's
/// `--variant` and pipeline files' `variant` are parsed from it). A new variant is a new
/// arm here and in [`GrpoVariant::config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GrpoVariant {
    /// DeepSeek-V3.2: clip-higher, token-mean, k3-IS KL, off-policy masking, Keep Routing.
    #[default]
    V32,
    /// Original GRPO: symmetric clip, k3 KL (β 0.04), sequence-mean of token means.
    Grpo,
    /// DAPO: no KL, token-mean aggregation, dynamic sampling.
    Dapo,
    /// Dr. GRPO: no KL, no std normalisation, sequence-mean of token sums.
    DrGrpo,
}

impl TryFrom<String> for GrpoVariant {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<GrpoVariant> for String {
    fn from(v: GrpoVariant) -> String {
        v.name().to_string()
    }
}

impl GrpoVariant {
    pub const ALL: [GrpoVariant; 4] = [GrpoVariant::V32, GrpoVariant::Grpo, GrpoVariant::Dapo, GrpoVariant::DrGrpo];

    pub fn name(self) -> &'static str {
        match self {
            GrpoVariant::V32 => "v32",
            GrpoVariant::Grpo => "grpo",
            GrpoVariant::Dapo => "dapo",
            GrpoVariant::DrGrpo => "dr-grpo",
        }
    }

    /// One line for `--help`.
    pub fn summary(self) -> &'static str {
        match self {
            GrpoVariant::V32 => "DeepSeek-V3.2: clip-higher, token-mean, k3-IS KL, off-policy masking, Keep Routing",
            GrpoVariant::Grpo => "original GRPO: symmetric clip, k3 KL (beta 0.04), sequence-mean of token means",
            GrpoVariant::Dapo => "DAPO: no KL, token-mean aggregation, dynamic sampling",
            GrpoVariant::DrGrpo => "Dr. GRPO: no KL, no std normalisation, sequence-mean of token sums",
        }
    }

    /// [`GrpoConfig::default`] with this variant's loss and sampling choices.
    pub fn config(self) -> GrpoConfig {
        let mut c = GrpoConfig::default();
        let loss = c.loss;
        match self {
            GrpoVariant::V32 => {}
            GrpoVariant::Grpo => {
                c.loss = GrpoLossConfig {
                    clip_low: 0.2,
                    clip_high: 0.2,
                    kl: KlKind::K3,
                    beta: 0.04,
                    aggregation: Aggregation::SeqMeanTokenMean,
                    opsm_delta: None,
                    ..loss
                };
                c.dynamic_sampling = false;
            }
            GrpoVariant::Dapo => {
                c.loss = GrpoLossConfig {
                    kl: KlKind::None,
                    beta: 0.0,
                    aggregation: Aggregation::TokenMean,
                    opsm_delta: None,
                    ..loss
                }
            }
            GrpoVariant::DrGrpo => {
                c.loss = GrpoLossConfig {
                    kl: KlKind::None,
                    beta: 0.0,
                    aggregation: Aggregation::SeqMeanTokenSum,
                    opsm_delta: None,
                    ..loss
                };
                c.use_std = false;
            }
        }
        c
    }
}

impl std::str::FromStr for GrpoVariant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        GrpoVariant::ALL.into_iter().find(|v| v.name() == s).ok_or_else(|| {
            let known: Vec<&str> = GrpoVariant::ALL.iter().map(|v| v.name()).collect();
            format!("unknown variant {s:?} ({})", known.join(", "))
        })
    }
}

impl std::fmt::Display for GrpoVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// GRPO settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// Stop after this step (resumably), while the learning-rate schedule still spans `steps`
    /// (`--stop-after-steps`): a stopped and resumed run is bit-identical to an uninterrupted one.
    #[serde(skip)]
    pub stop_at: Option<u64>,
    pub steps: u64,
    pub prompts_per_step: usize,
    pub group_size: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    /// Modes the prompts are sampled in (chosen per prompt).
    pub modes: Vec<Mode>,
    pub loss: GrpoLossConfig,
    /// Divide advantages by the group's std (GRPO) or not (Dr. GRPO).
    pub use_std: bool,
    pub adv_eps: f32,
    /// Gradient passes over each batch.
    pub epochs: usize,
    /// Sequences per optimizer step.
    pub minibatch: usize,
    /// Drop groups with zero reward variance and sample more prompts.
    pub dynamic_sampling: bool,
    pub max_refill_rounds: usize,
    pub routing: RoutingMode,
    /// Anticipatory Routing on loss spikes (off by default); combines with `routing`.
    pub anticipatory: AnticipatoryConfig,
    /// Score π_θ (and π_ref) over each token's recorded top-k/top-p kept set, the support
    /// the sampler's recorded log-prob is normalised over, so on-policy ratios are 1. Off:
    /// full-vocabulary π_θ against the truncated μ (on-policy ratio `Σ_K π_θ` < 1).
    pub keep_sampling_mask: bool,
    pub shaping: LengthShaping,
    pub warmup: u64,
    pub min_lr_ratio: f32,
    pub indexer_loss_coef: f32,
    pub checkpoint_every: u64,
    pub stage: String,
    /// Rollout batch (sequences decoding together).
    pub rollout_batch: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            stop_at: None,
            steps: 20,
            prompts_per_step: 8,
            group_size: 8,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            modes: vec![Mode::ThinkHigh],
            loss: GrpoLossConfig::default(),
            use_std: true,
            adv_eps: 1e-6,
            epochs: 1,
            minibatch: 32,
            dynamic_sampling: true,
            max_refill_rounds: 2,
            routing: RoutingMode::Keep,
            anticipatory: AnticipatoryConfig::default(),
            keep_sampling_mask: true,
            shaping: LengthShaping::default(),
            warmup: 0,
            min_lr_ratio: 0.5,
            indexer_loss_coef: 1.0,
            checkpoint_every: 0,
            stage: "grpo".into(),
            rollout_batch: 64,
        }
    }
}

impl GrpoConfig {
    /// The base routing mode and the Anticipatory Routing settings, with the legacy
    /// `routing = anticipatory{dt}` folded in (free routing + spike-triggered, Δt = dt).
    pub fn routing_plan(&self) -> Result<(RoutingMode, AnticipatoryConfig)> {
        let mut a = self.anticipatory.clone();
        let base = match self.routing {
            RoutingMode::Anticipatory { dt } => {
                if a.trigger != Trigger::Off && a.dt != dt {
                    return Err(TrainError::Input(format!(
                        "routing anticipatory:{dt} conflicts with anticipatory.dt = {}",
                        a.dt
                    )));
                }
                if a.trigger == Trigger::Off {
                    a.trigger = Trigger::Spike;
                }
                a.dt = dt;
                RoutingMode::Free
            }
            m => m,
        };
        a.validate()?;
        Ok((base, a))
    }
}

/// Forced decisions of a trajectory from its routing record (unknown positions left free).
pub fn recorded_routes(t: &Trajectory) -> Decisions {
    let mut d = Decisions::default();
    let w = t.routing_width as usize;
    if w == 0 {
        return d;
    }
    let all = t.prompt_routing.iter().flatten().chain(t.routing.iter().flatten());
    let v: Vec<u16> = all.copied().collect();
    for (pos, chunk) in v.chunks(w).enumerate() {
        if chunk.len() == w && chunk.iter().all(|&x| x != u16::MAX) {
            d.routes.insert(pos, chunk.iter().map(|&x| x as u32).collect());
        }
    }
    d
}

/// One training row of a batch: the sequence and which response tokens count.
#[derive(Clone)]
struct Row<'a> {
    t: &'a Trajectory,
    adv: f32,
    forced: Option<Arc<Decisions>>,
}

/// The policy's view of a minibatch.
struct PolicyEval {
    /// Log-probabilities `[n]` of the counted response tokens.
    logprobs: Tensor,
    /// Counted tokens per row.
    counts: Vec<usize>,
    /// The sampler's log-probabilities of the same tokens.
    old: Vec<f32>,
    /// Mean entropy at the counted positions.
    entropy: f32,
    decisions: Vec<Decisions>,
    indexer_loss: Option<Tensor>,
}

/// The model inputs of `rows`: prompt + response, with the rows' forced decisions.
fn seq_inputs(rows: &[Row]) -> Vec<SeqInput> {
    rows.iter()
        .map(|r| {
            let mut toks = r.t.prompt_tokens.clone();
            toks.extend(&r.t.response_tokens);
            SeqInput { tokens: toks, forced: r.forced.clone(), ..Default::default() }
        })
        .collect()
}

/// `rows` with their expert ids replaced by those the Δt-old router chooses for this batch
/// (the same batch the training forward sees, so Δt = 0 reproduces normal routing).
fn anticipatory_rows<'a>(
    model: &TrainModel,
    state: &AnticipatoryState,
    cfg: &AnticipatoryConfig,
    rows: &[Row<'a>],
) -> Result<Vec<Row<'a>>> {
    let routes = state.routes(model, cfg, &seq_inputs(rows))?;
    Ok(rows.iter().zip(routes).map(|(r, d)| Row { forced: Some(Arc::new(d)), ..r.clone() }).collect())
}

/// Evaluate the counted response tokens of `rows` under `model`.
fn policy_logprobs(model: &TrainModel, rows: &[Row], tau: f32, keep_mask: bool) -> Result<PolicyEval> {
    let out = model.forward(&seq_inputs(rows))?;
    let s = out.hidden.dim(1)?;
    let d = out.hidden.dim(2)?;
    let mut idx = Vec::new();
    let mut targets = Vec::new();
    let mut masks = Vec::new();
    let mut counts = Vec::new();
    let mut old = Vec::new();
    for (b, r) in rows.iter().enumerate() {
        let p = r.t.prompt_tokens.len();
        let counted = counted_tokens(r.t, keep_mask)?;
        counts.push(counted.len());
        for c in counted {
            idx.push((b * s + p - 1 + c.j) as u32);
            targets.push(c.target);
            old.push(c.behaviour);
            // the kept set the recorded log-prob is normalised over (Keep Sampling Mask)
            masks.push(c.mask);
        }
    }
    let h = out.hidden.reshape((rows.len() * s, d))?;
    let sel = Tensor::from_vec(idx, targets.len(), h.device())?;
    let logits = model.logits(&h.index_select(&sel, 0)?)?;
    // mean entropy of the (tempered) policy at the trained positions, detached
    let lv: Vec<f32> = (&logits / tau as f64)?.detach().flatten_all()?.to_vec1()?;
    let v = model.config.vocab_size;
    let mut ent = 0f64;
    for row in lv.chunks(v) {
        let lp = rollout::sampling::log_softmax(row, 1.0);
        ent -= lp.iter().map(|l| (l.exp() * l) as f64).sum::<f64>();
    }
    let ent = (ent / (lv.len() / v).max(1) as f64) as f32;
    let any_mask = masks.iter().any(Option::is_some);
    let lp = token_logprobs(&logits, &targets, tau, any_mask.then_some(masks))?;
    Ok(PolicyEval { logprobs: lp, counts, old, entropy: ent, decisions: out.decisions, indexer_loss: out.indexer_loss })
}

/// Outcome of a GRPO run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GrpoReport {
    pub steps: u64,
    pub sampled_tokens: u64,
    pub mean_reward_first: f64,
    pub mean_reward_last: f64,
    /// Mean raw reward of every step's samples, in step order (first and last above are its
    /// ends).
    pub step_rewards: Vec<f64>,
    pub seconds: f64,
}

fn mode_for(modes: &[Mode], seed: u64, prompt_id: &str) -> Mode {
    modes[(fnv1a(&format!("{seed}/{prompt_id}")) % modes.len() as u64) as usize]
}

/// Give the session Anticipatory Routing state for `cfg` (kept from a checkpoint when there
/// is one), or drop it when the mechanism is off.
fn prepare_anticipatory(session: &mut Session, cfg: &AnticipatoryConfig) -> Result<()> {
    if cfg.trigger == Trigger::Off {
        session.anticipatory = None;
        return Ok(());
    }
    let state = session.anticipatory.get_or_insert_with(AnticipatoryState::default);
    state.conform(cfg);
    state.check_against(&session.model)
}

/// Run GRPO from the session's current step to `cfg.steps` (or `cfg.stop_at`): per step,
/// [`sample_groups`] (with its rewards), [`group_advantages`], [`update_policy`] and
/// [`log_step`], then the shared end of step.
pub fn run_grpo(
    session: &mut Session,
    cfg: &GrpoConfig,
    source: &PromptSource,
    rollouts: &mut dyn Rollouts,
    reference: Option<&FrozenReference>,
    io: &mut TrainIo,
) -> Result<GrpoReport> {
    check_config(cfg, reference)?;
    let (base_routing, ar_cfg) = cfg.routing_plan()?;
    prepare_anticipatory(session, &ar_cfg)?;
    let mut report = GrpoReport { mean_reward_first: f64::NAN, ..Default::default() };
    let start = Instant::now();
    io.begin(&cfg.stage, cfg.steps, session);
    io.progress.message(&format!("optimizer groups: {}", session.opt.describe()));
    while session.counters.step < last_step(cfg.steps, cfg.stop_at) {
        let t0 = Instant::now();
        let batch = sample_groups(session, cfg, source, rollouts, io)?;
        report.sampled_tokens += batch.sampled_tokens;
        let reward_mean = batch.reward_mean();
        if report.mean_reward_first.is_nan() {
            report.mean_reward_first = reward_mean;
        }
        report.mean_reward_last = reward_mean;
        report.step_rewards.push(reward_mean);
        let rollout_s = t0.elapsed().as_secs_f64();
        let scored = group_advantages(cfg, &batch.groups);
        let rows: Vec<Row> = scored
            .iter()
            .map(|(t, a)| {
                let forced = (base_routing == RoutingMode::Keep).then(|| Arc::new(recorded_routes(t)));
                Row { t, adv: *a, forced }
            })
            .collect();
        // anticipatory routing this step? (decided by the spikes of earlier steps)
        let anticipating = session.anticipatory.as_ref().is_some_and(|a| a.is_active(&ar_cfg));
        let t1 = Instant::now();
        let upd = update_policy(session, cfg, &rows, reference, &ar_cfg, anticipating)?;
        session.counters.step += 1;
        let train_s = t1.elapsed().as_secs_f64();
        // spike detector: feed this step's signal, decide the next step's routing
        let signal = (upd.n > 0).then(|| match ar_cfg.detector.signal {
            SpikeSignal::Loss => upd.loss_sum / upd.n as f64,
            SpikeSignal::GradNorm => upd.grad_norm as f64 / upd.n as f64,
        });
        let outcome = session.anticipatory.as_mut().map(|a| a.end_step(signal, &ar_cfg));
        let ar = outcome.map(|outcome| AnticipatoryLog { cfg: &ar_cfg, active: anticipating, outcome, signal });
        let timing = StepTiming { rollout_s, train_s, queue_depth: rollouts.queue_depth() };
        log_step(io, session, cfg, &batch, &upd, &timing, ar);
        let st = session.counters.step;
        let clip = upd.clip as f64 / upd.n.max(1) as f64;
        let summary = format!("step {st}: reward {reward_mean:.3} clip {clip:.3} kept {}/{}", batch.kept, batch.seen);
        io.end_step(session, cfg.checkpoint_every, &summary)?;
    }
    io.finish()?;
    report.steps = session.counters.step;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn check_config(cfg: &GrpoConfig, reference: Option<&FrozenReference>) -> Result<()> {
    if cfg.group_size < 2 || cfg.prompts_per_step == 0 || cfg.modes.is_empty() || cfg.minibatch == 0 || cfg.epochs == 0
    {
        return Err(TrainError::Input(
            "GRPO needs group_size ≥ 2, prompts_per_step ≥ 1, modes, minibatch ≥ 1, epochs ≥ 1".into(),
        ));
    }
    if cfg.loss.beta > 0.0 && cfg.loss.kl != KlKind::None && reference.is_none() {
        return Err(TrainError::Input("a KL penalty needs a reference model".into()));
    }
    Ok(())
}

/// The scored groups of one step.
struct SampledGroups {
    /// Kept groups by (prompt id, mode).
    groups: BTreeMap<(String, String), Vec<Trajectory>>,
    /// (domain, mode, reward, response tokens) of every sample, kept or not.
    raw_rewards: Vec<(String, String, f32, usize)>,
    kept: usize,
    seen: usize,
    sampled_tokens: u64,
}

impl SampledGroups {
    /// Mean raw reward over every sample of the step.
    fn reward_mean(&self) -> f64 {
        self.raw_rewards.iter().map(|r| r.2 as f64).sum::<f64>() / self.raw_rewards.len().max(1) as f64
    }
}

/// Sample: `prompts_per_step` prompts × `group_size` scored responses with the current policy;
/// with dynamic sampling, groups whose rewards are all equal are dropped and replaced over up
/// to `max_refill_rounds` more rounds.
fn sample_groups(
    session: &mut Session,
    cfg: &GrpoConfig,
    source: &PromptSource,
    rollouts: &mut dyn Rollouts,
    io: &TrainIo,
) -> Result<SampledGroups> {
    let step = session.counters.step;
    let policy = session.weights()?;
    // the job's per-mode budgets (`max_tokens`) override `params.max_tokens`
    let params = SamplingParams {
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        top_k: cfg.top_k,
        max_tokens: 128,
        stop: vec![],
    };
    let max_tokens: Vec<(Mode, usize)> = Mode::ALL.iter().map(|&m| (m, cfg.shaping.for_mode(m).max_len)).collect();
    let mut out =
        SampledGroups { groups: BTreeMap::new(), raw_rewards: Vec::new(), kept: 0, seen: 0, sampled_tokens: 0 };
    let mut round = 0;
    while out.kept < cfg.prompts_per_step && round <= cfg.max_refill_rounds {
        let need = if round == 0 { cfg.prompts_per_step } else { cfg.prompts_per_step - out.kept };
        let tasks = source.take(need, session.counters.cursor)?;
        session.counters.cursor += need as u64;
        let modes: Vec<Mode> =
            tasks.iter().map(|t| mode_for(&cfg.modes, session.counters.seed, &t.prompt_id)).collect();
        let job = RolloutJob {
            job_id: format!("{}:{step}:{round}", cfg.stage),
            run: io.run.to_string(),
            stage: cfg.stage.clone(),
            step,
            policy_version: step,
            teachers: vec![None; tasks.len()],
            tasks,
            modes,
            n: cfg.group_size,
            params: params.clone(),
            max_tokens: max_tokens.clone(),
            seed: session.counters.seed ^ ((round as u64) << 48),
            score: true,
        };
        io.progress.message(&format!("step {step}: sampling {} × {}", need, cfg.group_size));
        let trajs = rollouts.sample(&job, &policy)?;
        let mut fresh: BTreeMap<(String, String), Vec<Trajectory>> = BTreeMap::new();
        for t in trajs {
            out.sampled_tokens += t.generated_tokens() as u64;
            session.counters.sampled_tokens += t.generated_tokens() as u64;
            out.raw_rewards.push((t.domain.clone(), t.mode.clone(), t.reward.unwrap_or(0.0), t.generated_tokens()));
            fresh.entry((t.prompt_id.clone(), t.mode.clone())).or_default().push(t);
        }
        for (k, g) in fresh {
            out.seen += 1;
            let rs: Vec<f32> = g.iter().map(|t| t.reward.unwrap_or(0.0)).collect();
            let varies = rs.iter().any(|&r| (r - rs[0]).abs() > 1e-6);
            if (!cfg.dynamic_sampling || varies) && out.kept < cfg.prompts_per_step {
                out.groups.insert(k, g);
                out.kept += 1;
            }
        }
        round += 1;
        if !cfg.dynamic_sampling {
            break;
        }
    }
    Ok(out)
}

/// Targets: each sample's group-relative advantage from its length-shaped reward.
fn group_advantages(cfg: &GrpoConfig, groups: &BTreeMap<(String, String), Vec<Trajectory>>) -> Vec<(Trajectory, f32)> {
    let mut out = Vec::new();
    for ((_, mode), g) in groups {
        let mode: Mode = mode.parse().unwrap_or(Mode::ThinkHigh);
        let rs: Vec<f32> = g.iter().map(|t| t.reward.unwrap_or(0.0)).collect();
        let lens: Vec<usize> = g.iter().map(Trajectory::generated_tokens).collect();
        let correct: Vec<bool> = rs.iter().map(|&r| r >= 1.0).collect();
        let shaped = cfg.shaping.apply(mode, &rs, &lens, &correct);
        let adv = advantages(&shaped, cfg.use_std, cfg.adv_eps);
        for (t, a) in g.iter().zip(adv) {
            out.push((t.clone(), a));
        }
    }
    out
}

/// What the updates of one step measured (sums over `n` minibatch updates).
#[derive(Default)]
struct UpdateSums {
    clip: f32,
    kl: f32,
    entropy: f32,
    grad_norm: f32,
    n: usize,
    masked: usize,
    train_tokens: usize,
    loss_sum: f64,
}

/// Update: `epochs` passes of minibatch gradient steps of the clipped surrogate (minibatches
/// with no advantage and no KL are skipped), then the router's load balancing.
fn update_policy(
    session: &mut Session,
    cfg: &GrpoConfig,
    rows: &[Row],
    reference: Option<&FrozenReference>,
    ar_cfg: &AnticipatoryConfig,
    anticipating: bool,
) -> Result<UpdateSums> {
    let step = session.counters.step;
    let lr = lr_schedule(step, cfg.warmup, cfg.steps, cfg.min_lr_ratio);
    // the temperature the sampler's log-probs were recorded at
    let tau = rollout::sampling::logprob_temperature(cfg.temperature);
    let mut sums = UpdateSums::default();
    let mut decisions = Vec::new();
    for _epoch in 0..cfg.epochs {
        for mb in rows.chunks(cfg.minibatch) {
            if mb.iter().all(|r| r.adv == 0.0) && cfg.loss.beta == 0.0 {
                continue;
            }
            let routed = match (&session.anticipatory, anticipating) {
                (Some(a), true) => Some(anticipatory_rows(&session.model, a, ar_cfg, mb)?),
                _ => None,
            };
            let mb = routed.as_deref().unwrap_or(mb);
            let PolicyEval { logprobs: lp, counts, old, entropy: e, decisions: dec, indexer_loss: aux } =
                policy_logprobs(&session.model, mb, tau, cfg.keep_sampling_mask)?;
            if counts.iter().sum::<usize>() == 0 {
                continue;
            }
            let ref_lp = match reference {
                Some(r) if cfg.loss.beta > 0.0 => {
                    let seqs: Vec<_> = mb.iter().map(|r| (r.t, r.forced.clone())).collect();
                    Some(r.logprobs(&seqs, tau, cfg.keep_sampling_mask)?)
                }
                _ => None,
            };
            let adv: Vec<f32> = mb.iter().map(|r| r.adv).collect();
            // sequences without counted tokens carry no loss
            let (lens, advs): (Vec<usize>, Vec<f32>) =
                counts.iter().zip(&adv).filter(|(c, _)| **c > 0).map(|(c, a)| (*c, *a)).unzip();
            let (loss, st) = grpo_loss(&lp, &old, ref_lp.as_deref(), &lens, &advs, &cfg.loss)?;
            let what = format!("GRPO loss at step {step}");
            let record_router = |s: &mut Session| match s.anticipatory.as_mut() {
                Some(a) => a.record_update(&s.model, ar_cfg),
                None => Ok(()),
            };
            let (lv, s) = backward_and_step(session, loss, aux, cfg.indexer_loss_coef, lr, &what, record_router)?;
            sums.loss_sum += lv as f64;
            sums.clip += st.clip_fraction;
            sums.kl += st.kl_mean;
            sums.entropy += e;
            sums.grad_norm += s.grad_norm;
            sums.masked += st.masked_sequences;
            sums.train_tokens += lens.iter().sum::<usize>();
            sums.n += 1;
            decisions.extend(dec);
        }
    }
    session.balance_router(&decisions)?;
    Ok(sums)
}

/// Wall time of a step's phases and the queue behind them.
struct StepTiming {
    rollout_s: f64,
    train_s: f64,
    queue_depth: Option<usize>,
}

/// Anticipatory Routing's state after a step.
struct AnticipatoryLog<'a> {
    cfg: &'a AnticipatoryConfig,
    /// This step was routed with the Δt-old router.
    active: bool,
    outcome: StepOutcome,
    signal: Option<f64>,
}

/// Log: the step's rewards (overall, per domain), response lengths per mode, surrogate
/// statistics, Anticipatory Routing's state (announcing a spike) and throughput.
fn log_step(
    io: &mut TrainIo,
    session: &Session,
    cfg: &GrpoConfig,
    batch: &SampledGroups,
    upd: &UpdateSums,
    timing: &StepTiming,
    ar: Option<AnticipatoryLog>,
) {
    let metrics = &mut *io.metrics;
    let st = session.counters.step;
    let tok = session.counters.sampled_tokens;
    let n = upd.n.max(1) as f64;
    let none = (None, None, None);
    let stage = cfg.stage.as_str();
    metrics.log(stage, st, "grpo/reward_mean", batch.reward_mean(), none, tok);
    let mut by_domain: BTreeMap<&str, (f64, f64, usize)> = BTreeMap::new();
    let mut by_mode: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for (d, m, r, l) in &batch.raw_rewards {
        let e = by_domain.entry(d.as_str()).or_default();
        e.0 += *r as f64;
        e.1 += (*r as f64).powi(2);
        e.2 += 1;
        let em = by_mode.entry(m.as_str()).or_default();
        em.0 += *l as f64;
        em.1 += 1;
    }
    for (d, (s1, s2, c)) in &by_domain {
        let mean = s1 / *c as f64;
        let std = (s2 / *c as f64 - mean * mean).max(0.0).sqrt();
        metrics.log(stage, st, "grpo/reward_mean", mean, (None, Some(d), None), tok);
        metrics.log(stage, st, "grpo/reward_std", std, (None, Some(d), None), tok);
    }
    for (m, (l, c)) in &by_mode {
        metrics.log(stage, st, "rollout/response_len", l / *c as f64, (None, None, Some(m)), tok);
    }
    metrics.log(stage, st, "grpo/clip_fraction", upd.clip as f64 / n, none, tok);
    metrics.log(stage, st, "grpo/kl", upd.kl as f64 / n, none, tok);
    metrics.log(stage, st, "grpo/entropy", upd.entropy as f64 / n, none, tok);
    metrics.log(stage, st, "train/grad_norm", upd.grad_norm as f64 / n, none, tok);
    metrics.log(stage, st, "grpo/kept_groups", batch.kept as f64 / batch.seen.max(1) as f64, none, tok);
    metrics.log(stage, st, "grpo/masked_sequences", upd.masked as f64, none, tok);
    if let Some(a) = ar {
        metrics.log(stage, st, "routing/anticipatory_active", f64::from(u8::from(a.active)), none, tok);
        metrics.log(stage, st, "routing/loss_spike", f64::from(u8::from(a.outcome.spike)), none, tok);
        if a.outcome.spike {
            io.progress.message(&format!(
                "step {st}: {:?} spike ({:.4}): anticipatory routing (Δt = {} updates) for the next {} steps",
                a.cfg.detector.signal,
                a.signal.unwrap_or(f64::NAN),
                a.cfg.dt,
                a.cfg.hold_steps
            ));
        }
    }
    let generated: f64 = batch.raw_rewards.iter().map(|r| r.3 as f64).sum();
    metrics.log(stage, st, "rollout/tokens_per_s", generated / timing.rollout_s.max(1e-9), none, tok);
    metrics.log(stage, st, "train/tokens_per_s", upd.train_tokens as f64 / timing.train_s.max(1e-9), none, tok);
    if let Some(d) = timing.queue_depth {
        metrics.log(stage, st, "queue/depth", d as f64, none, tok);
    }
}
