//! Teachers loaded when needed, at most `max_resident` at a time (least recently used
//! evicted first). Callers process samples in teacher order, so with the default of one
//! resident teacher each checkpoint is read once per step. Heads alone ([`TeacherPool::head`])
//! are read straight from the checkpoint files, without loading the teacher.

use crate::error::{Result, TeacherError};
use crate::head::{load_head, TeacherHead, HEAD_WEIGHT};
use crate::registry::{Registry, TeacherSpec};
use model::{Engine, EngineOptions};
use std::sync::Arc;

/// A teacher ready to run: its decode engine (FP4 experts, as served) and its head.
pub struct LoadedTeacher {
    pub id: String,
    pub engine: Engine,
    /// `head.weight` `[vocab, dim]`, f32.
    pub head: Arc<Vec<f32>>,
    pub dim: usize,
}

impl LoadedTeacher {
    /// Load a checkpoint directory as a teacher: a memory-mapped engine (weights in their
    /// stored formats) and the head decoded to f32.
    pub fn load(id: &str, dir: &std::path::Path, opts: EngineOptions) -> Result<Self> {
        let engine = Engine::from_checkpoint(dir, opts)
            .map_err(|e| TeacherError::Teacher { id: id.into(), msg: e.to_string() })?;
        let head = load_head(id, dir)?;
        Ok(LoadedTeacher { id: id.into(), dim: head.dim, head: head.weight, engine })
    }

    /// A teacher from weights in memory.
    pub fn from_weights(id: &str, w: &model::ModelWeights, opts: EngineOptions) -> Result<Self> {
        let head = w
            .tensors
            .get(HEAD_WEIGHT)
            .ok_or_else(|| TeacherError::Teacher { id: id.into(), msg: "checkpoint has no head.weight".into() })?
            .data
            .clone();
        let engine = Engine::new(w, opts)?;
        Ok(LoadedTeacher { id: id.into(), dim: w.config.dim, head: Arc::new(head), engine })
    }
}

/// Lazily loaded teachers of a registry.
pub struct TeacherPool {
    pub registry: Registry,
    pub max_resident: usize,
    pub options: EngineOptions,
    /// Most recently used last.
    resident: Vec<(usize, Arc<LoadedTeacher>)>,
    /// Checkpoint loads so far (for logs and tests).
    pub loads: usize,
    /// Head-only loads so far ([`TeacherPool::head`]; for logs and tests).
    pub head_loads: usize,
}

impl TeacherPool {
    pub fn new(registry: Registry, max_resident: usize) -> Self {
        TeacherPool {
            registry,
            max_resident: max_resident.max(1),
            options: EngineOptions::default(),
            resident: Vec::new(),
            loads: 0,
            head_loads: 0,
        }
    }

    fn spec(&self, idx: usize) -> Result<&TeacherSpec> {
        self.registry
            .teachers
            .get(idx)
            .ok_or_else(|| TeacherError::Registry(format!("no teacher #{idx} ({} registered)", self.registry.len())))
    }

    /// The head of teacher `idx`, read from its checkpoint (only `head.weight` is decoded);
    /// the resident teachers are left as they are.
    pub fn head(&mut self, idx: usize) -> Result<TeacherHead> {
        let spec = self.spec(idx)?;
        let head = load_head(&spec.id, &spec.checkpoint)?;
        self.head_loads += 1;
        Ok(head)
    }

    /// Teacher `idx` of the registry, loading it (and evicting the least recently used one
    /// beyond `max_resident`) when it is not resident.
    pub fn get(&mut self, idx: usize) -> Result<Arc<LoadedTeacher>> {
        let spec = self.spec(idx)?.clone();
        if let Some(pos) = self.resident.iter().position(|(i, _)| *i == idx) {
            let e = self.resident.remove(pos);
            let t = e.1.clone();
            self.resident.push(e);
            return Ok(t);
        }
        while self.resident.len() >= self.max_resident {
            self.resident.remove(0);
        }
        let t = Arc::new(LoadedTeacher::load(&spec.id, &spec.checkpoint, self.options)?);
        self.loads += 1;
        self.resident.push((idx, t.clone()));
        Ok(t)
    }

    /// Number of teachers held now.
    pub fn resident(&self) -> usize {
        self.resident.len()
    }
}
