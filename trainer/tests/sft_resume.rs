//! SFT learns, and a run killed after step k and resumed gives bit-identical weights and
//! optimizer state to an uninterrupted run.

use datasets::store::MetricsWriter;
use datasets::ByteTokenizer;
use model::train::TrainOptions;
use model::{Config, ModelWeights};
use trainer::optim::OptimConfig;
use trainer::sft::{run_sft, SftConfig};
use trainer::Session;
use trainer::TrainIo;

fn cfg(steps: u64) -> SftConfig {
    SftConfig { steps, batch: 2, max_len: 96, warmup: 1, domains: "math.add,if.upper".into(), ..Default::default() }
}

#[test]
fn sft_loss_decreases() {
    let w = ModelWeights::random(&Config::tiny(), 1).unwrap();
    let mut s = Session::new(&w, TrainOptions::default(), OptimConfig::default(), 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsWriter::new(dir.path(), "t").unwrap();
    let r = run_sft(&mut s, &SftConfig { steps: 30, ..cfg(30) }, &ByteTokenizer, &mut TrainIo::quiet(&mut m)).unwrap();
    eprintln!("sft loss {} → {}", r.first_loss, r.final_loss);
    assert!(r.final_loss < r.first_loss * 0.8, "{r:?}");
}

#[test]
fn killed_and_resumed_run_is_bit_identical() {
    let w = ModelWeights::random(&Config::tiny(), 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsWriter::new(dir.path(), "t").unwrap();
    // uninterrupted
    let mut a = Session::new(&w, TrainOptions::default(), OptimConfig::default(), 5).unwrap();
    run_sft(&mut a, &cfg(6), &ByteTokenizer, &mut TrainIo::quiet(&mut m)).unwrap();
    // interrupted after 3 steps (`stop_at`: the schedule still spans 6), restored, continued
    let mut b = Session::new(&w, TrainOptions::default(), OptimConfig::default(), 5).unwrap();
    run_sft(&mut b, &SftConfig { stop_at: Some(3), ..cfg(6) }, &ByteTokenizer, &mut TrainIo::quiet(&mut m)).unwrap();
    assert_eq!(b.counters.step, 3);
    let ck = dir.path().join("ckpt");
    b.save(&ck).unwrap();
    drop(b);
    let latest = Session::latest(&ck).expect("latest checkpoint");
    let mut c = Session::load(&latest, TrainOptions::default(), OptimConfig::default()).unwrap();
    assert_eq!(c.counters.step, 3);
    run_sft(&mut c, &cfg(6), &ByteTokenizer, &mut TrainIo::quiet(&mut m)).unwrap();
    let (wa, wc) = (a.weights().unwrap(), c.weights().unwrap());
    for (name, t) in &wa.tensors {
        assert!(t.data.iter().zip(&wc.tensors[name].data).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs");
    }
    assert_eq!(a.opt, c.opt);
    assert_eq!(a.counters, c.counters);
}

#[test]
fn stopping_early_by_shortening_the_run_would_change_the_schedule() {
    // Why `stop_at` exists: a run of 3 steps decays its learning rate over 3 steps, so
    // continuing it to 6 is not the 6-step run (what `--stop-after-steps` used to do).
    let w = ModelWeights::random(&Config::tiny(), 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsWriter::new(dir.path(), "t").unwrap();
    let mut a = Session::new(&w, TrainOptions::default(), OptimConfig::default(), 5).unwrap();
    run_sft(&mut a, &SftConfig { stop_at: Some(3), ..cfg(6) }, &ByteTokenizer, &mut TrainIo::quiet(&mut m)).unwrap();
    let mut b = Session::new(&w, TrainOptions::default(), OptimConfig::default(), 5).unwrap();
    run_sft(&mut b, &cfg(3), &ByteTokenizer, &mut TrainIo::quiet(&mut m)).unwrap();
    assert_eq!((a.counters.step, b.counters.step), (3, 3));
    let (wa, wb) = (a.weights().unwrap(), b.weights().unwrap());
    assert!(wa.tensors.iter().any(|(n, t)| t.data != wb.tensors[n].data), "the schedules should differ");
}
