//! Staged pipelines: `v4post run [pipeline.toml]` takes a base through SFT → GRPO experts →
//! multi-teacher OPD → Think Max → evaluation, in a run directory that makes it resumable:
//!
//! ```text
//! runs/<name>/pipeline.toml            the resolved config (credentials redacted)
//! runs/<name>/tokenizer.json           the base's tokenizer (+ tokenizer_config.json), if it has one
//! runs/<name>/state.json               completed stages and their outputs
//! runs/<name>/checkpoints/<stage>/     step checkpoints (model, optimizer, RNG, data cursor)
//! runs/<name>/models/<stage>/          stage results (F32 + rollout/ FP4 export)
//! runs/<name>/policy/<stage>/vNNNNNN/  policy versions published to rollout workers
//! runs/<name>/trajectories/<stage>/    trajectory shards
//! runs/<name>/teacher_states/<stage>/  teacher head-input shards
//! runs/<name>/metrics/                 metric shards (dashboard, report, TensorBoard)
//! runs/<name>/teachers.toml            the experts of the grpo stage, as a teacher registry
//! runs/<name>/results.json             evaluation of base, teachers, student, Think Max
//! ```
//!
//! Every directory named after a run, stage, domain or teacher goes through
//! [`datasets::safe_component`] (a reversible escape into one plain file name), so a
//! dataset's `domain` such as `openai/gsm8k` or `../x` never reaches outside its parent;
//! the names themselves stay as written in `state.json`, `results.json` and reports.
//!
//! The tokenizer of every stage, worker and evaluation is the base checkpoint's (its
//! `tokenizer.json`, else the byte tokenizer; a preset has none). It is copied into the run
//! directory first, and every model the run writes (stage results, step checkpoints, policy
//! versions) carries it, so a worker reads it from the policy it loads.
//!
//! Training stages checkpoint after every optimizer step, so `--resume` after a crash at
//! any point neither repeats nor loses a step; trajectories are idempotent by `traj_id`.

pub mod config;
pub mod remote;
pub mod results;
pub mod validate;
pub mod workers;

use crate::models::Start;
use crate::queue::{self, QueueConfig};
use crate::ui::Bars;
use anyhow::{bail, Context, Result};
use config::{Optim, PipelineConfig, Stage};
use datasets::chat::Mode;
use datasets::prompts::PromptSource;
use datasets::safe_component;
use datasets::store::MetricsWriter;
use datasets::tasks::{self, fnv1a, Split};
use datasets::tokenizer::{self as tokenizer, Tokenizer};
use model::checkpoint;
use model::train::TrainOptions;
use model::ModelWeights;
use remote::{QueueRollouts, QueueTeachers, Remote};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trainer::Session;
use trainer::TrainIo;
use workers::{LocalWorkers, WorkerKind};

/// Packed length of the experts' domain SFT: the longest built-in Non-think / Think High
/// example (an agent.chain episode in Think High) is ~490 tokens at difficulty 1.
pub const EXPERT_SFT_MAX_LEN: usize = 512;
/// Packed length of the Think Max SFT: the Think Max system prefix alone is ~480 tokens and
/// the longest Think Max example (agent.chain) ~1070; the SFT default fits them all.
pub const THINK_MAX_SFT_MAX_LEN: usize = trainer::sft::DEFAULT_MAX_LEN;

/// What is done, for `--resume`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    /// Stage key → its outcome (model directory relative to the run, report).
    pub completed: BTreeMap<String, StageOutcome>,
    /// Wall time of earlier attempts (a resumed run adds its own).
    pub wall_s: f64,
    pub finished: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageOutcome {
    pub model: Option<PathBuf>,
    pub report: serde_json::Value,
}

fn write_json_atomic(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    checkpoint::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// How `v4post run` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: bool,
    pub json: bool,
    /// Queue URL overriding the config (e.g. to give a password on resume).
    pub queue: Option<String>,
    /// Stop after this many optimizer steps in total (crash/resume tests).
    pub stop_after_steps: Option<u64>,
    /// The run directory instead of `runs_dir/<name>` (a training verb's `--out`/`--work`).
    pub run_dir: Option<PathBuf>,
}

