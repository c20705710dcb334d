//! Safetensors checkpoints in the official DeepSeek-V4 layout.
//!
//! Reading accepts: one `model.safetensors`, a sharded set described by
//! `model.safetensors.index.json`, or every `*.safetensors` of a directory; official names
//! (`layers.N.attn.wq_a.weight`) or the Hugging Face ones (`model.layers.N.self_attn.q_a_proj.weight`,
//! `weight_scale_inv`, `e_score_correction_bias`, ...). Dtypes: F32/BF16/F16; F8_E4M3 with a
//! `.scale` (F8_E8M0 or F32) of 128×128 blocks; packed FP4 (I8/U8 `[out, in/2]`) with a
//! F8_E8M0 `.scale` `[out, in/32]`; `tid2eid` as I64/I32. Every problem names the file and
//! tensor: missing, unexpected, wrongly shaped or typed, truncated or corrupt. Index
//! `weight_map` entries must be plain file names inside the checkpoint directory.
//!
//! Writing offers [`SaveFormat::F32`] (exact training state), [`SaveFormat::Rollout`] (f32 plus
//! packed FP4 routed experts — what the sampler runs) and [`SaveFormat::Official`] (the
//! released dtypes: FP8 projections, FP4 experts, BF16 norms/embeddings, F32 mHC).

use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::formats::{e8m0_to_f32, fp8, mxfp4, mxfp4::Mxfp4Matrix};
use crate::mapped::{MappedCheckpoint, StoredWeight};
use crate::weights::{ModelWeights, Tensor32};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// How to store a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    /// Every float tensor as F32: bit-exact training state.
    F32,
    /// F32, except routed experts as packed MXFP4 (I8 + F8_E8M0 scales).
    Rollout,
    /// The released layout: FP8 E4M3 projections with 128×128 UE8M0 scales, FP4 experts,
    /// BF16 embeddings/head/norms/gates/compressors, F32 mHC, sinks, `ape` and biases.
    Official,
}

impl std::str::FromStr for SaveFormat {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(SaveFormat::F32),
            "rollout" => Ok(SaveFormat::Rollout),
            "official" => Ok(SaveFormat::Official),
            o => Err(ModelError::Input(format!("unknown checkpoint format `{o}` (f32, rollout, official)"))),
        }
    }
}

/// Block edge of the official FP8 weight scales (`weight_block_size: [128, 128]`).
pub const FP8_BLOCK: usize = 128;

pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";
pub(crate) const SINGLE_FILE: &str = "model.safetensors";

/// Shard size [`save`] uses when none is given (Hugging Face's default, 4 GiB): larger
/// checkpoints are split into `model-0000i-of-0000n.safetensors` plus an index.
pub const DEFAULT_MAX_SHARD_BYTES: usize = 4 << 30;

/// One stored tensor, copied out of its file.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
    file: PathBuf,
}

/// Map a Hugging Face tensor name to the official inference name (identity for official names).
pub fn official_name(name: &str) -> String {
    let mut n = name.strip_prefix("model.").unwrap_or(name).to_string();
    for (from, to) in
        [("self_attn", "attn"), ("mlp", "ffn"), ("weight_scale_inv", "scale"), ("e_score_correction_bias", "bias")]
    {
        n = n.replace(from, to);
    }
    let mut parts: Vec<String> = n.split('.').map(str::to_string).collect();
    for p in parts.iter_mut() {
        let mapped = match p.as_str() {
            "embed_tokens" => "embed",
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            "q_a_proj" => "wq_a",
            "q_a_layernorm" => "q_norm",
            "q_b_proj" => "wq_b",
            "kv_a_layernorm" => "kv_norm",
            "gate_proj" => "w1",
            "down_proj" => "w2",
            "up_proj" => "w3",
            "lm_head" => "head",
            _ => continue,
        };
        *p = mapped.to_string();
    }
    parts.join(".")
}

/// The safetensors files a checkpoint (a directory, or one file) is read from: the files of
/// its index, its `model.safetensors`, or every `*.safetensors` of the directory.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    if !dir.is_dir() {
        return Err(ModelError::Checkpoint(format!("{}: no such checkpoint directory", dir.display())));
    }
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Checkpoint(format!("{}: invalid JSON: {e}", index.display())))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Checkpoint(format!("{}: no `weight_map` object", index.display())))?;
        let mut files = Vec::with_capacity(map.len());
        for (tensor, f) in map {
            let f = f.as_str().ok_or_else(|| {
                ModelError::Checkpoint(format!("{}: `weight_map` entry `{tensor}` is not a file name", index.display()))
            })?;
            check_shard_name(&index, tensor, f)?;
            files.push(f.to_string());
        }
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::Checkpoint(format!("{}: no *.safetensors files", dir.display())));
    }
    Ok(files)
}

