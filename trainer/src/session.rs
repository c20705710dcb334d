//! A training session: the trainable model, the optimizer, and the counters that make a run
//! resumable bit for bit (step, data cursor, seed). Checkpoints are directories
//! `<root>/<step>/` holding `model.safetensors` + `config.json` (F32), `optimizer.safetensors`,
//! `trainer_state.json` and, when Anticipatory Routing keeps state, `anticipatory.safetensors`
//! (router snapshot queue and spike-detector statistics); they are written under a temporary
//! name and renamed, and `<root>/latest` names the newest complete one.

use crate::anticipatory::{self, AnticipatoryState};
use crate::error::{Result, TrainError};
use crate::optim::{Group, OptimConfig, Optimizer, StepStats};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use model::checkpoint::{self, SaveFormat};
use model::train::{TrainModel, TrainOptions};
use model::{Decisions, ModelWeights};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Counters saved with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Counters {
    pub step: u64,
    /// Next data index (prompts or examples consumed).
    pub cursor: u64,
    pub seed: u64,
    /// Optimizer step count (Adam bias correction).
    pub optimizer_step: u64,
    /// Sampled tokens so far (GRPO/OPD accounting).
    pub sampled_tokens: u64,
    /// Stage-specific extra state.
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// Model + optimizer + counters.
pub struct Session {
    pub model: TrainModel,
    pub opt: Optimizer,
    pub counters: Counters,
    /// Step checkpoints kept by [`save`](Self::save) (0 = all).
    pub keep_checkpoints: usize,
    /// Anticipatory Routing state (router snapshots, spike detector), saved with checkpoints.
    pub anticipatory: Option<AnticipatoryState>,
    /// Checkpoint folder whose tokenizer files every step checkpoint carries (None: the
    /// byte tokenizer, no files).
    pub tokenizer_from: Option<PathBuf>,
}

impl Session {
    pub fn new(weights: &ModelWeights, options: TrainOptions, optim: OptimConfig, seed: u64) -> Result<Self> {
        let model = TrainModel::from_weights(weights, DType::F32, options)?;
        let shapes: BTreeMap<String, Vec<usize>> =
            model.vars().iter().map(|(n, v)| (n.clone(), v.as_tensor().dims().to_vec())).collect();
        let opt = Optimizer::new(optim, &shapes);
        Ok(Session {
            model,
            opt,
            counters: Counters { seed, ..Default::default() },
            keep_checkpoints: 2,
            anticipatory: None,
            tokenizer_from: None,
        })
    }

    /// Apply the gradients of `grads` with learning-rate multiplier `lr_scale`.
    pub fn step(&mut self, grads: &GradStore, lr_scale: f32) -> Result<StepStats> {
        let mut params = BTreeMap::new();
        let mut trained = Vec::new();
        for (name, var) in self.model.vars() {
            if self.opt.params.get(name).is_none_or(|p| p.group == Group::None) {
                continue;
            }
            if let Some(gt) = grads.get(var.as_tensor()) {
                // gradients are read where they live; a non-contiguous one is copied first
                let gt = if gt.is_contiguous() { gt.clone() } else { gt.contiguous()? };
                trained.push((name.clone(), gt));
                params.insert(name.clone(), var.as_tensor().flatten_all()?.to_vec1::<f32>()?);
            }
        }
        let reads: Vec<_> = trained.iter().map(|(name, t)| (name, t.storage_and_layout())).collect();
        let mut g: BTreeMap<String, &[f32]> = BTreeMap::new();
        for (name, (storage, layout)) in &reads {
            let (candle_core::Storage::Cpu(cpu), Some((a, b))) = (&**storage, layout.contiguous_offsets()) else {
                return Err(TrainError::Shape(format!("gradient of `{name}` is not a contiguous CPU tensor")));
            };
            g.insert((*name).clone(), &cpu.as_slice::<f32>()?[a..b]);
        }
        let stats = model::train::prof::time("optimizer", || self.opt.update(&mut params, &g, lr_scale))?;
        drop(g);
        drop(reads);
        for (name, data) in params {
            let var = &self.model.vars()[&name];
            let shape = var.as_tensor().dims().to_vec();
            var.set(&Tensor::from_vec(data, shape, self.model.device())?)?;
        }
        self.model.invalidate_cache();
        self.counters.optimizer_step = self.opt.step;
        Ok(stats)
    }

    /// Auxiliary-loss-free balancing: raise the router bias of under-loaded experts and lower
    /// it for over-loaded ones, `b_e += speed · sign(mean load − load_e)`, per biased layer.
    pub fn balance_router(&mut self, decisions: &[Decisions]) -> Result<()> {
        let cfg = self.model.config.clone();
        let k = cfg.n_activated_experts;
        let speed = self.opt.cfg.bias_update_speed;
        if speed == 0.0 {
            return Ok(());
        }
        for l in cfg.n_hash_layers..cfg.n_layers {
            let mut load = vec![0f32; cfg.n_routed_experts];
            for d in decisions {
                for r in d.routes.values() {
                    for &e in r.get(l * k..(l + 1) * k).unwrap_or(&[]) {
                        if let Some(x) = load.get_mut(e as usize) {
                            *x += 1.0;
                        }
                    }
                }
            }
            let total: f32 = load.iter().sum();
            if total == 0.0 {
                continue;
            }
            let mean = total / load.len() as f32;
            let name = format!("layers.{l}.ffn.gate.bias");
            let Some(var) = self.model.vars().get(&name) else {
                continue;
            };
            let mut b: Vec<f32> = var.as_tensor().to_vec1()?;
            for (bi, li) in b.iter_mut().zip(&load) {
                if *li < mean {
                    *bi += speed;
                } else if *li > mean {
                    *bi -= speed;
                }
            }
            let n = b.len();
            var.set(&Tensor::from_vec(b, n, self.model.device())?)?;
        }
        Ok(())
    }

    pub fn weights(&self) -> Result<ModelWeights> {
        Ok(self.model.to_weights()?)
    }

    /// Write a checkpoint to `root/<step>` and point `root/latest` at it.
    pub fn save(&self, root: &Path) -> Result<PathBuf> {
        let final_dir = root.join(format!("{:08}", self.counters.step));
        let tmp = root.join(format!(".{:08}.tmp", self.counters.step));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        checkpoint::save(&self.weights()?, &tmp, SaveFormat::F32, None)?;
        datasets::tokenizer::carry_tokenizer_files(self.tokenizer_from.as_deref(), &tmp)?;
        self.save_optimizer(&tmp.join("optimizer.safetensors"))?;
        if let Some(a) = &self.anticipatory {
            a.save(&tmp.join(anticipatory::STATE_FILE))?;
        }
        let state = serde_json::to_string_pretty(&self.counters).map_err(|e| TrainError::Input(e.to_string()))?;
        std::fs::write(tmp.join("trainer_state.json"), state).map_err(|e| TrainError::io(&tmp, e))?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
        let latest = root.join("latest");
        let latest_tmp = root.join(".latest.tmp");
        std::fs::write(&latest_tmp, format!("{:08}\n", self.counters.step))
            .map_err(|e| TrainError::io(&latest_tmp, e))?;
        std::fs::rename(&latest_tmp, &latest).map_err(|e| TrainError::io(&latest, e))?;
        self.prune(root)?;
        Ok(final_dir)
    }

    /// Remove all but the newest `keep_checkpoints` step directories under `root`.
    fn prune(&self, root: &Path) -> Result<()> {
        if self.keep_checkpoints == 0 {
            return Ok(());
        }
        let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
            .map_err(|e| TrainError::io(root, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.parse::<u64>().ok().filter(|_| name.len() == 8).map(|s| (s, e.path()))
            })
            .collect();
        steps.sort();
        let n = steps.len().saturating_sub(self.keep_checkpoints);
        for (_, p) in steps.into_iter().take(n) {
            std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
        }
        Ok(())
    }

    fn save_optimizer(&self, path: &Path) -> Result<()> {
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, st) in &self.opt.params {
            for (kind, data) in [("m", &st.m), ("v", &st.v)] {
                if !data.is_empty() {
                    bufs.push((
                        format!("{kind}.{name}"),
                        vec![data.len()],
                        data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ));
                }
            }
        }
        let views: Vec<(String, TensorView)> = bufs
            .iter()
            .map(|(n, s, b)| {
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| TrainError::Input(e.to_string()))
            })
            .collect::<Result<_>>()?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("optimizer_step".to_string(), self.opt.step.to_string());
        meta.insert("config".to_string(), serde_json::to_string(&self.opt.cfg).unwrap_or_default());
        checkpoint::serialize_to_file(views, Some(meta), path)
            .map_err(|e| TrainError::Checkpoint { path: path.to_path_buf(), msg: e.to_string() })
    }

    /// The newest complete checkpoint under `root`, if any.
    pub fn latest(root: &Path) -> Option<PathBuf> {
        let name = std::fs::read_to_string(root.join("latest")).ok()?;
        let dir = root.join(name.trim());
        dir.join("trainer_state.json").exists().then_some(dir)
    }

    /// Restore a session from a checkpoint directory written by [`save`](Self::save).
    pub fn load(dir: &Path, options: TrainOptions, optim: OptimConfig) -> Result<Self> {
        let w = checkpoint::load(dir)?;
        let mut s = Session::new(&w, options, optim, 0)?;
        let text = std::fs::read_to_string(dir.join("trainer_state.json")).map_err(|e| TrainError::io(dir, e))?;
        s.counters = serde_json::from_str(&text)
            .map_err(|e| TrainError::Checkpoint { path: dir.to_path_buf(), msg: format!("trainer_state.json: {e}") })?;
        let opt_path = dir.join("optimizer.safetensors");
        let bytes = std::fs::read(&opt_path).map_err(|e| TrainError::io(&opt_path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| TrainError::Checkpoint { path: opt_path.clone(), msg: e.to_string() })?;
        for (name, p) in s.opt.params.iter_mut() {
            for (kind, dst) in [("m", &mut p.m), ("v", &mut p.v)] {
                if dst.is_empty() {
                    continue;
                }
                let t = st.tensor(&format!("{kind}.{name}")).map_err(|_| TrainError::Checkpoint {
                    path: opt_path.clone(),
                    msg: format!("missing optimizer state `{kind}.{name}`"),
                })?;
                let vals: Vec<f32> =
                    t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                if vals.len() != dst.len() {
                    return Err(TrainError::Checkpoint {
                        path: opt_path.clone(),
                        msg: format!(
                            "optimizer state `{kind}.{name}` has {} values, expected {}",
                            vals.len(),
                            dst.len()
                        ),
                    });
                }
                *dst = vals;
            }
        }
        s.opt.step = s.counters.optimizer_step;
        let ar_path = dir.join(anticipatory::STATE_FILE);
        if ar_path.exists() {
            let a = AnticipatoryState::load(&ar_path)?;
            a.check_against(&s.model)
                .map_err(|e| TrainError::Checkpoint { path: ar_path.clone(), msg: e.to_string() })?;
            s.anticipatory = Some(a);
        }
        Ok(s)
    }
}
