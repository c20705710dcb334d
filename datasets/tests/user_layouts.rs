//! Datasets as users have them: verl and TRL layouts, shard directories and globs, errors
//! naming file, row and column, counted skips, and `tasks sample` files that other tools read
//! as conversations. Parquet files are written with the arrow/parquet crates here, and with
//! pyarrow where an independent writer or reader is the point.

use arrow::array::{ArrayRef, Int64Array, ListArray, StringArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use datasets::layouts::{dataset_files, Layout};
use datasets::prompts::{load_dataset, load_dataset_report, write_tasks, PromptSource};
use datasets::sft_data::load_sft_dataset;
use datasets::tasks::{self, Split};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn strings(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

/// `list<struct<role, content>>`, one list per row.
fn conversations(rows: &[&[(&str, &str)]]) -> ArrayRef {
    let fields: Fields =
        vec![Field::new("role", DataType::Utf8, false), Field::new("content", DataType::Utf8, false)].into();
    let mut offsets = vec![0i32];
    let (mut roles, mut contents) = (vec![], vec![]);
    for r in rows {
        for (role, content) in r.iter() {
            roles.push(*role);
            contents.push(*content);
        }
        offsets.push(roles.len() as i32);
    }
    let s = StructArray::new(fields.clone(), vec![strings(&roles), strings(&contents)], None);
    let item = Arc::new(Field::new("item", DataType::Struct(fields), true));
    Arc::new(ListArray::new(item, OffsetBuffer::new(offsets.into()), Arc::new(s), None))
}

fn structs(cols: Vec<(&str, ArrayRef)>) -> ArrayRef {
    let fields: Fields = cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    Arc::new(StructArray::new(fields, cols.into_iter().map(|(_, a)| a).collect(), None))
}

fn write_parquet(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(cols).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// A verl file as `examples/data_preprocess/gsm8k.py` writes it, plus one code row.
fn verl_file(path: &Path) {
    let sys = ("system", "Let's think step by step and output the final answer after \"####\".");
    write_parquet(
        path,
        vec![
            ("data_source", strings(&["openai/gsm8k", "openai/gsm8k", "codecontests"])),
            (
                "prompt",
                conversations(&[
                    &[sys, ("user", "Natalia sold 48 clips in April and half as many in May. How many in all?")],
                    &[("user", "Weng earns $12 an hour. How much for 50 minutes?")],
                    &[("user", "Read n, print n*2.")],
                ]),
            ),
            ("ability", strings(&["math", "math", "code"])),
            (
                "reward_model",
                structs(vec![
                    ("ground_truth", strings(&["72", "She earns 12/60*50 = 10.\n#### 10", "{\"inputs\": [\"1\"]}"])),
                    ("style", strings(&["rule", "rule", "rule"])),
                ]),
            ),
            (
                "extra_info",
                structs(vec![
                    ("split", strings(&["train", "train", "train"])),
                    ("index", Arc::new(Int64Array::from(vec![0, 1, 2])) as ArrayRef),
                ]),
            ),
        ],
    );
}

#[test]
fn verl_parquet_reads_with_domains_golds_and_counted_skips() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("train.parquet");
    verl_file(&p);
    let loaded = load_dataset_report(&p).unwrap();
    assert_eq!(loaded.files, vec![(p.clone(), Layout::Verl, 3)]);
    assert_eq!(loaded.tasks.len(), 2);
    let t = &loaded.tasks[0];
    assert_eq!((t.domain.as_str(), t.family.as_str()), ("math.openai/gsm8k", "math"));
    assert_eq!(t.messages.len(), 2);
    assert_eq!((t.messages[0].role.as_str(), t.messages[1].role.as_str()), ("system", "user"));
    assert!(t.messages[1].content.starts_with("Natalia"));
    assert_eq!(t.answer, "72");
    assert_eq!(t.verifier["kind"], "math");
    assert_eq!(t.verifier["data_source"], "openai/gsm8k");
    assert_eq!(t.verifier["extra_info"]["index"], 0);
    assert_eq!(t.prompt_id, "train.parquet#0");
    // a GSM8K gold with its worked solution is kept as written
    assert_eq!(loaded.tasks[1].answer, "She earns 12/60*50 = 10.\n#### 10");
    // the code row has no verifier here: skipped, counted, and said why
    assert_eq!(loaded.skipped_rows(), 1);
    let summary = loaded.skip_summary(&p).join("\n");
    assert!(summary.contains("skipped 1 rows") && summary.contains("codecontests"), "{summary}");
    // `math.*` selects verl math rows like suite domains
    let drawn = PromptSource::FileDomains(p.clone(), "math.*".into()).take(3, 0).unwrap();
    assert_eq!(drawn.len(), 3);
}

#[test]
fn verl_parquet_written_by_pyarrow_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gsm8k.parquet");
    let script = r##"
import sys, pyarrow as pa, pyarrow.parquet as pq
rows = [{"data_source": "openai/gsm8k",
         "prompt": [{"role": "user", "content": "What is 6*7? Let's think step by step and output the final answer after ####."}],
         "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": "42"},
         "extra_info": {"split": "train", "index": 0, "answer": "6*7=42\n#### 42", "question": "What is 6*7?"}}]
pq.write_table(pa.Table.from_pylist(rows), sys.argv[1])
"##;
    let out = Command::new("python3").arg("-c").arg(script).arg(&p).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ts = load_dataset(&p).unwrap();
    assert_eq!(ts.len(), 1);
    assert_eq!((ts[0].domain.as_str(), ts[0].answer.as_str()), ("math.openai/gsm8k", "42"));
    assert_eq!(ts[0].verifier["extra_info"]["answer"], "6*7=42\n#### 42");
}

