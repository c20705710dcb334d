//! `v4post run pipeline.toml` checks the whole file before the first stage: a bad file fails
//! in under a second, names the field, and leaves no run directory. A GRPO stage with a KL
//! penalty (`variant = "grpo"`, β = 0.04) gets its frozen reference and runs.

use orchestrator::pipeline::config::Stage;
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

/// `dir/ckpt`: golden A (no tokenizer.json: the byte tokenizer) with its context set to
/// `context` positions (it declares 256).
fn golden_a(dir: &Path, context: u64) -> std::path::PathBuf {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/v4-tiny-a");
    let ck = dir.join("ckpt");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::copy(golden.join("model.safetensors"), ck.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["max_position_embeddings"], 256);
    config["max_position_embeddings"] = context.into();
    std::fs::write(ck.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    ck
}

/// The length of the longest Non-think prompt of the first `n` built-in `math.add` draws,
/// encoded as a rollout encodes it (chat template, byte tokenizer).
fn longest_math_add_prompt(n: usize) -> usize {
    use datasets::tokenizer::Tokenizer;
    let d = datasets::tasks::Difficulty::uniform(None);
    let ts = datasets::tasks::sample_with("math.add", datasets::Split::Train, 1, n, &d).unwrap();
    let tok = datasets::tokenizer::ByteTokenizer;
    ts.iter().map(|t| tok.encode(&t.prompt_text(datasets::chat::Mode::NonThink)).len()).max().unwrap()
}

/// Golden A declares 256 positions; a GRPO stage in Non-think (budget 224) cannot hold a
/// prompt and its response there. The rollouts failed mid-run ("sequence exceeds
/// max_seq_len", on every delivery); now the pipeline is refused before it starts.
#[test]
fn budgets_the_context_cannot_hold_are_refused_before_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    golden_a(tmp.path(), 256);
    // SFT packs fit 256 positions: the stage that cannot start is the first with rollouts
    let pipeline = GOOD.replace("base = \"preset:tiny\"", "base = \"ckpt\"").replace("# sft", "max_len = 256");
    std::fs::write(tmp.path().join("pipeline.toml"), &pipeline).unwrap();
    assert!(v4post(tmp.path(), &["--help"]).status.success());
    let t0 = Instant::now();
    let out = v4post(tmp.path(), &["run", "pipeline.toml"]);
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted:\n{err}");
    // the first stage with rollouts; the run samples prompts drawn with seed 1
    let want =
        "stage 2 (grpo \"math.add\"): modes: non_think: the response budget of 224 tokens plus the longest prompt";
    assert!(err.contains(want), "expected `{want}` in:\n{err}");
    assert!(err.contains("more than the model's context of 256"), "{err}");
    assert!(err.contains("Lower the budget") && err.contains("raise the model's context"), "{err}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(!tmp.path().join("runs").exists(), "the run directory was written");

    // the prompt length it names is the one a rollout would encode
    let c = orchestrator::pipeline::config::PipelineConfig::load(&tmp.path().join("pipeline.toml")).unwrap();
    let e = orchestrator::pipeline::validate::preflight(&c).unwrap_err().to_string();
    let Some(Stage::Grpo(g)) = c.stages.get(1) else { panic!("stage 2 is grpo: {c:?}") };
    let draws = (g.steps * g.prompts as u64 * (1 + g.refill_rounds as u64)) as usize;
    let longest = longest_math_add_prompt(draws);
    assert!(e.contains(&format!("longest prompt ({longest} tokens")), "{e}");
    assert!(e.contains(&format!("need {} positions", longest + 224)), "{e}");
}

/// The same pipeline over a context that holds every stage's prompts and budgets passes
/// (Think Max: its ~480-token system prefix plus a 448-token budget).
#[test]
fn a_context_large_enough_passes_validation() {
    let tmp = tempfile::tempdir().unwrap();
    golden_a(tmp.path(), 4096);
    let pipeline = GOOD.replace("base = \"preset:tiny\"", "base = \"ckpt\"");
    std::fs::write(tmp.path().join("pipeline.toml"), &pipeline).unwrap();
    let c = orchestrator::pipeline::config::PipelineConfig::load(&tmp.path().join("pipeline.toml")).unwrap();
    orchestrator::pipeline::validate::preflight(&c).unwrap();
}

/// The Think Max stage checks its own budget (`max_tokens`) with its mode's long system
/// prefix, and the eval stage every mode it evaluates in, on the eval prompts.
#[test]
fn think_max_and_eval_stages_check_their_own_budgets() {
    let tmp = tempfile::tempdir().unwrap();
    golden_a(tmp.path(), 4096);
    let base = GOOD.replace("base = \"preset:tiny\"", "base = \"ckpt\"");
    let preflight = |text: &str| {
        std::fs::write(tmp.path().join("pipeline.toml"), text).unwrap();
        let c = orchestrator::pipeline::config::PipelineConfig::load(&tmp.path().join("pipeline.toml")).unwrap();
        orchestrator::pipeline::validate::preflight(&c).map_err(|e| e.to_string())
    };
    // 3700 < 4096 passes the budget-alone rule; with the prompt it does not fit
    let e = preflight(&base.replace("# think_max", "max_tokens = 3700")).unwrap_err();
    let want = "stage 4 (think_max \"math.add\"): max_tokens: think_max: the response budget of 3700 tokens";
    assert!(e.starts_with(want), "{e}");
    assert!(e.contains("Lower the budget (max_tokens)"), "{e}");
    // the eval stage alone, over a context just too short for its longest Non-think prompt
    let eval_only = "[run]\nname = \"e\"\n[model]\nbase = \"ckpt\"\n[[stage]]\nkind = \"eval\"\nn = 2\n";
    let cfg = tmp.path().join("ckpt/config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    config["max_position_embeddings"] = 300.into();
    std::fs::write(&cfg, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let e = preflight(eval_only).unwrap_err();
    assert!(e.starts_with("stage 1 (eval): non_think: the response budget of 224 tokens"), "{e}");
    assert!(e.contains("more than the model's context of 300"), "{e}");
}
