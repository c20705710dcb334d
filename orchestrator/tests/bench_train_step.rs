//! `v4post bench train-step` on the tiny golden checkpoint: the forward / backward / optimizer
//! split, `--accum`, `--optim`, `--numerics` and the JSON keys, through the binary. No speed
//! assertions (the machine is shared); only the structure and the relations that must hold.

use std::path::PathBuf;
use std::process::{Command, Output};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/v4-tiny-a")
}

fn run(extra: &[&str]) -> Output {
    let ckpt = tiny();
    Command::new(env!("CARGO_BIN_EXE_v4post"))
        .args(["bench", "train-step", "--checkpoint"])
        .arg(&ckpt)
        .args(["--batch", "1", "--seq", "16", "--reps", "1", "--json"])
        .args(extra)
        .output()
        .expect("v4post runs")
}

fn bench(extra: &[&str]) -> serde_json::Value {
    let out = run(extra);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

const KEYS: [&str; 20] = [
    // existing
    "sft_tokens_per_s",
    "grpo_tokens_per_s",
    "sft_step_s_median",
    "grpo_step_s_median",
    "batch",
    "seq",
    "params",
    "threads",
    // the split
    "forward_s",
    "backward_s",
    "optimizer_s",
    "step_tokens_per_s",
    "fwd_bwd_tokens_per_s",
    "optimizer_gflops",
    "gemm_peak_gflops",
    "peak_rss_bytes",
    "optim",
    "numerics",
    "accum",
    "tokens_per_step",
];

#[test]
fn the_split_adds_up_and_accum_and_adamw_change_what_they_should() {
    let muon = bench(&[]);
    for k in KEYS {
        assert!(!muon[k].is_null(), "missing `{k}` in {muon}");
    }
    assert_eq!(muon["optim"], "muon");
    assert_eq!(muon["numerics"], "qat");
    assert_eq!(muon["accum"], 1);
    let (fw, bw, op, total) =
        (f(&muon, "forward_s"), f(&muon, "backward_s"), f(&muon, "optimizer_s"), f(&muon, "step_s"));
    assert!(fw > 0.0 && bw > 0.0 && op > 0.0, "{muon}");
    assert!(fw + bw + op <= total, "{fw} + {bw} + {op} > {total}");
    assert_eq!(f(&muon, "sft_step_s_median"), total);
    assert!(f(&muon, "gemm_peak_gflops") > 0.0 && f(&muon, "optimizer_gflops") > 0.0);
    assert!(f(&muon, "peak_rss_bytes") > 1e6, "{muon}");
    assert!(f(&muon, "threads") >= 1.0);
    let tokens = f(&muon, "tokens_per_step");
    assert_eq!(tokens, 16.0);
    assert!((f(&muon, "step_tokens_per_s") - tokens / total).abs() <= 1e-9 * tokens / total);
    assert!((f(&muon, "fwd_bwd_tokens_per_s") - tokens / (fw + bw)).abs() <= 1e-9 * tokens / (fw + bw));

    let acc = bench(&["--accum", "2"]);
    assert_eq!(acc["accum"], 2);
    assert_eq!(f(&acc, "tokens_per_step"), 2.0 * tokens);
    let (fw2, bw2, op2, total2) =
        (f(&acc, "forward_s"), f(&acc, "backward_s"), f(&acc, "optimizer_s"), f(&acc, "step_s"));
    assert!(fw2 > 0.0 && bw2 > 0.0 && op2 > 0.0 && fw2 + bw2 + op2 <= total2, "{acc}");
    // one update per step; the second micro-batch can only route tokens to more experts
    // (more matrices with a gradient), never fewer
    assert!(f(&acc, "optimizer_flops") >= f(&muon, "optimizer_flops"), "{acc}");

    let adamw = bench(&["--optim", "adamw", "--numerics", "dense"]);
    assert_eq!(adamw["optim"], "adamw");
    assert_eq!(adamw["numerics"], "dense");
    assert!(f(&adamw, "optimizer_flops") > 0.0);
    assert!(
        f(&adamw, "optimizer_flops") < f(&muon, "optimizer_flops"),
        "AdamW {} FLOPs vs Muon {}",
        adamw["optimizer_flops"],
        muon["optimizer_flops"]
    );
    assert_eq!(adamw["params"], muon["params"]);
}

#[test]
fn bad_values_are_refused_by_clap() {
    for (args, needle) in [
        (&["--optim", "sgd"][..], "--optim"),
        (&["--numerics", "fp8"][..], "--numerics"),
        (&["--accum", "0"][..], "--accum"),
        (&["--accum", "two"][..], "--accum"),
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid value") && err.contains(needle), "{args:?}: {err}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_v4post")).args(["bench", "train-step", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for word in ["muon", "adamw", "dense", "qat", "--accum"] {
        assert!(text.contains(word), "--help does not list `{word}`:\n{text}");
    }
}
