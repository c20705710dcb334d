//! Teacher heads are read alone from the checkpoint files, in every layout, and the pool
//! counts those reads without loading (or evicting) whole teachers.

use model::checkpoint::{self, SaveFormat};
use model::{Config, ModelWeights};
use std::path::Path;
use teachers::{load_head, Registry, TeacherPool, TeacherSpec};

fn weights(seed: u64) -> ModelWeights {
    ModelWeights::random(&Config::tiny(), seed).unwrap()
}

fn head_of(w: &ModelWeights) -> &[f32] {
    &w.tensors["head.weight"].data
}

#[test]
fn head_alone_matches_the_full_load_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    let w = weights(3);
    let (f32_dir, sharded, official) = (dir.path().join("f32"), dir.path().join("sharded"), dir.path().join("off"));
    checkpoint::save(&w, &f32_dir, SaveFormat::F32, None).unwrap();
    checkpoint::save(&w, &sharded, SaveFormat::F32, Some(4096)).unwrap();
    checkpoint::save(&w, &official, SaveFormat::Official, None).unwrap();
    assert!(sharded.join("model.safetensors.index.json").exists(), "the sharded layout must be exercised");

    for d in [&f32_dir, &sharded] {
        let h = load_head("t", d).unwrap();
        assert_eq!((h.vocab, h.dim), (w.config.vocab_size, w.config.dim));
        assert_eq!(h.weight.as_slice(), head_of(&w), "{}", d.display());
    }
    // the official layout stores the head in BF16
    let h = load_head("t", &official).unwrap();
    let full = checkpoint::load(&official).unwrap();
    assert_eq!(h.weight.as_slice(), head_of(&full));
    let bf16: Vec<f32> = head_of(&w).iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    assert_eq!(h.weight.as_slice(), bf16.as_slice());
    // one safetensors file given directly works too (no config.json needed)
    let h = load_head("t", &f32_dir.join("model.safetensors")).unwrap();
    assert_eq!(h.weight.as_slice(), head_of(&w));
}

#[test]
fn missing_head_or_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_head("ghost", &dir.path().join("nope")).unwrap_err().to_string();
    assert!(e.contains("ghost") && e.contains("nope"), "{e}");
    // a safetensors file without head.weight
    let mut w = weights(1);
    w.tensors.retain(|k, _| k == "embed.weight");
    w.tid2eid.clear();
    w.fp4.clear();
    let p = dir.path().join("headless");
    checkpoint::save(&w, &p, SaveFormat::F32, None).unwrap();
    let e = load_head("headless", &p).unwrap_err().to_string();
    assert!(e.contains("headless") && e.contains("head.weight"), "{e}");
}

fn registry(root: &Path, n: usize) -> Registry {
    let specs = (0..n)
        .map(|i| {
            let p = root.join(format!("t{i}"));
            checkpoint::save(&weights(10 + i as u64), &p, SaveFormat::F32, None).unwrap();
            TeacherSpec { id: format!("t{i}"), checkpoint: p, domains: vec!["*".into()], weight: 1.0 }
        })
        .collect();
    Registry::new(specs).unwrap()
}

#[test]
fn pool_heads_are_counted_and_leave_the_resident_teachers_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut pool = TeacherPool::new(registry(dir.path(), 2), 1);
    let a = pool.head(0).unwrap();
    let b = pool.head(1).unwrap();
    pool.head(0).unwrap();
    assert_eq!(pool.head_loads, 3);
    assert_eq!((pool.loads, pool.resident()), (0, 0), "a head read loads no teacher");
    assert_eq!((a.id.as_str(), b.id.as_str()), ("t0", "t1"));
    assert_ne!(a.weight, b.weight);
    // the head of a loaded teacher is the same tensor
    let t1 = pool.get(1).unwrap();
    assert_eq!(t1.head, b.weight);
    assert_eq!(t1.dim, b.dim);
    assert!(pool.head(2).unwrap_err().to_string().contains("no teacher #2"));
}
