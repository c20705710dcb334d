//! TensorBoard scalar event files, written without TensorFlow: TFRecord framing (length,
//! masked CRC-32C of the length, the record, masked CRC-32C of the record) around
//! hand-encoded `Event` protocol buffers (`wall_time`, `step`, `summary.value{tag,
//! simple_value}`), after the `brain.Event:2` version record. Tags are `section/name`,
//! with labels as further path parts (`opd/reverse_kl/teacher=math.add`).

use crate::{DashError, Result};
use datasets::store::MetricRow;
use std::io::Write;
use std::path::{Path, PathBuf};

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// An `Event` with either a file version or one scalar.
fn event(wall_time: f64, step: i64, version: Option<&str>, scalar: Option<(&str, f32)>) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(0x09); // field 1, fixed64
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(0x10, &mut e); // field 2, varint
    varint(step as u64, &mut e);
    if let Some(v) = version {
        bytes_field(3, v.as_bytes(), &mut e);
    }
    if let Some((tag, value)) = scalar {
        let mut val = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut val);
        val.push(0x15); // field 2, fixed32
        val.extend_from_slice(&value.to_le_bytes());
        let mut summary = Vec::new();
        bytes_field(1, &val, &mut summary);
        bytes_field(5, &summary, &mut e);
    }
    e
}

fn record(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// The tag of a metric row: `section/name` plus `key=value` parts for its labels.
pub fn tag(r: &MetricRow) -> String {
    let mut t = r.name.clone();
    for (k, v) in [("teacher", &r.teacher), ("domain", &r.domain), ("mode", &r.mode)] {
        if let Some(v) = v {
            t.push_str(&format!("/{k}={v}"));
        }
    }
    t
}

/// Write one event file for `rows` under `dir/<run>/` (the run name escaped, one component);
/// returns its path.
pub fn write_events(dir: &Path, run: &str, rows: &[&MetricRow]) -> Result<PathBuf> {
    let sub = dir.join(datasets::safe_component(run));
    std::fs::create_dir_all(&sub).map_err(|e| DashError::Io { path: sub.clone(), source: e })?;
    let start = rows.iter().map(|r| r.time_ms).min().unwrap_or(0);
    let path = sub.join(format!("events.out.tfevents.{}.v4post", start / 1000));
    let mut buf = Vec::new();
    record(&event(start as f64 / 1e3, 0, Some("brain.Event:2"), None), &mut buf);
    let mut sorted: Vec<&&MetricRow> = rows.iter().collect();
    sorted.sort_by_key(|r| (r.time_ms, r.step));
    for r in sorted {
        // stages restart their step count; TensorBoard keeps them apart by tag prefix
        let t = format!("{}/{}", r.stage, tag(r));
        record(&event(r.time_ms as f64 / 1e3, r.step as i64, None, Some((&t, r.value as f32))), &mut buf);
    }
    let mut f = std::fs::File::create(&path).map_err(|e| DashError::Io { path: path.clone(), source: e })?;
    f.write_all(&buf).map_err(|e| DashError::Io { path: path.clone(), source: e })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc_and_varint() {
        // masked CRC of the empty string, as TensorFlow computes it
        assert_eq!(super::masked_crc(b""), 0xa282_ead8);
        let mut v = Vec::new();
        super::varint(300, &mut v);
        assert_eq!(v, [0xac, 0x02]);
    }
}
