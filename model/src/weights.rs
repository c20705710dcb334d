//! Model parameters as plain f32 arrays under their official checkpoint names.
//!
//! [`ModelWeights`] is the hand-off point between the checkpoint files, the trainable
//! candle model (which turns each array into a `Var`: the f32 masters) and
//! [`crate::Engine::new`] (which keeps f32 copies, or the packed FP4 bytes of the routed
//! experts). Frozen models (rollout, teachers, reference, evaluation) do not come through
//! here: [`crate::Engine::from_checkpoint`] maps the checkpoint and computes on the stored
//! formats ([`crate::mapped`]).

use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::formats::mxfp4::Mxfp4Matrix;
use std::collections::BTreeMap;

/// A dense f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor32 {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor32 { shape, data }
    }
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor32 { shape, data: vec![0.0; n] }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Every parameter of a V4 model.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    pub config: Config,
    /// Float parameters by official name (`layers.3.attn.wq_a.weight`, ...).
    pub tensors: BTreeMap<String, Tensor32>,
    /// Hash-routing tables `[vocab, n_activated_experts]` of the first `n_hash_layers` layers.
    pub tid2eid: BTreeMap<usize, Vec<u32>>,
    /// Packed FP4 expert weights exactly as read from an FP4 checkpoint (same values as the
    /// f32 copy in `tensors`); used by the decode engine instead of re-quantising.
    pub fp4: BTreeMap<String, Mxfp4Matrix>,
}

/// How one parameter starts in [`ModelWeights::random`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Every entry this value.
    Const(f32),
    /// Normals of this standard deviation, drawn in order from the shared stream.
    Normal(f64),
}

/// Deterministic SplitMix64 + Box-Muller normals: weights are reproducible from a seed
/// without depending on a particular `rand` version.
pub struct SeededNormal {
    state: u64,
    spare: Option<f64>,
}