#[test]
fn trl_prompt_completion_messages_and_solution_layouts() {
    let dir = tempfile::tempdir().unwrap();
    // prompt + completion, standard (strings)
    let pc = dir.path().join("pc.parquet");
    write_parquet(
        &pc,
        vec![
            ("prompt", strings(&["What is 2+3?", "Capital of France?"])),
            ("completion", strings(&["2+3 = \\boxed{5}", "Paris"])),
        ],
    );
    let r = load_dataset_report(&pc).unwrap();
    assert_eq!(r.files[0].1, Layout::TrlPromptCompletion);
    assert_eq!(r.tasks[0].messages, vec![datasets::Message::user("What is 2+3?")]);
    assert_eq!((r.tasks[0].answer.as_str(), &r.tasks[0].verifier["kind"]), ("5", &serde_json::json!("math")));
    assert_eq!(r.tasks[0].reference.content, "2+3 = \\boxed{5}");
    // a short answer-like gold goes to the math verifier (it normalises text answers too)
    assert_eq!((r.tasks[1].answer.as_str(), &r.tasks[1].verifier["kind"]), ("Paris", &serde_json::json!("math")));
    // prompt + completion, conversational (JSONL)
    let pcj = dir.path().join("pc.jsonl");
    std::fs::write(
        &pcj,
        "{\"prompt\": [{\"role\": \"user\", \"content\": \"9-4?\"}], \"completion\": [{\"role\": \"assistant\", \"content\": \"\\\\boxed{5}\"}]}\n",
    )
    .unwrap();
    let t = &load_dataset(&pcj).unwrap()[0];
    assert_eq!((t.messages[0].content.as_str(), t.answer.as_str()), ("9-4?", "5"));
    // messages: the prompt is everything before the last assistant turn
    let m = dir.path().join("m.parquet");
    write_parquet(
        &m,
        vec![(
            "messages",
            conversations(&[&[
                ("system", "Be brief."),
                ("user", "1+1?"),
                ("assistant", "\\boxed{2}"),
                ("user", "And 2+2?"),
                ("assistant", "\\boxed{4}"),
            ]]),
        )],
    );
    let r = load_dataset_report(&m).unwrap();
    assert_eq!(r.files[0].1, Layout::TrlMessages);
    assert_eq!(r.tasks[0].messages.len(), 4);
    assert_eq!(r.tasks[0].messages[3].content, "And 2+2?");
    assert_eq!(r.tasks[0].answer, "4");
    // prompt + solution (the TRL GRPO math recipe)
    let s = dir.path().join("s.jsonl");
    std::fs::write(&s, "{\"prompt\": \"Sum 1..4?\", \"solution\": \"1+2+3+4 = \\\\boxed{10}\", \"id\": 7}\n").unwrap();
    let r = load_dataset_report(&s).unwrap();
    assert_eq!(r.files[0].1, Layout::TrlPromptSolution);
    assert_eq!((r.tasks[0].answer.as_str(), &r.tasks[0].verifier["kind"]), ("10", &serde_json::json!("math")));
    // TRL prompt + answer is the v4post layout
    let a = dir.path().join("a.jsonl");
    std::fs::write(&a, "{\"prompt\": \"3*3?\", \"answer\": \"9\"}\n").unwrap();
    assert_eq!(load_dataset_report(&a).unwrap().files[0].1, Layout::V4post);
}

