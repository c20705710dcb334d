//! Supervised fine-tuning (and pre-training, which is SFT that also learns the prompt):
//! masked cross-entropy on assistant tokens — reasoning, content and tool calls, not the
//! inserted tool results — with sequence packing, gradient accumulation, clipping and a
//! warmup + cosine schedule. Data are the task suite's reference solutions in a mix of
//! reasoning modes (Think Max examples carry the long, step-by-step reasoning), or — with
//! [`SftConfig::data`] — the user's conversations (`messages`, or `prompt`/`completion`; see
//! [`datasets::sft_data`]).
//!
//! **User conversations.** Of the `n` conversations whose `domain` matches
//! [`SftConfig::domains`], example `k` is conversation `π_e(k mod n)` of epoch `e = ⌊k / n⌋`,
//! where `π_e` is a permutation of `0..n` shuffled from (run seed, `e`) ([`user_order`]), in
//! the mode hashed from `k`, as for the suite: each epoch visits every conversation once in a
//! fresh order (not file order), and example `k` is a pure function of (data, seed, `k`), so
//! a resumed run draws exactly what an uninterrupted one would. The whole
//! conversation is rendered in that mode; an assistant turn `i` is trained on when its text
//! is a clean extension of the turns before it — `encode(m[..i]) ⊑ encode(m[..=i]) ⊑
//! encode(m)` — which holds for every assistant turn in Non-think and in tool-using
//! conversations. In Think modes without tools, V4 drops the reasoning of turns before the
//! last user message, so there the earlier assistant turns are context and the last one is
//! learned. Conversations too long for `max_len` are counted per mode and printed before
//! training (and skipped when drawn, as suite examples are).

use crate::error::{Result, TrainError};
use crate::losses::{sft_loss, token_logprobs};
use crate::optim::lr_schedule;
use crate::session::Session;
use crate::step::{last_step, TrainIo};
use datasets::chat::{encode_messages, Message, Mode};
use datasets::sft_data::{load_sft_dataset, SftRecord};
use datasets::tasks::{self, fnv1a, DomainInfo, Split};
use datasets::Tokenizer;
use model::train::SeqInput;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Default packed length: agent episodes with the V4 tool prompt are ~300–500 byte tokens and
/// the Think Max system prefix alone ~480, so 1152 fits every built-in example of every mode
/// and difficulty (the longest, agent.chain in Think Max, is ~1070; tested).
pub const DEFAULT_MAX_LEN: usize = 1152;

/// SFT / pre-training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Stop after this step (resumably), while the learning-rate schedule still spans `steps`
    /// (`--stop-after-steps`): a stopped and resumed run is bit-identical to an uninterrupted one.
    #[serde(skip)]
    pub stop_at: Option<u64>,
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
    /// Mixture weights `(pattern, weight)`: a matching domain appears `weight` times per cycle
    /// of the mixture (default 1), e.g. to over-sample the domains a base has not learned.
    pub mix: Vec<(String, u32)>,
    /// Difficulty of the built-in prompts (one level, or per domain).
    pub difficulty: tasks::Difficulty,
    /// Also learn the prompt tokens (pre-training).
    pub train_on_prompt: bool,
    pub indexer_loss_coef: f32,
    /// Checkpoint every N steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Stage name used in metrics.
    pub stage: String,
    /// User SFT data (a file, a directory of shards or a glob of `messages` or
    /// `prompt`/`completion` rows); `None` trains on the built-in suite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<std::path::PathBuf>,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            stop_at: None,
            steps: 100,
            batch: 4,
            max_len: DEFAULT_MAX_LEN,
            grad_accum: 1,
            warmup: 10,
            min_lr_ratio: 0.1,
            modes: vec![Mode::NonThink, Mode::ThinkHigh, Mode::ThinkMax],
            domains: "*".into(),
            mix: Vec::new(),
            difficulty: tasks::Difficulty::default(),
            train_on_prompt: false,
            indexer_loss_coef: 1.0,
            checkpoint_every: 0,
            stage: "sft".into(),
            data: None,
        }
    }
}

