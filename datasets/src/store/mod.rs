//! Parquet shard storage shared by trajectories, teacher states and metrics.
//!
//! A shard is written completely under a hidden temporary name (`.part-*.tmp`), flushed to
//! disk and only then renamed to `part-*.parquet` — rename is atomic on POSIX filesystems,
//! so a reader lists either the whole shard or nothing, even if the writer is killed midway.

pub mod metrics;
pub mod teacher_states;
pub mod trajectories;

pub use metrics::{read_metrics, read_metrics_shard, MetricRow, MetricsWriter};
pub use teacher_states::{TeacherState, TeacherStateStore};
pub use trajectories::{read_all, ReadFilter, Trajectory, TrajectoryStore, WriteReport};

use crate::error::{DataError, Result};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ArrowPredicate, ParquetRecordBatchReaderBuilder, RowFilter};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static SHARD_SEQ: AtomicU64 = AtomicU64::new(0);

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Write one record batch as a complete shard in `dir`; returns its final path.
pub(crate) fn write_shard(dir: &Path, batch: &RecordBatch) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let name = format!(
        "part-{:013}-{:08x}-{:06}.parquet",
        now_ms(),
        std::process::id(),
        SHARD_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = dir.join(format!(".{name}.tmp"));
    let file = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(8192))
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    w.write(batch)?;
    let file = w.into_inner()?;
    file.sync_all().map_err(|e| DataError::io(&tmp, e))?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))?;
    Ok(path)
}

/// The keys (one or two string columns joined by U+001F) of every shard of a directory,
/// read incrementally: [`refresh`](Self::refresh) reads only shards it has not seen, so
/// several processes writing the same store see each other's rows cheaply.
pub struct KeyIndex {
    dir: PathBuf,
    columns: Vec<&'static str>,
    seen: std::collections::HashSet<PathBuf>,
    keys: std::collections::HashSet<String>,
}

impl KeyIndex {
    pub fn new(dir: &Path, columns: &[&'static str]) -> Self {
        KeyIndex {
            dir: dir.to_path_buf(),
            columns: columns.to_vec(),
            seen: Default::default(),
            keys: Default::default(),
        }
    }

    /// Read the keys of shards written since the last call.
    pub fn refresh(&mut self) -> Result<()> {
        for shard in list_shards(&self.dir)? {
            if self.seen.contains(&shard) {
                continue;
            }
            for b in read_shard(&shard, Some(&self.columns), None)? {
                let cols: Vec<&arrow::array::StringArray> = self
                    .columns
                    .iter()
                    .map(|c| {
                        b.column_by_name(c)
                            .and_then(|a| a.as_any().downcast_ref::<arrow::array::StringArray>())
                            .ok_or_else(|| DataError::Format(format!("{}: no utf8 column `{c}`", shard.display())))
                    })
                    .collect::<Result<_>>()?;
                for i in 0..b.num_rows() {
                    let key: Vec<&str> = cols.iter().map(|c| c.value(i)).collect();
                    self.keys.insert(key.join("\u{1f}"));
                }
            }
            self.seen.insert(shard);
        }
        Ok(())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Key of a two-column index.
    pub fn pair(a: &str, b: &str) -> String {
        format!("{a}\u{1f}{b}")
    }

    pub fn insert(&mut self, key: String) {
        self.keys.insert(key);
    }

    /// A shard this process wrote itself (its keys were inserted directly).
    pub fn mark_seen(&mut self, shard: PathBuf) {
        self.seen.insert(shard);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The `traj_id` column of one shard (every row, duplicates included).
pub fn read_ids(shard: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for b in read_shard(shard, Some(&["traj_id"]), None)? {
        let a = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .ok_or_else(|| DataError::Format(format!("{}: traj_id is not utf8", shard.display())))?;
        out.extend(a.iter().flatten().map(str::to_string));
    }
    Ok(out)
}

/// Complete shards of `dir`, oldest first (temporary files are never listed).
pub fn list_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("part-") && n.ends_with(".parquet"))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Read one shard, keeping only `columns` (all when `None`) and rows passing `predicate`.
pub(crate) fn read_shard(
    path: &Path,
    columns: Option<&[&str]>,
    predicate: Option<(Vec<&str>, PredicateFn)>,
) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let wrap = |e: parquet::errors::ParquetError| DataError::Format(format!("{}: {e}", path.display()));
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(wrap)?.with_batch_size(4096);
    let schema = builder.parquet_schema().clone();
    let arrow_schema = builder.schema().clone();
    let index_of = |names: &[&str]| -> Result<Vec<usize>> {
        names
            .iter()
            .map(|n| {
                arrow_schema.index_of(n).map_err(|_| DataError::Format(format!("{}: no column `{n}`", path.display())))
            })
            .collect()
    };
    if let Some(cols) = columns {
        builder = builder.with_projection(ProjectionMask::roots(&schema, index_of(cols)?));
    }
    if let Some((cols, mut f)) = predicate {
        let mask = ProjectionMask::roots(&schema, index_of(&cols)?);
        let pred = parquet::arrow::arrow_reader::ArrowPredicateFn::new(mask, move |b: RecordBatch| f(&b));
        builder = builder.with_row_filter(RowFilter::new(vec![Box::new(pred) as Box<dyn ArrowPredicate>]));
    }
    let reader = builder.build().map_err(wrap)?;
    reader.map(|b| b.map_err(|e| DataError::Format(format!("{}: {e}", path.display())))).collect()
}

/// A row predicate evaluated on the filter columns (pushed down into the Parquet reader).
pub(crate) type PredicateFn =
    Box<dyn FnMut(&RecordBatch) -> std::result::Result<arrow::array::BooleanArray, arrow::error::ArrowError> + Send>;
