//! Complete validation of a pipeline file, all of it before the first stage starts, with
//! errors that name the field (`stage 2 (grpo "math.add"): variant: unknown variant …`):
//!
//! * [`parse`] reads the TOML section by section and stage by stage, so a wrong type, an
//!   unknown key or a bad mode names its key;
//! * [`check`] holds every rule that needs no file: ranges, the strings the structs keep as
//!   text (variant, estimator, mode_mix), the order of stages, built-in domain patterns;
//! * [`preflight`] reads what the run will read: the base checkpoint's config, the user
//!   datasets (their domains) and a teachers.toml, and checks lengths against the model;
//! * [`prompts_fit`] (also used by the `grpo`, `opd` and `eval` verbs) checks that every
//!   rollout a stage starts fits the model's context: a rollout holds the prompt (the chat
//!   template of its mode, `Task::prompt_text`, encoded with the run's tokenizer) and up to
//!   `budget` response tokens, and the trainer forwards both, so for every mode the stage
//!   samples in, `longest prompt + budget ≤ context` (`max_seq_len`, read from
//!   `max_seq_len`/`max_position_embeddings` of config.json). Otherwise the engine fails
//!   mid-run ("sequence exceeds max_seq_len") on every delivery of the job. Bounded work: at
//!   most [`CONTEXT_CHECK_MAX_DRAWS`] draws of the built-in suite (per expert or stage) or
//!   [`CONTEXT_CHECK_MAX_FILE_DRAWS`] of a user dataset. Exact without encoding every prompt:
//!   where the tokenizer gives at most one token per byte
//!   ([`Tokenizer::at_most_one_token_per_byte`]: the byte tokenizer, byte-level BPE), a prompt
//!   with `bytes + budget ≤ context` fits, so only the others are encoded; with any other
//!   tokenizer every prompt is encoded. The eval stage checks exactly its eval prompts.
//!
//! `pipeline::run` calls [`check`] and [`preflight`] before it writes anything.

use super::config::{
    DataSection, EvalStage, GrpoStage, ModelSection, OpdStage, Optim, PipelineConfig, RunSection, SftStage, Stage,
    ThinkMaxStage, WorkersSection,
};
use datasets::chat::Mode;
use datasets::prompts::PromptSource;
use datasets::tasks::{self, Difficulty, Levels, Split};
use datasets::tokenizer::Tokenizer;
use datasets::Task;
use model::Config;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::Path;
use toml::{Table, Value};

/// A pipeline file error and where it is: `run.queue`, `stage 2 (grpo "math.add"): variant`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field's path; empty for an error of the whole file (TOML syntax).
    pub at: String,
    pub message: String,
}

impl FieldError {
    pub fn new(at: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { at: at.into(), message: message.into() }
    }

    /// The error one level down: `optim` + `lr_muon` → `optim.lr_muon`.
    fn under(mut self, parent: &str) -> Self {
        self.at = if self.at.is_empty() { parent.to_string() } else { format!("{parent}.{}", self.at) };
        self
    }

