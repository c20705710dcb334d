//! The eval stage: greedy accuracy of the base, the SFT model, every expert on its own
//! domain, the OPD student and the Think Max variant; the headline checks; `results.json`.

use super::config::{EvalStage, PipelineConfig, Stage};
use super::RunView;
use anyhow::{Context, Result};
use datasets::chat::Mode;
use datasets::progress::Progress;
use datasets::tasks::{self, Split};
use datasets::tokenizer::{ByteTokenizer, Tokenizer};
use datasets::Task;
use model::{Engine, EngineOptions, ModelWeights};
use rewards::shaping::LengthShaping;
use rollout::eval::EvalReport;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The modes a "score" averages over (the modes the experts and the student train in).
const MODES: [Mode; 2] = [Mode::NonThink, Mode::ThinkHigh];

/// The evaluation prompts of a pipeline: `n` per domain of the user's eval file, or of the
/// built-in suite's eval split at the configured difficulty.
pub fn eval_tasks(cfg: &PipelineConfig, n: usize) -> Result<Vec<Task>> {
    match &cfg.data.eval_prompts {
        Some(p) => {
            let all = datasets::prompts::load_dataset(p)?;
            let mut by: BTreeMap<String, Vec<Task>> = BTreeMap::new();
            for t in all {
                by.entry(t.domain.clone()).or_default().push(t);
            }
            Ok(by.into_values().flat_map(|v| v.into_iter().take(n)).collect())
        }
        None => {
            let difficulty = cfg.data.difficulty()?;
            let mut ts = Vec::new();
            for d in tasks::domains() {
                ts.extend(tasks::sample_with(d.domain, Split::Eval, cfg.run.seed, n, &difficulty)?);
            }
            Ok(ts)
        }
    }
}

/// How a model is evaluated in one mode: greedy, with this response budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalSettings {
    pub mode: Mode,
    pub max_tokens: usize,
}

impl EvalSettings {
    /// A mode at its default budget (the length shaping's `max_len`, what training used).
    pub fn default_for(mode: Mode) -> Self {
        EvalSettings { mode, max_tokens: LengthShaping::default().for_mode(mode).max_len }
    }

    /// The Think Max variant at the budget its stage trained with (`max_tokens` of the
    /// think_max stage; the default budget when the pipeline has none).
    pub fn think_max(cfg: &PipelineConfig) -> Self {
        let stage = cfg.stages.iter().find_map(|s| match s {
            Stage::ThinkMax(t) => Some(t.max_tokens),
            _ => None,
        });
        match stage {
            Some(max_tokens) => EvalSettings { mode: Mode::ThinkMax, max_tokens },
            None => Self::default_for(Mode::ThinkMax),
        }
    }
}

fn evaluate(
    engine: &Engine,
    tok: &dyn Tokenizer,
    ts: &[Task],
    s: EvalSettings,
    progress: &dyn Progress,
) -> Result<EvalReport> {
    Ok(rollout::evaluate(engine, tok, ts, s.mode, s.max_tokens, 2, progress)?)
}

/// The engine of a checkpoint that is only evaluated: memory-mapped, weights in their
/// stored formats.
fn frozen_engine(dir: &std::path::Path) -> Result<Engine> {
    Engine::from_checkpoint(dir, EngineOptions::default()).with_context(|| format!("loading {}", dir.display()))
}

/// The score of a model whose checkpoint has no `tokenizer.json` (byte tokenizer); see
/// [`scores_with`].
pub fn scores(w: &ModelWeights, ts: &[Task], progress: &dyn Progress) -> Result<BTreeMap<String, f64>> {
    scores_with(w, &ByteTokenizer, ts, progress)
}

/// A model's score on `ts` by domain: greedy accuracy, mean over `MODES` (the table's columns).
pub fn scores_with(
    w: &ModelWeights,
    tok: &dyn Tokenizer,
    ts: &[Task],
    progress: &dyn Progress,
) -> Result<BTreeMap<String, f64>> {
    scores_of(&Engine::new(w, EngineOptions::default())?, tok, ts, progress)
}

/// [`scores_with`] for an engine already built.
pub fn scores_of(
    engine: &Engine,
    tok: &dyn Tokenizer,
    ts: &[Task],
    progress: &dyn Progress,
) -> Result<BTreeMap<String, f64>> {
    let reports: Vec<EvalReport> = MODES
        .iter()
        .map(|&m| evaluate(engine, tok, ts, EvalSettings::default_for(m), progress))
        .collect::<Result<_>>()?;
    Ok(score(&reports))
}

/// Mean over `MODES` of per-domain accuracy.
fn score(reports: &[EvalReport]) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for r in reports {
        for (d, a) in &r.by_domain {
            *out.entry(d.clone()).or_default() += a / reports.len() as f64;
        }
    }
    out
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

