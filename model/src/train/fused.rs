//! Fused ops with hand-written backward passes for the hot, small-tensor parts of the V4
//! graph (each replaces tens to hundreds of elementary candle ops):
//!
//! * [`hc_split`]: mHC mixes → `pre`, `post`, Sinkhorn `comb` (reverse mode through every
//!   iteration, intermediates recomputed per row);
//! * [`rms_norm`]: weighted or unweighted RMSNorm;
//! * [`rope`]: interleaved rotary embedding on the last `rd` dims at per-row positions;
//! * [`hadamard`]: the normalised Walsh–Hadamard rotation (self-adjoint).
//!
//! All are checked against finite differences in `tests/grad_check.rs` (f64) and against the
//! golden logits (f32).

use super::attention::Real;
use super::ops::contiguous_slice;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Run `f` on the values of `t` in row-major order: borrowed straight from candle's CPU
/// storage when `t` is contiguous (no copy — backward passes read large weights this way),
/// else from a contiguous copy.
pub(crate) fn with_values<T: candle_core::WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            return f(&cpu.as_slice::<T>()?[a..b]);
        }
    }
    let v: Vec<T> = t.flatten_all()?.to_vec1()?;
    f(&v)
}

/// Extended float ops the fused kernels need.
pub trait Float: Real + std::ops::Neg<Output = Self> {
    fn sqrt(self) -> Self;
    fn from_usize(v: usize) -> Self;
    fn cos_sin(self) -> (Self, Self);
    fn to_f64(self) -> f64;
}
impl Float for f32 {
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn from_usize(v: usize) -> Self {
        v as f32
    }
    fn cos_sin(self) -> (Self, Self) {
        (self.cos(), self.sin())
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl Float for f64 {
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn from_usize(v: usize) -> Self {
        v as f64
    }
    fn cos_sin(self) -> (Self, Self) {
        (self.cos(), self.sin())
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// `1 / (1 + e^{−x})`, written exactly as the decode engine does so both round alike
/// (e^{−x} overflowing to ∞ gives the correct limit 0).
fn sig<T: Float>(x: T) -> T {
    T::from_f32(1.0) / (T::from_f32(1.0) + (-x).exp())
}

// ----------------------------------------------------------------------------------------------
// mHC split

/// `mixes [N, (2+n)·n]`, `scale [3]`, `base [(2+n)·n]` → `[N, (2+n)·n]` = `pre | post | comb`.
#[derive(Debug, Clone, Copy)]
pub struct HcSplit {
    pub n: usize,
    pub iters: usize,
    pub eps: f32,
}

impl HcSplit {
    /// The split of one row in f32 (the decode engine's): `(pre [n], post [n], comb [n·n])`.
    pub fn split_row(&self, mixes: &[f32], scale: &[f32], base: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let n = self.n;
        let mut pre = vec![0f32; (2 + n) * n];
        self.row(mixes, scale, base, &mut pre, None);
        let comb = pre.split_off(2 * n);
        let post = pre.split_off(n);
        (pre, post, comb)
    }

    /// Values in a Sinkhorn trace: the input of every normalisation, `(2·iters − 1)` of
    /// `n × n`.
    fn trace_len(&self) -> usize {
        (2 * self.iters.max(1) - 1) * self.n * self.n
    }

    /// Forward of one row into `out [(2+n)·n]` (no allocation); with `trace`
    /// (`trace_len()` values), the Sinkhorn iterates (input of every normalisation).
    fn row<T: Float>(&self, m: &[T], scale: &[T], base: &[T], out: &mut [T], mut trace: Option<&mut [T]>) {
        let (n, eps) = (self.n, T::from_f32(self.eps));
        for i in 0..n {
            out[i] = sig(m[i] * scale[0] + base[i]) + eps;
            out[n + i] = T::from_f32(2.0) * sig(m[n + i] * scale[1] + base[n + i]);
        }
        let c = &mut out[2 * n..(2 + n) * n];
        for (k, v) in c.iter_mut().enumerate() {
            *v = m[2 * n + k] * scale[2] + base[2 * n + k];
        }
        for r in 0..n {
            let row = &mut c[r * n..(r + 1) * n];
            let mx = row.iter().fold(row[0], |a, &b| if b > a { b } else { a });
            let mut z = T::zero();
            for v in row.iter_mut() {
                *v = (*v - mx).exp();
                z = z + *v;
            }
            for v in row.iter_mut() {
                *v = *v / z + eps;
            }
        }
        let mut step = 0;
        let mut push = |c: &[T]| {
            if let Some(t) = trace.as_deref_mut() {
                t[step * n * n..(step + 1) * n * n].copy_from_slice(c);
            }
            step += 1;
        };
        // column normalisation, then (iters − 1) × (row, column)
        push(c);
        col_norm(c, n, eps);
        for _ in 1..self.iters {
            push(c);
            row_norm(c, n, eps);
            push(c);
            col_norm(c, n, eps);
        }
    }
}

// Sums first, then + eps: the decode engine's (and the reference's) order.
fn col_norm<T: Float>(c: &mut [T], n: usize, eps: T) {
    for j in 0..n {
        let mut s = T::zero();
        for i in 0..n {
            s = s + c[i * n + j];
        }
        let s = s + eps;
        for i in 0..n {
            c[i * n + j] = c[i * n + j] / s;
        }
    }
}

fn row_norm<T: Float>(c: &mut [T], n: usize, eps: T) {
    for i in 0..n {
        let mut s = T::zero();
        for j in 0..n {
            s = s + c[i * n + j];
        }
        let s = s + eps;
        for j in 0..n {
            c[i * n + j] = c[i * n + j] / s;
        }
    }
}

/// Backward of `y = x / (Σ x + eps)` over groups; `dy` → `dx` in place of `dy`.
fn norm_back<T: Float>(x: &[T], dy: &mut [T], n: usize, eps: T, by_column: bool) {
    for g in 0..n {
        let idx = |k: usize| if by_column { k * n + g } else { g * n + k };
        let mut s = T::zero();
        let mut xd = T::zero();
        for k in 0..n {
            s = s + x[idx(k)];
            xd = xd + x[idx(k)] * dy[idx(k)];
        }
        let s = s + eps;
        let s2 = s * s;
        for k in 0..n {
            let i = idx(k);
            dy[i] = dy[i] / s - xd / s2;
        }
    }
}

impl CustomOp3 for HcSplit {
    fn name(&self) -> &'static str {
        "v4-hc-split"
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
        let w = (2 + self.n) * self.n;
        let rows = l1.shape().elem_count() / w;
        macro_rules! go {
            ($m:expr, $s:expr, $b:expr) => {{
                let (m, s, b) = (
                    contiguous_slice($m, l1, self.name())?,
                    contiguous_slice($s, l2, self.name())?,
                    contiguous_slice($b, l3, self.name())?,
                );
                let mut out = vec![Real::zero(); rows * w];
                out.par_chunks_mut(w).enumerate().for_each(|(r, o)| self.row(&m[r * w..(r + 1) * w], s, b, o, None));
                out
            }};
        }
        let st = match (s1, s2, s3) {
            (CpuStorage::F32(m), CpuStorage::F32(s), CpuStorage::F32(b)) => CpuStorage::F32(go!(m, s, b)),
            (CpuStorage::F64(m), CpuStorage::F64(s), CpuStorage::F64(b)) => CpuStorage::F64(go!(m, s, b)),
            _ => bail!("v4-hc-split: f32/f64 inputs of one dtype"),
        };
        Ok((st, l1.shape().clone()))
    }
    fn bwd(
        &self,
        mixes: &Tensor,
        scale: &Tensor,
        base: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        macro_rules! run {
            ($t:ty) => {{
                let m: Vec<$t> = mixes.flatten_all()?.to_vec1()?;
                let s: Vec<$t> = scale.flatten_all()?.to_vec1()?;
                let b: Vec<$t> = base.flatten_all()?.to_vec1()?;
                let g: Vec<$t> = grad.flatten_all()?.to_vec1()?;
                let (dm, ds, db) = self.backward(&m, &s, &b, &g);
                (
                    Tensor::from_vec(dm, mixes.dims(), mixes.device())?,
                    Tensor::from_vec(ds, scale.dims(), mixes.device())?,
                    Tensor::from_vec(db, base.dims(), mixes.device())?,
                )
            }};
        }
        let (a, b, c) = match mixes.dtype() {
            candle_core::DType::F32 => run!(f32),
            candle_core::DType::F64 => run!(f64),
            d => bail!("v4-hc-split: dtype {d:?}"),
        };
        Ok((Some(a), Some(b), Some(c)))
    }
}

impl HcSplit {
    fn backward<T: Float>(&self, m: &[T], s: &[T], b: &[T], g: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (n, eps) = (self.n, T::from_f32(self.eps));
        let w = (2 + n) * n;
        let rows = m.len() / w;
        // per row: dmixes into `dm`, and its `dscale` / `dbase` terms, summed in row order below
        let mut dm = vec![T::zero(); rows * w];
        let mut ds_rows = vec![T::zero(); rows * 3];
        let mut db_rows = vec![T::zero(); rows * w];
        let scratch = || (vec![T::zero(); w], vec![T::zero(); self.trace_len()], vec![T::zero(); n * n]);
        dm.par_chunks_mut(w).zip(ds_rows.par_chunks_mut(3)).zip(db_rows.par_chunks_mut(w)).enumerate().for_each_init(
            scratch,
            |(out, trace, c0), (r, ((dm, ds), db))| {
                let mr = &m[r * w..(r + 1) * w];
                let gr = &g[r * w..(r + 1) * w];
                self.row(mr, s, b, out, Some(trace));
                for i in 0..n {
                    // pre = σ(z) + eps, post = 2σ(z)
                    let z0 = mr[i] * s[0] + b[i];
                    let d0 = gr[i] * sig(z0) * (T::from_f32(1.0) - sig(z0));
                    dm[i] = d0 * s[0];
                    ds[0] = ds[0] + d0 * mr[i];
                    db[i] = d0;
                    let z1 = mr[n + i] * s[1] + b[n + i];
                    let d1 = gr[n + i] * T::from_f32(2.0) * sig(z1) * (T::from_f32(1.0) - sig(z1));
                    dm[n + i] = d1 * s[1];
                    ds[1] = ds[1] + d1 * mr[n + i];
                    db[n + i] = d1;
                }
                // Sinkhorn in reverse: trace = [C0, R1in, C1in, R2in, ...]; the last
                // normalisation applied was a column one. `d` lives in dm's comb part.
                let d = &mut dm[2 * n..];
                d.copy_from_slice(&gr[2 * n..]);
                for k in (0..trace.len() / (n * n)).rev() {
                    let by_column = k == 0 || k % 2 == 0;
                    norm_back(&trace[k * n * n..(k + 1) * n * n], d, n, eps, by_column);
                }
                // softmax rows (+eps is a constant): dL = y (dy − Σ y dy)
                for (k, v) in c0.iter_mut().enumerate() {
                    *v = mr[2 * n + k] * s[2] + b[2 * n + k];
                }
                for row in c0.chunks_mut(n) {
                    let mx = row.iter().fold(row[0], |a, &x| if x > a { x } else { a });
                    let mut zz = T::zero();
                    for v in row.iter_mut() {
                        *v = (*v - mx).exp();
                        zz = zz + *v;
                    }
                    for v in row.iter_mut() {
                        *v = *v / zz;
                    }
                }
                for rr in 0..n {
                    let mut dot = T::zero();
                    for j in 0..n {
                        dot = dot + c0[rr * n + j] * d[rr * n + j];
                    }
                    for j in 0..n {
                        let k = rr * n + j;
                        let dl = c0[k] * (d[k] - dot);
                        d[k] = dl * s[2];
                        ds[2] = ds[2] + dl * mr[2 * n + k];
                        db[2 * n + k] = dl;
                    }
                }
            },
        );
        let mut ds = vec![T::zero(); 3];
        let mut db = vec![T::zero(); w];
        for (sr, br) in ds_rows.chunks(3).zip(db_rows.chunks(w)) {
            for (x, &y) in ds.iter_mut().zip(sr) {
                *x = *x + y;
            }
            for (x, &y) in db.iter_mut().zip(br) {
                *x = *x + y;
            }
        }
        (dm, ds, db)
    }
}

/// mHC split of `mixes [N, mix]` with `scale [3]`, `base [mix]`.
pub fn hc_split(
    mixes: &Tensor,
    scale: &Tensor,
    base: &Tensor,
    n: usize,
    iters: usize,
    eps: f32,
) -> candle_core::Result<Tensor> {
    mixes.contiguous()?.apply_op3(&scale.contiguous()?, &base.contiguous()?, HcSplit { n, iters, eps })
}

// ----------------------------------------------------------------------------------------------
// RMSNorm

/// `y = x · rsqrt(mean(x²) + eps) (· w)` over the last dim.
#[derive(Debug, Clone, Copy)]
pub struct RmsNorm {
    pub eps: f32,
}

/// `1 / sqrt(mean(x²) + eps)` of one row: the scale of RMS norm, in the training op's forward
/// and backward and in the decode engine (one definition, so both round alike).
pub fn rms_scale<T: Float>(x: &[T], eps: f32) -> T {
    let mut ss = T::zero();
    for v in x {
        ss = ss + *v * *v;
    }
    T::from_f32(1.0) / (ss / T::from_usize(x.len()) + T::from_f32(eps)).sqrt()
}

impl RmsNorm {
    fn fwd<T: Float>(&self, x: &[T], w: Option<&[T]>, d: usize) -> Vec<T> {
        let mut out = vec![T::zero(); x.len()];
        out.par_chunks_mut(d.max(1) * 64).zip(x.par_chunks(d.max(1) * 64)).for_each(|(o, xs)| {
            for (orow, xr) in o.chunks_mut(d).zip(xs.chunks(d)) {
                let r = rms_scale(xr, self.eps);
                match w {
                    Some(w) => orow.iter_mut().zip(xr).zip(w).for_each(|((o, x), g)| *o = *g * (*x * r)),
                    None => orow.iter_mut().zip(xr).for_each(|(o, x)| *o = *x * r),
                }
            }
        });
        out
    }
    fn bwd_impl<T: Float>(&self, x: &[T], w: Option<&[T]>, g: &[T], d: usize) -> (Vec<T>, Vec<T>) {
        let rows = x.len() / d.max(1);
        let chunk = 64;
        let parts: Vec<(Vec<T>, Vec<T>)> = (0..rows.div_ceil(chunk))
            .into_par_iter()
            .map(|c| {
                let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(rows));
                let mut dx = vec![T::zero(); (r1 - r0) * d];
                let mut dw = vec![T::zero(); if w.is_some() { d } else { 0 }];
                for r in r0..r1 {
                    let xr = &x[r * d..(r + 1) * d];
                    let gr = &g[r * d..(r + 1) * d];
                    let rs = rms_scale(xr, self.eps);
                    // h = g ⊙ w; dx = r h − x r³ (x·h)/d
                    let mut xh = T::zero();
                    for i in 0..d {
                        let h = match w {
                            Some(w) => gr[i] * w[i],
                            None => gr[i],
                        };
                        xh = xh + xr[i] * h;
                    }
                    let k = rs * rs * rs * xh / T::from_usize(d);
                    let o = &mut dx[(r - r0) * d..(r - r0 + 1) * d];
                    for i in 0..d {
                        let h = match w {
                            Some(w) => gr[i] * w[i],
                            None => gr[i],
                        };
                        o[i] = rs * h - xr[i] * k;
                        if w.is_some() {
                            dw[i] = dw[i] + gr[i] * xr[i] * rs;
                        }
                    }
                }
                (dx, dw)
            })
            .collect();
        let mut dx = Vec::with_capacity(x.len());
        let mut dw = vec![T::zero(); if w.is_some() { d } else { 0 }];
        for (a, b) in parts {
            dx.extend(a);
            for (x, y) in dw.iter_mut().zip(b) {
                *x = *x + y;
            }
        }
        (dx, dw)
    }
}

macro_rules! rms_fwd {
    ($self:ident, $s:expr, $l:expr, $w:expr) => {{
        let d = *$l.shape().dims().last().unwrap_or(&1);
        match $s {
            CpuStorage::F32(x) => CpuStorage::F32($self.fwd(
                contiguous_slice(x, $l, "rms_norm")?,
                $w.map(|w: &CpuStorage| if let CpuStorage::F32(v) = w { v.as_slice() } else { &[] }),
                d,
            )),
            CpuStorage::F64(x) => CpuStorage::F64($self.fwd(
                contiguous_slice(x, $l, "rms_norm")?,
                $w.map(|w: &CpuStorage| if let CpuStorage::F64(v) = w { v.as_slice() } else { &[] }),
                d,
            )),
            _ => bail!("rms_norm: f32/f64 only"),
        }
    }};
}

struct RmsNoWeight(RmsNorm);

impl CustomOp1 for RmsNoWeight {
    fn name(&self) -> &'static str {
        "v4-rms-norm"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let me = self.0;
        Ok((rms_fwd!(me, s, l, None::<&CpuStorage>), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let d = *x.dims().last().unwrap_or(&1);
        let dx = match x.dtype() {
            candle_core::DType::F32 => Tensor::from_vec(
                self.0.bwd_impl::<f32>(&x.flatten_all()?.to_vec1()?, None, &g.flatten_all()?.to_vec1()?, d).0,
                x.dims(),
                x.device(),
            )?,
            candle_core::DType::F64 => Tensor::from_vec(
                self.0.bwd_impl::<f64>(&x.flatten_all()?.to_vec1()?, None, &g.flatten_all()?.to_vec1()?, d).0,
                x.dims(),
                x.device(),
            )?,
            dt => bail!("rms_norm: dtype {dt:?}"),
        };
        Ok(Some(dx))
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "v4-rms-norm-w"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l2.shape().elem_count() != *l1.shape().dims().last().unwrap_or(&0) || !l2.is_contiguous() {
            bail!("rms_norm: weight {:?} does not match input {:?}", l2.shape(), l1.shape());
        }
        let w = match (s2, l2.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => CpuStorage::F32(v[a..b].to_vec()),
            (CpuStorage::F64(v), Some((a, b))) => CpuStorage::F64(v[a..b].to_vec()),
            _ => bail!("rms_norm: weight dtype"),
        };
        Ok((rms_fwd!(self, s1, l1, Some(&w)), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = *x.dims().last().unwrap_or(&1);
        macro_rules! run {
            ($t:ty) => {{
                let wv: Vec<$t> = w.flatten_all()?.to_vec1()?;
                let (dx, dw) =
                    self.bwd_impl::<$t>(&x.flatten_all()?.to_vec1()?, Some(&wv), &g.flatten_all()?.to_vec1()?, d);
                (Tensor::from_vec(dx, x.dims(), x.device())?, Tensor::from_vec(dw, w.dims(), x.device())?)
            }};
        }
        let (dx, dw) = match x.dtype() {
            candle_core::DType::F32 => run!(f32),
            candle_core::DType::F64 => run!(f64),
            dt => bail!("rms_norm: dtype {dt:?}"),
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm over the last dim (fused forward and backward).
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f32) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    match weight {
        Some(w) => x.apply_op2(&w.contiguous()?, RmsNorm { eps }),
        None => x.apply_op1(RmsNoWeight(RmsNorm { eps })),
    }
}

// ----------------------------------------------------------------------------------------------
// RoPE

/// Interleaved rotation of the last `2·freqs.len()` dims of each `width`-long vector; vector
/// `v` belongs to row `v / per_row` whose position is `positions[row]`.
#[derive(Debug, Clone)]
pub struct Rope {
    pub freqs: Arc<Vec<f32>>,
    pub positions: Arc<Vec<usize>>,
    /// Vectors per row (heads).
    pub per_row: usize,
    pub width: usize,
    pub inverse: bool,
}

impl Rope {
    fn apply<T: Float>(&self, x: &[T], inverse: bool) -> Vec<T> {
        let mut out = x.to_vec();
        let half = self.freqs.len();
        let rd = 2 * half;
        let w = self.width;
        let chunk = self.per_row * w;
        out.par_chunks_mut(chunk).enumerate().for_each(|(row, o)| {
            let t = self.positions[row] as f32;
            // angles in f32 exactly as the reference, then widened
            let cs: Vec<(T, T)> = self
                .freqs
                .iter()
                .map(|f| {
                    let a = t * f;
                    (T::from_f32(a.cos()), T::from_f32(a.sin()))
                })
                .collect();
            for v in o.chunks_mut(w) {
                let tail = &mut v[w - rd..];
                for i in 0..half {
                    let (c, s) = cs[i];
                    let s = if inverse { -s } else { s };
                    let (a, b) = (tail[2 * i], tail[2 * i + 1]);
                    tail[2 * i] = a * c - b * s;
                    tail[2 * i + 1] = a * s + b * c;
                }
            }
        });
        out
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "v4-rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if l.shape().elem_count() != self.positions.len() * self.per_row * self.width {
            bail!(
                "rope: input {:?} does not match {} rows × {} × {}",
                l.shape(),
                self.positions.len(),
                self.per_row,
                self.width
            );
        }
        let st = match s {
            CpuStorage::F32(x) => CpuStorage::F32(self.apply(contiguous_slice(x, l, "rope")?, self.inverse)),
            CpuStorage::F64(x) => CpuStorage::F64(self.apply(contiguous_slice(x, l, "rope")?, self.inverse)),
            _ => bail!("rope: f32/f64 only"),
        };
        Ok((st, l.shape().clone()))
    }
    /// A rotation's adjoint is the opposite rotation.
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = g.contiguous()?;
        let dx = match x.dtype() {
            candle_core::DType::F32 => {
                Tensor::from_vec(self.apply::<f32>(&g.flatten_all()?.to_vec1()?, !self.inverse), x.dims(), x.device())?
            }
            candle_core::DType::F64 => {
                Tensor::from_vec(self.apply::<f64>(&g.flatten_all()?.to_vec1()?, !self.inverse), x.dims(), x.device())?
            }
            dt => bail!("rope: dtype {dt:?}"),
        };
        Ok(Some(dx))
    }
}

/// Rotate `x` (contiguous, `[rows, per_row, width]` in memory) at `positions[row]`.
pub fn rope(
    x: &Tensor,
    freqs: &Arc<Vec<f32>>,
    positions: &Arc<Vec<usize>>,
    per_row: usize,
    inverse: bool,
) -> candle_core::Result<Tensor> {
    let width = *x.dims().last().unwrap_or(&1);
    x.contiguous()?.apply_op1(Rope { freqs: freqs.clone(), positions: positions.clone(), per_row, width, inverse })
}

// ----------------------------------------------------------------------------------------------
// Hadamard

struct Hadamard;

fn fwht<T: Float>(x: &[T], n: usize) -> Vec<T> {
    let mut out = x.to_vec();
    let s = T::from_f32(1.0) / T::from_usize(n).sqrt();
    out.par_chunks_mut(n * 16).for_each(|block| {
        for v in block.chunks_mut(n) {
            crate::hadamard::butterflies(v);
            for e in v.iter_mut() {
                *e = *e * s;
            }
        }
    });
    out
}

impl CustomOp1 for Hadamard {
    fn name(&self) -> &'static str {
        "v4-hadamard"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = *l.shape().dims().last().unwrap_or(&1);
        if !n.is_power_of_two() {
            bail!("hadamard: last dim {n} is not a power of two");
        }
        let st = match s {
            CpuStorage::F32(x) => CpuStorage::F32(fwht(contiguous_slice(x, l, "hadamard")?, n)),
            CpuStorage::F64(x) => CpuStorage::F64(fwht(contiguous_slice(x, l, "hadamard")?, n)),
            _ => bail!("hadamard: f32/f64 only"),
        };
        Ok((st, l.shape().clone()))
    }
    /// The normalised Hadamard matrix is symmetric and orthogonal: its adjoint is itself.
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(Hadamard)?.reshape(x.dims())?))
    }
}

