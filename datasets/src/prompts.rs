//! Prompt sources: the built-in suite, and user datasets in Parquet or JSONL — one file, a
//! directory of shards or a glob, in the layouts of verl, TRL or v4post itself (see
//! [`crate::layouts`], which detects the layout from the columns). The v4post layout:
//!
//! * `prompt` (string) **or** `messages` (list of `{role, content}`, or that list as a JSON string);
//! * `answer` (string or number);
//! * optional `domain` (default `user`; its prefix — `math.`, `code.`, `agent.`, `if.` — picks the verifier);
//! * optional `verifier` (JSON object of verifier kwargs, e.g. `{"kind": "code", "tests": ...}`),
//!   or kwargs as their own columns (`tests`, `input`, `checks`, `tools`, `env`).
//!
//! A missing or mistyped column is an error naming the file, the row (1 = first record) and the column.
//! Rows a layout cannot verify (verl abilities without a verifier) are skipped, counted and
//! printed ([`LoadedDataset::skipped`]); nothing is dropped silently.
//!
//! `tasks sample` files ([`TaskWriter`]) hold `messages` as a Parquet
//! `list<struct<role: string, content: string>>`, so pyarrow, pandas and HF `datasets` read
//! it as a conversation; files from before, with `messages` as a JSON string, still load.

use crate::chat::Message;
use crate::error::{DataError, Result};
use crate::tasks::{self, Reference, Split, Task};
use arrow::array::*;
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Map, Value};
use std::path::Path;

const KWARG_COLUMNS: [&str; 5] = ["tests", "input", "checks", "tools", "env"];

pub(crate) fn family_of(domain: &str) -> String {
    match domain.split('.').next() {
        Some(f @ ("math" | "code" | "agent" | "if")) if domain.contains('.') => f.to_string(),
        _ => "user".to_string(),
    }
}

pub(crate) fn default_kind(domain: &str, answer: &str) -> &'static str {
    match family_of(domain).as_str() {
        "math" => "math",
        "code" => "code",
        "agent" => "agent",
        "if" => "if",
        _ if answer.trim().parse::<f64>().is_ok() => "math",
        _ => "exact",
    }
}

/// Build a task from one record's fields (already converted to JSON values); `row` is
/// 1-based and only used in error messages.
pub fn task_from_record(file: &Path, row: usize, rec: &Map<String, Value>, index: usize) -> Result<Task> {
    use crate::layouts::{is_message_list_text, parse_messages};
    let err = |col: &str, msg: &str| DataError::column(file, row, col, msg);
    let messages: Vec<Message> = match (rec.get("messages"), rec.get("prompt")) {
        (Some(m), _) if !m.is_null() => parse_messages(file, row, "messages", m)?,
        (_, Some(Value::String(p))) if !is_message_list_text(p) => vec![Message::user(p.clone())],
        (_, Some(a @ (Value::Array(_) | Value::String(_)))) => parse_messages(file, row, "prompt", a)?,
        (_, Some(other)) if !other.is_null() => {
            return Err(err("prompt", &format!("expected a string, got {}", type_name(other))))
        }
        _ => return Err(err("prompt", "missing: a record needs `prompt` or `messages`")),
    };
    let answer = match rec.get("answer") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Null) | None => return Err(err("answer", "missing")),
        Some(other) => return Err(err("answer", &format!("expected a string or number, got {}", type_name(other)))),
    };
    let domain = match rec.get("domain") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Null) | None => "user".to_string(),
        Some(Value::String(_)) => "user".to_string(),
        Some(other) => return Err(err("domain", &format!("expected a string, got {}", type_name(other)))),
    };
    let mut verifier = match rec.get("verifier") {
        Some(Value::Object(o)) => o.clone(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => o,
            _ => return Err(err("verifier", "expected a JSON object")),
        },
        Some(Value::Null) | None => Map::new(),
        Some(other) => return Err(err("verifier", &format!("expected a JSON object, got {}", type_name(other)))),
    };
    for k in KWARG_COLUMNS {
        if let Some(v) = rec.get(k).filter(|v| !v.is_null()) {
            let v = match v {
                Value::String(s) if k != "input" => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
                _ => v.clone(),
            };
            verifier.entry(k.to_string()).or_insert(v);
        }
    }
    match verifier.get("kind") {
        None => {
            verifier.insert("kind".into(), Value::String(default_kind(&domain, &answer).into()));
        }
        Some(Value::String(k)) if crate::layouts::VERIFIER_KINDS.contains(&k.as_str()) => {}
        Some(k) => {
            return Err(err(
                "verifier",
                &format!("unknown verifier kind {k} (expected one of {})", crate::layouts::VERIFIER_KINDS.join(", ")),
            ))
        }
    }
    Ok(Task {
        prompt_id: crate::layouts::prompt_id(file, index),
        family: family_of(&domain),
        domain,
        split: Split::Train,
        difficulty: 0,
        messages,
        answer,
        verifier: Value::Object(verifier),
        reference: Reference::default(),
    })
}

