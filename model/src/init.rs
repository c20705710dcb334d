//! Random checkpoints of any config, written tensor by tensor (`v4post model init`).
//!
//! The output is exactly what [`ModelWeights::random`] followed by
//! [`checkpoint::save`](crate::checkpoint::save)`(.., SaveFormat::Official, ..)` writes — the
//! same tensors, dtypes, bytes, shard split and `config.json` — without ever holding the
//! model in memory (a 1.7B-parameter model is 6.8 GB as f32):
//!
//! 1. **Plan.** Every stored tensor's name, dtype, shape and byte length follow from the
//!    config alone: FP8 E4M3 projections `[r, c]` (`r·c` bytes) with a UE8M0 scale
//!    `[⌈r/128⌉, ⌈c/128⌉]`; packed FP4 routed experts `[r, c/2]` with a UE8M0 scale
//!    `[r, c/32]`; BF16 embeddings, head, norms, gates and compressors (2 bytes); F32 mHC,
//!    sinks, `ape` and gate biases (4 bytes); I64 `tid2eid` `[vocab, k]`. Shards are cut over
//!    the name-sorted tensors exactly as `save` cuts them, and each shard's header is the one
//!    the `safetensors` crate writes (tensors by descending dtype alignment, then name), so
//!    every tensor's file offset is known before any value is drawn.
//! 2. **Stream.** Each shard file is created at its final size with its header; then every
//!    parameter is drawn, quantised and written at its offset (`pwrite`), in parallel over
//!    parameters, so memory holds one f32 tensor per worker thread, never the model.
//!
//! Values match `random` bit for bit although parameters are drawn independently and out of
//! order. `random` draws one SplitMix64 stream in [`Config::param_shapes`] order; the
//! generator's state after `d` draws is `(seed ⊕ γ) + d·γ (mod 2⁶⁴)`
//! ([`SeededNormal::at_draw`]), and Box–Muller consumes draws in pairs, keeping the second
//! normal of a pair as a spare. A parameter of `n` normals that starts at draw `d` with
//! `s ∈ {0, 1}` spares pending uses the spare first, then `m = n − s` fresh normals: it ends
//! at draw `d + 2⌈m/2⌉` with a spare pending iff `m` is odd. A pending spare is rebuilt by
//! starting two draws earlier and drawing one normal. Constant parameters (norms, biases,
//! sinks, `ape`, mHC scale and base) draw nothing; the hash tables follow all parameters,
//! `vocab · k` draws each.
//!
//! Files appear under temporary names and are renamed once complete, then the index
//! (sharded checkpoints only) and `config.json` (`dtype: fp8`, `expert_dtype: fp4`) are
//! written: a reader never sees a half-written checkpoint. The output directory must be
//! empty or absent.

use crate::checkpoint::{metadata, official_kind, scale_name, write_atomic, FP8_BLOCK, INDEX_FILE, SINGLE_FILE};
use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::formats::{fp8, mxfp4, mxfp4::Mxfp4Matrix};
use crate::weights::{Init, ModelWeights, SeededNormal};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where a parameter's draws start in the seed's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamPos {
    /// `next_u64` calls made before this parameter.
    draws: u64,
    /// A Box–Muller spare normal is pending (and is this parameter's first value).
    spare: bool,
}

impl StreamPos {
    /// The position after `n` normals drawn from here.
    fn after_normals(self, n: u64) -> StreamPos {
        if n == 0 {
            return self;
        }
        let fresh = n - u64::from(self.spare);
        StreamPos { draws: self.draws.wrapping_add(2 * fresh.div_ceil(2)), spare: fresh % 2 == 1 }
    }

    /// The generator of `seed` at this position.
    fn generator(self, seed: u64) -> SeededNormal {
        if self.spare {
            let mut g = SeededNormal::at_draw(seed, self.draws.wrapping_sub(2));
            g.normal();
            g
        } else {
            SeededNormal::at_draw(seed, self.draws)
        }
    }
}

/// One float parameter and how to draw it.
#[derive(Debug)]
struct Param {
    name: String,
    shape: Vec<usize>,
    init: Init,
    start: StreamPos,
}

/// One stored tensor of the output.
#[derive(Debug, Clone)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: usize,
}

/// One output file.
#[derive(Debug)]
struct Shard {
    file: String,
    /// The `u64` header length, the JSON header and its space padding.
    prefix: Vec<u8>,
    /// Bytes after the prefix.
    data_bytes: u64,
}

/// Everything about a random checkpoint except its values: files, headers, offsets.
#[derive(Debug)]
pub struct InitPlan {
    config: Config,
    seed: u64,
    params: Vec<Param>,
    /// `(layer, first draw)` of each hash-routing table.
    tables: Vec<(usize, u64)>,
    shards: Vec<Shard>,
    /// Tensor name → (shard, absolute byte offset in its file).
    location: HashMap<String, (usize, u64)>,
    entries: BTreeMap<String, Entry>,
}

