//! User prompt datasets: JSONL and Parquet with HF-style columns; clear errors.

use datasets::prompts::{load_dataset, write_tasks, PromptSource};
use datasets::tasks::{self, Split};
use std::process::Command;

#[test]
fn jsonl_with_prompt_or_messages() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    std::fs::write(
        &p,
        concat!(
            "{\"prompt\": \"What is 2+2?\", \"answer\": 4, \"domain\": \"math.add\"}\n",
            "\n",
            "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"Say hi\"}], \"answer\": \"hi\"}\n",
            "{\"prompt\": \"f\", \"answer\": \"return 1\", \"domain\": \"code.x\", \"tests\": [[0, 1]], \"input\": \"x\"}\n",
        ),
    )
    .unwrap();
    let ts = load_dataset(&p).unwrap();
    assert_eq!(ts.len(), 3);
    assert_eq!(ts[0].answer, "4");
    assert_eq!(ts[0].verifier["kind"], "math");
    assert_eq!(ts[1].messages.len(), 2);
    assert_eq!(ts[1].verifier["kind"], "exact");
    assert_eq!(ts[2].verifier["kind"], "code");
    assert_eq!(ts[2].verifier["tests"][0][1], 1);
}

fn err(p: &std::path::Path) -> String {
    load_dataset(p).unwrap_err().to_string()
}

#[test]
fn errors_name_file_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    std::fs::write(&p, "{\"prompt\": \"ok\", \"answer\": \"1\"}\n{\"prompt\": \"no answer\"}\n").unwrap();
    let e = err(&p);
    assert!(e.contains("bad.jsonl") && e.contains("row 2") && e.contains("`answer`") && e.contains("missing"), "{e}");
    std::fs::write(&p, "{\"answer\": \"1\"}\n").unwrap();
    assert!(err(&p).contains("`prompt`"));
    std::fs::write(&p, "{\"prompt\": 5, \"answer\": \"1\"}\n").unwrap();
    let e = err(&p);
    assert!(e.contains("`prompt`") && e.contains("a number"), "{e}");
    std::fs::write(&p, "{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}], \"answer\": \"1\"}\n").unwrap();
    assert!(err(&p).contains("unknown role"));
    std::fs::write(&p, "{\"prompt\": \"x\", \"answer\": [1]}\n").unwrap();
    assert!(err(&p).contains("`answer`"));
    std::fs::write(&p, "not json\n").unwrap();
    assert!(err(&p).contains("row 1") && err(&p).contains("invalid JSON"));
    assert!(err(&dir.path().join("missing.jsonl")).contains("missing.jsonl"));
    std::fs::write(dir.path().join("x.csv"), "a").unwrap();
    assert!(err(&dir.path().join("x.csv")).contains("unknown dataset format"));
}

#[test]
fn parquet_written_by_pyarrow_loads_and_mistyped_column_is_reported() {
    if std::env::var("V4POST_SKIP_PYTHON").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    let bad = dir.path().join("bad.parquet");
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
msgs = pa.array([[{"role": "user", "content": "Compute 1+1."}], [{"role": "user", "content": "Say A"}]],
                type=pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
pq.write_table(pa.table({"messages": msgs, "answer": ["2", "A"], "domain": ["math.add", "if.upper"]}), sys.argv[1])
pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["1", "2"], "domain": [1, 2]}), sys.argv[2])
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&good).arg(&bad).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ts = load_dataset(&good).unwrap();
    assert_eq!(ts.len(), 2);
    assert_eq!(ts[0].messages[0].content, "Compute 1+1.");
    assert_eq!(ts[1].family, "if");
    let e = err(&bad);
    assert!(e.contains("bad.parquet") && e.contains("row 1") && e.contains("`domain`"), "{e}");
}

#[test]
fn sampled_tasks_write_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let ts = tasks::sample("agent.lookup", Split::Eval, 3, 5, None).unwrap();
    for ext in ["jsonl", "parquet"] {
        let p = dir.path().join(format!("t.{ext}"));
        write_tasks(&p, &ts).unwrap();
        let back = load_dataset(&p).unwrap();
        assert_eq!(back.len(), 5);
        for (a, b) in back.iter().zip(&ts) {
            assert_eq!(a.messages, b.messages);
            assert_eq!(a.answer, b.answer);
            assert_eq!(a.verifier, b.verifier);
        }
    }
    let src = PromptSource::Builtin {
        domains: "math.*,if.json".into(),
        split: Split::Train,
        seed: 1,
        difficulty: Default::default(),
    };
    let ps = src.take(10, 0).unwrap();
    assert_eq!(ps.iter().filter(|t| t.domain == "if.json").count(), 2);
}

#[test]
fn a_file_smaller_than_the_draws_gives_unique_prompt_ids() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("small.jsonl");
    let lines: String = (0..3)
        .map(|i| format!("{{\"prompt\": \"{i}+1?\", \"answer\": {}, \"domain\": \"math.add\"}}\n", i + 1))
        .collect();
    std::fs::write(&p, lines).unwrap();
    for src in [PromptSource::File(p.clone()), PromptSource::FileDomains(p.clone(), "math.*".into())] {
        // 10 draws from 3 records: the source wraps around three times
        let ts = src.take(10, 0).unwrap();
        let ids: std::collections::HashSet<&str> = ts.iter().map(|t| t.prompt_id.as_str()).collect();
        assert_eq!(ids.len(), 10, "{:?}", ts.iter().map(|t| &t.prompt_id).collect::<Vec<_>>());
        // the first pass keeps the records' own ids; later passes say which pass they are
        assert_eq!(ts[0].prompt_id, "small.jsonl#0");
        assert_eq!(ts[4].prompt_id, "small.jsonl#1@1");
        assert_eq!(ts[9].prompt_id, "small.jsonl#0@3");
        assert!(ts.iter().zip(ts.iter().skip(3)).all(|(a, b)| a.messages == b.messages && a.answer == b.answer));
        // draws depend only on their position (a resumed run draws the same prompts)
        let later = src.take(4, 5).unwrap();
        assert_eq!(later, ts[5..9].to_vec());
    }
}
