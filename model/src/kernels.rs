//! CPU matrix kernels of the decode engine: `out[r, n] = Σ_k x[r, k] · W[n, k]` for f32
//! weights and for packed MXFP4 weights decoded on the fly.
//!
//! * Many rows (prefill): the `gemm` crate (f32) — FP4 weights are decoded to f32 once.
//! * Few rows (decode): our own kernels, which stream each weight row once for all rows,
//!   accumulate in f32 and split the output dimension over rayon threads. The FP4 kernel
//!   decodes 32 codes per block with a 256-entry byte→pair table and applies the
//!   power-of-two block scale once per block, so its result equals decode-then-multiply up
//!   to f32 summation order.
//! * x86-64 gets AVX2+FMA / AVX-512 versions chosen at run time; other targets use the
//!   portable loops.

use crate::formats::{e8m0_to_f32, mxfp4::Mxfp4Matrix, mxfp4::E2M1_LUT};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Below this many rows the hand-written small-batch kernels beat a general GEMM.
pub const GEMM_MIN_ROWS: usize = 16;
/// Work (multiply-adds) under which a call stays on the current thread.
pub(crate) const PAR_MIN_WORK: usize = 1 << 17;

thread_local! {
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's kernels single-threaded. For callers that are themselves one
/// task of a parallel loop (the engine's experts): a nested parallel product would split
/// small work into pieces that cost more to synchronise than to compute.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|c| c.replace(true)));
    f()
}

/// Threads a kernel on this thread may use: the rayon pool's, or 1 inside [`serial`].
pub(crate) fn threads() -> usize {
    if SERIAL.with(|c| c.get()) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Byte → (low-nibble value, high-nibble value).
fn pair_lut() -> &'static [[f32; 2]; 256] {
    static LUT: OnceLock<[[f32; 2]; 256]> = OnceLock::new();
    LUT.get_or_init(|| {
        let mut t = [[0f32; 2]; 256];
        for (b, e) in t.iter_mut().enumerate() {
            *e = [E2M1_LUT[b & 0x0F], E2M1_LUT[b >> 4]];
        }
        t
    })
}

/// Which instruction set the kernels run with (for benchmarks and logs).
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return "avx2";
        }
    }
    "portable"
}

/// f32 dot product with several independent accumulators.
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), acc1);
            i += 16;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut s: f32 = lanes.iter().sum();
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16)), _mm512_loadu_ps(pb.add(i + 16)), acc1);
            i += 32;
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    /// Four [`dot_avx2`]s of `a` with `b[0..4]`, interleaved for instruction-level
    /// parallelism; each result is computed exactly as `dot_avx2` computes it.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_avx2(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
        let n = a.len();
        let pa = a.as_ptr();
        let pb = b.map(|v| v.as_ptr());
        let mut acc0 = [_mm256_setzero_ps(); 4];
        let mut acc1 = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 16 <= n {
            let (x0, x1) = (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pa.add(i + 8)));
            for j in 0..4 {
                acc0[j] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(pb[j].add(i)), acc0[j]);
                acc1[j] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(pb[j].add(i + 8)), acc1[j]);
            }
            i += 16;
        }
        let mut out = [0f32; 4];
        for j in 0..4 {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc0[j], acc1[j]));
            let mut s: f32 = lanes.iter().sum();
            for t in i..n {
                s += *pa.add(t) * *pb[j].add(t);
            }
            out[j] = s;
        }
        out
    }

    /// Four [`dot_avx512`]s, as [`dot4_avx2`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot4_avx512(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
        let n = a.len();
        let pa = a.as_ptr();
        let pb = b.map(|v| v.as_ptr());
        let mut acc0 = [_mm512_setzero_ps(); 4];
        let mut acc1 = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            let (x0, x1) = (_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pa.add(i + 16)));
            for j in 0..4 {
                acc0[j] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(pb[j].add(i)), acc0[j]);
                acc1[j] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(pb[j].add(i + 16)), acc1[j]);
            }
            i += 32;
        }
        let mut out = [0f32; 4];
        for j in 0..4 {
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[j], acc1[j]));
            for t in i..n {
                s += *pa.add(t) * *pb[j].add(t);
            }
            out[j] = s;
        }
        out
    }

    /// `y += a·x`, a rounded product then a rounded sum per element (no fused multiply-add),
    /// so it equals the scalar loop bit for bit.
    #[target_feature(enable = "avx2")]
    pub unsafe fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_add_ps(_mm256_loadu_ps(py.add(i)), _mm256_mul_ps(va, _mm256_loadu_ps(px.add(i))));
            _mm256_storeu_ps(py.add(i), v);
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }

    /// [`axpy_avx2`] with 16 lanes.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn axpy_avx512(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let va = _mm512_set1_ps(a);
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm512_add_ps(_mm512_loadu_ps(py.add(i)), _mm512_mul_ps(va, _mm512_loadu_ps(px.add(i))));
            _mm512_storeu_ps(py.add(i), v);
            i += 16;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }
}

