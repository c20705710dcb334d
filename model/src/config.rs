//! V4 model configuration: one [`Config`] read from either the official
//! `inference/config.json` keys (`dim`, `n_layers`, …) or the Hugging Face keys
//! (`hidden_size`, `num_hidden_layers`, …), plus presets and derived quantities
//! (layer schedule, parameter counts, KV-cache sizes).

use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// Attention kind of one layer, from `compress_ratios[layer]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// `ratio = 0`: sliding window only.
    Window,
    /// `ratio = 4`: overlapped compression + Lightning Indexer top-k.
    Csa,
    /// any other ratio: non-overlapped compression, all entries attended.
    Hca,
}

impl LayerKind {
    pub fn from_ratio(ratio: usize) -> Self {
        match ratio {
            0 => LayerKind::Window,
            4 => LayerKind::Csa,
            _ => LayerKind::Hca,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Window => "window",
            LayerKind::Csa => "csa",
            LayerKind::Hca => "hca",
        }
    }
}

/// Hyper-parameters of a DeepSeek-V4 architecture model (official inference key names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub dim: usize,
    pub moe_inter_dim: usize,
    pub n_layers: usize,
    pub n_hash_layers: usize,
    pub n_mtp_layers: usize,
    pub n_heads: usize,
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub n_activated_experts: usize,
    pub score_func: String,
    pub route_scale: f32,
    pub swiglu_limit: f32,
    pub q_lora_rank: usize,
    pub head_dim: usize,
    pub rope_head_dim: usize,
    pub norm_eps: f32,
    pub o_groups: usize,
    pub o_lora_rank: usize,
    pub window_size: usize,
    /// One entry per main layer, then one per MTP layer.
    pub compress_ratios: Vec<usize>,
    pub compress_rope_theta: f32,
    pub original_seq_len: usize,
    pub rope_theta: f32,
    pub rope_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    pub index_n_heads: usize,
    pub index_head_dim: usize,
    pub index_topk: usize,
    pub hc_mult: usize,
    pub hc_sinkhorn_iters: usize,
    pub hc_eps: f32,
    pub max_seq_len: usize,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    /// `"fp8"` (FP8 E4M3 block-scaled projections) or `"bf16"`.
    pub dtype: String,
    /// `"fp4"` (MXFP4 routed experts) or `"fp8"`.
    pub expert_dtype: String,
}

/// Parameter counts derived from a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// All parameters of the main model (embedding, layers, head), MTP excluded.
    pub total: u64,
    /// Parameters used per token: everything but the non-selected routed experts and the
    /// embedding table (a lookup, not a matmul).
    pub active: u64,
    /// Parameters of the MTP block(s) (shared embedding/head not counted again).
    pub mtp: u64,
    pub embedding: u64,
    pub routed_experts: u64,
}

/// Reads one size or count of a [`Config`].
type SizeField = fn(&Config) -> usize;

/// Bounds of every size and count a config may hold, `(key, min, max, field)`, checked by
/// [`Config::validate`] before anything is allocated or multiplied. The maxima admit
/// DeepSeek-V4-Pro (and V3-sized relatives) with a wide margin; they exist so that a config
/// alone can never ask for an absurd allocation, overflow a size computation or make a forward
/// pass loop for ever. With these bounds every tensor has fewer than 2^64 elements and every
/// parameter count fits in a `u64` (counts are summed in `u128` regardless).
pub const SIZE_LIMITS: &[(&str, usize, usize, SizeField)] = &[
    ("vocab_size", 1, 1 << 22, |c| c.vocab_size),
    ("dim", 1, 1 << 16, |c| c.dim),
    ("moe_inter_dim", 1, 1 << 18, |c| c.moe_inter_dim),
    ("n_layers", 1, MAX_LAYERS, |c| c.n_layers),
    ("n_hash_layers", 0, MAX_LAYERS, |c| c.n_hash_layers),
    ("n_mtp_layers", 0, MAX_MTP_LAYERS, |c| c.n_mtp_layers),
    ("n_heads", 1, 1 << 12, |c| c.n_heads),
    ("n_routed_experts", 1, 1 << 16, |c| c.n_routed_experts),
    ("n_shared_experts", 0, 1, |c| c.n_shared_experts),
    ("n_activated_experts", 1, 1 << 10, |c| c.n_activated_experts),
    ("q_lora_rank", 1, 1 << 16, |c| c.q_lora_rank),
    ("head_dim", 1, 1 << 16, |c| c.head_dim),
    ("rope_head_dim", 0, 1 << 16, |c| c.rope_head_dim),
    ("o_groups", 1, 1 << 12, |c| c.o_groups),
    ("o_lora_rank", 1, 1 << 16, |c| c.o_lora_rank),
    ("window_size", 1, 1 << 20, |c| c.window_size),
    ("original_seq_len", 0, MAX_SEQ_LEN, |c| c.original_seq_len),
    ("index_n_heads", 0, 1 << 12, |c| c.index_n_heads),
    ("index_head_dim", 0, 1 << 16, |c| c.index_head_dim),
    ("index_topk", 0, 1 << 20, |c| c.index_topk),
    ("hc_mult", 1, 64, |c| c.hc_mult),
    ("hc_sinkhorn_iters", 1, 1000, |c| c.hc_sinkhorn_iters),
    ("max_seq_len", 1, MAX_SEQ_LEN, |c| c.max_seq_len),
];

