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

/// A real `kill -9` of the trainer in the middle of a GRPO stage (once one of its
/// checkpoints exists), then `--resume`: the run completes, every stage is recorded and no
/// trajectory is stored twice.
#[test]
fn sigkilled_run_resumes_without_duplicates() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pipeline.toml"), PIPELINE).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_v4post"))
        .current_dir(&dir)
        .args(["run", "pipeline.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn v4post");
    let ckpts = dir.join("runs/resume/checkpoints/grpo");
    let mid_stage_checkpoint = || {
        std::fs::read_dir(&ckpts).into_iter().flatten().flatten().any(|expert| {
            std::fs::read_dir(expert.path()).into_iter().flatten().flatten().any(|c| {
                let name = c.file_name().to_string_lossy().into_owned();
                !name.starts_with('.') && !name.ends_with(".tmp")
            })
        })
    };
    let t = Instant::now();
    while !mid_stage_checkpoint() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the run ended ({st}) before a GRPO checkpoint appeared");
        }
        assert!(t.elapsed() < Duration::from_secs(600), "no GRPO checkpoint after 10 min");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
    let st = child.wait().unwrap();
    assert!(!st.success(), "killed run reported success");
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(9), "{st}");
    }
    let done = v4post(&dir, &["run", "--resume", "runs/resume", "--json"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let run = dir.join("runs/resume");
    let ids = traj_ids(&run);
    assert!(!ids.is_empty());
    let dup: Vec<_> = ids.iter().filter(|(_, &n)| n > 1).collect();
    assert!(dup.is_empty(), "trajectories stored twice: {dup:?}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    for key in ["sft", "grpo/math.add", "grpo/if.upper", "opd"] {
        assert!(!state["completed"][key].is_null(), "{key} not completed: {}", state["completed"]);
    }
    for m in ["sft", "grpo-math.add", "grpo-if.upper", "opd"] {
        assert!(run.join("models").join(m).exists(), "model {m} missing");
    }
}
