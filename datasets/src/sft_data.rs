//! SFT datasets as users have them: conversations to learn the assistant turns of.
//!
//! Paths are those of prompt datasets ([`crate::layouts::dataset_files`]: a file, a directory
//! of shards, a glob). Two layouts, told apart by the columns of each file:
//!
//! | layout | columns | conversation |
//! |--------|---------|--------------|
//! | `messages` | `messages`: list of `{role, content}` (or that list as a JSON string) | as written; at least one assistant turn |
//! | `prompt-completion` | `prompt` (string or messages) + `completion` (string or messages) | prompt messages, then the completion as assistant turn(s) |
//!
//! An optional `domain` string column names the record's domain (default `user`), so a
//! domain pattern can select records. Any other column is ignored. A file with neither
//! layout, or with both, is an error listing the columns found and the layouts accepted; a
//! missing or mistyped cell is an error naming file, row and column.

use crate::chat::Message;
use crate::error::{DataError, Result};
use crate::layouts::{dataset_files, is_message_list_text, parse_messages, prompt_id, type_name};
use serde_json::{Map, Value};
use std::path::Path;

/// One SFT conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct SftRecord {
    /// `file#index`.
    pub id: String,
    pub domain: String,
    /// The whole conversation; every assistant turn is trained on.
    pub messages: Vec<Message>,
}

/// The SFT layouts, for error messages.
pub const SFT_LAYOUTS: &str = "  messages: `messages` (list of {role, content} with assistant turns)\n  \
     prompt-completion: `prompt` (string or messages) + `completion` (string or messages)";

#[derive(Debug, Clone, Copy, PartialEq)]
enum SftLayout {
    Messages,
    PromptCompletion,
}

fn detect(file: &Path, columns: &[String]) -> Result<SftLayout> {
    let has = |c: &str| columns.iter().any(|x| x == c);
    let fail = |why: &str| {
        DataError::Format(format!(
            "{}: {why} for SFT; columns found: {}; layouts accepted:\n{SFT_LAYOUTS}",
            file.display(),
            columns.join(", ")
        ))
    };
    match (has("messages"), has("prompt"), has("completion")) {
        (true, _, true) => Err(fail("ambiguous layout (`messages` and `completion`)")),
        (true, _, false) => Ok(SftLayout::Messages),
        (false, true, true) => Ok(SftLayout::PromptCompletion),
        (false, true, false) => Err(fail("a `prompt` without a `completion` has nothing to learn")),
        _ => Err(fail("unknown layout")),
    }
}

/// A string completion is one assistant turn; messages are taken as they are (all assistant
/// or tool turns after the prompt).
fn completion_messages(file: &Path, row: usize, v: Option<&Value>) -> Result<Vec<Message>> {
    match v {
        Some(Value::String(s)) if !is_message_list_text(s) => Ok(vec![Message::assistant(None, s.clone(), vec![])]),
        Some(v @ (Value::String(_) | Value::Array(_))) => parse_messages(file, row, "completion", v),
        Some(Value::Null) | None => Err(DataError::column(file, row, "completion", "missing (null)")),
        Some(other) => Err(DataError::column(
            file,
            row,
            "completion",
            format!("expected a string or a list of {{role, content}} messages, found {}", type_name(other)),
        )),
    }
}

fn prompt_messages(file: &Path, row: usize, v: Option<&Value>) -> Result<Vec<Message>> {
    match v {
        Some(Value::String(s)) if !is_message_list_text(s) => Ok(vec![Message::user(s.clone())]),
        Some(v @ (Value::String(_) | Value::Array(_))) => parse_messages(file, row, "prompt", v),
        Some(Value::Null) | None => Err(DataError::column(file, row, "prompt", "missing (null)")),
        Some(other) => Err(DataError::column(
            file,
            row,
            "prompt",
            format!("expected a string or a list of {{role, content}} messages, found {}", type_name(other)),
        )),
    }
}

fn record(file: &Path, row: usize, layout: SftLayout, rec: &Map<String, Value>) -> Result<SftRecord> {
    let messages = match layout {
        SftLayout::Messages => match rec.get("messages") {
            Some(Value::Null) | None => return Err(DataError::column(file, row, "messages", "missing (null)")),
            Some(v) => parse_messages(file, row, "messages", v)?,
        },
        SftLayout::PromptCompletion => {
            let mut m = prompt_messages(file, row, rec.get("prompt"))?;
            let c = completion_messages(file, row, rec.get("completion"))?;
            if !c.iter().any(|m| m.role == "assistant") {
                return Err(DataError::column(file, row, "completion", "no assistant turn"));
            }
            m.extend(c);
            m
        }
    };
    let col = if layout == SftLayout::Messages { "messages" } else { "prompt" };
    match messages.iter().position(|m| m.role == "assistant") {
        None => return Err(DataError::column(file, row, col, "no assistant turn to learn")),
        Some(0) => return Err(DataError::column(file, row, col, "the conversation starts with an assistant turn")),
        Some(_) => {}
    }
    let domain = match rec.get("domain") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_) | Value::Null) | None => "user".into(),
        Some(other) => {
            return Err(DataError::column(
                file,
                row,
                "domain",
                format!("expected a string, found {}", type_name(other)),
            ))
        }
    };
    Ok(SftRecord { id: prompt_id(file, row - 1), domain, messages })
}

/// Every conversation of an SFT dataset (file, directory of shards or glob), in file and
/// row order.
pub fn load_sft_dataset(spec: &Path) -> Result<Vec<SftRecord>> {
    let mut out = Vec::new();
    for file in dataset_files(spec)? {
        let (columns, records) = crate::prompts::read_table(&file)?;
        let layout = detect(&file, &columns)?;
        for (i, rec) in records.iter().enumerate() {
            out.push(record(&file, i + 1, layout, rec)?);
        }
    }
    Ok(out)
}
