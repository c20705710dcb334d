//! Supervised fine-tuning (and pre-training, which is SFT that also learns the prompt):
//! masked cross-entropy on assistant tokens — reasoning, content and tool calls, not the
//! inserted tool results — with sequence packing, gradient accumulation, clipping and a
//! warmup + cosine schedule. Data are the task suite's reference solutions in a mix of
//! reasoning modes (Think Max examples carry the long, step-by-step reasoning).

use crate::error::{Result, TrainError};
use crate::losses::{sft_loss, token_logprobs};
use crate::optim::lr_schedule;
use crate::session::Session;
use datasets::chat::Mode;
use datasets::progress::Progress;
use datasets::store::MetricsWriter;
use datasets::tasks::{self, fnv1a, DomainInfo, Split};
use datasets::Tokenizer;
use model::train::SeqInput;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// SFT / pre-training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    pub steps: u64,
    /// Packed sequences per micro-batch.
    pub batch: usize,
    pub max_len: usize,
    pub grad_accum: usize,
    pub warmup: u64,
    pub min_lr_ratio: f32,
    /// Reasoning modes mixed into the data.
    pub modes: Vec<Mode>,
    /// Domain pattern (`math.*,if.*`, `*`).
    pub domains: String,
    pub difficulty: Option<u32>,
    /// Also learn the prompt tokens (pre-training).
    pub train_on_prompt: bool,
    pub indexer_loss_coef: f32,
    /// Checkpoint every N steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Stage name used in metrics.
    pub stage: String,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            steps: 100,
            batch: 4,
            // agent episodes with the V4 tool prompt are ~300–370 byte tokens
            max_len: 384,
            grad_accum: 1,
            warmup: 10,
            min_lr_ratio: 0.1,
            modes: vec![Mode::NonThink, Mode::ThinkHigh, Mode::ThinkMax],
            domains: "*".into(),
            difficulty: None,
            train_on_prompt: false,
            indexer_loss_coef: 1.0,
            checkpoint_every: 0,
            stage: "sft".into(),
        }
    }
}

/// One training example: tokens and per-token loss weights (weight of token t = weight of
/// predicting it from t − 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub weights: Vec<f32>,
}

/// The reference solution of suite example `k` (deterministic in `k` and `seed`).
pub fn suite_example(
    domains: &[&DomainInfo],
    modes: &[Mode],
    seed: u64,
    k: u64,
    difficulty: Option<u32>,
    tok: &dyn Tokenizer,
    train_on_prompt: bool,
) -> Result<Example> {
    let d = domains[(k % domains.len() as u64) as usize];
    let task = tasks::generate(d.domain, Split::Train, seed, k / domains.len() as u64, difficulty)?;
    let mode = modes[(fnv1a(&format!("mode/{seed}/{k}")) % modes.len() as u64) as usize];
    let prompt = tok.encode(&task.prompt_text(mode));
    let pw = if train_on_prompt { 1.0 } else { 0.0 };
    let mut weights = vec![pw; prompt.len()];
    let mut tokens = prompt;
    if let Some(w0) = weights.first_mut() {
        *w0 = 0.0; // BOS is never predicted
    }
    for (text, generated) in task.reference_segments(mode) {
        let t = tok.encode(&text);
        weights.extend(std::iter::repeat_n(if generated || train_on_prompt { 1.0 } else { 0.0 }, t.len()));
        tokens.extend(t);
    }
    Ok(Example { tokens, weights })
}

/// `pack` skips examples longer than `max_len`; a domain whose examples (almost) never fit
/// drops out of the mixture, so say so loudly up front (probes the first 16 examples of each
/// domain; examples cycle through the domains in order). Returns the domains warned about.
fn warn_domains_not_fitting(
    domains: &[&DomainInfo],
    next: &mut dyn FnMut(u64) -> Result<Example>,
    max_len: usize,
) -> Result<Vec<String>> {
    const PROBE: u64 = 16;
    let n = domains.len() as u64;
    let mut warned = Vec::new();
    for (i, d) in domains.iter().enumerate() {
        let mut longest = 0;
        let mut fit = 0;
        for j in 0..PROBE {
            let len = next(i as u64 + j * n)?.tokens.len();
            longest = longest.max(len);
            fit += usize::from(len <= max_len);
        }
        if fit * 4 < PROBE as usize {
            tracing::warn!(
                "{}: {} of {PROBE} examples are longer than max_len {max_len} (up to {longest} tokens) and are skipped; raise --max-len (or choose shorter modes) to train on this domain",
                d.domain,
                PROBE as usize - fit
            );
            warned.push(d.domain.to_string());
        }
    }
    Ok(warned)
}

