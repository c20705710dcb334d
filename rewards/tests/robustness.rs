//! Verifiers on hostile input: arbitrary bytes, very long and deeply nested responses never
//! panic or hang; the Python sandbox enforces its limits and has no network.

use datasets::chat::Mode;
use datasets::tasks::{domains, sample, Split};
use proptest::prelude::*;
use rewards::{python, score, score_with};
use serde_json::json;
use std::time::{Duration, Instant};

fn tasks() -> Vec<datasets::Task> {
    let mut v: Vec<_> =
        domains().iter().map(|d| sample(d.domain, Split::Eval, 9, 1, None).unwrap().remove(0)).collect();
    // a python task too (runs only when python3 exists; otherwise reward 0 with a reason)
    let mut p = v[0].clone();
    p.verifier = json!({"kind": "python", "tests": "assert f(2) == 4", "timeout_s": 2});
    v.push(p);
    v
}

fn check(resp: &str) {
    for t in tasks() {
        for mode in Mode::ALL {
            let start = Instant::now();
            let r = score(&t, resp, mode);
            assert!(r.value == 0.0 || r.value == 1.0, "{}: value {}", t.domain, r.value);
            assert!(start.elapsed() < Duration::from_secs(5), "{}: took {:?}", t.domain, start.elapsed());
        }
    }
}

const SPECIALS: &[&str] = &[
    "<｜end▁of▁sentence｜>",
    "</think>",
    "<｜DSML｜tool_calls>",
    "<｜DSML｜invoke name=\"lookup\">",
    "<｜DSML｜parameter name=\"key\" string=\"false\">",
    "</｜DSML｜parameter>",
    "</｜DSML｜invoke>",
    "</｜DSML｜tool_calls>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "\\boxed{",
    "}",
    "```",
    "{",
    "return ",
    "while 1 {",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn special_token_soup_never_panics(picks in proptest::collection::vec((0usize..16, "[a-z0-9 ]{0,6}"), 0..40)) {
        let s: String = picks.iter().map(|(i, t)| format!("{}{t}", SPECIALS[*i])).collect();
        check(&s);
    }
}

#[test]
fn huge_and_deeply_nested_inputs() {
    let eos = "<｜end▁of▁sentence｜>";
    for resp in [
        "(".repeat(60_000),
        format!("{}{eos}", "\\boxed{".repeat(8_000)),
        format!("return {}1{}{eos}", "(".repeat(20_000), ")".repeat(20_000)),
        format!("return {}{eos}", "1+".repeat(20_000) + "1"),
        format!("{}{eos}", "-".repeat(60_000)),
        format!("{}{eos}", "9".repeat(60_000)),
        "x".repeat(2_000_000),
        format!("\\boxed{{{}}}{eos}", "1/".repeat(20_000)),
    ] {
        check(&resp);
    }
}

#[test]
fn python_sandbox_limits() {
    if !std::process::Command::new("python3").arg("-c").arg("pass").status().is_ok_and(|s| s.success()) {
        // Without python3 the verifier must say so, not score.
        let r = score_with(&json!({"kind": "python", "tests": "assert True"}), "", "x", Mode::NonThink);
        assert!(r.detail["reason"].as_str().unwrap().contains("python3"));
        return;
    }
    let lim = python::PyLimits { wall: Duration::from_secs(3), cpu_seconds: 2, ..Default::default() };
    let ok = python::run_tests("def f(x):\n    return x * 2", "assert f(2) == 4", &lim).unwrap();
    assert!(ok.passed, "{ok:?}");
    let bad = python::run_tests("def f(x):\n    return x + 1", "assert f(2) == 4", &lim).unwrap();
    assert!(!bad.passed && bad.stderr_tail.contains("AssertionError"));
    let start = Instant::now();
    let spin = python::run_tests("while True:\n    pass", "", &lim).unwrap();
    assert!(!spin.passed && start.elapsed() < Duration::from_secs(6), "{spin:?} {:?}", start.elapsed());
    let sleeper = python::run_tests("import time\ntime.sleep(60)", "", &lim).unwrap();
    assert!(sleeper.timed_out, "wall clock kill: {sleeper:?}");
    let hog = python::run_tests("x = bytearray(2 * 1024 * 1024 * 1024)", "", &lim).unwrap();
    assert!(!hog.passed, "memory limit: {hog:?}");
    // The sandbox has no network: loopback (where Redis listens on this machine) is unreachable.
    let net =
        python::run_tests("import socket\nsocket.create_connection(('127.0.0.1', 6379), timeout=1)", "", &lim).unwrap();
    assert!(!net.passed, "network must be unreachable: {net:?}");
    // reward path
    let r = score_with(
        &json!({"kind": "python", "tests": ["assert f(3) == 6"]}),
        "",
        "```python\ndef f(x):\n    return 2*x\n```<｜end▁of▁sentence｜>",
        Mode::NonThink,
    );
    assert_eq!(r.value, 1.0, "{}", r.detail);
}
