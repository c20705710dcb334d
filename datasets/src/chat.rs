//! The DeepSeek-V4 chat encoding (`encoding/encoding_dsv4.py`, see
//! `shared/reference/v4-architecture.md` §9) and its inverse for generated text.
//!
//! * Non-think: `<｜Assistant｜></think>`; Think High: `<｜Assistant｜><think>`; Think Max: Think
//!   High plus the "Reasoning Effort" paragraph at the very start of message 0.
//! * There is no `tool` role in the rendered text: tool results are merged into the next user
//!   turn as `<tool_result>…</tool_result>` blocks; tool calls are DSML blocks at the end of an
//!   assistant turn. When any message carries tools, earlier reasoning is kept (drop_thinking off).

use crate::tokenizer::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The Think Max system prefix, verbatim from `encoding_dsv4.py` (`REASONING_EFFORT_MAX`).
pub const THINK_MAX_PREFIX: &str = "Reasoning Effort: Absolute maximum with no shortcuts permitted.\nYou MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\nExplicitly write out your entire deliberation process, documenting every intermediate step, considered alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

/// Reasoning mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[serde(alias = "chat")]
    NonThink,
    #[serde(alias = "thinking", alias = "high")]
    ThinkHigh,
    #[serde(alias = "max")]
    ThinkMax,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::NonThink, Mode::ThinkHigh, Mode::ThinkMax];
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::NonThink => "non_think",
            Mode::ThinkHigh => "think_high",
            Mode::ThinkMax => "think_max",
        }
    }
    pub fn thinking(self) -> bool {
        self != Mode::NonThink
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "non_think" | "chat" => Ok(Mode::NonThink),
            "think_high" | "thinking" | "high" => Ok(Mode::ThinkHigh),
            "think_max" | "max" => Ok(Mode::ThinkMax),
            o => Err(format!("unknown mode `{o}` (non_think, think_high, think_max)")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tool invocation: name and JSON arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// A tool available to the model (`{"name", "description", "parameters"}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSchema {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub parameters: Value,
}

/// One chat message (OpenAI-style roles: system, user, assistant, tool, developer, latest_reminder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSchema>,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into(), ..Default::default() }
    }
    pub fn system(c: impl Into<String>) -> Self {
        Self::new("system", c)
    }
    pub fn user(c: impl Into<String>) -> Self {
        Self::new("user", c)
    }
    pub fn tool(c: impl Into<String>) -> Self {
        Self::new("tool", c)
    }
    pub fn assistant(reasoning: Option<String>, content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Message {
            role: "assistant".into(),
            content: content.into(),
            reasoning_content: reasoning,
            tool_calls,
            tools: vec![],
        }
    }
}

const TOOLS_TEMPLATE_HEAD: &str = "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can invoke tools by writing a \"<｜DSML｜tool_calls>\" block like the following:\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"$TOOL_NAME\">\n<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter>\n...\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"$TOOL_NAME2\">\n...\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>\n\nString parameters should be specified as is and set `string=\"true\"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\nIf thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside <think>...</think> BEFORE any tool calls or final response.\n\nOtherwise, output directly after </think> with tool calls or final response.\n\n### Available Tool Schemas\n\n";
const TOOLS_TEMPLATE_TAIL: &str =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";

fn render_tools(tools: &[ToolSchema]) -> String {
    let schemas: Vec<String> = tools.iter().map(|t| serde_json::to_string(t).unwrap_or_default()).collect();
    format!("{TOOLS_TEMPLATE_HEAD}{}{TOOLS_TEMPLATE_TAIL}", schemas.join("\n"))
}

/// DSML block of an assistant turn's tool calls (without the leading blank line).
pub fn render_tool_calls(calls: &[ToolCall]) -> String {
    let invokes: Vec<String> = calls
        .iter()
        .map(|c| {
            let params: Vec<String> = c
                .arguments
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => {
                        format!("{PARAM_START} name=\"{k}\" string=\"true\">{s}{PARAM_END}")
                    }
                    other => {
                        format!("{PARAM_START} name=\"{k}\" string=\"false\">{other}{PARAM_END}")
                    }
                })
                .collect();
            format!("{INVOKE_START} name=\"{}\">\n{}\n{INVOKE_END}", c.name, params.join("\n"))
        })
        .collect();
    format!("{TOOL_CALLS_START}\n{}\n{TOOL_CALLS_END}", invokes.join("\n"))
}

