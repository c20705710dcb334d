//! The KV compressor's gated pooling as one op with a hand-written backward (it was a chain of
//! ~22 candle nodes per call: gathers, pads, concatenations and a composed softmax).
//!
//! Entry `i` pools the `m` consecutive token rows `r_i + j` (`j < m`) of the compressor's
//! projections `C = x·W_kvᵀ` and `Z = x·W_gateᵀ` (`[T, w·d]`; `w = 2` with the CSA overlap,
//! else 1) with the learned position bias `A [m, w·d]`. Its candidates `k` for channel `c < d`:
//!
//! ```text
//!   w = 1:  (C[r_i + j, c],  Z[r_i + j, c] + A[j, c])                          j < m
//!   w = 2:  the previous block's first halves (C[r_p + j, c], Z[r_p + j, c] + A[j, c]), or
//!           (0, −1e30) when entry i opens its document, then its own second halves
//!           (C[r_i + j, d + c], Z[r_i + j, d + c] + A[j, d + c])
//!   p = softmax_k(z) = e_k / Σ_l e_l with e_k = exp(z_k − max_l z_l)
//!   out[i, c] = Σ_k p_k · c_k                                                 (candidate order)
//! ```
//!
//! Backward from `dout`: `dc_k = p_k · dout`, `dz_k = p_k · (c_k·dout − Σ_l p_l c_l dout)`,
//! scattered to the rows and halves the candidates came from; `dA[j, ·]` sums `dz` over
//! entries. The forward computes in the order of the candle graph it replaces (max, `z − max`,
//! `exp`, sum, divide, products summed in candidate order), so the sampler's and the trainer's
//! entries still agree. Checked against that graph in f64 (tests below) and by finite
//! differences (`tests/grad_check.rs`).

use super::fused::{with_values, Float};
use super::hc::HcScalar;
use super::ops::contiguous_slice;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// The pad candidate's gate logit (its weight is `exp(−1e30 − max) = 0`).
const PAD_LOGIT: f32 = -1e30;

/// Pooling of one compressor call: where each entry's candidates come from.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Tokens per block (`m`).
    pub ratio: usize,
    /// 2 with the overlapping previous block (CSA, ratio 4), else 1.
    pub width: usize,
    /// Entry width `d`.
    pub dim: usize,
    /// First token row of each entry's block.
    pub first_row: Arc<Vec<usize>>,
    /// The previous block's entry in the same document (`width == 2`), or `None`.
    pub prev: Arc<Vec<Option<usize>>>,
}

/// Where candidate `k` of an entry reads: `(token row, channel offset, bias row)`, or `None`
/// for the pad.
type Source = Option<(usize, usize, usize)>;

impl Pool {
    fn entries(&self) -> usize {
        self.first_row.len()
    }

    /// Candidates of entry `i` in order (`width · ratio` of them).
    fn sources(&self, i: usize) -> Vec<Source> {
        let (m, d) = (self.ratio, self.dim);
        let own = |j: usize| Some((self.first_row[i] + j, (self.width - 1) * d, j));
        if self.width == 1 {
            return (0..m).map(own).collect();
        }
        let prev = self.prev.get(i).copied().flatten();
        (0..m).map(|j| prev.map(|p| (self.first_row[p] + j, 0, j))).chain((0..m).map(own)).collect()
    }

    fn check(&self, c: &Layout, z: &Layout, a: &Layout) -> candle_core::Result<usize> {
        let (t, wd) = c.shape().dims2()?;
        let (m, w, d) = (self.ratio, self.width, self.dim);
        let rows_fit = self.first_row.iter().all(|&r| r + m <= t)
            && (w == 1 || self.prev.len() == self.entries())
            && self.prev.iter().flatten().all(|&p| p < self.entries());
        if m == 0
            || d == 0
            || !(w == 1 || w == 2)
            || wd != w * d
            || z.shape().dims() != c.shape().dims()
            || a.shape().elem_count() != m * wd
        {
            bail!(
                "pool: shapes C {:?}, Z {:?}, A {:?} do not fit ratio {m}, width {w}, dim {d}",
                c.dims(),
                z.dims(),
                a.dims()
            );
        }
        if !rows_fit {
            bail!("pool: an entry's block or previous entry lies outside the {t} token rows");
        }
        Ok(t)
    }

