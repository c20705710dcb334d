//! Terminal output helpers: progress bars (hidden when stderr is not a terminal or with
//! `--json`), logging setup, and JSON printing.

use datasets::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
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
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}
