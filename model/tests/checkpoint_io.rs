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
