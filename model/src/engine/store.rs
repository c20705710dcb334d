//! Engine weights in their stored formats, and where they come from.
//!
//! A [`Store`] keeps a `[out, inp]` matrix as the checkpoint stores it — f32 (owned, or read
//! in place from a mapped F32 tensor), BF16 bytes, FP8 E4M3 bytes with 128×128 UE8M0 block
//! scales, or packed MXFP4 with one UE8M0 scale per 32 inputs — owned or memory-mapped.
//! Products `out[r, j] = Σ_k x[r, k] · W[j, k]` never materialise the whole f32 matrix:
//! * f32: [`kernels::matmul_f32`] on the slice as is;
//! * MXFP4, few rows: the packed kernel [`kernels::matmul_fp4_packed`];
//! * BF16 / FP8 (and MXFP4 with many rows): output rows are decoded to f32 on the fly,
//!   `W[j, k] = e4m3(q[j, k]) · s[⌊j/128⌋, ⌊k/128⌋]` (FP8), `bf16 → f32` by a 16-bit shift,
//!   `e2m1(code) · 2^(e−127)` (FP4). With few rows (decode) each weight row is decoded once
//!   into a row buffer and dotted with every input row by the same SIMD [`kernels::dot`] the
//!   f32 path uses, so results are bit-identical to decode-then-[`kernels::matmul_f32`].
//!   With many rows (prefill) a tile of [`TILE`] output rows — one FP8 row block — is decoded
//!   once and multiplied by a GEMM, then reused for all rows.
//!
//! [`Source`] abstracts the two origins: [`ModelWeights`] (f32 arrays, owned copies as
//! before) and [`MappedCheckpoint`] (views of the files).

use crate::checkpoint::FP8_BLOCK;
use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::formats::{e8m0_to_f32, fp8, mxfp4, mxfp4::Mxfp4Matrix};
use crate::kernels;
use crate::mapped::{Bytes, Floats, MappedCheckpoint, StoredWeight};
use crate::weights::ModelWeights;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Output rows decoded together for a many-rows product (one FP8 row block).
pub const TILE: usize = 128;

/// E4M3 byte → f32.
fn e4m3_lut() -> &'static [f32; 256] {
    static LUT: OnceLock<[f32; 256]> = OnceLock::new();
    LUT.get_or_init(|| {
        let mut t = [0f32; 256];
        for (b, v) in t.iter_mut().enumerate() {
            *v = fp8::e4m3_to_f32(b as u8);
        }
        t
    })
}

/// A `[out, inp]` matrix in its stored format.
pub(crate) enum Store {
    F32(Floats),
    Bf16(Bytes),
    /// E4M3 bytes with block scales `[⌈out/128⌉, ⌈inp/128⌉]` decoded to f32 (tiny).
    Fp8 {
        data: Bytes,
        scales: Vec<f32>,
    },
    /// Packed codes `[out, inp/2]` and UE8M0 scales `[out, inp/32]`.
    Fp4 {
        packed: Bytes,
        scales: Bytes,
    },
}

/// Bytes of weights held on the heap and mapped from checkpoint files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightMemory {
    /// Heap memory (owned copies and decoded f32).
    pub owned: usize,
    /// Read in place from memory-mapped checkpoint files (resident only when touched).
    pub mapped: usize,
}

impl std::ops::AddAssign for WeightMemory {
    fn add_assign(&mut self, o: Self) {
        self.owned += o.owned;
        self.mapped += o.mapped;
    }
}

impl WeightMemory {
    pub fn total(&self) -> usize {
        self.owned + self.mapped
    }
    pub(crate) fn vec(v: &[f32]) -> Self {
        WeightMemory { owned: 4 * v.len(), mapped: 0 }
    }
    fn bytes(b: &Bytes) -> Self {
        if b.is_mapped() {
            WeightMemory { owned: 0, mapped: b.len() }
        } else {
            WeightMemory { owned: b.len(), mapped: 0 }
        }
    }
}

