//! Rollout: sampling responses from the policy with the V4 decode engine (routed experts run
//! from packed FP4), scoring them, and turning them into trajectories.
//!
//! * [`sampling`]: temperature / top-k / top-p with seeded generators, behaviour log-probs,
//!   sampling masks;
//! * [`generate`]: continuous batching, shared prompt prefill for a group, multi-turn agent
//!   episodes, routing records;
//! * [`job`]: a rollout job → scored trajectories.
//!
//! The packed-FP4 matrix kernels live in `model::kernels` because the decode engine they
//! serve lives in `model` (incremental decode is part of the model crate's contract).

pub mod eval;
pub mod generate;
pub mod job;
pub mod sampling;

pub use eval::{evaluate, EvalReport};
pub use generate::{generate, Finish, GenOptions, GenRequest, GenSample, GenStats};
pub use job::{run_job, traj_id, RolloutJob};
pub use sampling::SamplingParams;