/// What [`InitPlan::write`] produced.
#[derive(Debug, Clone)]
pub struct InitSummary {
    /// The safetensors files, in shard order.
    pub files: Vec<PathBuf>,
    /// Bytes of all safetensors files (headers included).
    pub file_bytes: u64,
    pub tensors: usize,
    pub params: u64,
}

/// The stored tensors of parameter `name` in the official layout: name, dtype, shape, bytes.
fn official_entries(name: &str, shape: &[usize]) -> Vec<(String, Entry)> {
    let n: usize = shape.iter().product();
    let (rows, cols) = (shape.first().copied().unwrap_or(1), shape.get(1).copied().unwrap_or(1));
    let e = |dtype, shape: Vec<usize>, bytes| Entry { dtype, shape, bytes };
    match official_kind(name) {
        "fp4" => vec![
            (name.to_string(), e(Dtype::I8, vec![rows, cols / 2], n / 2)),
            (scale_name(name), e(Dtype::F8_E8M0, vec![rows, cols / mxfp4::BLOCK], n / mxfp4::BLOCK)),
        ],
        "fp8" => {
            let sshape = vec![rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK)];
            let sbytes = sshape[0] * sshape[1];
            vec![
                (name.to_string(), e(Dtype::F8_E4M3, shape.to_vec(), n)),
                (scale_name(name), e(Dtype::F8_E8M0, sshape, sbytes)),
            ]
        }
        "bf16" => vec![(name.to_string(), e(Dtype::BF16, shape.to_vec(), 2 * n))],
        _ => vec![(name.to_string(), e(Dtype::F32, shape.to_vec(), 4 * n))],
    }
}

/// Encode one parameter's values as [`official_entries`] lays them out (the encoding of
/// `checkpoint::save` with `SaveFormat::Official`).
fn encode_official(name: &str, shape: &[usize], data: &[f32]) -> Vec<(String, Vec<u8>)> {
    let (rows, cols) = (shape.first().copied().unwrap_or(1), shape.get(1).copied().unwrap_or(1));
    match official_kind(name) {
        "fp4" => {
            let m = Mxfp4Matrix::quantize(data, rows, cols, mxfp4::ScaleRule::DeepSeekCeil);
            vec![(name.to_string(), m.packed), (scale_name(name), m.scales)]
        }
        "fp8" => {
            let q = fp8::quantize_blocks(data, rows, cols, FP8_BLOCK, FP8_BLOCK, 0.0);
            vec![(name.to_string(), q.data), (scale_name(name), q.scales)]
        }
        "bf16" => vec![(name.to_string(), data.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect())],
        _ => vec![(name.to_string(), data.iter().flat_map(|x| x.to_le_bytes()).collect())],
    }
}

/// Split the name-sorted tensors into shards exactly as `checkpoint::save` does: a new shard
/// starts when a non-empty one would exceed `max_shard_bytes`.
fn cut_shards(entries: &BTreeMap<String, Entry>, max_shard_bytes: usize) -> Vec<Vec<&str>> {
    let mut shards: Vec<Vec<&str>> = vec![vec![]];
    let mut size = 0usize;
    for (name, e) in entries {
        if size > 0 && size.saturating_add(e.bytes) > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size = size.saturating_add(e.bytes);
        if let Some(last) = shards.last_mut() {
            last.push(name);
        }
    }
    shards
}

/// One shard's header bytes and where its tensors go.
struct ShardLayout {
    /// The `u64` header length, the JSON header and its padding.
    prefix: Vec<u8>,
    /// Each tensor's offset within the data section.
    offsets: Vec<(String, u64)>,
    data_bytes: u64,
}

/// The header of one shard as the `safetensors` crate writes it, and each tensor's offset
/// within the data section.
fn shard_header(
    names: &[&str],
    entries: &BTreeMap<String, Entry>,
    meta: &HashMap<String, String>,
) -> Result<ShardLayout> {
    let mut order: Vec<(&str, &Entry)> = names.iter().filter_map(|n| entries.get(*n).map(|e| (*n, e))).collect();
    order.sort_by(|(ln, l), (rn, r)| r.dtype.cmp(&l.dtype).then(ln.cmp(rn)));
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(order.len());
    let mut offsets = Vec::with_capacity(order.len());
    for (name, e) in order {
        infos.push((
            name.to_string(),
            TensorInfo { dtype: e.dtype, shape: e.shape.clone(), data_offsets: (offset, offset + e.bytes) },
        ));
        offsets.push((name.to_string(), offset as u64));
        offset += e.bytes;
    }
    let header = Metadata::new(Some(meta.clone()), infos)
        .map_err(|e| ModelError::Checkpoint(format!("safetensors header: {e}")))?;
    let mut json = serde_json::to_string(&header)
        .map_err(|e| ModelError::Checkpoint(format!("safetensors header: {e}")))?
        .into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut prefix = (json.len() as u64).to_le_bytes().to_vec();
    prefix.extend(json);
    Ok(ShardLayout { prefix, offsets, data_bytes: offset as u64 })
}

