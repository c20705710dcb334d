//! Differentiable building blocks for the trainable V4 graph.
//!
//! candle's fused `softmax_last_dim`, `rms_norm` and `rope` record no gradient (see
//! `shared/reference/rust-ecosystem.md` §0), so everything here is either composed from
//! ops that have a backward, or a [`CustomOp1`] that implements `bwd` itself:
//! * [`sigmoid`]: numerically stable fused sigmoid, `∂σ = σ(1 − σ)`;
//! * [`FakeQuant`]: FP8/FP4 fake quantisation with a straight-through estimator (the forward
//!   value is exactly the quantised value, the backward is the identity).

use crate::formats::{fp8, mxfp4};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

/// The values of a contiguous input of custom op `name` (every op's cpu_fwd reads its inputs
/// through this).
pub(crate) fn contiguous_slice<'a, T>(v: &'a [T], layout: &Layout, name: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{name}: inputs must be contiguous"),
    }
}

struct Sigmoid;

impl CustomOp1 for Sigmoid {
    fn name(&self) -> &'static str {
        "v4-sigmoid"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        // 1/(1 + e^{−x}) as the decode engine computes it (e^{−x} = ∞ gives the limit 0).
        fn sig<T: num_like::Float>(x: T) -> T {
            T::one() / (T::one() + (-x).exp())
        }
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(contiguous_slice(v, l, self.name())?.iter().map(|&x| sig(x)).collect())
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(contiguous_slice(v, l, self.name())?.iter().map(|&x| sig(x)).collect())
            }
            _ => bail!("v4-sigmoid: only f32/f64"),
        };
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = (res * (res.ones_like()? - res)?)?;
        Ok(Some(grad.mul(&d)?))
    }
}

/// Minimal float trait so the sigmoid kernel serves f32 and f64.
mod num_like {
    pub trait Float:
        Copy + PartialOrd + std::ops::Neg<Output = Self> + std::ops::Div<Output = Self> + std::ops::Add<Output = Self>
    {
        fn one() -> Self;
        fn exp(self) -> Self;
    }
    impl Float for f32 {
        fn one() -> Self {
            1.0
        }
        fn exp(self) -> Self {
            f32::exp(self)
        }
    }
    impl Float for f64 {
        fn one() -> Self {
            1.0
        }
        fn exp(self) -> Self {
            f64::exp(self)
        }
    }
}

/// `σ(x)` with a backward pass.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Sigmoid)
}

/// Which fake quantisation to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeQuant {
    /// FP8 E4M3 on the first `width − rope` dims of each `width`-long row, blocks of 64
    /// (the V4 raw/compressed KV simulation).
    KvFp8 { width: usize, rope: usize },
    /// MXFP4 (DeepSeek scale rule) in consecutive blocks of 32: indexer q/k, expert weights
    /// (rows of a `[out, in]` weight, `in` a multiple of 32).
    Fp4,
}

impl FakeQuant {
    fn apply_f32(&self, v: &mut [f32]) {
        match *self {
            FakeQuant::KvFp8 { width, rope } => {
                for row in v.chunks_mut(width) {
                    fp8::fake_quant(&mut row[..width - rope], 64);
                }
            }
            FakeQuant::Fp4 => mxfp4::fake_quant(v),
        }
    }
}

impl CustomOp1 for FakeQuant {
    fn name(&self) -> &'static str {
        "v4-fake-quant"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => {
                let mut x = contiguous_slice(v, l, self.name())?.to_vec();
                self.apply_f32(&mut x);
                CpuStorage::F32(x)
            }
            CpuStorage::F64(v) => {
                let src = contiguous_slice(v, l, self.name())?;
                let mut x: Vec<f32> = src.iter().map(|&a| a as f32).collect();
                self.apply_f32(&mut x);
                CpuStorage::F64(x.into_iter().map(f64::from).collect())
            }
            _ => bail!("v4-fake-quant: only f32/f64"),
        };
        Ok((out, l.shape().clone()))
    }
    /// Straight-through estimator.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
    }
}

/// Fake-quantise `x` (any shape, contiguous) with an identity gradient.
pub fn fake_quant(x: &Tensor, q: FakeQuant) -> Result<Tensor> {
    x.contiguous()?.apply_op1(q)
}

/// Softmax over the last dim, composed (max detached: it cancels mathematically).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Softmax over dimension `dim`.
pub fn softmax_dim(x: &Tensor, dim: usize) -> Result<Tensor> {
    let m = x.max_keepdim(dim)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(dim)?)
}

/// log-softmax over the last dim, composed.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let z = x.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    z.broadcast_sub(&lse)
}

/// Interleaved RoPE on the last `2·cos.dim(-1)` dims. `cos`/`sin` must broadcast against
/// `x[..., rd/2]` (position axis placed by the caller).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, inverse: bool) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let last = dims.len() - 1;
    let hd = dims[last];
    let half = cos.dim(D::Minus1)?;
    let rd = 2 * half;
    let nope = x.narrow(last, 0, hd - rd)?;
    let mut pair_shape = dims.clone();
    pair_shape[last] = half;
    pair_shape.push(2);
    let r = x.narrow(last, hd - rd, rd)?.reshape(pair_shape)?;
    let e = r.narrow(last + 1, 0, 1)?.squeeze(last + 1)?;
    let o = r.narrow(last + 1, 1, 1)?.squeeze(last + 1)?;
    let sin = if inverse { sin.neg()? } else { sin.clone() };
    let re = (e.broadcast_mul(cos)? - o.broadcast_mul(&sin)?)?;
    let ro = (e.broadcast_mul(&sin)? + o.broadcast_mul(cos)?)?;
    let rot = Tensor::stack(&[re, ro], last + 1)?.reshape(x.narrow(last, hd - rd, rd)?.shape())?;
    Tensor::cat(&[nope, rot], last)
}

/// `relu(x)` gradient-carrying, `softplus` stable: `relu(x) + ln(1 + e^{−|x|})`.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let t = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    x.relu()? + t
}

/// A dtype-matched scalar tensor.
pub fn scalar(v: f64, dtype: DType, dev: &candle_core::Device) -> Result<Tensor> {
    Tensor::new(v, dev)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn sigmoid_gradient_is_s_times_one_minus_s() {
        let dev = Device::Cpu;
        let x = Var::new(&[-30.0f64, -1.0, 0.0, 2.0, 50.0], &dev).unwrap();
        let y = sigmoid(x.as_tensor()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        for (xi, gi) in [-30.0f64, -1.0, 0.0, 2.0, 50.0].iter().zip(gx) {
            let s = 1.0 / (1.0 + (-xi).exp());
            assert!((gi - s * (1.0 - s)).abs() < 1e-12);
        }
    }

    #[test]
    fn fake_quant_passes_gradient_straight_through() {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.11).collect();
        let x = Var::from_vec(w.clone(), (2, 32), &dev).unwrap();
        let y = fake_quant(x.as_tensor(), FakeQuant::Fp4).unwrap();
        let mut want = w.clone();
        mxfp4::fake_quant(&mut want);
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        let g = (y * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|&v| v == 3.0));
    }
}