    /// The error inside a stage: `stage 2 (grpo "math.add"): variant`.
    fn in_stage(mut self, label: &str) -> Self {
        self.at = if self.at.is_empty() { label.to_string() } else { format!("{label}: {}", self.at) };
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.at, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

type Checked = Result<(), FieldError>;

// ---------------------------------------------------------------- parsing

const SECTIONS: [&str; 5] = ["run", "model", "data", "workers", "stage"];
const KINDS: [&str; 5] = ["sft", "grpo", "opd", "think_max", "eval"];

/// A check of a nested value (a sub-table or a map) that names the key inside it.
type Nested = (&'static str, fn(&Value) -> Checked);

/// Read a pipeline file; every error names its section, stage and key.
pub fn parse(text: &str) -> Result<PipelineConfig, FieldError> {
    let doc: Table = toml::from_str(text).map_err(|e| FieldError::new("", e.to_string().trim_end()))?;
    if let Some(k) = doc.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
        return Err(FieldError::new(key_name(k), format!("unknown section (expected {})", SECTIONS.join(", "))));
    }
    let missing = |s: &str| FieldError::new(s, format!("missing section [{s}]"));
    let levels: Nested = ("difficulty_by_domain", check_map::<Levels>);
    Ok(PipelineConfig {
        run: section::<RunSection>(&doc, "run", &[("name", "x")], &[])?.ok_or_else(|| missing("run"))?,
        model: section::<ModelSection>(&doc, "model", &[("base", "x")], &[])?.ok_or_else(|| missing("model"))?,
        data: section::<DataSection>(&doc, "data", &[], &[levels])?.unwrap_or_default(),
        workers: section::<WorkersSection>(&doc, "workers", &[], &[])?.unwrap_or_default(),
        stages: stages(&doc)?,
    })
}

/// An optional `[name]` table; `filler` gives placeholders of its required keys.
fn section<T: DeserializeOwned>(
    doc: &Table,
    name: &str,
    filler: &[(&str, &str)],
    nested: &[Nested],
) -> Result<Option<T>, FieldError> {
    let Some(v) = doc.get(name) else { return Ok(None) };
    let Value::Table(t) = v else {
        return Err(FieldError::new(name, format!("expected a table [{name}], got {}", v.type_str())));
    };
    typed(t, filler, nested).map(Some).map_err(|e| e.under(name))
}

/// `t` as a `T`; on failure, the key to blame.
fn typed<T: DeserializeOwned>(t: &Table, filler: &[(&str, &str)], nested: &[Nested]) -> Result<T, FieldError> {
    Value::Table(t.clone())
        .try_into::<T>()
        .map_err(|whole| blame::<T>(t, filler, nested).unwrap_or_else(|| FieldError::new("", whole.message())))
}

/// The first key whose value fails on its own (next to placeholders of the required keys):
/// serde's own messages name no field for a wrong type.
fn blame<T: DeserializeOwned>(t: &Table, filler: &[(&str, &str)], nested: &[Nested]) -> Option<FieldError> {
    t.iter().find_map(|(k, v)| {
        if let Some((_, check)) = nested.iter().find(|(n, _)| *n == k.as_str()) {
            if let Err(e) = check(v) {
                return Some(e.under(k));
            }
        }
        let mut one: Table = filler
            .iter()
            .filter(|(f, _)| *f != k.as_str())
            .map(|(f, x)| (f.to_string(), Value::String(x.to_string())))
            .collect();
        one.insert(k.clone(), v.clone());
        Value::Table(one).try_into::<T>().err().map(|e| FieldError::new(key_name(k), e.message()))
    })
}

/// A sub-table of type `T` (a non-table is the parent's type error).
fn check_table<T: DeserializeOwned>(v: &Value) -> Checked {
    match v {
        Value::Table(t) => typed::<T>(t, &[], &[]).map(drop),
        _ => Ok(()),
    }
}

/// A map whose values are `T`s (a non-table is the parent's type error).
fn check_map<T: DeserializeOwned>(v: &Value) -> Checked {
    let Value::Table(t) = v else { return Ok(()) };
    for (k, x) in t {
        x.clone().try_into::<T>().map_err(|e| FieldError::new(key_name(k), e.message()))?;
    }
    Ok(())
}

/// A map from reasoning modes (keys as [`Mode`] parses them) to numbers.
fn check_mode_map(v: &Value) -> Checked {
    let Value::Table(t) = v else { return Ok(()) };
    for (k, x) in t {
        k.parse::<Mode>().map_err(|e| FieldError::new(key_name(k), e))?;
        x.clone().try_into::<f32>().map_err(|e| FieldError::new(key_name(k), e.message()))?;
    }
    Ok(())
}

/// A key as TOML writes it: bare, or quoted when it holds dots or spaces (`"code.loop"`).
fn key_name(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

fn stages(doc: &Table) -> Result<Vec<Stage>, FieldError> {
    let Some(v) = doc.get("stage") else { return Ok(Vec::new()) };
    let Value::Array(items) = v else {
        return Err(FieldError::new("stage", "write each stage as a [[stage]] table"));
    };
    items.iter().enumerate().map(|(i, v)| stage(i, v)).collect()
}

fn stage(i: usize, v: &Value) -> Result<Stage, FieldError> {
    let Value::Table(t) = v else {
        return Err(FieldError::new(format!("stage {}", i + 1), "expected a [[stage]] table"));
    };
    let label = raw_label(i, t);
    let kinds = KINDS.join(", ");
    let kind = match t.get("kind") {
        Some(Value::String(k)) => k.as_str(),
        Some(o) => {
            let e = FieldError::new("kind", format!("expected a string ({kinds}), got {}", o.type_str()));
            return Err(e.in_stage(&label));
        }
        None => return Err(FieldError::new("kind", format!("missing ({kinds})")).in_stage(&label)),
    };
    let mut rest = t.clone();
    rest.remove("kind");
    let optim: Nested = ("optim", check_table::<Optim>);
    let mode_mix: Nested = ("mode_mix", check_mode_map);
    let anticipatory: Nested = ("anticipatory", check_table::<trainer::anticipatory::AnticipatoryConfig>);
    let parsed = match kind {
        "sft" => typed::<SftStage>(&rest, &[], &[optim]).map(Stage::Sft),
        "grpo" => typed::<GrpoStage>(&rest, &[], &[optim, anticipatory]).map(Stage::Grpo),
        "opd" => typed::<OpdStage>(&rest, &[], &[optim, mode_mix]).map(Stage::Opd),
        "think_max" => typed::<ThinkMaxStage>(&rest, &[], &[optim]).map(Stage::ThinkMax),
        "eval" => typed::<EvalStage>(&rest, &[], &[]).map(Stage::Eval),
        o => Err(FieldError::new("kind", format!("unknown kind {o:?} ({kinds})"))),
    };
    parsed.map_err(|e| e.in_stage(&label))
}

/// How errors name a stage: `stage 2 (grpo "math.add,if.upper")`, counted from 1.
pub fn stage_label(index: usize, s: &Stage) -> String {
    label(index, s.kind(), selector(s).as_deref())
}

fn label(index: usize, kind: &str, selector: Option<&str>) -> String {
    match selector {
        Some(x) => format!("stage {} ({kind} {x:?})", index + 1),
        None => format!("stage {} ({kind})", index + 1),
    }
}

/// What a stage works on: its domains, experts or teachers.
fn selector(s: &Stage) -> Option<String> {
    match s {
        Stage::Sft(x) => Some(x.domains.clone()),
        Stage::Grpo(x) => Some(x.experts.join(",")),
        Stage::Opd(x) => Some(x.teachers.clone()),
        Stage::ThinkMax(x) => Some(x.domains.clone()),
        Stage::Eval(_) => None,
    }
}

/// The label of a stage table that may not parse: its selector as written, or the default.
fn raw_label(index: usize, t: &Table) -> String {
    let default = match t.get("kind").and_then(Value::as_str) {
        Some("sft") => Stage::Sft(SftStage::default()),
        Some("grpo") => Stage::Grpo(GrpoStage::default()),
        Some("opd") => Stage::Opd(OpdStage::default()),
        Some("think_max") => Stage::ThinkMax(ThinkMaxStage::default()),
        Some("eval") => Stage::Eval(EvalStage::default()),
        _ => return format!("stage {}", index + 1),
    };
    let key = match default {
        Stage::Sft(_) | Stage::ThinkMax(_) => "domains",
        Stage::Grpo(_) => "experts",
        Stage::Opd(_) => "teachers",
        Stage::Eval(_) => "",
    };
    let written = match t.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(a)) => a.iter().map(Value::as_str).collect::<Option<Vec<_>>>().map(|v| v.join(",")),
        _ => None,
    };
    label(index, default.kind(), written.or_else(|| selector(&default)).as_deref())
}

// ---------------------------------------------------------------- rules without files

/// Every rule that needs no file.
pub fn check(c: &PipelineConfig) -> Checked {
    check_run(&c.run).map_err(|e| e.under("run"))?;
    check_model(&c.model).map_err(|e| e.under("model"))?;
    check_data(&c.data).map_err(|e| e.under("data"))?;
    check_workers(&c.workers).map_err(|e| e.under("workers"))?;
    check_stage_list(&c.stages)?;
    let think_max = c.stages.iter().any(|s| matches!(s, Stage::ThinkMax(_)));
    for (i, s) in c.stages.iter().enumerate() {
        let r = match s {
            Stage::Sft(x) => check_sft(x),
            Stage::Grpo(x) => check_grpo(x, &c.data),
            Stage::Opd(x) => check_opd(x),
            Stage::ThinkMax(x) => check_think_max(x, &c.data),
            Stage::Eval(x) => check_eval(x, &c.data, think_max),
        };
        r.map_err(|e| e.in_stage(&stage_label(i, s)))?;
    }
    Ok(())
}

fn check_run(r: &RunSection) -> Checked {
    let n = &r.name;
    if n.is_empty() || n.contains(['/', '\\', ' ']) || n.starts_with('.') {
        return Err(FieldError::new("name", format!("`{n}` must be a plain directory name")));
    }
    check_queue(&r.queue).map_err(|m| FieldError::new("queue", m))
}

/// `embedded`, or a Redis URL the client can parse (nothing is connected).
pub fn check_queue(url: &str) -> Result<(), String> {
    if url == "embedded" {
        return Ok(());
    }
    let shown = crate::queue::redact_url(url);
    if !["redis://", "rediss://", "unix://"].iter().any(|s| url.starts_with(s)) {
        return Err(format!("`{shown}`: use `embedded`, redis://[user:password@]host:port or rediss://... for TLS"));
    }
    redis::IntoConnectionInfo::into_connection_info(url).map(drop).map_err(|e| format!("`{shown}`: {:?}", e.kind()))
}

fn check_model(m: &ModelSection) -> Checked {
    match m.base.strip_prefix("preset:") {
        Some(p) => preset_config(p).map(drop).map_err(|e| FieldError::new("base", e)),
        None if m.base.trim().is_empty() => Err(FieldError::new("base", "give a checkpoint directory or preset:NAME")),
        None => Ok(()),
    }
}

/// Largest preset trained from random weights (the `sft`/`grpo` verbs' rule).
const MAX_PRESET_PARAMS: u64 = 200_000_000;

fn preset_config(name: &str) -> Result<Config, String> {
    let c = Config::preset(name).map_err(|e| e.to_string())?;
    if c.param_counts().total > MAX_PRESET_PARAMS {
        return Err(format!("preset `{name}` is too large to train from random weights here; use tiny or small, or a checkpoint directory"));
    }
    Ok(c)
}

fn check_data(d: &DataSection) -> Checked {
    for (field, path) in [("prompts", &d.prompts), ("eval_prompts", &d.eval_prompts)] {
        let Some(p) = path else { continue };
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        // no extension: a directory of shards (preflight reads it)
        if !["parquet", "jsonl", "json", "ndjson", ""].contains(&ext) {
            return Err(FieldError::new(field, format!("{}: use a .parquet or .jsonl dataset", p.display())));
        }
    }
    Difficulty::per_domain(d.difficulty, d.difficulty_by_domain.clone())
        .map(drop)
        .map_err(|e| FieldError::new("difficulty_by_domain", e.to_string()))
}

fn check_workers(w: &WorkersSection) -> Checked {
    at_least("job_prompts", w.job_prompts, 1)?;
    positive("visibility_timeout_s", w.visibility_timeout_s)?;
    at_least("max_deliveries", w.max_deliveries, 1)?;
    positive("resend_after_s", w.resend_after_s)?;
    at_least("queue_cap", w.queue_cap, 1)
}

fn check_stage_list(stages: &[Stage]) -> Checked {
    if stages.is_empty() {
        return Err(FieldError::new("stage", "the pipeline has no [[stage]]"));
    }
    let order = |s: &Stage| KINDS.iter().position(|k| *k == s.kind()).unwrap_or(0);
    for (i, s) in stages.iter().enumerate() {
        let at = |m: String| Err(FieldError::new("kind", m).in_stage(&stage_label(i, s)));
        if stages[..i].iter().any(|o| o.kind() == s.kind()) {
            return at(format!("`{}` appears twice; each kind runs once per pipeline", s.kind()));
        }
        if i > 0 && order(&stages[i - 1]) > order(s) {
            return at(format!(
                "stages must follow the recipe order sft → grpo → opd → think_max → eval (`{}` after `{}`)",
                s.kind(),
                stages[i - 1].kind()
            ));
        }
        if matches!(s, Stage::Opd(o) if o.teachers == "all") && !stages[..i].iter().any(|o| o.kind() == "grpo") {
            let e = FieldError::new(
                "teachers",
                "`all` (every expert of the grpo stage) needs a grpo stage before it (or a teachers.toml path)",
            );
            return Err(e.in_stage(&stage_label(i, s)));
        }
    }
    Ok(())
}

fn check_sft(s: &SftStage) -> Checked {
    // SFT learns the built-in suite's reference solutions, whatever the prompt data — or
    // the stage's own `data` (read by preflight)
    if s.data.is_none() {
        builtin_domains("domains", &s.domains)?;
    }
    at_least("batch", s.batch, 1)?;
    at_least("max_len", s.max_len, 8)?;
    at_least("accum", s.accum, 1)?;
    let mix = super::trainer_mix(&s.mix).map_err(|e| FieldError::new("mix", format!("{e:#}")))?;
    if s.data.is_none() {
        trainer::sft::Mixture::new(&s.domains, &mix).map_err(|e| FieldError::new("mix", e.to_string()))?;
    }
    modes("modes", &s.modes)?;
    check_optim(&s.optim)
}

fn check_grpo(g: &GrpoStage, data: &DataSection) -> Checked {
    check_experts(g, data)?;
    at_least("prompts", g.prompts, 1)?;
    at_least("group", g.group, 2)?;
    modes("modes", &g.modes)?;
    non_negative("temperature", g.temperature)?;
    g.anticipatory.validate().map_err(|e| FieldError::new("anticipatory", e.to_string()))?;
    at_least("epochs", g.epochs, 1)?;
    at_least("minibatch", g.minibatch, 1)?;
    check_optim(&g.optim)
}

fn check_experts(g: &GrpoStage, data: &DataSection) -> Checked {
    let bad = |m: String| Err(FieldError::new("experts", m));
    if g.experts.is_empty() {
        return bad("give at least one expert (a domain or pattern), or [\"each\"] for one per domain".into());
    }
    if g.experts.len() > 1 && g.experts.iter().any(|e| e == "each") {
        return bad("`each` (one expert per domain) stands alone".into());
    }
    for (i, e) in g.experts.iter().enumerate() {
        if !usable_expert_name(e) {
            return bad(format!("{e:?} is not a usable expert name (a non-empty domain or pattern on one line)"));
        }
        if g.experts[..i].contains(e) {
            return bad(format!("`{e}` appears twice"));
        }
        if e == "each" {
            continue;
        }
        if data.prompts.is_none() {
            builtin_domains("experts", e)?;
        }
        if g.sft_steps > 0 {
            expert_sft_domains("sft_steps", e)?;
        }
    }
    Ok(())
}

/// Experts become teacher ids and (escaped by datasets::safe_component) directory names:
/// any non-empty line, `openai/gsm8k` included.
fn usable_expert_name(e: &str) -> bool {
    !e.trim().is_empty() && !e.contains('\n')
}

fn check_opd(o: &OpdStage) -> Checked {
    if o.teachers.trim().is_empty() {
        return Err(FieldError::new("teachers", "give `all` or the path of a teachers.toml"));
    }
    check_mode_mix(o).map_err(|e| e.under("mode_mix"))?;
    at_least("prompts", o.prompts, 1)?;
    at_least("group", o.group, 1)?;
    positive("kl_temperature", o.kl_temperature)?;
    non_negative("temperature", o.temperature)?;
    at_least("minibatch", o.minibatch, 1)?;
    at_least("resident", o.resident, 1)?;
    at_least("chunk_rows", o.chunk_rows, 1)?;
    at_least("chunk_vocab", o.chunk_vocab, 1)?;
    check_optim(&o.optim)
}

fn check_mode_mix(o: &OpdStage) -> Checked {
    if o.mode_mix.is_empty() {
        return Err(FieldError::new("", "give each mode its share, e.g. { non_think = 0.3, think_high = 0.7 }"));
    }
    for (m, w) in &o.mode_mix {
        non_negative(m.as_str(), *w)?;
    }
    if o.mode_mix.values().all(|w| *w == 0.0) {
        return Err(FieldError::new("", "no mode has a positive share"));
    }
    Ok(())
}

fn check_think_max(t: &ThinkMaxStage, data: &DataSection) -> Checked {
    if data.prompts.is_none() {
        builtin_domains("domains", &t.domains)?;
    }
    if t.sft_steps > 0 {
        // the Think Max SFT learns the built-in suite's long-reasoning references
        builtin_domains("domains", &t.domains)?;
    }
    at_least("prompts", t.prompts, 1)?;
    at_least("group", t.group, 2)?;
    at_least("max_tokens", t.max_tokens, 1)?;
    check_optim(&t.optim)
}

fn check_eval(e: &EvalStage, data: &DataSection, think_max: bool) -> Checked {
    at_least("n", e.n, 1)?;
    // `harder` picks the domains of the Think Max comparison
    if think_max
        && data.eval_prompts.is_none()
        && !tasks::domains().iter().any(|d| tasks::domain_matches(&e.harder, d.domain))
    {
        return Err(FieldError::new(
            "harder",
            format!("`{}` matches no built-in domain ({})", e.harder, builtin_names()),
        ));
    }
    Ok(())
}

fn check_optim(o: &Optim) -> Checked {
    let r = non_negative("lr_muon", o.lr_muon)
        .and_then(|_| non_negative("lr_adamw", o.lr_adamw))
        .and_then(|_| non_negative("clip", o.clip))
        .and_then(|_| non_negative("weight_decay", o.weight_decay));
    r.map_err(|e| e.under("optim"))
}

fn builtin_domains(field: &str, pattern: &str) -> Checked {
    if pattern.split(',').all(|p| p.trim().is_empty()) {
        return Err(FieldError::new(field, "no domain given (a name, `family.*` or `*`)"));
    }
    tasks::match_domains(pattern)
        .map(drop)
        .map_err(|e| FieldError::new(field, format!("{e} (built-in: {})", builtin_names())))
}

/// An expert's domain SFT learns the built-in suite's reference solutions.
fn expert_sft_domains(field: &str, expert: &str) -> Checked {
    tasks::match_domains(expert).map(drop).map_err(|_| {
        FieldError::new(
            field,
            format!("expert `{expert}`: domain SFT learns the built-in suite's reference solutions, and `{expert}` matches no built-in domain (set sft_steps = 0)"),
        )
    })
}

fn builtin_names() -> String {
    tasks::domains().iter().map(|d| d.domain).collect::<Vec<_>>().join(", ")
}

fn modes(field: &str, m: &[Mode]) -> Checked {
    if m.is_empty() {
        return Err(FieldError::new(field, "give at least one mode (non_think, think_high, think_max)"));
    }
    Ok(())
}

fn at_least<T: PartialOrd + fmt::Display>(field: &str, v: T, min: T) -> Checked {
    if v >= min {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("{v} is out of range (at least {min})")))
    }
}

