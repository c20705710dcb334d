//! Batched generation with continuous batching.
//!
//! Each request's prompt is prefilled once and its decode state cloned for the G samples of
//! the group. Up to `max_batch` sequences decode together, one row each per step; a finished
//! sequence's slot is refilled from the queue right away. Agent requests run multi-turn: when a
//! turn ends with a well-formed DSML tool call, the environment's answer is tokenised and
//! prefilled into that sequence (those tokens are marked as not generated) and decoding goes on.

use crate::sampling::{sample, SamplingParams};
use datasets::chat::{parse_reply, Mode};
use datasets::progress::Progress;
use datasets::tasks::{fnv1a, Pcg};
use datasets::Tokenizer;
use model::{DecodeState, Engine, Row, Want};
use rewards::agent::{AgentEnv, MAX_TURNS};
use std::collections::{BTreeMap, VecDeque};

/// One prompt to sample `n` responses for.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt_tokens: Vec<u32>,
    pub n: usize,
    pub params: SamplingParams,
    pub mode: Mode,
    /// Tools for multi-turn agent episodes.
    pub env: Option<AgentEnv>,
    /// Seeds the samples (`seed`, sample index) → reproducible output.
    pub seed: u64,
}

/// Why a sample stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Eos,
    Length,
    Stop,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Length => "length",
            Finish::Stop => "stop",
        }
    }
}

/// One sampled response.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSample {
    /// Response tokens: generated ones and inserted tool results.
    pub tokens: Vec<u32>,
    /// Behaviour log-probability per token, `log μ` of [`crate::sampling`]: tempered and, when
    /// sampling truncated, renormalised over the token's kept set (0 for inserted tokens).
    pub logprobs: Vec<f32>,
    /// 1 = generated, 0 = inserted by the environment.
    pub gen_mask: Vec<u8>,
    /// Expert ids per response position (n_layers·k each), when recording.
    pub routing: Option<Vec<u16>>,
    pub prompt_routing: Option<Vec<u16>>,
    /// Kept ids per response token when sampling truncated (empty for inserted tokens).
    pub sample_mask: Option<Vec<Vec<u32>>>,
    /// (layer, absolute position) → compressed entries the indexer selected, prompt included,
    /// when [`GenOptions::record_indexer`].
    pub indexer_topk: Option<BTreeMap<(usize, usize), Vec<usize>>>,
    pub finish: Finish,
    pub text: String,
    pub turns: usize,
}

/// How to run a generation batch.
#[derive(Debug, Clone, Copy)]
pub struct GenOptions {
    /// Sequences decoding together.
    pub max_batch: usize,
    /// Record expert ids (Keep Routing).
    pub record_routing: bool,
    /// Return the indexer's top-k selections ([`GenSample::indexer_topk`]) for replay checks;
    /// trajectories do not store them.
    pub record_indexer: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions { max_batch: 32, record_routing: true, record_indexer: false }
    }
}

/// Statistics of one generation call.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub inserted_tokens: usize,
    pub decode_steps: usize,
    /// Largest decode-state footprint seen (bytes, one sequence).
    pub max_state_bytes: usize,
}

/// A sample whose prompt is prefilled, waiting for a decode slot.
struct Waiting {
    req: usize,
    g: usize,
    st: DecodeState,
    /// Logits after the last prompt token.
    logits: Vec<f32>,
    prompt_routing: Option<Vec<u16>>,
}

struct Seq {
    req: usize,
    g: usize,
    prompt_len: usize,
    out: GenSample,
    rng: Pcg,
    /// Index in `out.tokens` where the current assistant turn began.
    turn_start: usize,
    /// Token to feed next (the last sampled one).
    next: u32,
    done: Option<Finish>,
    truncating: bool,
}

fn routes_u16(state: &DecodeState, from: usize, to: usize, width: usize) -> Option<Vec<u16>> {
    let rec = state.record.as_ref()?;
    let mut v = Vec::with_capacity((to - from) * width);
    for pos in from..to {
        match rec.routes.get(&pos) {
            Some(r) => v.extend(r.iter().map(|&e| e as u16)),
            None => v.extend(std::iter::repeat_n(u16::MAX, width)),
        }
    }
    Some(v)
}

