//! Anticipatory Routing: route with a Δt-old router while the training loss is spiking.
//!
//! DeepSeek-V4 (report §4.2.3, read through secondary walkthroughs; see
//! `reference/algorithms.md` §7) traced loss spikes to MoE outliers amplified by routing. At
//! step t the backbone computes features with the current θ_t, but the top-k expert indices
//! come from historical parameters θ_{t−Δt}; the mechanism is switched on automatically when
//! a loss spike is detected, kept for a while, then switched off. V4 publishes neither Δt nor
//! the spike rule, so the choices below are ours.
//!
//! **Router snapshots.** The router of a biased-top-k layer l is `R^l = (W_g^l, b^l)`
//! (`layers.l.ffn.gate.weight`, `.bias`); hash layers choose experts from the token id and are
//! never snapshotted. Right before optimizer update u the trainer pushes `R_u` (the router
//! the update's forward used) onto a queue holding the last Δt snapshots, so before update u
//! the queue is `[R_{u−Δt}, …, R_{u−1}]`. Δt counts optimizer updates (in GRPO: every
//! minibatch of every epoch). When active, update u routes with
//!
//! ```text
//! R* = R_{u−Δt}           (queue full)
//!      oldest snapshot    (fewer than Δt updates so far)
//!      R_u                (Δt = 0 or no update yet)
//! e*(x) = top-k_e ( sqrt(softplus(x·W*_e)) + b*_e )        per token, per biased layer
//! ```
//! with x the token's FFN input computed by the **current** backbone θ_u (a forward pass of
//! the minibatch with the router swapped for R*, restored bit for bit afterwards). The
//! training forward then replays e* (the Keep Routing mechanism, §5.5): gate weights are
//! `sqrt(softplus(x·W_u,e))` of the **current** router at those indices, so the current router
//! still gets gradients. Δt = 0 is bit-identical to normal routing (R* = R_u, same batch).
//! Default Δt = 2 (a guess; V4 gives no value): the smallest delay that reaches behind the
//! last update of the spiking step when a step makes one or two updates.
//! Deviation from V4: V4 prefetches the batch Δt steps early and routes it with all of
//! θ_{t−Δt}; on-policy RL has no batch before it is sampled, and snapshots of the whole
//! model would cost Δt model copies in memory and in every checkpoint, so only the router is
//! delayed (the part V4's diagnosis blames).
//!
//! **Spike detector.** One signal value s_t per training step (GRPO: the mean loss over the
//! step's updates, or the mean gradient norm). With the trailing window of the last W values
//! (excluding s_t), its mean μ and population standard deviation σ:
//!
//! ```text
//! spike(t)  ⇔  n ≥ n_min  ∧  s_t > μ + max(k·σ, δ_min)          (non-finite s_t: spike)
//! ```
//! then s_t joins the window (finite values only; spikes included, so a lasting level shift
//! is absorbed after about W steps instead of re-triggering forever). A decreasing loss stays
//! below its recent mean, and noise bounded like its own spread stays under μ + 3σ, so a
//! smooth curve does not trigger (tested), while a jump of several σ does. Defaults: W = 20,
//! n_min = 10, k = 3, δ_min = 1e-3 (so a flat curve's ulp-level noise is not a spike).
//!
//! **Activation.** A spike at step t makes steps t+1 … t+H anticipatory (H = `hold_steps`,
//! default 10, re-armed by every further spike). With `release_on_recovery`, an active step
//! whose signal is back at or below μ* (the window mean when the last spike fired) ends the
//! period early. `trigger = always` routes every step with the Δt-old router (ablations, the
//! Δt = 0 invariant); `off` keeps no state. V4 also rolls back a short way on a spike; we do
//! not (rollback needs a checkpoint policy of its own).
//!
//! **Checkpoints.** The queue, the window, the remaining active steps, μ* and the spike count
//! are written to `anticipatory.safetensors` in the checkpoint directory (router tensors F32,
//! window F64, scalars as integers / f64 bit patterns), so a resumed run is bit-identical.

use crate::error::{Result, TrainError};
use candle_core::{DType, Tensor};
use model::train::{SeqInput, TrainModel};
use model::weights::Tensor32;
use model::{Decisions, ModelWeights};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::str::FromStr;