impl InitPlan {
    /// Lay out the random checkpoint of `config` (stored as FP8 + FP4, whatever its
    /// `dtype`/`expert_dtype` say) with draws from `seed`.
    pub fn new(config: &Config, seed: u64, max_shard_bytes: usize) -> Result<Self> {
        let mut config = config.clone();
        config.dtype = "fp8".into();
        config.expert_dtype = "fp4".into();
        config.validate()?;
        if max_shard_bytes == 0 {
            return Err(ModelError::Input("the maximum shard size must be positive".into()));
        }
        let out_scale = 1.0 / (2.0 * config.n_layers as f64).sqrt();
        let mut pos = StreamPos { draws: 0, spare: false };
        let mut params = Vec::new();
        let mut entries = BTreeMap::new();
        for (name, shape) in config.param_shapes() {
            let init = ModelWeights::init_rule(&name, &shape, out_scale);
            let start = pos;
            if let Init::Normal(_) = init {
                pos = pos.after_normals(shape.iter().map(|&d| d as u64).product());
            }
            entries.extend(official_entries(&name, &shape));
            params.push(Param { name, shape, init, start });
        }
        let (vocab, k) = (config.vocab_size, config.n_activated_experts);
        let mut tables = Vec::new();
        for l in 0..config.n_hash_layers.min(config.n_layers) {
            tables.push((l, pos.draws));
            pos.draws = pos.draws.wrapping_add((vocab * k) as u64);
            let e = Entry { dtype: Dtype::I64, shape: vec![vocab, k], bytes: 8 * vocab * k };
            entries.insert(tid2eid_name(l), e);
        }
        let meta = metadata(&config);
        let cut = cut_shards(&entries, max_shard_bytes);
        let n = cut.len();
        let mut shards = Vec::with_capacity(n);
        let mut location = HashMap::with_capacity(entries.len());
        for (i, names) in cut.iter().enumerate() {
            let file =
                if n == 1 { SINGLE_FILE.to_string() } else { format!("model-{:05}-of-{:05}.safetensors", i + 1, n) };
            let ShardLayout { prefix, offsets, data_bytes } = shard_header(names, &entries, &meta)?;
            for (name, off) in offsets {
                location.insert(name, (i, prefix.len() as u64 + off));
            }
            shards.push(Shard { file, prefix, data_bytes });
        }
        Ok(InitPlan { config, seed, params, tables, shards, location, entries })
    }

