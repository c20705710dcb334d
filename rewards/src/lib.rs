//! Verifiers: `score(task, response, mode) -> Reward { value, detail }`, one per family,
//! deterministic, and safe on any input — garbage, huge or adversarial responses get reward 0
//! with a reason; nothing panics and nothing runs unbounded.
//!
//! | kind     | what is checked |
//! |----------|-----------------|
//! | `math`   | last `\boxed{}` of the final content ≡ answer ([`math`]) |
//! | `code`   | the program (TL, [`tl`]) passes every `(input, expected)` test |
//! | `python` | Python code passes the given asserts in a sandboxed child process ([`python`]) |
//! | `agent`  | the episode's tool calls replay correctly and the final answer is right ([`agent`]) |
//! | `if`     | every IFEval-style check passes (strict; loose reported) ([`instruct`]) |
//! | `exact`  | normalised text equality |

pub mod agent;
pub mod instruct;
pub mod math;
pub mod python;
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
    /// Whether the task was solved (the part of the reward length shaping must not touch).
    pub fn correct(&self) -> bool {
        self.detail.get("correct").and_then(Value::as_bool).unwrap_or(self.value >= 1.0)
    }
}

/// `\boxed{}` of `content` vs `gold`.
pub(crate) fn verify_math_content(content: &str, gold: &str) -> (f32, Value) {
    match math::last_boxed(content) {
        None => (0.0, json!({"correct": false, "reason": "no \\boxed{} answer"})),
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
    for t in tests {
        let (Some(x), Some(want)) = (t.get(0).and_then(Value::as_i64), t.get(1).and_then(Value::as_i64)) else {
            return Reward::zero("malformed test in verifier kwargs");
        };
        match prog.run(&[(input, x)], &limits) {
            Ok(tl::Value::Int(v)) if v == want => passed += 1,
            other => {
                if first_failure.is_null() {
                    first_failure = json!({"input": x, "expected": want, "got": format!("{other:?}")});
                }
            }
        }
    }
    let ok = passed == tests.len() && !tests.is_empty();
    Reward {
        value: if ok { 1.0 } else { 0.0 },
        detail: json!({"correct": ok, "passed": passed, "total": tests.len(), "first_failure": first_failure}),
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
        Err(e) => Reward::zero(e),
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

fn score_inner(verifier: &Value, answer: &str, response: &str, mode: Mode) -> Reward {
    let kind = verifier.get("kind").and_then(Value::as_str).unwrap_or("math");
    if kind == "agent" {
        let (value, detail) = agent::verify(verifier, answer, response, mode);
        return Reward { value, detail };
    }
    let reply = parse_reply(response, mode);
    if mode.thinking() && reply.errors.iter().any(|e| e.contains("reasoning")) && reply.content.is_empty() {
        return Reward::zero("no final answer (truncated inside the reasoning)");
    }
    let content = reply.content.trim();
    let mut r = match kind {
        "math" => {
            let (value, detail) = verify_math_content(content, answer);
            Reward { value, detail }
        }
        "code" => verify_code(verifier, content),
        "python" => verify_python(verifier, content),
        "if" => match instruct::check_all(verifier.get("checks").unwrap_or(&Value::Null), content) {
            Ok(res) => {
                let loose = verifier.get("loose").and_then(Value::as_bool).unwrap_or(false);
                let ok = if loose { res.loose_all() } else { res.strict_all() };
                Reward {
                    value: if ok { 1.0 } else { 0.0 },
                    detail: json!({"correct": ok, "strict": res.strict, "loose": res.loose}),
                }
            }
            Err(e) => Reward::zero(format!("bad checks: {e}")),
        },
        "exact" => {
            let ok = normalize_text(content) == normalize_text(answer);
            Reward { value: if ok { 1.0 } else { 0.0 }, detail: json!({"correct": ok}) }
        }
        other => Reward::zero(format!("unknown verifier kind `{other}`")),
    };
    if let Some(o) = r.detail.as_object_mut() {
        o.insert("finished".into(), json!(reply.finished));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use datasets::tasks::{domains, sample, Split};

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
}
