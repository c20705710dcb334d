//! `v4post`: see `v4post --help`.

use clap::Parser;
use orchestrator::cli::Cli;
use std::process::ExitCode;

/// Counts heap bytes so benchmarks can report measured peak memory.
#[global_allocator]
static ALLOC: orchestrator::alloc::Counting = orchestrator::alloc::Counting;

fn main() -> ExitCode {
    orchestrator::ui::quiet_broken_stdout_pipe();
    let cli = Cli::parse();
    orchestrator::ui::init_logging(cli.verbose, cli.quiet);
    // an empty V4POST_REDIS_PASSWORD_FILE means no file, as the queue's own fallback reads it
    if let Some(f) = cli.redis_password_file.clone().filter(|f| !f.as_os_str().is_empty()) {
        orchestrator::queue::set_password_file(f);
    }
    match orchestrator::commands::dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`v4post ... | head`) is not a failure.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
