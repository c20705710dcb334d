//! Math verifier: the model's answer compared with the gold answer as people write them.
//!
//! **Extraction.** Response side ([`extract_answer`]): the contents of the last `\boxed{}`
//! (or `\fbox{}`, Hendrycks MATH convention; `\boxed 5$` too; [`last_boxed`], shared with
//! dataset loading in `datasets::answers`), else the rest of the line
//! after the last GSM8K `#### `; nothing else (no "the answer is" heuristics). Gold side
//! ([`gold_answer`]): the text after the last `####` (GSM8K golds are
//! "…reasoning… #### 42"), else the last `\boxed{}` in it, else the whole gold.
//!
//! **Normalisation** ([`normalize`]): whitespace, `\,` `\!` `\;` `\:` `\ ` `~`, `\left`
//! `\right` `\big…`, `\displaystyle`, `$` and `\$`, degree marks (`^\circ`, `^{\circ}`, `°`)
//! and the thin-space thousands separator `{,}` are dropped; `\dfrac` / `\tfrac` → `\frac`;
//! a whole `\text{X}` (`\textbf`, `\mathrm`, `\mbox`, `\textrm`, `\mathbf`, nested `\boxed`)
//! → `X`; a trailing `\text{…}` / `\mbox{…}` after a value is a unit and dropped, as is a
//! trailing unit word from [`UNITS`] after a number (`5 cm`, `12 dollars`); a trailing `.`
//! is dropped.
//!
//! **Structure** (in this order, see `parse_val`):
//! 1. `\{a, b\}` is a set (unordered).
//! 2. `1,000`, `-12,345.5` (first group 1–3 digits, every later group exactly 3, at least
//!    one comma) is ONE number with thousands separators. Anything else with a top-level
//!    comma is a list: `1,2` and `1,23` are lists, never the numbers 12 / 123.
//! 3. A single top-level `=` whose left side is one variable (`x`, `x_1`, `\theta`) is an
//!    assignment: `x = 5` equals `5`, and `x=5` equals `x=5` but not `y=5` (as math-verify).
//! 4. `(a, b)` / `[a, b]` / `(a, b]` are ordered tuples (intervals): brackets and items must
//!    match in order. A bare top-level list `a, b` is unordered, like a set (math-verify
//!    reads it as a set).
//! 5. A trailing `\%` or `%` is a percentage: `p%` equals `p%`, `p` and `p/100` (so `10\%`
//!    equals `10` and `0.1`, as math-verify; math-verify equates `p%` with `p` only for an
//!    integer `p`, we for every `p`: `12.5\%` = `12.5`).
//! 6. Otherwise an expression ([`expr`]): integers, decimals, `\frac{a}{b}`, `\frac12`, `a/b`,
//!    mixed numbers `2\frac{1}{2}` = 5/2 (integer followed by `\frac` of two literal
//!    integers), powers `2^{6}` `2^6`, roots `\sqrt{4}` `\sqrt[3]{8}`, redundant braces
//!    `{{-12}}`, `\pi`, `\infty`, `\sin`…`\exp`, `n!`, implicit multiplication, variables.
//!    `2^10` is 1024 (the digit run is the exponent, as math-verify). Exact rationals compare
//!    exactly (`2` ≠ `2.0000001`, `18` = `18.00`, `10^{-8}` ≠ `2\cdot10^{-8}`), except that a
//!    decimal of at least 6 places equals a rational it is the rounding of (`1/3` =
//!    `0.333333` ≠ `0.33`); constants with a float (`\pi`, roots) agree within a relative
//!    4e-7 (zero equals only zero); a value that overflows (`10^{400}`, `200!`) has none, so
//!    equals nothing but the same text (only `\infty` is infinite); expressions
//!    with variables compare at sample points of both signs (`x+1` = `1+x`,
//!    `2\sqrt{3}` = `\sqrt{12}`, `\sqrt{x^2}` ≠ `x`).
//! 7. Anything else is text, compared case-insensitively after normalisation; a run of
//!    three or more plain letters (a word) is text, not a product of variables.
//!
//! Every step is bounded (see [`expr`]); answers longer than [`MAX_ANSWER`] never match.
//! Agreement with math-verify on `testdata/math-answers` (363 labelled pairs) is checked by
//! `rewards/tests/math_agreement.rs`; the known disagreements are listed in that README.

