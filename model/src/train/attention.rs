//! Fused sparse attention for training: sliding window ∪ selected compressed entries, with
//! the attention sink, forward and backward written out (a candle `CustomOp3`).
//!
//! For query `(b, t)` and head `h` the keys are the raw KV vectors at positions
//! `max(a, t−W+1) ..= t` (`a` = the start of `t`'s packed document, 0 when unpacked) and
//! the compressed entries selected for `(b, t)`; K = V. With scores
//! `s_j = q·k_j · scale`, `p_j = e^{s_j − m} / (Σ_i e^{s_i − m} + e^{sink_h − m})` and
//! `o = Σ_j p_j k_j`. Cost is `O(S · (W + k))` per head instead of the dense `O(S²)`.
//!
//! Backward (`dP_j = dO·k_j`, `D = Σ_j p_j dP_j`, `dS_j = p_j (dP_j − D)`):
//! `dq = scale Σ_j dS_j k_j`, `dk_j += scale dS_j q + p_j dO`, `dsink_h = −p_sink D`.
//!
//! The forward runs key by key with the decode engine's dot kernel, so sampler and trainer
//! score alike. The backward runs tile by tile: [`TILE`] consecutive queries of one batch row
//! (all heads; K = V is shared by the heads) take the union of their keys `K_t [nk, hd]` (at
//! most `TILE + W − 1` raw keys plus their entries), so the recomputed scores and every
//! gradient are GEMMs over `[TILE·H, nk]`, with the keys a query does not see masked to
//! probability 0 — a few more multiply-adds than key by key, at GEMM speed. Checked against
//! the key-by-key reference (`naive_backward`, tests below) and finite differences
//! (`tests/grad_check.rs`).

use super::fused::with_values;
use super::ops::contiguous_slice;
use crate::kernels::{gemm, GemmScalar, Mat};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Shape and sparsity description of one attention call.
#[derive(Debug, Clone)]
pub struct SparseAttention {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Compressed entries per batch row (stored after the `seq` raw vectors in `kvc`).
    pub entries: usize,
    pub window: usize,
    pub scale: f32,
    /// Selected entries per `(b, t)` (length `batch · seq`).
    pub selected: Arc<Vec<Vec<u32>>>,
    /// First raw key each `(b, t)` may see — the start of its packed document (length
    /// `batch · seq`); `None`: one document per row (all 0).
    pub key_start: Option<Arc<Vec<u32>>>,
}

/// Query rows per tile: the tile's keys are the union of its queries' windows and entries
/// (`TILE + W − 1` raw keys at most), scored with one GEMM.
const TILE: usize = 32;

/// One tile of queries `t0..t1` of batch row `b`: the union of their keys and, per query
/// `[t1−t0, cols]`, which of those it sees.
struct Tile {
    b: usize,
    t0: usize,
    t1: usize,
    cols: Vec<usize>,
    allowed: Vec<bool>,
}

/// Minimal float abstraction so one implementation serves f32 (training) and f64 (checks).
pub trait Real:
    Copy
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + PartialOrd
{
    fn zero() -> Self;
    fn from_f32(v: f32) -> Self;
    fn exp(self) -> Self;
    /// `Σ a_i b_i` (f32: the engine's SIMD kernel, so both sides sum alike).
    fn dot(a: &[Self], b: &[Self]) -> Self;
}
impl Real for f32 {
    fn dot(a: &[Self], b: &[Self]) -> Self {
        crate::kernels::dot(a, b)
    }
    fn zero() -> Self {
        0.0
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
}
impl Real for f64 {
    fn dot(a: &[Self], b: &[Self]) -> Self {
        a.iter().zip(b).fold(0.0, |s, (x, y)| s + x * y)
    }
    fn zero() -> Self {
        0.0
    }
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    T::dot(a, b)
}

impl SparseAttention {
    /// Key rows (indices into the batch row's `kvc`) of query `t`.
    fn keys(&self, b: usize, t: usize, out: &mut Vec<usize>) {
        out.clear();
        let doc = self.key_start.as_ref().map_or(0, |k| k[b * self.seq + t] as usize);
        let start = (t + 1).saturating_sub(self.window).max(doc);
        out.extend(start..=t);
        out.extend(self.selected[b * self.seq + t].iter().map(|&e| self.seq + e as usize));
    }

