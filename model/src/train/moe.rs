//! SwiGLU experts of an MoE layer as one op with a hand-written backward: the grouped expert
//! GEMMs (one candle node per layer instead of ~15 per expert).
//!
//! Slot `s = i·k + j` sends token row `i` of `x [N, D]` to expert `e = sel[s]` with routing
//! weight `w_s`. Expert `e` has `W1_e [I, D]`, `W3_e [I, D]` and `W2_e [D, I]`, read where they
//! live (no stacked copy). With the rows of expert `e` gathered into `X_e [m, D]`:
//!
//! ```text
//!   G = X_e · W1_eᵀ,  U = X_e · W3_eᵀ               [m, I]
//!   g = min(G, L),  u = clamp(U, −L, L)              (no clamp when L = 0)
//!   A = silu(g) ⊙ u,  Â = diag(w) · A                [m, I]
//!   y_i = Σ over the slots s of token i, expert by expert in ascending order, of (Â · W2_eᵀ)[s]
//! ```
//!
//! — the same products in the same order as the per-expert candle graph it replaces, so logits
//! do not move.
//!
//! Backward from `dY [N, D]` (`dO_e` = rows of `dY` of the tokens of expert `e`'s slots):
//!
//! ```text
//!   dÂ = dO_e · W2_e,  dW2_e = dO_eᵀ · Â,  dw_s = Σ_c dÂ[s, c] · A[s, c],  dA = diag(w) · dÂ
//!   dg = dA ⊙ u ⊙ silu'(g),           du = dA ⊙ silu(g)
//!   dG = dg · [G < L],                dU = du · [−L < U < L]
//!   dW1_e = dGᵀ · X_e,  dW3_e = dUᵀ · X_e,  dX_e = dG · W1_e + dU · W3_e  (summed into the token rows)
//! ```
//! with `silu'(g) = σ(g)·(1 + g·(1 − σ(g)))`. The forward keeps `G` and `U` for the backward.
//! The op's candle inputs are `x` and the routing weights; the weight gradients `dW*_e` go to
//! a [`GradSink`] under the variables they belong to (every expert gets one, zero when it got
//! no rows), which [`TrainModel::backward`](super::TrainModel::backward) joins to candle's.
//! Under QAT the op reads FP4 fake-quantised copies and the gradients go to the raw weights
//! (straight-through).
//! Many experts run in parallel (rayon), each GEMM on one thread; a single expert (the shared
//! one) runs its GEMMs on the whole pool. Checked against the per-expert candle graph and
//! finite differences (tests below, `tests/grad_check.rs`).

use super::fused::{with_values, Float};
use super::hc::HcScalar;
use super::ops::contiguous_slice;
use super::sink::GradSink;
use crate::kernels::{gemm, Mat};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Element types of the op.
pub trait ExpertScalar: super::hc::HcScalar {
    fn saved(b: &Saved) -> Option<&[Self]>;
    fn save(v: Vec<Self>) -> Saved;
}
impl ExpertScalar for f32 {
    fn saved(b: &Saved) -> Option<&[Self]> {
        match b {
            Saved::F32(v) => Some(v),
            Saved::F64(_) => None,
        }
    }
    fn save(v: Vec<Self>) -> Saved {
        Saved::F32(v)
    }
}
impl ExpertScalar for f64 {
    fn saved(b: &Saved) -> Option<&[Self]> {
        match b {
            Saved::F64(v) => Some(v),
            Saved::F32(_) => None,
        }
    }
    fn save(v: Vec<Self>) -> Saved {
        Saved::F64(v)
    }
}