pub mod expr;

use expr::{expr_eq, Expr, Num};

/// Longest answer text we try to interpret (anything longer is not an answer).
const MAX_ANSWER: usize = 512;

/// Nesting of sets / tuples / assignments interpreted.
const MAX_NEST: usize = 4;

/// Unit words dropped after a number (`5 cm`, `12 dollars`).
pub const UNITS: &[&str] = &[
    "cm", "mm", "km", "kg", "mg", "ml", "meter", "meters", "metre", "metres", "inch", "inches", "ft", "feet", "foot",
    "yard", "yards", "mile", "miles", "mph", "hour", "hours", "hr", "hrs", "minute", "minutes", "min", "mins",
    "second", "seconds", "sec", "day", "days", "week", "weeks", "month", "months", "year", "years", "dollar",
    "dollars", "cent", "cents", "degree", "degrees", "unit", "units", "sq", "square", "cubic", "pound", "pounds", "lb",
    "lbs", "ounce", "ounces", "oz", "gallon", "gallons", "liter", "liters", "litre", "litres", "grams", "gram",
];

/// Contents of the last `\boxed{...}` / `\fbox{...}` (shared with dataset loading; see
/// [`datasets::answers`]).
pub use datasets::answers::last_boxed;

/// The rest of the line after the last `####` (GSM8K), trimmed; `None` when empty or absent.
pub fn after_hashes(text: &str) -> Option<String> {
    let pos = text.rfind("####")?;
    let rest = text[pos + 4..].trim_start();
    let line = rest.lines().next().unwrap_or("").trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// The answer a response gives: the last `\boxed{}`, else the GSM8K `#### X` line.
pub fn extract_answer(response: &str) -> Option<String> {
    last_boxed(response).or_else(|| after_hashes(response))
}

/// The answer a gold string holds: after `####`, else the last `\boxed{}`, else all of it.
pub fn gold_answer(gold: &str) -> String {
    if gold.contains("####") {
        return after_hashes(gold).unwrap_or_default();
    }
    if gold.contains("\\boxed") || gold.contains("\\fbox") {
        if let Some(b) = last_boxed(gold) {
            return b;
        }
    }
    gold.trim().to_string()
}

/// Does `out` end with a `\command` name (so a following letter needs a separating space)?
fn ends_with_command(out: &str) -> bool {
    let letters = out.chars().rev().take_while(|c| c.is_ascii_alphabetic()).count();
    letters > 0 && out[..out.len() - letters].ends_with('\\')
}

/// Drops whitespace and LaTeX spacing, keeping one space only where it ends a command name
/// before a letter (`\pi r`).
fn squeeze_spaces(s: &str) -> String {
    let mut t = s.to_string();
    for sp in ["\\\\", "\\,", "\\!", "\\;", "\\:", "\\ ", "~", "\\quad", "\\qquad"] {
        t = t.replace(sp, " ");
    }
    let mut out = String::with_capacity(t.len());
    let mut pending = false;
    for c in t.chars() {
        if c.is_whitespace() {
            pending = true;
            continue;
        }
        if pending && c.is_ascii_alphabetic() && ends_with_command(&out) {
            out.push(' ');
        }
        pending = false;
        out.push(c);
    }
    out
}

/// Byte index of the `}` closing the `{` at byte `open`.
fn closing_brace(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

const TEXT_MACROS: &[&str] = &["\\text", "\\textbf", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox", "\\boxed", "\\fbox"];

/// `\text{X}` (any of [`TEXT_MACROS`]) spanning all of `t` → `X`.
fn unwrap_whole_macro(t: &str) -> Option<String> {
    TEXT_MACROS.iter().find_map(|m| {
        let rest = t.strip_prefix(m)?;
        rest.starts_with('{').then_some(())?;
        let close = closing_brace(t, m.len())?;
        (close == t.len() - 1).then(|| t[m.len() + 1..close].to_string())
    })
}

/// `t` without a trailing `^2` / `^{2}` / `^3` / `^{3}` (squared / cubed units).
fn without_unit_power(t: &str) -> &str {
    ["^2", "^{2}", "^3", "^{3}"].iter().find_map(|p| t.strip_suffix(p)).unwrap_or(t)
}

/// A trailing `\text{…}` / `\mbox{…}` after a value (a unit, `\text{ cm}^2` too) removed.
fn strip_trailing_unit_macro(t: &str) -> Option<String> {
    let t = without_unit_power(t);
    ["\\text{", "\\mbox{", "\\textrm{", "\\mathrm{"].iter().find_map(|m| {
        let pos = t.rfind(m)?;
        let close = closing_brace(t, pos + m.len() - 1)?;
        let prefix = t[..pos].trim_end_matches(['^', '{']);
        (close == t.len() - 1 && !prefix.is_empty() && prefix != "-").then(|| prefix.to_string())
    })
}

/// A trailing unit word (`cm`, `dollars`, `cm^2`) after a number removed.
fn strip_unit_word(t: &str) -> Option<String> {
    let base = without_unit_power(t);
    let n = base.chars().rev().take_while(|c| c.is_ascii_alphabetic()).count();
    let (head, word) = base.split_at(base.len() - n);
    let ok = UNITS.contains(&word.to_ascii_lowercase().as_str())
        && head.ends_with(|c: char| c.is_ascii_digit() || c == '}' || c == ')' || c == '%');
    ok.then(|| head.to_string())
}

/// Canonical answer text (see the module header).
pub fn normalize(s: &str) -> String {
    let mut t = s.to_string();
    for (from, to) in
        [("−", "-"), ("×", "\\times "), ("·", "\\cdot "), ("÷", "\\div "), ("π", "\\pi "), ("∞", "\\infty ")]
    {
        t = t.replace(from, to);
    }
    t = squeeze_spaces(&t);
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\bigl", ""),
        ("\\bigr", ""),
        ("\\Bigl", ""),
        ("\\Bigr", ""),
        ("\\big", ""),
        ("\\Big", ""),
        ("\\displaystyle", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("{,}", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("\\degree", ""),
        ("°", ""),
    ] {
        t = t.replace(from, to);
    }
    // unwrap / strip a bounded number of layers
    for _ in 0..4 {
        t = t.trim().trim_end_matches('.').to_string();
        if let Some(inner) = unwrap_whole_macro(&t) {
            t = inner;
        } else if let Some(v) = strip_trailing_unit_macro(&t) {
            t = v;
        } else if let Some(v) = strip_unit_word(&t) {
            t = v;
        } else {
            break;
        }
    }
    t.trim().trim_end_matches('.').to_string()
}

/// A parsed answer value.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Expr(Expr),
    /// `p%`.
    Percent(Expr),
    Set(Vec<Val>),
    /// Ordered items with their brackets (`(`/`[` … `)`/`]`).
    Tuple(char, char, Vec<Val>),
    /// `x = v`.
    Assign(String, Box<Val>),
    Text(String),
}

/// Splits at top-level `sep` (outside `()[]{}`); `\{` `\}` count as braces.
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `(inner)`, `[inner]`, `(inner]`, … when the first bracket closes at the very end.
fn outer_pair(t: &str) -> Option<(char, &str, char)> {
    let open = t.chars().next().filter(|c| *c == '(' || *c == '[')?;
    let close = t.chars().last().filter(|c| *c == ')' || *c == ']')?;
    let mut depth = 0i32;
    for (i, c) in t.char_indices() {
        match c {
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth -= 1,
            _ => {}
        }
        if depth == 0 && i + c.len_utf8() < t.len() {
            return None;
        }
    }
    (t.len() >= 2).then(|| (open, &t[1..t.len() - 1], close))
}

/// `1,000`, `-12,345.5`: a number with thousands separators (see the module header).
fn thousands(t: &str) -> Option<Num> {
    let body = t.strip_prefix('-').unwrap_or(t);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let groups: Vec<&str> = int.split(',').collect();
    let digits = |g: &str| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit());
    let ok = groups.len() >= 2
        && digits(groups[0])
        && groups[0].len() <= 3
        && groups[1..].iter().all(|g| g.len() == 3 && digits(g))
        && (frac.is_empty() || digits(frac))
        && !body.ends_with('.');
    if !ok {
        return None;
    }
    let plain = t.replace(',', "");
    match expr::parse(&plain)? {
        Expr::Num(n) => Some(n),
        Expr::Neg(e) => match *e {
            Expr::Num(n) => expr::eval(&Expr::Neg(Box::new(Expr::Num(n))), &[]),
            _ => None,
        },
        _ => None,
    }
}

/// `x`, `x_1`, `x_{12}`, `\theta`: a single variable name.
fn is_variable(s: &str) -> bool {
    matches!(expr::parse(s), Some(Expr::Var(_)))
}

/// A run of three or more plain letters (not a `\command`): a word, so text.
fn has_word(t: &str) -> bool {
    let mut run = 0;
    let mut in_cmd = false;
    for c in t.chars() {
        if c == '\\' {
            in_cmd = true;
            run = 0;
        } else if c.is_ascii_alphabetic() {
            if !in_cmd {
                run += 1;
                if run >= 3 {
                    return true;
                }
            }
        } else {
            in_cmd = false;
            run = 0;
        }
    }
    false
}

fn text(t: &str) -> Val {
    Val::Text(t.to_lowercase())
}

fn parse_val(s: &str, depth: usize) -> Val {
    let t = normalize(s);
    if depth > MAX_NEST || t.is_empty() || t.len() > MAX_ANSWER {
        return text(&t);
    }
    if let Some(inner) = t.strip_prefix("\\{").and_then(|x| x.strip_suffix("\\}")) {
        return Val::Set(split_top(inner, ',').iter().map(|p| parse_val(p, depth + 1)).collect());
    }
    if let Some(n) = thousands(&t) {
        return Val::Expr(Expr::Num(n));
    }
    let eqs = split_top(&t, '=');
    if eqs.len() == 2 && is_variable(eqs[0]) {
        return Val::Assign(eqs[0].to_string(), Box::new(parse_val(eqs[1], depth + 1)));
    }
    if let Some((open, inner, close)) = outer_pair(&t) {
        let parts = split_top(inner, ',');
        if parts.len() > 1 {
            return Val::Tuple(open, close, parts.iter().map(|p| parse_val(p, depth + 1)).collect());
        }
    }
    let parts = split_top(&t, ',');
    if parts.len() > 1 {
        return Val::Set(parts.iter().map(|p| parse_val(p, depth + 1)).collect());
    }
    if has_word(&t) {
        return text(&t);
    }
    if let Some(p) = t.strip_suffix("\\%").or_else(|| t.strip_suffix('%')) {
        return expr::parse(p).map_or_else(|| text(&t), Val::Percent);
    }
    expr::parse(&t).map_or_else(|| text(&t), Val::Expr)
}

/// Unordered multiset equality.
fn same_items(x: &[Val], y: &[Val]) -> bool {
    if x.len() != y.len() {
        return false;
    }
    let mut used = vec![false; y.len()];
    x.iter().all(|xi| match (0..y.len()).find(|&j| !used[j] && equal(xi, &y[j])) {
        Some(j) => {
            used[j] = true;
            true
        }
        None => false,
    })
}

fn hundredth(p: &Expr) -> Expr {
    Expr::Div(Box::new(p.clone()), Box::new(Expr::Num(Num::int(100))))
}

fn equal(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Expr(x), Val::Expr(y)) | (Val::Percent(x), Val::Percent(y)) => expr_eq(x, y),
        (Val::Percent(p), Val::Expr(q)) | (Val::Expr(q), Val::Percent(p)) => expr_eq(p, q) || expr_eq(&hundredth(p), q),
        (Val::Set(x), Val::Set(y)) => same_items(x, y),
        (Val::Set(x), other) | (other, Val::Set(x)) if x.len() == 1 => equal(&x[0], other),
        (Val::Tuple(o1, c1, x), Val::Tuple(o2, c2, y)) => {
            o1 == o2 && c1 == c2 && x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Val::Assign(v, x), Val::Assign(w, y)) => v == w && equal(x, y),
        (Val::Assign(_, x), other) | (other, Val::Assign(_, x)) => equal(x, other),
        (Val::Text(x), Val::Text(y)) => !x.is_empty() && x == y,
        _ => false,
    }
}

