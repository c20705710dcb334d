//! Memory-mapped checkpoints: tensors handed out as views of the mapped files, never copied.
//!
//! [`MappedCheckpoint::open`] accepts exactly what [`crate::checkpoint::load`] accepts — one
//! `model.safetensors`, shards listed by `model.safetensors.index.json`, or every
//! `*.safetensors` of a directory; official or Hugging Face names (mapped with
//! [`official_name`]) — and checks the same things up front, with the same file- and
//! tensor-naming errors: every parameter of the config present with its logical shape, FP8
//! E4M3 weights with a `.scale` of `⌈rows/128⌉ × ⌈cols/128⌉` blocks, packed FP4 `[out, in/2]`
//! with a UE8M0 `.scale` `[out, in/32]`, float dtypes for everything else, `tid2eid` tables
//! naming existing experts, and nothing unexpected. A truncated file names the first tensor
//! whose byte range `[begin, end)` runs past the end of the file.
//!
//! Each file is mapped once (`Arc<memmap2::Mmap>`); a [`MappedBytes`] is an `(Arc, start,
//! len)` range of it, so views keep their file mapped for as long as they live, and resident
//! memory is whatever pages the consumer actually touches (the kernel may drop clean pages
//! under pressure and read them again from the file). [`Floats`] is f32 data either owned or,
//! for F32 tensors whose bytes are 4-byte aligned on a little-endian target, the mapped bytes
//! reinterpreted in place (any bit pattern is a valid f32) — a [`MappedF32`], which only its
//! checking constructor builds. Packed FP4 weights must be 2-D with an input dimension that is
//! a multiple of the 32-wide MXFP4 block (the kernels and decoders rely on it).
//!
//! The files must not be modified while mapped: a writer that truncates a mapped file makes
//! later reads fault (`SIGBUS`). v4post writes checkpoints under temporary names and renames
//! them into place, which leaves existing mappings on the old inode intact.

use crate::checkpoint::{checkpoint_files, config_path, official_name, scale_name, FP8_BLOCK};
use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::formats::{e8m0_to_f32, mxfp4};
use memmap2::Mmap;
use safetensors::tensor::Dtype;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A byte range of a memory-mapped file.
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl MappedBytes {
    /// The range `start..start + len` of `map` (checked).
    fn new(map: Arc<Mmap>, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len)?;
        (end <= map.len()).then_some(MappedBytes { map, start, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    /// The sub-range `a..b` of this range.
    pub fn slice(&self, a: usize, b: usize) -> MappedBytes {
        assert!(a <= b && b <= self.len, "MappedBytes::slice {a}..{b} of {}", self.len);
        MappedBytes { map: self.map.clone(), start: self.start + a, len: b - a }
    }
}

impl Deref for MappedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for MappedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedBytes({} bytes at offset {})", self.len, self.start)
    }
}

/// Bytes either owned or mapped from a checkpoint file.
#[derive(Clone, Debug)]
pub enum Bytes {
    Owned(Vec<u8>),
    Mapped(MappedBytes),
}

impl Bytes {
    pub fn is_mapped(&self) -> bool {
        matches!(self, Bytes::Mapped(_))
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes::Owned(v)
    }
}

/// Mapped little-endian f32 bytes that can be read in place as `[f32]`: the range starts on a
/// 4-byte boundary, its length is a multiple of 4, and the target is little-endian. The field
/// is private and [`MappedF32::new`] — which checks all three — is the only constructor, so no
/// safe code can build a misaligned view:
///
/// ```compile_fail
/// // Any byte range (say `bytes.slice(1, 5)`) used to be accepted here.
/// fn view(b: model::mapped::MappedBytes) -> model::mapped::Floats {
///     model::mapped::Floats::Mapped(b)
/// }
/// ```
#[derive(Clone, Debug)]
pub struct MappedF32(MappedBytes);