/// File name of the state inside a checkpoint directory.
pub const STATE_FILE: &str = "anticipatory.safetensors";
const FORMAT: &str = "v4post-anticipatory-1";

/// When the Δt-old router is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Never (no snapshots are kept).
    #[default]
    Off,
    /// For `hold_steps` steps after each detected loss spike (V4).
    Spike,
    /// Every step (ablations; the Δt = 0 invariant).
    Always,
}

impl Trigger {
    /// The spellings `FromStr` takes (pipeline files and `--anticipatory`).
    pub const NAMES: [&'static str; 3] = ["off", "spike", "always"];
}

impl FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "off" => Ok(Trigger::Off),
            "spike" => Ok(Trigger::Spike),
            "always" => Ok(Trigger::Always),
            o => Err(format!("unknown anticipatory trigger `{o}` (off, spike, always)")),
        }
    }
}

/// What the spike detector watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpikeSignal {
    /// The step's mean training loss.
    #[default]
    Loss,
    /// The step's mean gradient norm (before clipping).
    GradNorm,
}

impl SpikeSignal {
    /// The spellings `FromStr` takes (pipeline files and `--spike-signal`).
    pub const NAMES: [&'static str; 2] = ["loss", "grad_norm"];
}

impl FromStr for SpikeSignal {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "loss" => Ok(SpikeSignal::Loss),
            "grad_norm" => Ok(SpikeSignal::GradNorm),
            o => Err(format!("unknown spike signal `{o}` (loss, grad_norm)")),
        }
    }
}

/// Spike rule `s_t > μ + max(k·σ, min_rise)` over a trailing window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpikeConfig {
    pub signal: SpikeSignal,
    /// Trailing window W (steps).
    pub window: usize,
    /// Values needed in the window before anything counts as a spike.
    pub min_history: usize,
    /// Standard deviations above the window mean.
    pub k: f64,
    /// Smallest absolute rise above the mean that counts.
    pub min_rise: f64,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        SpikeConfig { signal: SpikeSignal::Loss, window: 20, min_history: 10, k: 3.0, min_rise: 1e-3 }
    }
}

/// Anticipatory Routing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnticipatoryConfig {
    pub trigger: Trigger,
    /// Router age Δt in optimizer updates.
    pub dt: u64,
    /// Steps kept anticipatory after a spike.
    pub hold_steps: u64,
    /// End the period early once the signal is back at the pre-spike mean.
    pub release_on_recovery: bool,
    pub detector: SpikeConfig,
}

impl Default for AnticipatoryConfig {
    fn default() -> Self {
        AnticipatoryConfig {
            trigger: Trigger::Off,
            dt: 2,
            hold_steps: 10,
            release_on_recovery: false,
            detector: SpikeConfig::default(),
        }
    }
}

impl AnticipatoryConfig {
    /// Reject settings the detector cannot work with.
    pub fn validate(&self) -> Result<()> {
        let d = &self.detector;
        let bad = |m: &str| Err(TrainError::Input(format!("anticipatory routing: {m}")));
        if d.window == 0 || d.min_history == 0 || d.min_history > d.window {
            return bad("the spike window needs 1 ≤ min_history ≤ window");
        }
        if !(d.k.is_finite() && d.k >= 0.0 && d.min_rise.is_finite() && d.min_rise >= 0.0) {
            return bad("spike k and min_rise must be finite and ≥ 0");
        }
        if self.trigger == Trigger::Spike && self.hold_steps == 0 {
            return bad("hold_steps must be ≥ 1 with trigger = spike");
        }
        Ok(())
    }
}

/// Router parameters of the biased-top-k layers, by name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouterSnapshot {
    pub tensors: BTreeMap<String, Tensor32>,
}

/// Names of the parameters that choose experts: `layers.l.ffn.gate.{weight,bias}` of every
/// non-hash layer present in `names`.
pub fn router_param_names<'a>(
    config: &model::Config,
    names: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = String> + 'a {
    let layers: Vec<usize> = (0..config.n_layers).filter(|&l| !config.is_hash_layer(l)).collect();
    layers
        .into_iter()
        .flat_map(|l| ["weight", "bias"].map(|p| format!("layers.{l}.ffn.gate.{p}")))
        .filter(move |n| names(n))
}

