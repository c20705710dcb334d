//! `--json` on the verbs that write files and used to report them only on stderr:
//! `tasks sample`, `model forward`, `model quantize` and `report`. Each prints one JSON object
//! on stdout whose fields match what was written; without `--json` stdout stays empty and the
//! human line goes to stderr as before.

use std::path::Path;
use std::process::{Command, Output};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/golden/v4-tiny-a");

fn v4post(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_v4post")).args(args).env("V4POST_NO_PROGRESS", "1").output().unwrap()
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object on stdout")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn tasks_sample_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p.jsonl");
    let v = json_of(&v4post(&[
        "tasks",
        "sample",
        "--domains",
        "math.add",
        "--n",
        "4",
        "--seed",
        "3",
        "--split",
        "eval",
        "--out",
        s(&out),
        "--json",
    ]));
    assert_eq!(v["prompts"], 4, "{v}");
    assert_eq!(v["domain"], "math.add", "{v}");
    assert_eq!(v["split"], "eval", "{v}");
    assert_eq!(v["seed"], 3, "{v}");
    assert_eq!(v["out"], s(&out), "{v}");
    let lines = std::fs::read_to_string(&out).unwrap().lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(lines, 4);

    // without --json: nothing on stdout, the human line on stderr; the old `--domain`
    // spelling still works, with a deprecation warning
    let out2 = tmp.path().join("q.jsonl");
    let o = v4post(&["tasks", "sample", "--domain", "math.add", "--n", "2", "--out", s(&out2)]);
    assert!(o.status.success());
    assert!(o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stdout));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrote 2 train prompts of math.add"), "{err}");
    assert!(err.contains("warning: `tasks sample --domain` is deprecated; use `--domains`"), "{err}");
}

#[test]
fn model_forward_json() {
    let tmp = tempfile::tempdir().unwrap();
    let toks = tmp.path().join("t.json");
    std::fs::write(&toks, "[[1, 2, 3, 4], [5, 6]]").unwrap();
    let out = tmp.path().join("logits.safetensors");
    let v =
        json_of(&v4post(&["model", "forward", "--checkpoint", TINY, "--tokens", s(&toks), "--out", s(&out), "--json"]));
    assert_eq!(v["sequences"], 2, "{v}");
    assert_eq!(v["out"], s(&out), "{v}");
    assert!(out.is_file());
}

#[test]
fn model_quantize_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    let v =
        json_of(&v4post(&["model", "quantize", "--checkpoint", TINY, "--out", s(&out), "--format", "f32", "--json"]));
    assert_eq!(v["format"], "f32", "{v}");
    assert_eq!(v["out"], s(&out), "{v}");
    assert!(v["params"].as_u64().unwrap() > 0, "{v}");
    let on_disk: u64 = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert_eq!(v["bytes"].as_u64(), Some(on_disk), "{v}");
}

#[test]
fn report_json() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r1");
    let mut w = datasets::store::MetricsWriter::new(&run.join("metrics"), "r1").unwrap();
    for step in 0..3u64 {
        w.log("sft", step, "loss", 2.0 - step as f64 * 0.1, (None, None, None), step * 10);
    }
    w.flush().unwrap();
    let html = tmp.path().join("report.html");
    let tb = tmp.path().join("tb");
    let v = json_of(&v4post(&["report", s(&run), "--out", s(&html), "--tensorboard", s(&tb), "--json"]));
    assert_eq!(v["report"], s(&html), "{v}");
    let runs = v["tensorboard"].as_array().expect("tensorboard list");
    assert_eq!(runs.len(), 1, "{v}");
    assert_eq!(runs[0]["run"], "r1", "{v}");
    assert_eq!(runs[0]["scalars"], 3, "{v}");
    assert!(Path::new(runs[0]["path"].as_str().unwrap()).exists(), "{v}");
    assert!(html.is_file());

    // --tensorboard alone: report is null
    let v = json_of(&v4post(&["report", s(&run), "--tensorboard", s(&tmp.path().join("tb2")), "--json"]));
    assert!(v["report"].is_null(), "{v}");
    assert_eq!(v["tensorboard"][0]["scalars"], 3, "{v}");
}
