//! The fused full-vocabulary reverse KL against algorithms.md §6 and against naive autograd.

use candle_core::{Device, Tensor, Var};
use trainer::kl::{fused_reverse_kl, naive_reverse_kl, reverse_kl, Chunks, Estimator, FusedReverseKl, HeadInput};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn eye(n: usize) -> Vec<f32> {
    (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect()
}

#[test]
fn matches_the_reference_vector() {
    // With an identity head, head inputs are the logits of algorithms.md §6.
    let zs = [1.0f32, 2.0, 0.5, -1.0];
    let zt = [0.5f32, 1.5, 1.0, 0.0];
    let id = eye(4);
    let out = reverse_kl(
        HeadInput { hidden: &zs, head: &id, dim: 4 },
        HeadInput { hidden: &zt, head: &id, dim: 4 },
        &[1.0],
        4,
        1.0,
        Estimator::FullVocab,
        None,
        Chunks { rows: 1, vocab: 3 },
    )
    .unwrap();
    assert!((out.loss - 0.1106530150).abs() < 1e-6, "KL {}", out.loss);
    let want = [0.0406945617f64, 0.1106192876, -0.1113064164, -0.0400074328].map(|x| x as f32);
    for (g, w) in out.grad_hidden.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "grad {:?} vs {want:?}", out.grad_hidden);
    }
    assert!(out.grad_hidden.iter().sum::<f32>().abs() < 1e-6, "logit gradient sums to zero");
    let p_s = [0.22420782f64, 0.60946004, 0.13598892, 0.03034323].map(|x| x as f32);
    let h_s = -p_s.iter().map(|p| p * p.ln()).sum::<f32>();
    assert!((out.rows.student_entropy[0] - h_s).abs() < 1e-5);
}

