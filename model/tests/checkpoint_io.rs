//! Checkpoint round trips and error reporting.

use model::checkpoint::{self, SaveFormat};
use model::formats::mxfp4::{Mxfp4Matrix, ScaleRule};
use model::{Config, ModelError, ModelWeights};
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/v4-tiny-a")
}

fn err_text(dir: &Path) -> String {
    match checkpoint::load(dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn f32_round_trip_is_exact_and_sharding_works() {
    let w = ModelWeights::random(&Config::tiny(), 5).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    checkpoint::save(&w, tmp.path(), SaveFormat::F32, None).unwrap();
    let back = checkpoint::load(tmp.path()).unwrap();
    assert_eq!(back.tensors, w.tensors);
    assert_eq!(back.tid2eid, w.tid2eid);
    let sharded = tempfile::tempdir().unwrap();
    checkpoint::save(&w, sharded.path(), SaveFormat::F32, Some(64 * 1024)).unwrap();
    assert!(sharded.path().join("model.safetensors.index.json").exists());
    let n_shards = std::fs::read_dir(sharded.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "safetensors"))
        .count();
    assert!(n_shards > 1, "expected several shards, got {n_shards}");
    assert_eq!(checkpoint::load(sharded.path()).unwrap().tensors, w.tensors);
}

#[test]
fn rollout_format_keeps_fp4_experts_exact() {
    let mut w = ModelWeights::random(&Config::tiny(), 6).unwrap();
    // make experts exactly FP4-representable (what QAT training produces)
    for (name, t) in w.tensors.iter_mut() {
        if ModelWeights::is_routed_expert(name) {
            t.data = Mxfp4Matrix::quantize(&t.data, t.shape[0], t.shape[1], ScaleRule::DeepSeekCeil).dequantize();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    checkpoint::save(&w, tmp.path(), SaveFormat::Rollout, None).unwrap();
    let back = checkpoint::load(tmp.path()).unwrap();
    assert_eq!(back.tensors, w.tensors);
    assert!(!back.fp4.is_empty(), "experts were stored packed");
}

#[test]
fn golden_checkpoint_survives_official_round_trip() {
    let w = checkpoint::load(&golden_dir()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    checkpoint::save(&w, tmp.path(), SaveFormat::Official, None).unwrap();
    let back = checkpoint::load(tmp.path()).unwrap();
    // FP8/FP4/BF16 values written from exactly-representable data come back bit-identical.
    for (name, t) in &w.tensors {
        assert_eq!(&back.tensors[name], t, "{name}");
    }
    // Same packed bytes for the experts as the reference converter wrote.
    for (name, m) in &w.fp4 {
        assert_eq!(&back.fp4[name], m, "{name}");
    }
}

#[test]
fn broken_checkpoints_are_clear_errors() {
    let w = ModelWeights::random(&Config::tiny(), 7).unwrap();
    let good = tempfile::tempdir().unwrap();
    checkpoint::save(&w, good.path(), SaveFormat::F32, None).unwrap();
    let bytes = std::fs::read(good.path().join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(good.path().join("config.json")).unwrap();

    // truncated file
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), &cfg).unwrap();
    std::fs::write(d.path().join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = err_text(d.path());
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");

    // garbage header
    std::fs::write(d.path().join("model.safetensors"), b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    assert!(err_text(d.path()).contains("not a valid safetensors"));

    // missing tensor
    let mut w2 = w.clone();
    w2.tensors.remove("layers.1.attn.wq_a.weight");
    let d2 = tempfile::tempdir().unwrap();
    // write bypassing validation: save() writes whatever is there
    checkpoint::save(&w2, d2.path(), SaveFormat::F32, None).unwrap();
    let e = err_text(d2.path());
    assert!(e.contains("missing tensor `layers.1.attn.wq_a.weight`"), "{e}");

    // extra tensor
    let mut w3 = w.clone();
    w3.tensors.insert("layers.1.attn.surprise".into(), model::Tensor32::zeros(vec![3]));
    let d3 = tempfile::tempdir().unwrap();
    checkpoint::save(&w3, d3.path(), SaveFormat::F32, None).unwrap();
    let e = err_text(d3.path());
    assert!(e.contains("unexpected tensor `layers.1.attn.surprise`"), "{e}");

    // mis-shaped tensor
    let mut w4 = w.clone();
    w4.tensors.insert("norm.weight".into(), model::Tensor32::zeros(vec![7]));
    let d4 = tempfile::tempdir().unwrap();
    checkpoint::save(&w4, d4.path(), SaveFormat::F32, None).unwrap();
    let e = err_text(d4.path());
    assert!(e.contains("`norm.weight`") && e.contains("[7]"), "{e}");

    // no config
    let d5 = tempfile::tempdir().unwrap();
    std::fs::write(d5.path().join("model.safetensors"), &bytes).unwrap();
    assert!(err_text(d5.path()).contains("config.json"));

    // not a directory
    assert!(matches!(checkpoint::load(Path::new("/nonexistent/ckpt")), Err(ModelError::Checkpoint(_))));
}

/// The weight files of `dir`, sorted.
fn weight_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors") || n.ends_with(".index.json"))
        .collect();
    v.sort();
    v
}

/// Saving into a directory that already holds a checkpoint in the other layout leaves only
/// the files just written: no stale `model.safetensors` for loaders that read it first, no
/// stale shards or index; other files of the directory are kept.
#[test]
fn switching_between_single_file_and_shards_leaves_no_stale_weights() {
    let a = ModelWeights::random(&Config::tiny(), 8).unwrap();
    let b = ModelWeights::random(&Config::tiny(), 9).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
    let shard = Some(64 * 1024);

    // single, then sharded
    checkpoint::save(&a, dir, SaveFormat::F32, None).unwrap();
    assert_eq!(weight_files(dir), ["model.safetensors"]);
    checkpoint::save(&b, dir, SaveFormat::F32, shard).unwrap();
    let sharded = weight_files(dir);
    assert!(!sharded.contains(&"model.safetensors".to_string()), "stale single file kept: {sharded:?}");
    assert!(sharded.contains(&"model.safetensors.index.json".to_string()), "{sharded:?}");
    let n = sharded.len() - 1;
    assert!(n > 1, "{sharded:?}");
    for i in 1..=n {
        assert!(sharded.contains(&format!("model-{i:05}-of-{n:05}.safetensors")), "{sharded:?}");
    }
    assert_eq!(checkpoint::load(dir).unwrap().tensors, b.tensors);

    // fewer shards: the old `-of-n` shards go
    checkpoint::save(&a, dir, SaveFormat::F32, Some(256 * 1024)).unwrap();
    let fewer = weight_files(dir);
    let m = fewer.len() - 1;
    assert!(m > 1 && m < n, "{n} then {m} shards: {fewer:?}");
    assert!(
        fewer.iter().all(|f| f.ends_with(".index.json") || f.ends_with(&format!("-of-{m:05}.safetensors"))),
        "{fewer:?}"
    );
    assert_eq!(checkpoint::load(dir).unwrap().tensors, a.tensors);

    // sharded, then single
    checkpoint::save(&b, dir, SaveFormat::F32, None).unwrap();
    assert_eq!(weight_files(dir), ["model.safetensors"]);
    assert_eq!(checkpoint::load(dir).unwrap().tensors, b.tensors);
    assert!(dir.join("tokenizer.json").exists() && dir.join("config.json").exists(), "other files are kept");
}
