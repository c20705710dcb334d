//! The mHC (manifold-constrained hyper-connection) stream ops as fused ops with hand-written
//! backward passes. Each replaces a chain of elementwise candle ops and broadcasts over the
//! `[N, hc, D]` residual streams (and their backward chains), which ran 17 times a forward.
//!
//! * [`hc_collapse`]: `x_n = Σ_{i<hc} a_ni · h_ni` (the `pre` weights are the first `hc`
//!   columns of `a [N, A]`). Backward: `dh_ni = a_ni · dx_n`, `da_ni = h_ni · dx_n` (0 for the
//!   other columns).
//! * [`hc_expand`]: `y_nj = post_nj · f_n + Σ_i comb_nij · h_ni` with `post` and `comb` read
//!   from the mHC split `s [N, (2+hc)·hc] = pre | post | comb`. Backward:
//!   `dh_ni = Σ_j comb_nij · dy_nj`, `df_n = Σ_j post_nj · dy_nj`, `dpost_nj = dy_nj · f_n`,
//!   `dcomb_nij = dy_nj · h_ni` (0 for `pre`).
//!
//! `hc_expand` sums in the decode engine's order (`post · f` first, then the streams
//! `i = 0, 1, …`), `hc_collapse` in the order of both the engine and the candle graph it
//! replaces. Values and gradients are checked against the candle graphs (tests below) and
//! finite differences (`tests/grad_check.rs`); sampler/trainer agreement in
//! `rollout/tests/rollout.rs`. (The RMS-scaled mix that feeds the split stays a candle graph:
//! fused with a different rounding it moved that agreement from 1.2e-6 to 3e-5.)

use super::fused::{with_values, Float};
use super::ops::contiguous_slice;
use crate::kernels::GemmScalar;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Element types of the mHC ops.
pub trait HcScalar: Float + GemmScalar {
    fn wrap(v: Vec<Self>) -> CpuStorage;
}
impl HcScalar for f32 {
    fn wrap(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}
impl HcScalar for f64 {
    fn wrap(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

// ----------------------------------------------------------------------------------------------
// x = Σ_i a_i h_i

/// Weighted sum of the `hc` streams (see the module header).
#[derive(Debug, Clone, Copy)]
pub struct HcCollapse;

fn stream_dims(h: &Layout, a: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    let (n, hc, d) = h.shape().dims3()?;
    let (n2, w) = a.shape().dims2()?;
    if n2 != n || w < hc {
        bail!("hc ops: streams {:?} and weights {:?} do not fit", h.dims(), a.dims());
    }
    Ok((n, hc, d, w))
}

impl HcCollapse {
    fn forward<T: Float>(h: &[T], a: &[T], (n, hc, d, w): (usize, usize, usize, usize)) -> Vec<T> {
        let mut x = vec![T::zero(); n * d];
        x.par_chunks_mut(d).enumerate().for_each(|(r, out)| {
            let hr = &h[r * hc * d..(r + 1) * hc * d];
            let ar = &a[r * w..r * w + hc];
            // stream by stream over the row (vectorises), each element summed in stream order
            for (o, &hv) in out.iter_mut().zip(&hr[..d]) {
                *o = ar[0] * hv;
            }
            for i in 1..hc {
                for (o, &hv) in out.iter_mut().zip(&hr[i * d..(i + 1) * d]) {
                    *o = *o + ar[i] * hv;
                }
            }
        });
        x
    }

    fn backward<T: Float>(h: &[T], a: &[T], dx: &[T], (n, hc, d, w): (usize, usize, usize, usize)) -> (Vec<T>, Vec<T>) {
        let mut dh = vec![T::zero(); n * hc * d];
        let mut da = vec![T::zero(); n * w];
        dh.par_chunks_mut(hc * d).zip(da.par_chunks_mut(w)).enumerate().for_each(|(r, (dhr, dar))| {
            let g = &dx[r * d..(r + 1) * d];
            let hr = &h[r * hc * d..(r + 1) * hc * d];
            for i in 0..hc {
                let ai = a[r * w + i];
                for (o, &gv) in dhr[i * d..(i + 1) * d].iter_mut().zip(g) {
                    *o = ai * gv;
                }
                dar[i] = T::dot(&hr[i * d..(i + 1) * d], g);
            }
        });
        (dh, da)
    }
}

impl CustomOp2 for HcCollapse {
    fn name(&self) -> &'static str {
        "v4-hc-collapse"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = stream_dims(l1, l2)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(h), CpuStorage::F32(a)) => f32::wrap(Self::forward(
                contiguous_slice(h, l1, "hc_collapse")?,
                contiguous_slice(a, l2, "hc_collapse")?,
                dims,
            )),
            (CpuStorage::F64(h), CpuStorage::F64(a)) => f64::wrap(Self::forward(
                contiguous_slice(h, l1, "hc_collapse")?,
                contiguous_slice(a, l2, "hc_collapse")?,
                dims,
            )),
            _ => bail!("hc_collapse: f32 or f64 inputs of one dtype"),
        };
        Ok((out, Shape::from((dims.0, dims.2))))
    }
    fn bwd(
        &self,
        h: &Tensor,
        a: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = stream_dims(h.layout(), a.layout())?;
        macro_rules! run {
            ($t:ty) => {{
                let (dh, da) = with_values::<$t, _>(h, |hv| {
                    with_values(a, |av| with_values(grad, |gv| Ok(Self::backward(hv, av, gv, dims))))
                })?;
                (Tensor::from_vec(dh, h.dims(), h.device())?, Tensor::from_vec(da, a.dims(), a.device())?)
            }};
        }
        let (dh, da) = match h.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            d => bail!("hc_collapse: dtype {d:?}"),
        };
        Ok((Some(dh), Some(da)))
    }
}

