//! Verifiers: `score(task, response, mode) -> Reward { value, detail }`, one per family,
//! deterministic, and safe on any input — garbage, huge or adversarial responses get reward 0
//! with a reason; nothing panics and nothing runs unbounded. A verifier that cannot run at all
//! (no python3, no sandbox) returns an *error* reward: value 0 with `detail.error` set
//! ([`Reward::error`]) and a one-time message on stderr, never a silent 0.
//!
//! | kind     | what is checked |
//! |----------|-----------------|
//! | `math`   | last `\boxed{}` (else `#### X`) of the final content ≡ answer ([`math`]) |
//! | `code`   | the program (TL, [`tl`]) passes every `(input, expected)` test |
//! | `python` | Python code passes the given asserts in a namespace sandbox ([`python`], [`sandbox`]) |
//! | `agent`  | the episode's tool calls replay correctly and the final answer is right ([`agent`]) |
//! | `if`     | every IFEval-style check passes (strict; loose reported) ([`instruct`]) |
//! | `exact`  | normalised text equality |

pub mod agent;
pub mod instruct;
pub mod math;
pub mod python;
pub mod sandbox;
pub mod shaping;
pub mod tl;

use datasets::chat::{parse_reply, Mode};
use datasets::Task;
use serde::Serialize;
use serde_json::{json, Value};

/// Responses longer than this are not scored (reward 0).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A verifier's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reward {
    pub value: f32,
    /// JSON detail: what was extracted, why it failed, ...
    pub detail: Value,
}

impl Reward {
    fn zero(reason: impl Into<String>) -> Self {
        Reward { value: 0.0, detail: json!({"correct": false, "reason": reason.into()}) }
    }
    /// The verifier could not run (e.g. the sandbox is unavailable): value 0 with the reason
    /// in `detail.error`, which callers should surface rather than train on.
    fn error(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| eprintln!("v4post rewards: verifier error (reward is not a real 0): {msg}"));
        Reward { value: 0.0, detail: json!({"correct": false, "error": msg, "reason": msg}) }
    }
    /// Why the verifier could not run, when it could not (see [`Reward::error`]).
    pub fn error_message(&self) -> Option<&str> {
        self.detail.get("error").and_then(Value::as_str)
    }
    /// Whether the task was solved (the part of the reward length shaping must not touch).
    pub fn correct(&self) -> bool {
        self.detail.get("correct").and_then(Value::as_bool).unwrap_or(self.value >= 1.0)
    }
}

/// `\boxed{}` (else GSM8K `#### X`) of `content` vs `gold` ([`math::extract_answer`]).
pub(crate) fn verify_math_content(content: &str, gold: &str) -> (f32, Value) {
    match math::extract_answer(content) {
        None => (0.0, json!({"correct": false, "reason": "no \\boxed{} (or ####) answer"})),
        Some(pred) => {
            let ok = math::equivalent(&pred, gold);
            (if ok { 1.0 } else { 0.0 }, json!({"correct": ok, "extracted": pred, "gold": gold}))
        }
    }
}

/// Program text of a code answer: the first fenced block if there is one, else all of it.
fn extract_code(content: &str) -> &str {
    if let Some(start) = content.find("```") {
        let after = &content[start + 3..];
        let body = after.split_once('\n').map_or(after, |(first, rest)| {
            if first.trim().chars().all(|c| c.is_alphanumeric()) {
                rest
            } else {
                after
            }
        });
        return body.find("```").map_or(body, |e| &body[..e]);
    }
    content
}

/// Evaluation steps for all the tests of one code response together (ten tests at the
/// per-test limit): a verifier with thousands of tests must not multiply the per-test
/// limit into seconds of interpreter time per response.
pub const CODE_RESPONSE_MAX_STEPS: u64 = 2_000_000;
/// List cells (peak per test, summed over the tests) for one code response.
pub const CODE_RESPONSE_MAX_CELLS: u64 = 1_000_000;

/// What is left of a response's budget; each test runs with the smaller of its own limits
/// and what is left.
struct CodeBudget {
    steps: u64,
    cells: u64,
}

impl CodeBudget {
    fn new() -> Self {
        CodeBudget { steps: CODE_RESPONSE_MAX_STEPS, cells: CODE_RESPONSE_MAX_CELLS }
    }