    /// Softmax weights of one (b, t, h): `p` over `keys`, and the sink's weight.
    fn probs<T: Real>(&self, q: &[T], kv: &[T], keys: &[usize], sink: T, p: &mut Vec<T>) -> T {
        let hd = self.head_dim;
        let scale = T::from_f32(self.scale);
        p.clear();
        let mut m = sink;
        for &k in keys {
            let s = dot(q, &kv[k * hd..(k + 1) * hd]) * scale;
            if s > m {
                m = s;
            }
            p.push(s);
        }
        let mut z = (sink - m).exp();
        for v in p.iter_mut() {
            *v = (*v - m).exp();
            z = z + *v;
        }
        for v in p.iter_mut() {
            *v = *v / z;
        }
        (sink - m).exp() / z
    }

    /// The keys of queries `t0..t1` of batch row `b` as one tile: their union `cols`
    /// (rows of the batch row's `kvc`, ascending) and which of them each query sees.
    /// Raw keys of the tile lie in `lo..t1` (`t1 − lo ≤ TILE + W − 1`), entries in
    /// `seq..seq + entries`, so the cost does not grow with the sequence.
    fn tile(&self, b: usize, t0: usize, t1: usize) -> Tile {
        let s = self.seq;
        let mut keys = Vec::new();
        let mut per_query = Vec::with_capacity(t1 - t0);
        for t in t0..t1 {
            self.keys(b, t, &mut keys);
            per_query.push(keys.clone());
        }
        let lo = per_query.iter().flatten().copied().filter(|&k| k < s).min().unwrap_or(t0);
        // column of raw key k: k − lo when used; of entry e: entry_col[e]
        let mut raw_used = vec![false; t1 - lo];
        let mut entry_col = vec![usize::MAX; self.entries];
        for &k in per_query.iter().flatten() {
            if k < s {
                raw_used[k - lo] = true;
            } else {
                entry_col[k - s] = 0;
            }
        }
        let mut cols: Vec<usize> = (lo..t1).filter(|&k| raw_used[k - lo]).collect();
        let mut raw_col = vec![usize::MAX; t1 - lo];
        for (c, &k) in cols.iter().enumerate() {
            raw_col[k - lo] = c;
        }
        for (e, col) in entry_col.iter_mut().enumerate() {
            if *col == 0 {
                *col = cols.len();
                cols.push(s + e);
            }
        }
        let nk = cols.len();
        let mut allowed = vec![false; (t1 - t0) * nk];
        for (i, keys) in per_query.iter().enumerate() {
            for &k in keys {
                let c = if k < s { raw_col[k - lo] } else { entry_col[k - s] };
                allowed[i * nk + c] = true;
            }
        }
        Tile { b, t0, t1, cols, allowed }
    }

