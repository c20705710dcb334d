//! A checkpoint folder with its own `tokenizer.json` is trained, sampled and evaluated with
//! that tokenizer, never the byte tokenizer, and every checkpoint written from it carries the
//! tokenizer files. The checkpoint is golden A (vocab_size 512) plus the committed BPE test
//! tokenizer (testdata/tokenizers/bpe-400, made by scripts/make_test_tokenizer.py).

use datasets::prompts::PromptSource;
use datasets::store::{read_all, ReadFilter};
use datasets::tasks::Split;
use datasets::tokenizer::{ByteTokenizer, HfTokenizer, Tokenizer, TOKENIZER_FILES};
use datasets::Task;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bpe_dir() -> PathBuf {
    root().join("testdata/tokenizers/bpe-400")
}

/// Golden A's config and weights in `dir`, with the tokenizer files of `tokenizer` (if any).
fn checkpoint(dir: &Path, tokenizer: Option<&Path>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let golden = root().join("testdata/golden/v4-tiny-a");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden.join(f), dir.join(f)).unwrap();
    }
    if let Some(t) = tokenizer {
        for f in TOKENIZER_FILES {
            std::fs::copy(t.join(f), dir.join(f)).unwrap();
        }
    }
    dir.to_path_buf()
}

fn v4post(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_v4post")).args(args).output().expect("run v4post")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn err(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `dir` holds the BPE tokenizer files, byte for byte.
fn carries_bpe(dir: &Path) {
    for f in TOKENIZER_FILES {
        let got = std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()));
        assert_eq!(got, std::fs::read(bpe_dir().join(f)).unwrap(), "{}", dir.join(f).display());
    }
}

/// The step checkpoint directories under `root` (8-digit names).
fn step_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.len() == 8 && n.parse::<u64>().is_ok()))
        .collect();
    v.sort();
    v
}