type DotFn = fn(&[f32], &[f32]) -> f32;

fn dot_fn() -> DotFn {
    static F: OnceLock<DotFn> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected at run time.
                return |a, b| unsafe { x86::dot_avx512(a, b) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the features were detected at run time.
                return |a, b| unsafe { x86::dot_avx2(a, b) };
            }
        }
        dot_portable
    })
}

type AxpyFn = fn(&mut [f32], f32, &[f32]);

fn axpy_portable(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(v, b)| *v += a * b);
}

fn axpy_fn() -> AxpyFn {
    static F: OnceLock<AxpyFn> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected at run time.
                return |y, a, x| unsafe { x86::axpy_avx512(y, a, x) };
            }
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the feature was detected at run time.
                return |y, a, x| unsafe { x86::axpy_avx2(y, a, x) };
            }
        }
        axpy_portable
    })
}

/// `y[i] += a · x[i]` over the common length, SIMD when available. Each element is a rounded
/// product then a rounded sum, exactly as the scalar loop computes it, so swapping this in
/// changes no result (the builds are not compiled for the host CPU, so plain loops only get
/// SSE2).
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy: lengths differ");
    axpy_fn()(y, a, x)
}

type Dot4Fn = fn(&[f32], [&[f32]; 4]) -> [f32; 4];

fn dot4_fn() -> Dot4Fn {
    static F: OnceLock<Dot4Fn> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected at run time.
                return |a, b| unsafe { x86::dot4_avx512(a, b) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the features were detected at run time.
                return |a, b| unsafe { x86::dot4_avx2(a, b) };
            }
        }
        |a, b| b.map(|v| dot_portable(a, v))
    })
}

/// `[dot(a, b[0]), …, dot(a, b[3])]`, each equal bit for bit to [`dot`] (same instruction set,
/// same order of operations), computed together so the four chains overlap.
#[inline]
pub fn dot4(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    assert!(b.iter().all(|v| v.len() == a.len()), "dot4: lengths differ");
    dot4_fn()(a, b)
}

/// `out[j] = dot(a, b(j))` for `j < out.len()`, four at a time through [`dot4`].
pub fn dots<'a>(a: &[f32], b: impl Fn(usize) -> &'a [f32], out: &mut [f32]) {
    let n = out.len();
    let mut j = 0;
    while j + 4 <= n {
        out[j..j + 4].copy_from_slice(&dot4(a, [b(j), b(j + 1), b(j + 2), b(j + 3)]));
        j += 4;
    }
    for (t, o) in out.iter_mut().enumerate().skip(j) {
        *o = dot(a, b(t));
    }
}

/// f32 dot product (SIMD when available).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    dot_fn()(a, b)
}

/// `e^x` in f32 without a libm call, so loops over it vectorise: Cody–Waite reduction
/// `x = n ln2 + r`, a degree-6 Taylor polynomial on |r| ≤ ln2/2 (relative error < 2e-7),
/// and the exponent placed by bit arithmetic. Inputs below −87 give ~0 (not subnormals).
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Element types [`gemm`] multiplies (f32 for the engine and training, f64 for gradient checks).
pub trait GemmScalar: Copy + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
}
impl GemmScalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}
impl GemmScalar for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// One operand of [`gemm`]: a row-major `[rows, cols]` buffer, used as is or transposed.
#[derive(Clone, Copy)]
pub struct Mat<'a, T = f32> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub transposed: bool,
}