    /// Softmax weights of a tile's query rows `[(t1−t0)·H, nk]` (0 outside each query's keys),
    /// the gathered keys `K_t [nk, hd]` and each row's sink weight:
    /// `S = Q_t · K_tᵀ · scale` as one GEMM, then the masked softmax with the sink.
    fn tile_probs<T: Real + GemmScalar>(&self, q: &[T], kv: &[T], sink: &[T], tile: &Tile) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (s, h, hd) = (self.seq, self.heads, self.head_dim);
        let nk = tile.cols.len();
        let m = (tile.t1 - tile.t0) * h;
        let mut kt = Vec::with_capacity(nk * hd);
        for &k in &tile.cols {
            kt.extend_from_slice(&kv[k * hd..(k + 1) * hd]);
        }
        let qt = &q[(tile.b * s + tile.t0) * h * hd..(tile.b * s + tile.t1) * h * hd];
        let mut p = vec![T::zero(); m * nk];
        gemm(Mat::new(qt, m, hd), Mat::new(&kt, nk, hd).t(), &mut p, false, false);
        let scale = T::from_f32(self.scale);
        let mut psink = vec![T::zero(); m];
        for (r, row) in p.chunks_mut(nk.max(1)).take(m).enumerate() {
            let allowed = &tile.allowed[(r / h) * nk..(r / h + 1) * nk];
            let sk = sink[r % h];
            let mut mx = sk;
            for (v, &a) in row.iter_mut().zip(allowed) {
                *v = *v * scale;
                if a && *v > mx {
                    mx = *v;
                }
            }
            let mut z = (sk - mx).exp();
            for (v, &a) in row.iter_mut().zip(allowed) {
                *v = if a { (*v - mx).exp() } else { T::zero() };
                z = z + *v;
            }
            row.iter_mut().for_each(|v| *v = *v / z);
            psink[r] = (sk - mx).exp() / z;
        }
        (p, kt, psink)
    }