    fn limits_for_next(&self, per_test: &tl::Limits) -> tl::Limits {
        let cells = usize::try_from(self.cells).unwrap_or(usize::MAX);
        tl::Limits {
            max_steps: per_test.max_steps.min(self.steps),
            max_cells: per_test.max_cells.min(cells),
            ..*per_test
        }
    }

    fn charge(&mut self, u: tl::Usage) {
        self.steps = self.steps.saturating_sub(u.steps);
        self.cells = self.cells.saturating_sub(u.peak_cells as u64);
    }

    fn exhausted(&self) -> bool {
        self.steps == 0 || self.cells == 0
    }
}

fn verify_code(verifier: &Value, content: &str) -> Reward {
    let input = verifier.get("input").and_then(Value::as_str).unwrap_or("x");
    let Some(tests) = verifier.get("tests").and_then(Value::as_array) else {
        return Reward::zero("verifier has no `tests`");
    };
    let limits = tl::Limits::default();
    let prog = match tl::Program::parse(extract_code(content).trim(), &limits) {
        Ok(p) => p,
        Err(e) => {
            return Reward { value: 0.0, detail: json!({"correct": false, "reason": format!("does not parse: {e}")}) }
        }
    };
    let mut passed = 0;
    let mut first_failure = Value::Null;
    let mut budget = CodeBudget::new();
    for (run, t) in tests.iter().enumerate() {
        let (Some(x), Some(want)) = (t.get(0).and_then(Value::as_i64), t.get(1).and_then(Value::as_i64)) else {
            return Reward::zero("malformed test in verifier kwargs");
        };
        let (out, used) = prog.run_counted(&[(input, x)], &budget.limits_for_next(&limits));
        budget.charge(used);
        match out {
            Ok(tl::Value::Int(v)) if v == want => passed += 1,
            other => {
                if first_failure.is_null() {
                    first_failure = json!({"input": x, "expected": want, "got": format!("{other:?}")});
                }
            }
        }
        if budget.exhausted() && run + 1 < tests.len() {
            return code_budget_exhausted(passed, run + 1, tests.len(), first_failure);
        }
    }
    let ok = passed == tests.len() && !tests.is_empty();
    Reward {
        value: if ok { 1.0 } else { 0.0 },
        detail: json!({"correct": ok, "passed": passed, "total": tests.len(), "first_failure": first_failure}),
    }
}

/// Reward 0: the response used up its budget with tests left to run.
fn code_budget_exhausted(passed: usize, ran: usize, total: usize, first_failure: Value) -> Reward {
    let reason = format!(
        "budget exhausted after {ran} of {total} tests (at most {CODE_RESPONSE_MAX_STEPS} steps and \
         {CODE_RESPONSE_MAX_CELLS} list cells per response)"
    );
    Reward {
        value: 0.0,
        detail: json!({"correct": false, "reason": reason, "budget_exhausted": true, "passed": passed,
                       "ran": ran, "total": total, "first_failure": first_failure}),
    }
}

fn verify_python(verifier: &Value, content: &str) -> Reward {
    let tests = match verifier.get("tests") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"),
        _ => return Reward::zero("verifier has no `tests`"),
    };
    let mut limits = python::PyLimits::default();
    if let Some(t) = verifier.get("timeout_s").and_then(Value::as_f64) {
        limits.wall = std::time::Duration::from_secs_f64(t.clamp(0.1, 60.0));
        limits.cpu_seconds = t.ceil().clamp(1.0, 60.0) as u64;
    }
    match python::run_tests(extract_code(content), &tests, &limits) {
        Ok(o) => Reward {
            value: if o.passed { 1.0 } else { 0.0 },
            detail: json!({"correct": o.passed, "timed_out": o.timed_out, "exit_code": o.exit_code, "stderr": o.stderr_tail}),
        },
        Err(e) => Reward::error(e.to_string()),
    }
}