/// Generate `n` samples for every request. Results are in request order, samples in index order.
pub fn generate(
    engine: &Engine,
    tok: &dyn Tokenizer,
    reqs: &[GenRequest],
    opts: &GenOptions,
    progress: &dyn Progress,
) -> model::Result<(Vec<Vec<GenSample>>, GenStats)> {
    for (i, r) in reqs.iter().enumerate() {
        r.params.validate().map_err(|e| model::ModelError::Input(format!("request {i}: {e}")))?;
        if r.prompt_tokens.is_empty() {
            return Err(model::ModelError::Input(format!("request {i}: empty prompt")));
        }
    }
    let cfg = &engine.config;
    let eos = tok.special_ids().eos;
    let width = cfg.n_layers * cfg.n_activated_experts;
    let total: usize = reqs.iter().map(|r| r.n).sum();
    progress.start("rollout", total as u64);
    let mut stats = GenStats::default();
    let mut results: Vec<Vec<Option<GenSample>>> = reqs.iter().map(|r| vec![None; r.n]).collect();
    let mut pending: VecDeque<usize> = (0..reqs.len()).filter(|&i| reqs[i].n > 0).collect();
    let mut seqs: Vec<Seq> = Vec::new();
    let mut states: Vec<DecodeState> = Vec::new();
    // Prefilled samples not started yet, started as slots free up.
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let max_batch = opts.max_batch.max(1);
    loop {
        // Fill free slots: prefill new prompts (several in one forward call) when no prefilled
        // samples are waiting.
        while seqs.len() < max_batch {
            if let Some(Waiting { req, g, st, logits, prompt_routing }) = waiting.pop_front() {
                let r = &reqs[req];
                let mut rng = Pcg::new(fnv1a(&format!("{}/{g}", r.seed)));
                let s = sample(&logits, &r.params, &mut rng);
                let truncating = s.kept.is_some();
                let out = GenSample {
                    tokens: vec![s.token],
                    logprobs: vec![s.logprob],
                    gen_mask: vec![1],
                    routing: None,
                    prompt_routing,
                    sample_mask: if truncating { Some(vec![s.kept.unwrap_or_default()]) } else { None },
                    indexer_topk: None,
                    finish: Finish::Length,
                    text: String::new(),
                    turns: 1,
                };
                stats.generated_tokens += 1;
                let prompt_len = st.pos;
                seqs.push(Seq { req, g, prompt_len, out, rng, turn_start: 0, next: s.token, done: None, truncating });
                states.push(st);
                continue;
            }
            // Prefill up to (free slots) prompts together.
            let free = max_batch - seqs.len();
            let mut batch_reqs = Vec::new();
            let mut need = 0;
            while let Some(&r) = pending.front() {
                if !batch_reqs.is_empty() && need >= free {
                    break;
                }
                pending.pop_front();
                need += reqs[r].n;
                batch_reqs.push(r);
            }
            if batch_reqs.is_empty() {
                break;
            }
            let mut pstates: Vec<DecodeState> = batch_reqs
                .iter()
                .map(|_| {
                    if opts.record_routing || opts.record_indexer {
                        engine.new_state().recording()
                    } else {
                        engine.new_state()
                    }
                })
                .collect();
            let rows: Vec<Row> = batch_reqs
                .iter()
                .enumerate()
                .flat_map(|(si, &r)| reqs[r].prompt_tokens.iter().map(move |&t| Row { seq: si, token: t }))
                .collect();
            let out = engine.forward(&mut pstates, &rows, Want::LastLogits)?;
            for (si, &r) in batch_reqs.iter().enumerate() {
                let st = &pstates[si];
                stats.prompt_tokens += reqs[r].prompt_tokens.len();
                let prompt_routing = if opts.record_routing { routes_u16(st, 0, st.pos, width) } else { None };
                for g in 0..reqs[r].n {
                    waiting.push_back(Waiting {
                        req: r,
                        g,
                        st: st.clone(),
                        logits: out.row(si).to_vec(),
                        prompt_routing: prompt_routing.clone(),
                    });
                }
            }
        }
        if seqs.is_empty() {
            break;
        }
        // Stop checks for the token just sampled; agent turns; budget.
        for (i, s) in seqs.iter_mut().enumerate() {
            let r = &reqs[s.req];
            if s.next == eos {
                // End of an assistant turn: the environment may answer.
                let mut inserted = false;
                if let Some(env) = &r.env {
                    if s.out.turns < MAX_TURNS {
                        let turn_text = tok.decode(&s.out.tokens[s.turn_start..]);
                        let reply = parse_reply(&turn_text, r.mode);
                        if let Some(ins) = env.respond(&reply, r.mode) {
                            let ins_tokens = tok.encode(&ins);
                            if s.out.tokens.len() + ins_tokens.len() < r.params.max_tokens {
                                // Feed the EOS and the inserted text, sample the next token.
                                let mut rows: Vec<Row> = vec![Row { seq: 0, token: eos }];
                                rows.extend(ins_tokens.iter().map(|&t| Row { seq: 0, token: t }));
                                let mut one = [std::mem::replace(&mut states[i], DecodeState::new(cfg))];
                                let o = engine.forward(&mut one, &rows, Want::LastLogits)?;
                                let [st] = one;
                                states[i] = st;
                                s.out.tokens.extend(&ins_tokens);
                                s.out.logprobs.extend(std::iter::repeat_n(0.0, ins_tokens.len()));
                                s.out.gen_mask.extend(std::iter::repeat_n(0, ins_tokens.len()));
                                if let Some(m) = s.out.sample_mask.as_mut() {
                                    m.extend(std::iter::repeat_n(Vec::new(), ins_tokens.len()));
                                }
                                stats.inserted_tokens += ins_tokens.len();
                                s.turn_start = s.out.tokens.len();
                                s.out.turns += 1;
                                let smp = sample(o.row(0), &r.params, &mut s.rng);
                                push_sampled(s, smp);
                                stats.generated_tokens += 1;
                                inserted = true;
                            }
                        }
                    }
                }
                if !inserted {
                    s.done = Some(Finish::Eos);
                    continue;
                }
            }
            if s.done.is_none() && !r.params.stop.is_empty() {
                let tail_tokens = &s.out.tokens[s.out.tokens.len().saturating_sub(64)..];
                let tail = tok.decode(tail_tokens);
                if r.params.stop.iter().any(|st| tail.ends_with(st.as_str())) {
                    s.done = Some(Finish::Stop);
                }
            }
            if s.done.is_none() && s.out.tokens.len() >= r.params.max_tokens {
                s.done = Some(Finish::Length);
            }
        }
        // Retire finished sequences.
        let mut i = 0;
        while i < seqs.len() {
            if let Some(f) = seqs[i].done {
                let mut s = seqs.swap_remove(i);
                let st = states.swap_remove(i);
                stats.max_state_bytes = stats.max_state_bytes.max(st.bytes().total());
                s.out.finish = f;
                s.out.text = tok.decode(&s.out.tokens);
                if opts.record_routing {
                    s.out.routing = routes_u16(&st, s.prompt_len, s.prompt_len + s.out.tokens.len(), width);
                }
                if opts.record_indexer {
                    s.out.indexer_topk = st.record.map(|r| r.topk);
                }
                results[s.req][s.g] = Some(s.out);
                progress.advance(1);
            } else {
                i += 1;
            }
        }
        if seqs.is_empty() {
            continue;
        }
        // One decode step for every live sequence.
        let rows: Vec<Row> = seqs.iter().enumerate().map(|(i, s)| Row { seq: i, token: s.next }).collect();
        let out = engine.forward(&mut states, &rows, Want::LastLogits)?;
        stats.decode_steps += 1;
        for (i, s) in seqs.iter_mut().enumerate() {
            let smp = sample(out.row(i), &reqs[s.req].params, &mut s.rng);
            push_sampled(s, smp);
            stats.generated_tokens += 1;
        }
    }
    progress.finish();
    let mut done = Vec::with_capacity(results.len());
    for v in results {
        done.push(
            v.into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| model::ModelError::Input("internal: a sample did not finish".into()))?,
        );
    }
    Ok((done, stats))
}

fn push_sampled(s: &mut Seq, smp: crate::sampling::Sampled) {
    s.out.tokens.push(smp.token);
    s.out.logprobs.push(smp.logprob);
    s.out.gen_mask.push(1);
    if s.truncating || smp.kept.is_some() {
        let n = s.out.tokens.len() - 1;
        let m = s.out.sample_mask.get_or_insert_with(|| vec![Vec::new(); n]);
        m.push(smp.kept.unwrap_or_default());
    }
    s.next = smp.token;
}