impl MappedF32 {
    /// `b` as f32 values in place, or `None` when it is misaligned, not a multiple of 4 bytes
    /// long, or the target is big-endian.
    pub fn new(b: MappedBytes) -> Option<Self> {
        let ok = cfg!(target_endian = "little")
            && (b.as_slice().as_ptr() as usize) % std::mem::align_of::<f32>() == 0
            && b.len % std::mem::size_of::<f32>() == 0;
        ok.then_some(MappedF32(b))
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &MappedBytes {
        &self.0
    }

    /// Length in bytes (4 × the number of values).
    pub fn byte_len(&self) -> usize {
        self.0.len
    }
}

impl Deref for MappedF32 {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        let b = self.0.as_slice();
        // SAFETY: `MappedF32::new`, the only constructor (the field is private and
        // `MappedBytes` ranges are immutable once built), checked that `b` starts 4-byte
        // aligned, holds a multiple of 4 bytes and that the target is little-endian; every
        // bit pattern is a valid f32; the map is read-only and kept alive by the `Arc` in
        // `self.0` for as long as the returned borrow of `self` lives.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len() / 4) }
    }
}

/// f32 values either owned or read in place from a mapped F32 tensor.
#[derive(Clone, Debug)]
pub enum Floats {
    Owned(Vec<f32>),
    /// Read in place (alignment and length checked by [`MappedF32::new`]).
    Mapped(MappedF32),
}

impl Floats {
    /// Little-endian f32 bytes as values: in place when aligned on a little-endian target,
    /// otherwise decoded into an owned copy.
    pub fn from_le_bytes(b: MappedBytes) -> Floats {
        match MappedF32::new(b.clone()) {
            Some(m) => Floats::Mapped(m),
            None => Floats::Owned(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, Floats::Mapped(_))
    }
}

impl Deref for Floats {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Floats::Owned(v) => v,
            Floats::Mapped(m) => m,
        }
    }
}

/// One stored tensor: dtype, stored shape and its bytes inside the mapped file.
#[derive(Clone, Debug)]
pub struct MappedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: MappedBytes,
    pub file: Arc<PathBuf>,
}

impl MappedTensor {
    fn err(&self, msg: String) -> ModelError {
        ModelError::Checkpoint(format!("{}: {msg}", self.file.display()))
    }

    /// The values decoded to an owned f32 vector (float dtypes, or UE8M0 scales).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let b = self.bytes.as_slice();
        Ok(match self.dtype {
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::F64 => {
                b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
            }
            Dtype::F8_E8M0 => b.iter().map(|&x| e8m0_to_f32(x)).collect(),
            other => return Err(self.err(format!("tensor `{name}` has dtype {other:?}, expected a float type"))),
        })
    }

    fn is_float(&self) -> bool {
        matches!(self.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16 | Dtype::F64 | Dtype::F8_E8M0)
    }

    fn to_i64(&self, name: &str) -> Result<Vec<i64>> {
        let b = self.bytes.as_slice();
        Ok(match self.dtype {
            Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
            Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
            Dtype::U32 => b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
            other => return Err(self.err(format!("tensor `{name}` has dtype {other:?}, expected I64/I32"))),
        })
    }
}

/// How one logical weight is stored (already checked against its logical shape).
#[derive(Clone, Copy, Debug)]
pub enum StoredWeight<'a> {
    /// F32, BF16, F16 or F64 values in the logical shape.
    Float(&'a MappedTensor),
    /// E4M3 bytes `[rows, cols]` with a 128×128-block scale tensor (UE8M0 or a float dtype).
    Fp8 { data: &'a MappedTensor, scale: &'a MappedTensor },
    /// Packed FP4 `[rows, cols/2]` with UE8M0 scales `[rows, cols/32]`.
    Fp4 { packed: &'a MappedTensor, scale: &'a MappedTensor },
}

/// Every tensor of a checkpoint, mapped and checked against its config.
pub struct MappedCheckpoint {
    pub config: Config,
    tensors: BTreeMap<String, MappedTensor>,
    files: Vec<PathBuf>,
    file_bytes: u64,
}

impl std::fmt::Debug for MappedCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedCheckpoint({} tensors in {} files)", self.tensors.len(), self.files.len())
    }
}

