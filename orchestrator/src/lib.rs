//! The `v4post` orchestrator: CLI, queues, workers and staged pipelines.

pub mod alloc;
pub mod choices;
pub mod cli;
pub mod commands;
pub mod deprecated;
pub mod models;
pub mod pipeline;
pub mod queue;
pub mod ui;
