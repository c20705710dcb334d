//! The trainable V4 forward pass in candle: the same mathematics as [`crate::engine`],
//! written over whole padded batches `[B, S]` with ops that carry gradients.
//!
//! * every float parameter is a candle `Var` under its official name;
//! * routing and indexer top-k are discrete: they are chosen on detached values (or replayed
//!   from the sampler — Keep Routing) and the gradient flows through the selected gate scores;
//! * QAT: FP4 fake quantisation of routed-expert weights and of the indexer QK path, FP8 of the
//!   KV non-RoPE dims, all with a straight-through estimator;
//! * the Lightning Indexer learns from an auxiliary KL loss towards the main attention's
//!   distribution over compressed entries (its inputs are detached, as in DeepSeek-V3.2).
//!
//! Right padding is harmless: a query never attends a later key, compressed entries only pool
//! complete windows, and MoE is per token, so padded positions never leak into real ones.
//!
//! Packed sequences ([`SeqInput::doc_starts`]) hold several documents; each is computed
//! exactly as if it ran alone (positions, window, compression blocks, indexer selection and
//! sink all per document; see [`docs`]).

pub mod attention;
pub mod docs;
pub mod fused;
pub mod hc;
pub mod linear;
pub mod moe;
pub mod ops;
pub mod pool;
pub mod prof;
pub mod sink;
#[cfg(test)]
mod test_data;

use crate::config::{Config, LayerKind};
use crate::engine::{Decisions, Numerics};
use crate::error::{ModelError, Result};
use crate::rope::RopeFreqs;
use crate::weights::{ModelWeights, Tensor32};
use candle_core::{DType, Device, Tensor, Var};
use ops::{fake_quant, sigmoid, softmax_last, FakeQuant};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Options of the training forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainOptions {
    /// KV FP8 and indexer FP4 simulations (`act_fp8` is inference-only and rejected).
    pub numerics: Numerics,
    /// FP4 fake quantisation of routed-expert weights (QAT), so an FP4 export samples what
    /// was trained.
    pub qat_experts: bool,
    /// Compute the Lightning Indexer's auxiliary KL loss.
    pub indexer_loss: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { numerics: Numerics::QAT, qat_experts: true, indexer_loss: true }
    }
}

/// One sequence of a training batch: one document, or several documents packed one after
/// the other.
#[derive(Debug, Clone, Default)]
pub struct SeqInput {
    pub tokens: Vec<u32>,
    /// Decisions to replay (Keep Routing / forced indexer selections), by absolute position
    /// in `tokens`; indexer selections number compressed entries from the start of the
    /// position's own document (as that document run alone would).
    pub forced: Option<Arc<Decisions>>,
    /// Start offsets of the documents packed into `tokens`: `0 = a_0 < a_1 < … < len`; empty
    /// means one document. Each document sees only itself — RoPE positions, the sliding
    /// window, compression blocks (counted from its start), the indexer's top-k and the
    /// attention sink are all per document — so a packed sequence computes exactly what its
    /// documents compute run one by one.
    pub doc_starts: Vec<usize>,
}

impl SeqInput {
    /// One document.
    pub fn new(tokens: Vec<u32>) -> Self {
        SeqInput { tokens, ..Default::default() }
    }

    /// Documents packed one after the other (empty documents are dropped).
    pub fn packed<I: IntoIterator<Item = Vec<u32>>>(documents: I) -> Self {
        let mut seq = SeqInput::default();
        for d in documents.into_iter().filter(|d| !d.is_empty()) {
            seq.doc_starts.push(seq.tokens.len());
            seq.tokens.extend(d);
        }
        seq
    }

    /// The same sequence with decisions to replay.
    pub fn with_forced(mut self, forced: Arc<Decisions>) -> Self {
        self.forced = Some(forced);
        self
    }
}

/// Rotary context of one layer type: its frequencies and the position of every row.
#[derive(Clone)]
struct RopeCtx {
    freqs: Arc<Vec<f32>>,
    positions: Arc<Vec<usize>>,
}

/// Document context of one forward: positions, window starts and compressed-entry layouts.
struct Packing {
    /// RoPE position of row `(b, t)`: `t` minus the start of its document.
    positions: Arc<Vec<usize>>,
    /// First raw key of each query row (`None`: one document per row).
    key_start: Option<Arc<Vec<u32>>>,
    /// Compressed-entry layout by compression ratio (every ratio of the config, and 4 for
    /// the indexer).
    entries: BTreeMap<usize, docs::EntryLayout>,
}

