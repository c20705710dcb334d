//! Full-vocabulary reverse KL between a student and a teacher whose logits are rebuilt from
//! head inputs, chunked over tokens and vocabulary (algorithms.md §6.1, §6.6).
//!
//! For every counted row `r` (a response token) with student head input `h_s`, teacher head
//! input `h_t` and temperature τ:
//!
//! ```text
//! z_s = W_s h_s / τ,  z_t = W_t h_t / τ,  ℓ = z − lse(z),  p_s = exp(ℓ_s)
//! KL_r = Σ_v p_s(v) (ℓ_s(v) − ℓ_t(v))          loss = Σ_r c_r KL_r
//! ∂KL_r/∂(W_s h_s)(v) = p_s(v) (ℓ_s(v) − ℓ_t(v) − KL_r) / τ
//! ```
//!
//! with `c_r` = teacher weight × mask / number of counted tokens. Logits only ever exist
//! for one `[rows_chunk × vocab_chunk]` tile:
//!
//! * pass 1, per vocab tile: running max `m`, `S = Σ e^{z_s−m}`, `U = Σ e^{z_s−m}(z_s−z_t)`,
//!   `E_s = Σ e^{z_s−m} z_s` and the same `(m_t, S_t, E_t)` for the teacher; tiles are merged
//!   by rescaling (online log-sum-exp). Then `lse_s = m + ln S`, `KL = U/S − lse_s + lse_t`,
//!   entropies `H = lse − E/S`.
//! * pass 2, per vocab tile: the closed-form logit gradient `g`, turned at once into
//!   `grad_h += g W_s` and `grad_W_s[tile] += gᵀ h_s`.
//!
//! The gradient is computed in the forward (as Liger's fused losses do); the candle
//! backward only scales it by the incoming gradient. Vocab tiles run in parallel (their
//! `grad_W` rows are disjoint); peak extra memory is O(threads × rows_chunk × vocab_chunk).

use crate::error::{Result, TrainError};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use model::kernels::{exp_approx, gemm, Mat};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Which estimator of the reverse KL is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Estimator {
    /// Exact per-token KL over the whole vocabulary (what V4 uses).
    #[default]
    FullVocab,
    /// The sampled-token estimator `ℓ_s(x) − ℓ_t(x)` as a policy-gradient advantage
    /// (Tinker); unbiased for the same gradient, higher variance. For comparison.
    Sampled,
}

impl TryFrom<String> for Estimator {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<Estimator> for String {
    fn from(e: Estimator) -> String {
        match e {
            Estimator::FullVocab => "full_vocab".into(),
            Estimator::Sampled => "sampled".into(),
        }
    }
}

impl std::str::FromStr for Estimator {
    type Err = String;
    /// `full` (or `full_vocab`) and `sampled`, as pipeline files and the CLI write them.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" | "full_vocab" => Ok(Estimator::FullVocab),
            "sampled" => Ok(Estimator::Sampled),
            o => Err(format!("unknown estimator {o:?} (full, sampled)")),
        }
    }
}

/// Tile sizes of the fused computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunks {
    pub rows: usize,
    pub vocab: usize,
}

impl Default for Chunks {
    fn default() -> Self {
        Chunks { rows: 64, vocab: 4096 }
    }
}

/// A head (the `[V, H]` output projection) and the head inputs `[N, H]` fed to it.
#[derive(Debug, Clone, Copy)]
pub struct HeadInput<'a> {
    pub hidden: &'a [f32],
    pub head: &'a [f32],
    pub dim: usize,
}

/// Per-row results of the fused computation (rows with `c_r = 0` are skipped: NaN).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowStats {
    pub kl: Vec<f32>,
    pub student_entropy: Vec<f32>,
    pub teacher_entropy: Vec<f32>,
}