impl MappedCheckpoint {
    /// Map a checkpoint directory (or one safetensors file next to its `config.json`).
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = config_path(dir)?;
        let config = Config::from_file(&cfg_path)?;
        Self::open_with_config(dir, config)
    }

    /// Map the checkpoint files of `dir` and check them against `config`.
    pub fn open_with_config(dir: &Path, config: Config) -> Result<Self> {
        let files = checkpoint_files(dir)?;
        let mut tensors = BTreeMap::new();
        let mut file_bytes = 0u64;
        for file in &files {
            file_bytes += map_file(file, &mut tensors)?;
        }
        let ck = MappedCheckpoint { config, tensors, files, file_bytes };
        ck.check()?;
        Ok(ck)
    }

    /// The files mapped, in reading order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Total size of the mapped files.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// A stored tensor by official name.
    pub fn tensor(&self, name: &str) -> Result<&MappedTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::Checkpoint(format!("{}: missing tensor `{name}`", self.sources())))
    }

    /// The files read, for errors about a tensor none of them holds: the file, or the
    /// directory and the number of shards.
    fn sources(&self) -> String {
        match self.files.as_slice() {
            [one] => one.display().to_string(),
            many => {
                let dir = many.first().and_then(|f| f.parent()).map(|d| d.display().to_string()).unwrap_or_default();
                format!("{dir} ({} safetensors files)", many.len())
            }
        }
    }

    /// How the weight `name` of logical shape `shape` is stored, checked exactly as
    /// [`crate::checkpoint::load`] checks it.
    pub fn weight(&self, name: &str, shape: &[usize]) -> Result<StoredWeight<'_>> {
        let t = self.tensor(name)?;
        let file = t.file.display();
        let bad_shape = |got: &[usize], want: &[usize]| {
            ModelError::Checkpoint(format!("{file}: tensor `{name}` has shape {got:?}, expected {want:?}"))
        };
        match t.dtype {
            Dtype::F8_E4M3 => {
                let sname = scale_name(name);
                let scale = self
                    .tensors
                    .get(&sname)
                    .ok_or_else(|| ModelError::Checkpoint(format!("{file}: FP8 tensor `{name}` has no `{sname}`")))?;
                if t.shape != shape {
                    return Err(bad_shape(&t.shape, shape));
                }
                let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
                if !scale.is_float() {
                    return Err(
                        scale.err(format!("tensor `{sname}` has dtype {:?}, expected a float type", scale.dtype))
                    );
                }
                if scale.shape.len() != 2 || scale.shape[0] == 0 || scale.shape[1] == 0 {
                    return Err(ModelError::Checkpoint(format!("{file}: scale `{sname}` has shape {:?}", scale.shape)));
                }
                let want = [rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK)];
                if scale.shape != want {
                    return Err(ModelError::Checkpoint(format!(
                        "{file}: scale `{sname}` has shape {:?}; `{name}` {shape:?} in {FP8_BLOCK}×{FP8_BLOCK} blocks \
                         (partial edge blocks included) needs {want:?}",
                        scale.shape
                    )));
                }
                Ok(StoredWeight::Fp8 { data: t, scale })
            }
            Dtype::I8 | Dtype::U8 => {
                let sname = scale_name(name);
                let scale = self
                    .tensors
                    .get(&sname)
                    .ok_or_else(|| ModelError::Checkpoint(format!("{file}: FP4 tensor `{name}` has no `{sname}`")))?;
                let &[rows, cols] = shape else {
                    return Err(ModelError::Checkpoint(format!(
                        "{file}: packed FP4 tensor `{name}` stores a parameter of logical shape {shape:?}; \
                         FP4 needs a 2-D [out, in] weight"
                    )));
                };
                if cols % mxfp4::BLOCK != 0 {
                    return Err(ModelError::Checkpoint(format!(
                        "{file}: packed FP4 tensor `{name}` has logical shape {shape:?}: its input dimension {cols} \
                         is not a multiple of the MXFP4 block {}",
                        mxfp4::BLOCK
                    )));
                }
                let packed_shape = [rows, cols / 2];
                if t.shape != packed_shape {
                    return Err(ModelError::Checkpoint(format!(
                        "{file}: packed FP4 tensor `{name}` has shape {:?}, expected {packed_shape:?} (logical {shape:?})",
                        t.shape
                    )));
                }
                if scale.dtype != Dtype::F8_E8M0 && scale.dtype != Dtype::U8 {
                    return Err(ModelError::Checkpoint(format!(
                        "{file}: FP4 scale `{sname}` has dtype {:?}, expected F8_E8M0",
                        scale.dtype
                    )));
                }
                let want = [rows, cols / mxfp4::BLOCK];
                if scale.shape != want {
                    return Err(ModelError::Checkpoint(format!(
                        "{file}: FP4 scale `{sname}` has shape {:?}, expected {want:?}",
                        scale.shape
                    )));
                }
                Ok(StoredWeight::Fp4 { packed: t, scale })
            }
            _ => {
                if t.shape != shape {
                    return Err(bad_shape(&t.shape, shape));
                }
                if !t.is_float() {
                    return Err(t.err(format!("tensor `{name}` has dtype {:?}, expected a float type", t.dtype)));
                }
                Ok(StoredWeight::Float(t))
            }
        }
    }

    /// The weight `name` decoded to an owned f32 vector of its logical shape (small tensors:
    /// norms, biases, mHC, sinks).
    pub fn floats(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.weight(name, shape)? {
            StoredWeight::Float(t) => t.to_f32(name),
            StoredWeight::Fp8 { data, scale } => {
                let s = scale.to_f32(&scale_name(name))?;
                let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
                let blocks = crate::formats::fp8::Fp8Blocks {
                    rows,
                    cols,
                    block_rows: FP8_BLOCK,
                    block_cols: FP8_BLOCK,
                    data: data.bytes.to_vec(),
                    scales: Vec::new(),
                };
                Ok(blocks.dequantize_with(&s))
            }
            StoredWeight::Fp4 { packed, scale } => Ok(mxfp4::Mxfp4Matrix {
                rows: shape[0],
                cols: shape[1],
                packed: packed.bytes.to_vec(),
                scales: scale.bytes.to_vec(),
            }
            .dequantize()),
        }
    }

    /// The hash-routing table of layer `l` (`[vocab, n_activated_experts]`).
    pub fn tid2eid(&self, l: usize) -> Result<Vec<u32>> {
        let cfg = &self.config;
        let name = format!("layers.{l}.ffn.gate.tid2eid");
        let t = self.tensor(&name)?;
        let want = [cfg.vocab_size, cfg.n_activated_experts];
        if t.shape != want {
            return Err(t.err(format!("tensor `{name}` has shape {:?}, expected {want:?}", t.shape)));
        }
        let v = t.to_i64(&name)?;
        if let Some(bad) = v.iter().find(|&&e| e < 0 || e as usize >= cfg.n_routed_experts) {
            return Err(ModelError::Checkpoint(format!(
                "`{name}` names expert {bad}, but there are {}",
                cfg.n_routed_experts
            )));
        }
        Ok(v.into_iter().map(|e| e as u32).collect())
    }

    /// Every parameter present and well-formed, every hash table valid, nothing else stored
    /// (MTP copies of the shared embedding/head are tolerated, as in `checkpoint::load`).
    fn check(&self) -> Result<()> {
        let mut used = BTreeSet::new();
        for (name, shape) in self.config.param_shapes() {
            if !matches!(self.weight(&name, &shape)?, StoredWeight::Float(_)) {
                used.insert(scale_name(&name));
            }
            used.insert(name);
        }
        for l in 0..self.config.n_hash_layers.min(self.config.n_layers) {
            self.tid2eid(l)?;
            used.insert(format!("layers.{l}.ffn.gate.tid2eid"));
        }
        let extra = self.tensors.iter().find(|(k, _)| {
            !used.contains(k.as_str()) && !(k.starts_with("mtp.") && (k.contains("emb") || k.ends_with("head.weight")))
        });
        if let Some((name, t)) = extra {
            return Err(t.err(format!("unexpected tensor `{name}` (not part of this config)")));
        }
        Ok(())
    }
}

