//! IFEval-style instruction checks with the strict and loose variants of IFEval: a check
//! passes loosely if it passes on any of 8 variants of the response — {as is, without the
//! first line, without the last line, without both} × {as is, with `*` removed}.

use serde_json::Value;

/// Result of one check.
fn check_one(spec: &Value, r: &str) -> Result<bool, String> {
    let kind = spec.get("type").and_then(Value::as_str).ok_or("check without a `type`")?;
    let s = |k: &str| spec.get(k).and_then(Value::as_str).ok_or_else(|| format!("check `{kind}` needs string `{k}`"));
    let n = |k: &str| spec.get(k).and_then(Value::as_u64).ok_or_else(|| format!("check `{kind}` needs integer `{k}`"));
    Ok(match kind {
        "all_caps" => r.chars().any(char::is_alphabetic) && !r.chars().any(char::is_lowercase),
        "lowercase" => r.chars().any(char::is_alphabetic) && !r.chars().any(char::is_uppercase),
        "contains" => r.contains(s("text")?),
        "not_contains" => !r.contains(s("text")?),
        "starts_with" => r.trim_start().starts_with(s("text")?),
        "ends_with" => r.trim_end().ends_with(s("text")?),
        "no_comma" => !r.contains(','),
        "repeat_word" => {
            let w = s("word")?;
            let words: Vec<&str> = r.split_whitespace().collect();
            words.len() as u64 == n("count")? && words.iter().all(|x| *x == w)
        }
        "word_count" => {
            let c = r.split_whitespace().count() as u64;
            let min = spec.get("min").and_then(Value::as_u64).unwrap_or(0);
            let max = spec.get("max").and_then(Value::as_u64).unwrap_or(u64::MAX);
            (min..=max).contains(&c)
        }
        "json_key" => {
            let body = r.trim().trim_start_matches("```json").trim_start_matches("```").trim_end_matches("```").trim();
            match serde_json::from_str::<Value>(body) {
                Ok(Value::Object(o)) => {
                    let want = spec.get("value").ok_or("check `json_key` needs `value`")?;
                    o.get(s("key")?).is_some_and(|v| v == want || v.as_str().is_some_and(|x| Some(x) == want.as_str()))
                }
                _ => false,
            }
        }
        other => return Err(format!("unknown check type `{other}`")),
    })
}

fn loose_variants(r: &str) -> Vec<String> {
    let lines: Vec<&str> = r.lines().collect();
    let join = |a: usize, b: usize| {
        if a >= b {
            String::new()
        } else {
            lines[a..b].join("\n")
        }
    };
    let n = lines.len();
    let base = [r.to_string(), join(1, n), join(0, n.saturating_sub(1)), join(1, n.saturating_sub(1))];
    base.iter().flat_map(|v| [v.clone(), v.replace('*', "")]).collect()
}

/// Outcome of all checks.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IfResult {
    pub strict: Vec<bool>,
    pub loose: Vec<bool>,
}

impl IfResult {
    pub fn strict_all(&self) -> bool {
        self.strict.iter().all(|&b| b)
    }
    pub fn loose_all(&self) -> bool {
        self.loose.iter().all(|&b| b)
    }
}

/// Run every check of `checks` (a JSON list) on `response`.
pub fn check_all(checks: &Value, response: &str) -> Result<IfResult, String> {
    let list = checks.as_array().ok_or("`checks` must be a list")?;
    if list.is_empty() {
        return Err("`checks` is empty".into());
    }
    let variants = loose_variants(response);
    let mut strict = Vec::new();
    let mut loose = Vec::new();
    for c in list {
        let st = check_one(c, response)?;
        let mut lo = st;
        for v in &variants {
            if lo {
                break;
            }
            lo = check_one(c, v)?;
        }
        strict.push(st);
        loose.push(lo);
    }
    Ok(IfResult { strict, loose })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn checks_and_loose_superset_of_strict() {
        let c = json!([{"type": "all_caps"}, {"type": "contains", "text": "GREEN TEA"}]);
        assert!(check_all(&c, "GREEN TEA").unwrap().strict_all());
        assert!(!check_all(&c, "Green tea").unwrap().strict_all());
        let r = check_all(&c, "Sure! here:\nGREEN TEA").unwrap();
        assert!(!r.strict_all() && r.loose_all());
        let rep = json!([{"type": "repeat_word", "word": "cat", "count": 3}]);
        assert!(check_all(&rep, "cat cat cat").unwrap().strict_all());
        assert!(!check_all(&rep, "cat cat").unwrap().strict_all());
        let js = json!([{"type": "json_key", "key": "name", "value": "bob"}]);
        assert!(check_all(&js, "{\"name\": \"bob\"}").unwrap().strict_all());
        assert!(check_all(&js, "```json\n{\"name\":\"bob\"}\n```").unwrap().strict_all());
        assert!(!check_all(&js, "{\"name\": \"al\"}").unwrap().strict_all());
        assert!(check_all(&json!([{"type": "nope"}]), "x").is_err());
        // loose ⊇ strict on a few responses
        for resp in ["", "*GREEN TEA*", "a\nb\nc", "CAT"] {
            let r = check_all(&c, resp).unwrap();
            for (s, l) in r.strict.iter().zip(&r.loose) {
                assert!(!s || *l);
            }
        }
    }
}
