//! SwiGLU experts of an MoE layer as one op with a hand-written backward: the grouped expert
//! GEMMs (one candle node per layer instead of ~15 per expert).
//!
//! Slot `s = i·k + j` sends token row `i` of `x [N, D]` to expert `e = sel[s]` with routing
//! weight `w_s`. Expert `e`'s matrices are one row of `W [E, 3·I·D]`: `W1_e [I, D]`, `W3_e [I, D]`,
//! `W2_e [D, I]`, flattened one after the other. With the rows of expert `e` gathered into
//! `X_e [m, D]` and `W13_e = [W1_e; W3_e]` `[2I, D]`:
//!
//! ```text
//!   [G | U] = X_e · W13_eᵀ                          [m, 2I]
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
//!   dW13_e = [dG | dU]ᵀ · X_e,        dX_e = [dG | dU] · W13_e   (summed into the token rows)
//! ```
//! with `silu'(g) = σ(g)·(1 + g·(1 − σ(g)))`. The forward keeps `[G | U]` for the backward.
//! Many experts run in parallel (rayon), each GEMM on one thread; a single expert (the shared
//! one) runs its GEMMs on the whole pool. Checked against the per-expert candle graph and
//! finite differences (tests below, `tests/grad_check.rs`).

use super::fused::{with_values, Float};
use super::hc::HcScalar;
use super::ops::contiguous_slice;
use crate::kernels::{gemm, Mat};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};
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