impl Store {
    /// Decode output rows `j0..j1` of a matrix with `k` inputs into `dst[(j1−j0)·k]`.
    fn decode_rows(&self, k: usize, j0: usize, j1: usize, dst: &mut [f32]) {
        match self {
            Store::F32(w) => dst.copy_from_slice(&w[j0 * k..j1 * k]),
            Store::Bf16(b) => {
                for (d, c) in dst.iter_mut().zip(b[2 * j0 * k..2 * j1 * k].chunks_exact(2)) {
                    *d = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
                }
            }
            Store::Fp8 { data, scales } => {
                let lut = e4m3_lut();
                let sc = k.div_ceil(FP8_BLOCK);
                for (j, row) in (j0..j1).zip(dst.chunks_exact_mut(k)) {
                    let srow = &scales[(j / FP8_BLOCK) * sc..(j / FP8_BLOCK + 1) * sc];
                    let q = &data[j * k..(j + 1) * k];
                    for ((blk, qb), s) in row.chunks_mut(FP8_BLOCK).zip(q.chunks(FP8_BLOCK)).zip(srow) {
                        blk.iter_mut().zip(qb).for_each(|(d, &b)| *d = lut[b as usize] * s);
                    }
                }
            }
            // block by block: one scale per 32 values, two codes per byte
            Store::Fp4 { packed, scales } if k % mxfp4::BLOCK == 0 => {
                let (bpr, spr) = (k / 2, k / mxfp4::BLOCK);
                for (j, row) in (j0..j1).zip(dst.chunks_exact_mut(k)) {
                    let p = &packed[j * bpr..(j + 1) * bpr];
                    let s = &scales[j * spr..(j + 1) * spr];
                    for ((blk, pb), &sc) in
                        row.chunks_exact_mut(mxfp4::BLOCK).zip(p.chunks_exact(mxfp4::BLOCK / 2)).zip(s)
                    {
                        let scale = e8m0_to_f32(sc);
                        for (pair, &b) in blk.chunks_exact_mut(2).zip(pb) {
                            pair[0] = mxfp4::E2M1_LUT[(b & 0x0F) as usize] * scale;
                            pair[1] = mxfp4::E2M1_LUT[(b >> 4) as usize] * scale;
                        }
                    }
                }
            }
            Store::Fp4 { packed, scales } => {
                let (bpr, spr) = (k / 2, k / mxfp4::BLOCK);
                for (j, row) in (j0..j1).zip(dst.chunks_exact_mut(k)) {
                    let p = &packed[j * bpr..(j + 1) * bpr];
                    let s = &scales[j * spr..(j + 1) * spr];
                    for (i, d) in row.iter_mut().enumerate() {
                        let b = p[i / 2];
                        let code = if i % 2 == 0 { b & 0x0F } else { b >> 4 };
                        *d = mxfp4::E2M1_LUT[code as usize] * e8m0_to_f32(s[i / mxfp4::BLOCK]);
                    }
                }
            }
        }
    }

    fn memory(&self) -> WeightMemory {
        match self {
            Store::F32(Floats::Owned(v)) => WeightMemory::vec(v),
            Store::F32(Floats::Mapped(m)) => WeightMemory { owned: 0, mapped: m.byte_len() },
            Store::Bf16(b) => WeightMemory::bytes(b),
            Store::Fp8 { data, scales } => {
                let mut m = WeightMemory::bytes(data);
                m += WeightMemory::vec(scales);
                m
            }
            Store::Fp4 { packed, scales } => {
                let mut m = WeightMemory::bytes(packed);
                m += WeightMemory::bytes(scales);
                m
            }
        }
    }
}

/// `y = x · Wᵀ`, `W: [out, inp]`.
pub(crate) struct Linear {
    w: Store,
    pub out: usize,
    pub inp: usize,
    /// Stored FP8/FP4 in the checkpoint: its input is FP8-quantised under `act_fp8`.
    quantized_input: bool,
}

impl Linear {
    fn new(w: Store, shape: &[usize], name: &str, quantized_input: bool) -> Result<Self> {
        match *shape {
            [out, inp] => Ok(Linear { w, out, inp, quantized_input }),
            _ => Err(ModelError::Shape(format!("`{name}` must be 2-D, got {shape:?}"))),
        }
    }

    /// The matrix `name` as stored by `src`.
    pub fn load(src: &dyn Source, name: &str, quantized_input: bool) -> Result<Self> {
        let (store, shape) = src.store(name)?;
        Self::new(store, &shape, name, quantized_input)
    }

    /// A routed expert: packed MXFP4 (as stored, or quantised with the DeepSeek rule from
    /// f32) when `fp4`, otherwise f32 (a stored FP4 matrix is decoded).
    pub fn expert(src: &dyn Source, name: &str, fp4: bool) -> Result<Self> {
        let (store, shape) = src.store(name)?;
        let mut lin = Self::new(store, &shape, name, true)?;
        match (&lin.w, fp4) {
            (Store::Fp4 { .. }, true) => {}
            (Store::Fp4 { .. }, false) => lin.w = Store::F32(Floats::Owned(lin.decode_all())),
            (_, true) => {
                if lin.inp % mxfp4::BLOCK != 0 {
                    return Err(ModelError::Shape(format!(
                        "`{name}` has shape {shape:?}: FP4 experts need 2-D weights with an input dimension that is a multiple of {}; use f32 experts",
                        mxfp4::BLOCK
                    )));
                }
                let m = Mxfp4Matrix::quantize(&lin.decode_all(), lin.out, lin.inp, mxfp4::ScaleRule::DeepSeekCeil);
                lin.w = Store::Fp4 { packed: m.packed.into(), scales: m.scales.into() };
            }
            (_, false) => {}
        }
        Ok(lin)
    }