struct Ctx {
    cfg: PipelineConfig,
    dir: PathBuf,
    state: RunState,
    remote: Remote,
    bars: Bars,
    started: Instant,
    steps_this_process: u64,
    stop_after: Option<u64>,
    /// `cfg.data`'s difficulty of built-in prompts, resolved.
    difficulty: tasks::Difficulty,
    /// The base's tokenizer (its files are in `dir`).
    tok: Arc<dyn Tokenizer>,
}

impl Ctx {
    fn save_state(&self) -> Result<()> {
        let mut st = self.state.clone();
        st.wall_s += self.started.elapsed().as_secs_f64();
        write_json_atomic(&self.dir.join("state.json"), &st)
    }

    fn done(&self, key: &str) -> Option<&StageOutcome> {
        self.state.completed.get(key)
    }

    fn complete(&mut self, key: &str, model: Option<PathBuf>, report: serde_json::Value) -> Result<()> {
        let model = model.map(|m| remote::rel(&self.dir, &m));
        self.state.completed.insert(key.to_string(), StageOutcome { model, report });
        self.save_state()?;
        // the stage's result is safe: its step checkpoints (with optimizer state) can go
        let ck = self.ckpt_root(key);
        if ck.exists() {
            std::fs::remove_dir_all(&ck).with_context(|| format!("removing {}", ck.display()))?;
        }
        Ok(())
    }

    fn model_path(&self, key: &str) -> Option<PathBuf> {
        self.done(key).and_then(|o| o.model.clone()).map(|m| self.dir.join(m))
    }

    fn seed(&self, key: &str) -> u64 {
        self.cfg.run.seed ^ fnv1a(key)
    }

    /// A session for stage `key`: resumed from its latest step checkpoint, or fresh from `start`.
    fn session(&self, key: &str, start: &ModelWeights, optim: &Optim) -> Result<Session> {
        let root = self.ckpt_root(key);
        let oc = optim.config();
        let mut s = match Session::latest(&root) {
            Some(latest) => {
                tracing::info!(stage = key, "resuming from {}", latest.display());
                Session::load(&latest, TrainOptions::default(), oc)?
            }
            None => Session::new(start, TrainOptions::default(), oc, self.seed(key))?,
        };
        s.tokenizer_from = Some(self.dir.clone());
        Ok(s)
    }

    /// `checkpoints/<stage>` or, for a key `kind/name` (`grpo/<domain>`), `checkpoints/<kind>/<name>`;
    /// every part escaped.
    fn ckpt_root(&self, key: &str) -> PathBuf {
        let root = self.dir.join("checkpoints");
        match key.split_once('/') {
            Some((kind, name)) => root.join(safe_component(kind)).join(safe_component(name)),
            None => root.join(safe_component(key)),
        }
    }

