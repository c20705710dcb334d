//! `v4post`: see `v4post --help`.

use clap::Parser;
use orchestrator::cli::Cli;
use std::process::ExitCode;

/// Counts heap bytes so benchmarks can report measured peak memory.
#[global_allocator]
static ALLOC: orchestrator::alloc::Counting = orchestrator::alloc::Counting;

/// candle's pool for elementwise ops spins ~25,000 iterations after every op waiting for
/// the next one, which takes a core from the rayon pool that runs the model's kernels and
/// GEMMs (measured: ~10 % of a `bench train-step` profile on 2 cores). Unless the user sets
/// `CANDLE_NUM_THREADS`, candle's elementwise ops run on the calling thread (matmuls still
/// use every thread).
fn candle_elementwise_on_caller() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // first thing in main: no other thread exists yet to read the environment
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Without `RAYON_NUM_THREADS`, candle works out its thread count on every matmul by
/// reading `/proc/cpuinfo` (measured: ~100 reads per training step of golden A). Unless the
/// user sets it, it is set once to the size rayon's global pool takes by default (the
/// available parallelism), so candle's matmuls and the rayon pool agree and nothing is
/// re-read.
fn thread_count_once() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        // first thing in main: no other thread exists yet to read the environment
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

fn main() -> ExitCode {
    orchestrator::alloc::keep_freed_memory();
    candle_elementwise_on_caller();
    thread_count_once();
    orchestrator::ui::quiet_broken_stdout_pipe();
    let (args, renamed) = orchestrator::deprecated::rewrite(std::env::args_os().collect());
    let cli = Cli::parse_from(args);
    orchestrator::ui::init_logging(cli.verbose, cli.quiet);
    for w in renamed {
        eprintln!("warning: {w}");
    }
    // an empty V4POST_REDIS_PASSWORD_FILE means no file, as the queue's own fallback reads it
    if let Some(f) = cli.redis_password_file.clone().filter(|f| !f.as_os_str().is_empty()) {
        orchestrator::queue::set_password_file(f);
    }
    match cli.command.run() {
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