impl RouterSnapshot {
    /// Copy the current router of `model` (an F32 training model).
    pub fn capture(model: &TrainModel) -> Result<Self> {
        require_f32(model)?;
        let mut tensors = BTreeMap::new();
        for name in router_param_names(&model.config, |n| model.vars().contains_key(n)) {
            let t = model.var(&name)?;
            tensors.insert(name, Tensor32::new(t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?));
        }
        Ok(RouterSnapshot { tensors })
    }

    /// The router of plain weights.
    pub fn from_weights(w: &ModelWeights) -> Self {
        let tensors = router_param_names(&w.config, |n| w.tensors.contains_key(n))
            .filter_map(|n| w.tensors.get(&n).cloned().map(|t| (n, t)))
            .collect();
        RouterSnapshot { tensors }
    }

    /// Overwrite the router tensors of `w` with this snapshot.
    pub fn apply_to_weights(&self, w: &mut ModelWeights) -> Result<()> {
        for (name, t) in &self.tensors {
            let dst = w.tensors.get_mut(name).ok_or_else(|| missing(name))?;
            if dst.shape != t.shape {
                return Err(shape_mismatch(name, &t.shape, &dst.shape));
            }
            *dst = t.clone();
        }
        Ok(())
    }

    /// Overwrite the router `Var`s of `model` (router tensors are never cached by the model,
    /// so no cache needs invalidating).
    fn apply(&self, model: &TrainModel) -> Result<()> {
        self.check_against(model)?;
        for (name, t) in &self.tensors {
            let var = model.vars().get(name).ok_or_else(|| missing(name))?;
            var.set(&Tensor::from_slice(&t.data, t.shape.as_slice(), model.device())?)?;
        }
        Ok(())
    }

    /// Same names and shapes as the router of `model`.
    fn check_against(&self, model: &TrainModel) -> Result<()> {
        let expected: Vec<String> = router_param_names(&model.config, |n| model.vars().contains_key(n)).collect();
        if expected.len() != self.tensors.len() || expected.iter().any(|n| !self.tensors.contains_key(n)) {
            return Err(TrainError::Shape(format!(
                "router snapshot holds {:?}, the model's router is {expected:?}",
                self.tensors.keys().collect::<Vec<_>>()
            )));
        }
        for (name, t) in &self.tensors {
            let dims = model.var(name)?.dims().to_vec();
            if dims != t.shape {
                return Err(shape_mismatch(name, &t.shape, &dims));
            }
        }
        Ok(())
    }
}

fn missing(name: &str) -> TrainError {
    TrainError::Shape(format!("router snapshot: the model has no parameter `{name}`"))
}

fn shape_mismatch(name: &str, got: &[usize], want: &[usize]) -> TrainError {
    TrainError::Shape(format!("router snapshot `{name}` has shape {got:?}, the model's is {want:?}"))
}

fn require_f32(model: &TrainModel) -> Result<()> {
    if model.dtype() != DType::F32 {
        return Err(TrainError::Input(format!(
            "anticipatory routing swaps router tensors exactly only in an F32 model (this one is {:?})",
            model.dtype()
        )));
    }
    Ok(())
}

/// Expert choices of `batch` made by `model`'s current backbone with `router` in place of
/// its own router (restored bit for bit before returning, also on error). Indexer
/// selections are not returned: only expert routing is anticipatory.
pub fn routes_with_router(model: &TrainModel, router: &RouterSnapshot, batch: &[SeqInput]) -> Result<Vec<Decisions>> {
    let current = RouterSnapshot::capture(model)?;
    router.apply(model)?;
    // same sequences (and packing), nothing replayed
    let free: Vec<SeqInput> = batch.iter().map(|s| SeqInput { forced: None, ..s.clone() }).collect();
    let out = model.forward(&free);
    let restored = current.apply(model);
    let out = out?;
    restored?;
    Ok(out.decisions.into_iter().map(|d| Decisions { routes: d.routes, topk: Default::default() }).collect())
}

/// The trailing window of the spike rule.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpikeDetector {
    window: VecDeque<f64>,
}