    /// Write the stage's final model (F32 + FP4 rollout export) atomically.
    fn write_model(&self, key: &str, w: &ModelWeights) -> Result<PathBuf> {
        let name = model_dir_name(key);
        let dir = self.dir.join("models").join(&name);
        let tmp = self.dir.join("models").join(format!(".{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        crate::models::write_outputs(w, &tmp, Some(self.dir.as_path()))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::rename(&tmp, &dir)?;
        Ok(dir)
    }

    fn count_steps(&mut self, n: u64) -> Result<()> {
        self.steps_this_process += n;
        if let Some(limit) = self.stop_after {
            if self.steps_this_process >= limit {
                self.save_state()?;
                bail!("stopped after {limit} optimizer steps as asked (--stop-after-steps); continue with --resume");
            }
        }
        Ok(())
    }

    fn source(&self, domains: &str) -> PromptSource {
        match &self.cfg.data.prompts {
            Some(p) => {
                if domains == "*" {
                    PromptSource::File(p.clone())
                } else {
                    PromptSource::FileDomains(p.clone(), domains.to_string())
                }
            }
            None => PromptSource::Builtin {
                domains: domains.to_string(),
                split: Split::Train,
                seed: self.cfg.run.seed,
                difficulty: self.difficulty.clone(),
            },
        }
    }

    /// Domains of the training data.
    fn domains(&self) -> Result<Vec<String>> {
        match &self.cfg.data.prompts {
            Some(p) => {
                let mut d: Vec<String> = datasets::prompts::load_dataset(p)?.into_iter().map(|t| t.domain).collect();
                d.sort();
                d.dedup();
                Ok(d)
            }
            None => Ok(tasks::domains().iter().map(|d| d.domain.to_string()).collect()),
        }
    }

    fn metrics(&self, stage: &str) -> Result<MetricsWriter> {
        let mut m = MetricsWriter::new(&self.dir.join("metrics"), &self.cfg.run.name)?;
        m.min_interval = Duration::from_secs(5);
        let _ = stage;
        Ok(m)
    }
}

/// The directory name of stage `key`'s model under `models/`: `grpo/<domain>` becomes
/// `grpo-<domain>`, each part escaped (never empty, never starting with `.`).
fn model_dir_name(key: &str) -> String {
    match key.split_once('/') {
        Some((kind, name)) => format!("{}-{}", safe_component(kind), safe_component(name)),
        None => safe_component(key),
    }
}

/// Put the base's tokenizer files into the run directory (the source every model of the run
/// copies them from). A resumed run must have been started with the same tokenizer.
fn install_tokenizer(dir: &Path, tok: &dyn Tokenizer, from: Option<&Path>, resume: bool) -> Result<()> {
    if resume {
        tokenizer::check_resume_tokenizer(dir, tok, from)?;
    }
    crate::models::carry_tokenizer(from, dir)
}

/// Run (or resume) a pipeline; returns the results written to `results.json`. The whole
/// pipeline is validated, its files read and its base loaded before anything is written.
pub fn run(cfg: PipelineConfig, opts: &RunOptions) -> Result<serde_json::Value> {
    cfg.validate()?;
    if let Some(q) = &opts.queue {
        validate::check_queue(q).map_err(|m| anyhow::anyhow!("--queue: {m}"))?;
    }
    validate::preflight(&cfg)?;
    let dir = opts.run_dir.clone().unwrap_or_else(|| cfg.run_dir());
    let state = read_state(&dir, opts.resume)?;
    let start = Start::parse(&cfg.model.base);
    let (tok, tok_from) = start.tokenizer()?;
    let base = start.weights(cfg.run.seed)?;
    let queue_url = opts.queue.clone().unwrap_or_else(|| cfg.run.queue.clone());
    let qcfg = QueueConfig {
        visibility_timeout: Duration::from_secs_f64(cfg.workers.visibility_timeout_s.max(0.1)),
        max_deliveries: cfg.workers.max_deliveries.max(1),
        ..Default::default()
    };
    // an unreachable queue fails before the run directory is written
    let q = queue::open(&queue_url, &cfg.run.name, qcfg)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    install_tokenizer(&dir, tok.as_ref(), tok_from.as_deref(), opts.resume)?;
    checkpoint::write_atomic(&dir.join("pipeline.toml"), cfg.to_toml_redacted()?.as_bytes())?;
    q.set("run:status", "running")?;
    tracing::info!(run = %dir.display(), queue = %q.describe(), "pipeline started");
    let local = (queue_url == "embedded" || cfg.workers.local).then(|| {
        let mut kinds = vec![WorkerKind::Rollout, WorkerKind::Teacher];
        if cfg.workers.remote_scoring {
            kinds.push(WorkerKind::Reward);
        }
        // the OPD stages' `resident`: teachers a local teacher worker keeps loaded
        let resident = cfg.stages.iter().filter_map(|s| if let Stage::Opd(o) = s { Some(o.resident) } else { None });
        LocalWorkers::start(q.clone(), &dir, &kinds, cfg.workers.max_staleness, resident.max().unwrap_or(1))
    });
    let remote = Remote {
        queue: q.clone(),
        run_dir: dir.clone(),
        job_prompts: cfg.workers.job_prompts,
        resend_after: Duration::from_secs_f64(cfg.workers.resend_after_s.max(1.0)),
        queue_cap: cfg.workers.queue_cap.max(1),
        remote_scoring: cfg.workers.remote_scoring,
        workers_failed: local.as_ref().map(|l| l.failed.clone()).unwrap_or_default(),
    };
    let mut ctx = Ctx {
        cfg: cfg.clone(),
        dir: dir.clone(),
        state,
        remote,
        bars: Bars::new(opts.json),
        started: Instant::now(),
        steps_this_process: 0,
        stop_after: opts.stop_after_steps,
        difficulty: cfg.data.difficulty()?,
        tok: Arc::from(tok),
    };
    let outcome = run_stages(&mut ctx, base);
    if let Some(l) = local {
        l.shutdown();
    }
    let results = outcome?;
    ctx.state.finished = true;
    ctx.save_state()?;
    q.set("run:status", "finished")?;
    Ok(results)
}

/// The state of the run in `dir`: read for `--resume`; a fresh run refuses a used directory.
fn read_state(dir: &Path, resume: bool) -> Result<RunState> {
    let state_path = dir.join("state.json");
    if resume {
        let text = std::fs::read_to_string(&state_path)
            .with_context(|| format!("--resume: no run state at {}", state_path.display()))?;
        return serde_json::from_str(&text).with_context(|| format!("reading {}", state_path.display()));
    }
    if state_path.exists() {
        bail!(
            "{} already holds a run; continue it with `v4post run --resume {}` or choose another run.name",
            dir.display(),
            dir.display()
        );
    }
    Ok(RunState::default())
}

fn run_stages(ctx: &mut Ctx, base: ModelWeights) -> Result<serde_json::Value> {
    let mut current = base.clone();
    let mut registry: Option<teachers::Registry> = None;
    let stages = ctx.cfg.stages.clone();
    for stage in &stages {
        match stage {
            Stage::Sft(s) => {
                current = stage_sft(ctx, s, &current)?;
            }
            Stage::Grpo(g) => {
                registry = Some(stage_grpo(ctx, g, &current)?);
            }
            Stage::Opd(o) => {
                let reg = match o.teachers.as_str() {
                    "all" => registry.clone().context("opd: no experts (the grpo stage did not run)")?,
                    path => teachers::Registry::load(Path::new(path))?,
                };
                current = stage_opd(ctx, o, &current, &reg)?;
            }
            Stage::ThinkMax(t) => {
                stage_think_max(ctx, t, &current)?;
            }
            Stage::Eval(e) => {
                return results::stage_eval(ctx_view(ctx), e, &base, registry.as_ref());
            }
        }
    }
    Ok(serde_json::json!({}))
}

/// Read-only view of the run for evaluation.
pub struct RunView<'a> {
    pub dir: &'a Path,
    pub cfg: &'a PipelineConfig,
    pub state: &'a RunState,
    pub bars: &'a Bars,
    pub wall_s: f64,
    /// The run's tokenizer.
    pub tok: &'a dyn Tokenizer,
}

fn ctx_view(ctx: &Ctx) -> RunView<'_> {
    RunView {
        dir: &ctx.dir,
        cfg: &ctx.cfg,
        state: &ctx.state,
        bars: &ctx.bars,
        wall_s: ctx.state.wall_s + ctx.started.elapsed().as_secs_f64(),
        tok: ctx.tok.as_ref(),
    }
}

