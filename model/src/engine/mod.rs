//! Incremental V4 decode engine (inference only, no autograd).
//!
//! One [`Engine::forward`] call processes a list of rows — `(sequence, token)` pairs — through
//! all layers. Dense work (projections, mHC mixes, experts) is batched over all rows; the
//! stateful part (KV window, compressors, indexer, attention) runs row by row in position
//! order inside each sequence and in parallel across sequences. Prefill of a prompt is a
//! call with all its tokens; batched decode is a call with one row per live sequence. Both
//! go through the same code, so prefill-then-decode gives the same logits as one prefill.
//!
//! The maths follows the reference `inference/model.py` (see `shared/reference/v4-architecture.md`):
//! mHC `hc_pre`/`hc_post` with Sinkhorn, MQA with K = V, per-head query RMS normalisation,
//! partial interleaved RoPE, attention sink, CSA/HCA compressed entries with the Lightning
//! Indexer, grouped low-rank output projection, sqrt-softplus MoE with hash layers and the
//! SwiGLU clamp.
//!
//! Weights are held in their stored formats (see `store`): [`Engine::from_checkpoint`] maps
//! the checkpoint files and keeps FP8 E4M3 projections with their 128×128 block scales, packed
//! MXFP4 experts and BF16 matrices/embeddings as views of the files, decoding rows on the fly
//! inside the products; [`Engine::new`] builds the same engine from f32 [`ModelWeights`].

mod state;
mod store;

pub use state::{CompressorState, Decisions, DecodeState, LayerState, StateBytes};
pub use store::WeightMemory;

use crate::config::{Config, LayerKind};
use crate::error::{ModelError, Result};
use crate::formats::{fp8, mxfp4};
use crate::hadamard;
use crate::kernels;
use crate::mapped::MappedCheckpoint;
use crate::rope::{self, RopeFreqs};
use crate::train::prof;
use crate::weights::ModelWeights;
use rayon::prelude::*;
use std::collections::HashMap;
use store::{Linear, MappedSource, Source};

/// Which quantisation simulations run in the forward pass (the golden variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Numerics {
    /// FP8 fake quantisation of the non-RoPE dims of raw and compressed KV (blocks of 64).
    pub kv_fp8: bool,
    /// FP4 fake quantisation of indexer queries and keys after the Hadamard rotation.
    pub indexer_fp4: bool,
    /// FP8 quantisation (1×128 blocks) of the input of every FP8/FP4-weight linear layer.
    pub act_fp8: bool,
}

impl Numerics {
    /// No simulation at all (golden `f32_dense`).
    pub const DENSE: Numerics = Numerics { kv_fp8: false, indexer_fp4: false, act_fp8: false };
    /// The QAT simulations of the V4 forward (golden `f32_noaq`); the default.
    pub const QAT: Numerics = Numerics { kv_fp8: true, indexer_fp4: true, act_fp8: false };
    /// QAT plus FP8 activations as the reference kernels compute (golden `f32`).
    pub const ACT_FP8: Numerics = Numerics { kv_fp8: true, indexer_fp4: true, act_fp8: true };
}

impl Default for Numerics {
    fn default() -> Self {
        Numerics::QAT
    }
}

/// Engine construction options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    pub numerics: Numerics,
    /// Run routed experts from packed MXFP4 (the real format) instead of f32.
    pub fp4_experts: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { numerics: Numerics::QAT, fp4_experts: true }
    }
}

/// mHC parameters of one site.
struct HcSite {
    fn_: Vec<f32>, // [mix, hc·D]
    base: Vec<f32>,
    scale: Vec<f32>,
}

struct Compressor {
    wkv: Linear,
    wgate: Linear,
    ape: Vec<f32>,
    norm: Vec<f32>,
}

struct Indexer {
    wq_b: Linear,
    weights_proj: Linear,
    compressor: Compressor,
}

struct Attention {
    wq_a: Linear,
    q_norm: Vec<f32>,
    wq_b: Linear,
    wkv: Linear,
    kv_norm: Vec<f32>,
    wo_a: Linear, // [g·o_lora, H·hd/g]
    wo_b: Linear,
    sink: Vec<f32>,
    compressor: Option<Compressor>,
    indexer: Option<Indexer>,
    rope: RopeFreqs,
}

struct Expert {
    w1: Linear,
    w2: Linear,
    w3: Linear,
}

struct Moe {
    gate: Linear, // [E, D]
    bias: Option<Vec<f32>>,
    tid2eid: Option<Vec<u32>>,
    experts: Vec<Expert>,
    shared: Option<Expert>,
}

struct Layer {
    kind: LayerKind,
    ratio: usize,
    hc_attn: HcSite,
    hc_ffn: HcSite,
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    attn: Attention,
    moe: Moe,
}

/// A layer's indexer projections of the call's rows: queries `[n, ih·ihd]`, head weights
/// `[n, ih]`, and its compressor's kv and gate inputs `[n, 2·ihd]`.
type IndexerRows = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

/// What every row of one layer's attention reads (see [`Engine::attend_row`]).
struct RowAttention<'a> {
    li: usize,
    layer: &'a Layer,
    /// `[n, H·hd]` normalised, rotated queries.
    q: &'a [f32],
    /// `[n, hd]` this call's window keys (= values).
    kv: &'a [f32],
    /// Indexer queries `[n, ih·ihd]` and head weights `[n, ih]` (CSA layers).
    idx: Option<(&'a [f32], &'a [f32])>,
    rope_cs: &'a [(Vec<f32>, Vec<f32>)],
    positions: &'a [usize],
}