use crate::layouts::type_name;

/// Convert one Arrow cell to JSON (the types a prompt dataset uses).
fn cell(a: &dyn Array, i: usize) -> Option<Value> {
    if a.is_null(i) {
        return Some(Value::Null);
    }
    Some(match a.data_type() {
        DataType::Utf8 => Value::String(a.as_any().downcast_ref::<StringArray>()?.value(i).to_string()),
        DataType::LargeUtf8 => Value::String(a.as_any().downcast_ref::<LargeStringArray>()?.value(i).to_string()),
        DataType::Int64 => json!(a.as_any().downcast_ref::<Int64Array>()?.value(i)),
        DataType::Int32 => json!(a.as_any().downcast_ref::<Int32Array>()?.value(i)),
        DataType::UInt32 => json!(a.as_any().downcast_ref::<UInt32Array>()?.value(i)),
        DataType::UInt64 => json!(a.as_any().downcast_ref::<UInt64Array>()?.value(i)),
        DataType::Float64 => json!(a.as_any().downcast_ref::<Float64Array>()?.value(i)),
        DataType::Float32 => json!(a.as_any().downcast_ref::<Float32Array>()?.value(i)),
        DataType::Boolean => json!(a.as_any().downcast_ref::<BooleanArray>()?.value(i)),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => {
            let v = arrow::compute::cast(&a.slice(i, 1), &DataType::Int64).ok()?;
            json!(v.as_any().downcast_ref::<Int64Array>()?.value(0))
        }
        DataType::Null => Value::Null,
        DataType::Utf8View | DataType::Dictionary(..) => {
            let v = arrow::compute::cast(&a.slice(i, 1), &DataType::Utf8).ok()?;
            Value::String(v.as_any().downcast_ref::<StringArray>()?.value(0).to_string())
        }
        DataType::List(_) => {
            let l = a.as_any().downcast_ref::<ListArray>()?;
            let inner = l.value(i);
            Value::Array((0..inner.len()).map(|j| cell(inner.as_ref(), j)).collect::<Option<Vec<_>>>()?)
        }
        DataType::LargeList(_) => {
            let l = a.as_any().downcast_ref::<LargeListArray>()?;
            let inner = l.value(i);
            Value::Array((0..inner.len()).map(|j| cell(inner.as_ref(), j)).collect::<Option<Vec<_>>>()?)
        }
        DataType::Struct(fields) => {
            let s = a.as_any().downcast_ref::<StructArray>()?;
            let mut m = Map::new();
            for (f, c) in fields.iter().zip(s.columns()) {
                m.insert(f.name().clone(), cell(c.as_ref(), i)?);
            }
            Value::Object(m)
        }
        _ => return None,
    })
}

/// Columns whose Arrow type must be readable (every column some layout uses).
const USED_COLUMNS: [&str; 18] = [
    "prompt",
    "messages",
    "answer",
    "domain",
    "verifier",
    "response",
    "mode",
    "reward_model",
    "extra_info",
    "data_source",
    "ability",
    "solution",
    "completion",
    "tests",
    "input",
    "checks",
    "tools",
    "env",
];

/// One record of a dataset file: column → value.
pub type Record = Map<String, Value>;

/// Every record of a `.parquet` or `.jsonl` file as a JSON object (row numbers are 1-based).
pub fn read_records(path: &Path) -> Result<Vec<Map<String, Value>>> {
    read_table(path).map(|(_, records)| records)
}

