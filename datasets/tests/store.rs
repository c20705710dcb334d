//! Trajectory store, teacher states and metrics: round trips, idempotency, filters,
//! crash safety, and an independent reader (pyarrow) seeing the same values.

use datasets::store::{
    self, teacher_states::TeacherState, trajectories, MetricsWriter, ReadFilter, TeacherStateStore, Trajectory,
    TrajectoryStore,
};
use std::collections::HashSet;
use std::process::Command;

fn traj(i: usize, stage: &str, step: u64, domain: &str) -> Trajectory {
    let n = 3 + i % 5;
    Trajectory {
        traj_id: format!("t{i:04}"),
        run: "r".into(),
        stage: stage.into(),
        step,
        policy_version: step,
        prompt_id: format!("p{}", i / 4),
        group_idx: (i % 4) as u32,
        domain: domain.into(),
        family: domain.split('.').next().unwrap_or("x").into(),
        mode: "think_high".into(),
        teacher_id: (i % 2 == 0).then(|| "math.add".to_string()),
        prompt_tokens: (0..7).map(|k| (k * 3 + i) as u32).collect(),
        response_tokens: (0..n).map(|k| (100 + k + i) as u32).collect(),
        response_logprobs: (0..n).map(|k| -0.25 * k as f32 - i as f32 * 1e-3).collect(),
        response_mask: (i % 3 == 0).then(|| (0..n).map(|k| (k % 2) as u8).collect()),
        routing: (i % 2 == 1).then(|| (0..n * 6).map(|k| (k % 8) as u16).collect()),
        prompt_routing: None,
        routing_width: 6,
        sample_mask: (i % 4 == 0).then(|| (0..n).map(|k| vec![k as u32, 7, 9]).collect()),
        finish_reason: if i % 2 == 0 { "eos" } else { "length" }.into(),
        reward: (i % 5 != 0).then_some(i as f32 / 10.0),
        reward_detail: format!("{{\"i\":{i}}}"),
        response_text: format!("réponse {i}"),
        created_ms: 1_700_000_000_000 + i as i64,
    }
}

#[test]
fn round_trip_and_idempotent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = TrajectoryStore::open(dir.path()).unwrap();
    let a: Vec<Trajectory> =
        (0..40).map(|i| traj(i, "grpo", (i / 10) as u64, if i % 2 == 0 { "math.add" } else { "if.json" })).collect();
    assert_eq!(st.write(&a).unwrap().written, 40);
    // a redelivery of half of them plus new ones: only the new ones are written
    let mut b: Vec<Trajectory> = a[20..].to_vec();
    b.extend((40..50).map(|i| traj(i, "opd", 9, "code.expr")));
    b.push(traj(45, "opd", 9, "code.expr")); // duplicate inside the batch
    let r = st.write(&b).unwrap();
    assert_eq!((r.written, r.skipped), (10, 21));
    // a fresh handle knows the stored ids
    let mut st2 = TrajectoryStore::open(dir.path()).unwrap();
    assert_eq!(st2.len(), 50);
    assert_eq!(st2.write(&a[..5]).unwrap().written, 0);
    let all = trajectories::read_all(dir.path(), &ReadFilter::default()).unwrap();
    assert_eq!(all.len(), 50);
    let ids: HashSet<_> = all.iter().map(|t| t.traj_id.clone()).collect();
    assert_eq!(ids.len(), 50);
    for t in &all {
        let i: usize = t.traj_id[1..].parse().unwrap();
        let want = traj(i, &t.stage, t.step, &t.domain);
        assert_eq!(t, &want);
    }
}

#[test]
fn projection_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = TrajectoryStore::open(dir.path()).unwrap();
    st.write(
        &(0..30)
            .map(|i| {
                traj(i, if i < 20 { "grpo" } else { "opd" }, i as u64, if i % 3 == 0 { "math.add" } else { "if.json" })
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let f = ReadFilter { stage: Some("grpo".into()), steps: Some((5, 14)), domain: Some("math.add".into()) };
    let got = trajectories::read_all(dir.path(), &f).unwrap();
    let want: Vec<usize> = (5..=14).filter(|i| i % 3 == 0).collect();
    assert_eq!(got.iter().map(|t| t.step as usize).collect::<Vec<_>>(), want);
    let batches = trajectories::read_batches(dir.path(), Some(&["traj_id", "reward"]), &ReadFilter::default()).unwrap();
    assert!(batches.iter().all(|b| b.num_columns() == 2));
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 30);
}

#[test]
fn a_shard_whose_writer_died_before_the_rename_is_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = TrajectoryStore::open(dir.path()).unwrap();
    st.write(&[traj(1, "grpo", 0, "math.add")]).unwrap();
    // what a killed writer leaves behind: a partial temporary file
    let good = store::list_shards(dir.path()).unwrap()[0].clone();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(dir.path().join(".part-9999999999999-00000001-000000.parquet.tmp"), &bytes[..bytes.len() / 2])
        .unwrap();
    assert_eq!(store::list_shards(dir.path()).unwrap().len(), 1);
    assert_eq!(trajectories::read_all(dir.path(), &ReadFilter::default()).unwrap().len(), 1);
    assert_eq!(TrajectoryStore::open(dir.path()).unwrap().len(), 1);
}

