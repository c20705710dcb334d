//! Configs are validated before anything is sized from them: for any `config.json` (presets
//! and golden configs with numeric fields mutated to 0, 1, huge, `u64::MAX`-ish or random
//! values) parsing, parameter counts, KV sizes, and — when the config is valid and small —
//! random weights, an engine and one forward pass return an error or succeed, within a time
//! limit, and never panic.

use model::config::{MAX_LAYERS, SIZE_LIMITS};
use model::{cost, Config, Engine, EngineOptions, ModelWeights, Row, Want};
use proptest::prelude::*;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest one case may take (dev profile, two cores, a small model at most).
const CASE_LIMIT: Duration = Duration::from_secs(60);
/// Largest model the fuzzers build weights and an engine for.
const SMALL_PARAMS: u64 = 3_000_000;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden")
}

/// Golden `config.json` texts (the reference model and every variant).
fn golden_configs() -> Vec<Value> {
    let mut paths = vec![golden_dir().join("v4-tiny-a/config.json")];
    if let Ok(rd) = std::fs::read_dir(golden_dir().join("variants")) {
        let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path().join("config.json")).collect();
        v.sort();
        paths.extend(v);
    }
    paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| serde_json::from_str(&t).expect("golden config is JSON"))
        .collect()
}

/// Starting points: presets with official keys only, presets with both key sets, golden configs.
fn bases() -> Vec<Value> {
    let mut v = Vec::new();
    for p in Config::PRESETS {
        let c = Config::preset(p).unwrap();
        v.push(serde_json::to_value(&c).unwrap());
        v.push(serde_json::from_str(&c.to_json_pretty()).unwrap());
    }
    v.extend(golden_configs());
    assert!(v.len() > 8, "golden configs not found under {}", golden_dir().display());
    v
}

/// JSON pointers of every numeric leaf (nested `rope_scaling`, `compress_ratios` entries).
fn numeric_pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Number(_) => out.push(at),
        Value::Object(m) => m.iter().for_each(|(k, x)| numeric_pointers(x, format!("{at}/{k}"), out)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| numeric_pointers(x, format!("{at}/{i}"), out)),
        _ => {}
    }
}

/// Is this valid config small enough to build weights and run a forward pass on?
fn small(c: &Config) -> bool {
    let ratio = c.compress_ratios.iter().copied().max().unwrap_or(0);
    c.param_counts().total + c.param_counts().mtp <= SMALL_PARAMS
        && c.vocab_size * c.n_activated_experts * c.n_hash_layers <= 1 << 20
        && c.window_size * c.head_dim * c.n_layers <= 1 << 22
        && ratio * c.head_dim.max(c.index_head_dim) <= 1 << 20
        && c.hc_sinkhorn_iters * c.hc_mult * c.hc_mult * c.n_layers <= 1 << 24
}

/// Everything a config feeds; errors are fine, panics are not.
fn exercise(text: &str) -> Result<(), String> {
    let c = Config::from_json_str(text).map_err(|e| e.to_string())?;
    let pc = c.param_counts();
    assert!(pc.total >= pc.routed_experts && pc.total >= pc.embedding, "{pc:?}");
    let _ = c.kv_bytes_per_token(1 << 20, 2);
    let _ = c.kv_bytes_per_token(1, 2);
    let _ = cost::v4_decode_cost(&c, 1 << 20);
    if !small(&c) {
        return Ok(());
    }
    let w = ModelWeights::random(&c, 1).map_err(|e| e.to_string())?;
    let engine = Engine::new(&w, EngineOptions::default()).map_err(|e| e.to_string())?;
    let mut states = [engine.new_state()];
    let rows: Vec<Row> = (0..5u32).map(|t| Row { seq: 0, token: (t * 7 + 2) % c.vocab_size as u32 }).collect();
    engine.forward(&mut states, &rows, Want::AllLogits).map_err(|e| e.to_string())?;
    Ok(())
}

/// Run [`exercise`] on another thread: a panic or running past [`CASE_LIMIT`] fails.
fn exercise_in_time(text: String) -> Result<Result<(), String>, String> {
    let (tx, rx) = mpsc::channel();
    let shown = text.clone();
    std::thread::spawn(move || {
        let _ = tx.send(exercise(&text));
    });
    match rx.recv_timeout(CASE_LIMIT) {
        Ok(r) => Ok(r),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("config took longer than {CASE_LIMIT:?}: {shown}")),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(format!("config panicked: {shown}")),
    }
}