/// `G` of every slot in expert order, then `U` likewise, kept from the forward for the backward.
#[derive(Debug)]
pub enum Saved {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The expert matrices of one call and where their gradients go.
#[derive(Debug, Clone)]
pub struct ExpertWeights {
    /// `[W1 [I, D], W3 [I, D], W2 [D, I]]` per expert, as the op reads them.
    pub values: Vec<[Tensor; 3]>,
    /// The variables the gradients of `values` belong to: the same tensors, or the raw
    /// weights of fake-quantised `values` (straight-through).
    pub targets: Vec<[Tensor; 3]>,
    /// Where the backward deposits them.
    pub sink: Arc<GradSink>,
}

impl ExpertWeights {
    /// Weights read as they are, gradients to the same tensors.
    pub fn plain(mats: Vec<[Tensor; 3]>, sink: Arc<GradSink>) -> Self {
        ExpertWeights { targets: mats.clone(), values: mats, sink }
    }
}

/// One expert call: routing of every slot, the SwiGLU clamp and the weights.
#[derive(Debug, Clone)]
pub struct Experts {
    /// Slots per token row (`k`; 1 for a shared expert).
    pub k: usize,
    /// Swiglu limit `L` (0: no clamp).
    pub limit: f32,
    /// Expert of each slot `[N·k]`.
    pub sel: Arc<Vec<u32>>,
    pub weights: ExpertWeights,
    saved: Arc<Mutex<Option<Saved>>>,
}

/// Slots grouped by expert: `order[start[e]..start[e+1]]` are the slots of expert `e`.
struct Groups {
    order: Vec<usize>,
    start: Vec<usize>,
}

impl Groups {
    fn new(sel: &[u32], experts: usize) -> Self {
        let mut start = vec![0usize; experts + 1];
        for &e in sel {
            start[e as usize + 1] += 1;
        }
        for e in 0..experts {
            start[e + 1] += start[e];
        }
        let mut next = start.clone();
        let mut order = vec![0usize; sel.len()];
        for (s, &e) in sel.iter().enumerate() {
            order[next[e as usize]] = s;
            next[e as usize] += 1;
        }
        Groups { order, start }
    }
    fn slots(&self, e: usize) -> &[usize] {
        &self.order[self.start[e]..self.start[e + 1]]
    }
}

/// Split `buf` into consecutive chunks of `rows[e] · width` elements, one per expert.
fn split_rows<'a, T>(mut buf: &'a mut [T], g: &Groups, width: usize) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(g.start.len() - 1);
    for e in 0..g.start.len() - 1 {
        let (a, b) = std::mem::take(&mut buf).split_at_mut((g.start[e + 1] - g.start[e]) * width);
        out.push(a);
        buf = b;
    }
    out
}

/// Run `f` for every expert: in parallel over experts with single-threaded GEMMs when there
/// are several, otherwise one after the other with parallel GEMMs. `f(e, parallel_gemm, item)`.
fn for_experts<I: Send>(items: Vec<I>, f: impl Fn(usize, bool, I) + Sync + Send) {
    if items.len() > 1 {
        items.into_par_iter().enumerate().for_each(|(e, it)| f(e, false, it));
    } else {
        items.into_iter().enumerate().for_each(|(e, it)| f(e, true, it));
    }
}

/// Shapes of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    /// Token rows.
    n: usize,
    /// Model width.
    d: usize,
    experts: usize,
    /// Expert inner width.
    inter: usize,
}

/// Run `f` on the contiguous values of every tensor of `mats` (`[W1, W3, W2]` per expert),
/// borrowed in place.
fn with_mats<T: WithDType, R>(
    mats: &[[Tensor; 3]],
    f: impl FnOnce(&[[&[T]; 3]]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let guards: Vec<_> = mats.iter().flatten().map(|t| t.storage_and_layout()).collect();
    let mut flat = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        match (&**storage, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(cpu), Some((a, b))) => flat.push(&cpu.as_slice::<T>()?[a..b]),
            _ => bail!("experts: weights must be contiguous CPU tensors"),
        }
    }
    let per: Vec<[&[T]; 3]> = flat.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    f(&per)
}

impl Experts {
    pub fn new(k: usize, limit: f32, sel: Arc<Vec<u32>>, weights: ExpertWeights) -> Self {
        Experts { k, limit, sel, weights, saved: Arc::new(Mutex::new(None)) }
    }