impl SpikeDetector {
    /// Values in the window, oldest first.
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.window.iter().copied()
    }

    /// Mean and population standard deviation of the window (None when empty).
    pub fn stats(&self) -> Option<(f64, f64)> {
        let n = self.window.len();
        if n == 0 {
            return None;
        }
        let mean = self.window.iter().sum::<f64>() / n as f64;
        let var = self.window.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        Some((mean, var.sqrt()))
    }

    /// Whether `x` is a spike against the current window (before `x` joins it).
    pub fn is_spike(&self, x: f64, cfg: &SpikeConfig) -> bool {
        if !x.is_finite() {
            return true;
        }
        match self.stats() {
            Some((mean, std)) if self.window.len() >= cfg.min_history => x > mean + (cfg.k * std).max(cfg.min_rise),
            _ => false,
        }
    }

    /// Add a finite value, keeping the last `window`.
    pub fn push(&mut self, x: f64, cfg: &SpikeConfig) {
        if x.is_finite() {
            self.window.push_back(x);
        }
        self.trim(cfg.window);
    }

    fn trim(&mut self, w: usize) {
        while self.window.len() > w {
            self.window.pop_front();
        }
    }
}

/// What [`AnticipatoryState::end_step`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepOutcome {
    /// This step's signal was a spike.
    pub spike: bool,
    /// The next step routes with the Δt-old router.
    pub active_next: bool,
}

/// Everything Anticipatory Routing carries between steps (saved with checkpoints).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnticipatoryState {
    /// `[R_{u−Δt}, …, R_{u−1}]` before update u (fewer at the start).
    pub queue: VecDeque<RouterSnapshot>,
    pub detector: SpikeDetector,
    /// Anticipatory steps left (trigger = spike).
    pub remaining: u64,
    /// Window mean when the last spike fired (the recovery target).
    pub baseline: f64,
    /// Spikes seen so far.
    pub spikes: u64,
}

impl AnticipatoryState {
    /// Fit state restored from a checkpoint to (possibly changed) settings.
    pub fn conform(&mut self, cfg: &AnticipatoryConfig) {
        while self.queue.len() as u64 > cfg.dt {
            self.queue.pop_front();
        }
        self.detector.trim(cfg.detector.window);
    }

    /// Whether the current step routes with the Δt-old router.
    pub fn is_active(&self, cfg: &AnticipatoryConfig) -> bool {
        match cfg.trigger {
            Trigger::Off => false,
            Trigger::Always => true,
            Trigger::Spike => self.remaining > 0,
        }
    }

    /// The router of the next update's routing: `R_{u−Δt}` (or the oldest kept); None = the
    /// model's current router.
    pub fn routing_router(&self, cfg: &AnticipatoryConfig) -> Option<&RouterSnapshot> {
        if cfg.dt == 0 {
            None
        } else {
            self.queue.front()
        }
    }

    /// Expert choices for the next update's minibatch with the Δt-old router.
    pub fn routes(&self, model: &TrainModel, cfg: &AnticipatoryConfig, batch: &[SeqInput]) -> Result<Vec<Decisions>> {
        match self.routing_router(cfg) {
            Some(r) => routes_with_router(model, r, batch),
            None => routes_with_router(model, &RouterSnapshot::capture(model)?, batch),
        }
    }

    /// Record the router an optimizer update is about to change (call right before it).
    pub fn record_update(&mut self, model: &TrainModel, cfg: &AnticipatoryConfig) -> Result<()> {
        if cfg.dt == 0 {
            self.queue.clear();
            return Ok(());
        }
        self.queue.push_back(RouterSnapshot::capture(model)?);
        self.conform(cfg);
        Ok(())
    }

    /// Feed the step's signal (None: the step made no update) and advance the activation.
    pub fn end_step(&mut self, signal: Option<f64>, cfg: &AnticipatoryConfig) -> StepOutcome {
        let was_active = self.remaining > 0;
        self.remaining = self.remaining.saturating_sub(1);
        let mut spike = false;
        if let Some(x) = signal {
            if cfg.release_on_recovery && was_active && x <= self.baseline {
                self.remaining = 0;
            }
            spike = self.detector.is_spike(x, &cfg.detector);
            if spike {
                self.spikes += 1;
                self.remaining = cfg.hold_steps;
                self.baseline = self.detector.stats().map_or(f64::INFINITY, |s| s.0);
            }
            self.detector.push(x, &cfg.detector);
        }
        StepOutcome { spike, active_next: self.is_active(cfg) }
    }