/// A `weight_map` file name must be a plain file name inside the checkpoint directory: not
/// empty, not absolute, no path separator, not `.` or `..`.
fn check_shard_name(index: &Path, tensor: &str, file: &str) -> Result<()> {
    let plain = !file.is_empty()
        && file != "."
        && file != ".."
        && !file.contains(['/', '\\'])
        && !Path::new(file).is_absolute()
        && Path::new(file).file_name().is_some_and(|n| n == file);
    if plain {
        return Ok(());
    }
    Err(ModelError::Checkpoint(format!(
        "{}: `weight_map` entry `{tensor}` names file `{file}`; shard names must be plain file names \
         inside the checkpoint directory (no path separators, `..` or absolute paths)",
        index.display()
    )))
}

/// The stored tensors of `files` whose official name passes `keep`, copied out of their files
/// (only those are touched: the files are memory-mapped).
fn read_raw_where(files: &[PathBuf], keep: impl Fn(&str) -> bool) -> Result<BTreeMap<String, Raw>> {
    let mut out = BTreeMap::new();
    for file in files {
        let f = std::fs::File::open(file).map_err(|e| ModelError::io(file, e))?;
        // SAFETY: the file is only read; a concurrent writer could change the bytes under us,
        // which would at worst give wrong values or a parse error, never memory unsafety of our own data
        // (everything is copied out below before the map is dropped).
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ModelError::io(file, e))?;
        let st = safetensors::SafeTensors::deserialize(&mmap)
            .map_err(|e| ModelError::Checkpoint(format!("{}: not a valid safetensors file ({e})", file.display())))?;
        for name in st.names() {
            let off = official_name(name);
            if !keep(&off) {
                continue;
            }
            if out.contains_key(&off) {
                return Err(ModelError::Checkpoint(format!("{}: tensor `{off}` appears twice", file.display())));
            }
            let view = st
                .tensor(name)
                .map_err(|e| ModelError::Checkpoint(format!("{}: tensor `{name}`: {e}", file.display())))?;
            let raw = Raw {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
                file: file.clone(),
            };
            out.insert(off, raw);
        }
    }
    Ok(out)
}

fn floats(raw: &Raw, name: &str) -> Result<Vec<f32>> {
    let b = &raw.bytes;
    Ok(match raw.dtype {
        Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
        Dtype::F8_E8M0 => b.iter().map(|&x| e8m0_to_f32(x)).collect(),
        other => {
            return Err(ModelError::Checkpoint(format!(
                "{}: tensor `{name}` has dtype {other:?}, expected a float type",
                raw.file.display()
            )))
        }
    })
}

pub(crate) fn scale_name(weight_name: &str) -> String {
    match weight_name.strip_suffix(".weight") {
        Some(stem) => format!("{stem}.scale"),
        None => format!("{weight_name}.scale"),
    }
}

