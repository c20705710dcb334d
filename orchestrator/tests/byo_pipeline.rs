//! A pipeline file pointing at a verl-layout Parquet dataset and at a checkpoint folder with
//! its own tokenizer runs end to end (SFT → a GRPO expert per domain → OPD → Think Max →
//! eval): every stage samples and trains with the folder's BPE tokenizer (trajectory token
//! ids are its encoding of the prompts), and every model the run writes carries the tokenizer.
//! The checkpoint is golden A (vocab_size 512) + testdata/tokenizers/bpe-400.

use arrow::array::{ArrayRef, Int64Array, ListArray, StringArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use datasets::chat::Mode;
use datasets::store::{read_all, ReadFilter};
use datasets::tokenizer::{ByteTokenizer, HfTokenizer, Tokenizer, TOKENIZER_FILES};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bpe_dir() -> PathBuf {
    root().join("testdata/tokenizers/bpe-400")
}

fn strings(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

/// A verl-layout file as verl's GSM8K preprocessing writes it: `data_source`, `prompt` =
/// list<struct<role, content>>, `ability`, `reward_model` = struct<ground_truth, style>,
/// `extra_info` = struct<split, index>.
fn write_verl(path: &Path, rows: &[(u32, u32)]) {
    let n = rows.len();
    let (mut roles, mut contents, mut lens) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (a, b)) in rows.iter().enumerate() {
        if i % 2 == 1 {
            roles.push("system".to_string());
            contents.push("You are a careful calculator.".to_string());
        }
        roles.push("user".to_string());
        contents.push(format!(
            "Tom has {a} apples and buys {b} more. How many apples does he have? \
             Let's think step by step and output the final answer after \"####\"."
        ));
        lens.push(if i % 2 == 1 { 2 } else { 1 });
    }
    let msg_fields =
        Fields::from(vec![Field::new("role", DataType::Utf8, true), Field::new("content", DataType::Utf8, true)]);
    let messages = StructArray::new(msg_fields.clone(), vec![strings(roles), strings(contents)], None);
    let prompt = ListArray::new(
        Arc::new(Field::new("element", DataType::Struct(msg_fields), true)),
        OffsetBuffer::from_lengths(lens),
        Arc::new(messages),
        None,
    );
    let rm_fields =
        Fields::from(vec![Field::new("ground_truth", DataType::Utf8, true), Field::new("style", DataType::Utf8, true)]);
    let reward_model = StructArray::new(
        rm_fields,
        vec![strings(rows.iter().map(|(a, b)| (a + b).to_string()).collect()), strings(vec!["rule".into(); n])],
        None,
    );
    let ei_fields =
        Fields::from(vec![Field::new("split", DataType::Utf8, true), Field::new("index", DataType::Int64, true)]);
    let extra_info = StructArray::new(
        ei_fields,
        vec![strings(vec!["train".into(); n]), Arc::new(Int64Array::from_iter_values(0..n as i64))],
        None,
    );
    let batch = RecordBatch::try_from_iter(vec![
        ("data_source", strings(vec!["openai/gsm8k".into(); n])),
        ("prompt", Arc::new(prompt) as ArrayRef),
        ("ability", strings(vec!["math".into(); n])),
        ("reward_model", Arc::new(reward_model) as ArrayRef),
        ("extra_info", Arc::new(extra_info) as ArrayRef),
    ])
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// `dir` holds the BPE tokenizer files, byte for byte.
fn carries_bpe(dir: &Path) {
    for f in TOKENIZER_FILES {
        let got = std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()));
        assert_eq!(got, std::fs::read(bpe_dir().join(f)).unwrap(), "{}", dir.join(f).display());
    }
}

/// `dir/my-base` (golden A + the BPE tokenizer, context raised to 1024) and
/// `dir/data/gsm8k-train.parquet` (verl layout); returns both paths.
fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let ck = dir.join("my-base");
    std::fs::create_dir_all(&ck).unwrap();
    let golden = root().join("testdata/golden/v4-tiny-a");
    std::fs::copy(golden.join("model.safetensors"), ck.join("model.safetensors")).unwrap();
    // golden A declares 256 positions; the stages' response budgets (Non-think 224, Think
    // High 320 in eval) need more, and the weights do not depend on it
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["max_position_embeddings"], 256);
    config["max_position_embeddings"] = 1024.into();
    std::fs::write(ck.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    for f in TOKENIZER_FILES {
        std::fs::copy(bpe_dir().join(f), ck.join(f)).unwrap();
    }
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let data = dir.join("data/gsm8k-train.parquet");
    write_verl(&data, &[(3, 4), (12, 5), (7, 8), (20, 22), (1, 9), (6, 6)]);
    (ck, data)
}

