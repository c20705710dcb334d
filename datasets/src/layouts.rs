//! Prompt datasets as users have them: which files a path names, which layout their columns
//! are in, and how one record of each layout becomes a [`Task`].
//!
//! **Paths** ([`dataset_files`]): a single `.parquet`/`.jsonl` file; a directory (every
//! `*.parquet`, `*.jsonl`, `*.json`, `*.ndjson` directly in it, in name order, so
//! `train-00000-of-00004.parquet` … `train-00003-of-00004.parquet` read in shard order); or a
//! glob whose last component holds `*`, `?` or `[…]` (`data/train-*.parquet`), also in name
//! order. A glob or directory that matches nothing is an error. The files of a directory or
//! glob must be of one split — named by a Hugging Face shard name (`train-00000-of-00004` →
//! `train`) or by a whole stem `train`, `test`, `validation`, `val`, `dev`, `eval` (verl writes
//! `train.parquet` and `test.parquet`) — and a Hugging Face shard set must be complete (also
//! when one shard is left); a file named on its own is read as it is.
//!
//! **Message lists in string cells.** A string cell is read as a JSON message list only when
//! it starts with `[{` ([`is_message_list_text`]); any other string is text (a prompt
//! `"[Geometry] Find …"` is one user message).
//!
//! **Layouts** ([`detect_layout`], from the columns of a file: a Parquet schema, or the union of
//! the keys of a JSONL file). Exactly one gold column — `reward_model`, `answer`, `solution`,
//! `completion` — picks the layout; none picks TRL `messages`; two is ambiguous (an error listing
//! the columns found and the layouts accepted):
//!
//! | layout | columns | gold answer |
//! |--------|---------|-------------|
//! | `v4post` | `prompt` or `messages`, `answer`, optional `domain`, `verifier`, kwargs | `answer` |
//! | `verl` | `prompt` (list of `{role, content}`), `reward_model.ground_truth`, optional `data_source`, `ability`, `extra_info` | `ground_truth`, as written (`… #### 42` stays) |
//! | `trl-prompt-solution` | `prompt` (string or messages), `solution` | last `\boxed{}` of `solution`, else all of it when answer-like ([`gold_from_text`]) |
//! | `trl-prompt-completion` | `prompt` (string or messages), `completion` (string or messages) | last `\boxed{}` of the completion, else all of it when answer-like |
//! | `trl-messages` | `messages` ending in an assistant turn | the same, of the last assistant turn |
//!
//! A TRL `prompt` + `answer` file is the `v4post` layout. In TRL layouts the prompt is the
//! messages before the completion, and the completion becomes the task's reference content.
//!
//! **Verifiers.** `v4post` rows pick theirs from a `domain` prefix, else `math` for a numeric
//! gold and `exact` for text. TRL rows: a `domain` prefix, else `math` for an answer-like gold
//! (boxed, `####`, or one short line: `1,000`, `3/4`, `\frac12`); a completion of free text
//! (a sentence) has no verifier here and its row is skipped and counted like verl rows below. A verl row's family comes from
//! `ability` or `data_source` ([`verl_family`]); its domain is `{family}.{data_source}`
//! (`math.openai/gsm8k`, so `math.*` patterns select it) and its verifier kwargs keep
//! `data_source`, `ability` and `extra_info`. A verl row whose ability has no verifier here
//! (`code` with stdin tests, QA, …) is **skipped and counted** ([`Converted::Skip`]); the loader
//! prints the counts, and a dataset of which every row is skipped is an error.
//!
//! Errors name the file, the row (1 = first record of the file) and the column, with the type
//! found and the type expected.

use crate::chat::Message;
use crate::error::{DataError, Result};
use crate::tasks::{Reference, Split, Task};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Dataset file extensions read in a directory (a `.json` file there is more often metadata,
/// `dataset_info.json`, than data: name it, or a glob, to read it).
pub const DATA_EXTENSIONS: [&str; 3] = ["parquet", "jsonl", "ndjson"];

/// Roles a message may have.
pub const ROLES: [&str; 6] = ["system", "user", "assistant", "tool", "developer", "latest_reminder"];

/// Verifier kinds the `rewards` crate implements.
pub const VERIFIER_KINDS: [&str; 6] = ["math", "code", "python", "agent", "if", "exact"];

/// A prompt-dataset layout (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    V4post,
    Verl,
    TrlPromptSolution,
    TrlPromptCompletion,
    TrlMessages,
}

impl Layout {
    pub const ALL: [Layout; 5] =
        [Layout::V4post, Layout::Verl, Layout::TrlPromptSolution, Layout::TrlPromptCompletion, Layout::TrlMessages];