fn load_done(ctx: &Ctx, key: &str) -> Result<Option<ModelWeights>> {
    match ctx.model_path(key) {
        Some(p) => Ok(Some(checkpoint::load(&p).with_context(|| format!("loading the {key} result {}", p.display()))?)),
        None => Ok(None),
    }
}

fn stage_sft(ctx: &mut Ctx, s: &config::SftStage, start: &ModelWeights) -> Result<ModelWeights> {
    if let Some(w) = load_done(ctx, "sft")? {
        return Ok(w);
    }
    let (w, rep) = run_sft_steps(ctx, "sft", start, s)?;
    let dir = ctx.write_model("sft", &w)?;
    ctx.complete("sft", Some(dir), serde_json::to_value(&rep)?)?;
    Ok(w)
}

/// The SFT part of an expert or Think Max stage: `steps` steps on `domains` in `modes`, packed
/// to `max_len`, with the stage's optimizer settings.
fn sft_phase(domains: &str, steps: u64, max_len: usize, modes: &[Mode], optim: &Optim) -> config::SftStage {
    config::SftStage {
        domains: domains.to_string(),
        steps,
        batch: 8,
        max_len,
        modes: modes.to_vec(),
        optim: optim.clone(),
        ..Default::default()
    }
}

fn run_sft_steps(
    ctx: &mut Ctx,
    key: &str,
    start: &ModelWeights,
    s: &config::SftStage,
) -> Result<(ModelWeights, trainer::sft::SftReport)> {
    let mut session = ctx.session(key, start, &s.optim)?;
    let mut cfg = trainer::sft::SftConfig {
        data: s.data.clone(),
        steps: s.steps,
        batch: s.batch,
        max_len: s.max_len,
        grad_accum: s.accum,
        modes: s.modes.clone(),
        domains: s.domains.clone(),
        mix: trainer_mix(&s.mix)?,
        difficulty: ctx.difficulty.clone(),
        train_on_prompt: s.train_on_prompt,
        checkpoint_every: s.checkpoint_every,
        stage: key.to_string(),
        warmup: (s.steps / 10).max(1),
        ..Default::default()
    };
    let mut m = ctx.metrics(key)?;
    let before = session.counters.step;
    if let Some(l) = ctx.stop_after.map(|l| l.saturating_sub(ctx.steps_this_process)) {
        if before + l < s.steps {
            cfg.stop_at = Some(before + l);
        }
    }
    let root = ctx.ckpt_root(key);
    let mut io = TrainIo::new(&ctx.cfg.run.name, &mut m, &ctx.bars, Some(&root));
    let rep = trainer::sft::run_sft(&mut session, &cfg, ctx.tok.as_ref(), &mut io)?;
    session.save(&root)?;
    ctx.count_steps(session.counters.step - before)?;
    Ok((session.weights()?, rep))
}