    /// `(c_k, z_k)` of every candidate of entry `i`, `[K, d]` each.
    fn gather<T: Float>(&self, i: usize, c: &[T], z: &[T], a: &[T], cs: &mut [T], zs: &mut [T]) {
        let (d, wd) = (self.dim, self.width * self.dim);
        for (k, src) in self.sources(i).into_iter().enumerate() {
            let (ck, zk) = (&mut cs[k * d..(k + 1) * d], &mut zs[k * d..(k + 1) * d]);
            match src {
                Some((r, off, j)) => {
                    ck.copy_from_slice(&c[r * wd + off..r * wd + off + d]);
                    let (zr, ar) = (&z[r * wd + off..r * wd + off + d], &a[j * wd + off..j * wd + off + d]);
                    for ((o, &zv), &av) in zk.iter_mut().zip(zr).zip(ar) {
                        *o = zv + av;
                    }
                }
                None => {
                    ck.fill(T::zero());
                    zk.fill(T::from_f32(PAD_LOGIT));
                }
            }
        }
    }

    /// Softmax weights over the candidates in place of `zs [K, d]` (per channel), and the
    /// pooled row `out [d]`.
    fn weights_and_out<T: Float>(&self, cs: &[T], zs: &mut [T], out: &mut [T]) {
        let d = self.dim;
        let kk = zs.len() / d;
        let mut mx = zs[..d].to_vec();
        for k in 1..kk {
            for (m, &v) in mx.iter_mut().zip(&zs[k * d..(k + 1) * d]) {
                if v > *m {
                    *m = v;
                }
            }
        }
        let mut sum = vec![T::zero(); d];
        for k in 0..kk {
            for ((e, &m), s) in zs[k * d..(k + 1) * d].iter_mut().zip(&mx).zip(sum.iter_mut()) {
                *e = (*e - m).exp();
                *s = *s + *e;
            }
        }
        out.fill(T::zero());
        for k in 0..kk {
            let (pk, ck) = (&mut zs[k * d..(k + 1) * d], &cs[k * d..(k + 1) * d]);
            for (((p, &s), &cv), o) in pk.iter_mut().zip(&sum).zip(ck).zip(out.iter_mut()) {
                *p = *p / s;
                *o = *o + *p * cv;
            }
        }
    }

    fn forward<T: Float>(&self, c: &[T], z: &[T], a: &[T]) -> Vec<T> {
        let (d, kk) = (self.dim, self.width * self.ratio);
        let mut out = vec![T::zero(); self.entries() * d];
        out.par_chunks_mut(d).enumerate().for_each_init(
            || (vec![T::zero(); kk * d], vec![T::zero(); kk * d]),
            |(cs, zs), (i, o)| {
                self.gather(i, c, z, a, cs, zs);
                self.weights_and_out(cs, zs, o);
            },
        );
        out
    }

    /// `(dC, dZ, dA)`; entries in order (each token row and half is a candidate of at most one
    /// entry, and `dA` sums over entries in order, so the result does not depend on threads).
    fn backward<T: Float>(&self, c: &[T], z: &[T], a: &[T], g: &[T], t: usize) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (m, d, wd, kk) = (self.ratio, self.dim, self.width * self.dim, self.width * self.ratio);
        let (mut dc, mut dz, mut da) = (vec![T::zero(); t * wd], vec![T::zero(); t * wd], vec![T::zero(); m * wd]);
        let (mut cs, mut ps, mut out) = (vec![T::zero(); kk * d], vec![T::zero(); kk * d], vec![T::zero(); d]);
        let mut dot = vec![T::zero(); d];
        for i in 0..self.entries() {
            self.gather(i, c, z, a, &mut cs, &mut ps);
            self.weights_and_out(&cs, &mut ps, &mut out);
            let gi = &g[i * d..(i + 1) * d];
            // Σ_l p_l · (c_l · dout) per channel
            dot.fill(T::zero());
            for k in 0..kk {
                for (((s, &p), &cv), &gv) in
                    dot.iter_mut().zip(&ps[k * d..(k + 1) * d]).zip(&cs[k * d..(k + 1) * d]).zip(gi)
                {
                    *s = *s + p * cv * gv;
                }
            }
            for (k, src) in self.sources(i).into_iter().enumerate() {
                let Some((r, off, j)) = src else { continue };
                let (pk, ck) = (&ps[k * d..(k + 1) * d], &cs[k * d..(k + 1) * d]);
                for ch in 0..d {
                    let gz = pk[ch] * (ck[ch] * gi[ch] - dot[ch]);
                    dc[r * wd + off + ch] = dc[r * wd + off + ch] + pk[ch] * gi[ch];
                    dz[r * wd + off + ch] = dz[r * wd + off + ch] + gz;
                    da[j * wd + off + ch] = da[j * wd + off + ch] + gz;
                }
            }
        }
        (dc, dz, da)
    }
}

