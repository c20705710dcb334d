//! Runs and their metrics for the dashboard. Shards are read incrementally (only new ones
//! on each refresh); rows are deduplicated by (stage, step, name, labels), the latest write
//! winning — a resumed run re-logs the steps after its last checkpoint.

use crate::{DashError, Result};
use datasets::store::{list_shards, read_metrics_shard, MetricRow};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Column order of metric rows sent to the page.
pub const COLUMNS: [&str; 9] = ["stage", "step", "name", "value", "teacher", "domain", "mode", "tokens", "time_ms"];

type Key = (String, u64, String, Option<String>, Option<String>, Option<String>);

/// One run directory and what has been read of it.
pub struct Run {
    pub name: String,
    pub dir: PathBuf,
    seen: HashSet<PathBuf>,
    rows: BTreeMap<Key, MetricRow>,
    /// Shards that could not be read, with the reason (shown on the page).
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub name: String,
    pub dir: String,
    pub rows: usize,
    pub stages: Vec<String>,
    pub last_step: Option<u64>,
    pub updated_ms: Option<i64>,
    pub errors: Vec<String>,
    /// Why there is nothing to show, when there is nothing.
    pub message: Option<String>,
}

impl Run {
    /// A run directory (`runs/NAME`), or a metrics directory itself.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.exists() {
            return Err(DashError::Input(format!("{}: no such run directory", dir.display())));
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n != "metrics")
            .or_else(|| dir.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "run".into());
        // `runs/<name>` holds the escaped name (datasets::safe_component): show it as written
        let name = datasets::name_of_component(&name).unwrap_or(name);
        let mut r = Run { name, dir: dir.to_path_buf(), seen: HashSet::new(), rows: BTreeMap::new(), errors: vec![] };
        r.refresh();
        Ok(r)
    }

    pub fn metrics_dir(&self) -> PathBuf {
        if self.dir.join("metrics").is_dir() || !self.dir.ends_with("metrics") {
            self.dir.join("metrics")
        } else {
            self.dir.clone()
        }
    }

    /// Read shards written since the last refresh. Unreadable shards are reported, not fatal.
    pub fn refresh(&mut self) {
        let dir = self.metrics_dir();
        let shards = match list_shards(&dir) {
            Ok(s) => s,
            Err(e) => {
                let m = format!("cannot list {}: {e}", dir.display());
                if !self.errors.contains(&m) {
                    self.errors.push(m);
                }
                return;
            }
        };
        for s in shards {
            if self.seen.contains(&s) {
                continue;
            }
            self.seen.insert(s.clone());
            match read_metrics_shard(&s) {
                Ok(rows) => {
                    for r in rows {
                        let key = (
                            r.stage.clone(),
                            r.step,
                            r.name.clone(),
                            r.teacher.clone(),
                            r.domain.clone(),
                            r.mode.clone(),
                        );
                        match self.rows.get(&key) {
                            Some(old) if old.time_ms > r.time_ms => {}
                            _ => {
                                self.rows.insert(key, r);
                            }
                        }
                    }
                }
                Err(e) => self.errors.push(format!("unreadable metrics shard {}: {e}", s.display())),
            }
        }
    }

    pub fn summary(&self) -> RunSummary {
        let mut stages: Vec<String> = self.rows.values().map(|r| r.stage.clone()).collect();
        stages.sort();
        stages.dedup();
        let message = if self.rows.is_empty() {
            Some(if self.errors.is_empty() {
                format!("no metrics yet in {} — the run has not logged a step", self.metrics_dir().display())
            } else {
                format!("no readable metrics in {}", self.metrics_dir().display())
            })
        } else {
            None
        };
        RunSummary {
            name: self.name.clone(),
            dir: self.dir.display().to_string(),
            rows: self.rows.len(),
            stages,
            last_step: self.rows.values().map(|r| r.step).max(),
            updated_ms: self.rows.values().map(|r| r.time_ms).max(),
            errors: self.errors.clone(),
            message,
        }
    }

    /// Rows as arrays in [`COLUMNS`] order, filtered.
    pub fn rows_json(&self, names: Option<&[String]>, since_step: Option<u64>, since_ms: Option<i64>) -> Vec<Value> {
        let mut v: Vec<&MetricRow> = self
            .rows
            .values()
            .filter(|r| names.is_none_or(|n| n.iter().any(|x| x == &r.name)))
            .filter(|r| since_step.is_none_or(|s| r.step > s))
            .filter(|r| since_ms.is_none_or(|t| r.time_ms > t))
            .collect();
        v.sort_by_key(|r| (r.time_ms, r.step));
        v.into_iter()
            .map(|r| json!([r.stage, r.step, r.name, r.value, r.teacher, r.domain, r.mode, r.tokens, r.time_ms]))
            .collect()
    }

    /// `results.json` of the run, if the eval stage wrote one.
    pub fn results(&self) -> Option<Value> {
        let p = self.dir.join("results.json");
        std::fs::read_to_string(p).ok().and_then(|t| serde_json::from_str(&t).ok())
    }

    pub fn all_rows(&self) -> impl Iterator<Item = &MetricRow> {
        self.rows.values()
    }
}

/// Everything the page needs, for the static report.
pub fn snapshot(runs: &[Run]) -> Value {
    json!({
        "columns": COLUMNS,
        "runs": runs.iter().map(|r| json!({
            "summary": r.summary(),
            "rows": r.rows_json(None, None, None),
            "results": r.results(),
        })).collect::<Vec<_>>(),
    })
}
