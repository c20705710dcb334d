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
use model::Config;
use trainer::grpo::GrpoVariant;
use trainer::kl::Estimator;

/// `grpo --variant`: the trainer's list of GRPO presets ([`GrpoVariant::ALL`]) as clap
/// possible values, so `--help` and completions list them and a new variant needs no CLI change.
pub fn grpo_variant_parser() -> impl clap::builder::TypedValueParser<Value = GrpoVariant> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let values = GrpoVariant::ALL.map(|v| PossibleValue::new(v.name()).help(v.summary()));
    PossibleValuesParser::new(values).try_map(|s| s.parse::<GrpoVariant>())
}

/// A choice the library parses (`FromStr`) whose spellings are `names`: clap lists them in
/// `--help` and completions and refuses others with the list (`--anticipatory`, `--spike-signal`).
pub fn from_str_choice<T>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

/// `--preset`: the model presets ([`Config::PRESETS`]).
pub fn preset_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(Config::PRESETS)
}

/// `model info --preset`: the presets and DeepSeek-V3.2's published config (`v3.2`).
pub fn info_preset_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(Config::PRESETS.iter().copied().chain(["v3.2"]))
}

/// `--modes`: reasoning mode ([`Mode`]).
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

/// `opd --estimator`: the KL estimator ([`Estimator`]).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EstimatorArg {
    /// Exact reverse KL over the whole vocabulary (V4).
    #[value(name = "full", alias = "full_vocab")]
    Full,
    /// Single-token sampled estimator.
    #[value(name = "sampled")]
    Sampled,
}

impl From<EstimatorArg> for Estimator {
    fn from(e: EstimatorArg) -> Estimator {
        match e {
            EstimatorArg::Full => Estimator::FullVocab,
            EstimatorArg::Sampled => Estimator::Sampled,
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
    use clap::builder::TypedValueParser;

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
        for v in GrpoVariant::ALL {
            let parsed =
                grpo_variant_parser().parse_ref(&clap::Command::new("t"), None, std::ffi::OsStr::new(v.name()));
            assert_eq!(parsed.unwrap(), v);
        }
        assert!(grpo_variant_parser()
            .parse_ref(&clap::Command::new("t"), None, std::ffi::OsStr::new("grpoo"))
            .is_err());
        for s in ["full", "full_vocab", "sampled"] {
            let e = EstimatorArg::from_str(s, false).unwrap();
            assert_eq!(Estimator::from(e), s.parse::<Estimator>().unwrap(), "{s}");
        }
        assert_eq!(NumericsArg::from_str("act_fp8", false).unwrap(), NumericsArg::ActFp8);
        assert!(ModeArg::from_str("Think_Max", false).is_err(), "case-sensitive as before");
    }
}