/// Internal form: tool messages merged into user turns.
#[derive(Debug, Clone)]
struct Turn {
    role: String,
    /// user: text and tool-result blocks in order; others: one text block.
    blocks: Vec<(bool, String)>,
    reasoning: Option<String>,
    tool_calls: Vec<ToolCall>,
    tools: Vec<ToolSchema>,
}

fn merge_tool_messages(messages: &[Message]) -> Vec<Turn> {
    let mut out: Vec<Turn> = Vec::new();
    for m in messages {
        match m.role.as_str() {
            "tool" => match out.last_mut() {
                Some(t) if t.role == "user" => t.blocks.push((true, m.content.clone())),
                _ => out.push(Turn {
                    role: "user".into(),
                    blocks: vec![(true, m.content.clone())],
                    reasoning: None,
                    tool_calls: vec![],
                    tools: vec![],
                }),
            },
            "user" => match out.last_mut() {
                // a user message right after tool results joins their turn
                Some(t) if t.role == "user" && t.blocks.iter().any(|b| b.0) => {
                    t.blocks.push((false, m.content.clone()))
                }
                _ => out.push(Turn {
                    role: "user".into(),
                    blocks: vec![(false, m.content.clone())],
                    reasoning: None,
                    tool_calls: vec![],
                    tools: m.tools.clone(),
                }),
            },
            _ => out.push(Turn {
                role: m.role.clone(),
                blocks: vec![(false, m.content.clone())],
                reasoning: m.reasoning_content.clone(),
                tool_calls: m.tool_calls.clone(),
                tools: m.tools.clone(),
            }),
        }
    }
    out
}

/// Render messages as V4 prompt text. When the last message is a user turn, the text ends
/// with the assistant prefix of `mode` (the generation prompt).
pub fn encode_messages(messages: &[Message], mode: Mode) -> String {
    let thinking = mode.thinking();
    let mut turns = merge_tool_messages(messages);
    let has_tools = turns.iter().any(|t| !t.tools.is_empty());
    let drop_thinking = !has_tools;
    let last_user = |ts: &[Turn]| ts.iter().rposition(|t| t.role == "user" || t.role == "developer");
    if thinking && drop_thinking {
        let lu = last_user(&turns).unwrap_or(0);
        let mut kept = Vec::new();
        for (i, mut t) in turns.into_iter().enumerate() {
            if i >= lu || ["user", "system", "latest_reminder"].contains(&t.role.as_str()) {
                kept.push(t);
            } else if t.role == "assistant" {
                t.reasoning = None;
                kept.push(t);
            }
        }
        turns = kept;
    }
    let lu = last_user(&turns);
    let mut out = String::from(BOS);
    for (i, t) in turns.iter().enumerate() {
        if i == 0 && mode == Mode::ThinkMax {
            out.push_str(THINK_MAX_PREFIX);
        }
        match t.role.as_str() {
            "system" => {
                out.push_str(&t.blocks[0].1);
                if !t.tools.is_empty() {
                    out.push_str("\n\n");
                    out.push_str(&render_tools(&t.tools));
                }
            }
            "developer" => {
                out.push_str(USER);
                out.push_str(&t.blocks[0].1);
                if !t.tools.is_empty() {
                    out.push_str("\n\n");
                    out.push_str(&render_tools(&t.tools));
                }
            }
            "user" => {
                out.push_str(USER);
                let parts: Vec<String> =
                    t.blocks
                        .iter()
                        .map(|(is_tool, text)| {
                            if *is_tool {
                                format!("{TOOL_RESULT_START}{text}{TOOL_RESULT_END}")
                            } else {
                                text.clone()
                            }
                        })
                        .collect();
                out.push_str(&parts.join("\n\n"));
            }
            "latest_reminder" => {
                out.push_str(LATEST_REMINDER);
                out.push_str(&t.blocks[0].1);
            }
            "assistant" => {
                if thinking && (!drop_thinking || lu.is_none_or(|lu| i > lu)) {
                    out.push_str(t.reasoning.as_deref().unwrap_or(""));
                    out.push_str(THINK_END);
                }
                out.push_str(&t.blocks[0].1);
                if !t.tool_calls.is_empty() {
                    out.push_str("\n\n");
                    out.push_str(&render_tool_calls(&t.tool_calls));
                }
                out.push_str(EOS);
            }
            _ => out.push_str(&t.blocks[0].1),
        }
        let next_is_reply = turns.get(i + 1).is_none_or(|n| n.role == "assistant" || n.role == "latest_reminder");
        if next_is_reply && (t.role == "user" || t.role == "developer") {
            out.push_str(ASSISTANT);
            let think_here = thinking && (!drop_thinking || lu.is_some_and(|lu| i >= lu));
            out.push_str(if think_here { THINK_START } else { THINK_END });
        }
    }
    out
}