#[test]
fn pyarrow_reads_the_same_values() {
    if std::env::var("V4POST_SKIP_PYTHON").is_ok() {
        eprintln!("V4POST_SKIP_PYTHON set: skipping the pyarrow cross-check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut st = TrajectoryStore::open(dir.path()).unwrap();
    let ts: Vec<Trajectory> = (0..12).map(|i| traj(i, "grpo", i as u64, "math.add")).collect();
    st.write(&ts).unwrap();
    let script = r#"
import sys, json, glob, pyarrow.parquet as pq
rows = []
for f in sorted(glob.glob(sys.argv[1] + '/part-*.parquet')):
    rows += pq.read_table(f).to_pylist()
print(json.dumps(rows))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.path())
        .output()
        .expect("python3 must be installed (the test command installs it)");
    assert!(out.status.success(), "pyarrow failed: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 12);
    for (r, t) in rows.iter().zip(&ts) {
        assert_eq!(r["traj_id"], t.traj_id);
        assert_eq!(r["step"], t.step);
        assert_eq!(r["response_text"], t.response_text);
        let toks: Vec<u32> = serde_json::from_value(r["response_tokens"].clone()).unwrap();
        assert_eq!(toks, t.response_tokens);
        let lps: Vec<f32> = serde_json::from_value(r["response_logprobs"].clone()).unwrap();
        assert_eq!(lps, t.response_logprobs);
        match t.reward {
            Some(v) => assert!((r["reward"].as_f64().unwrap() as f32 - v).abs() < 1e-6),
            None => assert!(r["reward"].is_null()),
        }
        assert_eq!(r["teacher_id"].as_str(), t.teacher_id.as_deref());
        let mask: Option<Vec<Vec<u32>>> = serde_json::from_value(r["sample_mask"].clone()).unwrap();
        assert_eq!(mask, t.sample_mask);
    }
}

#[test]
fn teacher_states_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = TeacherStateStore::open(dir.path()).unwrap();
    let mk = |id: &str, teacher: &str, len: usize| TeacherState {
        traj_id: id.into(),
        teacher_id: teacher.into(),
        stage: "opd".into(),
        step: 3,
        dim: 8,
        states: (0..len * 8).map(|k| half::f16::from_f32(k as f32 * 0.125 - 1.0)).collect(),
    };
    s.write(&[mk("a", "t1", 3), mk("b", "t1", 5)]).unwrap();
    s.write(&[mk("a", "t2", 3)]).unwrap();
    s.write(&[mk("a", "t1", 9)]).unwrap(); // a late duplicate: the first one wins
    let got = s.read("t1", None).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got["a"], mk("a", "t1", 3));
    assert_eq!(got["b"].len(), 5);
    let only: HashSet<String> = ["b".to_string()].into();
    assert_eq!(s.read("t1", Some(&only)).unwrap().len(), 1);
    assert_eq!(s.read("t2", None).unwrap().len(), 1);
    assert!(s.keys().unwrap().contains(&("a".to_string(), "t2".to_string())));
}

#[test]
fn metrics_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut w = MetricsWriter::new(dir.path(), "demo").unwrap();
        w.log("opd", 1, "opd/reverse_kl", 0.5, (Some("math.add"), Some("math.add"), None), 100);
        w.log("opd", 1, "opd/reverse_kl", f64::NAN, (Some("if.json"), None, None), 100);
        w.flush().unwrap();
        w.log("opd", 2, "opd/reverse_kl", 0.25, (Some("math.add"), None, Some("think_high")), 200);
    } // dropped: flushes
    let rows = store::read_metrics(dir.path()).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].teacher.as_deref(), Some("math.add"));
    assert_eq!(rows[1].name, "opd/reverse_kl/non_finite");
    assert_eq!((rows[2].step, rows[2].value, rows[2].tokens), (2, 0.25, 200));
    assert_eq!(rows[2].mode.as_deref(), Some("think_high"));
}
