//! Terminal output helpers: progress bars (hidden when stderr is not a terminal or with
//! `--json`), logging setup, and JSON printing.

use datasets::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

/// Progress bars on stderr.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    enabled: bool,
}

impl Bars {
    /// Bars are drawn only on an interactive stderr and when machine output is not requested.
    pub fn new(json: bool) -> Self {
        Bars {
            bar: Mutex::new(None),
            enabled: !json && std::io::stderr().is_terminal() && std::env::var("V4POST_NO_PROGRESS").is_err(),
        }
    }
    pub fn hidden() -> Self {
        Bars { bar: Mutex::new(None), enabled: false }
    }
}

impl Progress for Bars {
    fn start(&self, phase: &str, total: u64) {
        let pb = if self.enabled {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template("{prefix:>14.bold} [{bar:32}] {pos}/{len} {elapsed_precise} eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_prefix(phase.to_string());
        if let Ok(mut g) = self.bar.lock() {
            if let Some(old) = g.take() {
                old.finish_and_clear();
            }
            *g = Some(pb);
        }
        if !self.enabled {
            tracing::info!(phase, total, "start");
        }
    }
    fn advance(&self, n: u64) {
        if let Ok(g) = self.bar.lock() {
            if let Some(b) = g.as_ref() {
                b.inc(n);
            }
        }
    }
    fn message(&self, msg: &str) {
        if let Ok(g) = self.bar.lock() {
            if let Some(b) = g.as_ref() {
                b.set_message(msg.to_string());
                if !self.enabled {
                    tracing::debug!(phase = %b.prefix(), pos = b.position(), "{msg}");
                }
            }
        }
    }
    fn finish(&self) {
        if let Ok(mut g) = self.bar.lock() {
            if let Some(b) = g.take() {
                b.finish_and_clear();
                if !self.enabled {
                    tracing::info!(phase = %b.prefix(), done = b.position(), "finished");
                }
            }
        }
    }
}

/// Structured logs on stderr (`RUST_LOG` overrides the level).
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = if quiet {
        "warn"
    } else {
        match verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// Print a JSON value on stdout.
pub fn print_json(v: &serde_json::Value) {
    print_stdout(&serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// Print `text` and a newline on stdout. A reader that went away (`v4post … --json | head -1`)
/// ends the process quietly with status 0, as a closed pipe reaching `main` as an error does.
pub fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{text}").and_then(|()| out.flush());
    drop(out);
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Make the `println!`s of every command end the process quietly (status 0) when stdout is a
/// closed pipe, instead of panicking with "failed printing to stdout" (exit 101).
///
/// SIGPIPE stays ignored (Rust's default): restoring its default action would also let a
/// vectored write (`writev`) to a disconnected socket — the dashboard, Redis — kill the process.
pub fn quiet_broken_stdout_pipe() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if is_broken_stdout_panic(info) {
            std::process::exit(0);
        }
        default_hook(info);
    }));
}

/// Is this the panic `println!` raises when stdout's reader has gone?
fn is_broken_stdout_panic(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let payload = info.payload();
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    let epipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe).to_string();
    let os_epipe = std::io::Error::from_raw_os_error(libc::EPIPE).to_string();
    msg.starts_with("failed printing to stdout") && (msg.contains(&os_epipe) || msg.ends_with(&epipe))
}