/// Loss, per-row statistics and gradients with respect to the student's head inputs and head.
#[derive(Debug, Clone, Default)]
pub struct KlOutput {
    pub loss: f64,
    pub rows: RowStats,
    pub grad_hidden: Vec<f32>,
    pub grad_head: Vec<f32>,
}

/// Online softmax statistics of one row (student weights drive `s`, `u`, `e`).
#[derive(Debug, Clone, Copy)]
struct Online {
    m: f64,
    s: f64,
    u: f64,
    e: f64,
    mt: f64,
    st: f64,
    et: f64,
}

impl Online {
    const EMPTY: Online =
        Online { m: f64::NEG_INFINITY, s: 0.0, u: 0.0, e: 0.0, mt: f64::NEG_INFINITY, st: 0.0, et: 0.0 };

    fn merge(self, o: Online) -> Online {
        let m = self.m.max(o.m);
        let (a, b) = (rescale(self.m, m), rescale(o.m, m));
        let mt = self.mt.max(o.mt);
        let (at, bt) = (rescale(self.mt, mt), rescale(o.mt, mt));
        Online {
            m,
            s: self.s * a + o.s * b,
            u: self.u * a + o.u * b,
            e: self.e * a + o.e * b,
            mt,
            st: self.st * at + o.st * bt,
            et: self.et * at + o.et * bt,
        }
    }

    fn lse_s(&self) -> f64 {
        self.m + self.s.ln()
    }
    fn lse_t(&self) -> f64 {
        self.mt + self.st.ln()
    }
}

fn rescale(from: f64, to: f64) -> f64 {
    if from == f64::NEG_INFINITY {
        0.0
    } else {
        (from - to).exp()
    }
}

/// Tempered logits of `rows` head inputs against head rows `v0..v1`: `[rows, v1 − v0]`.
fn tile(x: &HeadInput, r0: usize, r1: usize, v0: usize, v1: usize, inv_tau: f32, out: &mut Vec<f32>) {
    let (nr, nv, d) = (r1 - r0, v1 - v0, x.dim);
    out.resize(nr * nv, 0.0);
    gemm(Mat::new(&x.hidden[r0 * d..r1 * d], nr, d), Mat::new(&x.head[v0 * d..v1 * d], nv, d).t(), out, false, false);
    if inv_tau != 1.0 {
        out.iter_mut().for_each(|z| *z *= inv_tau);
    }
}

fn check(x: &HeadInput, n: usize, vocab: usize, who: &str) -> Result<()> {
    if x.dim == 0 || x.hidden.len() != n * x.dim || x.head.len() != vocab * x.dim {
        return Err(TrainError::Input(format!(
            "{who}: {} head-input values and {} head values do not fit {n} rows × dim {} and vocab {vocab}",
            x.hidden.len(),
            x.head.len(),
            x.dim
        )));
    }
    Ok(())
}

