//! Worker loops: take a job off the queue, do it, write the result to the run directory's
//! store (idempotent by key), then acknowledge. A worker killed at any point leaves its job
//! unacknowledged; the queue hands it to another worker after the visibility timeout, and
//! the store skips whatever the first attempt had already written.

use super::remote::{RewardMsg, RolloutMsg, TeacherMsg, REWARD, ROLLOUT, TEACHER};
use crate::queue::{Delivery, Lease, Queue};
use anyhow::{anyhow, Context, Result};
use datasets::store::{read_all, KeyIndex, ReadFilter, TeacherStateStore, TrajectoryStore};
use datasets::tokenizer::Tokenizer;
use model::{Engine, EngineOptions};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use teachers::Resident;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerKind {
    Rollout,
    Teacher,
    Reward,
}

impl WorkerKind {
    pub fn topic(self) -> &'static str {
        match self {
            WorkerKind::Rollout => ROLLOUT,
            WorkerKind::Teacher => TEACHER,
            WorkerKind::Reward => REWARD,
        }
    }
}

/// Settings of a worker loop.
#[derive(Clone)]
pub struct WorkerOptions {
    pub consumer: String,
    pub max_staleness: u64,
    /// Stop when set (local workers) …
    pub stop: Arc<AtomicBool>,
    /// … or when the run is marked finished (`run:status` = finished).
    pub exit_when_finished: bool,
    /// Stop after this many jobs (tests, debugging); 0 = no limit.
    pub max_jobs: usize,
    /// Teachers a teacher worker keeps loaded (least recently used goes first); ≥ 1.
    pub resident_teachers: usize,
}

/// What a worker did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct WorkerReport {
    pub jobs: usize,
    pub dropped_stale: usize,
    pub failed: usize,
    pub items: usize,
}

/// Cached engine and tokenizer of the policy directory last used (reloaded when the policy
/// moves). A policy directory carries the run's tokenizer files (none: byte tokenizer).
struct PolicyCache {
    dir: PathBuf,
    engine: Arc<Engine>,
    tok: Arc<dyn Tokenizer>,
}

pub fn run_worker(
    kind: WorkerKind,
    queue: Arc<dyn Queue>,
    run_dir: &Path,
    opts: &WorkerOptions,
) -> Result<WorkerReport> {
    let mut report = WorkerReport::default();
    let mut policy: Option<PolicyCache> = None;
    let mut teachers_loaded: Resident<String, Arc<teachers::LoadedTeacher>> = Resident::new(opts.resident_teachers);
    let mut last_status = Instant::now() - Duration::from_secs(10);
    tracing::info!(kind = ?kind, consumer = %opts.consumer, queue = %queue.describe(), run = %run_dir.display(), "worker started");
    loop {
        if opts.stop.load(Ordering::Relaxed) {
            break;
        }
        if opts.max_jobs > 0 && report.jobs >= opts.max_jobs {
            break;
        }
        if opts.exit_when_finished && last_status.elapsed() > Duration::from_millis(500) {
            last_status = Instant::now();
            if queue.get("run:status")?.as_deref() == Some("finished") {
                tracing::info!("run finished: worker exits");
                break;
            }
        }
        let Some(d) = queue.pop(kind.topic(), &opts.consumer, Duration::from_millis(300))? else { continue };
        tracing::info!(job = %d.id, deliveries = d.deliveries, "job started");
        // renew the job's lease while working on it (jobs may outlast the visibility
        // timeout); the lease ends before the ack/fail below
        let lease = Lease::start(queue.clone(), &d, &opts.consumer);
        let outcome = match kind {
            WorkerKind::Rollout => rollout_job(&d, &queue, run_dir, opts, &mut policy),
            WorkerKind::Teacher => teacher_job(&d, run_dir, &mut teachers_loaded),
            WorkerKind::Reward => reward_job(&d, run_dir),
        };
        drop(lease);
        match outcome {
            Ok(Outcome::Done(n)) => {
                queue.ack(&d)?;
                report.jobs += 1;
                report.items += n;
                tracing::info!(job = %d.id, items = n, "job done");
            }
            Ok(Outcome::Stale) => {
                queue.ack(&d)?;
                report.dropped_stale += 1;
                tracing::info!(job = %d.id, "dropped a job for a stale policy");
            }
            Err(e) => {
                report.failed += 1;
                tracing::warn!(job = %d.id, "job failed: {e:#}");
                queue.fail(&d, &format!("{e:#}"))?;
            }
        }
    }
    Ok(report)
}

