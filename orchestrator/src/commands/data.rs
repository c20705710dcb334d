//! `tasks`, `score`, `trajectories`, `bench store`.

use crate::ui::print_json;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use datasets::chat::Mode;
use datasets::store::{self, trajectories, ReadFilter, Trajectory, TrajectoryStore};
use datasets::tasks::{self, Split};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum TasksCmd {
    /// List the built-in domains.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Write N prompts per domain of a domain or pattern (deterministic in domain, seed, split, index).
    Sample(SampleArgs),
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A domain, e.g. math.add, or a pattern (`math.*`, `*`); see `v4post tasks list`.
    #[arg(long)]
    pub domains: String,
    /// Number of prompts per domain.
    #[arg(long, default_value_t = 10)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// train or eval (disjoint by construction).
    #[arg(long, value_enum, default_value = "train")]
    pub split: crate::choices::SplitArg,
    /// 1 (easy) .. 5 (hard), or a range like 1-2 whose levels alternate over the prompts;
    /// default: the domain's own.
    #[arg(long)]
    pub difficulty: Option<datasets::tasks::Levels>,
    /// Output file: .parquet (`messages` as list<struct<role, content>>, the conversation type
    /// pyarrow, pandas and HF `datasets` read) or .jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// One JSON object on stdout: prompts, domain, split, seed, out.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// JSONL (or Parquet) rows with `domain` (or `verifier`), `prompt`, `answer`, `response`, optional `mode`.
    #[arg(long = "in")]
    pub input: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TrajCmd {
    /// Print the first rows of a trajectory store readably.
    Inspect {
        /// A shard, a shard directory, or a run directory.
        path: PathBuf,
        #[arg(long, default_value_t = 3)]
        n: usize,
        #[arg(long)]
        json: bool,
    },
    /// Rows, tokens and reward mean by domain.
    Stats {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn tasks_list(json_out: bool) -> Result<()> {
    let ds = tasks::domains();
    if json_out {
        print_json(&serde_json::to_value(ds)?);
        return Ok(());
    }
    println!("{:<14} {:<7} {:<5} description", "domain", "family", "diff");
    for d in ds {
        println!("{:<14} {:<7} {:<5} {}", d.domain, d.family, d.default_difficulty, d.description);
    }
    println!("\n{} domains in {} families", ds.len(), {
        let mut f: Vec<_> = ds.iter().map(|d| d.family).collect();
        f.dedup();
        f.len()
    });
    Ok(())
}

pub fn tasks_sample(a: &SampleArgs) -> Result<()> {
    let split = Split::from(a.split);
    let domains: Vec<&str> = tasks::match_domains(&a.domains)?.iter().map(|d| d.domain).collect();
    // streamed: tasks are generated as they are written, so memory does not grow with --n
    let difficulty: tasks::Difficulty = a.difficulty.into();
    let ts = domains.iter().flat_map(|d| tasks::sample_iter(d, split, a.seed, a.n as u64, &difficulty));
    let n = datasets::prompts::write_tasks_iter(&a.out, ts).with_context(|| format!("writing {}", a.out.display()))?;
    if a.json {
        print_json(&serde_json::json!({
            "prompts": n, "domain": a.domains, "domains": domains, "split": split.as_str(), "seed": a.seed,
            "out": a.out,
        }));
    } else {
        eprintln!("wrote {n} {} prompts of {} to {}", split.as_str(), domains.join(", "), a.out.display());
    }
    Ok(())
}

pub fn score(a: &ScoreArgs) -> Result<()> {
    let (columns, records) = datasets::prompts::read_table(&a.input)?;
    let layout = datasets::layouts::detect_layout(&a.input, &columns)?;
    let mut rows = Vec::new();
    let mut by_domain: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    for (i, rec) in records.iter().enumerate() {
        let task = match datasets::layouts::convert(layout, &a.input, i + 1, rec, i)? {
            datasets::layouts::Converted::Task(t) => *t,
            datasets::layouts::Converted::Skip(why) => {
                *skipped.entry(why).or_default() += 1;
                continue;
            }
        };
        let response = match rec.get("response") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                bail!("{}: row {}: column `response`: expected a string, got {other}", a.input.display(), i + 1)
            }
            None => bail!("{}: row {}: column `response`: missing", a.input.display(), i + 1),
        };
        let mode = match rec.get("mode").and_then(Value::as_str) {
            Some(m) => m
                .parse::<Mode>()
                .map_err(|e| anyhow::anyhow!("{}: row {}: column `mode`: {e}", a.input.display(), i + 1))?,
            None if response.contains("</think>") => Mode::ThinkHigh,
            None => Mode::NonThink,
        };
        let r = rewards::score(&task, &response, mode);
        let e = by_domain.entry(task.domain.clone()).or_default();
        e.0 += r.value as f64;
        e.1 += 1;
        rows.push(json!({"index": i, "domain": task.domain, "reward": r.value, "detail": r.detail}));
    }
    for (why, n) in &skipped {
        eprintln!("{}: skipped {n} rows: {why}", a.input.display());
    }
    let acc: BTreeMap<&String, f64> = by_domain.iter().map(|(k, (s, n))| (k, s / *n as f64)).collect();
    if a.json {
        print_json(&score_json(rows, &acc, &skipped));
    } else {
        println!("{:<16} {:>6} {:>9}", "domain", "n", "accuracy");
        for (d, (s, n)) in &by_domain {
            println!("{:<16} {:>6} {:>9.3}", d, n, s / *n as f64);
        }
        let total: usize = by_domain.values().map(|v| v.1).sum();
        let sum: f64 = by_domain.values().map(|v| v.0).sum();
        println!("{:<16} {:>6} {:>9.3}", "all", total, sum / total.max(1) as f64);
    }
    Ok(())
}

/// The `score --json` report: scored rows, mean reward per domain, and the rows skipped —
/// `{"rows": n, "reasons": {reason: n}}` — as the text report prints them.
fn score_json(rows: Vec<Value>, by_domain: &BTreeMap<&String, f64>, skipped: &BTreeMap<String, usize>) -> Value {
    json!({
        "rows": rows,
        "by_domain": by_domain,
        "skipped": {"rows": skipped.values().sum::<usize>(), "reasons": skipped},
    })
}

/// Shard directories under `path` (a shard file, a shard directory or a run directory).
pub fn shard_dirs(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        if !store::list_shards(&d)?.is_empty() {
            out.push(d.clone());
        }
        let mut subs: Vec<PathBuf> =
            std::fs::read_dir(&d)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        subs.sort();
        stack.extend(subs.into_iter().rev());
    }
    out.sort();
    Ok(out)
}