/// One training example, or several packed into one sequence: tokens and per-token loss
/// weights (weight of token t = weight of predicting it from t − 1).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub weights: Vec<f32>,
    /// Start offsets of the examples packed into `tokens` (`0 = a_0 < a_1 < …`); empty means
    /// one example. The model computes each packed example as if it ran alone, and the first
    /// token of an example is never predicted from the one before it.
    pub docs: Vec<usize>,
}

/// The data mixture: the selected domains in a fixed cycle, each appearing `weight` times
/// per cycle (default 1), so example `k` is a pure function of (mixture, seed, k) and a resumed
/// run continues with the same examples.
#[derive(Debug, Clone)]
pub struct Mixture {
    /// One slot per appearance: (domain, its appearance number, its weight).
    slots: Vec<(&'static DomainInfo, u64, u64)>,
    pub domains: Vec<&'static DomainInfo>,
}

/// Largest accepted mixture weight.
pub const MAX_MIX_WEIGHT: u32 = 1000;

impl Mixture {
    pub fn new(pattern: &str, weights: &[(String, u32)]) -> Result<Self> {
        let domains = tasks::match_domains(pattern)?;
        for (p, w) in weights {
            if *w == 0 {
                return Err(TrainError::Input(format!(
                    "mixture weight of `{p}` must be ≥ 1 (leave a domain out with the domain pattern instead)"
                )));
            }
            // one slot per unit of weight: bound it so a typo cannot allocate gigabytes
            if *w > MAX_MIX_WEIGHT {
                return Err(TrainError::Input(format!(
                    "mixture weight of `{p}` is {w}; at most {MAX_MIX_WEIGHT} (weights are relative: 1–100 is plenty)"
                )));
            }
            if !domains.iter().any(|d| tasks::domain_matches(p, d.domain)) {
                return Err(TrainError::Input(format!(
                    "mixture weight `{p}` matches none of the selected domains ({pattern})"
                )));
            }
        }
        let mut slots = Vec::new();
        for d in &domains {
            // the last matching weight wins, so `*=2,math.add=6` reads naturally
            let w =
                weights.iter().rev().find(|(p, _)| tasks::domain_matches(p, d.domain)).map_or(1, |(_, w)| *w) as u64;
            slots.extend((0..w).map(|i| (*d, i, w)));
        }
        Ok(Mixture { slots, domains })
    }

