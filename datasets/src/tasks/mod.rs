//! The built-in task suite: procedural, deterministic prompts with verifiable answers.
//!
//! Every task is a pure function of `(domain, split, seed, index, difficulty)`. A prompt
//! belongs to exactly one split (by a hash of its messages), so the train and eval splits
//! never share a prompt. Tasks carry a reference solution (short and
//! long reasoning, final content, tool steps) that pre-training and SFT learn from, and the
//! verifier kwargs that `rewards` scores with.

mod agent;
mod code;
mod difficulty;
mod instruct;
mod math;

use crate::chat::{encode_messages, render_reply, render_tool_results, Message, Mode, ToolCall};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use difficulty::{Difficulty, Levels};

/// Train or eval split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Eval,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "eval" | "test" => Ok(Split::Eval),
            o => Err(format!("unknown split `{o}` (train or eval)")),
        }
    }
}

/// One tool-using step of a reference solution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RefStep {
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub results: Vec<String>,
}

/// A correct solution, used to build pre-training and SFT data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Reference {
    /// Think High reasoning.
    pub short_reasoning: String,
    /// Think Max reasoning: every intermediate step written out.
    pub long_reasoning: String,
    /// Final answer text.
    pub content: String,
    /// Tool-calling turns before the final answer (agent family).
    pub steps: Vec<RefStep>,
}

/// One prompt of the suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub prompt_id: String,
    pub domain: String,
    pub family: String,
    pub split: Split,
    pub difficulty: u32,
    pub messages: Vec<Message>,
    /// Gold answer (math value, expected text, ...).
    pub answer: String,
    /// Verifier kwargs, `{"kind": "math" | "code" | "agent" | "if", ...}`.
    pub verifier: Value,
    pub reference: Reference,
}

impl Task {
    /// The prompt text in `mode` (ends with the assistant prefix).
    pub fn prompt_text(&self, mode: Mode) -> String {
        encode_messages(&self.messages, mode)
    }

    /// The reference solution as the stream a rollout produces after the prompt, as
    /// `(text, generated)` segments: tool results are inserted by the environment
    /// (`generated = false`) and are not trained on. Think Max uses the long reasoning,
    /// Think High the short one, Non-think none.
    pub fn reference_segments(&self, mode: Mode) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for step in &self.reference.steps {
            out.push((render_reply(Some(&step.reasoning), "", &step.tool_calls, mode), true));
            out.push((render_tool_results(&step.results, mode), false));
        }
        let reasoning = match mode {
            Mode::NonThink => None,
            Mode::ThinkHigh => Some(self.reference.short_reasoning.as_str()),
            Mode::ThinkMax => Some(self.reference.long_reasoning.as_str()),
        };
        out.push((render_reply(reasoning, &self.reference.content, &[], mode), true));
        out
    }

    /// The full reference conversation (prompt + solution) in `mode`, as messages.
    /// Think Max uses the long reasoning, Think High the short one, Non-think none.
    pub fn reference_messages(&self, mode: Mode) -> Vec<Message> {
        let mut m = self.messages.clone();
        for step in &self.reference.steps {
            let r = mode.thinking().then(|| step.reasoning.clone());
            m.push(Message::assistant(r, "", step.tool_calls.clone()));
            for res in &step.results {
                m.push(Message::tool(res.clone()));
            }
        }
        let final_reasoning = match mode {
            Mode::NonThink => None,
            Mode::ThinkHigh => Some(self.reference.short_reasoning.clone()),
            Mode::ThinkMax => Some(self.reference.long_reasoning.clone()),
        };
        m.push(Message::assistant(final_reasoning, self.reference.content.clone(), vec![]));
        m
    }
}

/// Static description of a domain.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DomainInfo {
    pub domain: &'static str,
    pub family: &'static str,
    pub description: &'static str,
    /// Difficulty used when none is given (1..=5).
    pub default_difficulty: u32,
    #[serde(skip)]
    generate: fn(&mut Pcg, u32) -> Instance,
}

/// What a domain generator produces (before split/id bookkeeping).
pub(crate) struct Instance {
    pub messages: Vec<Message>,
    pub answer: String,
    pub verifier: Value,
    pub reference: Reference,
}

/// Small deterministic generator (PCG-XSH-RR 32), stable across platforms and versions.
pub struct Pcg {
    state: u64,
}

impl Pcg {
    pub fn new(seed: u64) -> Self {
        let mut p = Pcg { state: seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) };
        p.next_u32();
        p
    }
    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }
    /// Uniform integer in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo + 1).max(1) as u64;
        lo + ((self.next_u32() as u64 * span) >> 32) as i64
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.range(0, xs.len() as i64 - 1) as usize]
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.next_u32() as f64 / 4294967296.0
    }
}