/// One input row: a token of sequence `seq` (an index into the states slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub seq: usize,
    pub token: u32,
}

/// What [`Engine::forward`] should return for each row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Logits of every row.
    AllLogits,
    /// Logits of the last row of each sequence present in the call (sampling).
    LastLogits,
    /// Head inputs (after `hc_head` and the final norm) of every row (OPD teachers).
    AllHidden,
}

/// Result of a forward call.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Row indices (into the call's rows) the outputs belong to, in order.
    pub rows: Vec<usize>,
    /// `[rows.len(), vocab]` or `[rows.len(), dim]` depending on [`Want`].
    pub values: Vec<f32>,
    pub width: usize,
}

impl Output {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

/// The decode engine: immutable weights, shareable across threads.
pub struct Engine {
    pub config: Config,
    pub options: EngineOptions,
    /// `[vocab, D]`, rows decoded on lookup.
    embed: Linear,
    head: Linear,
    norm: Vec<f32>,
    hc_head: HcSite,
    layers: Vec<Layer>,
}

/// RMS norm of one row in place, with the training op's scale ([`crate::train::fused::rms_scale`]).
fn rms_norm(x: &mut [f32], weight: Option<&[f32]>, eps: f32) {
    let r: f32 = crate::train::fused::rms_scale(x, eps);
    match weight {
        Some(w) => x.iter_mut().zip(w).for_each(|(v, g)| *v = g * (*v * r)),
        None => x.iter_mut().for_each(|v| *v *= r),
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// torch's `F.softplus` (threshold 20).
#[inline]
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Split the mHC mixes of one row into `pre [n]`, `post [n]`, `comb [n, n]` (Sinkhorn): the
/// training graph's own split ([`crate::train::fused::HcSplit`]) in f32, so sampler and trainer
/// compute the same mixes.
pub fn hc_split(
    mixes: &[f32],
    scale: &[f32],
    base: &[f32],
    n: usize,
    iters: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    crate::train::fused::HcSplit { n, iters, eps }.split_row(mixes, scale, base)
}

fn load_hc(w: &dyn Source, prefix: &str) -> Result<HcSite> {
    Ok(HcSite {
        fn_: w.vector(&format!("{prefix}_fn"))?,
        base: w.vector(&format!("{prefix}_base"))?,
        scale: w.vector(&format!("{prefix}_scale"))?,
    })
}

fn vec_of(w: &dyn Source, name: &str) -> Result<Vec<f32>> {
    w.vector(name)
}

fn load_compressor(w: &dyn Source, p: &str) -> Result<Compressor> {
    Ok(Compressor {
        wkv: Linear::load(w, &format!("{p}wkv.weight"), false)?,
        wgate: Linear::load(w, &format!("{p}wgate.weight"), false)?,
        ape: vec_of(w, &format!("{p}ape"))?,
        norm: vec_of(w, &format!("{p}norm.weight"))?,
    })
}

/// A routed expert (`routed`: packed FP4 or f32 per `fp4`) or the shared one (as stored).
fn load_expert(w: &dyn Source, p: &str, routed: bool, fp4: bool) -> Result<Expert> {
    let mk = |n: &str| {
        if routed {
            Linear::expert(w, &format!("{p}{n}.weight"), fp4)
        } else {
            Linear::load(w, &format!("{p}{n}.weight"), true)
        }
    };
    Ok(Expert { w1: mk("w1")?, w2: mk("w2")?, w3: mk("w3")? })
}

impl Engine {
    /// Build an engine from weights (checked for completeness first).
    pub fn new(w: &ModelWeights, options: EngineOptions) -> Result<Self> {
        w.validate()?;
        Self::build(w, options)
    }

    /// Build an engine straight from a checkpoint directory (or one safetensors file next to
    /// its `config.json`), with the same acceptance and errors as [`crate::checkpoint::load`].
    /// The files are memory-mapped and weights stay in their stored formats: packed FP4
    /// experts, FP8 projections with their block scales, BF16 matrices and embeddings, F32
    /// tensors read in place; only small vectors (norms, biases, mHC, sinks, `ape`, block
    /// scales) are decoded to owned f32.
    pub fn from_checkpoint(dir: &std::path::Path, options: EngineOptions) -> Result<Self> {
        let ck = MappedCheckpoint::open(dir)?;
        Self::from_mapped(&ck, options)
    }

    /// Build an engine from an already mapped checkpoint (the engine keeps the files mapped).
    pub fn from_mapped(ck: &MappedCheckpoint, options: EngineOptions) -> Result<Self> {
        Self::build(&MappedSource::new(ck), options)
    }

    fn build(w: &dyn Source, options: EngineOptions) -> Result<Self> {
        let cfg = w.config();
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = format!("layers.{l}.");
            let ratio = cfg.ratio(l);
            let a = format!("{p}attn.");
            let compressor = if ratio > 0 { Some(load_compressor(w, &format!("{a}compressor."))?) } else { None };
            let indexer = if ratio == 4 {
                Some(Indexer {
                    wq_b: Linear::load(w, &format!("{a}indexer.wq_b.weight"), true)?,
                    weights_proj: Linear::load(w, &format!("{a}indexer.weights_proj.weight"), false)?,
                    compressor: load_compressor(w, &format!("{a}indexer.compressor."))?,
                })
            } else {
                None
            };
            let attn = Attention {
                wq_a: Linear::load(w, &format!("{a}wq_a.weight"), true)?,
                q_norm: vec_of(w, &format!("{a}q_norm.weight"))?,
                wq_b: Linear::load(w, &format!("{a}wq_b.weight"), true)?,
                wkv: Linear::load(w, &format!("{a}wkv.weight"), true)?,
                kv_norm: vec_of(w, &format!("{a}kv_norm.weight"))?,
                wo_a: Linear::load(w, &format!("{a}wo_a.weight"), false)?,
                wo_b: Linear::load(w, &format!("{a}wo_b.weight"), true)?,
                sink: vec_of(w, &format!("{a}attn_sink"))?,
                compressor,
                indexer,
                rope: RopeFreqs::for_layer(cfg, l),
            };
            let f = format!("{p}ffn.");
            let experts = (0..cfg.n_routed_experts)
                .map(|e| load_expert(w, &format!("{f}experts.{e}."), true, options.fp4_experts))
                .collect::<Result<Vec<_>>>()?;
            let moe = Moe {
                gate: Linear::load(w, &format!("{f}gate.weight"), false)?,
                bias: if cfg.is_hash_layer(l) { None } else { Some(vec_of(w, &format!("{f}gate.bias"))?) },
                tid2eid: if cfg.is_hash_layer(l) { Some(w.tid2eid(l)?) } else { None },
                experts,
                shared: if cfg.n_shared_experts > 0 {
                    Some(load_expert(w, &format!("{f}shared_experts."), false, false)?)
                } else {
                    None
                },
            };
            layers.push(Layer {
                kind: cfg.layer_kind(l),
                ratio,
                hc_attn: load_hc(w, &format!("{p}hc_attn"))?,
                hc_ffn: load_hc(w, &format!("{p}hc_ffn"))?,
                attn_norm: vec_of(w, &format!("{p}attn_norm.weight"))?,
                ffn_norm: vec_of(w, &format!("{p}ffn_norm.weight"))?,
                attn,
                moe,
            });
        }
        Ok(Engine {
            config: cfg.clone(),
            options,
            embed: Linear::load(w, "embed.weight", false)?,
            head: Linear::load(w, "head.weight", false)?,
            norm: vec_of(w, "norm.weight")?,
            hc_head: HcSite {
                fn_: vec_of(w, "hc_head_fn")?,
                base: vec_of(w, "hc_head_base")?,
                scale: vec_of(w, "hc_head_scale")?,
            },
            layers,
        })
    }

    /// A fresh decode state for one sequence.
    pub fn new_state(&self) -> DecodeState {
        DecodeState::new(&self.config)
    }

    /// Bytes of routed-expert weights and of everything else, as held by this engine (in
    /// their held formats, owned or mapped; see [`Engine::weight_memory`]).
    pub fn weight_bytes(&self) -> (usize, usize) {
        let (experts, other) = self.weight_memory();
        (experts.total(), other.total())
    }

    /// Weight memory of routed experts and of everything else, split into heap-owned bytes
    /// and bytes read in place from mapped checkpoint files.
    pub fn weight_memory(&self) -> (WeightMemory, WeightMemory) {
        let mut experts = WeightMemory::default();
        let mut other = WeightMemory::default();
        let expert = |e: &Expert| {
            let mut m = e.w1.memory();
            m += e.w2.memory();
            m += e.w3.memory();
            m
        };
        let vecs = |vs: &[&[f32]]| {
            let mut m = WeightMemory::default();
            vs.iter().for_each(|v| m += WeightMemory::vec(v));
            m
        };
        let compressor = |c: &Compressor| {
            let mut m = c.wkv.memory();
            m += c.wgate.memory();
            m += vecs(&[&c.ape, &c.norm]);
            m
        };
        other += self.embed.memory();
        other += self.head.memory();
        other += vecs(&[&self.norm, &self.hc_head.fn_, &self.hc_head.base, &self.hc_head.scale]);
        for l in &self.layers {
            l.moe.experts.iter().for_each(|e| experts += expert(e));
            let a = &l.attn;
            for lin in [&a.wq_a, &a.wq_b, &a.wkv, &a.wo_a, &a.wo_b, &l.moe.gate] {
                other += lin.memory();
            }
            other += vecs(&[&a.q_norm, &a.kv_norm, &a.sink, &l.attn_norm, &l.ffn_norm]);
            for hc in [&l.hc_attn, &l.hc_ffn] {
                other += vecs(&[&hc.fn_, &hc.base, &hc.scale]);
            }
            if let Some(c) = &a.compressor {
                other += compressor(c);
            }
            if let Some(ix) = &a.indexer {
                other += ix.wq_b.memory();
                other += ix.weights_proj.memory();
                other += compressor(&ix.compressor);
            }
            if let Some(sh) = &l.moe.shared {
                other += expert(sh);
            }
            other += vecs(&[l.moe.bias.as_deref().unwrap_or(&[])]);
            other += WeightMemory { owned: 4 * l.moe.tid2eid.as_ref().map_or(0, Vec::len), mapped: 0 };
        }
        (experts, other)
    }

    /// Run `rows` through the model, advancing each touched sequence's state.
    pub fn forward(&self, states: &mut [DecodeState], rows: &[Row], want: Want) -> Result<Output> {
        let cfg = &self.config;
        let (d, hc, n) = (cfg.dim, cfg.hc_mult, rows.len());
        if n == 0 {
            return Ok(Output { rows: vec![], values: vec![], width: 0 });
        }
        // Positions, and the rows of each sequence in order.
        let mut next_pos: HashMap<usize, usize> = HashMap::new();
        let mut positions = Vec::with_capacity(n);
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            if r.seq >= states.len() {
                return Err(ModelError::Input(format!(
                    "row {i} names sequence {} but only {} states were given",
                    r.seq,
                    states.len()
                )));
            }
            if r.token as usize >= cfg.vocab_size {
                return Err(ModelError::Input(format!(
                    "token id {} is outside the vocabulary ({})",
                    r.token, cfg.vocab_size
                )));
            }
            let p = next_pos.entry(r.seq).or_insert(states[r.seq].pos);
            if *p >= cfg.max_seq_len {
                return Err(ModelError::Input(format!("sequence {} exceeds max_seq_len {}", r.seq, cfg.max_seq_len)));
            }
            positions.push(*p);
            *p += 1;
            match groups.iter_mut().find(|(s, _)| *s == r.seq) {
                Some((_, v)) => v.push(i),
                None => groups.push((r.seq, vec![i])),
            }
        }
        // Embedding, copied into every stream.
        let mut h = vec![0f32; n * hc * d];
        for (i, r) in rows.iter().enumerate() {
            let (first, rest) = h[i * hc * d..(i + 1) * hc * d].split_at_mut(d);
            self.embed.row_into(r.token as usize, first);
            for s in rest.chunks_mut(d) {
                s.copy_from_slice(first);
            }
        }
        // Disjoint mutable states per group.
        let mut seq_states: Vec<(&mut DecodeState, &[usize])> = Vec::with_capacity(groups.len());
        {
            let mut by_seq: HashMap<usize, &[usize]> = groups.iter().map(|(s, v)| (*s, v.as_slice())).collect();
            for (si, st) in states.iter_mut().enumerate() {
                if let Some(rs) = by_seq.remove(&si) {
                    seq_states.push((st, rs));
                }
            }
        }
        for (li, layer) in self.layers.iter().enumerate() {
            // attention sub-block
            let (mut x, post, comb) = prof::time("engine.hc_pre", || self.hc_pre(&h, n, &layer.hc_attn));
            x.par_chunks_mut(d).for_each(|row| rms_norm(row, Some(&layer.attn_norm), cfg.norm_eps));
            let y =
                prof::time("engine.attention", || self.attention(li, layer, &x, rows, &positions, &mut seq_states))?;
            prof::time("engine.hc_post", || hc_post(&mut h, &y, &post, &comb, n, hc, d));
            // MoE sub-block
            let (mut x, post, comb) = prof::time("engine.hc_pre", || self.hc_pre(&h, n, &layer.hc_ffn));
            x.par_chunks_mut(d).for_each(|row| rms_norm(row, Some(&layer.ffn_norm), cfg.norm_eps));
            let y = prof::time("engine.moe", || self.moe(li, layer, &x, rows, &positions, &mut seq_states));
            prof::time("engine.hc_post", || hc_post(&mut h, &y, &post, &comb, n, hc, d));
        }
        for (st, rs) in seq_states.iter_mut() {
            st.pos += rs.len();
            st.tokens.extend(rs.iter().map(|&i| rows[i].token));
        }
        // Which rows produce output.
        let out_rows: Vec<usize> = match want {
            Want::AllLogits | Want::AllHidden => (0..n).collect(),
            Want::LastLogits => groups.iter().map(|(_, v)| *v.last().unwrap_or(&0)).collect(),
        };
        let mut hidden = vec![0f32; out_rows.len() * d];
        for (o, &i) in out_rows.iter().enumerate() {
            let xi = self.hc_head_row(&h[i * hc * d..(i + 1) * hc * d]);
            hidden[o * d..(o + 1) * d].copy_from_slice(&xi);
            rms_norm(&mut hidden[o * d..(o + 1) * d], Some(&self.norm), cfg.norm_eps);
        }
        if want == Want::AllHidden {
            return Ok(Output { rows: out_rows, values: hidden, width: d });
        }
        let v = cfg.vocab_size;
        let mut logits = vec![0f32; out_rows.len() * v];
        self.head.matmul_range(&hidden, out_rows.len(), 0, v, &mut logits);
        Ok(Output { rows: out_rows, values: logits, width: v })
    }

    /// `hc_pre`: returns the sub-layer input `[n, D]`, `post [n, hc]` and `comb [n, hc, hc]`.
    fn hc_pre(&self, h: &[f32], n: usize, site: &HcSite) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let cfg = &self.config;
        let (d, hc, mix) = (cfg.dim, cfg.hc_mult, cfg.hc_mix());
        let mut mixes = vec![0f32; n * mix];
        kernels::matmul_f32(h, n, hc * d, &site.fn_, mix, &mut mixes);
        let mut x = vec![0f32; n * d];
        let mut post = vec![0f32; n * hc];
        let mut comb = vec![0f32; n * hc * hc];
        x.par_chunks_mut(d)
            .zip(post.par_chunks_mut(hc))
            .zip(comb.par_chunks_mut(hc * hc))
            .enumerate()
            .with_min_len(8)
            .for_each(|(i, ((xi, post_i), comb_i))| {
                let hi = &h[i * hc * d..(i + 1) * hc * d];
                let r = 1.0 / (hi.iter().map(|v| v * v).sum::<f32>() / (hc * d) as f32 + cfg.norm_eps).sqrt();
                let m: Vec<f32> = mixes[i * mix..(i + 1) * mix].iter().map(|v| v * r).collect();
                let (pre, po, co) = hc_split(&m, &site.scale, &site.base, hc, cfg.hc_sinkhorn_iters, cfg.hc_eps);
                for s in 0..hc {
                    let stream = &hi[s * d..(s + 1) * d];
                    kernels::axpy(xi, pre[s], stream);
                }
                post_i.copy_from_slice(&po);
                comb_i.copy_from_slice(&co);
            });
        (x, post, comb)
    }

