//! Where a run's weights come from and how its models are written, shared by the training
//! verbs and the pipeline: the starting weights ([`Start`]: a checkpoint or a preset's random
//! weights) and their tokenizer, the frozen KL reference, and the final F32 + FP4 outputs that
//! carry the tokenizer files.

use anyhow::{bail, Context, Result};
use datasets::tokenizer::{self as tokenizer, ByteTokenizer, Tokenizer};
use model::checkpoint::{self, SaveFormat};
use model::{Config, ModelWeights};
use std::path::{Path, PathBuf};
use trainer::grpo::GrpoConfig;
use trainer::losses::KlKind;
use trainer::reference::FrozenReference;

/// Presets above this many parameters are refused as training starts (they do not fit here).
const MAX_PRESET_PARAMS: u64 = 200_000_000;

/// The starting weights of a run or verb.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// A checkpoint directory (its `tokenizer.json`, if any, is the run's tokenizer).
    Checkpoint(PathBuf),
    /// Random weights of a preset (the byte tokenizer).
    Preset(String),
}

impl Start {
    /// A pipeline file's `model.base`: `preset:NAME` or a checkpoint directory.
    pub fn parse(spec: &str) -> Start {
        match spec.strip_prefix("preset:") {
            Some(p) => Start::Preset(p.to_string()),
            None => Start::Checkpoint(PathBuf::from(spec)),
        }
    }

    /// The weights (`seed` draws a preset's random weights).
    pub fn weights(&self, seed: u64) -> Result<ModelWeights> {
        match self {
            Start::Checkpoint(dir) => {
                checkpoint::load(dir).with_context(|| format!("loading the base model {}", dir.display()))
            }
            Start::Preset(p) => {
                let c = Config::preset(p)?;
                if c.param_counts().total > MAX_PRESET_PARAMS {
                    bail!("preset `{p}` is too large to train from scratch here; use tiny or small, or start from a checkpoint");
                }
                Ok(ModelWeights::random(&c, seed)?)
            }
        }
    }

    /// The tokenizer and the folder outputs copy its files from: a checkpoint's own (checked
    /// against its `vocab_size`), or the byte tokenizer of a preset (no folder).
    pub fn tokenizer(&self) -> Result<(Box<dyn Tokenizer>, Option<PathBuf>)> {
        match self {
            Start::Checkpoint(dir) => {
                let tok = checkpoint_tokenizer(dir)
                    .with_context(|| format!("the tokenizer of the base model {}", dir.display()))?;
                Ok((tok, Some(dir.clone())))
            }
            Start::Preset(p) => {
                let tok: Box<dyn Tokenizer> = Box::new(ByteTokenizer);
                tokenizer::check_vocab_fits(tok.as_ref(), Config::preset(p)?.vocab_size, None)?;
                Ok((tok, None))
            }
        }
    }
}

/// The tokenizer of a checkpoint (its `tokenizer.json`, else the byte tokenizer), checked to
/// fit the `vocab_size` of its `config.json` before any weights are read.
pub fn checkpoint_tokenizer(dir: &Path) -> Result<Box<dyn Tokenizer>> {
    let cfg_path = tokenizer::checkpoint_folder(dir).join("config.json");
    let cfg = Config::from_file(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
    Ok(tokenizer::checkpoint_tokenizer(dir, cfg.vocab_size)?)
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