    /// Example `k`'s domain and the index of its task within that domain.
    pub fn pick(&self, k: u64) -> (&'static DomainInfo, u64) {
        let n = self.slots.len() as u64;
        let (d, i, w) = self.slots[(k % n) as usize];
        (d, (k / n) * w + i)
    }
}

/// The reasoning mode of example `k` (hashed, so modes mix evenly within every domain).
fn example_mode(modes: &[Mode], seed: u64, k: u64) -> Mode {
    modes[(fnv1a(&format!("mode/{seed}/{k}")) % modes.len() as u64) as usize]
}

/// Example `k` of the mixture: task, reasoning mode (hashed from `k`), tokens and loss weights.
pub fn suite_example(
    mix: &Mixture,
    modes: &[Mode],
    seed: u64,
    k: u64,
    difficulty: &tasks::Difficulty,
    tok: &dyn Tokenizer,
    train_on_prompt: bool,
) -> Result<Example> {
    let (d, index) = mix.pick(k);
    let task = tasks::generate(d.domain, Split::Train, seed, index, difficulty.for_prompt(d.domain, index))?;
    let mode = example_mode(modes, seed, k);
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
    Ok(Example { tokens, weights, docs: Vec::new() })
}

/// The text of a conversation in `mode` as `(text, trained)` segments: the assistant turns
/// that extend the turns before them cleanly are trained (see the module header).
pub fn conversation_segments(messages: &[Message], mode: Mode) -> Vec<(String, bool)> {
    let full = encode_messages(messages, mode);
    let mut out = Vec::new();
    let mut at = 0;
    for i in (0..messages.len()).filter(|&i| messages[i].role == "assistant") {
        let before = encode_messages(&messages[..i], mode);
        let upto = encode_messages(&messages[..=i], mode);
        if before.len() >= at && upto.starts_with(&before) && full.starts_with(&upto) {
            if before.len() > at {
                out.push((full[at..before.len()].to_string(), false));
            }
            out.push((full[before.len()..upto.len()].to_string(), true));
            at = upto.len();
        }
    }
    if at < full.len() {
        out.push((full[at..].to_string(), false));
    }
    out
}

/// A conversation as tokens and loss weights: assistant segments 1, the rest 0 (1 with
/// `train_on_prompt`), BOS never predicted.
pub fn conversation_example(messages: &[Message], mode: Mode, tok: &dyn Tokenizer, train_on_prompt: bool) -> Example {
    let mut ex = Example::default();
    for (text, trained) in conversation_segments(messages, mode) {
        let t = tok.encode(&text);
        ex.weights.extend(std::iter::repeat_n(if trained || train_on_prompt { 1.0 } else { 0.0 }, t.len()));
        ex.tokens.extend(t);
    }
    if let Some(w0) = ex.weights.first_mut() {
        *w0 = 0.0; // BOS is never predicted
    }
    ex
}

/// The user conversations of `cfg.data` whose domain matches `cfg.domains`. User data has
/// no mixture weights or difficulty: those settle the built-in suite, and are refused here
/// rather than ignored.
pub fn load_user_data(cfg: &SftConfig) -> Result<Vec<SftRecord>> {
    let Some(path) = &cfg.data else { return Ok(Vec::new()) };
    if !cfg.mix.is_empty() {
        return Err(TrainError::Input(format!(
            "mixture weights select built-in suite domains; with SFT data from {} leave them out",
            path.display()
        )));
    }
    let all = load_sft_dataset(path)?;
    let n = all.len();
    let picked: Vec<SftRecord> = all.into_iter().filter(|r| tasks::domain_matches(&cfg.domains, &r.domain)).collect();
    if picked.is_empty() {
        return Err(TrainError::Input(format!(
            "none of the {n} conversations of {} has a domain matching `{}`",
            path.display(),
            cfg.domains
        )));
    }
    if picked.len() < n {
        eprintln!(
            "{}: {} of {n} conversations have a domain matching `{}`; training on those",
            path.display(),
            picked.len(),
            cfg.domains
        );
    }
    Ok(picked)
}

/// The order in which epoch `epoch` visits `n` user conversations: a Fisher–Yates shuffle of
/// `0..n` driven by SplitMix64 from `fnv1a("sft-order/{seed}/{epoch}")`, so a pure function of
/// (`n`, seed, epoch).
pub fn user_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut state = fnv1a(&format!("sft-order/{seed}/{epoch}"));
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The conversation example `k` of `n` user conversations draws: position `k mod n` of the
/// order of epoch `⌊k / n⌋` ([`user_order`], kept per thread for the epoch in progress).
pub fn user_index(n: usize, seed: u64, k: u64) -> usize {
    type Cached = Option<((usize, u64, u64), Vec<usize>)>;
    thread_local! {
        static ORDER: std::cell::RefCell<Cached> = const { std::cell::RefCell::new(None) };
    }
    let (epoch, pos) = (k / n as u64, (k % n as u64) as usize);
    ORDER.with(|c| {
        let mut c = c.borrow_mut();
        match &*c {
            Some((key, order)) if *key == (n, seed, epoch) => order[pos],
            _ => {
                let order = user_order(n, seed, epoch);
                let i = order[pos];
                *c = Some(((n, seed, epoch), order));
                i
            }
        }
    })
}

/// Example `k` of user data: conversation [`user_index`]`(n, seed, k)` in the mode hashed
/// from `k`.
pub fn user_example(
    records: &[SftRecord],
    modes: &[Mode],
    seed: u64,
    k: u64,
    tok: &dyn Tokenizer,
    train_on_prompt: bool,
) -> Example {
    let rec = &records[user_index(records.len(), seed, k)];
    conversation_example(&rec.messages, example_mode(modes, seed, k), tok, train_on_prompt)
}

/// Conversations of user data that do not fit `max_len`, per mode: one line per mode with
/// any (`think_max: 3 of 40 conversations are longer than max_len 512 (up to 700 tokens)`),
/// each also printed; an error when no conversation fits in any mode.
pub fn user_examples_not_fitting(
    records: &[SftRecord],
    modes: &[Mode],
    tok: &dyn Tokenizer,
    max_len: usize,
    train_on_prompt: bool,
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut fit_any = false;
    for &mode in modes {
        let lens: Vec<usize> = records
            .iter()
            .map(|r| conversation_example(&r.messages, mode, tok, train_on_prompt).tokens.len())
            .collect();
        let long: Vec<usize> = lens.iter().copied().filter(|&l| l > max_len).collect();
        fit_any |= long.len() < lens.len();
        if let Some(longest) = long.iter().max() {
            let line = format!(
                "{}: {} of {} conversations are longer than max_len {max_len} (up to {longest} tokens) and are skipped when drawn",
                mode.as_str(),
                long.len(),
                lens.len()
            );
            eprintln!("{line}");
            tracing::warn!("{line}");
            lines.push(line);
        }
    }
    if !fit_any {
        return Err(TrainError::Input(format!(
            "no conversation fits max_len {max_len} in any mode: raise --max-len ({})",
            lines.join("; ")
        )));
    }
    Ok(lines)
}

/// `pack` skips examples longer than `max_len`; a domain — or a reasoning mode of a domain
/// (the Think Max system prefix alone is ~480 tokens) — whose examples (almost) never fit
/// silently drops out of the mixture, so say so loudly up front (probes the first 16 examples
/// of each domain and mode). Returns the `domain/mode` pairs warned about.
fn warn_domains_not_fitting(
    mix: &Mixture,
    modes: &[Mode],
    seed: u64,
    next: &mut dyn FnMut(u64) -> Result<Example>,
    max_len: usize,
) -> Result<Vec<String>> {
    const PROBE: usize = 16;
    let nm = modes.len();
    // (seen, fit, longest) per (domain, mode)
    let mut stats: Vec<(usize, usize, usize)> = vec![(0, 0, 0); mix.domains.len() * nm];
    let mut k = 0;
    // hashed modes: a mode of probability 1/nm per example shows up PROBE times well within
    // this many examples; the cap only guards a degenerate mode list
    let cap = (PROBE * nm * 8 * mix.slots.len()) as u64;
    while stats.iter().any(|s| s.0 < PROBE) && k < cap {
        let (d, _) = mix.pick(k);
        let di = mix.domains.iter().position(|x| x.domain == d.domain).unwrap_or(0);
        let m = example_mode(modes, seed, k);
        let i = di * nm + modes.iter().position(|x| *x == m).unwrap_or(0);
        if stats[i].0 < PROBE {
            let len = next(k)?.tokens.len();
            stats[i] = (stats[i].0 + 1, stats[i].1 + usize::from(len <= max_len), stats[i].2.max(len));
        }
        k += 1;
    }
    let mut warned = Vec::new();
    for (di, d) in mix.domains.iter().enumerate() {
        for (mi, m) in modes.iter().enumerate() {
            let (seen, fit, longest) = stats[di * nm + mi];
            if seen > 0 && fit * 4 < seen {
                tracing::warn!(
                    "{} in {}: {} of {seen} examples are longer than max_len {max_len} (up to {longest} tokens) and are skipped; raise --max-len or leave the mode out (--modes) to train on them",
                    d.domain,
                    m.as_str(),
                    seen - fit
                );
                warned.push(format!("{}/{}", d.domain, m.as_str()));
            }
        }
    }
    Ok(warned)
}

/// The `domain/mode` pairs of `cfg` whose examples (almost) never fit `cfg.max_len` (each is
/// also logged as a warning); empty when the whole mixture trains.
pub fn examples_not_fitting(cfg: &SftConfig, seed: u64, tok: &dyn Tokenizer) -> Result<Vec<String>> {
    if cfg.data.is_some() {
        let records = load_user_data(cfg)?;
        return user_examples_not_fitting(&records, &cfg.modes, tok, cfg.max_len, cfg.train_on_prompt);
    }
    let mix = Mixture::new(&cfg.domains, &cfg.mix)?;
    let mut next = |k: u64| suite_example(&mix, &cfg.modes, seed, k, &cfg.difficulty, tok, cfg.train_on_prompt);
    warn_domains_not_fitting(&mix, &cfg.modes, seed, &mut next, cfg.max_len)
}

/// Pack examples starting at `cursor` into `batch` sequences of at most `max_len` tokens,
/// recording where each example starts (document boundaries: the model keeps packed examples
/// apart); returns the sequences and the new cursor. Examples longer than `max_len` are skipped
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
        let mut seq = Example::default();
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
            seq.docs.push(seq.tokens.len());
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

/// Loss of a micro-batch: weighted NLL of next tokens (+ indexer auxiliary loss). Packed
/// examples are computed apart ([`Example::docs`] become the model's document starts).
pub fn batch_loss(session: &Session, seqs: &[Example], indexer_coef: f32) -> Result<(candle_core::Tensor, f32, usize)> {
    let inputs: Vec<SeqInput> =
        seqs.iter().map(|e| SeqInput { tokens: e.tokens.clone(), forced: None, doc_starts: e.docs.clone() }).collect();
    let out = session.model.forward(&inputs)?;
    let s = out.hidden.dim(1)?;
    // Positions whose next token is weighted (never across a document boundary).
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut weights = Vec::new();
    for (b, e) in seqs.iter().enumerate() {
        for t in 1..e.tokens.len() {
            if e.weights[t] > 0.0 && e.docs.binary_search(&t).is_err() {
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

/// Run SFT on the suite's reference solutions, or on the user conversations of `cfg.data`,
/// from the session's current step to `cfg.steps` (or `cfg.stop_at`).
pub fn run_sft(session: &mut Session, cfg: &SftConfig, tok: &dyn Tokenizer, io: &mut TrainIo) -> Result<SftReport> {
    if cfg.modes.is_empty() || cfg.batch == 0 || cfg.max_len < 8 || cfg.grad_accum == 0 {
        return Err(TrainError::Input("SFT needs modes, batch ≥ 1, grad_accum ≥ 1 and max_len ≥ 8".into()));
    }
    let seed = session.counters.seed;
    if cfg.data.is_some() {
        let records = load_user_data(cfg)?;
        user_examples_not_fitting(&records, &cfg.modes, tok, cfg.max_len, cfg.train_on_prompt)?;
        let mut next = |k: u64| Ok(user_example(&records, &cfg.modes, seed, k, tok, cfg.train_on_prompt));
        return train_loop(session, cfg, &mut next, io);
    }
    let mix = Mixture::new(&cfg.domains, &cfg.mix)?;
    let mut next = |k: u64| suite_example(&mix, &cfg.modes, seed, k, &cfg.difficulty, tok, cfg.train_on_prompt);
    warn_domains_not_fitting(&mix, &cfg.modes, seed, &mut next, cfg.max_len)?;
    train_loop(session, cfg, &mut next, io)
}

/// The optimizer steps of [`run_sft`] over examples `next(cursor)`, `next(cursor + 1)`, …:
/// per step, [`accumulate_gradients`] over `grad_accum` packed micro-batches (sample and
/// targets: the examples' next tokens), one optimizer step, [`log_step`], then the shared end
/// of step.
fn train_loop(
    session: &mut Session,
    cfg: &SftConfig,
    next: &mut dyn FnMut(u64) -> Result<Example>,
    io: &mut TrainIo,
) -> Result<SftReport> {
    io.begin(&cfg.stage, cfg.steps, session);
    let mut report = SftReport { first_loss: f32::NAN, ..Default::default() };
    let start = Instant::now();
    while session.counters.step < last_step(cfg.steps, cfg.stop_at) {
        let t0 = Instant::now();
        let acc = accumulate_gradients(session, cfg, next)?;
        let lr = lr_schedule(session.counters.step, cfg.warmup, cfg.steps, cfg.min_lr_ratio);
        let stats = session.step(&acc.grads, lr)?;
        session.counters.step += 1;
        let loss = acc.loss_sum / cfg.grad_accum as f32;
        if report.first_loss.is_nan() {
            report.first_loss = loss;
        }
        report.final_loss = loss;
        report.tokens += acc.tokens as u64;
        let tps = acc.tokens as f64 / t0.elapsed().as_secs_f64();
        log_step(io, session.counters.step, &cfg.stage, (loss, stats.grad_norm, lr, tps), report.tokens);
        let summary = format!("loss {loss:.3} gnorm {:.2} {tps:.0} tok/s", stats.grad_norm);
        io.end_step(session, cfg.checkpoint_every, &summary)?;
    }
    io.finish()?;
    report.steps = session.counters.step;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The summed gradients of one optimizer step's micro-batches.
struct Accumulated {
    grads: candle_core::backprop::GradStore,
    /// Sum of the micro-batches' mean token NLLs.
    loss_sum: f32,
    tokens: usize,
}

/// `grad_accum` micro-batches of `batch` packed sequences each: loss ÷ `grad_accum`, backward,
/// gradients summed variable by variable.
fn accumulate_gradients(
    session: &mut Session,
    cfg: &SftConfig,
    next: &mut dyn FnMut(u64) -> Result<Example>,
) -> Result<Accumulated> {
    let mut grads: Option<candle_core::backprop::GradStore> = None;
    let mut loss_sum = 0f32;
    let mut tokens = 0usize;
    for _ in 0..cfg.grad_accum {
        let (seqs, c) = pack(next, session.counters.cursor, cfg.batch, cfg.max_len)?;
        session.counters.cursor = c;
        let (loss, nll, n) = batch_loss(session, &seqs, cfg.indexer_loss_coef)?;
        if !nll.is_finite() {
            return Err(TrainError::NonFinite(format!("SFT loss at step {}", session.counters.step)));
        }
        let scaled = (loss / cfg.grad_accum as f64)?;
        let g = session.model.backward(&scaled)?;
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
    let grads = grads.ok_or_else(|| TrainError::Input("no gradients".into()))?;
    Ok(Accumulated { grads, loss_sum, tokens })
}

/// Log: loss, gradient norm, learning-rate scale and tokens/s of step `step`.
fn log_step(io: &mut TrainIo, step: u64, stage: &str, (loss, grad_norm, lr, tps): (f32, f32, f32, f64), tokens: u64) {
    let none = (None, None, None);
    io.metrics.log(stage, step, "train/loss", loss as f64, none, tokens);
    io.metrics.log(stage, step, "train/grad_norm", grad_norm as f64, none, tokens);
    io.metrics.log(stage, step, "train/lr_scale", lr as f64, none, tokens);
    io.metrics.log(stage, step, "train/tokens_per_s", tps, none, tokens);
}

#[cfg(test)]
mod tests {
    use super::*;
    use datasets::ByteTokenizer;

    #[test]
    fn packing_records_where_each_example_starts() {
        let lens = [5usize, 7, 3, 9, 4, 6];
        let mut next = |k: u64| {
            let n = lens[k as usize % lens.len()];
            Ok(Example { tokens: vec![k as u32 + 2; n], weights: vec![1.0; n], docs: Vec::new() })
        };
        let (seqs, c) = pack(&mut next, 0, 2, 16).unwrap();
        // 5 + 7 + 3 fit 16 (9 does not); then 9 + 4 (6 does not)
        assert_eq!(c, 5);
        assert_eq!(seqs[0].docs, [0, 5, 12]);
        assert_eq!(seqs[1].docs, [0, 9]);
        assert_eq!(seqs[1].tokens.len(), 13);
    }

    /// A packed micro-batch trains exactly like its examples as separate sequences: same
    /// loss, same trained-token count, same gradients (the training numerics: f32, QAT).
    #[test]
    fn a_packed_micro_batch_matches_its_examples_apart() {
        use model::{Config, ModelWeights};
        let w = ModelWeights::random(&Config::tiny(), 4).unwrap();
        let session =
            Session::new(&w, model::train::TrainOptions::default(), crate::optim::OptimConfig::default(), 1).unwrap();
        let mix = Mixture::new("math.add,if.upper", &[]).unwrap();
        let modes = [Mode::NonThink];
        let examples: Vec<Example> =
            (0..3).map(|k| suite_example(&mix, &modes, 0, k, &Some(1).into(), &ByteTokenizer, true).unwrap()).collect();
        let total: usize = examples.iter().map(|e| e.tokens.len()).sum();
        let mut next = |k: u64| Ok(examples[k as usize % examples.len()].clone());
        let (packed, _) = pack(&mut next, 0, 1, total).unwrap();
        assert_eq!(packed[0].docs.len(), 3);
        let (lp, nll_p, n_p) = batch_loss(&session, &packed, 1.0).unwrap();
        let (la, nll_a, n_a) = batch_loss(&session, &examples, 1.0).unwrap();
        assert_eq!(n_p, n_a);
        let (vp, va) = (lp.to_scalar::<f32>().unwrap(), la.to_scalar::<f32>().unwrap());
        let loss_diff = ((vp - va).abs() / (1.0 + va.abs())).max((nll_p - nll_a).abs() / (1.0 + nll_a.abs()));
        let (gp, ga) = (session.model.backward(&lp).unwrap(), session.model.backward(&la).unwrap());
        let mut worst = (0f32, String::new());
        for (name, var) in session.model.vars() {
            let (Some(a), Some(b)) = (gp.get(var.as_tensor()), ga.get(var.as_tensor())) else {
                assert!(gp.get(var.as_tensor()).is_none() && ga.get(var.as_tensor()).is_none(), "{name}");
                continue;
            };
            let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
            let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0f32, f32::max);
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
        eprintln!("packed vs apart: loss {loss_diff:.2e}, gradients {:.2e} ({})", worst.0, worst.1);
        assert!(loss_diff <= 1e-5 && worst.0 <= 1e-5, "loss {loss_diff}, gradients {worst:?}");
    }

    #[test]
    fn domains_whose_examples_never_fit_are_reported() {
        let mix = Mixture::new("math.add,agent.*", &[]).unwrap();
        let modes = [Mode::NonThink];
        let mut next = |k: u64| suite_example(&mix, &modes, 0, k, &Some(1).into(), &ByteTokenizer, false);
        // agent episodes (tool descriptions, DSML calls, results) are ~300 bytes: skipped at 256
        let warned = warn_domains_not_fitting(&mix, &modes, 0, &mut next, 256).unwrap();
        assert_eq!(warned, ["agent.calc/non_think", "agent.lookup/non_think", "agent.chain/non_think"]);
        assert!(warn_domains_not_fitting(&mix, &modes, 0, &mut next, 512).unwrap().is_empty());
    }

    #[test]
    fn a_mode_whose_examples_never_fit_is_reported() {
        // the Think Max system prefix is ~480 tokens: at 384 every Think Max example is skipped
        // while the other modes of the same domain fit
        let mix = Mixture::new("math.add", &[]).unwrap();
        let modes = Mode::ALL;
        let mut next = |k: u64| suite_example(&mix, &modes, 0, k, &Some(1).into(), &ByteTokenizer, false);
        assert_eq!(warn_domains_not_fitting(&mix, &modes, 0, &mut next, 384).unwrap(), ["math.add/think_max"]);
        assert!(warn_domains_not_fitting(&mix, &modes, 0, &mut next, 1024).unwrap().is_empty());
    }

    /// The default packed length must fit every built-in example of every domain, mode and
    /// difficulty (pre-training with the defaults trains on all of them, prompts included).
    #[test]
    fn the_default_max_len_fits_every_builtin_example() {
        for difficulty in 1..=5 {
            let cfg = SftConfig {
                domains: "*".into(),
                modes: Mode::ALL.to_vec(),
                difficulty: Some(difficulty).into(),
                train_on_prompt: true,
                ..SftConfig::default()
            };
            let missing = examples_not_fitting(&cfg, 0, &ByteTokenizer).unwrap();
            assert!(missing.is_empty(), "difficulty {difficulty}: {missing:?} do not fit {}", cfg.max_len);
        }
    }

    #[test]
    fn mixture_weights_oversample_without_repeating_tasks() {
        let mix = Mixture::new("math.add,math.mul,if.upper", &[("math.*".into(), 2), ("math.mul".into(), 3)]).unwrap();
        let picks: Vec<(&str, u64)> = (0..12).map(|k| mix.pick(k)).map(|(d, i)| (d.domain, i)).collect();
        let count = |name: &str| picks.iter().filter(|(d, _)| *d == name).count();
        // one cycle is add ×2, mul ×3 (last matching weight wins), upper ×1
        assert_eq!((count("math.add"), count("math.mul"), count("if.upper")), (4, 6, 2));
        // every domain's task indices are 0, 1, 2, ... with no repeats or gaps
        for name in ["math.add", "math.mul", "if.upper"] {
            let idx: Vec<u64> = picks.iter().filter(|(d, _)| *d == name).map(|(_, i)| *i).collect();
            assert_eq!(idx, (0..idx.len() as u64).collect::<Vec<_>>(), "{name}");
        }
        // unweighted = plain round robin, as before
        let plain = Mixture::new("math.add,if.upper", &[]).unwrap();
        assert_eq!(plain.pick(3).0.domain, "if.upper");
        assert_eq!(plain.pick(3).1, 1);
        assert!(Mixture::new("math.add", &[("code.*".into(), 2)]).is_err());
        assert!(Mixture::new("math.add", &[("math.add".into(), 0)]).is_err());
        assert!(Mixture::new("math.add", &[("math.add".into(), MAX_MIX_WEIGHT + 1)]).is_err());
        assert!(Mixture::new("math.add", &[("math.add".into(), MAX_MIX_WEIGHT)]).is_ok());
    }

    #[test]
    fn user_data_is_drawn_in_a_seeded_order_per_epoch() {
        let n = 50;
        let o = user_order(n, 7, 0);
        let mut sorted = o.clone();
        sorted.sort();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
        assert_ne!(o, (0..n).collect::<Vec<_>>(), "not file order");
        assert_eq!(o, user_order(n, 7, 0), "reproducible");
        assert_ne!(o, user_order(n, 7, 1), "a fresh order each epoch");
        assert_ne!(o, user_order(n, 8, 0), "seeded by the run seed");
        // example k is a pure function of (n, seed, k) whatever was drawn before (a resumed
        // run starts mid-epoch, possibly after another dataset was drawn on this thread)
        let forward: Vec<usize> = (0..3 * n as u64).map(|k| user_index(n, 7, k)).collect();
        let _ = user_index(n + 1, 9, 5);
        let resumed: Vec<usize> = (0..3 * n as u64).rev().map(|k| user_index(n, 7, k)).collect();
        assert_eq!(forward, resumed.into_iter().rev().collect::<Vec<_>>());
        for e in 0..3 {
            assert_eq!(forward[e * n..(e + 1) * n], user_order(n, 7, e as u64)[..], "epoch {e} visits each once");
        }
        assert_eq!(user_order(1, 7, 0), vec![0]);
    }
}