/// The assistant reply text that follows a generation prompt in `mode`.
pub fn render_reply(reasoning: Option<&str>, content: &str, tool_calls: &[ToolCall], mode: Mode) -> String {
    let mut s = String::new();
    if mode.thinking() {
        s.push_str(reasoning.unwrap_or(""));
        s.push_str(THINK_END);
    }
    s.push_str(content);
    if !tool_calls.is_empty() {
        s.push_str("\n\n");
        s.push_str(&render_tool_calls(tool_calls));
    }
    s.push_str(EOS);
    s
}

/// The text the environment inserts after a tool-calling turn: tool results as a user turn,
/// then the assistant prefix again (reasoning kept, since tools are present).
pub fn render_tool_results(results: &[String], mode: Mode) -> String {
    let blocks: Vec<String> = results.iter().map(|r| format!("{TOOL_RESULT_START}{r}{TOOL_RESULT_END}")).collect();
    format!("{USER}{}{ASSISTANT}{}", blocks.join("\n\n"), if mode.thinking() { THINK_START } else { THINK_END })
}

/// A generated reply split back into its parts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParsedReply {
    pub reasoning: Option<String>,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    /// The reply ended with EOS.
    pub finished: bool,
    /// Format problems found (truncation, malformed DSML, ...). Parsing never fails.
    pub errors: Vec<String>,
}

fn find_first(text: &str, from: usize, stops: &[&str]) -> Option<(usize, usize)> {
    stops.iter().enumerate().filter_map(|(i, s)| text[from..].find(s).map(|p| (from + p, i))).min_by_key(|(p, _)| *p)
}

/// Parse generated text (everything after the generation prompt) in `mode`.
/// Tolerant: truncated or malformed output gives partial results plus `errors`.
pub fn parse_reply(text: &str, mode: Mode) -> ParsedReply {
    let mut r = ParsedReply::default();
    let mut i = 0;
    if mode.thinking() {
        match find_first(text, 0, &[THINK_END, TOOL_CALLS_START, EOS]) {
            Some((p, 0)) => {
                r.reasoning = Some(text[..p].to_string());
                i = p + THINK_END.len();
            }
            Some((p, _)) => {
                r.reasoning = Some(text[..p].to_string());
                r.errors.push("reasoning not closed with </think>".into());
                i = p;
            }
            None => {
                r.reasoning = Some(text.to_string());
                r.errors.push("truncated inside reasoning (no </think>)".into());
                return r;
            }
        }
    }
    match find_first(text, i, &[EOS, TOOL_CALLS_START]) {
        Some((p, 0)) => {
            r.content = text[i..p].to_string();
            r.finished = true;
        }
        Some((p, _)) => {
            r.content = text[i..p].trim_end_matches('\n').to_string();
            let (calls, end, errs) = parse_tool_calls(text, p + TOOL_CALLS_START.len());
            r.tool_calls = calls;
            r.errors.extend(errs);
            if let Some(e) = end {
                let rest = &text[e..];
                if rest.trim_start().starts_with(EOS) {
                    r.finished = true;
                } else if !rest.trim().is_empty() {
                    r.errors.push("text after the tool-call block".into());
                    r.finished = rest.contains(EOS);
                }
            }
        }
        None => {
            r.content = text[i..].to_string();
            r.errors.push("truncated (no end-of-sentence)".into());
        }
    }
    r
}