/// The fused reverse KL (or the sampled estimator when `targets` is given with
/// [`Estimator::Sampled`]) with its closed-form gradient; see the module docs.
pub fn reverse_kl(
    student: HeadInput,
    teacher: HeadInput,
    coef: &[f32],
    vocab: usize,
    tau: f32,
    estimator: Estimator,
    targets: Option<&[u32]>,
    chunks: Chunks,
) -> Result<KlOutput> {
    let n = coef.len();
    check(&student, n, vocab, "student")?;
    check(&teacher, n, vocab, "teacher")?;
    if tau.is_nan() || tau <= 0.0 || chunks.rows == 0 || chunks.vocab == 0 {
        return Err(TrainError::Input(format!("reverse_kl: bad temperature {tau} or chunk sizes {chunks:?}")));
    }
    let targets = match estimator {
        Estimator::FullVocab => None,
        Estimator::Sampled => {
            let t =
                targets.ok_or_else(|| TrainError::Input("the sampled estimator needs the sampled tokens".into()))?;
            if t.len() != n || t.iter().any(|&x| x as usize >= vocab) {
                return Err(TrainError::Input("sampled tokens: wrong count or outside the vocabulary".into()));
            }
            Some(t)
        }
    };
    let d = student.dim;
    let inv_tau = 1.0 / tau;
    let mut out = KlOutput {
        loss: 0.0,
        rows: RowStats {
            kl: vec![f32::NAN; n],
            student_entropy: vec![f32::NAN; n],
            teacher_entropy: vec![f32::NAN; n],
        },
        grad_hidden: vec![0.0; n * d],
        grad_head: vec![0.0; vocab * d],
    };
    // Only counted rows are computed; they are gathered so tiles stay dense.
    let live: Vec<usize> = (0..n).filter(|&r| coef[r] != 0.0).collect();
    if live.is_empty() {
        return Ok(out);
    }
    let gather = |x: &HeadInput| -> Vec<f32> {
        let mut v = Vec::with_capacity(live.len() * x.dim);
        for &r in &live {
            v.extend_from_slice(&x.hidden[r * x.dim..(r + 1) * x.dim]);
        }
        v
    };
    let (hs, ht) = (gather(&student), gather(&teacher));
    let s_in = HeadInput { hidden: &hs, ..student };
    let t_in = HeadInput { hidden: &ht, ..teacher };
    let tiles: Vec<(usize, usize)> =
        (0..vocab).step_by(chunks.vocab).map(|v0| (v0, (v0 + chunks.vocab).min(vocab))).collect();
    // grad_head rows of each vocab tile, owned by that tile's task.
    let mut head_tiles: Vec<&mut [f32]> = out.grad_head.chunks_mut(chunks.vocab * d).collect();
    for r0 in (0..live.len()).step_by(chunks.rows) {
        let r1 = (r0 + chunks.rows).min(live.len());
        let nr = r1 - r0;
        // ---- pass 1: online statistics per row, tiles merged by rescaling
        let partial: Vec<Vec<Online>> = tiles
            .par_iter()
            .map(|&(v0, v1)| {
                let (mut zs, mut zt) = (Vec::new(), Vec::new());
                tile(&s_in, r0, r1, v0, v1, inv_tau, &mut zs);
                tile(&t_in, r0, r1, v0, v1, inv_tau, &mut zt);
                let nv = v1 - v0;
                (0..nr).map(|i| row_stats(&zs[i * nv..(i + 1) * nv], &zt[i * nv..(i + 1) * nv])).collect::<Vec<_>>()
            })
            .collect();
        let stats: Vec<Online> =
            (0..nr).map(|i| partial.iter().fold(Online::EMPTY, |acc, p| acc.merge(p[i]))).collect();
        // per-row scalars for pass 2: lse_s, lse_t, the weight of p_s, and (sampled) the one-hot part
        let mut lse = Vec::with_capacity(nr);
        let mut scale = Vec::with_capacity(nr);
        for (i, o) in stats.iter().enumerate() {
            let r = live[r0 + i];
            let (ls, lt) = (o.lse_s(), o.lse_t());
            let kl = (o.u / o.s - ls + lt).max(0.0);
            out.rows.kl[r] = kl as f32;
            out.rows.student_entropy[r] = (ls - o.e / o.s) as f32;
            out.rows.teacher_entropy[r] = (lt - o.et / o.st) as f32;
            let c = coef[r] as f64;
            match targets {
                None => {
                    out.loss += c * kl;
                    lse.push((ls, lt, kl));
                    scale.push(c);
                }
                Some(t) => {
                    // log-ratio of the sampled token; its value stands in for KL, its gradient is
                    // c · A · ∂ℓ_s(x)/∂z with the (detached) advantage A = ℓ_s(x) − ℓ_t(x)
                    let x = t[r] as usize;
                    let zs = dot(&s_in.hidden[(r0 + i) * d..(r0 + i + 1) * d], &student.head[x * d..(x + 1) * d]);
                    let dt = teacher.dim;
                    let zt = dot(&t_in.hidden[(r0 + i) * dt..(r0 + i + 1) * dt], &teacher.head[x * dt..(x + 1) * dt]);
                    let a = (zs as f64 * inv_tau as f64 - ls) - (zt as f64 * inv_tau as f64 - lt);
                    out.loss += c * a;
                    lse.push((ls, lt, a));
                    scale.push(c);
                }
            }
        }
        // ---- pass 2: logit gradient per tile → grad_head[tile] and partial grad_hidden
        let gh_parts: Vec<Vec<f32>> = tiles
            .par_iter()
            .zip(head_tiles.par_iter_mut())
            .map(|(&(v0, v1), gw)| {
                let nv = v1 - v0;
                let (mut zs, mut zt) = (Vec::new(), Vec::new());
                tile(&s_in, r0, r1, v0, v1, inv_tau, &mut zs);
                if targets.is_none() {
                    tile(&t_in, r0, r1, v0, v1, inv_tau, &mut zt);
                }
                // zs becomes g in place
                for i in 0..nr {
                    let (ls, lt, kl) = lse[i];
                    let c = scale[i] * inv_tau as f64;
                    let row = &mut zs[i * nv..(i + 1) * nv];
                    match targets {
                        None => grad_row(row, &zt[i * nv..(i + 1) * nv], ls as f32, lt as f32, kl as f32, c as f32),
                        Some(t) => {
                            // c·A·(e_x − p_s)
                            let (ls, k) = (ls as f32, (-c * kl) as f32);
                            for z in row.iter_mut() {
                                *z = k * exp_approx(*z - ls);
                            }
                            let x = t[live[r0 + i]] as usize;
                            if (v0..v1).contains(&x) {
                                row[x - v0] += (c * kl) as f32;
                            }
                        }
                    }
                }
                let mut gh = vec![0f32; nr * d];
                gemm(Mat::new(&zs, nr, nv), Mat::new(&student.head[v0 * d..v1 * d], nv, d), &mut gh, false, false);
                gemm(Mat::new(&zs, nr, nv).t(), Mat::new(&s_in.hidden[r0 * d..r1 * d], nr, d), gw, true, false);
                gh
            })
            .collect();
        for (i, &r) in live[r0..r1].iter().enumerate() {
            let dst = &mut out.grad_hidden[r * d..(r + 1) * d];
            for part in &gh_parts {
                for (a, b) in dst.iter_mut().zip(&part[i * d..(i + 1) * d]) {
                    *a += b;
                }
            }
        }
    }
    Ok(out)
}

