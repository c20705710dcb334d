//! `v4post run pipeline.toml` checks the whole file before the first stage: a bad file fails
//! in under a second, names the field, and leaves no run directory. A GRPO stage with a KL
//! penalty (`variant = "grpo"`, β = 0.04) gets its frozen reference and runs.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn v4post(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_v4post")).current_dir(dir).args(args).output().expect("run v4post")
}

/// A valid pipeline; each `# <stage>` line is where a case adds a key to that stage, `# top`
/// where it adds a section.
const GOOD: &str = r#"
[run]
name = "bad"
[model]
base = "preset:tiny"
# top
[[stage]]
kind = "sft"
steps = 1
# sft
[[stage]]
kind = "grpo"
experts = ["math.add"]
steps = 1
# grpo
[[stage]]
kind = "opd"
steps = 1
# opd
[[stage]]
kind = "think_max"
domains = "math.add"
# think_max
[[stage]]
kind = "eval"
harder = "math.add"
# eval
"#;

/// (what is replaced, by what, what the error must say).
const BAD: &[(&str, &str, &str)] = &[
    ("# grpo", "variant = \"grpoo\"", "stage 2 (grpo \"math.add\"): variant: unknown variant \"grpoo\""),
    ("# sft", "stepz = 3", "stage 1 (sft \"*\"): stepz: unknown field `stepz`"),
    ("# grpo", "prompts = \"two\"", "stage 2 (grpo \"math.add\"): prompts: invalid type"),
    ("# sft", "modes = [\"think_hihg\"]", "stage 1 (sft \"*\"): modes: unknown variant `think_hihg`"),
    ("# opd", "estimator = \"exact\"", "stage 3 (opd \"all\"): estimator: unknown estimator \"exact\""),
    ("# opd", "mode_mix = { thinking_max = 1.0 }", "stage 3 (opd \"all\"): mode_mix.thinking_max: unknown mode"),
    ("# opd", "mode_mix = { non_think = \"most\" }", "stage 3 (opd \"all\"): mode_mix.non_think: invalid type"),
    ("# grpo", "group = 1", "stage 2 (grpo \"math.add\"): group: 1 is out of range"),
    ("# grpo", "[stage.anticipatory]\ntrigger = \"sometimes\"", "stage 2 (grpo \"math.add\"): anticipatory.trigger:"),
    ("# grpo", "temperature = -1.0", "stage 2 (grpo \"math.add\"): temperature: -1 is out of range"),
    ("# sft", "[stage.optim]\nlr_muon = -0.1", "stage 1 (sft \"*\"): optim.lr_muon: -0.1"),
    ("# sft", "[stage.optim]\nlr_adamw = \"fast\"", "stage 1 (sft \"*\"): optim.lr_adamw: invalid type"),
    ("# sft", "domains = \"math.nope\"", "stage 1 (sft \"math.nope\"): domains:"),
    ("experts = [\"math.add\"]", "experts = [\"math.add\", \"math.add\"]", "experts: `math.add` appears twice"),
    (
        "experts = [\"math.add\"]",
        "experts = [\" \"]",
        "stage 2 (grpo \" \"): experts: \" \" is not a usable expert name",
    ),
    ("# think_max", "max_tokens = 0", "stage 4 (think_max \"math.add\"): max_tokens: 0 is out of range"),
    ("# think_max", "max_tokens = 99999", "stage 4 (think_max \"math.add\"): max_tokens: 99999 leaves no room"),
    ("# eval", "n = 0", "stage 5 (eval): n: 0 is out of range"),
    ("harder = \"math.add\"", "harder = \"math.nope\"", "stage 5 (eval): harder: `math.nope` matches no built-in"),
    ("# sft", "batch = [1,", "TOML parse error"),
    ("kind = \"eval\"", "kind = \"evaluate\"", "stage 5: kind: unknown kind \"evaluate\""),
    ("# opd", "teachers = \"no-such-teachers.toml\"", "stage 3 (opd \"no-such-teachers.toml\"): teachers:"),
    ("base = \"preset:tiny\"", "base = \"no/such/checkpoint\"", "model.base: no/such/checkpoint: no such checkpoint"),
    ("base = \"preset:tiny\"", "base = \"preset:pro\"", "model.base: preset `pro` is too large"),
    ("base = \"preset:tiny\"", "base = \"preset:huge\"", "model.base: "),
    ("name = \"bad\"", "name = \"bad\"\nqueue = \"amqp://h:1\"", "run.queue: `amqp://h:1`"),
    ("name = \"bad\"", "name = \"bad\"\nseed = -1", "run.seed: invalid value"),
    ("# top", "[wokers]\nlocal = true", "wokers: unknown section"),
    ("# top", "[workers]\njob_prompts = 0", "workers.job_prompts: 0 is out of range"),
    ("# top", "[workers]\nresend_after_s = nan", "workers.resend_after_s: NaN is out of range"),
    ("# top", "[data]\ndifficulty = 7", "data.difficulty: difficulty `7`"),
    ("# top", "[data]\nprompts = \"missing.jsonl\"", "data.prompts: "),
    ("# top", "[data]\nprompts = \"train.csv\"", "data.prompts: train.csv: use a .parquet or .jsonl"),
    // user data: experts and Think Max domains must be domains of the file
    (
        "# top",
        "[data]\nprompts = \"train.jsonl\"",
        "stage 2 (grpo \"math.add\"): experts: `math.add` matches no domain",
    ),
    (
        "[[stage]]\nkind = \"sft\"",
        "[[stage]]\nkind = \"eval\"\n[[stage]]\nkind = \"sft\"",
        "stage 2 (sft \"*\"): kind: stages must follow the recipe order",
    ),
    ("# eval", "[[stage]]\nkind = \"eval\"", "stage 6 (eval): kind: `eval` appears twice"),
];

