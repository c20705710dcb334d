//! One module per group of verbs; [`dispatch`] runs a parsed command line.

pub mod bench_cmd;
pub mod dash_cmd;
pub mod data;
pub mod model_cmd;
pub mod run_cmd;
pub mod train_cmd;

use crate::cli::{BenchCmd, Command, ModelCmd, TasksCmd, TrajCmd};
use anyhow::Result;

pub fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
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

/// Writes the completion script of `shell` for the whole `v4post` command tree to stdout.
fn completions(shell: crate::cli::CompletionShell) -> Result<()> {
    use clap::CommandFactory;
    let mut cmd = crate::cli::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(clap_complete::Shell::from(shell), &mut cmd, "v4post", &mut out);
    std::io::Write::flush(&mut out)?;
    Ok(())
}
