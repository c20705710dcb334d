//! Benchmarks of the training side: `bench opd-kl`, `bench rollout`, `bench train-step`, `bench queue`.
//!
//! `bench train-step` splits an SFT optimizer step into forward (loss), backward (gradients,
//! accumulated over `--accum` micro-batches) and optimizer (clip + update) time, and counts the
//! optimizer's FLOPs: per m×n Muon matrix (m ≤ n) each of the 10 Newton–Schulz iterations
//! `A = XXᵀ`, `A²`, `X ← aX + (bA + cA²)X` costs 2m²n + 2m³ + 2m²n, plus ~13 elementwise FLOPs per
//! element (momentum, update, norm/clip); AdamW ~13 per element.

use crate::alloc;
use crate::ui::print_json;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use clap::Args;
use clap::Subcommand;
use model::weights::SeededNormal;
use serde_json::json;
use std::time::Instant;
use trainer::kl::{naive_reverse_kl, reverse_kl, Chunks, Estimator, HeadInput};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Write and read trajectories; tokens/s and bytes on disk.
    Store {
        #[arg(long, default_value_t = 100_000)]
        n: usize,
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        #[arg(long)]
        json: bool,
    },
    /// Prefill and training throughput of a preset or checkpoint.
    Forward(crate::commands::model_cmd::BenchModelArgs),
    /// Fused chunked full-vocabulary reverse KL vs naive autograd: time, peak memory, differences.
    OpdKl(crate::commands::bench_cmd::OpdKlArgs),
    /// Decode tokens/s with FP4 vs f32 experts (batch 1/8/32), FP4 GEMV bandwidth vs memcpy.
    Rollout(crate::commands::bench_cmd::RolloutBenchArgs),
    /// SFT and GRPO training steps: tokens/s, forward / backward / optimizer time split,
    /// optimizer GFLOP/s vs an f32 GEMM, peak RSS (`--optim`, `--numerics`, `--accum`).
    TrainStep(crate::commands::bench_cmd::TrainStepArgs),
    /// Queue throughput and latency, embedded and Redis.
    Queue(crate::commands::bench_cmd::QueueBenchArgs),
}

#[derive(Args, Debug)]
pub struct OpdKlArgs {
    #[arg(long, default_value_t = 129_280)]
    pub vocab: usize,
    /// Response tokens of the fused run.
    #[arg(long, default_value_t = 4096)]
    pub tokens: usize,
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Tokens of the naive (materialised [tokens × vocab]) run; its time is scaled to `tokens`.
    #[arg(long, default_value_t = 256)]
    pub naive_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub chunk_rows: usize,
    #[arg(long, default_value_t = 4096)]
    pub chunk_vocab: usize,
    /// Repetitions of the fused run (median reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    #[arg(long)]
    pub json: bool,
}

