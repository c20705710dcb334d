//! `pretrain`, `sft`, `grpo`, `eval`.

use crate::ui::{print_json, Bars};
use anyhow::{bail, Context, Result};
use clap::Args;
use datasets::chat::Mode;
use datasets::progress::NoProgress;
use datasets::prompts::PromptSource;
use datasets::store::{MetricsWriter, TrajectoryStore};
use datasets::tasks::{self, Levels, Split};
use datasets::tokenizer::{self as tokenizer, ByteTokenizer, Tokenizer};
use model::checkpoint::{self, SaveFormat};
use model::train::TrainOptions;
use model::{Config, Engine, EngineOptions, ModelWeights};
use serde_json::json;
use std::path::{Path, PathBuf};
use trainer::anticipatory::{AnticipatoryConfig, SpikeConfig, SpikeSignal, Trigger};
use trainer::grpo::{run_grpo, GrpoConfig, LocalRollouts, RoutingMode};
use trainer::losses::{Aggregation, GrpoLossConfig, KlKind};
use trainer::optim::OptimConfig;
use trainer::reference::FrozenReference;
use trainer::sft::{run_sft, SftConfig};
use trainer::Session;

/// Where the starting weights come from.
#[derive(Args, Debug, Clone)]
pub struct BaseArgs {
    /// Start from this checkpoint directory. Its `tokenizer.json` (Hugging Face format), if it
    /// has one, is the tokenizer of the run and is copied into every checkpoint written;
    /// without one (and for --preset) the built-in byte tokenizer is used.
    #[arg(long, conflicts_with = "preset")]
    pub base: Option<PathBuf>,
    /// Start from random weights of a preset (tiny, small).
    #[arg(long)]
    pub preset: Option<String>,
}

/// Optimizer flags shared by the trainers.
#[derive(Args, Debug, Clone)]
pub struct OptimArgs {
    /// Muon learning rate (matrices).
    #[arg(long, default_value_t = 0.02)]
    pub lr_muon: f32,
    /// AdamW learning rate (embeddings, head, norms, mHC gates/biases, sinks).
    #[arg(long, default_value_t = 3e-3)]
    pub lr_adamw: f32,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f32,
    /// Decoupled weight decay of Muon parameters.
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
}

