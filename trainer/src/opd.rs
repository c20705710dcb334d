//! Multi-teacher on-policy distillation (DeepSeek-V4's consolidation stage).
//!
//! Per step: the student samples its own responses to prompts mixed over domains and
//! reasoning modes; each sample gets teacher weights by domain from the registry (one-hot
//! by default); the teachers' head inputs over the sampled tokens are obtained in teacher
//! order (a [`TeacherStates`] backend: in-process or teacher workers); then
//! `L = Σ_{b,t} m_{b,t} Σ_i w_{b,i} KL_t(π_θ ‖ π_{E_i}) / Σ m` is minimised with the fused
//! full-vocabulary reverse KL of [`crate::kl`]. Each teacher's head is loaded once per step
//! (whatever the number of minibatches) and dropped after the last minibatch that uses it.

pub use crate::backends::{LocalTeachers, TeacherStates};
use crate::error::{Result, TrainError};
use crate::grpo::{recorded_routes, Rollouts};
use crate::kl::{fused_reverse_kl, Chunks, Estimator, FusedReverseKl};
use crate::optim::lr_schedule;
use crate::session::Session;
use crate::step::{backward_and_step, last_step, TrainIo};
use candle_core::Tensor;
use datasets::chat::Mode;
use datasets::prompts::PromptSource;
use datasets::store::{TeacherState, Trajectory};
use datasets::tasks::fnv1a;
use model::train::SeqInput;
use rollout::{RolloutJob, SamplingParams};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use teachers::{teacher_states, Registry, TeacherPool};

/// OPD settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpdConfig {
    /// Stop after this step (resumably), while the learning-rate schedule still spans `steps`
    /// (`--stop-after-steps`): a stopped and resumed run is bit-identical to an uninterrupted one.
    #[serde(skip)]
    pub stop_at: Option<u64>,
    pub steps: u64,
    pub prompts_per_step: usize,
    /// Samples per prompt.
    pub group_size: usize,
    /// Sampling temperature of the student's rollouts.
    pub temperature: f32,
    /// Temperature of the KL (both distributions).
    pub kl_temperature: f32,
    /// Reasoning modes and their share of the prompts.
    pub mode_mix: Vec<(Mode, f32)>,
    /// Response budget per mode.
    pub max_tokens: Vec<(Mode, usize)>,
    pub estimator: Estimator,
    /// Sequences per optimizer step.
    pub minibatch: usize,
    pub chunk_rows: usize,
    pub chunk_vocab: usize,
    /// Replay the sampler's expert ids in the training forward.
    pub keep_routing: bool,
    pub warmup: u64,
    pub min_lr_ratio: f32,
    pub indexer_loss_coef: f32,
    pub checkpoint_every: u64,
    pub stage: String,
}

impl Default for OpdConfig {
    fn default() -> Self {
        OpdConfig {
            stop_at: None,
            steps: 20,
            prompts_per_step: 16,
            group_size: 1,
            temperature: 1.0,
            kl_temperature: 1.0,
            mode_mix: vec![(Mode::NonThink, 0.3), (Mode::ThinkHigh, 0.7)],
            max_tokens: vec![(Mode::NonThink, 48), (Mode::ThinkHigh, 128), (Mode::ThinkMax, 256)],
            estimator: Estimator::FullVocab,
            minibatch: 32,
            chunk_rows: Chunks::default().rows,
            chunk_vocab: Chunks::default().vocab,
            keep_routing: true,
            warmup: 0,
            min_lr_ratio: 0.5,
            indexer_loss_coef: 1.0,
            checkpoint_every: 0,
            stage: "opd".into(),
        }
    }
}

/// Mode of a prompt drawn from `mix` deterministically by (seed, prompt id).
pub fn mode_from_mix(mix: &[(Mode, f32)], seed: u64, prompt_id: &str) -> Mode {
    let total: f32 = mix.iter().map(|m| m.1.max(0.0)).sum();
    let u = (fnv1a(&format!("mode/{seed}/{prompt_id}")) % 1_000_000) as f32 / 1_000_000.0 * total;
    let mut acc = 0.0;
    for &(m, w) in mix {
        acc += w.max(0.0);
        if u < acc {
            return m;
        }
    }
    mix.last().map_or(Mode::ThinkHigh, |m| m.0)
}