    /// The config written to `config.json`.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Bytes of all safetensors files, headers included.
    pub fn file_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.prefix.len() as u64 + s.data_bytes).sum()
    }

    /// Bytes of tensor data (what [`write`](Self::write) reports progress in).
    pub fn tensor_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.data_bytes).sum()
    }

    /// The safetensors file names, in shard order.
    pub fn file_names(&self) -> Vec<&str> {
        self.shards.iter().map(|s| s.file.as_str()).collect()
    }

    /// Float parameters (as [`ModelWeights::num_params`] counts them).
    pub fn num_params(&self) -> u64 {
        self.params.iter().map(|p| p.shape.iter().map(|&d| d as u64).product::<u64>()).sum()
    }

    /// Write the checkpoint into `dir` (created; it must be empty or absent). `progress` is
    /// called with the byte count of every tensor written (from worker threads).
    /// On failure the temporary files are removed.
    pub fn write(&self, dir: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<InitSummary> {
        prepare_empty_dir(dir)?;
        let tmp_paths: Vec<PathBuf> = self.shards.iter().map(|s| dir.join(format!(".{}.tmp", s.file))).collect();
        let written = self.write_files(dir, &tmp_paths, progress);
        if written.is_err() {
            for p in &tmp_paths {
                let _ = std::fs::remove_file(p);
            }
        }
        written
    }

    fn write_files(&self, dir: &Path, tmp_paths: &[PathBuf], progress: &(dyn Fn(u64) + Sync)) -> Result<InitSummary> {
        let mut files = Vec::with_capacity(self.shards.len());
        for (shard, path) in self.shards.iter().zip(tmp_paths) {
            let f = File::create(path).map_err(|e| ModelError::io(path, e))?;
            f.set_len(shard.prefix.len() as u64 + shard.data_bytes).map_err(|e| ModelError::io(path, e))?;
            f.write_all_at(&shard.prefix, 0).map_err(|e| ModelError::io(path, e))?;
            files.push(f);
        }
        let put = |name: &str, bytes: &[u8]| -> Result<()> {
            let want = self.entries.get(name).map(|e| e.bytes);
            let &(shard, offset) = self.location.get(name).filter(|_| want == Some(bytes.len())).ok_or_else(|| {
                ModelError::Checkpoint(format!("model init: tensor `{name}` does not match its plan"))
            })?;
            files[shard].write_all_at(bytes, offset).map_err(|e| ModelError::io(&tmp_paths[shard], e))?;
            progress(bytes.len() as u64);
            Ok(())
        };
        self.params.par_iter().try_for_each(|p| {
            for (name, bytes) in encode_official(&p.name, &p.shape, &self.values(p)) {
                put(&name, &bytes)?;
            }
            Ok::<(), ModelError>(())
        })?;
        self.tables.par_iter().try_for_each(|&(layer, draws)| {
            let mut g = SeededNormal::at_draw(self.seed, draws);
            let table = ModelWeights::random_hash_table(&self.config, &mut g);
            let bytes: Vec<u8> = table.iter().flat_map(|&e| i64::from(e).to_le_bytes()).collect();
            put(&tid2eid_name(layer), &bytes)
        })?;
        let mut out = Vec::with_capacity(files.len());
        for ((f, tmp), shard) in files.into_iter().zip(tmp_paths).zip(&self.shards) {
            drop(f);
            let path = dir.join(&shard.file);
            std::fs::rename(tmp, &path).map_err(|e| ModelError::io(&path, e))?;
            out.push(path);
        }
        if self.shards.len() > 1 {
            write_atomic(&dir.join(INDEX_FILE), self.index_json().as_bytes())?;
        }
        write_atomic(&dir.join("config.json"), self.config.to_json_pretty().as_bytes())?;
        Ok(InitSummary {
            files: out,
            file_bytes: self.file_bytes(),
            tensors: self.entries.len(),
            params: self.num_params(),
        })
    }

    /// One parameter's f32 values, bit-identical to [`ModelWeights::random`]'s.
    fn values(&self, p: &Param) -> Vec<f32> {
        let n: usize = p.shape.iter().product();
        match p.init {
            Init::Const(v) => vec![v; n],
            Init::Normal(std) => {
                let mut g = p.start.generator(self.seed);
                (0..n).map(|_| (g.normal() * std) as f32).collect()
            }
        }
    }

    /// `model.safetensors.index.json` as `save` writes it.
    fn index_json(&self) -> String {
        let mut weight_map = serde_json::Map::new();
        for name in self.entries.keys() {
            if let Some((shard, _)) = self.location.get(name) {
                weight_map.insert(name.clone(), serde_json::Value::String(self.shards[*shard].file.clone()));
            }
        }
        let total: usize = self.entries.values().map(|e| e.bytes).sum();
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        serde_json::to_string_pretty(&index).unwrap_or_default()
    }
}

fn tid2eid_name(layer: usize) -> String {
    format!("layers.{layer}.ffn.gate.tid2eid")
}

/// Create `dir`, or accept it if it is an empty directory; anything else is refused so that
/// no existing checkpoint or file is overwritten.
fn prepare_empty_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err(ModelError::Input(format!("{}: exists and is not a directory", dir.display())));
        }
        let mut it = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
        if let Some(first) = it.next() {
            let first = first.map_err(|e| ModelError::io(dir, e))?;
            return Err(ModelError::Input(format!(
                "{}: the output directory is not empty (it holds `{}`); model init writes a new \
                 checkpoint and never overwrites one: give an empty or new directory",
                dir.display(),
                first.file_name().to_string_lossy()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))
}

/// Write the random checkpoint of `config` and `seed` into the empty or new directory `dir`,
/// split into shards of at most `max_shard_bytes` (see the module header).
pub fn init_checkpoint(config: &Config, dir: &Path, seed: u64, max_shard_bytes: usize) -> Result<InitSummary> {
    InitPlan::new(config, seed, max_shard_bytes)?.write(dir, &|_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The jump-ahead positions reproduce one sequential stream, odd lengths included.
    #[test]
    fn stream_positions_match_a_sequential_stream() {
        let seed = 42;
        let lens = [3u64, 1, 4, 0, 5, 2, 7, 1, 1];
        let mut seq = SeededNormal::new(seed);
        let mut pos = StreamPos { draws: 0, spare: false };
        for n in lens {
            let want: Vec<f64> = (0..n).map(|_| seq.normal()).collect();
            let mut g = pos.generator(seed);
            let got: Vec<f64> = (0..n).map(|_| g.normal()).collect();
            assert_eq!(got, want, "length {n} at {pos:?}");
            pos = pos.after_normals(n);
        }
        assert_eq!(pos.generator(seed).next_u64(), seq.next_u64());
    }
}