/// Pack examples starting at `cursor` into `batch` sequences of at most `max_len` tokens;
/// returns the sequences and the new cursor. Examples longer than `max_len` are skipped
/// (truncating them would cut the answer off and teach a wrong ending); an error says so
/// when nothing fits.
pub fn pack(
    next: &mut dyn FnMut(u64) -> Result<Example>,
    cursor: u64,
    batch: usize,
    max_len: usize,
) -> Result<(Vec<Example>, u64)> {
    const MAX_SKIPS: usize = 1000;
    let mut c = cursor;
    let mut out = Vec::with_capacity(batch);
    let mut skipped_in_a_row = 0;
    for _ in 0..batch {
        let mut seq = Example { tokens: Vec::new(), weights: Vec::new() };
        loop {
            let ex = next(c)?;
            if ex.tokens.len() > max_len {
                c += 1;
                skipped_in_a_row += 1;
                if skipped_in_a_row >= MAX_SKIPS {
                    return Err(TrainError::Input(format!(
                        "{MAX_SKIPS} examples in a row are longer than max_len {max_len} (e.g. {} tokens): raise --max-len or choose shorter modes",
                        ex.tokens.len()
                    )));
                }
                continue;
            }
            skipped_in_a_row = 0;
            if !seq.tokens.is_empty() && seq.tokens.len() + ex.tokens.len() > max_len {
                break;
            }
            c += 1;
            seq.tokens.extend_from_slice(&ex.tokens);
            seq.weights.extend_from_slice(&ex.weights);
            if seq.tokens.len() >= max_len {
                break;
            }
        }
        out.push(seq);
    }
    Ok((out, c))
}

/// Loss of a micro-batch: weighted NLL of next tokens (+ indexer auxiliary loss).
pub fn batch_loss(session: &Session, seqs: &[Example], indexer_coef: f32) -> Result<(candle_core::Tensor, f32, usize)> {
    let inputs: Vec<SeqInput> = seqs.iter().map(|e| SeqInput { tokens: e.tokens.clone(), forced: None }).collect();
    let out = session.model.forward(&inputs)?;
    let s = out.hidden.dim(1)?;
    // Positions whose next token is weighted.
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut weights = Vec::new();
    for (b, e) in seqs.iter().enumerate() {
        for t in 1..e.tokens.len() {
            if e.weights[t] > 0.0 {
                rows.push((b * s + t - 1) as u32);
                targets.push(e.tokens[t]);
                weights.push(e.weights[t]);
            }
        }
    }
    if rows.is_empty() {
        return Err(TrainError::Input("micro-batch without trainable tokens".into()));
    }
    let d = out.hidden.dim(2)?;
    let h = out.hidden.reshape((seqs.len() * s, d))?;
    let idx = candle_core::Tensor::from_vec(rows, targets.len(), h.device())?;
    let logits = session.model.logits(&h.index_select(&idx, 0)?)?;
    let lp = token_logprobs(&logits, &targets, 1.0, None)?;
    let nll = sft_loss(&lp, &weights)?;
    let nll_v = nll.to_scalar::<f32>()?;
    let loss = match out.indexer_loss {
        Some(a) if indexer_coef > 0.0 => (nll + (a * indexer_coef as f64)?)?,
        _ => nll,
    };
    Ok((loss, nll_v, targets.len()))
}

/// Outcome of an SFT run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SftReport {
    pub steps: u64,
    pub final_loss: f32,
    pub first_loss: f32,
    pub tokens: u64,
    pub seconds: f64,
}