    /// Query tiles of batch row `b`: `(t0, t1)` of at most [`TILE`] queries.
    fn tiles_of(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.seq).step_by(TILE).map(|t0| (t0, (t0 + TILE).min(self.seq)))
    }

    /// Keys and values `[S + NE, hd]` of batch row `b`.
    fn batch_keys<'a, T>(&self, kvc: &'a [T], b: usize) -> &'a [T] {
        let w = (self.seq + self.entries) * self.head_dim;
        &kvc[b * w..(b + 1) * w]
    }

    /// Zeroed gradients `(dq [S, H, hd], dkv [S + NE, hd], dsink [H])` of one batch row.
    fn zero_grads<T: Real>(&self) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (s, h, hd, ne) = (self.seq, self.heads, self.head_dim, self.entries);
        (vec![T::zero(); s * h * hd], vec![T::zero(); (s + ne) * hd], vec![T::zero(); h])
    }

    /// Per-batch-row gradients `(dq, dkvc, dsink)` joined: rows one after the other, the
    /// sink's summed.
    fn join_batches<T: Real>(&self, per_b: Vec<(Vec<T>, Vec<T>, Vec<T>)>) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (s, h, hd, ne) = (self.seq, self.heads, self.head_dim, self.entries);
        let mut dq = Vec::with_capacity(self.batch * s * h * hd);
        let mut dkv = Vec::with_capacity(self.batch * (s + ne) * hd);
        let mut ds = vec![T::zero(); h];
        for (a, b, c) in per_b {
            dq.extend(a);
            dkv.extend(b);
            for (x, y) in ds.iter_mut().zip(c) {
                *x = *x + y;
            }
        }
        (dq, dkv, ds)
    }

    /// Gradients `(dq, dkvc, dsink)`; parallel over batch rows (each owns its `kvc` slice),
    /// tile by tile: `dP = dO · K_tᵀ`, `dS = P ⊙ (dP − D) · scale`, `dQ_t = dS · K_t`,
    /// `dK_t = dSᵀ · Q_t + Pᵀ · dO`, scattered back to the tile's key rows.
    fn backward<T: Real + GemmScalar>(&self, q: &[T], kvc: &[T], sink: &[T], grad: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (s, h, hd) = (self.seq, self.heads, self.head_dim);
        let scale = T::from_f32(self.scale);
        let per_b: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..self.batch)
            .into_par_iter()
            .map(|b| {
                let (kv, (mut dq, mut dkv, mut dsink)) = (self.batch_keys(kvc, b), self.zero_grads::<T>());
                for (t0, t1) in self.tiles_of() {
                    let tile = self.tile(b, t0, t1);
                    let (p, kt, psink) = self.tile_probs(q, kv, sink, &tile);
                    let (m, nk) = ((t1 - t0) * h, tile.cols.len());
                    let rows = (b * s + t0) * h * hd..(b * s + t1) * h * hd;
                    let (qt, go) = (&q[rows.clone()], &grad[rows]);
                    let mut ds = vec![T::zero(); m * nk];
                    gemm(Mat::new(go, m, hd), Mat::new(&kt, nk, hd).t(), &mut ds, false, false);
                    for (r, (dsr, pr)) in ds.chunks_mut(nk.max(1)).zip(p.chunks(nk.max(1))).take(m).enumerate() {
                        let big_d = dsr.iter().zip(pr).fold(T::zero(), |acc, (&d, &pj)| acc + pj * d);
                        dsink[r % h] = dsink[r % h] - psink[r] * big_d;
                        for (d, &pj) in dsr.iter_mut().zip(pr) {
                            *d = pj * (*d - big_d) * scale;
                        }
                    }
                    gemm(Mat::new(&ds, m, nk), Mat::new(&kt, nk, hd), &mut dq[t0 * h * hd..t1 * h * hd], false, false);
                    let mut dkt = vec![T::zero(); nk * hd];
                    gemm(Mat::new(&ds, m, nk).t(), Mat::new(qt, m, hd), &mut dkt, false, false);
                    gemm(Mat::new(&p, m, nk).t(), Mat::new(go, m, hd), &mut dkt, true, false);
                    for (c, &k) in tile.cols.iter().enumerate() {
                        for (x, &v) in dkv[k * hd..(k + 1) * hd].iter_mut().zip(&dkt[c * hd..(c + 1) * hd]) {
                            *x = *x + v;
                        }
                    }
                }
                (dq, dkv, dsink)
            })
            .collect();
        self.join_batches(per_b)
    }

    /// Output `[B, S, H, hd]` key by key, with the engine's dot kernel for the scores so that
    /// the sampler and the trainer score alike (the rollout parity tests hold them to 1e-5
    /// in log-probability; FP8/FP4 fake-quant roundings downstream amplify any other
    /// summation order). Parallel over query rows.
    fn forward<T: Real>(&self, q: &[T], kvc: &[T], sink: &[T]) -> Vec<T> {
        let (s, h, hd, ne) = (self.seq, self.heads, self.head_dim, self.entries);
        let mut out = vec![T::zero(); self.batch * s * h * hd];
        out.par_chunks_mut(h * hd).enumerate().for_each(|(row, o)| {
            let (b, t) = (row / s, row % s);
            let kv = &kvc[b * (s + ne) * hd..(b + 1) * (s + ne) * hd];
            let mut keys = Vec::new();
            let mut p = Vec::new();
            self.keys(b, t, &mut keys);
            for head in 0..h {
                let qh = &q[(row * h + head) * hd..(row * h + head + 1) * hd];
                self.probs(qh, kv, &keys, sink[head], &mut p);
                let oh = &mut o[head * hd..(head + 1) * hd];
                for (&k, &pj) in keys.iter().zip(&p) {
                    for (x, v) in oh.iter_mut().zip(&kv[k * hd..(k + 1) * hd]) {
                        *x = *x + pj * *v;
                    }
                }
            }
        });
        out
    }

    /// Gradients `(dq, dkvc, dsink)` key by key (the naive reference of [`Self::backward`]).
    #[cfg(test)]
    fn naive_backward<T: Real>(&self, q: &[T], kvc: &[T], sink: &[T], grad: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (s, h, hd) = (self.seq, self.heads, self.head_dim);
        let scale = T::from_f32(self.scale);
        let per_b: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..self.batch)
            .into_par_iter()
            .map(|b| {
                let (kv, (mut dq, mut dkv, mut dsink)) = (self.batch_keys(kvc, b), self.zero_grads::<T>());
                let mut keys = Vec::new();
                let mut p = Vec::new();
                let mut dp = Vec::new();
                for t in 0..s {
                    self.keys(b, t, &mut keys);
                    let row = b * s + t;
                    for head in 0..h {
                        let qh = &q[(row * h + head) * hd..(row * h + head + 1) * hd];
                        let go = &grad[(row * h + head) * hd..(row * h + head + 1) * hd];
                        let psink = self.probs(qh, kv, &keys, sink[head], &mut p);
                        dp.clear();
                        let mut big_d = T::zero();
                        for (&k, &pj) in keys.iter().zip(&p) {
                            let d = dot(go, &kv[k * hd..(k + 1) * hd]);
                            dp.push(d);
                            big_d = big_d + pj * d;
                        }
                        dsink[head] = dsink[head] - psink * big_d;
                        let dqh = &mut dq[(t * h + head) * hd..(t * h + head + 1) * hd];
                        for ((&k, &pj), &d) in keys.iter().zip(&p).zip(&dp) {
                            let ds = pj * (d - big_d) * scale;
                            let kk = &kv[k * hd..(k + 1) * hd];
                            for (x, v) in dqh.iter_mut().zip(kk) {
                                *x = *x + ds * *v;
                            }
                            let dk = &mut dkv[k * hd..(k + 1) * hd];
                            for ((x, &qv), &gv) in dk.iter_mut().zip(qh).zip(go) {
                                *x = *x + ds * qv + pj * gv;
                            }
                        }
                    }
                }
                (dq, dkv, dsink)
            })
            .collect();
        self.join_batches(per_b)
    }

    fn check(&self, lq: &Layout, lk: &Layout, ls: &Layout) -> candle_core::Result<()> {
        let (b, s, h, hd, ne) = (self.batch, self.seq, self.heads, self.head_dim, self.entries);
        if lq.shape().dims() != [b, s, h, hd] || lk.shape().dims() != [b, s + ne, hd] || ls.shape().dims() != [h] {
            bail!(
                "sparse-attention: shapes q {:?} kvc {:?} sink {:?} do not match b={b} s={s} h={h} hd={hd} ne={ne}",
                lq.shape(),
                lk.shape(),
                ls.shape()
            );
        }
        if self.selected.len() != b * s {
            bail!("sparse-attention: selection for {} rows, expected {}", self.selected.len(), b * s);
        }
        if let Some(k) = &self.key_start {
            if k.len() != b * s || k.iter().enumerate().any(|(r, &a)| a as usize > r % s) {
                bail!("sparse-attention: key starts must be {} rows, each at most its position", b * s);
            }
        }
        Ok(())
    }
}