/// Random student/teacher (different hidden sizes), masked rows and mixed weights:
/// fused loss and gradients equal candle autograd over materialised logits.
fn compare_with_naive(tau: f32, chunks: Chunks) {
    let (n, v, d, dt) = (13usize, 37usize, 8usize, 6usize);
    let mut rng = Rng(7);
    let hs = rng.vec(n * d, 1.5);
    let ws = rng.vec(v * d, 1.0);
    let ht = rng.vec(n * dt, 1.5);
    let wt = rng.vec(v * dt, 1.0);
    // rows 2 and 9 masked; others weighted as a mixture would be (0.25..1), token-mean scaled
    let coef: Vec<f32> =
        (0..n).map(|r| if r == 2 || r == 9 { 0.0 } else { (0.25 + 0.75 * (r % 4) as f32 / 3.0) / 11.0 }).collect();
    let dev = Device::Cpu;
    let h = Var::from_vec(hs.clone(), (n, d), &dev).unwrap();
    let w = Var::from_vec(ws.clone(), (v, d), &dev).unwrap();
    let tht = Tensor::from_vec(ht.clone(), (n, dt), &dev).unwrap();
    let twt = Tensor::from_vec(wt.clone(), (v, dt), &dev).unwrap();
    let c = Tensor::from_vec(coef.clone(), n, &dev).unwrap();
    let naive = naive_reverse_kl(h.as_tensor(), w.as_tensor(), &tht, &twt, &c, tau).unwrap();
    let g = naive.backward().unwrap();
    let ngh: Vec<f32> = g.get(h.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let ngw: Vec<f32> = g.get(w.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();

    let mut op = FusedReverseKl::new(ht.into(), wt.into(), dt, coef.clone(), tau);
    op.chunks = chunks;
    let (loss, res) = fused_reverse_kl(h.as_tensor(), w.as_tensor(), op).unwrap();
    let loss2 = (&loss * 2.0).unwrap(); // the backward scales by the incoming gradient
    let g2 = loss2.backward().unwrap();
    let fgh: Vec<f32> = g2.get(h.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let fgw: Vec<f32> = g2.get(w.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let (lf, ln) = (loss.to_scalar::<f32>().unwrap(), naive.to_scalar::<f32>().unwrap());
    assert!((lf - ln).abs() < 1e-5, "loss fused {lf} naive {ln}");
    let max_diff = |a: &[f32], b: &[f32], k: f32| a.iter().zip(b).map(|(x, y)| (x - k * y).abs()).fold(0f32, f32::max);
    assert!(max_diff(&fgh, &ngh, 2.0) < 1e-5, "grad h differs by {}", max_diff(&fgh, &ngh, 2.0));
    assert!(max_diff(&fgw, &ngw, 2.0) < 1e-5, "grad W differs by {}", max_diff(&fgw, &ngw, 2.0));
    // masked rows: no gradient, no statistics
    assert!(fgh[2 * d..3 * d].iter().all(|&x| x == 0.0));
    let st = res.stats().unwrap();
    assert!(st.kl[2].is_nan() && st.kl[0] > 0.0);
}

#[test]
fn equals_naive_autograd_across_chunkings() {
    compare_with_naive(1.0, Chunks { rows: 4, vocab: 8 });
    compare_with_naive(1.0, Chunks { rows: 64, vocab: 4096 });
    compare_with_naive(0.7, Chunks { rows: 3, vocab: 5 });
    compare_with_naive(1.3, Chunks { rows: 1, vocab: 37 });
}

#[test]
fn identical_teacher_gives_zero_loss_and_gradient() {
    let (n, v, d) = (9usize, 50usize, 12usize);
    let mut rng = Rng(3);
    let h = rng.vec(n * d, 2.0);
    let w = rng.vec(v * d, 1.0);
    let out = reverse_kl(
        HeadInput { hidden: &h, head: &w, dim: d },
        HeadInput { hidden: &h, head: &w, dim: d },
        &[1.0 / n as f32; 9],
        v,
        1.0,
        Estimator::FullVocab,
        None,
        Chunks { rows: 4, vocab: 16 },
    )
    .unwrap();
    assert!(out.loss.abs() < 1e-7, "loss {}", out.loss);
    assert!(out.grad_hidden.iter().chain(&out.grad_head).all(|g| g.abs() < 1e-6));
}

#[test]
fn sampled_estimator_is_unbiased_for_the_full_gradient() {
    // E_{x~p_s}[sampled-estimator gradient] = full-vocabulary gradient (algorithms.md §6.2).
    let zs = [1.0f32, 2.0, 0.5, -1.0];
    let zt = [0.5f32, 1.5, 1.0, 0.0];
    let id = eye(4);
    let run = |est, x: Option<u32>| {
        let t = x.map(|x| vec![x]);
        reverse_kl(
            HeadInput { hidden: &zs, head: &id, dim: 4 },
            HeadInput { hidden: &zt, head: &id, dim: 4 },
            &[1.0],
            4,
            1.0,
            est,
            t.as_deref(),
            Chunks { rows: 1, vocab: 2 },
        )
        .unwrap()
    };
    let full = run(Estimator::FullVocab, None);
    let p_s = [0.22420782f64, 0.60946004, 0.13598892, 0.03034323].map(|x| x as f32);
    let mut expect = [0f32; 4];
    let mut kl = 0f32;
    for x in 0..4u32 {
        let o = run(Estimator::Sampled, Some(x));
        kl += p_s[x as usize] * o.loss as f32;
        for (e, g) in expect.iter_mut().zip(&o.grad_hidden) {
            *e += p_s[x as usize] * g;
        }
    }
    assert!((kl as f64 - full.loss).abs() < 1e-6);
    for (e, f) in expect.iter().zip(&full.grad_hidden) {
        assert!((e - f).abs() < 1e-6, "{expect:?} vs {:?}", full.grad_hidden);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let h = [0f32; 8];
    let w = [0f32; 12];
    let r = reverse_kl(
        HeadInput { hidden: &h, head: &w, dim: 4 },
        HeadInput { hidden: &h, head: &w, dim: 4 },
        &[1.0, 1.0],
        4, // 4 × 4 ≠ 12
        1.0,
        Estimator::FullVocab,
        None,
        Chunks::default(),
    );
    assert!(r.is_err());
}
