//! Where a trainer's samples and teacher states come from: the [`Rollouts`] and
//! [`TeacherStates`] traits and their in-process backends ([`LocalRollouts`],
//! [`LocalTeachers`]). The queue backends, which hand the same jobs to rollout and teacher
//! workers over the embedded queue or Redis, implement the same traits in the orchestrator
//! (`orchestrator::pipeline::remote::{QueueRollouts, QueueTeachers}`), next to the queue.

use crate::error::{Result, TrainError};
use datasets::progress::Progress;
use datasets::store::{TeacherState, TeacherStateStore, Trajectory, TrajectoryStore};
use datasets::Tokenizer;
use model::{Engine, EngineOptions, ModelWeights};
use rollout::{GenOptions, RolloutJob};
use std::collections::HashMap;
use std::sync::Arc;
use teachers::{teacher_states, TeacherPool};

/// Something that samples scored trajectories for a rollout job with the session's policy.
pub trait Rollouts {
    /// Sample `job` with the current weights of `session` (its `policy_version`); returns
    /// trajectories with rewards. Implementations store what they sample.
    fn sample(&mut self, job: &RolloutJob, policy: &ModelWeights) -> Result<Vec<Trajectory>>;
    /// Jobs waiting in the queue right after the last `sample` pushed its work (None: no queue).
    fn queue_depth(&self) -> Option<usize> {
        None
    }
}

/// In-process rollouts: build the FP4 decode engine from the current weights and run the job.
pub struct LocalRollouts<'a> {
    pub tok: &'a dyn Tokenizer,
    pub store: Option<TrajectoryStore>,
    pub opts: GenOptions,
    pub progress: &'a dyn Progress,
}

impl Rollouts for LocalRollouts<'_> {
    fn sample(&mut self, job: &RolloutJob, policy: &ModelWeights) -> Result<Vec<Trajectory>> {
        let engine = Engine::new(policy, EngineOptions::default())?;
        let (trajs, _) = rollout::run_job(&engine, self.tok, job, &self.opts, self.progress)?;
        if let Some(st) = self.store.as_mut() {
            st.write(&trajs)?;
        }
        Ok(trajs)
    }
}

/// Where teacher states come from.
pub trait TeacherStates {
    /// Head inputs of teacher `idx` for `trajs` (all with weight on it), keyed by `traj_id`.
    fn states(
        &mut self,
        idx: usize,
        trajs: &[&Trajectory],
        stage: &str,
        step: u64,
    ) -> Result<HashMap<String, TeacherState>>;
    /// Load the teacher's head `[vocab, dim]`; returns it and `dim`. OPD asks at most once
    /// per teacher per step and keeps it for the step.
    fn head(&mut self, idx: usize) -> Result<(Arc<Vec<f32>>, usize)>;
    /// Teacher id of registry index `idx`.
    fn id(&self, idx: usize) -> String;
}

/// In-process teachers: forward them here (one resident at a time), optionally storing the
/// states in a teacher-state store (reused when already there, e.g. after a resume).
pub struct LocalTeachers {
    pub pool: TeacherPool,
    pub store: Option<TeacherStateStore>,
}

impl TeacherStates for LocalTeachers {
    fn states(
        &mut self,
        idx: usize,
        trajs: &[&Trajectory],
        stage: &str,
        step: u64,
    ) -> Result<HashMap<String, TeacherState>> {
        let id = self.id(idx);
        let mut have: HashMap<String, TeacherState> = HashMap::new();
        if let Some(st) = &self.store {
            let want: std::collections::HashSet<String> = trajs.iter().map(|t| t.traj_id.clone()).collect();
            have = st.read(&id, Some(&want))?;
        }
        let missing: Vec<&Trajectory> = trajs.iter().copied().filter(|t| !have.contains_key(&t.traj_id)).collect();
        if !missing.is_empty() {
            let teacher = self.pool.get(idx).map_err(|e| TrainError::Input(e.to_string()))?;
            let fresh =
                teacher_states(&teacher, &missing, stage, step).map_err(|e| TrainError::Input(e.to_string()))?;
            if let Some(st) = &self.store {
                st.write(&fresh)?;
            }
            have.extend(fresh.into_iter().map(|s| (s.traj_id.clone(), s)));
        }
        Ok(have)
    }

    /// Only `head.weight`, read from the checkpoint: the resident teacher is left alone.
    fn head(&mut self, idx: usize) -> Result<(Arc<Vec<f32>>, usize)> {
        let h = self.pool.head(idx).map_err(|e| TrainError::Input(e.to_string()))?;
        Ok((h.weight, h.dim))
    }

    fn id(&self, idx: usize) -> String {
        self.pool.registry.teachers.get(idx).map(|t| t.id.clone()).unwrap_or_default()
    }
}