/// FNV-1a 64 of a string (stable hashing for splits and ids).
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Split a problem key belongs to: one in five problems is held out for evaluation.
pub fn split_of(domain: &str, key: &str) -> Split {
    if fnv1a(&format!("{domain}\u{1}{key}")) % 5 == 0 {
        Split::Eval
    } else {
        Split::Train
    }
}

static DOMAINS: &[DomainInfo] = &[
    DomainInfo {
        domain: "math.add",
        family: "math",
        description: "integer addition with a \\boxed{} answer",
        default_difficulty: 2,
        generate: math::add,
    },
    DomainInfo {
        domain: "math.sub",
        family: "math",
        description: "integer subtraction (results may be negative)",
        default_difficulty: 2,
        generate: math::sub,
    },
    DomainInfo {
        domain: "math.mul",
        family: "math",
        description: "multiplication by a one-digit number",
        default_difficulty: 2,
        generate: math::mul,
    },
    DomainInfo {
        domain: "math.linear",
        family: "math",
        description: "solve a*x + b = c for integer x",
        default_difficulty: 2,
        generate: math::linear,
    },
    DomainInfo {
        domain: "code.expr",
        family: "code",
        description: "write an arithmetic program in x from a verbal description",
        default_difficulty: 2,
        generate: code::expr,
    },
    DomainInfo {
        domain: "code.cond",
        family: "code",
        description: "write a program with min/max/abs/conditionals",
        default_difficulty: 2,
        generate: code::cond,
    },
    DomainInfo {
        domain: "code.loop",
        family: "code",
        description: "write a while-loop program (sums, products, counts)",
        default_difficulty: 2,
        generate: code::looped,
    },
    DomainInfo {
        domain: "agent.calc",
        family: "agent",
        description: "call the calculator tool, report its result",
        default_difficulty: 2,
        generate: agent::calc,
    },
    DomainInfo {
        domain: "agent.lookup",
        family: "agent",
        description: "look a key up with the key-value tool",
        default_difficulty: 2,
        generate: agent::lookup,
    },
    DomainInfo {
        domain: "agent.chain",
        family: "agent",
        description: "look a value up, then add a number to it with the calculator",
        default_difficulty: 2,
        generate: agent::chain,
    },
    DomainInfo {
        domain: "if.upper",
        family: "if",
        description: "write a phrase in capital letters only",
        default_difficulty: 2,
        generate: instruct::upper,
    },
    DomainInfo {
        domain: "if.repeat",
        family: "if",
        description: "repeat a word an exact number of times",
        default_difficulty: 2,
        generate: instruct::repeat,
    },
    DomainInfo {
        domain: "if.json",
        family: "if",
        description: "reply with a JSON object with a given key and value",
        default_difficulty: 2,
        generate: instruct::json,
    },
];

/// Every built-in domain.
pub fn domains() -> &'static [DomainInfo] {
    DOMAINS
}

pub fn domain_info(name: &str) -> Option<&'static DomainInfo> {
    DOMAINS.iter().find(|d| d.domain == name)
}

/// Domains matching a comma-separated list of names or `family.*` / `*` patterns.
/// Whether `domain` matches a comma-separated pattern list: `*`/`all`, `prefix*`, or exact
/// names (works for any domain name, built-in or from a user dataset).
pub fn domain_matches(patterns: &str, domain: &str) -> bool {
    patterns.split(',').map(str::trim).filter(|p| !p.is_empty()).any(|p| match p {
        "*" | "all" => true,
        p => match p.strip_suffix('*') {
            Some(prefix) => domain.starts_with(prefix),
            None => p == domain,
        },
    })
}

pub fn match_domains(pattern: &str) -> crate::error::Result<Vec<&'static DomainInfo>> {
    let mut out: Vec<&'static DomainInfo> = Vec::new();
    for p in pattern.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let hits: Vec<&DomainInfo> = if p == "*" || p == "all" {
            DOMAINS.iter().collect()
        } else if let Some(prefix) = p.strip_suffix('*') {
            DOMAINS.iter().filter(|d| d.domain.starts_with(prefix)).collect()
        } else {
            DOMAINS.iter().filter(|d| d.domain == p).collect()
        };
        if hits.is_empty() {
            return Err(crate::error::DataError::UnknownDomain(p.to_string()));
        }
        for h in hits {
            if !out.iter().any(|d| d.domain == h.domain) {
                out.push(h);
            }
        }
    }
    if out.is_empty() {
        return Err(crate::error::DataError::UnknownDomain(pattern.to_string()));
    }
    Ok(out)
}