/// Parse DSML invokes starting after `<｜DSML｜tool_calls>`; returns the calls, the index after
/// `</｜DSML｜tool_calls>` (if present) and errors.
fn parse_tool_calls(text: &str, mut i: usize) -> (Vec<ToolCall>, Option<usize>, Vec<String>) {
    let mut calls = Vec::new();
    let mut errs = Vec::new();
    loop {
        match find_first(text, i, &[INVOKE_START, TOOL_CALLS_END]) {
            None => {
                errs.push("tool-call block not closed".into());
                return (calls, None, errs);
            }
            Some((p, 1)) => return (calls, Some(p + TOOL_CALLS_END.len()), errs),
            Some((p, _)) => {
                let head_start = p + INVOKE_START.len();
                let Some(end) = text[head_start..].find(INVOKE_END).map(|e| head_start + e) else {
                    errs.push("invoke not closed".into());
                    return (calls, None, errs);
                };
                let body = &text[head_start..end];
                match parse_invoke(body) {
                    Ok(c) => calls.push(c),
                    Err(e) => errs.push(e),
                }
                i = end + INVOKE_END.len();
            }
        }
    }
}

fn attr<'a>(s: &'a str, key: &str) -> Option<(&'a str, &'a str)> {
    let pat = format!("{key}=\"");
    let start = s.find(&pat)? + pat.len();
    let end = s[start..].find('"')? + start;
    Some((&s[start..end], &s[end + 1..]))
}