/// Map `file` and add its tensors (by official name) to `out`; returns the file size.
fn map_file(file: &Path, out: &mut BTreeMap<String, MappedTensor>) -> Result<u64> {
    let f = std::fs::File::open(file).map_err(|e| ModelError::io(file, e))?;
    let len = f.metadata().map_err(|e| ModelError::io(file, e))?.len();
    if len < 8 {
        return Err(ModelError::Checkpoint(format!(
            "{}: not a valid safetensors file ({len} bytes, shorter than its 8-byte header length)",
            file.display()
        )));
    }
    // SAFETY: the map is read-only. Its bytes are only ever read through `MappedBytes`
    // (bounds-checked ranges); see the module header about writers changing mapped files.
    let map = Arc::new(unsafe { Mmap::map(&f) }.map_err(|e| ModelError::io(file, e))?);
    let (header_len, meta) = match safetensors::SafeTensors::read_metadata(&map[..]) {
        Ok(v) => v,
        Err(e) => {
            let why = truncated_tensor(&map).map(|t| format!("; {t}")).unwrap_or_default();
            return Err(ModelError::Checkpoint(format!("{}: not a valid safetensors file ({e}){why}", file.display())));
        }
    };
    let data_start = 8 + header_len;
    let path = Arc::new(file.to_path_buf());
    for (name, info) in meta.tensors() {
        let off = official_name(&name);
        if out.contains_key(&off) {
            return Err(ModelError::Checkpoint(format!("{}: tensor `{off}` appears twice", file.display())));
        }
        let (a, b) = info.data_offsets;
        let bytes = MappedBytes::new(map.clone(), data_start + a, b.saturating_sub(a)).ok_or_else(|| {
            ModelError::Checkpoint(format!("{}: tensor `{name}` lies outside the file", file.display()))
        })?;
        out.insert(off, MappedTensor { dtype: info.dtype, shape: info.shape.clone(), bytes, file: path.clone() });
    }
    Ok(len)
}