/// Normalised Walsh–Hadamard rotation over the last dim.
pub fn hadamard(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Hadamard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn hc_split_matches_the_golden_example() {
        let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/units/mhc_sinkhorn.json");
        let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let f =
            |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
        let hs = &g["hc_split"];
        let dev = Device::Cpu;
        let mixes = Tensor::from_vec(f(&hs["mixes"]), (1, 24), &dev).unwrap();
        let out: Vec<f64> = hc_split(
            &mixes,
            &Tensor::from_vec(f(&hs["scale"]), 3, &dev).unwrap(),
            &Tensor::from_vec(f(&hs["base"]), 24, &dev).unwrap(),
            4,
            20,
            1e-6,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
        let comb: Vec<f64> = hs["comb"].as_array().unwrap().iter().flat_map(f).collect();
        for (a, b) in out[..4].iter().zip(f(&hs["pre"])) {
            assert!((a - b).abs() < 1e-12);
        }
        for (a, b) in out[4..8].iter().zip(f(&hs["post"])) {
            assert!((a - b).abs() < 1e-12);
        }
        for (a, b) in out[8..].iter().zip(&comb) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        // Sinkhorn vectors of the notes (scale 1, base 0 → comb of the logits)
        let sk = &g["sinkhorn"];
        let logits: Vec<f64> = sk["logits"].as_array().unwrap().iter().flat_map(f).collect();
        let mut m = vec![0.0; 8];
        m.extend(logits);
        let out: Vec<f64> = hc_split(
            &Tensor::from_vec(m, (1, 24), &dev).unwrap(),
            &Tensor::new(&[1.0f64, 1.0, 1.0], &dev).unwrap(),
            &Tensor::zeros(24, candle_core::DType::F64, &dev).unwrap(),
            4,
            20,
            1e-6,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
        let want: Vec<f64> = sk["output"].as_array().unwrap().iter().flat_map(f).collect();
        for (a, b) in out[8..].iter().zip(&want) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }

    #[test]
    fn fused_ops_match_finite_differences() {
        let dev = Device::Cpu;
        let check = |name: &str, x0: Vec<f64>, shape: &[usize], f: &dyn Fn(&Tensor) -> Tensor| {
            let v = Var::from_vec(x0.clone(), shape, &dev).unwrap();
            let w = Tensor::from_vec(
                (0..x0.len()).map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.1).collect::<Vec<_>>(),
                shape,
                &dev,
            )
            .unwrap();
            let out = f(v.as_tensor());
            let wo = Tensor::from_vec(
                (0..out.elem_count()).map(|i| ((i * 13 % 7) as f64 - 3.0) * 0.2).collect::<Vec<_>>(),
                out.dims(),
                &dev,
            )
            .unwrap();
            let _ = w;
            let g = (out * &wo).unwrap().sum_all().unwrap().backward().unwrap();
            let gv: Vec<f64> = g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for i in 0..x0.len() {
                let eval = |d: f64| {
                    let mut x = x0.clone();
                    x[i] += d;
                    let t = Tensor::from_vec(x, shape, &dev).unwrap();
                    (f(&t) * &wo).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
                };
                let fd = (eval(1e-6) - eval(-1e-6)) / 2e-6;
                assert!((fd - gv[i]).abs() < 1e-6 * (1.0 + fd.abs()), "{name}[{i}]: {fd} vs {}", gv[i]);
            }
        };
        let x0: Vec<f64> = (0..48).map(|i| ((i * 7919 % 97) as f64 / 97.0 - 0.5) * 2.0).collect();
        let sc = Tensor::new(&[0.7f64, 1.3, 1.9], &dev).unwrap();
        let base = Tensor::from_vec((0..24).map(|i| (i as f64 * 0.37).sin()).collect::<Vec<_>>(), 24, &dev).unwrap();
        check("hc_split", x0.clone(), &[2, 24], &|t| hc_split(t, &sc, &base, 4, 20, 1e-6).unwrap());
        let wn = Tensor::from_vec((0..16).map(|i| 1.0 + i as f64 * 0.1).collect::<Vec<_>>(), 16, &dev).unwrap();
        check("rms_norm_w", x0.clone(), &[3, 16], &|t| rms_norm(t, Some(&wn), 1e-6).unwrap());
        check("rms_norm", x0.clone(), &[3, 16], &|t| rms_norm(t, None, 1e-6).unwrap());
        let freqs = Arc::new(vec![1.0f32, 0.1, 0.01]);
        let pos = Arc::new(vec![3usize, 17]);
        check("rope", x0.clone(), &[2, 2, 12], &|t| rope(t, &freqs, &pos, 2, false).unwrap());
        check("rope_inv", x0.clone(), &[2, 2, 12], &|t| rope(t, &freqs, &pos, 2, true).unwrap());
        check("hadamard", x0[..32].to_vec(), &[2, 16], &|t| hadamard(t).unwrap());
        // and the gradients of hc_split wrt scale/base
        let m = Tensor::from_vec(x0.clone(), (2, 24), &dev).unwrap();
        check("hc_split/base", (0..24).map(|i| (i as f64 * 0.37).sin()).collect(), &[24], &|b| {
            hc_split(&m, &sc, b, 4, 20, 1e-6).unwrap()
        });
        check("hc_split/scale", vec![0.7, 1.3, 1.9], &[3], &|s| hc_split(&m, s, &base, 4, 20, 1e-6).unwrap());
    }
}