/// Teacher weights of every trajectory, by domain.
pub fn sample_weights(registry: &Registry, trajs: &[Trajectory]) -> Result<Vec<Vec<(usize, f32)>>> {
    trajs
        .iter()
        .map(|t| {
            let w = registry.weights_for(&t.domain);
            if w.is_empty() {
                Err(TrainError::Input(format!("no teacher for domain `{}` (sample {})", t.domain, t.traj_id)))
            } else {
                Ok(w)
            }
        })
        .collect()
}

/// Outcome of an OPD run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpdReport {
    pub steps: u64,
    pub sampled_tokens: u64,
    pub kl_first: f64,
    pub kl_last: f64,
    pub seconds: f64,
}

/// Statistics accumulated over a step, per label.
#[derive(Default, Clone, Copy)]
struct Acc {
    kl: f64,
    ent_s: f64,
    ent_t: f64,
    tokens: f64,
}

impl Acc {
    fn add(&mut self, kl: f32, es: f32, et: f32, w: f32) {
        self.kl += (kl * w) as f64;
        self.ent_s += (es * w) as f64;
        self.ent_t += (et * w) as f64;
        self.tokens += w as f64;
    }
}

/// One minibatch: student forward, then every teacher's fused KL on its rows.
struct Minibatch<'a> {
    trajs: Vec<&'a Trajectory>,
    weights: Vec<&'a [(usize, f32)]>,
}

/// The teacher heads of one step: each loaded on first use and dropped after the last
/// minibatch that needs it, so a step loads every head once, however many minibatches it
/// has, and holds only the heads still to be used.
struct StepHeads {
    /// Teacher index → the last minibatch with weight on it.
    last_use: HashMap<usize, usize>,
    held: HashMap<usize, (Arc<Vec<f32>>, usize)>,
}

impl StepHeads {
    /// Plan for `minibatches` (indices into `weights`, the per-sample teacher weights).
    fn plan(minibatches: &[&[usize]], weights: &[Vec<(usize, f32)>]) -> Self {
        let mut last_use = HashMap::new();
        for (k, mb) in minibatches.iter().enumerate() {
            for &i in mb.iter() {
                for &(t, _) in &weights[i] {
                    last_use.insert(t, k);
                }
            }
        }
        StepHeads { last_use, held: HashMap::new() }
    }

    /// Teacher `idx`'s head and `dim`, loaded through `teachers` on first use this step.
    fn get(&mut self, idx: usize, teachers: &mut dyn TeacherStates) -> Result<(Arc<Vec<f32>>, usize)> {
        if let Some((h, d)) = self.held.get(&idx) {
            return Ok((h.clone(), *d));
        }
        let (h, d) = teachers.head(idx)?;
        self.held.insert(idx, (h.clone(), d));
        Ok((h, d))
    }

    /// Drop the heads no minibatch after `mb` needs.
    fn release_after(&mut self, mb: usize) {
        let last_use = &self.last_use;
        self.held.retain(|idx, _| last_use.get(idx).is_some_and(|&k| k > mb));
    }
}