fn positive<T: Into<f64> + Copy + fmt::Display>(field: &str, v: T) -> Checked {
    let x: f64 = v.into();
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("{v} is out of range (a finite number > 0)")))
    }
}

fn non_negative<T: Into<f64> + Copy + fmt::Display>(field: &str, v: T) -> Checked {
    let x: f64 = v.into();
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("{v} is out of range (a finite number ≥ 0)")))
    }
}

// ---------------------------------------------------------------- rules that read files

/// What the run will read, read before it starts.
struct Inputs {
    model: Config,
    /// The base's checkpoint folder (None: a preset), whose tokenizer teachers must share.
    base_dir: Option<std::path::PathBuf>,
    /// Domains of `data.prompts` (None: the built-in suite).
    train: Option<Vec<String>>,
    /// Domains of `data.eval_prompts` (None: the built-in suite).
    eval: Option<Vec<String>>,
    think_max: bool,
}

/// The domains the run trains on: those of `data.prompts`, else every built-in domain.
fn training_domains(x: &Inputs) -> std::borrow::Cow<'_, [String]> {
    match &x.train {
        Some(t) => std::borrow::Cow::Borrowed(t.as_slice()),
        None => std::borrow::Cow::Owned(tasks::domains().iter().map(|d| d.domain.to_string()).collect()),
    }
}

