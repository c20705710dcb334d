//! The frozen KL reference of GRPO (`variant = "grpo"`, β > 0).
//!
//! The reference policy π_ref is the stage's starting checkpoint, frozen. It never needs a
//! gradient, an f32 master copy or optimizer state, so it runs in the decode engine — the
//! formats the sampler uses (routed experts stay packed MXFP4, KV FP8 and indexer FP4
//! simulated, as in the policy's QAT numerics) — and costs a forward pass per minibatch:
//!
//! ```text
//! log π_ref(y_t | y_<t) = ℓ_t[y_t]/τ − log Σ_{k ∈ K_t} exp(ℓ_t[k]/τ)
//! ```
//!
//! with `ℓ_t` the reference logits at the position that predicts `y_t`, τ the sampling
//! temperature and `K_t` the whole vocabulary, or the kept set of that token when Keep
//! Sampling Mask is on — the same truncated distribution the behaviour and current policies
//! are evaluated on ([`token_logprobs`], shared with the policy). Routing and indexer
//! decisions recorded at sampling time are replayed (Keep Routing), so the three policies
//! see the same experts.

use crate::error::{Result, TrainError};
use crate::losses::token_logprobs;
use candle_core::{Device, Tensor};
use datasets::store::Trajectory;
use model::{Decisions, Engine, EngineOptions, ModelWeights, Row, Want};
use std::sync::Arc;

/// One response token that enters the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct CountedToken {
    /// Index in the response.
    pub j: usize,
    pub target: u32,
    /// The behaviour policy's recorded log-probability.
    pub behaviour: f32,
    /// The kept set its probability is normalised over (Keep Sampling Mask), if any.
    pub mask: Option<Vec<u32>>,
}

/// The response tokens of `t` that count (response mask), with what the loss needs of them.
pub fn counted_tokens(t: &Trajectory, keep_mask: bool) -> Result<Vec<CountedToken>> {
    let bad = |what: &str| TrainError::Input(format!("trajectory {}: {what} shorter than its response", t.traj_id));
    let mut out = Vec::with_capacity(t.response_tokens.len());
    for (j, &target) in t.response_tokens.iter().enumerate() {
        if t.response_mask.as_ref().is_some_and(|m| m.get(j) == Some(&0)) {
            continue;
        }
        let behaviour = *t.response_logprobs.get(j).ok_or_else(|| bad("response_logprobs"))?;
        let mask = match (&t.sample_mask, keep_mask) {
            (Some(m), true) => Some(m.get(j).ok_or_else(|| bad("sample_mask"))?.clone()).filter(|k| !k.is_empty()),
            _ => None,
        };
        out.push(CountedToken { j, target, behaviour, mask });
    }
    Ok(out)
}

/// π_ref: the starting weights in the decode engine.
pub struct FrozenReference {
    engine: Engine,
}

impl FrozenReference {
    /// Freeze `start` (routed experts packed to MXFP4 unless already stored so).
    pub fn new(start: &ModelWeights) -> Result<Self> {
        Ok(FrozenReference { engine: Engine::new(start, EngineOptions::default())? })
    }

    /// Freeze a checkpoint as stored: memory-mapped, FP8/FP4/BF16 weights computed on in
    /// their stored formats (no f32 copy; same logits as [`new`](Self::new) on its weights).
    pub fn from_checkpoint(dir: &std::path::Path) -> Result<Self> {
        Ok(FrozenReference { engine: Engine::from_checkpoint(dir, EngineOptions::default())? })
    }

    /// Bytes of the engine's weights: (routed experts, as held — packed; everything else).
    pub fn weight_bytes(&self) -> (usize, usize) {
        self.engine.weight_bytes()
    }

    /// `log π_ref` of the counted response tokens of each sequence, in order, concatenated.
    pub fn logprobs(
        &self,
        seqs: &[(&Trajectory, Option<Arc<Decisions>>)],
        tau: f32,
        keep_mask: bool,
    ) -> Result<Vec<f32>> {
        let v = self.engine.config.vocab_size;
        let (mut rows, mut targets, mut masks) = (Vec::new(), Vec::new(), Vec::new());
        for (t, forced) in seqs {
            let counted = counted_tokens(t, keep_mask)?;
            if counted.is_empty() {
                continue;
            }
            let logits = self.prefill_logits(t, forced.clone())?;
            let p = t.prompt_tokens.len();
            for c in counted {
                let at = (p - 1 + c.j) * v;
                rows.extend_from_slice(&logits[at..at + v]);
                targets.push(c.target);
                masks.push(c.mask);
            }
        }
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let logits = Tensor::from_vec(rows, (targets.len(), v), &Device::Cpu)?;
        let any_mask = masks.iter().any(Option::is_some);
        Ok(token_logprobs(&logits, &targets, tau, any_mask.then_some(masks))?.to_vec1()?)
    }

    /// Logits `[L, V]` of prompt + response with the recorded decisions replayed.
    fn prefill_logits(&self, t: &Trajectory, forced: Option<Arc<Decisions>>) -> Result<Vec<f32>> {
        if t.prompt_tokens.is_empty() {
            return Err(TrainError::Input(format!("trajectory {}: empty prompt", t.traj_id)));
        }
        let mut state = self.engine.new_state();
        if let Some(f) = forced {
            state = state.replaying(f);
        }
        let rows: Vec<Row> =
            t.prompt_tokens.iter().chain(&t.response_tokens).map(|&token| Row { seq: 0, token }).collect();
        let mut states = [state];
        Ok(self.engine.forward(&mut states, &rows, Want::AllLogits)?.values)
    }
}