/// Pass-1 statistics of one row tile: max, and the `exp`-weighted sums of the module docs
/// (8 independent f32 lanes per sum so the loop vectorises; tiles merge in f64).
#[inline(always)]
fn row_stats_body(a: &[f32], b: &[f32]) -> Online {
    let max8 = |x: &[f32]| {
        let mut m = [f32::NEG_INFINITY; 8];
        let mut it = x.chunks_exact(8);
        for c in &mut it {
            for k in 0..8 {
                m[k] = m[k].max(c[k]);
            }
        }
        it.remainder().iter().fold(m.iter().fold(f32::NEG_INFINITY, |p, &q| p.max(q)), |p, &q| p.max(q))
    };
    let (m, mt) = (max8(a), max8(b));
    let (mut s, mut u, mut e, mut st, mut et) = ([0f32; 8], [0f32; 8], [0f32; 8], [0f32; 8], [0f32; 8]);
    let n8 = a.len() / 8 * 8;
    for j in (0..n8).step_by(8) {
        for k in 0..8 {
            let (x, y) = (a[j + k], b[j + k]);
            let w = exp_approx(x - m);
            s[k] += w;
            u[k] += w * (x - y);
            e[k] += w * x;
            let wt = exp_approx(y - mt);
            st[k] += wt;
            et[k] += wt * y;
        }
    }
    let f = |v: [f32; 8]| v.iter().map(|&x| x as f64).sum::<f64>();
    let mut o = Online { m: m as f64, s: f(s), u: f(u), e: f(e), mt: mt as f64, st: f(st), et: f(et) };
    for j in n8..a.len() {
        let (x, y) = (a[j], b[j]);
        let w = exp_approx(x - m) as f64;
        o.s += w;
        o.u += w * (x - y) as f64;
        o.e += w * x as f64;
        let wt = exp_approx(y - mt) as f64;
        o.st += wt;
        o.et += wt * y as f64;
    }
    o
}

