//! The teacher worker's computation: head inputs of a teacher over student trajectories.

use crate::error::Result;
use crate::pool::LoadedTeacher;
use datasets::store::{TeacherState, Trajectory};
use model::{Row, Want};

/// Sequences per engine call.
const BATCH: usize = 16;

/// For each trajectory, the teacher's head input at every position that predicts a response
/// token (row `j` predicts `response_tokens[j]`), as f16.
pub fn teacher_states(
    teacher: &LoadedTeacher,
    trajs: &[&Trajectory],
    stage: &str,
    step: u64,
) -> Result<Vec<TeacherState>> {
    let d = teacher.dim;
    let mut out = Vec::with_capacity(trajs.len());
    for batch in trajs.chunks(BATCH) {
        let mut states: Vec<_> = batch.iter().map(|_| teacher.engine.new_state()).collect();
        let mut rows = Vec::new();
        // (first row of the trajectory's response predictions, count)
        let mut spans = Vec::with_capacity(batch.len());
        for (s, t) in batch.iter().enumerate() {
            let r = t.response_tokens.len();
            let p = t.prompt_tokens.len();
            if r == 0 || p == 0 {
                spans.push((0, 0));
                continue;
            }
            let start = rows.len();
            let seq = t.prompt_tokens.iter().chain(&t.response_tokens[..r - 1]);
            rows.extend(seq.map(|&token| Row { seq: s, token }));
            spans.push((start + p - 1, r));
        }
        let o = teacher.engine.forward(&mut states, &rows, Want::AllHidden)?;
        // outputs come back per call row; index them by row
        let mut by_row = vec![usize::MAX; rows.len()];
        for (k, &r) in o.rows.iter().enumerate() {
            by_row[r] = k;
        }
        for (t, &(first, count)) in batch.iter().zip(&spans) {
            let mut v = Vec::with_capacity(count * d);
            for j in 0..count {
                let k = by_row[first + j];
                v.extend(o.row(k).iter().map(|&x| half::f16::from_f32(x)));
            }
            out.push(TeacherState {
                traj_id: t.traj_id.clone(),
                teacher_id: teacher.id.clone(),
                stage: stage.to_string(),
                step,
                dim: d,
                states: v,
            });
        }
    }
    Ok(out)
}