fn normalize_text(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Score a response to a task (the text generated after the prompt; for agent tasks the
/// whole episode with the inserted tool results).
pub fn score(task: &Task, response: &str, mode: Mode) -> Reward {
    score_with(&task.verifier, &task.answer, response, mode)
}

/// Score with explicit verifier kwargs and gold answer.
pub fn score_with(verifier: &Value, answer: &str, response: &str, mode: Mode) -> Reward {
    if response.len() > MAX_RESPONSE_BYTES {
        return Reward::zero(format!("response too long ({} bytes)", response.len()));
    }
    // Defence in depth: a verifier bug must cost one sample its reward, not the run.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| score_inner(verifier, answer, response, mode)));
    r.unwrap_or_else(|_| Reward::zero("verifier error"))
}

/// What a verifier family reads of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// The reply's final content (after the reasoning, trimmed).
    Content,
    /// The whole response as generated (an agent episode with its tool results).
    Episode,
}

/// One verifier family: its `kind` (the `verifier.kind` of a task), what it reads, and its
/// scoring function `(verifier kwargs, gold answer, text, mode) -> Reward`.
pub struct Verifier {
    pub kind: &'static str,
    pub reads: Reads,
    pub score: fn(&Value, &str, &str, Mode) -> Reward,
}

/// The verifier families. A new family is its module plus one row here (and its name in
/// `datasets::layouts::VERIFIER_KINDS`, which prompt files are checked against; a test keeps
/// the two lists equal).
pub const VERIFIERS: &[Verifier] = &[
    Verifier { kind: "math", reads: Reads::Content, score: score_math },
    Verifier { kind: "code", reads: Reads::Content, score: |v, _, text, _| verify_code(v, text) },
    Verifier { kind: "python", reads: Reads::Content, score: |v, _, text, _| verify_python(v, text) },
    Verifier { kind: "agent", reads: Reads::Episode, score: score_agent },
    Verifier { kind: "if", reads: Reads::Content, score: |v, _, text, _| score_instructions(v, text) },
    Verifier { kind: "exact", reads: Reads::Content, score: score_exact },
];

/// The family of `kind`.
pub fn verifier(kind: &str) -> Option<&'static Verifier> {
    VERIFIERS.iter().find(|v| v.kind == kind)
}

fn score_math(_: &Value, answer: &str, content: &str, _: Mode) -> Reward {
    let (value, detail) = verify_math_content(content, answer);
    Reward { value, detail }
}

fn score_agent(verifier: &Value, answer: &str, episode: &str, mode: Mode) -> Reward {
    let (value, detail) = agent::verify(verifier, answer, episode, mode);
    Reward { value, detail }
}

fn score_instructions(verifier: &Value, content: &str) -> Reward {
    match instruct::check_all(verifier.get("checks").unwrap_or(&Value::Null), content) {
        Ok(res) => {
            let loose = verifier.get("loose").and_then(Value::as_bool).unwrap_or(false);
            let ok = if loose { res.loose_all() } else { res.strict_all() };
            Reward {
                value: if ok { 1.0 } else { 0.0 },
                detail: json!({"correct": ok, "strict": res.strict, "loose": res.loose}),
            }
        }
        Err(e) => Reward::zero(format!("bad checks: {e}")),
    }
}

fn score_exact(_: &Value, answer: &str, content: &str, _: Mode) -> Reward {
    let ok = normalize_text(content) == normalize_text(answer);
    Reward { value: if ok { 1.0 } else { 0.0 }, detail: json!({"correct": ok}) }
}