/// Most main layers a config may have.
pub const MAX_LAYERS: usize = 1024;
/// Most MTP layers a config may have.
pub const MAX_MTP_LAYERS: usize = 16;
/// Longest context (`max_seq_len`, `original_seq_len`) a config may declare: 2^28 tokens.
pub const MAX_SEQ_LEN: usize = 1 << 28;
/// Largest entry of `compress_ratios` (tokens pooled per compressed entry).
pub const MAX_COMPRESS_RATIO: usize = 1 << 16;

/// Check one value against its row of [`SIZE_LIMITS`]; the error names the key.
fn check_limit(key: &str, value: usize) -> Result<()> {
    match SIZE_LIMITS.iter().find(|(k, ..)| *k == key) {
        Some(&(_, lo, hi, _)) if value < lo || value > hi => {
            Err(ModelError::Config(format!("key `{key}` is {value}; it must be in {lo}..={hi}")))
        }
        _ => Ok(()),
    }
}

/// `u128` product of a shape: never overflows for two dimensions, saturates beyond.
fn numel(shape: &[usize]) -> u128 {
    shape.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128))
}

/// Sum of the element counts of a list of shapes.
fn count_of(shapes: &[(String, Vec<usize>)]) -> u128 {
    shapes.iter().fold(0u128, |a, (_, s)| a.saturating_add(numel(s)))
}

/// A `u128` count as a `u64`, saturating (a validated config never reaches the cap).
fn to_u64(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn get<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| obj.get(*k).filter(|v| !v.is_null()))
}

fn req_usize(obj: &Map<String, Value>, keys: &[&str]) -> Result<usize> {
    let v = get(obj, keys).ok_or_else(|| ModelError::Config(format!("missing key `{}`", keys.join("` / `"))))?;
    v.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| ModelError::Config(format!("key `{}` must be a non-negative integer, got {v}", keys[0])))
}

fn opt_usize(obj: &Map<String, Value>, keys: &[&str], default: usize) -> Result<usize> {
    match get(obj, keys) {
        None => Ok(default),
        Some(_) => req_usize(obj, keys),
    }
}

fn opt_u32(obj: &Map<String, Value>, keys: &[&str], default: u32) -> Result<u32> {
    let v = opt_usize(obj, keys, default as usize)?;
    u32::try_from(v).map_err(|_| ModelError::Config(format!("key `{}` is {v}; it must fit in 32 bits", keys[0])))
}

fn opt_f32(obj: &Map<String, Value>, keys: &[&str], default: f32) -> Result<f32> {
    match get(obj, keys) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| ModelError::Config(format!("key `{}` must be a number, got {v}", keys[0]))),
    }
}

fn opt_str(obj: &Map<String, Value>, keys: &[&str], default: &str) -> Result<String> {
    match get(obj, keys) {
        None => Ok(default.to_string()),
        Some(v) => v
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ModelError::Config(format!("key `{}` must be a string, got {v}", keys[0]))),
    }
}

