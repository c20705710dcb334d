//! `pipeline.toml`: the run, the base model, the data, the workers, and the stages of the
//! DeepSeek-V4 recipe in order. Every field has a default; unknown fields are errors (a typo
//! must not silently fall back to a default). `v4post run` without a file uses
//! [`PipelineConfig::demo`].

use anyhow::{Context, Result};
use datasets::chat::Mode;
use datasets::tasks::{Difficulty, Levels};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use trainer::grpo::GrpoVariant;
use trainer::kl::Estimator;
use trainer::opd::OpdConfig;
use trainer::optim::OptimConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub run: RunSection,
    pub model: ModelSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub workers: WorkersSection,
    #[serde(rename = "stage")]
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub name: String,
    #[serde(default = "one")]
    pub seed: u64,
    /// `embedded` or `redis://[user:password@]host:port` (`rediss://` for TLS).
    #[serde(default = "embedded")]
    pub queue: String,
    /// Parent of the run directory (`<runs_dir>/<name>/`).
    #[serde(default = "runs")]
    pub runs_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A checkpoint directory, or `preset:NAME` for random weights (tests). The directory's
    /// `tokenizer.json`, if any, is the tokenizer of every stage (else the byte tokenizer).
    pub base: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A user prompt dataset (.parquet/.jsonl) for training stages; default: the built-in suite.
    pub prompts: Option<PathBuf>,
    /// A user prompt dataset for evaluation; default: the built-in suite's eval split.
    pub eval_prompts: Option<PathBuf>,
    /// Difficulty of built-in prompts: a level 1..5 or a range `"1-2"` (its levels alternate
    /// over the prompts); default: each domain's own.
    pub difficulty: Option<Levels>,
    /// Per-domain difficulty overriding `difficulty`, e.g. `{ "code.loop" = 2 }`: a curriculum
    /// puts each domain where the base is neither hopeless nor already perfect.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub difficulty_by_domain: BTreeMap<String, Levels>,
}

