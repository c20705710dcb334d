//! The example pipeline on user JSONL prompt datasets (examples/pipeline.toml) runs end to
//! end: one expert per domain of the file, OPD, evaluation on the user's eval file.

use std::path::Path;
use std::process::Command;

#[test]
fn example_pipeline_on_user_data() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    let ex = tmp.path().join("examples");
    std::fs::create_dir_all(ex.join("data")).unwrap();
    for f in ["data/train.jsonl", "data/eval.jsonl"] {
        std::fs::copy(root.join("examples").join(f), ex.join(f)).unwrap();
    }
    // the example as shipped, made smaller for a test
    let text = std::fs::read_to_string(root.join("examples/pipeline.toml")).unwrap();
    let small = text
        .replace("steps = 6", "steps = 1")
        .replace("steps = 8", "steps = 1")
        .replace("n = 16", "n = 2")
        .replace("group = 8", "group = 2");
    std::fs::write(ex.join("pipeline.toml"), small).unwrap();
    // a user checkpoint directory: here a tiny random one written by `v4post model`-style save
    let w = model::ModelWeights::random(&model::Config::tiny(), 1).unwrap();
    model::checkpoint::save(
        &w,
        &tmp.path().join("assets/v4-small-base"),
        model::checkpoint::SaveFormat::Official,
        None,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_v4post"))
        .current_dir(tmp.path())
        .args(["run", "examples/pipeline.toml", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = tmp.path().join("runs/my-data");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    let domains: Vec<&str> =
        results["domains"].as_array().unwrap().iter().filter_map(|d| d["domain"].as_str()).collect();
    assert_eq!(domains, ["shop.total", "units.minutes"]);
    let teachers = std::fs::read_to_string(run.join("teachers.toml")).unwrap();
    assert!(teachers.contains("shop.total") && teachers.contains("units.minutes"));
    assert!(run.join("report.html").exists());
    assert!(results["domains"][0]["teacher"].is_number() && results["domains"][0]["student"].is_number());
}