/// One user prompt of a domain the built-in suite does not have.
const TRAIN_JSONL: &str = r#"{"domain": "shop.total", "prompt": "2 + 3 coins? Answer in \\boxed{}.", "answer": "5"}"#;

#[test]
fn bad_pipeline_files_fail_fast_and_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    // the same binary, warm, so the timing is of validation
    assert!(v4post(tmp.path(), &["--help"]).status.success());
    let good = tmp.path().join("good");
    std::fs::create_dir_all(&good).unwrap();
    for (i, (from, to, want)) in BAD.iter().enumerate() {
        assert_eq!(GOOD.matches(from).count(), 1, "case {i}: `{from}` must occur once in the template");
        let dir = tmp.path().join(format!("case{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("train.jsonl"), TRAIN_JSONL).unwrap();
        std::fs::write(dir.join("pipeline.toml"), GOOD.replace(from, to)).unwrap();
        let t0 = Instant::now();
        let out = v4post(&dir, &["run", "pipeline.toml"]);
        let took = t0.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} ({to}) was accepted");
        assert!(err.contains(want), "case {i} ({to}): expected `{want}` in:\n{err}");
        assert!(took < Duration::from_secs(1), "case {i} ({to}) took {took:?}");
        assert!(!dir.join("runs").exists(), "case {i} ({to}): the run directory was written");
    }
}

#[test]
fn the_good_template_passes_validation() {
    // the template itself is valid: every case above fails because of its one change
    let c = orchestrator::pipeline::config::PipelineConfig::from_toml_str(GOOD).unwrap();
    orchestrator::pipeline::validate::preflight(&c).unwrap();
}

const KL_PIPELINE: &str = r#"
[run]
name = "kl"
seed = 5
[model]
base = "preset:tiny"
[[stage]]
kind = "grpo"
experts = ["math.add"]
variant = "grpo"
steps = 2
prompts = 2
group = 2
modes = ["non_think"]
"#;

/// `variant = "grpo"` has a KL penalty (β = 0.04): the stage's starting weights are its
/// frozen reference. Without one, the stage failed ("a KL penalty needs a reference model").
#[test]
fn grpo_stage_with_a_kl_penalty_runs() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("pipeline.toml"), KL_PIPELINE).unwrap();
    let out = v4post(tmp.path(), &["run", "pipeline.toml", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = tmp.path().join("runs/kl");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["completed"]["grpo/math.add"]["report"]["steps"], 2, "{state}");
    assert!(run.join("models/grpo-math.add/config.json").exists());
    let kl: Vec<f64> = datasets::store::read_metrics(&run.join("metrics"))
        .unwrap()
        .into_iter()
        .filter(|r| r.name == "grpo/kl")
        .map(|r| r.value)
        .collect();
    assert_eq!(kl.len(), 2, "one KL value per step: {kl:?}");
    assert!(kl.iter().all(|k| k.is_finite()), "{kl:?}");
}