/// Decode one logical weight, consuming its scale if it is quantised.
fn decode_weight(
    name: &str,
    shape: &[usize],
    raws: &mut BTreeMap<String, Raw>,
) -> Result<(Vec<f32>, Option<Mxfp4Matrix>)> {
    let raw = raws.remove(name).ok_or_else(|| ModelError::Checkpoint(format!("missing tensor `{name}`")))?;
    let file = raw.file.display().to_string();
    match raw.dtype {
        Dtype::F8_E4M3 => {
            let sname = scale_name(name);
            let scale = raws
                .remove(&sname)
                .ok_or_else(|| ModelError::Checkpoint(format!("{file}: FP8 tensor `{name}` has no `{sname}`")))?;
            if raw.shape != shape {
                return Err(ModelError::Checkpoint(format!(
                    "{file}: tensor `{name}` has shape {:?}, expected {:?}",
                    raw.shape, shape
                )));
            }
            let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
            let s = floats(&scale, &sname)?;
            if scale.shape.len() != 2 || scale.shape[0] == 0 || scale.shape[1] == 0 {
                return Err(ModelError::Checkpoint(format!("{file}: scale `{sname}` has shape {:?}", scale.shape)));
            }
            // The official format fixes the block at 128×128; edge blocks are partial, so the
            // block size cannot be recovered from the shapes (a 192-row weight has 2 scale rows:
            // 128 + 64, not 96 + 96).
            let want_scale = [rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK)];
            if scale.shape != want_scale {
                return Err(ModelError::Checkpoint(format!(
                    "{file}: scale `{sname}` has shape {:?}; `{name}` {:?} in {FP8_BLOCK}×{FP8_BLOCK} blocks \
                     (partial edge blocks included) needs {:?}",
                    scale.shape, shape, want_scale
                )));
            }
            let blocks = fp8::Fp8Blocks {
                rows,
                cols,
                block_rows: FP8_BLOCK,
                block_cols: FP8_BLOCK,
                data: raw.bytes,
                scales: Vec::new(),
            };
            Ok((blocks.dequantize_with(&s), None))
        }
        Dtype::I8 | Dtype::U8 => {
            // Packed FP4: [out, in/2] bytes + UE8M0 [out, in/32].
            let sname = scale_name(name);
            let scale = raws
                .remove(&sname)
                .ok_or_else(|| ModelError::Checkpoint(format!("{file}: FP4 tensor `{name}` has no `{sname}`")))?;
            if shape.len() == 2 && shape[1] % mxfp4::BLOCK != 0 {
                return Err(ModelError::Checkpoint(format!(
                    "{file}: packed FP4 tensor `{name}` has logical shape {shape:?}: its input dimension {} \
                     is not a multiple of the MXFP4 block {}",
                    shape[1],
                    mxfp4::BLOCK
                )));
            }
            if shape.len() != 2 || raw.shape != [shape[0], shape[1] / 2] {
                return Err(ModelError::Checkpoint(format!(
                    "{file}: packed FP4 tensor `{name}` has shape {:?}, expected {:?} (logical {:?})",
                    raw.shape,
                    [shape[0], shape[1] / 2],
                    shape
                )));
            }
            if scale.dtype != Dtype::F8_E8M0 && scale.dtype != Dtype::U8 {
                return Err(ModelError::Checkpoint(format!(
                    "{file}: FP4 scale `{sname}` has dtype {:?}, expected F8_E8M0",
                    scale.dtype
                )));
            }
            if scale.shape != [shape[0], shape[1] / mxfp4::BLOCK] {
                return Err(ModelError::Checkpoint(format!(
                    "{file}: FP4 scale `{sname}` has shape {:?}, expected {:?}",
                    scale.shape,
                    [shape[0], shape[1] / 32]
                )));
            }
            let m = Mxfp4Matrix { rows: shape[0], cols: shape[1], packed: raw.bytes, scales: scale.bytes };
            Ok((m.dequantize(), Some(m)))
        }
        _ => {
            if raw.shape != shape {
                return Err(ModelError::Checkpoint(format!(
                    "{file}: tensor `{name}` has shape {:?}, expected {:?}",
                    raw.shape, shape
                )));
            }
            Ok((floats(&raw, name)?, None))
        }
    }
}

/// Load `config.json` and the weights of a checkpoint directory (or one safetensors file
/// together with a config).
pub fn load(dir: &Path) -> Result<ModelWeights> {
    let config = Config::from_file(&config_path(dir)?)?;
    load_with_config(dir, config)
}

/// The `config.json` of a checkpoint directory, or the one next to a single safetensors file.
pub(crate) fn config_path(dir: &Path) -> Result<PathBuf> {
    if !dir.exists() {
        return Err(ModelError::Checkpoint(format!("{}: no such checkpoint directory", dir.display())));
    }
    let cfg_path = if dir.is_file() { dir.with_file_name("config.json") } else { dir.join("config.json") };
    if !cfg_path.exists() {
        return Err(ModelError::Checkpoint(format!(
            "{}: missing config.json",
            cfg_path.parent().unwrap_or(dir).display()
        )));
    }
    Ok(cfg_path)
}