fn shard(dir: &Path, name: &str, first: usize, n: usize) -> PathBuf {
    let p = dir.join(name);
    let prompts: Vec<String> = (first..first + n).map(|i| format!("{i}+1?")).collect();
    let answers: Vec<String> = (first..first + n).map(|i| (i + 1).to_string()).collect();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let answers: Vec<&str> = answers.iter().map(String::as_str).collect();
    write_parquet(&p, vec![("prompt", strings(&prompts)), ("answer", strings(&answers))]);
    p
}

#[test]
fn sharded_directories_and_globs_read_in_shard_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // written out of order: name order is shard order
    for (i, first) in [(2, 20), (0, 0), (1, 10)] {
        shard(&data, &format!("train-0000{i}-of-00003.parquet"), first, 3);
    }
    shard(&data, "test-00000-of-00001.parquet", 100, 2);
    std::fs::write(data.join("README.md"), "not data").unwrap();
    let glob = data.join("train-*.parquet");
    let files = dataset_files(&glob).unwrap();
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["train-00000-of-00003.parquet", "train-00001-of-00003.parquet", "train-00002-of-00003.parquet"]);
    let ts = load_dataset(&glob).unwrap();
    let firsts: Vec<&str> = ts.iter().map(|t| t.messages[0].content.as_str()).collect();
    assert_eq!(firsts, ["0+1?", "1+1?", "2+1?", "10+1?", "11+1?", "12+1?", "20+1?", "21+1?", "22+1?"]);
    assert_eq!(ts[3].prompt_id, "train-00001-of-00003.parquet#0");
    // the directory holds two splits: refused (training on the test split by accident)
    let e = load_dataset(&data).unwrap_err().to_string();
    assert!(e.contains("several splits (test, train)") && e.contains("train-*.parquet"), "{e}");
    // with the test shard gone, the directory is every data file in it (README ignored)
    std::fs::remove_file(data.join("test-00000-of-00001.parquet")).unwrap();
    let all = load_dataset_report(&data).unwrap();
    assert_eq!(all.tasks.len(), 9);
    assert_eq!(all.files.len(), 3);
    assert_eq!(all.tasks[8].messages[0].content, "22+1?");
    // a missing shard is an error, not a smaller dataset
    std::fs::remove_file(data.join("train-00001-of-00003.parquet")).unwrap();
    let e = load_dataset(&glob).unwrap_err().to_string();
    assert!(e.contains("shard train-00001-of-00003 is missing (2 of 3 found)"), "{e}");
    shard(&data, "train-00001-of-00003.parquet", 10, 3);
    // prompt sources take a glob too
    let drawn = PromptSource::File(glob.clone()).take(10, 0).unwrap();
    assert_eq!(drawn[9].prompt_id, "train-00000-of-00003.parquet#0@1");
    // a glob that matches nothing, a directory with only subdirectories
    let e = load_dataset(&data.join("validation-*.parquet")).unwrap_err().to_string();
    assert!(e.contains("validation-*.parquet") && e.contains("matches no file"), "{e}");
    let e = load_dataset(dir.path()).unwrap_err().to_string();
    assert!(e.contains("without dataset files") && e.contains("data/"), "{e}");
    let e = load_dataset(&dir.path().join("*/train-*.parquet")).unwrap_err().to_string();
    assert!(e.contains("last component"), "{e}");
}

fn err(p: &Path) -> String {
    load_dataset(p).unwrap_err().to_string()
}