/// `[G | U]` of every slot in expert order, kept from the forward for the backward.
#[derive(Debug)]
pub enum Saved {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// One expert call: routing of every slot and the SwiGLU clamp.
#[derive(Debug, Clone)]
pub struct Experts {
    /// Slots per token row (`k`; 1 for a shared expert).
    pub k: usize,
    /// Swiglu limit `L` (0: no clamp).
    pub limit: f32,
    /// Expert of each slot `[N·k]`.
    pub sel: Arc<Vec<u32>>,
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

impl Experts {
    pub fn new(k: usize, limit: f32, sel: Arc<Vec<u32>>) -> Self {
        Experts { k, limit, sel, saved: Arc::new(Mutex::new(None)) }
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

    /// Dimensions `(n, d, experts, inter)` from the operands' shapes.
    fn dims(&self, x: &Layout, wts: &Layout, w: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
        let (n, d) = x.shape().dims2()?;
        let (e, per) = w.shape().dims2()?;
        let inter = if d == 0 { 0 } else { per / (3 * d) };
        if d == 0 || per != 3 * inter * d || self.sel.len() != n * self.k || wts.shape().elem_count() != n * self.k {
            bail!(
                "experts: shapes x {:?}, weights {:?}, w {:?} with {} slots of k = {} do not fit",
                x.dims(),
                wts.dims(),
                w.dims(),
                self.sel.len(),
                self.k
            );
        }
        if let Some(&bad) = self.sel.iter().find(|&&s| s as usize >= e) {
            bail!("experts: slot routed to expert {bad} of {e}");
        }
        Ok((n, d, e, inter))
    }

    /// Forward: `y [N, D]`; keeps `[G | U]` (expert order) for the backward.
    fn forward<T: ExpertScalar>(&self, x: &[T], wts: &[T], w: &[T], dims: (usize, usize, usize, usize)) -> Vec<T> {
        let (n, d, ne, inter) = dims;
        let k = self.k;
        let g = Groups::new(&self.sel, ne);
        let mut gu = vec![T::zero(); n * k * 2 * inter];
        let mut sorted = vec![T::zero(); n * k * d];
        let items: Vec<_> =
            split_rows(&mut gu, &g, 2 * inter).into_iter().zip(split_rows(&mut sorted, &g, d)).collect();
        for_experts(items, |e, par, (gu_e, out_e)| {
            let slots = g.slots(e);
            let m = slots.len();
            if m == 0 {
                return;
            }
            let (w13e, w2e) = expert_mats(w, e, inter, d);
            let xe = gather(x, slots, k, d);
            gemm(Mat::new(&xe, m, d), Mat::new(w13e, 2 * inter, d).t(), gu_e, false, par);
            let mut a = self.activation(gu_e, m, inter);
            scale_rows(&mut a, slots, wts, inter);
            gemm(Mat::new(&a, m, inter), Mat::new(w2e, d, inter).t(), out_e, false, par);
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

    /// `A = silu(g) ⊙ u` of `[G | U]` rows `[m, 2I]`.
    fn activation<T: Float>(&self, gu: &[T], m: usize, inter: usize) -> Vec<T> {
        let mut a = vec![T::zero(); m * inter];
        for r in 0..m {
            let row = &gu[r * 2 * inter..(r + 1) * 2 * inter];
            for c in 0..inter {
                let (g, u, _, _) = self.act(row[c], row[inter + c]);
                a[r * inter + c] = silu(g) * u;
            }
        }
        a
    }

    /// Backward: `(dx [N, D], dwts [N·k], dW [E, 3·I·D])`.
    #[allow(clippy::type_complexity)]
    fn backward<T: ExpertScalar>(
        &self,
        x: &[T],
        wts: &[T],
        w: &[T],
        dy: &[T],
        gu: &[T],
        dims: (usize, usize, usize, usize),
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (n, d, ne, inter) = dims;
        let k = self.k;
        let g = Groups::new(&self.sel, ne);
        let mut dw = vec![T::zero(); ne * 3 * inter * d];
        let mut dx_sorted = vec![T::zero(); n * k * d];
        let mut dwts_sorted = vec![T::zero(); n * k];
        let items: Vec<_> = dw
            .chunks_mut(3 * inter * d)
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
            let gu_e = &gu[g.start[e] * 2 * inter..g.start[e + 1] * 2 * inter];
            let (w13e, w2e) = expert_mats(w, e, inter, d);
            let (dw13_e, dw2_e) = dw_e.split_at_mut(2 * inter * d);
            let xe = gather(x, slots, k, d);
            let doe = gather(dy, slots, k, d);
            let a = self.activation(gu_e, m, inter);
            let mut aw = a.clone();
            scale_rows(&mut aw, slots, wts, inter);
            // dW2_e [D, I] = dO_eᵀ · Â ; dÂ [m, I] = dO_e · W2_e
            gemm(Mat::new(&doe, m, d).t(), Mat::new(&aw, m, inter), dw2_e, false, par);
            let mut da = vec![T::zero(); m * inter];
            gemm(Mat::new(&doe, m, d), Mat::new(w2e, d, inter), &mut da, false, par);
            for (r, out) in dwts_e.iter_mut().enumerate() {
                let (dar, ar) = (&da[r * inter..(r + 1) * inter], &a[r * inter..(r + 1) * inter]);
                *out = dar.iter().zip(ar).fold(T::zero(), |acc, (&p, &q)| acc + p * q);
            }
            scale_rows(&mut da, slots, wts, inter);
            let dh = self.pre_activation_grad(gu_e, &da, m, inter);
            // dW13_e [2I, D] = dHᵀ · X_e ; dX_e [m, D] = dH · W13_e
            gemm(Mat::new(&dh, m, 2 * inter).t(), Mat::new(&xe, m, d), dw13_e, false, par);
            gemm(Mat::new(&dh, m, 2 * inter), Mat::new(w13e, 2 * inter, d), dx_e, false, par);
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

    /// `[dG | dU]` `[m, 2I]` from `dA` and the kept `[G | U]`.
    fn pre_activation_grad<T: Float>(&self, gu: &[T], da: &[T], m: usize, inter: usize) -> Vec<T> {
        let one = T::from_f32(1.0);
        let mut dh = vec![T::zero(); m * 2 * inter];
        for r in 0..m {
            let row = &gu[r * 2 * inter..(r + 1) * 2 * inter];
            let out = &mut dh[r * 2 * inter..(r + 1) * 2 * inter];
            for c in 0..inter {
                let (g, u, g_pass, u_pass) = self.act(row[c], row[inter + c]);
                let s = sigmoid(g);
                let dav = da[r * inter + c];
                if g_pass {
                    out[c] = dav * u * s * (one + g * (one - s));
                }
                if u_pass {
                    out[inter + c] = dav * g * s;
                }
            }
        }
        dh
    }
}

fn sigmoid<T: Float>(x: T) -> T {
    T::from_f32(1.0) / (T::from_f32(1.0) + (-x).exp())
}

/// `x · σ(x)`, as candle's `silu` computes it (`x / (1 + e^{−x})`).
fn silu<T: Float>(x: T) -> T {
    x / (T::from_f32(1.0) + (-x).exp())
}

/// `(W13_e [2I, D], W2_e [D, I])` of expert `e` in `W [E, 3·I·D]`.
fn expert_mats<T>(w: &[T], e: usize, inter: usize, d: usize) -> (&[T], &[T]) {
    let per = 3 * inter * d;
    w[e * per..(e + 1) * per].split_at(2 * inter * d)
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

impl CustomOp3 for Experts {
    fn name(&self) -> &'static str {
        "v4-experts"
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
        let dims = self.dims(l1, l2, l3)?;
        let shape = Shape::from((dims.0, dims.1));
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(a), CpuStorage::F32(b)) => f32::wrap(self.forward(
                contiguous_slice(x, l1, "experts")?,
                contiguous_slice(a, l2, "experts")?,
                contiguous_slice(b, l3, "experts")?,
                dims,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(a), CpuStorage::F64(b)) => f64::wrap(self.forward(
                contiguous_slice(x, l1, "experts")?,
                contiguous_slice(a, l2, "experts")?,
                contiguous_slice(b, l3, "experts")?,
                dims,
            )),
            _ => bail!("experts: f32 or f64 inputs of one dtype"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wts: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = self.dims(x.layout(), wts.layout(), w.layout())?;
        let dev = x.device();
        let saved = self.saved.lock().map_err(|_| candle_core::Error::Msg("experts: poisoned state".into()))?;
        let Some(saved) = saved.as_ref() else { bail!("experts: backward before forward") };
        macro_rules! run {
            ($t:ty) => {{
                let Some(gu) = <$t>::saved(saved) else { bail!("experts: saved state of another dtype") };
                let (dx, da, db) = with_values::<$t, _>(x, |xv| {
                    with_values(wts, |av| {
                        with_values(w, |bv| with_values(grad, |gv| Ok(self.backward(xv, av, bv, gv, gu, dims))))
                    })
                })?;
                (
                    Tensor::from_vec(dx, x.dims(), dev)?,
                    Tensor::from_vec(da, wts.dims(), dev)?,
                    Tensor::from_vec(db, w.dims(), dev)?,
                )
            }};
        }
        let (dx, da, db) = match x.dtype() {
            candle_core::DType::F32 => run!(f32),
            candle_core::DType::F64 => run!(f64),
            d => bail!("experts: unsupported dtype {d:?}"),
        };
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// Apply the experts: `x [N, D]`, routing weights of the slots `wts [N·k]` (any shape of that
/// size), `w [E, 3·I·D]` (see [`stack_expert_weights`]) → `y [N, D]`.
pub fn experts(x: &Tensor, wts: &Tensor, w: &Tensor, op: Experts) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(&wts.contiguous()?, &w.contiguous()?, op)
}

/// `W [E, 3·I·D]` of the experts' `(w1 [I, D], w3 [I, D], w2 [D, I])` (a candle `cat`, so
/// gradients reach each matrix).
pub fn stack_expert_weights(mats: &[[Tensor; 3]]) -> candle_core::Result<Tensor> {
    let flat: Vec<Tensor> = mats.iter().flatten().map(|t| t.flatten_all()).collect::<candle_core::Result<_>>()?;
    let per: usize = mats.first().map_or(0, |m| m.iter().map(|t| t.elem_count()).sum());
    Tensor::cat(&flat, 0)?.reshape((mats.len(), per))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn data(n: usize, seed: usize, amp: f64) -> Vec<f64> {
        (0..n).map(|i| (((i * 7919 + seed * 104729) % 1009) as f64 / 1009.0 - 0.5) * 2.0 * amp).collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

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
        let w = stack_expert_weights(&mats).unwrap();
        let op = Experts::new(k, limit as f32, Arc::new(sel.clone()));
        let got = experts(x.as_tensor(), wts.as_tensor(), &w, op).unwrap();
        assert!(max_diff(&got, &want) < 1e-12, "forward differs by {}", max_diff(&got, &want));
        // the clamp is active somewhere (else its masks go untested)
        let g0 = x.as_tensor().matmul(&mats[0][0].t().unwrap()).unwrap().abs().unwrap();
        assert!(g0.flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap() > limit);
        let gw = (want * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let gg = (got * &proj).unwrap().sum_all().unwrap().backward().unwrap();
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
        let w = stack_expert_weights(&mats).unwrap();
        let got = experts(&x, &ones, &w, Experts::new(1, 0.0, Arc::new(vec![0; n]))).unwrap();
        assert!(max_diff(&got, &want) < 1e-12, "{}", max_diff(&got, &want));
    }

    #[test]
    fn misrouted_slots_are_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let ones = Tensor::ones(2, DType::F32, &dev).unwrap();
        let w = Tensor::zeros((2, 3 * 3 * 4), DType::F32, &dev).unwrap();
        assert!(experts(&x, &ones, &w, Experts::new(1, 0.0, Arc::new(vec![0, 2]))).is_err());
        assert!(experts(&x, &ones, &w, Experts::new(2, 0.0, Arc::new(vec![0, 1]))).is_err());
        let odd = Tensor::zeros((2, 35), DType::F32, &dev).unwrap();
        assert!(experts(&x, &ones, &odd, Experts::new(1, 0.0, Arc::new(vec![0, 1]))).is_err());
    }
}
