//! Evaluation: greedy decoding on a set of tasks, scored by the verifiers, per domain.

use crate::generate::{generate, GenOptions, GenRequest};
use crate::sampling::SamplingParams;
use datasets::chat::Mode;
use datasets::progress::Progress;
use datasets::{Task, Tokenizer};
use model::Engine;
use rewards::agent::AgentEnv;
use serde::Serialize;
use std::collections::BTreeMap;

/// Accuracy and length per domain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EvalReport {
    pub mode: String,
    pub n: usize,
    /// Mean reward (= accuracy for 0/1 verifiers) by domain.
    pub by_domain: BTreeMap<String, f64>,
    /// Mean generated tokens by domain.
    pub mean_len: BTreeMap<String, f64>,
    /// Mean generated reasoning characters by domain (0 in non-think mode).
    pub mean_reasoning_chars: BTreeMap<String, f64>,
    pub accuracy: f64,
    /// The first responses of each domain (prompt text, response text, reward).
    pub examples: Vec<EvalExample>,
}

/// One scored response kept for inspection.
#[derive(Debug, Clone, Serialize)]
pub struct EvalExample {
    pub domain: String,
    pub prompt: String,
    pub response: String,
    pub reward: f32,
}

/// Greedy-decode every task in `mode` and score it.
pub fn evaluate(
    engine: &Engine,
    tok: &dyn Tokenizer,
    tasks: &[Task],
    mode: Mode,
    max_tokens: usize,
    keep_examples: usize,
    progress: &dyn Progress,
) -> model::Result<EvalReport> {
    let reqs: Vec<GenRequest> = tasks
        .iter()
        .map(|t| GenRequest {
            prompt_tokens: tok.encode(&t.prompt_text(mode)),
            n: 1,
            params: SamplingParams::greedy(max_tokens),
            mode,
            env: (t.verifier.get("kind").and_then(|k| k.as_str()) == Some("agent"))
                .then(|| AgentEnv::from_verifier(&t.verifier)),
            seed: 0,
        })
        .collect();
    let (samples, _) = generate(
        engine,
        tok,
        &reqs,
        &GenOptions { max_batch: 32, record_routing: false, record_indexer: false },
        progress,
    )?;
    let mut acc: BTreeMap<String, (f64, f64, f64, usize)> = BTreeMap::new();
    let mut examples = Vec::new();
    for (t, s) in tasks.iter().zip(&samples) {
        let s = &s[0];
        let r = rewards::score(t, &s.text, mode);
        if acc.get(&t.domain).map_or(0, |e| e.3) < keep_examples {
            examples.push(EvalExample {
                domain: t.domain.clone(),
                prompt: t.messages.last().map(|m| m.content.clone()).unwrap_or_default(),
                response: s.text.clone(),
                reward: r.value,
            });
        }
        let reasoning = datasets::chat::parse_reply(&s.text, mode).reasoning.map_or(0, |r| r.chars().count());
        let e = acc.entry(t.domain.clone()).or_default();
        e.0 += r.value as f64;
        e.1 += s.gen_mask.iter().filter(|&&g| g == 1).count() as f64;
        e.2 += reasoning as f64;
        e.3 += 1;
    }
    let mut rep = EvalReport { mode: mode.as_str().into(), n: tasks.len(), examples, ..Default::default() };
    let mut total = 0.0;
    for (d, (r, l, rc, n)) in acc {
        total += r;
        rep.by_domain.insert(d.clone(), r / n as f64);
        rep.mean_len.insert(d.clone(), l / n as f64);
        rep.mean_reasoning_chars.insert(d, rc / n as f64);
    }
    rep.accuracy = total / tasks.len().max(1) as f64;
    Ok(rep)
}
