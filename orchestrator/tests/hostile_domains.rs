//! Names from data are never paths: a user dataset whose domains are `../../victim`,
//! `../../../../victim` (which from `runs/<name>/checkpoints/grpo/` reaches the directory
//! holding `runs/`) and `openai/gsm8k` runs the whole pipeline (one expert per domain, OPD,
//! evaluation). Nothing outside the run directory changes — a sentinel directory next to
//! `runs/` survives — and every domain shows exactly as written in `results.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const DOMAINS: [&str; 3] = ["../../victim", "../../../../victim", "openai/gsm8k"];

fn pipeline() -> String {
    r#"
[run]
name = "hostile"
seed = 5
queue = "embedded"
[model]
base = "preset:tiny"
[data]
prompts = "data/train.jsonl"
eval_prompts = "data/eval.jsonl"
[[stage]]
kind = "grpo"
experts = ["each"]
steps = 1
prompts = 2
group = 2
modes = ["non_think"]
[[stage]]
kind = "opd"
steps = 1
prompts = 2
group = 2
mode_mix = { non_think = 1.0 }
[[stage]]
kind = "eval"
n = 1
harder = "openai/gsm8k"
"#
    .to_string()
}

/// JSONL rows: `per` addition prompts for each domain.
fn rows(per: u32) -> String {
    let mut out = String::new();
    for d in DOMAINS {
        for i in 0..per {
            let (a, b) = (3 + i, 4 + 2 * i);
            let row = serde_json::json!({"domain": d, "prompt": format!("What is {a} + {b}? Answer in \\boxed{{}}."), "answer": (a + b).to_string()});
            out.push_str(&format!("{row}\n"));
        }
    }
    out
}

/// Every file and directory under `root` (relative path → file contents; `None` for a
/// directory), leaving out `skip`.
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p == skip {
                continue;
            }
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, None);
                todo.push(p);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

#[test]
fn hostile_domains_stay_inside_the_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    // the layout: <tmp>/work/{pipeline.toml,data/,runs/hostile/} and sentinels around it
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("data")).unwrap();
    std::fs::write(work.join("pipeline.toml"), pipeline()).unwrap();
    std::fs::write(work.join("data/train.jsonl"), rows(4)).unwrap();
    std::fs::write(work.join("data/eval.jsonl"), rows(1)).unwrap();
    for victim in [tmp.path().join("victim"), work.join("victim"), work.join("runs/victim")] {
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("sentinel.txt"), "must survive").unwrap();
    }
    let run = work.join("runs/hostile");
    let before = snapshot(tmp.path(), &run);

    let out = Command::new(env!("CARGO_BIN_EXE_v4post"))
        .current_dir(&work)
        .args(["run", "pipeline.toml", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);

    // nothing outside the run directory changed, whatever the run did
    assert_eq!(snapshot(tmp.path(), &run), before, "files outside the run directory changed\n{stderr}");
    assert!(out.status.success(), "{stderr}");

    // names as written in results.json and the teacher registry
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    let mut shown: Vec<&str> =
        results["domains"].as_array().unwrap().iter().filter_map(|d| d["domain"].as_str()).collect();
    shown.sort();
    let mut want = DOMAINS.to_vec();
    want.sort();
    assert_eq!(shown, want);
    for d in results["domains"].as_array().unwrap() {
        assert!(d["teacher"].is_number() && d["student"].is_number(), "{d}");
    }
    let reg = teachers::Registry::load(&run.join("teachers.toml")).unwrap();
    let mut ids: Vec<&str> = reg.teachers.iter().map(|t| t.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, want);
    // every expert's model is a direct child of runs/hostile/models, named by its escaped domain
    for t in &reg.teachers {
        assert_eq!(t.checkpoint.parent().unwrap(), run.join("models"), "{}", t.checkpoint.display());
        let name = t.checkpoint.file_name().unwrap().to_str().unwrap();
        let escaped = name.strip_prefix("grpo-").unwrap();
        assert_eq!(datasets::name_of_component(escaped).unwrap(), t.id);
    }
    assert!(run.join("models/grpo-openai%2Fgsm8k").is_dir());
    assert!(run.join("report.html").exists());
}