impl Config {
    /// Parse a `config.json` in either naming scheme (official inference or Hugging Face).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| ModelError::Config(format!("invalid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| ModelError::Config("config must be a JSON object".into()))?;
        // HF nests YaRN parameters in `rope_scaling`.
        let empty = Map::new();
        let rs = obj.get("rope_scaling").and_then(Value::as_object).unwrap_or(&empty);
        let n_layers = req_usize(obj, &["n_layers", "num_hidden_layers"])?;
        let n_mtp_layers = opt_usize(obj, &["n_mtp_layers", "num_nextn_predict_layers"], 0)?;
        // Bounded before `compress_ratios` defaults to one entry per layer.
        check_limit("n_layers", n_layers)?;
        check_limit("n_mtp_layers", n_mtp_layers)?;
        let ratios = match get(obj, &["compress_ratios"]) {
            None => vec![0; n_layers + n_mtp_layers],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|r| r as usize)
                        .ok_or_else(|| ModelError::Config(format!("compress_ratios: bad entry {x}")))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(other) => return Err(ModelError::Config(format!("compress_ratios must be a list, got {other}"))),
        };
        let dtype = match get(obj, &["dtype"]) {
            Some(v) => v.as_str().unwrap_or("fp8").to_string(),
            None => {
                if obj.get("quantization_config").is_some() {
                    "fp8".into()
                } else {
                    "bf16".into()
                }
            }
        };
        let cfg = Config {
            vocab_size: req_usize(obj, &["vocab_size"])?,
            dim: req_usize(obj, &["dim", "hidden_size"])?,
            moe_inter_dim: req_usize(obj, &["moe_inter_dim", "moe_intermediate_size"])?,
            n_layers,
            n_hash_layers: opt_usize(obj, &["n_hash_layers", "num_hash_layers"], 0)?,
            n_mtp_layers,
            n_heads: req_usize(obj, &["n_heads", "num_attention_heads"])?,
            n_routed_experts: req_usize(obj, &["n_routed_experts"])?,
            n_shared_experts: opt_usize(obj, &["n_shared_experts"], 1)?,
            n_activated_experts: req_usize(obj, &["n_activated_experts", "num_experts_per_tok"])?,
            score_func: opt_str(obj, &["score_func", "scoring_func"], "sqrtsoftplus")?,
            route_scale: opt_f32(obj, &["route_scale", "routed_scaling_factor"], 1.0)?,
            swiglu_limit: opt_f32(obj, &["swiglu_limit"], 0.0)?,
            q_lora_rank: req_usize(obj, &["q_lora_rank"])?,
            head_dim: req_usize(obj, &["head_dim"])?,
            rope_head_dim: req_usize(obj, &["rope_head_dim", "qk_rope_head_dim"])?,
            norm_eps: opt_f32(obj, &["norm_eps", "rms_norm_eps"], 1e-6)?,
            o_groups: req_usize(obj, &["o_groups"])?,
            o_lora_rank: req_usize(obj, &["o_lora_rank"])?,
            window_size: req_usize(obj, &["window_size", "sliding_window"])?,
            compress_ratios: ratios,
            compress_rope_theta: opt_f32(obj, &["compress_rope_theta"], 160000.0)?,
            original_seq_len: match get(obj, &["original_seq_len"]) {
                Some(_) => req_usize(obj, &["original_seq_len"])?,
                None => opt_usize(rs, &["original_max_position_embeddings"], 0)?,
            },
            rope_theta: opt_f32(obj, &["rope_theta"], 10000.0)?,
            rope_factor: match get(obj, &["rope_factor"]) {
                Some(_) => opt_f32(obj, &["rope_factor"], 1.0)?,
                None => opt_f32(rs, &["factor"], 1.0)?,
            },
            beta_fast: match get(obj, &["beta_fast"]) {
                Some(_) => opt_f32(obj, &["beta_fast"], 32.0)?,
                None => opt_f32(rs, &["beta_fast"], 32.0)?,
            },
            beta_slow: match get(obj, &["beta_slow"]) {
                Some(_) => opt_f32(obj, &["beta_slow"], 1.0)?,
                None => opt_f32(rs, &["beta_slow"], 1.0)?,
            },
            index_n_heads: opt_usize(obj, &["index_n_heads"], 0)?,
            index_head_dim: opt_usize(obj, &["index_head_dim"], 0)?,
            index_topk: opt_usize(obj, &["index_topk"], 0)?,
            hc_mult: opt_usize(obj, &["hc_mult"], 4)?,
            hc_sinkhorn_iters: opt_usize(obj, &["hc_sinkhorn_iters"], 20)?,
            hc_eps: opt_f32(obj, &["hc_eps"], 1e-6)?,
            max_seq_len: opt_usize(obj, &["max_seq_len", "max_position_embeddings"], 1 << 20)?,
            bos_token_id: opt_u32(obj, &["bos_token_id"], 0)?,
            eos_token_id: opt_u32(obj, &["eos_token_id"], 1)?,
            dtype,
            expert_dtype: opt_str(obj, &["expert_dtype"], "fp4")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            ModelError::Config(m) => ModelError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Check bounds ([`SIZE_LIMITS`]) and internal consistency; every later shape computation
    /// relies on it.
    pub fn validate(&self) -> Result<()> {
        self.validate_sizes()?;
        self.validate_layers()?;
        self.validate_shapes()?;
        self.validate_floats()
    }

    /// Every size and count within its [`SIZE_LIMITS`] bounds.
    fn validate_sizes(&self) -> Result<()> {
        for &(key, _, _, field) in SIZE_LIMITS {
            check_limit(key, field(self))?;
        }
        Ok(())
    }

    /// The layer schedule: `compress_ratios` length and entries, hash layers.
    fn validate_layers(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        let all = self.n_layers + self.n_mtp_layers;
        if self.compress_ratios.len() != all && self.compress_ratios.len() != self.n_layers {
            return bad(format!(
                "compress_ratios has {} entries; expected n_layers + n_mtp_layers = {all}",
                self.compress_ratios.len()
            ));
        }
        if let Some((i, r)) = self.compress_ratios.iter().enumerate().find(|(_, &r)| r > MAX_COMPRESS_RATIO) {
            return bad(format!("key `compress_ratios` entry {i} is {r}; it must be in 0..={MAX_COMPRESS_RATIO}"));
        }
        if self.n_hash_layers > self.n_layers {
            return bad(format!("n_hash_layers {} exceeds n_layers {}", self.n_hash_layers, self.n_layers));
        }
        for (i, &r) in self.compress_ratios.iter().enumerate() {
            if r == 4 && (self.index_n_heads == 0 || self.index_head_dim == 0 || self.index_topk == 0) {
                return bad(format!(
                    "layer {i} is CSA (ratio 4) but index_n_heads/index_head_dim/index_topk are not set"
                ));
            }
            if r == 4 && !self.index_head_dim.is_power_of_two() {
                return bad("index_head_dim must be a power of two (Hadamard rotation)".into());
            }
            if r == 4 && (self.index_head_dim <= self.rope_head_dim) {
                return bad("index_head_dim must exceed rope_head_dim".into());
            }
        }
        Ok(())
    }

    /// Relations between sizes (divisibility, ordering, supported variants).
    fn validate_shapes(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.score_func != "sqrtsoftplus" {
            return bad(format!("score_func `{}` is not supported (V4 uses sqrtsoftplus)", self.score_func));
        }
        if self.head_dim <= self.rope_head_dim || !self.rope_head_dim.is_multiple_of(2) {
            return bad(format!(
                "rope_head_dim {} must be even and smaller than head_dim {}",
                self.rope_head_dim, self.head_dim
            ));
        }
        if !self.n_heads.is_multiple_of(self.o_groups) {
            return bad(format!("n_heads {} must be divisible by o_groups {}", self.n_heads, self.o_groups));
        }
        if self.n_activated_experts > self.n_routed_experts {
            return bad("n_activated_experts must be in 1..=n_routed_experts".into());
        }
        if self.expert_dtype == "fp4" && (!self.dim.is_multiple_of(32) || !self.moe_inter_dim.is_multiple_of(32)) {
            return bad("FP4 experts need dim and moe_inter_dim to be multiples of 32".into());
        }
        Ok(())
    }

    /// Float hyper-parameters finite; RoPE bases and the YaRN factor positive.
    fn validate_floats(&self) -> Result<()> {
        let floats = [
            ("route_scale", self.route_scale),
            ("swiglu_limit", self.swiglu_limit),
            ("norm_eps", self.norm_eps),
            ("compress_rope_theta", self.compress_rope_theta),
            ("rope_theta", self.rope_theta),
            ("rope_factor", self.rope_factor),
            ("beta_fast", self.beta_fast),
            ("beta_slow", self.beta_slow),
            ("hc_eps", self.hc_eps),
        ];
        if let Some((key, v)) = floats.iter().find(|(_, v)| !v.is_finite()) {
            return Err(ModelError::Config(format!("key `{key}` is {v}; it must be a finite number")));
        }
        let positive = [
            ("compress_rope_theta", self.compress_rope_theta),
            ("rope_theta", self.rope_theta),
            ("rope_factor", self.rope_factor),
        ];
        if let Some((key, v)) = positive.iter().find(|(_, v)| *v <= 0.0) {
            return Err(ModelError::Config(format!("key `{key}` is {v}; it must be positive")));
        }
        Ok(())
    }

    pub fn ratio(&self, layer: usize) -> usize {
        self.compress_ratios.get(layer).copied().unwrap_or(0)
    }
    pub fn layer_kind(&self, layer: usize) -> LayerKind {
        LayerKind::from_ratio(self.ratio(layer))
    }
    pub fn is_hash_layer(&self, layer: usize) -> bool {
        layer < self.n_hash_layers
    }
    /// Number of `(pre, post, comb)` mixing weights per mHC site: `(2 + n)·n`.
    pub fn hc_mix(&self) -> usize {
        self.hc_mult.saturating_add(2).saturating_mul(self.hc_mult)
    }

    /// Official tensor shapes of the whole checkpoint, `(name, shape)`, f32-equivalent
    /// (quantised tensors listed by their logical shape; scales, `tid2eid` excluded).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = vec![("embed.weight".to_string(), vec![self.vocab_size, self.dim])];
        for l in 0..self.n_layers {
            v.extend(self.block_shapes(&format!("layers.{l}."), l));
        }
        v.push(("norm.weight".into(), vec![self.dim]));
        v.push(("head.weight".into(), vec![self.vocab_size, self.dim]));
        v.extend(self.hc_head_shapes(""));
        for m in 0..self.n_mtp_layers {
            let p = format!("mtp.{m}.");
            v.extend(self.block_shapes(&p, self.n_layers + m));
            for n in ["e_proj", "h_proj"] {
                v.push((format!("{p}{n}.weight"), vec![self.dim, self.dim]));
            }
            for n in ["enorm", "hnorm", "norm"] {
                v.push((format!("{p}{n}.weight"), vec![self.dim]));
            }
            v.extend(self.hc_head_shapes(&p));
        }
        v
    }

    fn hc_head_shapes(&self, p: &str) -> Vec<(String, Vec<usize>)> {
        vec![
            (format!("{p}hc_head_fn"), vec![self.hc_mult, self.hc_mult.saturating_mul(self.dim)]),
            (format!("{p}hc_head_base"), vec![self.hc_mult]),
            (format!("{p}hc_head_scale"), vec![1]),
        ]
    }

    fn compressor_shapes(&self, p: &str, ratio: usize, head_dim: usize) -> Vec<(String, Vec<usize>)> {
        let width = if ratio == 4 { head_dim.saturating_mul(2) } else { head_dim };
        vec![
            (format!("{p}ape"), vec![ratio, width]),
            (format!("{p}wkv.weight"), vec![width, self.dim]),
            (format!("{p}wgate.weight"), vec![width, self.dim]),
            (format!("{p}norm.weight"), vec![head_dim]),
        ]
    }

    fn block_shapes(&self, p: &str, layer: usize) -> Vec<(String, Vec<usize>)> {
        let mut v = self.block_head_shapes(p, layer);
        for e in 0..self.n_routed_experts {
            v.extend(self.expert_shapes(&format!("{p}ffn.experts.{e}.")));
        }
        v.extend(self.block_tail_shapes(p));
        v
    }

    /// A block's tensors before its routed experts: attention, compressor, indexer, gate.
    fn block_head_shapes(&self, p: &str, layer: usize) -> Vec<(String, Vec<usize>)> {
        let (d, h, hd) = (self.dim, self.n_heads, self.head_dim);
        let (g, lora, hhd) = (self.o_groups, self.o_lora_rank, h.saturating_mul(hd));
        let ratio = self.ratio(layer);
        let mut v = vec![
            (format!("{p}attn.attn_sink"), vec![h]),
            (format!("{p}attn.wq_a.weight"), vec![self.q_lora_rank, d]),
            (format!("{p}attn.q_norm.weight"), vec![self.q_lora_rank]),
            (format!("{p}attn.wq_b.weight"), vec![hhd, self.q_lora_rank]),
            (format!("{p}attn.wkv.weight"), vec![hd, d]),
            (format!("{p}attn.kv_norm.weight"), vec![hd]),
            (format!("{p}attn.wo_a.weight"), vec![g.saturating_mul(lora), hhd / g.max(1)]),
            (format!("{p}attn.wo_b.weight"), vec![d, g.saturating_mul(lora)]),
        ];
        if ratio > 0 {
            v.extend(self.compressor_shapes(&format!("{p}attn.compressor."), ratio, hd));
        }
        if ratio == 4 {
            let (ih, ihd) = (self.index_n_heads, self.index_head_dim);
            v.push((format!("{p}attn.indexer.wq_b.weight"), vec![ih.saturating_mul(ihd), self.q_lora_rank]));
            v.push((format!("{p}attn.indexer.weights_proj.weight"), vec![ih, d]));
            v.extend(self.compressor_shapes(&format!("{p}attn.indexer.compressor."), 4, ihd));
        }
        v.push((format!("{p}ffn.gate.weight"), vec![self.n_routed_experts, d]));
        if !self.is_hash_layer(layer) {
            v.push((format!("{p}ffn.gate.bias"), vec![self.n_routed_experts]));
        }
        v
    }

    /// One SwiGLU expert (`p` ends in `experts.<e>.` or `shared_experts.`).
    fn expert_shapes(&self, p: &str) -> Vec<(String, Vec<usize>)> {
        let (d, inter) = (self.dim, self.moe_inter_dim);
        vec![
            (format!("{p}w1.weight"), vec![inter, d]),
            (format!("{p}w2.weight"), vec![d, inter]),
            (format!("{p}w3.weight"), vec![inter, d]),
        ]
    }

    /// A block's tensors after its routed experts: shared expert, norms, mHC sites.
    fn block_tail_shapes(&self, p: &str) -> Vec<(String, Vec<usize>)> {
        let d = self.dim;
        let mut v = Vec::new();
        if self.n_shared_experts > 0 {
            v.extend(self.expert_shapes(&format!("{p}ffn.shared_experts.")));
        }
        v.push((format!("{p}attn_norm.weight"), vec![d]));
        v.push((format!("{p}ffn_norm.weight"), vec![d]));
        let (mix, hcd) = (self.hc_mix(), self.hc_mult.saturating_mul(d));
        for site in ["attn", "ffn"] {
            v.push((format!("{p}hc_{site}_fn"), vec![mix, hcd]));
            v.push((format!("{p}hc_{site}_base"), vec![mix]));
            v.push((format!("{p}hc_{site}_scale"), vec![3]));
        }
        v
    }

    /// `(routed-expert parameters, everything else)` of block `layer`, without listing every
    /// expert's tensors (a config may have tens of thousands of experts).
    fn block_counts(&self, layer: usize) -> (u128, u128) {
        let other = count_of(&self.block_head_shapes("", layer)).saturating_add(count_of(&self.block_tail_shapes("")));
        let routed = count_of(&self.expert_shapes("")).saturating_mul(self.n_routed_experts as u128);
        (routed, other)
    }

    /// Parameters of the MTP blocks (embedding and head shared with the main model).
    fn mtp_count(&self) -> u128 {
        let d = self.dim as u128;
        let per_block_extra = (2 * d * d + 3 * d).saturating_add(count_of(&self.hc_head_shapes("")));
        (0..self.n_mtp_layers).fold(0u128, |a, m| {
            let (routed, other) = self.block_counts(self.n_layers + m);
            a.saturating_add(routed).saturating_add(other).saturating_add(per_block_extra)
        })
    }

    /// Total and per-token parameter counts, summed in `u128` (no overflow for any config;
    /// a count beyond `u64::MAX`, impossible for a validated config, saturates).
    pub fn param_counts(&self) -> ParamCounts {
        let embedding = numel(&[self.vocab_size, self.dim]);
        // embedding, head, final norm, hc_head
        let mut total = embedding
            .saturating_mul(2)
            .saturating_add(self.dim as u128)
            .saturating_add(count_of(&self.hc_head_shapes("")));
        let mut routed = 0u128;
        for l in 0..self.n_layers {
            let (r, other) = self.block_counts(l);
            total = total.saturating_add(r).saturating_add(other);
            routed = routed.saturating_add(r);
        }
        let per_expert = count_of(&self.expert_shapes(""));
        let active_routed = per_expert.saturating_mul(self.n_activated_experts as u128 * self.n_layers as u128);
        let active = total.saturating_sub(routed).saturating_add(active_routed).saturating_sub(embedding);
        ParamCounts {
            total: to_u64(total),
            active: to_u64(active),
            mtp: to_u64(self.mtp_count()),
            embedding: to_u64(embedding),
            routed_experts: to_u64(routed),
        }
    }

    /// KV-cache bytes per token of context at `context` tokens, per layer kind, for entries
    /// stored in `bytes_per_value` (2 for bf16): window ring buffers amortised over the
    /// context, compressed entries (and CSA indexer keys) grow with it.
    pub fn kv_bytes_per_token(&self, context: usize, bytes_per_value: usize) -> Vec<(LayerKind, usize, f64)> {
        let mut out: Vec<(LayerKind, usize, f64)> = Vec::new();
        for l in 0..self.n_layers {
            let ratio = self.ratio(l);
            let kind = self.layer_kind(l);
            let hd = self.head_dim as f64;
            let mut values = self.window_size.min(context) as f64 * hd;
            if let Some(n) = context.checked_div(ratio) {
                values += n as f64 * hd;
            }
            if kind == LayerKind::Csa {
                values += (context / 4) as f64 * self.index_head_dim as f64;
            }
            let per_token = if context == 0 { 0.0 } else { values * bytes_per_value as f64 / context as f64 };
            match out.iter_mut().find(|(k, _, _)| *k == kind) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += per_token;
                }
                None => out.push((kind, 1, per_token)),
            }
        }
        out
    }

    /// A named preset: `tiny` (unit tests), `small` (the demo base), `flash`, `pro`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "small" => Ok(Self::small()),
            "flash" => Ok(Self::flash()),
            "pro" => Ok(Self::pro()),
            other => Err(ModelError::Config(format!("unknown preset `{other}` (expected tiny, small, flash or pro)"))),
        }
    }

    pub const PRESETS: &'static [&'static str] = &["tiny", "small", "flash", "pro"];

    /// Unit-test size: every layer kind, hash and biased routing, runs in milliseconds.
    pub fn tiny() -> Self {
        Config {
            vocab_size: 320,
            dim: 64,
            moe_inter_dim: 32,
            n_layers: 4,
            n_hash_layers: 1,
            n_mtp_layers: 0,
            n_heads: 2,
            n_routed_experts: 4,
            n_shared_experts: 1,
            n_activated_experts: 2,
            score_func: "sqrtsoftplus".into(),
            route_scale: 1.5,
            swiglu_limit: 10.0,
            q_lora_rank: 32,
            head_dim: 32,
            rope_head_dim: 16,
            norm_eps: 1e-6,
            o_groups: 2,
            o_lora_rank: 16,
            window_size: 8,
            compress_ratios: vec![0, 4, 8, 4],
            compress_rope_theta: 160000.0,
            original_seq_len: 65536,
            rope_theta: 10000.0,
            rope_factor: 16.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            index_n_heads: 2,
            index_head_dim: 32,
            index_topk: 2,
            hc_mult: 4,
            hc_sinkhorn_iters: 20,
            hc_eps: 1e-6,
            max_seq_len: 4096,
            bos_token_id: 0,
            eos_token_id: 1,
            dtype: "fp8".into(),
            expert_dtype: "fp4".into(),
        }
    }

    /// The demo base: a few million parameters, every V4 mechanism present.
    pub fn small() -> Self {
        Config {
            vocab_size: 320,
            dim: 128,
            moe_inter_dim: 128,
            n_layers: 4,
            n_hash_layers: 1,
            n_heads: 4,
            n_routed_experts: 8,
            n_activated_experts: 2,
            q_lora_rank: 64,
            head_dim: 64,
            rope_head_dim: 32,
            o_groups: 2,
            o_lora_rank: 64,
            window_size: 256,
            compress_ratios: vec![0, 4, 16, 4],
            index_n_heads: 4,
            index_head_dim: 64,
            index_topk: 16,
            max_seq_len: 8192,
            ..Self::tiny()
        }
    }

    /// DeepSeek-V4-Flash (284B total / 13B active).
    pub fn flash() -> Self {
        let mut ratios = vec![0, 0];
        for _ in 0..20 {
            ratios.extend([4, 128]);
        }
        ratios.extend([4, 0]);
        Config {
            vocab_size: 129280,
            dim: 4096,
            moe_inter_dim: 2048,
            n_layers: 43,
            n_hash_layers: 3,
            n_mtp_layers: 1,
            n_heads: 64,
            n_routed_experts: 256,
            n_shared_experts: 1,
            n_activated_experts: 6,
            score_func: "sqrtsoftplus".into(),
            route_scale: 1.5,
            swiglu_limit: 10.0,
            q_lora_rank: 1024,
            head_dim: 512,
            rope_head_dim: 64,
            norm_eps: 1e-6,
            o_groups: 8,
            o_lora_rank: 1024,
            window_size: 128,
            compress_ratios: ratios,
            compress_rope_theta: 160000.0,
            original_seq_len: 65536,
            rope_theta: 10000.0,
            rope_factor: 16.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            index_n_heads: 64,
            index_head_dim: 128,
            index_topk: 512,
            hc_mult: 4,
            hc_sinkhorn_iters: 20,
            hc_eps: 1e-6,
            max_seq_len: 1 << 20,
            bos_token_id: 0,
            eos_token_id: 1,
            dtype: "fp8".into(),
            expert_dtype: "fp4".into(),
        }
    }

    /// DeepSeek-V4-Pro (1.6T total / 49B active).
    pub fn pro() -> Self {
        let mut ratios = vec![128, 128];
        for _ in 0..29 {
            ratios.extend([4, 128]);
        }
        ratios.extend([4, 0]);
        Config {
            dim: 7168,
            moe_inter_dim: 3072,
            n_layers: 61,
            n_heads: 128,
            n_routed_experts: 384,
            route_scale: 2.5,
            q_lora_rank: 1536,
            o_groups: 16,
            compress_ratios: ratios,
            index_topk: 1024,
            ..Self::flash()
        }
    }

    /// `config.json` text with both the official and the Hugging Face key names.
    pub fn to_json_pretty(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            let hf: [(&str, Value); 16] = [
                ("model_type", "deepseek_v4".into()),
                ("architectures", serde_json::json!(["DeepseekV4ForCausalLM"])),
                ("hidden_size", self.dim.into()),
                ("num_hidden_layers", self.n_layers.into()),
                ("num_attention_heads", self.n_heads.into()),
                ("num_key_value_heads", 1.into()),
                ("qk_rope_head_dim", self.rope_head_dim.into()),
                ("num_experts_per_tok", self.n_activated_experts.into()),
                ("moe_intermediate_size", self.moe_inter_dim.into()),
                ("scoring_func", self.score_func.clone().into()),
                ("routed_scaling_factor", self.route_scale.into()),
                ("num_hash_layers", self.n_hash_layers.into()),
                ("sliding_window", self.window_size.into()),
                ("num_nextn_predict_layers", self.n_mtp_layers.into()),
                ("rms_norm_eps", self.norm_eps.into()),
                ("max_position_embeddings", self.max_seq_len.into()),
            ];
            for (k, val) in hf {
                m.insert(k.to_string(), val);
            }
            m.insert(
                "rope_scaling".into(),
                serde_json::json!({"type": "yarn", "factor": self.rope_factor, "original_max_position_embeddings": self.original_seq_len,
                    "beta_fast": self.beta_fast, "beta_slow": self.beta_slow}),
            );
        }
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        for p in Config::PRESETS {
            Config::preset(p).unwrap().validate().unwrap();
        }
        assert!(Config::preset("huge").is_err());
    }

    #[test]
    fn round_trips_through_json_with_both_key_sets() {
        let c = Config::small();
        let back = Config::from_json_str(&c.to_json_pretty()).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn hf_only_keys_parse() {
        let text = r#"{"vocab_size": 512, "hidden_size": 128, "moe_intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "n_routed_experts": 8, "num_experts_per_tok": 2, "q_lora_rank": 64,
            "head_dim": 64, "qk_rope_head_dim": 32, "o_groups": 2, "o_lora_rank": 32, "sliding_window": 16,
            "compress_ratios": [0, 16], "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 1024,
            "beta_fast": 16, "beta_slow": 2}}"#;
        let c = Config::from_json_str(text).unwrap();
        assert_eq!((c.dim, c.window_size, c.rope_factor, c.original_seq_len, c.beta_fast), (128, 16, 4.0, 1024, 16.0));
    }

    #[test]
    fn clear_errors() {
        let e = Config::from_json_str(r#"{"vocab_size": 4}"#).unwrap_err().to_string();
        assert!(e.contains("missing key") && e.contains("num_hidden_layers"), "{e}");
        assert!(Config::from_json_str("[1,2]").is_err());
        assert!(Config::from_json_str("{not json").is_err());
    }

    #[test]
    fn flash_and_pro_parameter_counts() {
        let f = Config::flash().param_counts();
        let p = Config::pro().param_counts();
        // Public figures: Flash 284B total / 13B active, Pro 1.6T / 49B.
        assert!((f.total as f64 / 284e9 - 1.0).abs() < 0.02, "flash total {}", f.total);
        assert!((f.active as f64 / 13e9 - 1.0).abs() < 0.05, "flash active {}", f.active);
        assert!((p.total as f64 / 1.6e12 - 1.0).abs() < 0.03, "pro total {}", p.total);
        assert!((p.active as f64 / 49e9 - 1.0).abs() < 0.05, "pro active {}", p.active);
    }
}