/// Task `index` of `(domain, split, seed)` at `difficulty` (None → the domain default).
pub fn generate(
    domain: &str,
    split: Split,
    seed: u64,
    index: u64,
    difficulty: Option<u32>,
) -> crate::error::Result<Task> {
    let info = domain_info(domain).ok_or_else(|| crate::error::DataError::UnknownDomain(domain.to_string()))?;
    let difficulty = difficulty.unwrap_or(info.default_difficulty).clamp(1, 5);
    let mut rng = Pcg::new(fnv1a(&format!("{domain}/{}/{seed}/{index}/{difficulty}", split.as_str())));
    // Draw until the problem falls in the requested split (≈1.25 draws for train, 5 for eval).
    // Tiny problem spaces could contain no eval problem at all: give up after many draws.
    for _ in 0..10_000 {
        let inst = (info.generate)(&mut rng, difficulty);
        // The prompt itself is the problem's identity: splits can never share a prompt.
        let key: String = inst.messages.iter().map(|m| format!("{}\u{2}{}\u{3}", m.role, m.content)).collect();
        if split_of(domain, &key) == split {
            return Ok(Task {
                prompt_id: format!("{domain}/{}/{seed}/{index}/d{difficulty}", split.as_str()),
                domain: domain.to_string(),
                family: info.family.to_string(),
                split,
                difficulty,
                messages: inst.messages,
                answer: inst.answer,
                verifier: inst.verifier,
                reference: inst.reference,
            });
        }
    }
    Err(crate::error::DataError::Format(format!(
        "domain {domain} at difficulty {difficulty} has no problem in split {}",
        split.as_str()
    )))
}

/// `n` tasks of `(domain, split, seed)`, indices `0..n`.
pub fn sample(
    domain: &str,
    split: Split,
    seed: u64,
    n: usize,
    difficulty: Option<u32>,
) -> crate::error::Result<Vec<Task>> {
    sample_with(domain, split, seed, n, &Difficulty::uniform(difficulty))
}

/// `n` tasks of `(domain, split, seed)`, indices `0..n`, each at its level of `difficulty`.
pub fn sample_with(
    domain: &str,
    split: Split,
    seed: u64,
    n: usize,
    difficulty: &Difficulty,
) -> crate::error::Result<Vec<Task>> {
    (0..n as u64).map(|i| generate(domain, split, seed, i, difficulty.for_prompt(domain, i))).collect()
}

/// [`sample_with`] as a lazy iterator: tasks are generated one at a time, so `n` may be far
/// larger than memory (`tasks sample --n 100000000000`).
pub fn sample_iter<'a>(
    domain: &'a str,
    split: Split,
    seed: u64,
    n: u64,
    difficulty: &'a Difficulty,
) -> impl Iterator<Item = crate::error::Result<Task>> + 'a {
    (0..n).map(move |i| generate(domain, split, seed, i, difficulty.for_prompt(domain, i)))
}

/// Number words used in verbal descriptions.
pub(crate) const NUMBER_WORDS: [&str; 11] =
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn at_least_twelve_domains_two_per_family() {
        assert!(domains().len() >= 12);
        for fam in ["math", "code", "agent", "if"] {
            assert!(domains().iter().filter(|d| d.family == fam).count() >= 2, "{fam}");
        }
        assert_eq!(match_domains("math.*").unwrap().len(), 4);
        assert_eq!(match_domains("*").unwrap().len(), domains().len());
        assert!(match_domains("nope.*").is_err());
    }

    #[test]
    fn deterministic_and_split_disjoint() {
        for d in domains() {
            let a = sample(d.domain, Split::Train, 7, 50, None).unwrap();
            let b = sample(d.domain, Split::Train, 7, 50, None).unwrap();
            assert_eq!(a, b, "{}", d.domain);
            let eval = sample(d.domain, Split::Eval, 7, 50, None).unwrap();
            let train_prompts: HashSet<String> = sample(d.domain, Split::Train, 1, 300, None)
                .unwrap()
                .iter()
                .map(|t| t.prompt_text(Mode::NonThink))
                .collect();
            for e in &eval {
                assert!(!train_prompts.contains(&e.prompt_text(Mode::NonThink)), "{}: eval prompt in train", d.domain);
            }
        }
    }

    #[test]
    fn difficulty_changes_problems() {
        let easy = sample("math.add", Split::Train, 1, 20, Some(1)).unwrap();
        let hard = sample("math.add", Split::Train, 1, 20, Some(5)).unwrap();
        let len = |ts: &[Task]| ts.iter().map(|t| t.answer.len()).sum::<usize>();
        assert!(len(&hard) > len(&easy));
    }
}