    /// Clamped `(g, u)` of pre-activations `(G, U)` and whether each passes its gradient.
    fn act<T: Float>(&self, gv: T, uv: T) -> (T, T, bool, bool) {
        if self.limit > 0.0 {
            let l = T::from_f32(self.limit);
            let g_pass = gv < l;
            let u_pass = uv < l && -l < uv;
            let g = if g_pass { gv } else { l };
            let u = if uv > l {
                l
            } else if uv < -l {
                -l
            } else {
                uv
            };
            (g, u, g_pass, u_pass)
        } else {
            (gv, uv, true, true)
        }
    }

    /// Shapes from the operands, every expert's matrices and the routing checked.
    fn dims(&self, x: &Layout, wts: &Layout) -> candle_core::Result<Dims> {
        let (n, d) = x.shape().dims2()?;
        let w = &self.weights;
        let experts = w.values.len();
        let inter = w.values.first().map_or(0, |m| m[0].dims().first().copied().unwrap_or(0));
        let fits =
            |m: &[Tensor; 3]| m[0].dims() == [inter, d] && m[1].dims() == [inter, d] && m[2].dims() == [d, inter];
        if experts == 0
            || d == 0
            || inter == 0
            || w.targets.len() != experts
            || !w.values.iter().all(fits)
            || w.values.iter().zip(&w.targets).any(|(v, t)| v.iter().zip(t).any(|(a, b)| a.dims() != b.dims()))
            || self.sel.len() != n * self.k
            || wts.shape().elem_count() != n * self.k
        {
            bail!(
                "experts: shapes x {:?}, weights {:?}, {} experts of {:?} with {} slots of k = {} do not fit",
                x.dims(),
                wts.dims(),
                experts,
                w.values.first().map(|m| m.clone().map(|t| t.dims().to_vec())),
                self.sel.len(),
                self.k
            );
        }
        if let Some(&bad) = self.sel.iter().find(|&&s| s as usize >= experts) {
            bail!("experts: slot routed to expert {bad} of {experts}");
        }
        Ok(Dims { n, d, experts, inter })
    }

    /// Forward: `y [N, D]`; keeps `G` and `U` (expert order) for the backward.
    fn forward<T: ExpertScalar>(&self, x: &[T], wts: &[T], w: &[[&[T]; 3]], dims: Dims) -> Vec<T> {
        let Dims { n, d, experts, inter } = dims;
        let k = self.k;
        let g = Groups::new(&self.sel, experts);
        let mut gu = vec![T::zero(); 2 * n * k * inter];
        let (g_all, u_all) = gu.split_at_mut(n * k * inter);
        let mut sorted = vec![T::zero(); n * k * d];
        let items: Vec<_> = split_rows(g_all, &g, inter)
            .into_iter()
            .zip(split_rows(u_all, &g, inter))
            .zip(split_rows(&mut sorted, &g, d))
            .collect();
        for_experts(items, |e, par, ((g_e, u_e), out_e)| {
            let slots = g.slots(e);
            let m = slots.len();
            if m == 0 {
                return;
            }
            let [w1, w3, w2] = w[e];
            let xe = gather(x, slots, k, d);
            gemm(Mat::new(&xe, m, d), Mat::new(w1, inter, d).t(), g_e, false, par);
            gemm(Mat::new(&xe, m, d), Mat::new(w3, inter, d).t(), u_e, false, par);
            let mut a = self.activation(g_e, u_e);
            scale_rows(&mut a, slots, wts, inter);
            gemm(Mat::new(&a, m, inter), Mat::new(w2, d, inter).t(), out_e, false, par);
        });
        let mut y = vec![T::zero(); n * d];
        for (p, &s) in g.order.iter().enumerate() {
            let i = s / k;
            for (o, &v) in y[i * d..(i + 1) * d].iter_mut().zip(&sorted[p * d..(p + 1) * d]) {
                *o = *o + v;
            }
        }
        if let Ok(mut sv) = self.saved.lock() {
            *sv = Some(T::save(gu));
        }
        y
    }

