//! A rollout job — prompts, modes, group size, sampling settings — turned into scored
//! trajectories. The worker loop that takes jobs off a queue lives in the orchestrator; this
//! is the part that runs the model.

use crate::generate::{generate, GenOptions, GenRequest, GenStats};
use crate::sampling::SamplingParams;
use datasets::chat::Mode;
use datasets::progress::Progress;
use datasets::store::Trajectory;
use datasets::{Task, Tokenizer};
use model::Engine;
use rewards::agent::AgentEnv;
use serde::{Deserialize, Serialize};

/// Work for a rollout worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutJob {
    pub job_id: String,
    pub run: String,
    pub stage: String,
    pub step: u64,
    /// Version of the policy the job must be sampled with.
    pub policy_version: u64,
    pub tasks: Vec<Task>,
    /// Reasoning mode of each task.
    pub modes: Vec<Mode>,
    /// Teacher of each task's samples (OPD), if any.
    #[serde(default)]
    pub teachers: Vec<Option<String>>,
    /// Samples per prompt (the GRPO group size).
    pub n: usize,
    pub params: SamplingParams,
    /// Response budget per mode (overrides `params.max_tokens`).
    #[serde(default)]
    pub max_tokens: Vec<(Mode, usize)>,
    pub seed: u64,
    /// Score with the verifiers here (false: reward workers score later).
    #[serde(default = "yes")]
    pub score: bool,
}

fn yes() -> bool {
    true
}

impl RolloutJob {
    fn budget(&self, m: Mode) -> usize {
        self.max_tokens.iter().find(|(mm, _)| *mm == m).map_or(self.params.max_tokens, |(_, t)| *t)
    }
}

/// Deterministic trajectory id: a redelivered job produces the same ids (and, with the same
/// weights and seeds, the same samples), so the store never holds a trajectory twice.
pub fn traj_id(run: &str, stage: &str, step: u64, prompt_id: &str, mode: Mode, g: usize) -> String {
    format!("{run}:{stage}:{step}:{prompt_id}:{}:{g}", mode.as_str())
}

/// Sample and score every prompt of `job`.
pub fn run_job(
    engine: &Engine,
    tok: &dyn Tokenizer,
    job: &RolloutJob,
    opts: &GenOptions,
    progress: &dyn Progress,
) -> model::Result<(Vec<Trajectory>, GenStats)> {
    if job.modes.len() != job.tasks.len() {
        return Err(model::ModelError::Input(format!(
            "job {}: {} tasks but {} modes",
            job.job_id,
            job.tasks.len(),
            job.modes.len()
        )));
    }
    let reqs: Vec<GenRequest> = job
        .tasks
        .iter()
        .zip(&job.modes)
        .map(|(t, &m)| GenRequest {
            prompt_tokens: tok.encode(&t.prompt_text(m)),
            n: job.n,
            params: SamplingParams { max_tokens: job.budget(m), ..job.params.clone() },
            mode: m,
            env: (t.verifier.get("kind").and_then(|k| k.as_str()) == Some("agent"))
                .then(|| AgentEnv::from_verifier(&t.verifier)),
            // by prompt and mode, not position: a job split across workers samples the same
            seed: datasets::tasks::fnv1a(&format!("{}/{}/{}/{}", job.seed, job.step, t.prompt_id, m.as_str())),
        })
        .collect();
    let (samples, stats) = generate(engine, tok, &reqs, opts, progress)?;
    let width = (engine.config.n_layers * engine.config.n_activated_experts) as u32;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let mut out = Vec::new();
    for (i, group) in samples.into_iter().enumerate() {
        let (t, m) = (&job.tasks[i], job.modes[i]);
        for (g, s) in group.into_iter().enumerate() {
            let reward = job.score.then(|| rewards::score(t, &s.text, m));
            let all_generated = s.gen_mask.iter().all(|&b| b == 1);
            out.push(Trajectory {
                traj_id: traj_id(&job.run, &job.stage, job.step, &t.prompt_id, m, g),
                run: job.run.clone(),
                stage: job.stage.clone(),
                step: job.step,
                policy_version: job.policy_version,
                prompt_id: t.prompt_id.clone(),
                group_idx: g as u32,
                domain: t.domain.clone(),
                family: t.family.clone(),
                mode: m.as_str().into(),
                teacher_id: job.teachers.get(i).cloned().flatten(),
                prompt_tokens: reqs[i].prompt_tokens.clone(),
                response_tokens: s.tokens,
                response_logprobs: s.logprobs,
                response_mask: (!all_generated).then_some(s.gen_mask),
                routing: s.routing,
                prompt_routing: s.prompt_routing,
                routing_width: width,
                sample_mask: s.sample_mask,
                finish_reason: s.finish.as_str().into(),
                reward: reward.as_ref().map(|r| r.value),
                reward_detail: reward.as_ref().map_or_else(|| "{}".to_string(), |r| r.detail.to_string()),
                response_text: s.text,
                created_ms: now,
            });
        }
    }
    Ok((out, stats))
}