impl<'a, T> Mat<'a, T> {
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, transposed: false }
    }
    pub fn t(self) -> Self {
        Mat { transposed: !self.transposed, ..self }
    }
    /// (rows, cols) of the operand as used (after the optional transpose).
    fn dims(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
    /// (row stride, column stride) of the operand as used.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// `out[m, n] (+)= a[m, k] · b[k, n]` with either operand optionally transposed (row-major
/// `out`); `accumulate` adds to `out` instead of overwriting it; `parallel` lets `gemm`
/// use the rayon pool (leave it off when already inside a parallel loop).
pub fn gemm<T: GemmScalar>(a: Mat<T>, b: Mat<T>, out: &mut [T], accumulate: bool, parallel: bool) {
    let (m, k) = a.dims();
    let (k2, n) = b.dims();
    assert_eq!(k, k2, "gemm: inner dimensions {k} and {k2} differ");
    assert!(
        a.data.len() >= a.rows * a.cols && b.data.len() >= b.rows * b.cols && out.len() >= m * n,
        "gemm: buffer too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(T::ZERO);
        }
        return;
    }
    let (ars, acs) = a.strides();
    let (brs, bcs) = b.strides();
    let par = if parallel && m * n * k >= PAR_MIN_WORK && threads() > 1 {
        gemm::Parallelism::Rayon(threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every index `gemm` computes from these dims/strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            acs,
            ars,
            b.data.as_ptr(),
            bcs,
            brs,
            if accumulate { T::ONE } else { T::ZERO },
            T::ONE,
            false,
            false,
            false,
            par,
        );
    }
}

/// `out[rows, n] = x[rows, k] · w[n, k]ᵀ` for f32 weights.
pub fn matmul_f32(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert!(x.len() >= rows * k && w.len() >= n * k && out.len() >= rows * n, "matmul_f32: buffer too small");
    if rows == 0 || n == 0 {
        return;
    }
    if rows >= GEMM_MIN_ROWS {
        let threads = if rows * n * k >= PAR_MIN_WORK { threads() } else { 1 };
        let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // SAFETY: shapes and strides describe the slices checked above (row-major x and out,
        // w read as its transpose).
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
        return;
    }
    let d = dot_fn();
    // Transposed output blocks: each task owns a range of output neurons for all rows.
    let kernel = |n0: usize, n1: usize, dst: &mut [f32]| {
        for j in n0..n1 {
            let wr = &w[j * k..(j + 1) * k];
            for r in 0..rows {
                dst[(j - n0) * rows + r] = d(&x[r * k..(r + 1) * k], wr);
            }
        }
    };
    by_output_blocks(rows, n, rows * n * k >= PAR_MIN_WORK, out, kernel);
}