fn parse_invoke(body: &str) -> std::result::Result<ToolCall, String> {
    let (name, rest) = attr(body, "name").ok_or_else(|| format!("invoke without a name: {:?}", truncate(body, 60)))?;
    let rest = rest.strip_prefix('>').ok_or_else(|| "malformed invoke header".to_string())?;
    let mut arguments = Map::new();
    let mut s = rest;
    while let Some(p) = s.find(PARAM_START) {
        let after = &s[p + PARAM_START.len()..];
        let (pname, after) = attr(after, "name").ok_or("parameter without a name")?;
        let (is_str, after) = attr(after, "string").ok_or("parameter without string=\"true|false\"")?;
        let after = after.strip_prefix('>').ok_or("malformed parameter header")?;
        let end = after.find(PARAM_END).ok_or("parameter not closed")?;
        let raw = &after[..end];
        let value = if is_str == "true" {
            Value::String(raw.to_string())
        } else {
            serde_json::from_str(raw).map_err(|e| format!("parameter `{pname}` is not valid JSON ({e})"))?
        };
        if arguments.insert(pname.to_string(), value).is_some() {
            return Err(format!("duplicate parameter `{pname}`"));
        }
        s = &after[end + PARAM_END.len()..];
    }
    if name.is_empty() {
        return Err("empty tool name".into());
    }
    Ok(ToolCall { name: name.to_string(), arguments })
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: Value) -> ToolCall {
        ToolCall { name: name.into(), arguments: args.as_object().cloned().unwrap_or_default() }
    }

    #[test]
    fn generation_prompt_per_mode() {
        let msgs = [Message::system("Be brief."), Message::user("2+2?")];
        assert_eq!(encode_messages(&msgs, Mode::NonThink), format!("{BOS}Be brief.{USER}2+2?{ASSISTANT}</think>"));
        assert_eq!(encode_messages(&msgs, Mode::ThinkHigh), format!("{BOS}Be brief.{USER}2+2?{ASSISTANT}<think>"));
        assert_eq!(
            encode_messages(&msgs, Mode::ThinkMax),
            format!("{BOS}{THINK_MAX_PREFIX}Be brief.{USER}2+2?{ASSISTANT}<think>")
        );
        assert!(
            THINK_MAX_PREFIX.starts_with("Reasoning Effort: Absolute maximum with no shortcuts permitted.\nYou MUST")
        );
        assert!(THINK_MAX_PREFIX.ends_with("left unchecked.\n\n"));
    }

    #[test]
    fn multi_turn_drops_old_reasoning() {
        let msgs = [
            Message::user("a"),
            Message::assistant(Some("r1".into()), "A", vec![]),
            Message::user("b"),
            Message::assistant(Some("r2".into()), "B", vec![]),
        ];
        let t = encode_messages(&msgs, Mode::ThinkHigh);
        assert_eq!(t, format!("{BOS}{USER}a{ASSISTANT}</think>A{EOS}{USER}b{ASSISTANT}<think>r2</think>B{EOS}"));
        let t = encode_messages(&msgs, Mode::NonThink);
        assert_eq!(t, format!("{BOS}{USER}a{ASSISTANT}</think>A{EOS}{USER}b{ASSISTANT}</think>B{EOS}"));
    }

    #[test]
    fn tool_calls_round_trip_through_text() {
        let calls = vec![
            call("calculator", serde_json::json!({"expression": "12*3"})),
            call("lookup", serde_json::json!({"key": "x", "n": 3})),
        ];
        let tools = vec![ToolSchema {
            name: "calculator".into(),
            description: "math".into(),
            parameters: serde_json::json!({}),
        }];
        let mut sys = Message::system("Use tools.");
        sys.tools = tools;
        let msgs = [
            sys,
            Message::user("What is 12*3?"),
            Message::assistant(Some("need calc".into()), "", calls.clone()),
            Message::tool("36"),
            Message::tool("7"),
            Message::assistant(Some("got it".into()), "\\boxed{36}", vec![]),
        ];
        let t = encode_messages(&msgs, Mode::ThinkHigh);
        assert!(t.contains("## Tools"));
        // tools present → reasoning kept everywhere, <think> after every user turn
        assert!(t.contains(&format!(
            "{ASSISTANT}<think>need calc</think>\n\n{TOOL_CALLS_START}\n{INVOKE_START} name=\"calculator\">"
        )));
        assert!(t.contains(&format!("{USER}{TOOL_RESULT_START}36{TOOL_RESULT_END}\n\n{TOOL_RESULT_START}7{TOOL_RESULT_END}{ASSISTANT}<think>got it</think>")));
        // the first reply parses back
        let reply = render_reply(Some("need calc"), "", &calls, Mode::ThinkHigh);
        let p = parse_reply(&reply, Mode::ThinkHigh);
        assert_eq!(p.reasoning.as_deref(), Some("need calc"));
        assert_eq!(p.tool_calls, calls);
        assert!(p.finished && p.errors.is_empty(), "{:?}", p.errors);
    }

    #[test]
    fn parse_each_mode_and_truncations() {
        for mode in Mode::ALL {
            let reply = render_reply(Some("think"), "answer 4", &[], mode);
            let p = parse_reply(&reply, mode);
            assert_eq!(p.content, "answer 4");
            assert_eq!(p.reasoning.is_some(), mode.thinking());
            assert!(p.finished && p.errors.is_empty());
        }
        let p = parse_reply("half a thought", Mode::ThinkHigh);
        assert_eq!(p.reasoning.as_deref(), Some("half a thought"));
        assert!(!p.finished && !p.errors.is_empty());
        let p = parse_reply("no eos", Mode::NonThink);
        assert_eq!(p.content, "no eos");
        assert!(!p.finished);
        let broken = format!("x</think>\n\n{TOOL_CALLS_START}\n{INVOKE_START} name=\"f\">\n{PARAM_START} name=\"a\" string=\"false\">{{bad json{PARAM_END}\n{INVOKE_END}\n{TOOL_CALLS_END}{EOS}");
        let p = parse_reply(&broken, Mode::ThinkHigh);
        assert!(p.tool_calls.is_empty() && p.errors.iter().any(|e| e.contains("not valid JSON")));
        let unclosed = format!("</think>{TOOL_CALLS_START}\n{INVOKE_START} name=\"f\">");
        assert!(!parse_reply(&unclosed, Mode::ThinkHigh).errors.is_empty());
    }

    #[test]
    fn encode_then_tokenize_round_trips() {
        let tok = ByteTokenizer;
        for mode in Mode::ALL {
            let msgs =
                [Message::system("sys"), Message::user("hello é"), Message::assistant(Some("r".into()), "c", vec![])];
            let t = encode_messages(&msgs, mode);
            assert_eq!(tok.decode(&tok.encode(&t)), t);
        }
    }
}
