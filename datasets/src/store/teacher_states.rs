//! Teacher-state shards: per response token, a teacher's head input (after `hc_head` and the
//! final norm) as `FixedSizeList<Float16>[hidden]`, keyed by (`traj_id`, `teacher_id`).
//! Full-vocabulary teacher logits are never stored; the OPD trainer rebuilds them in chunks
//! through the teacher's head.

use super::{list_shards, read_shard, write_shard, PredicateFn};
use crate::error::{DataError, Result};
use arrow::array::*;
use arrow::datatypes::{DataType, Field, Float16Type, Schema};
use arrow::record_batch::RecordBatch;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Cached head inputs of one teacher for one trajectory.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherState {
    pub traj_id: String,
    pub teacher_id: String,
    pub stage: String,
    pub step: u64,
    pub dim: usize,
    /// `[response_len, dim]`, row j = head input at the position that predicts response token j.
    pub states: Vec<half::f16>,
}

impl TeacherState {
    pub fn len(&self) -> usize {
        self.states.len() / self.dim.max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

fn schema(dim: usize) -> Arc<Schema> {
    let item = Arc::new(Field::new_list_field(DataType::Float16, false));
    let row = DataType::FixedSizeList(item, dim as i32);
    Arc::new(Schema::new(vec![
        Field::new("traj_id", DataType::Utf8, false),
        Field::new("teacher_id", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("step", DataType::UInt64, false),
        Field::new("dim", DataType::UInt32, false),
        Field::new("states", DataType::List(Arc::new(Field::new_list_field(row, false))), false),
    ]))
}

/// A directory of teacher-state shards.
pub struct TeacherStateStore {
    dir: PathBuf,
}

impl TeacherStateStore {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        Ok(TeacherStateStore { dir: dir.to_path_buf() })
    }

    /// Write states of one teacher (all with the same `dim`) as one shard.
    pub fn write(&self, states: &[TeacherState]) -> Result<()> {
        let Some(first) = states.first() else {
            return Ok(());
        };
        let dim = first.dim;
        if dim == 0 {
            return Err(DataError::Format("teacher state with dim 0".into()));
        }
        let item = Arc::new(Field::new_list_field(DataType::Float16, false));
        let mut b =
            ListBuilder::new(FixedSizeListBuilder::new(Float16Builder::new(), dim as i32).with_field(item.clone()))
                .with_field(Arc::new(Field::new_list_field(DataType::FixedSizeList(item, dim as i32), false)));
        for s in states {
            if s.dim != dim || s.states.len() % dim != 0 {
                return Err(DataError::Format(format!(
                    "{}/{}: states do not have width {dim}",
                    s.traj_id, s.teacher_id
                )));
            }
            for row in s.states.chunks(dim) {
                b.values().values().append_slice(row);
                b.values().append(true);
            }
            b.append(true);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(states.iter().map(|s| s.traj_id.as_str()))),
            Arc::new(StringArray::from_iter_values(states.iter().map(|s| s.teacher_id.as_str()))),
            Arc::new(StringArray::from_iter_values(states.iter().map(|s| s.stage.as_str()))),
            Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.step))),
            Arc::new(UInt32Array::from_iter_values(states.iter().map(|_| dim as u32))),
            Arc::new(b.finish()),
        ];
        write_shard(&self.dir, &RecordBatch::try_new(schema(dim), cols)?)?;
        Ok(())
    }

    /// `(traj_id, teacher_id)` pairs already stored.
    pub fn keys(&self) -> Result<HashSet<(String, String)>> {
        let mut out = HashSet::new();
        for shard in list_shards(&self.dir)? {
            for b in read_shard(&shard, Some(&["traj_id", "teacher_id"]), None)? {
                let (Some(t), Some(k)) = (
                    b.column(0).as_any().downcast_ref::<StringArray>(),
                    b.column(1).as_any().downcast_ref::<StringArray>(),
                ) else {
                    return Err(DataError::Format(format!("{}: bad key columns", shard.display())));
                };
                out.extend((0..b.num_rows()).map(|i| (t.value(i).to_string(), k.value(i).to_string())));
            }
        }
        Ok(out)
    }

    /// States of `teacher_id`, optionally only for `traj_ids`, by traj_id (first shard wins).
    pub fn read(&self, teacher_id: &str, traj_ids: Option<&HashSet<String>>) -> Result<HashMap<String, TeacherState>> {
        let mut out: HashMap<String, TeacherState> = HashMap::new();
        for shard in list_shards(&self.dir)? {
            let tid = teacher_id.to_string();
            let pred: PredicateFn = Box::new(move |b: &RecordBatch| {
                arrow::compute::kernels::cmp::eq(b.column(0), &StringArray::new_scalar(tid.as_str()))
            });
            for b in read_shard(&shard, None, Some((vec!["teacher_id"], pred)))? {
                let strs = |i: usize| b.column(i).as_any().downcast_ref::<StringArray>().cloned();
                let (Some(ids), Some(teachers), Some(stages)) = (strs(0), strs(1), strs(2)) else {
                    return Err(DataError::Format(format!("{}: bad columns", shard.display())));
                };
                let steps = b
                    .column(3)
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .cloned()
                    .ok_or_else(|| DataError::Format("step column".into()))?;
                let lists = b
                    .column(5)
                    .as_any()
                    .downcast_ref::<ListArray>()
                    .cloned()
                    .ok_or_else(|| DataError::Format("states column".into()))?;
                for i in 0..b.num_rows() {
                    let id = ids.value(i);
                    if out.contains_key(id) || traj_ids.is_some_and(|s| !s.contains(id)) {
                        continue;
                    }
                    let rows = lists.value(i);
                    let fsl = rows
                        .as_any()
                        .downcast_ref::<FixedSizeListArray>()
                        .ok_or_else(|| DataError::Format("states rows".into()))?;
                    let dim = fsl.value_length() as usize;
                    let vals = fsl
                        .values()
                        .as_any()
                        .downcast_ref::<PrimitiveArray<Float16Type>>()
                        .ok_or_else(|| DataError::Format("states values".into()))?;
                    let off = fsl.offset() * dim;
                    let states = vals.values()[off..off + fsl.len() * dim].to_vec();
                    out.insert(
                        id.to_string(),
                        TeacherState {
                            traj_id: id.to_string(),
                            teacher_id: teachers.value(i).to_string(),
                            stage: stages.value(i).to_string(),
                            step: steps.value(i),
                            dim,
                            states,
                        },
                    );
                }
            }
        }
        Ok(out)
    }
}