/// Dot products of one packed FP4 weight row with `rows` input rows.
#[inline(always)]
fn fp4_row(x: &[f32], rows: usize, k: usize, packed: &[u8], scales: &[u8], acc: &mut [f32]) {
    let lut = pair_lut();
    let mut wblk = [0f32; 32];
    for (bi, &sb) in scales.iter().enumerate() {
        let bytes = &packed[bi * 16..bi * 16 + 16];
        for (i, &b) in bytes.iter().enumerate() {
            let p = lut[b as usize];
            wblk[2 * i] = p[0];
            wblk[2 * i + 1] = p[1];
        }
        let s = e8m0_to_f32(sb);
        for r in 0..rows {
            let xs = &x[r * k + bi * 32..r * k + bi * 32 + 32];
            acc[r] += dot_portable(&wblk, xs) * s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_fp4 {
    use std::arch::x86_64::*;

    /// Most input rows a call handles with register accumulators (the decode path has
    /// fewer than [`super::GEMM_MIN_ROWS`]); more rows go through in groups.
    const MAX_ROWS: usize = 16;

    /// The block scale as f32 (UE8M0: 2^(e−127)), halved for the doubled table below.
    #[inline(always)]
    fn half_scale(sb: u8) -> f32 {
        super::e8m0_to_f32(sb) * 0.5
    }

    /// AVX-512: nibbles → int8 doubled-E2M1 values with one byte shuffle, → f32, FMA with x.
    /// The doubled table (0,1,2,3,4,6,8,12) is exact in int8; the factor 1/2 folds into the
    /// scale. One vector accumulator per input row; a single horizontal sum at the end.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn fp4_rows_avx512(x: &[f32], rows: usize, k: usize, packed: &[u8], scales: &[u8], acc: &mut [f32]) {
        let lut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
        let mask = _mm_set1_epi8(0x0F);
        for r0 in (0..rows).step_by(MAX_ROWS) {
            let nr = (rows - r0).min(MAX_ROWS);
            let mut accv = [_mm512_setzero_ps(); MAX_ROWS];
            for (bi, &sb) in scales.iter().enumerate() {
                let raw = _mm_loadu_si128(packed.as_ptr().add(bi * 16) as *const __m128i);
                let lo = _mm_shuffle_epi8(lut, _mm_and_si128(raw, mask));
                let hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(raw, 4), mask));
                // interleave: element 2i = lo[i], 2i+1 = hi[i]
                let w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpacklo_epi8(lo, hi)));
                let w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpackhi_epi8(lo, hi)));
                let s = _mm512_set1_ps(half_scale(sb));
                let base = bi * 32;
                for (i, a) in accv.iter_mut().enumerate().take(nr) {
                    let px = x.as_ptr().add((r0 + i) * k + base);
                    let p = _mm512_fmadd_ps(w0, _mm512_loadu_ps(px), _mm512_mul_ps(w1, _mm512_loadu_ps(px.add(16))));
                    *a = _mm512_fmadd_ps(p, s, *a);
                }
            }
            for i in 0..nr {
                acc[r0 + i] += _mm512_reduce_add_ps(accv[i]);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fp4_rows_avx2(x: &[f32], rows: usize, k: usize, packed: &[u8], scales: &[u8], acc: &mut [f32]) {
        let lut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
        let mask = _mm_set1_epi8(0x0F);
        for r0 in (0..rows).step_by(MAX_ROWS) {
            let nr = (rows - r0).min(MAX_ROWS);
            let mut accv = [_mm256_setzero_ps(); MAX_ROWS];
            for (bi, &sb) in scales.iter().enumerate() {
                let raw = _mm_loadu_si128(packed.as_ptr().add(bi * 16) as *const __m128i);
                let lo = _mm_shuffle_epi8(lut, _mm_and_si128(raw, mask));
                let hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(raw, 4), mask));
                let v0 = _mm_unpacklo_epi8(lo, hi);
                let v1 = _mm_unpackhi_epi8(lo, hi);
                let w = [
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v0)),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v0, 8))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v1)),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v1, 8))),
                ];
                let s = _mm256_set1_ps(half_scale(sb));
                let base = bi * 32;
                for (i, a) in accv.iter_mut().enumerate().take(nr) {
                    let px = x.as_ptr().add((r0 + i) * k + base);
                    let mut p = _mm256_mul_ps(w[0], _mm256_loadu_ps(px));
                    p = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(px.add(8)), p);
                    p = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(px.add(16)), p);
                    p = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(px.add(24)), p);
                    *a = _mm256_fmadd_ps(p, s, *a);
                }
            }
            for i in 0..nr {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), accv[i]);
                acc[r0 + i] += lanes.iter().sum::<f32>();
            }
        }
    }
}

type Fp4RowFn = fn(&[f32], usize, usize, &[u8], &[u8], &mut [f32]);

fn fp4_fn() -> Fp4RowFn {
    static F: OnceLock<Fp4RowFn> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: features detected at run time.
                return |x, r, k, p, s, a| unsafe { x86_fp4::fp4_rows_avx512(x, r, k, p, s, a) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: features detected at run time.
                return |x, r, k, p, s, a| unsafe { x86_fp4::fp4_rows_avx2(x, r, k, p, s, a) };
            }
        }
        fp4_row
    })
}

/// Force the portable FP4 kernel (tests compare every implementation).
pub fn matmul_fp4_portable(x: &[f32], rows: usize, m: &Mxfp4Matrix, out: &mut [f32]) {
    matmul_fp4_with(fp4_row, x, rows, m, out)
}

/// `out[rows, m.rows] = x[rows, m.cols] · Wᵀ` with W packed MXFP4.
pub fn matmul_fp4(x: &[f32], rows: usize, m: &Mxfp4Matrix, out: &mut [f32]) {
    if rows >= GEMM_MIN_ROWS {
        // Prefill: decode once, then a real GEMM.
        let w = m.dequantize();
        return matmul_f32(x, rows, m.cols, &w, m.rows, out);
    }
    matmul_fp4_with(fp4_fn(), x, rows, m, out)
}