impl CustomOp3 for SparseAttention {
    fn name(&self) -> &'static str {
        "v4-sparse-attention"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.check(l1, l2, l3)?;
        let shape = Shape::from((self.batch, self.seq, self.heads, self.head_dim));
        match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(s)) => Ok((
                CpuStorage::F32(self.forward(
                    contiguous_slice(q, l1, "sparse-attention")?,
                    contiguous_slice(k, l2, "sparse-attention")?,
                    contiguous_slice(s, l3, "sparse-attention")?,
                )),
                shape,
            )),
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(s)) => Ok((
                CpuStorage::F64(self.forward(
                    contiguous_slice(q, l1, "sparse-attention")?,
                    contiguous_slice(k, l2, "sparse-attention")?,
                    contiguous_slice(s, l3, "sparse-attention")?,
                )),
                shape,
            )),
            _ => bail!("sparse-attention: f32 or f64 inputs of one dtype"),
        }
    }
    fn bwd(
        &self,
        q: &Tensor,
        kvc: &Tensor,
        sink: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dev = q.device();
        macro_rules! run {
            ($t:ty) => {{
                let (dq, dk, ds) = with_values::<$t, _>(q, |qv| {
                    with_values(kvc, |kv| {
                        with_values(sink, |sv| with_values(&grad, |gv| Ok(self.backward(qv, kv, sv, gv))))
                    })
                })?;
                (
                    Tensor::from_vec(dq, q.dims(), dev)?,
                    Tensor::from_vec(dk, kvc.dims(), dev)?,
                    Tensor::from_vec(ds, sink.dims(), dev)?,
                )
            }};
        }
        let (dq, dk, ds) = match q.dtype() {
            candle_core::DType::F32 => run!(f32),
            candle_core::DType::F64 => run!(f64),
            d => bail!("sparse-attention: unsupported dtype {d:?}"),
        };
        Ok((Some(dq), Some(dk), Some(ds)))
    }
}

