//! Benchmarks of the training side: `bench opd-kl`.

use crate::alloc;
use crate::ui::print_json;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor, Var};
use clap::Args;
use model::weights::SeededNormal;
use serde_json::json;
use std::time::Instant;
use trainer::kl::{naive_reverse_kl, reverse_kl, Chunks, Estimator, HeadInput};

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