/// The few-rows FP4 kernel on packed codes `[n, k/2]` and UE8M0 scales `[n, k/32]` borrowed
/// from anywhere (a memory-mapped checkpoint); `out[rows, n]`.
pub fn matmul_fp4_packed(x: &[f32], rows: usize, n: usize, k: usize, packed: &[u8], scales: &[u8], out: &mut [f32]) {
    matmul_fp4_slices(fp4_fn(), x, rows, (n, k), (packed, scales), out)
}

fn matmul_fp4_with(f: Fp4RowFn, x: &[f32], rows: usize, m: &Mxfp4Matrix, out: &mut [f32]) {
    matmul_fp4_slices(f, x, rows, (m.rows, m.cols), (&m.packed, &m.scales), out)
}

fn matmul_fp4_slices(
    f: Fp4RowFn,
    x: &[f32],
    rows: usize,
    (n, k): (usize, usize),
    (packed, scales): (&[u8], &[u8]),
    out: &mut [f32],
) {
    assert!(x.len() >= rows * k && out.len() >= rows * n, "matmul_fp4: buffer too small");
    assert!(k % 32 == 0 && packed.len() >= n * k / 2 && scales.len() >= n * k / 32, "matmul_fp4: weights too small");
    let (bpr, spr) = (k / 2, k / 32);
    let kernel = |n0: usize, n1: usize, dst: &mut [f32]| {
        for j in n0..n1 {
            let acc = &mut dst[(j - n0) * rows..(j - n0 + 1) * rows];
            acc.iter_mut().for_each(|v| *v = 0.0);
            f(x, rows, k, &packed[j * bpr..(j + 1) * bpr], &scales[j * spr..(j + 1) * spr], acc);
        }
    };
    by_output_blocks(rows, n, rows * n * k >= PAR_MIN_WORK, out, kernel);
}