    /// `A = silu(g) ⊙ u` of the rows of `G` and `U` (`[m, I]` each).
    fn activation<T: Float>(&self, g: &[T], u: &[T]) -> Vec<T> {
        g.iter()
            .zip(u)
            .map(|(&gv, &uv)| {
                let (g, u, _, _) = self.act(gv, uv);
                silu(g) * u
            })
            .collect()
    }

    /// Backward: `(dx [N, D], dwts [N·k])`; `(dW1, dW3, dW2)` of every expert.
    #[allow(clippy::type_complexity)]
    fn backward<T: ExpertScalar>(
        &self,
        x: &[T],
        wts: &[T],
        w: &[[&[T]; 3]],
        dy: &[T],
        gu: &[T],
        dims: Dims,
    ) -> (Vec<T>, Vec<T>, Vec<[Vec<T>; 3]>) {
        let Dims { n, d, experts, inter } = dims;
        let k = self.k;
        let g = Groups::new(&self.sel, experts);
        let (g_all, u_all) = gu.split_at(n * k * inter);
        let mut dw: Vec<[Vec<T>; 3]> = (0..experts)
            .map(|_| [vec![T::zero(); inter * d], vec![T::zero(); inter * d], vec![T::zero(); d * inter]])
            .collect();
        let mut dx_sorted = vec![T::zero(); n * k * d];
        let mut dwts_sorted = vec![T::zero(); n * k];
        let items: Vec<_> = dw
            .iter_mut()
            .zip(split_rows(&mut dx_sorted, &g, d))
            .zip(split_rows(&mut dwts_sorted, &g, 1))
            .map(|((a, b), c)| (a, b, c))
            .collect();
        for_experts(items, |e, par, (dw_e, dx_e, dwts_e)| {
            let slots = g.slots(e);
            let m = slots.len();
            if m == 0 {
                return;
            }
            let rows = g.start[e] * inter..g.start[e + 1] * inter;
            let (g_e, u_e) = (&g_all[rows.clone()], &u_all[rows]);
            let [w1, w3, w2] = w[e];
            let [dw1, dw3, dw2] = dw_e;
            let xe = gather(x, slots, k, d);
            let doe = gather(dy, slots, k, d);
            let a = self.activation(g_e, u_e);
            let mut aw = a.clone();
            scale_rows(&mut aw, slots, wts, inter);
            // dW2_e [D, I] = dO_eᵀ · Â ; dÂ [m, I] = dO_e · W2_e
            gemm(Mat::new(&doe, m, d).t(), Mat::new(&aw, m, inter), dw2, false, par);
            let mut da = vec![T::zero(); m * inter];
            gemm(Mat::new(&doe, m, d), Mat::new(w2, d, inter), &mut da, false, par);
            for (r, out) in dwts_e.iter_mut().enumerate() {
                let (dar, ar) = (&da[r * inter..(r + 1) * inter], &a[r * inter..(r + 1) * inter]);
                *out = dar.iter().zip(ar).fold(T::zero(), |acc, (&p, &q)| acc + p * q);
            }
            scale_rows(&mut da, slots, wts, inter);
            let (dg, du) = self.pre_activation_grad(g_e, u_e, &da);
            // dW1_e = dGᵀ · X_e, dW3_e = dUᵀ · X_e  [I, D] ; dX_e [m, D] = dG · W1_e + dU · W3_e
            gemm(Mat::new(&dg, m, inter).t(), Mat::new(&xe, m, d), dw1, false, par);
            gemm(Mat::new(&du, m, inter).t(), Mat::new(&xe, m, d), dw3, false, par);
            gemm(Mat::new(&dg, m, inter), Mat::new(w1, inter, d), dx_e, false, par);
            gemm(Mat::new(&du, m, inter), Mat::new(w3, inter, d), dx_e, true, par);
        });
        let mut dx = vec![T::zero(); n * d];
        let mut dwts = vec![T::zero(); n * k];
        for (p, &s) in g.order.iter().enumerate() {
            let i = s / k;
            dwts[s] = dwts_sorted[p];
            for (o, &v) in dx[i * d..(i + 1) * d].iter_mut().zip(&dx_sorted[p * d..(p + 1) * d]) {
                *o = *o + v;
            }
        }
        (dx, dwts, dw)
    }