    fn hc_head_row(&self, hi: &[f32]) -> Vec<f32> {
        let cfg = &self.config;
        let (d, hc) = (cfg.dim, cfg.hc_mult);
        let r = 1.0 / (hi.iter().map(|v| v * v).sum::<f32>() / (hc * d) as f32 + cfg.norm_eps).sqrt();
        let mut x = vec![0f32; d];
        for s in 0..hc {
            let mix = kernels::dot(&self.hc_head.fn_[s * hc * d..(s + 1) * hc * d], hi) * r;
            let pre = sigmoid(mix * self.hc_head.scale[0] + self.hc_head.base[s]) + cfg.hc_eps;
            x.iter_mut().zip(&hi[s * d..(s + 1) * d]).for_each(|(a, b)| *a += pre * b);
        }
        x
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        li: usize,
        layer: &Layer,
        x: &[f32],
        rows: &[Row],
        positions: &[usize],
        seq_states: &mut [(&mut DecodeState, &[usize])],
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let num = self.options.numerics;
        let n = rows.len();
        let (h, hd, rd) = (cfg.n_heads, cfg.head_dim, cfg.rope_head_dim);
        let at = &layer.attn;
        // Query path.
        let mut qr = prof::time("engine.a.wq_a", || at.wq_a.forward(x, n, num));
        qr.par_chunks_mut(cfg.q_lora_rank).for_each(|row| rms_norm(row, Some(&at.q_norm), cfg.norm_eps));
        let mut q = prof::time("engine.a.wq_b", || at.wq_b.forward(&qr, n, num));
        // KV path.
        let mut kv = prof::time("engine.a.wkv", || at.wkv.forward(x, n, num));
        let rope_cs: Vec<(Vec<f32>, Vec<f32>)> = positions.par_iter().map(|&p| at.rope.cos_sin(p)).collect();
        q.par_chunks_mut(h * hd).zip(kv.par_chunks_mut(hd)).zip(&rope_cs).for_each(|((qi, k), (c, s))| {
            for head in qi.chunks_mut(hd) {
                rms_norm(head, None, cfg.norm_eps);
                rope::apply(head, c, s, false);
            }
            rms_norm(k, Some(&at.kv_norm), cfg.norm_eps);
            rope::apply(k, c, s, false);
            if num.kv_fp8 {
                fp8::fake_quant(&mut k[..hd - rd], 64);
            }
        });
        // Compressor and indexer projections (batched).
        let comp = prof::time("engine.a.comp_proj", || {
            at.compressor.as_ref().map(|c| (c.wkv.forward(x, n, num), c.wgate.forward(x, n, num)))
        });
        let idx = at.indexer.as_ref().map(|ix| {
            let (ih, ihd) = (cfg.index_n_heads, cfg.index_head_dim);
            let mut qi = prof::time("engine.a.idx_wq_b", || ix.wq_b.forward(&qr, n, num));
            qi.par_chunks_mut(ih * ihd).zip(&rope_cs).for_each(|(row, (c, s))| {
                for head in row.chunks_mut(ihd) {
                    rope::apply(head, c, s, false);
                    hadamard::rotate(head);
                    if num.indexer_fp4 {
                        mxfp4::fake_quant(head);
                    }
                }
            });
            let scale = (ihd as f32).powf(-0.5) * (ih as f32).powf(-0.5);
            let mut wts = ix.weights_proj.forward(x, n, num);
            wts.iter_mut().for_each(|v| *v *= scale);
            let ikv = ix.compressor.wkv.forward(x, n, num);
            let ig = ix.compressor.wgate.forward(x, n, num);
            (qi, wts, ikv, ig)
        });
        // Stateful part in three phases, so rows of one sequence (a prefill) run in parallel:
        // (1) per sequence, in position order, the compressors pool their closed windows and
        // each row notes how many compressed entries it sees (entries only grow); (2) every
        // row attends, in parallel, reading window keys of this call from `kv` and older ones
        // from the ring buffer, which is still as the call found it; (3) the ring buffer
        // takes this call's keys. Each row's arithmetic is that of a row-by-row loop.
        let visible: Vec<Vec<usize>> = prof::time("engine.compress", || {
            seq_states
                .par_iter_mut()
                .map(|(st, rs)| {
                    rs.iter().map(|&i| self.push_compressed(li, layer, st, i, positions[i], &comp, &idx)).collect()
                })
                .collect()
        });
        let ctx = RowAttention {
            li,
            layer,
            q: &q,
            kv: &kv,
            idx: idx.as_ref().map(|t| (&t.0[..], &t.1[..])),
            rope_cs: &rope_cs,
            positions,
        };
        let tasks: Vec<(usize, usize, usize)> = visible
            .iter()
            .enumerate()
            .flat_map(|(si, v)| v.iter().enumerate().map(move |(r, &n_entries)| (si, r, n_entries)))
            .collect();
        let shared: &[(&mut DecodeState, &[usize])] = seq_states;
        let attended: Vec<(Vec<f32>, Option<Vec<usize>>)> = prof::time("engine.attend", || {
            tasks
                .par_iter()
                .with_min_len(4)
                .map(|&(si, r, n_entries)| self.attend_row(&ctx, shared[si].0, shared[si].1, r, n_entries))
                .collect()
        });
        let mut o = vec![0f32; n * h * hd];
        for (&(si, r, _), (v, sel)) in tasks.iter().zip(attended) {
            let i = seq_states[si].1[r];
            o[i * h * hd..(i + 1) * h * hd].copy_from_slice(&v);
            if let (Some(rec), Some(sel)) = (seq_states[si].0.record.as_mut(), sel) {
                rec.topk.insert((li, positions[i]), sel);
            }
        }
        for (st, rs) in seq_states.iter_mut() {
            let ring = &mut st.layers[li].window;
            for &i in rs.iter() {
                let slot = positions[i] % cfg.window_size;
                ring[slot * hd..(slot + 1) * hd].copy_from_slice(&kv[i * hd..(i + 1) * hd]);
            }
        }
        // Grouped low-rank output projection: per group g, [H·hd/g] → [o_lora].
        let (g, lora) = (cfg.o_groups, cfg.o_lora_rank);
        let gw = h * hd / g;
        let mut oa = vec![0f32; n * g * lora];
        for gi in 0..g {
            let xg: Vec<f32> =
                (0..n).flat_map(|i| o[i * h * hd + gi * gw..i * h * hd + (gi + 1) * gw].iter().copied()).collect();
            let mut yg = vec![0f32; n * lora];
            prof::time("engine.a.wo_a", || at.wo_a.matmul_range(&xg, n, gi * lora, (gi + 1) * lora, &mut yg));
            for i in 0..n {
                oa[i * g * lora + gi * lora..i * g * lora + (gi + 1) * lora]
                    .copy_from_slice(&yg[i * lora..(i + 1) * lora]);
            }
        }
        Ok(prof::time("engine.a.wo_b", || at.wo_b.forward(&oa, n, num)))
    }