/// Run OPD from the session's current step to `cfg.steps` (or `cfg.stop_at`): per step,
/// [`sample_students`], [`collect_teacher_states`], [`update_student`] (targets: each token's
/// teacher mixture) and [`log_step`], then the shared end of step.
pub fn run_opd(
    session: &mut Session,
    cfg: &OpdConfig,
    source: &PromptSource,
    rollouts: &mut dyn Rollouts,
    teachers: &mut dyn TeacherStates,
    registry: &Registry,
    io: &mut TrainIo,
) -> Result<OpdReport> {
    check_config(cfg)?;
    let mut report = OpdReport { kl_first: f64::NAN, ..Default::default() };
    let start = Instant::now();
    io.begin(&cfg.stage, cfg.steps, session);
    while session.counters.step < last_step(cfg.steps, cfg.stop_at) {
        let t0 = Instant::now();
        let trajs = sample_students(session, cfg, source, rollouts, registry, io)?;
        let sampled: u64 = trajs.iter().map(|t| t.generated_tokens() as u64).sum();
        report.sampled_tokens += sampled;
        session.counters.sampled_tokens += sampled;
        let rollout_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let weights = sample_weights(registry, &trajs)?;
        let states = collect_teacher_states(session.counters.step, cfg, &trajs, &weights, teachers, registry, io)?;
        let teacher_s = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let upd = update_student(session, cfg, &trajs, &weights, &states, teachers)?;
        session.counters.step += 1;
        let train_s = t2.elapsed().as_secs_f64();
        let kl = upd.all.kl / upd.all.tokens.max(1e-9);
        if report.kl_first.is_nan() {
            report.kl_first = kl;
        }
        report.kl_last = kl;
        let timing = StepTiming { rollout_s, teacher_s, train_s, sampled, queue_depth: rollouts.queue_depth() };
        log_step(io, session, cfg, &trajs, &upd, &*teachers, &timing);
        let summary =
            format!("step {}: reverse KL {kl:.4} over {} tokens", session.counters.step, upd.all.tokens as u64);
        io.end_step(session, cfg.checkpoint_every, &summary)?;
    }
    io.finish()?;
    report.steps = session.counters.step;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn check_config(cfg: &OpdConfig) -> Result<()> {
    if cfg.prompts_per_step == 0 || cfg.group_size == 0 || cfg.minibatch == 0 || cfg.mode_mix.is_empty() {
        return Err(TrainError::Input("OPD needs prompts_per_step, group_size, minibatch ≥ 1 and a mode mix".into()));
    }
    if cfg.kl_temperature.is_nan() || cfg.kl_temperature <= 0.0 {
        return Err(TrainError::Input(format!("KL temperature must be positive, got {}", cfg.kl_temperature)));
    }
    Ok(())
}

/// Sample: the student samples its own responses to `prompts_per_step` prompts, each in a
/// mode of the mix and tagged with its domain's teacher.
fn sample_students(
    session: &mut Session,
    cfg: &OpdConfig,
    source: &PromptSource,
    rollouts: &mut dyn Rollouts,
    registry: &Registry,
    io: &TrainIo,
) -> Result<Vec<Trajectory>> {
    let step = session.counters.step;
    let policy = session.weights()?;
    let tasks = source.take(cfg.prompts_per_step, session.counters.cursor)?;
    session.counters.cursor += tasks.len() as u64;
    let modes: Vec<Mode> =
        tasks.iter().map(|t| mode_from_mix(&cfg.mode_mix, session.counters.seed, &t.prompt_id)).collect();
    let teacher_of: Vec<Option<String>> = tasks
        .iter()
        .map(|t| {
            let w = registry.weights_for(&t.domain);
            w.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map(|(i, _)| registry.teachers[*i].id.clone())
        })
        .collect();
    if let Some(t) = tasks.iter().zip(&teacher_of).find(|(_, w)| w.is_none()) {
        return Err(TrainError::Input(format!("no teacher for domain `{}`", t.0.domain)));
    }
    // the job's per-mode budgets (`max_tokens`) override `params.max_tokens`
    let params = SamplingParams { temperature: cfg.temperature, top_p: 1.0, top_k: 0, max_tokens: 128, stop: vec![] };
    let job = RolloutJob {
        job_id: format!("{}:{step}", cfg.stage),
        run: io.run.to_string(),
        stage: cfg.stage.clone(),
        step,
        policy_version: step,
        tasks,
        modes,
        teachers: teacher_of,
        n: cfg.group_size,
        params,
        max_tokens: cfg.max_tokens.clone(),
        seed: session.counters.seed ^ (step << 20),
        score: true,
    };
    io.progress.message(&format!("step {step}: student sampling {} × {}", job.tasks.len(), cfg.group_size));
    rollouts.sample(&job, &policy)
}

/// Score: every sample's teacher states (head inputs at each response position), teacher by
/// teacher (one teacher resident at a time), checked to cover every response token.
fn collect_teacher_states(
    step: u64,
    cfg: &OpdConfig,
    trajs: &[Trajectory],
    weights: &[Vec<(usize, f32)>],
    teachers: &mut dyn TeacherStates,
    registry: &Registry,
    io: &TrainIo,
) -> Result<HashMap<(String, usize), TeacherState>> {
    let mut states: HashMap<(String, usize), TeacherState> = HashMap::new();
    for idx in 0..registry.len() {
        let mine: Vec<&Trajectory> =
            trajs.iter().zip(weights).filter(|(_, w)| w.iter().any(|(i, _)| *i == idx)).map(|(t, _)| t).collect();
        if mine.is_empty() {
            continue;
        }
        io.progress.message(&format!("step {step}: teacher {} over {} samples", teachers.id(idx), mine.len()));
        let got = teachers.states(idx, &mine, &cfg.stage, step)?;
        for t in &mine {
            let s = got.get(&t.traj_id).ok_or_else(|| {
                TrainError::Input(format!("teacher {} returned no states for {}", teachers.id(idx), t.traj_id))
            })?;
            if s.len() != t.response_tokens.len() {
                return Err(TrainError::Shape(format!(
                    "teacher {} states for {}: {} rows for {} response tokens",
                    teachers.id(idx),
                    t.traj_id,
                    s.len(),
                    t.response_tokens.len()
                )));
            }
            states.insert((t.traj_id.clone(), idx), s.clone());
        }
    }
    Ok(states)
}

/// What the student updates of one step measured.
#[derive(Default)]
struct UpdateSums {
    by_teacher: BTreeMap<usize, Acc>,
    by_domain: BTreeMap<String, Acc>,
    all: Acc,
    grad_norm: f64,
    updates: usize,
    train_tokens: usize,
}

/// Update: per minibatch, the weighted reverse KL to each token's teacher mixture over the
/// full vocabulary ([`minibatch_loss`]) and an optimizer step; then load balancing.
fn update_student(
    session: &mut Session,
    cfg: &OpdConfig,
    trajs: &[Trajectory],
    weights: &[Vec<(usize, f32)>],
    states: &HashMap<(String, usize), TeacherState>,
    teachers: &mut dyn TeacherStates,
) -> Result<UpdateSums> {
    let step = session.counters.step;
    let vocab = session.model.config.vocab_size;
    let chunks = Chunks { rows: cfg.chunk_rows.max(1), vocab: cfg.chunk_vocab.max(1) };
    let lr = lr_schedule(step, cfg.warmup, cfg.steps, cfg.min_lr_ratio);
    let mut sums = UpdateSums::default();
    let mut decisions = Vec::new();
    let order: Vec<usize> = (0..trajs.len()).collect();
    let minibatches: Vec<&[usize]> = order.chunks(cfg.minibatch).collect();
    let mut heads = StepHeads::plan(&minibatches, weights);
    for (k, mb_idx) in minibatches.iter().enumerate() {
        let mb = Minibatch {
            trajs: mb_idx.iter().map(|&i| &trajs[i]).collect(),
            weights: mb_idx.iter().map(|&i| weights[i].as_slice()).collect(),
        };
        let out = minibatch_loss(session, &mb, states, teachers, &mut heads, cfg, chunks, vocab)?;
        heads.release_after(k);
        let Some((loss, rows)) = out.loss else { continue };
        let what = format!("OPD loss at step {step}");
        let (_, s) = backward_and_step(session, loss, out.indexer_loss, cfg.indexer_loss_coef, lr, &what, |_| Ok(()))?;
        sums.grad_norm += s.grad_norm as f64;
        sums.updates += 1;
        sums.train_tokens += out.tokens;
        decisions.extend(out.decisions);
        for r in rows {
            sums.by_teacher.entry(r.teacher).or_default().add(r.kl, r.ent_s, r.ent_t, r.weight);
            sums.by_domain.entry(mb.trajs[r.seq].domain.clone()).or_default().add(r.kl, r.ent_s, r.ent_t, r.weight);
            sums.all.add(r.kl, r.ent_s, r.ent_t, r.weight);
        }
    }
    session.balance_router(&decisions)?;
    Ok(sums)
}

/// Wall time of a step's phases, its sampled tokens and the queue behind them.
struct StepTiming {
    rollout_s: f64,
    teacher_s: f64,
    train_s: f64,
    sampled: u64,
    queue_depth: Option<usize>,
}

/// Log: reverse KL and entropies overall, per teacher and per domain; rewards per domain and
/// response lengths per mode of the student's samples; throughput.
fn log_step(
    io: &mut TrainIo,
    session: &Session,
    cfg: &OpdConfig,
    trajs: &[Trajectory],
    upd: &UpdateSums,
    teachers: &dyn TeacherStates,
    timing: &StepTiming,
) {
    let metrics = &mut *io.metrics;
    let st = session.counters.step;
    let tok = session.counters.sampled_tokens;
    let stage = cfg.stage.as_str();
    let none = (None, None, None);
    let all = &upd.all;
    metrics.log(stage, st, "opd/reverse_kl", all.kl / all.tokens.max(1e-9), none, tok);
    metrics.log(stage, st, "opd/student_entropy", all.ent_s / all.tokens.max(1e-9), none, tok);
    metrics.log(stage, st, "opd/teacher_entropy", all.ent_t / all.tokens.max(1e-9), none, tok);
    for (idx, a) in &upd.by_teacher {
        let id = teachers.id(*idx);
        let l = (Some(id.as_str()), None, None);
        metrics.log(stage, st, "opd/reverse_kl", a.kl / a.tokens.max(1e-9), l, tok);
        metrics.log(stage, st, "opd/student_entropy", a.ent_s / a.tokens.max(1e-9), l, tok);
        metrics.log(stage, st, "opd/teacher_entropy", a.ent_t / a.tokens.max(1e-9), l, tok);
        metrics.log(stage, st, "opd/tokens", a.tokens, l, tok);
    }
    for (d, a) in &upd.by_domain {
        let l = (None, Some(d.as_str()), None);
        metrics.log(stage, st, "opd/reverse_kl", a.kl / a.tokens.max(1e-9), l, tok);
        metrics.log(stage, st, "opd/tokens", a.tokens, l, tok);
    }
    let mut reward_by_domain: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    let mut len_by_mode: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for t in trajs {
        let e = reward_by_domain.entry(t.domain.as_str()).or_default();
        e.0 += t.reward.unwrap_or(0.0) as f64;
        e.1 += 1;
        let m = len_by_mode.entry(t.mode.as_str()).or_default();
        m.0 += t.generated_tokens() as f64;
        m.1 += 1;
    }
    for (d, (s, c)) in &reward_by_domain {
        metrics.log(stage, st, "opd/reward_mean", s / *c as f64, (None, Some(d), None), tok);
    }
    for (m, (s, c)) in &len_by_mode {
        metrics.log(stage, st, "rollout/response_len", s / *c as f64, (None, None, Some(m)), tok);
    }
    metrics.log(stage, st, "train/grad_norm", upd.grad_norm / upd.updates.max(1) as f64, none, tok);
    metrics.log(stage, st, "rollout/tokens_per_s", timing.sampled as f64 / timing.rollout_s.max(1e-9), none, tok);
    metrics.log(stage, st, "opd/teacher_seconds", timing.teacher_s, none, tok);
    metrics.log(stage, st, "train/tokens_per_s", upd.train_tokens as f64 / timing.train_s.max(1e-9), none, tok);
    if let Some(d) = timing.queue_depth {
        metrics.log(stage, st, "queue/depth", d as f64, none, tok);
    }
}

/// Per counted row: which sequence and teacher, its weight in the token mean, and statistics.
struct RowOut {
    seq: usize,
    teacher: usize,
    weight: f32,
    kl: f32,
    ent_s: f32,
    ent_t: f32,
}

struct MinibatchOut {
    loss: Option<(Tensor, Vec<RowOut>)>,
    indexer_loss: Option<Tensor>,
    decisions: Vec<model::Decisions>,
    tokens: usize,
}

fn minibatch_loss(
    session: &Session,
    mb: &Minibatch,
    states: &HashMap<(String, usize), TeacherState>,
    teachers: &mut dyn TeacherStates,
    heads: &mut StepHeads,
    cfg: &OpdConfig,
    chunks: Chunks,
    vocab: usize,
) -> Result<MinibatchOut> {
    let inputs: Vec<SeqInput> = mb
        .trajs
        .iter()
        .map(|t| {
            let mut toks = t.prompt_tokens.clone();
            toks.extend(&t.response_tokens);
            SeqInput {
                tokens: toks,
                forced: cfg.keep_routing.then(|| Arc::new(recorded_routes(t))),
                ..Default::default()
            }
        })
        .collect();
    // counted rows: (sequence, response index, flat hidden row)
    let model = &session.model;
    let out = model.forward(&inputs)?;
    let (s, d) = (out.hidden.dim(1)?, out.hidden.dim(2)?);
    let mut counted: Vec<(usize, usize, u32)> = Vec::new();
    for (b, t) in mb.trajs.iter().enumerate() {
        let p = t.prompt_tokens.len();
        for j in 0..t.response_tokens.len() {
            if t.response_mask.as_ref().is_some_and(|m| m[j] == 0) {
                continue;
            }
            counted.push((b, j, (b * s + p - 1 + j) as u32));
        }
    }
    let n = counted.len();
    if n == 0 {
        return Ok(MinibatchOut { loss: None, indexer_loss: out.indexer_loss, decisions: out.decisions, tokens: 0 });
    }
    let flat = out.hidden.reshape((mb.trajs.len() * s, d))?;
    let head = model.var("head.weight")?;
    let mut total: Option<Tensor> = None;
    let mut rows_out = Vec::new();
    let mut teacher_ids: Vec<usize> = mb.weights.iter().flat_map(|w| w.iter().map(|x| x.0)).collect();
    teacher_ids.sort_unstable();
    teacher_ids.dedup();
    for idx in teacher_ids {
        // this teacher's rows
        let mut sel = Vec::new();
        let mut coef = Vec::new();
        let mut targets = Vec::new();
        let mut meta = Vec::new();
        let (head_t, dt) = heads.get(idx, teachers)?;
        let mut t_hidden: Vec<f32> = Vec::new();
        for &(b, j, row) in &counted {
            let Some(&(_, w)) = mb.weights[b].iter().find(|x| x.0 == idx) else { continue };
            let traj = mb.trajs[b];
            let st = states
                .get(&(traj.traj_id.clone(), idx))
                .ok_or_else(|| TrainError::Input(format!("missing teacher states for {}", traj.traj_id)))?;
            if st.dim != dt {
                return Err(TrainError::Shape(format!("teacher states of dim {} for a head of dim {dt}", st.dim)));
            }
            t_hidden.extend(st.states[j * dt..(j + 1) * dt].iter().map(|x| x.to_f32()));
            sel.push(row);
            coef.push(w / n as f32);
            targets.push(traj.response_tokens[j]);
            meta.push((b, w));
        }
        if sel.is_empty() {
            continue;
        }
        if head_t.len() != vocab * dt {
            return Err(TrainError::Shape(format!(
                "teacher {} head has {} values, expected vocab {vocab} × dim {dt}",
                teachers.id(idx),
                head_t.len()
            )));
        }
        let idx_t = Tensor::from_vec(sel, meta.len(), flat.device())?;
        let h = flat.index_select(&idx_t, 0)?;
        let mut op = FusedReverseKl::new(Arc::new(t_hidden), head_t, dt, coef, cfg.kl_temperature);
        op.chunks = chunks;
        op.estimator = cfg.estimator;
        if cfg.estimator == Estimator::Sampled {
            op.targets = Some(targets);
        }
        let (loss, res) = fused_reverse_kl(&h, head, op)?;
        if let Some(stats) = res.stats() {
            for (k, &(b, w)) in meta.iter().enumerate() {
                rows_out.push(RowOut {
                    seq: b,
                    teacher: idx,
                    weight: w,
                    kl: stats.kl[k],
                    ent_s: stats.student_entropy[k],
                    ent_t: stats.teacher_entropy[k],
                });
            }
        }
        total = Some(match total {
            None => loss,
            Some(t) => (t + loss)?,
        });
    }
    Ok(MinibatchOut {
        loss: total.map(|t| (t, rows_out)),
        indexer_loss: out.indexer_loss,
        decisions: out.decisions,
        tokens: n,
    })
}

/// Distillation gap on held-out prompts: the student answers greedily, and the mean
/// per-token reverse KL to each sample's teachers is measured over its response tokens
/// (inference only). Returns the mean KL by domain.
pub fn eval_gap(
    student: &model::ModelWeights,
    registry: &Registry,
    pool: &mut TeacherPool,
    tasks: &[datasets::Task],
    mode: Mode,
    max_tokens: usize,
    tok: &dyn datasets::Tokenizer,
) -> Result<BTreeMap<String, f64>> {
    let engine = model::Engine::new(student, model::EngineOptions::default())?;
    let job = RolloutJob {
        job_id: "eval-gap".into(),
        run: "eval".into(),
        stage: "eval".into(),
        step: 0,
        policy_version: 0,
        tasks: tasks.to_vec(),
        modes: vec![mode; tasks.len()],
        teachers: vec![None; tasks.len()],
        n: 1,
        params: SamplingParams::greedy(max_tokens),
        max_tokens: vec![],
        seed: 0,
        score: true,
    };
    let (trajs, _) = rollout::run_job(&engine, tok, &job, &Default::default(), &datasets::progress::NoProgress)?;
    let me = teachers::LoadedTeacher::from_weights("student", student, model::EngineOptions::default())
        .map_err(|e| TrainError::Input(e.to_string()))?;
    let refs: Vec<&Trajectory> = trajs.iter().collect();
    let mine = teacher_states(&me, &refs, "eval", 0).map_err(|e| TrainError::Input(e.to_string()))?;
    let weights = sample_weights(registry, &trajs)?;
    let vocab = student.config.vocab_size;
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for idx in 0..registry.len() {
        let rows: Vec<usize> = (0..trajs.len()).filter(|&b| weights[b].iter().any(|(i, _)| *i == idx)).collect();
        if rows.is_empty() {
            continue;
        }
        let teacher = pool.get(idx).map_err(|e| TrainError::Input(e.to_string()))?;
        let sel: Vec<&Trajectory> = rows.iter().map(|&b| &trajs[b]).collect();
        let theirs = teacher_states(&teacher, &sel, "eval", 0).map_err(|e| TrainError::Input(e.to_string()))?;
        let (mut hs, mut ht, mut coef, mut dom) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, &b) in rows.iter().enumerate() {
            let w = weights[b].iter().find(|x| x.0 == idx).map_or(0.0, |x| x.1);
            let t = &trajs[b];
            for j in 0..t.response_tokens.len() {
                if t.response_mask.as_ref().is_some_and(|m| m[j] == 0) {
                    continue;
                }
                hs.extend(mine[b].states[j * me.dim..(j + 1) * me.dim].iter().map(|x| x.to_f32()));
                ht.extend(theirs[k].states[j * teacher.dim..(j + 1) * teacher.dim].iter().map(|x| x.to_f32()));
                coef.push(w);
                dom.push(t.domain.clone());
            }
        }
        if coef.is_empty() {
            continue;
        }
        let out = crate::kl::reverse_kl(
            crate::kl::HeadInput { hidden: &hs, head: &me.head, dim: me.dim },
            crate::kl::HeadInput { hidden: &ht, head: &teacher.head, dim: teacher.dim },
            &coef,
            vocab,
            1.0,
            Estimator::FullVocab,
            None,
            Chunks::default(),
        )?;
        for ((d, kl), w) in dom.iter().zip(&out.rows.kl).zip(&coef) {
            let e = sums.entry(d.clone()).or_default();
            e.0 += (*kl * *w) as f64;
            e.1 += *w as f64;
        }
    }
    Ok(sums.into_iter().map(|(d, (s, w))| (d, s / w.max(1e-12))).collect())
}