impl OptimArgs {
    pub fn config(&self) -> OptimConfig {
        OptimConfig {
            muon_lr: self.lr_muon,
            adamw_lr: self.lr_adamw,
            clip_norm: self.clip,
            muon_weight_decay: self.weight_decay,
            ..Default::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct SftArgs {
    #[command(flatten)]
    pub base: BaseArgs,
    /// Train on your own conversations instead of the built-in suite: a Parquet/JSONL file,
    /// a directory of shards or a glob (`data/train-*.parquet`) with `messages` (list of
    /// {role, content}) or `prompt` + `completion`; loss on the assistant turns.
    #[arg(long, alias = "prompts", conflicts_with_all = ["mix", "difficulty"])]
    pub data: Option<PathBuf>,
    /// Domains whose reference solutions are learned (`math.*,if.*`, `*`); with --data, the
    /// records whose `domain` column matches (records without one are `user`).
    #[arg(long, default_value = "*")]
    pub domains: String,
    /// Mixture weights, `PATTERN=W,...` (e.g. `math.add=6,agent.*=3`): a matching domain
    /// appears W times per cycle of the data mixture instead of once.
    #[arg(long, value_delimiter = ',')]
    pub mix: Vec<String>,
    /// Output checkpoint directory (final weights; `train/` holds resumable checkpoints).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// Packed sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Packed sequence length. Longer examples are skipped (with a warning per domain and
    /// mode); 1152 fits every built-in example in every mode and difficulty (the longest,
    /// an agent.chain episode in Think Max, is ~1070 tokens) — the Think Max system prefix
    /// alone is ~480 tokens, so at 384 only Non-think and Think High examples fit.
    #[arg(long, default_value_t = trainer::sft::DEFAULT_MAX_LEN)]
    pub max_len: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Reasoning modes of the examples.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "non_think,think_high,think_max")]
    pub modes: Vec<crate::choices::ModeArg>,
    /// Difficulty of the built-in prompts: a level 1 (easy) .. 5, or a range like 1-2 whose
    /// levels alternate over the prompts (default: each domain's own).
    #[arg(long)]
    pub difficulty: Option<Levels>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from the latest checkpoint in the work directory (see --work).
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: u64,
    /// Directory of resumable checkpoints and metrics (default: OUT for sft, OUT.work for
    /// pretrain, so OUT holds only the checkpoint).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Final weights: `f32` (plus a rollout/ FP4 export; sft's default) or `official` (FP8
    /// weights + FP4 experts, the layout V4 ships; pretrain's default).
    #[arg(long, value_enum)]
    pub format: Option<crate::choices::TrainFormat>,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GrpoArgs {
    #[command(flatten)]
    pub base: BaseArgs,
    /// The domain this expert is built for (a pattern trains one policy on several).
    #[arg(long)]
    pub domain: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    #[arg(long, default_value_t = 8)]
    pub prompts: usize,
    /// Samples per prompt.
    #[arg(long, default_value_t = 8)]
    pub group: usize,
    /// Preset of loss and sampling choices: v32 (DeepSeek-V3.2: clip-higher, token-mean,
    /// k3-IS KL, off-policy masking, Keep Routing/Sampling Mask), grpo, dapo, dr-grpo.
    #[arg(long, value_enum, default_value = "v32")]
    pub variant: crate::choices::GrpoVariant,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// KL coefficient to the frozen base (0 = no reference model).
    #[arg(long)]
    pub beta: Option<f32>,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub minibatch: usize,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "think_high")]
    pub modes: Vec<crate::choices::ModeArg>,
    /// Routing in the training forward: keep (sampler's ids), free, or anticipatory:DT
    /// (legacy spelling of `--routing free --anticipatory spike --anticipatory-dt DT`).
    #[arg(long, default_value = "keep")]
    pub routing: String,
    #[command(flatten)]
    pub anticipatory: AnticipatoryArgs,
    /// Difficulty of the built-in prompts: a level 1 (easy) .. 5, or a range like 1-2 whose
    /// levels alternate over the prompts (default: each domain's own).
    #[arg(long)]
    pub difficulty: Option<Levels>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 10)]
    pub checkpoint_every: u64,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[arg(long)]
    pub json: bool,
}

/// Anticipatory Routing flags (DeepSeek-V4's MoE stability trick; see `trainer::anticipatory`).
#[derive(Args, Debug, Clone)]
pub struct AnticipatoryArgs {
    /// Anticipatory Routing: `spike` = after a spike of the training signal, route each
    /// minibatch to the experts that the router of Δt optimizer updates ago picks (backbone
    /// and gate weights stay current) for --anticipatory-hold steps; `always` = every step
    /// (ablations); `off`. Combines with --routing (it replaces keep's ids while active).
    #[arg(long = "anticipatory", default_value = "off", value_name = "off|spike|always")]
    pub trigger: Trigger,
    /// Router age Δt in optimizer updates (each minibatch of each epoch is one; 0 = the
    /// current router, bit-identical to normal routing).
    #[arg(long, default_value_t = AnticipatoryConfig::default().dt)]
    pub anticipatory_dt: u64,
    /// GRPO steps routed with the Δt-old router after each spike (re-armed by a new spike).
    #[arg(long, default_value_t = AnticipatoryConfig::default().hold_steps)]
    pub anticipatory_hold: u64,
    /// End the anticipatory period early at the first step whose signal is back at or below
    /// the pre-spike window mean.
    #[arg(long)]
    pub anticipatory_release_on_recovery: bool,
    /// Signal of the spike detector: the step's mean GRPO loss, or its mean gradient norm.
    #[arg(long, default_value = "loss", value_name = "loss|grad_norm")]
    pub spike_signal: SpikeSignal,
    /// Trailing window W (steps) of the spike rule: signal > mean + max(k·std, min_rise)
    /// over the last W steps' values.
    #[arg(long, default_value_t = SpikeConfig::default().window)]
    pub spike_window: usize,
    /// Values needed in the window before anything counts as a spike.
    #[arg(long, default_value_t = SpikeConfig::default().min_history)]
    pub spike_min_history: usize,
    /// k of the spike rule (population standard deviations above the window mean).
    #[arg(long, default_value_t = SpikeConfig::default().k)]
    pub spike_k: f64,
    /// Smallest absolute rise above the window mean that counts as a spike.
    #[arg(long, default_value_t = SpikeConfig::default().min_rise)]
    pub spike_min_rise: f64,
}