impl CustomOp3 for Pool {
    fn name(&self) -> &'static str {
        "v4-compress-pool"
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
        let n = self.name();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(c), CpuStorage::F32(z), CpuStorage::F32(a)) => f32::wrap(self.forward(
                contiguous_slice(c, l1, n)?,
                contiguous_slice(z, l2, n)?,
                contiguous_slice(a, l3, n)?,
            )),
            (CpuStorage::F64(c), CpuStorage::F64(z), CpuStorage::F64(a)) => f64::wrap(self.forward(
                contiguous_slice(c, l1, n)?,
                contiguous_slice(z, l2, n)?,
                contiguous_slice(a, l3, n)?,
            )),
            _ => bail!("pool: f32 or f64 inputs of one dtype"),
        };
        Ok((out, Shape::from((self.entries(), self.dim))))
    }

    fn bwd(
        &self,
        c: &Tensor,
        z: &Tensor,
        a: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let t = self.check(c.layout(), z.layout(), a.layout())?;
        let dev = c.device();
        macro_rules! run {
            ($t:ty) => {{
                let (dc, dz, da) = with_values::<$t, _>(c, |cv| {
                    with_values(z, |zv| {
                        with_values(a, |av| with_values(grad, |gv| Ok(self.backward(cv, zv, av, gv, t))))
                    })
                })?;
                (
                    Tensor::from_vec(dc, c.dims(), dev)?,
                    Tensor::from_vec(dz, z.dims(), dev)?,
                    Tensor::from_vec(da, a.dims(), dev)?,
                )
            }};
        }
        let (dc, dz, da) = match c.dtype() {
            candle_core::DType::F32 => run!(f32),
            candle_core::DType::F64 => run!(f64),
            d => bail!("pool: unsupported dtype {d:?}"),
        };
        Ok((Some(dc), Some(dz), Some(da)))
    }
}

