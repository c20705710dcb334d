//! Trainers: SFT, the GRPO family and full-vocabulary multi-teacher OPD, with Muon + AdamW,
//! FP4 QAT of the experts, and exact checkpoint/resume.

pub mod error;
pub mod losses;
pub mod optim;

pub use error::{Result, TrainError};
