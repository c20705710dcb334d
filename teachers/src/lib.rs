//! Teachers for multi-teacher on-policy distillation.
//!
//! * [`registry`]: the TOML list of teachers, per-sample teacher weights by domain, and the
//!   checks (same vocabulary, same tokenizer as the student);
//! * [`pool`]: teachers loaded on demand with a bound on how many are resident, so ten or
//!   more teachers never sit in memory together;
//! * [`head`]: a teacher's output head read alone from its checkpoint (what the trainer
//!   needs to rebuild logits from teacher states);
//! * [`states`]: the teacher worker's computation — a teacher forward over student
//!   trajectories that keeps, per response token, the teacher's head input (after `hc_head`
//!   and the final norm) as f16 teacher-state rows. Full-vocabulary logits are rebuilt from
//!   these by the trainer, chunk by chunk.

pub mod error;
pub mod head;
pub mod pool;
pub mod registry;
pub mod states;

pub use error::{Result, TeacherError};
pub use head::{load_head, TeacherHead};
pub use pool::{LoadedTeacher, Resident, TeacherPool};
pub use registry::{Registry, TeacherSpec};
pub use states::teacher_states;
