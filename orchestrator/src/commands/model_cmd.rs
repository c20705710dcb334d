//! `model info|init|forward|quantize` and `bench forward`. `model info --checkpoint` also
//! measures loading the checkpoint for rollout (time, peak resident memory).

use crate::ui::{print_json, Bars};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::{Args, Subcommand};
use datasets::progress::Progress;
use model::checkpoint::{self, SaveFormat};
use model::cost::{self, DecodeCost, V32Config};
use model::train::{SeqInput, TrainModel, TrainOptions};
use model::{Config, Engine, EngineOptions, ModelWeights, Numerics, Row, Want};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// Layer schedule, parameter counts, KV-cache sizes and per-token decode cost of a config.
    ///
    /// With `--vs v3.2`, also DeepSeek-V3.2's single-token FLOPs and KV bytes at `--context`
    /// and the ratios (`--preset v3.2` prints V3.2 alone). Counting rules:
    /// linear = 2 FLOPs per active weight (embedding lookup free; norms and softmaxes not
    /// counted); attention = 2 FLOPs per multiply-add of q·k and p·v over every attended entry
    /// and head (V4: window + compressed entries, CSA through the indexer's top-k; V3.2: MLA
    /// absorbed, key width 512+64, value width 512, top-2048 tokens); indexer = its heads ×
    /// head dim over every candidate (V4: compressed entries of CSA layers; V3.2: every token
    /// of every layer). KV bytes: whole cache of one sequence, in BF16 and as the reference
    /// inference code stores it (V4: FP8 non-rope dims + BF16 rope, FP4 indexer keys; V3.2:
    /// FlashMLA's 656-byte FP8 entry + 132-byte FP8 indexer key). MTP layers not counted.
    Info(InfoArgs),
    /// Write a random checkpoint of any config in the official layout (FP8 projections, FP4
    /// experts), tensor by tensor: the model is never held in memory, so it suits benchmark
    /// checkpoints of any size. Values equal `ModelWeights::random(config, seed)` saved as
    /// `official`; sharded above --max-shard-bytes with `model.safetensors.index.json`.
    Init(ModelInitArgs),
    /// Conformance forward: logits of token sequences, as safetensors.
    Forward(ForwardArgs),
    /// Write the official FP8/FP4 layout from f32/bf16 weights.
    Quantize {
        /// The checkpoint to convert (f32 or bf16 safetensors with its config.json).
        #[arg(long = "checkpoint")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// official (FP8 + FP4), rollout (f32 + FP4 experts) or f32.
        #[arg(long, value_enum, default_value = "official")]
        format: crate::choices::QuantizeFormat,
        /// Split into shards of at most this many MiB (with an index file); default 4096.
        #[arg(long)]
        shard_mib: Option<usize>,
        /// One JSON object on stdout: format, params, bytes, out.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false, id = "source")]
pub struct ConfigSource {
    /// tiny, small, flash or pro (`model info` also takes v3.2).
    #[arg(long, value_parser = crate::choices::info_preset_parser(), group = "source")]
    pub preset: Option<String>,
    /// A config.json (official or HF keys).
    #[arg(long, group = "source")]
    pub config: Option<PathBuf>,
    /// A checkpoint directory: its config.json, and (`model info`) the time and peak resident
    /// memory of loading it for rollout.
    #[arg(long, group = "source")]
    pub checkpoint: Option<PathBuf>,
}

/// Where `model init` takes its config from.
#[derive(Args, Debug)]
#[group(required = true, multiple = false, id = "init_source")]
pub struct InitSource {
    /// tiny, small, flash or pro.
    #[arg(long, value_parser = crate::choices::preset_parser(), group = "init_source")]
    pub preset: Option<String>,
    /// A config.json (official or HF keys), e.g. examples/configs/v4-1p7b.json.
    #[arg(long, group = "init_source")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ModelInitArgs {
    #[command(flatten)]
    pub source: InitSource,
    /// Output directory: created; refused unless it is new or empty.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the weights (the same seed and config give the same bytes).
    #[arg(long)]
    pub seed: u64,
    /// Split into shards of at most this many bytes of tensor data (a larger tensor gets a shard
    /// of its own), with model.safetensors.index.json.
    #[arg(long, default_value_t = model::checkpoint::DEFAULT_MAX_SHARD_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_shard_bytes: u64,
    /// A Hugging Face tokenizer.json to copy into the checkpoint (its vocabulary must fit the
    /// config's vocab_size).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub source: ConfigSource,
    /// Context length (tokens) of the KV-cache and per-token cost figures.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..=(1u64 << 32)))]
    pub context: u64,
    /// Compare single-token decode FLOPs and KV-cache bytes with this architecture at --context.
    #[arg(long, value_enum)]
    pub vs: Option<Baseline>,
    #[arg(long)]
    pub json: bool,
}

/// Architectures `model info --vs` compares against.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// DeepSeek-V3.2 (MLA + DSA Lightning Indexer, 61 layers, 671B / 37B active), published config.
    #[value(name = "v3.2")]
    V32,
}