/// `x_n = Σ_{i<hc} a_ni · h_ni`: `h [N, hc, D]`, `a [N, A ≥ hc]` → `[N, D]`.
pub fn hc_collapse(h: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
    h.contiguous()?.apply_op2(&a.contiguous()?, HcCollapse)
}

// ----------------------------------------------------------------------------------------------
// y_j = post_j f + Σ_i comb_ij h_i

/// Write-back of a block's output into the streams (see the module header).
#[derive(Debug, Clone, Copy)]
pub struct HcExpand;

impl HcExpand {
    fn forward<T: Float>(h: &[T], f: &[T], sp: &[T], (n, hc, d, w): (usize, usize, usize, usize)) -> Vec<T> {
        let mut y = vec![T::zero(); n * hc * d];
        y.par_chunks_mut(hc * d).enumerate().for_each(|(r, yr)| {
            let hr = &h[r * hc * d..(r + 1) * hc * d];
            let fr = &f[r * d..(r + 1) * d];
            let s = &sp[r * w..(r + 1) * w];
            let (post, comb) = (&s[hc..2 * hc], &s[2 * hc..]);
            // `post · f` first, then the streams in order, per element (vectorised over the row)
            for j in 0..hc {
                let out = &mut yr[j * d..(j + 1) * d];
                for (o, &fv) in out.iter_mut().zip(fr) {
                    *o = post[j] * fv;
                }
                for i in 0..hc {
                    let cij = comb[i * hc + j];
                    for (o, &hv) in out.iter_mut().zip(&hr[i * d..(i + 1) * d]) {
                        *o = *o + cij * hv;
                    }
                }
            }
        });
        y
    }

    #[allow(clippy::type_complexity)]
    fn backward<T: Float>(
        h: &[T],
        f: &[T],
        sp: &[T],
        dy: &[T],
        (n, hc, d, w): (usize, usize, usize, usize),
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let mut dh = vec![T::zero(); n * hc * d];
        let mut df = vec![T::zero(); n * d];
        let mut ds = vec![T::zero(); n * w];
        dh.par_chunks_mut(hc * d).zip(df.par_chunks_mut(d)).zip(ds.par_chunks_mut(w)).enumerate().for_each(
            |(r, ((dhr, dfr), dsr))| {
                let hr = &h[r * hc * d..(r + 1) * hc * d];
                let fr = &f[r * d..(r + 1) * d];
                let g = &dy[r * hc * d..(r + 1) * hc * d];
                let s = &sp[r * w..(r + 1) * w];
                let (post, comb) = (&s[hc..2 * hc], &s[2 * hc..]);
                for j in 0..hc {
                    let gj = &g[j * d..(j + 1) * d];
                    dsr[hc + j] = T::dot(gj, fr);
                    for (o, &gv) in dfr.iter_mut().zip(gj) {
                        *o = *o + post[j] * gv;
                    }
                    for i in 0..hc {
                        dsr[2 * hc + i * hc + j] = T::dot(gj, &hr[i * d..(i + 1) * d]);
                        let cij = comb[i * hc + j];
                        for (o, &gv) in dhr[i * d..(i + 1) * d].iter_mut().zip(gj) {
                            *o = *o + cij * gv;
                        }
                    }
                }
            },
        );
        (dh, df, ds)
    }
}