fn normal(n: usize, std: f64, seed: u64) -> Vec<f32> {
    let mut r = SeededNormal::new(seed);
    (0..n).map(|_| (r.normal() * std) as f32).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn opd_kl(a: &OpdKlArgs) -> Result<()> {
    let (v, n, d) = (a.vocab, a.tokens, a.hidden);
    if v == 0 || n == 0 || d == 0 || a.naive_tokens == 0 {
        bail!("--vocab, --tokens, --hidden and --naive-tokens must be positive");
    }
    let nn = a.naive_tokens.min(n);
    let chunks = Chunks { rows: a.chunk_rows.max(1), vocab: a.chunk_vocab.max(1) };
    let std_w = 1.0 / (d as f64).sqrt();
    let hs = normal(n * d, 1.0, 1);
    let ht = normal(n * d, 1.0, 2);
    let ws = normal(v * d, std_w, 3);
    let wt = normal(v * d, std_w, 4);
    let coef = vec![1.0 / n as f32; n];
    let run_fused = |rows: usize, coef: &[f32]| {
        reverse_kl(
            HeadInput { hidden: &hs[..rows * d], head: &ws, dim: d },
            HeadInput { hidden: &ht[..rows * d], head: &wt, dim: d },
            coef,
            v,
            1.0,
            Estimator::FullVocab,
            None,
            chunks,
        )
    };
    // fused, full size
    let mut times = Vec::new();
    let mut peak = 0usize;
    for _ in 0..a.reps.max(1) {
        let base = alloc::reset_peak();
        let t = Instant::now();
        let out = run_fused(n, &coef)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        peak = peak.max(alloc::peak() - base);
        drop(out);
    }
    let grad_bytes = (n * d + v * d) * 4;
    // naive (candle autograd over materialised logits) on the first `nn` tokens
    let dev = Device::Cpu;
    let coef_n = vec![1.0 / nn as f32; nn];
    let base = alloc::reset_peak();
    let t = Instant::now();
    let h = Var::from_slice(&hs[..nn * d], (nn, d), &dev)?;
    let w = Var::from_slice(&ws, (v, d), &dev)?;
    let th = Tensor::from_slice(&ht[..nn * d], (nn, d), &dev)?;
    let tw = Tensor::from_slice(&wt, (v, d), &dev)?;
    let c = Tensor::from_slice(&coef_n, nn, &dev)?;
    let loss = naive_reverse_kl(h.as_tensor(), w.as_tensor(), &th, &tw, &c, 1.0)?;
    let g = loss.backward()?;
    let naive_ms = t.elapsed().as_secs_f64() * 1e3;
    let naive_peak = alloc::peak() - base;
    let ngh: Vec<f32> = g.get(h.as_tensor()).map(|t| t.flatten_all()?.to_vec1()).transpose()?.unwrap_or_default();
    let ngw: Vec<f32> = g.get(w.as_tensor()).map(|t| t.flatten_all()?.to_vec1()).transpose()?.unwrap_or_default();
    let nloss = loss.to_scalar::<f32>()? as f64;
    drop(g);
    // fused on the same subset, for the differences
    let small = run_fused(nn, &coef_n)?;
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = n as f64 / nn as f64;
    let fused_ms = median(times);
    let out = json!({
        "vocab": v, "tokens": n, "hidden": d,
        "chunk_rows": chunks.rows, "chunk_vocab": chunks.vocab, "threads": rayon::current_num_threads(),
        "fused_ms": fused_ms,
        "fused_peak_bytes": peak,
        "fused_peak_bytes_excluding_grads": peak.saturating_sub(grad_bytes),
        "naive_tokens": nn,
        "naive_ms": naive_ms * scale,
        "naive_ms_measured": naive_ms,
        "naive_peak_bytes": naive_peak,
        "naive_note": format!("naive = candle autograd over materialised [tokens × vocab] logits, run on {nn} tokens; naive_ms is scaled ×{scale:.1} to {n} tokens, naive_peak_bytes is measured at {nn} tokens"),
        "tokens_x_vocab_f32_bytes": n * v * 4,
        "max_abs_diff_loss": (small.loss - nloss).abs(),
        "max_abs_diff_grad": max_diff(&small.grad_hidden, &ngh).max(max_diff(&small.grad_head, &ngw)),
        "speedup": naive_ms * scale / fused_ms,
    });
    if a.json {
        print_json(&out);
    } else {
        println!(
            "fused: {:.0} ms, peak {:.1} MiB ({:.1} MiB beyond the gradients)\nnaive: {:.0} ms (scaled from {nn} tokens), peak {:.1} MiB at {nn} tokens\n[T×V] f32 would be {:.1} MiB; max |Δloss| {:.2e}, max |Δgrad| {:.2e}",
            fused_ms,
            peak as f64 / 1048576.0,
            peak.saturating_sub(grad_bytes) as f64 / 1048576.0,
            naive_ms * scale,
            naive_peak as f64 / 1048576.0,
            (n * v * 4) as f64 / 1048576.0,
            out["max_abs_diff_loss"].as_f64().unwrap_or(f64::NAN),
            out["max_abs_diff_grad"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct RolloutBenchArgs {
    #[arg(long, value_parser = crate::choices::preset_parser(), conflicts_with = "checkpoint")]
    pub preset: Option<String>,
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Batch sizes (sequences decoding together).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batches: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    pub prompt: usize,
    #[arg(long, default_value_t = 128)]
    pub decode: usize,
    /// Repetitions per point (median reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Shape of the GEMV bandwidth test matrix (default: FP4 ≈ 285 MB, beyond this
    /// machine's 260 MiB L3; the f32 copy is 2.1 GB).
    #[arg(long, default_value_t = 16384)]
    pub gemv_rows: usize,
    #[arg(long, default_value_t = 32768)]
    pub gemv_cols: usize,
    #[arg(long)]
    pub json: bool,
}

/// Decode tokens/s of `b` sequences: prefill `prompt` tokens, then `decode` greedy steps.
fn decode_tps(
    engine: &model::Engine,
    b: usize,
    prompt: usize,
    decode: usize,
) -> Result<(f64, model::engine::StateBytes)> {
    use model::{Row, Want};
    let vocab = engine.config.vocab_size;
    let mut states: Vec<_> = (0..b).map(|_| engine.new_state()).collect();
    let mut rows = Vec::new();
    for s in 0..b {
        for t in super::model_cmd::bench_tokens(prompt, vocab, s + 1) {
            rows.push(Row { seq: s, token: t });
        }
    }
    let out = engine.forward(&mut states, &rows, Want::LastLogits)?;
    let argmax = |o: &model::engine::Output, i: usize| -> u32 {
        let r = o.row(i);
        (0..r.len()).max_by(|&a, &c| r[a].total_cmp(&r[c])).unwrap_or(0) as u32
    };
    let mut next: Vec<u32> = (0..b).map(|i| argmax(&out, i)).collect();
    let t = Instant::now();
    for _ in 0..decode {
        let rows: Vec<Row> = (0..b).map(|s| Row { seq: s, token: next[s] }).collect();
        let o = engine.forward(&mut states, &rows, Want::LastLogits)?;
        next = (0..b).map(|i| argmax(&o, i)).collect();
    }
    let tps = (b * decode) as f64 / t.elapsed().as_secs_f64();
    Ok((tps, states[0].bytes()))
}

/// Fast uniform weights in [-1, 1) for the bandwidth test (no need for normals).
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

pub fn rollout(a: &RolloutBenchArgs) -> Result<()> {
    use model::formats::mxfp4::{Mxfp4Matrix, ScaleRule};
    use model::{Engine, EngineOptions};
    let reps = a.reps.max(1);
    let mut runs = Vec::new();
    let mut bytes = serde_json::Map::new();
    let mut state_bytes = None;
    let options = |fp4_experts| EngineOptions { fp4_experts, ..Default::default() };
    // A checkpoint loads through the mapped engine, as rollout workers load it.
    let mut load_s = serde_json::Map::new();
    let engines = match a.checkpoint.as_deref() {
        Some(p) => {
            let mut load = |fp4| -> Result<(&'static str, Engine)> {
                let name = if fp4 { "fp4" } else { "f32" };
                let t = Instant::now();
                let e = Engine::from_checkpoint(p, options(fp4)).with_context(|| format!("loading {}", p.display()))?;
                load_s.insert(format!("{name}_load_s"), json!(t.elapsed().as_secs_f64()));
                Ok((name, e))
            };
            [load(true)?, load(false)?]
        }
        None => {
            let w = super::model_cmd::bench_weights(a.preset.as_deref(), None)?;
            [("fp4", Engine::new(&w, options(true))?), ("f32", Engine::new(&w, options(false))?)]
        }
    };
    for (name, e) in &engines {
        let (experts, other) = e.weight_bytes();
        bytes.insert(format!("{name}_weight_bytes"), json!(experts + other));
        bytes.insert(format!("{name}_expert_weight_bytes"), json!(experts));
    }
    for &b in &a.batches {
        let mut row = serde_json::Map::new();
        row.insert("batch".into(), json!(b));
        for (name, e) in &engines {
            let mut v = Vec::new();
            for _ in 0..reps {
                let (tps, sb) = decode_tps(e, b, a.prompt, a.decode)?;
                v.push(tps);
                state_bytes = Some(sb);
            }
            row.insert(format!("{name}_tokens_per_s"), json!(median(v)));
        }
        let ratio = row["fp4_tokens_per_s"].as_f64().unwrap_or(0.0) / row["f32_tokens_per_s"].as_f64().unwrap_or(1.0);
        row.insert("fp4_over_f32".into(), json!(ratio));
        runs.push(serde_json::Value::Object(row));
    }
    // GEMV bandwidth on a matrix larger than the caches
    let (n, k) = (a.gemv_rows, a.gemv_cols - a.gemv_cols % 32);
    let wf = uniform(n * k, 7);
    let m = Mxfp4Matrix::quantize(&wf, n, k, ScaleRule::DeepSeekCeil);
    let x = uniform(k, 9);
    let mut out = vec![0f32; n];
    let mut t_fp4 = Vec::new();
    let mut t_f32 = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        model::kernels::matmul_fp4(&x, 1, &m, &mut out);
        t_fp4.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        model::kernels::matmul_f32(&x, 1, k, &wf, n, &mut out);
        t_f32.push(t.elapsed().as_secs_f64());
    }
    let fp4_bytes = (m.packed.len() + m.scales.len()) as f64;
    let f32_bytes = (n * k * 4) as f64;
    let (t4, t32) = (median(t_fp4), median(t_f32));
    drop(wf);
    // memory copy in parallel chunks (both kernels above use every core too)
    let len = 512usize << 20;
    let src = vec![1u8; len];
    let mut dst = vec![0u8; len];
    let mut t_copy = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        use rayon::prelude::*;
        dst.par_chunks_mut(8 << 20).zip(src.par_chunks(8 << 20)).for_each(|(d, s)| d.copy_from_slice(s));
        t_copy.push(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    let memcpy = len as f64 / median(t_copy) / 1e9;
    let sb = state_bytes.unwrap_or_default();
    let mut o = json!({
        "runs": runs,
        "prompt_tokens": a.prompt, "decode_steps": a.decode, "reps": reps, "threads": rayon::current_num_threads(),
        "simd": model::kernels::simd_level(),
        "fp4_gemv_gbps": fp4_bytes / t4 / 1e9,
        "f32_gemv_gbps": f32_bytes / t32 / 1e9,
        "gemv_fp4_over_f32_speed": t32 / t4,
        "gemv_shape": [n, k],
        "memcpy_gbps": memcpy,
        "fp4_gemv_fraction_of_memcpy": fp4_bytes / t4 / 1e9 / memcpy,
        "decode_state_bytes_per_sequence": {
            "after_tokens": a.prompt + a.decode,
            "window": sb.window, "compressed_entries": sb.entries, "indexer_keys": sb.index_keys, "compressor_carry": sb.carry, "total": sb.total(),
        },
        "note": "memcpy_gbps = bytes copied per second (parallel, 512 MiB); GEMV GB/s = weight bytes streamed per second",
    });
    if let Some(obj) = o.as_object_mut() {
        obj.extend(bytes);
        obj.extend(load_s);
    }
    if a.json {
        print_json(&o);
    } else {
        for r in o["runs"].as_array().into_iter().flatten() {
            println!(
                "batch {:>3}: FP4 experts {:>8.1} tok/s, f32 experts {:>8.1} tok/s ({:.2}×)",
                r["batch"],
                r["fp4_tokens_per_s"].as_f64().unwrap_or(0.0),
                r["f32_tokens_per_s"].as_f64().unwrap_or(0.0),
                r["fp4_over_f32"].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "GEMV {n}×{k}: FP4 {:.2} GB/s, f32 {:.2} GB/s ({:.2}× faster), memcpy {:.2} GB/s (FP4 at {:.0}%)",
            o["fp4_gemv_gbps"].as_f64().unwrap_or(0.0),
            o["f32_gemv_gbps"].as_f64().unwrap_or(0.0),
            t32 / t4,
            memcpy,
            100.0 * o["fp4_gemv_fraction_of_memcpy"].as_f64().unwrap_or(0.0)
        );
        if let (Some(f4), Some(f32_)) = (o["fp4_load_s"].as_f64(), o["f32_load_s"].as_f64()) {
            println!("loaded (Engine::from_checkpoint): FP4 experts {f4:.2} s, f32 experts {f32_:.2} s");
        }
    }
    Ok(())
}

/// Optimizer of `bench train-step`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchOptim {
    /// Muon (hybrid Newton–Schulz) for 2-D matrices + AdamW for the rest (the trainers' default).
    Muon,
    /// Every trained parameter in AdamW (the work of hf_anchor.py's `train_4x128` row).
    Adamw,
}

/// Numerics of the trainable graph in `bench train-step`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchNumerics {
    /// Plain f32: no KV-FP8 / indexer-FP4 simulation, no expert fake-quant, no indexer loss
    /// (next-token CE only, as hf_anchor.py's `train_4x128`).
    Dense,
    /// The trainers' default: KV-FP8 + indexer-FP4 simulation, FP4 fake-quant (QAT) of the
    /// routed experts, indexer KL loss on.
    Qat,
}

impl BenchOptim {
    fn name(self) -> &'static str {
        match self {
            BenchOptim::Muon => "muon",
            BenchOptim::Adamw => "adamw",
        }
    }
}

impl BenchNumerics {
    fn name(self) -> &'static str {
        match self {
            BenchNumerics::Dense => "dense",
            BenchNumerics::Qat => "qat",
        }
    }

    fn train_options(self) -> model::train::TrainOptions {
        match self {
            BenchNumerics::Dense => {
                model::train::TrainOptions { numerics: model::Numerics::DENSE, qat_experts: false, indexer_loss: false }
            }
            BenchNumerics::Qat => model::train::TrainOptions::default(),
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainStepArgs {
    #[arg(long, value_parser = crate::choices::preset_parser(), conflicts_with = "checkpoint")]
    pub preset: Option<String>,
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Timed optimizer steps (after one untimed warm-up); medians reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Optimizer of the step.
    #[arg(long, value_enum, default_value_t = BenchOptim::Muon)]
    pub optim: BenchOptim,
    /// Numerics of the trainable graph.
    #[arg(long, value_enum, default_value_t = BenchNumerics::Qat)]
    pub numerics: BenchNumerics,
    /// Micro-batches (forward + backward of `--batch`×`--seq` each) per optimizer step.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub accum: u32,
    #[arg(long)]
    pub json: bool,
}

/// Seconds of one timed optimizer step, by phase.
#[derive(Debug, Clone, Copy)]
struct StepTimes {
    forward: f64,
    backward: f64,
    optimizer: f64,
    total: f64,
}

/// `acc += g`, variable by variable (the SFT trainer's gradient accumulation).
fn accumulate(
    sess: &trainer::Session,
    acc: Option<candle_core::backprop::GradStore>,
    g: candle_core::backprop::GradStore,
) -> Result<candle_core::backprop::GradStore> {
    let Some(mut acc) = acc else {
        return Ok(g);
    };
    for var in sess.model.vars().values() {
        if let Some(gn) = g.get(var.as_tensor()) {
            let sum = match acc.get(var.as_tensor()) {
                Some(a) => (a + gn)?,
                None => gn.clone(),
            };
            acc.insert(var.as_tensor(), sum);
        }
    }
    Ok(acc)
}

/// FLOPs of one optimizer update over the parameters that have a gradient in `grads`.
///
/// Muon, per `[r, c]` matrix with `m = min(r, c)`, `n = max(r, c)`: each Newton–Schulz
/// iteration `A = XXᵀ` (2m²n), `A²` (2m³), `X ← aX + (bA + cA²)X` (2m²n + 3m² + 2mn), times
/// the 10 iterations of the hybrid schedule, plus ~10·mn for normalisation, momentum, Nesterov
/// and the decayed update. AdamW: 10 per element. Both: 3 per element for the global gradient
/// norm and the clip factor.
fn optimizer_flops(sess: &trainer::Session, grads: &candle_core::backprop::GradStore) -> f64 {
    use trainer::optim::{Group, HYBRID_NS};
    let mut flops = 0f64;
    for (name, var) in sess.model.vars() {
        let Some(st) = sess.opt.params.get(name) else { continue };
        if grads.get(var.as_tensor()).is_none() {
            continue;
        }
        let numel = st.shape.iter().product::<usize>() as f64;
        flops += match st.group {
            Group::None => 0.0,
            Group::Adamw => 13.0 * numel,
            Group::Muon => {
                let (m, n) = (st.shape[0].min(st.shape[1]) as f64, st.shape[0].max(st.shape[1]) as f64);
                let iter = 4.0 * m * m * n + 2.0 * m * m * m + 3.0 * m * m + 2.0 * m * n;
                HYBRID_NS.len() as f64 * iter + 13.0 * numel
            }
        };
    }
    flops
}

/// Products timed by the GEMM-peak probes: a peak is the best the machine reaches, so the
/// fastest of these is reported (a median of a few 10 ms products moved by ±30 % with the
/// host's load and read below what Newton–Schulz itself reached).
const PEAK_PROBES: usize = 15;

/// GFLOP/s of a plain `[n, n] × [n, n]` f32 matmul through candle (the model's matmul path):
/// one warm-up, then the fastest of [`PEAK_PROBES`].
fn gemm_peak_gflops(n: usize) -> Result<f64> {
    let dev = Device::Cpu;
    let a = Tensor::from_vec(uniform(n * n, 11), (n, n), &dev)?;
    let b = Tensor::from_vec(uniform(n * n, 13), (n, n), &dev)?;
    std::hint::black_box(a.matmul(&b)?);
    let mut best = f64::INFINITY;
    for _ in 0..PEAK_PROBES {
        let t = Instant::now();
        std::hint::black_box(a.matmul(&b)?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

/// GFLOP/s of the same `[n, n] × [n, n]` product through `model::kernels::gemm` (the kernel
/// of Muon's Newton–Schulz iterations): one warm-up, then the fastest of [`PEAK_PROBES`].
fn kernel_gemm_gflops(n: usize) -> f64 {
    use model::kernels::{gemm, Mat};
    let (a, b) = (uniform(n * n, 11), uniform(n * n, 13));
    let mut out = vec![0f32; n * n];
    gemm(Mat::new(&a, n, n), Mat::new(&b, n, n), &mut out, false, true);
    let mut best = f64::INFINITY;
    for _ in 0..PEAK_PROBES {
        let t = Instant::now();
        gemm(Mat::new(&a, n, n), Mat::new(&b, n, n), &mut out, false, true);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&out);
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// Peak resident set size of this process (`VmHWM` of /proc/self/status).
fn peak_rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no VmHWM line"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("/proc/self/status: unreadable VmHWM line `{line}`"))?;
    Ok(kb * 1024)
}

/// Forward + backward + optimizer update of SFT and GRPO steps on `batch × seq` tokens.
///
/// SFT step, split: forward = `batch_loss` (model forward, logits, next-token CE, indexer loss
/// under `qat`); backward = `backward()` plus gradient accumulation; optimizer =
/// `Session::step` (gradient norm, clipping, update, weights written back). With `--accum N`
/// a step is N micro-batches then one update. The split reported is that of the step whose
/// total time is the median, so its parts add up to no more than `step_s`.
pub fn train_step(a: &TrainStepArgs) -> Result<()> {
    use trainer::sft::{batch_loss, Example};
    let w = super::model_cmd::bench_weights(a.preset.as_deref(), a.checkpoint.as_deref())?;
    let vocab = w.config.vocab_size;
    let (b, s) = (a.batch.max(1), a.seq.max(4));
    let accum = a.accum.max(1) as usize;
    let gemm_peak = gemm_peak_gflops(1024)?;
    let kernel_gemm = kernel_gemm_gflops(1024);
    let mut sess = trainer::Session::new(&w, a.numerics.train_options(), trainer::optim::OptimConfig::default(), 0)?;
    if a.optim == BenchOptim::Adamw {
        for st in sess.opt.params.values_mut() {
            if st.group == trainer::optim::Group::Muon {
                st.group = trainer::optim::Group::Adamw;
                st.v = vec![0.0; st.m.len()];
            }
        }
    }
    let indexer_coef = match a.numerics {
        BenchNumerics::Dense => 0.0,
        BenchNumerics::Qat => 1.0,
    };
    let micro: Vec<Vec<Example>> = (0..accum)
        .map(|k| {
            (0..b)
                .map(|i| {
                    let tokens = super::model_cmd::bench_tokens(s, vocab, k * b + i + 3);
                    Example { weights: vec![1.0; tokens.len()], tokens, docs: Vec::new() }
                })
                .collect()
        })
        .collect();
    let seqs = &micro[0];
    let mut steps: Vec<StepTimes> = Vec::new();
    let mut opt_flops = 0.0;
    for _ in 0..a.reps.max(1) + 1 {
        let start = Instant::now();
        let (mut fwd, mut bwd) = (0.0, 0.0);
        let mut grads = None;
        for mb in &micro {
            let t = Instant::now();
            let (loss, _, _) = batch_loss(&sess, mb, indexer_coef)?;
            let loss = if accum > 1 { (loss / accum as f64)? } else { loss };
            fwd += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let g = sess.model.backward(&loss)?;
            grads = Some(accumulate(&sess, grads, g)?);
            bwd += t.elapsed().as_secs_f64();
        }
        let g = grads.ok_or_else(|| anyhow::anyhow!("no gradients"))?;
        let t = Instant::now();
        sess.step(&g, 1.0)?;
        let optimizer = t.elapsed().as_secs_f64();
        let total = start.elapsed().as_secs_f64();
        opt_flops = optimizer_flops(&sess, &g);
        steps.push(StepTimes { forward: fwd, backward: bwd, optimizer, total });
    }
    steps.remove(0);
    steps.sort_by(|x, y| x.total.total_cmp(&y.total));
    let split = steps[steps.len() / 2];
    // GRPO: half prompt, half response; clipped surrogate with importance ratios
    let half = s / 2;
    let cfg = trainer::losses::GrpoLossConfig::default();
    let mut grpo = Vec::new();
    for _ in 0..a.reps.max(1) + 1 {
        let t = Instant::now();
        let inputs: Vec<model::train::SeqInput> =
            seqs.iter().map(|e| model::train::SeqInput::new(e.tokens.clone())).collect();
        let out = sess.model.forward(&inputs)?;
        let d = out.hidden.dim(2)?;
        let mut idx = Vec::new();
        let mut targets = Vec::new();
        for (bi, e) in seqs.iter().enumerate() {
            for j in half..s {
                idx.push((bi * s + j - 1) as u32);
                targets.push(e.tokens[j]);
            }
        }
        let h = out.hidden.reshape((b * s, d))?;
        let sel = Tensor::from_vec(idx, targets.len(), h.device())?;
        let logits = sess.model.logits(&h.index_select(&sel, 0)?)?;
        let lp = trainer::losses::token_logprobs(&logits, &targets, 1.0, None)?;
        let old: Vec<f32> = lp.detach().to_vec1()?;
        let lens = vec![s - half; b];
        let adv: Vec<f32> = (0..b).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let (loss, _) = trainer::losses::grpo_loss(&lp, &old, None, &lens, &adv, &cfg)?;
        let total = match out.indexer_loss {
            Some(x) => (loss + x)?,
            None => loss,
        };
        let g = sess.model.backward(&total)?;
        sess.step(&g, 1.0)?;
        grpo.push(t.elapsed().as_secs_f64());
    }
    grpo.remove(0);
    if std::env::var("V4POST_PROFILE").is_ok() {
        for (name, d, n) in model::train::prof::take() {
            eprintln!("{name:>14}: {:>8.1} ms over {n} calls", d.as_secs_f64() * 1e3);
        }
    }
    let tokens = (accum * b * s) as f64;
    let sft_s = split.total;
    let o = json!({
        "sft_tokens_per_s": tokens / sft_s,
        "grpo_tokens_per_s": (b * s) as f64 / median(grpo.clone()),
        "sft_step_s_median": sft_s,
        "grpo_step_s_median": median(grpo),
        "batch": b, "seq": s, "params": w.num_params(), "threads": rayon::current_num_threads(),
        "candle_threads": candle_core::utils::get_num_threads(),
        "forward_s": split.forward,
        "backward_s": split.backward,
        "optimizer_s": split.optimizer,
        "step_s": sft_s,
        "tokens_per_step": accum * b * s,
        "step_tokens_per_s": tokens / sft_s,
        "fwd_bwd_tokens_per_s": tokens / (split.forward + split.backward),
        "optimizer_flops": opt_flops,
        "optimizer_gflops": opt_flops / split.optimizer / 1e9,
        "gemm_peak_gflops": gemm_peak,
        "kernel_gemm_gflops": kernel_gemm,
        "peak_rss_bytes": peak_rss_bytes()?,
        "optim": a.optim.name(),
        "numerics": a.numerics.name(),
        "accum": accum,
        "reps": a.reps.max(1),
        "note": format!(
            "SFT step = {accum} × (forward + backward of {b}×{s}) + one {} update; split of the median step; GRPO = one micro-batch; numerics {}; optimizer_flops: Muon counts 10 Newton–Schulz iterations of 4m²n + 2m³ per m×n matrix (m ≤ n), AdamW 13/param; gemm_peak_gflops: candle f32 matmul 1024³ (forward/backward path), kernel_gemm_gflops: model::kernels::gemm 1024³ (Newton–Schulz path), each the fastest of 15 products",
            a.optim.name(),
            a.numerics.name()
        ),
    });
    if a.json {
        print_json(&o);
    } else {
        println!(
            "SFT {:.0} tok/s, GRPO {:.0} tok/s ({b}×{s}, fwd+bwd+update)",
            o["sft_tokens_per_s"].as_f64().unwrap_or(0.0),
            o["grpo_tokens_per_s"].as_f64().unwrap_or(0.0)
        );
        println!(
            "SFT step ({accum} × {b}×{s} tokens, {}, {}): forward {:.3} s, backward {:.3} s, optimizer {:.3} s ({:.2} GFLOP/s; f32 GEMM 1024³ {:.1} GFLOP/s candle, {:.1} kernels::gemm), total {:.3} s; peak RSS {:.1} MiB",
            a.optim.name(),
            a.numerics.name(),
            split.forward,
            split.backward,
            split.optimizer,
            opt_flops / split.optimizer / 1e9,
            gemm_peak,
            kernel_gemm,
            sft_s,
            o["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct QueueBenchArgs {
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// Redis URL of the Redis backend's measurement (the embedded queue is always measured).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub queue: String,
    /// Skip the Redis backend.
    #[arg(long)]
    pub no_redis: bool,
    #[arg(long)]
    pub json: bool,
}

/// Producer and consumer threads over one backend: throughput and push→pop latency.
fn queue_run(
    q: std::sync::Arc<dyn crate::queue::Queue>,
    reopen: impl Fn() -> Result<std::sync::Arc<dyn crate::queue::Queue>>,
    n: usize,
    payload: usize,
) -> Result<serde_json::Value> {
    let start = Instant::now();
    let pad = "x".repeat(payload.saturating_sub(24));
    let prod = {
        let q = reopen()?;
        let pad = pad.clone();
        std::thread::spawn(move || -> Result<()> {
            for _ in 0..n {
                let us = start.elapsed().as_micros();
                q.push("bench", &format!("{us:020}|{pad}"))?;
            }
            Ok(())
        })
    };
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        let Some(d) = q.pop("bench", "bench", std::time::Duration::from_secs(10))? else {
            anyhow::bail!("queue bench: a message did not arrive within 10 s");
        };
        let sent: u128 = d.payload.get(..20).and_then(|s| s.parse().ok()).unwrap_or(0);
        lat.push((start.elapsed().as_micros().saturating_sub(sent)) as f64 / 1e3);
        q.ack(&d)?;
    }
    prod.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    // unloaded latency: one message in flight at a time
    let m = (n / 10).clamp(100, 2000);
    let mut one = Vec::with_capacity(m);
    for _ in 0..m {
        let t = Instant::now();
        q.push("bench-lat", &pad)?;
        let d = q
            .pop("bench-lat", "bench", std::time::Duration::from_secs(10))?
            .ok_or_else(|| anyhow::anyhow!("lost a message"))?;
        one.push(t.elapsed().as_secs_f64() * 1e3);
        q.ack(&d)?;
    }
    let pct = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q) as usize]
    };
    Ok(json!({
        "msgs_per_s": n as f64 / secs,
        "p50_ms": pct(&mut one, 0.5), "p99_ms": pct(&mut one, 0.99),
        "p99_ms_saturated": pct(&mut lat, 0.99),
        "messages": n, "payload_bytes": payload,
    }))
}

pub fn queue(a: &QueueBenchArgs) -> Result<()> {
    use crate::queue::{self, QueueConfig};
    let cfg = QueueConfig::default();
    let emb = queue::open("embedded", "bench", cfg)?;
    let e2 = emb.clone();
    let mut o = serde_json::Map::new();
    o.insert("embedded".into(), queue_run(emb, move || Ok(e2.clone()), a.messages, a.payload)?);
    if !a.no_redis {
        let run = format!("bench-{}", std::process::id());
        let r = queue::open(&a.queue, &run, cfg)?;
        let url = a.queue.clone();
        let run2 = run.clone();
        o.insert("redis".into(), queue_run(r, move || Ok(queue::open(&url, &run2, cfg)?), a.messages, a.payload)?);
    }
    o.insert("note".into(), json!("msgs_per_s: one producer thread and one consumer (pop + ack per message) at full speed; p50/p99_ms: push → pop with one message in flight; p99_ms_saturated: push → pop during the throughput run (includes queueing)"));
    let o = serde_json::Value::Object(o);
    if a.json {
        print_json(&o);
    } else {
        for b in ["embedded", "redis"] {
            if let Some(x) = o.get(b) {
                println!(
                    "{b:<9} {:>10.0} msgs/s  p50 {:.3} ms  p99 {:.3} ms",
                    x["msgs_per_s"].as_f64().unwrap_or(0.0),
                    x["p50_ms"].as_f64().unwrap_or(0.0),
                    x["p99_ms"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    Ok(())
}