enum Outcome {
    Done(usize),
    Stale,
}

/// `rel` (a store or policy path of a job message) inside `run_dir`: relative, and made of
/// plain names only, so a forged message cannot reach outside the run directory.
fn in_run(run_dir: &Path, rel: &Path) -> Result<PathBuf> {
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
        return Err(anyhow!("job path {} is not a path inside the run directory", rel.display()));
    }
    Ok(run_dir.join(rel))
}

fn rollout_job(
    d: &Delivery,
    queue: &Arc<dyn Queue>,
    run_dir: &Path,
    opts: &WorkerOptions,
    cache: &mut Option<PolicyCache>,
) -> Result<Outcome> {
    let msg: RolloutMsg = serde_json::from_str(&d.payload).context("malformed rollout job")?;
    let job = &msg.job;
    if let Some(latest) = queue.get(&format!("policy:{}", job.stage))? {
        let v: serde_json::Value = serde_json::from_str(&latest).unwrap_or_default();
        if let Some(latest) = v["version"].as_u64() {
            if latest > job.policy_version + opts.max_staleness {
                return Ok(Outcome::Stale);
            }
        }
    }
    let dir = in_run(run_dir, &msg.policy_dir)?;
    let (engine, tok) = match cache {
        Some(c) if c.dir == dir => (c.engine.clone(), c.tok.clone()),
        _ => {
            let tok: Arc<dyn Tokenizer> = Arc::from(crate::models::checkpoint_tokenizer(&dir)?);
            let e = Engine::from_checkpoint(&dir, EngineOptions::default())
                .with_context(|| format!("loading policy {}", dir.display()))?;
            let e = Arc::new(e);
            *cache = Some(PolicyCache { dir: dir.clone(), engine: e.clone(), tok: tok.clone() });
            tracing::info!(policy = %dir.display(), tokenizer = %tok.fingerprint(), "policy loaded");
            (e, tok)
        }
    };
    let mut job = job.clone();
    job.score = !msg.remote_scoring;
    let (trajs, _) =
        rollout::run_job(&engine, tok.as_ref(), &job, &Default::default(), &datasets::progress::NoProgress)?;
    let n = trajs.len();
    if msg.remote_scoring {
        let items = job.tasks.iter().zip(&job.modes).flat_map(|(t, &m)| {
            trajs
                .iter()
                .filter(move |x| x.prompt_id == t.prompt_id && x.mode == m.as_str())
                .map(move |x| (t.clone(), m, x.clone()))
        });
        let r = RewardMsg { store_dir: msg.store_dir.clone(), items: items.collect() };
        queue.push(REWARD, &serde_json::to_string(&r)?)?;
    } else {
        let mut store = TrajectoryStore::open(&in_run(run_dir, &msg.store_dir)?)?;
        store.write(&trajs)?;
    }
    Ok(Outcome::Done(n))
}

