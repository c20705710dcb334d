//! `agent.*`: multi-turn tool use in the V4 DSML format against deterministic tools
//! (`calculator(expression)`, `lookup(key)` over a per-task table). The tools run in
//! `rewards::agent`; verifier kwargs: `{"kind": "agent", "tools": [...], "env": {"table": {...}}}`.

use super::{Instance, Pcg, RefStep, Reference};
use crate::chat::{Message, ToolCall};
use serde_json::{json, Map, Value};

/// Compact tool instructions (the full V4 tool template is ~900 bytes of text; the DSML call
/// format itself is unchanged).
pub(crate) const AGENT_SYSTEM: &str = "Tools: calculator(expression) evaluates integer arithmetic; lookup(key) returns the value stored under key. Call tools in DSML; give the final answer in \\boxed{}.";

const KEYS: [&str; 16] = [
    "red", "blue", "green", "gold", "iron", "oak", "fox", "owl", "sun", "moon", "salt", "rain", "jade", "lynx", "pine",
    "reef",
];

fn call(name: &str, arg: &str, value: &str) -> ToolCall {
    let mut m = Map::new();
    m.insert(arg.into(), Value::String(value.into()));
    ToolCall { name: name.into(), arguments: m }
}

/// Table `id`'s contents: a pure function of the id and difficulty, so a prompt naming the
/// table always has the same answer.
fn table(id: i64, difficulty: u32) -> (Vec<(&'static str, i64)>, Value) {
    let rng = &mut Pcg::new(super::fnv1a(&format!("table/{id}/{difficulty}")));
    let n = 3 + difficulty.min(5) as usize;
    let mut keys: Vec<&'static str> = KEYS.to_vec();
    let mut entries = Vec::new();
    for _ in 0..n {
        let i = rng.range(0, keys.len() as i64 - 1) as usize;
        let k = keys.remove(i);
        entries.push((k, rng.range(10, 10i64.pow(1 + difficulty.clamp(1, 4)) - 1)));
    }
    let obj: Map<String, Value> = entries.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
    (entries, Value::Object(obj))
}

fn finish(
    user: String,
    tools: &[&str],
    env: Value,
    answer: i64,
    steps: Vec<RefStep>,
    short: String,
    long: String,
) -> Instance {
    Instance {
        messages: vec![Message::system(AGENT_SYSTEM), Message::user(user)],
        answer: answer.to_string(),
        verifier: json!({"kind": "agent", "tools": tools, "env": {"table": env}}),
        reference: Reference {
            short_reasoning: short,
            long_reasoning: long,
            content: format!("\\boxed{{{answer}}}"),
            steps,
        },
    }
}

pub(crate) fn calc(rng: &mut Pcg, difficulty: u32) -> Instance {
    let digits = difficulty.clamp(1, 4) + 1;
    let a = rng.range(2, 10i64.pow(digits) - 1);
    let b = rng.range(2, 10i64.pow(digits.min(3)) - 1);
    let op = *rng.pick(&['+', '-', '*']);
    let v = match op {
        '+' => a + b,
        '-' => a - b,
        _ => a * b,
    };
    let expr = format!("{a}{op}{b}");
    let step = RefStep {
        reasoning: format!("I need {expr}; use the calculator."),
        tool_calls: vec![call("calculator", "expression", &expr)],
        results: vec![v.to_string()],
    };
    finish(
        format!("What is {expr}? Use the calculator."),
        &["calculator"],
        json!({}),
        v,
        vec![step],
        format!("The calculator returned {v}."),
        format!("The calculator evaluated {expr} exactly and returned {v}, so the answer is {v}."),
    )
}

pub(crate) fn lookup(rng: &mut Pcg, difficulty: u32) -> Instance {
    let id = rng.range(1, 999);
    let (entries, env) = table(id, difficulty);
    let (k, v) = *rng.pick(&entries);
    let step = RefStep {
        reasoning: format!("Look up {k}."),
        tool_calls: vec![call("lookup", "key", k)],
        results: vec![v.to_string()],
    };
    finish(
        format!("In table {id}, what value is stored under '{k}'? Use lookup."),
        &["lookup"],
        env,
        v,
        vec![step],
        format!("lookup({k}) returned {v}."),
        format!("The tool lookup with key {k} returned {v}; that is the stored value, so the answer is {v}."),
    )
}

/// A two-tool chain: look a key up, then hand its value to the calculator. What is tested is
/// carrying one tool's output into the next call, across turns (the sum itself is the
/// calculator's job, as in `agent.calc`; in-head addition is `math.add`'s domain).
pub(crate) fn chain(rng: &mut Pcg, difficulty: u32) -> Instance {
    let id = rng.range(1, 999);
    let (entries, env) = table(id, difficulty);
    let (k, v) = *rng.pick(&entries);
    let c = rng.range(10, 99);
    let sum = v + c;
    let expr = format!("{v}+{c}");
    let steps = vec![
        RefStep {
            reasoning: format!("Look up {k}."),
            tool_calls: vec![call("lookup", "key", k)],
            results: vec![v.to_string()],
        },
        RefStep {
            reasoning: format!("{k} is {v}; add {c} with the calculator."),
            tool_calls: vec![call("calculator", "expression", &expr)],
            results: vec![sum.to_string()],
        },
    ];
    finish(
        format!("In table {id}, add {c} to the value stored under '{k}'. Use lookup, then calculator."),
        &["lookup", "calculator"],
        env,
        sum,
        steps,
        format!("The calculator returned {sum}."),
        format!("{k} is {v}; {expr}: {}; the calculator agrees, so the answer is {sum}.", super::math::add_steps(v, c)),
    )
}
