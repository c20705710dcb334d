//! Per-sequence decode state: what a sequence must remember between tokens.
//!
//! Per layer: a ring buffer of the last `window_size` raw KV vectors; for compressed layers
//! the compressor carry-over (the tokens of the window being filled and, for the overlapped
//! CSA compressor, the previous window's first halves) and the compressed entries produced
//! so far; for CSA layers the same for the Lightning Indexer's keys.

use crate::config::Config;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Gated-pooling carry-over of one compressor (`ratio` tokens per entry, `coff = 2` when
/// overlapped, entry width `d`).
#[derive(Debug, Clone)]
pub struct CompressorState {
    pub ratio: usize,
    pub coff: usize,
    pub d: usize,
    /// `[ratio, coff·d]` projections of the tokens of the current window.
    pub cur_kv: Vec<f32>,
    /// `[ratio, coff·d]` gate logits (+ `ape`) of the current window.
    pub cur_score: Vec<f32>,
    /// Previous complete window (overlap only): kv zeros / score −∞ before the first one.
    pub prev_kv: Vec<f32>,
    pub prev_score: Vec<f32>,
}

impl CompressorState {
    pub fn new(ratio: usize, d: usize) -> Self {
        let coff = if ratio == 4 { 2 } else { 1 };
        let n = ratio * coff * d;
        let (prev_kv, prev_score) =
            if coff == 2 { (vec![0.0; n], vec![f32::NEG_INFINITY; n]) } else { (vec![], vec![]) };
        CompressorState { ratio, coff, d, cur_kv: vec![0.0; n], cur_score: vec![0.0; n], prev_kv, prev_score }
    }

    /// Record token `pos`'s projections; when its window closes return the pooled entry
    /// (before normalisation): per channel, a softmax over the window's tokens (and, when
    /// overlapped, the previous window's first-half candidates) weighting the projections.
    pub fn push(&mut self, pos: usize, kv: &[f32], score: &[f32], ape: &[f32]) -> Option<Vec<f32>> {
        let w = self.coff * self.d;
        let slot = pos % self.ratio;
        self.cur_kv[slot * w..(slot + 1) * w].copy_from_slice(kv);
        for c in 0..w {
            self.cur_score[slot * w + c] = score[c] + ape[slot * w + c];
        }
        if slot + 1 != self.ratio {
            return None;
        }
        let (r, d) = (self.ratio, self.d);
        let mut entry = vec![0f32; d];
        let mut cand_s = Vec::with_capacity(2 * r);
        let mut cand_v = Vec::with_capacity(2 * r);
        let mut cand_p = Vec::with_capacity(2 * r);
        for (c, e) in entry.iter_mut().enumerate() {
            cand_s.clear();
            cand_v.clear();
            if self.coff == 2 {
                for j in 0..r {
                    cand_s.push(self.prev_score[j * w + c]);
                    cand_v.push(self.prev_kv[j * w + c]);
                }
                for j in 0..r {
                    cand_s.push(self.cur_score[j * w + d + c]);
                    cand_v.push(self.cur_kv[j * w + d + c]);
                }
            } else {
                for j in 0..r {
                    cand_s.push(self.cur_score[j * w + c]);
                    cand_v.push(self.cur_kv[j * w + c]);
                }
            }
            let m = cand_s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            cand_p.clear();
            cand_p.extend(cand_s.iter().map(|s| (s - m).exp()));
            let z: f32 = cand_p.iter().sum();
            *e = cand_p.iter().zip(&cand_v).map(|(pi, v)| v * (pi / z)).sum();
        }
        if self.coff == 2 {
            self.prev_kv.copy_from_slice(&self.cur_kv);
            self.prev_score.copy_from_slice(&self.cur_score);
        }
        Some(entry)
    }

    pub fn bytes(&self) -> usize {
        4 * (self.cur_kv.len() + self.cur_score.len() + self.prev_kv.len() + self.prev_score.len())
    }
}

/// Cache of one layer.
#[derive(Debug, Clone)]
pub struct LayerState {
    /// Ring buffer `[window, head_dim]`; slot `pos % window` holds position `pos`.
    pub window: Vec<f32>,
    /// Compressed entries `[n, head_dim]` (main branch).
    pub entries: Vec<f32>,
    pub compressor: Option<CompressorState>,
    /// Indexer keys `[n, index_head_dim]` (CSA layers).
    pub index_keys: Vec<f32>,
    pub index_compressor: Option<CompressorState>,
}

/// Discrete decisions taken (or to be replayed) per position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decisions {
    /// position → expert ids, `n_layers × n_activated_experts` flattened by layer.
    pub routes: BTreeMap<usize, Vec<u32>>,
    /// (layer, position) → compressed entries selected by the indexer.
    pub topk: BTreeMap<(usize, usize), Vec<usize>>,
}

/// Everything one sequence carries between forward calls.
#[derive(Debug, Clone)]
pub struct DecodeState {
    /// Number of tokens consumed so far (= position of the next token).
    pub pos: usize,
    pub layers: Vec<LayerState>,
    /// Decisions taken so far, when recording (Keep Routing, conformance tests).
    pub record: Option<Decisions>,
    /// Decisions to replay instead of computing them.
    pub forced: Option<Arc<Decisions>>,
    /// Token ids seen so far (hash routing needs the current token only; kept for callers).
    pub tokens: Vec<u32>,
}

impl DecodeState {
    pub fn new(cfg: &Config) -> Self {
        let layers = (0..cfg.n_layers)
            .map(|l| {
                let ratio = cfg.ratio(l);
                LayerState {
                    window: vec![0.0; cfg.window_size * cfg.head_dim],
                    entries: Vec::new(),
                    compressor: (ratio > 0).then(|| CompressorState::new(ratio, cfg.head_dim)),
                    index_keys: Vec::new(),
                    index_compressor: (ratio == 4).then(|| CompressorState::new(4, cfg.index_head_dim)),
                }
            })
            .collect();
        DecodeState { pos: 0, layers, record: None, forced: None, tokens: Vec::new() }
    }

    /// Start recording routing and indexer decisions.
    pub fn recording(mut self) -> Self {
        self.record = Some(Decisions::default());
        self
    }

    /// Replay the given decisions.
    pub fn replaying(mut self, d: Arc<Decisions>) -> Self {
        self.forced = Some(d);
        self
    }

    /// Bytes held by this sequence's caches, split as (window, compressed entries, indexer
    /// keys, compressor carry-over).
    pub fn bytes(&self) -> StateBytes {
        let mut b = StateBytes::default();
        for l in &self.layers {
            b.window += 4 * l.window.len();
            b.entries += 4 * l.entries.len();
            b.index_keys += 4 * l.index_keys.len();
            b.carry += l.compressor.as_ref().map_or(0, CompressorState::bytes)
                + l.index_compressor.as_ref().map_or(0, CompressorState::bytes);
        }
        b
    }
}

/// Memory of one decode state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateBytes {
    pub window: usize,
    pub entries: usize,
    pub index_keys: usize,
    pub carry: usize,
}

impl StateBytes {
    pub fn total(&self) -> usize {
        self.window + self.entries + self.index_keys + self.carry
    }
}
