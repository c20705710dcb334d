//! Two GRPO experts (SFT then GRPO, each on its own domain) distilled onto one tiny student
//! by full-vocabulary OPD: on held-out prompts, the student's reverse KL to each domain's
//! teacher shrinks, so the student ends close to both teachers at once.

use datasets::chat::Mode;
use datasets::progress::NoProgress;
use datasets::prompts::PromptSource;
use datasets::store::MetricsWriter;
use datasets::tasks::{self, Split};
use datasets::ByteTokenizer;
use model::checkpoint::{self, SaveFormat};
use model::train::TrainOptions;
use model::{Config, ModelWeights};
use teachers::{Registry, TeacherPool, TeacherSpec};
use trainer::grpo::{run_grpo, GrpoConfig, LocalRollouts};
use trainer::opd::{eval_gap, run_opd, LocalTeachers, OpdConfig};
use trainer::optim::OptimConfig;
use trainer::sft::{run_sft, SftConfig};
use trainer::Session;
use trainer::TrainIo;

fn expert(base: &ModelWeights, domain: &str, seed: u64, m: &mut MetricsWriter) -> ModelWeights {
    let mut s = Session::new(base, TrainOptions::default(), OptimConfig::default(), seed).unwrap();
    let sft = SftConfig {
        steps: 25,
        batch: 4,
        max_len: 128,
        domains: domain.into(),
        modes: vec![Mode::NonThink],
        ..Default::default()
    };
    run_sft(&mut s, &sft, &ByteTokenizer, &mut TrainIo::quiet(m)).unwrap();
    let grpo = GrpoConfig {
        steps: 27,
        prompts_per_step: 4,
        group_size: 4,
        modes: vec![Mode::NonThink],
        minibatch: 16,
        ..Default::default()
    };
    let src =
        PromptSource::Builtin { domains: domain.into(), split: Split::Train, seed, difficulty: Default::default() };
    let mut r = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
    // continue the same session: SFT left it at step 25
    run_grpo(&mut s, &grpo, &src, &mut r, None, &mut TrainIo::quiet(m)).unwrap();
    s.weights().unwrap()
}

#[test]
fn student_closes_the_gap_to_two_grpo_experts() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsWriter::new(&dir.path().join("metrics"), "t").unwrap();
    let base = ModelWeights::random(&Config::tiny(), 11).unwrap();
    let domains = ["math.add", "if.upper"];
    let mut specs = Vec::new();
    for (i, d) in domains.iter().enumerate() {
        let w = expert(&base, d, 20 + i as u64, &mut m);
        let p = dir.path().join(d);
        checkpoint::save(&w, &p, SaveFormat::F32, None).unwrap();
        specs.push(TeacherSpec { id: d.to_string(), checkpoint: p, domains: vec![d.to_string()], weight: 1.0 });
    }
    let reg = Registry::new(specs).unwrap();
    reg.validate_against(None, &base.config).unwrap();
    let eval: Vec<_> = domains.iter().flat_map(|d| tasks::sample(d, Split::Eval, 3, 6, None).unwrap()).collect();
    let mut pool = TeacherPool::new(reg.clone(), 1);
    let before = eval_gap(&base, &reg, &mut pool, &eval, Mode::NonThink, 24, &ByteTokenizer).unwrap();

    let mut s = Session::new(&base, TrainOptions::default(), OptimConfig::default(), 7).unwrap();
    let cfg = OpdConfig {
        steps: 30,
        prompts_per_step: 8,
        mode_mix: vec![(Mode::NonThink, 1.0)],
        max_tokens: vec![(Mode::NonThink, 24)],
        minibatch: 8,
        ..Default::default()
    };
    let src = PromptSource::Builtin {
        domains: domains.join(","),
        split: Split::Train,
        seed: 5,
        difficulty: Default::default(),
    };
    let mut r = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
    let mut t = LocalTeachers { pool: TeacherPool::new(reg.clone(), 1), store: None };
    let rep = run_opd(&mut s, &cfg, &src, &mut r, &mut t, &reg, &mut TrainIo::quiet(&mut m)).unwrap();
    assert!(t.pool.resident() <= 1, "one teacher resident at a time");
    let student = s.weights().unwrap();
    let after = eval_gap(&student, &reg, &mut pool, &eval, Mode::NonThink, 24, &ByteTokenizer).unwrap();
    eprintln!(
        "training KL {:.4} → {:.4}; held-out KL by domain before {before:?} after {after:?}",
        rep.kl_first, rep.kl_last
    );
    for d in domains {
        assert!(after[d] < 0.5 * before[d], "{d}: held-out reverse KL {} → {}", before[d], after[d]);
    }
}