    fn decode_all(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out * self.inp];
        self.w.decode_rows(self.inp, 0, self.out, &mut w);
        w
    }

    /// Copy (decode) row `j` of the matrix into `dst[inp]` (embedding lookups).
    pub fn row_into(&self, j: usize, dst: &mut [f32]) {
        self.w.decode_rows(self.inp, j, j + 1, dst);
    }

    pub fn forward(&self, x: &[f32], rows: usize, num: super::Numerics) -> Vec<f32> {
        let mut out = vec![0f32; rows * self.out];
        let q;
        let x = if num.act_fp8 && self.quantized_input {
            let mut v = x[..rows * self.inp].to_vec();
            for row in v.chunks_mut(self.inp) {
                fp8::fake_quant(row, 128);
            }
            q = v;
            &q[..]
        } else {
            x
        };
        self.matmul_range(x, rows, 0, self.out, &mut out);
        out
    }

    /// `out[rows, j1−j0] = x[rows, inp] · W[j0..j1]ᵀ` (no activation quantisation).
    pub fn matmul_range(&self, x: &[f32], rows: usize, j0: usize, j1: usize, out: &mut [f32]) {
        let k = self.inp;
        match &self.w {
            Store::F32(w) => kernels::matmul_f32(x, rows, k, &w[j0 * k..j1 * k], j1 - j0, out),
            Store::Fp4 { packed, scales } if rows < kernels::GEMM_MIN_ROWS => kernels::matmul_fp4_packed(
                x,
                rows,
                j1 - j0,
                k,
                &packed[j0 * k / 2..j1 * k / 2],
                &scales[j0 * k / mxfp4::BLOCK..j1 * k / mxfp4::BLOCK],
                out,
            ),
            w => matmul_decoded(w, x, rows, k, j0, j1, out),
        }
    }

    pub fn memory(&self) -> WeightMemory {
        self.w.memory()
    }
}

/// Product with rows of `w` decoded on the fly (see the module header).
fn matmul_decoded(w: &Store, x: &[f32], rows: usize, k: usize, j0: usize, j1: usize, out: &mut [f32]) {
    let n = j1 - j0;
    assert!(x.len() >= rows * k && out.len() >= rows * n, "matmul_decoded: buffer too small");
    if rows == 0 || n == 0 {
        return;
    }
    let parallel = rows * n * k >= kernels::PAR_MIN_WORK && kernels::threads() > 1;
    if rows >= kernels::GEMM_MIN_ROWS {
        let tile = |t: usize| {
            let (a, b) = (j0 + t * TILE, (j0 + (t + 1) * TILE).min(j1));
            let mut wt = vec![0f32; (b - a) * k];
            w.decode_rows(k, a, b, &mut wt);
            let mut o = vec![0f32; rows * (b - a)];
            kernels::matmul_f32(x, rows, k, &wt, b - a, &mut o);
            o
        };
        let tiles = n.div_ceil(TILE);
        let outs: Vec<Vec<f32>> =
            if parallel { (0..tiles).into_par_iter().map(tile).collect() } else { (0..tiles).map(tile).collect() };
        for (t, o) in outs.iter().enumerate() {
            let (a, tn) = (t * TILE, o.len() / rows);
            for r in 0..rows {
                out[r * n + a..r * n + a + tn].copy_from_slice(&o[r * tn..(r + 1) * tn]);
            }
        }
        return;
    }
    // Few rows: decode each weight row once, dot it with every input row.
    let kernel = |n0: usize, n1: usize, dst: &mut [f32]| {
        let mut buf = vec![0f32; k];
        for j in n0..n1 {
            w.decode_rows(k, j0 + j, j0 + j + 1, &mut buf);
            for r in 0..rows {
                dst[(j - n0) * rows + r] = kernels::dot(&x[r * k..(r + 1) * k], &buf);
            }
        }
    };
    kernels::by_output_blocks(rows, n, parallel, out, kernel);
}

/// Where engine weights come from.
pub(crate) trait Source {
    fn config(&self) -> &Config;
    /// A matrix in the format it is held in, with its logical shape.
    fn store(&self, name: &str) -> Result<(Store, Vec<usize>)>;
    /// A small tensor as owned f32.
    fn vector(&self, name: &str) -> Result<Vec<f32>>;
    fn tid2eid(&self, layer: usize) -> Result<Vec<u32>>;
}

