//! Command-line interface of `v4post` (clap derive). Every verb here works; `--json` gives
//! machine-readable output where a verb produces data.

use crate::commands::bench_cmd::{self, BenchCmd};
use crate::commands::data::{self, TasksCmd, TrajCmd};
use crate::commands::model_cmd::{self, ModelCmd};
use crate::commands::{dash_cmd, run_cmd, train_cmd};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "v4post",
    version,
    about = "Post-training for DeepSeek-V4-architecture models: GRPO experts, multi-teacher on-policy distillation, Think Max",
    long_about = "v4post post-trains DeepSeek-V4-architecture models: per-domain experts by SFT + GRPO, one student by \
multi-teacher full-vocabulary on-policy distillation (OPD), and Think Max variants. Everything runs on one machine \
with an embedded queue, or across machines with Redis.\n\nStart with `v4post run` (the built-in demo pipeline).",
    propagate_version = true
)]
pub struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Read the Redis password from this file (first line), not from the --queue URL, which
    /// other users see in the process list. V4POST_REDIS_PASSWORD (the password itself, which
    /// has no flag so that it never shows in the process list) comes first; an empty value
    /// means no file.
    #[arg(long, global = true, value_name = "FILE", env = "V4POST_REDIS_PASSWORD_FILE", value_parser = password_file())]
    pub redis_password_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Parser of `--redis-password-file`: any path, the empty one included (an empty
/// V4POST_REDIS_PASSWORD_FILE means no file, as it always has).
fn password_file() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a staged pipeline (no file: the built-in demo: SFT → 13 GRPO experts → multi-teacher
    /// OPD → Think Max → eval), or resume one.
    Run(crate::commands::run_cmd::RunArgs),
    /// Serve rollout, teacher or reward jobs of a run from a Redis queue.
    Worker(crate::commands::run_cmd::WorkerArgs),
    /// Live web dashboard of runs: per-teacher KL, entropies, rewards, lengths, throughput.
    Dashboard(crate::commands::dash_cmd::DashboardArgs),
    /// Static HTML report of runs (opens offline) and/or TensorBoard event files.
    Report(crate::commands::dash_cmd::ReportArgs),
    /// The built-in task suite: list domains, sample prompts.
    #[command(subcommand)]
    Tasks(crate::commands::data::TasksCmd),
    /// Score a file of completions with the verifiers; per-domain accuracy.
    Score(crate::commands::data::ScoreArgs),
    /// Inspect and summarise trajectory shards.
    #[command(subcommand)]
    Trajectories(crate::commands::data::TrajCmd),
    /// Model configs and checkpoints: info, random checkpoints (init), conformance forward, quantisation.
    #[command(subcommand)]
    Model(crate::commands::model_cmd::ModelCmd),
    /// Benchmarks that print measured numbers (medians and ratios from one run).
    #[command(subcommand)]
    Bench(crate::commands::bench_cmd::BenchCmd),
    /// Pre-train a base from scratch on the suite's reference conversations (prompt included).
    Pretrain(crate::commands::train_cmd::SftArgs),
    /// Supervised fine-tuning on the suite's reference solutions, or on your own conversations
    /// with --data (assistant tokens only).
    Sft(crate::commands::train_cmd::SftArgs),
    /// Build a domain expert with GRPO (and its DAPO / Dr. GRPO / V3.2 variants).
    Grpo(crate::commands::train_cmd::GrpoArgs),
    /// Per-domain accuracy of a checkpoint (greedy decoding, verifiers).
    Eval(crate::commands::train_cmd::EvalArgs),
    /// Multi-teacher on-policy distillation: the student samples, minimises the full-vocabulary
    /// reverse KL to each sample's teacher (teachers from a TOML registry).
    Opd(crate::commands::train_cmd::OpdArgs),
    /// Print a shell completion script to stdout, e.g.
    /// `v4post completions bash > ~/.local/share/bash-completion/completions/v4post`.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// Shells `v4post completions` writes a script for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(s: CompletionShell) -> Self {
        match s {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

impl Command {
    /// Run the parsed verb.
    pub fn run(self) -> Result<()> {
        match self {
            Command::Run(a) => run_cmd::run(&a),
            Command::Worker(a) => run_cmd::worker(&a),
            Command::Dashboard(a) => dash_cmd::dashboard(&a),
            Command::Report(a) => dash_cmd::report(&a),
            Command::Tasks(TasksCmd::List { json }) => data::tasks_list(json),
            Command::Tasks(TasksCmd::Sample(a)) => data::tasks_sample(&a),
            Command::Score(a) => data::score(&a),
            Command::Trajectories(TrajCmd::Inspect { path, n, json }) => data::traj_inspect(&path, n, json),
            Command::Trajectories(TrajCmd::Stats { path, json }) => data::traj_stats(&path, json),
            Command::Model(ModelCmd::Info(a)) => model_cmd::info(&a),
            Command::Model(ModelCmd::Forward(a)) => model_cmd::forward(&a),
            Command::Model(ModelCmd::Init(a)) => model_cmd::init(&a),
            Command::Model(ModelCmd::Quantize { input, out, format, shard_mib, json }) => {
                model_cmd::quantize(&input, &out, format.as_str(), shard_mib, json)
            }
            Command::Bench(BenchCmd::Store { n, tokens, json }) => data::bench_store(n, tokens, json),
            Command::Bench(BenchCmd::Forward(a)) => model_cmd::bench_forward(&a),
            Command::Pretrain(a) => train_cmd::sft(&a, true),
            Command::Sft(a) => train_cmd::sft(&a, false),
            Command::Grpo(a) => train_cmd::grpo(&a),
            Command::Eval(a) => train_cmd::eval(&a),
            Command::Opd(a) => train_cmd::opd(&a),
            Command::Bench(BenchCmd::OpdKl(a)) => bench_cmd::opd_kl(&a),
            Command::Bench(BenchCmd::Rollout(a)) => bench_cmd::rollout(&a),
            Command::Bench(BenchCmd::TrainStep(a)) => bench_cmd::train_step(&a),
            Command::Bench(BenchCmd::Queue(a)) => bench_cmd::queue(&a),
            Command::Completions { shell } => completions(shell),
        }
    }
}

/// Writes the completion script of `shell` for the whole `v4post` command tree to stdout.
fn completions(shell: CompletionShell) -> Result<()> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(clap_complete::Shell::from(shell), &mut cmd, "v4post", &mut out);
    std::io::Write::flush(&mut out)?;
    Ok(())
}
