//! Agreement of the math verifier with math-verify on a labelled set.
//!
//! `testdata/math-answers/labelled.jsonl` holds answer/response pairs (`id`, `gold`,
//! `response`, `category`) labelled by math-verify (`label`; see
//! `scripts/label_math_answers.py` and `testdata/math-answers/README.md`). Each pair is scored
//! through the product path (`rewards::score_with`, verifier kind `math`, non-thinking mode),
//! every disagreement is printed, and agreement must be at least [`MIN_AGREEMENT`] over at
//! least [`MIN_PAIRS`] pairs.

use datasets::chat::Mode;
use rewards::score_with;
use serde_json::{json, Value};
use std::path::PathBuf;

const MIN_AGREEMENT: f64 = 0.95;
const MIN_PAIRS: usize = 200;

struct Pair {
    id: String,
    category: String,
    gold: String,
    response: String,
    label: bool,
}

fn labelled_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/math-answers/labelled.jsonl")
}

fn field<'a>(rec: &'a Value, name: &str, path: &str, line: usize) -> Result<&'a Value, String> {
    rec.get(name).ok_or_else(|| format!("{path}:{line}: missing field `{name}`"))
}

fn text_field(rec: &Value, name: &str, path: &str, line: usize) -> Result<String, String> {
    field(rec, name, path, line)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{path}:{line}: field `{name}` is not a string"))
}

fn load() -> Result<Vec<Pair>, String> {
    let path = labelled_path();
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{shown}: {e}"))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let n = i + 1;
        let rec: Value = serde_json::from_str(line).map_err(|e| format!("{shown}:{n}: bad JSON: {e}"))?;
        pairs.push(Pair {
            id: text_field(&rec, "id", &shown, n)?,
            category: text_field(&rec, "category", &shown, n)?,
            gold: text_field(&rec, "gold", &shown, n)?,
            response: text_field(&rec, "response", &shown, n)?,
            label: field(&rec, "label", &shown, n)?
                .as_bool()
                .ok_or_else(|| format!("{shown}:{n}: field `label` is not a boolean"))?,
        });
    }
    Ok(pairs)
}

#[test]
fn math_verifier_agrees_with_math_verify() {
    let pairs = load().unwrap_or_else(|e| panic!("cannot load the labelled set: {e}"));
    let verifier = json!({"kind": "math"});
    let mut agree = 0usize;
    for p in &pairs {
        let r = score_with(&verifier, &p.gold, &p.response, Mode::NonThink);
        let ours = r.correct();
        if ours == p.label {
            agree += 1;
        } else {
            println!(
                "DISAGREE {} [{}] math-verify={} ours={} gold={:?} response={:?} detail={}",
                p.id, p.category, p.label, ours, p.gold, p.response, r.detail
            );
        }
    }
    let rate = agree as f64 / pairs.len().max(1) as f64;
    let positives = pairs.iter().filter(|p| p.label).count();
    println!("math agreement with math-verify: {agree}/{} = {rate:.4} ({positives} labelled true)", pairs.len());
    assert!(pairs.len() >= MIN_PAIRS, "only {} labelled pairs (need {MIN_PAIRS})", pairs.len());
    assert!(rate >= MIN_AGREEMENT, "agreement {rate:.4} < {MIN_AGREEMENT}");
}