impl AnticipatoryArgs {
    pub fn config(&self) -> AnticipatoryConfig {
        AnticipatoryConfig {
            trigger: self.trigger,
            dt: self.anticipatory_dt,
            hold_steps: self.anticipatory_hold,
            release_on_recovery: self.anticipatory_release_on_recovery,
            detector: SpikeConfig {
                signal: self.spike_signal,
                window: self.spike_window,
                min_history: self.spike_min_history,
                k: self.spike_k,
                min_rise: self.spike_min_rise,
            },
        }
    }
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "*")]
    pub domains: String,
    #[arg(long, value_enum, default_value = "eval")]
    pub split: crate::choices::SplitArg,
    /// Prompts per domain.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    #[arg(long, value_enum, default_value = "think_high")]
    pub mode: crate::choices::ModeArg,
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Difficulty of the built-in prompts: a level 1 (easy) .. 5, or a range like 1-2 whose
    /// levels alternate over the prompts (default: each domain's own).
    #[arg(long)]
    pub difficulty: Option<Levels>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print this many responses per domain.
    #[arg(long, default_value_t = 0)]
    pub show: usize,
    #[arg(long)]
    pub json: bool,
}

/// `PATTERN=W` mixture weights.
pub fn parse_mix(v: &[String]) -> Result<Vec<(String, u32)>> {
    v.iter()
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            let (p, w) = x.split_once('=').with_context(|| format!("--mix `{x}`: expected PATTERN=WEIGHT"))?;
            let w: u32 =
                w.trim().parse().with_context(|| format!("--mix `{x}`: the weight must be a positive integer"))?;
            Ok((p.trim().to_string(), w))
        })
        .collect()
}

pub fn parse_modes(v: &[String]) -> Result<Vec<Mode>> {
    v.iter().map(|m| m.parse::<Mode>().map_err(anyhow::Error::msg)).collect()
}

pub fn base_weights(b: &BaseArgs, seed: u64) -> Result<ModelWeights> {
    match (&b.base, &b.preset) {
        (Some(p), _) => checkpoint::load(p).with_context(|| format!("loading base checkpoint {}", p.display())),
        (None, Some(p)) => {
            let c = Config::preset(p)?;
            if c.param_counts().total > 200_000_000 {
                bail!(
                    "preset `{p}` is too large to train from scratch here; use tiny or small, or --base a checkpoint"
                );
            }
            Ok(ModelWeights::random(&c, seed)?)
        }
        (None, None) => bail!("give --base CHECKPOINT or --preset NAME"),
    }
}