fn read_trajs(path: &Path) -> Result<Vec<Trajectory>> {
    let mut all = Vec::new();
    for d in shard_dirs(path)? {
        if d.is_file() {
            let dir = tempfile::tempdir()?;
            std::fs::copy(&d, dir.path().join("part-0.parquet"))?;
            all.extend(trajectories::read_all(dir.path(), &ReadFilter::default())?);
            continue;
        }
        if d.components().any(|c| c.as_os_str() == "metrics" || c.as_os_str() == "teacher_states") {
            continue;
        }
        all.extend(
            trajectories::read_all(&d, &ReadFilter::default()).with_context(|| format!("reading {}", d.display()))?,
        );
    }
    if all.is_empty() {
        bail!("{}: no trajectory shards found", path.display());
    }
    Ok(all)
}

pub fn traj_inspect(path: &Path, n: usize, json_out: bool) -> Result<()> {
    let ts = read_trajs(path)?;
    let shown: Vec<&Trajectory> = ts.iter().take(n).collect();
    if json_out {
        print_json(&serde_json::to_value(&shown)?);
        return Ok(());
    }
    for t in shown {
        println!(
            "── {}  stage={} step={} policy_v={} domain={} mode={} group_idx={}",
            t.traj_id, t.stage, t.step, t.policy_version, t.domain, t.mode, t.group_idx
        );
        println!(
            "   prompt {} tokens, response {} tokens ({} generated), finish={}, reward={}",
            t.prompt_tokens.len(),
            t.response_tokens.len(),
            t.generated_tokens(),
            t.finish_reason,
            t.reward.map_or("-".to_string(), |r| format!("{r:.3}"))
        );
        if let Some(teacher) = &t.teacher_id {
            println!("   teacher {teacher}");
        }
        let mean_lp = if t.response_logprobs.is_empty() {
            0.0
        } else {
            t.response_logprobs.iter().sum::<f32>() / t.response_logprobs.len() as f32
        };
        println!(
            "   mean sampler logprob {mean_lp:.3}; routing {}",
            if t.routing.is_some() { "recorded" } else { "-" }
        );
        let text: String = t.response_text.chars().take(300).collect();
        println!("   response: {}", text.replace('\n', "⏎"));
        if !t.reward_detail.is_empty() {
            println!("   detail: {}", t.reward_detail.chars().take(200).collect::<String>());
        }
    }
    println!("({} of {} rows)", n.min(ts.len()), ts.len());
    Ok(())
}