#[test]
fn wrong_or_missing_columns_name_file_row_column_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad_verl.parquet");
    // verl prompt as a number (row 1)
    write_parquet(
        &p,
        vec![
            ("data_source", strings(&["openai/gsm8k"])),
            ("prompt", Arc::new(Int64Array::from(vec![5])) as ArrayRef),
            ("reward_model", structs(vec![("ground_truth", strings(&["1"]))])),
        ],
    );
    let e = err(&p);
    assert!(
        e.contains("bad_verl.parquet") && e.contains("row 1") && e.contains("`prompt`") && e.contains("found a number"),
        "{e}"
    );
    // reward_model as a string instead of a struct
    let math = || ("ability", strings(&["math"]));
    write_parquet(&p, vec![math(), ("prompt", strings(&["x"])), ("reward_model", strings(&["42"]))]);
    let e = err(&p);
    assert!(e.contains("row 1") && e.contains("`reward_model`") && e.contains("expected a struct"), "{e}");
    // reward_model without ground_truth; a null ground truth in row 2
    write_parquet(
        &p,
        vec![math(), ("prompt", strings(&["x"])), ("reward_model", structs(vec![("style", strings(&["rule"]))]))],
    );
    let e = err(&p);
    assert!(e.contains("`reward_model.ground_truth`") && e.contains("missing"), "{e}");
    let gts: ArrayRef = Arc::new(StringArray::from(vec![Some("1"), None]));
    write_parquet(
        &p,
        vec![
            ("ability", strings(&["math", "math"])),
            ("prompt", conversations(&[&[("user", "a")], &[("user", "b")]])),
            ("reward_model", structs(vec![("ground_truth", gts)])),
        ],
    );
    let e = err(&p);
    assert!(e.contains("row 2") && e.contains("`reward_model.ground_truth`"), "{e}");
    // an unknown role
    write_parquet(
        &p,
        vec![
            math(),
            ("prompt", conversations(&[&[("wizard", "a")]])),
            ("reward_model", structs(vec![("ground_truth", strings(&["1"]))])),
        ],
    );
    let e = err(&p);
    assert!(e.contains("`prompt`") && e.contains("unknown role `wizard`"), "{e}");
    // TRL: a numeric completion, messages without an assistant turn
    let j = dir.path().join("trl.jsonl");
    std::fs::write(&j, "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\", \"completion\": 3}\n").unwrap();
    let e = err(&j);
    assert!(
        e.contains("trl.jsonl") && e.contains("row 2") && e.contains("`completion`") && e.contains("found a number"),
        "{e}"
    );
    std::fs::write(&j, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n").unwrap();
    let e = err(&j);
    assert!(e.contains("row 1") && e.contains("`messages`") && e.contains("no assistant turn"), "{e}");
    std::fs::write(&j, "{\"prompt\": \"x\", \"answer\": \"1\", \"verifier\": {\"kind\": \"magic\"}}\n").unwrap();
    let e = err(&j);
    assert!(e.contains("`verifier`") && e.contains("unknown verifier kind"), "{e}");
    // unknown and ambiguous layouts list the columns found and the layouts accepted
    std::fs::write(&j, "{\"question\": \"x\", \"label\": 1}\n").unwrap();
    let e = err(&j);
    assert!(e.contains("columns found: label, question") && e.contains("verl:") && e.contains("trl-messages"), "{e}");
    std::fs::write(&j, "{\"prompt\": \"x\", \"completion\": \"1\", \"answer\": \"1\"}\n").unwrap();
    assert!(err(&j).contains("ambiguous"));
}

#[test]
fn a_dataset_of_only_skipped_rows_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("code.jsonl");
    std::fs::write(
        &p,
        "{\"data_source\": \"codecontests\", \"ability\": \"code\", \"prompt\": [{\"role\": \"user\", \"content\": \"x\"}], \"reward_model\": {\"ground_truth\": \"t\"}}\n"
            .repeat(2),
    )
    .unwrap();
    let e = err(&p);
    assert!(e.contains("every row was skipped") && e.contains("skipped 2 rows") && e.contains("ability `code`"), "{e}");
    // a QA row (a ground truth no verifier here takes) is skipped, not an error; a math row
    // beside it is read
    let qa = dir.path().join("qa.jsonl");
    let row = |source: &str, ability: &str, gt: &str| {
        format!(
            "{{\"data_source\": \"{source}\", \"ability\": \"{ability}\", \"prompt\": [{{\"role\": \"user\", \"content\": \"q\"}}], \"reward_model\": {{\"ground_truth\": {gt}}}}}\n"
        )
    };
    std::fs::write(&qa, row("nq", "fact-reasoning", "{\"target\": [\"a\"]}") + &row("gsm8k", "math", "\"3\"")).unwrap();
    let r = load_dataset_report(&qa).unwrap();
    assert_eq!((r.tasks.len(), r.skipped_rows()), (1, 1));
    let s = r.skip_summary(&qa).join("\n");
    assert!(s.contains("qa.jsonl: skipped 1 rows") && s.contains("data_source `nq`, ability `fact-reasoning`"), "{s}");
}

