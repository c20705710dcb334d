//! `pipeline.toml`: the run, the base model, the data, the workers, and the stages of the
//! DeepSeek-V4 recipe in order. Every field has a default; unknown fields are errors (a typo
//! must not silently fall back to a default). `v4post run` without a file uses
//! [`PipelineConfig::demo`].

use anyhow::{bail, Context, Result};
use datasets::chat::Mode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// A checkpoint directory, or `preset:NAME` for random weights (tests).
    pub base: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A user prompt dataset (.parquet/.jsonl) for training stages; default: the built-in suite.
    pub prompts: Option<PathBuf>,
    /// A user prompt dataset for evaluation; default: the built-in suite's eval split.
    pub eval_prompts: Option<PathBuf>,
    /// Difficulty of built-in prompts (1..5; default: each domain's).
    pub difficulty: Option<u32>,
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
    fn default() -> Self {
        Optim { lr_muon: 0.02, lr_adamw: 3e-3, clip: 1.0, weight_decay: 0.1 }
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
    pub domains: String,
    pub steps: u64,
    pub batch: usize,
    pub max_len: usize,
    pub modes: Vec<Mode>,
    pub optim: Optim,
}

impl Default for SftStage {
    fn default() -> Self {
        SftStage {
            domains: "*".into(),
            steps: 40,
            batch: 8,
            // fits every built-in Non-think / Think High example (test below)
            max_len: 512,
            modes: vec![Mode::NonThink, Mode::ThinkHigh],
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
    /// v32, grpo, dapo or dr-grpo.
    pub variant: String,
    pub temperature: f32,
    pub epochs: usize,
    pub minibatch: usize,
    /// Domain SFT steps before GRPO (the V4 experts are SFT then GRPO).
    pub sft_steps: u64,
    pub optim: Optim,
}

impl Default for GrpoStage {
    fn default() -> Self {
        GrpoStage {
            experts: vec!["each".into()],
            steps: 8,
            prompts: 8,
            group: 8,
            modes: vec![Mode::NonThink, Mode::ThinkHigh],
            variant: "v32".into(),
            temperature: 1.0,
            epochs: 1,
            minibatch: 32,
            sft_steps: 0,
            optim: Optim { lr_muon: 0.01, lr_adamw: 1e-3, ..Default::default() },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpdStage {
    /// `all` (every expert of the grpo stage) or a path to a teachers.toml.
    pub teachers: String,
    pub mode_mix: BTreeMap<String, f32>,
    pub steps: u64,
    pub prompts: usize,
    pub group: usize,
    /// full or sampled.
    pub estimator: String,
    pub kl_temperature: f32,
    pub temperature: f32,
    pub minibatch: usize,
    /// Teachers held in memory at once.
    pub resident: usize,
    pub optim: Optim,
}

impl Default for OpdStage {
    fn default() -> Self {
        OpdStage {
            teachers: "all".into(),
            mode_mix: [("non_think".to_string(), 0.3), ("think_high".to_string(), 0.7)].into_iter().collect(),
            steps: 20,
            prompts: 26,
            group: 1,
            estimator: "full".into(),
            kl_temperature: 1.0,
            temperature: 1.0,
            minibatch: 32,
            resident: 1,
            optim: Optim { lr_muon: 0.01, lr_adamw: 1e-3, ..Default::default() },
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
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let c: PipelineConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let n = &self.run.name;
        if n.is_empty() || n.contains(['/', '\\', ' ']) || n.starts_with('.') {
            bail!("run.name `{n}` must be a plain directory name");
        }
        if self.stages.is_empty() {
            bail!("the pipeline has no [[stage]]");
        }
        for (i, s) in self.stages.iter().enumerate() {
            if self.stages[..i].iter().any(|o| o.kind() == s.kind()) {
                bail!("stage kind `{}` appears twice; each kind runs once per pipeline", s.kind());
            }
        }
        let order = ["sft", "grpo", "opd", "think_max", "eval"];
        let pos: Vec<usize> =
            self.stages.iter().map(|s| order.iter().position(|k| *k == s.kind()).unwrap_or(0)).collect();
        if pos.windows(2).any(|w| w[0] > w[1]) {
            bail!("stages must follow the recipe order sft → grpo → opd → think_max → eval");
        }
        if self.stages.iter().any(|s| matches!(s, Stage::Opd(o) if o.teachers == "all"))
            && !self.stages.iter().any(|s| matches!(s, Stage::Grpo(_)))
        {
            bail!("an opd stage with teachers = \"all\" needs a grpo stage before it (or a teachers.toml path)");
        }
        for s in &self.stages {
            if let Stage::Opd(o) = s {
                for m in o.mode_mix.keys() {
                    m.parse::<Mode>().map_err(|e| anyhow::anyhow!("opd.mode_mix: {e}"))?;
                }
            }
        }
        Ok(())
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
            // difficulty 1: what a 2.4M-parameter base trained for ~40 CPU-minutes can start on
            // (non-zero, imperfect); the shipped base was pre-trained at the same difficulty
            data: DataSection { difficulty: Some(1), ..Default::default() },
            workers: WorkersSection { local: true, ..Default::default() },
            // Stage learning rates are a third of the from-scratch defaults: the base is already
            // trained; at Muon 0.01 the general SFT stage lowered an earlier base (Non-think
            // 0.311 → 0.237 in a full demo run), at 0.003 the SFT model is above the base.
            stages: vec![
                Stage::Sft(SftStage { steps: 30, optim: lr(0.003, 6e-4), ..Default::default() }),
                // the V4 experts: domain SFT, then GRPO with verifiable rewards
                Stage::Grpo(GrpoStage { sft_steps: 10, steps: 6, optim: lr(0.004, 4e-4), ..Default::default() }),
                Stage::Opd(OpdStage { optim: lr(0.004, 4e-4), ..Default::default() }),
                // Think Max: SFT on the long-reasoning references, then GRPO in the mode
                Stage::ThinkMax(ThinkMaxStage { sft_steps: 10, optim: lr(0.002, 2e-4), ..Default::default() }),
                // 48 prompts per domain and mode: a one-prompt difference is ~0.01
                Stage::Eval(EvalStage { n: 48, ..Default::default() }),
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

    pub fn run_dir(&self) -> PathBuf {
        self.run.runs_dir.join(&self.run.name)
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
            difficulty: c.data.difficulty,
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

    #[test]
    fn errors_are_clear() {
        let e = |t: &str| PipelineConfig::from_toml_str(t).unwrap_err().to_string();
        let head = "[run]\nname='x'\n[model]\nbase='b'\n";
        assert!(e(head).contains("stage"));
        assert!(e(&format!("{head}[[stage]]\nkind='sft'\nstepz=3")).contains("stepz"));
        assert!(e(&format!("{head}[[stage]]\nkind='opd'")).contains("grpo stage"));
        assert!(e(&format!("{head}[[stage]]\nkind='eval'\n[[stage]]\nkind='sft'")).contains("order"));
        assert!(e(&format!("{head}[[stage]]\nkind='bogus'")).contains("bogus"));
        let mut c = PipelineConfig::demo(true, "b");
        c.run.queue = "redis://u:secret@h:1".into();
        assert!(!c.to_toml_redacted().unwrap().contains("secret"));
    }
}
