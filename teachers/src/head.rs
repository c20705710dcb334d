//! A teacher's output head, read on its own. The trainer rebuilds a teacher's logits from
//! teacher states, which are head inputs already through `hc_head` and the final norm, so
//! `head.weight` is all it needs: no engine is built and no other tensor is decoded.

use crate::error::{Result, TeacherError};
use std::path::Path;
use std::sync::Arc;

/// Official name of the output head.
pub const HEAD_WEIGHT: &str = "head.weight";

/// `head.weight` of a teacher, f32 `[vocab, dim]`.
#[derive(Debug, Clone)]
pub struct TeacherHead {
    pub id: String,
    pub weight: Arc<Vec<f32>>,
    pub vocab: usize,
    pub dim: usize,
}

/// Read only the head of the checkpoint `dir` (a directory or one safetensors file).
pub fn load_head(id: &str, dir: &Path) -> Result<TeacherHead> {
    let err = |msg: String| TeacherError::Teacher { id: id.into(), msg };
    let mut tensors = model::checkpoint::load_tensors(dir, &[HEAD_WEIGHT]).map_err(|e| err(e.to_string()))?;
    let head = tensors.remove(HEAD_WEIGHT).ok_or_else(|| err(format!("{}: no {HEAD_WEIGHT}", dir.display())))?;
    let &[vocab, dim] = head.shape.as_slice() else {
        return Err(err(format!("{}: {HEAD_WEIGHT} has shape {:?}, expected [vocab, dim]", dir.display(), head.shape)));
    };
    Ok(TeacherHead { id: id.into(), weight: Arc::new(head.data), vocab, dim })
}