/// For a file whose header parses but whose data is short: the first tensor (by end offset)
/// whose bytes run past the end of the file.
fn truncated_tensor(map: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(map.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(map.get(8..8usize.checked_add(n)?)?).ok()?;
    let data_len = map.len() - 8 - n;
    let mut ends: Vec<(u64, u64, &str)> = header
        .as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(k, v)| {
            let o = v.get("data_offsets")?.as_array()?;
            Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?, k.as_str()))
        })
        .collect();
    ends.sort_by_key(|&(_, end, _)| end);
    let (a, b, name) = ends.into_iter().find(|&(_, end, _)| end as usize > data_len)?;
    Some(format!("tensor `{name}` (data bytes {a}..{b}) is cut off: the file holds {data_len} data bytes (truncated)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_f32_bytes_are_copied_aligned_ones_viewed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        let vals: Vec<u8> = [1.5f32, -2.0, 3.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut bytes = vec![0u8; 1];
        bytes.extend(&vals);
        std::fs::write(&p, &bytes).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let map = Arc::new(unsafe { Mmap::map(&f) }.unwrap());
        let unaligned = Floats::from_le_bytes(MappedBytes::new(map.clone(), 1, 12).unwrap());
        assert!(!unaligned.is_mapped());
        assert_eq!(&unaligned[..], &[1.5, -2.0, 3.25]);
        assert!(MappedBytes::new(map, 1, 13).is_none(), "ranges past the end are refused");
    }

    /// The only way to an in-place `[f32]` view checks alignment and length, so a
    /// misaligned sub-range of mapped bytes cannot become one.
    #[test]
    fn mapped_f32_views_are_only_built_from_aligned_whole_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        let vals = [1.5f32, -2.0, 3.25, 8.0];
        std::fs::write(&p, vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let map = Arc::new(unsafe { Mmap::map(&f) }.unwrap());
        let all = MappedBytes::new(map, 0, 16).unwrap();
        let whole = MappedF32::new(all.clone()).expect("a mapping starts page-aligned");
        assert_eq!(&whole[..], &vals);
        assert_eq!(whole.byte_len(), 16);
        let tail = MappedF32::new(all.slice(4, 12)).expect("aligned sub-range");
        assert_eq!(&tail[..], &vals[1..3]);
        for (a, b) in [(1, 5), (2, 10), (3, 15), (0, 6), (4, 7)] {
            assert!(MappedF32::new(all.slice(a, b)).is_none(), "{a}..{b} must be refused");
            let copied = Floats::from_le_bytes(all.slice(a, b));
            assert!(!copied.is_mapped(), "{a}..{b} is decoded into an owned copy");
            assert_eq!(copied.len(), (b - a) / 4);
        }
        assert!(Floats::from_le_bytes(all.slice(8, 16)).is_mapped());
    }
}
