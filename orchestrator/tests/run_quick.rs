//! `v4post run --quick`: the reduced demo pipeline on the shipped base (assets/v4-small-base)
//! runs end to end through the binary, within the 3-minute budget, and writes results.json in
//! the documented shape plus report.html.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[test]
fn quick_demo_runs_end_to_end_on_the_shipped_base() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(
        root.join("assets/v4-small-base/config.json").exists(),
        "the shipped base assets/v4-small-base is missing (see assets/README.md)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    // run from the repository root (the default base is found there), runs under a temp dir
    let out = Command::new(env!("CARGO_BIN_EXE_v4post"))
        .current_dir(&root)
        .args(["run", "--quick", "--name", "q", "--json", "--runs-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let wall = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = tmp.path().join("q");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    // the printed JSON is the same document
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, results);
    let domains = results["domains"].as_array().unwrap();
    assert!(domains.len() >= 12, "every built-in domain is evaluated: {}", domains.len());
    for d in domains {
        for k in ["domain", "family", "difficulty"] {
            assert!(d[k].is_string(), "{k} in {d}");
        }
        for k in ["base", "student", "think_max"] {
            let v = d[k].as_f64().unwrap_or(f64::NAN);
            assert!((0.0..=1.0).contains(&v), "{k} = {v} in {d}");
        }
    }
    // --quick builds two experts (math.add, if.upper); the other domains have no teacher
    let with_teacher: Vec<&str> =
        domains.iter().filter(|d| d["teacher"].is_number()).filter_map(|d| d["domain"].as_str()).collect();
    assert_eq!(with_teacher, ["if.upper", "math.add"]);
    // the demo's curriculum: two domains the base solves at difficulty 1 are drawn harder
    let difficulty = |name: &str| {
        domains.iter().find(|d| d["domain"] == name).and_then(|d| d["difficulty"].as_str()).unwrap_or("").to_string()
    };
    assert_eq!(
        (difficulty("agent.calc"), difficulty("code.loop"), difficulty("math.add")),
        ("1-2".into(), "2".into(), "1".into())
    );
    assert!(results["by_mode"].is_object());
    assert!(results["wall_s"].as_f64().unwrap() > 0.0);
    assert!(run.join("report.html").exists());
    assert!(run.join("teachers.toml").exists());
    eprintln!("v4post run --quick: {wall:.1} s wall (pipeline {:.1} s)", results["wall_s"].as_f64().unwrap());
    // (wall time reported above, not asserted: speed targets live in benchmarks and CI
    // machines are shared; a hang is still caught by the harness)
}