    /// Feed row `i` (at `pos`) to the layer's compressors, append any entry whose window it
    /// closes, and return how many main-branch compressed entries the row may attend.
    #[allow(clippy::too_many_arguments)]
    fn push_compressed(
        &self,
        li: usize,
        layer: &Layer,
        st: &mut DecodeState,
        i: usize,
        pos: usize,
        comp: &Option<(Vec<f32>, Vec<f32>)>,
        idx: &Option<IndexerRows>,
    ) -> usize {
        let (cfg, at) = (&self.config, &layer.attn);
        let hd = cfg.head_dim;
        let ls = &mut st.layers[li];
        if let (Some(c), Some((ckv, cg))) = (&at.compressor, comp) {
            let w = if layer.ratio == 4 { 2 * hd } else { hd };
            if let Some(entry) = ls
                .compressor
                .as_mut()
                .and_then(|cs| cs.push(pos, &ckv[i * w..(i + 1) * w], &cg[i * w..(i + 1) * w], &c.ape))
            {
                let e = self.finish_entry(entry, &c.norm, at, layer.ratio, pos, false);
                ls.entries.extend_from_slice(&e);
            }
        }
        if let (Some(ix), Some((_, _, ikv, ig))) = (&at.indexer, idx) {
            let w = 2 * cfg.index_head_dim;
            if let Some(entry) = ls
                .index_compressor
                .as_mut()
                .and_then(|cs| cs.push(pos, &ikv[i * w..(i + 1) * w], &ig[i * w..(i + 1) * w], &ix.compressor.ape))
            {
                let e = self.finish_entry(entry, &ix.compressor.norm, at, 4, pos, true);
                ls.index_keys.extend_from_slice(&e);
            }
        }
        ls.entries.len() / hd
    }