/// The rules that read files: the base checkpoint's config, the user datasets and their
/// domains, a teachers.toml, lengths against the model, and every stage's prompts plus its
/// response budgets against the model's context ([`prompts_fit`]). Reads only small files (configs,
/// datasets); writes nothing.
pub fn preflight(c: &PipelineConfig) -> Checked {
    let model = base_config(&c.model.base).map_err(|m| FieldError::new("model.base", m))?;
    // the base's tokenizer (tokenizer.json, else bytes) loads and fits its vocab_size
    let (tok, _) = crate::models::Start::parse(&c.model.base)
        .tokenizer()
        .map_err(|e| FieldError::new("model.base", format!("{e:#}")))?;
    let domains_of = |field: &str, p: &Option<std::path::PathBuf>| {
        p.as_deref().map(dataset_domains).transpose().map_err(|m| FieldError::new(field, m))
    };
    let inputs = Inputs {
        model,
        base_dir: (!c.model.base.starts_with("preset:"))
            .then(|| datasets::tokenizer::checkpoint_folder(Path::new(&c.model.base))),
        train: domains_of("data.prompts", &c.data.prompts)?,
        eval: domains_of("data.eval_prompts", &c.data.eval_prompts)?,
        think_max: c.stages.iter().any(|s| matches!(s, Stage::ThinkMax(_))),
    };
    for (i, s) in c.stages.iter().enumerate() {
        let r = match s {
            Stage::Sft(x) => fits("max_len", x.max_len, &inputs.model).and_then(|_| preflight_sft_data(x)),
            Stage::Grpo(x) => preflight_grpo(x, &inputs),
            Stage::Opd(x) => preflight_opd(x, &inputs),
            Stage::ThinkMax(x) => preflight_think_max(x, &inputs),
            Stage::Eval(x) => preflight_eval(x, &inputs),
        };
        // then its prompts plus their budgets against the context
        let r = r.and_then(|_| stage_context(c, s, &inputs, tok.as_ref()));
        r.map_err(|e| e.in_stage(&stage_label(i, s)))?;
    }
    Ok(())
}