#[test]
fn verl_dataset_and_own_tokenizer_pipeline_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, data) = inputs(tmp.path());
    let pipeline = r#"
[run]
name = "byo"
seed = 5
[model]
base = "my-base"
[data]
prompts = "data/gsm8k-train.parquet"
eval_prompts = "data/gsm8k-train.parquet"
[[stage]]
kind = "sft"
domains = "math.add"
steps = 1
batch = 2
max_len = 256
modes = ["non_think"]
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
mode_mix = { non_think = 1.0 }
[[stage]]
kind = "think_max"
domains = "math.*"
steps = 1
prompts = 1
group = 2
max_tokens = 32
[[stage]]
kind = "eval"
n = 1
harder = "math.*"
"#;
    std::fs::write(tmp.path().join("pipeline.toml"), pipeline).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_v4post"))
        .current_dir(tmp.path())
        .args(["run", "pipeline.toml", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let run = tmp.path().join("runs/byo");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    let domains: Vec<&str> =
        results["domains"].as_array().unwrap().iter().filter_map(|d| d["domain"].as_str()).collect();
    assert_eq!(domains.len(), 1, "{results}");
    let domain = domains[0];
    assert!(domain.starts_with("math.") && domain.contains("gsm8k"), "{domain}");

    // the run directory and every model it wrote carry the tokenizer
    carries_bpe(&run);
    let mut models = 0;
    for m in std::fs::read_dir(run.join("models")).unwrap() {
        let m = m.unwrap().path();
        carries_bpe(&m);
        carries_bpe(&m.join("rollout"));
        models += 1;
    }
    assert_eq!(models, 4, "sft, the expert, opd, think_max");

    // every trajectory (expert GRPO and OPD on the verl rows, by the local rollout workers)
    // is the BPE encoding of its prompt
    let bpe = HfTokenizer::from_file(&bpe_dir().join("tokenizer.json")).unwrap();
    let tasks: HashMap<String, datasets::Task> =
        datasets::prompts::load_dataset(&data).unwrap().into_iter().map(|t| (t.prompt_id.clone(), t)).collect();
    let mut checked = 0;
    for stage in std::fs::read_dir(run.join("trajectories")).unwrap() {
        for t in read_all(&stage.unwrap().path(), &ReadFilter::default()).unwrap() {
            let Some(task) = tasks.get(&t.prompt_id) else { continue };
            let mode: Mode = t.mode.parse().unwrap();
            let text = task.prompt_text(mode);
            assert_eq!(t.prompt_tokens, bpe.encode(&text), "{} {}", t.stage, t.prompt_id);
            assert_ne!(t.prompt_tokens, ByteTokenizer.encode(&text));
            assert_eq!(t.response_text, bpe.decode(&t.response_tokens));
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked} trajectories of the verl prompts");

    // the run is bound to its tokenizer: resuming it from a base whose tokenizer changed
    // (here: removed, so the byte tokenizer) is refused before anything runs
    for f in TOKENIZER_FILES {
        std::fs::remove_file(ck.join(f)).unwrap();
    }
    let again = Command::new(env!("CARGO_BIN_EXE_v4post"))
        .current_dir(tmp.path())
        .args(["run", "--resume", "runs/byo"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && e.contains("started with tokenizer"), "{e}");
    carries_bpe(&run);
}

#[test]
fn a_base_tokenizer_that_does_not_fit_stops_the_pipeline_before_it_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, _) = inputs(tmp.path());
    // 200 added tokens more: the tokenizer outgrows the model's vocab_size 512
    let path = ck.join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let n = json["model"]["vocab"].as_object().unwrap().len();
    let extra: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            serde_json::json!({"id": n + i, "content": format!("<x{i}>"), "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json["added_tokens"].as_array_mut().unwrap().extend(extra);
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let pipeline = "[run]\nname = \"big\"\n[model]\nbase = \"my-base\"\n[data]\n\
                    prompts = \"data/gsm8k-train.parquet\"\n[[stage]]\nkind = \"grpo\"\nexperts = [\"each\"]\n";
    std::fs::write(tmp.path().join("pipeline.toml"), pipeline).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_v4post"))
        .current_dir(tmp.path())
        .args(["run", "pipeline.toml"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(e.contains("model.base") && e.contains(&(n + 200).to_string()) && e.contains("512"), "{e}");
    assert!(!tmp.path().join("runs/big").exists(), "nothing is written");
}