/// [`load`] with a config given: the files are memory-mapped and checked as a whole by
/// [`MappedCheckpoint`] (same acceptance and errors), then each parameter is decoded to f32
/// straight from the mapped bytes — no intermediate copy of the stored tensors, so the peak
/// is the f32 weights plus the pages of the file being read. Packed FP4 experts are also
/// kept as stored ([`ModelWeights::fp4`], 4.25 bits per weight: about 13 % on top of their
/// f32 copy) so that engines built from these weights and re-saved checkpoints keep the
/// exact bytes.
pub fn load_with_config(dir: &Path, config: Config) -> Result<ModelWeights> {
    let ck = MappedCheckpoint::open_with_config(dir, config)?;
    let mut tensors = BTreeMap::new();
    let mut fp4 = BTreeMap::new();
    for (name, shape) in ck.config.param_shapes() {
        if let StoredWeight::Fp4 { packed, scale } = ck.weight(&name, &shape)? {
            let m = Mxfp4Matrix {
                rows: shape[0],
                cols: shape[1],
                packed: packed.bytes.to_vec(),
                scales: scale.bytes.to_vec(),
            };
            tensors.insert(name.clone(), Tensor32::new(shape, m.dequantize()));
            fp4.insert(name, m);
            continue;
        }
        let data = ck.floats(&name, &shape)?;
        tensors.insert(name, Tensor32::new(shape, data));
    }
    let mut tid2eid = BTreeMap::new();
    for l in 0..ck.config.n_hash_layers.min(ck.config.n_layers) {
        tid2eid.insert(l, ck.tid2eid(l)?);
    }
    let w = ModelWeights { config: ck.config.clone(), tensors, tid2eid, fp4 };
    w.validate()?;
    Ok(w)
}

/// Only the named tensors of a checkpoint (a directory, or one safetensors file), decoded
/// to f32, keyed by official name (Hugging Face names in the files are mapped). The files
/// are memory-mapped and only their headers parsed: no other tensor is copied or decoded,
/// and no `config.json` is needed. Shapes are the stored ones, except packed FP4 weights,
/// which come back as their logical `[out, in]`; FP8 and FP4 weights take their `.scale`.
pub fn load_tensors(dir: &Path, names: &[&str]) -> Result<BTreeMap<String, Tensor32>> {
    let mut wanted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    wanted.sort();
    wanted.dedup();
    let with_scales: std::collections::HashSet<String> =
        wanted.iter().flat_map(|n| [n.clone(), scale_name(n)]).collect();
    let mut raws = read_raw_where(&checkpoint_files(dir)?, |n| with_scales.contains(n))?;
    let mut out = BTreeMap::new();
    for name in wanted {
        let raw =
            raws.get(&name).ok_or_else(|| ModelError::Checkpoint(format!("{}: no tensor `{name}`", dir.display())))?;
        let shape = stored_logical_shape(raw);
        let (data, _) = decode_weight(&name, &shape, &mut raws)?;
        out.insert(name, Tensor32::new(shape, data));
    }
    Ok(out)
}

/// The logical shape of a stored weight: packed FP4 `[out, in/2]` bytes hold `[out, in]`.
fn stored_logical_shape(raw: &Raw) -> Vec<usize> {
    match (raw.dtype, raw.shape.as_slice()) {
        (Dtype::I8 | Dtype::U8, &[rows, half_cols]) => vec![rows, half_cols * 2],
        _ => raw.shape.clone(),
    }
}

/// An owned tensor ready to be written.
struct Out {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()
}

/// Which stored dtype a parameter gets in the official layout.
pub(crate) fn official_kind(name: &str) -> &'static str {
    if ModelWeights::is_routed_expert(name) {
        "fp4"
    } else if name.ends_with("wq_a.weight")
        || name.ends_with("wq_b.weight")
        || name.ends_with("attn.wkv.weight")
        || name.ends_with("wo_a.weight")
        || name.ends_with("wo_b.weight")
        || name.contains("shared_experts.")
        || name.ends_with("e_proj.weight")
        || name.ends_with("h_proj.weight")
    {
        "fp8"
    } else if name.contains("hc_")
        || name.ends_with("attn_sink")
        || name.ends_with(".ape")
        || name.ends_with("gate.bias")
    {
        "f32"
    } else {
        "bf16"
    }
}