#[derive(Args, Debug)]
pub struct ForwardArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// JSON file with a list of token-id lists.
    #[arg(long)]
    pub tokens: PathBuf,
    /// Output safetensors with `logits.{i}` = f32 [len, vocab].
    #[arg(long)]
    pub out: PathBuf,
    /// Prefill the first K tokens, then decode one token at a time.
    #[arg(long)]
    pub decode_from: Option<usize>,
    /// qat (KV FP8 + indexer FP4, default), dense (no fake-quant) or act-fp8 (plus FP8 activations).
    #[arg(long, value_enum, default_value = "qat")]
    pub numerics: crate::choices::NumericsArg,
    /// Run routed experts in f32 instead of packed FP4.
    #[arg(long)]
    pub f32_experts: bool,
    /// One JSON object on stdout: sequences, out.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchModelArgs {
    #[arg(long, value_parser = crate::choices::preset_parser(), conflicts_with = "checkpoint")]
    pub preset: Option<String>,
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    #[arg(long)]
    pub json: bool,
}

fn load_config(src: &ConfigSource) -> Result<Config> {
    match (&src.preset, &src.config, &src.checkpoint) {
        (Some(p), _, _) => Ok(Config::preset(p)?),
        (_, Some(f), _) => Ok(Config::from_file(f)?),
        (_, _, Some(d)) => {
            let f = if d.is_file() { d.with_file_name("config.json") } else { d.join("config.json") };
            Config::from_file(&f).with_context(|| format!("--checkpoint {}: reading its config.json", d.display()))
        }
        _ => bail!("give --preset, --config or --checkpoint"),
    }
}

/// What loading a checkpoint for rollout cost: the mapped decode engine of
/// [`Engine::from_checkpoint`] with the rollout options (QAT numerics, packed FP4 experts).
struct LoadMeasure {
    checkpoint: PathBuf,
    /// Bytes of the safetensors files read.
    file_bytes: u64,
    files: usize,
    load_s: f64,
    /// Peak resident set of this process (`VmHWM`), which did nothing heavier before loading.
    peak_rss_bytes: u64,
    /// Resident set just before loading (the binary itself).
    rss_before_load_bytes: u64,
    /// `(routed experts, everything else)` bytes the engine holds.
    weight_bytes: (usize, usize),
    /// Then a prefill of [`PROBE_TOKENS`] tokens, which touches the weights a rollout uses
    /// (mapped pages become resident only when read): its time and the peak resident set after it.
    forward_s: f64,
    peak_rss_after_forward_bytes: u64,
}

/// Tokens of the probe prefill after loading (64 tokens × top-k experts reach most experts).
const PROBE_TOKENS: usize = 64;

/// A `kB` field of `/proc/self/status` (`VmHWM`, `VmRSS`), in bytes.
fn proc_status_bytes(key: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status (memory figures need Linux)")?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .with_context(|| format!("/proc/self/status has no `{key}` line"))?;
    let kb: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("/proc/self/status: `{key}:{line}` is not a kB count"))?;
    Ok(kb * 1024)
}