/// Pass-2 logit gradient of one row, in place: `z ← c · p_s · (ℓ_s − ℓ_t − KL)`.
#[inline(always)]
fn grad_row_body(zs: &mut [f32], zt: &[f32], lse_s: f32, lse_t: f32, kl: f32, c: f32) {
    for (z, &y) in zs.iter_mut().zip(zt) {
        let l_s = *z - lse_s;
        let l_t = y - lse_t;
        *z = c * exp_approx(l_s) * (l_s - l_t - kl);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_stats_avx512(a: &[f32], b: &[f32]) -> Online {
        row_stats_body(a, b)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_stats_avx2(a: &[f32], b: &[f32]) -> Online {
        row_stats_body(a, b)
    }
    #[target_feature(enable = "avx512f")]
    pub unsafe fn grad_row_avx512(zs: &mut [f32], zt: &[f32], ls: f32, lt: f32, kl: f32, c: f32) {
        grad_row_body(zs, zt, ls, lt, kl, c)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn grad_row_avx2(zs: &mut [f32], zt: &[f32], ls: f32, lt: f32, kl: f32, c: f32) {
        grad_row_body(zs, zt, ls, lt, kl, c)
    }
}

fn simd() -> u8 {
    static L: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *L.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return 2;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return 1;
            }
        }
        0
    })
}

