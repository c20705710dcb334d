//! Typed choices of the command line: thin [`clap::ValueEnum`] enums for the flags whose
//! values form a fixed set, so `--help` lists the values, shell completions offer them and a
//! wrong value is refused by clap with the list of choices.
//!
//! Each enum maps onto the library type (or the string the library parser takes), so the
//! library crates need no clap dependency. The accepted spellings are exactly those the
//! library parsers took before: the canonical name plus the same hidden aliases
//! (e.g. `--mode max` = `think_max`, `--split test` = `eval`, `--numerics act_fp8`).

use clap::ValueEnum;
use datasets::chat::Mode;
use datasets::tasks::Split;
use model::checkpoint::SaveFormat;

/// `grpo --variant`: preset of loss and sampling choices (see `train_cmd::variant_config`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpoVariant {
    /// DeepSeek-V3.2: clip-higher, token-mean, k3-IS KL, off-policy masking, Keep Routing.
    #[value(name = "v32")]
    V32,
    /// Original GRPO: symmetric clip, k3 KL (β 0.04), sequence-mean of token means.
    #[value(name = "grpo")]
    Grpo,
    /// DAPO: no KL, token-mean aggregation, dynamic sampling.
    #[value(name = "dapo")]
    Dapo,
    /// Dr. GRPO: no KL, no std normalisation, sequence-mean of token sums.
    #[value(name = "dr-grpo")]
    DrGrpo,
}

impl GrpoVariant {
    /// The name `train_cmd::variant_config` (and pipeline files) take.
    pub fn as_str(self) -> &'static str {
        match self {
            GrpoVariant::V32 => "v32",
            GrpoVariant::Grpo => "grpo",
            GrpoVariant::Dapo => "dapo",
            GrpoVariant::DrGrpo => "dr-grpo",
        }
    }
}

/// `--mode` / `--modes`: reasoning mode ([`Mode`]).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    /// Chat without thinking.
    #[value(name = "non_think", alias = "chat")]
    NonThink,
    /// Thinking.
    #[value(name = "think_high", aliases = ["thinking", "high"])]
    ThinkHigh,
    /// Thinking with the Think Max system prefix.
    #[value(name = "think_max", alias = "max")]
    ThinkMax,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::NonThink => Mode::NonThink,
            ModeArg::ThinkHigh => Mode::ThinkHigh,
            ModeArg::ThinkMax => Mode::ThinkMax,
        }
    }
}

/// `--split`: the disjoint train / eval halves of the built-in task generators ([`Split`]).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitArg {
    #[value(name = "train")]
    Train,
    #[value(name = "eval", alias = "test")]
    Eval,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Eval => Split::Eval,
        }
    }
}

/// `opd --estimator`: the KL estimator (see `train_cmd::parse_estimator`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EstimatorArg {
    /// Exact reverse KL over the whole vocabulary (V4).
    #[value(name = "full", alias = "full_vocab")]
    Full,
    /// Single-token sampled estimator.
    #[value(name = "sampled")]
    Sampled,
}

impl EstimatorArg {
    /// The name `train_cmd::parse_estimator` (and pipeline files) take.
    pub fn as_str(self) -> &'static str {
        match self {
            EstimatorArg::Full => "full",
            EstimatorArg::Sampled => "sampled",
        }
    }
}

/// `model forward --numerics`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumericsArg {
    /// KV FP8 + indexer FP4 fake-quant (the default).
    #[value(name = "qat")]
    Qat,
    /// No fake-quant.
    #[value(name = "dense")]
    Dense,
    /// QAT plus FP8 activations.
    #[value(name = "act-fp8", alias = "act_fp8")]
    ActFp8,
}

impl NumericsArg {
    /// The name `model_cmd::parse_numerics` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            NumericsArg::Qat => "qat",
            NumericsArg::Dense => "dense",
            NumericsArg::ActFp8 => "act-fp8",
        }
    }
}

/// `model quantize --format`: checkpoint layout ([`SaveFormat`]).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantizeFormat {
    /// FP8 projections + FP4 experts, the released layout.
    #[value(name = "official")]
    Official,
    /// f32 with FP4 routed experts.
    #[value(name = "rollout")]
    Rollout,
    /// Every tensor f32.
    #[value(name = "f32")]
    F32,
}

impl QuantizeFormat {
    /// The name [`SaveFormat`]'s `FromStr` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            QuantizeFormat::Official => "official",
            QuantizeFormat::Rollout => "rollout",
            QuantizeFormat::F32 => "f32",
        }
    }
}

impl From<QuantizeFormat> for SaveFormat {
    fn from(f: QuantizeFormat) -> SaveFormat {
        match f {
            QuantizeFormat::Official => SaveFormat::Official,
            QuantizeFormat::Rollout => SaveFormat::Rollout,
            QuantizeFormat::F32 => SaveFormat::F32,
        }
    }
}

/// `sft` / `pretrain --format`: layout of the final weights.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainFormat {
    /// f32, plus a rollout/ FP4 export (sft's default).
    #[value(name = "f32")]
    F32,
    /// FP8 weights + FP4 experts (pretrain's default).
    #[value(name = "official")]
    Official,
}

impl TrainFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainFormat::F32 => "f32",
            TrainFormat::Official => "official",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling the library parsers accept is accepted here and maps to the same value.
    #[test]
    fn spellings_match_the_library_parsers() {
        for s in ["non_think", "chat", "think_high", "thinking", "high", "think_max", "max"] {
            let m = ModeArg::from_str(s, false).unwrap();
            assert_eq!(Mode::from(m), s.parse::<Mode>().unwrap(), "{s}");
        }
        for s in ["train", "eval", "test"] {
            let v = SplitArg::from_str(s, false).unwrap();
            assert_eq!(Split::from(v), s.parse::<Split>().unwrap(), "{s}");
        }
        for s in ["official", "rollout", "f32"] {
            let f = QuantizeFormat::from_str(s, false).unwrap();
            assert_eq!(SaveFormat::from(f), s.parse::<SaveFormat>().unwrap(), "{s}");
            assert_eq!(f.as_str(), s);
        }
        for s in ["v32", "grpo", "dapo", "dr-grpo"] {
            assert_eq!(GrpoVariant::from_str(s, false).unwrap().as_str(), s);
        }
        assert_eq!(EstimatorArg::from_str("full_vocab", false).unwrap(), EstimatorArg::Full);
        assert_eq!(NumericsArg::from_str("act_fp8", false).unwrap(), NumericsArg::ActFp8);
        assert!(ModeArg::from_str("Think_Max", false).is_err(), "case-sensitive as before");
        let names: Vec<&str> = GrpoVariant::value_variants().iter().map(|v| v.as_str()).collect();
        assert_eq!(names.len(), crate::commands::train_cmd::GRPO_VARIANTS.len());
        for v in GrpoVariant::value_variants() {
            assert!(crate::commands::train_cmd::GRPO_VARIANTS.contains(&v.as_str()));
            crate::commands::train_cmd::variant_config(v.as_str()).unwrap();
        }
        for v in EstimatorArg::value_variants() {
            crate::commands::train_cmd::parse_estimator(v.as_str()).unwrap();
        }
    }
}
