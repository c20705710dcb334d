//! The shipped base leaves room to learn: on the demo's evaluation prompts (its curriculum of
//! difficulties, the eval stage's prompts per domain, greedy, mean over Non-think and Think
//! High) it is non-zero but imperfect on every built-in domain. These are the numbers of the
//! README's "base" column; a base that solves a domain perfectly leaves its expert nothing to
//! beat, one that scores zero gives GRPO no reward to start from.

use datasets::progress::NoProgress;
use orchestrator::pipeline::config::{PipelineConfig, Stage};
use orchestrator::pipeline::results;
use std::path::Path;

#[test]
fn shipped_base_is_nonzero_and_imperfect_on_every_domain_of_the_demo() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/v4-small-base");
    let cfg = PipelineConfig::demo(false, &base.to_string_lossy());
    let n = cfg
        .stages
        .iter()
        .find_map(|s| match s {
            Stage::Eval(e) => Some(e.n),
            _ => None,
        })
        .expect("the demo has an eval stage");
    let ts = results::eval_tasks(&cfg, n).unwrap();
    let w = model::checkpoint::load(&base).unwrap();
    let scores = results::scores(&w, &ts, &NoProgress).unwrap();
    assert_eq!(scores.len(), datasets::tasks::domains().len(), "every built-in domain is scored");
    let difficulty = cfg.data.difficulty().unwrap();
    for (d, a) in &scores {
        eprintln!("{d:<14} difficulty {:<4} base {a:.3}", difficulty.describe(d));
    }
    let bad: Vec<String> =
        scores.iter().filter(|(_, a)| !(**a > 0.0 && **a < 1.0)).map(|(d, a)| format!("{d} {a:.3}")).collect();
    assert!(bad.is_empty(), "the shipped base must be non-zero and imperfect on every domain: {bad:?}");
}
