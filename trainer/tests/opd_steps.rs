//! OPD step bookkeeping with tiny random models: each teacher's head is read once per step
//! however many minibatches the step has (with one resident teacher), and a prompt file
//! smaller than the prompts drawn never yields the same trajectory id twice.

use datasets::chat::Mode;
use datasets::progress::NoProgress;
use datasets::prompts::PromptSource;
use datasets::store::{MetricsWriter, Trajectory, TrajectoryStore};
use datasets::tasks::Split;
use datasets::ByteTokenizer;
use model::checkpoint::{self, SaveFormat};
use model::train::TrainOptions;
use model::{Config, ModelWeights};
use rollout::RolloutJob;
use std::collections::HashSet;
use std::path::Path;
use teachers::{Registry, TeacherPool, TeacherSpec};
use trainer::grpo::{LocalRollouts, Rollouts};
use trainer::opd::{run_opd, LocalTeachers, OpdConfig};
use trainer::optim::OptimConfig;
use trainer::Session;
use trainer::TrainIo;

/// A math teacher, an instruction teacher and a generalist mixed into every sample, so
/// every minibatch needs every head.
fn registry(root: &Path) -> Registry {
    let teachers = [("math", "math.*", 1.0), ("if", "if.*", 1.0), ("general", "*", 0.5)];
    let specs = teachers
        .iter()
        .enumerate()
        .map(|(i, &(id, domains, weight))| {
            let p = root.join(id);
            let w = ModelWeights::random(&Config::tiny(), 100 + i as u64).unwrap();
            checkpoint::save(&w, &p, SaveFormat::F32, None).unwrap();
            TeacherSpec { id: id.into(), checkpoint: p, domains: vec![domains.into()], weight }
        })
        .collect();
    Registry::new(specs).unwrap()
}

fn config(steps: u64, prompts_per_step: usize, group_size: usize, minibatch: usize) -> OpdConfig {
    OpdConfig {
        steps,
        prompts_per_step,
        group_size,
        minibatch,
        mode_mix: vec![(Mode::NonThink, 1.0)],
        max_tokens: vec![(Mode::NonThink, 6)],
        ..Default::default()
    }
}

/// Local rollouts that store every trajectory and remember what the store made of them.
struct Storing<'a> {
    inner: LocalRollouts<'a>,
    store: TrajectoryStore,
    ids: Vec<String>,
    skipped: usize,
}

impl Rollouts for Storing<'_> {
    fn sample(&mut self, job: &RolloutJob, policy: &ModelWeights) -> trainer::Result<Vec<Trajectory>> {
        let trajs = self.inner.sample(job, policy)?;
        self.skipped += self.store.write(&trajs)?.skipped;
        self.ids.extend(trajs.iter().map(|t| t.traj_id.clone()));
        Ok(trajs)
    }
}

#[test]
fn each_teacher_head_is_loaded_once_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsWriter::new(&dir.path().join("metrics"), "t").unwrap();
    let reg = registry(dir.path());
    let base = ModelWeights::random(&Config::tiny(), 7).unwrap();
    let mut s = Session::new(&base, TrainOptions::default(), OptimConfig::default(), 7).unwrap();
    let src = PromptSource::Builtin {
        domains: "math.add,if.upper".into(),
        split: Split::Train,
        seed: 3,
        difficulty: Default::default(),
    };
    let mut r = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
    let mut t = LocalTeachers { pool: TeacherPool::new(reg.clone(), 1), store: None };
    for step in 1..=2u64 {
        // 8 samples in minibatches of 2: four minibatches, each with every teacher
        let cfg = config(step, 8, 1, 2);
        let rep = run_opd(&mut s, &cfg, &src, &mut r, &mut t, &reg, &mut TrainIo::quiet(&mut m)).unwrap();
        assert!(rep.kl_last.is_finite() && rep.kl_last > 0.0, "step {step}: KL {}", rep.kl_last);
        let n = reg.len() * step as usize;
        assert_eq!(t.pool.head_loads, n, "after step {step}: one head load per teacher per step");
        assert_eq!(t.pool.loads, n, "after step {step}: whole teachers are loaded for their states only");
        assert!(t.pool.resident() <= 1);
    }
}

#[test]
fn a_prompt_file_that_wraps_around_never_repeats_a_trajectory_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsWriter::new(&dir.path().join("metrics"), "t").unwrap();
    let reg = registry(dir.path());
    let prompts = dir.path().join("three.jsonl");
    std::fs::write(
        &prompts,
        concat!(
            "{\"prompt\": \"What is 1+2?\", \"answer\": 3, \"domain\": \"math.add\"}\n",
            "{\"prompt\": \"Say yes in capitals.\", \"answer\": \"YES\", \"domain\": \"if.upper\"}\n",
            "{\"prompt\": \"What is 2+2?\", \"answer\": 4, \"domain\": \"math.add\"}\n",
        ),
    )
    .unwrap();
    let base = ModelWeights::random(&Config::tiny(), 8).unwrap();
    let mut s = Session::new(&base, TrainOptions::default(), OptimConfig::default(), 8).unwrap();
    let inner = LocalRollouts { tok: &ByteTokenizer, store: None, opts: Default::default(), progress: &NoProgress };
    let store = TrajectoryStore::open(&dir.path().join("trajectories")).unwrap();
    let mut r = Storing { inner, store, ids: Vec::new(), skipped: 0 };
    let mut t = LocalTeachers { pool: TeacherPool::new(reg.clone(), 1), store: None };
    // 8 prompts per step from 3 records, 2 samples each, 2 steps
    let cfg = config(2, 8, 2, 4);
    run_opd(&mut s, &cfg, &PromptSource::File(prompts), &mut r, &mut t, &reg, &mut TrainIo::quiet(&mut m)).unwrap();
    assert_eq!(r.ids.len(), 2 * 8 * 2);
    let unique: HashSet<&String> = r.ids.iter().collect();
    assert_eq!(unique.len(), r.ids.len(), "repeated trajectory ids: {:?}", r.ids);
    assert_eq!(r.skipped, 0, "the store dropped trajectories as already stored");
    assert_eq!(r.store.len(), 32);
}
