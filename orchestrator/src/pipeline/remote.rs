//! The trainer's side of distributed work: rollout and teacher jobs go through a [`Queue`],
//! results come back through the run directory's stores (a shared filesystem), keyed by
//! `traj_id` / (`traj_id`, `teacher_id`) — so a job that is redelivered, resent or run twice
//! never produces a duplicate, and a job lost with a crashed Redis is simply resent.

use crate::queue::Queue;
use anyhow::{anyhow, bail, Context, Result};
use datasets::chat::Mode;
use datasets::store::{read_all, KeyIndex, ReadFilter, TeacherState, TeacherStateStore, Trajectory};
use datasets::Task;
use model::checkpoint::{self, SaveFormat};
use model::ModelWeights;
use rollout::RolloutJob;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ROLLOUT: &str = "rollout";
pub const TEACHER: &str = "teacher";
pub const REWARD: &str = "reward";

/// A rollout job message. Paths are relative to the run directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutMsg {
    pub job: RolloutJob,
    pub policy_dir: PathBuf,
    pub store_dir: PathBuf,
    /// Leave scoring to reward workers.
    #[serde(default)]
    pub remote_scoring: bool,
}

/// A teacher job: head inputs of `teacher_id` over some trajectories of (stage, step).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherMsg {
    pub teacher_id: String,
    /// Absolute, or relative to the run directory.
    pub checkpoint: PathBuf,
    pub stage: String,
    pub step: u64,
    pub traj_store: PathBuf,
    pub states_store: PathBuf,
    pub traj_ids: Vec<String>,
}

/// Unscored trajectories for a reward worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewardMsg {
    pub store_dir: PathBuf,
    pub items: Vec<(Task, Mode, Trajectory)>,
}

/// Shared settings of the trainer-side clients.
#[derive(Clone)]
pub struct Remote {
    pub queue: Arc<dyn Queue>,
    pub run_dir: PathBuf,
    pub job_prompts: usize,
    pub resend_after: Duration,
    pub queue_cap: usize,
    pub remote_scoring: bool,
    /// Set when local worker threads died: waiting would never end.
    pub workers_failed: Arc<AtomicBool>,
}

impl Remote {
    fn push_with_backpressure(&self, topic: &str, payload: &str) -> Result<()> {
        let mut warned = false;
        while self.queue.depth(topic)? >= self.queue_cap {
            if !warned {
                tracing::info!(topic, cap = self.queue_cap, "queue full, waiting (backpressure)");
                warned = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.queue.push(topic, payload)?;
        Ok(())
    }

    fn check_workers(&self) -> Result<()> {
        if self.workers_failed.load(Ordering::Relaxed) {
            bail!("a local worker stopped with an error (see the log above)");
        }
        Ok(())
    }
}

/// Relative path of `p` inside the run directory (absolute paths elsewhere stay as they are).
pub fn rel(run_dir: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(run_dir).map(Path::to_path_buf).unwrap_or_else(|_| p.to_path_buf())
}

/// Rollouts through rollout workers.
pub struct QueueRollouts {
    pub remote: Remote,
    /// Trajectory store of the stage (inside the run directory).
    pub store_dir: PathBuf,
    index: Option<KeyIndex>,
    depth: Option<usize>,
}

impl QueueRollouts {
    pub fn new(remote: Remote, store_dir: PathBuf) -> Self {
        QueueRollouts { remote, store_dir, index: None, depth: None }
    }

    /// Export the policy for the workers (FP4 rollout layout) and publish its version.
    fn publish(&self, stage: &str, version: u64, policy: &ModelWeights) -> Result<PathBuf> {
        let root = self.remote.run_dir.join("policy").join(stage);
        let dir = root.join(format!("v{version:06}"));
        if !dir.join("config.json").exists() {
            let tmp = root.join(format!(".v{version:06}.tmp"));
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).ok();
            }
            checkpoint::save(policy, &tmp, SaveFormat::Rollout, None)?;
            if dir.exists() {
                std::fs::remove_dir_all(&dir).ok();
            }
            std::fs::rename(&tmp, &dir).with_context(|| format!("publishing {}", dir.display()))?;
        }
        self.remote.queue.set(&format!("policy:{stage}"), &serde_json::json!({"version": version}).to_string())?;
        // keep the two newest versions (a worker may still be loading the previous one)
        if let Ok(rd) = std::fs::read_dir(&root) {
            let mut vs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('v')))
                .collect();
            vs.sort();
            let n = vs.len().saturating_sub(2);
            for p in vs.into_iter().take(n) {
                std::fs::remove_dir_all(&p).ok();
            }
        }
        Ok(dir)
    }
}