    /// Attention output `[H·hd]` of the `r`-th row of sequence state `st` (rows `rs`), which
    /// sees the first `n_entries` compressed entries; also the indexer's choice when the
    /// sequence records decisions.
    fn attend_row(
        &self,
        ctx: &RowAttention,
        st: &DecodeState,
        rs: &[usize],
        r: usize,
        n_entries: usize,
    ) -> (Vec<f32>, Option<Vec<usize>>) {
        let cfg = &self.config;
        let (h, hd, window) = (cfg.n_heads, cfg.head_dim, cfg.window_size);
        let (li, at) = (ctx.li, &ctx.layer.attn);
        let i = rs[r];
        let pos = ctx.positions[i];
        let ls = &st.layers[li];
        let selected: Vec<usize> = match ctx.layer.kind {
            LayerKind::Window => vec![],
            LayerKind::Hca => (0..n_entries).collect(),
            LayerKind::Csa => match st.forced.as_ref().and_then(|f| f.topk.get(&(li, pos)).cloned()) {
                Some(s) => s.into_iter().filter(|&e| e < n_entries).collect(),
                None => {
                    let (qi, wts) = ctx.idx.expect("CSA layer has an indexer");
                    let (ih, ihd) = (cfg.index_n_heads, cfg.index_head_dim);
                    self.index_select(
                        &qi[i * ih * ihd..(i + 1) * ih * ihd],
                        &wts[i * ih..(i + 1) * ih],
                        &ls.index_keys,
                        n_entries,
                    )
                }
            },
        };
        // Key of window position p: this call's rows from `kv`, older ones from the ring.
        let first = ctx.positions[rs[0]];
        let key = |p: usize| -> &[f32] {
            if p >= first {
                let j = rs[p - first];
                &ctx.kv[j * hd..(j + 1) * hd]
            } else {
                let s = p % window;
                &ls.window[s * hd..(s + 1) * hd]
            }
        };
        let mut o = vec![0f32; h * hd];
        let start = (pos + 1).saturating_sub(window);
        let scale = (hd as f32).powf(-0.5);
        let mut scores = Vec::with_capacity(window + selected.len());
        for head in 0..h {
            let qh = &ctx.q[(i * h + head) * hd..(i * h + head + 1) * hd];
            let nw = pos + 1 - start;
            scores.clear();
            scores.resize(nw + selected.len(), 0.0);
            kernels::dots(qh, |t| key(start + t), &mut scores[..nw]);
            kernels::dots(qh, |t| &ls.entries[selected[t] * hd..(selected[t] + 1) * hd], &mut scores[nw..]);
            scores.iter_mut().for_each(|s| *s *= scale);
            let m = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut z = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - m).exp();
                z += *s;
            }
            z += (at.sink[head] - m).exp();
            let oh = &mut o[head * hd..(head + 1) * hd];
            let mut k = 0;
            for p in start..=pos {
                let wgt = scores[k] / z;
                kernels::axpy(oh, wgt, key(p));
                k += 1;
            }
            for &e in &selected {
                let wgt = scores[k] / z;
                kernels::axpy(oh, wgt, &ls.entries[e * hd..(e + 1) * hd]);
                k += 1;
            }
            let (c, s) = &ctx.rope_cs[i];
            rope::apply(oh, c, s, true);
        }
        let record = (st.record.is_some() && ctx.layer.kind == LayerKind::Csa).then_some(selected);
        (o, record)
    }

    /// Normalise, rotate and (optionally) fake-quantise a freshly pooled compressed entry.
    fn finish_entry(
        &self,
        mut e: Vec<f32>,
        norm: &[f32],
        at: &Attention,
        ratio: usize,
        pos: usize,
        indexer: bool,
    ) -> Vec<f32> {
        let cfg = &self.config;
        rms_norm(&mut e, Some(norm), cfg.norm_eps);
        let (c, s) = at.rope.cos_sin(pos + 1 - ratio);
        rope::apply(&mut e, &c, &s, false);
        let num = self.options.numerics;
        if indexer {
            hadamard::rotate(&mut e);
            if num.indexer_fp4 {
                mxfp4::fake_quant(&mut e);
            }
        } else if num.kv_fp8 {
            let nope = e.len() - cfg.rope_head_dim;
            fp8::fake_quant(&mut e[..nope], 64);
        }
        e
    }

    /// Lightning Indexer: `I_s = Σ_h w_h · relu(q_h · k_s)` over visible entries, top-k.
    fn index_select(&self, qi: &[f32], wts: &[f32], keys: &[f32], n_entries: usize) -> Vec<usize> {
        let cfg = &self.config;
        let ihd = cfg.index_head_dim;
        let mut per_head = vec![0f32; cfg.index_n_heads];
        let mut scored: Vec<(f32, usize)> = (0..n_entries)
            .map(|s| {
                let k = &keys[s * ihd..(s + 1) * ihd];
                kernels::dots(k, |hh| &qi[hh * ihd..(hh + 1) * ihd], &mut per_head);
                let v: f32 = per_head.iter().zip(wts).map(|(d, w)| d.max(0.0) * w).sum();
                (v, s)
            })
            .collect();
        let k = cfg.index_topk.min(n_entries);
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.truncate(k);
        scored.into_iter().map(|(_, s)| s).collect()
    }

    fn moe(
        &self,
        li: usize,
        layer: &Layer,
        x: &[f32],
        rows: &[Row],
        positions: &[usize],
        seq_states: &mut [(&mut DecodeState, &[usize])],
    ) -> Vec<f32> {
        let cfg = &self.config;
        let num = self.options.numerics;
        let (n, d, k, ne) = (rows.len(), cfg.dim, cfg.n_activated_experts, cfg.n_routed_experts);
        let moe = &layer.moe;
        let mut logits = vec![0f32; n * ne];
        moe.gate.matmul_range(x, n, 0, ne, &mut logits);
        // Forced routes come from the sequence state.
        let mut forced: Vec<Option<Vec<u32>>> = vec![None; n];
        for (st, rs) in seq_states.iter() {
            if let Some(f) = &st.forced {
                for &i in rs.iter() {
                    if let Some(r) = f.routes.get(&positions[i]) {
                        if r.len() >= (li + 1) * k {
                            forced[i] = Some(r[li * k..(li + 1) * k].to_vec());
                        }
                    }
                }
            }
        }
        let mut sel = vec![0u32; n * k];
        let mut wts = vec![0f32; n * k];
        for i in 0..n {
            let scores: Vec<f32> = logits[i * ne..(i + 1) * ne].iter().map(|&l| softplus(l).sqrt()).collect();
            let ids: Vec<u32> = if let Some(f) = forced[i].take() {
                f
            } else if let Some(t) = &moe.tid2eid {
                t[rows[i].token as usize * k..(rows[i].token as usize + 1) * k].to_vec()
            } else {
                let bias = moe.bias.as_deref().unwrap_or(&[]);
                let mut order: Vec<(f32, u32)> = scores
                    .iter()
                    .enumerate()
                    .map(|(e, s)| (s + bias.get(e).copied().unwrap_or(0.0), e as u32))
                    .collect();
                order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                order[..k].iter().map(|(_, e)| *e).collect()
            };
            let total: f32 = ids.iter().map(|&e| scores[e as usize]).sum();
            for (j, &e) in ids.iter().enumerate() {
                sel[i * k + j] = e;
                wts[i * k + j] = scores[e as usize] / total * cfg.route_scale;
            }
        }
        for (st, rs) in seq_states.iter_mut() {
            if let Some(rec) = st.record.as_mut() {
                for &i in rs.iter() {
                    let e = rec.routes.entry(positions[i]).or_insert_with(|| vec![0; cfg.n_layers * k]);
                    e[li * k..(li + 1) * k].copy_from_slice(&sel[i * k..(i + 1) * k]);
                }
            }
        }
        // Rows per expert, then each active expert in parallel; accumulate in expert order.
        let mut assign: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
        for i in 0..n {
            for j in 0..k {
                assign[sel[i * k + j] as usize].push((i, wts[i * k + j]));
            }
        }
        let limit = cfg.swiglu_limit;
        // Routed experts in parallel (each product single-threaded), beside the shared expert.
        let routed = || -> Vec<(usize, Vec<f32>)> {
            assign
                .par_iter()
                .enumerate()
                .filter(|(_, a)| !a.is_empty())
                .map(|(e, a)| {
                    let xs: Vec<f32> = a.iter().flat_map(|(i, _)| x[i * d..(i + 1) * d].iter().copied()).collect();
                    let w: Vec<f32> = a.iter().map(|(_, w)| *w).collect();
                    (e, kernels::serial(|| expert_forward(&moe.experts[e], &xs, a.len(), Some(&w), limit, num)))
                })
                .collect()
        };
        let shared = || moe.shared.as_ref().map(|sh| expert_forward(sh, x, n, None, limit, num));
        let (outputs, shared) = prof::time("engine.experts", || rayon::join(routed, shared));
        // Sum in expert order, then the shared expert.
        let mut y = vec![0f32; n * d];
        for (e, out) in outputs {
            for (r, (i, _)) in assign[e].iter().enumerate() {
                y[i * d..(i + 1) * d].iter_mut().zip(&out[r * d..(r + 1) * d]).for_each(|(a, b)| *a += b);
            }
        }
        if let Some(out) = shared {
            y.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
        }
        y
    }
}