    /// `(dG, dU)` `[m, I]` each from `dA` and the kept `G`, `U`.
    fn pre_activation_grad<T: Float>(&self, g: &[T], u: &[T], da: &[T]) -> (Vec<T>, Vec<T>) {
        let one = T::from_f32(1.0);
        let mut dg = vec![T::zero(); da.len()];
        let mut du = vec![T::zero(); da.len()];
        for i in 0..da.len() {
            let (gv, uv, g_pass, u_pass) = self.act(g[i], u[i]);
            let s = sigmoid(gv);
            if g_pass {
                dg[i] = da[i] * uv * s * (one + gv * (one - s));
            }
            if u_pass {
                du[i] = da[i] * gv * s;
            }
        }
        (dg, du)
    }

    /// Deposit every expert's weight gradients (`dW` in the order of `targets`).
    fn deposit<T: WithDType>(&self, dw: Vec<[Vec<T>; 3]>, dev: &candle_core::Device) -> candle_core::Result<()> {
        for (grads, targets) in dw.into_iter().zip(&self.weights.targets) {
            for (gv, t) in grads.into_iter().zip(targets) {
                self.weights.sink.add(t, Tensor::from_vec(gv, t.dims(), dev)?)?;
            }
        }
        Ok(())
    }
}

fn sigmoid<T: Float>(x: T) -> T {
    T::from_f32(1.0) / (T::from_f32(1.0) + (-x).exp())
}

/// `x · σ(x)`, as candle's `silu` computes it (`x / (1 + e^{−x})`).
fn silu<T: Float>(x: T) -> T {
    x / (T::from_f32(1.0) + (-x).exp())
}

/// Row `r` of `a [m, width]` times the routing weight of slot `slots[r]`.
fn scale_rows<T: Float>(a: &mut [T], slots: &[usize], wts: &[T], width: usize) {
    for (row, &s) in a.chunks_mut(width).zip(slots) {
        for v in row.iter_mut() {
            *v = *v * wts[s];
        }
    }
}

/// Rows `slot / k` of `src [_, d]` for the given slots, `[slots, d]`.
fn gather<T: Copy>(src: &[T], slots: &[usize], k: usize, d: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(slots.len() * d);
    for &s in slots {
        let i = s / k;
        out.extend_from_slice(&src[i * d..(i + 1) * d]);
    }
    out
}

impl CustomOp2 for Experts {
    fn name(&self) -> &'static str {
        "v4-experts"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = self.dims(l1, l2)?;
        let shape = Shape::from((dims.n, dims.d));
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(a)) => f32::wrap(with_mats(&self.weights.values, |w| {
                Ok(self.forward(contiguous_slice(x, l1, "experts")?, contiguous_slice(a, l2, "experts")?, w, dims))
            })?),
            (CpuStorage::F64(x), CpuStorage::F64(a)) => f64::wrap(with_mats(&self.weights.values, |w| {
                Ok(self.forward(contiguous_slice(x, l1, "experts")?, contiguous_slice(a, l2, "experts")?, w, dims))
            })?),
            _ => bail!("experts: f32 or f64 inputs of one dtype"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wts: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = self.dims(x.layout(), wts.layout())?;
        let dev = x.device();
        let saved = self.saved.lock().map_err(|_| candle_core::Error::Msg("experts: poisoned state".into()))?;
        let Some(saved) = saved.as_ref() else { bail!("experts: backward before forward") };
        macro_rules! run {
            ($t:ty) => {{
                let Some(gu) = <$t>::saved(saved) else { bail!("experts: saved state of another dtype") };
                let (dx, da, dw) = with_values::<$t, _>(x, |xv| {
                    with_values(wts, |av| {
                        with_mats(&self.weights.values, |w| {
                            with_values(grad, |gv| Ok(self.backward(xv, av, w, gv, gu, dims)))
                        })
                    })
                })?;
                self.deposit(dw, dev)?;
                (Tensor::from_vec(dx, x.dims(), dev)?, Tensor::from_vec(da, wts.dims(), dev)?)
            }};
        }
        let (dx, da) = match x.dtype() {
            candle_core::DType::F32 => run!(f32),
            candle_core::DType::F64 => run!(f64),
            d => bail!("experts: unsupported dtype {d:?}"),
        };
        Ok((Some(dx), Some(da)))
    }
}