fn measure_load(dir: &Path) -> Result<LoadMeasure> {
    let files = checkpoint::checkpoint_files(dir)?;
    let mut file_bytes = 0u64;
    for f in &files {
        file_bytes += std::fs::metadata(f).with_context(|| format!("reading {}", f.display()))?.len();
    }
    let rss_before_load_bytes = proc_status_bytes("VmRSS")?;
    let t = Instant::now();
    let engine = Engine::from_checkpoint(dir, EngineOptions::default())
        .with_context(|| format!("loading {} for rollout", dir.display()))?;
    let load_s = t.elapsed().as_secs_f64();
    let peak_rss_bytes = proc_status_bytes("VmHWM")?;
    let vocab = engine.config.vocab_size;
    let rows: Vec<Row> =
        (0..PROBE_TOKENS).map(|i| Row { seq: 0, token: (i.wrapping_mul(2_654_435_761) % vocab) as u32 }).collect();
    let t = Instant::now();
    engine.forward(&mut [engine.new_state()], &rows, Want::LastLogits).context("probe prefill after loading")?;
    let forward_s = t.elapsed().as_secs_f64();
    let peak_rss_after_forward_bytes = proc_status_bytes("VmHWM")?;
    Ok(LoadMeasure {
        checkpoint: dir.to_path_buf(),
        file_bytes,
        files: files.len(),
        load_s,
        peak_rss_bytes,
        rss_before_load_bytes,
        weight_bytes: engine.weight_bytes(),
        forward_s,
        peak_rss_after_forward_bytes,
    })
}

impl LoadMeasure {
    fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        let v = json!({
            "checkpoint": self.checkpoint.display().to_string(),
            "file_bytes": self.file_bytes, "files": self.files, "load_s": self.load_s,
            "peak_rss_bytes": self.peak_rss_bytes, "rss_before_load_bytes": self.rss_before_load_bytes,
            "peak_rss_over_file_bytes": self.peak_rss_bytes as f64 / self.file_bytes.max(1) as f64,
            "engine_weight_bytes": {"routed_experts": self.weight_bytes.0, "other": self.weight_bytes.1},
            "probe_forward": {"tokens": PROBE_TOKENS, "seconds": self.forward_s,
                "peak_rss_bytes": self.peak_rss_after_forward_bytes},
            "load_note": "Engine::from_checkpoint with rollout options (QAT numerics, FP4 experts), then a prefill of \
                probe_forward.tokens tokens; peak RSS is the process's VmHWM after each",
        });
        v.as_object().cloned().unwrap_or_default()
    }

    fn print(&self) {
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "checkpoint {}: {:.1} MB in {} file(s); loaded for rollout in {:.2} s, peak RSS {:.1} MB ({:.2}× the files; {:.1} MB before loading)",
            self.checkpoint.display(),
            mb(self.file_bytes),
            self.files,
            self.load_s,
            mb(self.peak_rss_bytes),
            self.peak_rss_bytes as f64 / self.file_bytes.max(1) as f64,
            mb(self.rss_before_load_bytes)
        );
        println!(
            "  then a {PROBE_TOKENS}-token prefill in {:.2} s: peak RSS {:.1} MB ({:.2}× the files)",
            self.forward_s,
            mb(self.peak_rss_after_forward_bytes),
            self.peak_rss_after_forward_bytes as f64 / self.file_bytes.max(1) as f64
        );
    }
}