impl trainer::grpo::Rollouts for QueueRollouts {
    fn sample(&mut self, job: &RolloutJob, policy: &ModelWeights) -> trainer::Result<Vec<Trajectory>> {
        self.sample_remote(job, policy).map_err(|e| trainer::TrainError::Input(format!("{e:#}")))
    }

    fn queue_depth(&self) -> Option<usize> {
        self.depth
    }
}

impl QueueRollouts {
    fn sample_remote(&mut self, job: &RolloutJob, policy: &ModelWeights) -> Result<Vec<Trajectory>> {
        let r = self.remote.clone();
        let policy_dir = self.publish(&job.stage, job.policy_version, policy)?;
        let mut chunks: Vec<(String, Vec<String>)> = Vec::new();
        let step = job.job_id.clone();
        let per = r.job_prompts.max(1);
        let mut payloads = Vec::new();
        for (k, start) in (0..job.tasks.len()).step_by(per).enumerate() {
            let end = (start + per).min(job.tasks.len());
            let mut sub = job.clone();
            sub.job_id = format!("{step}/c{k}");
            sub.tasks = job.tasks[start..end].to_vec();
            sub.modes = job.modes[start..end].to_vec();
            sub.teachers = job.teachers.get(start..end).map(<[_]>::to_vec).unwrap_or_default();
            let ids: Vec<String> = sub
                .tasks
                .iter()
                .zip(&sub.modes)
                .flat_map(|(t, &m)| {
                    (0..job.n).map(move |g| rollout::traj_id(&job.run, &job.stage, job.step, &t.prompt_id, m, g))
                })
                .collect();
            let msg = RolloutMsg {
                job: sub,
                policy_dir: rel(&r.run_dir, &policy_dir),
                store_dir: rel(&r.run_dir, &self.store_dir),
                remote_scoring: r.remote_scoring,
            };
            payloads.push(serde_json::to_string(&msg)?);
            chunks.push((format!("{step}/c{k}"), ids));
        }
        if self.index.is_none() {
            self.index = Some(KeyIndex::new(&self.store_dir, &["traj_id"]));
        }
        let mut sent = vec![Instant::now(); chunks.len()];
        let mut done = vec![false; chunks.len()];
        let index = self.index.as_mut().ok_or_else(|| anyhow!("index"))?;
        index.refresh()?;
        for (i, p) in payloads.iter().enumerate() {
            // already there (a resumed run re-asks for a step it had sampled): skip
            if chunks[i].1.iter().all(|id| index.contains(id)) {
                done[i] = true;
                continue;
            }
            r.push_with_backpressure(ROLLOUT, p)?;
        }
        self.depth = r.queue.depth(ROLLOUT).ok();
        let started = Instant::now();
        let mut last_note = Instant::now();
        while done.iter().any(|d| !d) {
            r.check_workers()?;
            std::thread::sleep(Duration::from_millis(50));
            index.refresh()?;
            for i in 0..chunks.len() {
                if !done[i] && chunks[i].1.iter().all(|id| index.contains(id)) {
                    done[i] = true;
                }
                if !done[i] && sent[i].elapsed() > r.resend_after {
                    tracing::warn!(job = %chunks[i].0, "no results after {:?}: pushing the job again", r.resend_after);
                    r.push_with_backpressure(ROLLOUT, &payloads[i])?;
                    sent[i] = Instant::now();
                }
            }
            if last_note.elapsed() > Duration::from_secs(30) {
                let left = done.iter().filter(|d| !**d).count();
                tracing::info!(
                    "waiting for rollout workers: {left} of {} jobs outstanding after {:.0}s (queue depth {})",
                    chunks.len(),
                    started.elapsed().as_secs_f64(),
                    r.queue.depth(ROLLOUT).unwrap_or(0)
                );
                last_note = Instant::now();
            }
        }
        let want: HashSet<&String> = chunks.iter().flat_map(|c| c.1.iter()).collect();
        let filter = ReadFilter { stage: Some(job.stage.clone()), steps: Some((job.step, job.step)), domain: None };
        let mut got: HashMap<String, Trajectory> = read_all(&self.store_dir, &filter)?
            .into_iter()
            .filter(|t| want.contains(&t.traj_id))
            .map(|t| (t.traj_id.clone(), t))
            .collect();
        let mut out = Vec::with_capacity(want.len());
        for (_, ids) in &chunks {
            for id in ids {
                out.push(got.remove(id).ok_or_else(|| anyhow!("trajectory {id} listed but not readable"))?);
            }
        }
        Ok(out)
    }
}