/// The column names (Parquet schema order; for JSONL, keys in order of first appearance)
/// and every record of one file.
pub fn read_table(path: &Path) -> Result<(Vec<String>, Vec<Record>)> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut out = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    match ext {
        "parquet" => {
            let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| DataError::Format(format!("{}: not a readable Parquet file ({e})", path.display())))?
                .build()
                .map_err(|e| DataError::Format(format!("{}: {e}", path.display())))?;
            columns = reader.schema().fields().iter().map(|f| f.name().clone()).collect();
            for batch in reader {
                let b = batch.map_err(|e| DataError::Format(format!("{}: {e}", path.display())))?;
                let schema = b.schema();
                for i in 0..b.num_rows() {
                    let row = out.len() + 1;
                    let mut rec = Map::new();
                    for (f, c) in schema.fields().iter().zip(b.columns()) {
                        match cell(c.as_ref(), i) {
                            Some(v) => {
                                rec.insert(f.name().clone(), v);
                            }
                            None if USED_COLUMNS.contains(&f.name().as_str()) => {
                                return Err(DataError::column(
                                    path,
                                    row,
                                    f.name(),
                                    format!("unsupported type {}", c.data_type()),
                                ));
                            }
                            None => {}
                        }
                    }
                    out.push(rec);
                }
            }
        }
        "jsonl" | "json" | "ndjson" => {
            let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
            for (ln, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line).map_err(|e| {
                    DataError::Format(format!("{}: row {}: invalid JSON ({e})", path.display(), ln + 1))
                })?;
                match v {
                    Value::Object(o) => {
                        for k in o.keys() {
                            if !columns.contains(k) {
                                columns.push(k.clone());
                            }
                        }
                        out.push(o)
                    }
                    _ => {
                        return Err(DataError::Format(format!(
                            "{}: row {}: expected a JSON object",
                            path.display(),
                            ln + 1
                        )))
                    }
                }
            }
        }
        other => {
            return Err(DataError::Format(format!(
                "{}: unknown dataset format `.{other}` (use .parquet or .jsonl)",
                path.display()
            )))
        }
    }
    if out.is_empty() {
        return Err(DataError::Format(format!("{}: no records", path.display())));
    }
    Ok((columns, out))
}

/// A user prompt dataset as read: its tasks, the files and layouts it came from, and the
/// rows skipped (reason → count).
#[derive(Debug, Clone, Default)]
pub struct LoadedDataset {
    pub tasks: Vec<Task>,
    /// Each file read, its layout and its number of records.
    pub files: Vec<(std::path::PathBuf, crate::layouts::Layout, usize)>,
    pub skipped: std::collections::BTreeMap<String, usize>,
}

impl LoadedDataset {
    /// Rows skipped in all.
    pub fn skipped_rows(&self) -> usize {
        self.skipped.values().sum()
    }

    /// One line per skip reason (`skipped 3 rows of data/: no verifier for …`); empty when none.
    pub fn skip_summary(&self, spec: &Path) -> Vec<String> {
        self.skipped.iter().map(|(why, n)| format!("{}: skipped {n} rows: {why}", spec.display())).collect()
    }
}

/// Read a user prompt dataset — a file, a directory of shards or a glob (see
/// [`crate::layouts::dataset_files`]) — in any accepted layout, counting skipped rows. Every
/// file's layout is detected from its own columns. A dataset whose every row is skipped is
/// an error naming the reasons.
pub fn load_dataset_report(spec: &Path) -> Result<LoadedDataset> {
    use crate::layouts::{convert, dataset_files, detect_layout, Converted};
    let mut out = LoadedDataset::default();
    for file in dataset_files(spec)? {
        let (columns, records) = read_table(&file)?;
        let layout = detect_layout(&file, &columns)?;
        for (i, rec) in records.iter().enumerate() {
            match convert(layout, &file, i + 1, rec, i)? {
                Converted::Task(t) => out.tasks.push(*t),
                Converted::Skip(why) => *out.skipped.entry(why).or_default() += 1,
            }
        }
        out.files.push((file, layout, records.len()));
    }
    if out.tasks.is_empty() {
        return Err(DataError::Format(format!(
            "{}: every row was skipped ({})",
            spec.display(),
            out.skip_summary(spec).join("; ")
        )));
    }
    Ok(out)
}