impl Source for ModelWeights {
    fn config(&self) -> &Config {
        &self.config
    }
    fn store(&self, name: &str) -> Result<(Store, Vec<usize>)> {
        if let Some(m) = self.fp4.get(name) {
            let store = Store::Fp4 { packed: m.packed.clone().into(), scales: m.scales.clone().into() };
            return Ok((store, vec![m.rows, m.cols]));
        }
        let t = self.get(name)?;
        Ok((Store::F32(Floats::Owned(t.data.clone())), t.shape.clone()))
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.get(name)?.data.clone())
    }
    fn tid2eid(&self, layer: usize) -> Result<Vec<u32>> {
        ModelWeights::tid2eid(self, layer).map(<[u32]>::to_vec)
    }
}

/// A mapped checkpoint with the logical shapes of its config's parameters.
pub(crate) struct MappedSource<'a> {
    pub ck: &'a MappedCheckpoint,
    shapes: HashMap<String, Vec<usize>>,
}

impl<'a> MappedSource<'a> {
    pub fn new(ck: &'a MappedCheckpoint) -> Self {
        MappedSource { ck, shapes: ck.config.param_shapes().into_iter().collect() }
    }
    fn shape(&self, name: &str) -> Result<&[usize]> {
        self.shapes
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| ModelError::Checkpoint(format!("`{name}` is not a parameter of this config")))
    }
}

impl Source for MappedSource<'_> {
    fn config(&self) -> &Config {
        &self.ck.config
    }
    fn store(&self, name: &str) -> Result<(Store, Vec<usize>)> {
        let shape = self.shape(name)?;
        let store = match self.ck.weight(name, shape)? {
            StoredWeight::Float(t) => match t.dtype {
                safetensors::Dtype::F32 => Store::F32(Floats::from_le_bytes(t.bytes.clone())),
                safetensors::Dtype::BF16 => Store::Bf16(Bytes::Mapped(t.bytes.clone())),
                _ => Store::F32(Floats::Owned(t.to_f32(name)?)),
            },
            StoredWeight::Fp8 { data, scale } => Store::Fp8 {
                data: Bytes::Mapped(data.bytes.clone()),
                scales: scale.to_f32(&crate::checkpoint::scale_name(name))?,
            },
            StoredWeight::Fp4 { packed, scale } => {
                Store::Fp4 { packed: Bytes::Mapped(packed.bytes.clone()), scales: Bytes::Mapped(scale.bytes.clone()) }
            }
        };
        Ok((store, shape.to_vec()))
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        self.ck.floats(name, self.shape(name)?)
    }
    fn tid2eid(&self, layer: usize) -> Result<Vec<u32>> {
        self.ck.tid2eid(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::SeededNormal;

    fn randv(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SeededNormal::new(seed);
        (0..n).map(|_| r.normal() as f32).collect()
    }

    /// Every stored format, decoded on the fly, equals decode-then-`matmul_f32` bit for bit
    /// (few rows) or to f32 rounding (many rows, tiled GEMM), over sub-ranges of output rows
    /// that cut FP8 row blocks and with partial edge blocks.
    #[test]
    fn stored_formats_equal_decode_then_multiply() {
        for &(rows, k, n) in &[(1, 64, 3), (3, 192, 200), (8, 320, 130), (17, 160, 300), (40, 96, 129)] {
            let w = randv(n * k, 11);
            let x = randv(rows * k, 12);
            let q = fp8::quantize_blocks(&w, n, k, FP8_BLOCK, FP8_BLOCK, 0.0);
            let bf: Vec<u8> = w.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
            let m = Mxfp4Matrix::quantize(&w, n, k, mxfp4::ScaleRule::DeepSeekCeil);
            let stores = [
                (
                    "fp8",
                    Store::Fp8 {
                        data: q.data.clone().into(),
                        scales: q.scales.iter().map(|&b| e8m0_to_f32(b)).collect(),
                    },
                    q.dequantize(),
                ),
                ("bf16", Store::Bf16(bf.into()), w.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect()),
                (
                    "fp4",
                    Store::Fp4 { packed: m.packed.clone().into(), scales: m.scales.clone().into() },
                    m.dequantize(),
                ),
            ];
            for (what, store, dense) in stores {
                let lin = Linear { w: store, out: n, inp: k, quantized_input: false };
                assert_eq!(lin.decode_all(), dense, "{what}: decoded values");
                for (j0, j1) in [(0, n), (n / 3, n - n / 5), (n - 1, n)] {
                    let mut got = vec![0f32; rows * (j1 - j0)];
                    lin.matmul_range(&x, rows, j0, j1, &mut got);
                    let mut want = vec![0f32; rows * (j1 - j0)];
                    kernels::matmul_f32(&x, rows, k, &dense[j0 * k..j1 * k], j1 - j0, &mut want);
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        let tol =
                            if rows < kernels::GEMM_MIN_ROWS && what != "fp4" { 0.0 } else { 1e-4 * (1.0 + b.abs()) };
                        assert!((a - b).abs() <= tol, "{what} rows {rows} k {k} n {n} [{j0}, {j1}) [{i}]: {a} vs {b}");
                    }
                }
            }
        }
    }
}
