//! Trainers: SFT, the GRPO family and full-vocabulary multi-teacher OPD, with Muon + AdamW,
//! FP4 QAT of the experts, and exact checkpoint/resume.
//!
//! * [`backends`]: where samples and teacher states come from (traits, in-process backends);
//! * [`optim`]: Muon (V4 hybrid Newton–Schulz) and AdamW, parameter groups by name;
//! * [`losses`]: fused log-prob gather (Keep Sampling Mask), SFT and GRPO-family losses;
//! * [`session`]: model + optimizer + counters, checkpoints that resume bit-identically;
//! * [`sft`]: supervised fine-tuning / pre-training on the suite's reference solutions;
//! * [`grpo`]: GRPO / DAPO / Dr. GRPO / V3.2 variants with pluggable rollouts;
//! * [`reference`]: the frozen KL reference, run in the decode engine (packed experts);
//! * [`anticipatory`]: Anticipatory Routing (Δt-old router while the loss spikes);
//! * [`kl`]: the fused, chunked full-vocabulary reverse KL (custom op with closed-form gradient);
//! * [`opd`]: multi-teacher on-policy distillation;
//! * [`step`]: the loop shape the trainers share (sample → score → targets → update → log)
//!   and what they write to ([`step::TrainIo`]).

pub mod anticipatory;
pub mod backends;
pub mod error;
pub mod grpo;
pub mod kl;
pub mod losses;
pub mod opd;
pub mod optim;
pub mod reference;
pub mod session;
pub mod sft;
pub mod step;

pub use error::{Result, TrainError};
pub use session::Session;
pub use step::TrainIo;
