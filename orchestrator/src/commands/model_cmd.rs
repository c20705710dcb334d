//! `model info|forward|quantize` and `bench forward`.

use crate::cli::{BenchModelArgs, ConfigSource, ForwardArgs};
use crate::ui::print_json;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use model::checkpoint::{self, SaveFormat};
use model::train::{SeqInput, TrainModel, TrainOptions};
use model::{Config, Engine, EngineOptions, ModelWeights, Numerics, Row, Want};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

fn load_config(src: &ConfigSource) -> Result<Config> {
    match (&src.preset, &src.config) {
        (Some(p), _) => Ok(Config::preset(p)?),
        (_, Some(f)) => Ok(Config::from_file(f)?),
        _ => bail!("give --preset or --config"),
    }
}

pub fn info(src: &ConfigSource, json_out: bool) -> Result<()> {
    let c = load_config(src)?;
    let pc = c.param_counts();
    let layers: Vec<serde_json::Value> = (0..c.n_layers)
        .map(|l| json!({"layer": l, "attention": c.layer_kind(l).name(), "compress_ratio": c.ratio(l), "routing": if c.is_hash_layer(l) { "hash" } else { "biased_topk" }}))
        .collect();
    let ctx = 1 << 20;
    let kv = c.kv_bytes_per_token(ctx, 2);
    let kv_json: serde_json::Map<String, serde_json::Value> =
        kv.iter().map(|(k, n, b)| (k.name().to_string(), json!({"layers": n, "bytes_per_token": b}))).collect();
    let kv_total: f64 = kv.iter().map(|(_, _, b)| b).sum();
    if json_out {
        print_json(&json!({
            "total_params": pc.total, "active_params": pc.active, "mtp_params": pc.mtp, "embedding_params": pc.embedding,
            "routed_expert_params": pc.routed_experts, "layers": layers,
            "kv_cache_bytes_per_token_at_1m": {"by_kind": kv_json, "total": kv_total, "context": ctx, "dtype": "bf16"},
            "config": serde_json::from_str::<serde_json::Value>(&c.to_json_pretty())?,
        }));
        return Ok(());
    }
    let fmt = |n: u64| {
        if n >= 1_000_000_000 {
            format!("{:.2}B", n as f64 / 1e9)
        } else {
            format!("{:.2}M", n as f64 / 1e6)
        }
    };
    println!(
        "params: total {} ({}), active per token {} ({}), MTP {}",
        fmt(pc.total),
        pc.total,
        fmt(pc.active),
        pc.active,
        fmt(pc.mtp)
    );
    println!(
        "dim {} · {} layers · {} heads × {} · vocab {} · {} experts (top-{}, {} shared) · window {}",
        c.dim,
        c.n_layers,
        c.n_heads,
        c.head_dim,
        c.vocab_size,
        c.n_routed_experts,
        c.n_activated_experts,
        c.n_shared_experts,
        c.window_size
    );
    let sched: Vec<String> = (0..c.n_layers)
        .map(|l| format!("{}{}", c.layer_kind(l).name(), if c.is_hash_layer(l) { "*" } else { "" }))
        .collect();
    println!("layers (* = hash-routed MoE): {}", sched.join(" "));
    println!("KV cache at 1M context (bf16 entries), bytes per token:");
    for (k, n, b) in &kv {
        println!("  {:<7} {:>3} layers  {:>10.1}", k.name(), n, b);
    }
    println!("  total              {kv_total:>10.1}");
    Ok(())
}

fn parse_numerics(s: &str) -> Result<Numerics> {
    Ok(match s {
        "qat" => Numerics::QAT,
        "dense" => Numerics::DENSE,
        "act-fp8" | "act_fp8" => Numerics::ACT_FP8,
        o => bail!("unknown --numerics `{o}` (qat, dense, act-fp8)"),
    })
}