#[test]
fn tasks_sample_files_hold_conversations_for_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sample.parquet");
    let ts = tasks::sample("agent.chain", Split::Train, 3, 4, None).unwrap();
    write_tasks(&p, &ts).unwrap();
    let script = r#"
import sys, json, pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
ty = t.schema.field("messages").type
assert pa.types.is_list(ty) and pa.types.is_struct(ty.value_type), ty
assert [f.name for f in ty.value_type] == ["role", "content"], ty
assert all(pa.types.is_string(f.type) for f in ty.value_type), ty
print(json.dumps(t.column("messages").to_pylist()))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&p).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Vec<Vec<serde_json::Value>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen.len(), ts.len());
    for (row, t) in seen.iter().zip(&ts) {
        let msgs: Vec<(&str, &str)> =
            row.iter().map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
        let want: Vec<(&str, &str)> = t.messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        assert_eq!(msgs, want);
    }
    // and our own reader reads it back
    let back = load_dataset(&p).unwrap();
    assert_eq!(
        back.iter().map(|t| &t.messages).collect::<Vec<_>>(),
        ts.iter().map(|t| &t.messages).collect::<Vec<_>>()
    );
}

#[test]
fn files_with_messages_as_a_json_string_still_load() {
    // the encoding `tasks sample` wrote before: `messages` as a JSON string column
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("old.parquet");
    let m = serde_json::to_string(&[datasets::Message::system("s"), datasets::Message::user("1+2?")]).unwrap();
    write_parquet(
        &p,
        vec![
            ("prompt_id", strings(&["math.add/train/0/0/d2"])),
            ("domain", strings(&["math.add"])),
            ("messages", strings(&[&m])),
            ("prompt", strings(&["1+2?"])),
            ("answer", strings(&["3"])),
            ("verifier", strings(&["{\"kind\": \"math\"}"])),
        ],
    );
    let ts = load_dataset(&p).unwrap();
    assert_eq!(ts[0].messages, vec![datasets::Message::system("s"), datasets::Message::user("1+2?")]);
    assert_eq!((ts[0].domain.as_str(), ts[0].answer.as_str()), ("math.add", "3"));
}

#[test]
fn sft_conversations_from_messages_and_prompt_completion() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("chat-00000-of-00002.parquet");
    write_parquet(
        &m,
        vec![
            (
                "messages",
                conversations(&[&[("user", "hi"), ("assistant", "hello"), ("user", "bye"), ("assistant", "ciao")]]),
            ),
            ("domain", strings(&["chat"])),
        ],
    );
    let pc = dir.path().join("chat-00001-of-00002.jsonl");
    std::fs::write(&pc, "{\"prompt\": \"2+2?\", \"completion\": \"4\"}\n").unwrap();
    let rs = load_sft_dataset(dir.path()).unwrap();
    assert_eq!(rs.len(), 2);
    assert_eq!((rs[0].domain.as_str(), rs[0].messages.len()), ("chat", 4));
    assert_eq!((rs[1].messages[1].role.as_str(), rs[1].messages[1].content.as_str()), ("assistant", "4"));
    assert_eq!(rs[1].id, "chat-00001-of-00002.jsonl#0");
    // errors: prompt without completion; completion of the wrong type; no assistant turn
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"x\", \"answer\": \"1\"}\n").unwrap();
    let e = load_sft_dataset(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl") && e.contains("nothing to learn") && e.contains("prompt-completion"), "{e}");
    std::fs::write(
        &bad,
        "{\"prompt\": \"x\", \"completion\": \"y\"}\n{\"prompt\": \"x\", \"completion\": {\"a\": 1}}\n",
    )
    .unwrap();
    let e = load_sft_dataset(&bad).unwrap_err().to_string();
    assert!(e.contains("row 2") && e.contains("`completion`") && e.contains("found an object"), "{e}");
    std::fs::write(&bad, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n").unwrap();
    let e = load_sft_dataset(&bad).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("`messages`") && e.contains("no assistant turn"), "{e}");
}