impl Packing {
    fn new(cfg: &Config, batch: &[SeqInput], s: usize) -> Result<Self> {
        for seq in batch {
            docs::validate_starts(&seq.doc_starts, seq.tokens.len())?;
        }
        let starts: Vec<&[usize]> = batch.iter().map(|q| q.doc_starts.as_slice()).collect();
        let layout = docs::DocLayout::new(&starts, s);
        let mut entries = BTreeMap::new();
        for l in 0..cfg.n_layers {
            let r = cfg.ratio(l);
            if r > 0 {
                entries.entry(r).or_insert_with(|| layout.entries(r));
                if cfg.layer_kind(l) == LayerKind::Csa {
                    entries.entry(4).or_insert_with(|| layout.entries(4));
                }
            }
        }
        let key_start = (!layout.is_unpacked()).then(|| Arc::new(layout.key_starts()));
        Ok(Packing { positions: Arc::new(layout.positions()), key_start, entries })
    }

    fn entries(&self, ratio: usize) -> Result<&docs::EntryLayout> {
        self.entries.get(&ratio).ok_or_else(|| ModelError::Input(format!("no entry layout of ratio {ratio}")))
    }
}

/// Result of [`TrainModel::forward`].
pub struct TrainOutput {
    /// Head inputs `[B, S, D]` (after `hc_head` and the final norm).
    pub hidden: Tensor,
    pub lengths: Vec<usize>,
    /// Mean indexer KL over queries that see at least one compressed entry.
    pub indexer_loss: Option<Tensor>,
    /// Decisions actually used, per sequence (keyed as [`SeqInput::forced`]).
    pub decisions: Vec<Decisions>,
}

/// Trainable V4 model.
pub struct TrainModel {
    pub config: Config,
    pub options: TrainOptions,
    dtype: DType,
    device: Device,
    vars: BTreeMap<String, Var>,
    tid2eid: BTreeMap<usize, Vec<u32>>,
    /// When set, the residual streams after every block are kept (conformance debugging).
    trace: std::sync::Mutex<Option<Vec<Tensor>>>,
    /// FP4 fake-quantised expert weights of the current parameter values (QAT); cleared by
    /// [`invalidate_cache`](Self::invalidate_cache) whenever a parameter changes.
    fq_cache: std::sync::Mutex<std::collections::HashMap<String, Tensor>>,
    /// Expert weight gradients of the running backward (see [`sink`]).
    sink: Arc<sink::GradSink>,
}

const NEG: f64 = -1e30;