/// The tokenizer of a checkpoint (its `tokenizer.json`, else the byte tokenizer), checked to
/// fit the `vocab_size` of its `config.json` before any weights are read.
pub fn checkpoint_tokenizer(dir: &Path) -> Result<Box<dyn Tokenizer>> {
    let cfg_path = tokenizer::checkpoint_folder(dir).join("config.json");
    let cfg = Config::from_file(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
    Ok(tokenizer::checkpoint_tokenizer(dir, cfg.vocab_size)?)
}

/// The tokenizer of the starting weights and the folder outputs copy it from: the base
/// checkpoint's, or the byte tokenizer of a preset (no folder).
pub fn base_tokenizer(b: &BaseArgs) -> Result<(Box<dyn Tokenizer>, Option<PathBuf>)> {
    match (&b.base, &b.preset) {
        (Some(p), _) => Ok((checkpoint_tokenizer(p)?, Some(p.clone()))),
        (None, Some(p)) => {
            let tok: Box<dyn Tokenizer> = Box::new(ByteTokenizer);
            tokenizer::check_vocab_fits(tok.as_ref(), Config::preset(p)?.vocab_size, None)?;
            Ok((tok, None))
        }
        (None, None) => bail!("give --base CHECKPOINT or --preset NAME"),
    }
}

/// Copy the tokenizer files of `from` (None: byte tokenizer) into the checkpoint folder `out`.
pub fn carry_tokenizer(from: Option<&Path>, out: &Path) -> Result<()> {
    tokenizer::carry_tokenizer_files(from, out)
        .with_context(|| format!("copying the tokenizer into {}", out.display()))?;
    Ok(())
}

/// Final weights: F32 model at `out`, plus the FP4 rollout export under `out/rollout`; both
/// carry the tokenizer files of `tok_from`.
pub fn write_outputs(w: &ModelWeights, out: &Path, tok_from: Option<&Path>) -> Result<()> {
    checkpoint::save(w, out, SaveFormat::F32, None)?;
    checkpoint::save(w, &out.join("rollout"), SaveFormat::Rollout, None)?;
    carry_tokenizer(tok_from, out)?;
    carry_tokenizer(tok_from, &out.join("rollout"))?;
    Ok(())
}

/// Start a session from `base`, or with `resume` continue the latest checkpoint under
/// `out/train`, which must have been trained with the run's tokenizer `tok` (of `tok_from`).
fn open_session(
    base: &BaseArgs,
    out: &Path,
    resume: bool,
    seed: u64,
    optim: OptimConfig,
    (tok, tok_from): (&dyn Tokenizer, Option<&Path>),
) -> Result<Session> {
    let root = out.join("train");
    if resume {
        if let Some(latest) = Session::latest(&root) {
            tokenizer::check_resume_tokenizer(&latest, tok, tok_from)?;
            eprintln!("resuming from {}", latest.display());
            return Ok(Session::load(&latest, TrainOptions::default(), optim)?);
        }
        eprintln!("--resume: no checkpoint in {}, starting fresh", root.display());
    }
    Ok(Session::new(&base_weights(base, seed)?, TrainOptions::default(), optim, seed)?)
}

pub fn sft(a: &SftArgs, pretrain: bool) -> Result<()> {
    let modes = a.modes.iter().map(|&m| Mode::from(m)).collect::<Vec<_>>();
    if a.data.is_none() {
        tasks::match_domains(&a.domains)?;
    }
    let work = match &a.work {
        Some(w) => w.clone(),
        None if pretrain => {
            let mut w = a.out.clone().into_os_string();
            w.push(".work");
            PathBuf::from(w)
        }
        None => a.out.clone(),
    };
    let default_format = if pretrain { "official" } else { "f32" };
    let format: String = a.format.map_or(default_format, |f| f.as_str()).to_string();
    if !["f32", "official"].contains(&format.as_str()) {
        bail!("--format must be f32 or official");
    }
    let started = std::time::Instant::now();
    // bad data arguments fail before a model is loaded
    let mix = parse_mix(&a.mix)?;
    match &a.data {
        Some(d) => {
            let n = datasets::sft_data::load_sft_dataset(d).with_context(|| format!("--data {}", d.display()))?.len();
            eprintln!("SFT data: {n} conversations from {}", d.display());
        }
        None => {
            trainer::sft::Mixture::new(&a.domains, &mix)?;
        }
    }
    let (tok, tok_from) = base_tokenizer(&a.base)?;
    let mut s = open_session(&a.base, &work, a.resume, a.seed, a.optim.config(), (tok.as_ref(), tok_from.as_deref()))?;
    s.tokenizer_from = tok_from.clone();
    eprintln!("optimizer: {}", s.opt.describe());
    let stage = if pretrain { "pretrain" } else { "sft" };
    let cfg = SftConfig {
        steps: a.steps,
        batch: a.batch,
        max_len: a.max_len,
        grad_accum: a.grad_accum,
        modes,
        domains: a.domains.clone(),
        mix,
        difficulty: a.difficulty.into(),
        train_on_prompt: pretrain,
        checkpoint_every: a.checkpoint_every,
        stage: stage.into(),
        warmup: (a.steps / 20).max(1),
        data: a.data.clone(),
        ..Default::default()
    };
    let mut metrics = MetricsWriter::new(&work.join("metrics"), stage)?;
    metrics.min_interval = std::time::Duration::from_secs(5);
    let bars = Bars::new(a.json);
    let rep = run_sft(&mut s, &cfg, tok.as_ref(), &mut metrics, &bars, Some(&work.join("train")))?;
    s.save(&work.join("train"))?;
    let w = s.weights()?;
    match format.as_str() {
        "official" => {
            checkpoint::save(&w, &a.out, SaveFormat::Official, None)?;
            carry_tokenizer(tok_from.as_deref(), &a.out)?;
        }
        _ => write_outputs(&w, &a.out, tok_from.as_deref())?,
    }
    let out = json!({
        "stage": stage, "steps": rep.steps, "first_loss": rep.first_loss, "final_loss": rep.final_loss,
        "tokens": rep.tokens, "seconds": rep.seconds, "wall_seconds": started.elapsed().as_secs_f64(),
        "seed": a.seed, "format": format, "out": a.out, "work": work,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "v4post_version": env!("CARGO_PKG_VERSION"),
        "threads": rayon::current_num_threads(),
    });
    checkpoint::write_atomic(&a.out.join(format!("{stage}.json")), serde_json::to_string_pretty(&out)?.as_bytes())?;
    if a.json {
        print_json(&out);
    } else {
        eprintln!(
            "{stage}: {} steps, loss {:.3} → {:.3}, {} tokens in {:.0}s; weights ({format}) in {}",
            rep.steps,
            rep.first_loss,
            rep.final_loss,
            rep.tokens,
            rep.seconds,
            a.out.display()
        );
    }
    Ok(())
}

/// The named GRPO variants of [`variant_config`].
pub const GRPO_VARIANTS: [&str; 4] = ["v32", "grpo", "dapo", "dr-grpo"];

/// Loss and sampling choices of a named GRPO variant.
pub fn variant_config(variant: &str) -> Result<GrpoConfig> {
    let mut loss = GrpoLossConfig::default();
    let mut c = GrpoConfig::default();
    match variant {
        "v32" => {}
        "grpo" => {
            loss = GrpoLossConfig {
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
        "dapo" => {
            loss = GrpoLossConfig {
                kl: KlKind::None,
                beta: 0.0,
                aggregation: Aggregation::TokenMean,
                opsm_delta: None,
                ..loss
            }
        }
        "dr-grpo" => {
            loss = GrpoLossConfig {
                kl: KlKind::None,
                beta: 0.0,
                aggregation: Aggregation::SeqMeanTokenSum,
                opsm_delta: None,
                ..loss
            };
            c.use_std = false;
        }
        o => bail!("unknown --variant `{o}` ({})", GRPO_VARIANTS.join(", ")),
    }
    c.loss = loss;
    Ok(c)
}

pub fn grpo_config(a: &GrpoArgs) -> Result<GrpoConfig> {
    let mut c = variant_config(a.variant.as_str())?;
    let mut loss = c.loss;
    if let Some(b) = a.beta {
        loss.beta = b;
        if b > 0.0 && loss.kl == KlKind::None {
            loss.kl = KlKind::K3Is;
        }
    }
    c.loss = loss;
    c.steps = a.steps;
    c.prompts_per_step = a.prompts;
    c.group_size = a.group;
    c.temperature = a.temperature;
    c.top_p = a.top_p;
    c.top_k = a.top_k;
    c.epochs = a.epochs;
    c.minibatch = a.minibatch;
    c.modes = a.modes.iter().map(|&m| Mode::from(m)).collect::<Vec<_>>();
    c.routing = match a.routing.as_str() {
        "keep" => RoutingMode::Keep,
        "free" => RoutingMode::Free,
        r => match r.strip_prefix("anticipatory:").and_then(|x| x.parse().ok()) {
            Some(dt) => RoutingMode::Anticipatory { dt },
            None => bail!("--routing must be keep, free or anticipatory:DT"),
        },
    };
    c.anticipatory = a.anticipatory.config();
    // fold the legacy `anticipatory:DT` in and check the settings before any work starts
    c.routing_plan()?;
    c.checkpoint_every = a.checkpoint_every;
    c.stage = format!("grpo-{}", a.domain.replace(['*', ','], "_"));
    Ok(c)
}

/// Whether the loss has a KL penalty, which needs a frozen reference model.
pub fn needs_reference(cfg: &GrpoConfig) -> bool {
    cfg.loss.beta > 0.0 && cfg.loss.kl != KlKind::None
}

/// The frozen KL reference of a GRPO run that starts from `start` (None without a KL
/// penalty): the starting weights in the decode engine, routed experts packed MXFP4 (see
/// `trainer::reference`). It is never stepped and has no f32 master copy.
pub fn reference_model(cfg: &GrpoConfig, start: &ModelWeights) -> Result<Option<FrozenReference>> {
    if !needs_reference(cfg) {
        return Ok(None);
    }
    let r = FrozenReference::new(start).context("building the frozen KL reference model")?;
    Ok(Some(r))
}

pub fn grpo(a: &GrpoArgs) -> Result<()> {
    let cfg = grpo_config(a)?;
    tasks::match_domains(&a.domain)?;
    let (tok, tok_from) = base_tokenizer(&a.base)?;
    let mut s = open_session(&a.base, &a.out, a.resume, a.seed, a.optim.config(), (tok.as_ref(), tok_from.as_deref()))?;
    s.tokenizer_from = tok_from.clone();
    // the frozen reference is the base the run started from (also on --resume)
    let reference = match (&a.base.base, needs_reference(&cfg)) {
        (_, false) => None,
        // a base checkpoint is frozen as stored (memory-mapped), not widened to f32
        (Some(dir), true) => Some(
            trainer::reference::FrozenReference::from_checkpoint(dir)
                .context("building the frozen KL reference model")?,
        ),
        (None, true) => reference_model(&cfg, &base_weights(&a.base, a.seed)?)?,
    };
    let source = PromptSource::Builtin {
        domains: a.domain.clone(),
        split: Split::Train,
        seed: a.seed,
        difficulty: a.difficulty.into(),
    };
    // every rollout fits the model's context (else it fails mid-run on every delivery)
    let budgets: Vec<(Mode, usize)> = cfg.modes.iter().map(|&m| (m, cfg.shaping.for_mode(m).max_len)).collect();
    let draws = cfg.steps * cfg.prompts_per_step as u64 * (1 + cfg.max_refill_rounds as u64);
    let lower = "the mode's default; leave the mode out of --modes";
    crate::pipeline::validate::source_fits(tok.as_ref(), s.model.config.max_seq_len, &source, draws, &budgets, lower)
        .map_err(|m| anyhow::anyhow!("grpo {}: {m}", a.domain))?;
    let mut metrics = MetricsWriter::new(&a.out.join("metrics"), &cfg.stage)?;
    let bars = Bars::new(a.json);
    let mut rollouts = LocalRollouts {
        tok: tok.as_ref(),
        store: Some(TrajectoryStore::open(&a.out.join("trajectories").join(datasets::safe_component(&cfg.stage)))?),
        opts: Default::default(),
        progress: &NoProgress,
    };
    let rep = run_grpo(
        &mut s,
        &cfg,
        &source,
        &mut rollouts,
        "grpo",
        reference.as_ref(),
        &mut metrics,
        &bars,
        Some(&a.out.join("train")),
    )?;
    s.save(&a.out.join("train"))?;
    write_outputs(&s.weights()?, &a.out, tok_from.as_deref())?;
    let out = json!({"steps": rep.steps, "reward_first": rep.mean_reward_first, "reward_last": rep.mean_reward_last, "sampled_tokens": rep.sampled_tokens, "seconds": rep.seconds, "out": a.out});
    if a.json {
        print_json(&out);
    } else {
        eprintln!(
            "grpo {}: {} steps, reward {:.3} → {:.3}, {} sampled tokens in {:.0}s; expert in {}",
            a.domain,
            rep.steps,
            rep.mean_reward_first,
            rep.mean_reward_last,
            rep.sampled_tokens,
            rep.seconds,
            a.out.display()
        );
    }
    Ok(())
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    let mode = Mode::from(a.mode);
    let split = Split::from(a.split);
    let tok = checkpoint_tokenizer(&a.checkpoint)?;
    let engine = Engine::from_checkpoint(&a.checkpoint, EngineOptions::default())
        .with_context(|| format!("loading {}", a.checkpoint.display()))?;
    let mut ts = Vec::new();
    for d in tasks::match_domains(&a.domains)? {
        ts.extend(tasks::sample_with(d.domain, split, a.seed, a.n, &a.difficulty.into())?);
    }
    let max_tokens = a.max_tokens.unwrap_or_else(|| rewards::shaping::LengthShaping::default().for_mode(mode).max_len);
    let context = engine.config.max_seq_len;
    crate::pipeline::validate::prompts_fit(tok.as_ref(), context, &ts, &[(mode, max_tokens)], "--max-tokens")
        .map_err(|m| anyhow::anyhow!("eval {}: {m}", a.checkpoint.display()))?;
    let bars = Bars::new(a.json);
    let rep = rollout::evaluate(&engine, tok.as_ref(), &ts, mode, max_tokens, a.show, &bars)?;
    if a.json {
        print_json(&serde_json::to_value(&rep)?);
    } else {
        println!("{:<14} {:>8} {:>9}", "domain", "accuracy", "mean_len");
        for (d, acc) in &rep.by_domain {
            println!("{:<14} {:>8.3} {:>9.1}", d, acc, rep.mean_len[d]);
        }
        println!("{:<14} {:>8.3}   ({} prompts, {} mode, greedy)", "all", rep.accuracy, rep.n, rep.mode);
        for e in &rep.examples {
            println!("\n[{}] reward {} | {}\n  → {:?}", e.domain, e.reward, e.prompt, e.response);
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct OpdArgs {
    /// Student checkpoint to distil into.
    #[arg(long)]
    pub student: PathBuf,
    /// Teacher registry (TOML: [[teacher]] id, checkpoint, domains, weight).
    #[arg(long)]
    pub teachers: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Built-in domains to sample prompts from (default: every domain some teacher teaches).
    #[arg(long, conflicts_with = "prompts")]
    pub domains: Option<String>,
    /// A user prompt dataset (.parquet or .jsonl) instead of the built-in suite.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Prompts per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Student samples per prompt.
    #[arg(long, default_value_t = 1)]
    pub group: usize,
    /// Share of prompts per reasoning mode, e.g. `non_think=0.3,think_high=0.7`.
    #[arg(long, default_value = "non_think=0.3,think_high=0.7")]
    pub mode_mix: String,
    /// full (exact reverse KL over the vocabulary, V4) or sampled (single-token estimator).
    #[arg(long, value_enum, default_value = "full")]
    pub estimator: crate::choices::EstimatorArg,
    /// Temperature of the KL.
    #[arg(long, default_value_t = 1.0)]
    pub kl_temperature: f32,
    /// Sampling temperature of the student's rollouts.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 32)]
    pub minibatch: usize,
    /// Teachers held in memory at once.
    #[arg(long, default_value_t = 1)]
    pub resident: usize,
    #[arg(long, default_value_t = 64)]
    pub chunk_rows: usize,
    #[arg(long, default_value_t = 4096)]
    pub chunk_vocab: usize,
    /// Difficulty of the built-in prompts: a level 1 (easy) .. 5, or a range like 1-2 whose
    /// levels alternate over the prompts (default: each domain's own).
    #[arg(long)]
    pub difficulty: Option<Levels>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 10)]
    pub checkpoint_every: u64,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[arg(long)]
    pub json: bool,
}

/// `non_think=0.3,think_high=0.7` → mode shares.
pub fn parse_mode_mix(s: &str) -> Result<Vec<(Mode, f32)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (m, w) = part.split_once('=').with_context(|| format!("mode mix entry `{part}`: use MODE=SHARE"))?;
        let mode: Mode = m.trim().parse().map_err(anyhow::Error::msg)?;
        let w: f32 = w.trim().parse().with_context(|| format!("mode mix share `{w}` is not a number"))?;
        if !(w.is_finite() && w >= 0.0) {
            bail!("mode mix share of {m} must be ≥ 0");
        }
        out.push((mode, w));
    }
    if out.is_empty() || out.iter().all(|m| m.1 == 0.0) {
        bail!("the mode mix `{s}` gives no mode a positive share");
    }
    Ok(out)
}

pub fn parse_estimator(s: &str) -> Result<trainer::kl::Estimator> {
    match s {
        "full" | "full_vocab" => Ok(trainer::kl::Estimator::FullVocab),
        "sampled" => Ok(trainer::kl::Estimator::Sampled),
        o => bail!("unknown --estimator `{o}` (full, sampled)"),
    }
}

/// Built-in domains taught by some teacher of the registry.
pub fn covered_domains(reg: &teachers::Registry) -> String {
    tasks::domains()
        .iter()
        .filter(|d| !reg.weights_for(d.domain).is_empty())
        .map(|d| d.domain)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn opd(a: &OpdArgs) -> Result<()> {
    let reg = teachers::Registry::load(&a.teachers)?;
    let tok = checkpoint_tokenizer(&a.student)?;
    let student = checkpoint::load(&a.student).with_context(|| format!("loading student {}", a.student.display()))?;
    reg.validate_against(Some(&a.student), &student.config)?;
    let source = match (&a.prompts, &a.domains) {
        (Some(p), _) => PromptSource::File(p.clone()),
        (None, d) => {
            let domains = match d {
                Some(d) => d.clone(),
                None => covered_domains(&reg),
            };
            if domains.is_empty() {
                bail!(
                    "no built-in domain is taught by any teacher in {}; give --domains or --prompts",
                    a.teachers.display()
                );
            }
            let names: Vec<&str> = tasks::match_domains(&domains)?.iter().map(|d| d.domain).collect();
            reg.check_covers(names)?;
            PromptSource::Builtin { domains, split: Split::Train, seed: a.seed, difficulty: a.difficulty.into() }
        }
    };
    let cfg = trainer::opd::OpdConfig {
        steps: a.steps,
        prompts_per_step: a.batch,
        group_size: a.group,
        temperature: a.temperature,
        kl_temperature: a.kl_temperature,
        mode_mix: parse_mode_mix(&a.mode_mix)?,
        estimator: parse_estimator(a.estimator.as_str())?,
        minibatch: a.minibatch,
        chunk_rows: a.chunk_rows,
        chunk_vocab: a.chunk_vocab,
        checkpoint_every: a.checkpoint_every,
        ..Default::default()
    };
    let budgets: Vec<(Mode, usize)> = cfg
        .mode_mix
        .iter()
        .filter(|(_, w)| *w > 0.0)
        .filter_map(|(m, _)| cfg.max_tokens.iter().find(|(b, _)| b == m).copied())
        .collect();
    let lower = "the mode's default; give the mode no share in --mode-mix";
    let (context, draws) = (student.config.max_seq_len, cfg.steps * cfg.prompts_per_step as u64);
    crate::pipeline::validate::source_fits(tok.as_ref(), context, &source, draws, &budgets, lower)
        .map_err(|m| anyhow::anyhow!("opd: {m}"))?;
    let base = BaseArgs { base: Some(a.student.clone()), preset: None };
    let run_tok = (tok.as_ref(), Some(a.student.as_path()));
    let mut s = open_session(&base, &a.out, a.resume, a.seed, a.optim.config(), run_tok)?;
    s.tokenizer_from = Some(a.student.clone());
    let bars = Bars::new(a.json);
    eprintln!("distilling {} teachers ({} resident at a time) onto {}", reg.len(), a.resident, a.student.display());
    let mut metrics = MetricsWriter::new(&a.out.join("metrics"), &cfg.stage)?;
    let mut rollouts = LocalRollouts {
        tok: tok.as_ref(),
        store: Some(TrajectoryStore::open(&a.out.join("trajectories").join(datasets::safe_component(&cfg.stage)))?),
        opts: Default::default(),
        progress: &NoProgress,
    };
    let mut local = trainer::opd::LocalTeachers {
        pool: teachers::TeacherPool::new(reg.clone(), a.resident),
        store: Some(datasets::store::TeacherStateStore::open(
            &a.out.join("teacher_states").join(datasets::safe_component(&cfg.stage)),
        )?),
    };
    let rep = trainer::opd::run_opd(
        &mut s,
        &cfg,
        &source,
        &mut rollouts,
        &mut local,
        &reg,
        "opd",
        &mut metrics,
        &bars,
        Some(&a.out.join("train")),
    )?;
    s.save(&a.out.join("train"))?;
    write_outputs(&s.weights()?, &a.out, Some(a.student.as_path()))?;
    let out = json!({"steps": rep.steps, "kl_first": rep.kl_first, "kl_last": rep.kl_last, "sampled_tokens": rep.sampled_tokens, "teacher_loads": local.pool.loads, "seconds": rep.seconds, "out": a.out});
    if a.json {
        print_json(&out);
    } else {
        eprintln!(
            "opd: {} steps, reverse KL {:.4} → {:.4}, {} sampled tokens, {} teacher loads in {:.0}s; student in {}",
            rep.steps,
            rep.kl_first,
            rep.kl_last,
            rep.sampled_tokens,
            local.pool.loads,
            rep.seconds,
            a.out.display()
        );
    }
    Ok(())
}