pub fn traj_stats(path: &Path, json_out: bool) -> Result<()> {
    let ts = read_trajs(path)?;
    let mut dom: BTreeMap<String, (usize, f64, usize, usize)> = BTreeMap::new();
    let mut finish: BTreeMap<String, usize> = BTreeMap::new();
    let (mut prompt_tokens, mut response_tokens, mut generated) = (0usize, 0usize, 0usize);
    for t in &ts {
        prompt_tokens += t.prompt_tokens.len();
        response_tokens += t.response_tokens.len();
        generated += t.generated_tokens();
        *finish.entry(t.finish_reason.clone()).or_default() += 1;
        let e = dom.entry(t.domain.clone()).or_default();
        e.0 += 1;
        if let Some(r) = t.reward {
            e.1 += r as f64;
            e.2 += 1;
        }
        e.3 += t.generated_tokens();
    }
    let by_domain: BTreeMap<&String, Value> = dom
        .iter()
        .map(|(d, (n, rs, rn, tok))| (d, json!({"rows": n, "reward_mean": if *rn > 0 { Some(rs / *rn as f64) } else { None }, "mean_response_tokens": *tok as f64 / *n as f64})))
        .collect();
    let out = json!({"rows": ts.len(), "prompt_tokens": prompt_tokens, "response_tokens": response_tokens, "generated_tokens": generated,
        "finish_reasons": finish, "by_domain": by_domain});
    if json_out {
        print_json(&out);
    } else {
        println!(
            "rows {}   prompt tokens {}   response tokens {} ({} generated)",
            ts.len(),
            prompt_tokens,
            response_tokens,
            generated
        );
        println!("finish reasons: {}", finish.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
        println!("{:<16} {:>7} {:>12} {:>10}", "domain", "rows", "reward_mean", "resp_tok");
        for (d, (n, rs, rn, tok)) in &dom {
            let rm = if *rn > 0 { format!("{:.3}", rs / *rn as f64) } else { "-".into() };
            println!("{:<16} {:>7} {:>12} {:>10.1}", d, n, rm, *tok as f64 / *n as f64);
        }
    }
    Ok(())
}

pub fn bench_store(n: usize, tokens: usize, json_out: bool) -> Result<()> {
    if n == 0 || tokens == 0 {
        bail!("--n and --tokens must be positive");
    }
    let dir = tempfile::tempdir()?;
    let shard = 10_000usize;
    let make = |i: usize| -> Trajectory {
        // Token ids drawn from a Zipf-like distribution over byte tokens and noisy logprobs, so
        // the compression ratio resembles sampled text rather than a repeating pattern.
        let mut rng = tasks::Pcg::new(i as u64 + 1);
        let mut zipf = || -> u32 { 64 + 32 + (95.0 * rng.unit().powi(3)) as u32 };
        Trajectory {
            traj_id: format!("bench-{i:08}"),
            run: "bench".into(),
            stage: "grpo".into(),
            step: (i / 1024) as u64,
            policy_version: (i / 1024) as u64,
            prompt_id: format!("p{}", i / 8),
            group_idx: (i % 8) as u32,
            domain: tasks::domains()[i % tasks::domains().len()].domain.into(),
            family: "bench".into(),
            mode: "think_high".into(),
            teacher_id: None,
            prompt_tokens: (0..64).map(|_| zipf()).collect(),
            response_tokens: (0..tokens).map(|_| zipf()).collect(),
            response_logprobs: {
                let mut r = tasks::Pcg::new(!(i as u64));
                (0..tokens).map(|_| -(4.0 * r.unit().powi(2)) as f32).collect()
            },
            finish_reason: "eos".into(),
            reward: Some((i % 2) as f32),
            reward_detail: "{}".into(),
            response_text: String::new(),
            ..Default::default()
        }
    };
    let mut st = TrajectoryStore::open(dir.path())?;
    let t0 = Instant::now();
    let mut written = 0;
    for start in (0..n).step_by(shard) {
        let batch: Vec<Trajectory> = (start..(start + shard).min(n)).map(make).collect();
        written += st.write(&batch)?.written;
    }
    let write_s = t0.elapsed().as_secs_f64();
    let bytes: u64 =
        store::list_shards(dir.path())?.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    let t1 = Instant::now();
    let back = trajectories::read_all(dir.path(), &ReadFilter::default())?;
    let read_s = t1.elapsed().as_secs_f64();
    if back.len() != written {
        bail!("read back {} rows, wrote {written}", back.len());
    }
    let toks = (n * tokens) as f64;
    let out = json!({"trajectories": n, "response_tokens_each": tokens, "write_tokens_per_s": toks / write_s, "read_tokens_per_s": toks / read_s,
        "bytes_on_disk": bytes, "write_s": write_s, "read_s": read_s});
    if json_out {
        print_json(&out);
    } else {
        println!("wrote {n} trajectories × {tokens} tokens in {write_s:.2}s ({:.2e} tok/s), read in {read_s:.2}s ({:.2e} tok/s), {:.1} MB on disk", toks / write_s, toks / read_s, bytes as f64 / 1e6);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_json_reports_skipped_rows_with_reasons() {
        let mut skipped = BTreeMap::new();
        skipped.insert("no verifier for verl rows of ability `code`".to_string(), 2);
        skipped.insert("no verifier for free-text completions".to_string(), 1);
        let math = "math.gsm8k".to_string();
        let acc: BTreeMap<&String, f64> = [(&math, 0.5)].into_iter().collect();
        let v = score_json(vec![json!({"index": 0})], &acc, &skipped);
        assert_eq!(v["skipped"]["rows"], 3);
        assert_eq!(v["skipped"]["reasons"]["no verifier for verl rows of ability `code`"], 2);
        assert_eq!(v["skipped"]["reasons"]["no verifier for free-text completions"], 1);
        assert_eq!(v["by_domain"]["math.gsm8k"], 0.5);
        let none = score_json(vec![], &BTreeMap::new(), &BTreeMap::new());
        assert_eq!((none["skipped"]["rows"].clone(), none["skipped"]["reasons"].clone()), (json!(0), json!({})));
    }
}
