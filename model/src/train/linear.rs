//! `y = x · Wᵀ` as one op: forward `[N, K] × [M, K]ᵀ → [N, M]`, backward `dX = dY · W`
//! `[N, M] × [M, K]` and `dW = dYᵀ · X` `[M, N] × [N, K]`, each one GEMM written straight
//! into a contiguous buffer.
//!
//! The candle graph `x.matmul(&w.t())` computes the same products, but its weight gradient
//! arrives as the transpose of a `[K, M]` product and is added to the weight's gradient
//! through a strided (transposing) elementwise add — for every projection of every layer.
//! Checked against that graph in value and gradients (tests below).

use super::fused::with_values;
use super::hc::HcScalar;
use super::ops::contiguous_slice;
use crate::kernels::{gemm, Mat};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

#[derive(Debug, Clone, Copy)]
struct Linear;

fn dims(x: &Layout, w: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (n, k) = x.shape().dims2()?;
    let (m, k2) = w.shape().dims2()?;
    if k != k2 {
        bail!("linear: input {:?} and weight {:?} differ in width", x.dims(), w.dims());
    }
    Ok((n, k, m))
}

fn forward<T: HcScalar>(x: &[T], w: &[T], (n, k, m): (usize, usize, usize)) -> Vec<T> {
    let mut y = vec![T::zero(); n * m];
    gemm(Mat::new(x, n, k), Mat::new(w, m, k).t(), &mut y, false, true);
    y
}

fn backward<T: HcScalar>(x: &[T], w: &[T], dy: &[T], (n, k, m): (usize, usize, usize)) -> (Vec<T>, Vec<T>) {
    let mut dx = vec![T::zero(); n * k];
    gemm(Mat::new(dy, n, m), Mat::new(w, m, k), &mut dx, false, true);
    let mut dw = vec![T::zero(); m * k];
    gemm(Mat::new(dy, n, m).t(), Mat::new(x, n, k), &mut dw, false, true);
    (dx, dw)
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "v4-linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(l1, l2)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                f32::wrap(forward(contiguous_slice(x, l1, "linear")?, contiguous_slice(w, l2, "linear")?, d))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                f64::wrap(forward(contiguous_slice(x, l1, "linear")?, contiguous_slice(w, l2, "linear")?, d))
            }
            _ => bail!("linear: f32 or f64 inputs of one dtype"),
        };
        Ok((out, Shape::from((d.0, d.2))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = dims(x.layout(), w.layout())?;
        macro_rules! run {
            ($t:ty) => {{
                let (dx, dw) = with_values::<$t, _>(x, |xv| {
                    with_values(w, |wv| with_values(grad, |gv| Ok(backward(xv, wv, gv, d))))
                })?;
                (Tensor::from_vec(dx, x.dims(), x.device())?, Tensor::from_vec(dw, w.dims(), w.device())?)
            }};
        }
        let (dx, dw) = match x.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            dt => bail!("linear: dtype {dt:?}"),
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// `x · wᵀ` over the last dim of `x` (any rank): `x [.., K]`, `w [M, K]` → `[.., M]`.
pub fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let k = dims.pop().unwrap_or(0);
    let m = w.dim(0)?;
    let y = x.reshape(((), k))?.contiguous()?.apply_op2(&w.contiguous()?, Linear)?;
    dims.push(m);
    y.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn data(n: usize, seed: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * 7919 + seed * 104729) % 1009) as f64 / 1009.0 - 0.5) * 2.0).collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn matches_matmul_with_the_transposed_weight() {
        let dev = Device::Cpu;
        let x = Var::from_vec(data(2 * 3 * 5, 1), (2, 3, 5), &dev).unwrap();
        let w = Var::from_vec(data(4 * 5, 2), (4, 5), &dev).unwrap();
        let got = linear(x.as_tensor(), w.as_tensor()).unwrap();
        let want = x.as_tensor().broadcast_matmul(&w.as_tensor().t().unwrap()).unwrap();
        assert_eq!(got.dims(), &[2, 3, 4]);
        assert!(max_diff(&got, &want) < 1e-12);
        let proj = Tensor::from_vec(data(24, 3), (2, 3, 4), &dev).unwrap();
        let gg = (got * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let gw = (want * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            let (a, b) = (gg.get(v.as_tensor()).unwrap(), gw.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-12, "{}", max_diff(a, b));
        }
    }

    #[test]
    fn mismatched_widths_are_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((3, 5), DType::F32, &dev).unwrap();
        assert!(linear(&x, &Tensor::zeros((4, 6), DType::F32, &dev).unwrap()).is_err());
    }
}