pub fn stage_eval(
    v: RunView,
    e: &EvalStage,
    base: &ModelWeights,
    registry: Option<&teachers::Registry>,
) -> Result<Value> {
    let started = std::time::Instant::now();
    let ts = eval_tasks(v.cfg, e.n)?;
    let load = |key: &str| -> Result<Option<Engine>> {
        match v.state.completed.get(key).and_then(|o| o.model.clone()) {
            Some(p) => Ok(Some(frozen_engine(&v.dir.join(&p)).with_context(|| format!("loading {key}"))?)),
            None => Ok(None),
        }
    };
    let (bars, tok) = (v.bars, v.tok);
    let run_modes = |w: &Engine, ts: &[Task]| -> Result<Vec<EvalReport>> {
        MODES.iter().map(|&m| evaluate(w, tok, ts, EvalSettings::default_for(m), bars)).collect()
    };
    tracing::info!("evaluating the base");
    let base_r = run_modes(&Engine::new(base, EngineOptions::default())?, &ts)?;
    let sft_r = match load("sft")? {
        Some(w) => Some(run_modes(&w, &ts)?),
        None => None,
    };
    // each expert on the domains it teaches
    let mut teacher_score: BTreeMap<String, f64> = BTreeMap::new();
    if let Some(reg) = registry {
        for t in &reg.teachers {
            let mine: Vec<Task> = ts
                .iter()
                .filter(|x| t.domains.iter().any(|p| teachers::registry::pattern_matches(p, &x.domain)))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            tracing::info!(teacher = %t.id, "evaluating an expert");
            let e = frozen_engine(&t.checkpoint)?;
            for (d, a) in scores_of(&e, tok, &mine, bars)? {
                teacher_score.insert(d, a);
            }
        }
    }
    let student_r = match load("opd")? {
        Some(w) => Some(run_modes(&w, &ts)?),
        None => None,
    };
    let think_max_r = match load("think_max")? {
        // at the response budget of the think_max stage, not the default Think Max budget
        Some(w) => Some(evaluate(&w, tok, &ts, EvalSettings::think_max(v.cfg), bars)?),
        None => None,
    };
    let base_s = score(&base_r);
    let sft_s = sft_r.as_deref().map(score);
    let student_s = student_r.as_deref().map(score);
    let families: BTreeMap<String, String> = ts.iter().map(|t| (t.domain.clone(), t.family.clone())).collect();
    // the difficulty of the built-in eval prompts of each domain (user eval files: none)
    let difficulty = v.cfg.data.eval_prompts.is_none().then(|| v.cfg.data.difficulty()).transpose()?;
    let mut rows = Vec::new();
    for (d, fam) in &families {
        rows.push(json!({
            "domain": d,
            "family": fam,
            "difficulty": difficulty.as_ref().map(|x| x.describe(d)),
            "base": base_s.get(d),
            "sft": sft_s.as_ref().and_then(|s| s.get(d)),
            "teacher": teacher_score.get(d),
            "student": student_s.as_ref().and_then(|s| s.get(d)),
            "think_max": think_max_r.as_ref().and_then(|r| r.by_domain.get(d)),
        }));
    }
    // by mode: accuracy and mean response length of each model in each mode
    let mut by_mode = serde_json::Map::new();
    let mode_entry = |r: &EvalReport| json!({"accuracy": r.accuracy, "mean_len": mean(r.mean_len.values().copied())});
    for (name, reps) in [("base", Some(&base_r)), ("sft", sft_r.as_ref()), ("student", student_r.as_ref())] {
        if let Some(reps) = reps {
            let m: serde_json::Map<String, Value> = reps.iter().map(|r| (r.mode.clone(), mode_entry(r))).collect();
            by_mode.insert(name.into(), Value::Object(m));
        }
    }
    if let Some(r) = &think_max_r {
        by_mode.insert("think_max".into(), json!({"think_max": mode_entry(r)}));
    }
    // headline checks
    let covered: Vec<&String> = families.keys().filter(|d| teacher_score.contains_key(*d)).collect();
    let gain_t = mean(covered.iter().map(|d| teacher_score[*d] - base_s[*d]));
    let gain_s = student_s.as_ref().map(|s| mean(covered.iter().map(|d| s[*d] - base_s[*d])));
    let experts_beat_base: Vec<Value> = covered
        .iter()
        .map(|d| json!({"domain": d, "base": base_s[*d], "teacher": teacher_score[*d], "beats": teacher_score[*d] > base_s[*d]}))
        .collect();
    let grpo_tokens: u64 = v
        .state
        .completed
        .iter()
        .filter(|(k, _)| k.starts_with("grpo/"))
        .filter_map(|(_, o)| o.report["sampled_tokens"].as_u64())
        .sum();
    let opd_tokens = v.state.completed.get("opd").and_then(|o| o.report["sampled_tokens"].as_u64());
    let harder: Vec<&String> = families.keys().filter(|d| tasks::domain_matches(&e.harder, d)).collect();
    let think = match (&think_max_r, &student_r) {
        (Some(tm), Some(st)) => {
            let th = &st[1]; // think_high
            let acc = |r: &EvalReport| mean(harder.iter().filter_map(|d| r.by_domain.get(*d).copied()));
            let len = |r: &EvalReport| mean(harder.iter().filter_map(|d| r.mean_len.get(*d).copied()));
            let chars = |r: &EvalReport| mean(harder.iter().filter_map(|d| r.mean_reasoning_chars.get(*d).copied()));
            json!({
                "domains": harder,
                "think_high_accuracy": acc(th), "think_max_accuracy": acc(tm),
                "think_high_mean_len": len(th), "think_max_mean_len": len(tm),
                "think_high_reasoning_chars": chars(th), "think_max_reasoning_chars": chars(tm),
                "holds": acc(tm) >= acc(th) && len(tm) > len(th),
            })
        }
        _ => Value::Null,
    };
    let results = json!({
        "domains": rows,
        "by_mode": by_mode,
        // the whole run, this evaluation included
        "wall_s": v.wall_s + started.elapsed().as_secs_f64(),
        "score": "greedy accuracy, mean over non_think and think_high",
        "eval_prompts_per_domain": e.n,
        "headline": {
            "experts_beat_base": experts_beat_base,
            "all_experts_beat_base": covered.iter().all(|d| teacher_score[*d] > base_s[*d]),
            "mean_teacher_gain": gain_t,
            "mean_student_gain": gain_s,
            "student_keeps_fraction": gain_s.filter(|_| gain_t > 0.0).map(|g| g / gain_t),
            "student_keeps_0_8": gain_s.map(|g| gain_t > 0.0 && g >= 0.8 * gain_t),
            "grpo_sampled_tokens": grpo_tokens,
            "opd_sampled_tokens": opd_tokens,
            "opd_fewer_tokens": opd_tokens.map(|o| o < grpo_tokens),
            "think_max_vs_think_high": think,
        },
    });
    super::write_json_atomic(&v.dir.join("results.json"), &results)?;
    write_report(v.dir, &v.cfg.run.name)?;
    Ok(results)
}