/// Read a user prompt dataset (see [`load_dataset_report`]); skipped rows are printed on
/// stderr, once per dataset and process (prompt sources re-read their file every draw).
pub fn load_dataset(spec: &Path) -> Result<Vec<Task>> {
    let loaded = load_dataset_report(spec)?;
    if loaded.skipped_rows() > 0 {
        static PRINTED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
        let mut printed = PRINTED.lock().unwrap_or_else(|p| p.into_inner());
        if !printed.iter().any(|p| p == spec) {
            printed.push(spec.to_path_buf());
            for line in loaded.skip_summary(spec) {
                eprintln!("{line}");
            }
        }
    }
    Ok(loaded.tasks)
}

/// Write tasks (with their rendered first prompt) as Parquet or JSONL, by extension.
pub fn write_tasks(path: &Path, tasks: &[Task]) -> Result<()> {
    write_tasks_iter(path, tasks.iter().cloned().map(Ok)).map(|_| ())
}

/// Rows per Parquet row group written by [`TaskWriter`].
pub const TASK_ROW_GROUP: usize = 8192;

/// Write tasks as they come (`tasks sample --n 10^11`): memory is one row group, not `n`.
/// Returns the number written; the file appears (renamed from `.tmp`) only when complete.
pub fn write_tasks_iter(path: &Path, tasks: impl IntoIterator<Item = Result<Task>>) -> Result<u64> {
    let mut w = TaskWriter::create(path, TASK_ROW_GROUP)?;
    for t in tasks {
        w.push(t?)?;
    }
    w.finish()
}

enum TaskSink {
    Jsonl(std::io::BufWriter<std::fs::File>),
    Parquet(Box<parquet::arrow::ArrowWriter<std::fs::File>>),
}

/// Streaming task writer: Parquet rows are buffered up to `row_group` tasks, then encoded
/// and flushed to the file as one row group; JSONL rows go through a buffered file. The
/// footer's row-group index grows by a few hundred bytes per row group.
pub struct TaskWriter {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    sink: TaskSink,
    buf: Vec<Task>,
    row_group: usize,
    written: u64,
    groups: u64,
}

fn task_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("domain", DataType::Utf8, false),
        Field::new("family", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("difficulty", DataType::UInt32, false),
        Field::new("messages", messages_type(), false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
        Field::new("verifier", DataType::Utf8, false),
        Field::new("reference", DataType::Utf8, false),
    ]))
}

/// The fields of one message as written: `struct<role: string, content: string>`.
fn message_fields() -> arrow::datatypes::Fields {
    use arrow::datatypes::Field;
    vec![Field::new("role", DataType::Utf8, false), Field::new("content", DataType::Utf8, false)].into()
}

/// The list field of [`messages_type`].
fn message_item() -> arrow::datatypes::FieldRef {
    std::sync::Arc::new(arrow::datatypes::Field::new("item", DataType::Struct(message_fields()), false))
}

/// `list<struct<role, content>>`, the type HF `datasets` gives a conversation.
fn messages_type() -> DataType {
    DataType::List(message_item())
}

/// The tasks' messages as a `list<struct<role, content>>` column. A message with more than
/// a role and a content (reasoning, tool calls, tools) has no place in it: an error, never
/// dropped in silence.
fn messages_column(tasks: &[Task]) -> Result<ArrayRef> {
    use std::sync::Arc;
    let mut offsets = vec![0i32];
    let (mut roles, mut contents) = (Vec::new(), Vec::new());
    for t in tasks {
        for m in &t.messages {
            if m.reasoning_content.is_some() || !m.tool_calls.is_empty() || !m.tools.is_empty() {
                return Err(DataError::Format(format!(
                    "task {}: a {} message with reasoning, tool calls or tools cannot be written as {{role, content}}",
                    t.prompt_id, m.role
                )));
            }
            roles.push(m.role.as_str());
            contents.push(m.content.as_str());
        }
        let end = i32::try_from(roles.len())
            .map_err(|_| DataError::Format("more than 2^31 messages in one row group".into()))?;
        offsets.push(end);
    }
    let structs = StructArray::try_new(
        message_fields(),
        vec![Arc::new(StringArray::from(roles)) as ArrayRef, Arc::new(StringArray::from(contents)) as ArrayRef],
        None,
    )?;
    let offsets = arrow::buffer::OffsetBuffer::new(offsets.into());
    Ok(Arc::new(ListArray::try_new(message_item(), offsets, Arc::new(structs), None)?))
}