/// Apply the experts: `x [N, D]`, routing weights of the slots `wts [N·k]` (any shape of that
/// size) → `y [N, D]`; the weights and the gradient sink come with `op`.
pub fn experts(x: &Tensor, wts: &Tensor, op: Experts) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(&wts.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::test_data::{data, max_diff};
    use candle_core::{DType, Device, Var};

    /// The per-expert candle graph the op replaces.
    fn reference(x: &Tensor, wts: &Tensor, mats: &[[Tensor; 3]], sel: &[u32], k: usize, limit: f64) -> Tensor {
        let (n, d) = x.dims2().unwrap();
        let mut y = Tensor::zeros((n, d), x.dtype(), x.device()).unwrap();
        for (e, [w1, w3, w2]) in mats.iter().enumerate() {
            let slots: Vec<u32> = (0..sel.len() as u32).filter(|&s| sel[s as usize] as usize == e).collect();
            if slots.is_empty() {
                continue;
            }
            let m = slots.len();
            let rows =
                Tensor::from_vec(slots.iter().map(|&s| s / k as u32).collect::<Vec<_>>(), m, x.device()).unwrap();
            let xe = x.index_select(&rows, 0).unwrap();
            let we = wts.index_select(&Tensor::from_vec(slots.clone(), m, x.device()).unwrap(), 0).unwrap();
            let mut g = xe.matmul(&w1.t().unwrap()).unwrap();
            let mut u = xe.matmul(&w3.t().unwrap()).unwrap();
            if limit > 0.0 {
                u = u.clamp(-limit, limit).unwrap();
                g = g.minimum(limit).unwrap();
            }
            let h = (g.silu().unwrap() * u).unwrap().broadcast_mul(&we.unsqueeze(1).unwrap()).unwrap();
            y = y.index_add(&rows, &h.matmul(&w2.t().unwrap()).unwrap(), 0).unwrap();
        }
        y
    }

    /// Forward and every gradient equal the per-expert candle graph (f64), with the clamp
    /// active on some entries, an expert without rows and tokens sent twice to one expert.
    #[test]
    fn matches_the_per_expert_graph() {
        let dev = Device::Cpu;
        let (n, d, inter, ne, k) = (7, 6, 5, 4, 2);
        let limit = 1.5;
        let sel: Vec<u32> = vec![0, 1, 1, 1, 0, 2, 1, 0, 2, 1, 0, 1, 2, 0];
        let x = Var::from_vec(data(n * d, 1, 2.0), (n, d), &dev).unwrap();
        let wts = Var::from_vec(data(n * k, 2, 1.0), n * k, &dev).unwrap();
        let mk = |seed: usize, r: usize, c: usize| Var::from_vec(data(r * c, seed, 1.0), (r, c), &dev).unwrap();
        let vars: Vec<[Var; 3]> =
            (0..ne).map(|e| [mk(10 + e, inter, d), mk(20 + e, inter, d), mk(30 + e, d, inter)]).collect();
        let mats: Vec<[Tensor; 3]> = vars.iter().map(|v| v.clone().map(|v| v.as_tensor().clone())).collect();
        let proj = Tensor::from_vec(data(n * d, 5, 1.0), (n, d), &dev).unwrap();
        let want = reference(x.as_tensor(), wts.as_tensor(), &mats, &sel, k, limit);
        let sink = Arc::new(GradSink::default());
        let op = Experts::new(k, limit as f32, Arc::new(sel.clone()), ExpertWeights::plain(mats.clone(), sink.clone()));
        let got = experts(x.as_tensor(), wts.as_tensor(), op).unwrap();
        assert!(max_diff(&got, &want) < 1e-12, "forward differs by {}", max_diff(&got, &want));
        // the clamp is active somewhere (else its masks go untested)
        let g0 = x.as_tensor().matmul(&mats[0][0].t().unwrap()).unwrap().abs().unwrap();
        assert!(g0.flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap() > limit);
        let gw = (want * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let mut gg = (got * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        // the weight gradients come from the sink (every expert's, the idle one's too)
        assert!(vars.iter().flatten().all(|v| gg.get(v.as_tensor()).is_none()));
        sink.drain_into(&mut gg).unwrap();
        let all: Vec<&Var> = [&x, &wts].into_iter().chain(vars.iter().flatten()).collect();
        for v in all {
            let b = gg.get(v.as_tensor()).unwrap();
            // an expert without rows gets no gradient from the reference graph, zero from the op
            let a = gw.get(v.as_tensor()).cloned().unwrap_or_else(|| b.zeros_like().unwrap());
            assert!(max_diff(&a, b) < 1e-12, "gradient differs by {}", max_diff(&a, b));
        }
    }

    /// One expert with unit weights (the shared expert): the dense SwiGLU, GEMMs on the pool.
    #[test]
    fn one_expert_is_the_dense_swiglu() {
        let dev = Device::Cpu;
        let (n, d, inter) = (9, 8, 6);
        let x = Tensor::from_vec(data(n * d, 2, 1.0), (n, d), &dev).unwrap();
        let mats = [[(3, inter, d), (4, inter, d), (5, d, inter)]
            .map(|(seed, r, c)| Tensor::from_vec(data(r * c, seed, 1.0), (r, c), &dev).unwrap())];
        let [w1, w3, w2] = &mats[0];
        let want = (x.matmul(&w1.t().unwrap()).unwrap().silu().unwrap() * x.matmul(&w3.t().unwrap()).unwrap())
            .unwrap()
            .matmul(&w2.t().unwrap())
            .unwrap();
        let ones = Tensor::ones(n, DType::F64, &dev).unwrap();
        let w = ExpertWeights::plain(mats.to_vec(), Arc::default());
        let got = experts(&x, &ones, Experts::new(1, 0.0, Arc::new(vec![0; n]), w)).unwrap();
        assert!(max_diff(&got, &want) < 1e-12, "{}", max_diff(&got, &want));
    }

    #[test]
    fn misrouted_slots_are_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let ones = Tensor::ones(2, DType::F32, &dev).unwrap();
        let z = |r: usize, c: usize| Tensor::zeros((r, c), DType::F32, &dev).unwrap();
        let two = ExpertWeights::plain(vec![[z(3, 4), z(3, 4), z(4, 3)]; 2], Arc::default());
        assert!(experts(&x, &ones, Experts::new(1, 0.0, Arc::new(vec![0, 2]), two.clone())).is_err());
        assert!(experts(&x, &ones, Experts::new(2, 0.0, Arc::new(vec![0, 1]), two.clone())).is_err());
        assert!(experts(&x, &ones, Experts::new(1, 0.0, Arc::new(vec![0, 1]), two)).is_ok());
        let odd = ExpertWeights::plain(vec![[z(3, 4), z(3, 4), z(4, 3)], [z(3, 4), z(2, 4), z(4, 3)]], Arc::default());
        assert!(experts(&x, &ones, Experts::new(1, 0.0, Arc::new(vec![0, 1]), odd)).is_err());
        let flat = ExpertWeights::plain(vec![[z(0, 4), z(0, 4), z(4, 0)]], Arc::default());
        assert!(experts(&x, &ones, Experts::new(1, 0.0, Arc::new(vec![0, 0]), flat)).is_err());
        let none = ExpertWeights::plain(vec![], Arc::default());
        assert!(experts(&x, &ones, Experts::new(1, 0.0, Arc::new(vec![0, 0]), none)).is_err());
    }
}
