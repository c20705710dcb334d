//! Parquet shard storage shared by trajectories, teacher states and metrics.
//!
//! A shard is written completely under a hidden temporary name (`.part-*.tmp`, created
//! exclusively), flushed to disk and only then hard-linked to `part-*.parquet` — a link is
//! atomic and never replaces an existing file, so a reader lists either the whole shard or
//! nothing, even if the writer is killed midway, and two writers (threads, processes or
//! hosts sharing the directory) that pick the same name never overwrite each other: the
//! loser takes the next name.

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

/// Names tried before a write gives up (each collision with another writer costs one).
const NAME_TRIES: usize = 1000;

/// A fresh shard name: `part-<ms>-<pid>-<seq>.parquet` (time first, so names sort oldest first).
fn next_shard_name() -> String {
    format!("part-{:013}-{:08x}-{:06}.parquet", now_ms(), std::process::id(), SHARD_SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Write one record batch as a complete shard in `dir`; returns its final path.
pub(crate) fn write_shard(dir: &Path, batch: &RecordBatch) -> Result<PathBuf> {
    write_shard_named(dir, batch, &mut next_shard_name)
}

/// [`write_shard`] with the shard names drawn from `names` (a fresh one after each collision).
fn write_shard_named(dir: &Path, batch: &RecordBatch, names: &mut dyn FnMut() -> String) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let (name, tmp, file) = create_temp(dir, names)?;
    let written = write_parquet(file, &tmp, batch);
    let published = written.and_then(|()| publish(dir, &tmp, name, names));
    if published.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    published
}

/// Create `.<name>.tmp` exclusively (never another writer's file), trying fresh names.
fn create_temp(dir: &Path, names: &mut dyn FnMut() -> String) -> Result<(String, PathBuf, std::fs::File)> {
    for _ in 0..NAME_TRIES {
        let name = names();
        let tmp = dir.join(format!(".{name}.tmp"));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((name, tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(DataError::io(&tmp, e)),
        }
    }
    Err(DataError::Format(format!("{}: no free temporary shard name after {NAME_TRIES} tries", dir.display())))
}

/// Write `batch` as Parquet into `file` (at `path`) and flush it to disk.
fn write_parquet(file: std::fs::File, path: &Path, batch: &RecordBatch) -> Result<()> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(8192))
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    w.write(batch)?;
    let file = w.into_inner()?;
    file.sync_all().map_err(|e| DataError::io(path, e))
}

/// Give the complete file `tmp` the shard name `name`, or a fresh one from `names` while
/// the name is taken: a hard link never replaces an existing file, so a shard another
/// writer published under the same name stays as it is. Then drop the temporary name.
fn publish(dir: &Path, tmp: &Path, mut name: String, names: &mut dyn FnMut() -> String) -> Result<PathBuf> {
    for _ in 0..NAME_TRIES {
        let path = dir.join(&name);
        match std::fs::hard_link(tmp, &path) {
            Ok(()) => {
                // The shard is stored; a temporary name left behind is hidden from readers.
                let _ = std::fs::remove_file(tmp);
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => name = names(),
            Err(e) if links_unsupported(&e) && !path.exists() => {
                // A filesystem without hard links: rename, after checking the name is free
                // (not atomic against a writer that picks the same name at the same moment).
                std::fs::rename(tmp, &path).map_err(|e| DataError::io(&path, e))?;
                return Ok(path);
            }
            Err(e) => return Err(DataError::io(&path, e)),
        }
    }
    Err(DataError::Format(format!("{}: no free shard name after {NAME_TRIES} tries", dir.display())))
}

/// Whether a failed `hard_link` means the filesystem has no hard links.
fn links_unsupported(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{PermissionDenied, Unsupported};
    matches!(e.kind(), Unsupported | PermissionDenied)
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, StringArray};
    use std::collections::BTreeSet;
    use std::sync::{Arc, Barrier};

    fn batch(ids: &[String]) -> RecordBatch {
        let col: ArrayRef = Arc::new(StringArray::from_iter_values(ids));
        RecordBatch::try_from_iter([("traj_id", col)]).unwrap()
    }

    fn ids(prefix: &str) -> Vec<String> {
        (0..50).map(|i| format!("{prefix}{i:03}")).collect()
    }

    /// Every writer starts from the same name, then counts up: the collision of two
    /// processes whose pid, clock and sequence agree.
    fn same_names() -> impl FnMut() -> String {
        let mut k = 0;
        move || {
            k += 1;
            format!("part-0000000000001-00000001-{k:06}.parquet")
        }
    }

    fn stored_ids(dir: &Path) -> Vec<String> {
        let mut all = Vec::new();
        for shard in list_shards(dir).unwrap() {
            all.extend(read_ids(&shard).unwrap());
        }
        all.sort();
        all
    }

    #[test]
    fn a_taken_shard_name_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_shard_named(dir.path(), &batch(&ids("a")), &mut same_names()).unwrap();
        let second = write_shard_named(dir.path(), &batch(&ids("b")), &mut same_names()).unwrap();
        assert_ne!(first, second, "the second writer must take the next name");
        assert_eq!(read_ids(&first).unwrap(), ids("a"), "the first shard is intact");
        assert_eq!(read_ids(&second).unwrap(), ids("b"));
        // a temporary file of another writer (or of a killed one) under the first name is
        // neither truncated nor published
        let other_tmp = dir.path().join(".part-0000000000001-00000001-000001.parquet.tmp");
        std::fs::write(&other_tmp, b"another writer's half shard").unwrap();
        let third = write_shard_named(dir.path(), &batch(&ids("c")), &mut same_names()).unwrap();
        assert_eq!(read_ids(&third).unwrap(), ids("c"));
        assert_eq!(std::fs::read(&other_tmp).unwrap(), b"another writer's half shard");
        let mut want = [ids("a"), ids("b"), ids("c")].concat();
        want.sort();
        assert_eq!(stored_ids(dir.path()), want);
        let tmps = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert_eq!(tmps, 1, "only the other writer's temporary file remains");
    }

    #[test]
    fn two_writers_racing_for_one_shard_name_both_keep_their_data() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let start = Arc::new(Barrier::new(2));
            let writers: Vec<_> = ["a", "b"]
                .into_iter()
                .map(|who| {
                    let (dir, start) = (dir.path().to_path_buf(), start.clone());
                    std::thread::spawn(move || {
                        let b = batch(&ids(who));
                        start.wait();
                        write_shard_named(&dir, &b, &mut same_names())
                    })
                })
                .collect();
            let paths: BTreeSet<PathBuf> = writers.into_iter().map(|w| w.join().unwrap().unwrap()).collect();
            assert_eq!(paths.len(), 2, "round {round}: both writers got a shard of their own");
            let mut want = [ids("a"), ids("b")].concat();
            want.sort();
            assert_eq!(stored_ids(dir.path()), want, "round {round}: both data sets are stored");
        }
    }
}