/// `PATTERN=W` mixture weights of an SFT stage.
pub fn trainer_mix(v: &[String]) -> Result<Vec<(String, u32)>> {
    v.iter()
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            let (p, w) = x.split_once('=').with_context(|| format!("mix `{x}`: expected PATTERN=WEIGHT"))?;
            let w: u32 =
                w.trim().parse().with_context(|| format!("mix `{x}`: the weight must be a positive integer"))?;
            Ok((p.trim().to_string(), w))
        })
        .collect()
}

/// The trainer's GRPO settings of a stage: the variant's, then the stage's fields.
fn grpo_config(g: &config::GrpoStage, stage: &str) -> Result<trainer::grpo::GrpoConfig> {
    let mut c = g.variant.config();
    if let Some(b) = g.beta {
        c.loss.beta = b;
        if b > 0.0 && c.loss.kl == trainer::losses::KlKind::None {
            c.loss.kl = trainer::losses::KlKind::K3Is;
        }
    }
    c.steps = g.steps;
    c.prompts_per_step = g.prompts;
    c.group_size = g.group;
    c.modes = g.modes.clone();
    c.temperature = g.temperature;
    c.top_p = g.top_p;
    c.top_k = g.top_k;
    c.epochs = g.epochs;
    c.minibatch = g.minibatch;
    c.max_refill_rounds = g.refill_rounds;
    c.routing = g.routing.into();
    c.anticipatory = g.anticipatory.clone();
    c.checkpoint_every = g.checkpoint_every;
    c.stage = stage.to_string();
    c.routing_plan()?;
    Ok(c)
}

/// The GRPO phase of a stage (an expert, Think Max).
struct GrpoPhase<'a> {
    /// Stage key (`grpo/math.add`, `think_max`): checkpoints, metrics.
    key: &'a str,
    /// The weights GRPO starts from; with a KL penalty also the frozen reference.
    start: &'a ModelWeights,
    optim: &'a Optim,
    cfg: trainer::grpo::GrpoConfig,
    /// Domain pattern of the prompts.
    domains: &'a str,
}