fn teacher_job(
    d: &Delivery,
    run_dir: &Path,
    resident: &mut Resident<String, Arc<teachers::LoadedTeacher>>,
) -> Result<Outcome> {
    let msg: TeacherMsg = serde_json::from_str(&d.payload).context("malformed teacher job")?;
    let states_dir = in_run(run_dir, &msg.states_store)?;
    let mut index = KeyIndex::new(&states_dir, &["traj_id", "teacher_id"]);
    index.refresh()?;
    let todo: HashSet<&String> =
        msg.traj_ids.iter().filter(|id| !index.contains(&KeyIndex::pair(id, &msg.teacher_id))).collect();
    if todo.is_empty() {
        return Ok(Outcome::Done(0));
    }
    let t = resident.get(msg.teacher_id.clone(), || {
        let ck = run_dir.join(&msg.checkpoint);
        let t = teachers::LoadedTeacher::load(&msg.teacher_id, &ck, EngineOptions::default());
        t.map(Arc::new).map_err(|e| anyhow!("{e}"))
    })?;
    let filter = ReadFilter { stage: Some(msg.stage.clone()), steps: Some((msg.step, msg.step)), domain: None };
    let trajs: HashMap<String, datasets::store::Trajectory> = read_all(&in_run(run_dir, &msg.traj_store)?, &filter)?
        .into_iter()
        .filter(|t| todo.contains(&t.traj_id))
        .map(|t| (t.traj_id.clone(), t))
        .collect();
    if trajs.len() != todo.len() {
        return Err(anyhow!("{} of {} trajectories are not in the store yet", todo.len() - trajs.len(), todo.len()));
    }
    let refs: Vec<&datasets::store::Trajectory> = msg.traj_ids.iter().filter_map(|id| trajs.get(id)).collect();
    let states = teachers::teacher_states(&t, &refs, &msg.stage, msg.step).map_err(|e| anyhow!("{e}"))?;
    TeacherStateStore::open(&states_dir)?.write(&states)?;
    Ok(Outcome::Done(states.len()))
}

fn reward_job(d: &Delivery, run_dir: &Path) -> Result<Outcome> {
    let msg: RewardMsg = serde_json::from_str(&d.payload).context("malformed reward job")?;
    let mut out = Vec::with_capacity(msg.items.len());
    for (task, mode, mut t) in msg.items {
        let r = rewards::score(&task, &t.response_text, mode);
        t.reward = Some(r.value);
        t.reward_detail = r.detail.to_string();
        out.push(t);
    }
    let mut store = TrajectoryStore::open(&in_run(run_dir, &msg.store_dir)?)?;
    store.write(&out)?;
    Ok(Outcome::Done(out.len()))
}

/// Local worker threads (one process: the embedded queue, or Redis on one machine).
pub struct LocalWorkers {
    pub stop: Arc<AtomicBool>,
    pub failed: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl LocalWorkers {
    /// Workers of `kinds` on threads of this process; teacher workers keep `resident_teachers`
    /// teachers loaded.
    pub fn start(
        queue: Arc<dyn Queue>,
        run_dir: &Path,
        kinds: &[WorkerKind],
        max_staleness: u64,
        resident_teachers: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for (i, &k) in kinds.iter().enumerate() {
            let (q, dir, stop, failed) = (queue.clone(), run_dir.to_path_buf(), stop.clone(), failed.clone());
            let opts = WorkerOptions {
                consumer: format!("local-{i}-{}", std::process::id()),
                max_staleness,
                stop: stop.clone(),
                exit_when_finished: false,
                max_jobs: 0,
                resident_teachers,
            };
            handles.push(std::thread::spawn(move || {
                if let Err(e) = run_worker(k, q, &dir, &opts) {
                    tracing::error!("local {k:?} worker stopped: {e:#}");
                    failed.store(true, Ordering::Relaxed);
                }
            }));
        }
        LocalWorkers { stop, failed, handles }
    }

    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::in_run;
    use std::path::Path;

    #[test]
    fn job_paths_stay_in_the_run_directory() {
        let run = Path::new("/runs/r");
        assert_eq!(
            in_run(run, Path::new("trajectories/grpo-openai%2Fgsm8k")).unwrap(),
            run.join("trajectories/grpo-openai%2Fgsm8k")
        );
        for bad in ["", "/etc", "trajectories/../../x", "..", "./x"] {
            assert!(in_run(run, Path::new(bad)).is_err(), "{bad}");
        }
    }
}