/// Apply the op: `q [B,S,H,hd]`, `kvc [B,S+NE,hd]`, `sink [H]` → `[B,S,H,hd]`.
pub fn sparse_attention(q: &Tensor, kvc: &Tensor, sink: &Tensor, op: SparseAttention) -> candle_core::Result<Tensor> {
    q.contiguous()?.apply_op3(&kvc.contiguous()?, &sink.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * 7919 + seed * 104729) % 1009) as f64 / 1009.0 - 0.5) * 2.0).collect()
    }

    /// Tiled GEMM backward against the key-by-key reference: several batch rows, a sequence
    /// that does not tile evenly, windows shorter and longer than a tile, entries selected in
    /// score (not index) order, packed documents; f64 to 1e-12 and f32 to 1e-5.
    #[test]
    fn tiled_backward_matches_the_key_by_key_reference() {
        for (batch, s, w, ne, packed) in
            [(3, 77, 8, 5, false), (2, 40, 64, 0, false), (2, 70, 16, 9, true), (1, 1, 4, 0, false)]
        {
            let (h, hd) = (3, 8);
            let selected: Vec<Vec<u32>> = (0..batch * s)
                .map(|r| {
                    let visible = ((r % s) / 4).min(ne) as u32;
                    let mut v: Vec<u32> = (0..visible).filter(|e| (e + r as u32) % 3 != 0).collect();
                    v.reverse();
                    v
                })
                .collect();
            let key_start = packed.then(|| {
                Arc::new((0..batch * s).map(|r| if r % s >= s / 2 { (s / 2) as u32 } else { 0 }).collect::<Vec<u32>>())
            });
            let op = SparseAttention {
                batch,
                seq: s,
                heads: h,
                head_dim: hd,
                entries: ne,
                window: w,
                scale: 0.35,
                selected: Arc::new(selected),
                key_start,
            };
            let q = data(batch * s * h * hd, 5);
            let kvc = data(batch * (s + ne) * hd, 6);
            let sink = vec![0.2, -0.4, 1.1];
            let g = data(batch * s * h * hd, 7);
            let close = |a: &[f64], b: &[f64], tol: f64, what: &str| {
                assert_eq!(a.len(), b.len(), "{what}");
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}] (s {s}, w {w}): {x} vs {y}");
                }
            };
            let (a, b) = (op.backward(&q, &kvc, &sink, &g), op.naive_backward(&q, &kvc, &sink, &g));
            close(&a.0, &b.0, 1e-12, "dq");
            close(&a.1, &b.1, 1e-12, "dkvc");
            close(&a.2, &b.2, 1e-12, "dsink");
            let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let back = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
            let (qf, kf, sf, gf) = (f(&q), f(&kvc), f(&sink), f(&g));
            let (a, b) = (op.backward(&qf, &kf, &sf, &gf), op.naive_backward(&qf, &kf, &sf, &gf));
            close(&back(a.0), &back(b.0), 1e-5, "dq f32");
            close(&back(a.1), &back(b.1), 1e-5, "dkvc f32");
            close(&back(a.2), &back(b.2), 1e-5, "dsink f32");
        }
    }

    /// One packed row of two documents (6 + 5 tokens, window 4) against the documents run
    /// alone: forward, `dq`, `dkvc` and `dsink` must agree.
    #[test]
    fn packed_documents_attend_only_themselves() {
        let (h, hd, w) = (2, 4, 4);
        let (l0, l1) = (6, 5);
        let s = l0 + l1;
        // row entries: doc 0 owns 0, 1; doc 1 owns 2 (a padding slot 3 is never selected)
        let ne = 4;
        let sel0: Vec<Vec<u32>> = (0..l0).map(|t| (0..((t + 1) / 3).min(2) as u32).collect()).collect();
        let sel1: Vec<Vec<u32>> = (0..l1).map(|t| (0..((t + 1) / 3).min(1) as u32).collect()).collect();
        let q = data(s * h * hd, 1);
        let kv_raw = data(s * hd, 2);
        let ent = data(3 * hd, 3);
        let sink = vec![0.3, -0.7];
        let g = data(s * h * hd, 4);
        // packed: kvc = raw ‖ entries 0, 1, 2 ‖ zero pad
        let mut kvc = kv_raw.clone();
        kvc.extend(&ent);
        kvc.extend(vec![0.0; hd]);
        let mut selected = sel0.clone();
        selected.extend(sel1.iter().map(|v| v.iter().map(|e| e + 2).collect::<Vec<u32>>()));
        let key_start: Vec<u32> = (0..s).map(|t| if t < l0 { 0 } else { l0 as u32 }).collect();
        let op = |seq: usize, entries: usize, selected: Vec<Vec<u32>>, ks: Option<Vec<u32>>| SparseAttention {
            batch: 1,
            seq,
            heads: h,
            head_dim: hd,
            entries,
            window: w,
            scale: 0.5,
            selected: Arc::new(selected),
            key_start: ks.map(Arc::new),
        };
        let packed = op(s, ne, selected, Some(key_start));
        let out = packed.forward(&q, &kvc, &sink);
        let (dq, dkv, ds) = packed.backward(&q, &kvc, &sink, &g);
        // alone
        let mut kv0 = kv_raw[..l0 * hd].to_vec();
        kv0.extend(&ent[..2 * hd]);
        let mut kv1 = kv_raw[l0 * hd..].to_vec();
        kv1.extend(&ent[2 * hd..]);
        let (a0, a1) = (op(l0, 2, sel0, None), op(l1, 1, sel1, None));
        let (qs0, qs1) = q.split_at(l0 * h * hd);
        let (gs0, gs1) = g.split_at(l0 * h * hd);
        let mut want = a0.forward(qs0, &kv0, &sink);
        want.extend(a1.forward(qs1, &kv1, &sink));
        let (dq0, dk0, ds0) = a0.backward(qs0, &kv0, &sink, gs0);
        let (dq1, dk1, ds1) = a1.backward(qs1, &kv1, &sink, gs1);
        let close = |a: &[f64], b: &[f64], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() < 1e-12, "{what}[{i}]: {x} vs {y}");
            }
        };
        close(&out, &want, "out");
        close(&dq, &[dq0, dq1].concat(), "dq");
        let mut dkv_want = dk0[..l0 * hd].to_vec();
        dkv_want.extend(&dk1[..l1 * hd]);
        dkv_want.extend(&dk0[l0 * hd..]);
        dkv_want.extend(&dk1[l1 * hd..]);
        dkv_want.extend(vec![0.0; hd]);
        close(&dkv, &dkv_want, "dkvc");
        close(&ds, &[ds0[0] + ds1[0], ds0[1] + ds1[1]], "dsink");
        // without document starts the second document would see the first one's keys
        let leaky = op(s, ne, packed.selected.to_vec(), None).forward(&q, &kvc, &sink);
        assert!(leaky.iter().zip(&out).any(|(x, y)| (x - y).abs() > 1e-3));
    }
}