/// Pooled entries `[n, d]` of the projections `c`, `z` (`[T, w·d]`) and the bias `ape`
/// (`[m, w·d]`, any shape of that size).
pub fn pool(c: &Tensor, z: &Tensor, ape: &Tensor, op: Pool) -> candle_core::Result<Tensor> {
    c.contiguous()?.apply_op3(&z.contiguous()?, &ape.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::ops::softmax_dim;
    use crate::train::test_data::{data, max_diff};
    use candle_core::{Device, Var};

    /// The candle graph the op replaces (the compressor before 2026-12-07).
    fn reference(c: &Tensor, z: &Tensor, ape: &Tensor, p: &Pool) -> Tensor {
        let (m, d, w, n) = (p.ratio, p.dim, p.width, p.entries());
        let dev = c.device();
        let rows: Vec<u32> = p.first_row.iter().flat_map(|&r| (r..r + m).map(|x| x as u32)).collect();
        let rows = Tensor::from_vec(rows, n * m, dev).unwrap();
        let cc = c.index_select(&rows, 0).unwrap().reshape((n, m, w * d)).unwrap();
        let zz = z.index_select(&rows, 0).unwrap().reshape((n, m, w * d)).unwrap().broadcast_add(ape).unwrap();
        let (cc, zz) = if w == 1 {
            (cc, zz)
        } else {
            let prev: Vec<u32> = p.prev.iter().map(|q| q.map_or(0, |i| i as u32 + 1)).collect();
            let prev = Tensor::from_vec(prev, n, dev).unwrap();
            let zeros = Tensor::zeros((1, m, d), c.dtype(), dev).unwrap();
            let negs = Tensor::full(PAD_LOGIT as f64, (1, m, d), dev).unwrap();
            let pc = Tensor::cat(&[zeros, cc.narrow(2, 0, d).unwrap()], 0).unwrap().index_select(&prev, 0).unwrap();
            let pz = Tensor::cat(&[negs, zz.narrow(2, 0, d).unwrap()], 0).unwrap().index_select(&prev, 0).unwrap();
            (
                Tensor::cat(&[pc, cc.narrow(2, d, d).unwrap()], 1).unwrap(),
                Tensor::cat(&[pz, zz.narrow(2, d, d).unwrap()], 1).unwrap(),
            )
        };
        (softmax_dim(&zz, 1).unwrap() * cc).unwrap().sum(1).unwrap()
    }

    /// Value and every gradient equal the candle graph (f64): non-overlapping and overlapping
    /// pools, entries with and without a previous block, token rows no entry uses.
    #[test]
    fn matches_the_candle_graph() {
        let dev = Device::Cpu;
        for (ratio, width, first, prev) in [
            (4usize, 1usize, vec![0usize, 4, 12], vec![]),
            (4, 2, vec![0, 4, 8, 13, 17], vec![None, Some(0), Some(1), None, Some(3)]),
            (2, 2, vec![1, 3], vec![None, Some(0)]),
        ] {
            let (d, t) = (6, 22);
            let p = Pool { ratio, width, dim: d, first_row: Arc::new(first), prev: Arc::new(prev) };
            let c = Var::from_vec(data(t * width * d, 1, 1.5), (t, width * d), &dev).unwrap();
            let z = Var::from_vec(data(t * width * d, 2, 3.0), (t, width * d), &dev).unwrap();
            let a = Var::from_vec(data(ratio * width * d, 3, 1.0), (ratio, width * d), &dev).unwrap();
            let proj = Tensor::from_vec(data(p.entries() * d, 4, 1.0), (p.entries(), d), &dev).unwrap();
            let want = reference(c.as_tensor(), z.as_tensor(), a.as_tensor(), &p);
            let got = pool(c.as_tensor(), z.as_tensor(), a.as_tensor(), p.clone()).unwrap();
            assert!(max_diff(&got, &want) < 1e-12, "ratio {ratio} width {width}: {}", max_diff(&got, &want));
            let gw = (want * &proj).unwrap().sum_all().unwrap().backward().unwrap();
            let gg = (got * &proj).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&c, &z, &a] {
                let (x, y) = (gw.get(v.as_tensor()).unwrap(), gg.get(v.as_tensor()).unwrap());
                assert!(max_diff(x, y) < 1e-12, "ratio {ratio} width {width}: gradient differs by {}", max_diff(x, y));
            }
        }
    }

    #[test]
    fn misfit_layouts_are_errors() {
        let dev = Device::Cpu;
        let c = Tensor::zeros((8, 4), candle_core::DType::F32, &dev).unwrap();
        let a = Tensor::zeros((4, 4), candle_core::DType::F32, &dev).unwrap();
        let p = |first: Vec<usize>, prev: Vec<Option<usize>>, width: usize| Pool {
            ratio: 4,
            width,
            dim: 4 / width,
            first_row: Arc::new(first),
            prev: Arc::new(prev),
        };
        assert!(pool(&c, &c, &a, p(vec![0, 4], vec![None, Some(0)], 2)).is_ok());
        assert!(pool(&c, &c, &a, p(vec![0, 5], vec![None, Some(0)], 2)).is_err());
        assert!(pool(&c, &c, &a, p(vec![0, 4], vec![None, Some(2)], 2)).is_err());
        assert!(pool(&c, &c, &a, p(vec![0, 4], vec![None], 2)).is_err());
        assert!(pool(&c, &c, &a, p(vec![0], vec![], 3)).is_err());
        let empty = Tensor::zeros((8, 0), candle_core::DType::F32, &dev).unwrap();
        let a0 = Tensor::zeros((4, 0), candle_core::DType::F32, &dev).unwrap();
        let zero_dim = Pool { ratio: 4, width: 1, dim: 0, first_row: Arc::new(vec![0]), prev: Arc::new(vec![]) };
        assert!(pool(&empty, &empty, &a0, zero_dim).is_err());
        let zero_ratio = Pool { ratio: 0, width: 1, dim: 4, first_row: Arc::new(vec![0]), prev: Arc::new(vec![]) };
        assert!(pool(&c, &c, &Tensor::zeros(0, candle_core::DType::F32, &dev).unwrap(), zero_ratio).is_err());
    }
}