/// Run SFT on the suite's reference solutions from the session's current step to `cfg.steps`.
pub fn run_sft(
    session: &mut Session,
    cfg: &SftConfig,
    tok: &dyn Tokenizer,
    metrics: &mut MetricsWriter,
    progress: &dyn Progress,
    ckpt_root: Option<&Path>,
) -> Result<SftReport> {
    let domains = tasks::match_domains(&cfg.domains)?;
    if cfg.modes.is_empty() || cfg.batch == 0 || cfg.max_len < 8 || cfg.grad_accum == 0 {
        return Err(TrainError::Input("SFT needs modes, batch ≥ 1, grad_accum ≥ 1 and max_len ≥ 8".into()));
    }
    let seed = session.counters.seed;
    let mut next = |k: u64| suite_example(&domains, &cfg.modes, seed, k, cfg.difficulty, tok, cfg.train_on_prompt);
    warn_domains_not_fitting(&domains, &mut next, cfg.max_len)?;
    progress.start(&cfg.stage, cfg.steps);
    progress.advance(session.counters.step);
    let mut report = SftReport { first_loss: f32::NAN, ..Default::default() };
    let start = Instant::now();
    while session.counters.step < cfg.steps {
        let t0 = Instant::now();
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        let mut loss_sum = 0f32;
        let mut tokens = 0usize;
        for _ in 0..cfg.grad_accum {
            let (seqs, c) = pack(&mut next, session.counters.cursor, cfg.batch, cfg.max_len)?;
            session.counters.cursor = c;
            let (loss, nll, n) = batch_loss(session, &seqs, cfg.indexer_loss_coef)?;
            if !nll.is_finite() {
                return Err(TrainError::NonFinite(format!("SFT loss at step {}", session.counters.step)));
            }
            let scaled = (loss / cfg.grad_accum as f64)?;
            let g = scaled.backward()?;
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    for var in session.model.vars().values() {
                        if let Some(gn) = g.get(var.as_tensor()) {
                            let sum = match acc.get(var.as_tensor()) {
                                Some(a) => (a + gn)?,
                                None => gn.clone(),
                            };
                            acc.insert(var.as_tensor(), sum);
                        }
                    }
                    acc
                }
            });
            loss_sum += nll;
            tokens += n;
        }
        let lr = lr_schedule(session.counters.step, cfg.warmup, cfg.steps, cfg.min_lr_ratio);
        let stats = session.step(grads.as_ref().ok_or_else(|| TrainError::Input("no gradients".into()))?, lr)?;
        session.counters.step += 1;
        let loss = loss_sum / cfg.grad_accum as f32;
        if report.first_loss.is_nan() {
            report.first_loss = loss;
        }
        report.final_loss = loss;
        report.tokens += tokens as u64;
        let step = session.counters.step;
        let tps = tokens as f64 / t0.elapsed().as_secs_f64();
        let none = (None, None, None);
        metrics.log(&cfg.stage, step, "train/loss", loss as f64, none, report.tokens);
        metrics.log(&cfg.stage, step, "train/grad_norm", stats.grad_norm as f64, none, report.tokens);
        metrics.log(&cfg.stage, step, "train/lr_scale", lr as f64, none, report.tokens);
        metrics.log(&cfg.stage, step, "train/tokens_per_s", tps, none, report.tokens);
        metrics.maybe_flush()?;
        progress.advance(1);
        progress.message(&format!("loss {loss:.3} gnorm {:.2} {tps:.0} tok/s", stats.grad_norm));
        if let Some(root) = ckpt_root {
            if cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 {
                session.save(root)?;
            }
        }
    }
    metrics.flush()?;
    progress.finish();
    report.steps = session.counters.step;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datasets::ByteTokenizer;

    #[test]
    fn domains_whose_examples_never_fit_are_reported() {
        let domains = tasks::match_domains("math.add,agent.*").unwrap();
        let modes = [Mode::NonThink];
        let mut next = |k: u64| suite_example(&domains, &modes, 0, k, Some(1), &ByteTokenizer, false);
        // agent episodes (tool descriptions, DSML calls, results) are ~300 bytes: skipped at 256
        let warned = warn_domains_not_fitting(&domains, &mut next, 256).unwrap();
        assert_eq!(warned, ["agent.calc", "agent.lookup", "agent.chain"]);
        assert!(warn_domains_not_fitting(&domains, &mut next, 512).unwrap().is_empty());
    }
}
