//! `math.*`: integer arithmetic and linear equations with a `\boxed{}` final answer.
//! Long (Think Max) references work digit by digit, which is what lets a tiny model do
//! multi-digit arithmetic when it reasons longer.

use super::{Instance, Pcg, Reference};
use crate::chat::Message;
use serde_json::json;

const ASK: &str = " Answer in \\boxed{}.";

fn digits_for(difficulty: u32) -> u32 {
    difficulty.clamp(1, 5)
}

fn operand(rng: &mut Pcg, digits: u32) -> i64 {
    let hi = 10i64.pow(digits) - 1;
    rng.range(0, hi)
}

fn digits_of(mut v: i64) -> Vec<i64> {
    let mut d = Vec::new();
    loop {
        d.push(v % 10);
        v /= 10;
        if v == 0 {
            return d;
        }
    }
}

/// Column addition written out: `3+8=11 c1, 2+5+1=8 c0 -> 81`.
pub(crate) fn add_steps(a: i64, b: i64) -> String {
    let (da, db) = (digits_of(a), digits_of(b));
    let n = da.len().max(db.len());
    let mut carry = 0;
    let mut parts = Vec::new();
    for i in 0..n {
        let (x, y) = (da.get(i).copied().unwrap_or(0), db.get(i).copied().unwrap_or(0));
        let s = x + y + carry;
        parts.push(if carry > 0 { format!("{x}+{y}+{carry}={s}") } else { format!("{x}+{y}={s}") });
        carry = s / 10;
    }
    format!("{} -> {}", parts.join(", "), a + b)
}

/// Column subtraction of `a - b` with `a >= b`: `1-6 borrow 11-6=5, 6-2=4 -> 45`.
fn sub_steps(a: i64, b: i64) -> String {
    let (da, db) = (digits_of(a), digits_of(b));
    let mut borrow = 0;
    let mut parts = Vec::new();
    for i in 0..da.len() {
        let x = da[i] - borrow;
        let y = db.get(i).copied().unwrap_or(0);
        if x < y {
            parts.push(format!("{x}-{y} borrow {}-{y}={}", x + 10, x + 10 - y));
            borrow = 1;
        } else {
            parts.push(format!("{x}-{y}={}", x - y));
            borrow = 0;
        }
    }
    format!("{} -> {}", parts.join(", "), a - b)
}

fn boxed(v: impl std::fmt::Display) -> String {
    format!("\\boxed{{{v}}}")
}

fn inst(question: String, answer: i64, short: String, long: String) -> Instance {
    Instance {
        messages: vec![Message::user(format!("{question}{ASK}"))],
        answer: answer.to_string(),
        verifier: json!({"kind": "math"}),
        reference: Reference { short_reasoning: short, long_reasoning: long, content: boxed(answer), steps: vec![] },
    }
}

pub(crate) fn add(rng: &mut Pcg, difficulty: u32) -> Instance {
    let d = digits_for(difficulty);
    let (a, b) = (operand(rng, d), operand(rng, d));
    inst(format!("Compute {a}+{b}."), a + b, format!("{a}+{b}={}", a + b), add_steps(a, b))
}

pub(crate) fn sub(rng: &mut Pcg, difficulty: u32) -> Instance {
    let d = digits_for(difficulty);
    let (a, b) = (operand(rng, d), operand(rng, d));
    let long = if a >= b {
        sub_steps(a, b)
    } else {
        format!("{a}<{b} so {a}-{b}=-({b}-{a}); {} -> {}", sub_steps(b, a), a - b)
    };
    inst(format!("Compute {a}-{b}."), a - b, format!("{a}-{b}={}", a - b), long)
}

pub(crate) fn mul(rng: &mut Pcg, difficulty: u32) -> Instance {
    let d = digits_for(difficulty);
    let a = operand(rng, d);
    let b = rng.range(2, 9);
    // digit-wise partial products with carries
    let da = digits_of(a);
    let mut carry = 0;
    let mut parts = Vec::new();
    for x in &da {
        let p = x * b + carry;
        parts.push(if carry > 0 { format!("{x}*{b}+{carry}={p}") } else { format!("{x}*{b}={p}") });
        carry = p / 10;
    }
    let long = format!("{} -> {}", parts.join(", "), a * b);
    inst(format!("Compute {a}*{b}."), a * b, format!("{a}*{b}={}", a * b), long)
}

pub(crate) fn linear(rng: &mut Pcg, difficulty: u32) -> Instance {
    let span = [5, 9, 20, 50, 200][(difficulty.clamp(1, 5) - 1) as usize];
    let a = rng.range(2, 9);
    let x = rng.range(-span, span);
    let b = rng.range(-2 * span, 2 * span);
    let c = a * x + b;
    let lhs = match b {
        0 => format!("{a}x"),
        b if b > 0 => format!("{a}x+{b}"),
        b => format!("{a}x-{}", -b),
    };
    let rhs_step = c - b;
    let short = format!("{a}x={rhs_step}, x={x}");
    let long = format!(
        "{a}x={c}{}{}={rhs_step}; x={rhs_step}/{a}={x}; check {a}*{x}{}{}={c}",
        if b >= 0 { "-" } else { "+" },
        b.abs(),
        if b >= 0 { "+" } else { "-" },
        b.abs()
    );
    inst(format!("Solve for x: {lhs}={c}."), x, short, long)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_steps_are_right() {
        assert_eq!(add_steps(23, 58), "3+8=11, 2+5+1=8 -> 81");
        assert_eq!(add_steps(999, 1), "9+1=10, 9+0+1=10, 9+0+1=10 -> 1000");
        assert_eq!(sub_steps(71, 26), "1-6 borrow 11-6=5, 6-2=4 -> 45");
        assert_eq!(sub_steps(100, 1), "0-1 borrow 10-1=9, -1-0 borrow 9-0=9, 0-0=0 -> 99");
    }
}