/// The config of `model.base` (a preset, or a checkpoint's config.json; weights unread).
fn base_config(spec: &str) -> Result<Config, String> {
    if let Some(p) = spec.strip_prefix("preset:") {
        return preset_config(p);
    }
    let dir = Path::new(spec);
    if !dir.exists() {
        return Err(format!("{spec}: no such checkpoint directory"));
    }
    let cfg = if dir.is_file() { dir.with_file_name("config.json") } else { dir.join("config.json") };
    if !cfg.exists() {
        return Err(format!("{spec}: not a checkpoint (no config.json)"));
    }
    Config::from_file(&cfg).map_err(|e| e.to_string())
}

/// The sorted domains of a user dataset (reading it checks every record).
fn dataset_domains(path: &Path) -> Result<Vec<String>, String> {
    // a file, a directory of shards or a glob: the loader says which is missing
    let mut d: Vec<String> =
        datasets::prompts::load_dataset(path).map_err(|e| e.to_string())?.into_iter().map(|t| t.domain).collect();
    d.sort();
    d.dedup();
    Ok(d)
}

/// A domain pattern must match a domain of a user dataset.
fn user_domains(field: &str, pattern: &str, domains: &[String], file: &str) -> Checked {
    if domains.iter().any(|d| tasks::domain_matches(pattern, d)) {
        return Ok(());
    }
    Err(FieldError::new(field, format!("`{pattern}` matches no domain of {file} ({})", domains.join(", "))))
}

fn fits(field: &str, len: usize, model: &Config) -> Checked {
    if len <= model.max_seq_len {
        return Ok(());
    }
    Err(FieldError::new(field, format!("{len} is longer than the model's max_seq_len {}", model.max_seq_len)))
}

/// An SFT stage's `data` reads (every row is checked) and its `domains` select some of it.
fn preflight_sft_data(s: &SftStage) -> Checked {
    let Some(path) = &s.data else { return Ok(()) };
    let records = datasets::sft_data::load_sft_dataset(path).map_err(|e| FieldError::new("data", e.to_string()))?;
    let mut domains: Vec<String> = records.into_iter().map(|r| r.domain).collect();
    domains.sort();
    domains.dedup();
    user_domains("domains", &s.domains, &domains, &path.display().to_string())
}

fn preflight_grpo(g: &GrpoStage, x: &Inputs) -> Checked {
    if g.sft_steps > 0 {
        fits("sft_steps", super::EXPERT_SFT_MAX_LEN, &x.model)?;
    }
    let Some(train) = &x.train else { return Ok(()) };
    if g.experts.iter().any(|e| e == "each") {
        // one expert per domain of the file
        for d in train {
            if !usable_expert_name(d) {
                return Err(FieldError::new(
                    "experts",
                    format!("data.prompts has domain {d:?}, not a usable expert name (empty, or several lines)"),
                ));
            }
            if g.sft_steps > 0 {
                expert_sft_domains("sft_steps", d)?;
            }
        }
        return Ok(());
    }
    g.experts.iter().try_for_each(|e| user_domains("experts", e, train, "data.prompts"))
}