fn encode(w: &ModelWeights, format: SaveFormat) -> Result<BTreeMap<String, Out>> {
    let mut out = BTreeMap::new();
    for (name, t) in &w.tensors {
        let kind = match format {
            SaveFormat::F32 => "f32",
            SaveFormat::Rollout => {
                if ModelWeights::is_routed_expert(name) {
                    "fp4"
                } else {
                    "f32"
                }
            }
            SaveFormat::Official => official_kind(name),
        };
        match kind {
            "fp4" => {
                let (rows, cols) = (t.shape[0], t.shape[1]);
                let m = match w.fp4.get(name) {
                    // Keep the exact bytes we loaded when the values did not change.
                    Some(m) if m.dequantize() == t.data => m.clone(),
                    _ => Mxfp4Matrix::quantize(&t.data, rows, cols, mxfp4::ScaleRule::DeepSeekCeil),
                };
                out.insert(name.clone(), Out { dtype: Dtype::I8, shape: vec![rows, cols / 2], bytes: m.packed });
                out.insert(
                    scale_name(name),
                    Out { dtype: Dtype::F8_E8M0, shape: vec![rows, cols / mxfp4::BLOCK], bytes: m.scales },
                );
            }
            "fp8" => {
                let (rows, cols) = (t.shape[0], t.shape[1]);
                let q = fp8::quantize_blocks(&t.data, rows, cols, FP8_BLOCK, FP8_BLOCK, 0.0);
                let sshape = vec![rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK)];
                out.insert(name.clone(), Out { dtype: Dtype::F8_E4M3, shape: t.shape.clone(), bytes: q.data });
                out.insert(scale_name(name), Out { dtype: Dtype::F8_E8M0, shape: sshape, bytes: q.scales });
            }
            "bf16" => {
                out.insert(
                    name.clone(),
                    Out { dtype: Dtype::BF16, shape: t.shape.clone(), bytes: bf16_bytes(&t.data) },
                );
            }
            _ => {
                out.insert(name.clone(), Out { dtype: Dtype::F32, shape: t.shape.clone(), bytes: f32_bytes(&t.data) });
            }
        }
    }
    for (l, table) in &w.tid2eid {
        let bytes = table.iter().flat_map(|&e| (e as i64).to_le_bytes()).collect();
        out.insert(
            format!("layers.{l}.ffn.gate.tid2eid"),
            Out { dtype: Dtype::I64, shape: vec![w.config.vocab_size, w.config.n_activated_experts], bytes },
        );
    }
    Ok(out)
}

