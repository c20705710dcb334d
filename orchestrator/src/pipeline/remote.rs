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

    /// Start watching `topic`'s dead letters: only those after the ones there now can be
    /// of this wait (a resumed run may find older ones with the same payloads).
    fn dead_watch(&self, topic: &'static str) -> Result<DeadWatch> {
        let seen = self.queue.dead_letters(topic)?.len();
        Ok(DeadWatch { topic, seen, last: Instant::now() })
    }

    /// Fail when one of `ours` (the payloads pushed) was given up on by the queue: a job
    /// failing on every delivery would otherwise be waited for (and resent) forever.
    fn check_dead<'a>(&self, w: &mut DeadWatch, ours: impl IntoIterator<Item = &'a String>) -> Result<()> {
        if w.last.elapsed() < DEAD_CHECK_EVERY {
            return Ok(());
        }
        w.last = Instant::now();
        let dead = self.queue.dead_letters(w.topic)?;
        let ours: HashSet<&String> = ours.into_iter().collect();
        let fresh = dead.get(w.seen..).unwrap_or_default();
        if let Some(d) = fresh.iter().find(|d| ours.contains(&d.payload)) {
            bail!(
                "a {} job failed {} times and was moved to the dead-letter list (message {}): {}",
                w.topic,
                d.deliveries,
                d.id,
                d.error
            );
        }
        Ok(())
    }
}

/// How often a waiting trainer reads the dead letters.
const DEAD_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Position in a topic's dead letters (see [`Remote::check_dead`]).
struct DeadWatch {
    topic: &'static str,
    seen: usize,
    last: Instant,
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
        let root = self.remote.run_dir.join("policy").join(datasets::safe_component(stage));
        let dir = root.join(format!("v{version:06}"));
        if !dir.join("config.json").exists() {
            let tmp = root.join(format!(".v{version:06}.tmp"));
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).ok();
            }
            checkpoint::save(policy, &tmp, SaveFormat::Rollout, None)?;
            // the run's tokenizer goes with the policy (workers read it from there)
            crate::models::carry_tokenizer(Some(self.remote.run_dir.as_path()), &tmp)?;
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

impl trainer::backends::Rollouts for QueueRollouts {
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
        let mut dead = r.dead_watch(ROLLOUT)?;
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
            r.check_dead(&mut dead, payloads.iter().zip(&done).filter(|(_, d)| !**d).map(|(p, _)| p))?;
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

/// Teacher states through teacher workers; heads read here (OPD keeps each for a step).
pub struct QueueTeachers {
    pub remote: Remote,
    pub registry: teachers::Registry,
    pub traj_store: PathBuf,
    pub states_store: PathBuf,
    index: KeyIndex,
}

impl QueueTeachers {
    pub fn new(remote: Remote, registry: teachers::Registry, traj_store: PathBuf, states_store: PathBuf) -> Self {
        let index = KeyIndex::new(&states_store, &["traj_id", "teacher_id"]);
        QueueTeachers { remote, registry, traj_store, states_store, index }
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
        let mut dead = r.dead_watch(TEACHER)?;
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
            r.check_dead(&mut dead, payloads.iter().map(|(p, _, _)| p))?;
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

impl trainer::backends::TeacherStates for QueueTeachers {
    fn states(
        &mut self,
        idx: usize,
        trajs: &[&Trajectory],
        stage: &str,
        step: u64,
    ) -> trainer::Result<HashMap<String, TeacherState>> {
        self.states_remote(idx, trajs, stage, step).map_err(|e| trainer::TrainError::Input(format!("{e:#}")))
    }

    /// Only `head.weight` is read from the checkpoint (no other tensor is decoded).
    fn head(&mut self, idx: usize) -> trainer::Result<(Arc<Vec<f32>>, usize)> {
        let spec =
            self.registry.teachers.get(idx).ok_or_else(|| trainer::TrainError::Input(format!("no teacher #{idx}")))?;
        let h =
            teachers::load_head(&spec.id, &spec.checkpoint).map_err(|e| trainer::TrainError::Input(e.to_string()))?;
        Ok((h.weight, h.dim))
    }

    fn id(&self, idx: usize) -> String {
        self.registry.teachers.get(idx).map(|t| t.id.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::workers::{LocalWorkers, WorkerKind};
    use crate::queue::{self, QueueConfig};
    use trainer::backends::TeacherStates;

    fn remote(queue: Arc<dyn Queue>, run_dir: &Path) -> Remote {
        Remote {
            queue,
            run_dir: run_dir.to_path_buf(),
            job_prompts: 1,
            resend_after: Duration::from_secs(3600),
            queue_cap: 100,
            remote_scoring: false,
            workers_failed: Arc::default(),
        }
    }

    /// A teacher job that fails on every delivery (its checkpoint does not exist) ends in
    /// the dead letters after `max_deliveries`; the waiting trainer reports it as an error
    /// instead of waiting for ever — on both backends.
    #[test]
    fn a_dead_lettered_job_is_an_error_not_an_endless_wait() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let run = format!("test-dead-{}-{nanos}", std::process::id());
        let cfg = QueueConfig {
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 2,
            reconnect_deadline: Duration::from_secs(3),
        };
        let redis = std::env::var("V4POST_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        for spec in ["embedded", redis.as_str()] {
            let q = queue::open(spec, &run, cfg).unwrap_or_else(|e| panic!("{spec}: {e} (Redis must be running)"));
            let dir = std::env::temp_dir().join(format!("{run}-{}", spec.len()));
            std::fs::create_dir_all(&dir).unwrap();
            let workers = LocalWorkers::start(q.clone(), &dir, &[WorkerKind::Teacher], 0, 1);
            let registry = teachers::Registry {
                teachers: vec![teachers::TeacherSpec {
                    id: "ghost".into(),
                    checkpoint: dir.join("no-such-checkpoint"),
                    domains: vec![],
                    weight: 1.0,
                }],
            };
            let mut qt = QueueTeachers::new(remote(q.clone(), &dir), registry, dir.join("traj"), dir.join("states"));
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let t = Trajectory { traj_id: "t0".into(), stage: "s".into(), ..Default::default() };
                let _ = tx.send(qt.states(0, &[&t], "s", 0).map(|m| m.len()).map_err(|e| e.to_string()));
            });
            let got = rx.recv_timeout(Duration::from_secs(20));
            workers.shutdown();
            let _ = std::fs::remove_dir_all(&dir);
            let err = match got {
                Ok(Err(e)) => e,
                Ok(Ok(n)) => panic!("{spec}: a failing job returned {n} states"),
                Err(_) => panic!("{spec}: still waiting for a dead-lettered job after 20 s"),
            };
            assert!(err.contains("dead-letter") && err.contains("failed 2 times"), "{spec}: {err}");
            assert!(err.contains("no-such-checkpoint"), "{spec}: the job's error is reported: {err}");
        }
    }
}