fn row_stats(a: &[f32], b: &[f32]) -> Online {
    match simd() {
        // SAFETY: the features were detected at run time.
        #[cfg(target_arch = "x86_64")]
        2 => unsafe { x86::row_stats_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { x86::row_stats_avx2(a, b) },
        _ => row_stats_body(a, b),
    }
}

fn grad_row(zs: &mut [f32], zt: &[f32], ls: f32, lt: f32, kl: f32, c: f32) {
    match simd() {
        // SAFETY: the features were detected at run time.
        #[cfg(target_arch = "x86_64")]
        2 => unsafe { x86::grad_row_avx512(zs, zt, ls, lt, kl, c) },
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { x86::grad_row_avx2(zs, zt, ls, lt, kl, c) },
        _ => grad_row_body(zs, zt, ls, lt, kl, c),
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    model::kernels::dot(a, b)
}

/// The fused reverse KL as a candle op over (student head inputs `[N, H]`, student head
/// `[V, H]`) → scalar loss; the teacher side and the row weights are constants.
pub struct FusedReverseKl {
    pub teacher_hidden: Arc<Vec<f32>>,
    pub teacher_head: Arc<Vec<f32>>,
    pub teacher_dim: usize,
    pub coef: Vec<f32>,
    pub tau: f32,
    pub estimator: Estimator,
    pub targets: Option<Vec<u32>>,
    pub chunks: Chunks,
    /// Gradients and per-row statistics of the last forward (shared with the caller).
    saved: Arc<Mutex<Option<KlOutput>>>,
}

impl FusedReverseKl {
    pub fn new(
        teacher_hidden: Arc<Vec<f32>>,
        teacher_head: Arc<Vec<f32>>,
        teacher_dim: usize,
        coef: Vec<f32>,
        tau: f32,
    ) -> Self {
        FusedReverseKl {
            teacher_hidden,
            teacher_head,
            teacher_dim,
            coef,
            tau,
            estimator: Estimator::FullVocab,
            targets: None,
            chunks: Chunks::default(),
            saved: Arc::new(Mutex::new(None)),
        }
    }

    /// A handle on the results of this op's forward, readable after it ran.
    pub fn results(&self) -> KlResults {
        KlResults(self.saved.clone())
    }
}

impl CustomOp2 for FusedReverseKl {
    fn name(&self) -> &'static str {
        "fused-reverse-kl"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(h), CpuStorage::F32(w)) = (s1, s2) else {
            candle_core::bail!("fused-reverse-kl: expects f32 head inputs and head")
        };
        let (Some((h0, h1)), Some((w0, w1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("fused-reverse-kl: contiguous inputs")
        };
        let (n, d) = l1.shape().dims2()?;
        let (v, d2) = l2.shape().dims2()?;
        if d != d2 || n != self.coef.len() {
            candle_core::bail!(
                "fused-reverse-kl: head inputs [{n}, {d}], head [{v}, {d2}], {} weights",
                self.coef.len()
            );
        }
        let out = reverse_kl(
            HeadInput { hidden: &h[h0..h1], head: &w[w0..w1], dim: d },
            HeadInput { hidden: &self.teacher_hidden, head: &self.teacher_head, dim: self.teacher_dim },
            &self.coef,
            v,
            self.tau,
            self.estimator,
            self.targets.as_deref(),
            self.chunks,
        )
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let loss = out.loss as f32;
        if let Ok(mut s) = self.saved.lock() {
            *s = Some(out);
        }
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let saved = self.saved.lock().map_err(|_| candle_core::Error::Msg("fused-reverse-kl: poisoned".into()))?;
        let Some(out) = saved.as_ref() else { candle_core::bail!("fused-reverse-kl: backward before forward") };
        let scale = |v: &[f32]| v.iter().map(|x| (*x as f64 * g) as f32).collect::<Vec<f32>>();
        let gh = Tensor::from_vec(scale(&out.grad_hidden), h.shape(), h.device())?;
        let gw = Tensor::from_vec(scale(&out.grad_head), w.shape(), w.device())?;
        Ok((Some(gh), Some(gw)))
    }
}

/// Results of a [`FusedReverseKl`] forward.
#[derive(Clone)]
pub struct KlResults(Arc<Mutex<Option<KlOutput>>>);

impl KlResults {
    /// Per-row statistics (KL, entropies); `None` before the forward ran.
    pub fn stats(&self) -> Option<RowStats> {
        self.0.lock().ok().and_then(|s| s.as_ref().map(|o| o.rows.clone()))
    }
}

/// Apply the fused op to the student's `hidden [N, H]` and `head [V, H]` (tracked by
/// autograd); returns the scalar loss and a handle on the per-row statistics.
pub fn fused_reverse_kl(hidden: &Tensor, head: &Tensor, op: FusedReverseKl) -> Result<(Tensor, KlResults)> {
    let h = hidden.contiguous()?;
    let w = head.contiguous()?;
    let res = op.results();
    Ok((h.apply_op2(&w, op)?, res))
}

/// The same loss through plain candle autograd with `[N, V]` logits materialised: the
/// reference the fused op is tested and benchmarked against.
pub fn naive_reverse_kl(
    hidden: &Tensor,
    head: &Tensor,
    teacher_hidden: &Tensor,
    teacher_head: &Tensor,
    coef: &Tensor,
    tau: f32,
) -> Result<Tensor> {
    use model::train::ops::log_softmax_last;
    let zs = (hidden.matmul(&head.t()?)? / tau as f64)?;
    let zt = (teacher_hidden.matmul(&teacher_head.t()?)? / tau as f64)?.detach();
    let ls = log_softmax_last(&zs)?;
    let lt = log_softmax_last(&zt)?;
    let kl = (ls.exp()? * (&ls - &lt)?)?.sum(1)?;
    Ok((kl * coef)?.sum_all()?)
}
