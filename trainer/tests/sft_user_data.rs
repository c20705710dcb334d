//! SFT on the user's own conversations (`SftConfig::data`, `v4post sft --data`): the tokens
//! trained on are the assistant turns of the user's file — not the built-in suite — and the
//! loss on them goes down.

use arrow::array::{ArrayRef, ListArray, StringArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use datasets::chat::Mode;
use datasets::sft_data::load_sft_dataset;
use datasets::store::MetricsWriter;
use datasets::{ByteTokenizer, Tokenizer};
use model::train::TrainOptions;
use model::{Config, ModelWeights};
use std::path::Path;
use std::sync::Arc;
use trainer::optim::OptimConfig;
use trainer::sft::{
    batch_loss, conversation_example, pack, run_sft, user_example, user_examples_not_fitting, SftConfig,
};
use trainer::Session;
use trainer::TrainIo;

/// A Parquet file of `messages` conversations, written with the arrow/parquet crates.
fn write_conversations(path: &Path, rows: &[Vec<(&str, &str)>]) {
    let fields: Fields =
        vec![Field::new("role", DataType::Utf8, false), Field::new("content", DataType::Utf8, false)].into();
    let mut offsets = vec![0i32];
    let (mut roles, mut contents) = (vec![], vec![]);
    for r in rows {
        for (role, content) in r {
            roles.push(*role);
            contents.push(*content);
        }
        offsets.push(roles.len() as i32);
    }
    let s = StructArray::new(
        fields.clone(),
        vec![Arc::new(StringArray::from(roles)) as ArrayRef, Arc::new(StringArray::from(contents)) as ArrayRef],
        None,
    );
    let item = Arc::new(Field::new("item", DataType::Struct(fields), true));
    let list: ArrayRef = Arc::new(ListArray::new(item, OffsetBuffer::new(offsets.into()), Arc::new(s), None));
    let batch = RecordBatch::try_from_iter(vec![("messages", list)]).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn user_rows() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        vec![("user", "Say the word."), ("assistant", "xyzzy plugh")],
        vec![("user", "Again?"), ("assistant", "plugh xyzzy"), ("user", "Once more."), ("assistant", "xyzzy xyzzy")],
    ]
}

/// The trained tokens of a conversation are exactly its assistant turns (each with its end of
/// sentence), in Non-think every turn, in Think High the last one.
#[test]
fn only_assistant_turns_are_trained() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("chat.parquet");
    write_conversations(&p, &user_rows());
    let recs = load_sft_dataset(&p).unwrap();
    let trained = |mode: Mode, i: usize| {
        let ex = conversation_example(&recs[i].messages, mode, &ByteTokenizer, false);
        let toks: Vec<u32> = ex.tokens.iter().zip(&ex.weights).filter(|(_, w)| **w > 0.0).map(|(t, _)| *t).collect();
        ByteTokenizer.decode(&toks)
    };
    let eos = "<｜end▁of▁sentence｜>";
    assert_eq!(trained(Mode::NonThink, 0), format!("xyzzy plugh{eos}"));
    assert_eq!(trained(Mode::NonThink, 1), format!("plugh xyzzy{eos}xyzzy xyzzy{eos}"));
    assert_eq!(trained(Mode::ThinkHigh, 1), format!("</think>xyzzy xyzzy{eos}"));
    // with the prompt learned too (pre-training), everything but BOS is trained
    let all = conversation_example(&recs[1].messages, Mode::NonThink, &ByteTokenizer, true);
    assert_eq!(all.weights.iter().filter(|w| **w == 0.0).count(), 1);
}

#[test]
fn sft_on_user_data_trains_on_the_user_rows_and_learns_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("chat.parquet");
    write_conversations(&p, &user_rows());
    let recs = load_sft_dataset(&p).unwrap();
    let w = ModelWeights::random(&Config::tiny(), 11).unwrap();
    let cfg = SftConfig {
        steps: 25,
        batch: 2,
        max_len: 96,
        warmup: 1,
        modes: vec![Mode::NonThink],
        data: Some(p.clone()),
        ..Default::default()
    };
    // the first step's loss is the loss of the user's conversations, packed from cursor 0
    let s0 = Session::new(&w, TrainOptions::default(), OptimConfig::default(), 3).unwrap();
    let mut next = |k: u64| Ok(user_example(&recs, &cfg.modes, 3, k, &ByteTokenizer, false));
    let (seqs, _) = pack(&mut next, 0, cfg.batch, cfg.max_len).unwrap();
    let (_, want_first, _) = batch_loss(&s0, &seqs, cfg.indexer_loss_coef).unwrap();
    let mut s = Session::new(&w, TrainOptions::default(), OptimConfig::default(), 3).unwrap();
    let mut m = MetricsWriter::new(&dir.path().join("metrics"), "t").unwrap();
    let r = run_sft(&mut s, &cfg, &ByteTokenizer, &mut TrainIo::quiet(&mut m)).unwrap();
    eprintln!("user-data sft loss {} → {} (first step expected {want_first})", r.first_loss, r.final_loss);
    assert!((r.first_loss - want_first).abs() <= 1e-5 * (1.0 + want_first.abs()), "{r:?} vs {want_first}");
    assert!(r.final_loss < r.first_loss * 0.5, "{r:?}");
    // the suite's first step is a different loss: the data really changed
    let mut suite = Session::new(&w, TrainOptions::default(), OptimConfig::default(), 3).unwrap();
    let suite_cfg = SftConfig { steps: 1, data: None, domains: "math.add".into(), ..cfg.clone() };
    let rs = run_sft(&mut suite, &suite_cfg, &ByteTokenizer, &mut TrainIo::quiet(&mut m)).unwrap();
    assert!((rs.first_loss - r.first_loss).abs() > 1e-3, "suite {} vs user {}", rs.first_loss, r.first_loss);
}

#[test]
fn conversations_too_long_are_counted_and_a_dataset_that_never_fits_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("chat.jsonl");
    let long = "z".repeat(200);
    std::fs::write(
        &p,
        format!(
            "{{\"prompt\": \"short\", \"completion\": \"ok\"}}\n{{\"prompt\": \"{long}\", \"completion\": \"ok\"}}\n"
        ),
    )
    .unwrap();
    let recs = load_sft_dataset(&p).unwrap();
    let lines = user_examples_not_fitting(&recs, &[Mode::NonThink], &ByteTokenizer, 96, false).unwrap();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("non_think: 1 of 2 conversations are longer than max_len 96"), "{lines:?}");
    let e = user_examples_not_fitting(&recs, &[Mode::NonThink], &ByteTokenizer, 8, false).unwrap_err().to_string();
    assert!(e.contains("no conversation fits max_len 8"), "{e}");
    // a domain pattern that selects nothing, mixture weights with user data: errors
    let cfg = SftConfig { data: Some(p.clone()), domains: "math.*".into(), ..Default::default() };
    let e = trainer::sft::load_user_data(&cfg).unwrap_err().to_string();
    assert!(e.contains("none of the 2 conversations") && e.contains("math.*"), "{e}");
    let cfg = SftConfig { data: Some(p), mix: vec![("*".into(), 2)], ..Default::default() };
    assert!(trainer::sft::load_user_data(&cfg).unwrap_err().to_string().contains("mixture weights"));
}
