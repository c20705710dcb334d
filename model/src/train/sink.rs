//! Weight gradients that a fused op writes straight into per-variable slots, outside candle's
//! graph (the idea of Megatron-LM's `gradient_accumulation_fusion`).
//!
//! The routed experts of a layer are many small matrices. Read through candle's graph they
//! needed a `cat` into one `[E, 3·I·D]` operand per forward (a copy of every expert weight)
//! and, in the backward, that `cat`'s and the reshapes' gradient plumbing: per matrix a zeroed
//! buffer plus an add, twice, and the op's own `[E, 3·I·D]` gradient (on the 49M checkpoint,
//! 151 MB of expert weights passed through memory about seven times per step). Instead the
//! expert op reads each matrix where it lives and its backward deposits `∂L/∂W` here, keyed by
//! the variable; [`TrainModel::backward`](super::TrainModel::backward) runs candle's backprop
//! and then moves these into the returned `GradStore` (adding where the store already holds
//! a gradient of that variable).
//!
//! A deposit of a variable already present is added to it, so a variable used by several
//! fused ops of one graph gets the sum, as candle would give it.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId};
use std::collections::HashMap;
use std::sync::Mutex;

/// Per-variable weight gradients deposited during one backward.
#[derive(Debug, Default)]
pub struct GradSink {
    slots: Mutex<HashMap<TensorId, (Tensor, Tensor)>>,
}

impl GradSink {
    /// Add `grad` (shape of `var`) to the slot of `var`.
    pub fn add(&self, var: &Tensor, grad: Tensor) -> candle_core::Result<()> {
        let mut slots = self.lock()?;
        match slots.remove(&var.id()) {
            Some((v, acc)) => {
                let sum = (acc + grad)?;
                slots.insert(v.id(), (v, sum));
            }
            None => {
                slots.insert(var.id(), (var.clone(), grad));
            }
        }
        Ok(())
    }

    /// Whether nothing is deposited.
    pub fn is_empty(&self) -> bool {
        self.slots.lock().map(|s| s.is_empty()).unwrap_or(true)
    }

    /// Forget every deposit.
    pub fn clear(&self) {
        if let Ok(mut s) = self.slots.lock() {
            s.clear();
        }
    }

    /// Move every deposit into `grads` (added to a gradient the store already holds).
    pub fn drain_into(&self, grads: &mut GradStore) -> candle_core::Result<()> {
        let slots = std::mem::take(&mut *self.lock()?);
        for (_, (var, g)) in slots {
            let sum = match grads.get(&var) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            grads.insert(&var, sum);
        }
        Ok(())
    }

    fn lock(&self) -> candle_core::Result<std::sync::MutexGuard<'_, HashMap<TensorId, (Tensor, Tensor)>>> {
        self.slots.lock().map_err(|_| candle_core::Error::Msg("gradient sink: poisoned lock".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn deposits_add_up_and_join_the_graph_gradients() {
        let dev = Device::Cpu;
        let v = Var::from_vec(vec![1f32, 2.0], 2, &dev).unwrap();
        let w = Var::from_vec(vec![3f32], 1, &dev).unwrap();
        let sink = GradSink::default();
        sink.add(v.as_tensor(), Tensor::new(&[1f32, 1.0], &dev).unwrap()).unwrap();
        sink.add(v.as_tensor(), Tensor::new(&[0.5f32, 2.0], &dev).unwrap()).unwrap();
        sink.add(w.as_tensor(), Tensor::new(&[4f32], &dev).unwrap()).unwrap();
        // the graph gives v a gradient of 2·v
        let mut g = (v.as_tensor() * v.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        sink.drain_into(&mut g).unwrap();
        assert!(sink.is_empty());
        assert_eq!(g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![3.5, 7.0]);
        assert_eq!(g.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![4.0]);
    }
}
