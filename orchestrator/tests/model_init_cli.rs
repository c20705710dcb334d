//! `v4post model init` and `v4post model info --checkpoint` through the binary: a ~120 MB
//! FP4-heavy random checkpoint, loaded for rollout within the memory bound of issue 17
//! (peak resident set ≤ 1.3 × the files + 300 MB), and the refusals.

use std::path::Path;
use std::process::{Command, Output};

fn v4post(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_v4post")).args(args).env("V4POST_NO_PROGRESS", "1").output().unwrap()
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// Most parameters in 512 routed experts (8 layers × 64), as in V4: ~210M parameters,
/// ~120 MB with FP4 experts.
fn fp4_heavy_config(dir: &Path) -> std::path::PathBuf {
    let c = model::Config {
        vocab_size: 8192,
        dim: 256,
        moe_inter_dim: 512,
        n_layers: 8,
        n_hash_layers: 2,
        n_heads: 4,
        n_routed_experts: 64,
        n_activated_experts: 4,
        q_lora_rank: 128,
        head_dim: 64,
        rope_head_dim: 32,
        o_groups: 2,
        o_lora_rank: 64,
        window_size: 64,
        compress_ratios: vec![0, 4, 16, 4, 0, 4, 16, 0],
        index_n_heads: 4,
        index_head_dim: 64,
        index_topk: 16,
        ..model::Config::tiny()
    };
    let p = dir.join("config.json");
    std::fs::write(&p, c.to_json_pretty()).unwrap();
    p
}

#[test]
fn init_then_load_for_rollout_within_the_memory_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fp4_heavy_config(tmp.path());
    let ckpt = tmp.path().join("ckpt");
    let (cfg_s, ckpt_s) = (cfg.to_str().unwrap(), ckpt.to_str().unwrap());
    let init = json_of(&v4post(&["model", "init", "--config", cfg_s, "--out", ckpt_s, "--seed", "3", "--json"]));
    let file_bytes = init["file_bytes"].as_u64().unwrap();
    assert!((100e6..200e6).contains(&(file_bytes as f64)), "{file_bytes}");
    assert_eq!(init["files"], serde_json::json!(["model.safetensors"]));
    let on_disk = std::fs::metadata(ckpt.join("model.safetensors")).unwrap().len();
    assert_eq!(on_disk, file_bytes);

    let info = json_of(&v4post(&["model", "info", "--checkpoint", ckpt_s, "--json"]));
    assert_eq!(info["file_bytes"].as_u64(), Some(file_bytes));
    assert_eq!(info["total_params"].as_u64(), init["params"].as_u64(), "no MTP: every parameter is counted");
    let load_s = info["load_s"].as_f64().unwrap();
    assert!(load_s > 0.0 && load_s.is_finite(), "{load_s}");
    let peak = info["peak_rss_bytes"].as_u64().unwrap() as f64;
    let bound = 1.3 * file_bytes as f64 + 300e6;
    assert!(
        peak <= bound,
        "loading a {:.1} MB checkpoint for rollout peaked at {:.1} MB resident, above 1.3 × file + 300 MB = {:.1} MB",
        file_bytes as f64 / 1e6,
        peak / 1e6,
        bound / 1e6
    );
    assert!(peak >= info["rss_before_load_bytes"].as_u64().unwrap() as f64);
    // Mapped weights become resident when read: the bound holds after a prefill that uses them.
    let probe = &info["probe_forward"];
    assert_eq!(probe["tokens"].as_u64(), Some(64));
    let used = probe["peak_rss_bytes"].as_u64().unwrap() as f64;
    assert!(
        used >= peak && used <= bound,
        "after a 64-token prefill: {:.1} MB resident, bound {:.1} MB",
        used / 1e6,
        bound / 1e6
    );

    // The directory now holds a checkpoint: a second init is refused and changes nothing.
    let again = v4post(&["model", "init", "--config", cfg_s, "--out", ckpt_s, "--seed", "4"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::metadata(ckpt.join("model.safetensors")).unwrap().len(), file_bytes);
}

#[test]
fn sharded_init_of_a_preset_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("tiny");
    let ckpt_s = ckpt.to_str().unwrap();
    let init = json_of(&v4post(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--out",
        ckpt_s,
        "--seed",
        "1",
        "--max-shard-bytes",
        "50000",
        "--json",
    ]));
    let files = init["files"].as_array().unwrap();
    assert!(files.len() > 1, "{files:?}");
    assert!(ckpt.join("model.safetensors.index.json").exists());
    let info = json_of(&v4post(&["model", "info", "--checkpoint", ckpt_s, "--json"]));
    assert_eq!(info["files"].as_u64(), Some(files.len() as u64));
    assert_eq!(info["file_bytes"], init["file_bytes"]);
    // Human output names the load figures too.
    let human = v4post(&["model", "info", "--checkpoint", ckpt_s]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("peak RSS") && text.contains("loaded for rollout"), "{text}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let out_s = out.to_str().unwrap();
    let missing = tmp.path().join("nope.json");
    let e = v4post(&["model", "init", "--config", missing.to_str().unwrap(), "--out", out_s, "--seed", "1"]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("nope.json"));
    let e = v4post(&["model", "init", "--preset", "huge", "--out", out_s, "--seed", "1"]);
    assert!(!e.status.success());
    // refused by clap with the list of presets
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(err.contains("'huge'") && err.contains("tiny, small, flash, pro"), "{err}");
    let e = v4post(&["model", "init", "--preset", "tiny", "--out", out_s, "--seed", "1", "--max-shard-bytes", "0"]);
    assert!(!e.status.success());
    assert!(!out.exists(), "nothing is written on bad arguments");
}

#[test]
fn a_tokenizer_is_checked_against_the_vocabulary_and_copied() {
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tokenizers/bpe-400/tokenizer.json");
    let tok_s = tok.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // 400 tokens do not fit tiny's 320-entry vocabulary: refused before anything is written.
    let small = tmp.path().join("small");
    let e = v4post(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--out",
        small.to_str().unwrap(),
        "--seed",
        "1",
        "--tokenizer",
        tok_s,
    ]);
    assert!(!e.status.success());
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(err.contains("vocab_size 320") && err.contains("tokenizer.json"), "{err}");
    assert!(!small.exists());
    let cfg = tmp.path().join("config.json");
    std::fs::write(&cfg, model::Config { vocab_size: 512, ..model::Config::tiny() }.to_json_pretty()).unwrap();
    let ckpt = tmp.path().join("ckpt");
    let out = v4post(&[
        "model",
        "init",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        ckpt.to_str().unwrap(),
        "--seed",
        "1",
        "--tokenizer",
        tok_s,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(ckpt.join("tokenizer.json")).unwrap(), std::fs::read(&tok).unwrap());
    // the tokenizer_config.json next to it travels along (datasets::tokenizer::carry_tokenizer_file)
    let tok_cfg = tok.with_file_name("tokenizer_config.json");
    assert_eq!(std::fs::read(ckpt.join("tokenizer_config.json")).unwrap(), std::fs::read(&tok_cfg).unwrap());
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote a random checkpoint"));
}