/// The results table as text.
pub fn table(results: &Value) -> String {
    let f = |x: &Value| x.as_f64().map_or("   -  ".to_string(), |v| format!("{v:6.3}"));
    let mut s = format!(
        "{:<14} {:<6} {:>4} {:>6} {:>6} {:>7} {:>7} {:>9}\n",
        "domain", "family", "diff", "base", "sft", "teacher", "student", "think_max"
    );
    for r in results["domains"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:<14} {:<6} {:>4} {} {} {:>7} {:>7} {:>9}\n",
            r["domain"].as_str().unwrap_or(""),
            r["family"].as_str().unwrap_or(""),
            r["difficulty"].as_str().unwrap_or("-"),
            f(&r["base"]),
            f(&r["sft"]),
            f(&r["teacher"]),
            f(&r["student"]),
            f(&r["think_max"])
        ));
    }
    let h = &results["headline"];
    s.push_str(&format!(
        "\nexperts beat base: {} | student keeps {} of the experts' gain (≥ 0.8: {}) | sampled tokens GRPO {} vs OPD {}\n",
        h["all_experts_beat_base"],
        f(&h["student_keeps_fraction"]).trim(),
        h["student_keeps_0_8"],
        h["grpo_sampled_tokens"],
        h["opd_sampled_tokens"]
    ));
    let t = &h["think_max_vs_think_high"];
    if !t.is_null() {
        s.push_str(&format!(
            "Think Max vs Think High on {}: accuracy {} vs {}, mean length {} vs {} tokens\n",
            t["domains"],
            f(&t["think_max_accuracy"]).trim(),
            f(&t["think_high_accuracy"]).trim(),
            f(&t["think_max_mean_len"]).trim(),
            f(&t["think_high_mean_len"]).trim()
        ));
    }
    s.push_str(&format!("wall time {:.0}s\n", results["wall_s"].as_f64().unwrap_or(0.0)));
    s
}

/// `report.html` of the run directory (the static dashboard).
pub fn write_report(dir: &std::path::Path, name: &str) -> Result<()> {
    let run = dashboard::data::Run::open(dir)?;
    let html = dashboard::report::render(&[run], &format!("v4post report — {name}"));
    model::checkpoint::write_atomic(&dir.join("report.html"), html.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::config::ThinkMaxStage;

    /// The Think Max variant is evaluated at its stage's budget (it was at the default).
    #[test]
    fn think_max_is_evaluated_at_its_stage_budget() {
        let mut cfg = PipelineConfig::demo(true, "preset:tiny");
        let default = LengthShaping::default().think_max.max_len;
        for budget in [96, default + 256] {
            for s in &mut cfg.stages {
                if let Stage::ThinkMax(t) = s {
                    t.max_tokens = budget;
                }
            }
            assert_eq!(EvalSettings::think_max(&cfg), EvalSettings { mode: Mode::ThinkMax, max_tokens: budget });
        }
        // without a think_max stage: the default budget
        cfg.stages.retain(|s| !matches!(s, Stage::ThinkMax(_)));
        assert_eq!(EvalSettings::think_max(&cfg).max_tokens, default);
        assert_eq!(ThinkMaxStage::default().max_tokens, default);
    }
}