/// Values a mutated numeric field takes.
fn special_values() -> Vec<Value> {
    let ints: [u64; 14] = [
        0,
        1,
        2,
        3,
        4,
        31,
        1 << 16,
        1 << 20,
        (1 << 31) + 1,
        1 << 32,
        1_000_000_000_000,
        i64::MAX as u64,
        u64::MAX - 1,
        u64::MAX,
    ];
    let mut v: Vec<Value> = ints.iter().map(|&i| Value::from(i)).collect();
    v.extend([Value::from(-1), Value::from(0.5), Value::from(-1e-3), Value::from(1e300)]);
    v
}

fn mutate(base: &Value, pointer: &str, value: Value) -> String {
    let mut v = base.clone();
    if let Some(slot) = v.pointer_mut(pointer) {
        *slot = value;
    }
    v.to_string()
}

fn assert_quiet(text: String) {
    if let Err(e) = exercise_in_time(text) {
        panic!("{e}");
    }
}

/// Every numeric field of every base set to every special value, one at a time.
#[test]
fn every_field_at_every_special_value() {
    let values = special_values();
    // Official-key bases only (the fuzzer below covers the Hugging Face ones), and the first
    // few `compress_ratios` entries (the rest repeat them).
    let mut sweep: Vec<Value> =
        Config::PRESETS.iter().map(|p| serde_json::to_value(Config::preset(p).unwrap()).unwrap()).collect();
    sweep.extend(golden_configs());
    let repeated_ratio =
        |p: &str| p.strip_prefix("/compress_ratios/").and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i >= 6);
    for base in sweep {
        let mut ptrs = Vec::new();
        numeric_pointers(&base, String::new(), &mut ptrs);
        for p in ptrs.iter().filter(|p| !repeated_ratio(p)) {
            for val in &values {
                assert_quiet(mutate(&base, p, val.clone()));
            }
        }
    }
}

fn value_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(special_values()),
        (0u64..4096).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e40f64..1e40).prop_map(Value::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Several fields mutated at once, random values included.
    #[test]
    fn mutated_configs_error_or_succeed(
        base in prop::sample::select(bases()),
        edits in prop::collection::vec((any::<prop::sample::Index>(), value_strategy()), 1..4),
        drop_ratios in any::<bool>(),
    ) {
        let mut ptrs = Vec::new();
        numeric_pointers(&base, String::new(), &mut ptrs);
        let mut v = base.clone();
        for (idx, val) in edits {
            if let Some(slot) = v.pointer_mut(idx.get(ptrs.as_slice()).as_str()) {
                *slot = val;
            }
        }
        if drop_ratios {
            if let Some(m) = v.as_object_mut() {
                m.remove("compress_ratios");
            }
        }
        if let Err(e) = exercise_in_time(v.to_string()) {
            return Err(TestCaseError::fail(e));
        }
    }
}

fn tiny_json_with(key: &str, value: Value) -> String {
    let mut v = serde_json::to_value(Config::tiny()).unwrap();
    v[key] = value;
    v.to_string()
}

fn config_error(text: &str) -> String {
    let t = Instant::now();
    let e = Config::from_json_str(text).expect_err("config must be rejected").to_string();
    assert!(t.elapsed() < Duration::from_secs(2), "rejecting took {:?}", t.elapsed());
    e
}

#[test]
fn window_size_zero_is_a_config_error() {
    let e = config_error(&tiny_json_with("window_size", 0.into()));
    assert!(e.contains("window_size"), "{e}");
    // A config built in code is checked too before weights (and an engine) are made from it.
    let c = Config { window_size: 0, ..Config::tiny() };
    let e = ModelWeights::random(&c, 0).expect_err("window 0").to_string();
    assert!(e.contains("window_size"), "{e}");
}

#[test]
fn huge_sinkhorn_iteration_count_is_a_config_error() {
    let e = config_error(&tiny_json_with("hc_sinkhorn_iters", 1_000_000_000_000u64.into()));
    assert!(e.contains("hc_sinkhorn_iters"), "{e}");
    let mut ok = serde_json::to_value(Config::tiny()).unwrap();
    ok["hc_sinkhorn_iters"] = 1000.into();
    assert!(Config::from_json_str(&ok.to_string()).is_ok(), "1000 iterations are allowed");
}

#[test]
fn a_billion_experts_is_a_config_error() {
    let e = config_error(&tiny_json_with("n_routed_experts", 1_000_000_000u64.into()));
    assert!(e.contains("n_routed_experts"), "{e}");
}

