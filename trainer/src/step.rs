//! The loop shape every trainer shares. Each optimizer step of SFT, GRPO and OPD is
//!
//! ```text
//! sample   → prompts → rollouts (GRPO, OPD) | packed reference examples (SFT)
//! score    → verifier rewards (GRPO) | teacher states (OPD) | — (SFT)
//! targets  → group advantages (GRPO) | per-token teacher mixture (OPD) | next tokens (SFT)
//! update   → per minibatch: loss → [`backward_and_step`] (finite check, indexer loss,
//!            backward, Muon/AdamW step)
//! log      → metrics of the step, then [`TrainIo::end_step`] (flush, progress, checkpoint)
//! ```
//!
//! as named functions in each trainer's module; what a trainer writes to (metrics, progress,
//! step checkpoints, the run's name) travels as one [`TrainIo`].

use crate::error::{Result, TrainError};
use crate::optim::StepStats;
use crate::session::Session;
use candle_core::Tensor;
use datasets::progress::{NoProgress, Progress};
use datasets::store::MetricsWriter;
use std::path::Path;

/// Where a trainer writes: its metrics, its progress display, its step checkpoints and the
/// run name carried by its rollout jobs.
pub struct TrainIo<'a> {
    pub run: &'a str,
    pub metrics: &'a mut MetricsWriter,
    pub progress: &'a dyn Progress,
    /// Step checkpoints go under here (None: none are written).
    pub ckpt_root: Option<&'a Path>,
}

impl<'a> TrainIo<'a> {
    pub fn new(
        run: &'a str,
        metrics: &'a mut MetricsWriter,
        progress: &'a dyn Progress,
        ckpt_root: Option<&'a Path>,
    ) -> Self {
        TrainIo { run, metrics, progress, ckpt_root }
    }

    /// Metrics only: no progress display, no checkpoints (tests, benchmarks).
    pub fn quiet(metrics: &'a mut MetricsWriter) -> Self {
        TrainIo { run: "t", metrics, progress: &NoProgress, ckpt_root: None }
    }

    /// Start of a loop: the stage's progress at the session's step.
    pub fn begin(&self, stage: &str, steps: u64, session: &Session) {
        self.progress.start(stage, steps);
        self.progress.advance(session.counters.step);
    }

    /// End of every optimizer step (after `session.counters.step` moved on): metrics flushed
    /// when due, progress advanced with the step's one-line summary, a step checkpoint every
    /// `checkpoint_every` steps (0 = none).
    pub fn end_step(&mut self, session: &Session, checkpoint_every: u64, summary: &str) -> Result<()> {
        self.metrics.maybe_flush()?;
        self.progress.advance(1);
        self.progress.message(summary);
        if let Some(root) = self.ckpt_root {
            if checkpoint_every > 0 && session.counters.step % checkpoint_every == 0 {
                session.save(root)?;
            }
        }
        Ok(())
    }

    /// End of the loop: every metric on disk, the progress display closed.
    pub fn finish(&mut self) -> Result<()> {
        self.metrics.flush()?;
        self.progress.finish();
        Ok(())
    }
}

/// The step a loop runs up to: `steps`, or `stop_at` when that comes first (a resumable stop
/// while the learning-rate schedule still spans `steps`).
pub fn last_step(steps: u64, stop_at: Option<u64>) -> u64 {
    stop_at.map_or(steps, |l| l.min(steps))
}

/// One minibatch update of GRPO and OPD: refuses a non-finite loss (naming `what`), adds the
/// indexer's auxiliary loss × `indexer_coef`, back-propagates, lets `before_step` see the
/// session between backward and the optimizer (Anticipatory Routing records the router
/// there), and takes the optimizer step at learning-rate scale `lr`. Returns the loss value
/// and the step's statistics.
pub fn backward_and_step(
    session: &mut Session,
    loss: Tensor,
    indexer_loss: Option<Tensor>,
    indexer_coef: f32,
    lr: f32,
    what: &str,
    before_step: impl FnOnce(&mut Session) -> Result<()>,
) -> Result<(f32, StepStats)> {
    let value = loss.to_scalar::<f32>()?;
    if !value.is_finite() {
        return Err(TrainError::NonFinite(what.to_string()));
    }
    let total = match indexer_loss {
        Some(a) if indexer_coef > 0.0 => (loss + (a * indexer_coef as f64)?)?,
        _ => loss,
    };
    let grads = session.model.backward(&total)?;
    before_step(session)?;
    let stats = session.step(&grads, lr)?;
    Ok((value, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_step_is_the_earlier_of_steps_and_stop_at() {
        assert_eq!(last_step(10, None), 10);
        assert_eq!(last_step(10, Some(4)), 4);
        assert_eq!(last_step(10, Some(40)), 10);
    }
}
