//! Kill a single-process run mid-stage and resume it: the final trajectory store, the step
//! counts and the weights equal those of an uninterrupted run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const PIPELINE: &str = r#"
[run]
name = "resume"
seed = 3
[model]
base = "preset:tiny"
[[stage]]
kind = "sft"
steps = 3
batch = 2
max_len = 256
[[stage]]
kind = "grpo"
experts = ["math.add", "if.upper"]
steps = 2
prompts = 2
group = 4
[[stage]]
kind = "opd"
steps = 3
prompts = 4
[[stage]]
kind = "eval"
n = 2
harder = "math.add"
"#;

fn v4post(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_v4post")).current_dir(dir).args(args).output().expect("run v4post")
}

/// Every trajectory id of a run directory with how many rows carry it, over all shards.
fn traj_ids(run: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for stage in std::fs::read_dir(run.join("trajectories")).unwrap() {
        let dir = stage.unwrap().path();
        for shard in datasets::store::list_shards(&dir).unwrap() {
            for id in datasets::store::read_ids(&shard).unwrap() {
                *out.entry(id).or_insert(0) += 1;
            }
        }
    }
    out
}

fn weights(p: &Path) -> Vec<(String, Vec<u32>)> {
    let w = model::checkpoint::load(p).unwrap();
    w.tensors.iter().map(|(n, t)| (n.clone(), t.data.iter().map(|x| x.to_bits()).collect())).collect()
}

#[test]
fn killed_run_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("pipeline.toml"), PIPELINE).unwrap();
    }
    let full = v4post(&a, &["run", "pipeline.toml", "--json"]);
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stderr));

    // stop inside the first expert's GRPO stage (sft has 3 steps), then in OPD
    let stop = v4post(&b, &["run", "pipeline.toml", "--stop-after-steps", "4"]);
    assert!(!stop.status.success());
    assert!(String::from_utf8_lossy(&stop.stderr).contains("--resume"));
    let again = v4post(&b, &["run", "--resume", "runs/resume", "--stop-after-steps", "3"]);
    assert!(!again.status.success());
    let done = v4post(&b, &["run", "--resume", "runs/resume", "--json"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));

    let (ra, rb) = (a.join("runs/resume"), b.join("runs/resume"));
    let (ia, ib) = (traj_ids(&ra), traj_ids(&rb));
    assert!(!ia.is_empty());
    assert_eq!(ia, ib, "same trajectories");
    assert!(ib.values().all(|&n| n == 1), "a trajectory stored twice");
    let state = |r: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(r.join("state.json")).unwrap()).unwrap()
    };
    let (sa, sb) = (state(&ra), state(&rb));
    for key in ["grpo/math.add", "grpo/if.upper", "opd"] {
        assert_eq!(sa["completed"][key]["report"]["steps"], sb["completed"][key]["report"]["steps"], "{key}");
    }
    for m in ["sft", "grpo-math.add", "grpo-if.upper", "opd"] {
        assert!(weights(&ra.join("models").join(m)) == weights(&rb.join("models").join(m)), "{m} weights differ");
    }
    // a second run into the same directory is refused, not clobbered
    let clash = v4post(&a, &["run", "pipeline.toml"]);
    assert!(!clash.status.success());
    assert!(String::from_utf8_lossy(&clash.stderr).contains("--resume"));
}