    pub fn name(self) -> &'static str {
        match self {
            Layout::V4post => "v4post",
            Layout::Verl => "verl",
            Layout::TrlPromptSolution => "trl-prompt-solution",
            Layout::TrlPromptCompletion => "trl-prompt-completion",
            Layout::TrlMessages => "trl-messages",
        }
    }

    /// The columns that make up the layout, for error messages.
    pub fn columns(self) -> &'static str {
        match self {
            Layout::V4post => "`prompt` or `messages` + `answer` (+ `domain`, `verifier`)",
            Layout::Verl => {
                "`prompt` (list of {role, content}) + `reward_model` {ground_truth} (+ `data_source`, `ability`, `extra_info`)"
            }
            Layout::TrlPromptSolution => "`prompt` + `solution`",
            Layout::TrlPromptCompletion => "`prompt` + `completion`",
            Layout::TrlMessages => "`messages` (ending in an assistant turn)",
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every accepted layout, one per line, for error messages.
pub fn accepted_layouts() -> String {
    Layout::ALL.iter().map(|l| format!("  {}: {}", l.name(), l.columns())).collect::<Vec<_>>().join("\n")
}

/// The layout of a file with these columns.
pub fn detect_layout(file: &Path, columns: &[String]) -> Result<Layout> {
    let has = |c: &str| columns.iter().any(|x| x == c);
    let golds: Vec<&str> =
        ["reward_model", "answer", "solution", "completion"].into_iter().filter(|c| has(c)).collect();
    let unknown = |why: String| {
        DataError::Format(format!(
            "{}: {why}; columns found: {}; layouts accepted:\n{}",
            file.display(),
            if columns.is_empty() { "(none)".to_string() } else { columns.join(", ") },
            accepted_layouts()
        ))
    };
    let layout = match golds.as_slice() {
        ["reward_model"] => Layout::Verl,
        ["answer"] => Layout::V4post,
        ["solution"] => Layout::TrlPromptSolution,
        ["completion"] => Layout::TrlPromptCompletion,
        [] if has("messages") => Layout::TrlMessages,
        [] => return Err(unknown("unknown layout (no gold answer column and no `messages`)".into())),
        many => {
            return Err(unknown(format!(
                "ambiguous layout: {} are all gold-answer columns",
                many.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(" and ")
            )))
        }
    };
    let needs_prompt = matches!(layout, Layout::Verl | Layout::TrlPromptSolution | Layout::TrlPromptCompletion);
    if needs_prompt && !has("prompt") {
        return Err(unknown(format!("the {layout} layout needs a `prompt` column")));
    }
    if layout == Layout::V4post && !has("prompt") && !has("messages") {
        return Err(unknown("the v4post layout needs a `prompt` or `messages` column".into()));
    }
    Ok(layout)
}

// ---------------------------------------------------------------------------------------------
// Paths: a file, a directory of shards, a glob.

fn is_data_file(p: &Path) -> bool {
    p.is_file() && p.extension().and_then(|e| e.to_str()).is_some_and(|e| DATA_EXTENSIONS.contains(&e))
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Whether `name` matches a shell glob of `*`, `?` and `[…]` (`[!…]` negates, `a-z` ranges;
/// an unterminated `[` is a literal). Greedy two-pointer matching: every token but `*`
/// consumes exactly one character, so on a mismatch only the last `*` needs to take one more
/// character, and the work is at most (pattern length × name length) steps, never exponential
/// (`*a*a*a*a*a*a*b` against a long name of `a`s).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    /// `(matched, length of the class in the pattern)`, or `None` when unterminated.
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        let mut i = 1;
        let negate = matches!(p.get(1), Some('!') | Some('^'));
        if negate {
            i += 1;
        }
        let start = i;
        let mut hit = false;
        while i < p.len() && (p[i] != ']' || i == start) {
            if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                hit |= p[i] <= c && c <= p[i + 2];
                i += 3;
            } else {
                hit |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((hit != negate, i + 1))
    }
    /// The pattern length consumed when the token at `p[0]` matches `c`, if it does.
    fn one(p: &[char], c: char) -> Option<usize> {
        match p.first()? {
            '?' => Some(1),
            '[' => match class(p, c) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                None => (c == '[').then_some(1),
            },
            x => (*x == c).then_some(1),
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // the pattern position after the last `*` seen, and the name position it matched up to
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if p.get(pi) == Some(&'*') {
            pi += 1;
            star = Some((pi, ni));
        } else if let Some(len) = one(&p[pi..], n[ni]) {
            pi += len;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // let the last `*` take one more character and retry from there
            pi = sp;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    Ok(out)
}

/// `train-00001-of-00004.parquet` → `("train", 1, 4)`: the Hugging Face shard naming.
pub fn shard_name(file: &Path) -> Option<(String, u32, u32)> {
    let stem = file.file_stem()?.to_str()?;
    let (rest, total) = stem.rsplit_once("-of-")?;
    let (split, index) = rest.rsplit_once('-')?;
    let digits = |s: &str| (s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u32>().ok())?;
    Some((split.to_string(), digits(index)?, digits(total)?))
}

/// Split names recognised in a whole file stem (`train.parquet`, as verl's preprocessing
/// scripts write `train.parquet` and `test.parquet`).
pub const SPLIT_STEMS: [&str; 6] = ["train", "test", "validation", "val", "dev", "eval"];

/// The split a file holds, from its name: the split of a Hugging Face shard name
/// (`train-00000-of-00004` → `train`), or a whole stem that is a split name (`test.parquet`
/// → `test`); `None` for other names (`data.parquet`).
pub fn split_of(file: &Path) -> Option<String> {
    if let Some((split, _, _)) = shard_name(file) {
        return Some(split);
    }
    let stem = file.file_stem()?.to_str()?.to_ascii_lowercase();
    SPLIT_STEMS.contains(&stem.as_str()).then_some(stem)
}

/// The files of a directory or glob must hold one split and, when named the Hugging Face
/// way, be complete: a directory holding `train.parquet` and `test.parquet` (or `train-*`
/// and `test-*` shards) is refused (training on the test split by accident), and so is
/// `train-00000-of-00004` … without `train-00002-of-00004`, even when only one shard is left.
fn check_shards(spec: &Path, files: &[PathBuf]) -> Result<()> {
    let mut splits: Vec<String> = files.iter().filter_map(|f| split_of(f)).collect();
    splits.sort();
    splits.dedup();
    if splits.len() > 1 {
        let dir = if spec.is_dir() { spec } else { spec.parent().unwrap_or(Path::new(".")) };
        let pick = splits.iter().find(|s| *s == "train").unwrap_or(&splits[0]);
        let of_pick: Vec<&PathBuf> = files.iter().filter(|f| split_of(f).as_ref() == Some(pick)).collect();
        let example = match of_pick.as_slice() {
            [one] if shard_name(one).is_none() => one.to_path_buf(),
            _ => {
                let ext = of_pick.first().and_then(|f| f.extension()).and_then(|e| e.to_str()).unwrap_or("parquet");
                dir.join(format!("{pick}-*.{ext}"))
            }
        };
        return Err(DataError::Format(format!(
            "{}: files of several splits ({}); name one split, e.g. {}",
            spec.display(),
            splits.join(", "),
            example.display()
        )));
    }
    let shards: Vec<(String, u32, u32)> = files.iter().filter_map(|f| shard_name(f)).collect();
    if let Some((split, _, total)) = shards.first() {
        if let Some(other) = shards.iter().find(|s| s.2 != *total) {
            return Err(DataError::Format(format!(
                "{}: shards of {split} say both {total} and {} shards in all (a stale shard?)",
                spec.display(),
                other.2
            )));
        }
        for i in 0..*total {
            if !shards.iter().any(|s| s.1 == i && s.2 == *total) {
                return Err(DataError::Format(format!(
                    "{}: shard {split}-{i:05}-of-{total:05} is missing ({} of {total} found)",
                    spec.display(),
                    shards.iter().filter(|s| s.2 == *total).count()
                )));
            }
        }
    }
    Ok(())
}

/// The dataset files `spec` names: the file itself, the data files directly in a directory,
/// or the files a glob in the last component matches, in name order. The files of a
/// directory or glob are checked to be of one split and complete ([`check_shards`]); a file
/// named on its own is read as it is.
pub fn dataset_files(spec: &Path) -> Result<Vec<PathBuf>> {
    let files = matching_files(spec)?;
    if !spec.is_file() {
        check_shards(spec, &files)?;
    }
    Ok(files)
}

fn matching_files(spec: &Path) -> Result<Vec<PathBuf>> {
    if spec.is_file() {
        return Ok(vec![spec.to_path_buf()]);
    }
    if spec.is_dir() {
        let entries = sorted_entries(spec)?;
        let files: Vec<PathBuf> = entries.iter().filter(|p| is_data_file(p)).cloned().collect();
        if files.is_empty() {
            let subdirs: Vec<String> = entries
                .iter()
                .filter(|p| p.is_dir())
                .filter_map(|p| p.file_name().map(|n| format!("{}/", n.to_string_lossy())))
                .collect();
            let hint = if subdirs.is_empty() {
                String::new()
            } else {
                format!(
                    " (subdirectories are not searched: {}; name one, or a glob like {}/{}/train-*.parquet)",
                    subdirs.join(", "),
                    spec.display(),
                    subdirs[0].trim_end_matches('/')
                )
            };
            return Err(DataError::Format(format!(
                "{}: a directory without dataset files (*.parquet, *.jsonl){hint}",
                spec.display()
            )));
        }
        return Ok(files);
    }
    let text = spec.to_string_lossy();
    let name = spec.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if has_glob_chars(&text) {
        let parent = spec.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if has_glob_chars(&parent.to_string_lossy()) || !has_glob_chars(&name) {
            return Err(DataError::Format(format!(
                "{}: a glob may only use `*`, `?` or `[…]` in its last component (data/train-*.parquet)",
                spec.display()
            )));
        }
        if !parent.is_dir() {
            return Err(DataError::Format(format!("{}: no such directory {}", spec.display(), parent.display())));
        }
        let files: Vec<PathBuf> = sorted_entries(parent)?
            .into_iter()
            .filter(|p| p.is_file() && p.file_name().is_some_and(|n| glob_match(&name, &n.to_string_lossy())))
            .collect();
        if files.is_empty() {
            return Err(DataError::Format(format!("{}: the glob matches no file", spec.display())));
        }
        return Ok(files);
    }
    Err(DataError::io(spec, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory")))
}

// ---------------------------------------------------------------------------------------------
// Records → tasks.

/// What one record becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Converted {
    Task(Box<Task>),
    /// Skipped (counted and printed by the loader), with the reason.
    Skip(String),
}

/// `"a string"`, `"a list"`, … for error messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn present<'a>(rec: &'a Map<String, Value>, col: &str) -> Option<&'a Value> {
    rec.get(col).filter(|v| !v.is_null())
}

/// A message's `content`: a string, null (empty), or a list of `{type: "text", text}` parts.
fn content_text(v: Option<&Value>) -> std::result::Result<String, String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("text") {
                Some(Value::String(s)) => Ok(s.as_str()),
                _ => Err(format!("content part {p} is not a {{type: \"text\", text}} part")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(|t| t.join("")),
        Some(other) => Err(format!("content is {}, expected a string", type_name(other))),
    }
}

/// Whether a string cell is a message list written as JSON rather than text: it starts with
/// `[{` (leading whitespace, and whitespace between `[` and `{`, allowed). The one rule every
/// reader uses, so `"[Geometry] Find the area…"` is a text prompt everywhere.
pub fn is_message_list_text(s: &str) -> bool {
    s.trim_start().strip_prefix('[').is_some_and(|rest| rest.trim_start().starts_with('{'))
}

/// A list of `{role, content}` messages (or that list as a JSON string, see
/// [`is_message_list_text`]) from column `col`.
pub fn parse_messages(file: &Path, row: usize, col: &str, v: &Value) -> Result<Vec<Message>> {
    let err = |msg: String| DataError::column(file, row, col, msg);
    let parsed;
    let v = match v {
        Value::String(s) if is_message_list_text(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|e| err(format!("not valid JSON ({e})")))?;
            &parsed
        }
        other => other,
    };
    let Value::Array(items) = v else {
        return Err(err(format!("expected a list of {{role, content}} messages, found {}", type_name(v))));
    };
    if items.is_empty() {
        return Err(err("empty message list".into()));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(o) = item else {
            return Err(err(format!("message {i}: expected a {{role, content}} object, found {}", type_name(item))));
        };
        let role = match o.get("role") {
            Some(Value::String(r)) => r.clone(),
            Some(other) => return Err(err(format!("message {i}: `role` is {}, expected a string", type_name(other)))),
            None => return Err(err(format!("message {i}: no `role`"))),
        };
        if !ROLES.contains(&role.as_str()) {
            return Err(err(format!("message {i}: unknown role `{role}` (expected one of {})", ROLES.join(", "))));
        }
        let content = content_text(o.get("content")).map_err(|e| err(format!("message {i}: {e}")))?;
        let mut m: Map<String, Value> =
            o.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
        m.insert("content".into(), Value::String(content));
        let msg: Message = serde_json::from_value(Value::Object(m)).map_err(|e| err(format!("message {i}: {e}")))?;
        out.push(msg);
    }
    Ok(out)
}

/// `prompt` as messages: a string is one user message; a list is messages.
fn prompt_messages(file: &Path, row: usize, rec: &Map<String, Value>) -> Result<Vec<Message>> {
    match present(rec, "prompt") {
        Some(Value::String(s)) if !is_message_list_text(s) => Ok(vec![Message::user(s.clone())]),
        Some(v @ (Value::String(_) | Value::Array(_))) => parse_messages(file, row, "prompt", v),
        Some(other) => Err(DataError::column(
            file,
            row,
            "prompt",
            format!("expected a string or a list of {{role, content}} messages, found {}", type_name(other)),
        )),
        None => Err(DataError::column(file, row, "prompt", "missing (null)")),
    }
}

/// Most characters of a gold answer taken from a completion as written (`1,000`, `3/4`,
/// `\frac12`, `x = 2`); longer text, a second line or more words is a sentence.
pub const SHORT_GOLD_CHARS: usize = 64;
/// Most words (whitespace-separated) of such a gold answer.
pub const SHORT_GOLD_WORDS: usize = 3;

/// Why a TRL row whose completion is free text is skipped (counted like verl rows without a
/// verifier).
pub const FREE_TEXT_SKIP: &str =
    "no verifier for free-text completions (a gold answer of more than one line, 64 characters or 3 words, without \\boxed{} or ####)";

/// Gold answer and verifier kind from a solution or completion text: the last `\boxed{}`;
/// else the text as written when it is answer-like — one line of at most
/// [`SHORT_GOLD_CHARS`] characters and [`SHORT_GOLD_WORDS`] words, or holding `\boxed` or
/// `####` — all checked by the math verifier, which parses thousands separators, fractions
/// and LaTeX; `None` for free text (a sentence), which no verifier here checks.
pub fn gold_from_text(text: &str) -> Option<(String, &'static str)> {
    if let Some(b) = crate::answers::last_boxed(text) {
        return Some((b.trim().to_string(), "math"));
    }
    let t = text.trim();
    let short = !t.is_empty()
        && !t.contains('\n')
        && t.chars().count() <= SHORT_GOLD_CHARS
        && t.split_whitespace().count() <= SHORT_GOLD_WORDS;
    (short || t.contains("####") || t.contains("\\boxed")).then(|| (t.to_string(), "math"))
}

/// The prompt id of record `index` (0-based) of `file`: `{file name}#{index}`, for every
/// layout and for SFT conversations.
pub fn prompt_id(file: &Path, index: usize) -> String {
    format!("{}#{}", file.file_name().and_then(|n| n.to_str()).unwrap_or("data"), index)
}

/// A task from a TRL prompt and completion; skipped when the completion is free text and no
/// `domain` names a verifier family.
fn user_task(
    file: &Path,
    index: usize,
    messages: Vec<Message>,
    completion: String,
    domain: Option<String>,
) -> Converted {
    let domain = domain.unwrap_or_else(|| "user".into());
    let family = crate::prompts::family_of(&domain);
    let named = matches!(family.as_str(), "math" | "code" | "agent" | "if");
    let (answer, kind) = match gold_from_text(&completion) {
        Some((answer, _)) if named => {
            let kind = crate::prompts::default_kind(&domain, &answer);
            (answer, kind)
        }
        Some(gold) => gold,
        None if named => {
            let answer = completion.trim().to_string();
            (answer, crate::prompts::default_kind(&domain, completion.trim()))
        }
        None => return Converted::Skip(FREE_TEXT_SKIP.into()),
    };
    Converted::Task(Box::new(Task {
        prompt_id: prompt_id(file, index),
        family,
        domain,
        split: Split::Train,
        difficulty: 0,
        messages,
        answer,
        verifier: serde_json::json!({ "kind": kind }),
        reference: Reference { content: completion, ..Default::default() },
    }))
}

fn optional_domain(file: &Path, row: usize, rec: &Map<String, Value>) -> Result<Option<String>> {
    match present(rec, "domain") {
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::String(_)) | None => Ok(None),
        Some(other) => {
            Err(DataError::column(file, row, "domain", format!("expected a string, found {}", type_name(other))))
        }
    }
}

/// The text of a completion: a string, or messages whose last is an assistant turn.
fn completion_text(file: &Path, row: usize, col: &str, v: Option<&Value>) -> Result<String> {
    match v {
        Some(Value::String(s)) if !is_message_list_text(s) => Ok(s.clone()),
        Some(v @ (Value::String(_) | Value::Array(_))) => {
            let ms = parse_messages(file, row, col, v)?;
            match ms.iter().rev().find(|m| m.role == "assistant") {
                Some(m) => Ok(m.content.clone()),
                None => Err(DataError::column(file, row, col, "no assistant message in the completion")),
            }
        }
        Some(other) => Err(DataError::column(
            file,
            row,
            col,
            format!("expected a string or a list of {{role, content}} messages, found {}", type_name(other)),
        )),
        None => Err(DataError::column(file, row, col, "missing (null)")),
    }
}

/// TRL `prompt` + `solution` / `prompt` + `completion`.
fn trl_prompt_gold(file: &Path, row: usize, rec: &Map<String, Value>, index: usize, col: &str) -> Result<Converted> {
    let messages = prompt_messages(file, row, rec)?;
    let text = completion_text(file, row, col, present(rec, col))?;
    Ok(user_task(file, index, messages, text, optional_domain(file, row, rec)?))
}

/// TRL `messages`: the prompt is everything before the last assistant turn.
fn trl_messages(file: &Path, row: usize, rec: &Map<String, Value>, index: usize) -> Result<Converted> {
    let v = present(rec, "messages").ok_or_else(|| DataError::column(file, row, "messages", "missing (null)"))?;
    let mut messages = parse_messages(file, row, "messages", v)?;
    let Some(last) = messages.iter().rposition(|m| m.role == "assistant") else {
        return Err(DataError::column(file, row, "messages", "no assistant turn to take the gold answer from"));
    };
    let completion = messages[last].content.clone();
    messages.truncate(last);
    if !messages.iter().any(|m| m.role == "user") {
        return Err(DataError::column(file, row, "messages", "no user turn before the last assistant turn"));
    }
    Ok(user_task(file, index, messages, completion, optional_domain(file, row, rec)?))
}

/// The verifier family of a verl row, from its `ability` (`math`) or its `data_source`
/// (GSM8K, MATH, AIME, AMC, NuminaMath, DeepScaleR, DAPO-Math, …); `None` when no verifier
/// here checks it.
pub fn verl_family(data_source: &str, ability: &str) -> Option<&'static str> {
    let a = ability.to_ascii_lowercase();
    if a.starts_with("math") || a == "arithmetic" {
        return Some("math");
    }
    let s = data_source.to_ascii_lowercase();
    const MATH_SOURCES: [&str; 8] = ["gsm8k", "math", "aime", "amc", "numina", "deepscaler", "olympiad", "minerva"];
    if a.is_empty() && MATH_SOURCES.iter().any(|m| s.contains(m)) {
        return Some("math");
    }
    None
}

fn optional_string(file: &Path, row: usize, rec: &Map<String, Value>, col: &str) -> Result<String> {
    match present(rec, col) {
        Some(Value::String(s)) => Ok(s.clone()),
        None => Ok(String::new()),
        Some(other) => Err(DataError::column(file, row, col, format!("expected a string, found {}", type_name(other)))),
    }
}

/// One verl row.
fn verl(file: &Path, row: usize, rec: &Map<String, Value>, index: usize) -> Result<Converted> {
    let data_source = optional_string(file, row, rec, "data_source")?;
    let ability = optional_string(file, row, rec, "ability")?;
    // a row no verifier here can check is skipped whatever its other cells hold (QA datasets
    // have list or object ground truths)
    let Some(family) = verl_family(&data_source, &ability) else {
        let what = match (data_source.is_empty(), ability.is_empty()) {
            (false, false) => format!("data_source `{data_source}`, ability `{ability}`"),
            (false, true) => format!("data_source `{data_source}`"),
            (true, false) => format!("ability `{ability}`"),
            (true, true) => "no data_source or ability".into(),
        };
        return Ok(Converted::Skip(format!("no verifier for verl rows of {what}")));
    };
    let col = "reward_model.ground_truth";
    let gt = match present(rec, "reward_model") {
        Some(Value::Object(o)) => o.get("ground_truth"),
        Some(Value::String(s)) => {
            return Err(DataError::column(
                file,
                row,
                "reward_model",
                format!(
                    "expected a struct {{ground_truth, style}}, found a string `{}`",
                    s.chars().take(40).collect::<String>()
                ),
            ))
        }
        Some(other) => {
            return Err(DataError::column(
                file,
                row,
                "reward_model",
                format!("expected a struct {{ground_truth, style}}, found {}", type_name(other)),
            ))
        }
        None => return Err(DataError::column(file, row, "reward_model", "missing (null)")),
    };
    let answer = match gt {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Null) | None => return Err(DataError::column(file, row, col, "missing")),
        Some(other) => {
            return Err(DataError::column(
                file,
                row,
                col,
                format!("expected a string or number, found {}", type_name(other)),
            ))
        }
    };
    let messages = prompt_messages(file, row, rec)?;
    let extra = match present(rec, "extra_info") {
        Some(v @ Value::Object(_)) => v.clone(),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        Some(other) => {
            return Err(DataError::column(
                file,
                row,
                "extra_info",
                format!("expected a struct, found {}", type_name(other)),
            ))
        }
        None => Value::Null,
    };
    let source = if data_source.is_empty() { "verl" } else { data_source.as_str() };
    let mut verifier = Map::new();
    verifier.insert("kind".into(), Value::String(family.into()));
    verifier.insert("data_source".into(), Value::String(data_source.clone()));
    verifier.insert("ability".into(), Value::String(ability));
    if !extra.is_null() {
        verifier.insert("extra_info".into(), extra);
    }
    Ok(Converted::Task(Box::new(Task {
        prompt_id: prompt_id(file, index),
        domain: format!("{family}.{source}"),
        family: family.into(),
        split: Split::Train,
        difficulty: 0,
        messages,
        answer,
        verifier: Value::Object(verifier),
        reference: Reference::default(),
    })))
}