/// verl's preprocessing writes `train.parquet` and `test.parquet` side by side: the directory
/// (or a glob over both) is two splits, refused with a hint naming one; a file named on its
/// own, or a directory of one split, reads.
#[test]
fn split_files_named_by_their_stem_are_not_read_as_one_training_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gsm8k");
    std::fs::create_dir(&data).unwrap();
    let train = shard(&data, "train.parquet", 0, 3);
    shard(&data, "test.parquet", 100, 2);
    let e = load_dataset(&data).unwrap_err().to_string();
    assert!(e.contains("several splits (test, train)") && e.contains("name one split"), "{e}");
    assert!(e.contains(&train.display().to_string()), "the hint names train.parquet: {e}");
    let e = load_dataset(&data.join("*.parquet")).unwrap_err().to_string();
    assert!(e.contains("several splits (test, train)"), "{e}");
    assert_eq!(load_dataset(&train).unwrap().len(), 3);
    assert_eq!(load_dataset(&data.join("t*n.parquet")).unwrap().len(), 3);
    // a split file next to Hugging Face shards of another split; a validation file
    shard(&data, "validation-00000-of-00001.parquet", 200, 1);
    std::fs::remove_file(data.join("test.parquet")).unwrap();
    let e = load_dataset(&data).unwrap_err().to_string();
    assert!(e.contains("several splits (train, validation)"), "{e}");
    std::fs::remove_file(data.join("validation-00000-of-00001.parquet")).unwrap();
    shard(&data, "extra.parquet", 300, 1);
    shard(&data, "val.parquet", 300, 1);
    let e = load_dataset(&data).unwrap_err().to_string();
    assert!(e.contains("several splits (train, val)"), "{e}");
    // files without a split name stay one dataset
    std::fs::remove_file(data.join("val.parquet")).unwrap();
    std::fs::remove_file(data.join("train.parquet")).unwrap();
    shard(&data, "part_a.parquet", 0, 2);
    assert_eq!(load_dataset(&data).unwrap().len(), 3);
    // SFT data reads paths the same way
    let sft = dir.path().join("sft");
    std::fs::create_dir(&sft).unwrap();
    std::fs::write(sft.join("train.jsonl"), "{\"prompt\": \"a\", \"completion\": \"b\"}\n").unwrap();
    std::fs::write(sft.join("test.jsonl"), "{\"prompt\": \"c\", \"completion\": \"d\"}\n").unwrap();
    let e = load_sft_dataset(&sft).unwrap_err().to_string();
    assert!(e.contains("several splits (test, train)"), "{e}");
    assert_eq!(load_sft_dataset(&sft.join("train.jsonl")).unwrap().len(), 1);
}

/// A shard set with one shard left is incomplete too; only a file named on its own is read
/// without the check.
#[test]
fn a_lone_shard_of_a_set_is_incomplete_unless_named_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let one = shard(&data, "train-00001-of-00003.parquet", 10, 3);
    let want = "shard train-00000-of-00003 is missing (1 of 3 found)";
    let e = load_dataset(&data).unwrap_err().to_string();
    assert!(e.contains(want), "{e}");
    let e = load_dataset(&data.join("train-*.parquet")).unwrap_err().to_string();
    assert!(e.contains(want), "{e}");
    let e = load_sft_dataset(&data).unwrap_err().to_string();
    assert!(e.contains(want), "{e}");
    assert_eq!(load_dataset(&one).unwrap().len(), 3);
    // a complete one-shard set reads from its directory
    std::fs::remove_file(&one).unwrap();
    shard(&data, "train-00000-of-00001.parquet", 0, 2);
    assert_eq!(load_dataset(&data).unwrap().len(), 2);
}