fn task_batch(tasks: &[Task]) -> Result<arrow::record_batch::RecordBatch> {
    use std::sync::Arc;
    let s = |f: &dyn Fn(&Task) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values(tasks.iter().map(f))) };
    let cols: Vec<ArrayRef> = vec![
        s(&|t| t.prompt_id.clone()),
        s(&|t| t.domain.clone()),
        s(&|t| t.family.clone()),
        s(&|t| t.split.as_str().to_string()),
        Arc::new(UInt32Array::from_iter_values(tasks.iter().map(|t| t.difficulty))),
        messages_column(tasks)?,
        s(&|t| t.messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default()),
        s(&|t| t.answer.clone()),
        s(&|t| t.verifier.to_string()),
        s(&|t| serde_json::to_string(&t.reference).unwrap_or_default()),
    ];
    Ok(arrow::record_batch::RecordBatch::try_new(task_schema(), cols)?)
}

impl TaskWriter {
    pub fn create(path: &Path, row_group: usize) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        }
        let tmp = path.with_extension(format!("{ext}.tmp"));
        let open = || std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e));
        let row_group = row_group.max(1);
        let sink = match ext {
            "jsonl" | "json" | "ndjson" => TaskSink::Jsonl(std::io::BufWriter::new(open()?)),
            "parquet" => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_max_row_group_row_count(Some(row_group))
                    .build();
                TaskSink::Parquet(Box::new(parquet::arrow::ArrowWriter::try_new(open()?, task_schema(), Some(props))?))
            }
            other => {
                return Err(DataError::Format(format!(
                    "{}: unknown output format `.{other}` (use .parquet or .jsonl)",
                    path.display()
                )))
            }
        };
        Ok(TaskWriter { path: path.to_path_buf(), tmp, sink, buf: Vec::new(), row_group, written: 0, groups: 0 })
    }

    pub fn push(&mut self, t: Task) -> Result<()> {
        match &mut self.sink {
            TaskSink::Jsonl(w) => {
                use std::io::Write;
                serde_json::to_writer(&mut *w, &t)?;
                w.write_all(b"\n").map_err(|e| DataError::io(&self.tmp, e))?;
                self.written += 1;
            }
            TaskSink::Parquet(_) => {
                self.buf.push(t);
                if self.buf.len() >= self.row_group {
                    self.flush_group()?;
                }
            }
        }
        Ok(())
    }

    /// Encode the buffered rows as one row group and write it out.
    fn flush_group(&mut self) -> Result<()> {
        let TaskSink::Parquet(w) = &mut self.sink else { return Ok(()) };
        if self.buf.is_empty() {
            return Ok(());
        }
        w.write(&task_batch(&self.buf)?)?;
        w.flush()?;
        self.written += self.buf.len() as u64;
        self.groups += 1;
        self.buf.clear();
        Ok(())
    }

    /// Tasks held in memory, not yet written (at most one row group).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Row groups written so far.
    pub fn row_groups(&self) -> u64 {
        self.groups
    }

    /// Write what is left, close the file and move it into place; the number of tasks.
    pub fn finish(mut self) -> Result<u64> {
        self.flush_group()?;
        match self.sink {
            TaskSink::Jsonl(mut w) => {
                use std::io::Write;
                w.flush().map_err(|e| DataError::io(&self.tmp, e))?;
            }
            TaskSink::Parquet(w) => {
                w.close()?;
            }
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| DataError::io(&self.path, e))?;
        Ok(self.written)
    }
}

/// Where prompts come from.
#[derive(Debug, Clone)]
pub enum PromptSource {
    /// The built-in suite: a domain pattern (`math.*,if.*`), split, seed, difficulty.
    Builtin { domains: String, split: Split, seed: u64, difficulty: tasks::Difficulty },
    /// A user dataset file.
    File(std::path::PathBuf),
    /// The records of a user dataset file whose domain matches a pattern list
    /// (`math.*,if.upper`, `*`).
    FileDomains(std::path::PathBuf, String),
}

/// Separates a record's prompt id from the pass over the records that drew it.
pub const PASS_MARK: char = '@';