/// Run GRPO steps of a phase through the queue; respects `--stop-after-steps`.
fn run_grpo_steps(ctx: &mut Ctx, phase: GrpoPhase) -> Result<(ModelWeights, trainer::grpo::GrpoReport)> {
    let GrpoPhase { key, start, optim, mut cfg, domains } = phase;
    let mut session = ctx.session(key, start, optim)?;
    // the reference is the phase's starting weights, also when resuming from a step checkpoint
    let reference = crate::models::reference_model(&cfg, start)
        .with_context(|| format!("{key}: the KL penalty (beta {}) needs a reference model", cfg.loss.beta))?;
    let before = session.counters.step;
    let full = cfg.steps;
    if let Some(l) = ctx.stop_after.map(|l| l.saturating_sub(ctx.steps_this_process)) {
        if before + l < full {
            cfg.stop_at = Some(before + l);
        }
    }
    let store = ctx.dir.join("trajectories").join(safe_component(&cfg.stage));
    let mut rollouts = QueueRollouts::new(ctx.remote.clone(), store);
    let mut m = ctx.metrics(key)?;
    let src = ctx.source(domains);
    let rep = trainer::grpo::run_grpo(
        &mut session,
        &cfg,
        &src,
        &mut rollouts,
        reference.as_ref(),
        &mut TrainIo::new(&ctx.cfg.run.name, &mut m, &ctx.bars, Some(&ctx.ckpt_root(key))),
    )?;
    session.save(&ctx.ckpt_root(key))?;
    ctx.count_steps(session.counters.step - before)?;
    Ok((session.weights()?, rep))
}

fn stage_grpo(ctx: &mut Ctx, g: &config::GrpoStage, start: &ModelWeights) -> Result<teachers::Registry> {
    let experts: Vec<String> = if g.experts.iter().any(|e| e == "each") { ctx.domains()? } else { g.experts.clone() };
    if experts.is_empty() {
        bail!("grpo: no experts to build");
    }
    let mut specs = Vec::new();
    for e in &experts {
        let key = format!("grpo/{e}");
        let dir = match ctx.model_path(&key) {
            Some(d) => d,
            None => {
                // the V4 experts: domain SFT (optional), then GRPO on the domain
                let mut w = start.clone();
                if g.sft_steps > 0 {
                    let sk = format!("expert-sft/{e}");
                    w = match load_done(ctx, &sk)? {
                        Some(w) => w,
                        None => {
                            let phase = sft_phase(e, g.sft_steps, EXPERT_SFT_MAX_LEN, &g.modes, &g.optim);
                            let (w, _) = run_sft_steps(ctx, &sk, start, &phase)?;
                            let d = ctx.write_model(&sk, &w)?;
                            ctx.complete(&sk, Some(d), serde_json::json!({}))?;
                            w
                        }
                    };
                }
                let stage = format!("grpo-{}", e.replace(['*', ','], "_"));
                let cfg = grpo_config(g, &stage)?;
                let phase = GrpoPhase { key: &key, start: &w, optim: &g.optim, cfg, domains: e };
                let (w, rep) = run_grpo_steps(ctx, phase)?;
                let d = ctx.write_model(&key, &w)?;
                ctx.complete(&key, Some(d.clone()), serde_json::to_value(&rep)?)?;
                d
            }
        };
        specs.push(teachers::TeacherSpec { id: e.clone(), checkpoint: dir, domains: vec![e.clone()], weight: 1.0 });
    }
    let reg = teachers::Registry::new(specs)?;
    // the registry in the run directory, with paths relative to it (usable by `v4post opd`)
    let mut text = String::new();
    for t in &reg.teachers {
        text.push_str(&format!(
            "[[teacher]]\nid = {:?}\ncheckpoint = {:?}\ndomains = [{:?}]\n\n",
            t.id,
            remote::rel(&ctx.dir, &t.checkpoint).to_string_lossy(),
            t.domains[0]
        ));
    }
    checkpoint::write_atomic(&ctx.dir.join("teachers.toml"), text.as_bytes())?;
    Ok(reg)
}

