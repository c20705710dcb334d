//! MTP weights: v4post has no MTP loss and does not use MTP for speculative decoding, so the
//! MTP block(s) are carried over unchanged — deliberately (the optimizer's `mtp.*` group is
//! "none"), visibly (every saved checkpoint's metadata says so) and losslessly (every save
//! format round-trips them).

use datasets::store::MetricsWriter;
use datasets::ByteTokenizer;
use model::checkpoint::{self, SaveFormat, MTP_CARRIED_UNCHANGED, MTP_METADATA_KEY};
use model::train::TrainOptions;
use model::{Config, ModelWeights};
use trainer::optim::{Group, OptimConfig};
use trainer::sft::{run_sft, SftConfig};
use trainer::Session;
use trainer::TrainIo;

fn with_mtp() -> Config {
    let mut c = Config::tiny();
    c.n_mtp_layers = 1;
    c.compress_ratios.push(0);
    c
}

#[test]
fn training_leaves_mtp_unchanged_and_checkpoints_say_so() {
    let w = ModelWeights::random(&with_mtp(), 4).unwrap();
    let mtp: Vec<&String> = w.tensors.keys().filter(|n| n.starts_with("mtp.")).collect();
    assert!(mtp.len() > 10, "the config has an MTP block");
    let mut s = Session::new(&w, TrainOptions::default(), OptimConfig::default(), 1).unwrap();
    for name in &mtp {
        assert_eq!(s.opt.params[*name].group, Group::None, "{name} must not be in an optimizer group");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsWriter::new(dir.path(), "t").unwrap();
    let cfg = SftConfig { steps: 3, batch: 2, max_len: 96, domains: "math.add".into(), ..Default::default() };
    run_sft(&mut s, &cfg, &ByteTokenizer, &mut TrainIo::quiet(&mut m)).unwrap();
    let trained = s.weights().unwrap();
    assert_ne!(trained.tensors["layers.0.attn.wq_a.weight"], w.tensors["layers.0.attn.wq_a.weight"], "it trained");

    let ck = s.save(&dir.path().join("ckpt")).unwrap();
    for format in [SaveFormat::F32, SaveFormat::Rollout, SaveFormat::Official] {
        let out = dir.path().join(format!("{format:?}"));
        checkpoint::save(&trained, &out, format, None).unwrap();
        let back = checkpoint::load(&out).unwrap();
        // The lossy formats (FP4 experts, FP8 projections) are a fixed point after one trip.
        let again = dir.path().join(format!("{format:?}-again"));
        checkpoint::save(&back, &again, format, None).unwrap();
        let twice = checkpoint::load(&again).unwrap();
        for name in &mtp {
            let (a, b, c) = (&w.tensors[*name], &back.tensors[*name], &twice.tensors[*name]);
            assert_eq!(a.shape, b.shape, "{format:?}: {name}");
            let same = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same(&b.data, &c.data), "{format:?}: {name} changes on a second round trip");
            if format == SaveFormat::F32 {
                assert!(same(&a.data, &b.data), "{name}: F32 keeps the starting weights bit for bit");
            }
        }
        let meta = checkpoint::read_metadata(&out).unwrap();
        assert_eq!(meta.get(MTP_METADATA_KEY).map(String::as_str), Some(MTP_CARRIED_UNCHANGED), "{format:?}");
    }
    let meta = checkpoint::read_metadata(&ck).unwrap();
    assert_eq!(meta.get(MTP_METADATA_KEY).map(String::as_str), Some(MTP_CARRIED_UNCHANGED));
    // and a config without MTP says nothing about it
    let plain = ModelWeights::random(&Config::tiny(), 4).unwrap();
    let out = dir.path().join("plain");
    checkpoint::save(&plain, &out, SaveFormat::F32, None).unwrap();
    assert!(!checkpoint::read_metadata(&out).unwrap().contains_key(MTP_METADATA_KEY));
}
