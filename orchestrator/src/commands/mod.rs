//! One module per group of verbs, each with its clap arguments; `cli::Command::run` calls them.

pub mod bench_cmd;
pub mod dash_cmd;
pub mod data;
pub mod model_cmd;
pub mod run_cmd;
pub mod train_cmd;