impl DataSection {
    /// The difficulty of every built-in prompt (per-domain entries must name built-in domains).
    pub fn difficulty(&self) -> Result<Difficulty> {
        Difficulty::per_domain(self.difficulty, self.difficulty_by_domain.clone())
            .map_err(|e| anyhow::anyhow!("data.difficulty_by_domain: {e}"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersSection {
    /// Run rollout and teacher workers inside this process (always on with `embedded`).
    pub local: bool,
    /// Prompts per rollout job message.
    pub job_prompts: usize,
    /// A popped job not acknowledged for this long is handed to another worker.
    pub visibility_timeout_s: f64,
    pub max_deliveries: u32,
    /// Jobs whose results have not arrived after this long are pushed again.
    pub resend_after_s: f64,
    /// Jobs for a policy more than this many versions old are dropped by workers.
    pub max_staleness: u64,
    /// The trainer waits while a topic holds this many messages (backpressure).
    pub queue_cap: usize,
    /// Score in reward workers instead of inside rollout workers.
    pub remote_scoring: bool,
}

impl Default for WorkersSection {
    fn default() -> Self {
        WorkersSection {
            local: false,
            job_prompts: 8,
            visibility_timeout_s: 120.0,
            max_deliveries: 4,
            resend_after_s: 600.0,
            max_staleness: 0,
            queue_cap: 4096,
            remote_scoring: false,
        }
    }
}

/// Optimizer settings of a training stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Optim {
    pub lr_muon: f32,
    pub lr_adamw: f32,
    pub clip: f32,
    pub weight_decay: f32,
}

impl Default for Optim {
    /// The trainer's own defaults ([`OptimConfig::default`]).
    fn default() -> Self {
        let c = OptimConfig::default();
        Optim { lr_muon: c.muon_lr, lr_adamw: c.adamw_lr, clip: c.clip_norm, weight_decay: c.muon_weight_decay }
    }
}

impl Optim {
    /// The trainer's optimizer settings with these four overridden.
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Stage {
    Sft(SftStage),
    Grpo(GrpoStage),
    Opd(OpdStage),
    ThinkMax(ThinkMaxStage),
    Eval(EvalStage),
}

impl Stage {
    pub fn kind(&self) -> &'static str {
        match self {
            Stage::Sft(_) => "sft",
            Stage::Grpo(_) => "grpo",
            Stage::Opd(_) => "opd",
            Stage::ThinkMax(_) => "think_max",
            Stage::Eval(_) => "eval",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftStage {
    /// Built-in suite domains; with `data`, the records whose `domain` column matches.
    pub domains: String,
    /// The user's SFT conversations (a Parquet/JSONL file, a directory of shards or a glob;
    /// `messages` or `prompt` + `completion`) instead of the built-in suite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<std::path::PathBuf>,
    pub steps: u64,
    /// Packed sequences per micro-batch.
    pub batch: usize,
    /// Packed sequence length; longer examples are skipped with a warning.
    pub max_len: usize,
    pub modes: Vec<Mode>,
    /// Mixture weights `PATTERN=W` of the built-in suite (a matching domain appears W times
    /// per cycle of the mixture instead of once).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mix: Vec<String>,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub accum: usize,
    /// Train on the prompt tokens too (pre-training); otherwise on the assistant turns only.
    pub train_on_prompt: bool,
    /// A step checkpoint every this many optimizer steps (kept until the stage completes).
    pub checkpoint_every: u64,
    pub optim: Optim,
}

impl Default for SftStage {
    fn default() -> Self {
        SftStage {
            domains: "*".into(),
            data: None,
            steps: 40,
            batch: 8,
            // the trainer's (and `v4post sft`'s): fits every built-in example in every mode
            max_len: trainer::sft::DEFAULT_MAX_LEN,
            modes: Mode::ALL.to_vec(),
            mix: Vec::new(),
            accum: 1,
            train_on_prompt: false,
            checkpoint_every: 1,
            optim: Optim { lr_muon: 0.01, lr_adamw: 2e-3, ..Default::default() },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoStage {
    /// One expert (teacher) per entry: a domain or pattern; `["each"]` = one per domain.
    pub experts: Vec<String>,
    pub steps: u64,
    pub prompts: usize,
    pub group: usize,
    pub modes: Vec<Mode>,
    /// v32, grpo, dapo or dr-grpo ([`GrpoVariant`]).
    pub variant: GrpoVariant,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = no top-k truncation.
    pub top_k: usize,
    /// KL coefficient to the frozen start weights (default: the variant's; > 0 with a
    /// variant without KL switches on the k3-IS estimator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f32>,
    /// Expert routing of the training forward: keep (replay the sampler's ids) or free.
    pub routing: Routing,
    pub epochs: usize,
    pub minibatch: usize,
    /// Domain SFT steps before GRPO (the V4 experts are SFT then GRPO).
    pub sft_steps: u64,
    /// Dynamic sampling: extra sampling rounds per step to replace groups whose rewards are
    /// all equal (no signal). Each round re-samples the missing prompts, so on a domain the
    /// policy nearly solves, every round costs up to a full step of rollouts.
    pub refill_rounds: usize,
    pub optim: Optim,
    /// A step checkpoint every this many optimizer steps (kept until the stage completes).
    pub checkpoint_every: u64,
    /// Anticipatory Routing (`[stage.anticipatory]`: trigger = "off" | "spike" | "always",
    /// dt, hold_steps, release_on_recovery, detector = { signal, window, min_history, k,
    /// min_rise }); off by default.
    pub anticipatory: trainer::anticipatory::AnticipatoryConfig,
}

impl Default for GrpoStage {
    fn default() -> Self {
        GrpoStage {
            experts: vec!["each".into()],
            steps: 8,
            prompts: 8,
            group: 8,
            modes: vec![Mode::NonThink, Mode::ThinkHigh],
            variant: GrpoVariant::V32,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            beta: None,
            routing: Routing::Keep,
            epochs: 1,
            minibatch: 32,
            sft_steps: 0,
            refill_rounds: 2,
            optim: Optim { lr_muon: 0.01, lr_adamw: 1e-3, ..Default::default() },
            checkpoint_every: 1,
            anticipatory: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpdStage {
    /// `all` (every expert of the grpo stage) or a path to a teachers.toml.
    pub teachers: String,
    /// Domains of the prompts (a pattern), of those some teacher teaches; `*` = all of them.
    pub domains: String,
    /// Share of prompts per reasoning mode.
    pub mode_mix: BTreeMap<Mode, f32>,
    pub steps: u64,
    pub prompts: usize,
    pub group: usize,
    /// full or sampled ([`Estimator`]).
    pub estimator: Estimator,
    pub kl_temperature: f32,
    pub temperature: f32,
    pub minibatch: usize,
    /// Teachers each teacher worker keeps loaded at once (the local workers of `embedded`;
    /// remote ones take `v4post worker teacher --resident N`).
    pub resident: usize,
    /// Tile of the fused reverse KL: rows × vocabulary entries.
    pub chunk_rows: usize,
    pub chunk_vocab: usize,
    /// A step checkpoint every this many optimizer steps (kept until the stage completes).
    pub checkpoint_every: u64,
    pub optim: Optim,
}

impl Default for OpdStage {
    fn default() -> Self {
        OpdStage {
            teachers: "all".into(),
            domains: "*".into(),
            mode_mix: [(Mode::NonThink, 0.3), (Mode::ThinkHigh, 0.7)].into_iter().collect(),
            steps: 20,
            prompts: 26,
            group: 1,
            estimator: Estimator::FullVocab,
            kl_temperature: 1.0,
            temperature: 1.0,
            minibatch: 32,
            resident: 1,
            chunk_rows: OpdConfig::default().chunk_rows,
            chunk_vocab: OpdConfig::default().chunk_vocab,
            checkpoint_every: 1,
            optim: Optim { lr_muon: 0.01, lr_adamw: 1e-3, ..Default::default() },
        }
    }
}

/// Where the training forward's expert routing comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// Replay the sampler's expert ids (Keep Routing).
    #[default]
    Keep,
    /// Recomputed by the training forward.
    Free,
}

impl From<Routing> for trainer::grpo::RoutingMode {
    fn from(r: Routing) -> Self {
        match r {
            Routing::Keep => trainer::grpo::RoutingMode::Keep,
            Routing::Free => trainer::grpo::RoutingMode::Free,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThinkMaxStage {
    pub domains: String,
    pub steps: u64,
    pub prompts: usize,
    pub group: usize,
    /// Response budget in Think Max mode (larger than Think High's).
    pub max_tokens: usize,
    /// SFT steps on the Think Max references (long, step-by-step reasoning) before GRPO.
    pub sft_steps: u64,
    pub optim: Optim,
}

impl Default for ThinkMaxStage {
    fn default() -> Self {
        ThinkMaxStage {
            domains: "math.*,code.*".into(),
            steps: 4,
            prompts: 8,
            group: 4,
            max_tokens: rewards::shaping::LengthShaping::default().think_max.max_len,
            sft_steps: 0,
            optim: Optim { lr_muon: 0.005, lr_adamw: 5e-4, ..Default::default() },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalStage {
    /// Prompts per domain.
    pub n: usize,
    /// Domains whose Think Max vs Think High comparison is reported as "harder".
    pub harder: String,
}

impl Default for EvalStage {
    fn default() -> Self {
        EvalStage { n: 24, harder: "math.*,code.*".into() }
    }
}

/// The demo's curriculum. Difficulty 1 is what the shipped base (pre-trained at difficulty 1)
/// can start on; two domains it solves perfectly there are drawn harder, so every domain
/// leaves room to learn (base greedy accuracy, 48 eval prompts × Non-think/Think High):
/// agent.calc 1.00 at 1 and 0.02 at 2 (it copies only two digits into the calculator), so
/// half of its prompts are level 2; code.loop 1.00 at 1, 0.58 at 2 (two new loop kinds).
fn demo_data() -> DataSection {
    let level = |lo, hi| Levels { lo, hi };
    DataSection {
        difficulty: Some(level(1, 1)),
        difficulty_by_domain: [("agent.calc".to_string(), level(1, 2)), ("code.loop".to_string(), level(2, 2))]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

fn lr(lr_muon: f32, lr_adamw: f32) -> Optim {
    Optim { lr_muon, lr_adamw, ..Default::default() }
}
fn one() -> u64 {
    1
}
fn embedded() -> String {
    "embedded".into()
}
fn runs() -> PathBuf {
    PathBuf::from("runs")
}

impl PipelineConfig {
    /// Parse and [`validate`](Self::validate) a pipeline file; errors name the field.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let c = super::validate::parse(text)?;
        c.validate()?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut c = Self::from_toml_str(&text).with_context(|| format!("in {}", path.display()))?;
        // relative paths in the file are relative to the file
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if !c.model.base.starts_with("preset:") {
            let mut p = PathBuf::from(&c.model.base);
            fix(&mut p);
            c.model.base = p.to_string_lossy().into_owned();
        }
        if let Some(p) = c.data.prompts.as_mut() {
            fix(p);
        }
        if let Some(p) = c.data.eval_prompts.as_mut() {
            fix(p);
        }
        for s in c.stages.iter_mut() {
            match s {
                Stage::Sft(SftStage { data: Some(p), .. }) => fix(p),
                Stage::Opd(o) if o.teachers != "all" => {
                    let mut p = PathBuf::from(&o.teachers);
                    fix(&mut p);
                    o.teachers = p.to_string_lossy().into_owned();
                }
                _ => {}
            }
        }
        Ok(c)
    }

    /// Every rule that needs no file (ranges, enum strings, stage order, built-in domains);
    /// [`super::validate::preflight`] checks the files before a run starts.
    pub fn validate(&self) -> Result<()> {
        Ok(super::validate::check(self)?)
    }

    /// The built-in demo: small base → SFT → one GRPO expert per built-in domain → OPD of all
    /// experts onto one student → Think Max variant → evaluation. Sized for ~30 minutes on
    /// 2 cores; `quick` is a reduced version for tests (~3 minutes).
    pub fn demo(quick: bool, base: &str) -> Self {
        let mut c = PipelineConfig {
            run: RunSection {
                name: if quick { "demo-quick" } else { "demo" }.into(),
                seed: 1,
                queue: embedded(),
                runs_dir: runs(),
            },
            model: ModelSection { base: base.into() },
            data: demo_data(),
            workers: WorkersSection { local: true, ..Default::default() },
            // Stage learning rates are a third of the from-scratch defaults: the base is already
            // trained; at Muon 0.01 the general SFT stage lowered an earlier base (Non-think
            // 0.311 → 0.237 in a full demo run), at 0.003 the SFT model is above the base.
            stages: vec![
                // Non-think and Think High only (Think Max has its own stage); 512 tokens fit
                // every built-in example of those modes (test below)
                Stage::Sft(SftStage {
                    steps: 30,
                    max_len: super::EXPERT_SFT_MAX_LEN,
                    modes: vec![Mode::NonThink, Mode::ThinkHigh],
                    optim: lr(0.003, 6e-4),
                    ..Default::default()
                }),
                // the V4 experts: domain SFT, then GRPO with verifiable rewards
                // (groups of 6 and no refill rounds: with refills, the nearly-solved agent
                // domains spent ~3 rounds of rollouts per step, 423 s of a 1773 s run, on
                // groups that carry no signal; zero-variance groups are still dropped)
                Stage::Grpo(GrpoStage {
                    sft_steps: 6,
                    steps: 6,
                    group: 6,
                    refill_rounds: 0,
                    optim: lr(0.004, 4e-4),
                    ..Default::default()
                }),
                Stage::Opd(OpdStage { optim: lr(0.004, 4e-4), ..Default::default() }),
                // Think Max: SFT on the long-reasoning references, then GRPO in the mode
                Stage::ThinkMax(ThinkMaxStage { sft_steps: 8, steps: 3, optim: lr(0.002, 2e-4), ..Default::default() }),
                // 40 prompts per domain and mode: a one-prompt difference is 0.0125
                Stage::Eval(EvalStage { n: 40, ..Default::default() }),
            ],
        };
        if quick {
            for s in &mut c.stages {
                match s {
                    Stage::Sft(x) => x.steps = 4,
                    Stage::Grpo(x) => {
                        x.experts = vec!["math.add".into(), "if.upper".into()];
                        x.sft_steps = 2;
                        x.steps = 2;
                        x.prompts = 4;
                        x.group = 4;
                    }
                    Stage::Opd(x) => {
                        x.steps = 2;
                        x.prompts = 8;
                    }
                    Stage::ThinkMax(x) => {
                        x.domains = "math.add".into();
                        x.steps = 1;
                        x.sft_steps = 1;
                        x.prompts = 2;
                        x.group = 2;
                        x.max_tokens = 96;
                    }
                    Stage::Eval(x) => {
                        x.n = 4;
                        x.harder = "math.add".into();
                    }
                }
            }
        }
        c
    }

    /// The config as TOML with the queue URL's credentials redacted (for the run directory).
    pub fn to_toml_redacted(&self) -> Result<String> {
        let mut c = self.clone();
        c.run.queue = crate::queue::redact_url(&c.run.queue);
        Ok(toml::to_string_pretty(&c)?)
    }

    /// `runs_dir/<name>`, the name escaped into one component (datasets::safe_component).
    pub fn run_dir(&self) -> PathBuf {
        self.run.runs_dir.join(datasets::safe_component(&self.run.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_round_trips_and_validates() {
        for quick in [false, true] {
            let c = PipelineConfig::demo(quick, "assets/base");
            let text = c.to_toml_redacted().unwrap();
            let back = PipelineConfig::from_toml_str(&text).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn per_domain_difficulty_parses_from_toml() {
        let t = "[run]\nname='x'\n[model]\nbase='b'\n[data]\ndifficulty = 1\n\
                 [data.difficulty_by_domain]\n'agent.calc' = '1-2'\n'code.loop' = 2\n[[stage]]\nkind='sft'";
        let d = PipelineConfig::from_toml_str(t).unwrap().data.difficulty().unwrap();
        assert_eq!((d.for_prompt("agent.calc", 0), d.for_prompt("agent.calc", 1)), (Some(1), Some(2)));
        assert_eq!((d.for_prompt("code.loop", 1), d.for_prompt("math.add", 1)), (Some(2), Some(1)));
        assert_eq!(PipelineConfig::demo(false, "b").data.difficulty().unwrap(), d);
    }

    /// A packed length shorter than an example skips it; the demo's SFT stages must train on
    /// every built-in domain in every mode they use (at 384, agent.chain's Think High examples
    /// were all skipped).
    #[test]
    fn demo_sft_stages_fit_every_example() {
        use trainer::sft::{examples_not_fitting, SftConfig};
        let c = PipelineConfig::demo(false, "b");
        let sft = |domains: &str, modes: &[Mode], max_len: usize| SftConfig {
            domains: domains.into(),
            modes: modes.to_vec(),
            max_len,
            difficulty: c.data.difficulty().unwrap(),
            ..Default::default()
        };
        for s in &c.stages {
            let cfg = match s {
                Stage::Sft(s) => sft(&s.domains, &s.modes, s.max_len),
                Stage::Grpo(g) => sft("*", &g.modes, super::super::EXPERT_SFT_MAX_LEN),
                Stage::ThinkMax(t) => sft(&t.domains, &[Mode::ThinkMax], super::super::THINK_MAX_SFT_MAX_LEN),
                _ => continue,
            };
            let bad = examples_not_fitting(&cfg, 1, &datasets::ByteTokenizer).unwrap();
            assert!(bad.is_empty(), "{} stage skips {bad:?}", s.kind());
        }
    }

    /// Paths in a file are relative to the file: the base, the datasets and a teachers.toml.
    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("conf");
        std::fs::create_dir_all(&sub).unwrap();
        let text = "[run]\nname='x'\n[model]\nbase='preset:tiny'\n[[stage]]\nkind='sft'\ndata='chat.jsonl'\n\
                    [[stage]]\nkind='opd'\nteachers='t/teachers.toml'\n";
        std::fs::write(sub.join("p.toml"), text).unwrap();
        let c = PipelineConfig::load(&sub.join("p.toml")).unwrap();
        let Stage::Sft(s) = &c.stages[0] else { panic!("{:?}", c.stages[0]) };
        assert_eq!(s.data.as_deref(), Some(sub.join("chat.jsonl").as_path()));
        let Stage::Opd(o) = &c.stages[1] else { panic!("{:?}", c.stages[1]) };
        assert_eq!(Path::new(&o.teachers), sub.join("t/teachers.toml"));
        assert_eq!(c.model.base, "preset:tiny");
    }

    #[test]
    fn errors_are_clear() {
        let e = |t: &str| PipelineConfig::from_toml_str(t).unwrap_err().to_string();
        let head = "[run]\nname='x'\n[model]\nbase='b'\n";
        assert!(e(head).contains("stage"));
        assert!(e(&format!("{head}[[stage]]\nkind='sft'\nstepz=3")).contains("stepz"));
        assert!(e(&format!("{head}[[stage]]\nkind='opd'")).contains("grpo stage"));
        assert!(e(&format!("{head}[[stage]]\nkind='eval'\n[[stage]]\nkind='sft'")).contains("order"));
        assert!(e(&format!("{head}[[stage]]\nkind='bogus'")).contains("bogus"));
        let data = |d: &str| format!("{head}[data]\n{d}\n[[stage]]\nkind='sft'");
        assert!(e(&data("[data.difficulty_by_domain]\n'math.nope' = 2")).contains("math.nope"));
        assert!(e(&data("difficulty = 6")).contains("difficulty"));
        assert!(e(&data("[data.difficulty_by_domain]\n'code.loop' = '2-1'")).contains("2-1"));
        let mut c = PipelineConfig::demo(true, "b");
        c.run.queue = "redis://u:secret@h:1".into();
        assert!(!c.to_toml_redacted().unwrap().contains("secret"));
    }
}