/// Teacher states through teacher workers; heads loaded here one at a time.
pub struct QueueTeachers {
    pub remote: Remote,
    pub registry: teachers::Registry,
    pub traj_store: PathBuf,
    pub states_store: PathBuf,
    head: Option<(usize, Arc<Vec<f32>>, usize)>,
    index: KeyIndex,
}

impl QueueTeachers {
    pub fn new(remote: Remote, registry: teachers::Registry, traj_store: PathBuf, states_store: PathBuf) -> Self {
        let index = KeyIndex::new(&states_store, &["traj_id", "teacher_id"]);
        QueueTeachers { remote, registry, traj_store, states_store, head: None, index }
    }

    fn states_remote(
        &mut self,
        idx: usize,
        trajs: &[&Trajectory],
        stage: &str,
        step: u64,
    ) -> Result<HashMap<String, TeacherState>> {
        let spec = self.registry.teachers.get(idx).ok_or_else(|| anyhow!("no teacher #{idx}"))?.clone();
        let r = self.remote.clone();
        std::fs::create_dir_all(&self.states_store)?;
        self.index.refresh()?;
        let missing: Vec<String> = trajs
            .iter()
            .map(|t| t.traj_id.clone())
            .filter(|id| !self.index.contains(&KeyIndex::pair(id, &spec.id)))
            .collect();
        let mut payloads = Vec::new();
        for ids in missing.chunks(64) {
            let msg = TeacherMsg {
                teacher_id: spec.id.clone(),
                checkpoint: rel(&r.run_dir, &spec.checkpoint),
                stage: stage.to_string(),
                step,
                traj_store: rel(&r.run_dir, &self.traj_store),
                states_store: rel(&r.run_dir, &self.states_store),
                traj_ids: ids.to_vec(),
            };
            let p = serde_json::to_string(&msg)?;
            r.push_with_backpressure(TEACHER, &p)?;
            payloads.push((p, ids.to_vec(), Instant::now()));
        }
        while !payloads.is_empty() {
            r.check_workers()?;
            std::thread::sleep(Duration::from_millis(50));
            self.index.refresh()?;
            let index = &self.index;
            payloads.retain(|(_, ids, _)| !ids.iter().all(|id| index.contains(&KeyIndex::pair(id, &spec.id))));
            for (p, _, sent) in payloads.iter_mut() {
                if sent.elapsed() > r.resend_after {
                    tracing::warn!(teacher = %spec.id, "no teacher states after {:?}: pushing the job again", r.resend_after);
                    r.push_with_backpressure(TEACHER, p)?;
                    *sent = Instant::now();
                }
            }
        }
        let want: HashSet<String> = trajs.iter().map(|t| t.traj_id.clone()).collect();
        Ok(TeacherStateStore::open(&self.states_store)?.read(&spec.id, Some(&want))?)
    }
}

impl trainer::opd::TeacherStates for QueueTeachers {
    fn states(
        &mut self,
        idx: usize,
        trajs: &[&Trajectory],
        stage: &str,
        step: u64,
    ) -> trainer::Result<HashMap<String, TeacherState>> {
        self.states_remote(idx, trajs, stage, step).map_err(|e| trainer::TrainError::Input(format!("{e:#}")))
    }

    fn head(&mut self, idx: usize) -> trainer::Result<(Arc<Vec<f32>>, usize)> {
        if let Some((i, h, d)) = &self.head {
            if *i == idx {
                return Ok((h.clone(), *d));
            }
        }
        self.head = None; // one head resident at a time
        let spec =
            self.registry.teachers.get(idx).ok_or_else(|| trainer::TrainError::Input(format!("no teacher #{idx}")))?;
        let w = checkpoint::load(&spec.checkpoint)?;
        let h = Arc::new(
            w.tensors
                .get("head.weight")
                .ok_or_else(|| trainer::TrainError::Input(format!("teacher {} has no head.weight", spec.id)))?
                .data
                .clone(),
        );
        let d = w.config.dim;
        self.head = Some((idx, h.clone(), d));
        Ok((h, d))
    }

    fn id(&self, idx: usize) -> String {
        self.registry.teachers.get(idx).map(|t| t.id.clone()).unwrap_or_default()
    }
}