    /// Write the state to `path` (safetensors).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, snap) in self.queue.iter().enumerate() {
            for (name, t) in &snap.tensors {
                let bytes = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
                bufs.push((format!("queue.{i:04}.{name}"), Dtype::F32, t.shape.clone(), bytes));
            }
        }
        let window: Vec<u8> = self.detector.window.iter().flat_map(|x| x.to_le_bytes()).collect();
        bufs.push(("detector.window".into(), Dtype::F64, vec![self.detector.window.len()], window));
        let views: Vec<(String, TensorView)> = bufs
            .iter()
            .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| ckpt_err(path, e.to_string()))?;
        let meta: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("queue_len", self.queue.len().to_string()),
            ("remaining", self.remaining.to_string()),
            ("baseline_bits", self.baseline.to_bits().to_string()),
            ("spikes", self.spikes.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        model::checkpoint::serialize_to_file(views, Some(meta), path).map_err(|e| ckpt_err(path, e.to_string()))
    }

    /// Read a state written by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| ckpt_err(path, e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ckpt_err(path, e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(ckpt_err(path, format!("not an anticipatory-routing state (format {FORMAT} expected)")));
        }
        let int = |k: &str| -> Result<u64> {
            meta.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| ckpt_err(path, format!("metadata `{k}` is missing or not an integer")))
        };
        let queue_len = int("queue_len")? as usize;
        let mut queue: VecDeque<RouterSnapshot> = (0..queue_len).map(|_| RouterSnapshot::default()).collect();
        let mut window = None;
        for (name, view) in st.tensors() {
            if name == "detector.window" {
                window = Some(decode_f64(path, &name, &view)?);
                continue;
            }
            let (i, param) =
                parse_queue_name(&name).ok_or_else(|| ckpt_err(path, format!("unexpected tensor `{name}`")))?;
            let snap = queue
                .get_mut(i)
                .ok_or_else(|| ckpt_err(path, format!("`{name}` is beyond the queue length {queue_len}")))?;
            snap.tensors
                .insert(param.to_string(), Tensor32::new(view.shape().to_vec(), decode_f32(path, &name, &view)?));
        }
        let window = window.ok_or_else(|| ckpt_err(path, "missing `detector.window`".into()))?;
        Ok(AnticipatoryState {
            queue,
            detector: SpikeDetector { window: window.into() },
            remaining: int("remaining")?,
            baseline: f64::from_bits(int("baseline_bits")?),
            spikes: int("spikes")?,
        })
    }

    /// Every snapshot matches the router of `model`.
    pub fn check_against(&self, model: &TrainModel) -> Result<()> {
        self.queue.iter().try_for_each(|s| s.check_against(model))
    }
}

fn ckpt_err(path: &Path, msg: String) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), msg }
}

/// `queue.0003.layers.2.ffn.gate.weight` → (3, `layers.2.ffn.gate.weight`).
fn parse_queue_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("queue.")?;
    let (i, param) = rest.split_once('.')?;
    Some((i.parse().ok()?, param))
}

fn decode_f32(path: &Path, name: &str, v: &TensorView) -> Result<Vec<f32>> {
    if v.dtype() != Dtype::F32 {
        return Err(ckpt_err(path, format!("`{name}` is {:?}, expected F32", v.dtype())));
    }
    Ok(v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn decode_f64(path: &Path, name: &str, v: &TensorView) -> Result<Vec<f64>> {
    if v.dtype() != Dtype::F64 {
        return Err(ckpt_err(path, format!("`{name}` is {:?}, expected F64", v.dtype())));
    }
    Ok(v.data().chunks_exact(8).map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_round_trip() {
        assert_eq!(parse_queue_name("queue.0003.layers.2.ffn.gate.weight"), Some((3, "layers.2.ffn.gate.weight")));
        assert_eq!(parse_queue_name("detector.window"), None);
    }

    #[test]
    fn validate_rejects_unusable_detectors() {
        let mut c = AnticipatoryConfig::default();
        assert!(c.validate().is_ok());
        c.detector.min_history = c.detector.window + 1;
        assert!(c.validate().is_err());
        let c = AnticipatoryConfig { trigger: Trigger::Spike, hold_steps: 0, ..Default::default() };
        assert!(c.validate().is_err());
    }
}