/// Write `config.json` and the weights into `dir` (created if needed). Files are written
/// under temporary names and renamed, so a reader never sees a half-written checkpoint file.
/// Tensors are split over `model-0000i-of-0000n.safetensors` plus an index once a shard would
/// exceed `max_shard_bytes` ([`DEFAULT_MAX_SHARD_BYTES`] when `None`). Afterwards every other
/// `model.safetensors`, `model-*-of-*.safetensors` or index in `dir` is deleted, so loaders
/// that prefer one layout never read the previous weights.
pub fn save(w: &ModelWeights, dir: &Path, format: SaveFormat, max_shard_bytes: Option<usize>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tensors = encode(w, format)?;
    let max = max_shard_bytes.unwrap_or(DEFAULT_MAX_SHARD_BYTES);
    let mut shards: Vec<Vec<(&String, &Out)>> = vec![vec![]];
    let mut size = 0usize;
    for (name, t) in &tensors {
        if size > 0 && size + t.bytes.len() > max {
            shards.push(vec![]);
            size = 0;
        }
        size += t.bytes.len();
        if let Some(last) = shards.last_mut() {
            last.push((name, t));
        }
    }
    let n = shards.len();
    let meta = metadata(&w.config);
    let mut weight_map = serde_json::Map::new();
    let mut written = Vec::with_capacity(n);
    for (i, shard) in shards.iter().enumerate() {
        let fname =
            if n == 1 { SINGLE_FILE.to_string() } else { format!("model-{:05}-of-{:05}.safetensors", i + 1, n) };
        let views: Vec<(String, TensorView)> = shard
            .iter()
            .map(|(name, t)| {
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                    .map(|v| ((*name).clone(), v))
                    .map_err(|e| ModelError::Checkpoint(format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<_>>()?;
        for (name, _) in shard {
            weight_map.insert((*name).clone(), serde_json::Value::String(fname.clone()));
        }
        let path = dir.join(&fname);
        let tmp = dir.join(format!(".{fname}.tmp"));
        serialize_to_file(views, Some(meta.clone()), &tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| ModelError::io(&path, e))?;
        written.push(fname);
    }
    if n > 1 {
        let total: usize = tensors.values().map(|t| t.bytes.len()).sum();
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_atomic(&dir.join(INDEX_FILE), serde_json::to_string_pretty(&index).unwrap_or_default().as_bytes())?;
        written.push(INDEX_FILE.to_string());
    }
    remove_stale_weight_files(dir, &written)?;
    let mut cfg = w.config.clone();
    if format == SaveFormat::Official {
        cfg.dtype = "fp8".into();
        cfg.expert_dtype = "fp4".into();
    }
    write_atomic(&dir.join("config.json"), cfg.to_json_pretty().as_bytes())
}

/// Whether `name` is one of the weight files [`save`] writes: `model.safetensors`, its index,
/// or a shard `model-<i>-of-<n>.safetensors`.
fn is_weight_file_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name == SINGLE_FILE
        || name == INDEX_FILE
        || name
            .strip_prefix("model-")
            .and_then(|r| r.strip_suffix(".safetensors"))
            .and_then(|r| r.split_once("-of-"))
            .is_some_and(|(i, n)| digits(i) && digits(n))
}

/// Delete the weight files of `dir` ([`is_weight_file_name`]) that are not in `keep`: after
/// switching between one file and shards (or to fewer shards), loaders that look for
/// `model.safetensors` or an index first must not find the previous weights.
fn remove_stale_weight_files(dir: &Path, keep: &[String]) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))? {
        let entry = entry.map_err(|e| ModelError::io(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if is_weight_file_name(&name) && !keep.contains(&name) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| ModelError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Safetensors `__metadata__` key that says what happened to the MTP block(s).
pub const MTP_METADATA_KEY: &str = "v4post.mtp";
/// Its value: v4post carries MTP weights over without training or running them.
pub const MTP_CARRIED_UNCHANGED: &str = "carried unchanged: v4post neither trains the MTP block(s) (no MTP loss) \
     nor uses them for speculative decoding; they are the starting checkpoint's weights";

/// The metadata written into every shard.
pub(crate) fn metadata(config: &Config) -> HashMap<String, String> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    if config.n_mtp_layers > 0 {
        meta.insert(MTP_METADATA_KEY.to_string(), MTP_CARRIED_UNCHANGED.to_string());
    }
    meta
}

/// The `__metadata__` of a checkpoint's first safetensors file.
pub fn read_metadata(dir: &Path) -> Result<HashMap<String, String>> {
    let files = checkpoint_files(dir)?;
    let Some(file) = files.first() else { return Ok(HashMap::new()) };
    // Only the header is read: `u64` length, then the JSON header.
    let bad = |m: &str| ModelError::Checkpoint(format!("{}: not a valid safetensors file ({m})", file.display()));
    let mut f = std::fs::File::open(file).map_err(|e| ModelError::io(file, e))?;
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut f, &mut len).map_err(|e| ModelError::io(file, e))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad("header larger than 100 MB"));
    }
    let mut header = vec![0u8; len as usize];
    std::io::Read::read_exact(&mut f, &mut header).map_err(|e| ModelError::io(file, e))?;
    let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(&e.to_string()))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default())
}

/// [`safetensors::serialize_to_file`] with the file mode a plain `File::create` gives
/// (`0666` less the umask). safetensors writes through a `tempfile` (mode `0600`) and renames
/// it into place, which would leave checkpoints and published policies unreadable to workers
/// running as another user whatever the umask; the mode of a probe file created at `path`
/// first is put back on the finished file.
pub fn serialize_to_file(
    views: Vec<(String, TensorView<'_>)>,
    meta: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    let umask_mode = std::fs::File::create(path)
        .and_then(|f| f.metadata())
        .map(|m| m.permissions())
        .map_err(|e| ModelError::io(path, e))?;
    safetensors::serialize_to_file(views, meta, path)
        .map_err(|e| ModelError::Checkpoint(format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(path, umask_mode).map_err(|e| ModelError::io(path, e))
}

/// Write a file through a temporary name and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map_to_official() {
        assert_eq!(official_name("model.layers.3.self_attn.q_a_proj.weight_scale_inv"), "layers.3.attn.wq_a.scale");
        assert_eq!(official_name("model.layers.0.mlp.experts.5.gate_proj.weight"), "layers.0.ffn.experts.5.w1.weight");
        assert_eq!(official_name("model.layers.4.mlp.gate.e_score_correction_bias"), "layers.4.ffn.gate.bias");
        assert_eq!(official_name("model.embed_tokens.weight"), "embed.weight");
        assert_eq!(official_name("lm_head.weight"), "head.weight");
        assert_eq!(official_name("layers.1.attn.wkv.weight"), "layers.1.attn.wkv.weight");
    }
}