impl SeededNormal {
    pub fn new(seed: u64) -> Self {
        SeededNormal { state: seed ^ 0x9E37_79B9_7F4A_7C15, spare: None }
    }
    /// The generator of `seed` as it is after `draws` calls of [`next_u64`](Self::next_u64),
    /// with no pending spare normal: SplitMix64's state advances by a constant per draw, so
    /// any point of the stream is reached in O(1) (`model init` fills tensors independently).
    pub fn at_draw(seed: u64, draws: u64) -> Self {
        let state = (seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_add(draws.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        SeededNormal { state, spare: None }
    }
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

impl ModelWeights {
    pub fn get(&self, name: &str) -> Result<&Tensor32> {
        self.tensors.get(name).ok_or_else(|| ModelError::Checkpoint(format!("missing tensor `{name}`")))
    }

    /// Like [`get`](Self::get) but also checks the shape.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&Tensor32> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(ModelError::Checkpoint(format!(
                "tensor `{name}` has shape {:?}, expected {:?}",
                t.shape, shape
            )));
        }
        Ok(t)
    }

    pub fn tid2eid(&self, layer: usize) -> Result<&[u32]> {
        self.tid2eid
            .get(&layer)
            .map(Vec::as_slice)
            .ok_or_else(|| ModelError::Checkpoint(format!("missing tensor `layers.{layer}.ffn.gate.tid2eid`")))
    }

    /// Total number of float parameters.
    pub fn num_params(&self) -> usize {
        self.tensors.values().map(Tensor32::numel).sum()
    }

    /// Check that every expected parameter is present with its shape and nothing else is.
    pub fn validate(&self) -> Result<()> {
        let expected = self.config.param_shapes();
        for (name, shape) in &expected {
            self.get_shaped(name, shape)?;
        }
        if self.tensors.len() != expected.len() {
            let known: std::collections::BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
            if let Some(extra) = self.tensors.keys().find(|k| !known.contains(k.as_str())) {
                return Err(ModelError::Checkpoint(format!("unexpected tensor `{extra}`")));
            }
        }
        for l in 0..self.config.n_hash_layers.min(self.config.n_layers) {
            let t = self.tid2eid(l)?;
            let k = self.config.n_activated_experts;
            if t.len() != self.config.vocab_size * k {
                return Err(ModelError::Checkpoint(format!(
                    "`layers.{l}.ffn.gate.tid2eid` has {} entries, expected {}",
                    t.len(),
                    self.config.vocab_size * k
                )));
            }
            if let Some(bad) = t.iter().find(|&&e| e as usize >= self.config.n_routed_experts) {
                return Err(ModelError::Checkpoint(format!(
                    "`layers.{l}.ffn.gate.tid2eid` names expert {bad} of {}",
                    self.config.n_routed_experts
                )));
            }
        }
        Ok(())
    }

    /// Fresh weights for training from scratch, reproducible from `seed`.
    ///
    /// Linear layers: N(0, 1/fan_in); output projections (`wo_b`, expert `w2`) further scaled
    /// by 1/sqrt(2·n_layers) so the residual streams start near identity; embedding N(0, 1)
    /// (every consumer normalises it); norms 1; sinks, biases and `ape` 0. mHC starts close
    /// to the "degenerate-safe" point (`pre` ≈ 0.5, `post` ≈ 1, `comb` ≈ uniform) with small
    /// random `fn` so the four streams can separate.
    pub fn random(config: &Config, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = SeededNormal::new(seed);
        let out_scale = 1.0 / (2.0 * config.n_layers as f64).sqrt();
        let mut tensors = BTreeMap::new();
        for (name, shape) in config.param_shapes() {
            let n: usize = shape.iter().product();
            let data = match Self::init_rule(&name, &shape, out_scale) {
                Init::Const(v) => vec![v; n],
                Init::Normal(std) => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
            };
            tensors.insert(name, Tensor32::new(shape, data));
        }
        let mut tid2eid = BTreeMap::new();
        for l in 0..config.n_hash_layers.min(config.n_layers) {
            tid2eid.insert(l, Self::random_hash_table(config, &mut rng));
        }
        Ok(ModelWeights { config: config.clone(), tensors, tid2eid, fp4: BTreeMap::new() })
    }

    /// How [`random`](Self::random) fills parameter `name` of `shape`; `out_scale` is
    /// 1/sqrt(2·n_layers).
    pub fn init_rule(name: &str, shape: &[usize], out_scale: f64) -> Init {
        let leaf = name.rsplit('.').next().unwrap_or("");
        if name.ends_with("norm.weight") {
            Init::Const(1.0)
        } else if name.ends_with("attn_sink") || name.ends_with(".bias") || leaf == "ape" {
            Init::Const(0.0)
        } else if name.ends_with("_scale") {
            Init::Const(1.0)
        } else if name.ends_with("_base") {
            Init::Const(0.0)
        } else if name.ends_with("_fn") {
            Init::Normal(0.02 / (shape.get(1).copied().unwrap_or(1) as f64).sqrt())
        } else if name == "embed.weight" {
            Init::Normal(1.0)
        } else if name == "head.weight" {
            Init::Normal(0.5 / (shape.get(1).copied().unwrap_or(1) as f64).sqrt())
        } else {
            let fan_in = shape.get(1).copied().unwrap_or(1) as f64;
            let mut std = 1.0 / fan_in.sqrt();
            if name.ends_with("wo_b.weight") || name.ends_with("w2.weight") {
                std *= out_scale;
            }
            Init::Normal(std)
        }
    }

    /// One random hash-routing table `[vocab, n_activated_experts]`: k distinct experts per
    /// token (partial Fisher-Yates), exactly `vocab · k` draws of `rng.next_u64()`.
    pub fn random_hash_table(config: &Config, rng: &mut SeededNormal) -> Vec<u32> {
        let k = config.n_activated_experts;
        let mut table = Vec::with_capacity(config.vocab_size * k);
        for _ in 0..config.vocab_size {
            let mut ids: Vec<u32> = (0..config.n_routed_experts as u32).collect();
            for i in 0..k {
                let j = i + (rng.next_u64() as usize) % (ids.len() - i);
                ids.swap(i, j);
            }
            table.extend_from_slice(&ids[..k]);
        }
        table
    }

    /// Names of the routed-expert matrices (the ones stored as FP4).
    pub fn is_routed_expert(name: &str) -> bool {
        name.contains(".ffn.experts.") && name.ends_with(".weight")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_weights_are_complete_and_reproducible() {
        let c = Config::tiny();
        let a = ModelWeights::random(&c, 7).unwrap();
        a.validate().unwrap();
        let b = ModelWeights::random(&c, 7).unwrap();
        assert_eq!(a.tensors, b.tensors);
        assert_eq!(a.tid2eid, b.tid2eid);
        let c2 = ModelWeights::random(&c, 8).unwrap();
        assert_ne!(a.tensors["embed.weight"], c2.tensors["embed.weight"]);
        assert_eq!(a.num_params() as u64, c.param_counts().total);
        // hash table rows are distinct experts
        for row in a.tid2eid[&0].chunks(c.n_activated_experts) {
            assert_ne!(row[0], row[1]);
        }
    }
}
