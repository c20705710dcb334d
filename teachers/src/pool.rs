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

/// The `capacity` most recently used values by key, least recently used dropped first: the
/// teachers a [`TeacherPool`] or a teacher worker keeps loaded.
pub struct Resident<K, T> {
    capacity: usize,
    /// Most recently used last.
    entries: Vec<(K, T)>,
}

impl<K: PartialEq, T: Clone> Resident<K, T> {
    /// Room for `capacity` values (at least one).
    pub fn new(capacity: usize) -> Self {
        Resident { capacity: capacity.max(1), entries: Vec::new() }
    }

    /// The value of `key`, loaded with `load` when it is not resident (after dropping the
    /// least recently used value when full).
    pub fn get<E>(&mut self, key: K, load: impl FnOnce() -> std::result::Result<T, E>) -> std::result::Result<T, E> {
        if let Some(i) = self.entries.iter().position(|(k, _)| *k == key) {
            let e = self.entries.remove(i);
            let v = e.1.clone();
            self.entries.push(e);
            return Ok(v);
        }
        while self.entries.len() >= self.capacity {
            self.entries.remove(0);
        }
        let v = load()?;
        self.entries.push((key, v.clone()));
        Ok(v)
    }

    /// Values held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Lazily loaded teachers of a registry.
pub struct TeacherPool {
    pub registry: Registry,
    pub max_resident: usize,
    pub options: EngineOptions,
    resident: Resident<usize, Arc<LoadedTeacher>>,
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
            resident: Resident::new(max_resident),
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
        let (options, loads) = (self.options, &mut self.loads);
        self.resident.get(idx, || {
            *loads += 1;
            Ok(Arc::new(LoadedTeacher::load(&spec.id, &spec.checkpoint, options)?))
        })
    }

    /// Number of teachers held now.
    pub fn resident(&self) -> usize {
        self.resident.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Resident;

    /// At most `capacity` values stay loaded; a hit keeps its value and makes it the most
    /// recently used, a miss drops the least recently used.
    #[test]
    fn resident_keeps_the_most_recently_used() {
        let mut r: Resident<&str, u32> = Resident::new(2);
        let mut loads = 0;
        let mut get = |r: &mut Resident<&'static str, u32>, k: &'static str| {
            r.get(k, || {
                loads += 1;
                Ok::<_, String>(loads)
            })
            .unwrap()
        };
        assert_eq!(get(&mut r, "a"), 1);
        assert_eq!(get(&mut r, "b"), 2);
        assert_eq!(get(&mut r, "a"), 1, "a hit is not reloaded");
        assert_eq!(get(&mut r, "c"), 3, "b (least recently used) goes");
        assert_eq!(get(&mut r, "a"), 1);
        assert_eq!(get(&mut r, "b"), 4, "b was dropped");
        assert_eq!(r.len(), 2);
        let mut one: Resident<&str, u32> = Resident::new(0);
        assert!(one.get("x", || Err("no such teacher")).is_err());
        assert!(one.is_empty(), "a failed load keeps nothing");
        assert_eq!(one.get("x", || Ok::<_, String>(7)).unwrap(), 7);
        assert_eq!(one.get("y", || Ok::<_, String>(8)).unwrap(), 8);
        assert_eq!(one.len(), 1, "at least one, at most capacity");
    }
}