/// Runs `kernel(n0, n1, dst)` over ranges of output neurons, each writing the transposed block
/// `dst[(j - n0) * rows + r]` for neurons `n0..n1` and all `rows`, split over rayon threads when
/// `parallel` and `n ≥ 64`; then scatters the blocks into the row-major `out[rows, n]`.
pub(crate) fn by_output_blocks(
    rows: usize,
    n: usize,
    parallel: bool,
    out: &mut [f32],
    kernel: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let mut tmp = vec![0f32; n * rows];
    if parallel && n >= 64 && threads() > 1 {
        let block = n.div_ceil(threads() * 4).max(16);
        tmp.par_chunks_mut(block * rows).enumerate().for_each(|(bi, dst)| {
            let n0 = bi * block;
            kernel(n0, (n0 + block).min(n), dst);
        });
    } else {
        kernel(0, n, &mut tmp);
    }
    for j in 0..n {
        for r in 0..rows {
            out[r * n + j] = tmp[j * rows + r];
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_approx_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let e = (x as f64).exp();
            let rel = ((super::exp_approx(x) as f64 - e) / e).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(super::exp_approx(-1000.0) < 1e-37 && super::exp_approx(0.0) == 1.0);
    }

    use super::*;
    use crate::formats::mxfp4::ScaleRule;
    use crate::weights::SeededNormal;

    fn randv(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SeededNormal::new(seed);
        (0..n).map(|_| r.normal() as f32).collect()
    }

    fn naive(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut o = vec![0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                o[r * n + j] = (0..k).map(|i| x[r * k + i] as f64 * w[j * k + i] as f64).sum::<f64>() as f32;
            }
        }
        o
    }

    fn close(a: &[f32], b: &[f32], k: usize) {
        let tol = 1e-5 * (k as f32).sqrt() * 4.0;
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "[{i}] {x} vs {y}");
        }
    }

    #[test]
    fn axpy_equals_the_scalar_loop_bit_for_bit() {
        for &n in &[0usize, 1, 7, 16, 31, 128, 259] {
            let (x, y0) = (randv(n, 5), randv(n, 6));
            let a = 0.37f32;
            let mut want = y0.clone();
            want.iter_mut().zip(&x).for_each(|(v, b)| *v += a * b);
            let mut got = y0.clone();
            axpy(&mut got, a, &x);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "n {n}"
            );
            let mut portable = y0;
            axpy_portable(&mut portable, a, &x);
            assert_eq!(portable, want);
        }
    }

    #[test]
    fn dot4_and_dots_equal_dot_bit_for_bit() {
        for &n in &[1usize, 15, 16, 31, 32, 33, 128, 200] {
            let a = randv(n, 11);
            let b: Vec<Vec<f32>> = (0..7).map(|j| randv(n, 20 + j)).collect();
            let want: Vec<u32> = b.iter().map(|v| dot(&a, v).to_bits()).collect();
            let four = dot4(&a, [&b[0], &b[1], &b[2], &b[3]]);
            assert_eq!(four.map(f32::to_bits).to_vec(), want[..4].to_vec(), "n {n}");
            let mut out = vec![0f32; 7];
            dots(&a, |j| &b[j], &mut out);
            assert_eq!(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want, "n {n}");
        }
    }

    /// Every instruction-set variant this CPU can run, not only the one dispatch picks (so an
    /// AVX-512 machine also checks the AVX2 code that AVX2-only machines run).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_simd_variant_equals_its_reference() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for &n in &[1usize, 15, 16, 17, 31, 32, 33, 128, 200] {
            let a = randv(n, 31);
            let b: Vec<Vec<f32>> = (0..4).map(|j| randv(n, 40 + j)).collect();
            let b4 = [&b[0][..], &b[1][..], &b[2][..], &b[3][..]];
            let mut want_axpy = b[0].clone();
            axpy_portable(&mut want_axpy, -1.25, &a);
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the features were detected above.
                unsafe {
                    let one: Vec<f32> = b4.iter().map(|v| x86::dot_avx2(&a, v)).collect();
                    assert_eq!(bits(&x86::dot4_avx2(&a, b4)), bits(&one), "dot4_avx2, n {n}");
                    let mut y = b[0].clone();
                    x86::axpy_avx2(&mut y, -1.25, &a);
                    assert_eq!(bits(&y), bits(&want_axpy), "axpy_avx2, n {n}");
                }
            }
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected above.
                unsafe {
                    let one: Vec<f32> = b4.iter().map(|v| x86::dot_avx512(&a, v)).collect();
                    assert_eq!(bits(&x86::dot4_avx512(&a, b4)), bits(&one), "dot4_avx512, n {n}");
                    let mut y = b[0].clone();
                    x86::axpy_avx512(&mut y, -1.25, &a);
                    assert_eq!(bits(&y), bits(&want_axpy), "axpy_avx512, n {n}");
                }
            }
        }
    }

    #[test]
    fn serial_restores_the_thread_setting() {
        let outer = threads();
        let inner = serial(|| (threads(), serial(threads), threads()));
        assert_eq!(inner, (1, 1, 1));
        assert_eq!(threads(), outer);
        let caught = std::panic::catch_unwind(|| serial(|| panic!("inside")));
        assert!(caught.is_err());
        assert_eq!(threads(), outer, "a panic inside serial must not leave the thread serial");
    }

    #[test]
    fn f32_kernels_match_naive_on_odd_shapes() {
        for &(rows, k, n) in &[(1, 7, 3), (3, 33, 65), (5, 130, 17), (17, 64, 70), (40, 97, 129), (2, 1000, 300)] {
            let x = randv(rows * k, 1);
            let w = randv(n * k, 2);
            let mut out = vec![0f32; rows * n];
            matmul_f32(&x, rows, k, &w, n, &mut out);
            close(&out, &naive(&x, rows, k, &w, n), k);
        }
    }

    #[test]
    fn fp4_kernels_equal_decode_then_multiply() {
        for &(rows, k, n) in &[(1, 32, 1), (3, 96, 7), (8, 64, 65), (15, 160, 33), (20, 64, 40), (1, 512, 300)] {
            let x = randv(rows * k, 3);
            let w = randv(n * k, 4);
            let m = Mxfp4Matrix::quantize(&w, n, k, ScaleRule::DeepSeekCeil);
            let want = naive(&x, rows, k, &m.dequantize(), n);
            let mut out = vec![0f32; rows * n];
            matmul_fp4(&x, rows, &m, &mut out);
            close(&out, &want, k);
            matmul_fp4_portable(&x, rows, &m, &mut out);
            close(&out, &want, k);
        }
    }
}
