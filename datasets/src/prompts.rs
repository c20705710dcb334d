//! Prompt sources: the built-in suite, and user datasets in Parquet or JSONL with
//! Hugging Face-style columns:
//!
//! * `prompt` (string) **or** `messages` (list of `{role, content}`, or that list as a JSON string);
//! * `answer` (string or number);
//! * optional `domain` (default `user`; its prefix — `math.`, `code.`, `agent.`, `if.` — picks the verifier);
//! * optional `verifier` (JSON object of verifier kwargs, e.g. `{"kind": "code", "tests": ...}`),
//!   or kwargs as their own columns (`tests`, `input`, `checks`, `tools`, `env`).
//!
//! A missing or mistyped column is an error naming the file, the row (1 = first record) and the column.

use crate::chat::Message;
use crate::error::{DataError, Result};
use crate::tasks::{self, Reference, Split, Task};
use arrow::array::*;
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Map, Value};
use std::path::Path;

const KWARG_COLUMNS: [&str; 5] = ["tests", "input", "checks", "tools", "env"];

fn family_of(domain: &str) -> String {
    match domain.split('.').next() {
        Some(f @ ("math" | "code" | "agent" | "if")) if domain.contains('.') => f.to_string(),
        _ => "user".to_string(),
    }
}

fn default_kind(domain: &str, answer: &str) -> &'static str {
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
    let err = |col: &str, msg: &str| DataError::column(file, row, col, msg);
    let messages: Vec<Message> = match (rec.get("messages"), rec.get("prompt")) {
        (Some(m), _) if !m.is_null() => {
            let v = match m {
                Value::String(s) => {
                    serde_json::from_str::<Value>(s).map_err(|e| err("messages", &format!("not valid JSON ({e})")))?
                }
                other => other.clone(),
            };
            let list: Vec<Message> = serde_json::from_value(v)
                .map_err(|e| err("messages", &format!("expected a list of {{role, content}} objects ({e})")))?;
            if list.is_empty() {
                return Err(err("messages", "empty message list"));
            }
            if let Some(bad) = list.iter().find(|m| {
                !["system", "user", "assistant", "tool", "developer", "latest_reminder"].contains(&m.role.as_str())
            }) {
                return Err(err("messages", &format!("unknown role `{}`", bad.role)));
            }
            list
        }
        (_, Some(Value::String(p))) => vec![Message::user(p.clone())],
        (_, Some(Value::Array(a))) => serde_json::from_value(Value::Array(a.clone()))
            .map_err(|e| err("prompt", &format!("expected a string or a message list ({e})")))?,
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
    if !verifier.contains_key("kind") {
        verifier.insert("kind".into(), Value::String(default_kind(&domain, &answer).into()));
    }
    Ok(Task {
        prompt_id: format!("{}#{}", file.file_name().and_then(|n| n.to_str()).unwrap_or("data"), index),
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

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

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

/// Every record of a `.parquet` or `.jsonl` file as a JSON object (row numbers are 1-based).
pub fn read_records(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut out = Vec::new();
    match ext {
        "parquet" => {
            let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| DataError::Format(format!("{}: not a readable Parquet file ({e})", path.display())))?
                .build()
                .map_err(|e| DataError::Format(format!("{}: {e}", path.display())))?;
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
                            None if ["prompt", "messages", "answer", "domain", "verifier", "response", "mode"]
                                .contains(&f.name().as_str()) =>
                            {
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
                    Value::Object(o) => out.push(o),
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
    Ok(out)
}

/// Read a user prompt dataset (`.parquet`, `.jsonl` or `.json` lines).
pub fn load_dataset(path: &Path) -> Result<Vec<Task>> {
    read_records(path)?.iter().enumerate().map(|(i, rec)| task_from_record(path, i + 1, rec, i)).collect()
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
        Field::new("messages", DataType::Utf8, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
        Field::new("verifier", DataType::Utf8, false),
        Field::new("reference", DataType::Utf8, false),
    ]))
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
        s(&|t| serde_json::to_string(&t.messages).unwrap_or_default()),
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