/// `model init`: a random checkpoint in the official layout, streamed to disk.
pub fn init(a: &ModelInitArgs) -> Result<()> {
    let (config, config_name) = match &a.source {
        InitSource { preset: Some(p), .. } => (Config::preset(p)?, format!("preset {p}")),
        InitSource { config: Some(f), .. } => {
            (Config::from_file(f).with_context(|| format!("--config {}", f.display()))?, f.display().to_string())
        }
        _ => bail!("give --preset or --config"),
    };
    // The tokenizer is checked before anything is written.
    if let Some(t) = &a.tokenizer {
        let tok =
            datasets::tokenizer::HfTokenizer::from_file(t).with_context(|| format!("--tokenizer {}", t.display()))?;
        datasets::tokenizer::check_tokenizer_file_fits(&tok, config.vocab_size, t, &config_name)
            .with_context(|| format!("--tokenizer {}", t.display()))?;
    }
    let max_shard =
        usize::try_from(a.max_shard_bytes).context("--max-shard-bytes does not fit this machine's word size")?;
    let plan = model::init::InitPlan::new(&config, a.seed, max_shard).context("planning the checkpoint")?;
    let bars = Bars::new(a.json);
    const MIB: u64 = 1 << 20;
    bars.start("init MiB", plan.tensor_bytes().div_ceil(MIB));
    let written = std::sync::atomic::AtomicU64::new(0);
    let t = Instant::now();
    let summary = plan
        .write(&a.out, &|n| {
            let before = written.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            let mib = (before + n).div_ceil(MIB) - before.div_ceil(MIB);
            if mib > 0 {
                bars.advance(mib);
            }
        })
        .with_context(|| format!("writing {}", a.out.display()))?;
    bars.finish();
    let write_s = t.elapsed().as_secs_f64();
    if let Some(tok) = &a.tokenizer {
        datasets::tokenizer::carry_tokenizer_file(tok, &a.out)
            .with_context(|| format!("copying the tokenizer {} into {}", tok.display(), a.out.display()))?;
    }
    let files: Vec<String> = plan.file_names().iter().map(|f| f.to_string()).collect();
    if a.json {
        print_json(&json!({
            "out": a.out.display().to_string(), "seed": a.seed, "files": files, "file_bytes": summary.file_bytes,
            "tensors": summary.tensors, "params": summary.params, "write_s": write_s,
            "max_shard_bytes": a.max_shard_bytes, "tokenizer": a.tokenizer.is_some(),
            "config": serde_json::from_str::<serde_json::Value>(&plan.config().to_json_pretty())?,
        }));
    } else {
        println!(
            "wrote a random checkpoint (seed {}, {} params, {} tensors, {:.1} MB in {} file(s)) to {} in {:.1} s",
            a.seed,
            fmt_count(summary.params),
            summary.tensors,
            summary.file_bytes as f64 / 1e6,
            files.len(),
            a.out.display(),
            write_s
        );
    }
    Ok(())
}

/// Name of the V3.2 baseline where a preset is expected (`model info --preset v3.2`).
const V32_PRESET: &str = "v3.2";
const GIB: f64 = (1u64 << 30) as f64;

pub fn info(a: &InfoArgs) -> Result<()> {
    let context = usize::try_from(a.context).context("--context does not fit this machine's word size")?;
    if a.source.preset.as_deref() == Some(V32_PRESET) {
        return info_v32(context, a.json);
    }
    let c = load_config(&a.source)?;
    let load = a.source.checkpoint.as_deref().map(measure_load).transpose()?;
    let pc = c.param_counts();
    let cost = cost::v4_decode_cost(&c, context);
    let vs = a.vs.map(|Baseline::V32| V32Config::published().decode_cost(context));
    if a.json {
        let mut v = info_json(&c, &pc, &cost, vs.as_ref(), context)?;
        if let (Some(m), Some(obj)) = (&load, v.as_object_mut()) {
            obj.extend(m.json());
        }
        print_json(&v);
        return Ok(());
    }
    print_params(&c, &pc);
    if let Some(m) = &load {
        m.print();
    }
    let kv = c.kv_bytes_per_token(context, 2);
    let kv_total: f64 = kv.iter().map(|(_, _, b)| b).sum();
    println!("KV cache at {context} tokens of context (bf16 entries), bytes per token:");
    for (k, n, b) in &kv {
        println!("  {:<7} {:>3} layers  {:>10.1}", k.name(), n, b);
    }
    println!("  total              {kv_total:>10.1}");
    print_cost_table(&cost, vs.as_ref());
    Ok(())
}

fn info_json(
    c: &Config,
    pc: &model::ParamCounts,
    cost: &DecodeCost,
    vs: Option<&DecodeCost>,
    context: usize,
) -> Result<serde_json::Value> {
    let layers: Vec<serde_json::Value> = (0..c.n_layers)
        .map(|l| json!({"layer": l, "attention": c.layer_kind(l).name(), "compress_ratio": c.ratio(l), "routing": if c.is_hash_layer(l) { "hash" } else { "biased_topk" }}))
        .collect();
    let kv = c.kv_bytes_per_token(context, 2);
    let kv_json: serde_json::Map<String, serde_json::Value> =
        kv.iter().map(|(k, n, b)| (k.name().to_string(), json!({"layers": n, "bytes_per_token": b}))).collect();
    let kv_total: f64 = kv.iter().map(|(_, _, b)| b).sum();
    let mut v = json!({
        "total_params": pc.total, "active_params": pc.active, "mtp_params": pc.mtp, "embedding_params": pc.embedding,
        "routed_expert_params": pc.routed_experts, "layers": layers,
        "kv_cache_bytes_per_token": {"by_kind": kv_json, "total": kv_total, "context": context, "dtype": "bf16"},
        "decode_cost": cost_json(cost),
        "config": serde_json::from_str::<serde_json::Value>(&c.to_json_pretty())?,
    });
    if let Some(b) = vs {
        v["vs"] = json!({
            "name": V32_PRESET,
            "decode_cost": cost_json(b),
            "flops_ratio": cost.flops() / b.flops(),
            "kv_bytes_bf16_ratio": cost.kv_bytes_bf16 / b.kv_bytes_bf16,
            "kv_bytes_stored_ratio": cost.kv_bytes_stored / b.kv_bytes_stored,
        });
    }
    Ok(v)
}