fn stage_opd(
    ctx: &mut Ctx,
    o: &config::OpdStage,
    start: &ModelWeights,
    reg: &teachers::Registry,
) -> Result<ModelWeights> {
    if let Some(w) = load_done(ctx, "opd")? {
        return Ok(w);
    }
    // the student's tokenizer is the run's (its files are in the run directory)
    reg.validate_against(Some(ctx.dir.as_path()), &start.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mix: Vec<(Mode, f32)> = o.mode_mix.iter().map(|(&m, &w)| (m, w)).collect();
    let wanted = |d: &str| tasks::domain_matches(&o.domains, d);
    let domains: Vec<String> =
        ctx.domains()?.into_iter().filter(|d| !reg.weights_for(d).is_empty() && wanted(d)).collect();
    if domains.is_empty() {
        bail!("opd: no training domain matching `{}` has a teacher", o.domains);
    }
    let shaping = rewards::shaping::LengthShaping::default();
    let mut cfg = trainer::opd::OpdConfig {
        steps: o.steps,
        prompts_per_step: o.prompts,
        group_size: o.group,
        temperature: o.temperature,
        kl_temperature: o.kl_temperature,
        mode_mix: mix,
        max_tokens: Mode::ALL.iter().map(|&m| (m, shaping.for_mode(m).max_len)).collect(),
        estimator: o.estimator,
        minibatch: o.minibatch,
        chunk_rows: o.chunk_rows,
        chunk_vocab: o.chunk_vocab,
        checkpoint_every: o.checkpoint_every,
        stage: "opd".into(),
        ..Default::default()
    };
    let mut session = ctx.session("opd", start, &o.optim)?;
    let before = session.counters.step;
    if let Some(l) = ctx.stop_after.map(|l| l.saturating_sub(ctx.steps_this_process)) {
        if before + l < cfg.steps {
            cfg.stop_at = Some(before + l);
        }
    }
    let traj = ctx.dir.join("trajectories").join("opd");
    let mut rollouts = QueueRollouts::new(ctx.remote.clone(), traj.clone());
    let mut teachers =
        QueueTeachers::new(ctx.remote.clone(), reg.clone(), traj, ctx.dir.join("teacher_states").join("opd"));
    let mut m = ctx.metrics("opd")?;
    let src = ctx.source(&domains.join(","));
    let rep = trainer::opd::run_opd(
        &mut session,
        &cfg,
        &src,
        &mut rollouts,
        &mut teachers,
        reg,
        &mut TrainIo::new(&ctx.cfg.run.name, &mut m, &ctx.bars, Some(&ctx.ckpt_root("opd"))),
    )?;
    session.save(&ctx.ckpt_root("opd"))?;
    ctx.count_steps(session.counters.step - before)?;
    let w = session.weights()?;
    let d = ctx.write_model("opd", &w)?;
    ctx.complete("opd", Some(d), serde_json::to_value(&rep)?)?;
    Ok(w)
}

fn stage_think_max(ctx: &mut Ctx, t: &config::ThinkMaxStage, start: &ModelWeights) -> Result<ModelWeights> {
    if let Some(w) = load_done(ctx, "think_max")? {
        return Ok(w);
    }
    let g = config::GrpoStage {
        experts: vec![],
        steps: t.steps,
        prompts: t.prompts,
        group: t.group,
        modes: vec![Mode::ThinkMax],
        optim: t.optim.clone(),
        ..Default::default()
    };
    let mut cfg = grpo_config(&g, "think_max")?;
    // the Think Max recipe: its own system prefix (the chat encoding of the mode), a reduced
    // length penalty and a larger budget
    cfg.shaping.think_max.max_len = t.max_tokens;
    // optionally first SFT on the long-reasoning references, so GRPO starts from a policy
    // that reasons at length in this mode
    let mut from = start.clone();
    if t.sft_steps > 0 {
        from = match load_done(ctx, "think_max-sft")? {
            Some(w) => w,
            None => {
                let phase = sft_phase(&t.domains, t.sft_steps, THINK_MAX_SFT_MAX_LEN, &[Mode::ThinkMax], &t.optim);
                let (w, _) = run_sft_steps(ctx, "think_max-sft", start, &phase)?;
                let d = ctx.write_model("think_max-sft", &w)?;
                ctx.complete("think_max-sft", Some(d), serde_json::json!({}))?;
                w
            }
        };
    }
    let phase = GrpoPhase { key: "think_max", start: &from, optim: &t.optim, cfg, domains: &t.domains };
    let (w, rep) = run_grpo_steps(ctx, phase)?;
    let d = ctx.write_model("think_max", &w)?;
    ctx.complete("think_max", Some(d), serde_json::to_value(&rep)?)?;
    Ok(w)
}