/// Are two answer strings equivalent? `gold` may be a whole GSM8K / MATH solution (see
/// [`gold_answer`]); `pred` is an extracted answer (see [`extract_answer`]).
pub fn equivalent(pred: &str, gold: &str) -> bool {
    let gold = gold_answer(gold);
    if pred.len() > MAX_ANSWER || gold.len() > MAX_ANSWER {
        return false;
    }
    let (p, g) = (normalize(pred), normalize(&gold));
    if !p.is_empty() && p == g {
        return true;
    }
    equal(&parse_val(pred, 0), &parse_val(&gold, 0))
}

/// Does `response` answer `gold` (extraction, then [`equivalent`])?
pub fn verify(response: &str, gold: &str) -> bool {
    extract_answer(response).is_some_and(|pred| equivalent(&pred, gold))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equivalences() {
        assert!(equivalent("\\frac{1}{2}", "0.5"));
        assert!(equivalent("1/2", "\\frac{1}{2}"));
        assert!(equivalent("\\dfrac{2}{4}", "1/2"));
        assert!(equivalent("\\{1,2\\}", "\\{2,1\\}"));
        assert!(!equivalent("(1,2)", "(2,1)"));
        assert!(equivalent("(1, 2)", "(1,2)"));
        assert!(equivalent(" -3 ", "-3"));
        assert!(equivalent("-\\frac{3}{4}", "-0.75"));
        assert!(equivalent("42.", "42"));
        assert!(equivalent("0.3333333", "1/3"));
        assert!(!equivalent("0.33", "1/3"));
        assert!(!equivalent("4", "5"));
        assert!(equivalent("\\frac12", "0.5"));
        assert!(!equivalent("1/0", "0"));
        assert!(equivalent("x+1", "x + 1"));
        assert!(!equivalent(&"9".repeat(1000), &"9".repeat(1000)));
    }

    /// Review finding 1.3: no absolute tolerance below 1.
    #[test]
    fn small_numbers_are_not_all_equal() {
        assert!(!equivalent("10^{-8}", "2\\cdot10^{-8}"));
        assert!(!equivalent("0.0000001", "0.0000003"));
        assert!(!equivalent("1.6\\times10^{-19}", "9.1\\times10^{-31}"));
        assert!(equivalent("10^{-3}", "0.001"));
        assert!(equivalent("\\frac{2}{3}", "0.6666667"));
        assert!(!equivalent("\\frac{2}{3}", "0.67"));
    }

    /// Review finding 1.4: overflow is no value, not infinity.
    #[test]
    fn overflowing_numbers_are_not_infinite() {
        assert!(!equivalent("10^{400}", "\\infty"));
        assert!(!equivalent("200!", "300!"));
        assert!(!equivalent("10^{400}", "10^{401}"));
        assert!(equivalent("200!", "200!"));
        assert!(equivalent("\\infty", "\\infty"));
        assert!(equivalent("(-\\infty, 0)", "(-\\infty,0)"));
    }

    /// Review finding 3: the response side reads boxes with the shared `datasets` function.
    #[test]
    fn shared_box_extraction() {
        assert_eq!(last_boxed("$\\fbox{7}$"), datasets::answers::last_boxed("$\\fbox{7}$"));
        assert!(verify("so $\\fbox{7}$", "7"));
        assert!(verify("so $\\boxed 7$.", "\\boxed{7}"));
    }

    // One test per answer format of issue 17; each fails on the verifier before it.

    #[test]
    fn thousands_separators() {
        assert!(equivalent("1,000", "1000"));
        assert!(equivalent("1{,}000", "1000"));
        assert!(equivalent("1\\,000", "1000"));
        assert!(equivalent("1,234,567.5", "1234567.5"));
        assert!(equivalent("-2,500", "-2500"));
        assert!(!equivalent("1,001", "1000"));
        // not thousands: lists (unordered without brackets), tuples with them
        assert!(equivalent("1,2", "2,1"));
        assert!(!equivalent("1,2", "12"));
        assert!(!equivalent("25,00", "2500"));
        assert!(!equivalent("(1,2)", "(2,1)"));
    }

    #[test]
    fn variable_assignments() {
        assert!(equivalent("x=5", "5"));
        assert!(equivalent("x = 5", "5"));
        assert!(equivalent("5", "x=5"));
        assert!(equivalent("y = 3x - 2", "y=3x-2"));
        assert!(!equivalent("x=5", "y=5"));
        assert!(!equivalent("x=6", "5"));
    }

    #[test]
    fn percentages() {
        assert!(equivalent("10\\%", "10"));
        assert!(equivalent("10%", "10"));
        assert!(equivalent("10\\%", "0.1"));
        assert!(equivalent("0.1", "10\\%"));
        assert!(equivalent("25\\%", "25\\%"));
        assert!(!equivalent("30\\%", "25"));
        assert!(!equivalent("0.04", "40\\%"));
    }

    #[test]
    fn fractions_dfrac_tfrac() {
        assert!(equivalent("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"));
        assert!(equivalent("\\tfrac34+\\frac14", "1"));
        assert!(equivalent("\\frac1{2}", "0.5"));
        assert!(!equivalent("\\dfrac{7}{9}", "\\frac{7}{8}"));
    }

    #[test]
    fn mixed_numbers() {
        assert!(equivalent("2\\frac{1}{2}", "\\frac{5}{2}"));
        assert!(equivalent("2\\frac12", "2.5"));
        assert!(equivalent("-1\\frac{1}{2}", "-1.5"));
        assert!(!equivalent("2\\frac{1}{3}", "\\frac{5}{2}"));
        // a product, not a mixed number, when the fraction is not of literal integers
        assert!(equivalent("2\\frac{x}{2}", "x"));
    }

    #[test]
    fn powers() {
        assert!(equivalent("2^{6}", "64"));
        assert!(equivalent("2^6", "64"));
        assert!(equivalent("2^10", "1024"));
        assert!(equivalent("2^{-3}", "\\frac{1}{8}"));
        assert!(!equivalent("2^{5}", "64"));
    }

    #[test]
    fn roots() {
        assert!(equivalent("\\sqrt{4}", "2"));
        assert!(equivalent("\\sqrt[3]{8}", "2"));
        assert!(equivalent("2\\sqrt{3}", "\\sqrt{12}"));
        assert!(equivalent("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"));
        assert!(!equivalent("\\sqrt{2}", "2"));
        assert!(!equivalent("3\\sqrt{2}", "2\\sqrt{3}"));
    }

    #[test]
    fn redundant_braces() {
        assert!(equivalent("{{-12}}", "-12"));
        assert!(equivalent("{7}", "7"));
        assert!(!equivalent("{{-12}}", "12"));
    }

    #[test]
    fn units_and_decorations() {
        assert!(equivalent("5\\text{ cm}", "5"));
        assert!(equivalent("5 \\mbox{cm}", "5"));
        assert!(equivalent("20\\text{ cm}^2", "20"));
        assert!(equivalent("12 dollars", "12"));
        assert!(equivalent("\\$18.00", "18"));
        assert!(equivalent("90^\\circ", "90"));
        assert!(equivalent("90^{\\circ}", "90"));
        assert!(equivalent("\\left(\\frac{1}{2}\\right)^{2}", "0.25"));
        assert!(equivalent("6\\,\\text{m}", "6"));
        assert!(equivalent("\\text{Evelyn}", "Evelyn"));
        assert!(!equivalent("8 \\text{ apples}", "7"));
        assert!(!equivalent("\\text{Tuesday}", "\\text{Monday}"));
    }

    #[test]
    fn gsm8k_answers() {
        let gold = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72";
        assert_eq!(gold_answer(gold), "72");
        assert!(equivalent("72", gold));
        assert!(equivalent("\\$72", gold));
        assert!(!equivalent("73", gold));
        assert!(verify("The total is 72.\n#### 72", gold));
        assert!(verify("#### 1,800", "#### 1800"));
        assert!(!verify("#### 73", gold));
        // a \boxed{} answer wins over a #### line
        assert!(!verify("\\boxed{71}\n#### 72", gold));
        assert!(!verify("the answer is 72", gold));
        // an empty answer matches nothing, not even an empty gold
        assert!(!verify("\\boxed{}", "#### "));
        assert!(!equivalent("", ""));
    }

    #[test]
    fn symbolic_equivalence() {
        assert!(equivalent("\\pi/2", "\\frac{\\pi}{2}"));
        assert!(equivalent("1+x", "x+1"));
        assert!(equivalent("(x+1)^2", "x^2+2x+1"));
        assert!(equivalent("(x-1)(x+1)", "x^2-1"));
        assert!(equivalent("4 r^2 \\pi", "4\\pi r^2"));
        assert!(!equivalent("x^2+x+1", "(x+1)^2"));
        assert!(!equivalent("y+1", "x+1"));
        assert!(!equivalent("3.14", "\\pi"));
    }

    /// Random strings over the answer alphabet never panic and finish quickly.
    #[test]
    fn random_strings_never_panic() {
        const ALPHABET: &[&str] = &[
            "0", "1", "9", ".", ",", "-", "+", "*", "/", "^", "_", "=", "%", "\\%", "!", "(", ")", "[", "]", "{", "}",
            "\\{", "\\}", "x", "y", "e", " ", "\\frac", "\\dfrac", "\\sqrt", "\\pi", "\\text{", "\\boxed{", "####",
            "\\left(", "\\right)", "\\,", "^\\circ", "\\$", "$", "\\infty", "\\cdot", "\\sin", "é", "π", "\n",
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let start = std::time::Instant::now();
        for _ in 0..4000 {
            let len = (next() % 40) as usize;
            let a: String = (0..len).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]).collect();
            let b: String = (0..len / 2).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]).collect();
            let _ = equivalent(&a, &b);
            let _ = equivalent(&a, &a);
            let _ = verify(&a, &b);
        }
        // hostile shapes: deep nesting, long powers and factorials, huge numbers
        for s in [
            "{".repeat(5000),
            format!("{}1{}", "{".repeat(300), "}".repeat(300)),
            "9^{9^{9^{9^{9^{9}}}}}".to_string(),
            "99999999999999999999999999999!".to_string(),
            "2^{99999999999999999999999999999999999999}".to_string(),
            format!("{}x", "\\sqrt".repeat(200)),
            "1,".repeat(300),
            "\\{".repeat(100),
            "x=".repeat(100),
        ] {
            let _ = equivalent(&s, &s);
            let _ = verify(&format!("\\boxed{{{s}}}"), &s);
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "took {:?}", start.elapsed());
    }
}
