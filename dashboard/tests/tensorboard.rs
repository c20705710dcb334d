//! TensorBoard export read back by TensorBoard's own EventAccumulator (Python).

use std::process::Command;

#[test]
fn event_files_read_back_by_tensorboard() {
    let tmp = tempfile::tempdir().unwrap();
    let run = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/recorded-opd-run");
    let rows = datasets::store::read_metrics(&run.join("metrics")).unwrap();
    let refs: Vec<_> = rows.iter().collect();
    let path = dashboard::tensorboard::write_events(tmp.path(), "recorded-opd", &refs).unwrap();
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
ea.Reload()
out = {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}
print(json.dumps(out))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(path.parent().unwrap()).output().expect("python3");
    assert!(
        out.status.success(),
        "python3 + tensorboard needed (scripts/test.sh installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: std::collections::BTreeMap<String, Vec<(u64, f64)>> = serde_json::from_slice(&out.stdout).unwrap();
    // every metric row is there with its step and value (f32 precision)
    let mut n = 0;
    for r in &rows {
        let tag = format!("{}/{}", r.stage, dashboard::tensorboard::tag(r));
        let series = got.get(&tag).unwrap_or_else(|| panic!("tag {tag} missing"));
        assert!(
            series.iter().any(|(s, v)| *s == r.step && (v - r.value).abs() <= 1e-6 * r.value.abs().max(1.0)),
            "{tag} step {}",
            r.step
        );
        n += 1;
    }
    assert!(got.contains_key("opd/opd/reverse_kl/teacher=math.add"), "{:?}", got.keys().take(5).collect::<Vec<_>>());
    assert!(n > 100);
}
