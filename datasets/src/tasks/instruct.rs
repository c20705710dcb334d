//! `if.*`: IFEval-style verifiable instructions. Verifier kwargs:
//! `{"kind": "if", "checks": [{"type": ..., ...}]}` (see `rewards::instruct`).

use super::{Instance, Pcg, Reference, NUMBER_WORDS};
use crate::chat::Message;
use serde_json::{json, Map, Value};

const WORDS: [&str; 24] = [
    "green", "tea", "river", "stone", "apple", "cloud", "lamp", "night", "bread", "music", "paper", "storm", "garden",
    "silver", "window", "horse", "candle", "forest", "honey", "bridge", "ocean", "pepper", "tiger", "violet",
];

fn inst(user: String, answer: String, checks: Value, short: String, long: String) -> Instance {
    Instance {
        messages: vec![Message::user(user)],
        answer: answer.clone(),
        verifier: json!({"kind": "if", "checks": checks}),
        reference: Reference { short_reasoning: short, long_reasoning: long, content: answer, steps: vec![] },
    }
}

pub(crate) fn upper(rng: &mut Pcg, difficulty: u32) -> Instance {
    let n = 1 + difficulty.clamp(1, 4) as usize;
    let phrase: Vec<&str> = (0..n).map(|_| *rng.pick(&WORDS)).collect();
    let phrase = phrase.join(" ");
    let up = phrase.to_uppercase();
    let spelled: Vec<String> =
        up.split(' ').map(|w| w.chars().map(String::from).collect::<Vec<_>>().join("-")).collect();
    inst(
        format!("Write the phrase '{phrase}' in capital letters only."),
        up.clone(),
        json!([{"type": "all_caps"}, {"type": "contains", "text": up}]),
        format!("capitals: {up}"),
        format!("Every letter becomes a capital: {}. Nothing else in the reply.", spelled.join(" ")),
    )
}

pub(crate) fn repeat(rng: &mut Pcg, difficulty: u32) -> Instance {
    let w = *rng.pick(&WORDS);
    let count = rng.range(2, 2 + difficulty.clamp(1, 5) as i64 + 1);
    let answer = vec![w; count as usize].join(" ");
    let counted: Vec<String> = (1..=count).map(|i| format!("{i}:{w}")).collect();
    inst(
        format!("Repeat the word '{w}' exactly {} times, separated by spaces.", NUMBER_WORDS[count as usize]),
        answer,
        json!([{"type": "repeat_word", "word": w, "count": count}]),
        format!("{w} {count} times"),
        format!("Count them: {}. That is {count}.", counted.join(" ")),
    )
}

pub(crate) fn json(rng: &mut Pcg, difficulty: u32) -> Instance {
    let n_keys = if difficulty >= 3 { 2 } else { 1 };
    let keys = ["name", "color", "city", "item"];
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    while pairs.len() < n_keys {
        let k = *rng.pick(&keys);
        if !pairs.iter().any(|(pk, _)| *pk == k) {
            pairs.push((k, *rng.pick(&WORDS)));
        }
    }
    let desc: Vec<String> = pairs.iter().map(|(k, v)| format!("key \"{k}\" has the value \"{v}\"")).collect();
    let obj: Map<String, Value> = pairs.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
    let answer = Value::Object(obj).to_string();
    let checks: Vec<Value> = pairs.iter().map(|(k, v)| json!({"type": "json_key", "key": k, "value": v})).collect();
    inst(
        format!("Reply with only a JSON object in which {}.", desc.join(" and ")),
        answer.clone(),
        Value::Array(checks),
        format!("object {answer}"),
        format!("Braces, then each key in double quotes, a colon, the value in double quotes: {answer}."),
    )
}
