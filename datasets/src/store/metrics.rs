//! The metrics store: `runs/<name>/metrics/part-*.parquet` with one row per
//! (step, stage, name, labels). Names use `section/name` (`opd/reverse_kl`, `grpo/reward_mean`)
//! so the dashboard and the TensorBoard export group them the same way.

use super::{list_shards, now_ms, read_shard, write_shard};
use crate::error::{DataError, Result};
use arrow::array::*;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One metric value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricRow {
    pub run: String,
    pub stage: String,
    pub step: u64,
    pub name: String,
    pub value: f64,
    pub teacher: Option<String>,
    pub domain: Option<String>,
    pub mode: Option<String>,
    /// Tokens processed so far in this stage (an x-axis choice of the dashboard).
    pub tokens: u64,
    pub time_ms: i64,
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("run", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("step", DataType::UInt64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("teacher", DataType::Utf8, true),
        Field::new("domain", DataType::Utf8, true),
        Field::new("mode", DataType::Utf8, true),
        Field::new("tokens", DataType::UInt64, false),
        Field::new("time_ms", DataType::Int64, false),
    ]))
}

/// Buffers metric rows and writes them as shards.
pub struct MetricsWriter {
    dir: PathBuf,
    run: String,
    buf: Vec<MetricRow>,
    last_flush: std::time::Instant,
    /// Minimum time between automatic flushes (bounds the number of small files).
    pub min_interval: std::time::Duration,
}

impl MetricsWriter {
    pub fn new(dir: &Path, run: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        Ok(MetricsWriter {
            dir: dir.to_path_buf(),
            run: run.to_string(),
            buf: Vec::new(),
            last_flush: std::time::Instant::now(),
            min_interval: std::time::Duration::from_secs(2),
        })
    }

    /// Record a value; `labels` are (teacher, domain, mode).
    pub fn log(
        &mut self,
        stage: &str,
        step: u64,
        name: &str,
        value: f64,
        labels: (Option<&str>, Option<&str>, Option<&str>),
        tokens: u64,
    ) {
        if !value.is_finite() {
            // NaN/inf would poison charts; keep the fact visible under a separate name.
            self.buf.push(MetricRow {
                run: self.run.clone(),
                stage: stage.into(),
                step,
                name: format!("{name}/non_finite"),
                value: 1.0,
                teacher: labels.0.map(str::to_string),
                domain: labels.1.map(str::to_string),
                mode: labels.2.map(str::to_string),
                tokens,
                time_ms: now_ms(),
            });
            return;
        }
        self.buf.push(MetricRow {
            run: self.run.clone(),
            stage: stage.into(),
            step,
            name: name.into(),
            value,
            teacher: labels.0.map(str::to_string),
            domain: labels.1.map(str::to_string),
            mode: labels.2.map(str::to_string),
            tokens,
            time_ms: now_ms(),
        });
    }

    /// Flush if enough time has passed since the last flush.
    pub fn maybe_flush(&mut self) -> Result<()> {
        if self.last_flush.elapsed() >= self.min_interval {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.last_flush = std::time::Instant::now();
        if self.buf.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.buf);
        let s = |f: &dyn Fn(&MetricRow) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
        };
        let o = |f: &dyn Fn(&MetricRow) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
        let cols: Vec<ArrayRef> = vec![
            s(&|r| &r.run),
            s(&|r| &r.stage),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.step))),
            s(&|r| &r.name),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
            o(&|r| r.teacher.clone()),
            o(&|r| r.domain.clone()),
            o(&|r| r.mode.clone()),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.tokens))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.time_ms))),
        ];
        write_shard(&self.dir, &RecordBatch::try_new(schema(), cols)?)?;
        Ok(())
    }
}

impl Drop for MetricsWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Every metric row of a metrics directory, in write order.
pub fn read_metrics(dir: &Path) -> Result<Vec<MetricRow>> {
    let mut out = Vec::new();
    for shard in list_shards(dir)? {
        out.extend(read_metrics_shard(&shard)?);
    }
    Ok(out)
}

/// The rows of one metrics shard.
pub fn read_metrics_shard(shard: &Path) -> Result<Vec<MetricRow>> {
    let mut out = Vec::new();
    {
        for b in read_shard(shard, None, None)? {
            let need = |name: &str| {
                b.column_by_name(name).ok_or_else(|| {
                    DataError::Format(format!("{}: metrics shard without column `{name}`", shard.display()))
                })
            };
            let st = |name: &str| -> Result<StringArray> {
                need(name)?
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .cloned()
                    .ok_or_else(|| DataError::Format(format!("{}: column `{name}` is not utf8", shard.display())))
            };
            let (run, stage, name, teacher, domain, mode) =
                (st("run")?, st("stage")?, st("name")?, st("teacher")?, st("domain")?, st("mode")?);
            let step = need("step")?
                .as_any()
                .downcast_ref::<UInt64Array>()
                .cloned()
                .ok_or_else(|| DataError::Format("step".into()))?;
            let value = need("value")?
                .as_any()
                .downcast_ref::<Float64Array>()
                .cloned()
                .ok_or_else(|| DataError::Format("value".into()))?;
            let tokens = need("tokens")?
                .as_any()
                .downcast_ref::<UInt64Array>()
                .cloned()
                .ok_or_else(|| DataError::Format("tokens".into()))?;
            let time = need("time_ms")?
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| DataError::Format("time_ms".into()))?;
            let opt = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
            for i in 0..b.num_rows() {
                out.push(MetricRow {
                    run: run.value(i).into(),
                    stage: stage.value(i).into(),
                    step: step.value(i),
                    name: name.value(i).into(),
                    value: value.value(i),
                    teacher: opt(&teacher, i),
                    domain: opt(&domain, i),
                    mode: opt(&mode, i),
                    tokens: tokens.value(i),
                    time_ms: time.value(i),
                });
            }
        }
    }
    Ok(out)
}
