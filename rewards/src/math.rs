//! Math verifier: the last `\boxed{}` (Hendrycks MATH convention) compared with the gold
//! answer as integers, decimals, fractions (`a/b`, `\frac{a}{b}`), sets (unordered) and tuples
//! (ordered), with a relative numeric tolerance of 1e-6.

/// Longest answer text we try to interpret (anything longer is not an answer).
const MAX_ANSWER: usize = 512;

/// Contents of the last `\boxed{...}` (or `\fbox{...}`) with balanced braces; `\boxed 5$` → `5`.
pub fn last_boxed(text: &str) -> Option<String> {
    let (pos, tag) = match text.rfind("\\boxed") {
        Some(p) => (p, "\\boxed"),
        None => (text.rfind("\\fbox")?, "\\fbox"),
    };
    let rest = &text[pos + tag.len()..];
    if let Some(r) = rest.strip_prefix(' ') {
        let end = r.find('$').unwrap_or(r.len());
        let v = r[..end].trim();
        return (!v.is_empty()).then(|| v.to_string());
    }
    let body = rest.strip_prefix('{')?;
    let mut depth = 1usize;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(body[..i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// A parsed answer value.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    /// Exact rational `num/den`, `den > 0`.
    Rational(i128, i128),
    Float(f64),
    Set(Vec<Val>),
    Tuple(Vec<Val>),
    Text(String),
}

fn gcd(a: i128, b: i128) -> i128 {
    let (mut a, mut b) = (a.abs(), b.abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

fn rational(num: i128, den: i128) -> Option<Val> {
    if den == 0 {
        return None;
    }
    let g = gcd(num, den);
    let s = if den < 0 { -1 } else { 1 };
    Some(Val::Rational(s * num / g, s * den / g))
}

/// Canonical text: no spaces, `\left`/`\right`, `$`, `\,`, `\!`, trailing dot; `\dfrac` → `\frac`.
pub fn normalize(s: &str) -> String {
    let mut t: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\,", ""),
        ("\\!", ""),
        ("\\;", ""),
        ("$", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("{,}", ""),
    ] {
        t = t.replace(from, to);
    }
    if let Some(inner) = t.strip_prefix("\\text{").and_then(|x| x.strip_suffix('}')) {
        t = inner.to_string();
    }
    while t.ends_with('.') {
        t.pop();
    }
    t
}

fn parse_int(s: &str) -> Option<i128> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.len() > 30 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_number(s: &str) -> Option<Val> {
    if let Some(i) = parse_int(s) {
        return Some(Val::Rational(i, 1));
    }
    // decimal: exact rational when short, float otherwise
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    if let Some((a, b)) = body.split_once('.') {
        if (a.is_empty() || a.bytes().all(|c| c.is_ascii_digit()))
            && !b.is_empty()
            && b.bytes().all(|c| c.is_ascii_digit())
        {
            if a.len() + b.len() <= 30 {
                let num: i128 = format!("{a}{b}").parse().ok()?;
                let den = 10i128.checked_pow(b.len() as u32)?;
                return rational(if neg { -num } else { num }, den);
            }
            return s.parse::<f64>().ok().filter(|f| f.is_finite()).map(Val::Float);
        }
    }
    None
}

/// `\frac{a}{b}`, `\fracab`, `a/b` (optionally negated).
fn parse_fraction(s: &str) -> Option<Val> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (n, d) = if let Some(rest) = body.strip_prefix("\\frac") {
        if let Some(r) = rest.strip_prefix('{') {
            let close = r.find('}')?;
            let num = &r[..close];
            let den = r[close + 1..].strip_prefix('{')?.strip_suffix('}')?;
            (num.to_string(), den.to_string())
        } else {
            let mut cs = rest.chars();
            let (a, b) = (cs.next()?, cs.next()?);
            if cs.next().is_some() {
                return None;
            }
            (a.to_string(), b.to_string())
        }
    } else {
        let (a, b) = body.split_once('/')?;
        (a.to_string(), b.to_string())
    };
    let (n, d) = (parse_number(&n)?, parse_number(&d)?);
    let v = match (n, d) {
        (Val::Rational(a, b), Val::Rational(c, e)) => rational(a.checked_mul(e)?, b.checked_mul(c)?)?,
        _ => return None,
    };
    Some(if neg {
        match v {
            Val::Rational(a, b) => Val::Rational(-a, b),
            other => other,
        }
    } else {
        v
    })
}

fn split_top(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
}

fn parse(s: &str, depth: usize) -> Val {
    let t = normalize(s);
    if depth > 4 || t.len() > MAX_ANSWER {
        return Val::Text(t);
    }
    if let Some(inner) = t.strip_prefix("\\{").and_then(|x| x.strip_suffix("\\}")) {
        return Val::Set(split_top(inner).iter().map(|p| parse(p, depth + 1)).collect());
    }
    if let Some(inner) = t.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
        let parts = split_top(inner);
        if parts.len() > 1 {
            return Val::Tuple(parts.iter().map(|p| parse(p, depth + 1)).collect());
        }
        return parse(inner, depth + 1);
    }
    if let Some(v) = parse_number(&t).or_else(|| parse_fraction(&t)) {
        return v;
    }
    Val::Text(t)
}

fn as_f64(v: &Val) -> Option<f64> {
    match v {
        Val::Rational(a, b) => Some(*a as f64 / *b as f64),
        Val::Float(f) => Some(*f),
        _ => None,
    }
}

fn equal(a: &Val, b: &Val) -> bool {
    match (a, b) {
        // Two integers compare exactly; anything with a fractional part within tolerance.
        (Val::Rational(x, 1), Val::Rational(u, 1)) => x == u,
        (Val::Set(x), Val::Set(y)) => {
            x.len() == y.len() && {
                let mut used = vec![false; y.len()];
                x.iter().all(|xi| {
                    y.iter().enumerate().any(|(j, yj)| {
                        if !used[j] && equal(xi, yj) {
                            used[j] = true;
                            true
                        } else {
                            false
                        }
                    })
                })
            }
        }
        (Val::Tuple(x), Val::Tuple(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q)),
        (Val::Text(x), Val::Text(y)) => x == y,
        _ => match (as_f64(a), as_f64(b)) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * y.abs().max(1.0),
            _ => false,
        },
    }
}

/// Are two answer strings equivalent?
pub fn equivalent(pred: &str, gold: &str) -> bool {
    if pred.len() > MAX_ANSWER || gold.len() > MAX_ANSWER {
        return false;
    }
    equal(&parse(pred, 0), &parse(gold, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_vectors_from_the_notes() {
        assert_eq!(last_boxed("so \\boxed{\\frac{1}{2}}.").as_deref(), Some("\\frac{1}{2}"));
        assert_eq!(last_boxed("\\boxed{\\sqrt{x^{2}}}").as_deref(), Some("\\sqrt{x^{2}}"));
        assert_eq!(last_boxed("\\boxed{1} then \\boxed{2}").as_deref(), Some("2"));
        assert_eq!(last_boxed("\\boxed{12"), None);
        assert_eq!(last_boxed("\\boxed 5$").as_deref(), Some("5"));
        assert_eq!(last_boxed("\\fbox{7}").as_deref(), Some("7"));
        assert_eq!(last_boxed("no box"), None);
        assert_eq!(last_boxed("\\boxed{{a}{b}}").as_deref(), Some("{a}{b}"));
    }

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
}
