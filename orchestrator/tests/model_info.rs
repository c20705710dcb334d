//! `v4post model info --vs v3.2`: the single-token cost comparison DeepSeek's V4 claims rest
//! on, through the binary and its `--json` output.

use std::process::Command;

fn info(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_v4post")).args(["model", "info"]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

#[test]
fn pro_and_flash_against_v32_at_one_million_tokens() {
    for (preset, flops, kv) in [("pro", 0.262, 0.105), ("flash", 0.121, 0.073)] {
        let v = info(&["--preset", preset, "--context", "1048576", "--vs", "v3.2", "--json"]);
        let vs = &v["vs"];
        assert_eq!(vs["name"], "v3.2");
        let (rf, rk) = (vs["flops_ratio"].as_f64().unwrap(), vs["kv_bytes_stored_ratio"].as_f64().unwrap());
        assert!((rf - flops).abs() < 0.005, "{preset}: FLOPs ratio {rf}");
        assert!((rk - kv).abs() < 0.005, "{preset}: KV ratio {rk}");
        let own = v["decode_cost"]["flops"].as_f64().unwrap();
        let base = vs["decode_cost"]["flops"].as_f64().unwrap();
        assert!((own / base - rf).abs() < 1e-9);
        assert_eq!(v["decode_cost"]["context"], 1048576);
    }
}

#[test]
fn v32_preset_prints_its_published_size() {
    let v = info(&["--preset", "v3.2", "--json"]);
    let total = v["total_params"].as_f64().unwrap();
    assert!((671e9..674e9).contains(&total), "{total}");
}

#[test]
fn a_bad_baseline_or_context_is_a_clear_error() {
    for args in [&["--preset", "pro", "--vs", "v3"][..], &["--preset", "pro", "--context", "0"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_v4post")).args(["model", "info"]).args(args).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("--vs") || err.contains("--context"), "{err}");
    }
}
