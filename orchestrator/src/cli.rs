//! Command-line interface of `v4post` (clap derive). Every verb here works; `--json` gives
//! machine-readable output where a verb produces data.

use clap::{Args, Parser, Subcommand};
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
    Run(RunArgs),
    /// Serve rollout, teacher or reward jobs of a run from a Redis queue.
    Worker(WorkerArgs),
    /// Live web dashboard of runs: per-teacher KL, entropies, rewards, lengths, throughput.
    Dashboard(DashboardArgs),
    /// Static HTML report of runs (opens offline) and/or TensorBoard event files.
    Report(ReportArgs),
    /// The built-in task suite: list domains, sample prompts.
    #[command(subcommand)]
    Tasks(TasksCmd),
    /// Score a file of completions with the verifiers; per-domain accuracy.
    Score(ScoreArgs),
    /// Inspect and summarise trajectory shards.
    #[command(subcommand)]
    Trajectories(TrajCmd),
    /// Model configs and checkpoints: info, random checkpoints (init), conformance forward, quantisation.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Benchmarks that print measured numbers (medians and ratios from one run).
    #[command(subcommand)]
    Bench(BenchCmd),
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

#[derive(Subcommand, Debug)]
pub enum TasksCmd {
    /// List the built-in domains.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Write N prompts of one domain (deterministic in domain, seed, split, index).
    Sample(SampleArgs),
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Domain name, e.g. math.add (see `v4post tasks list`).
    #[arg(long)]
    pub domain: String,
    /// Number of prompts.
    #[arg(long, default_value_t = 10)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// train or eval (disjoint by construction).
    #[arg(long, value_enum, default_value = "train")]
    pub split: crate::choices::SplitArg,
    /// 1 (easy) .. 5 (hard), or a range like 1-2 whose levels alternate over the prompts;
    /// default: the domain's own.
    #[arg(long)]
    pub difficulty: Option<datasets::tasks::Levels>,
    /// Output file: .parquet (`messages` as list<struct<role, content>>, the conversation type
    /// pyarrow, pandas and HF `datasets` read) or .jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// One JSON object on stdout: prompts, domain, split, seed, out.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// JSONL (or Parquet) rows with `domain` (or `verifier`), `prompt`, `answer`, `response`, optional `mode`.
    #[arg(long = "in")]
    pub input: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TrajCmd {
    /// Print the first rows of a trajectory store readably.
    Inspect {
        /// A shard, a shard directory, or a run directory.
        path: PathBuf,
        #[arg(long, default_value_t = 3)]
        n: usize,
        #[arg(long)]
        json: bool,
    },
    /// Rows, tokens and reward mean by domain.
    Stats {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// Layer schedule, parameter counts, KV-cache sizes and per-token decode cost of a config.
    ///
    /// With `--vs v3.2`, also DeepSeek-V3.2's single-token FLOPs and KV bytes at `--context`
    /// and the ratios (`--preset v3.2` prints V3.2 alone). Counting rules:
    /// linear = 2 FLOPs per active weight (embedding lookup free; norms and softmaxes not
    /// counted); attention = 2 FLOPs per multiply-add of q·k and p·v over every attended entry
    /// and head (V4: window + compressed entries, CSA through the indexer's top-k; V3.2: MLA
    /// absorbed, key width 512+64, value width 512, top-2048 tokens); indexer = its heads ×
    /// head dim over every candidate (V4: compressed entries of CSA layers; V3.2: every token
    /// of every layer). KV bytes: whole cache of one sequence, in BF16 and as the reference
    /// inference code stores it (V4: FP8 non-rope dims + BF16 rope, FP4 indexer keys; V3.2:
    /// FlashMLA's 656-byte FP8 entry + 132-byte FP8 indexer key). MTP layers not counted.
    Info(InfoArgs),
    /// Write a random checkpoint of any config in the official layout (FP8 projections, FP4
    /// experts), tensor by tensor: the model is never held in memory, so it suits benchmark
    /// checkpoints of any size. Values equal `ModelWeights::random(config, seed)` saved as
    /// `official`; sharded above --max-shard-bytes with `model.safetensors.index.json`.
    Init(ModelInitArgs),
    /// Conformance forward: logits of token sequences, as safetensors.
    Forward(ForwardArgs),
    /// Write the official FP8/FP4 layout from f32/bf16 weights.
    Quantize {
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// official (FP8 + FP4), rollout (f32 + FP4 experts) or f32.
        #[arg(long, value_enum, default_value = "official")]
        format: crate::choices::QuantizeFormat,
        /// Split into shards of at most this many MiB (with an index file); default 4096.
        #[arg(long)]
        shard_mib: Option<usize>,
        /// One JSON object on stdout: format, params, bytes, out.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false, id = "source")]
pub struct ConfigSource {
    /// tiny, small, flash or pro (`model info` also takes v3.2).
    #[arg(long, group = "source")]
    pub preset: Option<String>,
    /// A config.json (official or HF keys).
    #[arg(long, group = "source")]
    pub config: Option<PathBuf>,
    /// A checkpoint directory: its config.json, and (`model info`) the time and peak resident
    /// memory of loading it for rollout.
    #[arg(long, group = "source")]
    pub checkpoint: Option<PathBuf>,
}

/// Where `model init` takes its config from.
#[derive(Args, Debug)]
#[group(required = true, multiple = false, id = "init_source")]
pub struct InitSource {
    /// tiny, small, flash or pro.
    #[arg(long, group = "init_source")]
    pub preset: Option<String>,
    /// A config.json (official or HF keys), e.g. examples/configs/v4-1p7b.json.
    #[arg(long, group = "init_source")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ModelInitArgs {
    #[command(flatten)]
    pub source: InitSource,
    /// Output directory: created; refused unless it is new or empty.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the weights (the same seed and config give the same bytes).
    #[arg(long)]
    pub seed: u64,
    /// Split into shards of at most this many bytes of tensor data (a larger tensor gets a shard
    /// of its own), with model.safetensors.index.json.
    #[arg(long, default_value_t = model::checkpoint::DEFAULT_MAX_SHARD_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_shard_bytes: u64,
    /// A Hugging Face tokenizer.json to copy into the checkpoint (its vocabulary must fit the
    /// config's vocab_size).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub source: ConfigSource,
    /// Context length (tokens) of the KV-cache and per-token cost figures.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..=(1u64 << 32)))]
    pub context: u64,
    /// Compare single-token decode FLOPs and KV-cache bytes with this architecture at --context.
    #[arg(long, value_enum)]
    pub vs: Option<Baseline>,
    #[arg(long)]
    pub json: bool,
}

/// Architectures `model info --vs` compares against.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// DeepSeek-V3.2 (MLA + DSA Lightning Indexer, 61 layers, 671B / 37B active), published config.
    #[value(name = "v3.2")]
    V32,
}

#[derive(Args, Debug)]
pub struct ForwardArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// JSON file with a list of token-id lists.
    #[arg(long)]
    pub tokens: PathBuf,
    /// Output safetensors with `logits.{i}` = f32 [len, vocab].
    #[arg(long)]
    pub out: PathBuf,
    /// Prefill the first K tokens, then decode one token at a time.
    #[arg(long)]
    pub decode_from: Option<usize>,
    /// qat (KV FP8 + indexer FP4, default), dense (no fake-quant) or act-fp8 (plus FP8 activations).
    #[arg(long, value_enum, default_value = "qat")]
    pub numerics: crate::choices::NumericsArg,
    /// Run routed experts in f32 instead of packed FP4.
    #[arg(long)]
    pub f32_experts: bool,
    /// One JSON object on stdout: sequences, out.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Write and read trajectories; tokens/s and bytes on disk.
    Store {
        #[arg(long, default_value_t = 100_000)]
        n: usize,
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        #[arg(long)]
        json: bool,
    },
    /// Prefill and training throughput of a preset or checkpoint.
    Forward(BenchModelArgs),
    /// Fused chunked full-vocabulary reverse KL vs naive autograd: time, peak memory, differences.
    OpdKl(crate::commands::bench_cmd::OpdKlArgs),
    /// Decode tokens/s with FP4 vs f32 experts (batch 1/8/32), FP4 GEMV bandwidth vs memcpy.
    Rollout(crate::commands::bench_cmd::RolloutBenchArgs),
    /// SFT and GRPO training steps: tokens/s, forward / backward / optimizer time split,
    /// optimizer GFLOP/s vs an f32 GEMM, peak RSS (`--optim`, `--numerics`, `--accum`).
    TrainStep(crate::commands::bench_cmd::TrainStepArgs),
    /// Queue throughput and latency, embedded and Redis.
    Queue(crate::commands::bench_cmd::QueueBenchArgs),
}

#[derive(Args, Debug)]
pub struct BenchModelArgs {
    #[arg(long, conflicts_with = "checkpoint")]
    pub preset: Option<String>,
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Pipeline file (TOML); without one, the built-in demo pipeline runs.
    pub pipeline: Option<PathBuf>,
    /// The reduced demo (about 3 minutes on 2 cores).
    #[arg(long, conflicts_with_all = ["pipeline", "resume"])]
    pub quick: bool,
    /// Continue the run in this directory (runs/NAME) after a crash or a stop.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "pipeline")]
    pub resume: Option<PathBuf>,
    /// Base checkpoint of the demo pipeline (default: the shipped assets/v4-small-base).
    #[arg(long)]
    pub base: Option<String>,
    /// Run name (default: from the pipeline; the demo uses `demo` / `demo-quick`).
    #[arg(long)]
    pub name: Option<String>,
    /// Parent directory of run directories.
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Queue: `embedded` or redis://[user:password@]host:port (rediss:// for TLS); the
    /// password may also come from V4POST_REDIS_PASSWORD.
    #[arg(long)]
    pub queue: Option<String>,
    /// Stop after this many optimizer steps (then continue with --resume).
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// rollout (student/policy sampling), teacher (teacher head inputs), reward (scoring).
    #[arg(value_enum)]
    pub kind: crate::pipeline::workers::WorkerKind,
    /// redis://[user:password@]host:port or rediss://... (V4POST_REDIS_PASSWORD also works).
    #[arg(long)]
    pub queue: String,
    /// Run name (keys `v4post:{run}:` and the directory RUNS_DIR/RUN).
    #[arg(long)]
    pub run: String,
    /// Where run directories live (a path shared with the trainer).
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Seconds before a job of a dead worker is handed to another one.
    #[arg(long, default_value_t = 120.0)]
    pub visibility_timeout: f64,
    /// Drop jobs for policies more than this many versions old.
    #[arg(long, default_value_t = 0)]
    pub max_staleness: u64,
    /// Stop after this many jobs (0 = until the run finishes).
    #[arg(long, default_value_t = 0)]
    pub max_jobs: usize,
    /// Keep waiting for work after the run is marked finished.
    #[arg(long)]
    pub no_exit: bool,
    /// Name of this consumer (default: host-pid).
    #[arg(long)]
    pub consumer: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DashboardArgs {
    /// Run directory (runs/NAME); repeat to overlay several runs.
    #[arg(long = "run", required = true)]
    pub runs: Vec<PathBuf>,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on (0.0.0.0 to reach it from other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directory (runs/NAME); give several to overlay them.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Self-contained HTML report (opens offline).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write TensorBoard scalar event files here (one subdirectory per run).
    #[arg(long)]
    pub tensorboard: Option<PathBuf>,
    /// One JSON object on stdout: report (the HTML path or null), tensorboard (a list of
    /// {run, path, scalars}).
    #[arg(long)]
    pub json: bool,
}