fn score_inner(verifier_kwargs: &Value, answer: &str, response: &str, mode: Mode) -> Reward {
    let kind = verifier_kwargs.get("kind").and_then(Value::as_str).unwrap_or("math");
    let Some(v) = verifier(kind) else {
        return Reward::zero(format!("unknown verifier kind `{kind}`"));
    };
    if v.reads == Reads::Episode {
        return (v.score)(verifier_kwargs, answer, response, mode);
    }
    let reply = parse_reply(response, mode);
    if mode.thinking() && reply.errors.iter().any(|e| e.contains("reasoning")) && reply.content.is_empty() {
        return Reward::zero("no final answer (truncated inside the reasoning)");
    }
    let mut r = (v.score)(verifier_kwargs, answer, reply.content.trim(), mode);
    if let Some(o) = r.detail.as_object_mut() {
        o.insert("finished".into(), json!(reply.finished));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use datasets::tasks::{domains, sample, Split};

    /// Prompt files are checked against the datasets crate's list of kinds; every kind there
    /// has a family here and every family is listed there.
    #[test]
    fn the_registry_and_the_dataset_kinds_agree() {
        let kinds: Vec<&str> = VERIFIERS.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, datasets::layouts::VERIFIER_KINDS.to_vec());
        assert!(verifier("nope").is_none());
        let r = score_with(&json!({"kind": "nope"}), "1", "\\boxed{1}", Mode::NonThink);
        assert_eq!((r.value, r.detail["reason"].as_str()), (0.0, Some("unknown verifier kind `nope`")));
    }

    #[test]
    fn every_reference_solution_scores_one_in_every_mode() {
        for d in domains() {
            for t in sample(d.domain, Split::Train, 5, 20, None).unwrap() {
                for mode in Mode::ALL {
                    let text: String = t.reference_segments(mode).into_iter().map(|(s, _)| s).collect();
                    let r = score(&t, &text, mode);
                    assert_eq!(r.value, 1.0, "{} {mode}: {text:?} → {}", t.prompt_id, r.detail);
                }
            }
        }
    }

    #[test]
    fn wrong_or_malformed_answers_score_zero() {
        let t = &sample("math.add", Split::Train, 1, 1, None).unwrap()[0];
        assert_eq!(score(t, "\\boxed{-1}<｜end▁of▁sentence｜>", Mode::NonThink).value, 0.0);
        assert_eq!(score(t, "thinking forever", Mode::ThinkHigh).value, 0.0);
        let c = &sample("code.expr", Split::Train, 1, 1, None).unwrap()[0];
        assert_eq!(score(c, "while 1 { }<｜end▁of▁sentence｜>", Mode::NonThink).value, 0.0);
        let a = &sample("agent.lookup", Split::Train, 1, 1, None).unwrap()[0];
        let bad = "</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"rm\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>";
        let r = score(a, bad, Mode::ThinkHigh);
        assert_eq!(r.value, 0.0);
        assert!(r.detail["reason"].as_str().unwrap().contains("malformed"), "{}", r.detail);
        assert_eq!(score(a, &"x".repeat(MAX_RESPONSE_BYTES + 1), Mode::NonThink).value, 0.0);
    }

    fn code_verifier(n: i64) -> Value {
        json!({"kind": "code", "input": "x", "tests": (0..n).map(|i| json!([i, i])).collect::<Vec<_>>()})
    }

    /// The step limit is per test: 5000 tests of a program that spins must not cost 5000
    /// per-test limits (seconds); the response's total budget ends it with a clear reason.
    #[test]
    fn a_code_response_has_one_budget_for_all_its_tests() {
        let t = std::time::Instant::now();
        let r = score_with(&code_verifier(5000), "", "while 1 { }", Mode::NonThink);
        let took = t.elapsed();
        assert_eq!(r.value, 0.0);
        assert_eq!(r.detail["budget_exhausted"], true, "{}", r.detail);
        assert!(r.detail["reason"].as_str().unwrap().contains("budget exhausted"), "{}", r.detail);
        assert!(r.detail["ran"].as_u64().unwrap() < 5000, "{}", r.detail);
        assert!(took < std::time::Duration::from_secs(3), "5000 spinning tests took {took:?}");
        // list memory counts too: 40 000 cells a test exhausts 1M cells in 25 tests
        let hog = "l = []\ni = 0\nwhile i < 40000 { push(l, i); i = i + 1 }\nreturn x";
        let r = score_with(&code_verifier(5000), "", hog, Mode::NonThink);
        assert_eq!(r.detail["budget_exhausted"], true, "{}", r.detail);
        // a correct program with many cheap tests is unaffected
        let r = score_with(&code_verifier(5000), "", "return x", Mode::NonThink);
        assert_eq!(r.value, 1.0, "{}", r.detail);
        assert_eq!(r.detail["passed"], 5000);
    }

    #[test]
    fn the_code_budget_charges_steps_and_peak_cells() {
        let mut b = CodeBudget::new();
        let per = tl::Limits::default();
        assert_eq!(b.limits_for_next(&per).max_steps, per.max_steps);
        b.charge(tl::Usage { steps: CODE_RESPONSE_MAX_STEPS - 10, peak_cells: 0 });
        assert_eq!(b.limits_for_next(&per).max_steps, 10);
        assert!(!b.exhausted());
        b.charge(tl::Usage { steps: 0, peak_cells: CODE_RESPONSE_MAX_CELLS as usize });
        assert!(b.exhausted());
        let p = tl::Program::parse("l = [1, 2, 3]\npush(l, 4)\nreturn len(l)", &per).unwrap();
        let (v, u) = p.run_counted(&[], &per);
        assert_eq!(v, Ok(tl::Value::Int(4)));
        assert_eq!(u.peak_cells, 4);
        assert!(u.steps > 0);
    }
}