/// SwiGLU expert with the V4 clamp; the routing weight multiplies the hidden activation
/// before `w2`, as in the reference.
fn expert_forward(e: &Expert, x: &[f32], rows: usize, route_w: Option<&[f32]>, limit: f32, num: Numerics) -> Vec<f32> {
    let g = e.w1.forward(x, rows, num);
    let u = e.w3.forward(x, rows, num);
    let inter = e.w1.out;
    let mut hbuf = vec![0f32; rows * inter];
    for r in 0..rows {
        let rw = route_w.map_or(1.0, |w| w[r]);
        for j in 0..inter {
            let (mut gv, mut uv) = (g[r * inter + j], u[r * inter + j]);
            if limit > 0.0 {
                uv = uv.clamp(-limit, limit);
                gv = gv.min(limit);
            }
            let hv = gv * sigmoid(gv) * uv;
            hbuf[r * inter + j] = if route_w.is_some() { rw * hv } else { hv };
        }
    }
    e.w2.forward(&hbuf, rows, num)
}

/// `y_j = post_j · f + Σ_i comb[i, j] · x_i`, in place over the streams `h`.
fn hc_post(h: &mut [f32], f: &[f32], post: &[f32], comb: &[f32], n: usize, hc: usize, d: usize) {
    let scratch = || vec![0f32; hc * d];
    h[..n * hc * d].par_chunks_mut(hc * d).enumerate().with_min_len(8).for_each_init(scratch, |new, (i, hi)| {
        let fi = &f[i * d..(i + 1) * d];
        for j in 0..hc {
            let nj = &mut new[j * d..(j + 1) * d];
            let pj = post[i * hc + j];
            nj.iter_mut().zip(fi).for_each(|(a, b)| *a = pj * b);
            for s in 0..hc {
                let c = comb[i * hc * hc + s * hc + j];
                kernels::axpy(nj, c, &hi[s * d..(s + 1) * d]);
            }
        }
        hi.copy_from_slice(new);
    });
}