#[test]
fn grpo_samples_with_the_checkpoint_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint(&tmp.path().join("ck"), Some(&bpe_dir()));
    let out = tmp.path().join("expert");
    let o = v4post(&[
        "grpo",
        "--base",
        ck.to_str().unwrap(),
        "--domains",
        "math.add",
        "--steps",
        "1",
        "--prompts-per-step",
        "2",
        "--group",
        "2",
        "--modes",
        "non_think",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    ok(&o);
    let bpe = HfTokenizer::from_file(&bpe_dir().join("tokenizer.json")).unwrap();
    // the prompts the run drew (built-in source, seed 0), by id
    let source = PromptSource::Builtin {
        domains: "math.add".into(),
        split: Split::Train,
        seed: 0,
        difficulty: Default::default(),
    };
    let tasks: HashMap<String, Task> =
        source.take(64, 0).unwrap().into_iter().map(|t| (t.prompt_id.clone(), t)).collect();
    let trajs = read_all(&out.join("trajectories/grpo-math.add"), &ReadFilter::default()).unwrap();
    assert!(trajs.len() >= 4, "{} trajectories", trajs.len());
    for t in &trajs {
        let task = &tasks[&t.prompt_id];
        let text = task.prompt_text(datasets::chat::Mode::NonThink);
        assert_eq!(t.prompt_tokens, bpe.encode(&text), "prompt {} is BPE-encoded", t.prompt_id);
        assert_ne!(t.prompt_tokens, ByteTokenizer.encode(&text));
        assert!(t.prompt_tokens.len() * 2 < text.len(), "{} BPE ids for {} bytes", t.prompt_tokens.len(), text.len());
        assert_eq!(t.response_text, bpe.decode(&t.response_tokens), "responses are BPE-decoded");
    }
    // the expert, its FP4 export and the stage's result in the run directory carry the tokenizer
    carries_bpe(&out);
    carries_bpe(&out.join("rollout"));
    carries_bpe(&out.join("models/grpo-math.add"));
    carries_bpe(&out.join("models/grpo-math.add/rollout"));

    // the expert is a checkpoint with a tokenizer: `eval` loads and uses it
    let e = v4post(&[
        "eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--domains",
        "math.add",
        "--n",
        "2",
        "--modes",
        "non_think",
        "--max-tokens",
        "8",
        "--json",
    ]);
    ok(&e);
    let rep: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    assert_eq!(rep["n"], 2, "{rep}");
}

#[test]
fn sft_outputs_carry_the_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint(&tmp.path().join("ck"), Some(&bpe_dir()));
    let plain = checkpoint(&tmp.path().join("plain"), None);
    let run = |base: &Path, out: &Path| {
        let o = v4post(&[
            "sft",
            "--base",
            base.to_str().unwrap(),
            "--domains",
            "math.add",
            "--steps",
            "1",
            "--batch",
            "2",
            "--max-len",
            "256",
            "--modes",
            "non_think",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        ok(&o);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v
    };
    let with_bpe = run(&ck, &tmp.path().join("sft-bpe"));
    assert_eq!(with_bpe["steps"], 1);
    carries_bpe(&tmp.path().join("sft-bpe"));
    carries_bpe(&tmp.path().join("sft-bpe/rollout"));
    carries_bpe(&tmp.path().join("sft-bpe/models/sft"));
    // step checkpoints carry it too (kept while a stage runs; here stopped after one of two)
    let stopped = tmp.path().join("sft-stop");
    let o = v4post(&[
        "sft",
        "--base",
        ck.to_str().unwrap(),
        "--domains",
        "math.add",
        "--steps",
        "2",
        "--stop-after-steps",
        "1",
        "--batch",
        "2",
        "--max-len",
        "256",
        "--modes",
        "non_think",
        "--out",
        stopped.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"), "{}", String::from_utf8_lossy(&o.stderr));
    let steps = step_dirs(&stopped.join("checkpoints/sft"));
    assert_eq!(steps.len(), 1);
    steps.iter().for_each(|d| carries_bpe(d));
    // --resume continues the checkpoint's tokenizer: a base with another one is refused,
    // naming both; the same base resumes
    let resume = |base: &Path| {
        v4post(&[
            "sft",
            "--base",
            base.to_str().unwrap(),
            "--resume",
            "--domains",
            "math.add",
            "--steps",
            "2",
            "--batch",
            "2",
            "--max-len",
            "256",
            "--modes",
            "non_think",
            "--out",
            tmp.path().join("sft-bpe").to_str().unwrap(),
        ])
    };
    let e = err(&resume(&plain));
    assert!(e.contains("--resume") && e.contains("sft-bpe"), "{e}");
    assert!(e.contains("(fingerprint hf-") && e.contains("built-in byte tokenizer (v4post-byte-320"), "{e}");
    ok(&resume(&ck));
    // the same run without a tokenizer.json trains on bytes and writes none
    run(&plain, &tmp.path().join("sft-bytes"));
    assert!(TOKENIZER_FILES.iter().all(|f| !tmp.path().join("sft-bytes").join(f).exists()));
}

#[test]
fn a_tokenizer_larger_than_vocab_size_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint(&tmp.path().join("ck"), Some(&bpe_dir()));
    // 200 more added tokens than the trained vocabulary
    let path = ck.join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let base = json["model"]["vocab"].as_object().unwrap().len();
    let extra: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            serde_json::json!({"id": base + i, "content": format!("<extra_{i}>"), "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json["added_tokens"].as_array_mut().unwrap().extend(extra);
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let out = tmp.path().join("out");
    let e = err(&v4post(&["sft", "--base", ck.to_str().unwrap(), "--steps", "1", "--out", out.to_str().unwrap()]));
    let n = (base + 200).to_string();
    assert!(e.contains(&n) && e.contains("512") && e.contains("tokenizer.json"), "{e}");
    assert!(!out.join("model.safetensors").exists());
    let e = err(&v4post(&["eval", "--checkpoint", ck.to_str().unwrap(), "--n", "1"]));
    assert!(e.contains(&n) && e.contains("512"), "{e}");
}

#[test]
fn a_tokenizer_without_a_v4_special_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint(&tmp.path().join("ck"), Some(&bpe_dir()));
    let path = ck.join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["added_tokens"].as_array_mut().unwrap().retain(|t| t["content"] != "<｜Assistant｜>");
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let e = err(&v4post(&["eval", "--checkpoint", ck.to_str().unwrap(), "--n", "1"]));
    assert!(e.contains("<｜Assistant｜>") && e.contains("tokenizer.json"), "{e}");
}

#[test]
fn teachers_must_share_the_students_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let student = checkpoint(&tmp.path().join("student"), Some(&bpe_dir()));
    let teacher = checkpoint(&tmp.path().join("teacher"), None);
    let reg = tmp.path().join("teachers.toml");
    let toml = format!("[[teacher]]\nid = \"bytes\"\ncheckpoint = {:?}\ndomains = [\"math.add\"]\n", teacher.display());
    std::fs::write(&reg, toml).unwrap();
    let e = err(&v4post(&[
        "opd",
        "--base",
        student.to_str().unwrap(),
        "--teachers",
        reg.to_str().unwrap(),
        "--out",
        tmp.path().join("out").to_str().unwrap(),
        "--steps",
        "1",
    ]));
    assert!(e.contains("teacher `bytes`") && e.contains("byte tokenizer"), "{e}");
    assert!(e.contains(&student.join("tokenizer.json").display().to_string()), "{e}");
}

/// `--base` (the student) given as a file inside its checkpoint folder: the tokenizer compared is the
/// folder's (the one the run uses), so a byte teacher is refused and a teacher with the same
/// tokenizer.json is accepted and the run trains.
#[test]
fn a_student_given_as_a_file_is_compared_by_its_folders_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let student = checkpoint(&tmp.path().join("student"), Some(&bpe_dir())).join("model.safetensors");
    let opd = |teacher: &Path, out: &str| {
        let reg = tmp.path().join(format!("{out}.toml"));
        let toml = format!("[[teacher]]\nid = \"t\"\ncheckpoint = {:?}\ndomains = [\"math.add\"]\n", teacher.display());
        std::fs::write(&reg, toml).unwrap();
        v4post(&[
            "opd",
            "--base",
            student.to_str().unwrap(),
            "--teachers",
            reg.to_str().unwrap(),
            "--out",
            tmp.path().join(out).to_str().unwrap(),
            "--domains",
            "math.add",
            "--mode-mix",
            "non_think=1",
            "--steps",
            "1",
            "--prompts-per-step",
            "1",
        ])
    };
    let bytes = checkpoint(&tmp.path().join("bytes"), None);
    let e = err(&opd(&bytes, "out-bytes"));
    assert!(e.contains("teacher `t`") && e.contains("byte tokenizer"), "{e}");
    let folder_tokenizer = student.parent().unwrap().join("tokenizer.json");
    assert!(e.contains(&format!("{} (fingerprint hf-", folder_tokenizer.display())), "{e}");
    let same = checkpoint(&tmp.path().join("same"), Some(&bpe_dir()));
    ok(&opd(&same, "out-same"));
    carries_bpe(&tmp.path().join("out-same"));
}