impl TrainModel {
    /// Turn weights into `Var`s of `dtype` (f32 for training, f64 for gradient checks).
    pub fn from_weights(w: &ModelWeights, dtype: DType, options: TrainOptions) -> Result<Self> {
        w.validate()?;
        if options.numerics.act_fp8 {
            return Err(ModelError::Input(
                "FP8 activation quantisation is an inference simulation; the trainer does not support it".into(),
            ));
        }
        let device = Device::Cpu;
        let mut vars = BTreeMap::new();
        for (name, t) in &w.tensors {
            let tensor = Tensor::from_slice(&t.data, t.shape.as_slice(), &device)?.to_dtype(dtype)?;
            vars.insert(name.clone(), Var::from_tensor(&tensor)?);
        }
        let cfg = &w.config;
        Ok(TrainModel {
            config: cfg.clone(),
            options,
            dtype,
            device,
            vars,
            tid2eid: w.tid2eid.clone(),
            trace: Default::default(),
            fq_cache: Default::default(),
            sink: Default::default(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All trainable variables by name.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    pub fn var(&self, name: &str) -> Result<&Tensor> {
        self.vars
            .get(name)
            .map(Var::as_tensor)
            .ok_or_else(|| ModelError::Checkpoint(format!("missing parameter `{name}`")))
    }

    /// Current parameters as plain f32 weights (for checkpoints and the decode engine).
    pub fn to_weights(&self) -> Result<ModelWeights> {
        let mut tensors = BTreeMap::new();
        for (name, v) in &self.vars {
            let t = v.as_tensor();
            let data = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            tensors.insert(name.clone(), Tensor32::new(t.dims().to_vec(), data));
        }
        Ok(ModelWeights { config: self.config.clone(), tensors, tid2eid: self.tid2eid.clone(), fp4: BTreeMap::new() })
    }

    /// Overwrite parameters from weights with the same names and shapes.
    pub fn load_weights(&self, w: &ModelWeights) -> Result<()> {
        for (name, v) in &self.vars {
            let t = w.get_shaped(name, v.as_tensor().dims())?;
            v.set(&Tensor::from_slice(&t.data, t.shape.as_slice(), &self.device)?.to_dtype(self.dtype)?)?;
        }
        self.invalidate_cache();
        Ok(())
    }

    /// Fused RMSNorm with the config's epsilon.
    fn norm(&self, x: &Tensor, weight: Option<&str>) -> Result<Tensor> {
        let w = match weight {
            Some(n) => Some(self.var(n)?),
            None => None,
        };
        Ok(fused::rms_norm(x, w, self.config.norm_eps)?)
    }

    /// Forward a batch of sequences (right-padded internally).
    pub fn forward(&self, batch: &[SeqInput]) -> Result<TrainOutput> {
        let cfg = &self.config;
        let b = batch.len();
        if b == 0 {
            return Err(ModelError::Input("empty batch".into()));
        }
        let lengths: Vec<usize> = batch.iter().map(|s| s.tokens.len()).collect();
        let s = *lengths.iter().max().unwrap_or(&0);
        if s == 0 {
            return Err(ModelError::Input("every sequence in the batch is empty".into()));
        }
        if s > cfg.max_seq_len {
            return Err(ModelError::Input(format!("sequence of {s} tokens exceeds max_seq_len {}", cfg.max_seq_len)));
        }
        let (d, hc) = (cfg.dim, cfg.hc_mult);
        let mut ids = Vec::with_capacity(b * s);
        for seq in batch {
            if let Some(t) = seq.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(ModelError::Input(format!("token id {t} is outside the vocabulary ({})", cfg.vocab_size)));
            }
            ids.extend_from_slice(&seq.tokens);
            ids.extend(std::iter::repeat_n(0u32, s - seq.tokens.len()));
        }
        let ids_t = Tensor::from_slice(&ids, b * s, &self.device)?;
        let n = b * s;
        let emb = self.var("embed.weight")?.index_select(&ids_t, 0)?; // [N, D]
        let mut h = emb.unsqueeze(1)?.broadcast_as((n, hc, d))?.contiguous()?;
        let mut decisions = vec![Decisions::default(); b];
        let mut aux: Vec<Tensor> = Vec::new();
        let rope_plain = RopeFreqs::new(cfg.rope_head_dim, cfg.rope_theta, None);
        let rope_yarn = RopeFreqs::new(
            cfg.rope_head_dim,
            cfg.compress_rope_theta,
            Some((cfg.original_seq_len, cfg.rope_factor, cfg.beta_fast, cfg.beta_slow)),
        );
        // Rotary frequencies of window-only and compressed layers; row (b, t) is at position
        // t − (start of its document).
        let freqs = [Arc::new(rope_plain.freqs.clone()), Arc::new(rope_yarn.freqs.clone())];
        let pk = Packing::new(cfg, batch, s)?;
        let positions = pk.positions.clone();
        for l in 0..cfg.n_layers {
            let p = format!("layers.{l}.");
            let (x, split) = prof::time("hc_pre", || self.hc_pre(&h, &format!("{p}hc_attn")))?;
            let x = self.norm(&x, Some(&format!("{p}attn_norm.weight")))?;
            let table = RopeCtx { freqs: freqs[usize::from(cfg.ratio(l) > 0)].clone(), positions: positions.clone() };
            let y = prof::time("attention", || {
                self.attention(l, &x, b, s, &lengths, batch, &pk, &table, &freqs[1], &mut decisions, &mut aux)
            })?;
            h = prof::time("hc_post", || hc::hc_expand(&h, &y, &split))?;
            let (x, split) = prof::time("hc_pre", || self.hc_pre(&h, &format!("{p}hc_ffn")))?;
            let x = self.norm(&x, Some(&format!("{p}ffn_norm.weight")))?;
            let y = prof::time("moe", || self.moe(l, &x, &ids, b, s, &lengths, batch, &mut decisions))?;
            h = prof::time("hc_post", || hc::hc_expand(&h, &y, &split))?;
            if let Ok(mut t) = self.trace.lock() {
                if let Some(v) = t.as_mut() {
                    v.push(h.detach());
                }
            }
        }
        // hc_head + final norm
        let mixes = self.hc_mixes(&h, "hc_head_fn")?;
        let pre =
            (sigmoid(&mixes.broadcast_mul(self.var("hc_head_scale")?)?.broadcast_add(self.var("hc_head_base")?)?)?
                + cfg.hc_eps as f64)?;
        let x = hc::hc_collapse(&h, &pre)?;
        let hidden = self.norm(&x, Some("norm.weight"))?.reshape((b, s, d))?;
        let indexer_loss =
            if aux.is_empty() { None } else { Some((Tensor::stack(&aux, 0)?.sum_all()? / aux.len() as f64)?) };
        Ok(TrainOutput { hidden, lengths, indexer_loss, decisions })
    }

    /// Gradients of the scalar `loss` (computed from this model's forward) with respect to
    /// every variable: candle's backprop plus the expert weight gradients the fused expert op
    /// deposits in the model's [`sink`]. Use this rather than `loss.backward()`, which misses
    /// the expert weights; a backward that bypassed it is reported by the next call.
    pub fn backward(&self, loss: &Tensor) -> Result<candle_core::backprop::GradStore> {
        if !self.sink.is_empty() {
            self.sink.clear();
            return Err(ModelError::Input(
                "expert weight gradients of an earlier backward were never collected: \
                 call TrainModel::backward, not Tensor::backward, on the model's losses"
                    .into(),
            ));
        }
        let result = loss.backward().and_then(|mut g| self.sink.drain_into(&mut g).map(|_| g));
        if result.is_err() {
            self.sink.clear();
        }
        Ok(result?)
    }

    /// Forget derived copies of the weights (call after changing any parameter).
    pub fn invalidate_cache(&self) {
        if let Ok(mut c) = self.fq_cache.lock() {
            c.clear();
        }
    }

    /// Keep the residual streams `[B·S, hc, D]` after every block of the next forward calls.
    pub fn start_trace(&self) {
        if let Ok(mut t) = self.trace.lock() {
            *t = Some(Vec::new());
        }
    }

    /// The streams kept since [`start_trace`](Self::start_trace), and stop keeping them.
    pub fn take_trace(&self) -> Vec<Tensor> {
        self.trace.lock().ok().and_then(|mut t| t.take()).unwrap_or_default()
    }

    /// Logits `[.., V]` of head inputs.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.linear(hidden, "head.weight")
    }

    /// RMS-scaled mixes `rs ⊙ (flat · Wᵀ)` of the streams `h [N, hc, D]` with the weight
    /// `name` (`rs = (mean(flat²) + ε)^{−½}` per row).
    fn hc_mixes(&self, h: &Tensor, name: &str) -> Result<Tensor> {
        let (n, hc, d) = h.dims3()?;
        let flat = h.reshape((n, hc * d))?;
        let rs = (flat.sqr()?.mean_keepdim(1)? + self.config.norm_eps as f64)?.sqrt()?.recip()?;
        Ok(flat.matmul(&self.var(name)?.t()?)?.broadcast_mul(&rs)?)
    }

    /// mHC `hc_pre` over `h [N, hc, D]` → (`x [N, D]`, the split `[N, (2+hc)·hc]` =
    /// `pre | post | comb`, which [`hc::hc_expand`] reads after the block).
    fn hc_pre(&self, h: &Tensor, site: &str) -> Result<(Tensor, Tensor)> {
        let cfg = &self.config;
        let hc = h.dim(1)?;
        let mixes = self.hc_mixes(h, &format!("{site}_fn"))?;
        let split = fused::hc_split(
            &mixes,
            self.var(&format!("{site}_scale"))?,
            self.var(&format!("{site}_base"))?,
            hc,
            cfg.hc_sinkhorn_iters,
            cfg.hc_eps,
        )?;
        let x = hc::hc_collapse(h, &split)?;
        Ok((x, split))
    }

    /// `x · Wᵀ` over the last dim of `x` (any rank).
    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        Ok(linear::linear(x, self.var(name)?)?)
    }

    /// Compressed entries `[B, n_e, d]` of one compressor over token rows `x [N, D]`
    /// (`n_e = lay.per_row`, rows zero-padded), or `None` before the first block closes.
    ///
    /// Block `i` of a document starting at `a` pools tokens `a + i·m .. a + (i+1)·m`:
    /// `C = wkv(x)`, `Z = wgate(x) + ape` `[n, m, c·d]`; for CSA (`c = 2`) the candidates are
    /// the previous block's first halves (0 with gate −∞ for a document's first block) and
    /// this block's second halves `[n, 2m, d]`. `entry = norm(Σ softmax(Z) ⊙ C)`, RoPE at
    /// position `i·m` from the document start; then Hadamard + FP4 (indexer) or FP8 (KV).
    #[allow(clippy::too_many_arguments)]
    fn compress(
        &self,
        x: &Tensor,
        b: usize,
        lay: &docs::EntryLayout,
        prefix: &str,
        d: usize,
        freqs: &Arc<Vec<f32>>,
        indexer: bool,
    ) -> Result<Option<Tensor>> {
        let cfg = &self.config;
        if lay.is_empty() {
            return Ok(None);
        }
        let pooling = pool::Pool {
            ratio: lay.ratio,
            width: if lay.ratio == 4 { 2 } else { 1 },
            dim: d,
            first_row: Arc::new(lay.first_row.clone()),
            prev: Arc::new(lay.prev.clone()),
        };
        let c = self.linear(x, &format!("{prefix}wkv.weight"))?;
        let z = self.linear(x, &format!("{prefix}wgate.weight"))?;
        let entry = pool::pool(&c, &z, self.var(&format!("{prefix}ape"))?, pooling)?; // [n, d]
        let entry = self.norm(&entry, Some(&format!("{prefix}norm.weight")))?;
        let entry = fused::rope(&entry, freqs, &Arc::new(lay.pos.clone()), 1, false)?;
        let num = self.options.numerics;
        let entry = if indexer {
            let r = fused::hadamard(&entry)?;
            if num.indexer_fp4 {
                fake_quant(&r, FakeQuant::Fp4)?
            } else {
                r
            }
        } else if num.kv_fp8 {
            fake_quant(&entry, FakeQuant::KvFp8 { width: d, rope: cfg.rope_head_dim })?
        } else {
            entry
        };
        // padded per-row layout [B, n_e, d]
        let entry = if lay.is_dense(b) {
            entry
        } else {
            let src = Tensor::from_vec(lay.slot_sources(b), b * lay.per_row, &self.device)?;
            Tensor::cat(&[entry, Tensor::zeros((1, d), self.dtype, &self.device)?], 0)?.index_select(&src, 0)?
        };
        Ok(Some(entry.reshape((b, lay.per_row, d))?))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        l: usize,
        x: &Tensor,
        b: usize,
        s: usize,
        lengths: &[usize],
        batch: &[SeqInput],
        pk: &Packing,
        table: &RopeCtx,
        rope_yarn: &Arc<Vec<f32>>,
        decisions: &mut [Decisions],
        aux: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let num = self.options.numerics;
        let (h, hd, rd) = (cfg.n_heads, cfg.head_dim, cfg.rope_head_dim);
        let a = format!("layers.{l}.attn.");
        let ratio = cfg.ratio(l);
        let kind = cfg.layer_kind(l);
        // queries [B, S, H, hd]: low-rank, per-head RMS norm, RoPE
        let qr = self.norm(&self.linear(x, &format!("{a}wq_a.weight"))?, Some(&format!("{a}q_norm.weight")))?;
        let q = self.linear(&qr, &format!("{a}wq_b.weight"))?.reshape((b, s, h, hd))?;
        let q = self.norm(&q, None)?;
        let q = fused::rope(&q, &table.freqs, &table.positions, h, false)?;
        // keys = values [B, S, hd]
        let kv = self
            .norm(&self.linear(x, &format!("{a}wkv.weight"))?, Some(&format!("{a}kv_norm.weight")))?
            .reshape((b, s, hd))?;
        let kv = fused::rope(&kv, &table.freqs, &table.positions, 1, false)?;
        let kv = if num.kv_fp8 { fake_quant(&kv, FakeQuant::KvFp8 { width: hd, rope: rd })? } else { kv };
        let scale = (hd as f64).powf(-0.5);
        let entries = if ratio > 0 {
            let lay = pk.entries(ratio)?;
            prof::time("compress", || self.compress(x, b, lay, &format!("{a}compressor."), hd, rope_yarn, false))?
        } else {
            None
        };
        let ne = entries.as_ref().map_or(0, |e| e.dim(1).unwrap_or(0));
        // compressed entries each query attends (row numbering): all visible ones of its
        // document (HCA) or the indexer's top-k among them (CSA)
        let mut selected: Vec<Vec<u32>> = vec![Vec::new(); b * s];
        if let Some(e) = &entries {
            match kind {
                LayerKind::Csa => {
                    // dense main scores over entries (detached): the indexer's training target
                    // the indexer loss's target: dense main scores over the entries (detached)
                    let sc = if self.options.indexer_loss {
                        let sc = q.detach().reshape((b, s * h, hd))?.matmul(&e.detach().transpose(1, 2)?)?;
                        Some((sc * scale)?.reshape((b, s, h, ne))?)
                    } else {
                        None
                    };
                    selected = prof::time("indexer", || {
                        self.indexer(l, x, &qr, b, s, lengths, batch, pk, table, rope_yarn, sc.as_ref(), decisions, aux)
                    })?;
                }
                _ => {
                    let lay = pk.entries(ratio)?;
                    for (r, sel) in selected.iter_mut().enumerate() {
                        *sel = lay.visible_range(r).map(|e| e as u32).collect();
                    }
                }
            }
        }
        let kvc = match &entries {
            Some(e) => Tensor::cat(&[&kv, e], 1)?,
            None => kv,
        };
        let op = attention::SparseAttention {
            batch: b,
            seq: s,
            heads: h,
            head_dim: hd,
            entries: ne,
            window: cfg.window_size,
            scale: scale as f32,
            selected: std::sync::Arc::new(selected),
            key_start: pk.key_start.clone(),
        };
        let sink = self.var(&format!("{a}attn_sink"))?;
        let o = prof::time("sparse_attn", || attention::sparse_attention(&q, &kvc, sink, op))?; // [B, S, H, hd]
        let o = fused::rope(&o, &table.freqs, &table.positions, h, true)?;
        let o = o.reshape((b * s, h * hd))?;
        // grouped low-rank output projection
        let (g, lora) = (cfg.o_groups, cfg.o_lora_rank);
        let gw = h * hd / g;
        let og = o.reshape((b * s, g, gw))?.transpose(0, 1)?.contiguous()?; // [g, N, gw]
        let wa = self.var(&format!("{a}wo_a.weight"))?.reshape((g, lora, gw))?.transpose(1, 2)?; // [g, gw, lora]
        let oa = og.matmul(&wa.contiguous()?)?.transpose(0, 1)?.contiguous()?.reshape((b * s, g * lora))?;
        self.linear(&oa, &format!("{a}wo_b.weight"))
    }

    /// Lightning Indexer of CSA layer `l`: per query row `b·S + t` the selected entries (row
    /// numbering), chosen among the visible entries of the query's own document.
    /// Adds the auxiliary KL loss (towards `main_scores`, given when it is enabled) to `aux`.
    #[allow(clippy::too_many_arguments)]
    fn indexer(
        &self,
        l: usize,
        x: &Tensor,
        qr: &Tensor,
        b: usize,
        s: usize,
        lengths: &[usize],
        batch: &[SeqInput],
        pk: &Packing,
        table: &RopeCtx,
        rope_yarn: &Arc<Vec<f32>>,
        main_scores: Option<&Tensor>,
        decisions: &mut [Decisions],
        aux: &mut Vec<Tensor>,
    ) -> Result<Vec<Vec<u32>>> {
        let cfg = &self.config;
        let a = format!("layers.{l}.attn.indexer.");
        let (ih, ihd) = (cfg.index_n_heads, cfg.index_head_dim);
        // Detached inputs: the indexer learns only from its own loss.
        let xd = x.detach();
        let qrd = qr.detach();
        let lay = pk.entries(4)?;
        let keys = match self.compress(&xd, b, lay, &format!("{a}compressor."), ihd, rope_yarn, true)? {
            Some(k) => k,
            None => return Ok(vec![Vec::new(); b * s]),
        };
        let ne = keys.dim(1)?;
        let qi = self.linear(&qrd, &format!("{a}wq_b.weight"))?.reshape((b, s, ih, ihd))?;
        let qi = fused::rope(&qi, &table.freqs, &table.positions, ih, false)?;
        let qi = fused::hadamard(&qi)?.reshape((b * s * ih, ihd))?;
        let qi = if self.options.numerics.indexer_fp4 { fake_quant(&qi, FakeQuant::Fp4)? } else { qi };
        let qi = qi.reshape((b, s * ih, ihd))?;
        let wscale = (ihd as f64).powf(-0.5) * (ih as f64).powf(-0.5);
        let w = (self.linear(&xd, &format!("{a}weights_proj.weight"))? * wscale)?.reshape((b, s, ih, 1))?;
        let scores = qi.matmul(&keys.transpose(1, 2)?)?.reshape((b, s, ih, ne))?.relu()?.broadcast_mul(&w)?.sum(2)?; // [B, S, ne]
        let vals: Vec<f32> = scores.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut selected = vec![Vec::new(); b * s];
        for bi in 0..b {
            for t in 0..s {
                let r = bi * s + t;
                // entries `off .. off + visible` of the row: the document's first `visible`
                let range = lay.visible_range(r);
                let (off, visible) = (range.start, range.len());
                if visible == 0 {
                    continue;
                }
                let forced = batch[bi].forced.as_ref().and_then(|f| f.topk.get(&(l, t)));
                // document numbering
                let sel: Vec<usize> = match forced {
                    Some(f) => f.iter().copied().filter(|&e| e < visible).collect(),
                    None => {
                        let row = &vals[r * ne + off..r * ne + off + visible];
                        let mut order: Vec<(f32, usize)> = row.iter().copied().zip(0..).collect();
                        order.sort_by(|p, q| q.0.total_cmp(&p.0).then(p.1.cmp(&q.1)));
                        order.truncate(cfg.index_topk.min(visible));
                        order.into_iter().map(|(_, e)| e).collect()
                    }
                };
                selected[r] = sel.iter().map(|&e| (off + e) as u32).collect();
                if t < lengths[bi] {
                    decisions[bi].topk.insert((l, t), sel);
                }
            }
        }
        if let Some(main_scores) = main_scores {
            // Target: main attention (detached) over visible entries, summed over heads, L1-normalised.
            let mut vis = vec![NEG as f32; b * s * ne];
            let mut rows = vec![0f32; b * s];
            for bi in 0..b {
                for t in 0..lengths[bi].min(s) {
                    let r = bi * s + t;
                    let range = lay.visible_range(r);
                    if !range.is_empty() {
                        rows[r] = 1.0;
                    }
                    for e in range {
                        vis[r * ne + e] = 0.0;
                    }
                }
            }
            let n_rows: f32 = rows.iter().sum();
            if n_rows > 0.0 {
                let vis = Tensor::from_vec(vis, (b, s, ne), &self.device)?.to_dtype(self.dtype)?;
                let rows = Tensor::from_vec(rows, (b, s, 1), &self.device)?.to_dtype(self.dtype)?;
                let h = cfg.n_heads;
                let target = softmax_last(&main_scores.detach().broadcast_add(&vis.unsqueeze(2)?)?)?.sum(2)?; // [B, S, ne]
                let target = (target / h as f64)?.broadcast_mul(&rows)?;
                let logp = ops::log_softmax_last(&scores.broadcast_add(&vis)?)?;
                // KL(target ‖ p_indexer); target·log(target) is a constant.
                let tl = target.clamp(1e-30, 1.0)?.log()?;
                let kl = (target.clone() * (tl - logp)?)?.broadcast_mul(&rows)?.sum_all()?;
                aux.push((kl / n_rows as f64)?);
            }
        }
        Ok(selected)
    }

    #[allow(clippy::too_many_arguments)]
    fn moe(
        &self,
        l: usize,
        x: &Tensor,
        ids: &[u32],
        b: usize,
        s: usize,
        lengths: &[usize],
        batch: &[SeqInput],
        decisions: &mut [Decisions],
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let f = format!("layers.{l}.ffn.");
        let (n, k, ne) = (b * s, cfg.n_activated_experts, cfg.n_routed_experts);
        let logits = self.linear(x, &format!("{f}gate.weight"))?; // [N, E]
        let lv: Vec<f32> = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let bias = if cfg.is_hash_layer(l) {
            None
        } else {
            Some(self.var(&format!("{f}gate.bias"))?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
        };
        let mut sel = vec![0u32; n * k];
        for i in 0..n {
            let (bi, t) = (i / s, i % s);
            let forced = batch[bi].forced.as_ref().and_then(|fd| fd.routes.get(&t)).filter(|r| r.len() >= (l + 1) * k);
            let chosen: Vec<u32> = if let Some(r) = forced {
                r[l * k..(l + 1) * k].to_vec()
            } else if cfg.is_hash_layer(l) {
                let table = self
                    .tid2eid
                    .get(&l)
                    .ok_or_else(|| ModelError::Checkpoint(format!("missing tid2eid of layer {l}")))?;
                table[ids[i] as usize * k..(ids[i] as usize + 1) * k].to_vec()
            } else {
                let bias = bias.as_deref().unwrap_or(&[]);
                let mut order: Vec<(f32, u32)> = (0..ne)
                    .map(|e| {
                        let sp = {
                            let z = lv[i * ne + e];
                            if z > 20.0 {
                                z
                            } else {
                                z.exp().ln_1p()
                            }
                        };
                        (sp.sqrt() + bias.get(e).copied().unwrap_or(0.0), e as u32)
                    })
                    .collect();
                order.sort_by(|p, q| q.0.total_cmp(&p.0).then(p.1.cmp(&q.1)));
                order[..k].iter().map(|(_, e)| *e).collect()
            };
            if t < lengths[bi] {
                let rec = decisions[bi].routes.entry(t).or_insert_with(|| vec![0; cfg.n_layers * k]);
                rec[l * k..(l + 1) * k].copy_from_slice(&chosen);
            }
            sel[i * k..(i + 1) * k].copy_from_slice(&chosen);
        }
        let sel_t = Tensor::from_slice(&sel, (n, k), &self.device)?;
        let gathered = logits.gather(&sel_t, 1)?;
        let sc = (ops::softplus(&gathered)? + 1e-30)?.sqrt()?;
        let wts = (sc.broadcast_div(&sc.sum_keepdim(1)?)? * cfg.route_scale as f64)?.flatten_all()?; // [N·k]
        let limit = cfg.swiglu_limit;
        let names: Vec<String> = (0..ne).map(|e| format!("{f}experts.{e}.")).collect();
        let w = prof::time("expert_weights", || self.expert_weights(&names, self.options.qat_experts))?;
        let mut y = prof::time("experts", || moe::experts(x, &wts, moe::Experts::new(k, limit, Arc::new(sel), w)))?;
        if cfg.n_shared_experts > 0 {
            let w = self.expert_weights(&[format!("{f}shared_experts.")], false)?;
            let ones = Tensor::ones(n, self.dtype, &self.device)?;
            y = (y + moe::experts(x, &ones, moe::Experts::new(1, limit, Arc::new(vec![0; n]), w))?)?;
        }
        Ok(y)
    }

    /// Weights of the SwiGLU experts under the prefixes `names` for [`moe::experts`], read in
    /// place, their gradients going to the model's sink. With `qat` the op reads FP4
    /// fake-quantised copies, kept until [`invalidate_cache`](Self::invalidate_cache): weights
    /// change only at optimizer steps, so the micro-batches of one step share one quantisation;
    /// the gradients go to the raw weights (straight-through).
    fn expert_weights(&self, names: &[String], qat: bool) -> Result<moe::ExpertWeights> {
        let mut targets = Vec::with_capacity(names.len());
        let mut values = Vec::with_capacity(names.len());
        for p in names {
            let m = |n: &str| self.var(&format!("{p}{n}.weight")).cloned();
            let t = [m("w1")?, m("w3")?, m("w2")?];
            let mut v = t.clone();
            if qat {
                for (vi, name) in v.iter_mut().zip(["w1", "w3", "w2"]) {
                    *vi = self.fake_quant_cached(&format!("{p}{name}.weight"), vi)?;
                }
            }
            values.push(v);
            targets.push(t);
        }
        Ok(moe::ExpertWeights { values, targets, sink: self.sink.clone() })
    }

    /// FP4 fake quantisation of the weight `name` (detached), cached until the next
    /// [`invalidate_cache`](Self::invalidate_cache).
    fn fake_quant_cached(&self, name: &str, w: &Tensor) -> Result<Tensor> {
        let key = format!("fp4:{name}");
        if let Some(c) = self.fq_cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(c);
        }
        let q = fake_quant(&w.detach(), FakeQuant::Fp4)?;
        if let Ok(mut c) = self.fq_cache.lock() {
            c.insert(key, q.clone());
        }
        Ok(q)
    }
}