/// One record of a file in `layout`; `row` is 1-based (for errors), `index` 0-based (for the
/// prompt id `file#index`).
pub fn convert(layout: Layout, file: &Path, row: usize, rec: &Map<String, Value>, index: usize) -> Result<Converted> {
    match layout {
        Layout::Verl => verl(file, row, rec, index),
        Layout::V4post => Ok(Converted::Task(Box::new(crate::prompts::task_from_record(file, row, rec, index)?))),
        Layout::TrlPromptSolution => trl_prompt_gold(file, row, rec, index, "solution"),
        Layout::TrlPromptCompletion => trl_prompt_gold(file, row, rec, index, "completion"),
        Layout::TrlMessages => trl_messages(file, row, rec, index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_shard_names() {
        assert!(glob_match("train-*.parquet", "train-00000-of-00004.parquet"));
        assert!(!glob_match("train-*.parquet", "test-00000-of-00001.parquet"));
        assert!(glob_match("train-0000[0-1]-of-*.parquet", "train-00001-of-00004.parquet"));
        assert!(!glob_match("train-0000[!0-1]-of-*.parquet", "train-00001-of-00004.parquet"));
        assert!(glob_match("?.jsonl", "a.jsonl") && !glob_match("?.jsonl", "ab.jsonl"));
        assert!(glob_match("*", "") && glob_match("a*b*c", "aXbYc") && !glob_match("a*b*c", "aXbY"));
    }

    #[test]
    fn hugging_face_shard_names() {
        let n = |s: &str| shard_name(Path::new(s));
        assert_eq!(n("data/train-00001-of-00004.parquet"), Some(("train".into(), 1, 4)));
        assert_eq!(n("my-set-test-00000-of-00001.jsonl"), Some(("my-set-test".into(), 0, 1)));
        assert_eq!(n("train.parquet"), None);
        assert_eq!(n("part-1-of-2.parquet"), None);
    }

    #[test]
    fn boxed_and_hash_golds() {
        assert_eq!(gold_from_text("so \\boxed{1} then \\boxed{ \\frac{1}{2} }"), Some(("\\frac{1}{2}".into(), "math")));
        assert_eq!(gold_from_text("Hence $\\fbox{7}$."), Some(("7".into(), "math")));
        assert_eq!(gold_from_text("so $\\boxed 5$."), Some(("5".into(), "math")));
        let g = |t: &str| gold_from_text(t);
        assert_eq!(g("She pays 3*4=12.\n#### 12"), Some(("She pays 3*4=12.\n#### 12".into(), "math")));
        assert_eq!(g(" 42 "), Some(("42".into(), "math")));
    }

    #[test]
    fn answer_like_golds_are_math_and_free_text_has_no_verifier() {
        let g = |t: &str| gold_from_text(t);
        // formats the math verifier parses, which an exact match would miss
        for t in ["1,000", "3/4", "\\frac12", "x = 2", "Paris", "(1, 2)"] {
            assert_eq!(g(t), Some((t.to_string(), "math")), "{t}");
        }
        assert_eq!(g("the area is \\boxed{12}"), Some(("12".into(), "math")));
        // sentences: more than 3 words, more than 64 characters, or more than one line
        assert_eq!(g("The capital of France is Paris."), None);
        assert_eq!(g(&"x".repeat(SHORT_GOLD_CHARS + 1)), None);
        assert_eq!(g("12\nthirteen"), None);
        assert_eq!(g(""), None);
    }

    #[test]
    fn one_rule_for_message_lists_in_strings() {
        assert!(is_message_list_text(r#"[{"role": "user", "content": "hi"}]"#));
        assert!(is_message_list_text("  [ {\"role\": \"user\"}]"));
        assert!(!is_message_list_text("[Geometry] Find the area of the square."));
        assert!(!is_message_list_text("[1, 2, 3] sums to?"));
        assert!(!is_message_list_text("What is [x]?"));
        let f = Path::new("p.jsonl");
        let rec: Map<String, Value> =
            serde_json::from_str(r#"{"prompt": "[Geometry] Find the area.", "completion": "\\boxed{4}"}"#).unwrap();
        for layout in [Layout::TrlPromptCompletion, Layout::TrlPromptSolution] {
            let rec = if layout == Layout::TrlPromptSolution {
                let mut r = rec.clone();
                let c = r.remove("completion").unwrap();
                r.insert("solution".into(), c);
                r
            } else {
                rec.clone()
            };
            let Converted::Task(t) = convert(layout, f, 1, &rec, 0).unwrap() else { panic!("skipped") };
            assert_eq!(t.messages, vec![Message::user("[Geometry] Find the area.")], "{layout}");
        }
        let rec: Map<String, Value> =
            serde_json::from_str(r#"{"prompt": "[Geometry] Find the area.", "answer": "4"}"#).unwrap();
        let Converted::Task(t) = convert(Layout::V4post, f, 1, &rec, 0).unwrap() else { panic!("skipped") };
        assert_eq!(t.messages, vec![Message::user("[Geometry] Find the area.")]);
        let rec: Map<String, Value> =
            serde_json::from_str(r#"{"prompt": "[{\"role\": \"user\", \"content\": \"2+2?\"}]", "answer": "4"}"#)
                .unwrap();
        let Converted::Task(t) = convert(Layout::V4post, f, 1, &rec, 0).unwrap() else { panic!("skipped") };
        assert_eq!(t.messages, vec![Message::user("2+2?")]);
    }

    #[test]
    fn one_prompt_id_format() {
        assert_eq!(prompt_id(Path::new("data/train-00001-of-00004.parquet"), 7), "train-00001-of-00004.parquet#7");
        let rec: Map<String, Value> = serde_json::from_str(r#"{"prompt": "1+1?", "answer": "2"}"#).unwrap();
        let f = Path::new("d/x.jsonl");
        let Converted::Task(t) = convert(Layout::V4post, f, 4, &rec, 3).unwrap() else { panic!("skipped") };
        assert_eq!(t.prompt_id, prompt_id(f, 3));
    }

    #[test]
    fn glob_matching_is_not_exponential() {
        let name = format!("{}.parquet", "a".repeat(4000));
        let t = std::time::Instant::now();
        assert!(!glob_match("*a*a*a*a*a*a*b", &name));
        assert!(glob_match("*a*a*a*a*a*a*.parquet", &name));
        assert!(glob_match("*a*a*?*a*[a]*a*.parq*", &name));
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
        // backtracking past a class and a `?`
        assert!(glob_match("*[0-9]-of-*", "train-00001-of-00004"));
        assert!(glob_match("a*?c", "abbbc") && !glob_match("a*?c", "ac"));
        assert!(glob_match("[x", "[x") && !glob_match("[x", "x"));
    }

    #[test]
    fn split_names_from_file_names() {
        let s = |p: &str| split_of(Path::new(p));
        assert_eq!(s("d/train-00001-of-00004.parquet").as_deref(), Some("train"));
        assert_eq!(s("d/train.parquet").as_deref(), Some("train"));
        assert_eq!(s("d/Test.jsonl").as_deref(), Some("test"));
        for v in ["validation", "val", "dev", "eval"] {
            assert_eq!(s(&format!("{v}.parquet")).as_deref(), Some(v));
        }
        assert_eq!(s("d/data.parquet"), None);
        assert_eq!(s("d/train_part.parquet"), None);
    }

    #[test]
    fn layouts_from_columns() {
        let f = Path::new("d.parquet");
        let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let l = |c: &[&str]| detect_layout(f, &cols(c));
        assert_eq!(l(&["data_source", "prompt", "ability", "reward_model", "extra_info"]).unwrap(), Layout::Verl);
        assert_eq!(l(&["prompt", "answer"]).unwrap(), Layout::V4post);
        assert_eq!(l(&["messages", "answer", "domain"]).unwrap(), Layout::V4post);
        assert_eq!(l(&["prompt", "solution"]).unwrap(), Layout::TrlPromptSolution);
        assert_eq!(l(&["prompt", "completion"]).unwrap(), Layout::TrlPromptCompletion);
        assert_eq!(l(&["messages"]).unwrap(), Layout::TrlMessages);
        let e = l(&["question", "label"]).unwrap_err().to_string();
        assert!(e.contains("d.parquet") && e.contains("question, label") && e.contains("trl-messages"), "{e}");
        let e = l(&["prompt", "answer", "solution"]).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("`answer` and `solution`"), "{e}");
        assert!(l(&["reward_model", "data_source"]).unwrap_err().to_string().contains("needs a `prompt`"));
    }
}
