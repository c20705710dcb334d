//! `code.*`: programs in TL, the small language of the sandboxed interpreter in `rewards`
//! (`v = e`, `while c { }`, `if c { } else { }`, `return e`, integers, `min`/`max`/`abs`).
//! Verifier kwargs: `{"kind": "code", "input": "x", "tests": [[input, expected], ...]}`.
//! The input variable's name and the constants vary, so every template appears in both splits.

use super::{Instance, Pcg, Reference, NUMBER_WORDS};
use crate::chat::Message;
use serde_json::json;

pub(crate) const TL_SYSTEM: &str =
    "Write a TL program. TL has integers, `v = e`, `while c { }`, `if c { } else { }`, `return e`, and min, max, abs.";

const VARS: [&str; 3] = ["x", "y", "n"];

fn word(k: i64) -> String {
    if (0..=10).contains(&k) {
        NUMBER_WORDS[k as usize].to_string()
    } else {
        k.to_string()
    }
}

#[allow(clippy::too_many_arguments)]
fn instance(input: &str, task: String, program: String, f: impl Fn(i64) -> i64, xs: &[i64], short: String) -> Instance {
    let tests: Vec<[i64; 2]> = xs.iter().map(|&x| [x, f(x)]).collect();
    let example = xs.iter().find(|&&x| x > 1).copied().unwrap_or(2);
    let long = format!("{short}. Check {input}={example}: result {}. Program: {program}", f(example));
    Instance {
        messages: vec![Message::system(TL_SYSTEM), Message::user(format!("Given {input}, return {task}."))],
        answer: program.clone(),
        verifier: json!({"kind": "code", "input": input, "tests": tests}),
        reference: Reference { short_reasoning: short, long_reasoning: long, content: program, steps: vec![] },
    }
}

pub(crate) fn expr(rng: &mut Pcg, difficulty: u32) -> Instance {
    let v = *rng.pick(&VARS);
    let n_ops = difficulty.clamp(1, 3) as usize;
    let kmax = if difficulty >= 4 { 20 } else { 9 };
    let mut code = v.to_string();
    let mut words = vec![v.to_string()];
    let mut ops: Vec<(char, i64)> = Vec::new();
    for i in 0..n_ops {
        let op = *rng.pick(&['+', '-', '*']);
        let k = rng.range(2, kmax);
        ops.push((op, k));
        // Parenthesise when a + or − result is multiplied afterwards.
        code = if op == '*' && i > 0 && matches!(ops[i - 1].0, '+' | '-') {
            format!("({code})*{k}")
        } else {
            format!("{code}{op}{k}")
        };
        words.push(match op {
            '+' => format!("add {}", word(k)),
            '-' => format!("subtract {}", word(k)),
            _ => format!("multiply by {}", word(k)),
        });
    }
    let task = format!("{} then {}", words[0], words[1..].join(" then "));
    let f = {
        let ops = ops.clone();
        move |x: i64| {
            ops.iter().fold(x, |acc, &(op, k)| match op {
                '+' => acc + k,
                '-' => acc - k,
                _ => acc * k,
            })
        }
    };
    instance(v, task, format!("return {code}"), f, &[-2, 0, 1, 3, 7], code)
}

pub(crate) fn cond(rng: &mut Pcg, difficulty: u32) -> Instance {
    let v = *rng.pick(&VARS);
    let k = rng.range(1, if difficulty >= 3 { 30 } else { 9 });
    let kinds = if difficulty <= 1 { 3 } else { 5 };
    let which = rng.range(0, kinds - 1);
    let xs = [-5, -1, 0, 2, 3, k - 1, k, k + 1, 10];
    let kw = word(k);
    match which {
        0 => instance(
            v,
            format!("the larger of {v} and {kw}"),
            format!("return max({v}, {k})"),
            move |x| x.max(k),
            &xs,
            format!("max({v}, {k})"),
        ),
        1 => instance(
            v,
            format!("the smaller of {v} and {kw}"),
            format!("return min({v}, {k})"),
            move |x| x.min(k),
            &xs,
            format!("min({v}, {k})"),
        ),
        2 => instance(
            v,
            format!("the distance between {v} and {kw}"),
            format!("return abs({v}-{k})"),
            move |x| (x - k).abs(),
            &xs,
            format!("abs({v}-{k})"),
        ),
        3 => instance(
            v,
            format!("{kw} if {v} is negative, otherwise {v}"),
            format!("if {v} < 0 {{ return {k} }} return {v}"),
            move |x| if x < 0 { k } else { x },
            &xs,
            format!("{v}<0 gives {k}"),
        ),
        _ => instance(
            v,
            format!("{v} times {kw} if {v} is even, otherwise {v}"),
            format!("if {v} % 2 == 0 {{ return {v}*{k} }} return {v}"),
            move |x| if x % 2 == 0 { x * k } else { x },
            &xs,
            format!("even {v} times {k}"),
        ),
    }
}

pub(crate) fn looped(rng: &mut Pcg, difficulty: u32) -> Instance {
    let v = *rng.pick(&VARS);
    let kinds = if difficulty <= 1 { 2 } else { 4 };
    let which = rng.range(0, kinds - 1);
    let ns = [0, 1, 2, 3, 5, 7];
    match which {
        0 => {
            let k = rng.range(1, 5);
            instance(
                v,
                format!("the sum of the numbers from {} to {v}", word(k)),
                format!("s = 0 i = {k} while i <= {v} {{ s = s + i i = i + 1 }} return s"),
                move |n| (k..=n).sum(),
                &ns,
                format!("add i for i from {k} to {v}"),
            )
        }
        1 => {
            let k = rng.range(2, 6);
            instance(
                v,
                format!("{} to the power {v}", word(k)),
                format!("p = 1 i = 0 while i < {v} {{ p = p * {k} i = i + 1 }} return p"),
                move |n| k.pow(n.max(0) as u32),
                &ns,
                format!("multiply by {k}, {v} times"),
            )
        }
        2 => {
            let k = rng.range(1, 3);
            instance(
                v,
                format!("the sum of the squares from {} to {v}", word(k)),
                format!("s = 0 i = {k} while i <= {v} {{ s = s + i * i i = i + 1 }} return s"),
                move |n| (k..=n).map(|i| i * i).sum(),
                &ns,
                format!("add i*i for i from {k} to {v}"),
            )
        }
        _ => {
            let k = rng.range(2, 5);
            instance(
                v,
                format!("how many numbers from 1 to {v} are multiples of {}", word(k)),
                format!("c = 0 i = 1 while i <= {v} {{ if i % {k} == 0 {{ c = c + 1 }} i = i + 1 }} return c"),
                move |n| (1..=n).filter(|i| i % k == 0).count() as i64,
                &ns,
                format!("count i with i%{k}==0"),
            )
        }
    }
}