fn preflight_opd(o: &OpdStage, x: &Inputs) -> Checked {
    if o.teachers == "all" {
        return Ok(());
    }
    let at = |m: String| FieldError::new("teachers", m);
    let path = Path::new(&o.teachers);
    if !path.exists() {
        return Err(at(format!("{}: no such teachers.toml", path.display())));
    }
    let reg = teachers::Registry::load(path).map_err(|e| at(e.to_string()))?;
    reg.validate_against(x.base_dir.as_deref(), &x.model).map_err(|e| at(e.to_string()))?;
    let train = training_domains(x);
    if train.iter().all(|d| reg.weights_for(d).is_empty()) {
        return Err(at(format!("no training domain has a teacher in {}", path.display())));
    }
    Ok(())
}

fn preflight_think_max(t: &ThinkMaxStage, x: &Inputs) -> Checked {
    if t.max_tokens >= x.model.max_seq_len {
        let m = format!(
            "{} leaves no room for the prompt in the model's max_seq_len {}",
            t.max_tokens, x.model.max_seq_len
        );
        return Err(FieldError::new("max_tokens", m));
    }
    if t.sft_steps > 0 {
        fits("sft_steps", super::THINK_MAX_SFT_MAX_LEN, &x.model)?;
    }
    match &x.train {
        Some(train) => user_domains("domains", &t.domains, train, "data.prompts"),
        None => Ok(()),
    }
}