/// Draw `k` (0-based, over a whole run) of a list that is cycled through: record `k % len`.
/// From the second pass on, its prompt id carries the pass (`data.jsonl#3@2`), so a file
/// that wraps around never yields a prompt id twice — nor, through it, a trajectory id, a
/// sampling seed or a GRPO group that collides with an earlier draw of the same record.
fn cycled(all: &[Task], k: u64) -> Task {
    let len = all.len() as u64;
    let mut t = all[(k % len) as usize].clone();
    let pass = k / len;
    if pass > 0 {
        t.prompt_id = format!("{}{PASS_MARK}{pass}", t.prompt_id);
    }
    t
}

impl PromptSource {
    /// `n` prompts from draw `offset` on, cycling over the matched domains (built-in) or the
    /// file's records. Prompt ids are unique over all draws: built-in tasks carry their
    /// index, and a record drawn again on a later pass over a file gets the pass appended
    /// (`data.jsonl#3@1`, see [`PASS_MARK`]).
    pub fn take(&self, n: usize, offset: u64) -> Result<Vec<Task>> {
        match self {
            PromptSource::Builtin { domains, split, seed, difficulty } => {
                let ds = tasks::match_domains(domains)?;
                (0..n)
                    .map(|i| {
                        let k = offset as usize + i;
                        let (d, index) = (ds[k % ds.len()], (k / ds.len()) as u64);
                        tasks::generate(d.domain, *split, *seed, index, difficulty.for_prompt(d.domain, index))
                    })
                    .collect()
            }
            PromptSource::File(p) => {
                let all = load_dataset(p)?;
                Ok((0..n as u64).map(|i| cycled(&all, offset + i)).collect())
            }
            PromptSource::FileDomains(p, pattern) => {
                let all: Vec<Task> =
                    load_dataset(p)?.into_iter().filter(|t| tasks::domain_matches(pattern, &t.domain)).collect();
                if all.is_empty() {
                    return Err(DataError::Format(format!("{}: no record of domain `{pattern}`", p.display())));
                }
                Ok((0..n as u64).map(|i| cycled(&all, offset + i)).collect())
            }
        }
    }
}

#[cfg(test)]
mod task_writer_tests {
    use super::*;

    /// Parquet rows leave memory one row group at a time: the writer never holds more than
    /// a row group, and the file grows while tasks are still being generated.
    #[test]
    fn tasks_are_written_in_bounded_row_groups_as_they_come() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let d = tasks::Difficulty::uniform(None);
        let mut w = TaskWriter::create(&path, 16).unwrap();
        let tmp = path.with_extension("parquet.tmp");
        let mut sizes = Vec::new();
        for t in tasks::sample_iter("math.add", Split::Train, 0, 200, &d) {
            w.push(t.unwrap()).unwrap();
            assert!(w.buffered() < 16, "{} tasks held in memory", w.buffered());
            sizes.push(std::fs::metadata(&tmp).unwrap().len());
        }
        assert_eq!(w.row_groups(), 12);
        // written incrementally: the file grew many times before the end
        sizes.dedup();
        assert!(sizes.len() >= 5, "file sizes while writing: {sizes:?}");
        assert_eq!(w.finish().unwrap(), 200);
        let back = load_dataset(&path).unwrap();
        assert_eq!(back.len(), 200);
        let want = tasks::sample("math.add", Split::Train, 0, 200, None).unwrap();
        assert_eq!((&back[199].answer, &back[199].messages), (&want[199].answer, &want[199].messages));
    }

    /// A huge `n` is a lazy range: nothing is allocated up front, and a consumer that stops
    /// early (an error, a full disk) has generated only what it took.
    #[test]
    fn sampling_a_huge_n_is_lazy() {
        let d = tasks::Difficulty::uniform(None);
        let it = tasks::sample_iter("math.add", Split::Train, 0, 100_000_000_000, &d);
        assert_eq!(it.size_hint().0, 100_000_000_000);
        let first: Vec<Task> = it.take(3).map(|t| t.unwrap()).collect();
        assert_eq!(first.len(), 3);
        let jsonl = tempfile::tempdir().unwrap();
        let p = jsonl.path().join("t.jsonl");
        let n = write_tasks_iter(&p, tasks::sample_iter("math.add", Split::Train, 0, 50, &d)).unwrap();
        assert_eq!((n, load_dataset(&p).unwrap().len()), (50, 50));
    }
}
