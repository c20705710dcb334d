//! SFT on the user's own conversations from the command line and in pipelines:
//! `v4post sft --data GLOB` trains on them (its log says how many, loss falls), a pipeline
//! SFT stage with `data = "…"` runs on them, and a missing or malformed `data` fails before
//! the run starts, naming the stage and the field (and the file, row and column).

use std::path::Path;
use std::process::{Command, Output};

fn v4post(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_v4post")).current_dir(dir).args(args).output().expect("run v4post")
}

/// Two JSONL shards: TRL `messages` and `prompt`/`completion`.
fn shards(dir: &Path) {
    std::fs::create_dir_all(dir.join("chat")).unwrap();
    std::fs::write(
        dir.join("chat/train-00000-of-00002.jsonl"),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Say the word.\"}, {\"role\": \"assistant\", \"content\": \"xyzzy plugh\"}]}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("chat/train-00001-of-00002.jsonl"),
        "{\"prompt\": \"Again?\", \"completion\": \"plugh xyzzy\"}\n",
    )
    .unwrap();
}

/// The `sft: N steps, loss A → B, …` summary line's losses.
fn losses(stderr: &str) -> (f32, f32) {
    let line = stderr.lines().find(|l| l.starts_with("sft: ")).unwrap_or_else(|| panic!("no summary in {stderr}"));
    let after = line.split("loss ").nth(1).unwrap();
    let mut it = after.split([' ', ',']).filter(|s| !s.is_empty());
    let a: f32 = it.next().unwrap().parse().unwrap();
    assert_eq!(it.next(), Some("→"));
    let b: f32 = it.next().unwrap().parse().unwrap();
    (a, b)
}

#[test]
fn sft_data_trains_on_the_users_conversations() {
    let tmp = tempfile::tempdir().unwrap();
    shards(tmp.path());
    let args = ["sft", "--preset", "tiny", "--data", "chat/train-*.jsonl", "--steps", "15", "--batch", "2"];
    let out = v4post(tmp.path(), &[&args[..], &["--max-len", "128", "--modes", "non_think", "--out", "o"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("SFT data: 2 conversations from chat/train-*.jsonl"), "{err}");
    let (first, last) = losses(&err);
    assert!(last < first * 0.5, "{err}");
    assert!(tmp.path().join("o/config.json").exists());
    // a bad row fails before a model is loaded, naming file, row and column
    std::fs::write(
        tmp.path().join("bad.jsonl"),
        "{\"prompt\": \"x\", \"completion\": \"y\"}\n{\"prompt\": 3, \"completion\": \"y\"}\n",
    )
    .unwrap();
    let out = v4post(tmp.path(), &["sft", "--preset", "tiny", "--data", "bad.jsonl", "--steps", "1", "--out", "o2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.jsonl: row 2: column `prompt`") && err.contains("found a number"), "{err}");
    assert!(!tmp.path().join("o2").exists());
}

const PIPELINE: &str = r#"
[run]
name = "chat"
[model]
base = "preset:tiny"
[[stage]]
kind = "sft"
steps = 3
batch = 2
max_len = 128
modes = ["non_think"]
data = "DATA"
"#;

#[test]
fn a_pipeline_sft_stage_trains_on_its_data_and_checks_it_first() {
    let tmp = tempfile::tempdir().unwrap();
    shards(tmp.path());
    std::fs::write(tmp.path().join("p.toml"), PIPELINE.replace("DATA", "chat")).unwrap();
    let out = v4post(tmp.path(), &["run", "p.toml", "--runs-dir", "runs"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(tmp.path().join("runs/chat").is_dir(), "{err}");
    // missing data, a bad row, a domain pattern matching no record: errors before the run
    for (data, extra, want) in [
        // (relative paths are made absolute before the checks)
        ("nope/train-*.jsonl", "", ["stage 1 (sft \"*\"): data: /", "nope/train-*.jsonl: no such directory"]),
        ("bad.jsonl", "", ["stage 1 (sft \"*\"): data: /", "bad.jsonl: row 1: column `completion`"]),
        (
            "chat",
            "domains = \"math.*\"\n",
            ["stage 1 (sft \"math.*\"): domains: `math.*` matches no domain", "chat (user)"],
        ),
    ] {
        std::fs::write(tmp.path().join("bad.jsonl"), "{\"prompt\": \"x\", \"completion\": 5}\n").unwrap();
        let text = PIPELINE.replace("DATA", data).replace("[[stage]]\n", &format!("[[stage]]\n{extra}"));
        std::fs::write(tmp.path().join("bad.toml"), text).unwrap();
        let out = v4post(tmp.path(), &["run", "bad.toml", "--runs-dir", "bad-runs"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{data}: {err}");
        assert!(want.iter().all(|w| err.contains(w)), "want {want:?} in {err}");
        assert!(!tmp.path().join("bad-runs/chat").exists(), "{err}");
    }
}
