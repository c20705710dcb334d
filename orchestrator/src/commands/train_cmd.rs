//! The training verbs `pretrain`, `sft`, `grpo` and `opd`, each a one-stage pipeline: the
//! flags fill the stage's typed config (`pipeline::config::{SftStage, GrpoStage, OpdStage}`,
//! whose `Default` is the one set of defaults of file and flag), and `pipeline::run` runs it
//! in the work directory (embedded queue, in-process workers), exactly as a `[[stage]]` of a
//! pipeline file. The final model is then exported to `--out`. And `eval`.

use crate::choices::{EstimatorArg, ModeArg, TrainFormat};
use crate::models::checkpoint_tokenizer;
use crate::pipeline::config::{
    DataSection, GrpoStage, ModelSection, OpdStage, Optim, PipelineConfig, Routing, RunSection, SftStage, Stage,
    WorkersSection,
};
use crate::pipeline::{self, RunOptions, RunState};
use crate::ui::print_json;
use crate::ui::Bars;
use anyhow::{bail, Context, Result};
use clap::Args;
use datasets::chat::Mode;
use datasets::tasks::{self, Levels, Split};
use model::checkpoint::{self, SaveFormat};
use model::{Engine, EngineOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use trainer::anticipatory::{AnticipatoryConfig, SpikeConfig, SpikeSignal, Trigger};
use trainer::grpo::GrpoVariant;

/// Where the starting weights come from.
#[derive(Args, Debug, Clone)]
pub struct BaseArgs {
    /// Start from this checkpoint directory. Its `tokenizer.json` (Hugging Face format), if it
    /// has one, is the tokenizer of the run and is copied into every checkpoint written;
    /// without one (and for --preset) the built-in byte tokenizer is used.
    #[arg(long, conflicts_with = "preset")]
    pub base: Option<PathBuf>,
    /// Start from random weights of a preset (tiny and small train here; flash and pro are
    /// refused as too large).
    #[arg(long, value_parser = crate::choices::preset_parser())]
    pub preset: Option<String>,
}

impl BaseArgs {
    /// The `model.base` these flags name for a pipeline: a checkpoint directory or `preset:NAME`.
    pub fn spec(&self) -> Result<String> {
        match (&self.base, &self.preset) {
            (Some(p), _) => Ok(p.to_string_lossy().into_owned()),
            (None, Some(p)) => Ok(format!("preset:{p}")),
            (None, None) => bail!("give --base CHECKPOINT or --preset NAME"),
        }
    }
}

/// Optimizer flags shared by the trainers; unset, the stage's own (`[[stage]] optim` of a
/// pipeline file: sft 0.01 / 2e-3, grpo and opd 0.01 / 1e-3, clip 1.0, weight decay 0.1).
#[derive(Args, Debug, Clone)]
pub struct OptimArgs {
    /// Muon learning rate (matrices) [default: the stage's].
    #[arg(long)]
    pub lr_muon: Option<f32>,
    /// AdamW learning rate (embeddings, head, norms, mHC gates/biases, sinks) [default: the stage's].
    #[arg(long)]
    pub lr_adamw: Option<f32>,
    /// Global gradient-norm clip (0 = off) [default: the stage's].
    #[arg(long)]
    pub clip: Option<f32>,
    /// Decoupled weight decay of Muon parameters [default: the stage's].
    #[arg(long)]
    pub weight_decay: Option<f32>,
}

impl OptimArgs {
    /// `stage` with the flags that were given.
    pub fn over(&self, stage: &Optim) -> Optim {
        Optim {
            lr_muon: self.lr_muon.unwrap_or(stage.lr_muon),
            lr_adamw: self.lr_adamw.unwrap_or(stage.lr_adamw),
            clip: self.clip.unwrap_or(stage.clip),
            weight_decay: self.weight_decay.unwrap_or(stage.weight_decay),
        }
    }
}

/// What every training verb shares: where it runs and how.
#[derive(Args, Debug, Clone)]
pub struct WorkArgs {
    /// Output checkpoint directory (final weights, plus the tokenizer of the start).
    #[arg(long)]
    pub out: PathBuf,
    /// Run directory of the one-stage pipeline: step checkpoints, trajectories, metrics,
    /// state.json (default: OUT, or OUT.work for pretrain so that OUT holds only the checkpoint).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Difficulty of the built-in prompts: a level 1 (easy) .. 5, or a range like 1-2 whose
    /// levels alternate over the prompts (default: each domain's own).
    #[arg(long)]
    pub difficulty: Option<Levels>,
    /// Seed of the run (data order, sampling, random initial weights of a preset).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue the run in the work directory after a crash or a stop (its step checkpoints,
    /// trajectories and state); it must have been started from the same base and tokenizer.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many optimizer steps (then continue with --resume).
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<u64>,
    /// One JSON object on stdout when done; progress as log lines instead of bars.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SftArgs {
    #[command(flatten)]
    pub base: BaseArgs,
    /// Train on your own conversations instead of the built-in suite: a Parquet/JSONL file,
    /// a directory of shards or a glob (`data/train-*.parquet`) with `messages` (list of
    /// {role, content}) or `prompt` + `completion`; loss on the assistant turns.
    #[arg(long, conflicts_with_all = ["mix", "difficulty"])]
    pub data: Option<PathBuf>,
    /// Domains whose reference solutions are learned (`math.*,if.*`, `*`); with --data, the
    /// records whose `domain` column matches (records without one are `user`).
    #[arg(long, default_value_t = SftStage::default().domains)]
    pub domains: String,
    /// Mixture weights, `PATTERN=W,...` (e.g. `math.add=6,agent.*=3`): a matching domain
    /// appears W times per cycle of the data mixture instead of once.
    #[arg(long, value_delimiter = ',')]
    pub mix: Vec<String>,
    /// Optimizer steps.
    #[arg(long, default_value_t = SftStage::default().steps)]
    pub steps: u64,
    /// Packed sequences per micro-batch.
    #[arg(long, default_value_t = SftStage::default().batch)]
    pub batch: usize,
    /// Packed sequence length. Longer examples are skipped (with a warning per domain and
    /// mode); 1152 fits every built-in example in every mode and difficulty (the longest,
    /// an agent.chain episode in Think Max, is ~1070 tokens) — the Think Max system prefix
    /// alone is ~480 tokens, so at 384 only Non-think and Think High examples fit.
    #[arg(long, default_value_t = SftStage::default().max_len)]
    pub max_len: usize,
    /// Micro-batches of --batch sequences per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = SftStage::default().accum)]
    pub accum: usize,
    /// Reasoning modes of the examples.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "non_think,think_high,think_max")]
    pub modes: Vec<ModeArg>,
    /// A step checkpoint every this many optimizer steps (0 = none; kept until the stage ends).
    #[arg(long, default_value_t = SftStage::default().checkpoint_every)]
    pub checkpoint_every: u64,
    /// Final weights: `f32` (plus a rollout/ FP4 export; sft's default) or `official` (FP8
    /// weights + FP4 experts, the layout V4 ships; pretrain's default).
    #[arg(long, value_enum)]
    pub format: Option<TrainFormat>,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[command(flatten)]
    pub run: WorkArgs,
}

impl SftArgs {
    /// The stage these flags describe (`pretrain`: loss on the prompt tokens too).
    pub fn stage(&self, pretrain: bool) -> SftStage {
        let d = SftStage::default();
        SftStage {
            domains: self.domains.clone(),
            data: self.data.clone(),
            steps: self.steps,
            batch: self.batch,
            max_len: self.max_len,
            modes: self.modes.iter().map(|&m| Mode::from(m)).collect(),
            mix: self.mix.clone(),
            accum: self.accum,
            train_on_prompt: pretrain,
            checkpoint_every: self.checkpoint_every,
            optim: self.optim.over(&d.optim),
        }
    }
}

#[derive(Args, Debug)]
pub struct GrpoArgs {
    #[command(flatten)]
    pub base: BaseArgs,
    /// The domain this expert is built for (a pattern trains one policy on several).
    #[arg(long)]
    pub domains: String,
    /// Optimizer steps.
    #[arg(long, default_value_t = GrpoStage::default().steps)]
    pub steps: u64,
    /// Prompts per step.
    #[arg(long, default_value_t = GrpoStage::default().prompts)]
    pub prompts_per_step: usize,
    /// Samples per prompt.
    #[arg(long, default_value_t = GrpoStage::default().group)]
    pub group: usize,
    /// Preset of loss and sampling choices.
    #[arg(long, value_parser = crate::choices::grpo_variant_parser(), default_value = "v32")]
    pub variant: GrpoVariant,
    #[arg(long, default_value_t = GrpoStage::default().temperature)]
    pub temperature: f32,
    #[arg(long, default_value_t = GrpoStage::default().top_p)]
    pub top_p: f32,
    /// Top-k truncation of sampling (0 = none).
    #[arg(long, default_value_t = GrpoStage::default().top_k)]
    pub top_k: usize,
    /// KL coefficient to the frozen base [default: the variant's; 0 = no reference model].
    #[arg(long)]
    pub beta: Option<f32>,
    /// Gradient passes over each step's samples.
    #[arg(long, default_value_t = GrpoStage::default().epochs)]
    pub epochs: usize,
    /// Sequences per optimizer update.
    #[arg(long, default_value_t = GrpoStage::default().minibatch)]
    pub minibatch: usize,
    /// Dynamic sampling: extra rounds per step replacing groups whose rewards are all equal.
    #[arg(long, default_value_t = GrpoStage::default().refill_rounds)]
    pub refill_rounds: usize,
    /// Domain SFT steps before GRPO (the V4 experts are SFT, then GRPO).
    #[arg(long, default_value_t = GrpoStage::default().sft_steps)]
    pub sft_steps: u64,
    /// Reasoning modes the prompts are sampled in (one per prompt).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "non_think,think_high")]
    pub modes: Vec<ModeArg>,
    /// Routing in the training forward: keep (replay the sampler's expert ids) or free
    /// (recomputed by the training forward).
    #[arg(long, value_enum, default_value_t = GrpoStage::default().routing)]
    pub routing: Routing,
    #[command(flatten)]
    pub anticipatory: AnticipatoryArgs,
    /// A step checkpoint every this many optimizer steps (0 = none; kept until the stage ends).
    #[arg(long, default_value_t = GrpoStage::default().checkpoint_every)]
    pub checkpoint_every: u64,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[command(flatten)]
    pub run: WorkArgs,
}

impl GrpoArgs {
    /// The stage these flags describe: one expert for `--domains`.
    pub fn stage(&self) -> GrpoStage {
        let d = GrpoStage::default();
        GrpoStage {
            experts: vec![self.domains.clone()],
            steps: self.steps,
            prompts: self.prompts_per_step,
            group: self.group,
            modes: self.modes.iter().map(|&m| Mode::from(m)).collect(),
            variant: self.variant,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            beta: self.beta,
            routing: self.routing,
            epochs: self.epochs,
            minibatch: self.minibatch,
            sft_steps: self.sft_steps,
            refill_rounds: self.refill_rounds,
            checkpoint_every: self.checkpoint_every,
            optim: self.optim.over(&d.optim),
            anticipatory: self.anticipatory.config(),
        }
    }
}

/// Anticipatory Routing flags (DeepSeek-V4's MoE stability trick; see `trainer::anticipatory`).
#[derive(Args, Debug, Clone)]
pub struct AnticipatoryArgs {
    /// Anticipatory Routing: `spike` = after a spike of the training signal, route each
    /// minibatch to the experts that the router of Δt optimizer updates ago picks (backbone
    /// and gate weights stay current) for --anticipatory-hold steps; `always` = every step
    /// (ablations); `off`. Combines with --routing (it replaces keep's ids while active).
    #[arg(long = "anticipatory", default_value = "off", value_parser = crate::choices::from_str_choice::<Trigger>(&Trigger::NAMES))]
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
    #[arg(long, default_value = "loss", value_parser = crate::choices::from_str_choice::<SpikeSignal>(&SpikeSignal::NAMES))]
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
    /// Reasoning modes to evaluate, each separately (`--json`: one object per mode, one per line).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "think_high")]
    pub modes: Vec<crate::choices::ModeArg>,
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

#[derive(Args, Debug)]
pub struct OpdArgs {
    /// The student: the checkpoint distilled into (its tokenizer is the run's).
    #[arg(long)]
    pub base: PathBuf,
    /// Teacher registry (TOML: [[teacher]] id, checkpoint, domains, weight).
    #[arg(long)]
    pub teachers: PathBuf,
    /// Built-in domains to sample prompts from, of those some teacher teaches (default: all).
    #[arg(long, default_value_t = OpdStage::default().domains)]
    pub domains: String,
    /// A user prompt dataset (.parquet or .jsonl) instead of the built-in suite.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, default_value_t = OpdStage::default().steps)]
    pub steps: u64,
    /// Prompts per step.
    #[arg(long, default_value_t = OpdStage::default().prompts)]
    pub prompts_per_step: usize,
    /// Student samples per prompt.
    #[arg(long, default_value_t = OpdStage::default().group)]
    pub group: usize,
    /// Share of prompts per reasoning mode, e.g. `non_think=0.3,think_high=0.7`.
    #[arg(long, default_value = "non_think=0.3,think_high=0.7")]
    pub mode_mix: String,
    /// full (exact reverse KL over the vocabulary, V4) or sampled (single-token estimator).
    #[arg(long, value_enum, default_value = "full")]
    pub estimator: EstimatorArg,
    /// Temperature of the KL.
    #[arg(long, default_value_t = OpdStage::default().kl_temperature)]
    pub kl_temperature: f32,
    /// Sampling temperature of the student's rollouts.
    #[arg(long, default_value_t = OpdStage::default().temperature)]
    pub temperature: f32,
    /// Sequences per optimizer update.
    #[arg(long, default_value_t = OpdStage::default().minibatch)]
    pub minibatch: usize,
    /// Teachers the teacher worker keeps loaded at once (least recently used goes first).
    #[arg(long, default_value_t = OpdStage::default().resident)]
    pub resident: usize,
    /// Rows per tile of the fused reverse KL.
    #[arg(long, default_value_t = OpdStage::default().chunk_rows)]
    pub chunk_rows: usize,
    /// Vocabulary entries per tile of the fused reverse KL.
    #[arg(long, default_value_t = OpdStage::default().chunk_vocab)]
    pub chunk_vocab: usize,
    /// A step checkpoint every this many optimizer steps (0 = none; kept until the stage ends).
    #[arg(long, default_value_t = OpdStage::default().checkpoint_every)]
    pub checkpoint_every: u64,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[command(flatten)]
    pub run: WorkArgs,
}

impl OpdArgs {
    /// The stage these flags describe.
    pub fn stage(&self) -> Result<OpdStage> {
        let d = OpdStage::default();
        Ok(OpdStage {
            teachers: self.teachers.to_string_lossy().into_owned(),
            domains: self.domains.clone(),
            mode_mix: parse_mode_mix(&self.mode_mix)?.into_iter().collect(),
            steps: self.steps,
            prompts: self.prompts_per_step,
            group: self.group,
            estimator: self.estimator.into(),
            kl_temperature: self.kl_temperature,
            temperature: self.temperature,
            minibatch: self.minibatch,
            resident: self.resident,
            chunk_rows: self.chunk_rows,
            chunk_vocab: self.chunk_vocab,
            checkpoint_every: self.checkpoint_every,
            optim: self.optim.over(&d.optim),
        })
    }
}

/// A training verb's one-stage pipeline: its start, its stage and where it runs.
struct OneStage<'a> {
    /// `model.base` of the pipeline: a checkpoint directory or `preset:NAME`.
    base: String,
    stage: Stage,
    run: &'a WorkArgs,
    /// The run directory.
    work: PathBuf,
    /// The user prompt dataset (`data.prompts`).
    prompts: Option<PathBuf>,
}

impl OneStage<'_> {
    /// Run the stage through `pipeline::run` and return the run's state (the stage's
    /// outcome is in `completed`).
    fn run(self) -> Result<RunState> {
        let state_file = self.work.join("state.json");
        let started = state_file.exists() || self.work.join("checkpoints").exists();
        if started && !self.run.resume {
            bail!(
                "{} already holds a run of this verb; add --resume to continue it, or choose another --out (or --work)",
                self.work.display()
            );
        }
        let cfg = PipelineConfig {
            run: RunSection {
                name: self.stage.kind().to_string(),
                seed: self.run.seed,
                queue: "embedded".into(),
                runs_dir: self.work.parent().map(Path::to_path_buf).unwrap_or_default(),
            },
            model: ModelSection { base: self.base },
            data: DataSection { prompts: self.prompts, difficulty: self.run.difficulty, ..Default::default() },
            workers: WorkersSection { local: true, ..Default::default() },
            stages: vec![self.stage],
        };
        let opts = RunOptions {
            // a run stopped before its first stage completed has step checkpoints, no state yet
            resume: self.run.resume && state_file.exists(),
            json: self.run.json,
            stop_after_steps: self.run.stop_after_steps,
            run_dir: Some(self.work.clone()),
            ..Default::default()
        };
        pipeline::run(cfg, &opts)?;
        let text = std::fs::read_to_string(&state_file).with_context(|| format!("reading {}", state_file.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// The stage `key`'s model directory and report in `state`.
fn outcome<'s>(state: &'s RunState, work: &Path, key: &str) -> Result<(PathBuf, &'s Value)> {
    let o = state.completed.get(key).with_context(|| format!("the run has no result for stage {key}"))?;
    let model = o.model.as_ref().with_context(|| format!("stage {key} wrote no model"))?;
    Ok((work.join(model), &o.report))
}

/// Put the stage's model at `out`: the F32 checkpoint with its `rollout/` FP4 export and
/// tokenizer files (hard links where possible), or the `official` FP8/FP4 layout.
fn export_model(model: &Path, out: &Path, format: TrainFormat) -> Result<()> {
    if model == out {
        return Ok(());
    }
    match format {
        TrainFormat::F32 => link_tree(model, out),
        TrainFormat::Official => {
            let w = checkpoint::load(model).with_context(|| format!("loading {}", model.display()))?;
            checkpoint::save(&w, out, SaveFormat::Official, None)?;
            crate::models::carry_tokenizer(Some(model), out)
        }
    }
}

/// The files of `from` (and its subdirectories) at the same places under `to`, replacing
/// what is there: hard links, or copies across file systems.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            link_tree(&src, &dst)?;
            continue;
        }
        if dst.exists() {
            std::fs::remove_file(&dst).with_context(|| format!("replacing {}", dst.display()))?;
        }
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// The run directory of a verb: `--work`, else OUT (OUT.work for pretrain).
fn work_dir(r: &WorkArgs, pretrain: bool) -> PathBuf {
    match (&r.work, pretrain) {
        (Some(w), _) => w.clone(),
        (None, true) => {
            let mut w = r.out.clone().into_os_string();
            w.push(".work");
            PathBuf::from(w)
        }
        (None, false) => r.out.clone(),
    }
}

/// Print a verb's summary: the JSON object with --json, else `line` on stderr.
fn report(r: &WorkArgs, summary: &Value, line: String) {
    if r.json {
        print_json(summary);
    } else {
        eprintln!("{line}");
    }
}

pub fn sft(a: &SftArgs, pretrain: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let format = a.format.unwrap_or(if pretrain { TrainFormat::Official } else { TrainFormat::F32 });
    let work = work_dir(&a.run, pretrain);
    let stage = a.stage(pretrain);
    if let Some(d) = &a.data {
        // bad data fails here, before a model is loaded, naming file, row and column
        let n = datasets::sft_data::load_sft_dataset(d).with_context(|| format!("--data {}", d.display()))?.len();
        eprintln!("SFT data: {n} conversations from {}", d.display());
    }
    let state =
        OneStage { base: a.base.spec()?, stage: Stage::Sft(stage), run: &a.run, work: work.clone(), prompts: None }
            .run()?;
    let (model, rep) = outcome(&state, &work, "sft")?;
    export_model(&model, &a.run.out, format)?;
    let verb = if pretrain { "pretrain" } else { "sft" };
    let mut out = json!({
        "stage": verb, "steps": rep["steps"], "first_loss": rep["first_loss"], "final_loss": rep["final_loss"],
        "tokens": rep["tokens"], "seconds": rep["seconds"], "wall_seconds": started.elapsed().as_secs_f64(),
        "seed": a.run.seed, "format": format.as_str(), "out": a.run.out, "work": work,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "v4post_version": env!("CARGO_PKG_VERSION"),
        "threads": rayon::current_num_threads(),
    });
    checkpoint::write_atomic(&a.run.out.join(format!("{verb}.json")), serde_json::to_string_pretty(&out)?.as_bytes())?;
    if let Some(o) = out.as_object_mut() {
        o.retain(|k, _| k != "command");
    }
    let line = format!(
        "{verb}: {} steps, loss {} → {}, {} tokens in {:.0}s; weights ({}) in {}",
        rep["steps"],
        num(&rep["first_loss"]),
        num(&rep["final_loss"]),
        rep["tokens"],
        rep["seconds"].as_f64().unwrap_or(0.0),
        format.as_str(),
        a.run.out.display()
    );
    report(&a.run, &out, line);
    Ok(())
}

/// A report number with three decimals (`-` when absent).
fn num(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.3}"))
}

pub fn grpo(a: &GrpoArgs) -> Result<()> {
    let work = work_dir(&a.run, false);
    let stage = OneStage {
        base: a.base.spec()?,
        stage: Stage::Grpo(a.stage()),
        run: &a.run,
        work: work.clone(),
        prompts: None,
    };
    let state = stage.run()?;
    let (model, rep) = outcome(&state, &work, &format!("grpo/{}", a.domains))?;
    export_model(&model, &a.run.out, TrainFormat::F32)?;
    let out = json!({
        "steps": rep["steps"], "reward_first": rep["mean_reward_first"], "reward_last": rep["mean_reward_last"],
        "sampled_tokens": rep["sampled_tokens"], "seconds": rep["seconds"], "out": a.run.out,
    });
    let line = format!(
        "grpo {}: {} steps, reward {} → {}, {} sampled tokens in {:.0}s; expert in {}",
        a.domains,
        rep["steps"],
        num(&rep["mean_reward_first"]),
        num(&rep["mean_reward_last"]),
        rep["sampled_tokens"],
        rep["seconds"].as_f64().unwrap_or(0.0),
        a.run.out.display()
    );
    report(&a.run, &out, line);
    Ok(())
}

pub fn opd(a: &OpdArgs) -> Result<()> {
    let work = work_dir(&a.run, false);
    let base = a.base.to_string_lossy().into_owned();
    let stage =
        OneStage { base, stage: Stage::Opd(a.stage()?), run: &a.run, work: work.clone(), prompts: a.data.clone() };
    let state = stage.run()?;
    let (model, rep) = outcome(&state, &work, "opd")?;
    export_model(&model, &a.run.out, TrainFormat::F32)?;
    let out = json!({
        "steps": rep["steps"], "kl_first": rep["kl_first"], "kl_last": rep["kl_last"],
        "sampled_tokens": rep["sampled_tokens"], "seconds": rep["seconds"], "out": a.run.out,
    });
    let line = format!(
        "opd: {} steps, reverse KL {} → {}, {} sampled tokens in {:.0}s; student in {}",
        rep["steps"],
        num(&rep["kl_first"]),
        num(&rep["kl_last"]),
        rep["sampled_tokens"],
        rep["seconds"].as_f64().unwrap_or(0.0),
        a.run.out.display()
    );
    report(&a.run, &out, line);
    Ok(())
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    let split = Split::from(a.split);
    let tok = checkpoint_tokenizer(&a.checkpoint)?;
    let engine = Engine::from_checkpoint(&a.checkpoint, EngineOptions::default())
        .with_context(|| format!("loading {}", a.checkpoint.display()))?;
    let mut ts = Vec::new();
    for d in tasks::match_domains(&a.domains)? {
        ts.extend(tasks::sample_with(d.domain, split, a.seed, a.n, &a.difficulty.into())?);
    }
    let shaping = rewards::shaping::LengthShaping::default();
    let budgets: Vec<(Mode, usize)> = a
        .modes
        .iter()
        .map(|&m| Mode::from(m))
        .map(|m| (m, a.max_tokens.unwrap_or_else(|| shaping.for_mode(m).max_len)))
        .collect();
    let context = engine.config.max_seq_len;
    crate::pipeline::validate::prompts_fit(tok.as_ref(), context, &ts, &budgets, "--max-tokens")
        .map_err(|m| anyhow::anyhow!("eval {}: {m}", a.checkpoint.display()))?;
    let bars = Bars::new(a.json);
    for &(mode, max_tokens) in &budgets {
        let rep = rollout::evaluate(&engine, tok.as_ref(), &ts, mode, max_tokens, a.show, &bars)?;
        if a.json {
            // one line per mode (JSON Lines)
            crate::ui::print_stdout(&serde_json::to_string(&rep)?);
            continue;
        }
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

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use crate::pipeline::config::{GrpoStage, OpdStage, SftStage};
    use clap::Parser;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from([&["v4post"], args].concat()).unwrap().command
    }

    /// One set of defaults: a verb given only what it requires describes the stage a pipeline
    /// file's `[[stage]]` of the same kind gets with no keys.
    #[test]
    fn verb_defaults_are_the_stage_defaults() {
        let Command::Sft(a) = parse(&["sft", "--preset", "tiny", "--out", "o"]) else { unreachable!() };
        assert_eq!(a.stage(false), SftStage::default());
        let Command::Grpo(a) = parse(&["grpo", "--preset", "tiny", "--domains", "math.add", "--out", "o"]) else {
            unreachable!()
        };
        assert_eq!(a.stage(), GrpoStage { experts: vec!["math.add".into()], ..Default::default() });
        let Command::Opd(a) = parse(&["opd", "--base", "s", "--teachers", "t.toml", "--out", "o"]) else {
            unreachable!()
        };
        assert_eq!(a.stage().unwrap(), OpdStage { teachers: "t.toml".into(), ..Default::default() });
    }

    #[test]
    fn flags_reach_the_stage() {
        let Command::Sft(a) =
            parse(&["sft", "--preset", "tiny", "--out", "o", "--accum", "4", "--lr-muon", "0.5", "--mix", "math.*=2"])
        else {
            unreachable!()
        };
        let s = a.stage(true);
        assert_eq!((s.accum, s.optim.lr_muon, s.mix, s.train_on_prompt), (4, 0.5, vec!["math.*=2".to_string()], true));
        assert_eq!(s.optim.lr_adamw, SftStage::default().optim.lr_adamw);
    }
}
