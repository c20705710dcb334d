//! The agent environment (deterministic tools) and the agent verifier.
//!
//! Tools: `calculator(expression)` — integer arithmetic evaluated by the TL interpreter with
//! tight limits; `lookup(key)` — the task's table. During rollout the engine hands each
//! finished assistant turn to [`AgentEnv::respond`], which runs its DSML tool calls and returns
//! the text to insert (tool results, then the assistant prefix again). The verifier replays the
//! whole episode: malformed calls score 0, the final `\boxed{}` answer decides the reward.

use crate::tl;
use datasets::chat::{parse_reply, render_tool_results, Mode, ParsedReply, ToolCall};
use datasets::tokenizer::{ASSISTANT, THINK_END, THINK_START, USER};
use serde_json::{json, Map, Value};

/// Maximum assistant turns in one episode.
pub const MAX_TURNS: usize = 6;

/// Tools of one task.
#[derive(Debug, Clone, Default)]
pub struct AgentEnv {
    pub tools: Vec<String>,
    pub table: Map<String, Value>,
}

/// Why a call could not be executed as written.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// Not a valid call (unknown tool, missing or mistyped argument): the episode scores 0.
    Malformed(String),
}

impl AgentEnv {
    /// From verifier kwargs `{"tools": [...], "env": {"table": {...}}}`.
    pub fn from_verifier(v: &Value) -> Self {
        let tools = v
            .get("tools")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let table = v.get("env").and_then(|e| e.get("table")).and_then(Value::as_object).cloned().unwrap_or_default();
        AgentEnv { tools, table }
    }

    /// Execute one call; `Ok` is the tool's answer (which may itself report an error).
    pub fn call(&self, c: &ToolCall) -> Result<String, CallError> {
        if !self.tools.iter().any(|t| t == &c.name) {
            return Err(CallError::Malformed(format!("unknown tool `{}`", c.name)));
        }
        let arg = |k: &str| -> Result<String, CallError> {
            match c.arguments.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(_) => Err(CallError::Malformed(format!("`{}`: argument `{k}` must be a string", c.name))),
                None => Err(CallError::Malformed(format!("`{}`: missing argument `{k}`", c.name))),
            }
        };
        if let Some(extra) = c.arguments.keys().find(|k| !["expression", "key"].contains(&k.as_str())) {
            return Err(CallError::Malformed(format!("`{}`: unexpected argument `{extra}`", c.name)));
        }
        match c.name.as_str() {
            "calculator" => {
                let expr = arg("expression")?;
                let limits = tl::Limits { max_steps: 10_000, max_cells: 0, max_depth: 32, max_source: 256 };
                if expr.contains('=') || expr.contains('{') || expr.contains('[') {
                    return Ok("error: not an arithmetic expression".into());
                }
                Ok(match tl::Program::parse(&format!("return {expr}"), &limits).and_then(|p| p.run(&[], &limits)) {
                    Ok(tl::Value::Int(v)) => v.to_string(),
                    Ok(_) => "error: not a number".into(),
                    Err(e) => format!("error: {e}"),
                })
            }
            "lookup" => {
                let key = arg("key")?;
                Ok(match self.table.get(&key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => format!("error: no value stored under '{key}'"),
                })
            }
            other => Err(CallError::Malformed(format!("tool `{other}` has no implementation"))),
        }
    }

    /// After a finished assistant turn: the text to insert (tool results + assistant prefix)
    /// when it called tools correctly, `None` when the episode is over (final answer, or a
    /// malformed call that ends it).
    pub fn respond(&self, reply: &ParsedReply, mode: Mode) -> Option<String> {
        if reply.tool_calls.is_empty() || !reply.errors.is_empty() {
            return None;
        }
        let mut results = Vec::with_capacity(reply.tool_calls.len());
        for c in &reply.tool_calls {
            match self.call(c) {
                Ok(r) => results.push(r),
                Err(_) => return None,
            }
        }
        Some(render_tool_results(&results, mode))
    }
}

/// An episode's text split into assistant replies and the tool-result text inserted after each.
pub fn split_episode(text: &str) -> (Vec<String>, Vec<String>) {
    let mut replies = Vec::new();
    let mut inserted = Vec::new();
    let mut rest = text;
    loop {
        match rest.find(USER) {
            None => {
                replies.push(rest.to_string());
                return (replies, inserted);
            }
            Some(p) => {
                replies.push(rest[..p].to_string());
                let after = &rest[p + USER.len()..];
                match after.find(ASSISTANT) {
                    None => {
                        inserted.push(after.to_string());
                        return (replies, inserted);
                    }
                    Some(q) => {
                        inserted.push(after[..q].to_string());
                        let next = &after[q + ASSISTANT.len()..];
                        rest = next.strip_prefix(THINK_START).or_else(|| next.strip_prefix(THINK_END)).unwrap_or(next);
                    }
                }
            }
        }
    }
}

/// Score an agent episode: `(reward, detail)`.
pub fn verify(verifier: &Value, gold: &str, text: &str, mode: Mode) -> (f32, Value) {
    let env = AgentEnv::from_verifier(verifier);
    let (replies, inserted) = split_episode(text);
    if replies.len() > MAX_TURNS + 1 {
        return (0.0, json!({"correct": false, "reason": format!("{} turns (max {MAX_TURNS})", replies.len())}));
    }
    let mut calls = 0;
    for (i, r) in replies.iter().enumerate() {
        let p = parse_reply(r, mode);
        let last = i + 1 == replies.len();
        if !p.errors.is_empty() && (!last || !p.tool_calls.is_empty() || r.contains("DSML")) {
            return (
                0.0,
                json!({"correct": false, "reason": format!("malformed turn {}: {}", i + 1, p.errors.join("; ")), "tool_calls": calls}),
            );
        }
        if !last {
            if p.tool_calls.is_empty() {
                return (
                    0.0,
                    json!({"correct": false, "reason": format!("turn {} has no tool call but the episode continued", i + 1)}),
                );
            }
            let mut results = Vec::new();
            for c in &p.tool_calls {
                match env.call(c) {
                    Ok(res) => results.push(res),
                    Err(CallError::Malformed(m)) => {
                        return (
                            0.0,
                            json!({"correct": false, "reason": format!("malformed call: {m}"), "tool_calls": calls}),
                        )
                    }
                }
                calls += 1;
            }
            let expected = render_tool_results(&results, mode);
            let got = format!("{USER}{}{ASSISTANT}", inserted.get(i).map(String::as_str).unwrap_or(""));
            if !expected.starts_with(&got) {
                return (
                    0.0,
                    json!({"correct": false, "reason": format!("tool results of turn {} do not match a replay", i + 1)}),
                );
            }
        } else {
            if !p.tool_calls.is_empty() {
                if let Some(Err(CallError::Malformed(m))) =
                    p.tool_calls.iter().map(|c| env.call(c)).find(Result::is_err)
                {
                    return (
                        0.0,
                        json!({"correct": false, "reason": format!("malformed call: {m}"), "tool_calls": calls}),
                    );
                }
                return (
                    0.0,
                    json!({"correct": false, "reason": "episode ended on a tool call without a final answer", "tool_calls": calls}),
                );
            }
            let (value, mut detail) = crate::verify_math_content(&p.content, gold);
            if let Some(o) = detail.as_object_mut() {
                o.insert("tool_calls".into(), json!(calls));
                o.insert("turns".into(), json!(replies.len()));
            }
            return (value, detail);
        }
    }
    (0.0, json!({"correct": false, "reason": "empty episode"}))
}