fn preflight_eval(e: &EvalStage, x: &Inputs) -> Checked {
    match &x.eval {
        Some(eval) if x.think_max => user_domains("harder", &e.harder, eval, "data.eval_prompts"),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------- prompts against the context

/// Draws of the built-in suite a context check makes at most (per expert or stage): the
/// run's first draws, which are the prompts it uses when it has no more than this (later
/// draws are more problems of the same generators).
pub const CONTEXT_CHECK_MAX_DRAWS: u64 = 512;

/// Draws of a user dataset a context check makes at most: every record of files up to this
/// size (they are cycled through), read once.
pub const CONTEXT_CHECK_MAX_FILE_DRAWS: u64 = 1 << 16;

/// Whether every prompt of `tasks` in each `(mode, budget)`, encoded as a rollout encodes
/// it, leaves room for `budget` response tokens in `context` positions (module header).
/// The error names the mode, the budget, the longest prompt (tokens, id), the context, how
/// many prompts do not fit, and what to change (`lower`: how to lower the budget).
pub fn prompts_fit(
    tok: &dyn Tokenizer,
    context: usize,
    tasks: &[Task],
    budgets: &[(Mode, usize)],
    lower: &str,
) -> Result<(), String> {
    // tokens ≤ bytes: a prompt with room for its bytes has room for its tokens
    let bounded = tok.at_most_one_token_per_byte();
    for &(mode, budget) in budgets {
        let texts: Vec<(String, &str)> = tasks.iter().map(|t| (t.prompt_text(mode), t.prompt_id.as_str())).collect();
        // (index, tokens) of every prompt that may not fit; the others surely do
        let lengths: Vec<(usize, usize)> = texts
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| !bounded || t.len() + budget > context)
            .map(|(i, (t, _))| (i, tok.encode(t).len()))
            .collect();
        let Some(&(i, longest)) = lengths.iter().max_by_key(|&&(i, n)| (n, std::cmp::Reverse(i))) else {
            continue;
        };
        if longest + budget <= context {
            continue;
        }
        let over = lengths.iter().filter(|&&(_, n)| n + budget > context).count();
        let alone = if longest >= context { "; the longest prompt alone fills the context" } else { "" };
        return Err(format!(
            "{}: the response budget of {budget} tokens plus the longest prompt ({longest} tokens, `{}`) \
             need {} positions, more than the model's context of {context} (max_seq_len / \
             max_position_embeddings in config.json); {over} of {} prompts do not fit{alone}. \
             Lower the budget ({lower}) or raise the model's context",
            mode.as_str(),
            texts[i].1,
            longest + budget,
            texts.len()
        ));
    }
    Ok(())
}

/// [`prompts_fit`] over the first `draws` prompts of `source` (at most
/// [`CONTEXT_CHECK_MAX_DRAWS`] built-in, [`CONTEXT_CHECK_MAX_FILE_DRAWS`] of a file): what a
/// run that starts at draw 0 samples.
pub fn source_fits(
    tok: &dyn Tokenizer,
    context: usize,
    source: &PromptSource,
    draws: u64,
    budgets: &[(Mode, usize)],
    lower: &str,
) -> Result<(), String> {
    let cap = match source {
        PromptSource::Builtin { .. } => CONTEXT_CHECK_MAX_DRAWS,
        _ => CONTEXT_CHECK_MAX_FILE_DRAWS,
    };
    let n = draws.min(cap) as usize;
    let tasks = source.take(n, 0).map_err(|e| e.to_string())?;
    prompts_fit(tok, context, &tasks, budgets, lower)
}

/// The training prompts of `pattern`, as `pipeline::Ctx::source` draws them.
fn train_source(c: &PipelineConfig, pattern: &str) -> Result<PromptSource, String> {
    Ok(match &c.data.prompts {
        Some(p) if pattern == "*" => PromptSource::File(p.clone()),
        Some(p) => PromptSource::FileDomains(p.clone(), pattern.to_string()),
        None => PromptSource::Builtin {
            domains: pattern.to_string(),
            split: Split::Train,
            seed: c.run.seed,
            difficulty: c.data.difficulty().map_err(|e| e.to_string())?,
        },
    })
}

/// The budget of each mode by default (the length shaping's `max_len`; what GRPO, OPD and
/// evaluation use).
fn default_budgets(modes: impl IntoIterator<Item = Mode>) -> Vec<(Mode, usize)> {
    let shaping = rewards::shaping::LengthShaping::default();
    modes.into_iter().map(|m| (m, shaping.for_mode(m).max_len)).collect()
}

/// The rollouts of one stage against the model's context; the error names the field whose
/// budget it is.
fn stage_context(c: &PipelineConfig, s: &Stage, x: &Inputs, tok: &dyn Tokenizer) -> Checked {
    let context = x.model.max_seq_len;
    let fit = |field: &str, pattern: &str, draws: u64, budgets: &[(Mode, usize)], lower: &str| -> Checked {
        let source = train_source(c, pattern).map_err(|m| FieldError::new(field, m))?;
        source_fits(tok, context, &source, draws, budgets, lower).map_err(|m| FieldError::new(field, m))
    };
    match s {
        Stage::Sft(_) => Ok(()),
        Stage::Grpo(g) => {
            let budgets = default_budgets(g.modes.iter().copied());
            let draws = g.steps * g.prompts as u64 * (1 + g.refill_rounds as u64);
            let lower = "the mode's default; leave the mode out of `modes`";
            for e in &g.experts {
                match (e.as_str(), &x.train) {
                    // one expert per built-in domain, each drawing its own prompts
                    ("each", None) => {
                        for d in tasks::domains() {
                            fit("modes", d.domain, draws, &budgets, lower)?;
                        }
                    }
                    ("each", Some(_)) => fit("modes", "*", draws, &budgets, lower)?,
                    (e, _) => fit("modes", e, draws, &budgets, lower)?,
                }
            }
            Ok(())
        }
        Stage::Opd(o) => {
            let modes = o.mode_mix.iter().filter(|(_, w)| **w > 0.0).map(|(m, _)| *m);
            let budgets = default_budgets(modes);
            let pattern = opd_domains(c, o, x).map_err(|m| FieldError::new("teachers", m))?;
            let lower = "the mode's default; give the mode no share in `mode_mix`";
            fit("mode_mix", &pattern, o.steps * o.prompts as u64, &budgets, lower)
        }
        Stage::ThinkMax(t) => {
            let draws = t.steps * t.prompts as u64 * (1 + GrpoStage::default().refill_rounds as u64);
            fit("max_tokens", &t.domains, draws, &[(Mode::ThinkMax, t.max_tokens)], "max_tokens")
        }
        Stage::Eval(e) => {
            // the mode is the field: no eval key holds these budgets
            let ts = super::results::eval_tasks(c, e.n).map_err(|e| FieldError::new("", format!("{e:#}")))?;
            let mut budgets = default_budgets([Mode::NonThink, Mode::ThinkHigh]);
            let think_max = super::results::EvalSettings::think_max(c);
            if x.think_max {
                budgets.push((think_max.mode, think_max.max_tokens));
            }
            let lower = "Non-think and Think High evaluate at their modes' defaults, Think Max at the \
                         think_max stage's `max_tokens`";
            prompts_fit(tok, context, &ts, &budgets, lower).map_err(|m| FieldError::new("", m))
        }
    }
}

/// The training domains OPD samples: those with a teacher (`all`: the grpo stage's experts).
fn opd_domains(c: &PipelineConfig, o: &OpdStage, x: &Inputs) -> Result<String, String> {
    if o.teachers == "all" {
        let experts = c.stages.iter().find_map(|s| match s {
            Stage::Grpo(g) => Some(&g.experts),
            _ => None,
        });
        return Ok(match experts {
            Some(e) if !e.iter().any(|e| e == "each") => e.join(","),
            _ => "*".into(),
        });
    }
    let reg = teachers::Registry::load(Path::new(&o.teachers)).map_err(|e| e.to_string())?;
    let train = training_domains(x);
    let taught = train.iter().filter(|d| !reg.weights_for(d).is_empty() && tasks::domain_matches(&o.domains, d));
    let domains: Vec<String> = taught.cloned().collect();
    if domains.is_empty() {
        return Err(format!("no training domain matching `{}` is taught by a teacher of {}", o.domains, o.teachers));
    }
    Ok(domains.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> FieldError {
        parse(text).and_then(|c| check(&c).map(|_| c)).and_then(|c| preflight(&c)).unwrap_err()
    }

    const HEAD: &str = "[run]\nname='x'\n[model]\nbase='preset:tiny'\n";

    #[test]
    fn wrong_types_name_the_field() {
        let e = err(&format!("{HEAD}[[stage]]\nkind='sft'\n[[stage]]\nkind='grpo'\nexperts=['math.add']\nsteps='x'"));
        assert_eq!(e.at, "stage 2 (grpo \"math.add\"): steps", "{e}");
        let e = err(&format!("{HEAD}[[stage]]\nkind='sft'\n[stage.optim]\nlr_muon='fast'"));
        assert_eq!(e.at, "stage 1 (sft \"*\"): optim.lr_muon", "{e}");
        let e = err(&format!("{HEAD}[[stage]]\nkind='sft'\nmodes=['think_hihg']"));
        assert_eq!(e.at, "stage 1 (sft \"*\"): modes", "{e}");
        assert!(e.message.contains("think_hihg"), "{e}");
        let e = err("[run]\nname=3\n[model]\nbase='b'\n[[stage]]\nkind='sft'");
        assert_eq!(e.at, "run.name", "{e}");
        let e = err(&format!("{HEAD}[data.difficulty_by_domain]\n'code.loop'=9\n[[stage]]\nkind='sft'"));
        assert_eq!(e.at, "data.difficulty_by_domain.\"code.loop\"", "{e}");
    }

    #[test]
    fn enum_strings_and_ranges_name_the_field() {
        let e = err(&format!("{HEAD}[[stage]]\nkind='grpo'\nexperts=['math.add']\nvariant='grpoo'"));
        assert_eq!(
            e.to_string(),
            "stage 1 (grpo \"math.add\"): variant: unknown variant \"grpoo\" (v32, grpo, dapo, dr-grpo)"
        );
        let e = err(&format!("{HEAD}[[stage]]\nkind='grpo'\n[[stage]]\nkind='opd'\nestimator='exact'"));
        assert_eq!(e.at, "stage 2 (opd \"all\"): estimator", "{e}");
        let e = err(&format!("{HEAD}[[stage]]\nkind='grpo'\n[[stage]]\nkind='opd'\nmode_mix={{think_hihg=1.0}}"));
        assert_eq!(e.at, "stage 2 (opd \"all\"): mode_mix.think_hihg", "{e}");
        let e = err(&format!("{HEAD}[[stage]]\nkind='grpo'\ngroup=1"));
        assert_eq!(e.at, "stage 1 (grpo \"each\"): group", "{e}");
        let e = err(&format!("{HEAD}[workers]\nvisibility_timeout_s=-1.0\n[[stage]]\nkind='sft'"));
        assert_eq!(e.at, "workers.visibility_timeout_s", "{e}");
        let e = err(&format!("{HEAD}[[stage]]\nkind='think_max'\nmax_tokens=100000"));
        assert_eq!(e.at, "stage 1 (think_max \"math.*,code.*\"): max_tokens", "{e}");
    }

    #[test]
    fn every_listed_variant_is_accepted() {
        for v in trainer::grpo::GrpoVariant::ALL {
            let c = parse(&format!("{HEAD}[[stage]]\nkind='grpo'\nvariant='{v}'")).unwrap();
            check(&c).unwrap();
        }
    }

    /// `longest prompt + budget ≤ context` exactly: at the bound it fits, one position less
    /// names the mode, the budget, the longest prompt and the context.
    #[test]
    fn prompts_fit_the_context_up_to_the_last_position() {
        let tok = datasets::tokenizer::ByteTokenizer;
        let d = Difficulty::uniform(None);
        let ts = tasks::sample_with("math.add", Split::Train, 3, 20, &d).unwrap();
        let longest = ts.iter().map(|t| tok.encode(&t.prompt_text(Mode::NonThink)).len()).max().unwrap();
        assert!(longest > 10, "{longest}");
        let budgets = [(Mode::NonThink, 224)];
        prompts_fit(&tok, longest + 224, &ts, &budgets, "x").unwrap();
        let e = prompts_fit(&tok, longest + 223, &ts, &budgets, "max_tokens").unwrap_err();
        assert!(e.starts_with("non_think: the response budget of 224 tokens"), "{e}");
        assert!(e.contains(&format!("longest prompt ({longest} tokens")), "{e}");
        assert!(e.contains(&format!("context of {}", longest + 223)), "{e}");
        assert!(e.contains("Lower the budget (max_tokens) or raise the model's context"), "{e}");
        // a prompt that alone fills the context is said so
        let e = prompts_fit(&tok, longest, &ts, &budgets, "x").unwrap_err();
        assert!(e.contains("of 20 prompts do not fit; the longest prompt alone fills the context"), "{e}");
        // only the modes given are checked; Think Max's system prefix is longer
        let tm = ts.iter().map(|t| tok.encode(&t.prompt_text(Mode::ThinkMax)).len()).max().unwrap();
        assert!(tm > longest, "{tm} vs {longest}");
        let e = prompts_fit(&tok, tm + 447, &ts, &[(Mode::NonThink, 224), (Mode::ThinkMax, 448)], "x").unwrap_err();
        assert!(e.starts_with("think_max: the response budget of 448"), "{e}");
    }

    /// Byte-level BPE: a prompt short in bytes can be long in tokens (characters the merges
    /// never saw take one token per byte). Among more than 4096 prompts it is still found,
    /// because every prompt whose bytes could overflow is encoded.
    #[test]
    fn a_prompt_long_in_tokens_but_short_in_bytes_is_caught() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tokenizers/bpe-400/tokenizer.json");
        let tok = datasets::tokenizer::HfTokenizer::from_file(&path).unwrap();
        assert!(tok.at_most_one_token_per_byte());
        let d = Difficulty::uniform(None);
        let base = tasks::sample_with("math.add", Split::Train, 3, 1, &d).unwrap().remove(0);
        let with = |id: &str, content: String| {
            let mut t = base.clone();
            t.prompt_id = id.to_string();
            t.messages.last_mut().unwrap().content = content;
            t
        };
        let mut ts: Vec<Task> = (0..4096).map(|i| with(&format!("good-{i}"), "What is 17 + 25? ".repeat(20))).collect();
        let rare: String = (0..100).filter_map(|i| char::from_u32(0x4e00 + 37 * i)).collect();
        ts.push(with("bad", rare));
        let mode = Mode::NonThink;
        let bytes = |t: &Task| t.prompt_text(mode).len();
        let tokens = |t: &Task| tok.encode(&t.prompt_text(mode)).len();
        let (good_bytes, good_tokens) = (bytes(&ts[0]), tokens(&ts[0]));
        let (bad_bytes, bad_tokens) = (bytes(&ts[4096]), tokens(&ts[4096]));
        assert!(
            bad_bytes < good_bytes && bad_tokens > good_tokens,
            "{bad_bytes}/{good_bytes} {bad_tokens}/{good_tokens}"
        );
        let budget = 224;
        let e = prompts_fit(&tok, good_tokens + budget, &ts, &[(mode, budget)], "x").unwrap_err();
        assert!(e.contains(&format!("longest prompt ({bad_tokens} tokens, `bad`)")), "{e}");
        assert!(e.contains("1 of 4097 prompts do not fit"), "{e}");
        prompts_fit(&tok, bad_tokens + budget, &ts, &[(mode, budget)], "x").unwrap();
    }

    #[test]
    fn demo_passes_every_rule() {
        for quick in [false, true] {
            let c = PipelineConfig::demo(quick, "preset:tiny");
            check(&c).unwrap();
            preflight(&c).unwrap();
        }
    }
}