#[test]
fn layer_counts_are_bounded_before_the_default_schedule_is_allocated() {
    let mut v = serde_json::to_value(Config::tiny()).unwrap();
    v.as_object_mut().unwrap().remove("compress_ratios");
    v["n_layers"] = u64::MAX.into();
    let e = config_error(&v.to_string());
    assert!(e.contains("n_layers"), "{e}");
    v["n_layers"] = 4.into();
    v["n_mtp_layers"] = (1u64 << 40).into();
    let e = config_error(&v.to_string());
    assert!(e.contains("n_mtp_layers"), "{e}");
}

#[test]
fn token_ids_beyond_32_bits_are_rejected_not_truncated() {
    let e = config_error(&tiny_json_with("eos_token_id", ((1u64 << 32) + 1).into()));
    assert!(e.contains("eos_token_id"), "{e}");
}

#[test]
fn every_limit_names_its_key() {
    for &(key, lo, hi, _) in SIZE_LIMITS {
        let mut bad = vec![hi as u64 + 1];
        if lo > 0 {
            bad.push(lo as u64 - 1);
        }
        for b in bad {
            let e = config_error(&tiny_json_with(key, b.into()));
            assert!(e.contains(key), "{key} = {b}: {e}");
        }
    }
}

/// A config at every maximum at once: parameter counts are exact (no overflow, no listing of
/// millions of expert tensors) and quick.
#[test]
fn parameter_counts_at_the_limits_do_not_overflow() {
    let c = Config {
        vocab_size: 1 << 22,
        dim: 1 << 16,
        moe_inter_dim: 1 << 18,
        n_layers: MAX_LAYERS,
        n_heads: 1 << 12,
        n_routed_experts: 1 << 16,
        n_activated_experts: 1 << 10,
        q_lora_rank: 1 << 16,
        head_dim: 1 << 16,
        o_groups: 1 << 12,
        o_lora_rank: 1 << 16,
        hc_mult: 64,
        compress_ratios: vec![0; MAX_LAYERS],
        n_hash_layers: 0,
        ..Config::tiny()
    };
    c.validate().unwrap();
    let t = Instant::now();
    let pc = c.param_counts();
    assert!(t.elapsed() < Duration::from_secs(5), "param_counts took {:?}", t.elapsed());
    let routed = 3u128 * (1 << 18) * (1 << 16) * (1 << 16) * MAX_LAYERS as u128;
    assert_eq!(pc.routed_experts as u128, routed);
    assert_eq!(pc.embedding as u128, 1u128 << 38);
    assert!(pc.total > pc.routed_experts && pc.total < u64::MAX, "{pc:?}");
    assert!(pc.active < pc.total, "{pc:?}");
    let kv = c.kv_bytes_per_token(1 << 20, 2);
    assert!(kv.iter().all(|(_, _, b)| b.is_finite()));
    assert!(cost::v4_decode_cost(&c, 1 << 20).flops().is_finite());
}

/// The arithmetic count agrees with the full tensor listing on the presets and golden configs.
#[test]
fn parameter_counts_match_the_tensor_shapes() {
    let mut configs: Vec<Config> = Config::PRESETS.iter().map(|p| Config::preset(p).unwrap()).collect();
    configs.extend(golden_configs().iter().map(|v| Config::from_json_str(&v.to_string()).unwrap()));
    for c in configs {
        let shapes = c.param_shapes();
        let numel = |s: &[usize]| s.iter().product::<usize>() as u64;
        let main: u64 = shapes.iter().filter(|(n, _)| !n.starts_with("mtp.")).map(|(_, s)| numel(s)).sum();
        let mtp: u64 = shapes.iter().filter(|(n, _)| n.starts_with("mtp.")).map(|(_, s)| numel(s)).sum();
        let routed: u64 = shapes.iter().filter(|(n, _)| n.contains(".ffn.experts.")).map(|(_, s)| numel(s)).sum();
        let pc = c.param_counts();
        assert_eq!((pc.total, pc.mtp, pc.routed_experts), (main, mtp, routed - mtp_routed(&c)));
    }
}

/// Routed-expert parameters inside the MTP blocks (listed under `mtp.` too).
fn mtp_routed(c: &Config) -> u64 {
    (3 * c.moe_inter_dim * c.dim * c.n_routed_experts * c.n_mtp_layers) as u64
}