fn cost_json(c: &DecodeCost) -> serde_json::Value {
    json!({
        "context": c.context, "flops": c.flops(), "linear_flops": c.linear_flops,
        "attention_flops": c.attention_flops, "indexer_flops": c.indexer_flops,
        "kv_bytes_bf16": c.kv_bytes_bf16, "kv_bytes_stored": c.kv_bytes_stored,
    })
}

fn fmt_count(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2}B", n as f64 / 1e9)
    } else {
        format!("{:.2}M", n as f64 / 1e6)
    }
}

fn print_params(c: &Config, pc: &model::ParamCounts) {
    println!(
        "params: total {} ({}), active per token {} ({}), MTP {}",
        fmt_count(pc.total),
        pc.total,
        fmt_count(pc.active),
        pc.active,
        fmt_count(pc.mtp)
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
}

/// A row of the cost table: label, the quantity, its display unit.
type CostRow = (&'static str, fn(&DecodeCost) -> f64, f64);

/// One decoded token's cost, with the V3.2 column and ratios when given.
fn print_cost_table(c: &DecodeCost, vs: Option<&DecodeCost>) {
    println!("one decoded token at {} tokens of context (counting rules: `v4post model info --help`):", c.context);
    let rows: [CostRow; 6] = [
        ("FLOPs, total", |c| c.flops(), 1e9),
        ("  linear", |c| c.linear_flops, 1e9),
        ("  attention", |c| c.attention_flops, 1e9),
        ("  indexer", |c| c.indexer_flops, 1e9),
        ("KV bytes (bf16)", |c| c.kv_bytes_bf16, GIB),
        ("KV bytes (stored)", |c| c.kv_bytes_stored, GIB),
    ];
    match vs {
        None => {
            for (name, f, unit) in rows {
                println!("  {name:<18} {:>12.2} {}", f(c) / unit, if unit == 1e9 { "G" } else { "GiB" });
            }
        }
        Some(b) => {
            println!("  {:<18} {:>12} {:>12} {:>7}", "", "this", V32_PRESET, "ratio");
            for (name, f, unit) in rows {
                let u = if unit == 1e9 { "G" } else { "GiB" };
                let ratio = if f(b) > 0.0 { format!("{:.3}", f(c) / f(b)) } else { "-".into() };
                println!("  {name:<18} {:>10.2}{u:<2} {:>10.2}{u:<2} {ratio:>7}", f(c) / unit, f(b) / unit);
            }
        }
    }
}

fn info_v32(context: usize, json_out: bool) -> Result<()> {
    let v = V32Config::published();
    let (total, active) = v.param_counts();
    let cost = v.decode_cost(context);
    if json_out {
        print_json(&json!({"name": V32_PRESET, "total_params": total, "active_params": active,
            "decode_cost": cost_json(&cost), "config": serde_json::to_value(&v)?}));
        return Ok(());
    }
    println!(
        "DeepSeek-V3.2 (MLA + DSA): params total {} ({total}), active per token {} ({active})",
        fmt_count(total),
        fmt_count(active)
    );
    print_cost_table(&cost, None);
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
    let options = EngineOptions { numerics: parse_numerics(a.numerics.as_str())?, fp4_experts: !a.f32_experts };
    let engine = Engine::from_checkpoint(&a.checkpoint, options)
        .with_context(|| format!("loading {}", a.checkpoint.display()))?;
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
    checkpoint::serialize_to_file(views, None, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    if a.json {
        print_json(&json!({"sequences": seqs.len(), "out": a.out}));
    } else {
        eprintln!("wrote logits of {} sequences to {}", seqs.len(), a.out.display());
    }
    Ok(())
}

/// `path` made absolute with symlinks resolved, for a path that may not exist yet: its
/// nearest existing ancestor is canonicalised and the rest appended.
fn resolve_path(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        match cur.canonicalize() {
            Ok(c) => return Ok(rest.iter().rev().fold(c, |acc, part| acc.join(part))),
            Err(_) => match (cur.parent(), cur.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    cur = parent;
                }
                // `..` or the root: nothing left to resolve
                _ => return Ok(abs),
            },
        }
    }
}

/// Refuse a `--out` that would overwrite the checkpoint being read: the same directory or one
/// inside it, or, for a single-file `--in`, that file or the directory holding it (and its
/// `config.json`).
fn refuse_overwriting_input(input: &Path, out: &Path) -> Result<()> {
    let inp = input.canonicalize().with_context(|| format!("--in {}", input.display()))?;
    let out_abs = resolve_path(out).with_context(|| format!("--out {}", out.display()))?;
    let clobbers = if inp.is_file() {
        out_abs == inp || inp.parent() == Some(out_abs.as_path())
    } else {
        out_abs.starts_with(&inp)
    };
    if clobbers {
        bail!(
            "--out {} would overwrite the input checkpoint {} (quantizing is lossy): write to another directory",
            out.display(),
            input.display()
        );
    }
    Ok(())
}

pub fn quantize(input: &Path, out: &Path, format: &str, shard_mib: Option<usize>, as_json: bool) -> Result<()> {
    let fmt: SaveFormat = format.parse()?;
    refuse_overwriting_input(input, out)?;
    let w = checkpoint::load(input).with_context(|| format!("loading {}", input.display()))?;
    checkpoint::save(&w, out, fmt, shard_mib.map(|m| m << 20)).with_context(|| format!("writing {}", out.display()))?;
    crate::models::carry_tokenizer(Some(input), out)?;
    let bytes: u64 =
        std::fs::read_dir(out)?.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    if as_json {
        print_json(&json!({"format": format, "params": w.num_params(), "bytes": bytes, "out": out}));
    } else {
        eprintln!(
            "wrote {format} checkpoint ({} params, {:.2} MB) to {}",
            w.num_params(),
            bytes as f64 / 1e6,
            out.display()
        );
    }
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
    if std::env::var("V4POST_PROFILE").is_ok() {
        for (name, d, n) in model::train::prof::take() {
            eprintln!("{name:>20}: {:>8.1} ms over {n} calls ({} prefills)", d.as_secs_f64() * 1e3, reps + 1);
        }
    }
    let model = TrainModel::from_weights(&w, DType::F32, TrainOptions::default())?;
    let batch: Vec<SeqInput> = (0..4).map(|b| SeqInput::new(bench_tokens(128, cfg.vocab_size, b + 2))).collect();
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
        let _grads = model.backward(&loss)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `model info` on a config at every size limit: exact, non-overflowed counts.
    #[test]
    fn info_counts_do_not_overflow_at_the_config_limits() {
        let c = Config {
            vocab_size: 1 << 22,
            dim: 1 << 16,
            moe_inter_dim: 1 << 18,
            n_layers: model::config::MAX_LAYERS,
            n_heads: 1 << 12,
            n_routed_experts: 1 << 16,
            n_activated_experts: 1 << 10,
            head_dim: 1 << 16,
            compress_ratios: vec![0; model::config::MAX_LAYERS],
            n_hash_layers: 0,
            ..Config::tiny()
        };
        c.validate().unwrap();
        let pc = c.param_counts();
        let context = 1 << 20;
        let v = info_json(&c, &pc, &cost::v4_decode_cost(&c, context), None, context).unwrap();
        let routed = 3u64 * (1 << 18) * (1 << 16) * (1 << 16) * model::config::MAX_LAYERS as u64;
        assert_eq!(v["routed_expert_params"].as_u64(), Some(routed));
        let total = v["total_params"].as_u64().unwrap();
        assert!(total > routed && total < u64::MAX, "{total}");
        assert!(v["active_params"].as_u64().unwrap() < total);
        assert!(v["decode_cost"]["flops"].as_f64().unwrap().is_finite());
    }
}