pub fn forward(a: &ForwardArgs) -> Result<()> {
    let w = checkpoint::load(&a.checkpoint).with_context(|| format!("loading {}", a.checkpoint.display()))?;
    let engine =
        Engine::new(&w, EngineOptions { numerics: parse_numerics(&a.numerics)?, fp4_experts: !a.f32_experts })?;
    let text = std::fs::read_to_string(&a.tokens).with_context(|| format!("reading {}", a.tokens.display()))?;
    let seqs: Vec<Vec<u32>> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON list of token-id lists", a.tokens.display()))?;
    let v = engine.config.vocab_size;
    let mut out: HashMap<String, (Vec<usize>, Vec<u8>)> = HashMap::new();
    for (i, toks) in seqs.iter().enumerate() {
        if toks.is_empty() {
            bail!("sequence {i} is empty");
        }
        if let Some(t) = toks.iter().find(|&&t| t as usize >= v) {
            bail!("sequence {i}: token id {t} is outside the vocabulary ({v})");
        }
        let mut states = [engine.new_state()];
        let logits: Vec<f32> = match a.decode_from {
            None => {
                engine
                    .forward(
                        &mut states,
                        &toks.iter().map(|&t| Row { seq: 0, token: t }).collect::<Vec<_>>(),
                        Want::AllLogits,
                    )?
                    .values
            }
            Some(k) => {
                if k == 0 || k > toks.len() {
                    bail!("--decode-from {k} must be between 1 and the sequence length ({})", toks.len());
                }
                let mut all = engine
                    .forward(
                        &mut states,
                        &toks[..k].iter().map(|&t| Row { seq: 0, token: t }).collect::<Vec<_>>(),
                        Want::AllLogits,
                    )?
                    .values;
                for &t in &toks[k..] {
                    all.extend(engine.forward(&mut states, &[Row { seq: 0, token: t }], Want::LastLogits)?.values);
                }
                all
            }
        };
        out.insert(format!("logits.{i}"), (vec![toks.len(), v], logits.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = out
        .iter()
        .map(|(k, (shape, bytes))| {
            Ok((k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)?))
        })
        .collect::<Result<_>>()?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    safetensors::serialize_to_file(views, None, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote logits of {} sequences to {}", seqs.len(), a.out.display());
    Ok(())
}

pub fn quantize(input: &Path, out: &Path, format: &str, shard_mib: Option<usize>) -> Result<()> {
    let fmt: SaveFormat = format.parse()?;
    let w = checkpoint::load(input).with_context(|| format!("loading {}", input.display()))?;
    checkpoint::save(&w, out, fmt, shard_mib.map(|m| m << 20)).with_context(|| format!("writing {}", out.display()))?;
    let bytes: u64 =
        std::fs::read_dir(out)?.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    eprintln!(
        "wrote {format} checkpoint ({} params, {:.2} MB) to {}",
        w.num_params(),
        bytes as f64 / 1e6,
        out.display()
    );
    Ok(())
}

/// Weights for a benchmark: a checkpoint, or a preset with seeded random weights.
pub fn bench_weights(preset: Option<&str>, ckpt: Option<&Path>) -> Result<ModelWeights> {
    match (preset, ckpt) {
        (_, Some(p)) => Ok(checkpoint::load(p).with_context(|| format!("loading {}", p.display()))?),
        (Some(p), None) => {
            let c = Config::preset(p)?;
            let n = c.param_counts().total;
            if n > 2_000_000_000 {
                bail!("preset `{p}` has {:.0}B parameters: it does not fit this benchmark's in-memory f32 model; use tiny, small or a checkpoint", n as f64 / 1e9);
            }
            Ok(ModelWeights::random(&c, 0)?)
        }
        (None, None) => bail!("give --preset or --checkpoint"),
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

pub fn bench_tokens(n: usize, vocab: usize, seed: usize) -> Vec<u32> {
    (0..n).map(|i| (2 + (i * 2654435761usize + seed * 40503) % (vocab - 2)) as u32).collect()
}

pub fn bench_forward(a: &BenchModelArgs) -> Result<()> {
    let w = bench_weights(a.preset.as_deref(), a.checkpoint.as_deref())?;
    let reps = a.reps.max(1);
    let cfg = w.config.clone();
    let engine = Engine::new(&w, EngineOptions::default())?;
    let toks = bench_tokens(256, cfg.vocab_size, 1);
    let rows: Vec<Row> = toks.iter().map(|&t| Row { seq: 0, token: t }).collect();
    let mut prefill = Vec::new();
    for _ in 0..reps + 1 {
        let mut st = [engine.new_state()];
        let t = Instant::now();
        engine.forward(&mut st, &rows, Want::LastLogits)?;
        prefill.push(t.elapsed().as_secs_f64());
    }
    prefill.remove(0); // warm-up
    let model = TrainModel::from_weights(&w, DType::F32, TrainOptions::default())?;
    let batch: Vec<SeqInput> =
        (0..4).map(|b| SeqInput { tokens: bench_tokens(128, cfg.vocab_size, b + 2), forced: None }).collect();
    let mut train = Vec::new();
    for _ in 0..reps.min(3) + 1 {
        let t = Instant::now();
        let out = model.forward(&batch)?;
        let logits = model.logits(&out.hidden)?;
        let targets = Tensor::from_vec(
            batch.iter().flat_map(|s| s.tokens.iter().copied()).collect::<Vec<u32>>(),
            (4 * 128,),
            model.device(),
        )?;
        let lp = model::train::ops::log_softmax_last(&logits.reshape((4 * 128, cfg.vocab_size))?)?;
        let mut loss = lp.gather(&targets.unsqueeze(1)?, 1)?.mean_all()?.neg()?;
        if let Some(aux) = out.indexer_loss {
            loss = (loss + aux)?;
        }
        let _grads = loss.backward()?;
        train.push(t.elapsed().as_secs_f64());
    }
    train.remove(0);
    let (p, tr) = (median(prefill), median(train));
    let out = json!({"prefill_tokens_per_s": 256.0 / p, "train_tokens_per_s": 512.0 / tr, "prefill_s_median": p, "train_step_s_median": tr,
        "params": w.num_params(), "simd": model::kernels::simd_level(), "threads": rayon::current_num_threads(), "reps": reps,
        "note": "prefill: engine, 1×256 tokens, QAT numerics, FP4 experts; train: candle forward+backward of 4×128 tokens (no optimizer)"});
    if a.json {
        print_json(&out);
    } else {
        println!(
            "prefill {:.0} tok/s (1×256, median of {reps}), train fwd+bwd {:.0} tok/s (4×128)",
            256.0 / p,
            512.0 / tr
        );
    }
    Ok(())
}