/// TRL golds without `\boxed{}`: answer-like ones go to the math verifier (which parses
/// thousands separators, fractions and LaTeX, so the right answer scores), free text is a
/// counted skip; SFT reads the same file with the completion as its target.
#[test]
fn trl_golds_without_a_box_are_math_or_a_counted_skip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pc.parquet");
    let prose = "The French capital is Paris, which lies on the Seine.";
    write_parquet(
        &p,
        vec![
            ("prompt", strings(&["1000 in digits?", "Three quarters?", "Half?", "Capital of France?"])),
            ("completion", strings(&["1,000", "3/4", "\\frac12", prose])),
        ],
    );
    let r = load_dataset_report(&p).unwrap();
    assert_eq!(r.tasks.len(), 3);
    let golds: Vec<(&str, &serde_json::Value)> =
        r.tasks.iter().map(|t| (t.answer.as_str(), &t.verifier["kind"])).collect();
    let math = serde_json::json!("math");
    assert_eq!(golds, [("1,000", &math), ("3/4", &math), ("\\frac12", &math)]);
    assert_eq!(r.skipped.len(), 1);
    let (why, n) = r.skipped.iter().next().unwrap();
    assert!(why.contains("no verifier for free-text completions") && *n == 1, "{why}");
    assert_eq!(r.skip_summary(&p)[0], format!("{}: skipped 1 rows: {why}", p.display()));
    // a `domain` naming a verifier family keeps the row
    let d = dir.path().join("d.jsonl");
    std::fs::write(&d, format!("{{\"prompt\": \"x\", \"completion\": \"{prose}\", \"domain\": \"math.prose\"}}\n"))
        .unwrap();
    assert_eq!(load_dataset(&d).unwrap()[0].verifier["kind"], serde_json::json!("math"));
    // a dataset of only free text is an error naming the reason
    let f = dir.path().join("free.jsonl");
    std::fs::write(&f, format!("{{\"prompt\": \"x\", \"completion\": \"{prose}\"}}\n")).unwrap();
    let e = load_dataset(&f).unwrap_err().to_string();
    assert!(e.contains("every row was skipped") && e.contains("free-text completions"), "{e}");
    // the TRL messages layout takes its gold the same way
    let m = dir.path().join("m.jsonl");
    std::fs::write(
        &m,
        format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"q\"}}, {{\"role\": \"assistant\", \"content\": \"{prose}\"}}]}}\n{{\"messages\": [{{\"role\": \"user\", \"content\": \"q\"}}, {{\"role\": \"assistant\", \"content\": \"1,000\"}}]}}\n"),
    )
    .unwrap();
    let r = load_dataset_report(&m).unwrap();
    assert_eq!((r.tasks.len(), r.skipped_rows()), (1, 1));
    // SFT: every completion is a training target
    let rs = load_sft_dataset(&p).unwrap();
    assert_eq!(rs.len(), 4);
    assert_eq!(rs[3].messages[1].content, prose);
}

/// One rule for a message list in a string cell: it starts with `[{`. A bracketed text prompt
/// is text in every layout and in SFT data; a JSON list of messages is messages.
#[test]
fn bracketed_text_prompts_are_text_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[Geometry] Find the area of a 2 by 2 square.";
    let json_msgs = r#"[{"role": "user", "content": "2+2?"}]"#;
    let cases: [(&str, Vec<(&str, ArrayRef)>); 4] = [
        ("v4.parquet", vec![("prompt", strings(&[text, json_msgs])), ("answer", strings(&["4", "4"]))]),
        ("pc.parquet", vec![("prompt", strings(&[text, json_msgs])), ("completion", strings(&["\\boxed{4}", "4"]))]),
        ("ps.parquet", vec![("prompt", strings(&[text, json_msgs])), ("solution", strings(&["4", "4"]))]),
        (
            "verl.parquet",
            vec![
                ("data_source", strings(&["openai/gsm8k", "openai/gsm8k"])),
                ("prompt", strings(&[text, json_msgs])),
                ("reward_model", structs(vec![("ground_truth", strings(&["4", "4"]))])),
            ],
        ),
    ];
    for (name, cols) in cases {
        let p = dir.path().join(name);
        write_parquet(&p, cols);
        let ts = load_dataset(&p).unwrap();
        assert_eq!(ts[0].messages, vec![datasets::Message::user(text)], "{name}");
        assert_eq!(ts[1].messages, vec![datasets::Message::user("2+2?")], "{name}");
    }
    let sft = dir.path().join("sft.parquet");
    write_parquet(&sft, vec![("prompt", strings(&[text, json_msgs])), ("completion", strings(&["4", "[Answer] 4"]))]);
    let rs = load_sft_dataset(&sft).unwrap();
    assert_eq!(rs[0].messages[0], datasets::Message::user(text));
    assert_eq!(rs[1].messages[0], datasets::Message::user("2+2?"));
    assert_eq!((rs[1].messages[1].role.as_str(), rs[1].messages[1].content.as_str()), ("assistant", "[Answer] 4"));
    // SFT and prompt datasets give the same ids
    let ts = load_dataset(&dir.path().join("v4.parquet")).unwrap();
    let rs = load_sft_dataset(&sft).unwrap();
    assert_eq!((ts[1].prompt_id.as_str(), rs[1].id.as_str()), ("v4.parquet#1", "sft.parquet#1"));
}