impl CustomOp3 for HcExpand {
    fn name(&self) -> &'static str {
        "v4-hc-expand"
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
        let dims = stream_dims(l1, l3)?;
        let (n, hc, d, w) = dims;
        if l2.dims() != [n, d] || w != (2 + hc) * hc {
            bail!("hc_expand: streams {:?}, block output {:?}, split {:?} do not fit", l1.dims(), l2.dims(), l3.dims());
        }
        let name = "hc_expand";
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(h), CpuStorage::F32(f), CpuStorage::F32(s)) => f32::wrap(Self::forward(
                contiguous_slice(h, l1, name)?,
                contiguous_slice(f, l2, name)?,
                contiguous_slice(s, l3, name)?,
                dims,
            )),
            (CpuStorage::F64(h), CpuStorage::F64(f), CpuStorage::F64(s)) => f64::wrap(Self::forward(
                contiguous_slice(h, l1, name)?,
                contiguous_slice(f, l2, name)?,
                contiguous_slice(s, l3, name)?,
                dims,
            )),
            _ => bail!("hc_expand: f32 or f64 inputs of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        h: &Tensor,
        f: &Tensor,
        s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = stream_dims(h.layout(), s.layout())?;
        macro_rules! run {
            ($t:ty) => {{
                let (dh, df, ds) = with_values::<$t, _>(h, |hv| {
                    with_values(f, |fv| {
                        with_values(s, |sv| with_values(grad, |gv| Ok(Self::backward(hv, fv, sv, gv, dims))))
                    })
                })?;
                (
                    Tensor::from_vec(dh, h.dims(), h.device())?,
                    Tensor::from_vec(df, f.dims(), f.device())?,
                    Tensor::from_vec(ds, s.dims(), s.device())?,
                )
            }};
        }
        let (dh, df, ds) = match h.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            d => bail!("hc_expand: dtype {d:?}"),
        };
        Ok((Some(dh), Some(df), Some(ds)))
    }
}

/// `y_nj = post_nj · f_n + Σ_i comb_nij · h_ni`: `h [N, hc, D]`, `f [N, D]`, the mHC split
/// `s [N, (2+hc)·hc]` → `[N, hc, D]`.
pub fn hc_expand(h: &Tensor, f: &Tensor, split: &Tensor) -> candle_core::Result<Tensor> {
    h.contiguous()?.apply_op3(&f.contiguous()?, &split.contiguous()?, HcExpand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn data(n: usize, seed: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * 7919 + seed * 104729) % 1009) as f64 / 1009.0 - 0.5) * 2.0).collect()
    }

    fn var(shape: &[usize], seed: usize) -> Var {
        Var::from_vec(data(shape.iter().product(), seed), shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// `op` and the candle graph `reference` agree in value and in the gradients of `vars`
    /// (f64, through a fixed random projection of the output).
    fn agree(vars: &[&Var], op: impl Fn() -> Tensor, reference: impl Fn() -> Tensor) {
        let (got, want) = (op(), reference());
        assert!(max_diff(&got, &want) < 1e-12, "forward differs by {}", max_diff(&got, &want));
        let proj = Tensor::from_vec(data(got.elem_count(), 99), got.dims(), &Device::Cpu).unwrap();
        let gg = (got * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let gw = (want * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        for v in vars {
            let (a, b) = (gg.get(v.as_tensor()).unwrap(), gw.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-12, "gradient differs by {}", max_diff(a, b));
        }
    }

    #[test]
    fn collapse_matches_the_candle_graph() {
        let (n, hc, d) = (4, 3, 5);
        let (h, a) = (var(&[n, hc, d], 3), var(&[n, (2 + hc) * hc], 4));
        agree(
            &[&h, &a],
            || hc_collapse(h.as_tensor(), a.as_tensor()).unwrap(),
            || {
                let pre = a.as_tensor().narrow(1, 0, hc).unwrap();
                pre.unsqueeze(2).unwrap().broadcast_mul(h.as_tensor()).unwrap().sum(1).unwrap()
            },
        );
    }

    #[test]
    fn expand_matches_the_candle_graph() {
        let (n, hc, d) = (4, 3, 5);
        let (h, f, s) = (var(&[n, hc, d], 5), var(&[n, d], 6), var(&[n, (2 + hc) * hc], 7));
        agree(
            &[&h, &f, &s],
            || hc_expand(h.as_tensor(), f.as_tensor(), s.as_tensor()).unwrap(),
            || {
                let st = s.as_tensor();
                let post = st.narrow(1, hc, hc).unwrap();
                let comb = st.narrow(1, 2 * hc, hc * hc).unwrap().reshape((n, hc, hc)).unwrap();
                let a = post.unsqueeze(2).unwrap().broadcast_mul(&f.as_tensor().unsqueeze(1).unwrap()).unwrap();
                let b = comb.transpose(1, 2).unwrap().contiguous().unwrap().matmul(h.as_tensor()).unwrap();
                (a + b).unwrap()
            },
        );
    }

    #[test]
    fn misfit_shapes_are_errors() {
        let dev = Device::Cpu;
        let h = Tensor::zeros((2, 4, 3), DType::F32, &dev).unwrap();
        assert!(hc_collapse(&h, &Tensor::zeros((2, 3), DType::F32, &dev).unwrap()).is_err());
        let s = Tensor::zeros((2, 24), DType::F32, &dev).unwrap();
        assert!(hc_expand(&h, &Tensor::zeros((2, 4), DType::F32, &dev).unwrap(), &s).is_err());
    }
}
