//! Progress reporting from library loops without tying libraries to a terminal crate: the
//! `v4post` binary implements [`Progress`] with progress bars; tests and `--json` runs pass
//! [`NoProgress`].

/// Receives progress of one long loop.
pub trait Progress: Send + Sync {
    /// Start (or restart) a phase of `total` units.
    fn start(&self, phase: &str, total: u64);
    /// `n` more units done.
    fn advance(&self, n: u64);
    /// A short status line (loss, reward, tokens/s ...).
    fn message(&self, msg: &str);
    fn finish(&self);
}

/// Discards progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn message(&self, _: &str) {}
    fn finish(&self) {}
}
